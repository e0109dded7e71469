//! `ringmx queue retry|delete|bounce ID...|--all`: the operator's requests, and how they
//! reach the queue.
//!
//! With the server running, a request goes to its control thread over the Unix socket
//! `<data_dir>/control.sock` (mode 0600): one JSON request line, one JSON answer line. The
//! control thread owns the queue, so the request takes effect at once: `retry` makes the
//! messages due now (held ones included, e.g. after a smart host was configured), `delete`
//! writes a final "deleted" mark (no report), `bounce` fails every unfinished recipient with
//! `5.0.0` and sends the sender a non-delivery report as for any failure (RFC 3464; never to
//! `<>`).
//!
//! With the server stopped, `retry` and `delete` write their marks straight into the control
//! log, holding the spool lock a running server holds; `bounce` needs the running server,
//! which builds and delivers the report.

use super::AdminError;
pub use crate::queue::requests::{BOUNCED_TEXT, DELETED_TEXT, QueueAnswer, QueueOp, QueueRequest, socket_path};
use crate::spool::{
    CONTROL_SHARD, Mark, MarkStatus, QueueId, ShardLog, SpoolError, StoredMessage, recover, segment_path, shard_dir,
};
pub use crate::spool::{SpoolLock, lock_spool};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Parses the ids of a request; the first bad one is the error.
pub fn parse_ids(ids: &[String]) -> Result<Vec<QueueId>, AdminError> {
    crate::queue::requests::parse_ids(ids).map_err(AdminError::BadId)
}

/// Which messages an operation applies to.
#[derive(Debug, Clone)]
pub enum Selection {
    Ids(Vec<String>),
    /// Those a filter selects (at the time of the request).
    Filter(super::query::QueueFilter),
    /// Every queued message.
    All,
}

/// Carries out `op` on `sel`: through the running server's admin API when there is one,
/// else on the spool.
pub fn request(data_dir: &Path, spool: &Path, op: QueueOp, sel: &Selection) -> Result<QueueAnswer, AdminError> {
    if let Selection::Ids(ids) = sel {
        parse_ids(ids)?;
    }
    let Some(s) = super::api::connect(data_dir) else {
        let ids = match sel {
            Selection::Ids(ids) => Some(ids.clone()),
            Selection::All => None,
            Selection::Filter(f) => {
                Some(super::query::ids(spool, f, super::query::now_ms())?.iter().map(|i| i.to_string()).collect())
            }
        };
        return match lock_spool(spool).map_err(AdminError::Output)? {
            Some(_lock) => offline(spool, &QueueRequest { op, ids }),
            None => Err(AdminError::Server(format!(
                "the server holds the spool but its admin socket {} does not answer",
                socket_path(data_dir).display()
            ))),
        };
    };
    let name = serde_json::to_value(op).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let path = format!("/v1/queue/{name}");
    let (path, body) = match sel {
        Selection::Ids(ids) => (path, Some(serde_json::json!({ "ids": ids }))),
        Selection::All => (format!("{path}?all=true"), None),
        Selection::Filter(f) => (super::api::with_query(&path, &f.pairs()), None),
    };
    let (_, a): (u16, QueueAnswer) = super::api::json(s, "POST", &path, body.as_ref())?;
    match a.error {
        Some(e) => Err(AdminError::Server(e)),
        None => Ok(a),
    }
}

/// One JSON line each way over the socket: the earlier protocol, which `serve --takeover`
/// still speaks so that it can take over from a server of the previous release.
fn exchange_line<A: serde::de::DeserializeOwned>(s: UnixStream, req: &impl serde::Serialize) -> Result<A, AdminError> {
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = s.try_clone()?;
    let mut line = serde_json::to_vec(req).map_err(|e| AdminError::Server(e.to_string()))?;
    line.push(b'\n');
    w.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    serde_json::from_str(&answer)
        .map_err(|e| AdminError::Server(format!("unreadable answer from the server ({e}): {answer:?}")))
}

