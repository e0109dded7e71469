//! The control socket, `<data_dir>/control.sock`: `ringmx queue retry|delete|bounce` reach
//! the control thread through it; `ringmx ban …` (the ban list) and `ringmx log debug …`
//! (the debug log's switch) are answered here. Requests are in
//! [`crate::queue::requests`], the command line's side in `admin::control`. One thread, one request at a time: operator commands are rare
//! and the control thread answers each at once.

use super::control::link::ControlMsg;
use crate::queue::requests::{QueueAnswer, QueueRequest};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

/// How long a client may take to send its request, and the control thread to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the socket answers itself besides the ban list.
pub struct Answerers {
    pub debug: Arc<crate::obs::debug::DebugSwitch>,
    pub metrics: Arc<crate::obs::metrics::ControlMetrics>,
    pub reloads: Arc<super::reload::Outcomes>,
    /// `ringmx directory list moderate`: held posts approved or rejected.
    pub lists: super::lists::ListsHandle,
}

/// Binds the socket (replacing a stale one: the caller holds the spool lock, so no other
/// server uses it) and serves it until `stop`; the socket file is removed at the end.
pub fn spawn(
    path: PathBuf,
    tx: SyncSender<ControlMsg>,
    bans: Option<Arc<crate::policy::BanList>>,
    answerers: Answerers,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name("control-socket".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => {
                    if let Err(e) = serve(s, &tx, bans.as_deref(), &answerers) {
                        log::warn!("control socket: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    log::warn!("control socket: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        remove(&path);
    })
}

fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

fn serve(
    s: UnixStream,
    tx: &SyncSender<ControlMsg>,
    bans: Option<&crate::policy::BanList>,
    answerers: &Answerers,
) -> std::io::Result<()> {
    let Answerers { debug, metrics, reloads, lists } = answerers;
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let mut w = s.try_clone()?;
    let mut line = String::new();
    // One request line, at most 1 MiB.
    BufReader::new(s.take(1 << 20)).read_line(&mut line)?;
    // `ringmx reload`: SIGHUP to this process, answered once the main thread dealt with it.
    if serde_json::from_str::<super::reload::ReloadRequest>(&line).is_ok() {
        let answer = reloads.request(Duration::from_secs(30));
        let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
        out.push(b'\n');
        return w.write_all(&out);
    }
    // `ringmx diagnose`: the queue as the control thread last published it.
    if crate::admin::diagnose::is_status_request(&line) {
        let mut out = serde_json::to_vec(&crate::admin::diagnose::status(metrics)).map_err(std::io::Error::other)?;
        out.push(b'\n');
        return w.write_all(&out);
    }
    // `ringmx log debug …`: answered here, on the switch every session reads.
    if let Ok(req) = serde_json::from_str::<crate::obs::debug::DebugRequest>(&line) {
        let answer = crate::obs::debug::apply(debug, &req.debug);
        if !matches!(req.debug, crate::obs::debug::DebugOp::Status) && answer.error.is_none() {
            log::info!(
                "debug log {} for {}",
                if answer.on { "on" } else { "off" },
                match answer.clients.is_empty() {
                    true => "every client".to_string(),
                    false => answer.clients.join(", "),
                }
            );
        }
        let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
        out.push(b'\n');
        return w.write_all(&out);
    }
    // `ringmx serve --takeover`: drain and stop, as on SIGTERM (the main thread's sigwait
    // takes it), so that the new server gets the listeners' queues and the spool.
    if serde_json::from_str::<crate::queue::requests::HandoverRequest>(&line).is_ok() {
        log::info!("handover asked by a new server: draining");
        super::HANDING_OVER.store(true, Ordering::Relaxed);
        // SAFETY: kill(2) takes a pid and a signal, no memory; the pid is this process's own.
        unsafe { libc::kill(std::process::id() as i32, libc::SIGTERM) };
        let mut out = serde_json::to_vec(&crate::queue::requests::HandoverAnswer { draining: true })
            .map_err(std::io::Error::other)?;
        out.push(b'\n');
        return w.write_all(&out);
    }
    // `ringmx queue suspend|resume|suspended`: the queue manager's.
    if let Ok(req) = serde_json::from_str::<crate::queue::requests::DestinationsRequest>(&line) {
        use crate::queue::requests::DestinationsAnswer;
        let (atx, arx) = std::sync::mpsc::channel();
        let answer = match tx.send(ControlMsg::Destinations(req.destinations.op, req.destinations.domains, atx)) {
            Err(_) => DestinationsAnswer { error: Some("the server is stopping".into()), ..Default::default() },
            Ok(()) => arx.recv_timeout(TIMEOUT).unwrap_or_else(|_| DestinationsAnswer {
                error: Some("the control thread did not answer in time".into()),
                ..Default::default()
            }),
        };
        let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
        out.push(b'\n');
        return w.write_all(&out);
    }
    // `ringmx directory postoffice reset-quota`: the control thread reads the usage again.
    if serde_json::from_str::<crate::queue::requests::UsageRequest>(&line).is_ok() {
        let (atx, arx) = std::sync::mpsc::channel();
        let answer = match tx.send(ControlMsg::RefreshUsage(atx)) {
            Err(_) => {
                crate::queue::requests::UsageAnswer { error: Some("the server is stopping".into()), mailboxes: 0 }
            }
            Ok(()) => match arx.recv_timeout(TIMEOUT) {
                Ok(n) => crate::queue::requests::UsageAnswer { mailboxes: n, error: None },
                Err(_) => crate::queue::requests::UsageAnswer {
                    error: Some("the control thread did not answer in time".into()),
                    mailboxes: 0,
                },
            },
        };
        let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
        out.push(b'\n');
        return w.write_all(&out);
    }
    // `ringmx directory list moderate LIST --approve|--reject CODE`: the list thread.
    if let Ok(req) = serde_json::from_str::<super::lists::ModerateRequest>(&line) {
        let answer = lists.moderate(req.moderate, TIMEOUT);
        let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
        out.push(b'\n');
        return w.write_all(&out);
    }
    // `ringmx ban …`: answered here, on the list every shard reads.
    if let Ok(req) = serde_json::from_str::<crate::admin::bans::BanRequest>(&line) {
        let answer = match bans {
            Some(list) => crate::admin::bans::apply(list, &req.ban),
            None => crate::admin::bans::BanAnswer {
                error: Some("automatic bans are off ([policy] auto_ban = false)".into()),
                ..Default::default()
            },
        };
        let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
        out.push(b'\n');
        return w.write_all(&out);
    }
    let answer = match serde_json::from_str::<QueueRequest>(&line) {
        Err(e) => QueueAnswer { error: Some(format!("bad request: {e}")), ..QueueAnswer::default() },
        Ok(req) => {
            let (atx, arx) = std::sync::mpsc::channel();
            match tx.send(ControlMsg::Queue(req, atx)) {
                Err(_) => QueueAnswer { error: Some("the server is stopping".into()), ..QueueAnswer::default() },
                Ok(()) => arx.recv_timeout(TIMEOUT).unwrap_or_else(|_| QueueAnswer {
                    error: Some("the control thread did not answer in time".into()),
                    ..QueueAnswer::default()
                }),
            }
        }
    };
    let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out)
}
