//! The remote driver against real SMTP servers on 127.0.0.1:0: `ringmx-loadgen sink` and
//! Postfix's `smtp-sink`.
//!
//! The sink is the workspace's other binary: build it first with
//! `cargo build -p ringmx-loadgen` (tests/run.sh builds the whole workspace before the
//! tests). It is found next to this test's executable, in `target/debug/`.

mod common;

use ringmx::delivery::client::{Concern, Credentials, Error, OutboundMessage, TlsPolicy};
use ringmx::delivery::remote::{Destination, Pool, RemoteConfig};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn loadgen() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap(); // target/debug/deps -> target/debug
    let bin = dir.join("ringmx-loadgen");
    assert!(bin.exists(), "{} missing: run `cargo build -p ringmx-loadgen` first", bin.display());
    bin
}

struct Sink {
    child: Child,
    addr: SocketAddr,
    json: PathBuf,
}

impl Sink {
    fn start(dir: &Path, args: &[&str]) -> Sink {
        let json = dir.join("sink.json");
        let mut child = Command::new(loadgen())
            .args(["sink", "--listen", "127.0.0.1:0", "--threads", "1", "--json"])
            .arg(&json)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        for _ in 0..20 {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Some(a) = line.trim().strip_prefix("listening on ") {
                let addr = a.parse().unwrap();
                std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
                return Sink { child, addr, json };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the sink did not say where it listens");
    }

    /// SIGTERM, then its counters.
    fn stop(mut self) -> serde_json::Value {
        // SAFETY: kill(2) takes a pid and a signal, no memory; the pid is our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        serde_json::from_slice(&std::fs::read(&self.json).unwrap()).unwrap()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn msg(n: usize) -> Arc<OutboundMessage> {
    let content = format!("From: a@src.test\r\nSubject: {n}\r\n\r\n.leading dot\r\nbody {n}\r\n");
    Arc::new(OutboundMessage::new("a@src.test", vec!["b@dst.test".into()], content.as_bytes().into(), false))
}

fn dest(addr: SocketAddr, auth: Option<Credentials>) -> Destination {
    Destination { host: "localhost".into(), addr, auth }
}

fn cfg(tls: TlsPolicy) -> RemoteConfig {
    RemoteConfig { tls, ..Default::default() }
}

#[test]
fn many_messages_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), &[]);
    let pool = Pool::new(cfg(TlsPolicy::Off), "client.test").unwrap();
    let d = dest(sink.addr, None);
    rt().block_on(async {
        for i in 0..5 {
            let r = pool.deliver(&d, msg(i)).await.unwrap();
            assert!(r[0].is_ok(), "{r:?}");
        }
        pool.close_idle().await;
    });
    assert_eq!(pool.connections_opened(), 1);
    let stats = sink.stop();
    assert_eq!((stats["connections"].as_u64(), stats["messages"].as_u64()), (Some(1), Some(5)), "{stats}");
}

#[test]
fn recipient_deferral_is_per_recipient_and_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), &["--rcpt-reply", "450 4.2.1 busy@100%"]);
    let pool = Pool::new(cfg(TlsPolicy::Off), "client.test").unwrap();
    let r = rt().block_on(pool.deliver(&dest(sink.addr, None), msg(0))).unwrap();
    let e = r[0].as_ref().unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    assert_eq!(e.concern(), Concern::Recipient);
    assert_eq!(e.status(), "4.2.1");
    sink.stop();
}

fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c, k)
}

#[test]
fn starttls_opportunistic_passes_required_with_untrusted_cert_defers() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = self_signed(dir.path());
    let sink = Sink::start(dir.path(), &["--tls-cert", c.to_str().unwrap(), "--tls-key", k.to_str().unwrap()]);
    let d = dest(sink.addr, None);
    let rt = rt();
    let pool = Pool::new(cfg(TlsPolicy::Opportunistic), "client.test").unwrap();
    let r = rt.block_on(pool.deliver(&d, msg(0))).unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    let strict = Pool::new(cfg(TlsPolicy::Require), "client.test").unwrap();
    let r = rt.block_on(strict.deliver(&d, msg(1))).unwrap();
    let e = r[0].as_ref().unwrap_err();
    assert_eq!(e, &Error::TlsFailed);
    assert!(!e.is_permanent());
    rt.block_on(pool.close_idle());
    let stats = sink.stop();
    assert_eq!(stats["messages"].as_u64(), Some(1), "{stats}");
    assert!(stats["tls_handshakes"].as_u64() >= Some(1), "{stats}");
}

#[test]
fn auth_plain_over_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = self_signed(dir.path());
    let sink = Sink::start(
        dir.path(),
        &["--tls-cert", c.to_str().unwrap(), "--tls-key", k.to_str().unwrap(), "--auth", "user:secret"],
    );
    let pool = Pool::new(cfg(TlsPolicy::Opportunistic), "client.test").unwrap();
    let good = Credentials { user: "user".into(), password: "secret".into(), mechanism: None };
    let bad = Credentials { password: "wrong".into(), ..good.clone() };
    let rt = rt();
    let r = rt.block_on(pool.deliver(&dest(sink.addr, Some(good)), msg(0))).unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    let r = rt.block_on(pool.deliver(&dest(sink.addr, Some(bad)), msg(1))).unwrap();
    assert!(matches!(&r[0], Err(Error::Rejected { stage: ringmx::delivery::client::Stage::Auth, .. })), "{r:?}");
    rt.block_on(pool.close_idle());
    let stats = sink.stop();
    assert_eq!(stats["auth_successes"].as_u64(), Some(1), "{stats}");
}

#[test]
fn postfix_smtp_sink() {
    let bin = "/usr/sbin/smtp-sink";
    if !Path::new(bin).exists() {
        eprintln!("skipped: {bin} not installed");
        return;
    }
    // smtp-sink takes a port, not port 0.
    let (mut child, port) = common::spawn_on_free_port(|port| {
        let mut c = Command::new(bin);
        c.args(["-u", "nobody", &format!("127.0.0.1:{port}"), "1000"]).stdout(Stdio::null()).stderr(Stdio::null());
        c
    });
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let pool = Pool::new(cfg(TlsPolicy::Off), "client.test").unwrap();
    rt().block_on(async {
        for i in 0..3 {
            let r = pool.deliver(&dest(addr, None), msg(i)).await.unwrap();
            assert!(r[0].is_ok(), "{r:?}");
        }
        pool.close_idle().await;
    });
    assert_eq!(pool.connections_opened(), 1);
    let _ = child.kill();
    let _ = child.wait();
}
