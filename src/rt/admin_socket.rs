//! The admin socket, `<data_dir>/control.sock` (mode 0600), and the admin API's optional
//! TCP address (`[admin] listen`, a bearer token required): the operator's way in to the
//! running server. `ringmx queue …`, `ringmx ban …`, `ringmx directory …`, `ringmx reload`
//! and `ringmx log debug …` reach the server here.
//!
//! The socket speaks HTTP/1.1 with JSON ([`super::admin_http`]: versioned paths under
//! `/v1/`, described in docs/admin-api.yaml). A connection whose first byte is `{` speaks
//! the earlier protocol instead (one JSON request line, one JSON answer line), which a
//! server keeps answering so that the command line of the previous release, and its
//! `serve --takeover`, still reach it.
//!
//! One thread per connection, at most [`MAX_CONNECTIONS`] at a time on the socket and as
//! many on TCP (more are told 503; clients on TCP that hold their connections open cannot
//! keep the socket's operators out); each has [`TIMEOUT`] to send its request, however it
//! trickles it.

use super::control::link::ControlMsg;
use crate::queue::requests::{
    DestinationsAnswer, DestinationsOp, HandoverAnswer, QueueAnswer, QueueRequest, UsageAnswer,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

/// How long a client may take to send its request, and the control thread to answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once, on the socket and on TCP each; more are answered 503 at once.
pub const MAX_CONNECTIONS: usize = 16;

/// What the socket answers itself besides the ban list.
pub struct Answerers {
    pub debug: Arc<crate::obs::debug::DebugSwitch>,
    pub metrics: Arc<crate::obs::metrics::ControlMetrics>,
    pub reloads: Arc<super::reload::Outcomes>,
    /// `ringmx directory list moderate`: held posts approved or rejected.
    pub lists: super::lists::ListsHandle,
    /// Where the data (the directory), the spool and the mailboxes are.
    pub data_dir: PathBuf,
    pub spool: PathBuf,
    pub maildir_root: PathBuf,
}

/// Everything a connection's thread needs.
pub struct Admin {
    pub tx: SyncSender<ControlMsg>,
    pub bans: Option<Arc<crate::policy::BanList>>,
    pub answerers: Answerers,
    /// The last reading of the spool for `GET /v1/queue`, and when it was made.
    pub listing: std::sync::Mutex<Option<(std::time::Instant, Arc<crate::admin::query::Listing>)>>,
}

/// The admin API on TCP: where, and the bearer token every request must carry.
pub struct TcpAdmin {
    pub listener: std::net::TcpListener,
    pub token: String,
}

/// Binds the socket (replacing a stale one: the caller holds the spool lock, so no other
/// server uses it) and serves it, and `tcp` when given, until `stop` (set, then `wake`
/// nudged); the socket file is removed at the end.
pub fn spawn(
    path: PathBuf,
    admin: Admin,
    tcp: Option<TcpAdmin>,
    stop: Arc<AtomicBool>,
    wake: Arc<super::shard::ShardWaker>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    if let Some(t) = &tcp {
        t.listener.set_nonblocking(true)?;
    }
    let admin = Arc::new(admin);
    let token: Option<Arc<str>> = tcp.as_ref().map(|t| Arc::from(t.token.as_str()));
    let (busy_unix, busy_tcp) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    std::thread::Builder::new().name("admin-socket".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let mut fds = vec![
                libc::pollfd { fd: wake.fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            if let Some(t) = &tcp {
                fds.push(libc::pollfd { fd: t.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            }
            // No time-out: a client or the stop's nudge wakes it.
            // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()` pollfds for
            // the duration of the call; poll(2) writes only their `revents`.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n <= 0 {
                continue;
            }
            if fds[0].revents != 0 {
                wake.take();
            }
            loop {
                match listener.accept() {
                    Ok((s, _)) => start(Stream::Unix(s), None, &admin, &busy_unix),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::warn!("admin socket: {e}");
                        break;
                    }
                }
            }
            if let Some(t) = &tcp {
                loop {
                    match t.listener.accept() {
                        Ok((s, _)) => start(Stream::Tcp(s), token.clone(), &admin, &busy_tcp),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            log::warn!("admin API: {e}");
                            break;
                        }
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    })
}

/// An accepted connection.
pub enum Stream {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Stream {
    fn prepare(&self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(TIMEOUT))?;
                s.set_write_timeout(Some(TIMEOUT))
            }
            Stream::Tcp(s) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(TIMEOUT))?;
                s.set_write_timeout(Some(TIMEOUT))
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serves `s` on a thread of its own, or answers 503 when [`MAX_CONNECTIONS`] are served.
fn start(mut s: Stream, token: Option<Arc<str>>, admin: &Arc<Admin>, busy: &Arc<AtomicUsize>) {
    if s.prepare().is_err() {
        return;
    }
    if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
        busy.fetch_sub(1, Ordering::AcqRel);
        // What the request sent so far is read first (without waiting), so that closing does
        // not reset the connection before the client reads the answer.
        let mut sink = [0u8; 16 << 10];
        let drained = match &s {
            Stream::Unix(u) => u.set_nonblocking(true),
            Stream::Tcp(t) => t.set_nonblocking(true),
        };
        if drained.is_ok() {
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        }
        let _ = super::admin_http::write_error(&mut s, 503, "too many admin connections: try again");
        return;
    }
    let (admin, busy2) = (admin.clone(), busy.clone());
    let spawned = std::thread::Builder::new().name("admin-conn".into()).spawn(move || {
        if let Err(e) = serve(s, token.as_deref(), &admin) {
            log::debug!("admin connection: {e}");
        }
        busy2.fetch_sub(1, Ordering::AcqRel);
    });
    if spawned.is_err() {
        busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection: HTTP, or on the Unix socket the earlier line protocol.
fn serve(mut s: Stream, token: Option<&str>, admin: &Admin) -> std::io::Result<()> {
    let mut first = [0u8; 1];
    if s.read(&mut first)? == 0 {
        return Ok(());
    }
    if first[0] == b'{' && matches!(s, Stream::Unix(_)) {
        return serve_line(first, s, admin);
    }
    super::admin_http::serve(first[0], s, token, admin)
}

/// The earlier protocol: one request line (at most 1 MiB), one answer line.
fn serve_line(first: [u8; 1], mut s: Stream, admin: &Admin) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new((&first[..]).chain((&mut s).take(1 << 20))).read_line(&mut line)?;
    let answer = answer_line(&line, admin);
    let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    out.push(b'\n');
    s.write_all(&out)
}

fn answer_line(line: &str, admin: &Admin) -> serde_json::Value {
    use serde_json::to_value as v;
    let r = if serde_json::from_str::<super::reload::ReloadRequest>(line).is_ok() {
        v(reload(admin))
    } else if crate::admin::diagnose::is_status_request(line) {
        v(crate::admin::diagnose::status(&admin.answerers.metrics))
    } else if let Ok(req) = serde_json::from_str::<crate::obs::debug::DebugRequest>(line) {
        v(debug(admin, &req.debug))
    } else if serde_json::from_str::<crate::queue::requests::HandoverRequest>(line).is_ok() {
        v(handover())
    } else if let Ok(req) = serde_json::from_str::<crate::queue::requests::DestinationsRequest>(line) {
        v(destinations(admin, req.destinations))
    } else if serde_json::from_str::<crate::queue::requests::UsageRequest>(line).is_ok() {
        v(refresh_usage(admin))
    } else if let Ok(req) = serde_json::from_str::<super::lists::ModerateRequest>(line) {
        v(admin.answerers.lists.moderate(req.moderate, TIMEOUT))
    } else if let Ok(req) = serde_json::from_str::<crate::admin::bans::BanRequest>(line) {
        v(bans(admin, &req.ban))
    } else {
        match serde_json::from_str::<QueueRequest>(line) {
            Err(e) => v(QueueAnswer { error: Some(format!("bad request: {e}")), ..QueueAnswer::default() }),
            Ok(req) => v(queue(admin, req)),
        }
    };
    r.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

/// `ringmx reload`: SIGHUP to this process, answered once the main thread dealt with it.
pub fn reload(admin: &Admin) -> super::reload::ReloadAnswer {
    admin.answerers.reloads.request(Duration::from_secs(30))
}

/// `ringmx log debug …`: answered here, on the switch every session reads.
pub fn debug(admin: &Admin, op: &crate::obs::debug::DebugOp) -> crate::obs::debug::DebugAnswer {
    let answer = crate::obs::debug::apply(&admin.answerers.debug, op);
    if !matches!(op, crate::obs::debug::DebugOp::Status) && answer.error.is_none() {
        log::info!(
            "debug log {} for {}",
            if answer.on { "on" } else { "off" },
            match answer.clients.is_empty() {
                true => "every client".to_string(),
                false => answer.clients.join(", "),
            }
        );
    }
    answer
}

/// `ringmx serve --takeover`: drain and stop, as on SIGTERM (the main thread's sigwait takes
/// it), so that the new server gets the listeners' queues and the spool.
pub fn handover() -> HandoverAnswer {
    log::info!("handover asked by a new server: draining");
    super::HANDING_OVER.store(true, Ordering::Relaxed);
    // SAFETY: kill(2) takes a pid and a signal, no memory; the pid is this process's own.
    unsafe { libc::kill(std::process::id() as i32, libc::SIGTERM) };
    HandoverAnswer { draining: true }
}

/// Sends `msg` (made with the answer's sender) to the control thread and waits for its
/// answer, or says why there is none.
fn ask<A>(admin: &Admin, msg: impl FnOnce(std::sync::mpsc::Sender<A>) -> ControlMsg, failed: impl Fn(&str) -> A) -> A {
    let (atx, arx) = std::sync::mpsc::channel();
    match admin.tx.send(msg(atx)) {
        Err(_) => failed("the server is stopping"),
        Ok(()) => arx.recv_timeout(TIMEOUT).unwrap_or_else(|_| failed("the control thread did not answer in time")),
    }
}

/// `ringmx queue suspend|resume|suspended`: the queue manager's.
pub fn destinations(admin: &Admin, op: DestinationsOp) -> DestinationsAnswer {
    ask(
        admin,
        |atx| ControlMsg::Destinations(op.op, op.domains, atx),
        |e| DestinationsAnswer { error: Some(e.into()), ..Default::default() },
    )
}

/// `ringmx directory postoffice reset-quota`: the control thread reads the usage again.
pub fn refresh_usage(admin: &Admin) -> UsageAnswer {
    let n = ask(admin, ControlMsg::RefreshUsage, |_| usize::MAX);
    match n {
        usize::MAX => UsageAnswer { error: Some("the control thread did not answer".into()), mailboxes: 0 },
        n => UsageAnswer { mailboxes: n, error: None },
    }
}

/// `ringmx ban …`: answered here, on the list every shard reads.
pub fn bans(admin: &Admin, op: &crate::admin::bans::BanOp) -> crate::admin::bans::BanAnswer {
    match admin.bans.as_deref() {
        Some(list) => crate::admin::bans::apply(list, op),
        None => crate::admin::bans::BanAnswer {
            error: Some("automatic bans are off ([policy] auto_ban = false)".into()),
            ..Default::default()
        },
    }
}

/// `ringmx queue retry|delete|bounce|hold|release`: the queue manager's.
pub fn queue(admin: &Admin, req: QueueRequest) -> QueueAnswer {
    ask(admin, |atx| ControlMsg::Queue(req, atx), |e| QueueAnswer { error: Some(e.into()), ..QueueAnswer::default() })
}
