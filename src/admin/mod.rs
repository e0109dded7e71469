//! Operator commands that read the spool directly, so that they work whether the server
//! runs or not.

pub mod api;
pub mod backup;
pub mod bans;
pub mod control;
pub mod diagnose;
pub mod directory;
pub mod lists;
pub mod query;

use crate::queue::Status;
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

/// The state `queue list` shows for a message (see [`query::State`]), attempts so far, the
/// earliest next attempt.
fn status(m: &StoredMessage) -> (&'static str, u16, Option<u64>) {
    let state = query::State::of(m);
    let next = match state {
        query::State::Deferred => m
            .latest_marks()
            .into_iter()
            .flatten()
            .filter(|k| k.status == MarkStatus::Deferred && !k.is_hold())
            .map(|k| k.next_attempt_ms)
            .min(),
        _ => None,
    };
    let attempts = if state == query::State::Quarantined { 0 } else { m.attempts() };
    (state.name(), attempts, next)
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
            let held = m.latest_marks().get(i).copied().flatten().is_some_and(|k| k.is_hold());
            let (status, next) = match held {
                true => ("held", None),
                false => (st.name(), st.next_attempt_ms().map(rfc3339_ms)),
            };
            serde_json::json!({
                "address": r.address,
                "notify": notify,
                "orcpt": r.orcpt,
                "status": status,
                "attempts": st.attempts(),
                "next_attempt": next,
                "last_error": st.last_error(),
            })
        })
        .collect()
}

/// A queued message as `queue list --json` prints it (one JSON object; SPEC §10) and the
/// admin API returns it: envelope, size, state, and each recipient's state in `recipients`.
pub fn message_json(m: &StoredMessage) -> serde_json::Value {
    let (status, attempts, next) = status(m);
    let e = &m.envelope;
    serde_json::json!({
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
        "recipients": recipients(m),
    })
}

/// The heading of `queue list`'s text form.
pub fn write_list_heading(out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "{:<16}  {:>9}  {:<24}  {:<8}  sender / recipients", "id", "size", "received", "status")
}

/// One message of `queue list`: its JSON line, or a line for it and one per recipient (its
/// state and last error).
pub fn write_listed(v: &serde_json::Value, json: bool, out: &mut dyn Write) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{v}");
    }
    let text = |k: &str| v[k].as_str().unwrap_or("");
    let from = match text("from") {
        "" => "<>",
        f => f,
    };
    let why = match (v["quarantine"].as_str(), text("status")) {
        (Some(q), "quarantined") => format!("  (quarantined: {q})"),
        _ => String::new(),
    };
    writeln!(
        out,
        "{:<16}  {:>9}  {:<24}  {:<8}  {from}{why}",
        text("id"),
        v["size"],
        text("received"),
        text("status")
    )?;
    for r in v["recipients"].as_array().into_iter().flatten() {
        let mut line =
            format!("{:>62}{:<8}  {}", "", r["status"].as_str().unwrap_or(""), r["address"].as_str().unwrap_or(""));
        if let Some(n) = r["next_attempt"].as_str() {
            line.push_str(&format!("  (attempts {}, next {n})", r["attempts"]));
        }
        if let Some(err) = r["last_error"].as_str() {
            line.push_str(&format!("  {err}"));
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// `ringmx queue list` on the spool: the messages `filter` selects, in id order (see
/// [`write_listed`]). Returns the number of messages listed.
pub fn queue_list(
    spool: &Path,
    filter: &query::QueueFilter,
    json: bool,
    out: &mut dyn Write,
) -> Result<usize, AdminError> {
    let mut n = 0;
    query::each(spool, filter, query::now_ms(), |m| {
        if !json && n == 0 {
            write_list_heading(out)?;
        }
        n += 1;
        Ok(write_listed(&message_json(m), json, out)?)
    })?;
    Ok(n)
}

/// `ringmx queue list`: through the running server's admin API (page by page) when there
/// is one, else on the spool.
pub fn queue_list_at(
    data_dir: &Path,
    spool: &Path,
    filter: &query::QueueFilter,
    json: bool,
    out: &mut dyn Write,
) -> Result<usize, AdminError> {
    if api::connect(data_dir).is_none() {
        return queue_list(spool, filter, json, out);
    }
    let mut n = 0;
    let mut after: Option<String> = None;
    loop {
        let mut pairs = filter.pairs();
        pairs.push(("limit", query::MAX_PAGE.to_string()));
        if let Some(a) = &after {
            pairs.push(("after", a.clone()));
        }
        let s = api::connect_or_fail(data_dir, "")?;
        let (status, page): (u16, query::Page) =
            api::json(s, "GET", &api::with_query("/v1/queue", &pairs), None::<&()>)?;
        if status != 200 {
            return Err(AdminError::Server(format!("the server answered {status}")));
        }
        for v in &page.messages {
            if !json && n == 0 {
                write_list_heading(out)?;
            }
            n += 1;
            write_listed(v, json, out)?;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(n),
        }
    }
}

/// `ringmx queue show ID`: the message as spooled (RFC 5322), Received header first. A
/// running server finds it through its queue's index, a stopped one through the snapshot
/// of its queue written at its stop (a few reads, whatever the queue size); without one
/// (after a crash) the spool is replayed.
pub fn queue_show(data_dir: &Path, spool: &Path, id: &str, out: &mut dyn Write) -> Result<(), AdminError> {
    let qid = QueueId::parse(id).ok_or_else(|| AdminError::BadId(id.to_string()))?;
    let mut reader = crate::spool::RecordReader::new(spool);
    if let Some(s) = api::connect(data_dir) {
        let (status, content) =
            api::call(s, "GET", &format!("/v1/queue/{qid}/content"), None, std::time::Duration::from_secs(60))?;
        return match status {
            200 => Ok(out.write_all(&content)?),
            404 => Err(AdminError::NotFound(id.to_string())),
            _ => Err(AdminError::Server(String::from_utf8_lossy(&content).into_owned())),
        };
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
