//! The control thread: the driver of the [`QueueManager`]. It feeds the manager every
//! message the shards made durable, the clock, delivery outcomes and operators' requests,
//! and executes what the manager asks for: read a message's content, stage Maildir copies
//! (`local.rs`), hand jobs to the delivery runtime (remote SMTP and LMTP, `rt/remote.rs`),
//! append state marks and generated messages to its own spool log (`spool/255/`), run
//! delivery-event programs. Spool upkeep (retiring and compacting segments) is `reclaim.rs`;
//! what the shards send is `link.rs`.
//!
//! Shards hand messages over through a bounded channel after the fdatasync that made them
//! durable; they never block on it (a full channel leaves the notice in the shard's backlog
//! for its next loop turn). At start the control thread also takes every unfinished message
//! recovery found, so nothing depends on the channel for durability.
//!
//! A recipient's mark is written only after its delivery is durable (the Maildir file
//! fsynced and renamed, its directory fsynced; the LMTP server's or remote server's 250).
//! A crash in between delivers the message again after the restart: at most a duplicate,
//! never a loss. The marks and generated messages of one loop turn are made durable in one
//! sync, so a report is neither lost nor sent twice.

pub mod link;
mod local;
mod reclaim;

use super::remote::DeliveryHandle;
use crate::delivery::dsn::{self, DsnConfig, DsnInput};
use crate::delivery::event::EventRunner;
use crate::delivery::lmtp::LmtpRoute;
use crate::delivery::maildir::UsageCache;
use crate::directory::DirectoryHandle;
use crate::queue::actions::{Action, At, Generate, Outcome};
use crate::queue::{ManagerConfig, QueueManager};
use crate::spool::{
    CONTROL_SHARD, Completion, Envelope, Mark, NewMessage, QueueId, QueuedMessage, Recipient, Reclaimer, RecordReader,
    ShardLog, ShardTail, shard_dir,
};
use crate::util::time::Now;
use link::ControlMsg;
use local::LocalDelivery;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// Settings of the control side.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub data_dir: PathBuf,
    pub spool: PathBuf,
    /// Root of the Maildirs: `<root>/<postoffice>/<mailbox>/Maildir`.
    pub maildir_root: PathBuf,
    pub segment_size: u64,
    /// `[spool] direct_io`: the control log's batches too.
    pub direct_io: bool,
    pub dsn: DsnConfig,
    /// A delivery-event program is killed after this long.
    pub event_timeout: Duration,
    /// Where LMTP copies go (the manager decides which copies those are).
    pub lmtp: Option<LmtpRoute>,
    /// Raised by the control log when its next segment is near ([`ShardLog::want_spares`]).
    pub spare_wanted: Option<Arc<AtomicBool>>,
    /// What the queue manager decides by.
    pub manager: ManagerConfig,
}

/// Token of appended records: marks need no answer, generated messages are queued.
const TOKEN_MARK: u64 = 0;
const TOKEN_MESSAGE: u64 = 1;
/// A message copied forward by compaction.
const TOKEN_MOVE: u64 = 2;

/// The longest the thread sleeps with no timer due: its periodic work (the status page's
/// slower figures, retiring spent segments) needs no more; a stop wakes it
/// ([`ControlMsg::Wake`]).
const MAX_WAIT: Duration = Duration::from_secs(1);
/// Most messages one turn takes from the channel.
const MAX_TURN_MESSAGES: usize = 4096;
/// How often the status page's slower figures are refreshed (the oldest message is a walk
/// of the queue).
const STATUS_PERIOD_MS: u64 = 1_000;
/// How many destinations in trouble the status page shows.
const STATUS_DESTINATIONS: usize = 10;

struct Control {
    cfg: ControlConfig,
    directory: Arc<DirectoryHandle>,
    manager: QueueManager,
    log: ShardLog,
    segments: RecordReader,
    local: LocalDelivery,
    delivery: DeliveryHandle,
    /// The list thread: messages for lists' addresses.
    lists: super::lists::ListsHandle,
    /// Runs and reaps mailboxes' delivery-event programs.
    events: EventRunner,
    /// What every segment holds: which ones can be retired.
    reclaimer: Reclaimer,
    /// Marks appended and not yet durable, in order (their completions come in that order).
    unsynced_marks: VecDeque<Mark>,
    reclaimed: u64,
    /// The reclaimer changed since compaction last looked for candidates; it looks again
    /// at `compact_after` (Unix ms) at the earliest.
    compact_pending: bool,
    compact_after: u64,
    /// When the slower figures for the status page (oldest message, destinations in
    /// trouble) are next published (Unix ms).
    status_after: u64,
    /// The control thread's way into the activity log.
    activity: Option<crate::obs::Emitter>,
    /// Published at the end of every turn for the metrics endpoint.
    metrics: Arc<crate::obs::metrics::ControlMetrics>,
}

