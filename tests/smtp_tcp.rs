//! The server over real TCP on 127.0.0.1, on both drivers: plain, PIPELINING, BDAT, size
//! and line limits, time-outs, STARTTLS, implicit TLS, connection limits, drain.

mod common;

use common::*;
use std::time::Duration;

fn each_driver(f: impl Fn(&str, &std::path::Path)) {
    for d in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        f(d, dir.path());
    }
}

#[test]
fn plain_message_is_spooled_and_shown() {
    each_driver(|driver, dir| {
        let srv = start_plain(dir, driver, "");
        let (mut c, greeting) = Client::connect(srv.addr());
        assert!(greeting.starts_with("220 mx.example.test ESMTP"), "{greeting}");
        let ehlo = c.cmd("EHLO client.example");
        assert!(ehlo.contains("250-PIPELINING") && ehlo.contains("250-CHUNKING"), "{ehlo}");
        let body = "Message-ID: <plain@client.example>\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n";
        let r = c.message("alice@remote.example", &["bob@example.test"], body);
        let id = queued_id(&r);
        assert!(c.cmd("QUIT").starts_with("221 2.0.0"));
        let q = queue(dir);
        assert_eq!(q.len(), 1, "{driver}");
        assert_eq!(q[0]["id"], id.as_str());
        assert_eq!(q[0]["message_id"], "<plain@client.example>");
        assert_eq!(q[0]["from"], "alice@remote.example");
        assert_eq!(q[0]["to"][0], "bob@example.test");
        assert_eq!(q[0]["status"], "queued");
        let (code, shown) = ringmx(dir, &["queue", "show", &id]);
        assert_eq!(code, 0);
        assert_eq!(without_received(shown.as_bytes()), body.as_bytes());
        assert!(shown.starts_with(
            "Received: from client.example (unknown [127.0.0.1])\r\n\tby mx.example.test (ringmx) with ESMTP id "
        ));
        let (status, log) = srv.stop();
        assert!(status.success(), "{driver}: {log}");
        assert!(log.contains("1 message(s) accepted"), "{log}");
    });
}

/// RFC 2920: a whole transaction in one write, replies in order.
#[test]
fn pipelining_one_write() {
    each_driver(|driver, dir| {
        let srv = start_plain(dir, driver, "");
        let (mut c, _) = Client::connect(srv.addr());
        c.send(
            b"EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\nRCPT TO:<y@other.example>\r\n\
              RCPT TO:<z@example.test>\r\nDATA\r\n",
        );
        let replies: Vec<String> = (0..6).map(|_| c.reply()).collect();
        let codes: Vec<&str> = replies.iter().map(|r| &r[..3]).collect();
        assert_eq!(codes, ["250", "250", "250", "550", "250", "354"], "{driver}");
        // End of data and the next transaction in one write: the 250 for the message
        // comes first, after the spool sync.
        c.send(b"hello\r\n.\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\nsecond\r\n.\r\nQUIT\r\n");
        assert!(c.reply().starts_with("250 2.0.0 Ok: queued as"));
        assert!(c.reply().starts_with("250 2.1.0"));
        assert!(c.reply().starts_with("250 2.1.5"));
        assert!(c.reply().starts_with("354"));
        assert!(c.reply().starts_with("250 2.0.0 Ok: queued as"));
        assert!(c.reply().starts_with("221"));
        assert_eq!(queue(dir).len(), 2);
    });
}

/// RFC 3030: chunks, BDAT LAST, binary content kept verbatim.
#[test]
fn bdat_chunks() {
    each_driver(|driver, dir| {
        let srv = start_plain(dir, driver, "");
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO c");
        assert!(c.cmd("MAIL FROM:<a@remote.example> BODY=BINARYMIME").starts_with("250"));
        assert!(c.cmd("RCPT TO:<x@example.test>").starts_with("250"));
        let part1 = b"Subject: bin\r\n\r\n\x00\x01\n.\r\n";
        c.send(format!("BDAT {}\r\n", part1.len()).as_bytes());
        c.send(part1);
        assert_eq!(c.reply(), format!("250 2.0.0 Ok: {} octets received\r\n", part1.len()));
        c.send(b"BDAT 4 LAST\r\ntail");
        let id = queued_id(&c.reply());
        let (_, shown) = ringmx(dir, &["queue", "show", &id]);
        let mut want = part1.to_vec();
        want.extend_from_slice(b"tail");
        assert_eq!(without_received(shown.as_bytes()), &want[..], "{driver}");
    });
}

