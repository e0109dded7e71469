//! The control side: one thread that takes every message the shards made durable, routes
//! it, delivers it locally, and records each recipient's outcome as a state mark in its
//! own spool log (`spool/255/`). Messages it generates — delivery status notifications and
//! automatic replies — go into that log too, and are routed like any other.
//!
//! Shards hand messages over through a bounded channel after the fdatasync that made them
//! durable; they never block on it (a full channel leaves the notice in the shard's backlog
//! for its next loop turn). At start the control thread also takes every unfinished message
//! recovery found, so nothing depends on the channel for durability.
//!
//! A recipient's mark is written only after its delivery is durable (the Maildir file
//! fsynced and renamed, its directory fsynced). A crash in between delivers the message
//! again after the restart: at most a duplicate, never a loss. A notification is written in
//! the same sync as the marks that caused it, so it is neither lost nor sent twice.

use super::link::{Accepted, ControlMsg};
use super::remote::{RemoteHandle, RemoteJob, RemoteOutcome};
use crate::delivery::autoreply::{self, ReplyMemory};
use crate::delivery::client::Response;
use crate::delivery::dsn::{self, Action as DsnAction, DsnConfig, DsnInput, RecipientReport};
use crate::delivery::event::EventRunner;
use crate::delivery::lmtp::LmtpRoute;
use crate::delivery::maildir::{self, Maildir, Staged, UsageCache, mailbox_path};
use crate::directory::{Destination, Directory, DirectoryHandle, ExpandProblem, Mailbox};
use crate::queue::outcome::{self, Answered, Attempted, MarkFor};
use crate::queue::requests::{BOUNCED_TEXT, DELETED_TEXT, QueueAnswer, QueueOp, QueueRequest};
use crate::queue::{DelayNoticeConfig, RetryConfig, TimerQueue};
use crate::routing::{Route, RoutingConfig, Where, route_of};
use crate::spool::NewMessage;
use crate::spool::{
    CONTROL_SHARD, Completion, Envelope, IdGen, Mark, MarkStatus, QueueId, Recipient, Reclaimer, ShardLog, ShardTail,
    StoredMessage, segment_path, shard_dir,
};
use crate::util::time::Now;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

/// Settings of the control side.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub hostname: String,
    pub data_dir: PathBuf,
    pub spool: PathBuf,
    /// Root of the Maildirs: `<root>/<postoffice>/<mailbox>/Maildir`.
    pub maildir_root: PathBuf,
    pub segment_size: u64,
    pub catch_alls: bool,
    /// Header naming the original recipients of a catch-all copy.
    pub catch_all_header: String,
    /// Pause before retrying a local delivery that failed for a transient reason.
    pub local_retry: Duration,
    pub dsn: DsnConfig,
    /// An auto-responder answers one sender at most once per period (RFC 3834 §2).
    pub autoreply_period: Duration,
    /// A delivery-event program is killed after this long.
    pub event_timeout: Duration,
    /// Accept-all domains of the configuration (their mail is relayed only when a smart
    /// host applies; else it is held).
    pub local_domains: HashSet<String>,
    pub routing: RoutingConfig,
    pub retry: RetryConfig,
    pub delay_notice: DelayNoticeConfig,
    /// Mailboxes delivered to an LMTP server instead of Maildirs.
    pub lmtp: Option<LmtpRoute>,
    /// Raised by the control log when its next segment is near ([`ShardLog::want_spares`]).
    pub spare_wanted: Option<Arc<AtomicBool>>,
}

/// One message the control side tracks until every recipient is final.
struct Pending {
    envelope: Envelope,
    path: PathBuf,
    content_offset: u64,
    content_len: u64,
    /// Recipient indexes already final (delivered, failed) or held.
    done: HashSet<u16>,
    /// Recipient indexes with a remote-delivery job out.
    inflight: HashSet<u16>,
    /// Recipient indexes held: an accept-all domain with nowhere to send them (also in
    /// `done`, without a mark; `queue retry` tries them again).
    held: HashSet<u16>,
    attempts: u16,
    /// When remote delivery was first tried, and last deferred (for delay notices).
    first_attempt_ms: Option<u64>,
    last_deferral_ms: Option<u64>,
}

impl Pending {
    fn new(envelope: Envelope, path: PathBuf, content_offset: u64, content_len: u64) -> Self {
        Pending {
            envelope,
            path,
            content_offset,
            content_len,
            done: HashSet::new(),
            inflight: HashSet::new(),
            held: HashSet::new(),
            attempts: 0,
            first_attempt_ms: None,
            last_deferral_ms: None,
        }
    }
}

/// The outcome of one original recipient in one attempt.
struct Outcome {
    status: MarkStatus,
    /// The server's reply, or ours in the same form.
    reply: Response,
}

/// What staging made of a message.
enum Staging {
    Ready(Box<Attempt>),
    /// Nothing to deliver locally now: back to the queue at that time, or not at all.
    Later(Box<Pending>, Option<u64>),
}

/// One message's attempt between staging and commit.
struct Attempt {
    p: Pending,
    /// The local recipients tried: index and lower-cased address.
    local: Vec<(u16, String)>,
    content: Vec<u8>,
    /// One per staged copy, in staging order.
    copies: Vec<Copy>,
    /// Original recipients whose outcome is not simply "delivered".
    outcomes: Vec<(String, Outcome)>,
    /// Addresses elsewhere that redirects and groups lead to, with the original recipients
    /// behind each.
    forwards: Vec<(String, Vec<String>)>,
}

/// A staged copy: which mailbox, and which original recipients it stands for.
struct Copy {
    maildir: String,
    delivered_to: String,
    originals: Vec<String>,
}

