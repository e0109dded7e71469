//! Accept → remote delivery, end to end, with `ringmx-loadgen sink` as the far end: a
//! hosted domain relayed to its smart host (the backup-MX case), connection reuse, a 4xx
//! retried on a short schedule, a 5xx bounced to the (local) sender, a restart in the middle
//! of the retry schedule keeping the attempt count.

mod common;

use common::*;
use std::time::Duration;

const SHORT_RETRY: &str = "[delivery.retry]\nintervals = [\"1s\"]\n[delivery.delay_notice]\nmode = \"off\"\n[delivery.remote]\ntls = \"off\"\n";

#[test]
fn relayed_to_the_smart_host_over_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), "127.0.0.1:0", &[]);
    smart_host_directory(dir.path(), &sink.addr.to_string());
    // One connection at most to the destination: reuse is then the only way to send five.
    let srv = start_plain(dir.path(), "uring", &format!("{SHORT_RETRY}max_per_destination = 1\n"));
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    for i in 0..5 {
        queued_id(&c.message("s@remote.example", &["u@backup.example"], &format!("Subject: {i}\r\n\r\nx\r\n")));
    }
    assert!(eventually(Duration::from_secs(20), || queue(dir.path()).is_empty()), "{:?}", queue(dir.path()));
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    let counts = sink.stop();
    assert_eq!(counts["messages"], 5, "{counts}");
    assert_eq!(counts["connections"], 1, "connections are reused: {counts}");
}

/// 450 on the first attempt, then the far end accepts: the retry delivers it.
#[test]
fn temporary_failure_then_retry() {
    let dir = tempfile::tempdir().unwrap();
    let busy = Sink::start(dir.path(), "127.0.0.1:0", &["--rcpt-reply", "450 4.2.1 busy@100%"]);
    let addr = busy.addr;
    smart_host_directory(dir.path(), &addr.to_string());
    let srv = start_plain(dir.path(), "epoll", SHORT_RETRY);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    let id = queued_id(&c.message("s@remote.example", &["u@backup.example"], "Subject: r\r\n\r\nx\r\n"));
    assert!(eventually(Duration::from_secs(10), || queue(dir.path())
        .first()
        .is_some_and(|m| m["status"] == "deferred")));
    let q = queue(dir.path());
    assert_eq!(q[0]["id"], id.as_str());
    assert!(q[0]["attempts"].as_u64().unwrap() >= 1);
    assert!(q[0]["next_attempt"].is_string(), "{q:?}");
    busy.stop();
    let ok = Sink::start(dir.path(), &addr.to_string(), &[]);
    assert!(eventually(Duration::from_secs(20), || queue(dir.path()).is_empty()), "{:?}", queue(dir.path()));
    drop(srv);
    assert_eq!(ok.stop()["messages"], 1);
}

/// 550 from the far end: the recipient fails and the local sender gets an RFC 3464 report
/// naming the remote host and its reply.
#[test]
fn permanent_failure_bounces_to_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), "127.0.0.1:0", &["--rcpt-reply", "550 5.1.1 no such user@100%"]);
    smart_host_directory(dir.path(), &sink.addr.to_string());
    let srv = start_plain(dir.path(), "uring", SHORT_RETRY);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    queued_id(&c.message("alice@example.net", &["gone@backup.example"], "Subject: hi\r\n\r\nx\r\n"));
    let new = dir.path().join("data/mailboxes/po/alice/Maildir/new");
    assert!(eventually(Duration::from_secs(20), || std::fs::read_dir(&new).map(|d| d.count() == 1).unwrap_or(false)));
    let f = std::fs::read_dir(&new).unwrap().next().unwrap().unwrap().path();
    let report = std::fs::read_to_string(f).unwrap();
    assert!(report.contains("Action: failed\n") && report.contains("Status: 5.1.1\n"), "{report}");
    assert!(report.contains("Final-Recipient: rfc822; gone@backup.example\n"), "{report}");
    assert!(report.contains("Diagnostic-Code: smtp; 550 5.1.1"), "{report}");
    assert!(eventually(Duration::from_secs(10), || queue(dir.path()).is_empty()));
}

