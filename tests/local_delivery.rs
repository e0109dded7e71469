//! SMTP in → Maildir file out: RCPT rules over TCP, delivery with exact headers, redirects,
//! groups with a loop, catch-all (one copy + header), quota, and SIGKILL during delivery.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Writes the directory the server loads at start.
fn directory(dir: &Path, data: serde_json::Value) {
    let d = dir.join("data/directory");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("directory.json"), serde_json::to_string_pretty(&data).unwrap()).unwrap();
}

fn sample() -> serde_json::Value {
    serde_json::json!({
        "postoffices": [{"name": "po"}],
        "domains": [
            {"name": "example.net", "postoffice": "po"},
            {"name": "catch.example", "postoffice": "po", "catch_all": "alice@example.net"},
            {"name": "off.example", "postoffice": "po", "enabled": false},
            {"name": "picky.example", "postoffice": "po", "sender_blacklist": ["spam.example"]}
        ],
        "mailboxes": [
            {"postoffice": "po", "name": "alice", "addresses": ["alice@example.net"]},
            {"postoffice": "po", "name": "bob", "addresses": ["bob@example.net"], "redirect": ["alice@example.net"], "redirect_keep_copy": true},
            {"postoffice": "po", "name": "carol", "addresses": ["carol@example.net"], "redirect": ["alice@example.net"]},
            {"postoffice": "po", "name": "dave", "addresses": ["dave@example.net"], "disabled": true},
            {"postoffice": "po", "name": "erin", "addresses": ["erin@example.net", "info@picky.example"], "quota_bytes": 1500}
        ],
        "groups": [
            {"address": "team@example.net", "members": ["alice@example.net", "bob@example.net", "loop@example.net"]},
            {"address": "loop@example.net", "members": ["team@example.net"]}
        ],
        "blocked": ["blocked@example.net"]
    })
}

fn maildir(dir: &Path, mailbox: &str) -> PathBuf {
    dir.join("data/mailboxes/po").join(mailbox).join("Maildir/new")
}

