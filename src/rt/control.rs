//! The control side: one thread that takes every message the shards made durable, routes
//! it and delivers it locally, and records each recipient's outcome as a state mark in its
//! own spool log (`spool/255/`).
//!
//! Shards hand messages over through a bounded channel after the fdatasync that made them
//! durable; they never block on it (a full channel leaves the notice in the shard's backlog
//! for its next loop turn). At start the control thread also takes every unfinished message
//! recovery found, so nothing depends on the channel for durability: it only saves a
//! rescan.
//!
//! A recipient's mark is written only after its delivery is durable (the Maildir file
//! fsynced and renamed, its directory fsynced). A crash in between delivers the message
//! again after the restart: at most a duplicate, never a loss.

use crate::delivery::maildir::Maildir;
use crate::directory::{Destination, DirectoryHandle, ExpandProblem};
use crate::spool::{
    CONTROL_SHARD, Envelope, Location, Mark, MarkStatus, QueueId, ShardLog, ShardTail, StoredMessage, segment_path,
    shard_dir,
};
use crate::util::time::Now;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

/// A message a shard made durable.
#[derive(Debug)]
pub struct Accepted {
    pub shard: u8,
    pub envelope: Envelope,
    pub location: Location,
}

/// A shard's end of the channel, with the notices the channel had no room for.
pub struct ControlLink {
    tx: SyncSender<Accepted>,
    backlog: VecDeque<Accepted>,
}

impl ControlLink {
    pub fn new(tx: SyncSender<Accepted>) -> Self {
        ControlLink { tx, backlog: VecDeque::new() }
    }

    /// Hands a message over without blocking.
    pub fn send(&mut self, a: Accepted) {
        self.backlog.push_back(a);
        self.flush();
    }

    /// Retries what the channel had no room for.
    pub fn flush(&mut self) {
        while let Some(a) = self.backlog.pop_front() {
            match self.tx.try_send(a) {
                Ok(()) => {}
                Err(TrySendError::Full(a)) => {
                    self.backlog.push_front(a);
                    return;
                }
                // The control side is gone (shutting down): the spool has the message.
                Err(TrySendError::Disconnected(_)) => {
                    self.backlog.clear();
                    return;
                }
            }
        }
    }
}

/// Channel capacity: about a second of peak intake.
pub const CHANNEL_CAPACITY: usize = 65_536;

/// Settings of the control side.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub spool: PathBuf,
    /// Root of the Maildirs: `<root>/<postoffice>/<mailbox>/Maildir`.
    pub maildir_root: PathBuf,
    pub segment_size: u64,
    /// Domains accepted for every address without directory entries: held for remote
    /// delivery.
    pub catch_alls: bool,
    /// Header naming the original recipients of a catch-all copy.
    pub catch_all_header: String,
    /// Pause before retrying a local delivery that failed for a transient reason.
    pub local_retry: Duration,
}

/// One message the control side tracks until every recipient is final.
struct Pending {
    envelope: Envelope,
    path: PathBuf,
    content_offset: u64,
    content_len: u64,
    /// Recipient indexes already final (delivered, failed) or handed to remote delivery.
    done: HashSet<u16>,
    attempts: u16,
}

struct Control {
    cfg: ControlConfig,
    directory: Arc<DirectoryHandle>,
    log: ShardLog,
    /// Messages by id, waiting for their next attempt.
    queue: BTreeMap<QueueId, Pending>,
    /// When each queued message is next due (ms since the epoch).
    due: BTreeMap<(u64, QueueId), ()>,
    delivered: u64,
}