/// A restart in the middle of the retry schedule keeps the attempt count; the (local)
/// sender gets one delay notice (RFC 3464 Action: delayed) on the first deferral.
#[test]
fn restart_keeps_attempt_counts_and_delay_notice() {
    let dir = tempfile::tempdir().unwrap();
    let busy = Sink::start(dir.path(), "127.0.0.1:0", &["--rcpt-reply", "451 4.3.0 later@100%"]);
    smart_host_directory(dir.path(), &busy.addr.to_string());
    let cfg = "[delivery.retry]\nintervals = [\"1s\"]\n[delivery.remote]\ntls = \"off\"\n";
    let srv = start_plain(dir.path(), "uring", cfg);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    queued_id(&c.message("alice@example.net", &["u@backup.example"], "Subject: r\r\n\r\nx\r\n"));
    assert!(eventually(Duration::from_secs(20), || queue(dir.path())
        .first()
        .is_some_and(|m| m["attempts"].as_u64().unwrap_or(0) >= 2)));
    let new = dir.path().join("data/mailboxes/po/alice/Maildir/new");
    assert!(eventually(Duration::from_secs(10), || std::fs::read_dir(&new).map(|d| d.count() == 1).unwrap_or(false)));
    let notice = std::fs::read_to_string(std::fs::read_dir(&new).unwrap().next().unwrap().unwrap().path()).unwrap();
    assert!(notice.contains("Action: delayed\n") && notice.contains("Will-Retry-Until: "), "{notice}");
    let before = queue(dir.path())[0]["attempts"].as_u64().unwrap();
    srv.kill();
    let srv = start_plain(dir.path(), "uring", cfg);
    assert!(eventually(Duration::from_secs(20), || queue(dir.path())
        .first()
        .is_some_and(|m| m["attempts"].as_u64().unwrap_or(0) > before)));
    drop(srv);
    drop(busy);
    // Still one notice: "first" mode tells of the first delay only.
    assert_eq!(std::fs::read_dir(&new).unwrap().count(), 1);
}

/// More messages at once than connections allowed to the destination: deliveries waiting
/// for a connection take the ones that come back to the pool (idle connections keep their
/// permits, so waiting on the permit alone would stall).
#[test]
fn more_messages_than_connections() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), "127.0.0.1:0", &[]);
    smart_host_directory(dir.path(), &sink.addr.to_string());
    let cfg = format!("{SHORT_RETRY}max_per_destination = 2\nmax_connections = 3\n");
    let srv = start_plain(dir.path(), "uring", &cfg);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    for i in 0..30 {
        queued_id(&c.message("s@remote.example", &["u@backup.example"], &format!("Subject: {i}\r\n\r\nx\r\n")));
    }
    assert!(eventually(Duration::from_secs(30), || queue(dir.path()).is_empty()), "{:?}", queue(dir.path()).len());
    drop(srv);
    let counts = sink.stop();
    assert_eq!(counts["messages"], 30);
    assert!(counts["connections"].as_u64().unwrap() <= 3, "{counts}");
}

/// A redirect and a group member in a domain relayed elsewhere: the local copies go to
/// their Maildirs and one forwarded message per original reaches the far end; nothing stays
/// queued.
#[test]
fn redirect_and_group_member_elsewhere_are_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), "127.0.0.1:0", &[]);
    let d = dir.path().join("data/directory");
    std::fs::create_dir_all(&d).unwrap();
    let data = serde_json::json!({
        "postoffices": [{"name": "po"}],
        "domains": [
            {"name": "example.net", "postoffice": "po"},
            {"name": "backup.example", "postoffice": "po", "smart_host": sink.addr.to_string()}
        ],
        "mailboxes": [
            {"postoffice": "po", "name": "alice", "addresses": ["alice@example.net"]},
            {"postoffice": "po", "name": "bob", "addresses": ["bob@example.net"],
             "redirect": ["u@backup.example"], "redirect_keep_copy": true}
        ],
        "groups": [{"address": "team@example.net", "members": ["alice@example.net", "w@backup.example"]}]
    });
    std::fs::write(d.join("directory.json"), serde_json::to_string(&data).unwrap()).unwrap();
    let srv = start_plain(dir.path(), "uring", SHORT_RETRY);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    queued_id(&c.message("s@remote.example", &["bob@example.net"], "Subject: r\r\n\r\nx\r\n"));
    queued_id(&c.message("s@remote.example", &["team@example.net"], "Subject: g\r\n\r\nx\r\n"));
    assert!(eventually(Duration::from_secs(20), || queue(dir.path()).is_empty()), "{:?}", queue(dir.path()));
    let count = |mb: &str| {
        std::fs::read_dir(dir.path().join("data/mailboxes/po").join(mb).join("Maildir/new")).map_or(0, |r| r.count())
    };
    assert_eq!((count("alice"), count("bob")), (1, 1));
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("forwarded to u@backup.example") && log.contains("forwarded to w@backup.example"), "{log}");
    let counts = sink.stop();
    assert_eq!((counts["messages"].as_u64(), counts["recipients"].as_u64()), (Some(2), Some(2)), "{counts}");
}