/// Records the outcome of the original recipients behind a copy; the worst outcome of any
/// of a recipient's copies is its outcome.
fn note(out: &mut Vec<(String, Outcome)>, originals: &[String], status: MarkStatus, reply: Response) {
    for o in originals {
        match out.iter_mut().find(|(a, _)| a == o) {
            Some((_, prev)) if prev.status == MarkStatus::Failed => {}
            Some((_, prev)) => *prev = Outcome { status, reply: reply.clone() },
            None => out.push((o.clone(), Outcome { status, reply: reply.clone() })),
        }
    }
}

/// Token of appended records: marks need no answer, generated messages are queued.
const TOKEN_MARK: u64 = 0;
const TOKEN_MESSAGE: u64 = 1;
/// A message copied forward by compaction.
const TOKEN_MOVE: u64 = 2;

/// Compaction copies the unfinished messages of a sealed segment when they are at most one
/// in this many of what it holds.
const COMPACT_FRACTION: usize = 10;
/// Bytes copied by compaction per loop turn at most.
const COMPACT_BUDGET: u64 = 8 << 20;
/// A message due sooner than this is left where it is (it is likely to finish first).
const COMPACT_MIN_WAIT_MS: u64 = 60_000;

struct Control {
    cfg: ControlConfig,
    directory: Arc<DirectoryHandle>,
    usage: Arc<UsageCache>,
    log: ShardLog,
    ids: IdGen,
    /// Messages by id, waiting for their next attempt.
    queue: BTreeMap<QueueId, Pending>,
    /// When each queued message is next due (Unix ms), in order, and by id.
    due: TimerQueue<QueueId>,
    /// Open segment files, for reading contents.
    segments: HashMap<PathBuf, std::fs::File>,
    /// Opened Maildirs, by `<postoffice>/<mailbox>`.
    maildirs: HashMap<String, Maildir>,
    replies: ReplyMemory,
    remote: Option<RemoteHandle>,
    /// Runs and reaps mailboxes' delivery-event programs.
    events: EventRunner,
    /// What every segment holds: which ones can be retired.
    reclaimer: Reclaimer,
    /// Marks appended and not yet durable, in order (their completions come in that order).
    unsynced_marks: VecDeque<Mark>,
    delivered: u64,
    relayed: u64,
    reclaimed: u64,
}

/// Starts the control thread. `recovered` are the unfinished messages found at start;
/// `max_id` the largest queue id seen (the ids of generated messages go above it).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    cfg: ControlConfig,
    directory: Arc<DirectoryHandle>,
    usage: Arc<UsageCache>,
    recovered: Vec<StoredMessage>,
    reclaimer: Reclaimer,
    tail: Option<ShardTail>,
    max_id: QueueId,
    rx: Receiver<ControlMsg>,
    remote: Option<RemoteHandle>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, crate::spool::SpoolError> {
    let dir = shard_dir(&cfg.spool, CONTROL_SHARD);
    let mut log = match tail {
        Some(t) => ShardLog::open(&dir, CONTROL_SHARD, cfg.segment_size, t.seq, Some(t.end))?,
        None => ShardLog::open(&dir, CONTROL_SHARD, cfg.segment_size, 1, None)?,
    };
    if let Some(flag) = &cfg.spare_wanted {
        log.want_spares(flag.clone());
    }
    let replies = std::fs::read(cfg.data_dir.join("autoreply.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut c = Control {
        cfg,
        directory,
        usage,
        log,
        ids: IdGen::new(CONTROL_SHARD, max_id),
        queue: BTreeMap::new(),
        due: TimerQueue::new(),
        segments: HashMap::new(),
        maildirs: HashMap::new(),
        replies,
        remote,
        events: EventRunner::new()
            .map_err(|e| crate::spool::SpoolError::io("start the delivery-event reaper", &dir, 0, e))?,
        reclaimer,
        unsynced_marks: VecDeque::new(),
        delivered: 0,
        relayed: 0,
        reclaimed: 0,
    };
    c.load_usage();
    let now = Now::system().unix_ms;
    for m in recovered {
        let latest = m.latest_marks();
        let done: HashSet<u16> = latest
            .iter()
            .enumerate()
            .filter(|(_, k)| k.is_some_and(|k| k.status.is_final()))
            .map(|(i, _)| i as u16)
            .collect();
        // A deferred recipient waits for its next attempt, kept in its latest mark; the
        // message is due when its earliest recipient is.
        let next =
            latest.iter().flatten().filter(|k| k.status == MarkStatus::Deferred).map(|k| k.next_attempt_ms).min();
        let attempts = m.attempts();
        let mut p = Pending::new(m.envelope, m.path, m.content_offset, m.content_len);
        p.done = done;
        p.attempts = attempts;
        if next.is_some() {
            p.first_attempt_ms = Some(p.envelope.received_ms);
            p.last_deferral_ms = Some(now);
        }
        c.insert(p, next.unwrap_or(now).max(now));
    }
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || c.run(rx, stop))
        .map_err(|e| crate::spool::SpoolError::io("start control thread", std::path::Path::new("."), 0, e))
}

impl Control {
    /// Keeps a message with remote jobs out until their outcomes come; forgets one with
    /// nothing left to do (it stays in the spool until its segment is reclaimed).
    fn park(&mut self, p: Pending) {
        if !p.inflight.is_empty() {
            self.queue.insert(p.envelope.id, p);
        }
    }