/// Starts the control thread. `recovered` are the unfinished messages found at start.
pub fn spawn(
    cfg: ControlConfig,
    directory: Arc<DirectoryHandle>,
    recovered: Vec<StoredMessage>,
    tail: Option<ShardTail>,
    rx: Receiver<Accepted>,
) -> Result<std::thread::JoinHandle<()>, crate::spool::SpoolError> {
    let dir = shard_dir(&cfg.spool, CONTROL_SHARD);
    let log = match tail {
        Some(t) => ShardLog::open(&dir, CONTROL_SHARD, cfg.segment_size, t.seq, Some(t.end))?,
        None => ShardLog::open(&dir, CONTROL_SHARD, cfg.segment_size, 1, None)?,
    };
    let mut c = Control { cfg, directory, log, queue: BTreeMap::new(), due: BTreeMap::new(), delivered: 0 };
    let now = Now::system().unix_ms;
    for m in recovered {
        let mut done = HashSet::new();
        for mark in &m.marks {
            if let (Some(i), true) = (mark.rcpt, mark.status.is_final()) {
                done.insert(i);
            }
        }
        let attempts = m.marks.iter().map(|k| k.attempts).max().unwrap_or(0);
        c.insert(
            Pending {
                envelope: m.envelope,
                path: m.path,
                content_offset: m.content_offset,
                content_len: m.content_len,
                done,
                attempts,
            },
            now,
        );
    }
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || c.run(rx))
        .map_err(|e| crate::spool::SpoolError::io("start control thread", std::path::Path::new("."), 0, e))
}

impl Control {
    fn insert(&mut self, p: Pending, due_ms: u64) {
        let id = p.envelope.id;
        self.due.insert((due_ms, id), ());
        self.queue.insert(id, p);
    }

