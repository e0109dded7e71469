//! The admin API (docs/admin-api.yaml) on a queue of 10,000 messages: filters, paging,
//! bulk hold/retry/delete/release by filter, one message's JSON and content, bans,
//! directory operations, the TCP address's bearer token; and the command line, through the
//! API while the server runs and on the spool when it does not (a hold made offline is
//! still a hold after the restart).
//!
//! The queue: mail for backup.example and other.example (hosted, relayed to a smart host)
//! stays untried because both destinations are suspended; mail for deferred.example goes to
//! a `ringmx-loadgen sink` answering 450, so it is deferred on a one-hour schedule.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

const N: usize = 10_000;
const TOKEN: &str = "0123456789abcdef0123456789abcdef-admin";

/// Where message `i` goes, who sends it, and whether it is a large one.
fn domain_of(i: usize) -> &'static str {
    if i % 100 == 3 {
        "deferred.example"
    } else if i % 4 == 2 {
        "other.example"
    } else {
        "backup.example"
    }
}

fn sender_of(i: usize) -> String {
    format!("s{}@senders.example", i % 7)
}

fn large(i: usize) -> bool {
    i.is_multiple_of(10)
}

/// How many of the messages meet `f`.
fn count(f: impl Fn(usize) -> bool) -> usize {
    (0..N).filter(|&i| f(i)).count()
}

/// One HTTP exchange on `s`: status and body.
fn http(
    mut s: impl Read + Write,
    method: &str,
    path: &str,
    body: Option<&Value>,
    auth: Option<&str>,
) -> (u16, Vec<u8>) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = auth.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer");
    let status = String::from_utf8_lossy(&out[9..12]).parse().unwrap();
    (status, out.split_off(end + 4))
}

/// A request on the admin socket; the answer's status and JSON.
fn api(dir: &Path, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let s = std::os::unix::net::UnixStream::connect(dir.join("data/control.sock")).unwrap();
    let (status, b) = http(s, method, path, body, None);
    (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

/// Every message `query` selects, page by page (`limit` each); also checks the pages come
/// in ascending id order with no id twice.
fn all_pages(dir: &Path, query: &str, limit: usize) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/queue?limit={limit}");
        if !query.is_empty() {
            path.push('&');
            path.push_str(query);
        }
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let (status, page) = api(dir, "GET", &path, None);
        assert_eq!(status, 200, "{path}: {page}");
        let msgs = page["messages"].as_array().unwrap();
        assert!(msgs.len() <= limit);
        out.extend(msgs.iter().cloned());
        match page["next"].as_str() {
            Some(n) => {
                assert_eq!(msgs.len(), limit, "a page before the last is full");
                after = Some(n.to_string());
            }
            None => break,
        }
    }
    let ids: Vec<&str> = out.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ascending, none twice");
    out
}

fn n_of(dir: &Path, query: &str) -> usize {
    all_pages(dir, query, 1000).len()
}

/// Queues the N messages over 4 pipelining connections.
fn fill(addr: std::net::SocketAddr) {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let (mut c, _) = Client::connect(addr);
                c.cmd("EHLO admin.test");
                let big = "x".repeat(76);
                for i in (t..N).step_by(4) {
                    let lines = if large(i) { 300 } else { 2 };
                    let body: String = std::iter::repeat_n(format!("{big}\r\n"), lines).collect();
                    c.send(
                        format!("MAIL FROM:<{}>\r\nRCPT TO:<r{i}@{}>\r\nDATA\r\n", sender_of(i), domain_of(i))
                            .as_bytes(),
                    );
                    for what in ["MAIL", "RCPT", "DATA"] {
                        let r = c.reply();
                        assert!(r.starts_with('2') || r.starts_with('3'), "{what} {i}: {r}");
                    }
                    c.send(&dot_stuff(&format!("Subject: message {i}\r\n\r\n{body}")));
                    let r = c.reply();
                    assert!(r.starts_with("250"), "message {i}: {r}");
                }
                c.cmd("QUIT");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Clients on the TCP address that connect and send nothing take at most 16 connections
/// (the 17th is told 503 at once) and keep nobody off the admin socket; once they go, the
/// address serves again.
#[test]
fn idle_clients_on_tcp_are_bounded_and_keep_nobody_off_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("token"), TOKEN).unwrap();
    let config = format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n", d.join("token"));
    let srv = start_plain(d, "epoll", &config);
    let tcp = srv.admin.unwrap();
    let idle: Vec<std::net::TcpStream> = (0..16).map(|_| std::net::TcpStream::connect(tcp).unwrap()).collect();
    // Each is counted when the server accepts it: the 17th waits for that, then is refused
    // before it sends anything.
    let refused = || {
        let mut answer = String::new();
        let _ = std::net::TcpStream::connect(tcp).unwrap().read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 503 ")
    };
    assert!(eventually(Duration::from_secs(10), refused), "the 17th connection is told 503");
    assert_eq!(api(d, "GET", "/v1/status", None).0, 200, "the socket still serves");
    drop(idle);
    let served = || {
        let (status, _) = http(std::net::TcpStream::connect(tcp).unwrap(), "GET", "/v1/status", None, Some(TOKEN));
        status == 200
    };
    assert!(eventually(Duration::from_secs(10), served), "served again once they went");
    let (status, _) = srv.stop();
    assert!(status.success());
}