/// RFC 3461 §5.2: NOTIFY=SUCCESS relayed to a server without DSN gets a "relayed" report
/// from us; relayed to one with DSN (another ringmx), the parameters go on with the message
/// (§5.2.1) and we send no report.
#[test]
fn success_notification_relayed_or_passed_on() {
    // Far end without DSN: the loadgen sink.
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), "127.0.0.1:0", &[]);
    smart_host_directory(dir.path(), &sink.addr.to_string());
    let srv = start_plain(dir.path(), "uring", SHORT_RETRY);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    assert!(c.cmd("MAIL FROM:<alice@example.net> ENVID=env+2B1").starts_with("250"));
    assert!(
        c.cmd("RCPT TO:<u@backup.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;U@backup.example").starts_with("250")
    );
    assert!(c.cmd("DATA").starts_with("354"));
    queued_id(&c.cmd("Subject: s\r\n\r\nx\r\n."));
    let new = dir.path().join("data/mailboxes/po/alice/Maildir/new");
    assert!(eventually(Duration::from_secs(20), || std::fs::read_dir(&new).map(|d| d.count() == 1).unwrap_or(false)));
    let f = std::fs::read_dir(&new).unwrap().next().unwrap().unwrap().path();
    let report = std::fs::read_to_string(f).unwrap();
    assert!(report.contains("Action: relayed\n") && report.contains("Original-Envelope-Id: env+1\n"), "{report}");
    assert!(report.contains("Original-Recipient: rfc822; U@backup.example\n"), "{report}");
    assert!(report.contains("do not send delivery notifications"), "{report}");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    sink.stop();

    // Far end with DSN: a second ringmx that holds mail for backup.example.
    let dir = tempfile::tempdir().unwrap();
    let far_dir = dir.path().join("far");
    let far = start(
        &far_dir,
        "epoll",
        "local_domains = [\"backup.example\"]\n[[listener]]\nport = 0\nbind = [\"127.0.0.1\"]\n",
    );
    smart_host_directory(dir.path(), &far.addr().to_string());
    let srv = start_plain(dir.path(), "uring", SHORT_RETRY);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    assert!(c.cmd("MAIL FROM:<alice@example.net> RET=HDRS ENVID=env+2B2").starts_with("250"));
    assert!(c.cmd("RCPT TO:<u@backup.example> NOTIFY=SUCCESS ORCPT=rfc822;U@backup.example").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    queued_id(&c.cmd("Subject: s\r\n\r\nx\r\n."));
    assert!(eventually(Duration::from_secs(20), || queue(dir.path()).is_empty() && queue(&far_dir).len() == 1));
    let m = &queue(&far_dir)[0];
    assert_eq!((m["envid"].as_str(), m["ret"].as_str()), (Some("env+2B2"), Some("HDRS")), "{m}");
    let r = &m["recipients"][0];
    assert_eq!((r["notify"].as_str(), r["orcpt"].as_str()), (Some("SUCCESS"), Some("rfc822;U@backup.example")), "{r}");
    assert!(!dir.path().join("data/mailboxes/po/alice/Maildir/new").exists(), "no report from the relay");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    far.stop();
}

/// A pooled connection left idle is closed on time, with QUIT, while the server runs: the
/// far end never has to time it out (Postfix logs "timeout after END-OF-MESSAGE" otherwise).
#[test]
fn idle_pooled_connection_is_closed_with_quit() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let far = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            far_end(listener, stop, |e| {
                if let FarEvent::Command(verb) = e {
                    seen.lock().unwrap().push(verb.to_string());
                }
            })
        })
    };
    smart_host_directory(dir.path(), &far.to_string());
    let srv = start_plain(dir.path(), "uring", &format!("{SHORT_RETRY}idle_timeout = \"1s\"\n"));
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    queued_id(&c.message("s@remote.example", &["u@backup.example"], "Subject: idle\r\n\r\nx\r\n"));
    assert!(
        eventually(Duration::from_secs(30), || seen.lock().unwrap().iter().any(|v| v == "QUIT")),
        "{:?}",
        seen.lock().unwrap()
    );
    let verbs = seen.lock().unwrap().clone();
    assert_eq!(verbs, ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"], "closed with QUIT after its message");
    assert!(queue(dir.path()).is_empty());
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    stop_far_end(far, &stop);
    t.join().unwrap();
}
