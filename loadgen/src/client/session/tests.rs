//! The client session against the sink's sans-IO session, in memory, on a simulated clock.

use super::*;
use crate::sink::proto::{Action, SinkConfig, SinkSession, SinkStats};
use crate::sink::replies::{ReplySpec, SinkPhase};

struct Pair {
    c: ClientSession,
    s: SinkSession,
    stats: SinkStats,
    rec: Recorder,
    now: Instant,
    inbuf: Vec<u8>,
    /// Client writes (one per burst of commands).
    writes: usize,
    /// Everything the client sent.
    wire: Vec<u8>,
}

impl Pair {
    fn new(client: SessionConfig, sink: SinkConfig) -> Self {
        let now = Instant::now();
        let mut stats = SinkStats::default();
        let s = SinkSession::new(sink.build(), now, 7, false, &mut stats);
        let mut c = ClientSession::new(Arc::new(client), now, false);
        c.connected(now);
        let mut p = Pair { c, s, stats, rec: Recorder::default(), now, inbuf: Vec::new(), writes: 0, wire: Vec::new() };
        p.converse();
        p
    }

    /// Moves bytes both ways until nothing moves; jumps the clock to held replies.
    fn converse(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            let out = self.s.poll_transmit(self.now).to_vec();
            if !out.is_empty() {
                self.s.transmitted(out.len());
                self.inbuf.extend_from_slice(&out);
                let n = self.c.handle_input(self.now, &self.inbuf, &mut self.rec).expect("valid replies");
                self.inbuf.drain(..n);
                moved = true;
            }
            if self.s.poll_action() == Some(Action::StartTls) {
                self.s.tls_started(&mut self.stats);
            }
            if self.c.wants_tls() {
                self.inbuf.clear();
                self.now += Duration::from_millis(1);
                self.c.tls_established(self.now, &mut self.rec);
            }
            let cout = self.c.pending_output().to_vec();
            if !cout.is_empty() {
                self.writes += 1;
                self.wire.extend_from_slice(&cout);
                self.c.transmitted(self.now, cout.len());
                self.s.handle_input(self.now, &cout, &mut self.stats);
                moved = true;
            }
            if !moved {
                match self.s.poll_timeout() {
                    Some(t) => self.now = t,
                    None => return,
                }
            }
        }
        panic!("conversation did not settle");
    }

    fn send(&mut self, rcpts: &[&str], content: &[u8]) {
        assert!(self.c.is_ready(), "client ready");
        let o = self.c.outbound_mut();
        o.clear();
        o.from.push_str("a@x.test");
        for r in rcpts {
            o.push_rcpt(r);
        }
        o.content.extend_from_slice(content);
        self.c.start_transaction(self.now, self.now);
        self.converse();
    }
}

fn sink() -> SinkConfig {
    SinkConfig::new("sink.test")
}

const BODY: &[u8] = b"Subject: t\r\n\r\nhello\r\n";

#[test]
fn pipelined_transaction_takes_two_writes() {
    let mut p = Pair::new(SessionConfig::default(), sink());
    assert!(p.c.capabilities().pipelining && p.c.capabilities().chunking);
    let before = p.writes;
    p.send(&["b@y.test", "c@y.test"], BODY);
    // MAIL+RCPT+RCPT+DATA in one write, the content in another (RFC 2920 §3.1).
    assert_eq!(p.writes - before, 2);
    assert_eq!((p.rec.ok, p.rec.rejected, p.rec.recipients), (1, 0, 2));
    assert_eq!(p.stats.messages, 1);
    assert_eq!(p.stats.bytes, BODY.len() as u64);
    assert_eq!(p.rec.histogram(Phase::Rcpt).len(), 2);
    assert!(p.c.is_ready());
}

#[test]
fn lockstep_without_pipelining() {
    let mut s = sink();
    s.pipelining = false;
    let mut p = Pair::new(SessionConfig::default(), s);
    let before = p.writes;
    p.send(&["b@y.test", "c@y.test"], BODY);
    assert_eq!(p.writes - before, 5, "MAIL, RCPT, RCPT, DATA, content");
    assert_eq!(p.rec.ok, 1);
}

#[test]
fn bdat_when_chunking_is_offered_and_wanted() {
    let cfg = SessionConfig { chunking: true, ..SessionConfig::default() };
    let mut p = Pair::new(cfg, sink());
    assert!(p.c.uses_bdat());
    let before = p.writes;
    p.send(&["b@y.test"], b".starts with a dot\r\n");
    assert_eq!(p.writes - before, 1, "MAIL, RCPT and BDAT with its chunk in one write (RFC 3030)");
    assert_eq!((p.rec.ok, p.stats.messages, p.stats.bytes), (1, 1, 20));
    let wire = String::from_utf8_lossy(&p.wire);
    assert!(wire.contains("BDAT 20 LAST\r\n.starts with a dot\r\n"));
}

