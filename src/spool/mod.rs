//! The spool: a per-shard segmented log that makes accepted messages durable.
//!
//! # Layout
//!
//! - [`record`]: the bytes on disk (segment header, message and mark records, CRC32C).
//! - [`log`]: one shard's writer: queued records, batches, group commit.
//! - [`recover`] (here): replay of every segment at start, and for the queue commands.
//! - [`envelope`]: queue ids and envelopes.
//! - [`snapshot`]: where every queued message is, written at a clean stop for `queue show`.
//!
//! On disk: `<spool>/<shard>/<sequence>.seg`, sequence as 16 hex digits, one directory per
//! ingress shard. A shard only ever appends to its newest segment. Segments whose messages
//! are all finished are retired ([`reclaim`], [`retire_segment`]): kept as `*.free` files
//! for the shard's next segment, or removed.
//!
//! # The durability contract
//!
//! A record is acknowledged (the session says 250) only after the `fdatasync` that covers
//! it completed. Recovery replays every segment in order and stops a segment at its first
//! record that does not check (torn or stale tail); the writer resumes there, overwriting
//! it. So an acknowledged message always comes back, and a record whose write was cut short
//! never does.

mod envelope;
mod lock;
pub mod log;
mod reader;
pub mod reclaim;
pub mod record;
pub mod snapshot;

pub use envelope::{Envelope, IdGen, NewMessage, QueueId, Recipient};
pub use lock::{SpoolLock, lock_spool};
pub use log::{Batch, Completion, Location, LogStats, ShardLog, Stored};
pub use reader::RecordReader;
pub use reclaim::{CopyMark, Plan, Reclaimer};
pub use record::{HOLD_MS, Mark, MarkStatus};

use crate::wire::Reply;
use record::{DecodeError, Record, SEGMENT_HEADER_LEN, SegmentHeader, decode_record};
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Spool failures. Every one is transient for the client: it is told to try again.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// An I/O call failed.
    #[error("{op} {path} at offset {offset}: {source}")]
    Io { op: &'static str, path: PathBuf, offset: u64, source: Arc<std::io::Error> },
    /// The file system is full (or over quota): stop accepting until there is room.
    #[error("no space left for the spool at {path}")]
    Full { path: PathBuf },
    /// A segment file is not ours or is damaged beyond its tail.
    #[error("corrupt segment {path}: {what}")]
    Corrupt { path: PathBuf, what: String },
}

impl SpoolError {
    pub fn io(op: &'static str, path: &Path, offset: u64, e: std::io::Error) -> Self {
        SpoolError::Io { op, path: path.to_path_buf(), offset, source: Arc::new(e) }
    }

    fn from_write(e: std::io::Error, path: &Path, offset: u64) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => SpoolError::Full { path: path.to_path_buf() },
            _ => SpoolError::io("write", path, offset, e),
        }
    }

    /// The reply a client gets when its message could not be spooled.
    pub fn smtp_reply(&self) -> Reply {
        match self {
            SpoolError::Full { .. } => Reply::new(452, "4.3.1", "Error: insufficient system storage"),
            _ => Reply::new(451, "4.3.0", "Error: queue file write error"),
        }
    }
}

/// The shard number of the control side's log (state marks, and the messages it generates
/// such as delivery status notifications).
pub const CONTROL_SHARD: u8 = 255;

/// The directory of one shard's segments.
pub fn shard_dir(spool: &Path, shard: u8) -> PathBuf {
    spool.join(format!("{shard:02}"))
}

/// The file of segment `seq` in a shard directory.
pub fn segment_path(shard_dir: &Path, seq: u64) -> PathBuf {
    shard_dir.join(format!("{seq:016x}.seg"))
}

/// A message found in the spool.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub envelope: Envelope,
    pub shard: u8,
    /// The segment it is in (`path` is that segment's file).
    pub seq: u64,
    pub path: PathBuf,
    /// Offset and length of the content (Received header and message) in the segment.
    pub content_offset: u64,
    pub content_len: u64,
    /// State marks written for it, oldest first.
    pub marks: Vec<Mark>,
    /// The Message-ID header field's value, if any (what `queue list` shows of the content:
    /// the rest stays on disk).
    pub message_id: Option<String>,
}

impl StoredMessage {
    /// True when every recipient has a final mark (or the message as a whole has one).
    pub fn is_done(&self) -> bool {
        if self.marks.iter().any(|m| m.rcpt.is_none() && m.status.is_final()) {
            return true;
        }
        (0..self.envelope.rcpts.len())
            .all(|i| self.marks.iter().rev().find(|m| m.rcpt == Some(i as u16)).is_some_and(|m| m.status.is_final()))
    }