/// Starts the control thread. `recovered` are the unfinished messages found at start;
/// `max_id` the largest queue id seen (the ids of generated messages go above it).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    cfg: ControlConfig,
    directory: Arc<DirectoryHandle>,
    usage: Arc<UsageCache>,
    recovered: Vec<QueuedMessage>,
    reclaimer: Reclaimer,
    tail: Option<ShardTail>,
    max_id: QueueId,
    rx: Receiver<ControlMsg>,
    delivery: DeliveryHandle,
    lists: super::lists::ListsHandle,
    activity: Option<crate::obs::Emitter>,
    metrics: Arc<crate::obs::metrics::ControlMetrics>,
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
    // The shards said it already if the file system refuses it.
    if cfg.direct_io {
        let _ = log.use_direct_io();
    }
    let replies = std::fs::read(cfg.data_dir.join("autoreply.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut manager = QueueManager::new(cfg.manager.clone(), max_id, replies);
    let suspended = crate::queue::requests::load_suspended(&cfg.data_dir);
    if !suspended.is_empty() {
        log::info!("control: destinations suspended: {}", suspended.join(", "));
        let _ = manager.handle_destinations(0, "suspend", &suspended);
    }
    let queued = recovered.len();
    let now = Now::system().unix_ms;
    manager.reserve(recovered.len());
    for m in recovered {
        manager.handle_recovered(now, m);
    }
    log::debug!("control: {queued} queued message(s) taken over from recovery");
    let local = LocalDelivery::new(cfg.maildir_root.clone(), usage);
    local.load_usage(&directory.current());
    let segments = RecordReader::new(&cfg.spool);
    let c = Control {
        cfg,
        directory,
        manager,
        log,
        segments,
        local,
        delivery,
        lists,
        events: EventRunner::new()
            .map_err(|e| crate::spool::SpoolError::io("start the delivery-event reaper", &dir, 0, e))?,
        reclaimer,
        unsynced_marks: VecDeque::new(),
        reclaimed: 0,
        compact_pending: false,
        compact_after: 0,
        status_after: 0,
        activity,
        metrics,
    };
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || c.run(rx, stop))
        .map_err(|e| crate::spool::SpoolError::io("start control thread", std::path::Path::new("."), 0, e))
}

impl Control {
    /// Runs until `stop` is set, which the server does once every shard has drained.
    fn run(mut self, rx: Receiver<ControlMsg>, stop: Arc<AtomicBool>) {
        loop {
            let now = Now::system().unix_ms;
            let wait = self
                .manager
                .poll_timeout()
                .map_or(MAX_WAIT, |t| Duration::from_millis(t.saturating_sub(now)).min(MAX_WAIT));
            let first = rx.recv_timeout(wait);
            // Take what else is waiting, so that deliveries and marks batch (a bounded
            // number: the turn's timers and sync come after it).
            let mut batch = Vec::new();
            if let Ok(m) = first {
                batch.push(m);
                while batch.len() < MAX_TURN_MESSAGES
                    && let Ok(m) = rx.try_recv()
                {
                    batch.push(m);
                }
            }
            // One reading of the clock per turn, after every message of the turn arrived:
            // everything this turn decides uses it, and no event it logs is dated before
            // the event of a shard that led to it.
            let now = Now::system().unix_ms;
            for m in batch {
                self.handle(m, now);
            }
            self.turn(now);
            if stop.load(Ordering::Relaxed) {
                // The shards are gone: take what they sent last, then stop. Deliveries still
                // out are tried again after the restart (no final mark).
                while let Ok(m) = rx.try_recv() {
                    self.handle(m, now);
                }
                break;
            }
        }
        self.turn(Now::system().unix_ms);
        // The queue as it stands now, for `queue show` while the server is stopped.
        let mut places = self.manager.places();
        if let Err(e) = crate::spool::snapshot::write(&self.cfg.spool, &mut places) {
            log::warn!("control: writing the queue snapshot: {e} (queue show replays the spool until the next stop)");
        }
        let stats = self.manager.stats();
        log::info!(
            "control: {} local deliveries, {} remote, {} spool segment(s) retired",
            stats.delivered,
            stats.relayed,
            self.reclaimed
        );
    }

