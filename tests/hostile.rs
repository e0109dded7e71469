//! Hostile clients over real TCP, on both drivers: a client that pipelines and never reads
//! its replies, slow senders in each place a deadline guards, a pipelined recipient
//! overshoot, a flood of connections that never send while the server is under stress,
//! half-open connections, and a client that reads its replies a byte at a time. Each test
//! is bounded by counts; none asserts a duration.

mod common;

use common::*;
use ringmx::delivery::client::base64;
use socket2::{Domain, Socket, Type};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

fn each_driver(f: impl Fn(&str, &Path)) {
    for d in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        f(d, dir.path());
    }
}

/// A field of /proc/PID/status, in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Reads until the server closes the connection; returns what was read, or None when the
/// read timed out first (the connection is still open).
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(all),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(all),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// The per-connection budget docs/operations.md states for a client that does not read:
/// replies held (32 KiB high water plus one paused batch), one read of input, and the
/// session's own small buffers.
const BUDGET_PER_CONNECTION: u64 = 512 * 1024;

/// Issue: 20 MiB of `EHLO x` from one connection that never reads took the server to
/// 720 MB. Now the server stops reading once the replies back up: each writer blocks, the
/// server's memory stays within the budget, and each connection is closed at its time-out.
#[test]
fn a_client_that_never_reads_is_throttled_then_closed() {
    each_driver(|driver, dir| {
        let srv = start_plain(dir, driver, "[timeouts]\ncommand = \"2s\"\n");
        let pid = srv.child.id();
        let base = proc_kib(pid, "VmRSS:");
        const CONNS: usize = 20;
        let flood: Vec<u8> = b"EHLO x\r\n".repeat(131_072); // 1 MiB
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for _ in 0..CONNS {
            let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            sock.set_send_buffer_size(16 * 1024).unwrap();
            sock.connect(&srv.addr().into()).unwrap();
            let s: TcpStream = sock.into();
            readers.push(s.try_clone().unwrap());
            let flood = flood.clone();
            writers.push(std::thread::spawn(move || {
                let mut s = s;
                s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut written = 0usize;
                for _ in 0..20 {
                    match s.write(&flood) {
                        Ok(n) => written += n,
                        // Blocked (the server stopped reading), or reset at the time-out.
                        Err(_) => break,
                    }
                }
                written
            }));
        }
        let written: Vec<usize> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        let total: usize = written.iter().sum();
        assert!(written.iter().all(|&w| w < 20 << 20), "{driver}: every writer was stopped: {written:?}");
        let peak = proc_kib(pid, "VmHWM:");
        let grown = peak.saturating_sub(base) * 1024;
        eprintln!("{driver}: {CONNS} connections sent {total} bytes; peak RSS {grown} bytes above the start");
        let bound = CONNS as u64 * BUDGET_PER_CONNECTION + (32 << 20);
        assert!(
            grown < bound,
            "{driver}: {grown} bytes more at peak for {CONNS} connections that sent {total} bytes (bound {bound})"
        );
        // Each is closed at its command time-out (plus the linger for its last reply).
        for mut r in readers {
            assert!(read_until_closed(&mut r, Duration::from_secs(60)).is_some(), "{driver}: still open");
        }
        // And the server still serves.
        let (mut c, greeting) = Client::connect(srv.addr());
        assert!(greeting.starts_with("220"), "{greeting}");
        assert!(c.cmd("EHLO c").starts_with("250"));
    });
}

/// Sends `bytes` one at a time, `gap` apart, until the server closes; returns the replies
/// seen, or None when every byte went out and the connection is still open.
fn trickle(s: &mut TcpStream, bytes: &[u8], gap: Duration) -> Option<String> {
    let mut seen = Vec::new();
    s.set_read_timeout(Some(gap)).unwrap();
    let mut buf = [0u8; 4096];
    for b in bytes {
        if s.write_all(std::slice::from_ref(b)).is_err() {
            return Some(String::from_utf8_lossy(&seen).into_owned());
        }
        // Waiting for a reply is the pacing: the next byte goes after `gap` of silence.
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&seen).into_owned()),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(String::from_utf8_lossy(&seen).into_owned()),
        }
    }
    None
}

fn connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut c = [0u8; 512];
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let n = s.read(&mut c).unwrap();
    assert!(c[..n].starts_with(b"220 "));
    s
}

