//! The LMTP driver over real sockets (TCP on 127.0.0.1:0 and a Unix socket), and the
//! server routing a directory domain's mailboxes to an LMTP server (`[delivery.lmtp]`).
//!
//! The peer here is a minimal LMTP listener written in the test, so that every byte the
//! client sends can be checked (LHLO, pipelined envelope, dot-stuffed body) and the replies
//! scripted (one final reply per accepted recipient, RFC 2033 §4.2). The same path against
//! a real Dovecot is tests/lmtp_dovecot.rs.

mod common;

use common::*;
use ringmx::delivery::lmtp::{LmtpEndpoint, LmtpError, LmtpFailure};
use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The driver as the delivery runtime runs it, on a runtime of the test's own.
fn deliver(
    endpoint: &LmtpEndpoint,
    lhlo: &str,
    from: &str,
    rcpts: &[String],
    content: &[u8],
    timeout: Duration,
) -> Result<Vec<Result<(), LmtpFailure>>, LmtpError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(ringmx::delivery::lmtp::deliver(endpoint, lhlo, from, rcpts, content, timeout))
}

/// Serves one LMTP session on `stream`: refuses `nobody@`, fails `full@` after the data,
/// and returns the commands and the body it received.
fn serve<S: std::io::Read + Write>(stream: S, pipelining: bool) -> (Vec<String>, Vec<u8>) {
    let mut r = BufReader::new(stream);
    let mut commands = Vec::new();
    let mut accepted = Vec::new();
    let mut body = Vec::new();
    r.get_mut().write_all(b"220 test LMTP ready\r\n").unwrap();
    for _ in 0..100 {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let line = line.trim_end().to_string();
        commands.push(line.clone());
        let reply: Vec<u8> = match line.split(':').next().unwrap() {
            l if l.starts_with("LHLO") => {
                if pipelining {
                    b"250-test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n".to_vec()
                } else {
                    b"250 test\r\n".to_vec()
                }
            }
            "MAIL FROM" => b"250 2.1.0 ok\r\n".to_vec(),
            "RCPT TO" if line.contains("nobody@") => b"550 5.1.1 unknown\r\n".to_vec(),
            "RCPT TO" => {
                accepted.push(line.clone());
                b"250 2.1.5 ok\r\n".to_vec()
            }
            "DATA" => {
                r.get_mut().write_all(b"354 go ahead\r\n").unwrap();
                for _ in 0..10_000 {
                    let mut l = Vec::new();
                    r.read_until(b'\n', &mut l).unwrap();
                    if l == b".\r\n" || l.is_empty() {
                        break;
                    }
                    body.extend(l);
                }
                let mut out = Vec::new();
                for a in &accepted {
                    out.extend_from_slice(if a.contains("full@") {
                        b"452 4.2.2 over quota\r\n"
                    } else {
                        b"250 2.0.0 saved\r\n"
                    });
                }
                out
            }
            "QUIT" => {
                // The client may close right after QUIT.
                let _ = r.get_mut().write_all(b"221 bye\r\n");
                break;
            }
            _ => b"500 5.5.1 what\r\n".to_vec(),
        };
        r.get_mut().write_all(&reply).unwrap();
    }
    (commands, body)
}

fn rcpts() -> Vec<String> {
    ["alice@example.test", "nobody@example.test", "full@example.test"].iter().map(|s| s.to_string()).collect()
}

const CONTENT: &[u8] = b"Subject: test\r\n\r\n.starts with a dot\r\nlast line\r\n";

#[test]
fn tcp_with_pipelining() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || serve(listener.accept().unwrap().0, true));
    let results = deliver(
        &LmtpEndpoint::Tcp(addr),
        "mx.example.test",
        "s@remote.test",
        &rcpts(),
        CONTENT,
        Duration::from_secs(30),
    )
    .unwrap();
    let (commands, body) = server.join().unwrap();
    assert_eq!(results[0], Ok(()));
    let nobody = results[1].clone().unwrap_err();
    assert!(nobody.permanent && nobody.reply.to_string() == "550 5.1.1 unknown");
    let full = results[2].clone().unwrap_err();
    assert!(!full.permanent && full.reply.code == 452);
    assert_eq!(
        commands,
        [
            "LHLO mx.example.test",
            "MAIL FROM:<s@remote.test>",
            "RCPT TO:<alice@example.test>",
            "RCPT TO:<nobody@example.test>",
            "RCPT TO:<full@example.test>",
            "DATA",
            "QUIT"
        ]
    );
    assert_eq!(body, b"Subject: test\r\n\r\n..starts with a dot\r\nlast line\r\n");
}