#[test]
fn size_is_declared_when_offered() {
    let mut p = Pair::new(SessionConfig::default(), sink());
    p.send(&["b@y.test"], BODY);
    let wire = String::from_utf8_lossy(&p.wire);
    assert!(wire.contains(&format!("MAIL FROM:<a@x.test> SIZE={}\r\n", BODY.len())), "{wire}");
}

#[test]
fn a_refused_recipient_fails_the_transaction_and_resets() {
    let mut s = sink();
    s.replies[SinkPhase::Rcpt.index()].push("450 4.2.1 busy@100%".parse::<ReplySpec>().unwrap()).unwrap();
    let mut p = Pair::new(SessionConfig::default(), s);
    p.send(&["b@y.test"], BODY);
    assert_eq!((p.rec.ok, p.rec.rejected), (0, 1));
    assert_eq!(p.rec.codes.count(450), 1);
    assert_eq!(p.rec.codes.count(554), 1, "DATA refused: no valid recipients");
    assert!(String::from_utf8_lossy(&p.wire).ends_with("RSET\r\n"));
    assert!(p.c.is_ready(), "ready for the next transaction");
}

#[test]
fn one_of_two_recipients_refused_still_delivers() {
    let mut s = sink();
    s.replies[SinkPhase::Rcpt.index()].push("550 5.1.1 unknown@50%".parse::<ReplySpec>().unwrap()).unwrap();
    let mut p = Pair::new(SessionConfig::default(), s);
    for _ in 0..20 {
        p.send(&["b@y.test", "c@y.test"], BODY);
    }
    assert_eq!(p.rec.ok + p.rec.rejected, 20);
    assert_eq!(p.rec.ok, p.stats.messages);
    assert_eq!(p.rec.recipients, p.stats.recipients);
}

#[test]
fn delays_are_measured_on_the_simulated_clock() {
    let mut s = sink();
    s.delays[SinkPhase::DataEnd.index()] = Duration::from_millis(5);
    s.delays[SinkPhase::Rcpt.index()] = Duration::from_millis(2);
    let mut p = Pair::new(SessionConfig::default(), s);
    p.send(&["b@y.test"], BODY);
    let ms = |ph: Phase| p.rec.histogram(ph).value_at_quantile(0.5) as f64 / 1e6;
    assert!((ms(Phase::DataEnd) - 5.0).abs() < 0.01, "{}", ms(Phase::DataEnd));
    assert!((ms(Phase::Rcpt) - 2.0).abs() < 0.01);
    // DATA's 354 is held behind the RCPT reply.
    assert!((ms(Phase::Data) - 2.0).abs() < 0.01);
    assert!((ms(Phase::Transaction) - 7.0).abs() < 0.01);
}

#[test]
fn quit_rides_along_with_the_last_message() {
    let cfg = SessionConfig { messages_per_connection: 2, ..SessionConfig::default() };
    let mut p = Pair::new(cfg, sink());
    p.send(&["b@y.test"], BODY);
    assert!(p.c.is_ready());
    let before = p.writes;
    p.send(&["b@y.test"], BODY);
    assert_eq!(p.writes - before, 2);
    assert!(String::from_utf8_lossy(&p.wire).ends_with(".\r\nQUIT\r\n"));
    assert!(p.c.is_closed());
    assert_eq!((p.rec.ok, p.stats.messages, p.rec.codes.count(221)), (2, 2, 1));
}

#[test]
fn starttls_then_ehlo_again() {
    let cfg = SessionConfig { starttls: true, ..SessionConfig::default() };
    let mut s = sink();
    s.starttls = true;
    let mut p = Pair::new(cfg, s);
    assert!(p.c.is_ready());
    assert!(!p.c.capabilities().starttls, "capabilities are those of the second EHLO");
    assert_eq!(p.stats.tls_handshakes, 1);
    assert_eq!(p.rec.histogram(Phase::Tls).len(), 1);
    p.send(&["b@y.test"], BODY);
    assert_eq!(p.rec.ok, 1);
}

#[test]
fn starttls_required_but_not_offered_fails() {
    let cfg = SessionConfig { starttls: true, ..SessionConfig::default() };
    let now = Instant::now();
    let mut c = ClientSession::new(Arc::new(cfg), now, false);
    c.connected(now);
    let mut rec = Recorder::default();
    c.handle_input(now, b"220 hi\r\n", &mut rec).unwrap();
    assert_eq!(c.handle_input(now, b"250-x\r\n250 PIPELINING\r\n", &mut rec), Err(SessionError::StartTlsNotOffered));
    assert!(c.is_closed());
    assert_eq!(rec.errors.protocol, 1);
}

