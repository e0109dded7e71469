//! `ringmx directory …` run as the built binary on a temporary data directory: exit codes,
//! messages, the stored JSON, import and export.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ringmx");

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `ringmx directory ARGS --data-dir DIR` with `stdin`.
fn run_in(dir: &Path, args: &[&str], stdin: &str) -> Out {
    let mut child = Command::new(BIN)
        .arg("directory")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8(o.stdout).unwrap(),
        stderr: String::from_utf8(o.stderr).unwrap(),
    }
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = run_in(dir, args, "");
    assert_eq!(o.code, 0, "{args:?}: {}", o.stderr);
    o.stdout
}

/// Runs a command that must fail with exit code 2 and a message containing `want`.
fn usage_error(dir: &Path, args: &[&str], want: &str) {
    let o = run_in(dir, args, "");
    assert_eq!(o.code, 2, "{args:?} should fail: {}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains(want), "{args:?}: {:?} should mention {want:?}", o.stderr);
}

fn stored(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("directory/directory.json")).unwrap()).unwrap()
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn postoffices_domains_mailboxes_groups_blocked() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    usage_error(d, &["domain", "add", "example.test"], "no postoffice yet");
    ok(d, &["postoffice", "add", "Corp"]);
    ok(d, &["postoffice", "add", "internal", "--require-auth-inbound"]);
    usage_error(d, &["postoffice", "add", "corp"], "already exists");
    usage_error(d, &["postoffice", "add", "../x"], "invalid name");
    assert_eq!(ok(d, &["postoffice", "list"]), "corp (default)\ninternal\n");
    // `set` changes what `add` took, and the default.
    assert_eq!(ok(d, &["postoffice", "set", "internal", "--default"]), "postoffice internal changed\n");
    assert_eq!(ok(d, &["postoffice", "list"]), "corp\ninternal (default)\n");
    ok(d, &["postoffice", "set", "Internal", "--require-auth-inbound", "false", "--default"]);
    ok(d, &["postoffice", "set", "corp", "--default"]);
    assert_eq!(stored(d)["postoffices"][1]["require_auth_inbound"], false);
    ok(d, &["postoffice", "set", "internal", "--require-auth-inbound", "true"]);
    usage_error(d, &["postoffice", "set", "internal"], "nothing to change");
    usage_error(d, &["postoffice", "set", "nope", "--default"], "unknown postoffice");

    // RFC 5321 §4.5.1: a domain whose postmaster has nowhere to go is added with a warning.
    let added = ok(d, &["domain", "add", "Example.TEST"]);
    assert!(added.contains("warning: mail to postmaster@example.test has nowhere to go yet"), "{added}");
    let added = ok(d, &["domain", "add", "backup.test", "--postoffice", "corp", "--smart-host", "192.0.2.25:25"]);
    assert!(!added.contains("warning"), "relayed elsewhere: its postmaster is there: {added}");
    ok(d, &["domain", "add", "intra.test", "--postoffice", "internal", "--catch-all", "ops@intra.test"]);
    usage_error(d, &["domain", "add", "other.test", "--postoffice", "nope"], "unknown postoffice \"nope\"");
    usage_error(d, &["domain", "add", "example.test"], "already exists");
    usage_error(d, &["domain", "add", "bad..test"], "invalid domain");
    usage_error(d, &["domain", "add", "x.test", "--smart-host", "mx.test"], "invalid smart host");
    ok(d, &["domain", "set", "example.test", "--abuse", "abuse@example.test", "--blacklist-add", "Spam.test"]);
    ok(d, &["domain", "set", "example.test", "--blacklist-add", "junk.test", "--blacklist-remove", "spam.test"]);
    ok(d, &["domain", "set", "backup.test", "--enabled", "false", "--smart-host", ""]);
    let domains = json_lines(&ok(d, &["domain", "list", "--json"]));
    assert_eq!(domains.len(), 3);
    assert_eq!(domains[0]["name"], "example.test");
    assert_eq!(domains[0]["sender_blacklist"], serde_json::json!(["junk.test"]));
    assert_eq!(domains[0]["abuse"], "abuse@example.test");
    assert_eq!(domains[1]["enabled"], false);
    assert!(domains[1].get("smart_host").is_none());
    let show = ok(d, &["domain", "show", "intra.test"]);
    assert!(show.contains("catch_all: ops@intra.test\n"), "{show}");
    usage_error(d, &["domain", "show", "nope.test"], "unknown domain \"nope.test\"");

    // Mailboxes: the postoffice comes from the domain.
    let o = run_in(d, &["mailbox", "add", "Alice@Example.test", "--password-stdin", "--quota", "10M"], "s3cret pw\n");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "mailbox alice@example.test added (corp/alice)\n");
    ok(d, &["mailbox", "add", "bob@example.test", "--password", "hunter2"]);
    ok(d, &["mailbox", "add", "ops@intra.test"]);
    usage_error(d, &["mailbox", "add", "carol@unknown.test"], "unknown domain \"unknown.test\"");
    usage_error(d, &["mailbox", "add", "alice@example.test"], "already in use");
    usage_error(d, &["mailbox", "add", "not-an-address"], "invalid address");
    usage_error(d, &["mailbox", "add", "x@example.test", "--quota", "lots"], "invalid quota");
    usage_error(d, &["mailbox", "add", "x@example.test", "--password-stdin"], "no password");
    usage_error(d, &["mailbox", "set", "nobody@example.test", "--disabled"], "no mailbox with address");
    usage_error(d, &["mailbox", "set", "alice@example.test", "--add-address", "a@intra.test"], "postoffice");
    usage_error(d, &["mailbox", "set", "alice@example.test", "--add-address", "bob@example.test"], "already in use");

    ok(
        d,
        &[
            "mailbox",
            "set",
            "alice@example.test",
            "--add-address",
            "a.smith@example.test",
            "--redirect",
            "x@remote.test",
        ],
    );
    ok(d, &["mailbox", "set", "a.smith@example.test", "--keep-copy", "--autoresponder-subject", "Away"]);
    ok(d, &["mailbox", "set", "bob@example.test", "--disabled", "--delivery-event", "/usr/local/bin/notify"]);
    let alice = &json_lines(&ok(d, &["mailbox", "show", "alice@example.test", "--json"]))[0];
    assert_eq!(alice["maildir"], "corp/alice");
    assert_eq!(alice["addresses"], serde_json::json!(["alice@example.test", "a.smith@example.test"]));
    assert_eq!(alice["quota_bytes"], 10 << 20);
    assert_eq!(alice["redirect"], serde_json::json!(["x@remote.test"]));
    assert_eq!(alice["redirect_keep_copy"], true);
    assert_eq!(alice["autoresponder"]["subject"], "Away");
    assert_eq!(alice["password_set"], true);
    assert!(alice.get("password_hash").is_none(), "the hash is never shown");
    let list = ok(d, &["mailbox", "list"]);
    assert!(list.contains("bob@example.test  corp/bob disabled\n"), "{list}");
    assert_eq!(json_lines(&ok(d, &["mailbox", "list", "--postoffice", "internal", "--json"])).len(), 1);

    // Stored: argon2 hashes, never the passwords.
    let text = std::fs::read_to_string(d.join("directory/directory.json")).unwrap();
    assert!(!text.contains("s3cret") && !text.contains("hunter2"));
    let hash = stored(d)["mailboxes"][0]["password_hash"].as_str().unwrap().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(ringmx::admin::directory::verify_password("s3cret pw", &hash));
    ok(d, &["mailbox", "set", "alice@example.test", "--redirect", "--keep-copy", "false", "--autoresponder-off"]);
    let alice = &json_lines(&ok(d, &["mailbox", "show", "alice@example.test", "--json"]))[0];
    assert_eq!(alice["redirect"], serde_json::json!([]));
    assert_eq!(alice["autoresponder"], serde_json::Value::Null);

    // Groups.
    ok(d, &["group", "add", "team@example.test", "--member", "alice@example.test", "bob@example.test"]);
    usage_error(d, &["group", "add", "team@example.test", "--member", "x@y.test"], "already in use");
    usage_error(d, &["group", "add", "g@nope.test", "--member", "x@y.test"], "unknown domain");
    ok(
        d,
        &["group", "set", "team@example.test", "--add-member", "c@remote.test", "--remove-member", "bob@example.test"],
    );
    let g = &json_lines(&ok(d, &["group", "show", "team@example.test", "--json"]))[0];
    assert_eq!(g["members"], serde_json::json!(["alice@example.test", "c@remote.test"]));

    // Blocked addresses.
    ok(d, &["blocked", "add", "Gone@example.test"]);
    usage_error(d, &["blocked", "add", "gone@example.test"], "already blocked");
    assert_eq!(ok(d, &["blocked", "list"]), "gone@example.test\n");

    // What the server would load agrees.
    let store = ringmx::directory::JsonFileStore::in_data_dir(d);
    let dir = ringmx::directory::DirectoryHandle::open(Box::new(store)).unwrap().current();
    let reply = |rcpt| match dir.check_recipient(Some("s@remote.test"), rcpt, true) {
        ringmx::directory::RcptVerdict::Refuse(r) => r.reply().to_string(),
        other => format!("{other:?}").split('(').next().unwrap().to_string(),
    };
    assert_eq!(reply("alice@example.test"), "Accept");
    assert_eq!(reply("bob@example.test").get(..9), Some("550 5.2.1"));
    assert_eq!(reply("gone@example.test").get(..9), Some("550 5.1.1"));
    assert_eq!(reply("x@backup.test").get(..9), Some("550 5.2.1"));

    // Removing: in-use records are refused.
    usage_error(d, &["domain", "remove", "example.test"], "still in use");
    usage_error(d, &["postoffice", "remove", "corp"], "still in use");
    ok(d, &["group", "remove", "team@example.test"]);
    ok(d, &["blocked", "remove", "gone@example.test"]);
    let o = ok(d, &["mailbox", "remove", "bob@example.test"]);
    assert!(o.contains("stays on disk"), "{o}");
    ok(d, &["mailbox", "remove", "alice@example.test"]);
    ok(d, &["domain", "remove", "example.test"]);
    ok(d, &["domain", "remove", "backup.test"]);
    assert_eq!(stored(d)["domains"].as_array().unwrap().len(), 1);
}