    /// Held until an operator releases it: quarantined when accepted and not released (no
    /// mark since), or put on hold since ([`Mark::is_hold`] is its latest mark).
    pub fn is_quarantined(&self) -> bool {
        (self.envelope.quarantine.is_some() && self.marks.is_empty()) || self.is_on_hold()
    }

    /// Put on hold by an operator (`ringmx queue hold`) and not released since.
    pub fn is_on_hold(&self) -> bool {
        self.marks.last().is_some_and(Mark::is_hold)
    }

    /// The latest mark of each recipient, by index (a whole-message mark counts for all).
    pub fn latest_marks(&self) -> Vec<Option<&Mark>> {
        let mut v = vec![None; self.envelope.rcpts.len()];
        for m in &self.marks {
            match m.rcpt {
                Some(i) => {
                    if let Some(slot) = v.get_mut(i as usize) {
                        *slot = Some(m);
                    }
                }
                None => v.iter_mut().for_each(|slot| *slot = Some(m)),
            }
        }
        v
    }

    /// Delivery attempts made so far.
    pub fn attempts(&self) -> u16 {
        self.marks.iter().map(|k| k.attempts).max().unwrap_or(0)
    }

    /// Reads the content from its segment.
    pub fn read_content(&self) -> Result<Vec<u8>, SpoolError> {
        let f = std::fs::File::open(&self.path).map_err(|e| SpoolError::io("open segment", &self.path, 0, e))?;
        let mut buf = vec![0u8; self.content_len as usize];
        f.read_exact_at(&mut buf, self.content_offset)
            .map_err(|e| SpoolError::io("read", &self.path, self.content_offset, e))?;
        Ok(buf)
    }
}

/// Where a shard's writer resumes after recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardTail {
    pub seq: u64,
    /// Offset after the last valid record of segment `seq`.
    pub end: u64,
}

/// What replay found; `M` is what it keeps of each unfinished message.
#[derive(Debug)]
pub struct Recovery<M = StoredMessage> {
    /// Messages not yet finished, by queue id.
    pub messages: Vec<M>,
    /// Per shard directory found: where to append next.
    pub tails: HashMap<u8, ShardTail>,
    /// The largest queue id seen (ids are minted above it).
    pub max_id: QueueId,
    /// Records skipped and segments cut, for the log.
    pub notes: Vec<String>,
    /// Messages whose every recipient is final (kept until their segment is reclaimed).
    pub finished: usize,
    /// What every segment holds, for reclaiming them.
    pub reclaimer: Reclaimer,
}

impl<M> Default for Recovery<M> {
    fn default() -> Self {
        Recovery {
            messages: Vec::new(),
            tails: HashMap::new(),
            max_id: QueueId::default(),
            notes: Vec::new(),
            finished: 0,
            reclaimer: Reclaimer::default(),
        }
    }
}

/// An unfinished message as the queue keeps it at start: where its record is and the
/// latest state of each recipient, without envelope, content or mark texts (the queue loads
/// those when the message is due).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub id: QueueId,
    pub received_ms: u64,
    pub shard: u8,
    pub location: Location,
    /// Delivery attempts made so far.
    pub attempts: u16,
    /// The latest mark of each recipient: its status and next attempt (Unix ms).
    pub latest: Vec<Option<(MarkStatus, u64)>>,
    /// Quarantined and not released: no mark was written for it since it was accepted.
    pub quarantined: bool,
}

impl QueuedMessage {
    fn is_done(&self) -> bool {
        self.latest.iter().all(|m| m.is_some_and(|(s, _)| s.is_final()))
    }
}

/// An unfinished message as `queue list` walks a stopped server's spool: where its record
/// is and its latest marks (texts included). The envelope is read back one message at a
/// time ([`Listed::load`]), so listing a large queue does not hold every envelope at once.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: QueueId,
    pub shard: u8,
    pub location: Location,
    /// The latest mark of each recipient and the latest message-wide one, with the order
    /// they were read in.
    latest: Vec<Option<(u64, Mark)>>,
    whole: Option<(u64, Mark)>,
}

impl Listed {
    fn is_done(&self) -> bool {
        self.whole.as_ref().is_some_and(|(_, m)| m.status.is_final())
            || self.latest.iter().all(|m| m.as_ref().is_some_and(|(_, m)| m.status.is_final()))
    }

