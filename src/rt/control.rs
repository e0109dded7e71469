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

use crate::delivery::autoreply::{self, ReplyMemory};
use crate::delivery::dsn::{self, Action as DsnAction, DsnConfig, DsnInput, RecipientReport};
use crate::delivery::maildir::{self, Maildir, Staged, UsageCache, mailbox_path};
use crate::directory::{Destination, Directory, DirectoryHandle, ExpandProblem, Mailbox};
use crate::session::SpoolRequest;
use crate::spool::{
    CONTROL_SHARD, Envelope, IdGen, Location, Mark, MarkStatus, QueueId, Recipient, ShardLog, ShardTail, StoredMessage,
    segment_path, shard_dir,
};
use crate::util::time::Now;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
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

/// Channel capacity: a few seconds of peak intake.
pub const CHANNEL_CAPACITY: usize = 65_536;

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
}

/// One message the control side tracks until every recipient is final.
struct Pending {
    envelope: Envelope,
    path: PathBuf,
    content_offset: u64,
    content_len: u64,
    /// Recipient indexes already final (delivered, failed) or waiting for remote delivery.
    done: HashSet<u16>,
    attempts: u16,
}

/// The outcome of one original recipient in one attempt.
struct Outcome {
    status: MarkStatus,
    /// The reply or our words, `"552 5.2.2 …"` style.
    text: String,
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
}

/// A staged copy: which mailbox, and which original recipients it stands for.
struct Copy {
    maildir: String,
    delivered_to: String,
    originals: Vec<String>,
}

/// Records the outcome of the original recipients behind a copy; the worst outcome of any
/// of a recipient's copies is its outcome.
fn note(out: &mut Vec<(String, Outcome)>, originals: &[String], status: MarkStatus, text: String) {
    for o in originals {
        match out.iter_mut().find(|(a, _)| a == o) {
            Some((_, prev)) if prev.status == MarkStatus::Failed => {}
            Some((_, prev)) => *prev = Outcome { status, text: text.clone() },
            None => out.push((o.clone(), Outcome { status, text: text.clone() })),
        }
    }
}

/// Token of appended records: marks need no answer, generated messages are queued.
const TOKEN_MARK: u64 = 0;
const TOKEN_MESSAGE: u64 = 1;

struct Control {
    cfg: ControlConfig,
    directory: Arc<DirectoryHandle>,
    usage: Arc<UsageCache>,
    log: ShardLog,
    ids: IdGen,
    /// Messages by id, waiting for their next attempt.
    queue: BTreeMap<QueueId, Pending>,
    /// When each queued message is next due (Unix ms).
    due: BTreeMap<(u64, QueueId), ()>,
    replies: ReplyMemory,
    delivered: u64,
}