#[test]
fn config_file_and_bad_usage() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("ringmx.toml");
    std::fs::write(&cfg, format!("data_dir = {:?}\n", tmp.path().join("data"))).unwrap();
    let run = |args: &[&str]| Command::new(BIN).arg("directory").args(args).output().unwrap();
    let o = run(&["postoffice", "add", "corp", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(tmp.path().join("data/directory/directory.json").exists());
    // A configuration that does not load: exit 2 with the problem.
    std::fs::write(&cfg, "no_such_key = 1\n").unwrap();
    let o = run(&["postoffice", "list", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no_such_key"));
    // An unknown subcommand is a usage error too.
    assert_eq!(run(&["mailbox", "frobnicate"]).status.code(), Some(2));
    // A damaged store is a runtime failure (1), and is left alone.
    let d = tmp.path().join("data");
    std::fs::write(d.join("directory/directory.json"), b"{").unwrap();
    let o = run_in(&d, &["postoffice", "add", "x"], "");
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(std::fs::read(d.join("directory/directory.json")).unwrap(), b"{");
}

#[test]
fn import_with_bad_lines_then_export() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let csv = d.join("users.csv");
    std::fs::write(
        &csv,
        "email,password,quota\n\
         alice@example.test,pw-alice,10M\n\
         bob@example.test\n\
         \n\
         not-an-address,x,1\n\
         carol@other.test,,2048\n\
         alice@example.test,again,\n\
         dave@example.test,pw,lots\n\
         \"erin@example.test\",\"p,w\",\n\
         # a comment\n\
         frank@example.test,pw,1,extra\n",
    )
    .unwrap();
    let o = run_in(d, &["import", csv.to_str().unwrap()], "");
    assert_eq!(o.code, 2, "refused lines make the exit code 2: {}", o.stderr);
    let path = csv.display().to_string();
    for (line, what) in [(5, "invalid address"), (7, "already in use"), (8, "invalid quota"), (11, "4 fields")] {
        assert!(o.stderr.contains(&format!("{path}:{line}: ")), "line {line} in {}", o.stderr);
        let msg = o.stderr.lines().find(|l| l.contains(&format!("{path}:{line}: "))).unwrap();
        assert!(msg.contains(what), "{msg} should say {what}");
    }
    assert_eq!(o.stderr.matches("imported 4 mailbox(es), refused 4 line(s)").count(), 1, "once: {}", o.stderr);

    // Generated passwords, printed once on stdout as email,password: bob and carol.
    let generated: Vec<(&str, &str)> = o.stdout.lines().map(|l| l.split_once(',').unwrap()).collect();
    assert_eq!(generated.iter().map(|g| g.0).collect::<Vec<_>>(), ["bob@example.test", "carol@other.test"]);
    assert!(generated.iter().all(|g| g.1.len() == 16));
    assert_ne!(generated[0].1, generated[1].1);

    // A postoffice and the domains were created as needed; the passwords check.
    let s = stored(d);
    assert_eq!(s["postoffices"][0]["name"], "main");
    assert_eq!(s["default_postoffice"], "main");
    let names: Vec<_> = s["domains"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["example.test", "other.test"]);
    let hash_of = |addr: &str| {
        s["mailboxes"].as_array().unwrap().iter().find(|m| m["addresses"][0] == addr).unwrap()["password_hash"]
            .as_str()
            .unwrap()
            .to_string()
    };
    use ringmx::admin::directory::verify_password;
    assert!(verify_password("pw-alice", &hash_of("alice@example.test")));
    assert!(verify_password(generated[0].1, &hash_of("bob@example.test")));
    assert!(verify_password("p,w", &hash_of("erin@example.test")));
    assert!(!o.stdout.contains("pw-alice"), "given passwords are never printed");

    // Export: the same CSV, password column empty.
    let want = "email,password,quota\n\
                alice@example.test,,10485760\n\
                bob@example.test,,0\n\
                carol@other.test,,2048\n\
                erin@example.test,,0\n";
    assert_eq!(ok(d, &["export"]), want);
    let file = d.join("out.csv");
    assert_eq!(ok(d, &["export", file.to_str().unwrap()]), "");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), want);

    // The export imports into a fresh directory (new passwords generated for each).
    let fresh = tempfile::tempdir().unwrap();
    let o = run_in(fresh.path(), &["import", file.to_str().unwrap()], "");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.lines().count(), 4);
    assert_eq!(ok(fresh.path(), &["export"]), want);

    // A missing file is a clear usage error.
    usage_error(d, &["import", "/nonexistent/users.csv"], "cannot read /nonexistent/users.csv");
}