/// Writes a pipelined group and reads its `replies` replies.
fn exchange(s: &mut TcpStream, data: &str, replies: usize) -> String {
    s.write_all(data.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let finals = |got: &[u8]| got.split(|&b| b == b'\n').filter(|l| l.get(3) == Some(&b' ')).count();
    while finals(&got) < replies || !got.ends_with(b"\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// One byte every 400 ms renews nothing: after EHLO (NOOP sent a byte at a time), inside
/// DATA, inside `BDAT 1000000` and inside an AUTH response, the connection is closed with
/// 421 4.4.2 by its own deadline (2 s here) although bytes keep coming, four times faster
/// than that deadline.
#[test]
fn slow_senders_are_closed_by_their_deadlines() {
    each_driver(|driver, dir| {
        let srv = start(
            dir,
            driver,
            "[[listener]]\nport = 0\nbind = [\"127.0.0.1\"]\nauth = \"always\"\n\
             [timeouts]\ncommand = \"2s\"\ndata = \"2s\"\nauth = \"2s\"\n",
        );
        let addr = srv.addr();
        let gap = Duration::from_millis(400);
        let noops = "NOOP\r\n".repeat(20);
        let places: Vec<(&str, String, String)> = vec![
            ("command", "EHLO c\r\n".into(), noops),
            (
                "DATA",
                "EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n".into(),
                "x".repeat(100),
            ),
            (
                "BDAT",
                "EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\nBDAT 1000000 LAST\r\n".into(),
                "y".repeat(100),
            ),
            ("AUTH", "EHLO c\r\nAUTH LOGIN\r\n".into(), format!("{}\r\n", base64(&[b'u'; 60]))),
        ];
        let threads: Vec<_> = places
            .into_iter()
            .map(|(place, start, slow)| {
                std::thread::spawn(move || {
                    let mut s = connect(addr);
                    s.write_all(start.as_bytes()).unwrap();
                    let r = trickle(&mut s, slow.as_bytes(), gap);
                    (place, r)
                })
            })
            .collect();
        for t in threads {
            let (place, r) = t.join().unwrap();
            let r = r.unwrap_or_else(|| panic!("{driver}: {place}: still open after every byte"));
            assert!(r.contains("421 4.4.2 mx.example.test Error: timeout exceeded\r\n"), "{driver}: {place}: {r}");
        }
        assert!(queue(dir).is_empty(), "{driver}: nothing half-received is kept");
    });
}

/// RFC 5321 §4.5.3.1.10 with a pipelining client: 1,000 RCPTs in one write get 100 × 250
/// and 900 × 452 4.5.3 (not counted as errors, so no 421), and the message is stored for
/// its first 100 recipients.
#[test]
fn pipelined_recipient_overshoot() {
    each_driver(|driver, dir| {
        let srv = start_plain(dir, driver, "");
        let mut s = connect(srv.addr());
        let mut script = String::from("EHLO c\r\nMAIL FROM:<a@remote.example>\r\n");
        for i in 0..1000 {
            script.push_str(&format!("RCPT TO:<u{i}@example.test>\r\n"));
        }
        script.push_str("DATA\r\n");
        let r = exchange(&mut s, &script, 1003);
        let lines: Vec<&str> = r.lines().filter(|l| l.as_bytes().get(3) == Some(&b' ')).collect();
        assert_eq!(lines.len(), 1003, "{driver}");
        assert_eq!(lines.iter().filter(|l| l.starts_with("250 2.1.5")).count(), 100);
        assert_eq!(lines.iter().filter(|l| l.starts_with("452 4.5.3")).count(), 900);
        assert!(lines[1002].starts_with("354"), "{}", lines[1002]);
        let r = exchange(&mut s, "Subject: many\r\n\r\nbody\r\n.\r\n", 1);
        assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{driver}: {r}");
        let q = queue(dir);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0]["to"].as_array().unwrap().len(), 100, "{driver}");
    });
}

/// Under stress (here 10 or more of at most 20 connections) every wait is cut to
/// `timeouts.stress`: a flood of 16 connections that never send is cut back with 421 4.4.2
/// long before the one-hour command time-out, until the server is out of stress (9 left,
/// the normal time-outs again), and a client that talks is served meanwhile.
#[test]
fn a_flood_of_silent_connections_under_stress() {
    each_driver(|driver, dir| {
        let srv = start_plain(
            dir,
            driver,
            "[limits]\nmax_connections = 20\nmax_connections_per_ip = 20\nstress_threshold = 0.5\n\
             [timeouts]\ncommand = \"1h\"\nstress = \"1s\"\n",
        );
        let mut silent: Vec<TcpStream> = (0..16).map(|_| connect(srv.addr())).collect();
        // A client that talks is served while they sit there.
        let (mut c, _) = Client::connect(srv.addr());
        assert!(c.cmd("EHLO c").starts_with("250"));
        assert!(c.message("a@remote.example", &["x@example.test"], "Subject: s\r\n\r\nb\r\n").starts_with("250"));
        assert!(c.cmd("QUIT").starts_with("221"));
        for s in &silent {
            s.set_nonblocking(true).unwrap();
        }
        let mut closed = vec![false; silent.len()];
        let mut replies = vec![Vec::new(); silent.len()];
        // The command time-out is an hour: a close that comes while the test waits can only
        // be the stress time-out's. (The wait is bounded so that a broken build ends.)
        let cut = eventually(Duration::from_secs(600), || {
            for (i, s) in silent.iter_mut().enumerate() {
                let mut buf = [0u8; 256];
                while !closed[i] {
                    match s.read(&mut buf) {
                        Ok(0) => closed[i] = true,
                        Ok(n) => replies[i].extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => closed[i] = true,
                    }
                }
            }
            closed.iter().filter(|&&c| c).count() >= 7
        });
        assert!(cut, "{driver}: {} of 16 closed", closed.iter().filter(|&&c| c).count());
        for (i, r) in replies.iter().enumerate() {
            if closed[i] {
                assert_eq!(String::from_utf8_lossy(r), "421 4.4.2 mx.example.test Error: timeout exceeded\r\n");
            }
        }
        assert_eq!(queue(dir).len(), 1);
    });
}

/// A client that half-closes (shuts down its sending side) is answered and closed; one
/// that does so inside DATA loses the message, nothing partial is stored.
#[test]
fn half_open_connections() {
    each_driver(|driver, dir| {
        let srv = start_plain(dir, driver, "");
        let mut s = connect(srv.addr());
        s.write_all(b"EHLO c\r\nNOOP\r\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let r = read_until_closed(&mut s, Duration::from_secs(20)).expect("closed after the half-close");
        let r = String::from_utf8(r).unwrap();
        assert!(r.ends_with("250 2.0.0 Ok\r\n"), "{driver}: {r}");

        let mut s = connect(srv.addr());
        s.write_all(b"EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\npartial\r\n")
            .unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let r = read_until_closed(&mut s, Duration::from_secs(20)).expect("closed after the half-close");
        assert!(String::from_utf8(r).unwrap().contains("354 "), "{driver}");
        assert!(queue(dir).is_empty(), "{driver}");
    });
}

/// A client that reads its replies one byte at a time still gets every reply, in order,
/// and its message is stored: back-pressure slows the server down to the client's pace
/// without losing anything.
#[test]
fn a_client_reading_one_byte_at_a_time() {
    each_driver(|driver, dir| {
        let srv = start_plain(dir, driver, "");
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&srv.addr().into()).unwrap();
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut script = String::from("EHLO c\r\n");
        // About 300 KiB of replies: well past every buffer on the way.
        for _ in 0..1500 {
            script.push_str("EHLO c\r\n");
        }
        script.push_str("MAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n");
        let writer = {
            let mut w = s.try_clone().unwrap();
            std::thread::spawn(move || {
                w.write_all(script.as_bytes()).unwrap();
                w.write_all(b"Subject: slow reader\r\n\r\nbody\r\n.\r\nQUIT\r\n").unwrap();
            })
        };
        let mut all = Vec::new();
        let mut b = [0u8; 1];
        loop {
            match s.read(&mut b) {
                Ok(0) => break,
                Ok(_) => all.push(b[0]),
                Err(e) => panic!("{driver}: {e} after {} bytes", all.len()),
            }
        }
        writer.join().unwrap();
        let text = String::from_utf8(all).unwrap();
        let finals: Vec<&str> = text.lines().filter(|l| l.as_bytes().get(3) == Some(&b' ')).collect();
        assert_eq!(finals.len(), 1 + 1501 + 4 + 1, "{driver}");
        assert!(finals[1502].starts_with("250 2.1.0"));
        assert!(finals[1505].starts_with("250 2.0.0 Ok: queued as"), "{}", finals[1505]);
        assert!(finals[1506].starts_with("221"));
        assert_eq!(queue(dir).len(), 1);
    });
}
