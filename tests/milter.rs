//! Milters (`[[milter]]`, the Sendmail milter protocol version 6): a test milter of our own
//! for the changes no real milter makes on demand (header added and changed, body
//! replaced, sender changed, recipients added and deleted), its refusals (at MAIL, at RCPT,
//! at the end of the message) and discards; a
//! milter that is down (the default action); OpenDKIM signing as a milter and rspamd's
//! proxy worker judging (Debian's, installed by tests/run.sh).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

/// What the test milter answers at the end of the message.
#[derive(Clone, Copy)]
enum Script {
    /// Changes everything it can, then continues.
    Change,
    /// `554 5.7.1 Go away` (SMFIR_REPLYCODE).
    Reject,
    /// SMFIR_DISCARD.
    Discard,
    /// SMFIR_QUARANTINE with a reason, then continue.
    Quarantine,
    /// Refuses the sender `blocked@remote.example` at MAIL and the recipient
    /// `bob@example.net` at RCPT; continues at the end of the message.
    Stages,
}

fn packet(cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(cmd);
    p.extend_from_slice(data);
    p
}

/// A milter on loopback: one connection at a time, `script` at each end of message; every
/// command letter it was sent is recorded.
fn test_milter(script: Script) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            loop {
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).is_err() {
                    break;
                }
                let mut p = vec![0u8; u32::from_be_bytes(len) as usize];
                if s.read_exact(&mut p).is_err() {
                    break;
                }
                let (cmd, data) = (p[0], &p[1..]);
                log.lock().unwrap().push(cmd);
                let reply: Vec<u8> = match cmd {
                    // Version 6, every action, and no step left out.
                    b'O' => packet(b'O', &[0, 0, 0, 6, 0, 0, 0, 0xff, 0, 0, 0, 0]),
                    b'D' => continue,
                    b'Q' => break,
                    b'E' => match script {
                        Script::Change => {
                            let mut r = packet(b'h', b"X-Milter\0checked\0");
                            r.extend(packet(b'm', b"\0\0\0\x01Subject\0changed by the milter\0"));
                            r.extend(packet(b'b', b"a new body\r\n"));
                            r.extend(packet(b'e', b"<new-sender@example.net>\0"));
                            r.extend(packet(b'+', b"<bob@example.net>\0"));
                            r.extend(packet(b'-', b"<alice@example.net>\0"));
                            r.extend(packet(b'c', b""));
                            r
                        }
                        Script::Reject => packet(b'y', b"554 5.7.1 Go away\0"),
                        Script::Discard => packet(b'd', b""),
                        Script::Quarantine => {
                            let mut r = packet(b'q', b"suspicious attachment\0");
                            r.extend(packet(b'c', b""));
                            r
                        }
                        Script::Stages => packet(b'c', b""),
                    },
                    // SMFIC_ABORT has no reply.
                    b'A' => continue,
                    b'M' if matches!(script, Script::Stages) && data.starts_with(b"<blocked@remote.example>") => {
                        packet(b'y', b"550 5.7.1 Sender refused by the milter\0")
                    }
                    b'R' if matches!(script, Script::Stages) && data.starts_with(b"<bob@example.net>") => {
                        packet(b'y', b"550 5.1.1 No bob here\0")
                    }
                    _ => {
                        let _ = data;
                        packet(b'c', b"")
                    }
                };
                if s.write_all(&reply).is_err() {
                    break;
                }
            }
        }
    });
    (addr, seen)
}

/// alice and bob at example.net.
fn directory(dir: &std::path::Path) {
    mailboxes_directory(dir, &["alice", "bob"]);
}