/// `purge --older-than`: messages older than the duration leave the chosen mailboxes (one
/// by its address, or every one); newer ones stay.
#[test]
fn purge_old_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["postoffice", "add", "corp"]);
    ok(d, &["domain", "add", "example.test"]);
    ok(d, &["mailbox", "add", "a@example.test"]);
    ok(d, &["mailbox", "add", "b@example.test"]);
    let message = |mailbox: &str, sub: &str, name: &str, days_old: u64| {
        let dir = d.join("mailboxes/corp").join(mailbox).join("Maildir").join(sub);
        std::fs::create_dir_all(&dir).unwrap();
        let f = std::fs::File::create(dir.join(name)).unwrap();
        f.set_len(100).unwrap();
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(days_old * 86_400)).unwrap();
        dir.join(name)
    };
    let a_old = message("a", "new", "1.old", 40);
    let a_seen_old = message("a", "cur", "2.old:2,S", 31);
    let a_recent = message("a", "cur", "3.recent:2,S", 2);
    let b_old = message("b", "new", "4.old", 60);
    assert_eq!(
        ok(d, &["purge", "--older-than", "30d", "--mailbox", "A@example.test"]),
        "2 message(s) (200 bytes) older than 30d removed from 1 mailbox(es)\n"
    );
    assert!(!a_old.exists() && !a_seen_old.exists() && a_recent.exists() && b_old.exists());
    assert_eq!(
        ok(d, &["purge", "--older-than", "30d"]),
        "1 message(s) (100 bytes) older than 30d removed from 2 mailbox(es)\n"
    );
    assert!(!b_old.exists() && a_recent.exists());
    usage_error(d, &["purge", "--older-than", "soon"], "is not a duration");
    usage_error(d, &["purge", "--older-than", "1d", "--mailbox", "nobody@example.test"], "no mailbox has the address");
    usage_error(d, &["purge", "--older-than", "1d", "--postoffice", "nope"], "unknown postoffice");
}