    /// Sends one job per route with the recipients that share it.
    fn submit_remote(&mut self, p: &mut Pending, mut rcpts: Vec<(Route, u16, String)>, content: &[u8], now: u64) {
        let Some(remote) = &self.remote else {
            for (_, i, _) in &rcpts {
                p.done.insert(*i);
            }
            return;
        };
        p.first_attempt_ms.get_or_insert(now);
        let content: Arc<[u8]> = Arc::from(content);
        rcpts.sort_by(|a, b| a.0.cmp(&b.0));
        let mut start = 0;
        while start < rcpts.len() {
            let end = start + rcpts[start..].iter().take_while(|r| r.0 == rcpts[start].0).count();
            let group: Vec<(u16, String)> = rcpts[start..end].iter().map(|(_, i, a)| (*i, a.clone())).collect();
            for (i, _) in &group {
                p.inflight.insert(*i);
            }
            let env = &p.envelope;
            let dsn = crate::delivery::client::DsnParams {
                ret: env.ret,
                envid: env.envid.clone(),
                rcpts: group
                    .iter()
                    .map(|(i, _)| env.rcpts.get(*i as usize).map_or((None, None), |r| (r.notify, r.orcpt.clone())))
                    .collect(),
            };
            remote.submit(RemoteJob {
                id: p.envelope.id,
                from: p.envelope.from.clone(),
                rcpts: group,
                content: content.clone(),
                smtputf8: p.envelope.smtputf8,
                dsn,
                auth: p.envelope.auth.clone(),
                route: rcpts[start].0.clone(),
                seed: p.envelope.id.0 ^ now,
            });
            start = end;
        }
    }

    /// A remote job came back: one mark per recipient, retries per the schedule, reports
    /// for failures (and successes asked for with NOTIFY=SUCCESS), a delay notice when due.
    fn remote_done(&mut self, o: RemoteOutcome, now: u64) {
        let Some(mut p) = self.queue.remove(&o.id) else { return };
        let due_ms = self.due.remove(&o.id);
        let attempts = p.attempts.max(1);
        for (i, _) in &o.results {
            p.inflight.remove(i);
        }
        let m = Attempted {
            received_ms: p.envelope.received_ms,
            attempts: attempts as u32,
            first_attempt_ms: p.first_attempt_ms,
            last_deferral_ms: p.last_deferral_ms,
            due_ms,
        };
        let server = Answered { remote_mta: o.remote_mta, peer_dsn: o.peer_dsn };
        let j = outcome::judge(&self.cfg.retry, &self.cfg.delay_notice, m, &server, o.results, now);
        self.relayed += j.relayed;
        for mark in j.marks {
            if mark.status != MarkStatus::Deferred {
                p.done.insert(mark.rcpt);
            }
            let MarkFor { rcpt, status, text, next_attempt_ms } = mark;
            self.append_mark(Mark { id: p.envelope.id, rcpt: Some(rcpt), status, attempts, next_attempt_ms, text });
        }
        if j.deferred {
            p.last_deferral_ms = Some(now);
        }
        if !j.reports.is_empty() {
            match self.read_content(&p) {
                Ok(content) => self.bounce(&p, &content, &j.reports, now),
                Err(e) => log::error!("control: {}: reading for a report: {e}", p.envelope.id),
            }
        }
        match j.next_due_ms {
            Some(t) => self.insert(p, t),
            None => self.park(p),
        }
        // The marks are made durable at the end of the loop turn, with the others.
    }

    fn insert(&mut self, p: Pending, due_ms: u64) {
        let id = p.envelope.id;
        self.due.insert(id, due_ms);
        self.queue.insert(id, p);
    }

    /// The usage of every mailbox with a quota, so that RCPT can refuse a full one.
    fn load_usage(&mut self) {
        let dir = self.directory.current();
        for m in dir.data().mailboxes.iter().filter(|m| m.quota_bytes > 0) {
            let maildir = m.maildir();
            if let Ok(md) = Maildir::open(&mailbox_path(&self.cfg.maildir_root, &maildir))
                && let Ok(u) = md.usage()
            {
                self.usage.set(&maildir, u.bytes);
            }
        }
    }

