//! Interoperability with real SMTP clients: Postfix's smtp-source, swaks, Python's smtplib.
//! `tests/run.sh` installs them; a missing one fails the test with a message saying so.

mod common;

use common::*;
use std::process::Command;

fn tool(name: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run the suite through tests/run.sh, which installs it");
}

/// Postfix's smtp-source sends 1,000 messages (20 sessions, a connection per message, then
/// persistent connections); `queue list --json` shows exactly 1,000 each time.
#[test]
fn smtp_source_1000_messages() {
    let src = tool("smtp-source");
    for driver in DRIVERS {
        for persistent in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let srv = start_plain(dir.path(), driver, "");
            let mut cmd = Command::new(&src);
            if persistent {
                cmd.arg("-d");
            }
            let out = cmd
                .args([
                    "-s",
                    "20",
                    "-m",
                    "1000",
                    "-l",
                    "1024",
                    "-f",
                    "sender@remote.example",
                    "-t",
                    "rcpt@example.test",
                ])
                .arg(srv.addr().to_string())
                .output()
                .unwrap();
            assert!(out.status.success(), "smtp-source: {}", String::from_utf8_lossy(&out.stderr));
            let q = queue(dir.path());
            assert_eq!(q.len(), 1000, "{driver} persistent={persistent}");
            assert!(q.iter().all(|m| m["to"][0] == "rcpt@example.test" && m["size"].as_u64().unwrap() > 1024));
            let mut ids: Vec<&str> = q.iter().map(|m| m["id"].as_str().unwrap()).collect();
            ids.dedup();
            assert_eq!(ids.len(), 1000, "queue ids are unique");
            let (status, log) = srv.stop();
            assert!(status.success(), "{log}");
        }
    }
}

/// swaks over STARTTLS with PIPELINING.
#[test]
fn swaks_starttls_pipelining() {
    let swaks = tool("swaks");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = make_cert(dir.path());
    let srv = start_plain(dir.path(), "uring", &format!("[tls]\ncertificate = {cert:?}\nprivate_key = {key:?}\n"));
    let out = Command::new(swaks)
        .args(["--server", &srv.addr().to_string(), "--from", "s@remote.example", "--to", "bob@example.test"])
        .args(["--tls", "--pipeline", "--header", "Subject: swaks test", "--body", "hello from swaks"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("<~  250 2.0.0 Ok: queued as"), "{text}");
    let q = queue(dir.path());
    assert_eq!(q.len(), 1);
    let (_, shown) = ringmx(dir.path(), &["queue", "show", q[0]["id"].as_str().unwrap()]);
    assert!(shown.contains("Subject: swaks test") && shown.contains("with ESMTPS"), "{shown}");
}

/// Python's smtplib: sendmail with several recipients, one refused (relay).
#[test]
fn python_smtplib() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_plain(dir.path(), "epoll", "");
    let script = format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port})
s.ehlo("py.example")
assert s.has_extn("pipelining") and s.has_extn("smtputf8")
refused = s.sendmail("py@remote.example", ["a@example.test", "b@elsewhere.example"], "Subject: py\r\n\r\nhi\r\n")
assert list(refused) == ["b@elsewhere.example"], refused
assert refused["b@elsewhere.example"][0] == 550
s.quit()
print("ok")
"#,
        port = srv.addr().port()
    );
    let out = Command::new("python3").arg("-c").arg(script).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok", "{}", String::from_utf8_lossy(&out.stderr));
    let q = queue(dir.path());
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["to"], serde_json::json!(["a@example.test"]));
}