    /// The end of a loop turn: what is due is tried, the turn's marks and messages are made
    /// durable in one sync, spent segments are retired.
    fn turn(&mut self, now: u64) {
        self.manager.handle_timeout(now, &self.directory.current());
        self.execute(now);
        self.flush_log(now);
        self.reclaim(now);
        let (m, stats) = (&self.metrics, self.manager.stats());
        m.queued.set(self.manager.len() as u64);
        m.active.set(self.manager.active() as u64);
        m.set_stats(&stats);
        m.segments_retired.set(self.reclaimed);
        if now >= self.status_after {
            self.status_after = now + STATUS_PERIOD_MS;
            m.oldest_id.set(self.manager.oldest().map_or(0, |id| id.0));
            let top = self.manager.deferred_destinations(STATUS_DESTINATIONS);
            if let Ok(mut d) = m.deferred_destinations.lock() {
                *d = top;
            }
        }
    }

    fn handle(&mut self, m: ControlMsg, now: u64) {
        match m {
            ControlMsg::Wake => {}
            ControlMsg::Accepted(v) => {
                let dir = self.directory.current();
                for a in v {
                    self.reclaimer.message_stored(a.shard, a.location.seq, a.envelope.id, a.envelope.rcpts.len());
                    self.manager.handle_accepted(now, &dir, a.envelope, a.shard, a.location);
                }
            }
            ControlMsg::Outcome(o) => self.manager.handle_outcome(now, o),
            ControlMsg::Destinations(op, domains, answer) => {
                use crate::queue::requests::{DestinationsAnswer, save_suspended};
                let a = match self.manager.handle_destinations(now, &op, &domains) {
                    Ok(list) => {
                        let saved = if op == "list" { Ok(()) } else { save_suspended(&self.cfg.data_dir, &list) };
                        self.execute(now);
                        match saved {
                            Ok(()) => DestinationsAnswer { suspended: list, error: None },
                            Err(e) => DestinationsAnswer { suspended: list, error: Some(format!("saving it: {e}")) },
                        }
                    }
                    Err(e) => DestinationsAnswer { suspended: Vec::new(), error: Some(e) },
                };
                let _ = answer.send(a);
            }
            ControlMsg::RefreshUsage(answer) => {
                let _ = answer.send(self.local.load_usage(&self.directory.current()));
            }
            ControlMsg::Drafts(drafts, answer) => {
                self.manager.handle_drafts(now, drafts);
                self.execute(now);
                let _ = answer.send(self.flush_log(now));
            }
            ControlMsg::Queue(req, answer) => {
                let mut a = self.manager.handle_queue_request(now, &req);
                self.execute(now);
                // Marks are durable before the answer goes back.
                if !self.flush_log(now) {
                    a.error =
                        Some("writing to the spool failed (see the server log): the change may not be durable".into());
                }
                let _ = answer.send(a);
            }
        }
    }

    /// Executes the manager's actions until it has none left. Maildir copies are staged as
    /// they come and committed together once the manager has nothing else to say; their
    /// outcomes may lead to more actions (marks, reports), executed in the same way.
    fn execute(&mut self, now: u64) {
        let dir = self.directory.current();
        loop {
            while let Some(a) = self.manager.poll_action() {
                match a {
                    Action::ReadMessage { id, at } => {
                        let r = self.segments.read(at.shard(), at.seq(), at.offset());
                        let r = r.map(|(e, c)| (e, Arc::from(c)));
                        self.manager.handle_message(now, &dir, id, r);
                    }
                    Action::SubmitRemote(job) => self.delivery.submit(job),
                    Action::StageMaildir(copy) => self.local.stage(copy),
                    Action::DeliverLmtp(batch) => match &self.cfg.lmtp {
                        Some(route) => self.delivery.submit_lmtp(route, batch),
                        None => {
                            let result = Err("no LMTP server configured".to_string());
                            self.manager
                                .handle_outcome(now, Outcome::Lmtp { id: batch.id, batch: batch.batch, result });
                        }
                    },
                    Action::AppendMark(m) => self.append_mark(m),
                    Action::Generate(g) => self.generate(g),
                    Action::KeepBadmail { id, content } => self.keep_badmail(id, content),
                    Action::RunEvent { program, postoffice, mailbox, file } => {
                        self.events.run(&program, &postoffice, &mailbox, &file, self.cfg.event_timeout)
                    }
                    Action::SaveReplies => self.save_replies(),
                    Action::ListMail(job) => self.lists.submit(job),
                }
            }
            let outcomes = self.local.commit();
            if outcomes.is_empty() {
                break;
            }
            for o in outcomes {
                self.manager.handle_outcome(now, o);
            }
        }
        let activity = self.manager.take_activity();
        if let Some(em) = &self.activity {
            for a in activity {
                em.emit(a);
            }
        }
    }