/// The stopped server's case: marks appended to the control log.
fn offline(spool: &Path, req: &QueueRequest) -> Result<QueueAnswer, AdminError> {
    if req.op == QueueOp::Locate {
        return Err(AdminError::Server("locate needs the running server (its queue index)".into()));
    }
    if req.op == QueueOp::Bounce {
        return Err(AdminError::Server(
            "bounce needs the running server (it builds and delivers the report): start it, then run this again".into(),
        ));
    }
    if req.op == QueueOp::Delete {
        // The last stop's snapshot of the queue would still list what is deleted now.
        crate::spool::snapshot::remove(spool)?;
    }
    let rec = recover(spool)?;
    let mut answer = QueueAnswer::default();
    let targets: Vec<&StoredMessage> = match &req.ids {
        None => rec.messages.iter().collect(),
        Some(ids) => {
            let mut v = Vec::new();
            for id in parse_ids(ids)? {
                match rec.messages.iter().find(|m| m.envelope.id == id) {
                    Some(m) => v.push(m),
                    None => answer.not_found.push(id.to_string()),
                }
            }
            v
        }
    };
    if targets.is_empty() {
        return Ok(answer);
    }
    let dir = shard_dir(spool, CONTROL_SHARD);
    let (seq, end) = match rec.tails.get(&CONTROL_SHARD) {
        Some(t) => (t.seq, Some(t.end)),
        None => (1, None),
    };
    let size = std::fs::metadata(segment_path(&dir, seq)).map(|m| m.len()).unwrap_or(64 << 20);
    let mut log = ShardLog::open(&dir, CONTROL_SHARD, size, seq, end)?;
    for m in &targets {
        let id = m.envelope.id;
        match req.op {
            _ if let Some(why) = crate::queue::requests::quarantine_skip(req.op, id, m.is_quarantined()) => {
                // `--all` applies to the messages it can; named ones are reported.
                if req.ids.is_some() {
                    answer.skipped.push(why);
                }
                continue;
            }
            // Due at once when the server starts: one mark for the whole message when no
            // recipient is finished, else one per unfinished recipient.
            QueueOp::Release => {
                let latest = m.latest_marks();
                let open = |k: &Option<&Mark>| !k.is_some_and(|k| k.status.is_final());
                match latest.iter().all(open) {
                    true => log.append_mark(0, &crate::queue::manager::released_mark(id, 0)),
                    false => {
                        for (i, _) in latest.iter().enumerate().filter(|(_, k)| open(k)) {
                            let mark = Mark { rcpt: Some(i as u16), ..crate::queue::manager::released_mark(id, 0) };
                            log.append_mark(0, &mark);
                        }
                    }
                }
            }
            QueueOp::Hold => {
                let attempts = m.attempts();
                for (i, k) in m.latest_marks().into_iter().enumerate() {
                    if !k.is_some_and(|k| k.status.is_final()) {
                        let mark = Mark {
                            id,
                            rcpt: Some(i as u16),
                            status: MarkStatus::Deferred,
                            attempts,
                            next_attempt_ms: crate::spool::HOLD_MS,
                            text: crate::queue::requests::HELD_TEXT.into(),
                        };
                        log.append_mark(0, &mark);
                    }
                }
            }
            QueueOp::Delete => log.append_mark(
                0,
                &Mark {
                    id,
                    rcpt: None,
                    status: MarkStatus::Deleted,
                    attempts: m.attempts(),
                    next_attempt_ms: 0,
                    text: DELETED_TEXT.into(),
                },
            ),
            // The deferred recipients become due at once when the server starts.
            QueueOp::Retry => {
                for (i, mark) in m.latest_marks().into_iter().enumerate() {
                    if let Some(k) = mark.filter(|k| k.status == MarkStatus::Deferred) {
                        log.append_mark(0, &Mark { rcpt: Some(i as u16), next_attempt_ms: 0, ..k.clone() });
                    }
                }
            }
            QueueOp::Bounce | QueueOp::Locate => unreachable!("refused above"),
        }
        answer.done.push(id.to_string());
    }
    for c in log.flush_sync(true) {
        c.result.map_err(|e: SpoolError| AdminError::Spool(e))?;
    }
    Ok(answer)
}

