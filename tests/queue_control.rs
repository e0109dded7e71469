//! `ringmx queue retry|delete|bounce` on a running server (through its control socket) and
//! on a stopped one (marks written into the spool), and `queue list`'s per-recipient state.
//! The far end is `ringmx-loadgen sink` answering 450 to every RCPT, so messages stay
//! deferred on a one-hour schedule until the operator acts.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const CONFIG: &str = "[delivery.retry]\nintervals = [\"1h\"]\n[delivery.delay_notice]\nmode = \"off\"\n[delivery.remote]\ntls = \"off\"\n";

/// `ringmx queue ARGS...`: exit code, stdout, stderr.
fn queue_cmd(dir: &Path, args: &[&str]) -> (i32, String, String) {
    ringmx_out(dir, &[&["queue"], args].concat())
}

fn deferred(dir: &Path, id: &str, attempts: u64) -> bool {
    queue(dir).iter().any(|m| m["id"] == id && m["status"] == "deferred" && m["attempts"] == attempts)
}

fn alice_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("data/mailboxes/po/alice/Maildir/new"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| std::fs::read_to_string(e.path()).unwrap()).collect())
        .unwrap_or_default()
}

#[test]
fn retry_delete_bounce_on_the_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), "127.0.0.1:0", &["--rcpt-reply", "450 4.2.1 busy@100%"]);
    smart_host_directory(dir.path(), &sink.addr.to_string());
    let srv = start_plain(dir.path(), "uring", CONFIG);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    let a = queued_id(&c.message("alice@example.net", &["u@backup.example"], "Subject: a\r\n\r\nx\r\n"));
    let b = queued_id(&c.message("alice@example.net", &["v@backup.example"], "Subject: b\r\n\r\nx\r\n"));
    // Held: an accept-all domain with nowhere to send it.
    let h = queued_id(&c.message("s@remote.example", &["rcpt@example.test"], "Subject: h\r\n\r\nx\r\n"));
    assert!(eventually(Duration::from_secs(10), || deferred(dir.path(), &a, 1) && deferred(dir.path(), &b, 1)));

    // queue list: each recipient's state, attempts, next attempt and last error.
    let q = queue(dir.path());
    let m = q.iter().find(|m| m["id"] == a.as_str()).unwrap();
    let r = &m["recipients"][0];
    assert_eq!(
        (r["address"].as_str(), r["status"].as_str(), r["attempts"].as_u64()),
        (Some("u@backup.example"), Some("deferred"), Some(1))
    );
    assert!(r["last_error"].as_str().unwrap().contains("450 4.2.1 busy"), "{r}");
    assert!(r["next_attempt"].is_string(), "{r}");
    let (code, text, _) = queue_cmd(dir.path(), &["list"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("deferred  u@backup.example  (attempts 1, next ") && text.contains("450 4.2.1 busy"),
        "{text}"
    );

    // retry: tried again now, not in an hour.
    let (code, out, err) = queue_cmd(dir.path(), &["retry", &a]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{a}: retry now\n"));
    assert!(eventually(Duration::from_secs(10), || deferred(dir.path(), &a, 2)), "{:?}", queue(dir.path()));

    // delete: gone, no report.
    let (code, out, err) = queue_cmd(dir.path(), &["delete", &a, &h]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{a}: deleted\n{h}: deleted\n"));
    let ids: Vec<String> = queue(dir.path()).iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, vec![b.clone()]);

    // bounce: the sender (a local mailbox) gets a report, status 5.0.0.
    let (code, _, err) = queue_cmd(dir.path(), &["bounce", &b]);
    assert_eq!(code, 0, "{err}");
    assert!(eventually(Duration::from_secs(10), || alice_files(dir.path()).len() == 1));
    let report = &alice_files(dir.path())[0];
    assert!(report.contains("Action: failed") && report.contains("Status: 5.0.0"), "{report}");
    assert!(report.contains("Final-Recipient: rfc822; v@backup.example"), "{report}");
    assert!(eventually(Duration::from_secs(10), || queue(dir.path()).is_empty()));

    // An id that is not queued: exit 1, named.
    let (code, _, err) = queue_cmd(dir.path(), &["delete", &a]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("no queued message with id {a}")), "{err}");
    let (code, _, err) = queue_cmd(dir.path(), &["retry", "xyz"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a queue id"), "{err}");

    // A second server on the same spool is refused.
    let other = Command::new(env!("CARGO_BIN_EXE_ringmx"))
        .args(["serve", "--config"])
        .arg(dir.path().join("ringmx.toml"))
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stderr).contains("in use by another ringmx process"));

    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    let counts = sink.stop();
    assert_eq!(counts["codes"].as_array().unwrap().iter().find(|c| c["code"] == 450).unwrap()["count"], 3, "{counts}");
}