#[test]
fn auth_plain_and_login() {
    for mechanism in [AuthMechanism::Plain, AuthMechanism::Login] {
        let auth = AuthConfig { mechanism, user: "u".into(), password: "p".into() };
        let cfg = SessionConfig { auth: Some(auth), ..SessionConfig::default() };
        let mut s = sink();
        s.auth = Some(("u".into(), "p".into()));
        let mut p = Pair::new(cfg, s);
        assert!(p.c.is_ready(), "{mechanism:?}");
        assert_eq!(p.stats.auth_successes, 1);
        assert_eq!(p.rec.histogram(Phase::Auth).len(), 1);
        p.send(&["b@y.test"], BODY);
        assert_eq!(p.rec.ok, 1);
    }
}

#[test]
fn wrong_credentials_fail_the_session() {
    let auth = AuthConfig { mechanism: AuthMechanism::Plain, user: "u".into(), password: "bad".into() };
    let cfg = SessionConfig { auth: Some(auth), ..SessionConfig::default() };
    let now = Instant::now();
    let mut c = ClientSession::new(Arc::new(cfg), now, false);
    c.connected(now);
    let mut rec = Recorder::default();
    c.handle_input(now, b"220 hi\r\n250-x\r\n250 AUTH PLAIN\r\n", &mut rec).unwrap();
    assert_eq!(c.handle_input(now, b"535 5.7.8 no\r\n", &mut rec), Err(SessionError::AuthFailed(535)));
}

#[test]
fn replies_split_at_every_offset_parse_the_same() {
    let input: &[u8] = b"220 hi\r\n250-sink\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 CHUNKING\r\n";
    for cut in 0..input.len() {
        let now = Instant::now();
        let mut c = ClientSession::new(Arc::new(SessionConfig::default()), now, false);
        c.connected(now);
        let mut rec = Recorder::default();
        let mut buf = input[..cut].to_vec();
        let n = c.handle_input(now, &buf, &mut rec).unwrap();
        buf.drain(..n);
        buf.extend_from_slice(&input[cut..]);
        let n = c.handle_input(now, &buf, &mut rec).unwrap();
        assert_eq!(n, buf.len(), "cut {cut}");
        assert!(c.is_ready());
        assert_eq!(c.capabilities().size, Some(1000));
        assert!(c.capabilities().pipelining && c.capabilities().chunking);
    }
}

#[test]
fn malformed_and_unsolicited_replies_are_errors() {
    let now = Instant::now();
    let mut rec = Recorder::default();
    let mut c = ClientSession::new(Arc::new(SessionConfig::default()), now, false);
    c.connected(now);
    assert_eq!(c.handle_input(now, b"hello\r\n", &mut rec), Err(SessionError::MalformedReply));
    let mut c = ClientSession::new(Arc::new(SessionConfig::default()), now, false);
    c.connected(now);
    assert_eq!(c.handle_input(now, b"554 go away\r\n", &mut rec), Err(SessionError::Refused(554)));
    let mut c = ClientSession::new(Arc::new(SessionConfig::default()), now, false);
    c.connected(now);
    c.handle_input(now, b"220 hi\r\n250 x\r\n", &mut rec).unwrap();
    assert_eq!(c.handle_input(now, b"250 what\r\n", &mut rec), Err(SessionError::UnsolicitedReply(250)));
    // smtp-sink ends its EHLO reply with "250 " and no keyword.
    let mut c = ClientSession::new(Arc::new(SessionConfig::default()), now, false);
    c.connected(now);
    c.handle_input(now, b"220 hi\r\n250-x\r\n250-PIPELINING\r\n250 \r\n", &mut rec).unwrap();
    assert!(c.is_ready() && c.capabilities().pipelining);
}

#[test]
fn timeout_and_abort_count_a_lost_transaction() {
    let mut p = Pair::new(SessionConfig::default(), sink());
    let o = p.c.outbound_mut();
    o.from.push_str("a@x");
    o.push_rcpt("b@y");
    o.content.extend_from_slice(BODY);
    p.c.start_transaction(p.now, p.now);
    let deadline = p.c.poll_timeout().expect("awaiting replies");
    assert_eq!(deadline - p.now, Duration::from_secs(30));
    p.c.handle_timeout(&mut p.rec);
    assert!(p.c.is_closed());
    assert_eq!((p.rec.errors.timeout, p.rec.failed()), (1, 1));
}
