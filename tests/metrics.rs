//! The metrics endpoint (`[metrics] listen`): `/metrics` after traffic, with values that
//! match what was sent and an exposition that `promtool check metrics` (Debian's
//! `prometheus` package, installed by tests/run.sh) accepts; `/healthz`, `/readyz`, and the
//! answers to what is not a scrape.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One HTTP exchange: status line and body.
fn get(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    body
}

/// The value of the sample `name` (with its labels, as written) in an exposition.
fn value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

#[test]
fn scraped_after_traffic_and_valid_for_promtool() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        alice_directory(dir.path());
        let cfg = "[metrics]\nlisten = \"127.0.0.1:0\"\n[policy]\nehlo_block = [\"ylmf-pc\"]\nauto_ban = true\n";
        let srv = start_plain(dir.path(), driver, cfg);
        let m = srv.metrics.expect("the metrics address is printed");
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO c");
        for i in 0..3 {
            queued_id(&c.message("s@remote.example", &["alice@example.net"], &format!("Subject: {i}\r\n\r\nx\r\n")));
        }
        let (mut bot, _) = Client::connect(srv.addr());
        assert!(bot.cmd("EHLO YLMF-PC").starts_with("554 5.7.1"));
        drop(bot);
        // Published at the end of each loop turn: wait for the figures to arrive.
        assert!(
            eventually(Duration::from_secs(20), || {
                let t = scrape(m);
                value(&t, "ringmx_messages_accepted_total") == Some(3)
                    && value(&t, "ringmx_local_deliveries_total") == Some(3)
                    && value(&t, "ringmx_connections_refused_total{reason=\"EHLO block\"}") == Some(1)
            }),
            "{driver}: {}",
            scrape(m)
        );
        let text = scrape(m);
        assert_eq!(value(&text, "ringmx_connections_total"), Some(2), "{text}");
        assert_eq!(value(&text, "ringmx_queue_messages"), Some(0), "{text}");
        assert!(value(&text, "ringmx_message_bytes_accepted_total").unwrap() > 3 * 20, "{text}");
        assert!(value(&text, "ringmx_spool_records_total").unwrap() >= 3, "{text}");
        assert_eq!(value(&text, "ringmx_log_events_dropped_total"), Some(0), "{text}");
        assert_eq!(value(&text, "ringmx_recipients_deferred_total"), Some(0), "{text}");
        assert_eq!(value(&text, "ringmx_recipients_failed_total"), Some(0), "{text}");
        assert_eq!(value(&text, "ringmx_bans_active"), Some(0), "{text}");
        // promtool reads the exposition from standard input.
        let (ok, said) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .output_with_stdin(&text);
        assert!(ok.success(), "{driver}: promtool: {said}\n{text}");

        assert_eq!(get(m, "GET /healthz HTTP/1.1\r\n\r\n"), ("HTTP/1.1 200 OK".into(), "ok\n".into()));
        assert_eq!(get(m, "GET /readyz HTTP/1.1\r\n\r\n"), ("HTTP/1.1 200 OK".into(), "ready\n".into()));
        assert_eq!(get(m, "GET /nothing HTTP/1.1\r\n\r\n").0, "HTTP/1.1 404 Not Found");
        assert_eq!(get(m, "POST /metrics HTTP/1.1\r\n\r\n").0, "HTTP/1.1 405 Method Not Allowed");
        // The spool is gone (a disk unmounted under it): not ready.
        std::fs::rename(dir.path().join("data/spool"), dir.path().join("data/spool.away")).unwrap();
        let (status, body) = get(m, "GET /readyz HTTP/1.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
        assert!(body.contains("does not take a file"), "{body}");
        std::fs::rename(dir.path().join("data/spool.away"), dir.path().join("data/spool")).unwrap();
        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");
    }
}

/// Feeds `input` to a command's standard input; its status and output.
trait WithStdin {
    fn output_with_stdin(&mut self, input: &str) -> (std::process::ExitStatus, String);
}

impl WithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &str) -> (std::process::ExitStatus, String) {
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (tests/run.sh installs Debian's prometheus package)");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status, text)
    }
}

