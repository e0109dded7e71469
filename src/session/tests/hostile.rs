//! What a hostile client can make the session do, on a simulated clock: deadlines a slow
//! sender cannot stretch, stress, recipient overshoot, and back-pressure on replies.

use super::*;
use crate::policy::ConnLimits;
use crate::policy::auth::AuthOutcome;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

impl Harness {
    /// Sends `input` one byte every `gap` until the session closes or the input ends;
    /// returns the time the session closed, counted from the first byte.
    fn trickle(&mut self, input: &[u8], gap: Duration) -> Option<Duration> {
        let start = self.now.mono;
        for &b in input {
            self.now = self.now.advance(gap);
            self.s.handle_timeout(self.now);
            self.take_output();
            if self.closed {
                return Some(self.now.mono - start);
            }
            self.send_bytes(&[b]);
        }
        None
    }

    /// Lets simulated time pass in one-second steps until the session closes (at most
    /// `limit`); returns the replies of that time.
    fn idle_until_closed(&mut self, limit: Duration) -> String {
        let end = self.now.mono + limit;
        let mut out = String::new();
        while !self.closed && self.now.mono < end {
            self.now = self.now.advance(secs(1));
            self.s.handle_timeout(self.now);
            out.push_str(&self.take_output());
        }
        out
    }
}

/// The command time-out bounds a whole command line: `NOOP` a byte every 4 seconds is not
/// served for ever (RFC 5321 §4.5.3.2.7 gives the server 5 minutes; the bytes do not renew
/// it).
#[test]
fn a_command_sent_byte_by_byte_times_out() {
    let mut h = Harness::new(SessionConfig { command_timeout: secs(30), ..cfg() });
    h.ehlo();
    // 6 s a byte: each NOOP line takes 36 s to arrive, longer than the deadline.
    let noops = "NOOP\r\n".repeat(100);
    let mut served = String::new();
    let start = h.now.mono;
    for &b in noops.as_bytes() {
        h.now = h.now.advance(secs(6));
        h.s.handle_timeout(h.now);
        served.push_str(&h.take_output());
        if h.closed {
            break;
        }
        served.push_str(&h.send_bytes(&[b]));
    }
    assert!(h.closed);
    assert!(h.now.mono - start <= secs(36), "{:?}", h.now.mono - start);
    assert_eq!(served, "421 4.4.2 mx.example.test Error: timeout exceeded\r\n");

    // The same for a MAIL command: 31 bytes at 4 s a byte.
    let mut h = Harness::new(SessionConfig { command_timeout: secs(30), ..cfg() });
    h.ehlo();
    let closed = h.trickle(b"MAIL FROM:<a@remote.example>\r\n", secs(4)).expect("closed");
    assert!(closed <= secs(32), "a 31-byte line at 4 s a byte must not outlive the 30 s deadline: {closed:?}");
}

/// Inside DATA, each block buys `size / min_data_rate` more time, capped at `data_timeout`
/// from now: one byte every 5 s ends near `data_timeout`, while a sender above the rate
/// goes on as long as it keeps sending.
#[test]
fn data_trickle_is_bounded_by_the_minimum_rate() {
    let c = SessionConfig { data_timeout: secs(180), min_data_rate: 500, ..cfg() };
    let mut h = Harness::new(c.clone());
    h.send("EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n");
    let body = vec![b'x'; 200];
    let closed = h.trickle(&body, secs(5)).expect("closed by the data deadline");
    assert!(closed >= secs(180) && closed <= secs(190), "{closed:?}");
    assert!(h.spooled.is_empty());

    // 64 KiB a minute is above 500 B/s on average: ten minutes of it stay connected.
    let mut h = Harness::new(c);
    h.send("EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n");
    let block = "y".repeat(64 * 1024 - 2) + "\r\n";
    for _ in 0..10 {
        h.now = h.now.advance(secs(60));
        h.s.handle_timeout(h.now);
        assert!(!h.closed);
        h.send(&block);
    }
    h.send(".\r\n");
    assert_eq!(h.spooled.len(), 1);
}

/// A BDAT chunk has its own deadline, stretched by the rate in the same way.
#[test]
fn bdat_trickle_is_bounded() {
    let mut h = Harness::new(SessionConfig { data_timeout: secs(60), min_data_rate: 500, ..cfg() });
    h.send("EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\nBDAT 1000000 LAST\r\n");
    let closed = h.trickle(&[b'z'; 100], secs(3)).expect("closed by the chunk deadline");
    assert!(closed >= secs(60) && closed <= secs(63), "{closed:?}");
}

