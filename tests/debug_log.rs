//! The debug log (`<log dir>/debug.log`): off by default, switched on the running server by
//! `ringmx log debug`, for every client or only some networks; the client's lines and our
//! replies in wire order, never a message's content or an AUTH secret.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

fn debug_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data/log/debug.log")).unwrap_or_default()
}

/// One session that says EHLO `name`, sends a message and an AUTH with a secret, and quits.
fn session(srv: &Server, name: &str) {
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd(&format!("EHLO {name}"));
    queued_id(&c.message("s@remote.example", &["alice@example.net"], "Subject: private words\r\n\r\nsecret body\r\n"));
    assert!(c.cmd("AUTH PLAIN AGFsaWNlAGh1bnRlcjI=").starts_with("538"));
    c.cmd("QUIT");
}

#[test]
fn switched_at_run_time_per_network_without_content_or_secrets() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        alice_directory(dir.path());
        let srv = start_plain(dir.path(), driver, "");
        // Off by default.
        session(&srv, "before.example");
        let (code, out) = ringmx(dir.path(), &["log", "debug", "status"]);
        assert_eq!((code, out.as_str()), (0, "debug log off\n"), "{driver}");

        let (code, out) = ringmx(dir.path(), &["log", "debug", "on", "--client", "127.0.0.0/8"]);
        assert_eq!((code, out.as_str()), (0, "debug log on for 127.0.0.0/8\n"), "{driver}");
        session(&srv, "traced.example");
        assert!(
            eventually(Duration::from_secs(20), || debug_log(dir.path()).contains("S: 221 ")),
            "{driver}: {}",
            debug_log(dir.path())
        );
        let text = debug_log(dir.path());
        let traced: Vec<&str> =
            text.lines().map(|l| l.split_once(" client=127.0.0.1 ").map_or(l, |(_, r)| r)).collect();
        assert!(traced[0].starts_with("S: 220 mx.example.test "), "the banner first: {text}");
        for expected in [
            "C: EHLO traced.example",
            "S: 250-mx.example.test",
            "C: MAIL FROM:<s@remote.example>",
            "S: 250 2.1.0 Ok",
            "C: RCPT TO:<alice@example.net>",
            "C: DATA",
            "S: 354 End data with <CR><LF>.<CR><LF>",
            "C: AUTH PLAIN <initial response hidden>",
            "C: QUIT",
        ] {
            assert!(traced.contains(&expected), "{driver}: no {expected:?} in\n{text}");
        }
        assert!(traced.iter().any(|l| l.starts_with("C: <message content of ") && l.ends_with(" bytes>")), "{text}");
        assert!(traced.iter().any(|l| l.starts_with("S: 250 2.0.0 Ok: queued as ")), "{text}");
        assert!(!text.contains("secret body") && !text.contains("private words"), "no content: {text}");
        assert!(!text.contains("AGFsaWNlAGh1bnRlcjI="), "no secret: {text}");
        assert!(!text.contains("before.example"), "not traced before the switch: {text}");
        // Wire order: each reply after the line it answers.
        let pos = |l: &str| traced.iter().position(|x| *x == l).unwrap();
        assert!(pos("C: EHLO traced.example") < pos("S: 250 2.1.0 Ok") && pos("C: QUIT") > pos("C: DATA"));

        // Another network only: this client is not traced; then every client again.
        let (code, _) = ringmx(dir.path(), &["log", "debug", "on", "--client", "192.0.2.0/24"]);
        assert_eq!(code, 0);
        session(&srv, "elsewhere.example");
        let (code, out) = ringmx(dir.path(), &["log", "debug", "on"]);
        assert_eq!((code, out.as_str()), (0, "debug log on for every client\n"));
        session(&srv, "all.example");
        assert!(
            eventually(Duration::from_secs(20), || debug_log(dir.path()).contains("C: EHLO all.example")),
            "{driver}: {}",
            debug_log(dir.path())
        );
        assert!(!debug_log(dir.path()).contains("elsewhere.example"), "{driver}");
        let (code, out) = ringmx(dir.path(), &["log", "debug", "off"]);
        assert_eq!((code, out.as_str()), (0, "debug log off\n"));
        let (code, _) = ringmx(dir.path(), &["log", "debug", "on", "--client", "not a network"]);
        assert_eq!(code, 1, "a bad client list is refused");

        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");
        assert!(log.contains("debug log on for 127.0.0.0/8"), "switches are logged: {log}");
        // Stopped: nothing to switch.
        let (code, _) = ringmx(dir.path(), &["log", "debug", "status"]);
        assert_eq!(code, 1);
    }
}