/// RFC 1870: SIZE above the limit at MAIL, and an oversized body read to its end and
/// refused, with nothing kept.
#[test]
fn size_refusal_552() {
    each_driver(|driver, dir| {
        let srv = start_plain(dir, driver, "[limits]\nmax_message_size = 2000\n");
        let (mut c, _) = Client::connect(srv.addr());
        assert!(c.cmd("EHLO c").contains("250-SIZE 2000"));
        assert_eq!(
            c.cmd("MAIL FROM:<a@remote.example> SIZE=5000"),
            "552 5.3.4 Error: message size exceeds fixed maximum message size\r\n"
        );
        c.cmd("MAIL FROM:<a@remote.example>");
        c.cmd("RCPT TO:<x@example.test>");
        assert!(c.cmd("DATA").starts_with("354"));
        let big = "y".repeat(100);
        for _ in 0..100 {
            c.send(format!("{big}\r\n").as_bytes());
        }
        c.send(b".\r\n");
        assert_eq!(c.reply(), "552 5.3.4 Error: message size exceeds fixed maximum message size\r\n", "{driver}");
        assert!(c.cmd("NOOP").starts_with("250"));
        assert!(queue(dir).is_empty());
    });
}

#[test]
fn line_too_long_500() {
    each_driver(|driver, dir| {
        let srv = start_plain(dir, driver, "[limits]\nmax_line_length = 512\n");
        let (mut c, _) = Client::connect(srv.addr());
        let long = format!("EHLO {}", "a".repeat(600));
        assert_eq!(c.cmd(&long), "500 5.5.2 Error: line too long\r\n", "{driver}");
        assert!(c.cmd("EHLO ok.example").starts_with("250-"));
    });
}

/// RFC 5321 §4.5.3.2 with short configured values: an idle client gets 421 and is closed.
#[test]
fn idle_timeout_421() {
    each_driver(|driver, dir| {
        let srv = start_plain(dir, driver, "[timeouts]\ncommand = \"300ms\"\ndata = \"300ms\"\n");
        let (mut c, _) = Client::connect(srv.addr());
        assert!(c.cmd("EHLO c").starts_with("250"));
        let r = c.reply();
        assert_eq!(r, "421 4.4.2 mx.example.test Error: timeout exceeded\r\n", "{driver}");
        assert_eq!(c.reply(), "", "closed after 421");
        // In DATA: a stalled body times out too and nothing is kept.
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO c");
        c.cmd("MAIL FROM:<a@remote.example>");
        c.cmd("RCPT TO:<x@example.test>");
        c.cmd("DATA");
        c.send(b"partial\r\n");
        assert!(c.reply().starts_with("421 4.4.2"));
        assert!(queue(dir).is_empty());
    });
}

/// RFC 3207: STARTTLS, then the session starts over; pipelined plaintext after STARTTLS is
/// not executed.
#[test]
fn starttls() {
    each_driver(|driver, dir| {
        let (cert, key, der) = make_cert(dir);
        let srv = start_plain(dir, driver, &format!("[tls]\ncertificate = {cert:?}\nprivate_key = {key:?}\n"));
        let (mut c, _) = Client::connect(srv.addr());
        assert!(c.cmd("EHLO c").contains("250 STARTTLS\r\n"), "{driver}");
        c.send(b"STARTTLS\r\nMAIL FROM:<injected@remote.example>\r\n");
        assert_eq!(c.reply(), "220 2.0.0 Ready to start TLS\r\n");
        c.upgrade(tls_client_config(&der));
        let ehlo = c.cmd("EHLO c");
        assert!(ehlo.starts_with("250-mx.example.test"), "{driver}: {ehlo}");
        assert!(!ehlo.contains("STARTTLS"));
        let id = queued_id(&c.message("a@remote.example", &["x@example.test"], "Subject: tls\r\n\r\nsecret\r\n"));
        let (_, shown) = ringmx(dir, &["queue", "show", &id]);
        assert!(shown.contains("(using TLSv1.3 with cipher TLS13_"), "{shown}");
        assert!(shown.contains(" with ESMTPS id "), "{shown}");
        assert_eq!(queue(dir).len(), 1, "the injected MAIL was not run");
        assert!(c.quit_tls(), "{driver}: the session must end with close_notify after 221");
    });
}

/// A listener with implicit TLS (and `extra` listener keys) and the certificate.
fn implicit_tls_listener(extra: &str, cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "[[listener]]\nport = 0\nbind = [\"127.0.0.1\"]\ntls = \"implicit\"\n{extra}[tls]\ncertificate = {cert:?}\nprivate_key = {key:?}\n"
    )
}

/// RFC 8314: implicit TLS from the first byte.
#[test]
fn implicit_tls() {
    each_driver(|driver, dir| {
        let (cert, key, der) = make_cert(dir);
        let srv = start(dir, driver, &implicit_tls_listener("", &cert, &key));
        let (mut c, greeting) = Client::connect_tls(srv.addr(), tls_client_config(&der));
        assert!(greeting.starts_with("220 mx.example.test"), "{driver}: {greeting}");
        assert!(!c.cmd("EHLO c").contains("STARTTLS"));
        let id = queued_id(&c.message("a@remote.example", &["x@example.test"], "Subject: s\r\n\r\nx\r\n"));
        let (_, shown) = ringmx(dir, &["queue", "show", &id]);
        assert!(shown.contains(" with ESMTPS id "), "{shown}");
        assert!(c.quit_tls(), "{driver}: the session must end with close_notify after 221");
    });
}