#[test]
fn a_milter_changes_headers_body_sender_and_recipients() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        directory(dir.path());
        let (addr, seen) = test_milter(Script::Change);
        let srv = start_plain(dir.path(), driver, &format!("[[milter]]\naddress = \"{addr}\"\n"));
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO client.test");
        let r = c.message("s@remote.example", &["alice@example.net"], "Subject: original\r\n\r\nthe old body\r\n");
        queued_id(&r);
        assert!(eventually(Duration::from_secs(20), || !mailbox(dir.path(), "bob").is_empty()), "{driver}: bob added");
        let m = &mailbox(dir.path(), "bob")[0];
        assert!(m.contains("\nSubject: changed by the milter\n"), "{m}");
        assert!(m.contains("\nX-Milter: checked\n"), "{m}");
        assert!(m.ends_with("\n\na new body\n") && !m.contains("the old body"), "{m}");
        assert!(m.starts_with("Return-Path: <new-sender@example.net>\n"), "the sender changed: {m}");
        assert!(mailbox(dir.path(), "alice").is_empty(), "alice deleted");
        // The whole conversation, in order: negotiate, connect, HELO, MAIL, RCPT, DATA,
        // headers, end of headers, body, end of message, quit.
        let cmds: String = seen.lock().unwrap().iter().filter(|&&c| c != b'D').map(|&c| c as char).collect();
        assert!(cmds.starts_with("OCHMRTL") && cmds.ends_with("NBEQ"), "{driver}: {cmds}");
        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");
    }
}

/// As Postfix asks them: a milter's verdict on MAIL refuses the transaction, on a RCPT that
/// recipient only; the conversation goes on for the others; RSET aborts it.
#[test]
fn a_milter_refuses_at_mail_and_at_rcpt() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        directory(dir.path());
        let (addr, seen) = test_milter(Script::Stages);
        let srv = start_plain(dir.path(), driver, &format!("[[milter]]\naddress = \"{addr}\"\n"));
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO client.test");
        assert_eq!(c.cmd("MAIL FROM:<blocked@remote.example>"), "550 5.7.1 Sender refused by the milter\r\n");
        assert!(c.cmd("RCPT TO:<alice@example.net>").starts_with("503"), "{driver}: no transaction");
        assert!(c.cmd("MAIL FROM:<s@remote.example>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.net>").starts_with("250"));
        assert_eq!(c.cmd("RCPT TO:<bob@example.net>"), "550 5.1.1 No bob here\r\n");
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(&dot_stuff("Subject: hi\r\n\r\nfor alice\r\n"));
        queued_id(&c.reply());
        assert!(eventually(Duration::from_secs(20), || !mailbox(dir.path(), "alice").is_empty()));
        // A transaction given up: its conversation is aborted.
        assert!(c.cmd("MAIL FROM:<s@remote.example>").starts_with("250"));
        assert!(c.cmd("RSET").starts_with("250"));
        // The second abort (the first ended the refused MAIL's conversation).
        let aborts = || seen.lock().unwrap().iter().filter(|&&c| c == b'A').count();
        assert!(eventually(Duration::from_secs(20), || aborts() == 2), "{driver}: abort");
        c.cmd("QUIT");
        let cmds: String = seen.lock().unwrap().iter().filter(|&&c| c != b'D').map(|&c| c as char).collect();
        // Refused at MAIL (then aborted); MAIL, two RCPTs (one refused), the content, quit;
        // MAIL, then the abort of RSET.
        assert!(cmds.starts_with("OCHMAQOCHMRRTL") && cmds.contains("NBEQOCHMA"), "{driver}: {cmds}");
        assert!(mailbox(dir.path(), "bob").is_empty(), "{driver}");
        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");
    }
}

#[test]
fn a_milter_refuses_or_discards() {
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path());
    let (reject, _) = test_milter(Script::Reject);
    let srv = start_plain(dir.path(), "uring", &format!("[[milter]]\naddress = \"{reject}\"\n"));
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO client.test");
    assert_eq!(
        c.message("s@remote.example", &["alice@example.net"], "Subject: x\r\n\r\nspam\r\n"),
        "554 5.7.1 Go away\r\n"
    );
    assert!(c.cmd("RCPT TO:<alice@example.net>").starts_with("503"), "the transaction is over");
    drop(srv);
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path());
    let (discard, _) = test_milter(Script::Discard);
    let srv = start_plain(dir.path(), "epoll", &format!("[[milter]]\naddress = \"{discard}\"\n"));
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO client.test");
    assert_eq!(
        c.message("s@remote.example", &["alice@example.net"], "Subject: x\r\n\r\nx\r\n"),
        "250 2.0.0 Ok: discarded by a content filter\r\n"
    );
    assert!(queue(dir.path()).is_empty());
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
}

