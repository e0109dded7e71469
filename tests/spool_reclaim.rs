//! Spool reclamation end to end: segments whose messages are all delivered are retired and
//! their files reused; the control log's marks are copied forward so that a restart never
//! delivers a finished message again; a SIGKILL while segments are being retired loses no
//! acknowledged message.

mod common;

use common::*;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const CONFIG: &str = "[spool]\nsegment_size = \"64KiB\"\n";
/// Messages delivered beside the deferred one in the compaction test.
const FILL: usize = 1500;

fn directory(dir: &Path) {
    let d = dir.join("data/directory");
    std::fs::create_dir_all(&d).unwrap();
    let data = serde_json::json!({
        "postoffices": [{"name": "po"}],
        "domains": [{"name": "example.net", "postoffice": "po"}],
        "mailboxes": [
            {"postoffice": "po", "name": "alice", "addresses": ["alice@example.net"]},
            {"postoffice": "po", "name": "bob", "addresses": ["bob@example.net"]},
            {"postoffice": "po", "name": "carol", "addresses": ["carol@example.net"]}
        ]
    });
    std::fs::write(d.join("directory.json"), serde_json::to_string(&data).unwrap()).unwrap();
}

/// Files of a shard's spool directory with this extension.
fn spool_files(dir: &Path, shard: &str, ext: &str) -> usize {
    std::fs::read_dir(dir.join("data/spool").join(shard))
        .map(|rd| rd.filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == ext)).count())
        .unwrap_or(0)
}

/// Message-ID → copies in a mailbox.
fn copies(dir: &Path, mailbox: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    let new = dir.join("data/mailboxes/po").join(mailbox).join("Maildir/new");
    for e in std::fs::read_dir(new).into_iter().flatten().filter_map(|e| e.ok()) {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.starts_with("Message-ID: ")) {
            *out.entry(l.to_string()).or_default() += 1;
        }
    }
    out
}

fn body(tag: &str, i: usize) -> String {
    format!("Message-ID: <{tag}-{i}@test>\r\nSubject: {i}\r\n\r\n{}\r\n", "r".repeat(1500))
}

/// Many deliveries over small segments: the ingress shard keeps only its active segment and
/// a few free files; the control log rotates too and its marks are carried forward; after a
/// restart nothing is queued and nothing is delivered twice.
#[test]
fn delivered_segments_are_retired_reused_and_never_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path());
    let srv = start_plain(dir.path(), "uring", CONFIG);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    let rcpts = ["alice@example.net", "bob@example.net", "carol@example.net"];
    let n = 500;
    for i in 0..n {
        queued_id(&c.message("s@remote.example", &rcpts, &body("a", i)));
    }
    assert!(
        eventually(Duration::from_secs(60), || copies(dir.path(), "carol").len() == n),
        "{} delivered",
        copies(dir.path(), "carol").len()
    );
    // ~1 MiB over 64 KiB segments: all but the active one retired, at most 4 kept as free.
    assert!(
        eventually(Duration::from_secs(10), || spool_files(dir.path(), "00", "seg") <= 2),
        "{} segments left",
        spool_files(dir.path(), "00", "seg")
    );
    assert!((1..=4).contains(&spool_files(dir.path(), "00", "free")));
    // 1,500 marks are more than one control segment: the sealed ones went too.
    assert!(
        eventually(Duration::from_secs(10), || spool_files(dir.path(), "255", "seg") <= 2),
        "{}",
        spool_files(dir.path(), "255", "seg")
    );
    assert!(spool_files(dir.path(), "255", "free") >= 1, "the control log rotated and a sealed segment went");
    assert!(queue(dir.path()).is_empty());
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("spool segment(s) retired"), "{log}");

    // A second round writes into the reused files; then a restart.
    let srv = start_plain(dir.path(), "epoll", CONFIG);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    for i in 0..100 {
        queued_id(&c.message("s@remote.example", &rcpts, &body("b", i)));
    }
    assert!(eventually(Duration::from_secs(30), || copies(dir.path(), "alice").len() == n + 100));
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("tail cut") && !log.contains("damaged"), "{log}");

    let srv = start_plain(dir.path(), "uring", CONFIG);
    // A message sent after the restart is handled after whatever the recovery found: once
    // it is in, a redelivery would be too.
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    queued_id(&c.message("s@remote.example", &["alice@example.net"], "Message-ID: <sentinel@test>\r\n\r\nx\r\n"));
    assert!(eventually(Duration::from_secs(30), || copies(dir.path(), "alice").len() == n + 101));
    assert!(eventually(Duration::from_secs(30), || queue(dir.path()).is_empty()));
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    for mb in ["alice", "bob", "carol"] {
        let mut c = copies(dir.path(), mb);
        c.remove("Message-ID: <sentinel@test>");
        assert_eq!(c.len(), n + 100, "{mb}");
        assert!(c.values().all(|&k| k == 1), "{mb}: a message delivered twice");
    }
}