/// With the server stopped: `delete` and `retry` write their marks into the spool, the next
/// start honours them; `bounce` says it needs the running server.
#[test]
fn delete_and_retry_on_a_stopped_server() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), "127.0.0.1:0", &["--rcpt-reply", "450 4.2.1 busy@100%"]);
    smart_host_directory(dir.path(), &sink.addr.to_string());
    let srv = start_plain(dir.path(), "epoll", CONFIG);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    let a = queued_id(&c.message("alice@example.net", &["u@backup.example"], "Subject: a\r\n\r\nx\r\n"));
    let b = queued_id(&c.message("alice@example.net", &["v@backup.example"], "Subject: b\r\n\r\nx\r\n"));
    assert!(eventually(Duration::from_secs(10), || deferred(dir.path(), &a, 1) && deferred(dir.path(), &b, 1)));
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    assert!(!dir.path().join("data/control.sock").exists(), "the socket goes with the server");
    // The stop wrote where each queued message is: `show` reads a's record through it.
    let snapshot = dir.path().join("data/spool/queue.idx");
    assert!(snapshot.exists());
    let (code, shown, err) = queue_cmd(dir.path(), &["show", &a]);
    assert_eq!(code, 0, "{err}");
    assert!(shown.starts_with("Received: ") && shown.contains("Subject: a\r\n"), "{shown}");

    let (code, _, err) = queue_cmd(dir.path(), &["bounce", "--all"]);
    assert_eq!(code, 1);
    assert!(err.contains("bounce needs the running server"), "{err}");
    let (code, out, err) = queue_cmd(dir.path(), &["delete", &a]);
    assert_eq!((code, out), (0, format!("{a}: deleted\n")), "{err}");
    assert!(!snapshot.exists(), "a delete changes the queue: the snapshot goes");
    let (code, _, err) = queue_cmd(dir.path(), &["show", &a]);
    assert_eq!(code, 1, "deleted: {err}");
    let (code, out, err) = queue_cmd(dir.path(), &["retry", "--all"]);
    assert_eq!((code, out), (0, format!("{b}: retry now\n")), "{err}");
    let q = queue(dir.path());
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["id"], b.as_str());

    // At the start, b is due at once (not in an hour): its second attempt comes quickly.
    let srv = start_plain(dir.path(), "uring", CONFIG);
    assert!(eventually(Duration::from_secs(10), || deferred(dir.path(), &b, 2)), "{:?}", queue(dir.path()));
    assert_eq!(queue(dir.path()).len(), 1);
    assert!(!snapshot.exists(), "a running server changes the queue: no snapshot");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    let (code, shown, err) = queue_cmd(dir.path(), &["show", &b]);
    assert_eq!(code, 0, "{err}");
    assert!(shown.contains("Subject: b\r\n"), "{shown}");
    let (code, _, err) = queue_cmd(dir.path(), &["show", &a]);
    assert_eq!(code, 1, "not in the snapshot: {err}");
    sink.stop();
}

/// `ringmx queue suspend|resume|suspended`: on a stopped server the stored list changes; on
/// a running one, a suspended domain's mail waits in the queue while other mail goes, and
/// resuming sends it at once.
#[test]
fn suspended_destinations_wait_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ringmx.toml"), format!("data_dir = {:?}\n", d.join("data"))).unwrap();
    let (code, out, err) = queue_cmd(d, &["suspend", "Far.Example"]);
    assert_eq!((code, out.as_str()), (0, "far.example: suspended\n"), "{err}");
    assert_eq!(queue_cmd(d, &["suspended"]).1, "far.example: suspended\n");
    assert_eq!(queue_cmd(d, &["suspend", "not a domain"]).0, 1);

    let (far, seen, stop, t) = recording_far_end("Subject");
    let cfg = format!(
        "local_domains = [\"far.example\", \"near.example\"]\n[[listener]]\nport = 0\nbind = [\"127.0.0.1\"]\n\
         [delivery.routing.smart_host]\nhost = \"127.0.0.1\"\nport = {}\n{CONFIG}",
        far.port()
    );
    let srv = start(d, "uring", &cfg);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO client.test");
    let held = queued_id(&c.message("s@remote.example", &["x@far.example"], "Subject: held\r\n\r\nx\r\n"));
    queued_id(&c.message("s@remote.example", &["y@near.example"], "Subject: goes\r\n\r\ny\r\n"));
    assert!(eventually(Duration::from_secs(20), || seen.lock().unwrap().contains(&"goes".to_string())));
    assert!(!seen.lock().unwrap().contains(&"held".to_string()));
    assert!(queue(d).iter().any(|m| m["id"] == held.as_str()), "still queued");
    let (code, out, err) = queue_cmd(d, &["resume", "far.example"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(eventually(Duration::from_secs(20), || seen.lock().unwrap().contains(&"held".to_string())));
    assert!(eventually(Duration::from_secs(20), || queue(d).is_empty()));
    assert_eq!(queue_cmd(d, &["suspended"]).1, "", "the running server saved the list");
    srv.stop();
    stop_far_end(far, &stop);
    t.join().unwrap();
}