/// SMFIR_QUARANTINE: the client gets its 250, the message waits in the queue (listed with
/// the milter's reason, not delivered, held across a restart) until `queue release`.
#[test]
fn a_milter_quarantines_until_an_operator_releases() {
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path());
    let (addr, _) = test_milter(Script::Quarantine);
    let cfg = format!("[[milter]]\naddress = \"{addr}\"\n");
    let srv = start_plain(dir.path(), "uring", &cfg);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO client.test");
    let id = queued_id(&c.message("s@remote.example", &["alice@example.net"], "Subject: x\r\n\r\nx\r\n"));
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    let q = queue(dir.path());
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(
        (q[0]["status"].as_str(), q[0]["quarantine"].as_str()),
        (Some("quarantined"), Some("suspicious attachment"))
    );
    let (code, out) = ringmx(dir.path(), &["queue", "list"]);
    assert!(code == 0 && out.contains("quarantined: suspicious attachment"), "{out}");
    // Restarted: still held; retry does not release it, release does.
    let srv = start_plain(dir.path(), "epoll", &cfg);
    let (code, out) = ringmx(dir.path(), &["queue", "retry", &id]);
    assert!(code != 0 && !out.contains("retry now"), "{code}: {out}");
    assert!(mailbox(dir.path(), "alice").is_empty());
    let (code, out) = ringmx(dir.path(), &["queue", "release", &id]);
    assert_eq!((code, out.trim()), (0, format!("{id}: released").as_str()));
    assert!(
        eventually(Duration::from_secs(20), || !mailbox(dir.path(), "alice").is_empty()),
        "delivered once released"
    );
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    assert!(queue(dir.path()).is_empty());
}

#[test]
fn a_milter_that_is_down_gives_its_default_action() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for action in ["tempfail", "accept"] {
        let dir = tempfile::tempdir().unwrap();
        directory(dir.path());
        let cfg = format!("[[milter]]\naddress = \"{closed}\"\ndefault_action = \"{action}\"\ntimeout = \"2s\"\n");
        let srv = start_plain(dir.path(), "uring", &cfg);
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO client.test");
        if action == "tempfail" {
            // The conversation opens at MAIL: there the milter is found down.
            assert_eq!(c.cmd("MAIL FROM:<s@remote.example>"), "451 4.7.1 Service unavailable, try again later\r\n");
        } else {
            let r = c.message("s@remote.example", &["alice@example.net"], "Subject: x\r\n\r\nx\r\n");
            assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{action}: {r}");
        }
        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");
        assert!(log.contains(&format!("milter {closed}")), "{log}");
    }
}

#[test]
fn opendkim_signs_as_a_milter() {
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path());
    // OpenDKIM's key, outside the world-writable temp dir's checks (RequireSafeKeys false).
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let genkey = std::process::Command::new("opendkim-genkey")
        .args(["-b", "2048", "-d", "example.net", "-s", "sel", "-D"])
        .arg(&keys)
        .output()
        .expect("opendkim-genkey (tests/run.sh installs opendkim-tools)");
    assert!(genkey.status.success(), "{}", String::from_utf8_lossy(&genkey.stderr));
    let conf = dir.path().join("opendkim.conf");
    let (mut child, port) = spawn_on_free_port(|port| {
        std::fs::write(
            &conf,
            format!(
                "Socket inet:{port}@127.0.0.1\nMode s\nDomain example.net\nSelector sel\nKeyFile {}\n\
                 InternalHosts 127.0.0.0/8\nRequireSafeKeys false\nUserID root\nSyslog no\n",
                keys.join("sel.private").display()
            ),
        )
        .unwrap();
        let mut c = std::process::Command::new("opendkim");
        c.args(["-f", "-x"]).arg(&conf).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        c
    });
    let srv = start_plain(dir.path(), "uring", &format!("[[milter]]\naddress = \"inet:{port}@127.0.0.1\"\n"));
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO client.test");
    let body = "From: alice@example.net\r\nTo: bob@example.net\r\nSubject: signed\r\n\r\nhello\r\n";
    queued_id(&c.message("alice@example.net", &["bob@example.net"], body));
    assert!(eventually(Duration::from_secs(20), || !mailbox(dir.path(), "bob").is_empty()));
    let m = &mailbox(dir.path(), "bob")[0];
    let sig = m.lines().find(|l| l.starts_with("DKIM-Signature:")).unwrap_or_else(|| panic!("not signed: {m}"));
    assert!(sig.contains("d=example.net") && sig.contains("s=sel"), "{m}");
    // The signature verifies: OpenDKIM's test mode (-t) in verifying mode, with the public
    // key from opendkim-genkey's record (TestPublicKeys instead of DNS); a changed body
    // does not.
    let txt = std::fs::read_to_string(keys.join("sel.txt")).unwrap();
    let record: String = txt.split('"').skip(1).step_by(2).collect();
    std::fs::write(keys.join("public"), format!("sel._domainkey.example.net {record}\n")).unwrap();
    let vconf = dir.path().join("verify.conf");
    let v = format!("Mode v\nTestPublicKeys {}\nSyslog no\nUserID root\n", keys.join("public").display());
    std::fs::write(&vconf, v).unwrap();
    let verify = |text: &str| {
        let f = dir.path().join("delivered.eml");
        // As it was sent: the Maildir copy has LF line ends.
        std::fs::write(&f, text.replace('\n', "\r\n")).unwrap();
        let out = std::process::Command::new("opendkim").arg("-x").arg(&vconf).args(["-vvv", "-t"]).arg(&f).output();
        // The Authentication-Results it would add is printed on stdout.
        String::from_utf8_lossy(&out.expect("opendkim -t").stdout).into_owned()
    };
    let good = verify(m);
    assert!(good.contains("dkim=pass"), "{good}\n{m}");
    let bad = verify(&m.replace("hello", "HELLO"));
    assert!(bad.contains("dkim=fail") && !bad.contains("dkim=pass"), "{bad}");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    let _ = child.kill();
    let _ = child.wait();
}