/// The files in a mailbox's new/, waiting (bounded) until there are at least `n`.
fn wait_files(dir: &Path, mailbox: &str, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let files = files(dir, mailbox);
        if files.len() >= n {
            return files;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    files(dir, mailbox)
}

fn files(dir: &Path, mailbox: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(maildir(dir, mailbox))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| std::fs::read_to_string(e.path()).unwrap()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn wait_queue_empty(dir: &Path) -> Vec<serde_json::Value> {
    for _ in 0..200 {
        let q = queue(dir);
        if q.is_empty() {
            return q;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    queue(dir)
}

#[test]
fn rcpt_rules_exact_replies() {
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path(), sample());
    let srv = start_plain(dir.path(), "uring", "");
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    c.cmd("MAIL FROM:<x@spam.example>");
    for (rcpt, reply) in [
        ("alice@example.net", "250 2.1.5"),
        ("nobody@example.net", "550 5.1.1"),
        ("blocked@example.net", "550 5.1.1"),
        ("dave@example.net", "550 5.2.1"),
        ("x@off.example", "550 5.2.1"),
        ("info@picky.example", "550 5.7.1"),
        ("anything@catch.example", "250 2.1.5"),
        ("postmaster@example.net", "250 2.1.5"),
        ("team@example.net", "250 2.1.5"),
        ("x@elsewhere.example", "550 5.7.1"),
    ] {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(r.starts_with(reply), "{rcpt}: {r}");
    }
}

#[test]
fn smtp_in_maildir_out() {
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path(), sample());
    let srv = start_plain(dir.path(), "uring", "");
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO client.example");
    let body = "Message-ID: <one@client.example>\r\nSubject: hello\r\n\r\nbody\r\n";
    let id = queued_id(&c.message("sender@remote.example", &["alice@example.net"], body));
    let got = wait_files(dir.path(), "alice", 1);
    assert_eq!(got.len(), 1);
    // Maildir files have LF line ends, as Dovecot and friends expect.
    let want_head = "Return-Path: <sender@remote.example>\nDelivered-To: alice@example.net\nReceived: from client.example (unknown [127.0.0.1])\n\tby mx.example.test (ringmx) with ESMTP id ";
    assert!(got[0].starts_with(want_head), "{}", got[0]);
    assert!(got[0].contains(&id));
    assert!(got[0].ends_with(&body.replace("\r\n", "\n")));
    assert!(wait_queue_empty(dir.path()).is_empty(), "delivered messages leave the queue");
}

/// Redirect with and without keep-copy, a group with a loop, a catch-all hit by several
/// recipients: one copy each, with the header naming the original recipients.
#[test]
fn redirects_groups_catch_all() {
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path(), sample());
    let srv = start_plain(dir.path(), "epoll", "");
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    // bob keeps a copy and redirects to alice; carol only redirects.
    queued_id(&c.message("s@remote.example", &["bob@example.net", "carol@example.net"], "Subject: r\r\n\r\nx\r\n"));
    assert_eq!(wait_files(dir.path(), "bob", 1).len(), 1);
    assert_eq!(wait_files(dir.path(), "alice", 1).len(), 1, "alice gets one copy for both redirects");
    assert!(files(dir.path(), "carol").is_empty());
    // The group expands to alice and bob (and bob's redirect to alice); the loop is cut.
    queued_id(&c.message("s@remote.example", &["team@example.net"], "Subject: g\r\n\r\nx\r\n"));
    assert_eq!(wait_files(dir.path(), "alice", 2).len(), 2);
    assert_eq!(wait_files(dir.path(), "bob", 2).len(), 2);
    // Three recipients of the catch-all domain: one copy for alice with the header.
    queued_id(&c.message(
        "s@remote.example",
        &["a@catch.example", "b@catch.example", "c@catch.example"],
        "Subject: c\r\n\r\nx\r\n",
    ));
    let alice = wait_files(dir.path(), "alice", 3);
    assert_eq!(alice.len(), 3);
    let copy = alice.iter().find(|m| m.contains("Subject: c")).unwrap();
    assert!(copy.contains("X-Original-Recipients: a@catch.example, b@catch.example, c@catch.example\n"), "{copy}");
    wait_queue_empty(dir.path());
}

/// Quota reached mid-stream: the message that does not fit fails (marked, not retried),
/// earlier ones stay delivered, and the sender gets a non-delivery report (RFC 3464).
#[test]
fn quota_reached_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path(), sample());
    let srv = start_plain(dir.path(), "uring", "");
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    let body = format!("Subject: q\r\n\r\n{}\r\n", "y".repeat(400));
    for _ in 0..4 {
        queued_id(&c.message("s@remote.example", &["erin@example.net"], &body));
    }
    // Each message ends delivered (a file) or failed (a report queued, from <>): wait for all
    // four (the originals are in the queue too until then, so count only reports).
    assert!(eventually(Duration::from_secs(20), || {
        let q = queue(dir.path());
        q.iter().all(|m| m["from"] == "") && files(dir.path(), "erin").len() + q.len() == 4
    }));
    let got = files(dir.path(), "erin");
    assert!(got.len() < 4 && !got.is_empty(), "{} delivered", got.len());
    // What stays queued is only the reports to the (remote) sender, from <>.
    let q = queue(dir.path());
    assert_eq!(q.len(), 4 - got.len(), "{q:?}");
    for m in &q {
        assert_eq!(m["from"], "");
        assert_eq!(m["to"][0], "s@remote.example");
        let (_, dsn) = ringmx(dir.path(), &["queue", "show", m["id"].as_str().unwrap()]);
        assert!(dsn.contains("report-type=delivery-status"), "{dsn}");
        assert!(dsn.contains("Action: failed\r\n") && dsn.contains("Status: 5.2.2\r\n"), "{dsn}");
        assert!(dsn.contains("Final-Recipient: rfc822; erin@example.net\r\n"), "{dsn}");
    }
    let (_, log) = srv.stop();
    assert!(!log.contains("panicked"), "{log}");
}

