//! Test support: a real `ringmx` process on 127.0.0.1:0 with its own data directory, and a
//! small blocking SMTP client (plain or TLS).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_ringmx");

/// A plain listener on 127.0.0.1:0 that reads the PROXY protocol from 127.0.0.1, so that
/// tests can present any client address.
pub const PROXY_LISTENER: &str =
    "[[listener]]\nport = 0\nbind = [\"127.0.0.1\"]\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.1\"]\n";

/// Both drivers, so that every server test runs on each.
pub const DRIVERS: [&str; 2] = ["uring", "epoll"];

/// A running server process.
pub struct Server {
    pub child: Child,
    pub addrs: Vec<SocketAddr>,
    /// The metrics endpoint, when `[metrics] listen` is set.
    pub metrics: Option<SocketAddr>,
    /// The admin API's TCP address, when `[admin] listen` is set.
    pub admin: Option<SocketAddr>,
    pub dir: PathBuf,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// SIGTERM, then the exit status and what the server logged.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: kill(2) takes a pid and a signal, no memory; the pid is our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = wait_timeout(&mut self.child, Duration::from_secs(20));
        let log = self.stderr.take().map(|h| h.join().unwrap()).unwrap_or_default();
        (status, log)
    }

    /// Waits (at most `limit`, then kills it) for the server to exit by itself; the exit
    /// status and what it logged.
    pub fn stop_when_exited(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let status = wait_timeout(&mut self.child, limit);
        let log = self.stderr.take().map(|h| h.join().unwrap()).unwrap_or_default();
        (status, log)
    }

    /// SIGKILL: no drain, no flush.
    pub fn kill(mut self) {
        // SAFETY: kill(2) takes a pid and a signal, no memory; the pid is our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `ringmx serve` with `config` (TOML, appended to a data_dir line) in `dir`.
/// The config should bind port 0; the bound addresses are read from stdout.
pub fn start(dir: &Path, driver: &str, config: &str) -> Server {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("ringmx.toml");
    // Small segments unless the test says otherwise: every server start writes its segments
    // (and one spare per shard) through with zeros.
    let spool = if config.contains("[spool]") { "" } else { "\n[spool]\nsegment_size = \"1MiB\"\n" };
    let text = format!("data_dir = {:?}\nhostname = \"mx.example.test\"\n{config}{spool}", dir.join("data"));
    std::fs::write(&cfg, text).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--io", driver])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringmx");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let (mtx, mrx) = std::sync::mpsc::channel();
    let (atx, arx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("listening on ") {
                let _ = tx.send(a.parse::<SocketAddr>().unwrap());
            }
            if let Some(a) = line.strip_prefix("metrics on http://").and_then(|a| a.strip_suffix("/metrics")) {
                let _ = mtx.send(a.parse::<SocketAddr>().unwrap());
            }
            if let Some(a) = line.strip_prefix("admin API on http://").and_then(|a| a.strip_suffix("/v1/")) {
                let _ = atx.send(a.parse::<SocketAddr>().unwrap());
            }
        }
    });
    let mut addrs = Vec::new();
    // Every listener prints one line; the first arrives once the server accepts.
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(a) => addrs.push(a),
        Err(_) => {
            let _ = child.kill();
            panic!("server did not start: {}", stderr.join().unwrap());
        }
    }
    while let Ok(a) = rx.recv_timeout(Duration::from_millis(200)) {
        addrs.push(a);
    }
    // Printed right after the listeners, when configured.
    let metrics = mrx.try_recv().ok();
    let admin = arx.try_recv().ok();
    Server { child, addrs, metrics, admin, dir: dir.to_path_buf(), stderr: Some(stderr) }
}

/// A plain listener on 127.0.0.1:0 plus `extra` configuration.
pub fn start_plain(dir: &Path, driver: &str, extra: &str) -> Server {
    start(dir, driver, &format!("[[listener]]\nport = 0\nbind = [\"127.0.0.1\"]\n{extra}"))
}