    /// The whole message as [`recover`] gives it, its record read with `r`.
    pub fn load(&self, r: &mut RecordReader) -> Result<StoredMessage, SpoolError> {
        let l = self.location;
        let (envelope, content) = r
            .read(self.shard, l.seq, l.record_offset)
            .map_err(|what| SpoolError::Corrupt { path: PathBuf::from(format!("{}", self.id)), what })?;
        let mut marks: Vec<(u64, Mark)> = self.latest.iter().flatten().chain(self.whole.iter()).cloned().collect();
        marks.sort_by_key(|(order, _)| *order);
        let message_id = header_value(&content[..content.len().min(HEAD_BYTES)], "Message-ID");
        Ok(StoredMessage {
            envelope,
            shard: self.shard,
            seq: l.seq,
            path: r.path(self.shard, l.seq),
            content_offset: l.content_offset,
            content_len: l.content_len,
            marks: marks.into_iter().map(|(_, m)| m).collect(),
            message_id,
        })
    }
}

/// Keeps what `queue list` needs to find each message again ([`Listed`]).
#[derive(Default)]
struct Listing {
    by_id: HashMap<QueueId, Listed>,
    order: u64,
}

impl Collector for Listing {
    type Message = Listed;

    fn message(&mut self, shard: u8, _seq: u64, _path: &Path, location: Location, env: Envelope, _content: &[u8]) {
        // A copy made by compaction replaces the original; marks come later either way.
        let latest = vec![None; env.rcpts.len()];
        self.by_id.insert(env.id, Listed { id: env.id, shard, location, latest, whole: None });
    }

    fn mark(&mut self, m: Mark) {
        self.order += 1;
        let Some(msg) = self.by_id.get_mut(&m.id) else { return };
        match m.rcpt {
            Some(i) => {
                if let Some(slot) = msg.latest.get_mut(i as usize) {
                    *slot = Some((self.order, m));
                }
            }
            None => msg.whole = Some((self.order, m)),
        }
    }

    fn finish(self) -> (Vec<Listed>, usize, QueueId) {
        unfinished(self.by_id.into_values().collect(), |m| m.id, Listed::is_done)
    }
}

/// What [`Collector::finish`] returns: the unfinished messages of `all` in id order, how
/// many were finished, the largest id.
fn unfinished<M>(mut all: Vec<M>, id: impl Fn(&M) -> QueueId, done: impl Fn(&M) -> bool) -> (Vec<M>, usize, QueueId) {
    let max = all.iter().map(&id).max().unwrap_or_default();
    let before = all.len();
    all.retain(|m| !done(m));
    all.sort_by_key(&id);
    let finished = before - all.len();
    (all, finished, max)
}

/// What replay hands each message and mark to.
trait Collector {
    type Message;
    fn message(&mut self, shard: u8, seq: u64, path: &Path, location: Location, envelope: Envelope, content: &[u8]);
    /// Marks come after every message, in the order each log has them.
    fn mark(&mut self, m: Mark);
    /// The unfinished messages in id order, how many were finished, the largest id.
    fn finish(self) -> (Vec<Self::Message>, usize, QueueId);
}

/// Keeps everything (`queue list`, `queue show`).
#[derive(Default)]
struct Everything(HashMap<QueueId, StoredMessage>);

impl Collector for Everything {
    type Message = StoredMessage;

    fn message(&mut self, shard: u8, seq: u64, path: &Path, l: Location, envelope: Envelope, content: &[u8]) {
        let message_id = header_value(&content[..content.len().min(HEAD_BYTES)], "Message-ID");
        let m = StoredMessage {
            envelope,
            shard,
            seq,
            path: path.to_path_buf(),
            content_offset: l.content_offset,
            content_len: l.content_len,
            marks: Vec::new(),
            message_id,
        };
        self.0.insert(m.envelope.id, m);
    }

    fn mark(&mut self, m: Mark) {
        if let Some(msg) = self.0.get_mut(&m.id) {
            msg.marks.push(m);
        }
    }

    fn finish(self) -> (Vec<StoredMessage>, usize, QueueId) {
        unfinished(self.0.into_values().collect(), |m| m.envelope.id, StoredMessage::is_done)
    }
}

/// Keeps what the queue needs at start ([`QueuedMessage`]).
#[derive(Default)]
struct QueueIndex(HashMap<QueueId, QueuedMessage>);

impl Collector for QueueIndex {
    type Message = QueuedMessage;