    /// Appends a generated message to the control log; it joins the queue once durable.
    fn generate(&mut self, g: Generate) {
        let (envelope, data) = match g {
            Generate::Message(m) => (m.envelope, m.data),
            Generate::Dsn { id, original, content, reports, now_ms } => {
                let hostname = &self.cfg.manager.hostname;
                let message_id = format!("{id}.dsn@{hostname}");
                let boundary = format!("{id}/{hostname}");
                let input = DsnInput {
                    reporting_mta: hostname,
                    envelope: &original,
                    content: &content,
                    reports: &reports,
                    now_ms,
                    boundary: &boundary,
                    message_id: &message_id,
                    config: self.cfg.dsn.clone(),
                };
                // Nothing when no recipient's NOTIFY asks for this report.
                let Some(d) = dsn::build(&input) else { return };
                let mut envelope = Envelope::new(id);
                envelope.received_ms = now_ms;
                envelope.rcpts = vec![Recipient { address: d.to, notify: None, orcpt: None }];
                (envelope, d.content)
            }
        };
        self.log.append(TOKEN_MESSAGE, NewMessage { envelope, data });
    }

    /// An undeliverable report (its message came from the null sender) goes to the bad-mail
    /// folder, for the operator.
    fn keep_badmail(&mut self, id: QueueId, content: Arc<[u8]>) {
        let dir = self.cfg.data_dir.join("badmail");
        let path = dir.join(format!("{id}.eml"));
        let r = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, content));
        match r {
            Ok(()) => log::warn!("control: {id}: undeliverable system message kept in {}", path.display()),
            Err(e) => log::error!("control: {id}: writing {}: {e}", path.display()),
        }
    }

    fn save_replies(&self) {
        let path = self.cfg.data_dir.join("autoreply.json");
        let tmp = path.with_extension("json.tmp");
        let r = serde_json::to_vec(self.manager.replies())
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            log::warn!("control: saving {}: {e}", path.display());
        }
    }

    /// Makes the marks and messages appended this turn durable, in one sync. False when a
    /// record could not be written.
    fn flush_log(&mut self, now: u64) -> bool {
        if !self.log.wants_batch() {
            return true;
        }
        let mut ok = true;
        for c in self.log.flush_sync(true) {
            ok &= c.result.is_ok();
            self.stored(c, now);
        }
        ok
    }

    /// A record of the control log is durable: a generated message joins the queue, a copy
    /// made by compaction replaces the old location, a mark counts toward reclaiming.
    fn stored(&mut self, c: Completion, now: u64) {
        let mark = if c.token == TOKEN_MARK { self.unsynced_marks.pop_front() } else { None };
        match c.result {
            Ok(stored) if c.token == TOKEN_MESSAGE => {
                if let Some(envelope) = stored.envelope {
                    let l = stored.location;
                    self.reclaimer.message_stored(CONTROL_SHARD, l.seq, envelope.id, envelope.rcpts.len());
                    self.manager.handle_accepted(now, &self.directory.current(), envelope, CONTROL_SHARD, l);
                }
            }
            Ok(stored) if c.token == TOKEN_MOVE => {
                let l = stored.location;
                if let Some(envelope) = &stored.envelope {
                    self.reclaimer.message_stored(CONTROL_SHARD, l.seq, envelope.id, envelope.rcpts.len());
                }
                self.manager.handle_moved(stored.id, At::new(CONTROL_SHARD, l));
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
}