/// A mailbox already at its quota when the server starts is refused at RCPT with 552 5.2.2
/// (RFC 3463: mailbox full), while its neighbours are still accepted.
#[test]
fn known_full_mailbox_refused_at_rcpt_552_5_2_2() {
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path(), sample());
    let cur = dir.path().join("data/mailboxes/po/erin/Maildir/cur");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(cur.parent().unwrap().join(sub)).unwrap();
    }
    std::fs::write(cur.join("1700000000.M1P1.old,S=1600:2,S"), vec![b'x'; 1600]).unwrap();
    let srv = start_plain(dir.path(), "epoll", "");
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    // The usage is read by the control thread at start: wait (bounded) until it is known.
    let mut reply = String::new();
    for _ in 0..100 {
        assert!(c.cmd("MAIL FROM:<s@remote.example>").starts_with("250"));
        reply = c.cmd("RCPT TO:<erin@example.net>");
        c.cmd("RSET");
        if !reply.starts_with("250") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(reply.starts_with("552 5.2.2"), "{reply}");
    assert!(c.cmd("MAIL FROM:<s@remote.example>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.net>").starts_with("250"));
    let (_, log) = srv.stop();
    assert!(!log.contains("panicked"), "{log}");
}

/// A local sender's bounce is delivered to its own mailbox; a bounce that cannot be
/// delivered is kept in the bad-mail folder, never bounced again.
#[test]
fn bounces_to_local_senders_and_badmail() {
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path(), sample());
    let srv = start_plain(dir.path(), "epoll", "");
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    let big = format!("Subject: big\r\n\r\n{}\r\n", "z".repeat(2000));
    queued_id(&c.message("alice@example.net", &["erin@example.net"], &big));
    let alice = wait_files(dir.path(), "alice", 1);
    assert_eq!(alice.len(), 1);
    assert!(alice[0].starts_with("Return-Path: <>\n"), "{}", alice[0]);
    assert!(alice[0].contains("Status: 5.2.2"), "{}", alice[0]);
    // From the null sender, the failure goes to badmail/.
    queued_id(&c.message("", &["erin@example.net"], &big));
    for _ in 0..200 {
        if dir.path().join("data/badmail").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(std::fs::read_dir(dir.path().join("data/badmail")).unwrap().count(), 1);
    assert!(wait_queue_empty(dir.path()).is_empty());
}

/// RFC 3834: one automatic reply per sender per period, none to bulk mail or <>; and the
/// delivery-event program runs with postoffice, mailbox and file.
#[test]
fn auto_responder_and_delivery_event() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("event.sh");
    let out = dir.path().join("event.out");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$1 $2 $3\" >> {}\n", out.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut data = sample();
    data["mailboxes"].as_array_mut().unwrap().push(serde_json::json!({
        "postoffice": "po", "name": "away", "addresses": ["away@example.net"],
        "autoresponder": {"subject": "Out of office", "body": "Back on Monday."},
        "delivery_event": script.to_string_lossy()
    }));
    directory(dir.path(), data);
    let srv = start_plain(dir.path(), "uring", "");
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    queued_id(&c.message(
        "x@remote.example",
        &["away@example.net"],
        "Message-ID: <q1@r>\r\nSubject: hi\r\n\r\nhello\r\n",
    ));
    queued_id(&c.message("x@remote.example", &["away@example.net"], "Subject: again\r\n\r\nhello\r\n"));
    queued_id(&c.message("y@remote.example", &["away@example.net"], "Precedence: bulk\r\n\r\nnews\r\n"));
    queued_id(&c.message("", &["away@example.net"], "Subject: bounce\r\n\r\nx\r\n"));
    assert_eq!(wait_files(dir.path(), "away", 4).len(), 4);
    // A later message, handled after those four: once it is in, any reply they caused is
    // queued (a late second reply would be too).
    queued_id(&c.message("z@remote.example", &["alice@example.net"], "Subject: sentinel\r\n\r\nx\r\n"));
    assert_eq!(wait_files(dir.path(), "alice", 1).len(), 1);
    assert!(eventually(Duration::from_secs(20), || !queue(dir.path()).is_empty()));
    let q = queue(dir.path());
    assert_eq!(q.len(), 1, "one reply: {q:?}");
    assert_eq!(q[0]["from"], "");
    assert_eq!(q[0]["to"][0], "x@remote.example");
    let (_, reply) = ringmx(dir.path(), &["queue", "show", q[0]["id"].as_str().unwrap()]);
    assert!(
        reply.contains("Subject: Out of office\r\n") && reply.contains("Auto-Submitted: auto-replied\r\n"),
        "{reply}"
    );
    assert!(reply.contains("In-Reply-To: <q1@r>\r\n"), "{reply}");
    // The event ran for the two messages that were neither bulk nor from <>.
    let mut lines = String::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&out).unwrap_or_default();
        if lines.lines().count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert!(lines.lines().all(|l| l.starts_with("po away ") && l.contains("/away/Maildir/new/")), "{lines}");
}

