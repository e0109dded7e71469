//! An operator's requests to the queue (`ringmx queue retry|delete|bounce`) and their
//! answers: what the control socket carries to the queue's owner, and what a stopped
//! server's spool gets instead (admin/control.rs).

use crate::spool::QueueId;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueOp {
    /// Try now.
    Retry,
    /// Remove without a report.
    Delete,
    /// Fail every unfinished recipient and report it to the sender.
    Bounce,
    /// Take a quarantined or held message out: delivered as any other.
    Release,
    /// Keep a message in the queue, untried, until released (Postfix's hold queue): its
    /// unfinished recipients get a durable hold mark ([`crate::spool::HOLD_MS`]).
    Hold,
    /// Where the message's record is (`queue show` on a running server: found through the
    /// queue's index, then read by the command itself).
    Locate,
}

/// One request: `ids` none means every queued message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueRequest {
    pub op: QueueOp,
    pub ids: Option<Vec<String>>,
}

/// The answer: which messages it applied to, which ids are not (or no longer) queued.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueAnswer {
    pub done: Vec<String>,
    pub not_found: Vec<String>,
    /// Queued messages the request does not apply to, with why (`ID: reason`): `retry` of a
    /// quarantined message, `release` of one that is not.
    #[serde(default)]
    pub skipped: Vec<String>,
    pub error: Option<String>,
    /// For [`QueueOp::Locate`]: where each record is.
    #[serde(default)]
    pub located: Vec<Located>,
}

/// A message's record in the spool: segment `seq` of shard directory `shard`, `len` bytes
/// from `offset`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Located {
    pub id: String,
    pub shard: u8,
    pub seq: u64,
    pub offset: u64,
}

/// Why `op` does not apply to message `id`, held (quarantined or on hold) or not (`retry`
/// leaves a held message alone; `release` applies to held ones only, `hold` to the others);
/// `None` when it applies.
pub fn quarantine_skip(op: QueueOp, id: crate::spool::QueueId, held: bool) -> Option<String> {
    match (op, held) {
        (QueueOp::Retry, true) => Some(format!("{id}: held (quarantine or hold): `ringmx queue release` delivers it")),
        (QueueOp::Release, false) => Some(format!("{id}: not held")),
        (QueueOp::Hold, true) => Some(format!("{id}: already held")),
        _ => None,
    }
}

/// Mark text of a release from quarantine.
pub const RELEASED_TEXT: &str = "released from quarantine by the administrator";
/// Mark text of an operator's hold.
pub const HELD_TEXT: &str = "held by the administrator";
/// Mark text of an operator's decision.
pub const DELETED_TEXT: &str = "deleted by the administrator";
/// Reply text of a recipient the operator bounced (RFC 3463 5.0.0: other, permanent).
pub const BOUNCED_TEXT: &str = "550 5.0.0 returned to the sender by the administrator";

/// The server's control socket.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Parses the ids of a request; the first bad one is the error.
pub fn parse_ids(ids: &[String]) -> Result<Vec<QueueId>, String> {
    ids.iter().map(|s| QueueId::parse(s).ok_or_else(|| s.clone())).collect()
}

/// `ringmx directory postoffice reset-quota`: the server reads the mailboxes' usage again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageRequest {
    pub refresh_usage: bool,
}

/// The answer to a [`UsageRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UsageAnswer {
    /// Mailboxes with a quota whose usage was read.
    pub mailboxes: usize,
    pub error: Option<String>,
}

/// `ringmx serve --takeover`: the running server drains and stops, for a new one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoverRequest {
    pub handover: bool,
}

/// The answer to a [`HandoverRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HandoverAnswer {
    pub draining: bool,
}

/// `ringmx queue suspend|resume|suspended`: destinations (recipient domains) whose mail is
/// held in the queue, not tried, until resumed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationsRequest {
    pub destinations: DestinationsOp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationsOp {
    /// `suspend`, `resume` or `list`.
    pub op: String,
    #[serde(default)]
    pub domains: Vec<String>,
}

/// The suspended destinations after the request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DestinationsAnswer {
    pub suspended: Vec<String>,
    pub error: Option<String>,
}

/// Where the suspended destinations are kept: `<data_dir>/suspended.json`.
pub fn suspended_path(data_dir: &Path) -> PathBuf {
    data_dir.join("suspended.json")
}

/// The suspended destinations stored (none when there is no file).
pub fn load_suspended(data_dir: &Path) -> Vec<String> {
    std::fs::read(suspended_path(data_dir)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Stores the suspended destinations (whole or not at all).
pub fn save_suspended(data_dir: &Path, domains: &[String]) -> std::io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let path = suspended_path(data_dir);
    let tmp = path.with_extension("json.tmp");
    let data = serde_json::to_vec(domains).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, data)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)
}