    /// Runs until `stop` is set, which the server does once every shard has drained.
    fn run(mut self, rx: Receiver<ControlMsg>, stop: Arc<AtomicBool>) {
        loop {
            let now = Now::system().unix_ms;
            let wait = self
                .due
                .next_due()
                .map(|t| Duration::from_millis(t.saturating_sub(now)))
                .unwrap_or(Duration::from_millis(200))
                .min(Duration::from_millis(200));
            let first = rx.recv_timeout(wait);
            // One reading of the clock per turn: everything this turn decides uses it.
            let now = Now::system().unix_ms;
            match first {
                Ok(m) => {
                    self.handle(m, now);
                    // Take whatever else is waiting, so that deliveries and marks batch.
                    while let Ok(m) = rx.try_recv() {
                        self.handle(m, now);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
            }
            self.run_due(now);
            self.reclaim(now);
            if stop.load(Ordering::Relaxed) {
                // The shards are gone: take what they sent last, then stop. Remote jobs
                // still out are tried again after the restart (no final mark).
                while let Ok(m) = rx.try_recv() {
                    self.handle(m, now);
                }
                break;
            }
        }
        let now = Now::system().unix_ms;
        self.run_due(now);
        self.reclaim(now);
        log::info!(
            "control: {} local deliveries, {} remote, {} spool segment(s) retired",
            self.delivered,
            self.relayed,
            self.reclaimed
        );
    }

    fn handle(&mut self, m: ControlMsg, now: u64) {
        match m {
            ControlMsg::Accepted(v) => {
                for a in v {
                    self.accept(a);
                }
            }
            ControlMsg::Remote(o) => self.remote_done(o, now),
            ControlMsg::Queue(req, answer) => {
                let a = self.queue_request(&req, now);
                let _ = answer.send(a);
            }
        }
    }

    /// `ringmx queue retry|delete|bounce` on the running server (see
    /// [`crate::queue::requests`]). Marks are durable before the answer goes back.
    fn queue_request(&mut self, req: &QueueRequest, now: u64) -> QueueAnswer {
        let mut answer = QueueAnswer::default();
        let named = match &req.ids {
            None => None,
            Some(ids) => match crate::queue::requests::parse_ids(ids) {
                Ok(v) => Some(v),
                Err(bad) => {
                    let error = format!("{bad:?} is not a queue id (16 hexadecimal digits)");
                    return QueueAnswer { error: Some(error), ..QueueAnswer::default() };
                }
            },
        };
        // Messages held for an accept-all domain with no route are not kept in memory: they
        // are read back from the spool, only when the request may concern them.
        let read_spool = named.as_ref().is_none_or(|ids| ids.iter().any(|id| !self.queue.contains_key(id)));
        let spool = if read_spool { crate::spool::recover(&self.cfg.spool) } else { Ok(Default::default()) };
        let mut held: HashMap<QueueId, Pending> = match spool {
            Ok(rec) => rec
                .messages
                .into_iter()
                .filter(|m| !self.queue.contains_key(&m.envelope.id))
                .map(|m| {
                    let done: HashSet<u16> = m
                        .latest_marks()
                        .iter()
                        .enumerate()
                        .filter(|(_, k)| k.is_some_and(|k| k.status.is_final()))
                        .map(|(i, _)| i as u16)
                        .collect();
                    let attempts = m.attempts();
                    let mut p = Pending::new(m.envelope, m.path, m.content_offset, m.content_len);
                    p.held = (0..p.envelope.rcpts.len() as u16).filter(|i| !done.contains(i)).collect();
                    p.done = (0..p.envelope.rcpts.len() as u16).collect();
                    p.attempts = attempts;
                    (p.envelope.id, p)
                })
                .collect(),
            Err(e) => {
                log::error!("control: reading the spool for a queue command: {e}");
                HashMap::new()
            }
        };
        let ids: Vec<QueueId> = match named {
            None => self.queue.keys().chain(held.keys()).copied().collect(),
            Some(v) => v,
        };
        for id in ids {
            let Some(mut p) = self.queue.remove(&id).or_else(|| held.remove(&id)) else {
                answer.not_found.push(id.to_string());
                continue;
            };
            self.due.remove(&id);
            match req.op {
                QueueOp::Retry => {
                    for i in std::mem::take(&mut p.held) {
                        p.done.remove(&i);
                    }
                    self.insert(p, now);
                }
                // A remote job still out comes back to no queue entry and is dropped.
                QueueOp::Delete => self.append_mark(Mark {
                    id,
                    rcpt: None,
                    status: MarkStatus::Deleted,
                    attempts: p.attempts,
                    next_attempt_ms: 0,
                    text: DELETED_TEXT.into(),
                }),
                QueueOp::Bounce => {
                    let open: Vec<u16> = (0..p.envelope.rcpts.len() as u16)
                        .filter(|i| !p.done.contains(i) || p.held.contains(i))
                        .collect();
                    let mut reports = Vec::new();
                    for i in open {
                        reports.push(failure_report(i as usize, &bounced(), now));
                        self.append_mark(Mark {
                            id,
                            rcpt: Some(i),
                            status: MarkStatus::Failed,
                            attempts: p.attempts,
                            next_attempt_ms: 0,
                            text: BOUNCED_TEXT.into(),
                        });
                    }
                    match self.read_content(&p) {
                        Ok(content) => self.bounce(&p, &content, &reports, now),
                        Err(e) => log::error!("control: {id}: reading for a report: {e}"),
                    }
                }
            }
            log::info!("control: {id}: {:?} by the administrator", req.op);
            answer.done.push(id.to_string());
        }
        if !self.flush_log() {
            answer.error =
                Some("writing to the spool failed (see the server log): the change may not be durable".into());
        }
        answer
    }

    fn accept(&mut self, a: Accepted) {
        self.reclaimer.message_stored(a.shard, a.location.seq, a.envelope.id, a.envelope.rcpts.len());
        let path = segment_path(&shard_dir(&self.cfg.spool, a.shard), a.location.seq);
        let p = Pending::new(a.envelope, path, a.location.content_offset, a.location.content_len);
        self.insert(p, 0);
    }

    /// Delivers every message that is due in one batch: each copy is written to its
    /// Maildir's `tmp/`, one commit makes them all durable and visible ([`maildir::commit`]:
    /// two `syncfs` calls in all, not two fsyncs per copy), then the marks and any generated
    /// messages are made durable in one sync of the control log.
    fn run_due(&mut self, now: u64) {
        let mut due = Vec::new();
        self.due.drain_due(now, usize::MAX, &mut due);
        if due.is_empty() {
            self.flush_log();
            return;
        }
        let dir = self.directory.current();
        let mut attempts = Vec::with_capacity(due.len());
        let mut staged = Vec::new();
        // Bytes staged per Maildir in this batch, for the quota check.
        let mut pending: HashMap<String, u64> = HashMap::new();
        for id in due {
            let Some(p) = self.queue.remove(&id) else { continue };
            match self.stage(&dir, p, now, &mut staged, &mut pending) {
                Staging::Ready(a) => attempts.push(*a),
                Staging::Later(p, Some(t)) => self.insert(*p, t),
                Staging::Later(p, None) => self.park(*p),
            }
        }
        let mut results = maildir::commit(staged).into_iter();
        for mut a in attempts {
            for t in &a.copies {
                let r = results.next().expect("one result per staged copy");
                match r {
                    Ok(f) => {
                        self.delivered += 1;
                        if let Some(mb) = dir.mailbox_by_maildir(&t.maildir) {
                            if mb.quota_bytes > 0
                                && let Ok(u) = Maildir::open(&mailbox_path(&self.cfg.maildir_root, &t.maildir))
                                    .and_then(|m| m.usage())
                            {
                                self.usage.set(&t.maildir, u.bytes);
                            }
                            self.after_delivery(mb, &t.delivered_to, &a.p, &a.content, Some(&f.path), now);
                        }
                    }
                    Err(e) => {
                        let status = if e.is_permanent() { MarkStatus::Failed } else { MarkStatus::Deferred };
                        if !e.is_permanent() {
                            log::warn!("control: {}: delivery to {}: {e}", a.p.envelope.id, t.maildir);
                        }
                        note(&mut a.outcomes, &t.originals, status, Response::from(&e.smtp_reply()));
                    }
                }
            }
            match self.finish(&mut a, now) {
                Some(retry_at) => self.insert(a.p, retry_at),
                None => self.park(a.p),
            }
        }
        self.flush_log();
    }

    /// A message's content, read from its segment (kept open: messages come in runs from
    /// the same segment).
    fn read_content(&mut self, p: &Pending) -> std::io::Result<Vec<u8>> {
        if !self.segments.contains_key(&p.path) {
            if self.segments.len() >= 64 {
                self.segments.clear();
            }
            self.segments.insert(p.path.clone(), std::fs::File::open(&p.path)?);
        }
        let f = &self.segments[&p.path];
        let mut buf = vec![0u8; p.content_len as usize];
        f.read_exact_at(&mut buf, p.content_offset)?;
        Ok(buf)
    }

    /// Makes the marks and messages appended this turn durable, in one sync. False when a
    /// record could not be written.
    fn flush_log(&mut self) -> bool {
        if !self.log.wants_batch() {
            return true;
        }
        let mut ok = true;
        for c in self.log.flush_sync(true) {
            ok &= c.result.is_ok();
            self.stored(c);
        }
        ok
    }

    /// A record of the control log is durable: a generated message joins the queue, a mark
    /// counts toward reclaiming segments.
    fn stored(&mut self, c: Completion) {
        let mark = if c.token == TOKEN_MARK { self.unsynced_marks.pop_front() } else { None };
        match c.result {
            Ok(stored) if c.token == TOKEN_MESSAGE => {
                if let Some(envelope) = stored.envelope {
                    let l = stored.location;
                    self.reclaimer.message_stored(CONTROL_SHARD, l.seq, envelope.id, envelope.rcpts.len());
                    let dir = shard_dir(&self.cfg.spool, CONTROL_SHARD);
                    let p = Pending::new(envelope, segment_path(&dir, l.seq), l.content_offset, l.content_len);
                    self.insert(p, 0);
                }
            }
            Ok(stored) if c.token == TOKEN_MOVE => {
                let l = stored.location;
                if let Some(envelope) = &stored.envelope {
                    self.reclaimer.message_stored(CONTROL_SHARD, l.seq, envelope.id, envelope.rcpts.len());
                }
                if let Some(p) = self.queue.get_mut(&stored.id) {
                    p.path = segment_path(&shard_dir(&self.cfg.spool, CONTROL_SHARD), l.seq);
                    p.content_offset = l.content_offset;
                    p.content_len = l.content_len;
                }
            }
            Ok(stored) => {
                if let Some(m) = mark {
                    self.reclaimer.mark_stored(stored.location.seq, &m);
                }
            }
            Err(e) => log::error!("control: writing to the spool: {e}"),
        }
    }

    /// Appends a state mark; it is durable after the next [`Control::flush_log`].
    fn append_mark(&mut self, mark: Mark) {
        self.log.append_mark(TOKEN_MARK, &mark);
        self.unsynced_marks.push_back(mark);
    }

    /// Retires the segments that hold nothing unfinished, in the order that keeps a restart
    /// correct (see [`crate::spool::reclaim`]): marks still needed copied and made durable,
    /// then message segments (directories synced), then control segments.
    fn reclaim(&mut self, now: u64) {
        if !self.reclaimer.dirty() {
            return;
        }
        let plan = self.reclaimer.plan();
        if !plan.is_empty() {
            self.retire(plan);
        }
        self.compact(now);
    }

    /// Copies the few unfinished messages of mostly finished sealed segments into the control
    /// log (see [`crate::spool::reclaim`]); once the copies are durable the segments go at
    /// the next [`Control::reclaim`]. Only messages waiting a while in the queue are copied:
    /// a segment with a held message (not kept in memory) or one about to be tried waits.
    fn compact(&mut self, now: u64) {
        let mut budget = COMPACT_BUDGET;
        let mut copied = 0;
        for (_, ids) in self.reclaimer.compaction_candidates(COMPACT_FRACTION) {
            let ready = ids.iter().all(|id| {
                self.queue.get(id).is_some_and(|p| p.inflight.is_empty())
                    && self.due.due_of(id).is_some_and(|t| t >= now + COMPACT_MIN_WAIT_MS)
            });
            if !ready {
                continue;
            }
            for id in ids {
                let Some(p) = self.queue.remove(&id) else { continue };
                match self.read_content(&p) {
                    Ok(content) => {
                        budget = budget.saturating_sub(content.len() as u64);
                        copied += 1;
                        self.log.append(TOKEN_MOVE, NewMessage { envelope: p.envelope.clone(), data: content });
                    }
                    Err(e) => log::warn!("control: {id}: reading for compaction: {e}"),
                }
                self.queue.insert(id, p);
            }
            if budget == 0 {
                break;
            }
        }
        if copied > 0 {
            self.flush_log();
            log::debug!("control: {copied} message(s) copied forward out of mostly finished segments");
        }
    }

    /// Carries out a reclaim plan.
    fn retire(&mut self, plan: crate::spool::Plan) {
        let copies = plan.copies.len();
        for m in &plan.copies {
            self.append_mark(m.clone());
        }
        if !self.flush_log() {
            log::error!("control: spool reclaim put off: copied marks are not durable");
            return;
        }
        let spool = self.cfg.spool.clone();
        let mut retired = crate::spool::Plan::default();
        let mut dirs: Vec<u8> = Vec::new();
        for &(shard, seq) in &plan.messages {
            match crate::spool::retire_segment(&spool, shard, seq) {
                Ok(()) => {
                    retired.messages.push((shard, seq));
                    if !dirs.contains(&shard) {
                        dirs.push(shard);
                    }
                }
                Err(e) => log::warn!("control: retiring a spool segment: {e}"),
            }
        }
        for shard in dirs {
            if let Err(e) = crate::spool::sync_dir(&spool, shard) {
                // Not known durable: keep the control segments (their marks) for now.
                log::error!("control: {e}; spool reclaim put off");
                self.reclaimer.retired(&retired);
                return;
            }
        }
        let mut control_done = false;
        for &seq in &plan.control {
            match crate::spool::retire_segment(&spool, CONTROL_SHARD, seq) {
                Ok(()) => {
                    retired.control.push(seq);
                    control_done = true;
                }
                Err(e) => log::warn!("control: retiring a spool segment: {e}"),
            }
        }
        if control_done && let Err(e) = crate::spool::sync_dir(&spool, CONTROL_SHARD) {
            log::warn!("control: {e}");
        }
        let keys = retired.messages.iter().copied().chain(retired.control.iter().map(|&s| (CONTROL_SHARD, s)));
        for (shard, seq) in keys {
            self.segments.remove(&segment_path(&shard_dir(&spool, shard), seq));
        }
        let n = retired.messages.len() + retired.control.len();
        self.reclaimed += n as u64;
        log::debug!("control: {n} spool segment(s) retired, {copies} mark(s) copied forward");
        self.reclaimer.retired(&retired);
    }

    /// Expands the local recipients of `p` that are not final yet and stages one copy per
    /// target, or gives the message back with when to try again, if ever.
    fn stage(
        &mut self,
        dir: &Directory,
        mut p: Pending,
        now: u64,
        staged: &mut Vec<Staged>,
        pending: &mut HashMap<String, u64>,
    ) -> Staging {
        let open: Vec<(u16, String)> = p
            .envelope
            .rcpts
            .iter()
            .enumerate()
            .filter(|(i, _)| !p.done.contains(&(*i as u16)))
            .map(|(i, r)| (i as u16, r.address.to_ascii_lowercase()))
            .collect();
        let mut local = Vec::new();
        let mut remote: Vec<(Route, u16, String)> = Vec::new();
        for (i, a) in open {
            if p.inflight.contains(&i) {
                continue;
            }
            match route_of(dir, &a, &self.cfg.routing, &self.cfg.local_domains) {
                Where::Local => local.push((i, a)),
                Where::Remote(r) => remote.push((r, i, a)),
                // Held: an accept-all domain with nowhere to send it; it stays queued.
                Where::Held => {
                    p.done.insert(i);
                    p.held.insert(i);
                }
            }
        }
        if local.is_empty() && remote.is_empty() {
            return Staging::Later(Box::new(p), None);
        }
        let content = match self.read_content(&p) {
            Ok(c) => c,
            Err(e) => {
                log::error!("control: {}: reading {}: {e}", p.envelope.id, p.path.display());
                return Staging::Later(Box::new(p), Some(now + self.cfg.local_retry.as_millis() as u64));
            }
        };
        p.attempts = p.attempts.saturating_add(1);
        if !remote.is_empty() {
            self.submit_remote(&mut p, remote, &content, now);
        }
        if local.is_empty() {
            return Staging::Later(Box::new(p), None);
        }
        let addrs: Vec<&str> = local.iter().map(|(_, a)| a.as_str()).collect();
        let expansion = dir.expand_all(&addrs, self.cfg.catch_alls);
        let mut outcomes: Vec<(String, Outcome)> = Vec::new();
        let mut copies = Vec::new();
        let mut forwards = Vec::new();
        let mut lmtp = Vec::new();
        for t in &expansion.targets {
            let (maildir, delivered_to) = match &t.destination {
                Destination::Mailbox { delivered_to, .. }
                    if self.cfg.lmtp.as_ref().is_some_and(|l| l.applies_to(delivered_to)) =>
                {
                    lmtp.push(t);
                    continue;
                }
                Destination::Mailbox { maildir, delivered_to } => (maildir, delivered_to),
                // A redirect or group member elsewhere: forwarded as a new message (after
                // the local copies are committed, see `finish`).
                Destination::Remote(address) | Destination::Relay { address, .. } => {
                    forwards.push((address.clone(), t.original_recipients.clone()));
                    continue;
                }
            };
            let quota = dir.mailbox_by_maildir(maildir).map_or(0, |m| m.quota_bytes);
            let path = mailbox_path(&self.cfg.maildir_root, maildir);
            let catch_all_copy;
            let body: &[u8] = if t.catch_all {
                let mut c = Vec::with_capacity(content.len() + 128);
                let _ = write!(c, "{}: {}\r\n", self.cfg.catch_all_header, t.original_recipients.join(", "));
                c.extend_from_slice(&content);
                catch_all_copy = c;
                &catch_all_copy
            } else {
                &content
            };
            let already = pending.get(maildir.as_str()).copied().unwrap_or(0);
            // Opened once (it creates tmp/, new/, cur/ as needed), then kept.
            let md = match self.maildirs.get(maildir.as_str()) {
                Some(m) => Ok(m.clone()),
                None => Maildir::open(&path).inspect(|m| {
                    if self.maildirs.len() >= 4096 {
                        self.maildirs.clear();
                    }
                    self.maildirs.insert(maildir.clone(), m.clone());
                }),
            };
            let r = md.and_then(|m| m.with_quota(quota).stage(&p.envelope.from, delivered_to, body, already));
            match r {
                Ok(st) => {
                    *pending.entry(maildir.clone()).or_default() += st.size();
                    staged.push(st);
                    copies.push(Copy {
                        maildir: maildir.clone(),
                        delivered_to: delivered_to.clone(),
                        originals: t.original_recipients.clone(),
                    });
                }
                Err(e) => {
                    let status = if e.is_permanent() { MarkStatus::Failed } else { MarkStatus::Deferred };
                    note(&mut outcomes, &t.original_recipients, status, Response::from(&e.smtp_reply()));
                }
            }
        }
        if !lmtp.is_empty() {
            self.deliver_lmtp(dir, &p, &content, &lmtp, &mut outcomes, now);
        }
        for problem in &expansion.problems {
            let failed = |code, status, text: &str| (MarkStatus::Failed, Response::new(code, Some(status), text));
            let (addr, (status, reply)) = match problem {
                ExpandProblem::Unknown { address } | ExpandProblem::Blocked { address } => {
                    (address.clone(), failed(550, "5.1.1", "unknown user"))
                }
                ExpandProblem::Disabled { address } => (address.clone(), failed(550, "5.2.1", "mailbox disabled")),
                ExpandProblem::Loop { chain } => (
                    chain.first().cloned().unwrap_or_default(),
                    failed(554, "5.4.6", &format!("routing loop: {}", chain.join(" -> "))),
                ),
                ExpandProblem::TooDeep { address } => {
                    (address.clone(), failed(554, "5.4.6", "redirects nested too deep"))
                }
                ExpandProblem::UnresolvedPostmaster { address } => {
                    // Held for the operator: never bounce mail to postmaster.
                    let reply = Response::new(451, Some("4.3.0"), "postmaster has no mailbox");
                    (address.clone(), (MarkStatus::Deferred, reply))
                }
            };
            note(&mut outcomes, &[addr], status, reply);
        }
        Staging::Ready(Box::new(Attempt { p, local, content, copies, outcomes, forwards }))
    }

    /// Hands the copies for LMTP mailboxes to the LMTP server (RFC 2033): one transaction
    /// for the plain copies, one per catch-all copy (its content differs); per-recipient
    /// replies become the outcomes. The server's 250 makes the copy durable there.
    fn deliver_lmtp(
        &mut self,
        dir: &Directory,
        p: &Pending,
        content: &[u8],
        targets: &[&crate::directory::Target],
        outcomes: &mut Vec<(String, Outcome)>,
        now: u64,
    ) {
        let Some(route) = self.cfg.lmtp.clone() else { return };
        let address = |t: &crate::directory::Target| match &t.destination {
            Destination::Mailbox { delivered_to, .. } => delivered_to.clone(),
            _ => String::new(),
        };
        let mut batches: Vec<(Vec<&crate::directory::Target>, Vec<u8>)> = Vec::new();
        let plain: Vec<&crate::directory::Target> = targets.iter().copied().filter(|t| !t.catch_all).collect();
        if !plain.is_empty() {
            batches.push((plain, content.to_vec()));
        }
        for t in targets.iter().copied().filter(|t| t.catch_all) {
            let mut c = Vec::with_capacity(content.len() + 128);
            let _ = write!(c, "{}: {}\r\n", self.cfg.catch_all_header, t.original_recipients.join(", "));
            c.extend_from_slice(content);
            batches.push((vec![t], c));
        }
        for (ts, body) in batches {
            let rcpts: Vec<String> = ts.iter().map(|t| address(t)).collect();
            let r = crate::delivery::lmtp::deliver(
                &route.endpoint,
                &self.cfg.hostname,
                &p.envelope.from,
                &rcpts,
                &body,
                route.timeout,
            );
            match r {
                Ok(results) => {
                    for (t, res) in ts.iter().zip(results) {
                        match res {
                            Ok(()) => {
                                self.delivered += 1;
                                if let Destination::Mailbox { maildir, delivered_to } = &t.destination
                                    && let Some(mb) = dir.mailbox_by_maildir(maildir)
                                {
                                    self.after_delivery(mb, delivered_to, p, &body, None, now);
                                }
                            }
                            Err(f) => {
                                let status = if f.permanent { MarkStatus::Failed } else { MarkStatus::Deferred };
                                let reply = Response::from_code_text(f.reply.code, &f.reply.text);
                                note(outcomes, &t.original_recipients, status, reply);
                            }
                        }
                    }
                }
                Err(e) => {
                    log::warn!("control: {}: LMTP server: {e}", p.envelope.id);
                    for t in &ts {
                        let reply = Response::new(451, Some("4.4.1"), &format!("LMTP server: {e}"));
                        note(outcomes, &t.original_recipients, MarkStatus::Deferred, reply);
                    }
                }
            }
        }
    }

    /// After the commit: one mark per local recipient, a report for the failed ones.
    /// Returns when to try again, if some recipient needs it.
    fn finish(&mut self, a: &mut Attempt, now: u64) -> Option<u64> {
        let mut retry = false;
        let mut reports = Vec::new();
        for (i, addr) in &a.local {
            let o = a.outcomes.iter().find(|(x, _)| x == addr).map(|(_, o)| o);
            let (status, reply) = match o {
                None => (MarkStatus::Delivered, Response::new(250, Some("2.0.0"), "delivered to mailbox")),
                Some(o) => (o.status, o.reply.clone()),
            };
            let next_attempt_ms = if status == MarkStatus::Deferred {
                retry = true;
                now + self.cfg.local_retry.as_millis() as u64
            } else {
                a.p.done.insert(*i);
                0
            };
            if status == MarkStatus::Failed {
                reports.push(failure_report(*i as usize, &reply, now));
            }
            let text = reply.to_string();
            let mark =
                Mark { id: a.p.envelope.id, rcpt: Some(*i), status, attempts: a.p.attempts, next_attempt_ms, text };
            self.append_mark(mark);
        }
        // Forward what goes elsewhere as one new message from the same sender, written in
        // the same sync as the marks (so neither lost nor sent twice). A target whose
        // original recipients are all deferred waits for their retry, which expands again.
        let deferred = |o: &String| a.outcomes.iter().any(|(x, out)| x == o && out.status == MarkStatus::Deferred);
        let mut to: Vec<String> = Vec::new();
        for (address, originals) in &a.forwards {
            if !originals.iter().all(deferred) && !to.contains(address) {
                to.push(address.clone());
            }
        }
        if !to.is_empty() {
            log::info!("control: {}: forwarded to {}", a.p.envelope.id, to.join(", "));
            let env = &a.p.envelope;
            let (from, body, smtputf8, auth) = (env.from.clone(), env.body, env.smtputf8, env.auth.clone());
            self.generate_message(from, to, a.content.clone(), now, |e| {
                e.body = body;
                e.smtputf8 = smtputf8;
                e.auth = auth;
            });
        }
        if !reports.is_empty() {
            let content = std::mem::take(&mut a.content);
            self.bounce(&a.p, &content, &reports, now);
        }
        retry.then(|| now + self.cfg.local_retry.as_millis() as u64)
    }

    /// The auto-responder and the delivery-event program of a mailbox that just got a copy.
    fn after_delivery(
        &mut self,
        mb: &Mailbox,
        delivered_to: &str,
        p: &Pending,
        content: &[u8],
        file: Option<&std::path::Path>,
        now: u64,
    ) {
        if mb.autoresponder.is_none() && mb.delivery_event.is_none() {
            return;
        }
        let head = &content[..content.len().min(16 * 1024)];
        let bulk = autoreply::should_reply(&p.envelope.from, head).is_err();
        if let Some(ar) = &mb.autoresponder
            && !bulk
            && self.replies.try_record(delivered_to, &p.envelope.from, now, self.cfg.autoreply_period).is_ok()
        {
            let message_id = format!("{}.autoreply@{}", self.ids.next(now / 1000), self.cfg.hostname);
            let reply = autoreply::build(&autoreply::ReplyInput {
                from: delivered_to,
                to: &p.envelope.from,
                subject: &ar.subject,
                body: &ar.body,
                reply_to: ar.reply_to.as_deref(),
                original_head: head,
                now_ms: now,
                message_id: &message_id,
            });
            // RFC 3834 §3.3: an automatic response has a null reverse path.
            self.generate(String::new(), p.envelope.from.clone(), reply, now);
            self.save_replies();
        }
        // The delivery event names the Maildir file: there is none for an LMTP copy.
        if let Some(program) = &mb.delivery_event
            && let Some(file) = file
            && !bulk
        {
            self.events.run(program, &mb.postoffice, &mb.name, file, self.cfg.event_timeout);
        }
    }

    /// A non-delivery report for the failed recipients, or the message to the bad-mail
    /// folder when it came from the null sender (a bounce that bounced).
    fn bounce(&mut self, p: &Pending, content: &[u8], reports: &[RecipientReport], now: u64) {
        if p.envelope.from.is_empty() {
            let dir = self.cfg.data_dir.join("badmail");
            let path = dir.join(format!("{}.eml", p.envelope.id));
            if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, content)) {
                log::error!("control: {}: writing {}: {e}", p.envelope.id, path.display());
            } else {
                log::warn!("control: {}: undeliverable system message kept in {}", p.envelope.id, path.display());
            }
            return;
        }
        let id = self.ids.next(now / 1000);
        let message_id = format!("{id}.dsn@{}", self.cfg.hostname);
        let boundary = format!("{id}/{}", self.cfg.hostname);
        let input = DsnInput {
            reporting_mta: &self.cfg.hostname,
            envelope: &p.envelope,
            content,
            reports,
            now_ms: now,
            boundary: &boundary,
            message_id: &message_id,
            config: self.cfg.dsn,
        };
        if let Some(d) = dsn::build(&input) {
            self.generate(String::new(), d.to, d.content, now);
        }
    }