/// Implicit TLS behind a load balancer: the PROXY header comes first in plaintext, then the
/// handshake; the client it names is the one in the Received header.
#[test]
fn implicit_tls_after_a_proxy_header() {
    each_driver(|driver, dir| {
        let (cert, key, der) = make_cert(dir);
        let proxy = "proxy_protocol = true\nproxy_trusted = [\"127.0.0.1\"]\n";
        let srv = start(dir, driver, &implicit_tls_listener(proxy, &cert, &key));
        let (mut c, greeting) = Client::connect_proxied_tls(srv.addr(), "192.0.2.9", tls_client_config(&der));
        assert!(greeting.starts_with("220 mx.example.test"), "{driver}: {greeting}");
        c.cmd("EHLO c");
        let id = queued_id(&c.message("a@remote.example", &["x@example.test"], "Subject: s\r\n\r\nx\r\n"));
        let (_, shown) = ringmx(dir, &["queue", "show", &id]);
        assert!(shown.contains("[192.0.2.9]") && shown.contains(" with ESMTPS id "), "{shown}");
    });
}

/// SPEC §2: connections past the per-address limit get 421 4.7.0.
#[test]
fn connection_limit_421() {
    each_driver(|driver, dir| {
        let srv = start_plain(dir, driver, "[limits]\nmax_connections_per_ip = 2\n");
        let (_a, g1) = Client::connect(srv.addr());
        let (_b, g2) = Client::connect(srv.addr());
        assert!(g1.starts_with("220") && g2.starts_with("220"));
        let (_c, g3) = Client::connect(srv.addr());
        assert_eq!(g3, "421 4.7.0 Error: too many connections, try again later\r\n", "{driver}");
        drop(_a);
        // The slot comes back once the server has seen the close.
        let mut ok = false;
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(20));
            let (_d, g) = Client::connect(srv.addr());
            if g.starts_with("220") {
                ok = true;
                break;
            }
        }
        assert!(ok, "{driver}: slot not released");
    });
}

/// SIGTERM: idle sessions get 421 4.3.2 and the server exits 0.
#[test]
fn sigterm_drains() {
    each_driver(|driver, dir| {
        let srv = start_plain(dir, driver, "");
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO c");
        let (status, log) = srv.stop();
        assert!(status.success(), "{driver}: {log}");
        assert!(c.reply().starts_with("421 4.3.2"), "{driver}");
    });
}

/// SMTP smuggling over the wire: LF.LF does not end DATA; the message is refused.
#[test]
fn smuggling_over_tcp() {
    each_driver(|driver, dir| {
        let srv = start_plain(dir, driver, "");
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO c");
        c.cmd("MAIL FROM:<a@remote.example>");
        c.cmd("RCPT TO:<x@example.test>");
        c.cmd("DATA");
        c.send(b"Subject: s\r\n\r\nx\n.\nMAIL FROM:<evil@remote.example>\r\nRCPT TO:<y@example.test>\r\nDATA\r\nevil\r\n.\r\n");
        assert_eq!(
            c.reply(),
            "554 5.5.2 Error: bare CR or LF in message content (RFC 5321 section 2.3.8)\r\n",
            "{driver}"
        );
        assert!(queue(dir).is_empty());
    });
}

#[test]
fn check_config_reports_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "hostname = \"a b\"\n[limits]\nmax_line_length = 10\n").unwrap();
    let out = std::process::Command::new(BIN).args(["check-config", "--config"]).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:1: hostname"), "{err}");
    assert!(err.contains("bad.toml:3: limits.max_line_length"), "{err}");
    std::fs::write(&p, "[limits]\nmax_recipients = 50\n").unwrap();
    let out = std::process::Command::new(BIN).args(["check-config", "--config"]).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    // The directory's domains without a postmaster are warnings, not errors.
    alice_directory(dir.path());
    let data = dir.path().join("data");
    std::fs::write(&p, format!("data_dir = {data:?}\n")).unwrap();
    let out = std::process::Command::new(BIN).args(["check-config", "--config"]).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("warning: mail to postmaster@example.net has nowhere to go"), "{said}");
    std::fs::write(&p, format!("data_dir = {data:?}\n[delivery]\npostmaster = \"alice@example.net\"\n")).unwrap();
    let out = std::process::Command::new(BIN).args(["check-config", "--config"]).arg(&p).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("warning"));
}

/// The sample production configuration shipped in docs/packaging is valid.
#[test]
fn the_sample_production_config_is_valid() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/packaging/ringmx.production.toml");
    let out = std::process::Command::new(BIN).args(["check-config", "--config"]).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration ok: 3 listener(s)"));
}

/// The systemd unit shipped in docs/packaging passes `systemd-analyze verify` (with the
/// binary path pointed at the one under test; tests/run.sh installs systemd's tools).
#[test]
fn the_systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/packaging/ringmx.service"))
            .unwrap()
            .replace("/usr/bin/ringmx", BIN);
    let p = dir.path().join("ringmx.service");
    std::fs::write(&p, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze").arg("verify").arg(&p).output().expect("systemd-analyze");
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("ringmx.service:"), "no finding about the unit: {said}");
}
