//! Crash tests: the server is SIGKILLed while clients send. After a restart every message
//! that got a 250 is in the queue and byte-identical, and every message in the queue is
//! whole (a message whose 250 never came may be there, complete, or absent — never cut).

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One message a client sent, and whether the server acknowledged it.
struct Sent {
    body: Vec<u8>,
    queue_id: Option<String>,
}

/// Sends messages until the connection breaks or `stop` is set; returns what it sent.
fn client(addr: std::net::SocketAddr, n: usize, acks: Arc<AtomicUsize>, stop: Arc<AtomicBool>) -> Vec<Sent> {
    let mut sent = Vec::new();
    let Ok(s) = TcpStream::connect(addr) else { return sent };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut reply = || -> Option<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(all);
            }
        }
    };
    if !reply().is_some_and(|g| g.starts_with("220")) {
        return sent;
    }
    if w.write_all(b"EHLO crash.example\r\n").is_err() || reply().is_none() {
        return sent;
    }
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) && seq < 100_000 {
        seq += 1;
        // Sizes from 300 bytes to ~200 KB, so that kills land inside bodies and batches.
        let size = [300usize, 2_000, 40_000, 200_000][(n + seq) % 4];
        let line = format!("client {n} message {seq} ");
        let mut body =
            format!("Message-ID: <c{n}.m{seq}@crash.example>\r\nSubject: crash {n}/{seq}\r\n\r\n").into_bytes();
        while body.len() < size {
            body.extend_from_slice(line.as_bytes());
            body.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz\r\n");
        }
        let mut wire = b"MAIL FROM:<c@remote.example>\r\nRCPT TO:<crash@example.test>\r\nDATA\r\n".to_vec();
        if w.write_all(&wire).is_err() {
            break;
        }
        let ok = (0..3).all(|_| reply().is_some_and(|r| r.starts_with('2') || r.starts_with('3')));
        if !ok {
            break;
        }
        wire.clear();
        wire.extend_from_slice(&body);
        wire.extend_from_slice(b".\r\n");
        sent.push(Sent { body, queue_id: None });
        if w.write_all(&wire).is_err() {
            break;
        }
        match reply() {
            Some(r) if r.starts_with("250 2.0.0 Ok: queued as ") => {
                sent.last_mut().unwrap().queue_id = Some(queued_id(&r));
                acks.fetch_add(1, Ordering::Relaxed);
            }
            _ => break,
        }
    }
    sent
}

fn check_queue(dir: &std::path::Path, sent: &[Sent]) -> usize {
    let q = queue(dir);
    let by_mid: HashMap<Vec<u8>, &Sent> = sent
        .iter()
        .map(|s| {
            let mid = s.body.split(|&b| b == b'\r').next().unwrap().to_vec();
            (mid, s)
        })
        .collect();
    let in_queue: HashMap<String, &serde_json::Value> =
        q.iter().map(|m| (m["id"].as_str().unwrap().to_string(), m)).collect();
    // Every acknowledged message is there, byte for byte.
    let mut acked = 0;
    for s in sent.iter().filter(|s| s.queue_id.is_some()) {
        let id = s.queue_id.as_ref().unwrap();
        assert!(in_queue.contains_key(id), "acknowledged message {id} lost");
        let (code, shown) = ringmx(dir, &["queue", "show", id]);
        assert_eq!(code, 0);
        assert!(without_received(shown.as_bytes()) == &s.body[..], "message {id} differs");
        acked += 1;
    }
    // Every message in the queue is complete: equal to one that was sent in full.
    for m in &q {
        let id = m["id"].as_str().unwrap();
        let (_, shown) = ringmx(dir, &["queue", "show", id]);
        let content = without_received(shown.as_bytes());
        let mid = content.split(|&b| b == b'\r').next().unwrap().to_vec();
        let s = by_mid.get(&mid).unwrap_or_else(|| panic!("{id}: unknown message in queue"));
        assert!(content == &s.body[..], "{id}: half-present message");
    }
    acked
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_message() {
    for driver in DRIVERS {
        for kill_after in [1usize, 17, 90] {
            let dir = tempfile::tempdir().unwrap();
            // Small segments, so that kills also land around segment rotation.
            let srv = start_plain(dir.path(), driver, "[spool]\nsegment_size = \"256KiB\"\n");
            let addr = srv.addr();
            let acks = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let all = Arc::new(Mutex::new(Vec::new()));
            let threads: Vec<_> = (0..4)
                .map(|n| {
                    let (acks, stop, all) = (acks.clone(), stop.clone(), all.clone());
                    std::thread::spawn(move || {
                        let sent = client(addr, n, acks, stop);
                        all.lock().unwrap().extend(sent);
                    })
                })
                .collect();
            let t0 = std::time::Instant::now();
            while acks.load(Ordering::Relaxed) < kill_after && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_micros(200));
            }
            srv.kill();
            stop.store(true, Ordering::Relaxed);
            for t in threads {
                t.join().unwrap();
            }
            let sent = std::mem::take(&mut *all.lock().unwrap());
            assert!(acks.load(Ordering::Relaxed) >= kill_after, "{driver}: load never reached the kill point");
            let acked = check_queue(dir.path(), &sent);
            assert_eq!(acked, sent.iter().filter(|s| s.queue_id.is_some()).count());

            // Restart on the same spool: recovery cuts any torn tail, new mail goes on.
            let srv = start(
                dir.path(),
                driver,
                "[[listener]]\nport = 0\nbind = [\"127.0.0.1\"]\n[spool]\nsegment_size = \"256KiB\"\n",
            );
            let acks2 = Arc::new(AtomicUsize::new(0));
            let stop2 = Arc::new(AtomicBool::new(false));
            let (a2, s2) = (acks2.clone(), stop2.clone());
            let addr = srv.addr();
            let t = std::thread::spawn(move || client(addr, 9, a2, s2));
            let t0 = std::time::Instant::now();
            while acks2.load(Ordering::Relaxed) < 5 && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(1));
            }
            stop2.store(true, Ordering::Relaxed);
            let more = t.join().unwrap();
            let (status, log) = srv.stop();
            assert!(status.success(), "{log}");
            let mut everything = sent;
            everything.extend(more);
            check_queue(dir.path(), &everything);
        }
    }
}