    fn message(&mut self, shard: u8, _seq: u64, _path: &Path, location: Location, env: Envelope, _content: &[u8]) {
        // A copy made by compaction replaces the original; marks come later either way.
        let m = QueuedMessage {
            id: env.id,
            received_ms: env.received_ms,
            shard,
            location,
            attempts: 0,
            latest: vec![None; env.rcpts.len()],
            quarantined: env.quarantine.is_some(),
        };
        self.0.insert(env.id, m);
    }

    fn mark(&mut self, m: Mark) {
        let Some(msg) = self.0.get_mut(&m.id) else { return };
        // Any mark (the release first of all) means it left the quarantine; an operator's
        // hold puts it back until the next.
        msg.quarantined = m.is_hold();
        msg.attempts = msg.attempts.max(m.attempts);
        let state = Some((m.status, m.next_attempt_ms));
        match m.rcpt {
            Some(i) => {
                if let Some(slot) = msg.latest.get_mut(i as usize) {
                    *slot = state;
                }
            }
            None => msg.latest.iter_mut().for_each(|slot| *slot = state),
        }
    }

    fn finish(self) -> (Vec<QueuedMessage>, usize, QueueId) {
        unfinished(self.0.into_values().collect(), |m| m.id, QueuedMessage::is_done)
    }
}

/// Retired segment files kept per shard directory for reuse; more are removed.
pub const KEEP_FREE_SEGMENTS: usize = 4;

/// Retires segment `seq` of `shard`: renamed to `*.free` for the shard's next segment while
/// fewer than [`KEEP_FREE_SEGMENTS`] are kept, else removed. The caller syncs the directory
/// ([`sync_dir`]) before anything depends on it.
pub fn retire_segment(spool: &Path, shard: u8, seq: u64) -> Result<(), SpoolError> {
    let dir = shard_dir(spool, shard);
    let path = segment_path(&dir, seq);
    let free = std::fs::read_dir(&dir)
        .map_err(|e| SpoolError::io("read directory", &dir, 0, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == log::FREE_EXT))
        .count();
    let r = if free < KEEP_FREE_SEGMENTS {
        std::fs::rename(&path, path.with_extension(log::FREE_EXT))
    } else {
        std::fs::remove_file(&path)
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SpoolError::io("retire segment", &path, 0, e)),
    }
}

/// Makes the renames and removals in a shard's directory durable.
pub fn sync_dir(spool: &Path, shard: u8) -> Result<(), SpoolError> {
    let dir = shard_dir(spool, shard);
    std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| SpoolError::io("sync directory", &dir, 0, e))
}

/// Bytes of content searched for the header fields [`StoredMessage`] keeps.
const HEAD_BYTES: usize = 8192;

/// Replays every segment under `spool`, keeping every unfinished message whole. Works on a
/// running server's spool too: a record still being written fails its CRC and is not shown.
pub fn recover(spool: &Path) -> Result<Recovery, SpoolError> {
    replay(spool, Everything::default())
}

/// Replays every segment under `spool` for the queue: each unfinished message as a
/// [`QueuedMessage`], a few tens of bytes.
pub fn recover_queue(spool: &Path) -> Result<Recovery<QueuedMessage>, SpoolError> {
    replay(spool, QueueIndex::default())
}

/// Replays every segment under `spool` for `queue list`: each unfinished message as a
/// [`Listed`], its envelope left on disk until [`Listed::load`].
pub fn recover_listing(spool: &Path) -> Result<Recovery<Listed>, SpoolError> {
    replay(spool, Listing::default())
}

