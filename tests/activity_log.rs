//! The activity log (`<data_dir>/log/activity.log`): one message's lines from receipt to
//! mailbox delivery, to a remote deferral, to an operator's bounce and its report, all with
//! the message's queue id; a refused client with its rule; JSON lines; SIGUSR1 reopening
//! the file after logrotate renamed it.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const CONFIG: &str = "[delivery.retry]\nintervals = [\"1h\"]\n[delivery.delay_notice]\nmode = \"off\"\n\
                      [delivery.remote]\ntls = \"off\"\n[policy]\nehlo_block = [\"ylmf-pc\"]\n";

fn activity(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data/log/activity.log")).unwrap_or_default()
}

/// The lines of `text` naming queue id `id`, without their time stamps.
fn lines_of(text: &str, id: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains(&format!(" id={id} ")) || l.contains(&format!(" about={id} ")))
        .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest).to_string())
        .collect()
}

#[test]
fn a_message_from_receipt_to_each_outcome_and_a_refusal() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::start(dir.path(), "127.0.0.1:0", &["--rcpt-reply", "450 4.2.1 busy"]);
        smart_host_directory(dir.path(), &sink.addr.to_string());
        let srv = start_plain(dir.path(), driver, CONFIG);
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO client.test");
        let local = queued_id(&c.message("s@remote.example", &["alice@example.net"], "Subject: l\r\n\r\nx\r\n"));
        let remote = queued_id(&c.message("alice@example.net", &["u@backup.example"], "Subject: r\r\n\r\nx\r\n"));
        // Refused at EHLO, with the rule.
        let (mut bot, _) = Client::connect(srv.addr());
        assert!(bot.cmd("EHLO YLMF-PC").starts_with("554 5.7.1"));

        let delivered = format!("delivered id={local} rcpt=<alice@example.net> via=mailbox");
        let deferred = format!("deferred id={remote} rcpt=<u@backup.example> via=");
        assert!(
            eventually(Duration::from_secs(20), || {
                let t = activity(dir.path());
                t.contains(&delivered) && t.contains(&deferred)
            }),
            "{driver}: {}",
            activity(dir.path())
        );
        // The operator returns the deferred message: its report goes to alice's mailbox.
        let (code, _) = ringmx(dir.path(), &["queue", "bounce", &remote]);
        assert_eq!(code, 0);
        assert!(
            eventually(Duration::from_secs(20), || {
                let t = activity(dir.path());
                let dsn = lines_of(&t, &remote).iter().find_map(|l| {
                    l.strip_prefix("generated id=").and_then(|r| r.split_once(' ')).map(|(id, _)| id.to_string())
                });
                dsn.is_some_and(|d| t.contains(&format!("delivered id={d} rcpt=<alice@example.net> via=mailbox")))
            }),
            "{driver}: {}",
            activity(dir.path())
        );
        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");
        sink.stop();

        let text = activity(dir.path());
        let l = lines_of(&text, &local);
        assert_eq!(l.len(), 3, "{driver}: {text}");
        // The shard's number in the session id's top byte, then a counter.
        let session = l[0].split(" session=").nth(1).and_then(|s| s.split(' ').next()).unwrap_or("");
        assert!(session.len() == 16 && session.starts_with("00") && session != "0000000000000000", "{}", l[0]);
        assert!(
            l[0].starts_with(&format!(
                "received id={local} session={session} client=127.0.0.1 helo=client.test from=<s@remote.example> \
                 rcpts=1 size="
            )),
            "{}",
            l[0]
        );
        assert!(l[0].ends_with(" tls=- auth=-"), "{}", l[0]);
        assert_eq!(l[1], format!("routed id={local} route=local rcpts=alice@example.net"));
        assert_eq!(l[2], format!("{delivered} reply=\"250 2.0.0 delivered to mailbox\""));
        let r = lines_of(&text, &remote);
        assert_eq!(r.len(), 5, "{driver}: {text}");
        assert!(r[0].starts_with(&format!("received id={remote} ")), "{}\n{text}", r[0]);
        assert!(r[1].starts_with(&format!("routed id={remote} route=smart_host:127.0.0.1:")), "{}", r[1]);
        assert!(r[2].starts_with(&deferred) && r[2].contains("450 4.2.1 busy") && r[2].contains(" next_attempt="));
        assert_eq!(r[3], format!("operator id={remote} action=bounce"));
        assert!(
            r[4].starts_with("generated id=")
                && r[4].ends_with(&format!(" kind=dsn about={remote} to=alice@example.net"))
        );
        assert!(
            text.lines().any(|l| l.contains(" refused session=")
                && l.ends_with(" client=127.0.0.1 reason=\"EHLO block\" rule=YLMF-PC")),
            "{driver}: {text}"
        );
        assert!(!text.contains("events-dropped"), "{text}");
    }
}

/// JSON lines by configuration; SIGUSR1 reopens the file after a rename, as logrotate does.
#[test]
fn json_lines_and_sigusr1_reopens() {
    let dir = tempfile::tempdir().unwrap();
    alice_directory(dir.path());
    let srv = start_plain(dir.path(), "uring", "[log]\nformat = \"json\"\n");
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    let first = queued_id(&c.message("s@remote.example", &["alice@example.net"], "Subject: 1\r\n\r\nx\r\n"));
    let path = dir.path().join("data/log/activity.log");
    let has = |path: &Path, event: &str, id: &str| {
        std::fs::read_to_string(path).unwrap_or_default().lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["event"] == event && v["id"] == id
        })
    };
    assert!(eventually(Duration::from_secs(20), || has(&path, "delivered", &first)));
    let rotated = dir.path().join("data/log/activity.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    // SAFETY: kill(2) takes a pid and a signal, no memory; the pid is the server this test started.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGUSR1) };
    // The writer makes the new file when it reopens; what is sent after that goes there.
    assert!(eventually(Duration::from_secs(20), || path.exists()), "not reopened");
    let second = queued_id(&c.message("s@remote.example", &["alice@example.net"], "Subject: 2\r\n\r\nx\r\n"));
    assert!(
        eventually(Duration::from_secs(20), || has(&path, "delivered", &second)),
        "{}",
        std::fs::read_to_string(&path).unwrap_or_default()
    );
    assert!(has(&rotated, "received", &first) && !has(&rotated, "delivered", &second));
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("SIGUSR1: logs reopened"), "{log}");
    // `ringmx log summary` over both files: two messages in, two copies delivered.
    let out = std::process::Command::new(BIN).arg("log").arg("summary").arg(&rotated).arg(&path).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("        2  received ("), "{text}");
    assert!(text.contains("        2  delivered (recipients)"), "{text}");
    assert!(text.contains("Top recipients\n          2  <alice@example.net>\n"), "{text}");
}