/// RFC 5321 §6.1: a message must not be lost once accepted; the one window for a
/// duplicate is between the far end's 250 and the sync of the delivered mark. The far end
/// SIGKILLs the relay the moment it has said 250: after the restart the message is sent
/// again (at most one duplicate), then marked, and never sent a third time.
#[test]
fn sigkill_between_remote_250_and_the_mark_gives_at_most_one_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let far = listener.local_addr().unwrap();
    smart_host_directory(dir.path(), &far.to_string());
    let config = "[delivery.retry]\nintervals = [\"1s\"]\n[delivery.delay_notice]\nmode = \"off\"\n[delivery.remote]\ntls = \"off\"\n";
    let srv = start_plain(dir.path(), "uring", config);
    let (seen, kill, stop) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Some(srv.child.id()))),
        Arc::new(AtomicBool::new(false)),
    );
    let t = {
        let (seen, kill, stop) = (seen.clone(), kill.clone(), stop.clone());
        // Records each message's Message-ID; SIGKILLs the relay right after its first 250 to
        // end of data (before the relay can write its "delivered" mark).
        std::thread::spawn(move || {
            far_end(listener, stop, |e| {
                if let FarEvent::Message(content) = e {
                    let mid = content.lines().find(|l| l.starts_with("Message-ID:")).unwrap_or("").trim().to_string();
                    seen.lock().unwrap().push(mid);
                    if let Some(pid) = kill.lock().unwrap().take() {
                        // SAFETY: kill(2) takes a pid and a signal, no memory; `pid` is the server child this test started.
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    }
                }
            })
        })
    };
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    // The message is durable before its 250 is sent, and delivery may be quicker than the
    // shard's send: the far end can kill the server before the 250 leaves. Then the client
    // sees the connection end instead (a client retries such a message: one duplicate).
    let r = c.message("alice@example.net", &["u@backup.example"], "Message-ID: <dup@test>\r\n\r\nx\r\n");
    assert!(r.is_empty() || r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert!(eventually(Duration::from_secs(20), || kill.lock().unwrap().is_none()), "the far end never got it");
    srv.kill();
    let srv = start_plain(dir.path(), "epoll", config);
    assert!(eventually(Duration::from_secs(20), || queue(dir.path()).is_empty()), "{:?}", queue(dir.path()));
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    // And a third start sends nothing more: the mark is durable. A message sent after this
    // start is handled after whatever the recovery found: once the far end has it, a third
    // copy would have come first.
    let srv = start_plain(dir.path(), "uring", config);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    queued_id(&c.message("alice@example.net", &["u@backup.example"], "Message-ID: <after@test>\r\n\r\nx\r\n"));
    assert!(
        eventually(Duration::from_secs(20), || seen.lock().unwrap().iter().any(|m| m == "Message-ID: <after@test>")),
        "the far end never got the later message"
    );
    // Remote jobs run side by side: wait until nothing is unfinished, so that a third copy,
    // had one been sent, is in `seen` too.
    assert!(eventually(Duration::from_secs(20), || queue(dir.path()).is_empty()), "{:?}", queue(dir.path()));
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    stop_far_end(far, &stop);
    t.join().unwrap();
    let seen = seen.lock().unwrap();
    let copies = seen.iter().filter(|m| *m == "Message-ID: <dup@test>").count();
    assert!((1..=2).contains(&copies), "{seen:?}");
}