/// rspamd's proxy worker in milter mode (Debian's rspamd, installed by tests/run.sh), with a
/// controller and a normal worker, its configuration in the test's directory: the GTUBE
/// test message is rejected with rspamd's reply, a clean one is delivered with rspamd's
/// header fields added.
#[test]
fn rspamd_rejects_gtube_and_adds_its_headers() {
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path());
    let rs = dir.path().join("rspamd");
    std::fs::create_dir_all(&rs).unwrap();
    let port = || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (normal, controller, proxy) = (port(), port(), port());
    let conf =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/rspamd.conf"))
            .unwrap()
            .replace("@DIR@", &rs.display().to_string())
            .replace("@NORMAL@", &normal.to_string())
            .replace("@CONTROLLER@", &controller.to_string())
            .replace("@PROXY@", &proxy.to_string());
    std::fs::write(rs.join("rspamd.conf"), conf).unwrap();
    let mut child = std::process::Command::new("rspamd")
        .args(["-f", "-u", "root", "-g", "root", "-i", "-c"])
        .arg(rs.join("rspamd.conf"))
        .arg(format!("--var=DBDIR={}", rs.display()))
        .arg(format!("--var=RUNDIR={}", rs.display()))
        .arg(format!("--var=LOGDIR={}", rs.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("rspamd (tests/run.sh installs Debian's rspamd)");
    // rspamd compiles its rules before its workers listen: allow it a minute.
    let up = eventually(Duration::from_secs(60), || std::net::TcpStream::connect(("127.0.0.1", proxy)).is_ok());
    assert!(up, "rspamd did not listen: {}", std::fs::read_to_string(rs.join("rspamd.log")).unwrap_or_default());
    let srv = start_plain(dir.path(), "uring", &format!("[[milter]]\naddress = \"inet:{proxy}@127.0.0.1\"\n"));
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO client.test");
    let gtube = "Subject: test\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";
    assert_eq!(c.message("s@remote.example", &["alice@example.net"], gtube), "554 5.7.1 Gtube pattern\r\n");
    let clean = "From: s@remote.example\r\nTo: alice@example.net\r\nSubject: hello\r\n\r\na clean message\r\n";
    queued_id(&c.message("s@remote.example", &["alice@example.net"], clean));
    assert!(eventually(Duration::from_secs(20), || !mailbox(dir.path(), "alice").is_empty()));
    let m = &mailbox(dir.path(), "alice")[0];
    assert!(m.contains("\nX-Spamd-Result: default: False"), "rspamd's header fields: {m}");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    // SAFETY: kill(2) takes a pid and a signal, no memory; the pid is our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}