    /// Appends a message of our own to the control log; it is queued once durable.
    fn generate(&mut self, from: String, to: String, data: Vec<u8>, now: u64) {
        self.generate_message(from, vec![to], data, now, |_| {});
    }

    /// [`Control::generate`] for several recipients, with a last touch to the envelope.
    fn generate_message(
        &mut self,
        from: String,
        to: Vec<String>,
        data: Vec<u8>,
        now: u64,
        envelope_with: impl FnOnce(&mut Envelope),
    ) {
        let mut envelope = Envelope::new(self.ids.next(now / 1000));
        envelope.received_ms = now;
        envelope.from = from;
        envelope.rcpts = to.into_iter().map(|address| Recipient { address, notify: None, orcpt: None }).collect();
        envelope_with(&mut envelope);
        self.log.append(TOKEN_MESSAGE, NewMessage { envelope, data });
    }

    fn save_replies(&self) {
        let path = self.cfg.data_dir.join("autoreply.json");
        let tmp = path.with_extension("json.tmp");
        let r = serde_json::to_vec(&self.replies)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            log::warn!("control: saving {}: {e}", path.display());
        }
    }
}

/// A permanent failure line for a DSN.
fn failure_report(rcpt: usize, reply: &Response, now: u64) -> RecipientReport {
    RecipientReport {
        rcpt,
        action: DsnAction::Failed,
        status: reply.status(),
        remote_mta: None,
        diagnostic: Some(reply.to_string()),
        last_attempt_ms: Some(now),
        will_retry_until_ms: None,
    }
}

/// An operator's `queue bounce`, as the recipient's outcome.
fn bounced() -> Response {
    Response::parse(BOUNCED_TEXT).expect("BOUNCED_TEXT is a reply")
}