/// Replies by code and enhanced status, phase latencies, TLS handshakes (one completed, one
/// failed) and AUTH results, counted by the shard as a scrape sees them.
#[test]
fn replies_phases_tls_and_auth_are_counted() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data/directory");
        std::fs::create_dir_all(&d).unwrap();
        let hash = ringmx::admin::directory::hash_password("s3cret").unwrap();
        let data = serde_json::json!({
            "postoffices": [{"name": "po"}],
            "domains": [{"name": "example.net", "postoffice": "po"}],
            "mailboxes": [{"postoffice": "po", "name": "alice", "password_hash": hash, "addresses": ["alice@example.net"]}]
        });
        std::fs::write(d.join("directory.json"), serde_json::to_string(&data).unwrap()).unwrap();
        let (cert, key, ca) = make_cert(&dir.path().join("tls"));
        let cfg =
            format!("[metrics]\nlisten = \"127.0.0.1:0\"\n[tls]\ncertificate = {cert:?}\nprivate_key = {key:?}\n");
        let srv = start_plain(dir.path(), driver, &cfg);
        let m = srv.metrics.expect("the metrics address is printed");

        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO c");
        assert!(c.cmd("STARTTLS").starts_with("220"));
        c.upgrade(tls_client_config(&ca));
        c.cmd("EHLO c");
        let plain = |user_pass: &[u8]| format!("AUTH PLAIN {}", ringmx::delivery::client::base64(user_pass));
        assert!(c.cmd(&plain(b"\0alice@example.net\0wrong")).starts_with("535 5.7.8"));
        assert!(c.cmd(&plain(b"\0alice@example.net\0s3cret")).starts_with("235 2.7.0"));
        queued_id(&c.message("alice@example.net", &["alice@example.net"], "Subject: t\r\n\r\nx\r\n"));
        assert!(c.quit_tls(), "{driver}: an orderly TLS close");

        // A handshake that fails: STARTTLS, then bytes that are no TLS record.
        let (mut bad, _) = Client::connect(srv.addr());
        bad.cmd("EHLO c");
        assert!(bad.cmd("STARTTLS").starts_with("220"));
        bad.send(b"this is not a ClientHello\r\n\r\n");
        drop(bad);

        let scraped = || scrape(m);
        assert!(
            eventually(Duration::from_secs(20), || {
                let t = scraped();
                value(&t, "ringmx_tls_handshake_failures_total") == Some(1)
                    && value(&t, "ringmx_smtp_phase_seconds_count{phase=\"data\"}") == Some(1)
                    && value(&t, "ringmx_delivery_results_total{destination=\"local\",result=\"delivered\"}") == Some(1)
            }),
            "{driver}: {}",
            scraped()
        );
        let t = scraped();
        let v = |name: &str| value(&t, name).unwrap_or_else(|| panic!("{driver}: no {name} in\n{t}"));
        assert_eq!(v("ringmx_tls_handshakes_total{version=\"TLSv1.3\"}"), 1);
        assert_eq!(v("ringmx_auth_total{result=\"success\"}"), 1);
        assert_eq!(v("ringmx_auth_total{result=\"failure\"}"), 1);
        assert_eq!(v("ringmx_smtp_replies_total{code=\"535\",status=\"5.7.8\"}"), 1);
        assert_eq!(v("ringmx_smtp_replies_total{code=\"235\",status=\"2.7.0\"}"), 1);
        assert_eq!(v("ringmx_smtp_replies_total{code=\"220\",status=\"2.0.0\"}"), 2, "two STARTTLS");
        assert_eq!(v("ringmx_smtp_replies_total{code=\"250\",status=\"\"}"), 3, "three EHLO");
        assert_eq!(v("ringmx_smtp_phase_seconds_count{phase=\"banner\"}"), 2);
        assert_eq!(v("ringmx_smtp_phase_seconds_count{phase=\"ehlo\"}"), 3);
        assert_eq!(v("ringmx_smtp_phase_seconds_count{phase=\"mail\"}"), 1);
        assert_eq!(v("ringmx_smtp_phase_seconds_count{phase=\"rcpt\"}"), 1);
        assert_eq!(v("ringmx_smtp_phase_seconds_bucket{phase=\"data\",le=\"+Inf\"}"), 1);
        assert_eq!(v("ringmx_messages_generated_total{kind=\"dsn_failed\"}"), 0);
        let (ok, said) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .output_with_stdin(&t);
        assert!(ok.success(), "{driver}: promtool: {said}\n{t}");
        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");
    }
}