/// The messages in a mailbox's `new/`.
fn new_messages(dir: &Path, maildir: &str) -> Vec<String> {
    let d = dir.join("mailboxes").join(maildir).join("Maildir/new");
    let mut v: Vec<String> = std::fs::read_dir(d)
        .map(|rd| rd.flatten().map(|e| std::fs::read_to_string(e.path()).unwrap()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// SPEC §6: a postoffice's defaults for new mailboxes (quota, an address at every domain,
/// a welcome message), a broadcast to every mailbox, and the quota usage counted again.
#[test]
fn mailbox_defaults_welcome_broadcast_and_quota_reset() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["postoffice", "add", "corp", "--default-quota", "1M", "--address-every-domain", "true"]);
    ok(d, &["domain", "add", "example.com"]);
    ok(d, &["domain", "add", "example.net"]);
    let out = ok(
        d,
        &["postoffice", "set", "corp", "--welcome-subject", "Welcome to Corp", "--welcome-body", "Hello.\\nIT desk"],
    );
    assert_eq!(out, "postoffice corp changed\n");
    let out = ok(d, &["mailbox", "add", "alice@example.com"]);
    assert_eq!(out, "mailbox alice@example.com added (corp/alice)\nwelcome message placed in corp/alice\n");
    let m = &stored(d)["mailboxes"][0];
    assert_eq!(m["quota_bytes"], 1 << 20);
    assert_eq!(m["addresses"], serde_json::json!(["alice@example.com", "alice@example.net"]));
    let welcome = new_messages(d, "corp/alice");
    assert_eq!(welcome.len(), 1);
    assert!(
        welcome[0].contains("Subject: Welcome to Corp\n") && welcome[0].ends_with("\n\nHello.\nIT desk\n"),
        "{}",
        welcome[0]
    );
    assert!(welcome[0].starts_with("Return-Path: <postmaster@example.com>\nDelivered-To: alice@example.com\n"));
    // An explicit quota wins over the default; an address taken elsewhere is left out.
    ok(d, &["group", "add", "bob@example.net", "--member", "alice@example.com"]);
    ok(d, &["mailbox", "add", "bob@example.com", "--quota", "0"]);
    let m = &stored(d)["mailboxes"][1];
    assert_eq!((m["quota_bytes"].as_u64(), &m["addresses"]), (Some(0), &serde_json::json!(["bob@example.com"])));
    let show = ok(d, &["postoffice", "show", "corp", "--json"]);
    assert_eq!(json_lines(&show)[0]["mailbox_defaults"]["welcome_subject"], "Welcome to Corp");

    let out = ok(d, &["postoffice", "broadcast", "corp", "--subject", "Maintenance", "--body", "Down at 22:00."]);
    assert_eq!(out, "message placed in 2 mailbox(es) of corp\n");
    assert!(
        new_messages(d, "corp/bob")
            .iter()
            .any(|m| m.contains("Subject: Maintenance\n") && m.ends_with("Down at 22:00.\n"))
    );
    assert_eq!(new_messages(d, "corp/alice").len(), 2);

    // A maildirsize that went wrong is rebuilt from the files.
    std::fs::write(d.join("mailboxes/corp/alice/Maildir/maildirsize"), "1048576S\n999999 1\n").unwrap();
    let out = ok(d, &["postoffice", "reset-quota", "corp"]);
    let sizes: u64 = new_messages(d, "corp/alice").iter().map(|m| m.len() as u64).sum();
    assert!(out.starts_with(&format!("corp/alice: {sizes} bytes in 2 message(s) of 1048576\n")), "{out}");
    assert!(out.ends_with("no server running: it reads the figures at its start\n"), "{out}");
    usage_error(d, &["postoffice", "broadcast", "nope", "--subject", "x", "--body", "y"], "unknown postoffice");
}
