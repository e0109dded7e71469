//! Operator commands that read the spool directly, so that they work whether the server
//! runs or not.

pub mod backup;
pub mod bans;
pub mod control;
pub mod diagnose;
pub mod directory;
pub mod lists;

use crate::queue::Status;
use crate::queue::requests::{QueueOp, QueueRequest};
use crate::spool::{MarkStatus, QueueId, SpoolError, StoredMessage};
use crate::util::time::rfc3339_ms;
use std::io::Write;
use std::path::Path;

/// Errors of the admin commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("no queued message with id {0}")]
    NotFound(String),
    #[error("{0:?} is not a queue id (16 hexadecimal digits)")]
    BadId(String),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// The running server refused the request or could not be reached.
    #[error("{0}")]
    Server(String),
}

/// The state `queue list` shows for a message: quarantined until released, deferred when a
/// recipient waits for its next attempt, else queued; attempts so far; the earliest next
/// attempt.
fn status(m: &StoredMessage) -> (&'static str, u16, Option<u64>) {
    if m.is_quarantined() {
        return ("quarantined", 0, None);
    }
    let next = m
        .latest_marks()
        .into_iter()
        .flatten()
        .filter(|k| k.status == MarkStatus::Deferred)
        .map(|k| k.next_attempt_ms)
        .min();
    let status = if next.is_some() { "deferred" } else { "queued" };
    (status, m.attempts(), next)
}

/// Each recipient's state: status (`queued`, `deferred`, `delivered`, `failed`, `deleted`),
/// attempts, next attempt, and the last reply or error.
fn recipients(m: &StoredMessage) -> Vec<serde_json::Value> {
    m.envelope
        .rcpts
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let st = Status::from_marks(&m.marks, i as u16);
            let notify = r.notify.map(|n| n.keywords());
            serde_json::json!({
                "address": r.address,
                "notify": notify,
                "orcpt": r.orcpt,
                "status": st.name(),
                "attempts": st.attempts(),
                "next_attempt": st.next_attempt_ms().map(rfc3339_ms),
                "last_error": st.last_error(),
            })
        })
        .collect()
}

/// `ringmx queue list`: one line per queued message and one per recipient (its state and
/// last error); with `json`, one JSON object per line (SPEC §10), recipients in
/// `recipients`. Returns the number of messages listed.
pub fn queue_list(spool: &Path, json: bool, out: &mut dyn Write) -> Result<usize, AdminError> {
    let rec = crate::spool::recover_listing(spool)?;
    if !json && !rec.messages.is_empty() {
        writeln!(out, "{:<16}  {:>9}  {:<24}  {:<8}  sender / recipients", "id", "size", "received", "status")?;
    }
    let mut reader = crate::spool::RecordReader::new(spool);
    for listed in &rec.messages {
        // A running server may have retired the segment meanwhile: the message is finished.
        let m = match listed.load(&mut reader) {
            Ok(m) => m,
            Err(_) => continue,
        };
        let m = &m;
        let (status, attempts, next) = status(m);
        let e = &m.envelope;
        let rcpts = recipients(m);
        if json {
            let v = serde_json::json!({
                "id": e.id.to_string(),
                "message_id": m.message_id,
                "from": e.from,
                "envid": e.envid,
                "ret": e.ret.map(|r| match r {
                    crate::wire::Ret::Full => "FULL",
                    crate::wire::Ret::Hdrs => "HDRS",
                }),
                "to": e.rcpts.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(),
                "size": m.content_len,
                "received": rfc3339_ms(e.received_ms),
                "status": status,
                "attempts": attempts,
                "next_attempt": next.map(rfc3339_ms),
                "quarantine": e.quarantine,
                "route": e.route,
                "shard": m.shard,
                "recipients": rcpts,
            });
            writeln!(out, "{v}")?;
        } else {
            let from = if e.from.is_empty() { "<>" } else { &e.from };
            let why = match (&e.quarantine, m.is_quarantined()) {
                (Some(q), true) => format!("  (quarantined: {q})"),
                _ => String::new(),
            };
            writeln!(
                out,
                "{:<16}  {:>9}  {:<24}  {:<8}  {from}{why}",
                e.id,
                m.content_len,
                rfc3339_ms(e.received_ms),
                status
            )?;
            for r in &rcpts {
                let mut line = format!(
                    "{:>62}{:<8}  {}",
                    "",
                    r["status"].as_str().unwrap_or(""),
                    r["address"].as_str().unwrap_or("")
                );
                if let Some(n) = r["next_attempt"].as_str() {
                    line.push_str(&format!("  (attempts {}, next {n})", r["attempts"]));
                }
                if let Some(err) = r["last_error"].as_str() {
                    line.push_str(&format!("  {err}"));
                }
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(rec.messages.len())
}

/// `ringmx queue show ID`: the message as spooled (RFC 5322), Received header first. A
/// running server finds it through its queue's index, a stopped one through the snapshot
/// of its queue written at its stop (a few reads, whatever the queue size); without one
/// (after a crash) the spool is replayed.
pub fn queue_show(data_dir: &Path, spool: &Path, id: &str, out: &mut dyn Write) -> Result<(), AdminError> {
    let qid = QueueId::parse(id).ok_or_else(|| AdminError::BadId(id.to_string()))?;
    let mut reader = crate::spool::RecordReader::new(spool);
    if let Ok(s) = std::os::unix::net::UnixStream::connect(crate::queue::requests::socket_path(data_dir)) {
        let req = QueueRequest { op: QueueOp::Locate, ids: Some(vec![id.to_string()]) };
        let a = control::over_socket(s, &req)?;
        let Some(l) = a.located.first() else { return Err(AdminError::NotFound(id.to_string())) };
        // Compaction or reclaim may have moved it since the answer: then replay finds it.
        if let Ok((envelope, content)) = reader.read(l.shard, l.seq, l.offset)
            && envelope.id == qid
        {
            out.write_all(&content)?;
            return Ok(());
        }
    }
    // Held while the snapshot is read: no server starts (and changes the queue) meanwhile.
    if let Some(_lock) = crate::spool::lock_spool(spool)? {
        match crate::spool::snapshot::find(spool, qid)? {
            Some(None) => return Err(AdminError::NotFound(id.to_string())),
            Some(Some(p)) => {
                if let Ok((envelope, content)) = reader.read(p.shard, p.seq, p.offset)
                    && envelope.id == qid
                {
                    out.write_all(&content)?;
                    return Ok(());
                }
            }
            None => {}
        }
    }
    let rec = crate::spool::recover_listing(spool)?;
    let m = rec.messages.iter().find(|m| m.id == qid).ok_or_else(|| AdminError::NotFound(id.to_string()))?;
    out.write_all(&m.load(&mut reader)?.read_content()?)?;
    Ok(())
}
