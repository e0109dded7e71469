//! The W3C extended log of SMTP sessions (`[log.w3c]`, `<log dir>/w3c/`): its directives
//! and the fields configured, one line per exchange (the banner, each command, a message's
//! content with its queue id, BDAT LAST), AUTH without its secret, and rollover by size.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

/// Every W3C file's text, by name.
fn w3c_files(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir.join("data/log/w3c"))
        .map(|rd| {
            rd.flatten()
                .map(|e| (e.file_name().into_string().unwrap(), std::fs::read_to_string(e.path()).unwrap()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The data lines (not directives) of every file.
fn lines(dir: &Path) -> Vec<String> {
    w3c_files(dir)
        .into_iter()
        .flat_map(|(_, t)| t.lines().filter(|l| !l.starts_with('#')).map(String::from).collect::<Vec<_>>())
        .collect()
}

#[test]
fn header_fields_and_one_line_per_exchange() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        alice_directory(dir.path());
        let cfg = "[log]\nactivity = false\n[log.w3c]\nenabled = true\n\
                   fields = [\"c-ip\", \"s-ip\", \"s-port\", \"cs-method\", \"cs-uri-query\", \"sc-status\", \"x-queue-id\", \"x-session-id\"]\n";
        let srv = start_plain(dir.path(), driver, cfg);
        let port = srv.addr().port();
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO client.test");
        let id = queued_id(&c.message("s@remote.example", &["alice@example.net"], "Subject: w\r\n\r\nx\r\n"));
        assert!(c.cmd("RCPT TO:<nobody@example.net>").starts_with("503"), "no MAIL yet");
        assert!(c.cmd("MAIL FROM:<s@remote.example>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.net>").starts_with("250"));
        c.send(b"BDAT 4 LAST\r\nhi\r\n");
        let bdat = queued_id(&c.reply());
        assert!(c.cmd("AUTH PLAIN c2VjcmV0").starts_with("538"), "AUTH only under TLS");
        c.cmd("QUIT");
        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");

        let files = w3c_files(dir.path());
        assert_eq!(files.len(), 1, "{driver}: {files:?}");
        let (name, text) = &files[0];
        assert!(
            name.starts_with("smtp-") && name.ends_with(".log") && name.len() == "smtp-YYYYMMDD.log".len(),
            "{name}"
        );
        let head: Vec<&str> = text.lines().take(4).collect();
        assert!(head[0].starts_with("#Software: ringmx "), "{text}");
        assert_eq!(head[1], "#Version: 1.0");
        assert!(head[2].starts_with("#Date: 20"), "{text}");
        assert_eq!(head[3], "#Fields: c-ip s-ip s-port cs-method cs-uri-query sc-status x-queue-id x-session-id");
        let rows: Vec<Vec<&str>> =
            text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split(' ').collect()).collect();
        for r in &rows {
            assert_eq!(r.len(), 8, "{driver}: every configured field, no more: {r:?}");
            assert_eq!((r[0], r[1], r[2]), ("127.0.0.1", "127.0.0.1", port.to_string().as_str()), "{r:?}");
            assert_eq!(r[7], rows[0][7], "one session id");
        }
        let exchanges: Vec<String> = rows.iter().map(|r| format!("{} {} {} {}", r[3], r[4], r[5], r[6])).collect();
        assert_eq!(
            exchanges,
            [
                "CONNECT - 220 -".to_string(),
                "EHLO client.test 250 -".into(),
                "MAIL FROM:<s@remote.example> 250 -".into(),
                "RCPT TO:<alice@example.net> 250 -".into(),
                "DATA - 354 -".into(),
                format!("EOM - 250 {id}"),
                "RCPT TO:<nobody@example.net> 503 -".into(),
                "MAIL FROM:<s@remote.example> 250 -".into(),
                "RCPT TO:<alice@example.net> 250 -".into(),
                format!("BDAT 4+LAST 250 {bdat}"),
                // The mechanism only: the initial response is a secret.
                "AUTH PLAIN 538 -".into(),
                "QUIT - 221 -".into(),
            ],
            "{driver}"
        );
    }
}

#[test]
fn rollover_by_size_each_file_with_its_directives() {
    let dir = tempfile::tempdir().unwrap();
    alice_directory(dir.path());
    let cfg = "[log.w3c]\nenabled = true\nrollover = \"size\"\nmax_size = \"1KiB\"\n";
    let srv = start_plain(dir.path(), "uring", cfg);
    for i in 0..8 {
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO client.test");
        queued_id(&c.message("s@remote.example", &["alice@example.net"], &format!("Subject: {i}\r\n\r\nx\r\n")));
        c.cmd("QUIT");
    }
    // Each session's lines reach the log when it ends: wait for all eight QUITs.
    assert!(
        eventually(Duration::from_secs(20), || lines(dir.path()).iter().filter(|l| l.contains(" QUIT ")).count() == 8),
        "{:?}",
        w3c_files(dir.path())
    );
    let files = w3c_files(dir.path());
    assert!(files.len() >= 2, "{files:?}");
    for (name, text) in &files {
        assert!(text.starts_with("#Software: ringmx "), "{name}: {text}");
        assert!(text.contains("\n#Fields: date time c-ip s-ip s-port cs-method cs-uri-query sc-status sc-bytes cs-bytes time-taken cs-username x-session-id x-queue-id x-tls\n"), "{name}");
    }
    // A file is closed once it reached the size; the last one may be smaller.
    for (name, text) in &files[..files.len() - 1] {
        assert!(text.len() >= 1024, "{name}: {} bytes", text.len());
    }
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
}
