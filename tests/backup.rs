//! `ringmx backup` while the server runs and takes mail, then `ringmx restore` onto a new
//! data directory: every message acknowledged before the backup began is delivered by the
//! restored server (once `queue retry --all` brings the deferred ones forward).

mod common;

use common::*;
use std::collections::HashSet;
use std::time::Duration;

/// One connection to the next hop (the test's far end serves one at a time).
const CONFIG: &str = "[delivery.retry]\nintervals = [\"1h\"]\n[delivery.delay_notice]\nmode = \"off\"\n\
                      [delivery.remote]\ntls = \"off\"\nmax_per_destination = 1\n";

fn send(addr: std::net::SocketAddr, from: usize, to: usize) {
    let (mut c, _) = Client::connect(addr);
    c.cmd("EHLO c");
    for i in from..to {
        let body = format!("Message-ID: <{i}@backup.test>\r\nSubject: {i}\r\n\r\nx\r\n");
        queued_id(&c.message("s@remote.example", &["u@backup.example"], &body));
    }
    c.cmd("QUIT");
}

#[test]
fn backup_under_load_then_restore_and_deliver() {
    let first = tempfile::tempdir().unwrap();
    // The next hop does not answer: the messages stay queued.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    smart_host_directory(first.path(), &closed.to_string());
    let srv = start_plain(first.path(), "uring", CONFIG);
    send(srv.addr(), 0, 20);
    // More mail arrives while the backup is taken.
    let addr = srv.addr();
    let during = std::thread::spawn(move || send(addr, 20, 40));
    let saved = tempfile::tempdir().unwrap();
    let dest = saved.path().join("b");
    let (code, out) = ringmx(first.path(), &["backup", dest.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("backed up: ") && !out.contains(" 0 spool segment(s)"), "{out}");
    during.join().unwrap();
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    // A backup goes into an empty directory only.
    assert_eq!(ringmx(first.path(), &["backup", dest.to_str().unwrap()]).0, 1);

    // A new machine: restore, then the next hop answers.
    let second = tempfile::tempdir().unwrap();
    let data = second.path().join("data");
    let restore = std::process::Command::new(BIN)
        .args(["restore", dest.to_str().unwrap(), "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(restore.status.success(), "{}", String::from_utf8_lossy(&restore.stderr));
    let (far, seen_ids, stop, t) = recording_far_end("Message-ID");
    smart_host_directory(second.path(), &far.to_string());
    let seen = || -> HashSet<String> {
        seen_ids.lock().unwrap().iter().map(|v| v.trim_start_matches('<').trim_end_matches('>').to_string()).collect()
    };
    let srv = start_plain(second.path(), "epoll", CONFIG);
    // What was deferred before the backup waits for its next attempt: try it now, as an
    // operator does once the next hop is back.
    let (code, out) = ringmx(second.path(), &["queue", "retry", "--all"]);
    assert_eq!(code, 0, "{out}");
    let acknowledged_before: HashSet<String> = (0..20).map(|i| format!("{i}@backup.test")).collect();
    assert!(
        eventually(Duration::from_secs(30), || seen().is_superset(&acknowledged_before)),
        "delivered after the restore: {:?}\n{}",
        seen(),
        std::fs::read_to_string(data.join("log/activity.log")).unwrap_or_default()
    );
    // Restoring onto a spool that holds segments is refused.
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    let again = std::process::Command::new(BIN)
        .args(["restore", dest.to_str().unwrap(), "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a spool"));
    stop_far_end(far, &stop);
    t.join().unwrap();
}