/// Runs `ringmx` with `args` against `dir`'s configuration; returns (status, stdout).
pub fn ringmx(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).arg("--config").arg(dir.join("ringmx.toml")).output().expect("run ringmx");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ringmx` with `args` against `dir`'s configuration; returns (status, stdout, stderr).
pub fn ringmx_out(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).arg("--config").arg(dir.join("ringmx.toml")).output().expect("run ringmx");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// `queue list --json`, parsed.
pub fn queue(dir: &Path) -> Vec<serde_json::Value> {
    let (code, out) = ringmx(dir, &["queue", "list", "--json"]);
    assert_eq!(code, 0);
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A self-signed certificate for `localhost`, written to `dir` as cert.pem and key.pem.
pub fn make_cert(dir: &Path) -> (PathBuf, PathBuf, rustls::pki_types::CertificateDer<'static>) {
    std::fs::create_dir_all(dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key, ck.cert.der().clone())
}

pub fn tls_client_config(ca: &rustls::pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Swapping,
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(b),
            Stream::Tls(s) => s.read(b),
            Stream::Swapping => unreachable!(),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(b),
            Stream::Tls(s) => s.write(b),
            Stream::Swapping => unreachable!(),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Swapping => unreachable!(),
        }
    }
}

/// A blocking SMTP client that reads whole (multi-line) replies.
pub struct Client {
    stream: Stream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects and reads the greeting.
    pub fn connect(addr: SocketAddr) -> (Client, String) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut c = Client { stream: Stream::Plain(s), buf: Vec::new() };
        let greeting = c.reply();
        (c, greeting)
    }

    /// Connects with implicit TLS (RFC 8314) and reads the greeting.
    pub fn connect_tls(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> (Client, String) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
        let mut c = Client { stream: Stream::Tls(Box::new(rustls::StreamOwned::new(conn, s))), buf: Vec::new() };
        let greeting = c.reply();
        (c, greeting)
    }

    /// Connects as a load balancer would: a PROXY v1 header naming `client`; reads the
    /// greeting.
    pub fn connect_proxied(addr: SocketAddr, client: &str) -> (Client, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (proto, to) = if client.contains(':') { ("TCP6", "::1") } else { ("TCP4", "127.0.0.1") };
        s.write_all(format!("PROXY {proto} {client} {to} 40000 25\r\n").as_bytes()).unwrap();
        let mut c = Client { stream: Stream::Plain(s), buf: Vec::new() };
        let greeting = c.reply();
        (c, greeting)
    }

    /// Connects as a load balancer would: a PROXY v1 header naming `client`, then implicit
    /// TLS; reads the greeting.
    pub fn connect_proxied_tls(addr: SocketAddr, client: &str, cfg: Arc<rustls::ClientConfig>) -> (Client, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(format!("PROXY TCP4 {client} 127.0.0.1 40000 465\r\n").as_bytes()).unwrap();
        let conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
        let mut c = Client { stream: Stream::Tls(Box::new(rustls::StreamOwned::new(conn, s))), buf: Vec::new() };
        let greeting = c.reply();
        (c, greeting)
    }

    /// STARTTLS was accepted: continue over TLS.
    pub fn upgrade(&mut self, cfg: Arc<rustls::ClientConfig>) {
        let Stream::Plain(s) = std::mem::replace(&mut self.stream, Stream::Swapping) else { panic!("already TLS") };
        let conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
        self.stream = Stream::Tls(Box::new(rustls::StreamOwned::new(conn, s)));
    }

    pub fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).unwrap();
        self.stream.flush().unwrap();
    }

    /// QUIT, its 221, then the end of the stream: true when the TLS session ended with
    /// close_notify (RFC 8446 §6.1), false when the TCP connection just closed.
    pub fn quit_tls(mut self) -> bool {
        let r = self.cmd("QUIT");
        assert!(r.starts_with("221"), "{r}");
        let Stream::Tls(s) = &mut self.stream else { panic!("not a TLS connection") };
        let mut b = [0u8; 256];
        loop {
            match s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// Sends one command line and returns its reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Reads one complete reply (all its lines); empty string at end of stream.
    pub fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            let line = self.line();
            if line.is_empty() {
                return out;
            }
            out.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return out;
            }
        }
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let l: Vec<u8> = self.buf.drain(..=i).collect();
                return String::from_utf8_lossy(&l).into_owned();
            }
            let mut tmp = [0u8; 4096];
            match self.stream.read(&mut tmp) {
                Ok(0) | Err(_) => return String::new(),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// EHLO, MAIL, RCPT..., DATA with `body` (dot-stuffed here); returns the final reply.
    pub fn message(&mut self, from: &str, to: &[&str], body: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert!(r.starts_with("250"), "MAIL: {r}");
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"));
            assert!(r.starts_with("250"), "RCPT {t}: {r}");
        }
        let r = self.cmd("DATA");
        assert!(r.starts_with("354"), "DATA: {r}");
        self.send(&dot_stuff(body));
        self.reply()
    }
}

/// RFC 5321 §4.5.2: a leading dot is doubled; the terminator is appended.
pub fn dot_stuff(body: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in body.split_inclusive("\r\n") {
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Strips our Received header (the first field, with its continuation lines).
pub fn without_received(msg: &[u8]) -> &[u8] {
    assert!(msg.starts_with(b"Received: "), "{}", String::from_utf8_lossy(msg));
    let mut i = 0;
    loop {
        let nl = msg[i..].iter().position(|&b| b == b'\n').unwrap() + i + 1;
        if !matches!(msg.get(nl), Some(b' ') | Some(b'\t')) {
            return &msg[nl..];
        }
        i = nl;
    }
}

pub fn queued_id(reply: &str) -> String {
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    reply.trim_end().rsplit(' ').next().unwrap().to_string()
}

/// `ringmx-loadgen`, built beside the test binaries (tests/run.sh builds the whole
/// workspace before it runs the tests).
pub fn loadgen() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap(); // target/debug/deps -> target/debug
    let bin = dir.join("ringmx-loadgen");
    assert!(bin.exists(), "{} missing: run `cargo build -p ringmx-loadgen` first", bin.display());
    bin
}

/// `ringmx-loadgen sink` on 127.0.0.1 (port 0, or a given one), as a far end.
pub struct Sink {
    pub child: Child,
    pub addr: SocketAddr,
    json: PathBuf,
}

impl Sink {
    pub fn start(dir: &Path, listen: &str, args: &[&str]) -> Sink {
        let json = dir.join(format!("sink-{}.json", listen.replace([':', '.'], "_")));
        let mut child = Command::new(loadgen())
            .args(["sink", "--listen", listen, "--threads", "1", "--json"])
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

    /// SIGTERM, then its counters (`connections`, `messages`, `recipients`, `codes`, …).
    pub fn stop(mut self) -> serde_json::Value {
        // SAFETY: kill(2) takes a pid and a signal, no memory; the pid is our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_timeout(&mut self.child, Duration::from_secs(10));
        serde_json::from_slice(&std::fs::read(&self.json).unwrap()).unwrap()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a program that must be told its port (no port 0): a port the kernel hands out
/// is given to `command`, and if the program exits before it listens there (another
/// process took the port in between), it is tried again with another, up to five times.
/// Returns the program and its port once it accepts connections.
pub fn spawn_on_free_port(mut command: impl FnMut(u16) -> Command) -> (Child, u16) {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = command(port).spawn().expect("start the program");
        let up = eventually(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok() || child.try_wait().ok().flatten().is_some()
        });
        if up && child.try_wait().ok().flatten().is_none() {
            return (child, port);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("the program did not listen on any of five ports");
}

/// The messages in mailbox `name` of postoffice `po` (Maildir `new/`), as text.
pub fn mailbox(dir: &Path, name: &str) -> Vec<String> {
    let new = dir.join("data/mailboxes/po").join(name).join("Maildir/new");
    std::fs::read_dir(new)
        .map(|d| d.flatten().map(|e| std::fs::read_to_string(e.path()).unwrap()).collect())
        .unwrap_or_default()
}

/// Polls `f` every 25 ms until it holds, for at most `limit`; returns whether it did.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}

/// A directory with one local mailbox, alice@example.net, and the hosted domain
/// backup.example relayed to `smart_host` (the backup-MX case).
pub fn smart_host_directory(dir: &Path, smart_host: &str) {
    let d = dir.join("data/directory");
    std::fs::create_dir_all(&d).unwrap();
    let data = serde_json::json!({
        "postoffices": [{"name": "po"}],
        "domains": [
            {"name": "example.net", "postoffice": "po"},
            {"name": "backup.example", "postoffice": "po", "smart_host": smart_host}
        ],
        "mailboxes": [{"postoffice": "po", "name": "alice", "addresses": ["alice@example.net"]}]
    });
    std::fs::write(d.join("directory.json"), serde_json::to_string(&data).unwrap()).unwrap();
}

/// A directory with one postoffice `po`, the domain example.net and a mailbox for each of
/// `names` (`NAME@example.net`).
pub fn mailboxes_directory(dir: &Path, names: &[&str]) {
    let d = dir.join("data/directory");
    std::fs::create_dir_all(&d).unwrap();
    let mailboxes: Vec<serde_json::Value> = names
        .iter()
        .map(|n| serde_json::json!({"postoffice": "po", "name": n, "addresses": [format!("{n}@example.net")]}))
        .collect();
    let data = serde_json::json!({
        "postoffices": [{"name": "po"}],
        "domains": [{"name": "example.net", "postoffice": "po"}],
        "mailboxes": mailboxes
    });
    std::fs::write(d.join("directory.json"), serde_json::to_string(&data).unwrap()).unwrap();
}

/// A directory with one postoffice, the domain example.net and its mailbox
/// alice@example.net (where reports to a local sender land).
pub fn alice_directory(dir: &Path) {
    let d = dir.join("data/directory");
    std::fs::create_dir_all(&d).unwrap();
    let data = serde_json::json!({
        "postoffices": [{"name": "po"}],
        "domains": [{"name": "example.net", "postoffice": "po"}],
        "mailboxes": [{"postoffice": "po", "name": "alice", "addresses": ["alice@example.net"]}]
    });
    std::fs::write(d.join("directory.json"), serde_json::to_string(&data).unwrap()).unwrap();
}

/// Ends a [`far_end`] listening on `addr`: sets `stop`, then connects once so that its
/// blocking accept returns and sees the flag.
pub fn stop_far_end(addr: SocketAddr, stop: &std::sync::atomic::AtomicBool) {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = TcpStream::connect(addr);
}

/// What a [`recording_far_end`] recorded.
pub type Recorded = Arc<std::sync::Mutex<Vec<String>>>;

/// A [`far_end`] on its own thread that records the value of header field `field` (e.g.
/// `"Subject"`) of each message it takes: its address, what it recorded, its stop flag (for
/// [`stop_far_end`]) and its thread.
pub fn recording_far_end(
    field: &'static str,
) -> (SocketAddr, Recorded, Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, st) = (seen.clone(), stop.clone());
    let prefix = format!("{field}: ");
    let t = std::thread::spawn(move || {
        far_end(listener, st, |e| {
            if let FarEvent::Message(m) = e
                && let Some(v) = m.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
            {
                s.lock().unwrap().push(v.trim().to_string());
            }
        })
    });
    (addr, seen, stop, t)
}

/// What a [`far_end`] saw.
pub enum FarEvent<'a> {
    /// A command's verb, upper case.
    Command(&'a str),
    /// A message's content, after its 250 was sent.
    Message(&'a str),
}

/// A minimal SMTP far end on loopback for relay tests, one connection at a time until
/// `stop`: 220, then 250 to every command, 354 to DATA and 250 once the content's dot comes,
/// 221 to QUIT (which ends the connection). `on` sees every verb and every message.
pub fn far_end(
    listener: std::net::TcpListener,
    stop: Arc<std::sync::atomic::AtomicBool>,
    mut on: impl FnMut(FarEvent<'_>),
) {
    loop {
        let Ok((s, _)) = listener.accept() else { continue };
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let _ = w.write_all(b"220 far.example ESMTP\r\n");
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let verb = line.split([' ', '\r', ':']).next().unwrap_or("").to_ascii_uppercase();
            on(FarEvent::Command(&verb));
            match verb.as_str() {
                "DATA" => {
                    let _ = w.write_all(b"354 go ahead\r\n");
                    let mut content = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 || line == ".\r\n" {
                            break;
                        }
                        content.push_str(&line);
                    }
                    let _ = w.write_all(b"250 2.0.0 accepted\r\n");
                    on(FarEvent::Message(&content));
                }
                "QUIT" => {
                    let _ = w.write_all(b"221 bye\r\n");
                    break;
                }
                _ => {
                    let _ = w.write_all(b"250 ok\r\n");
                }
            }
        }
    }
}