fn replay<C: Collector>(spool: &Path, mut c: C) -> Result<Recovery<C::Message>, SpoolError> {
    let mut rec = Recovery::default();
    let entries = match std::fs::read_dir(spool) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rec),
        Err(e) => return Err(SpoolError::io("read directory", spool, 0, e)),
    };
    // Marks may be in another log than their message (the control side writes them): they
    // are applied once every segment is read, in the order each log has them.
    let mut marks: Vec<(u64, Mark)> = Vec::new();
    let mut shards: Vec<(u8, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let shard = name.parse::<u8>().ok().filter(|_| name.len() >= 2)?;
            Some((shard, e.path()))
        })
        .collect();
    shards.sort();
    for (shard, dir) in shards {
        let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .map_err(|e| SpoolError::io("read directory", &dir, 0, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let seq = u64::from_str_radix(name.strip_suffix(".seg")?, 16).ok()?;
                Some((seq, e.path()))
            })
            .collect();
        segs.sort();
        for (i, (seq, path)) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            // A running server may retire a segment meanwhile: it held nothing unfinished.
            let Some(end) = replay_segment(shard, *seq, path, &mut c, &mut marks, &mut rec, last)? else {
                continue;
            };
            rec.reclaimer.segment_seen(shard, *seq);
            if last {
                rec.tails.insert(shard, ShardTail { seq: *seq, end });
            }
        }
    }
    // Ids are minted above every id still named on disk, marks included: a mark left over
    // from a reclaimed message must never apply to a new one.
    let mark_max = marks.iter().map(|(_, m)| m.id).max().unwrap_or_default();
    for (seq, m) in marks {
        rec.reclaimer.mark_stored(seq, &m);
        c.mark(m);
    }
    let (messages, finished, max) = c.finish();
    rec.max_id = max.max(mark_max);
    rec.finished = finished;
    rec.messages = messages;
    Ok(rec)
}

fn replay_segment<C: Collector>(
    shard: u8,
    seq: u64,
    path: &Path,
    c: &mut C,
    marks: &mut Vec<(u64, Mark)>,
    rec: &mut Recovery<C::Message>,
    last: bool,
) -> Result<Option<u64>, SpoolError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SpoolError::io("read segment", path, 0, e)),
    };
    let header = SegmentHeader::decode(&data)
        .map_err(|e| SpoolError::Corrupt { path: path.to_path_buf(), what: format!("segment header: {e}") })?;
    if header.seq != seq {
        return Err(SpoolError::Corrupt {
            path: path.to_path_buf(),
            what: format!("header says segment {}, file name {seq}", header.seq),
        });
    }
    let mut pos = SEGMENT_HEADER_LEN;
    loop {
        match decode_record(seq, &data[pos..]) {
            Ok((Record::Message { envelope, content }, len)) => {
                let content_offset = (pos + len - content.len()) as u64;
                let location =
                    Location { seq, record_offset: pos as u64, content_offset, content_len: content.len() as u64 };
                rec.reclaimer.message_stored(shard, seq, envelope.id, envelope.rcpts.len());
                c.message(shard, seq, path, location, envelope, content);
                pos += len;
            }
            Ok((Record::Mark(m), len)) => {
                marks.push((seq, m));
                pos += len;
            }
            Err(DecodeError::End) => break,
            // Fewer bytes left than a record prefix: the segment was full.
            Err(DecodeError::Truncated) if data.len() - pos < record::RECORD_PREFIX_LEN => break,
            Err(e) => {
                // A torn tail in the newest segment is normal after a crash; anywhere else it
                // means damage, and what follows in that segment is lost to replay.
                let rest_zero = data[pos..].iter().all(|&b| b == 0);
                if !rest_zero {
                    let what = if last { "tail cut" } else { "segment damaged, rest skipped" };
                    rec.notes.push(format!("{}: {what} at offset {pos}: {e}", path.display()));
                }
                break;
            }
        }
    }
    Ok(Some(pos as u64))
}

/// The last marks in control segment `seq` of the (message, recipient) pairs in `wanted`:
/// what [`Reclaimer`] knows only by place, read back before a control segment goes
/// ([`CopyMark::Latest`]).
pub fn last_marks(
    spool: &Path,
    seq: u64,
    wanted: &std::collections::HashSet<(QueueId, u16)>,
) -> Result<HashMap<(QueueId, u16), Mark>, SpoolError> {
    let path = segment_path(&shard_dir(spool, CONTROL_SHARD), seq);
    let data = std::fs::read(&path).map_err(|e| SpoolError::io("read segment", &path, 0, e))?;
    let mut out = HashMap::new();
    let mut pos = SEGMENT_HEADER_LEN;
    while pos < data.len() {
        match decode_record(seq, &data[pos..]) {
            Ok((Record::Mark(m), len)) => {
                if let Some(r) = m.rcpt
                    && wanted.contains(&(m.id, r))
                {
                    out.insert((m.id, r), m);
                }
                pos += len;
            }
            Ok((_, len)) => pos += len,
            Err(_) => break,
        }
    }
    Ok(out)
}

/// The value of a header field in a message head, unfolded, if present.
pub fn header_value(head: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            break;
        }
        let Some((n, v)) = line.split_once(':') else { continue };
        if n.eq_ignore_ascii_case(name) {
            let mut value = v.trim().to_string();
            while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str(next.trim());
                lines.next();
            }
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests;
