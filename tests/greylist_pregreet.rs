//! Issue 14 at the door, on a running server: greylisting at RCPT (451 4.7.1, the retry
//! after the delay accepted, the state kept across a restart) and a listener's pregreet
//! test (a client that talks first gets 554 5.5.1, a patient one is served), both drivers.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;

#[test]
fn greylisting_then_the_retry_and_a_restart_remembers() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        alice_directory(dir.path());
        let cfg = format!("{PROXY_LISTENER}[greylist]\nenabled = true\ndelay = \"1s\"\n");
        let srv = start(dir.path(), driver, &cfg);
        let rcpt = |srv: &Server, to: &str| {
            let (mut c, _) = Client::connect_proxied(srv.addr(), "192.0.2.50");
            c.cmd("EHLO client.example");
            c.cmd("MAIL FROM:<someone@remote.example>");
            c.cmd(&format!("RCPT TO:<{to}>"))
        };
        let first = rcpt(&srv, "alice@example.net");
        assert!(first.starts_with("451 4.7.1 Error: greylisted, try again in "), "{driver}: {first}");
        // The retry once the delay has passed (polled: the test waits for the 250).
        assert!(
            eventually(Duration::from_secs(20), || rcpt(&srv, "alice@example.net") == "250 2.1.5 Ok\r\n"),
            "{driver}"
        );
        // Another recipient is greylisted on its own.
        assert!(rcpt(&srv, "postmaster@example.net").starts_with("451 4.7.1"), "{driver}");
        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");
        // Saved at the stop: after a restart the passed triplet passes at once.
        assert!(dir.path().join("data/greylist").exists());
        let srv = start(dir.path(), driver, &cfg);
        assert_eq!(rcpt(&srv, "alice@example.net"), "250 2.1.5 Ok\r\n", "{driver}");
        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");
    }
}

#[test]
fn early_talkers_are_refused_and_patient_clients_served() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        alice_directory(dir.path());
        let cfg = "[[listener]]\nport = 0\nbind = [\"127.0.0.1\"]\npregreet = \"1s\"\n";
        let srv = start(dir.path(), driver, cfg);
        // Talks at once: refused before any greeting.
        let mut s = std::net::TcpStream::connect(srv.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"EHLO bot.example\r\n").unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert_eq!(got, "554 5.5.1 Error: protocol error: talked before the greeting\r\n", "{driver}");
        // Waits for the greeting (it comes after the pregreet wait), then is served.
        let (mut c, greeting) = Client::connect(srv.addr());
        assert!(greeting.starts_with("220 mx.example.test"), "{driver}: {greeting}");
        assert!(c.cmd("EHLO patient.example").starts_with("250-"));
        let r = c.message("s@remote.example", &["alice@example.net"], "Subject: x\r\n\r\nx\r\n");
        queued_id(&r);
        assert!(c.cmd("QUIT").starts_with("221"));
        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");
        // The exit summary counts the refusal by its reason.
        assert!(log.contains("early talker"), "{log}");
    }
}
