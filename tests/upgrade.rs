//! A zero-downtime restart (`ringmx serve --takeover`) under load: clients send a message
//! per connection, on both drivers, while a second server takes the listeners and the
//! spool over. No connection is refused or reset, a transaction the old server refused
//! while draining (421) is sent again, and every message that got its 250 is in the queue
//! once.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the clients saw.
#[derive(Default)]
struct Tally {
    /// Queue ids of the messages that got their 250.
    acked: Mutex<Vec<String>>,
    /// Connections refused or reset, replies that never came.
    broken: Mutex<Vec<String>>,
    /// 4xx answers (a draining server), sent again.
    retried: AtomicUsize,
}

/// One message on its own connection: `Ok(Some(id))` when taken, `Ok(None)` when a 4xx
/// said try again, `Err` when the connection broke.
fn one_message(port: u16, n: usize) -> Result<Option<String>, String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut reply = || -> Result<String, String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) => return Err(format!("closed after {all:?}")),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e} after {all:?}")),
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(all);
            }
        }
    };
    let banner = reply()?;
    if banner.starts_with('4') {
        return Ok(None);
    }
    let body = format!("Subject: m{n}\r\n\r\nmessage {n}\r\n.\r\n");
    for cmd in ["EHLO client.test\r\n", "MAIL FROM:<s@remote.example>\r\n", "RCPT TO:<r@example.test>\r\n", "DATA\r\n"]
    {
        w.write_all(cmd.as_bytes()).map_err(|e| format!("write: {e}"))?;
        let a = reply()?;
        if a.starts_with('4') {
            return Ok(None);
        }
    }
    w.write_all(body.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let a = reply()?;
    if a.starts_with('4') {
        return Ok(None);
    }
    let _ = w.write_all(b"QUIT\r\n");
    Ok(Some(queued_id(&a)))
}

#[test]
fn a_takeover_under_load_refuses_nothing_and_loses_nothing() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // Mail for an accept-all domain with nowhere to go stays queued: the queue is the
        // record of what was taken.
        let cfg = format!(
            "local_domains = [\"example.test\"]\n[[listener]]\nport = {port}\nbind = [\"127.0.0.1\"]\n\
             [limits]\nmax_connections_per_ip = 10000\n[timeouts]\nshutdown = \"10s\"\n"
        );
        let old = start(d, driver, &cfg);
        let tally = Arc::new(Tally::default());
        let sent = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        const PER_CLIENT: usize = 150;
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (tally, sent, stop) = (tally.clone(), sent.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut done = 0;
                    let mut attempts = 0;
                    while done < PER_CLIENT && attempts < PER_CLIENT * 20 && !stop.load(Ordering::Relaxed) {
                        attempts += 1;
                        match one_message(port, c * PER_CLIENT + done) {
                            Ok(Some(id)) => {
                                tally.acked.lock().unwrap().push(id);
                                done += 1;
                                sent.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(None) => {
                                tally.retried.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => tally.broken.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        // A quarter of the load in, the new server takes over.
        assert!(eventually(Duration::from_secs(60), || sent.load(Ordering::Relaxed) >= 150));
        let mut new = Command::new(BIN)
            .args(["serve", "--takeover", "--config"])
            .arg(d.join("ringmx.toml"))
            .args(["--io", driver])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (old_status, old_log) = old.stop_when_exited(Duration::from_secs(60));
        assert!(old_status.success(), "{driver}: {old_log}");
        assert!(old_log.contains("handover asked by a new server"), "{old_log}");
        let mut line = String::new();
        BufReader::new(new.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("listening on 127.0.0.1:"), "{driver}: the new server: {line:?}");
        for c in clients {
            c.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        // SAFETY: kill(2) takes a pid and a signal, no memory; the pid is our own child, not yet reaped.
        unsafe { libc::kill(new.id() as i32, libc::SIGTERM) };
        let status = new.wait().unwrap();
        let mut new_log = String::new();
        std::io::Read::read_to_string(&mut new.stderr.take().unwrap(), &mut new_log).unwrap();
        assert!(status.success(), "{driver}: {new_log}");
        let broken = tally.broken.lock().unwrap().clone();
        assert!(broken.is_empty(), "{driver}: {} connection(s) refused or reset: {broken:?}", broken.len());
        let acked = tally.acked.lock().unwrap().clone();
        assert_eq!(acked.len(), 4 * PER_CLIENT, "{driver}");
        // Every message that got its 250 is queued, once.
        let queued: Vec<String> = queue(d).iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
        let mut want = acked.clone();
        want.sort();
        let mut got = queued.clone();
        got.sort();
        assert_eq!(got, want, "{driver}");
        eprintln!(
            "{driver}: {} messages, {} sent again after a 421",
            acked.len(),
            tally.retried.load(Ordering::Relaxed)
        );
    }
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Under systemd (`Type=notify`, `NotifyAccess=all`): READY=1 with the main pid once the
/// server serves; SIGUSR2 starts the binary at its path with `--takeover`, which names
/// itself the main process before the old one drains (so the old one's exit is not the
/// service's end), then is ready; SIGTERM says STOPPING=1. The service manager is played by
/// a datagram socket in `$NOTIFY_SOCKET`.
#[test]
fn sigusr2_upgrades_in_place_and_tells_the_service_manager() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let notify = std::os::unix::net::UnixDatagram::bind(d.join("notify.sock")).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let next = || {
        let mut b = [0u8; 512];
        let n = notify.recv(&mut b).expect("a notification");
        String::from_utf8_lossy(&b[..n]).into_owned()
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = d.join("ringmx.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n[[listener]]\nport = {port}\nbind = [\"127.0.0.1\"]\n[spool]\nsegment_size = \"1MiB\"\n",
            d.join("data")
        ),
    )
    .unwrap();
    let mut old = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", d.join("notify.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(next(), format!("READY=1\nMAINPID={}", old.id()));
    // SAFETY: kill(2) takes a pid and a signal, no memory; the pid is our own child, not yet reaped.
    unsafe { libc::kill(old.id() as i32, libc::SIGUSR2) };
    let main = next();
    let new_pid: u32 = main.strip_prefix("MAINPID=").expect("the new process names itself first").parse().unwrap();
    assert_ne!(new_pid, old.id());
    assert_eq!(next(), format!("READY=1\nMAINPID={new_pid}"), "no STOPPING=1 from the old one");
    assert!(old.wait().unwrap().success(), "the old server drained and exited");
    let (mut c, banner) = Client::connect(format!("127.0.0.1:{port}").parse().unwrap());
    assert!(banner.starts_with("220 "), "{banner}");
    c.cmd("QUIT");
    // SAFETY: kill(2) takes a pid and a signal, no memory; the pid came from its own notification and it runs.
    unsafe { libc::kill(new_pid as i32, libc::SIGTERM) };
    assert_eq!(next(), "STOPPING=1");
    assert!(eventually(Duration::from_secs(30), || gone(new_pid)), "the new server stops on SIGTERM");
}