    /// Runs until every shard is gone (they drain first, then drop their end of the
    /// channel).
    fn run(mut self, rx: Receiver<Accepted>) {
        loop {
            let now = Now::system().unix_ms;
            let wait = self
                .due
                .keys()
                .next()
                .map(|(t, _)| Duration::from_millis(t.saturating_sub(now)))
                .unwrap_or(Duration::from_millis(200))
                .min(Duration::from_millis(200));
            match rx.recv_timeout(wait) {
                Ok(a) => {
                    self.accept(a);
                    // Take whatever else is waiting, so that deliveries and marks batch.
                    while let Ok(a) = rx.try_recv() {
                        self.accept(a);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.run_due();
        }
        self.run_due();
        log::info!("control: {} local deliveries", self.delivered);
    }

    fn accept(&mut self, a: Accepted) {
        let path = segment_path(&shard_dir(&self.cfg.spool, a.shard), a.location.seq);
        let p = Pending {
            envelope: a.envelope,
            path,
            content_offset: a.location.content_offset,
            content_len: a.location.content_len,
            done: HashSet::new(),
            attempts: 0,
        };
        self.insert(p, 0);
    }

    /// Delivers every message that is due, then makes the marks durable in one sync.
    fn run_due(&mut self) {
        let now = Now::system().unix_ms;
        let due: Vec<QueueId> = self.due.range(..=(now, QueueId(u64::MAX))).map(|((_, id), _)| *id).collect();
        if due.is_empty() {
            return;
        }
        self.due.retain(|(t, _), _| *t > now);
        for id in due {
            let Some(mut p) = self.queue.remove(&id) else { continue };
            if let Some(retry_at) = self.deliver(&mut p, now) {
                self.insert(p, retry_at);
            }
        }
        for c in self.log.flush_sync(true) {
            if let Err(e) = c.result {
                log::error!("control: writing state marks: {e}");
            }
        }
    }

    /// One attempt at every recipient of `p` not final yet. Returns when to try again, if
    /// some recipient needs it.
    fn deliver(&mut self, p: &mut Pending, now: u64) -> Option<u64> {
        let dir = self.directory.current();
        let open: Vec<(u16, String)> = p
            .envelope
            .rcpts
            .iter()
            .enumerate()
            .filter(|(i, _)| !p.done.contains(&(*i as u16)))
            .map(|(i, r)| (i as u16, r.address.to_ascii_lowercase()))
            .collect();
        if open.is_empty() {
            return None;
        }
        let local: Vec<&str> = open
            .iter()
            .filter(|(_, a)| a.rsplit_once('@').is_some_and(|(_, d)| dir.is_local_domain(d)) || !a.contains('@'))
            .map(|(_, a)| a.as_str())
            .collect();
        if local.is_empty() {
            // Everything left is for remote delivery, which is not built yet: it stays
            // queued (and shown by `queue list`).
            for (i, _) in &open {
                p.done.insert(*i);
            }
            return None;
        }
        let expansion = dir.expand_all(&local, self.cfg.catch_alls);
        let content = match read_content(p) {
            Ok(c) => c,
            Err(e) => {
                log::error!("control: {}: reading {}: {e}", p.envelope.id, p.path.display());
                return Some(now + self.cfg.local_retry.as_millis() as u64);
            }
        };
        p.attempts = p.attempts.saturating_add(1);
        // Outcome per original recipient: delivered unless one of its targets failed.
        let mut failed: Vec<(String, MarkStatus, String)> = Vec::new();
        let mut transient = false;
        let return_path = p.envelope.from.clone();
        for t in &expansion.targets {
            let Destination::Mailbox { maildir, delivered_to } = &t.destination else {
                // Redirects and group members elsewhere go to remote delivery (not built
                // yet): those originals stay queued.
                for o in &t.original_recipients {
                    failed.push((o.clone(), MarkStatus::Deferred, "remote delivery pending".into()));
                }
                continue;
            };
            let path = self.cfg.maildir_root.join(maildir).join("Maildir");
            let mut copy;
            let body: &[u8] = if t.catch_all {
                copy = Vec::with_capacity(content.len() + 128);
                let _ = write!(copy, "{}: {}\r\n", self.cfg.catch_all_header, t.original_recipients.join(", "));
                copy.extend_from_slice(&content);
                &copy
            } else {
                &content
            };
            let quota = dir.mailbox_by_maildir(maildir).map_or(0, |m| m.quota_bytes);
            let r = Maildir::open(&path).and_then(|m| m.with_quota(quota).deliver(&return_path, delivered_to, body));
            match r {
                Ok(_) => self.delivered += 1,
                Err(e) if e.is_permanent() => {
                    for o in &t.original_recipients {
                        failed.push((o.clone(), MarkStatus::Failed, e.to_string()));
                    }
                }
                Err(e) => {
                    log::warn!("control: {}: delivery to {}: {e}", p.envelope.id, path.display());
                    transient = true;
                    for o in &t.original_recipients {
                        failed.push((o.clone(), MarkStatus::Deferred, e.to_string()));
                    }
                }
            }
        }
        for problem in &expansion.problems {
            let (addr, text) = match problem {
                ExpandProblem::Unknown { address } => (address.clone(), "550 5.1.1 unknown user".to_string()),
                ExpandProblem::Disabled { address } => (address.clone(), "550 5.2.1 mailbox disabled".to_string()),
                ExpandProblem::Blocked { address } => (address.clone(), "550 5.1.1 unknown user".to_string()),
                ExpandProblem::Loop { chain } => (
                    chain.first().cloned().unwrap_or_default(),
                    format!("554 5.4.6 routing loop: {}", chain.join(" -> ")),
                ),
                ExpandProblem::TooDeep { address } => (address.clone(), "554 5.4.6 redirects too deep".to_string()),
                ExpandProblem::UnresolvedPostmaster { address } => {
                    (address.clone(), "postmaster has no mailbox: held".to_string())
                }
            };
            let status = if matches!(problem, ExpandProblem::UnresolvedPostmaster { .. }) {
                MarkStatus::Deferred
            } else {
                MarkStatus::Failed
            };
            failed.push((addr, status, text));
        }
        for (i, addr) in &open {
            if !local.contains(&addr.as_str()) {
                // Remote recipient of a message that also had local ones: stays queued.
                p.done.insert(*i);
                continue;
            }
            let outcome = failed.iter().find(|(a, _, _)| a == addr);
            let (status, text) = match outcome {
                None => (MarkStatus::Delivered, "delivered to mailbox".to_string()),
                Some((_, s, t)) => (*s, t.clone()),
            };
            let next_attempt_ms =
                if status == MarkStatus::Deferred { now + self.cfg.local_retry.as_millis() as u64 } else { 0 };
            let mark = Mark { id: p.envelope.id, rcpt: Some(*i), status, attempts: p.attempts, next_attempt_ms, text };
            self.log.append_mark(0, &mark);
            if status != MarkStatus::Deferred {
                p.done.insert(*i);
            }
        }
        // Delivered marks must be durable before anything else happens to the message.
        if transient { Some(now + self.cfg.local_retry.as_millis() as u64) } else { None }
    }
}

fn read_content(p: &Pending) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(&p.path)?;
    let mut buf = vec![0u8; p.content_len as usize];
    f.read_exact_at(&mut buf, p.content_offset)?;
    Ok(buf)
}