/// SIGKILL while deliveries run: after a restart every message is in the mailbox at least
/// once and at most twice.
#[test]
fn sigkill_during_local_delivery() {
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path(), sample());
    let srv = start_plain(dir.path(), "uring", "");
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    let n = 40;
    for i in 0..n {
        queued_id(&c.message(
            "s@remote.example",
            &["alice@example.net"],
            &format!("Message-ID: <m{i}@x>\r\n\r\nx\r\n"),
        ));
    }
    srv.kill();
    let srv = start_plain(dir.path(), "uring", "");
    assert!(wait_queue_empty(dir.path()).is_empty());
    let got = wait_files(dir.path(), "alice", n);
    for i in 0..n {
        let copies = got.iter().filter(|m| m.contains(&format!("Message-ID: <m{i}@x>\n"))).count();
        assert!((1..=2).contains(&copies), "message {i}: {copies} copies");
    }
    drop(srv);
}

/// `ringmx directory …` on a running server: the change applies to new connections within
/// a moment (the server sees the store change, as on SIGHUP), and a connection open across
/// the change keeps working.
#[test]
fn directory_change_reloads_the_running_server() {
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path(), sample());
    let srv = start_plain(dir.path(), "uring", "");
    let (mut old, _) = Client::connect(srv.addr());
    old.cmd("EHLO c");
    assert!(old.cmd("MAIL FROM:<s@remote.example>").starts_with("250"));
    assert!(old.cmd("RCPT TO:<newbie@example.net>").starts_with("550 5.1.1"));
    let (code, out) = ringmx(dir.path(), &["directory", "mailbox", "add", "newbie@example.net"]);
    assert_eq!(code, 0, "{out}");
    let accepted = || {
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO c");
        c.cmd("MAIL FROM:<s@remote.example>");
        c.cmd("RCPT TO:<newbie@example.net>").starts_with("250")
    };
    assert!(eventually(Duration::from_secs(10), accepted));
    assert!(old.cmd("NOOP").starts_with("250"), "the old connection is still served");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("directory changed: reloaded"), "{log}");
}

/// `postoffice reset-quota` on a running server: a mailbox refused as full at RCPT is
/// accepted once its files are gone and its usage is counted again; and the reports come
/// from `[delivery.dsn] sender`.
#[test]
fn reset_quota_reaches_the_running_server_and_reports_from_the_configured_sender() {
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path(), sample());
    let cur = dir.path().join("data/mailboxes/po/erin/Maildir/cur");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(cur.parent().unwrap().join(sub)).unwrap();
    }
    let old = cur.join("1700000000.M1P1.old,S=1600:2,S");
    std::fs::write(&old, vec![b'x'; 1600]).unwrap();
    let srv = start_plain(dir.path(), "uring", "[delivery.dsn]\nsender = \"bounces@example.net\"\n");
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    let mut rcpt = || {
        assert!(c.cmd("MAIL FROM:<alice@example.net>").starts_with("250"));
        let r = c.cmd("RCPT TO:<erin@example.net>");
        c.cmd("RSET");
        r
    };
    assert!(eventually(Duration::from_secs(20), || rcpt().starts_with("552 5.2.2")), "usage read at start");
    std::fs::remove_file(&old).unwrap();
    assert!(rcpt().starts_with("552 5.2.2"), "the server does not know yet");
    let (status, out) = ringmx(dir.path(), &["directory", "postoffice", "reset-quota", "po"]);
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("po/erin: 0 bytes in 0 message(s) of 1500\n"), "{out}");
    assert!(out.ends_with("the running server has the new figures\n"), "{out}");
    assert!(rcpt().starts_with("250"));
    // Too big for what is left: failed at delivery, reported from the configured sender.
    let big = format!("Subject: big\r\n\r\n{}\r\n", "z".repeat(2000));
    queued_id(&c.message("alice@example.net", &["erin@example.net"], &big));
    let report = wait_files(dir.path(), "alice", 1);
    assert!(report[0].contains("From: Mail Delivery System <bounces@example.net>\n"), "{}", report[0]);
    srv.stop();
}