/// SIGKILL while messages are delivered and segments retired: after the restart every
/// acknowledged message is in the mailbox, none more than twice (RFC 5321 §6.1: a crash
/// may duplicate, never lose).
#[test]
fn sigkill_while_reclaiming_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path());
    let srv = start_plain(dir.path(), "uring", CONFIG);
    let addr = srv.addr();
    let sender = std::thread::spawn(move || {
        let mut acked = Vec::new();
        let (mut c, _) = Client::connect(addr);
        c.cmd("EHLO c");
        for i in 0..2000 {
            // The connection breaks when the server is killed.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                c.message("s@remote.example", &["alice@example.net"], &body("k", i))
            }));
            match r {
                Ok(reply) if reply.starts_with("250") => acked.push(i),
                _ => break,
            }
        }
        acked
    });
    assert!(eventually(Duration::from_secs(60), || copies(dir.path(), "alice").len() >= 300));
    srv.kill();
    let acked = sender.join().unwrap();
    assert!(acked.len() >= 300);
    let srv = start_plain(dir.path(), "epoll", CONFIG);
    assert!(
        eventually(Duration::from_secs(60), || queue(dir.path()).is_empty()),
        "{} still queued",
        queue(dir.path()).len()
    );
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    let c = copies(dir.path(), "alice");
    for i in &acked {
        let k = c.get(&format!("Message-ID: <k-{i}@test>")).copied().unwrap_or(0);
        assert!((1..=2).contains(&k), "message {i}: {k} copies");
    }
}

/// A message deferred for an hour keeps the first segment alive among hundreds of delivered
/// ones; compaction copies it forward, the segment goes, and the message keeps its state
/// and content across a restart.
#[test]
fn a_long_deferred_message_is_copied_forward_and_its_segment_goes() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), "127.0.0.1:0", &["--rcpt-reply", "450 4.2.1 busy@100%"]);
    smart_host_directory(dir.path(), &sink.addr.to_string());
    let config = format!(
        "{CONFIG}[delivery.retry]\nintervals = [\"1h\"]\n[delivery.delay_notice]\nmode = \"off\"\n[delivery.remote]\ntls = \"off\"\n"
    );
    let srv = start_plain(dir.path(), "uring", &config);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    let slow = queued_id(&c.message("s@remote.example", &["u@backup.example"], &body("slow", 0)));
    assert!(eventually(Duration::from_secs(20), || queue(dir.path()).iter().any(|m| m["status"] == "deferred")));
    // Enough mail that the marks of its deliveries fill more than one control segment too.
    for i in 0..FILL {
        queued_id(&c.message("s@remote.example", &["alice@example.net"], &body("fill", i)));
    }
    assert!(eventually(Duration::from_secs(60), || copies(dir.path(), "alice").len() == FILL));
    let first = dir.path().join("data/spool/00").join(format!("{:016x}.seg", 1));
    assert!(eventually(Duration::from_secs(20), || !first.exists()), "the first segment is still there");
    // The control segment with the deferral's mark goes too: the mark is copied forward,
    // its text read back from the segment (the reclaimer keeps no mark text in memory).
    let first_control = dir.path().join("data/spool/255").join(format!("{:016x}.seg", 1));
    assert!(eventually(Duration::from_secs(20), || !first_control.exists()), "control segment 1 is still there");
    let q = queue(dir.path());
    assert_eq!(q.len(), 1);
    assert_eq!(
        (q[0]["id"].as_str(), q[0]["status"].as_str(), q[0]["attempts"].as_u64()),
        (Some(slow.as_str()), Some("deferred"), Some(1))
    );
    let last_error = q[0]["recipients"][0]["last_error"].as_str().unwrap_or_default().to_string();
    assert!(last_error.starts_with("450 4.2.1 busy"), "{last_error}");
    assert_eq!(q[0]["shard"], 255, "now in the control log");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");

    let srv = start_plain(dir.path(), "epoll", &config);
    let q = queue(dir.path());
    assert_eq!(q.len(), 1);
    assert_eq!((q[0]["id"].as_str(), q[0]["attempts"].as_u64()), (Some(slow.as_str()), Some(1)));
    let (_, shown) = ringmx(dir.path(), &["queue", "show", &slow]);
    assert!(
        shown.contains("Message-ID: <slow-0@test>") && shown.ends_with(&format!("{}\r\n", "r".repeat(1500))),
        "{shown}"
    );
    // A message sent now is handled after the copied-forward one: once it is in, the
    // deferred message has had its chance to be delivered again, and must not have been.
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    queued_id(&c.message("s@remote.example", &["alice@example.net"], "Message-ID: <sentinel@test>\r\n\r\nx\r\n"));
    assert!(
        eventually(Duration::from_secs(30), || copies(dir.path(), "alice").contains_key("Message-ID: <sentinel@test>"))
    );
    let alice = copies(dir.path(), "alice");
    assert_eq!(alice.len(), FILL + 1);
    assert!(alice.values().all(|&k| k == 1), "a message delivered twice");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    sink.stop();
}