fn cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    ringmx_out(dir, args)
}

#[test]
fn a_queue_of_ten_thousand_through_the_admin_api_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sink = Sink::start(d, "127.0.0.1:0", &["--rcpt-reply", "450 4.2.1 busy"]);
    let relay = sink.addr.to_string();
    std::fs::create_dir_all(d.join("data/directory")).unwrap();
    let directory = serde_json::json!({
        "postoffices": [{"name": "po"}],
        "domains": [
            {"name": "example.net", "postoffice": "po"},
            {"name": "backup.example", "postoffice": "po", "smart_host": relay},
            {"name": "other.example", "postoffice": "po", "smart_host": relay},
            {"name": "deferred.example", "postoffice": "po", "smart_host": relay}
        ],
        "mailboxes": [{"postoffice": "po", "name": "alice", "addresses": ["alice@example.net"]}]
    });
    std::fs::write(d.join("data/directory/directory.json"), directory.to_string()).unwrap();
    std::fs::write(d.join("token"), format!("  {TOKEN}\n")).unwrap();
    let config = format!(
        "[delivery.retry]\nintervals = [\"1h\"]\n[delivery.delay_notice]\nmode = \"off\"\n[delivery.remote]\ntls = \"off\"\n\
         [policy]\nauto_ban = true\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n[spool]\nsegment_size = \"16MiB\"\n",
        d.join("token")
    );
    // Suspended before the start (stored; the server reads them): that mail stays untried.
    let srv = start_plain(d, "uring", &config);
    let (code, _, err) = cli(d, &["queue", "suspend", "backup.example", "other.example"]);
    assert_eq!(code, 0, "{err}");
    fill(srv.addr());
    let deferred = count(|i| domain_of(i) == "deferred.example");
    assert!(
        eventually(Duration::from_secs(60), || n_of(d, "state=deferred") == deferred),
        "the deferred.example mail is deferred"
    );

    // Paging: every message once, in id order, in pages of the size asked for.
    let every = all_pages(d, "", 777);
    assert_eq!(every.len(), N);
    let (status, page) = api(d, "GET", "/v1/queue", None);
    assert_eq!((status, page["messages"].as_array().unwrap().len()), (200, 100), "the default page");
    let (_, page) = api(d, "GET", "/v1/queue?limit=5000", None);
    assert_eq!(page["messages"].as_array().unwrap().len(), 1000, "at most 1000 a page");

    // Filters, alone and together.
    let s0 = count(|i| sender_of(i).starts_with("s0@"));
    assert_eq!(n_of(d, "sender=S0%40senders.example"), s0, "sender, without case");
    assert_eq!(n_of(d, "domain=other.example"), count(|i| domain_of(i) == "other.example"));
    assert_eq!(n_of(d, "recipient=r12"), count(|i| format!("r{i}@").starts_with("r12")));
    assert_eq!(n_of(d, "min_size=10K"), count(large));
    assert_eq!(n_of(d, "max_size=10K"), N - count(large));
    assert_eq!(n_of(d, "sender=s0%40&min_size=10K"), count(|i| sender_of(i).starts_with("s0@") && large(i)));
    assert_eq!(n_of(d, "state=queued"), N - deferred);
    assert_eq!(n_of(d, "older_than=1h"), 0);
    assert_eq!(n_of(d, "newer_than=1h"), N);
    for bad in ["state=lost", "older_than=soon", "colour=red", "after=xyz", "limit=many"] {
        let (status, v) = api(d, "GET", &format!("/v1/queue?{bad}"), None);
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }

    // One message: its JSON, its content; an unknown one 404, a bad id 400.
    // One for a suspended destination: never tried, so still `queued` (the four connections
    // race, so the lowest id may be any of their first messages).
    let first = every.iter().find(|m| m["to"][0].as_str().unwrap().ends_with("@backup.example")).unwrap();
    let first = first["id"].as_str().unwrap();
    let (status, m) = api(d, "GET", &format!("/v1/queue/{first}"), None);
    assert_eq!((status, m["id"].as_str()), (200, Some(first)));
    assert_eq!(m["recipients"][0]["status"], "queued");
    let s = std::os::unix::net::UnixStream::connect(d.join("data/control.sock")).unwrap();
    let (status, content) = http(s, "GET", &format!("/v1/queue/{first}/content"), None, None);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&content).contains("Subject: message "), "the message as spooled");
    assert_eq!(api(d, "GET", "/v1/queue/00000000000000FF", None).0, 404);
    assert_eq!(api(d, "GET", "/v1/queue/nope", None).0, 400);
    assert_eq!(api(d, "POST", "/v1/queue/00000000000000FF/retry", None).0, 404);
    assert_eq!(api(d, "POST", "/v1/queue/retry", None).0, 400, "a bulk operation names its messages");
    assert_eq!(api(d, "POST", "/v1/queue/explode?all=true", None).0, 404);

    // Bulk hold by filter: held, and retry leaves them.
    let other = count(|i| domain_of(i) == "other.example");
    let (status, a) = api(d, "POST", "/v1/queue/hold?domain=other.example", None);
    assert_eq!((status, a["matched"].as_u64(), a["done"].as_array().unwrap().len()), (200, Some(other as u64), other));
    assert_eq!(n_of(d, "state=held"), other);
    let (_, a) = api(d, "POST", "/v1/queue/retry?domain=other.example", None);
    assert_eq!((a["done"].as_array().unwrap().len(), a["skipped"].as_array().unwrap().len()), (0, other));

    // Bulk retry by filter: the deferred ones are tried again now, not in an hour.
    let (_, a) = api(d, "POST", "/v1/queue/retry?state=deferred", None);
    assert_eq!(a["done"].as_array().unwrap().len(), deferred, "{a}");
    let tried_twice = || {
        all_pages(d, "domain=deferred.example", 1000).iter().all(|m| m["attempts"] == 2 && m["status"] == "deferred")
    };
    assert!(eventually(Duration::from_secs(60), tried_twice), "retried");

    // Bulk delete by filter.
    let s1 = count(|i| sender_of(i).starts_with("s1@"));
    let (_, a) = api(d, "POST", "/v1/queue/delete?sender=s1%40senders.example", None);
    assert_eq!((a["matched"].as_u64(), a["done"].as_array().unwrap().len()), (Some(s1 as u64), s1));
    assert_eq!(n_of(d, ""), N - s1);
    assert_eq!(n_of(d, "sender=s1%40"), 0);
    // By ids in the body.
    let ids: Vec<&str> =
        every.iter().filter(|m| m["from"] == "s2@senders.example").take(3).map(|m| m["id"].as_str().unwrap()).collect();
    let (status, a) = api(d, "POST", "/v1/queue/delete", Some(&serde_json::json!({ "ids": ids })));
    assert_eq!((status, a["done"].as_array().unwrap().len()), (200, 3));

    // The command line goes through the API while the server runs.
    let (code, out, err) = cli(d, &["queue", "list", "--json", "--domain", "deferred.example"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().count(),
        deferred - count(|i| domain_of(i) == "deferred.example" && sender_of(i).starts_with("s1@"))
    );
    let (code, out, err) = cli(d, &["queue", "release", "--state", "held", "--sender", "s3@"]);
    assert_eq!(code, 0, "{err}");
    let released = count(|i| domain_of(i) == "other.example" && sender_of(i).starts_with("s3@"));
    assert_eq!(out.lines().filter(|l| l.ends_with(": released")).count(), released);
    let (code, _, err) = cli(d, &["queue", "retry"]);
    assert_eq!(code, 2, "no messages named: {err}");
    assert!(err.contains("name the messages"), "{err}");

    // Bans: add, list (API and command line), lift; lifting again is 404.
    let (status, b) = api(d, "POST", "/v1/bans", Some(&serde_json::json!({ "ip": "192.0.2.9", "seconds": 3600 })));
    assert_eq!(status, 200, "{b}");
    let (code, out, _) = cli(d, &["ban", "list"]);
    assert!(code == 0 && out.contains("192.0.2.9  until "), "{out}");
    assert_eq!(api(d, "DELETE", "/v1/bans/192.0.2.9", None).0, 200);
    assert_eq!(api(d, "DELETE", "/v1/bans/192.0.2.9", None).0, 404);
    assert_eq!(api(d, "DELETE", "/v1/bans/not-an-ip", None).0, 400);

    // Directory: listed as `--json`, changed by a command (the command line's too).
    let (status, domains) = api(d, "GET", "/v1/directory/domains", None);
    assert_eq!(status, 200);
    assert_eq!(domains.as_array().unwrap().len(), 4, "{domains}");
    let add = serde_json::json!({ "args": ["domain", "add", "new.example", "--postoffice", "po"] });
    let (status, a) = api(d, "POST", "/v1/directory/commands", Some(&add));
    assert_eq!(status, 200, "{a}");
    let (status, a) = api(d, "POST", "/v1/directory/commands", Some(&add));
    assert_eq!((status, a["exit"].as_u64()), (400, Some(2)), "added twice: {a}");
    let mailbox = serde_json::json!({ "args": ["mailbox", "add", "bob@new.example", "--password-stdin"], "input": "s3cret-pass\n" });
    assert_eq!(api(d, "POST", "/v1/directory/commands", Some(&mailbox)).0, 200);
    let (_, mailboxes) = api(d, "GET", "/v1/directory/mailboxes", None);
    let text = mailboxes.to_string();
    assert!(text.contains("bob") && !text.contains("argon2"), "listed, never a password hash: {text}");
    let (code, out, err) = cli(d, &["directory", "domain", "list"]);
    assert!(code == 0 && out.contains("new.example"), "{out}{err}");
    let (status, _) =
        api(d, "POST", "/v1/directory/commands", Some(&serde_json::json!({ "args": ["import", "/etc/passwd"] })));
    assert_eq!(status, 400, "a command naming the caller's files runs on the command line");

    // The TCP address wants the token.
    let tcp = srv.admin.expect("admin API on TCP");
    let (status, _) = http(std::net::TcpStream::connect(tcp).unwrap(), "GET", "/v1/status", None, None);
    assert_eq!(status, 401);
    let (status, _) = http(std::net::TcpStream::connect(tcp).unwrap(), "GET", "/v1/status", None, Some("wrong"));
    assert_eq!(status, 401);
    let (status, body) = http(std::net::TcpStream::connect(tcp).unwrap(), "GET", "/v1/status", None, Some(TOKEN));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, spec) = http(std::net::TcpStream::connect(tcp).unwrap(), "GET", "/v1/openapi.yaml", None, Some(TOKEN));
    assert!(status == 200 && spec.starts_with(b"openapi: 3.1"));

    // Stopped: the command line works on the spool.
    let held = n_of(d, "state=held");
    let before = n_of(d, "");
    let (status, _) = srv.stop();
    assert!(status.success());
    let (code, out, err) = cli(d, &["queue", "list", "--json", "--state", "held"]);
    assert_eq!((code, out.lines().count()), (0, held), "{err}");
    let s4_backup = count(|i| domain_of(i) == "backup.example" && sender_of(i).starts_with("s4@"));
    let (code, out, err) = cli(d, &["queue", "hold", "--domain", "backup.example", "--sender", "s4@"]);
    assert_eq!((code, out.lines().count()), (0, s4_backup), "{err}");
    let (code, out, err) = cli(d, &["queue", "delete", "--domain", "deferred.example"]);
    let deleted = out.lines().count();
    assert!(code == 0 && deleted > 0, "{err}");

    // A reader that goes away early ends the listing quietly, as with `| head`.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringmx"))
        .args(["queue", "list", "--config"])
        .arg(d.join("ringmx.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no complaint about the closed pipe");

    // Restarted: what was held offline is still held, what was deleted is gone.
    let srv = start_plain(d, "uring", &config);
    assert_eq!(n_of(d, "state=held"), held + s4_backup);
    assert_eq!(n_of(d, ""), before - deleted);
    assert_eq!(n_of(d, "domain=deferred.example"), 0);
    let (status, _) = srv.stop();
    assert!(status.success());
    drop(sink);
}