/// `ringmx log debug on|off|status`: the running server's debug-log switch. It lives in
/// the server only; a stopped server has none to change (`[log] debug` sets it at start).
pub fn debug_request(
    data_dir: &std::path::Path,
    op: crate::obs::debug::DebugOp,
) -> Result<crate::obs::debug::DebugAnswer, AdminError> {
    let why = ": the debug log is switched on a running server; `[log] debug = true` traces from the start";
    let s = super::api::connect_or_fail(data_dir, why)?;
    let (_, a): (u16, crate::obs::debug::DebugAnswer) = super::api::json(s, "POST", "/v1/log/debug", Some(&op))?;
    match a.error {
        Some(e) => Err(AdminError::Server(e)),
        None => Ok(a),
    }
}

/// `ringmx queue suspend|resume|suspended`: through the running server, else on the stored
/// list (the server reads it at start). The suspended destinations after the change.
pub fn destinations(data_dir: &std::path::Path, op: &str, domains: &[String]) -> Result<Vec<String>, AdminError> {
    use crate::queue::requests::DestinationsAnswer;
    for d in domains {
        crate::directory::model::normalize_domain(d).map_err(|e| AdminError::Server(e.to_string()))?;
    }
    if super::api::connect(data_dir).is_some() {
        let mut suspended = Vec::new();
        let calls: Vec<String> = match op {
            "list" => vec!["/v1/destinations".into()],
            op => domains.iter().map(|d| format!("/v1/destinations/{}/{op}", super::api::seg(d))).collect(),
        };
        for path in calls {
            let s = super::api::connect_or_fail(data_dir, "")?;
            let method = if op == "list" { "GET" } else { "POST" };
            let (_, a): (u16, DestinationsAnswer) = super::api::json(s, method, &path, None::<&()>)?;
            if let Some(e) = a.error {
                return Err(AdminError::Server(e));
            }
            suspended = a.suspended;
        }
        return Ok(suspended);
    }
    let mut list: std::collections::BTreeSet<String> =
        crate::queue::requests::load_suspended(data_dir).into_iter().collect();
    let norm = |d: &String| d.trim().trim_end_matches('.').to_ascii_lowercase();
    match op {
        "suspend" => list.extend(domains.iter().map(norm)),
        "resume" => {
            for d in domains {
                list.remove(&norm(d));
            }
        }
        _ => {}
    }
    let list: Vec<String> = list.into_iter().collect();
    if op != "list" {
        crate::queue::requests::save_suspended(data_dir, &list).map_err(AdminError::Output)?;
    }
    Ok(list)
}

/// Asks the running server to hand its listeners and spool over (`serve --takeover`): it
/// drains and stops. In the earlier protocol, which servers of this release and the
/// previous one both answer.
pub fn handover_request(data_dir: &std::path::Path) -> Result<(), AdminError> {
    let s = super::api::connect_or_fail(data_dir, "")?;
    let a: crate::queue::requests::HandoverAnswer =
        exchange_line(s, &crate::queue::requests::HandoverRequest { handover: true })?;
    if a.draining { Ok(()) } else { Err(AdminError::Server("the server refused to hand over".into())) }
}

/// Has the running server read the mailboxes' quota usage again (after `reset-quota`).
pub fn refresh_usage(data_dir: &std::path::Path) -> Result<(), AdminError> {
    let s = super::api::connect_or_fail(data_dir, "")?;
    let (_, a): (u16, crate::queue::requests::UsageAnswer) =
        super::api::json(s, "POST", "/v1/directory/usage", None::<&()>)?;
    match a.error {
        Some(e) => Err(AdminError::Server(e)),
        None => Ok(()),
    }
}

/// `ringmx reload`: the running server reloads its configuration file (as on SIGHUP) and
/// says what came of it.
pub fn reload_request(data_dir: &std::path::Path) -> Result<crate::rt::reload::ReloadAnswer, AdminError> {
    let s = super::api::connect_or_fail(data_dir, "")?;
    Ok(super::api::json(s, "POST", "/v1/reload", None::<&()>)?.1)
}