#[test]
fn unix_socket_without_pipelining() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("lmtp.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || serve(listener.accept().unwrap().0, false));
    let results =
        deliver(&LmtpEndpoint::Unix(path), "mx.example.test", "", &rcpts(), CONTENT, Duration::from_secs(30)).unwrap();
    let (commands, _) = server.join().unwrap();
    assert_eq!(results[0], Ok(()));
    assert!(results[1].as_ref().unwrap_err().permanent);
    assert!(!results[2].as_ref().unwrap_err().permanent);
    assert_eq!(commands[1], "MAIL FROM:<>");
}

#[test]
fn connection_lost_fails_the_waiting_recipients_transiently() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"220 hi\r\n").unwrap();
        // Drop after the greeting.
    });
    let results =
        deliver(&LmtpEndpoint::Tcp(addr), "mx.example.test", "", &rcpts(), CONTENT, Duration::from_secs(30)).unwrap();
    server.join().unwrap();
    assert!(results.iter().all(|r| matches!(r, Err(f) if !f.permanent && f.reply.code == 451)));
    // Nothing listening: an error to connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    assert!(deliver(&LmtpEndpoint::Tcp(closed), "mx", "", &rcpts(), CONTENT, Duration::from_secs(5)).is_err());
}

/// What one LMTP session received: the commands and the body.
type Session = (Vec<String>, Vec<u8>);

/// SMTP in, LMTP out: mailboxes of the LMTP domain go to the LMTP server with their
/// address as RCPT (the server's 250 per recipient is the delivery), another domain's to
/// its Maildir; a 452 after the data defers that recipient with the server's reply.
#[test]
fn lmtp_domain_routed_to_the_lmtp_server() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lmtp = listener.local_addr().unwrap();
    let sessions: Arc<Mutex<Vec<Session>>> = Arc::default();
    {
        let sessions = sessions.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let got = serve(s, true);
                sessions.lock().unwrap().push(got);
            }
        });
    }
    let d = dir.path().join("data/directory");
    std::fs::create_dir_all(&d).unwrap();
    let data = serde_json::json!({
        "postoffices": [{"name": "po"}],
        "domains": [{"name": "example.test", "postoffice": "po"}, {"name": "maildir.example", "postoffice": "po"}],
        "mailboxes": [
            {"postoffice": "po", "name": "alice", "addresses": ["alice@example.test"]},
            {"postoffice": "po", "name": "full", "addresses": ["full@example.test"]},
            {"postoffice": "po", "name": "carol", "addresses": ["carol@maildir.example"]}
        ]
    });
    std::fs::write(d.join("directory.json"), serde_json::to_string(&data).unwrap()).unwrap();
    let config = format!(
        "[delivery]\nlocal_retry = \"1h\"\n[delivery.lmtp]\nserver = \"{lmtp}\"\ndomains = [\"Example.Test\"]\n"
    );
    let srv = start_plain(dir.path(), "uring", &config);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    queued_id(&c.message(
        "s@remote.example",
        &["alice@example.test", "carol@maildir.example"],
        "Subject: l\r\n\r\nhi\r\n",
    ));
    let full = queued_id(&c.message("s@remote.example", &["full@example.test"], "Subject: f\r\n\r\nhi\r\n"));
    assert!(
        eventually(Duration::from_secs(10), || {
            let q = queue(dir.path());
            q.len() == 1 && q[0]["id"] == full.as_str() && q[0]["status"] == "deferred"
        }),
        "{:?}",
        queue(dir.path())
    );
    let q = queue(dir.path());
    assert!(q[0]["recipients"][0]["last_error"].as_str().unwrap().starts_with("452 4.2.2 over quota"), "{q:?}");
    let carol = dir.path().join("data/mailboxes/po/carol/Maildir/new");
    assert_eq!(std::fs::read_dir(carol).unwrap().count(), 1);
    assert!(!dir.path().join("data/mailboxes/po/alice").exists(), "alice is not a Maildir");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    let sessions = sessions.lock().unwrap();
    let first = &sessions[0];
    assert_eq!(first.0[1..4], ["MAIL FROM:<s@remote.example>", "RCPT TO:<alice@example.test>", "DATA"]);
    assert!(String::from_utf8_lossy(&first.1).contains("Subject: l"));
    assert!(sessions.iter().any(|(cmds, _)| cmds.contains(&"RCPT TO:<full@example.test>".to_string())));
}
