//! Policy delegation (`[[policy_service]]`, Postfix's SMTPD access policy protocol) against
//! the real postgrey (Debian's package, installed by tests/run.sh): the first attempt is
//! greylisted (450 4.7.1), a retry after postgrey's delay (shortened to 2 s in its command
//! line) is accepted and the message carries postgrey's X-Greylist header; a service that
//! is down gives its `default_action`.

mod common;

use common::*;
use std::process::{Child, Command};
use std::time::Duration;

struct Postgrey(Child);

impl Drop for Postgrey {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn postgrey(db: &std::path::Path) -> (Postgrey, u16) {
    std::fs::create_dir_all(db).unwrap();
    // postgrey drops to `nobody`, who must write its database.
    std::fs::set_permissions(db, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (child, port) = spawn_on_free_port(|port| {
        let mut c = Command::new("postgrey");
        c.arg(format!("--inet=127.0.0.1:{port}"))
            .arg(format!("--dbdir={}", db.display()))
            .args(["--delay=2", "--user=nobody", "--group=nogroup", "--auto-whitelist-clients=0"])
            .arg(format!("--whitelist-clients={}", db.join("none").display()))
            .arg(format!("--whitelist-recipients={}", db.join("none").display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    });
    (Postgrey(child), port)
}

#[test]
fn postgrey_greylists_then_accepts_with_its_header() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("none"), "").unwrap();
    let (_pg, port) = postgrey(&dir.path().join("postgrey"));
    alice_directory(dir.path());
    let cfg = format!("[[policy_service]]\naddress = \"127.0.0.1:{port}\"\n");
    let srv = start_plain(dir.path(), "uring", &cfg);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<s@remote.example>").starts_with("250"));
    let first = c.cmd("RCPT TO:<alice@example.net>");
    assert!(first.starts_with("450 4.2.0 Greylisted, see "), "postgrey names its status: {first}");
    drop(c);
    // Retried, as a client retries, in a new session each time, until postgrey's delay
    // has passed (postgrey keeps the first attempt's time).
    let mut last = String::new();
    let mut c = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            let (mut s, _) = Client::connect(srv.addr());
            s.cmd("EHLO client.test");
            s.cmd("MAIL FROM:<s@remote.example>");
            last = s.cmd("RCPT TO:<alice@example.net>");
            c = Some(s);
            last.starts_with("250")
        }),
        "{last}"
    );
    let mut c = c.unwrap();
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: greylisted\r\n\r\nhello\r\n.\r\n");
    queued_id(&c.reply());
    let new = dir.path().join("data/mailboxes/po/alice/Maildir/new");
    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            let files: Vec<_> = std::fs::read_dir(&new).map(|d| d.flatten().collect()).unwrap_or_default();
            text = files.first().map(|f| std::fs::read_to_string(f.path()).unwrap()).unwrap_or_default();
            !text.is_empty()
        }),
        "delivered"
    );
    // postgrey's PREPEND on top of what ringmx received (Maildir: LF line ends; the mailbox adds Return-Path and
    // Delivered-To above it).
    let greylist = text.find("\nX-Greylist: delayed ").unwrap_or_else(|| panic!("no X-Greylist: {text}"));
    let received = text.find("\nReceived: from client.test ").expect("our Received");
    assert!(greylist < received, "{text}");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    let activity = std::fs::read_to_string(dir.path().join("data/log/activity.log")).unwrap();
    assert!(
        activity.lines().any(|l| l.contains(" rejected ") && l.contains("step=rcpt rule=policy_service")),
        "{activity}"
    );
}

#[test]
fn a_service_that_is_down_gives_its_default_action() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for (action, reply) in [("tempfail", "451 4.3.5 Server configuration problem\r\n"), ("accept", "250 2.1.5 Ok\r\n")]
    {
        let dir = tempfile::tempdir().unwrap();
        alice_directory(dir.path());
        let cfg =
            format!("[[policy_service]]\naddress = \"{closed}\"\ndefault_action = \"{action}\"\ntimeout = \"2s\"\n");
        let srv = start_plain(dir.path(), "epoll", &cfg);
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO client.test");
        c.cmd("MAIL FROM:<s@remote.example>");
        assert_eq!(c.cmd("RCPT TO:<alice@example.net>"), reply, "{action}");
        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");
        assert!(log.contains(&format!("policy service {closed}")), "the failure is logged: {log}");
    }
}