/// The SASL exchange has one deadline from AUTH to its last line, however the lines are
/// paced.
#[test]
fn auth_exchange_has_an_overall_deadline() {
    let c = SessionConfig { auth_timeout: secs(20), command_timeout: secs(300), ..auth_cfg(Policy::default()) };
    let mut h = Harness::new(c);
    h.ehlo();
    assert_eq!(h.send("AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    // Each line comes quickly enough for a per-line rule, but the whole takes too long.
    h.now = h.now.advance(secs(15));
    assert_eq!(h.send(&format!("{}\r\n", b64(b"alice@example.net"))), "334 UGFzc3dvcmQ6\r\n");
    let r = h.idle_until_closed(secs(30));
    assert_eq!(r, "421 4.4.2 mx.example.test Error: timeout exceeded\r\n");
    assert!(h.auth_requests.is_empty());

    // Trickled: the password line a byte every 2 s.
    let c = SessionConfig { auth_timeout: secs(20), ..auth_cfg(Policy::default()) };
    let mut h = Harness::new(c);
    h.ehlo();
    h.send("AUTH PLAIN\r\n");
    let line = format!("{}\r\n", b64(b"\0alice@example.net\0a rather long password"));
    let closed = h.trickle(line.as_bytes(), secs(2)).expect("closed by the AUTH deadline");
    assert!(closed <= secs(22), "{closed:?}");

    // An exchange in time goes back to the command time-out.
    let c = SessionConfig { auth_timeout: secs(20), command_timeout: secs(300), ..auth_cfg(Policy::default()) };
    let mut h = Harness::new(c);
    h.ehlo();
    h.send(&format!("AUTH PLAIN {}\r\n", b64(b"\0alice@example.net\0pw")));
    h.now = h.now.advance(secs(5));
    assert_eq!(h.auth(AuthOutcome::Success), "235 2.7.0 Authentication successful\r\n");
    assert_eq!(h.s.poll_timeout(), Some(h.now.mono + secs(300)));
}

/// However busy a client keeps its connection, `max_session_time` ends it.
#[test]
fn session_time_limit() {
    let mut h = Harness::new(SessionConfig { max_session_time: secs(100), ..cfg() });
    h.ehlo();
    let mut replies = String::new();
    for _ in 0..30 {
        h.now = h.now.advance(secs(5));
        h.s.handle_timeout(h.now);
        replies.push_str(&h.take_output());
        if h.closed {
            break;
        }
        assert_eq!(h.send("NOOP\r\n"), "250 2.0.0 Ok\r\n");
    }
    assert!(h.closed);
    assert_eq!(replies, "421 4.4.2 mx.example.test Error: connection time limit exceeded\r\n");
}

/// Under stress (connections at 80% of the maximum), every wait is cut to
/// `stress_timeout`, including waits that began before the stress did.
#[test]
fn stress_shrinks_the_timeouts() {
    let limits = Arc::new(ConnLimits::new(10, 10, 0));
    let c = SessionConfig {
        conn_limits: Some(limits.clone()),
        stress_timeout: secs(5),
        command_timeout: secs(300),
        ..cfg()
    };
    let mut h = Harness::new(c);
    h.ehlo();
    assert_eq!(h.s.poll_timeout(), Some(h.now.mono + secs(300)));
    for _ in 0..8 {
        assert!(limits.try_acquire(None));
    }
    assert_eq!(h.s.poll_timeout(), Some(h.now.mono + secs(5)));
    let r = h.idle_until_closed(secs(10));
    assert!(r.starts_with("421 4.4.2"), "{r}");
    // When the load falls, the normal time-outs are back.
    limits.release(None);
    let mut h = Harness::new(SessionConfig { conn_limits: Some(limits), ..cfg() });
    assert_eq!(h.s.poll_timeout(), Some(h.now.mono + secs(300)));
    h.ehlo();
}

/// RFC 5321 §4.5.3.1.10: past `max_recipients` each RCPT gets 452 4.5.3 and the client
/// sends the rest later; the excess does not count as errors (up to the overshoot limit),
/// so a pipelining client's transaction with its first 100 recipients completes.
#[test]
fn recipient_overshoot_keeps_the_transaction() {
    let mut h = Harness::new(cfg());
    h.ehlo();
    let mut script = String::from("MAIL FROM:<a@remote.example>\r\n");
    for i in 0..1000 {
        script.push_str(&format!("RCPT TO:<u{i}@example.test>\r\n"));
    }
    script.push_str("DATA\r\n");
    let r = h.send(&script);
    let c = codes(&r);
    assert_eq!(c.iter().filter(|&&c| c == "250").count(), 101, "MAIL and 100 recipients");
    assert_eq!(c.iter().filter(|&&c| c == "452").count(), 900);
    assert_eq!(c.last(), Some(&"354"));
    assert!(!h.closed);
    h.send("Subject: many\r\n\r\nbody\r\n.\r\n");
    assert_eq!(h.spooled.len(), 1);
    assert_eq!(h.spooled[0].envelope.rcpts.len(), 100);
    assert_eq!(h.spooled[0].envelope.rcpts[99].address, "u99@example.test");

    // Past the overshoot limit the excess counts toward max_errors again.
    let mut h = Harness::new(SessionConfig { max_recipients: 2, recipient_overshoot: 3, max_errors: 2, ..cfg() });
    h.ehlo();
    let mut script = String::from("MAIL FROM:<a@remote.example>\r\n");
    for i in 0..10 {
        script.push_str(&format!("RCPT TO:<u{i}@example.test>\r\n"));
    }
    let r = h.send(&script);
    assert_eq!(codes(&r), ["250", "250", "250", "452", "452", "452", "452", "452", "421"]);
    assert!(h.closed);
}

/// A client that pipelines and never reads gets at most OUTPUT_PAUSE bytes of replies
/// (and one reply more) from the session: it then stops processing, holds the input it
/// has, asks for no more, and goes on only when the driver says the replies went out.
#[test]
fn replies_push_back_on_a_client_that_does_not_read() {
    let mut h = Harness::new(cfg());
    let flood = "EHLO x\r\n".repeat(8192); // 64 KiB, one large read
    h.s.handle_input(h.now, flood.as_bytes());
    let out = h.s.output().len();
    assert!((OUTPUT_PAUSE..OUTPUT_PAUSE + 512).contains(&out), "{out}");
    assert!(h.s.is_paused());
    assert!(!h.s.wants_input());
    // The driver reads nothing more; if it did, a bounded amount is kept and then refused.
    let replies_before = h.s.output().len();
    let mut total = 0;
    loop {
        // The client still does not read: more input does not produce more output.
        h.s.handle_input(h.now, b"NOOP\r\n");
        if h.s.is_closed() {
            break;
        }
        assert_eq!(h.s.output().len(), replies_before);
        total += 6;
        if total > INPUT_BACKLOG_LIMIT {
            panic!("input buffered without bound");
        }
    }
    assert!(h.s.output().ends_with(b"421 4.7.0 mx.example.test Error: too much unread input\r\n"));

    // A client that does read gets every reply, in order, OUTPUT_PAUSE at a time.
    let mut h = Harness::new(cfg());
    let n = 2000;
    h.s.handle_input(h.now, "EHLO x\r\n".repeat(n).as_bytes());
    let mut replies = 0;
    let mut rounds = 0;
    loop {
        let out = h.take_output();
        assert!(out.len() < OUTPUT_PAUSE + 512);
        replies += out.matches("250 ").count();
        if !h.s.is_paused() {
            break;
        }
        rounds += 1;
        h.s.resume(h.now);
    }
    assert_eq!(replies, n);
    assert!(rounds > 1);
    assert!(h.s.wants_input());
}

/// While a message is with the spool, pipelined input is held but no more is asked for.
#[test]
fn input_waits_while_the_spool_works() {
    let mut h = Harness::new(cfg());
    h.auto_spool = false;
    h.ehlo();
    h.send("MAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\nbody\r\n.\r\n");
    assert!(h.waiting.is_some());
    assert!(h.s.wants_input(), "nothing is buffered yet");
    h.send("MAIL FROM:<b@remote.example>\r\n");
    assert!(!h.s.wants_input(), "the next command waits; the driver reads no more");
    let r = h.complete_spool(Ok(QueueId(1)));
    assert_eq!(codes(&r), ["250", "250"]);
    assert!(h.s.wants_input());
}
