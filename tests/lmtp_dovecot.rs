//! Local delivery over LMTP to a real Dovecot (`dovecot-lmtpd`, installed by tests/run.sh),
//! started by the test with its own configuration in a temporary directory: a delivered
//! copy lands in Dovecot's Maildir, Dovecot's own refusals (unknown user 550 5.1.1, over
//! quota 552 5.2.2) fail those recipients and come back to the sender as a report.
//!
//! Dovecot refuses to deliver as uid 0, so the mail is stored as `nobody` (65534); the test
//! needs root to hand Dovecot that directory, and prints why it is skipped otherwise.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const DOVECOT: &str = "/usr/sbin/dovecot";

struct Dovecot {
    child: std::process::Child,
    port: u16,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dovecot(dir: &Path) -> Dovecot {
    for sub in ["run", "state", "mail"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let mail = dir.join("mail");
    std::os::unix::fs::chown(&mail, Some(65534), Some(65534)).unwrap();
    let users = dir.join("users");
    std::fs::write(
        &users,
        format!(
            "alice::65534:65534::{m}/alice::\nfull::65534:65534::{m}/full::userdb_quota_rule=*:storage=10B\n",
            m = mail.display()
        ),
    )
    .unwrap();
    let conf = dir.join("dovecot.conf");
    let (child, port) = spawn_on_free_port(|port| {
        std::fs::write(
            &conf,
            format!(
                "base_dir = {run}\nstate_dir = {state}\nlog_path = /dev/stderr\nprotocols = lmtp\nssl = no\n\
                 listen = 127.0.0.1\ndefault_internal_user = root\ndefault_internal_group = root\n\
                 default_login_user = root\nmail_location = maildir:~/Maildir\nmail_plugins = quota\n\
                 plugin {{\n  quota = maildir:User quota\n}}\n\
                 userdb {{\n  driver = passwd-file\n  args = username_format=%n {users}\n}}\n\
                 passdb {{\n  driver = static\n  args = nopassword=y\n}}\n\
                 service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n\
                 service anvil {{\n  chroot =\n}}\nservice stats {{\n  chroot =\n}}\n",
                run = dir.join("run").display(),
                state = dir.join("state").display(),
                users = users.display(),
            ),
        )
        .unwrap();
        let mut c = Command::new(DOVECOT);
        c.arg("-F").arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null());
        c
    });
    Dovecot { child, port }
}

#[test]
fn delivered_to_dovecot_over_lmtp_with_its_refusals_reported() {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    if !Path::new(DOVECOT).exists() || unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs {DOVECOT} (dovecot-core, dovecot-lmtpd) and root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dovecot = start_dovecot(&dir.path().join("dovecot"));
    let d = dir.path().join("data/directory");
    std::fs::create_dir_all(&d).unwrap();
    let data = serde_json::json!({
        "postoffices": [{"name": "po"}],
        "domains": [{"name": "example.test", "postoffice": "po"}, {"name": "maildir.example", "postoffice": "po"}],
        "mailboxes": [
            {"postoffice": "po", "name": "alice", "addresses": ["alice@example.test"]},
            {"postoffice": "po", "name": "full", "addresses": ["full@example.test"]},
            {"postoffice": "po", "name": "ghost", "addresses": ["ghost@example.test"]},
            {"postoffice": "po", "name": "bob", "addresses": ["bob@maildir.example"]}
        ]
    });
    std::fs::write(d.join("directory.json"), serde_json::to_string(&data).unwrap()).unwrap();
    let config = format!("[delivery.lmtp]\nserver = \"127.0.0.1:{}\"\ndomains = [\"example.test\"]\n", dovecot.port);
    let srv = start_plain(dir.path(), "uring", &config);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    queued_id(&c.message(
        "bob@maildir.example",
        &["alice@example.test", "full@example.test", "ghost@example.test"],
        "Subject: dv\r\n\r\nthrough dovecot\r\n",
    ));
    let alice = dir.path().join("dovecot/mail/alice/Maildir/new");
    let bob = dir.path().join("data/mailboxes/po/bob/Maildir/new");
    let count = |p: &Path| std::fs::read_dir(p).map_or(0, |r| r.count());
    assert!(eventually(Duration::from_secs(20), || count(&alice) == 1 && count(&bob) == 1));
    let copy = std::fs::read_dir(&alice).unwrap().next().unwrap().unwrap().path();
    let copy = std::fs::read_to_string(copy).unwrap();
    assert!(copy.contains("Subject: dv") && copy.contains("Return-Path: <bob@maildir.example>"), "{copy}");
    let report = std::fs::read_dir(&bob).unwrap().next().unwrap().unwrap().path();
    let report = std::fs::read_to_string(report).unwrap();
    assert!(
        report.contains("Final-Recipient: rfc822; full@example.test") && report.contains("Status: 5.2.2"),
        "{report}"
    );
    assert!(
        report.contains("Final-Recipient: rfc822; ghost@example.test") && report.contains("Status: 5.1.1"),
        "{report}"
    );
    assert!(!report.contains("Final-Recipient: rfc822; alice@example.test"), "{report}");
    assert!(eventually(Duration::from_secs(10), || queue(dir.path()).is_empty()));
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
}