/// Starts the control thread. `recovered` are the unfinished messages found at start;
/// `max_id` the largest queue id seen (the ids of generated messages go above it).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    cfg: ControlConfig,
    directory: Arc<DirectoryHandle>,
    usage: Arc<UsageCache>,
    recovered: Vec<StoredMessage>,
    tail: Option<ShardTail>,
    max_id: QueueId,
    rx: Receiver<Accepted>,
) -> Result<std::thread::JoinHandle<()>, crate::spool::SpoolError> {
    let dir = shard_dir(&cfg.spool, CONTROL_SHARD);
    let log = match tail {
        Some(t) => ShardLog::open(&dir, CONTROL_SHARD, cfg.segment_size, t.seq, Some(t.end))?,
        None => ShardLog::open(&dir, CONTROL_SHARD, cfg.segment_size, 1, None)?,
    };
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
        due: BTreeMap::new(),
        replies,
        delivered: 0,
    };
    c.load_usage();
    let now = Now::system().unix_ms;
    for m in recovered {
        let done = m.marks.iter().filter(|k| k.status.is_final()).filter_map(|k| k.rcpt).collect();
        let attempts = m.marks.iter().map(|k| k.attempts).max().unwrap_or(0);
        let p = Pending {
            envelope: m.envelope,
            path: m.path,
            content_offset: m.content_offset,
            content_len: m.content_len,
            done,
            attempts,
        };
        c.insert(p, now);
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

    /// Delivers every message that is due in one batch: each copy is written to its
    /// Maildir's `tmp/`, one commit makes them all durable and visible ([`maildir::commit`]:
    /// two `syncfs` calls in all, not two fsyncs per copy), then the marks and any generated
    /// messages are made durable in one sync of the control log.
    fn run_due(&mut self) {
        let now = Now::system().unix_ms;
        let due: Vec<QueueId> = self.due.range(..=(now, QueueId(u64::MAX))).map(|((_, id), _)| *id).collect();
        if due.is_empty() {
            return;
        }
        self.due.retain(|(t, _), _| *t > now);
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
                Staging::Later(_, None) => {}
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
                            self.after_delivery(mb, &t.delivered_to, &a.p, &a.content, &f.path, now);
                        }
                    }
                    Err(e) => {
                        let status = if e.is_permanent() { MarkStatus::Failed } else { MarkStatus::Deferred };
                        if !e.is_permanent() {
                            log::warn!("control: {}: delivery to {}: {e}", a.p.envelope.id, t.maildir);
                        }
                        note(&mut a.outcomes, &t.originals, status, e.smtp_reply().to_string());
                    }
                }
            }
            if let Some(retry_at) = self.finish(&mut a, now) {
                self.insert(a.p, retry_at);
            }
        }
        let dir = shard_dir(&self.cfg.spool, CONTROL_SHARD);
        for c in self.log.flush_sync(true) {
            match c.result {
                Ok(stored) if c.token == TOKEN_MESSAGE => {
                    if let Some(envelope) = stored.envelope {
                        let p = Pending {
                            envelope,
                            path: segment_path(&dir, stored.location.seq),
                            content_offset: stored.location.content_offset,
                            content_len: stored.location.content_len,
                            done: HashSet::new(),
                            attempts: 0,
                        };
                        self.insert(p, 0);
                    }
                }
                Ok(_) => {}
                Err(e) => log::error!("control: writing to the spool: {e}"),
            }
        }
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
        let is_local = |a: &str| a.rsplit_once('@').is_none_or(|(_, d)| dir.is_local_domain(d));
        let mut local = Vec::new();
        for (i, a) in open {
            if is_local(&a) {
                local.push((i, a));
            } else {
                // Recipients elsewhere wait for remote delivery; they stay queued (and listed).
                p.done.insert(i);
            }
        }
        if local.is_empty() {
            return Staging::Later(Box::new(p), None);
        }
        let content = match read_content(&p) {
            Ok(c) => c,
            Err(e) => {
                log::error!("control: {}: reading {}: {e}", p.envelope.id, p.path.display());
                return Staging::Later(Box::new(p), Some(now + self.cfg.local_retry.as_millis() as u64));
            }
        };
        p.attempts = p.attempts.saturating_add(1);
        let addrs: Vec<&str> = local.iter().map(|(_, a)| a.as_str()).collect();
        let expansion = dir.expand_all(&addrs, self.cfg.catch_alls);
        let mut outcomes: Vec<(String, Outcome)> = Vec::new();
        let mut copies = Vec::new();
        for t in &expansion.targets {
            let Destination::Mailbox { maildir, delivered_to } = &t.destination else {
                // A redirect or group member elsewhere: remote delivery is not built yet.
                note(
                    &mut outcomes,
                    &t.original_recipients,
                    MarkStatus::Deferred,
                    "451 4.4.0 remote delivery pending".into(),
                );
                continue;
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
            let r = Maildir::open(&path)
                .and_then(|m| m.with_quota(quota).stage(&p.envelope.from, delivered_to, body, already));
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
                    note(&mut outcomes, &t.original_recipients, status, e.smtp_reply().to_string());
                }
            }
        }
        for problem in &expansion.problems {
            let (addr, status, text) = match problem {
                ExpandProblem::Unknown { address } | ExpandProblem::Blocked { address } => {
                    (address.clone(), MarkStatus::Failed, "550 5.1.1 unknown user".to_string())
                }
                ExpandProblem::Disabled { address } => {
                    (address.clone(), MarkStatus::Failed, "550 5.2.1 mailbox disabled".to_string())
                }
                ExpandProblem::Loop { chain } => (
                    chain.first().cloned().unwrap_or_default(),
                    MarkStatus::Failed,
                    format!("554 5.4.6 routing loop: {}", chain.join(" -> ")),
                ),
                ExpandProblem::TooDeep { address } => {
                    (address.clone(), MarkStatus::Failed, "554 5.4.6 redirects nested too deep".to_string())
                }
                ExpandProblem::UnresolvedPostmaster { address } => {
                    // Held for the operator: never bounce mail to postmaster.
                    (address.clone(), MarkStatus::Deferred, "451 4.3.0 postmaster has no mailbox".to_string())
                }
            };
            note(&mut outcomes, &[addr], status, text);
        }
        Staging::Ready(Box::new(Attempt { p, local, content, copies, outcomes }))
    }

    /// After the commit: one mark per local recipient, a report for the failed ones.
    /// Returns when to try again, if some recipient needs it.
    fn finish(&mut self, a: &mut Attempt, now: u64) -> Option<u64> {
        let mut retry = false;
        let mut reports = Vec::new();
        for (i, addr) in &a.local {
            let o = a.outcomes.iter().find(|(x, _)| x == addr).map(|(_, o)| o);
            let (status, text) = match o {
                None => (MarkStatus::Delivered, "250 2.0.0 delivered to mailbox".to_string()),
                Some(o) => (o.status, o.text.clone()),
            };
            let next_attempt_ms = if status == MarkStatus::Deferred {
                retry = true;
                now + self.cfg.local_retry.as_millis() as u64
            } else {
                a.p.done.insert(*i);
                0
            };
            if status == MarkStatus::Failed {
                reports.push(failure_report(*i as usize, &text, now));
            }
            let mark =
                Mark { id: a.p.envelope.id, rcpt: Some(*i), status, attempts: a.p.attempts, next_attempt_ms, text };
            self.log.append_mark(TOKEN_MARK, &mark);
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
        file: &std::path::Path,
        now: u64,
    ) {
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
        if let Some(program) = &mb.delivery_event
            && !bulk
        {
            run_event(program, &mb.postoffice, &mb.name, file, self.cfg.event_timeout);
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
        let mut envelope = Envelope::new(self.ids.next(now / 1000));
        envelope.received_ms = now;
        envelope.from = from;
        envelope.rcpts.push(Recipient { address: to, notify: None, orcpt: None });
        self.log.append(TOKEN_MESSAGE, SpoolRequest { envelope, data });
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

/// A permanent failure line for a DSN; `text` starts with the reply code.
fn failure_report(rcpt: usize, text: &str, now: u64) -> RecipientReport {
    let status = text.split_whitespace().nth(1).filter(|s| s.starts_with('5')).unwrap_or("5.0.0").to_string();
    RecipientReport {
        rcpt,
        action: DsnAction::Failed,
        status,
        remote_mta: None,
        diagnostic: Some(text.to_string()),
        last_attempt_ms: Some(now),
        will_retry_until_ms: None,
    }
}

/// Runs `program postoffice mailbox messagefile` (SPEC §6, MailEnable's delivery event) in
/// the background; it is killed after `timeout`.
fn run_event(program: &str, postoffice: &str, mailbox: &str, file: &std::path::Path, timeout: Duration) {
    let child = std::process::Command::new(program)
        .arg(postoffice)
        .arg(mailbox)
        .arg(file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            log::warn!("control: delivery event {program}: {e}");
            return;
        }
    };
    let program = program.to_string();
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if start.elapsed() >= timeout => {
                    log::warn!("control: delivery event {program} killed after {timeout:?}");
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => return,
            }
        }
    });
}

fn read_content(p: &Pending) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(&p.path)?;
    let mut buf = vec![0u8; p.content_len as usize];
    f.read_exact_at(&mut buf, p.content_offset)?;
    Ok(buf)
}
