//! The status page (`/` of the metrics endpoint) and its JSON, loaded by headless Chromium
//! (Debian's `chromium`, installed by tests/run.sh): its DOM, after its script ran, shows
//! the messages just sent and the destination that deferred; a screenshot is taken into
//! the test's directory. Without JavaScript the same figures are in the served HTML.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    (head.to_string(), body.to_string())
}

fn status(addr: SocketAddr) -> serde_json::Value {
    let (head, body) = get(addr, "/status.json");
    assert!(head.starts_with("HTTP/1.1 200 OK") && head.contains("application/json"), "{head}");
    serde_json::from_str(&body).unwrap()
}

/// Runs headless Chromium on `url` with `args`; its standard output.
fn chromium(profile: &std::path::Path, url: &str, args: &[&str]) -> String {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        // Lets the page's script fetch its JSON and fill the tables before the dump.
        .arg("--virtual-time-budget=5000")
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (tests/run.sh installs Debian's chromium package)");
    assert!(out.status.success(), "chromium {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn status_page_in_headless_chromium_shows_the_traffic() {
    let dir = tempfile::tempdir().unwrap();
    // backup.example relays to a port nobody listens on: its recipient is deferred.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    smart_host_directory(dir.path(), &closed.to_string());
    let srv = start_plain(dir.path(), "uring", "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let m = srv.metrics.expect("the metrics address is printed");
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    for i in 0..3 {
        queued_id(&c.message("s@remote.example", &["alice@example.net"], &format!("Subject: {i}\r\n\r\nx\r\n")));
    }
    // A null sender: no delay notice, only the deferral.
    queued_id(&c.message("", &["bob@backup.example"], "Subject: relayed\r\n\r\nx\r\n"));
    c.cmd("QUIT");
    assert!(
        eventually(Duration::from_secs(30), || {
            let s = status(m);
            s["totals"]["accepted"] == 4
                && s["totals"]["delivered"] == 3
                && s["queue"]["messages"] == 1
                && s["deferred_destinations"].as_array().is_some_and(|d| !d.is_empty())
        }),
        "{}",
        status(m)
    );
    let s = status(m);
    let d = &s["deferred_destinations"][0];
    assert_eq!(d["destination"], "backup.example", "{s}");
    assert!(d["deferrals"].as_u64() >= Some(1), "{s}");
    assert!(!d["last_reply"].as_str().unwrap().is_empty(), "{s}");
    assert_eq!(s["queue"]["messages"], 1, "{s}");
    assert!(s["queue"]["oldest_id"].is_string(), "{s}");
    assert!(s["spool"]["segments"].as_u64() > Some(0), "{s}");
    assert!(s["spool"]["fs_size_bytes"].as_u64() > Some(0), "{s}");
    assert_eq!(s["shards"].as_array().map(Vec::len), Some(1), "{s}");

    // The same list as a bounded metric.
    let (_, metrics) = get(m, "/metrics");
    let line = format!("ringmx_deferred_destination_deferrals{{destination=\"backup.example\"}} {}\n", d["deferrals"]);
    assert!(metrics.contains(&line), "{metrics}");

    // Without JavaScript: the figures are in the served tables.
    let (head, html) = get(m, "/");
    assert!(head.contains("text/html"), "{head}");
    assert!(html.contains("<td id=\"accepted\">4</td>"), "{html}");
    assert!(html.contains("<td id=\"delivered\">3</td>"), "{html}");
    assert!(html.contains("backup.example"), "{html}");
    assert!(!html.contains("http://") && !html.contains("https://"), "nothing fetched from elsewhere");

    // In a browser, after the script refreshed the page from /status.json.
    let url = format!("http://{m}/");
    let profile = dir.path().join("chromium-profile");
    let dom = chromium(&profile, &url, &["--dump-dom"]);
    assert!(dom.contains("data-live=\"1\""), "the script ran and filled the page: {dom}");
    assert!(dom.contains("<td id=\"accepted\">4</td>"), "{dom}");
    assert!(dom.contains("<td id=\"delivered\">3</td>"), "{dom}");
    assert!(dom.contains("<td id=\"queue\">1</td>"), "{dom}");
    assert!(dom.contains("backup.example"), "{dom}");
    let shot = dir.path().join("status.png");
    chromium(&profile, &url, &[&format!("--screenshot={}", shot.display()), "--window-size=1280,900"]);
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000, "{} bytes", png.len());

    let (st, log) = srv.stop();
    assert!(st.success(), "{log}");
}
