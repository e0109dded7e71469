//! SMTP AUTH over real TCP, on both drivers: PLAIN and LOGIN against the directory's argon2
//! hashes (verified off the shard), only after STARTTLS by default (538 5.7.11 before),
//! 535 5.7.8 on failure counted toward the failure limit, a fixed relay login, listeners
//! that require authentication (530 5.7.0), sender ownership (553 5.7.1), ESMTPSA in
//! Received and Message-ID/Date added for authenticated senders.

mod common;

use common::*;
use ringmx::delivery::client::base64;
use std::path::Path;

fn directory(dir: &Path) {
    let d = dir.join("data/directory");
    std::fs::create_dir_all(&d).unwrap();
    let hash = ringmx::admin::directory::hash_password("s3cret").unwrap();
    let data = serde_json::json!({
        "postoffices": [{"name": "po"}],
        "default_postoffice": "po",
        "domains": [{"name": "example.net", "postoffice": "po"}],
        "mailboxes": [
            {"postoffice": "po", "name": "alice", "password_hash": hash, "addresses": ["alice@example.net"]},
            {"postoffice": "po", "name": "bob", "addresses": ["bob@example.net"]}
        ]
    });
    std::fs::write(d.join("directory.json"), serde_json::to_string(&data).unwrap()).unwrap();
}

#[test]
fn auth_after_starttls_against_the_directory() {
    for driver in DRIVERS {
        let tmp = tempfile::tempdir().unwrap();
        directory(tmp.path());
        let (cert, key, ca) = make_cert(&tmp.path().join("tls"));
        let srv = start_plain(
            tmp.path(),
            driver,
            &format!("[tls]\ncertificate = {cert:?}\nprivate_key = {key:?}\n[limits]\nmax_errors = 5\n"),
        );
        let (mut c, _) = Client::connect(srv.addr());
        let ehlo = c.cmd("EHLO client.example");
        assert!(!ehlo.contains("AUTH"), "{driver}: {ehlo}");
        assert_eq!(
            c.cmd(&format!("AUTH PLAIN {}", base64(b"\0alice@example.net\0s3cret"))),
            "538 5.7.11 Error: encryption required for requested authentication mechanism\r\n"
        );
        assert!(c.cmd("STARTTLS").starts_with("220"));
        c.upgrade(tls_client_config(&ca));
        let ehlo = c.cmd("EHLO client.example");
        assert!(ehlo.contains("250-AUTH PLAIN LOGIN\r\n") || ehlo.contains("250 AUTH PLAIN LOGIN\r\n"), "{ehlo}");
        assert_eq!(
            c.cmd(&format!("AUTH PLAIN {}", base64(b"\0alice@example.net\0wrong"))),
            "535 5.7.8 Error: authentication credentials invalid\r\n",
            "{driver}"
        );
        assert_eq!(c.cmd("AUTH LOGIN"), "334 VXNlcm5hbWU6\r\n");
        assert_eq!(c.cmd(&base64(b"alice")), "334 UGFzc3dvcmQ6\r\n", "bare name in the default postoffice");
        assert_eq!(c.cmd(&base64(b"s3cret")), "235 2.7.0 Authentication successful\r\n", "{driver}");
        assert_eq!(
            c.cmd("MAIL FROM:<bob@example.net>"),
            "553 5.7.1 Error: sender address <bob@example.net> not owned by user alice\r\n"
        );
        assert_eq!(c.cmd("MAIL FROM:<alice@example.net> AUTH=alice@example.net"), "250 2.1.0 Ok\r\n");
        assert_eq!(c.cmd("RCPT TO:<friend@remote.example>"), "250 2.1.5 Ok\r\n", "relay for authenticated senders");
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(b"Subject: no id\r\n\r\nhello\r\n.\r\n");
        let id = queued_id(&c.reply());
        let (_, shown) = ringmx(tmp.path(), &["queue", "show", &id]);
        assert!(shown.contains(" with ESMTPSA id "), "{shown}");
        assert!(shown.contains("\r\nMessage-ID: <") && shown.contains("\r\nDate: "), "{shown}");
        assert!(shown.ends_with("Subject: no id\r\n\r\nhello\r\n"), "{shown}");
    }
}

#[test]
fn fixed_relay_login_failures_and_required_auth() {
    for driver in DRIVERS {
        let tmp = tempfile::tempdir().unwrap();
        directory(tmp.path());
        let cfg = "[[listener]]\nport = 0\nbind = [\"127.0.0.1\"]\nauth = \"always\"\nrequire_auth = true\n\
                   [auth]\nusername = \"relay\"\npassword = \"relay-pw\"\n[limits]\nmax_errors = 3\n";
        let srv = start(tmp.path(), driver, cfg);
        let (mut c, _) = Client::connect(srv.addr());
        assert!(c.cmd("EHLO c").contains("AUTH PLAIN LOGIN"));
        assert_eq!(c.cmd("MAIL FROM:<a@remote.example>"), "530 5.7.0 Error: authentication required\r\n");
        assert_eq!(
            c.cmd(&format!("AUTH PLAIN {}", base64(b"\0relay\0relay-pw"))),
            "235 2.7.0 Authentication successful\r\n"
        );
        assert_eq!(c.cmd("MAIL FROM:<a@remote.example>"), "250 2.1.0 Ok\r\n");
        assert_eq!(c.cmd("RCPT TO:<b@elsewhere.example>"), "250 2.1.5 Ok\r\n", "{driver}");
        drop(c);
        // Failed logins count: the third error drops the connection.
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO c");
        assert!(c.cmd(&format!("AUTH PLAIN {}", base64(b"\0relay\0x"))).starts_with("535 5.7.8"));
        assert!(c.cmd(&format!("AUTH PLAIN {}", base64(b"\0alice@example.net\0x"))).starts_with("535 5.7.8"));
        let r = c.cmd(&format!("AUTH PLAIN {}", base64(b"\0alice@example.net\0y")));
        assert_eq!(r, "535 5.7.8 Error: authentication credentials invalid\r\n", "{driver}");
        assert_eq!(c.reply(), "421 4.7.0 mx.example.test Error: too many errors\r\n");
        assert_eq!(c.reply(), "");
        // `auth = "never"` refuses AUTH.
        drop(srv);
        let tmp = tempfile::tempdir().unwrap();
        let srv = start(tmp.path(), driver, "[[listener]]\nport = 0\nbind = [\"127.0.0.1\"]\nauth = \"never\"\n");
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO c");
        assert_eq!(c.cmd("AUTH LOGIN"), "503 5.5.1 Error: authentication not enabled\r\n");
    }
}
