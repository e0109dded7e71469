//! The open-relay suite over real TCP, on both drivers: an unauthenticated client from a
//! non-privileged address (presented through the PROXY protocol, so not loopback) tries every
//! known trick to relay through a local domain; every attempt is refused with 550 5.7.1 (or
//! refused as bad syntax), every genuine local recipient is accepted. Then the relay rules
//! that do allow it: privileged ranges, local senders, POP-before-SMTP.

mod common;

use common::*;
use std::path::Path;

fn directory(dir: &Path) {
    alice_directory(dir);
}

#[test]
fn open_relay_suite_refuses_every_trick() {
    for driver in DRIVERS {
        let tmp = tempfile::tempdir().unwrap();
        directory(tmp.path());
        let srv = start(tmp.path(), driver, &format!("{PROXY_LISTENER}[policy]\ndomain_literals = true\n"));
        let (mut c, g) = Client::connect_proxied(srv.addr(), "198.51.100.77");
        assert!(g.starts_with("220 mx.example.test "), "{driver}: {g}");
        assert!(c.cmd("EHLO relay-tester.example").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<spammer@remote.example>").starts_with("250"));
        let denied = "550 5.7.1 Error: relay access denied\r\n";
        for rcpt in [
            "<victim@remote.example>",
            "<victim%remote.example@example.net>",
            "<victim%remote.example@example.test>",
            "<@example.net:victim@remote.example>",
            "<@example.net,@example.test:victim@remote.example>",
            "<\"victim@remote.example\"@example.net>",
            "<remote.example!victim@example.net>",
            "<victim@[198.51.100.1]>",
            "<victim@[IPv6:2001:db8::1]>",
            "<victim@remote.example.>",
        ] {
            let r = c.cmd(&format!("RCPT TO:{rcpt}"));
            assert!(r == denied || r.starts_with("501 5.1.3"), "{driver}: {rcpt} -> {r}");
        }
        // `user@remote@local` is not an address at all.
        assert!(c.cmd("RCPT TO:<victim@remote.example@example.net>").starts_with("501 5.1.3"));
        for rcpt in [
            "<alice@example.net>",
            "<Alice@EXAMPLE.NET>",
            "<postmaster@example.net>",
            "<Postmaster>",
            "<someone@Example.Test>",
            "<@remote.example:alice@example.net>",
            "<postmaster@[127.0.0.1]>",
        ] {
            assert_eq!(c.cmd(&format!("RCPT TO:{rcpt}")), "250 2.1.5 Ok\r\n", "{driver}: {rcpt}");
        }
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(b"Subject: t\r\n\r\nx\r\n.\r\n");
        assert!(c.reply().starts_with("250 2.0.0 Ok: queued as"));
        // What was stored names local recipients only (notices the router may have generated
        // since are from <>).
        let q = queue(tmp.path());
        let ours: Vec<&serde_json::Value> = q.iter().filter(|m| m["from"] == "spammer@remote.example").collect();
        assert_eq!(ours.len(), 1, "{q:?}");
        let to: Vec<&str> = ours[0]["to"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(to.len(), 7, "{to:?}");
        assert!(to.iter().all(|t| !t.contains("victim")), "{to:?}");
    }
}

#[test]
fn relay_allowed_by_privileged_range_local_sender_and_pop_before_smtp() {
    for driver in DRIVERS {
        let tmp = tempfile::tempdir().unwrap();
        let pop = tmp.path().join("pop");
        std::fs::create_dir_all(&pop).unwrap();
        std::fs::write(pop.join("203.0.113.8"), "").unwrap();
        let cfg = format!(
            "{PROXY_LISTENER}[relay]\nprivileged = [\"192.0.2.0/24\"]\npop_before_smtp_dir = {pop:?}\npop_before_smtp_window = \"10m\"\n"
        );
        let srv = start(tmp.path(), driver, &cfg);
        for (client, ok) in [("192.0.2.44", true), ("203.0.113.8", true), ("203.0.113.9", false), ("127.0.0.1", false)]
        {
            let (mut c, _) = Client::connect_proxied(srv.addr(), client);
            c.cmd("EHLO c");
            c.cmd("MAIL FROM:<a@remote.example>");
            let r = c.cmd("RCPT TO:<b@elsewhere.example>");
            assert_eq!(r.starts_with("250"), ok, "{driver} {client}: {r}");
        }
        drop(srv);
        // Local senders may relay only when switched on (an open relay for forgers otherwise).
        let tmp = tempfile::tempdir().unwrap();
        let srv = start_plain(tmp.path(), driver, "[relay]\nlocal_senders = true\n");
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO c");
        c.cmd("MAIL FROM:<me@example.test>");
        assert_eq!(c.cmd("RCPT TO:<b@elsewhere.example>"), "250 2.1.5 Ok\r\n", "{driver}");
        c.cmd("RSET");
        c.cmd("MAIL FROM:<me@remote.example>");
        assert!(c.cmd("RCPT TO:<b@elsewhere.example>").starts_with("550 5.7.1"), "{driver}");
    }
}
