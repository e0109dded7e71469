//! The queue manager: every decision of the delivery side, with no file, socket, thread or
//! clock inside (the session's contract, quinn-proto style).
//!
//! The driver feeds it what happened — a message made durable
//! ([`QueueManager::handle_accepted`]), a message found at start
//! ([`QueueManager::handle_recovered`]), the clock ([`QueueManager::handle_timeout`]), the
//! message it was asked to read ([`QueueManager::handle_message`]), the result of a delivery
//! ([`QueueManager::handle_outcome`]), an operator's request
//! ([`QueueManager::handle_queue_request`]) — and executes what
//! [`QueueManager::poll_action`] returns until it returns nothing, then sleeps until
//! [`QueueManager::poll_timeout`] or the next input. Every `now` is Unix milliseconds, the
//! unit of the spool's marks, so the whole queue is tested on a simulated clock
//! (`manager_tests.rs`).
//!
//! # Memory
//!
//! Every queued message has a compact entry ([`super::entries`]: where its record is, when
//! it is due, two bits per recipient); its envelope and content are loaded only while it is
//! worked on, for at most [`ManagerConfig::active_limit`] messages at a time (Postfix's
//! active queue). What is due beyond that waits for room, in due order.
//!
//! # One message's way
//!
//! Due → `ReadMessage` → its open recipients are routed (local, remote by route, or held for
//! an accept-all domain with nowhere to send) → one `SubmitRemote` per route, and for the
//! local recipients the directory's expansion: one `StageMaildir` per mailbox copy, one
//! `DeliverLmtp` per LMTP transaction → outcomes → one `AppendMark` per recipient, reports
//! to the sender (`Generate`), forwards for redirects elsewhere, auto-replies and delivery
//! events → unloaded, due again at the retry time, or forgotten once every recipient is
//! final (the spool keeps the message until its segment is reclaimed).
//!
//! The driver makes the marks and generated messages of one turn durable in one sync, so a
//! report is never written without the marks that caused it, nor the reverse.

use super::actions::{Action, At, Draft, Generate, ListJob, LmtpBatch, MaildirCopy, Outcome, RemoteJob, RemoteOutcome};
use super::entries::{Entries, Entry, Rcpt, RcptStates, Want};
use super::outcome::{self, Answered, Attempted, MarkFor};
use super::requests::{BOUNCED_TEXT, DELETED_TEXT, HELD_TEXT, Located, QueueAnswer, QueueOp, QueueRequest};
use super::timer::second_of;
use super::{DelayNoticeConfig, RetryConfig, TimerQueue};
use crate::delivery::autoreply::{self, ReplyMemory};
use crate::delivery::client::{DsnParams, Response};
use crate::delivery::dsn::{self, Action as DsnAction, RecipientReport};
use crate::delivery::lmtp::LmtpRoute;
use crate::directory::{AutoResponder, Destination, Directory, ExpandProblem};
use crate::obs::{Activity, What};
use crate::routing::{Route, RoutingConfig, Where, route_of};
use crate::spool::{
    CONTROL_SHARD, Envelope, IdGen, Location, Mark, MarkStatus, NewMessage, QueueId, QueuedMessage, Recipient,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// What the manager decides by.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Our host name (message ids of generated mail).
    pub hostname: String,
    /// Pause before retrying a local delivery that failed for a transient reason.
    pub local_retry: Duration,
    pub catch_alls: bool,
    /// Header naming the original recipients of a catch-all copy.
    pub catch_all_header: String,
    /// An auto-responder answers one sender at most once per period (RFC 3834 §2).
    pub autoreply_period: Duration,
    /// Accept-all domains of the configuration (their mail is relayed only when a smart
    /// host applies; else it is held).
    pub local_domains: HashSet<String>,
    pub routing: RoutingConfig,
    pub retry: RetryConfig,
    pub delay_notice: DelayNoticeConfig,
    /// Which mailboxes go to an LMTP server instead of Maildirs.
    pub lmtp: Option<LmtpRoute>,
    /// Messages loaded (envelope and content in memory) at most at a time.
    pub active_limit: usize,
    /// Where mail for `postmaster@` a hosted domain goes when the domain has no postmaster
    /// (no address set, no `postmaster` mailbox in its postoffice).
    pub postmaster: Option<String>,
    /// Keep activity-log events for the driver ([`QueueManager::take_activity`]).
    pub activity: bool,
    /// Lists' one-click unsubscription (`[lists] unsubscribe_url`): each member's copy of a
    /// distribution gets its own link.
    pub one_click: Option<Arc<crate::lists::OneClick>>,
}

/// Counters for the exit summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Copies delivered to local mailboxes (Maildir or LMTP).
    pub delivered: u64,
    /// Recipients handed to a next hop.
    pub relayed: u64,
    /// Attempts that left a recipient deferred (local or remote).
    pub deferred: u64,
    /// Recipients failed for good (local or remote; an operator's bounce is not counted).
    pub failed: u64,
    /// Of `deferred` and `failed`, those of remote deliveries.
    pub deferred_remote: u64,
    pub failed_remote: u64,
    /// Messages generated: delivery status notifications by their gravest action
    /// (failed, delayed, delivered or relayed), auto-replies, forwards.
    pub dsn_failed: u64,
    pub dsn_delayed: u64,
    pub dsn_success: u64,
    pub autoreplies: u64,
    pub forwards: u64,
    /// Messages the list manager had sent (distributions, replies, notices, digests).
    pub list_messages: u64,
    /// Reports to the null sender kept in the bad-mail folder instead.
    pub badmail: u64,
}

/// A message in the active window.
#[derive(Debug)]
struct Loaded {
    envelope: Envelope,
    content: Arc<[u8]>,
    /// The local part of the attempt, waiting for its copies' outcomes.
    local: Option<LocalAttempt>,
}

/// The local part of an attempt between the content and the last copy's outcome.
#[derive(Debug)]
struct LocalAttempt {
    /// The local recipients tried: index and lower-cased address.
    rcpts: Vec<(u16, String)>,
    /// Maildir copies by number, then LMTP batches (one entry per recipient).
    copies: Vec<CopyOf>,
    lmtp: Vec<Vec<CopyOf>>,
    /// Outcomes still to come.
    waiting: usize,
    /// Original recipients whose outcome is not simply "delivered".
    outcomes: Vec<(String, LocalOutcome)>,
    /// Addresses elsewhere that redirects and groups lead to, with the original recipients
    /// behind each.
    forwards: Vec<(String, Vec<String>)>,
    /// What the list manager wants sent, queued with the marks (so that a crash neither
    /// loses a post's distribution nor sends it twice).
    drafts: Vec<Draft>,
}

/// One copy: which original recipients it stands for, and the mailbox's hooks.
#[derive(Debug, Clone)]
struct CopyOf {
    originals: Vec<String>,
    delivered_to: String,
    hooks: Option<Hooks>,
    /// Taken by the list manager, not a mailbox.
    list: bool,
}

/// What runs after a copy reaches a mailbox.
#[derive(Debug, Clone)]
struct Hooks {
    postoffice: String,
    mailbox: String,
    autoresponder: Option<AutoResponder>,
    delivery_event: Option<String>,
}

#[derive(Debug, Clone)]
struct LocalOutcome {
    status: MarkStatus,
    reply: Response,
}

/// Records the outcome of the original recipients behind a copy; the worst outcome of any
/// of a recipient's copies is its outcome.
fn note(out: &mut Vec<(String, LocalOutcome)>, originals: &[String], status: MarkStatus, reply: &Response) {
    for o in originals {
        match out.iter_mut().find(|(a, _)| a == o) {
            Some((_, prev)) if prev.status == MarkStatus::Failed => {}
            Some((_, prev)) => *prev = LocalOutcome { status, reply: reply.clone() },
            None => out.push((o.clone(), LocalOutcome { status, reply: reply.clone() })),
        }
    }
}

/// Recipients of a VERP job (a list's distribution): sent one transaction each, in order, so
/// a job's size sets how the route's connections share the work.
pub const VERP_BATCH: usize = 50;

fn secs(ms: u64) -> u32 {
    (ms / 1000).min(u32::MAX as u64) as u32
}

fn ms(s: u32) -> Option<u64> {
    (s != 0).then_some(s as u64 * 1000)
}

/// The queue manager (see the module documentation).
pub struct QueueManager {
    cfg: ManagerConfig,
    ids: IdGen,
    /// Every message with a recipient not final yet.
    entries: Entries<Loaded>,
    /// Slots by due time (stale filings are told apart by the entry's own due time).
    due: TimerQueue<u32>,
    /// Messages loaded or being loaded.
    active: usize,
    actions: VecDeque<Action>,
    /// Recipients an operator returned, reported once their message is loaded.
    bounced: HashMap<QueueId, Vec<u16>>,
    /// Activity-log events not yet taken by the driver.
    activity: Vec<Activity>,
    replies: ReplyMemory,
    stats: Stats,
    /// Destinations in trouble, for the status page.
    board: super::board::Board,
    /// Recipient domains an operator suspended: their recipients are held, not tried.
    suspended: std::collections::BTreeSet<String>,
}

impl QueueManager {
    /// `max_id` is the largest queue id seen (generated messages get ids above it);
    /// `replies` the auto-responders' memory as saved.
    pub fn new(cfg: ManagerConfig, max_id: QueueId, replies: ReplyMemory) -> Self {
        QueueManager {
            cfg,
            ids: IdGen::new(CONTROL_SHARD, max_id),
            entries: Entries::default(),
            due: TimerQueue::new(),
            active: 0,
            actions: VecDeque::new(),
            bounced: HashMap::new(),
            activity: Vec::new(),
            replies,
            stats: Stats::default(),
            board: super::board::Board::default(),
            suspended: Default::default(),
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`QueueManager::handle_timeout`] has work next (Unix ms). While the active
    /// window is full, what is due waits for an outcome instead.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.active >= self.cfg.active_limit {
            return None;
        }
        self.due.next_due()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The `n` destinations with the most deferrals since mail last went through to them.
    pub fn deferred_destinations(&self, n: usize) -> Vec<super::board::Deferred> {
        self.board.top(n)
    }

    /// The oldest message in the queue (ids sort by the time they were minted). A walk of
    /// the whole queue: the driver asks for it at most once a second or so.
    pub fn oldest(&self) -> Option<QueueId> {
        self.entries.iter().map(|e| e.id).min()
    }

    /// The auto-responders' memory (to save after [`Action::SaveReplies`]).
    pub fn replies(&self) -> &ReplyMemory {
        &self.replies
    }

    /// Messages queued (a recipient not final yet).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Messages loaded or being loaded.
    pub fn active(&self) -> usize {
        self.active
    }

    /// A message was made durable (by a shard, or a generated one by the driver): due now,
    /// unless every recipient is held (an accept-all domain with nowhere to send it): then
    /// its record is not even read.
    pub fn handle_accepted(&mut self, now: u64, dir: &Directory, envelope: Envelope, shard: u8, location: Location) {
        let n = envelope.rcpts.len().min(u16::MAX as usize) as u16;
        let mut rcpts = RcptStates::new(n);
        let quarantined = envelope.quarantine.is_some();
        for (i, r) in envelope.rcpts.iter().take(n as usize).enumerate() {
            let a = r.address.to_ascii_lowercase();
            if quarantined || route_of(dir, &a, &self.cfg.routing, &self.cfg.local_domains) == Where::Held {
                rcpts.set(i as u16, Rcpt::Held);
            }
        }
        if let Some(why) = &envelope.quarantine {
            log::info!("queue: {}: quarantined: {why}", envelope.id);
            self.note(now, What::Quarantined { id: envelope.id, reason: why.clone() });
        }
        let held = !rcpts.any(Rcpt::Open);
        let mut e = Entry { id: envelope.id, at: At::new(shard, location), rcpts, ..Entry::default() };
        e.set_quarantined(quarantined);
        let slot = self.entries.insert(e);
        if !held {
            self.schedule(slot, now, now);
        }
    }

    /// Makes room for `n` more queued messages (before a replay).
    pub fn reserve(&mut self, n: usize) {
        self.entries.reserve(n);
    }

    /// A message recovery found unfinished: its final recipients stay done, the others are
    /// due at their latest mark's next attempt (now, if they were never tried).
    pub fn handle_recovered(&mut self, now: u64, m: QueuedMessage) {
        let mut rcpts = RcptStates::new(m.latest.len().min(u16::MAX as usize) as u16);
        let mut next: Option<u64> = None;
        for (i, latest) in m.latest.iter().enumerate() {
            match latest {
                Some((status, _)) if status.is_final() => rcpts.set(i as u16, Rcpt::Done),
                // Quarantined since accepted (no mark), or on hold (a hold mark).
                _ if m.quarantined => rcpts.set(i as u16, Rcpt::Held),
                Some((MarkStatus::Deferred, t)) => next = Some(next.map_or(*t, |n| n.min(*t))),
                _ => {}
            }
        }
        let deferred = next.is_some();
        let mut e = Entry {
            id: m.id,
            at: At::new(m.shard, m.location),
            attempts: m.attempts,
            first_attempt_s: if deferred { secs(m.received_ms) } else { 0 },
            last_deferral_s: if deferred { secs(now) } else { 0 },
            rcpts,
            ..Entry::default()
        };
        if m.quarantined {
            e.set_quarantined(true);
        }
        let slot = self.entries.insert(e);
        if !m.quarantined {
            self.schedule(slot, next.unwrap_or(now).max(now), now);
        }
    }

    /// Compaction copied a message forward: its record is now there.
    pub fn handle_moved(&mut self, id: QueueId, at: At) {
        if let Some(e) = self.entries.get_mut(id) {
            e.at = at;
        }
    }

    /// Whether a message may be copied by compaction: queued, not in the active window, and
    /// not due before `not_before` (a held message is never due).
    pub fn is_idle_until(&self, id: QueueId, not_before: u64) -> bool {
        !self.entries.is_loaded(id)
            && self
                .entries
                .get(id)
                .is_some_and(|e| e.want == Want::Nothing && (e.due == 0 || e.due as u64 * 1000 >= not_before))
    }

    /// The activity-log events since the last call (the driver hands them to the writer).
    pub fn take_activity(&mut self) -> Vec<Activity> {
        std::mem::take(&mut self.activity)
    }

    fn note(&mut self, at_ms: u64, what: What) {
        if self.cfg.activity {
            self.activity.push(Activity { at_ms, what });
        }
    }

    /// A recipient's outcome for the activity log.
    #[allow(clippy::too_many_arguments)]
    fn note_outcome(
        &mut self,
        now: u64,
        id: QueueId,
        rcpt: String,
        via: String,
        status: MarkStatus,
        reply: String,
        next_attempt_ms: u64,
    ) {
        let what = match status {
            MarkStatus::Delivered => What::Delivered { id, rcpt, via, reply },
            MarkStatus::Deferred => What::Deferred { id, rcpt, via, reply, next_attempt_ms },
            MarkStatus::Failed | MarkStatus::Deleted => What::Failed { id, rcpt, via, reply },
        };
        self.note(now, what);
    }

    /// Where every queued message's record is (the snapshot written at a clean stop).
    pub fn places(&self) -> Vec<crate::spool::snapshot::Place> {
        self.entries
            .iter()
            .map(|e| crate::spool::snapshot::Place {
                id: e.id,
                shard: e.at.shard(),
                seq: e.at.seq(),
                offset: e.at.offset(),
            })
            .collect()
    }

    /// Where a queued message's record is.
    pub fn location(&self, id: QueueId) -> Option<At> {
        self.entries.get(id).map(|e| e.at)
    }

    /// Files the entry in `slot` as due at `due` (or earlier, if it already is).
    fn schedule(&mut self, slot: u32, due: u64, now: u64) {
        let Some(e) = self.entries.at_slot(slot) else { return };
        let due = if e.due != 0 { (e.due as u64 * 1000).min(due) } else { due };
        let id = e.id;
        // The entry keeps the second its filing is under: the one that ends `due` (the
        // timer's bucket), or the current one when it is due already (the timer's queue of
        // keys due at once).
        let second = if due <= now { now / 1000 } else { second_of(due) };
        if let Some(e) = self.entries.get_mut(id) {
            e.due = u32::try_from(second).unwrap_or(u32::MAX).max(1);
        }
        self.due.insert(slot, due, now);
    }

    /// Tries the messages due at `now`, while the active window has room: a loaded one at
    /// once, the others once their record is read ([`Action::ReadMessage`]).
    pub fn handle_timeout(&mut self, now: u64, dir: &Directory) {
        while self.active < self.cfg.active_limit {
            let Some((slot, filed)) = self.due.pop_due(now) else { break };
            let Some(e) = self.entries.at_slot(slot) else { continue };
            // A stale filing: rescheduled, fired already, or another message in the slot.
            let due = e.due as u64 * 1000;
            let current = e.due != 0 && due <= now && (filed == 0 || due == filed);
            if !current {
                continue;
            }
            let id = e.id;
            if self.load(id, Want::Attempt) {
                self.attempt(now, dir, id);
                self.settle(now, id, None);
            }
        }
    }

    /// Asks for a message's record for `why`; true when it is loaded already.
    fn load(&mut self, id: QueueId, why: Want) -> bool {
        let loaded = self.entries.is_loaded(id);
        let Some(e) = self.entries.get_mut(id) else { return false };
        e.due = 0;
        if loaded {
            return true;
        }
        if e.want == Want::Nothing {
            self.active += 1;
            self.actions.push_back(Action::ReadMessage { id, at: e.at });
            e.want = why;
        } else if why == Want::Bounce {
            e.want = why;
        }
        false
    }

    /// The record asked for by [`Action::ReadMessage`], or why it could not be read (the
    /// attempt is put off by the local retry pause).
    pub fn handle_message(&mut self, now: u64, dir: &Directory, id: QueueId, r: Result<(Envelope, Arc<[u8]>), String>) {
        let Some(e) = self.entries.get_mut(id) else {
            // Deleted while it was read.
            self.active -= 1;
            return;
        };
        let why = std::mem::take(&mut e.want);
        match r {
            Ok((envelope, content)) if envelope.id == id => {
                self.entries.set_loaded(id, Loaded { envelope, content, local: None });
                match why {
                    Want::Bounce => self.bounce_loaded(now, id),
                    _ => self.attempt(now, dir, id),
                }
                self.settle(now, id, None);
            }
            r => {
                let why_not = match r {
                    Err(e) => e,
                    Ok((env, _)) => format!("the record holds {} instead", env.id),
                };
                log::error!("queue: {id}: reading the message: {why_not}");
                self.active -= 1;
                let retry = now + self.cfg.local_retry.as_millis() as u64;
                self.settle(now, id, Some(retry));
            }
        }
    }

    /// Routes the open recipients of a loaded message and sends them on their way.
    fn attempt(&mut self, now: u64, dir: &Directory, id: QueueId) {
        let Some((e, Some(l))) = self.entries.parts_mut(id) else { return };
        let mut local = Vec::new();
        let mut remote: Vec<(Route, u16, String)> = Vec::new();
        // The first attempt says where each recipient goes (the activity log's `routed`).
        let mut routes: Option<Vec<(String, String)>> = (self.cfg.activity && e.attempts == 0).then(Vec::new);
        // A script's route takes every recipient there (its port, or 25).
        let forced = l.envelope.route.as_deref().map(|r| {
            let (host, port) = crate::routing::split_host_port(r).unwrap_or_else(|| (r.to_string(), 25));
            Where::Remote(Route::SmartHost { host, port, auth: None })
        });
        for i in e.rcpts.with(Rcpt::Open).collect::<Vec<_>>() {
            let Some(r) = l.envelope.rcpts.get(i as usize) else { continue };
            let a = r.address.to_ascii_lowercase();
            let w = match &forced {
                Some(w) => w.clone(),
                None => route_of(dir, &a, &self.cfg.routing, &self.cfg.local_domains),
            };
            if let Some(routes) = routes.as_mut() {
                let suspended = matches!(w, Where::Remote(_))
                    && !self.suspended.is_empty()
                    && self.suspended.contains(super::board::domain_of(&a).as_str());
                let name = match &w {
                    _ if suspended => "suspended".to_string(),
                    Where::Local => "local".to_string(),
                    Where::Held => "held".to_string(),
                    Where::Remote(Route::Mx(d)) => format!("mx:{d}"),
                    Where::Remote(Route::SmartHost { host, port, .. }) => format!("smart_host:{host}:{port}"),
                };
                match routes.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, list)) => {
                        list.push(',');
                        list.push_str(&r.address);
                    }
                    None => routes.push((name, r.address.clone())),
                }
            }
            match w {
                Where::Local => local.push((i, a)),
                Where::Remote(_)
                    if !self.suspended.is_empty() && self.suspended.contains(super::board::domain_of(&a).as_str()) =>
                {
                    e.rcpts.set(i, Rcpt::Held);
                    continue;
                }
                Where::Remote(route) => remote.push((route, i, a)),
                Where::Held => {
                    e.rcpts.set(i, Rcpt::Held);
                    continue;
                }
            }
            e.rcpts.set(i, Rcpt::Inflight);
        }
        for (route, rcpts) in routes.into_iter().flatten() {
            self.note(now, What::Routed { id, route, rcpts });
        }
        let Some((e, _)) = self.entries.parts_mut(id) else { return };
        if local.is_empty() && remote.is_empty() {
            return;
        }
        e.attempts = e.attempts.saturating_add(1);
        if !remote.is_empty() && e.first_attempt_s == 0 {
            e.first_attempt_s = secs(now);
        }
        if !remote.is_empty() {
            // A list's distribution goes with a reverse path per recipient (VERP), so that a
            // bounce names the member however the remote server words it.
            let list =
                self.entries.loaded(id).and_then(|l| dir.list_of_bounces(&l.envelope.from)).map(|l| l.address.clone());
            self.submit_remote(id, remote, now, list);
        }
        if !local.is_empty() {
            self.stage_local(now, dir, id, local);
        }
    }

    /// One job per route with the recipients that share it. With `verp`, jobs of at most
    /// [`VERP_BATCH`] recipients, each sent in a transaction of its own from
    /// `bounces+local=host@domain`, one after the other on the job's connection: several
    /// jobs of a route use the route's connections in parallel.
    fn submit_remote(&mut self, id: QueueId, mut rcpts: Vec<(Route, u16, String)>, now: u64, list: Option<String>) {
        let Some(l) = self.entries.loaded(id) else { return };
        let verp = list.is_some();
        let personal = list.zip(self.cfg.one_click.clone()).map(|(l, o)| (o, l));
        rcpts.sort_by(|a, b| a.0.cmp(&b.0));
        let mut start = 0;
        while start < rcpts.len() {
            let same_route = rcpts[start..].iter().take_while(|r| r.0 == rcpts[start].0).count();
            let end = start + if verp { same_route.min(VERP_BATCH) } else { same_route };
            let group: Vec<(u16, String)> = rcpts[start..end].iter().map(|(_, i, a)| (*i, a.clone())).collect();
            let env = &l.envelope;
            let dsn = DsnParams {
                ret: env.ret,
                envid: env.envid.clone(),
                rcpts: group
                    .iter()
                    .map(|(i, _)| env.rcpts.get(*i as usize).map_or((None, None), |r| (r.notify, r.orcpt.clone())))
                    .collect(),
            };
            self.actions.push_back(Action::SubmitRemote(RemoteJob {
                id,
                from: env.from.clone(),
                verp,
                personal: personal.clone(),
                rcpts: group,
                content: l.content.clone(),
                smtputf8: env.smtputf8,
                dsn,
                auth: env.auth.clone(),
                route: rcpts[start].0.clone(),
                seed: id.0 ^ now,
            }));
            start = end;
        }
    }

    /// Expands the local recipients and asks for one copy per mailbox (Maildir or LMTP).
    fn stage_local(&mut self, now: u64, dir: &Directory, id: QueueId, rcpts: Vec<(u16, String)>) {
        // A list's distribution with one-click unsubscription: each mailbox's copy names its
        // own link.
        let one_click = self
            .entries
            .loaded(id)
            .and_then(|l| dir.list_of_bounces(&l.envelope.from))
            .map(|l| l.address.clone())
            .zip(self.cfg.one_click.clone());
        let Some(l) = self.entries.loaded_mut(id) else { return };
        let content = l.content.clone();
        let addrs: Vec<&str> = rcpts.iter().map(|(_, a)| a.as_str()).collect();
        let expansion = dir.expand_all(&addrs, self.cfg.catch_alls);
        let mut a = LocalAttempt {
            rcpts: Vec::new(),
            copies: Vec::new(),
            lmtp: Vec::new(),
            waiting: 0,
            outcomes: Vec::new(),
            forwards: Vec::new(),
            drafts: Vec::new(),
        };
        let with_header = |originals: &[String]| -> Arc<[u8]> {
            let mut c = Vec::with_capacity(content.len() + 128);
            c.extend_from_slice(format!("{}: {}\r\n", self.cfg.catch_all_header, originals.join(", ")).as_bytes());
            c.extend_from_slice(&content);
            c.into()
        };
        // The plain LMTP copies go in one transaction; a catch-all copy (its content
        // differs) in one of its own.
        let mut lmtp_plain: Vec<CopyOf> = Vec::new();
        let mut lmtp_batches: Vec<(Vec<CopyOf>, Arc<[u8]>)> = Vec::new();
        for t in &expansion.targets {
            let (maildir, delivered_to) = match &t.destination {
                Destination::Mailbox { maildir, delivered_to } => (maildir, delivered_to),
                Destination::List { list, role } => {
                    self.actions.push_back(Action::ListMail(ListJob {
                        id,
                        copy: a.copies.len() as u16,
                        list: list.clone(),
                        role: role.clone(),
                        from: l.envelope.from.clone(),
                        content: content.clone(),
                    }));
                    let originals = t.original_recipients.clone();
                    a.copies.push(CopyOf { originals, delivered_to: list.clone(), hooks: None, list: true });
                    continue;
                }
                // A redirect or group member elsewhere: forwarded as a new message once the
                // local copies are done.
                Destination::Remote(address) | Destination::Relay { address, .. } => {
                    a.forwards.push((address.clone(), t.original_recipients.clone()));
                    continue;
                }
            };
            let mb = dir.mailbox_by_maildir(maildir);
            let copy = CopyOf {
                originals: t.original_recipients.clone(),
                delivered_to: delivered_to.clone(),
                hooks: mb.filter(|m| m.autoresponder.is_some() || m.delivery_event.is_some()).map(|m| Hooks {
                    postoffice: m.postoffice.clone(),
                    mailbox: m.name.clone(),
                    autoresponder: m.autoresponder.clone(),
                    delivery_event: m.delivery_event.clone(),
                }),
                list: false,
            };
            let body = match &one_click {
                Some((list, oc)) => {
                    let member = t.original_recipients.first().map_or(delivered_to.as_str(), |s| s.as_str());
                    Arc::from(oc.personalize(list, member, &content))
                }
                None if t.catch_all => with_header(&t.original_recipients),
                None => content.clone(),
            };
            if self.cfg.lmtp.as_ref().is_some_and(|l| l.applies_to(delivered_to)) {
                if t.catch_all {
                    lmtp_batches.push((vec![copy], body));
                } else {
                    lmtp_plain.push(copy);
                }
                continue;
            }
            self.actions.push_back(Action::StageMaildir(MaildirCopy {
                id,
                copy: a.copies.len() as u16,
                maildir: maildir.clone(),
                quota: mb.map_or(0, |m| m.quota_bytes),
                from: l.envelope.from.clone(),
                delivered_to: delivered_to.clone(),
                body,
            }));
            a.copies.push(copy);
        }
        if !lmtp_plain.is_empty() {
            lmtp_batches.insert(0, (lmtp_plain, content.clone()));
        }
        for (copies, body) in lmtp_batches {
            self.actions.push_back(Action::DeliverLmtp(LmtpBatch {
                id,
                batch: a.lmtp.len() as u16,
                from: l.envelope.from.clone(),
                rcpts: copies.iter().map(|c| c.delivered_to.clone()).collect(),
                body,
            }));
            a.lmtp.push(copies);
        }
        for problem in &expansion.problems {
            // RFC 5321 §4.5.1: postmaster must work. With no mailbox for it in the domain,
            // the configured fallback gets it (unless it is that very address).
            if let ExpandProblem::UnresolvedPostmaster { address } = problem
                && let Some(fallback) = self.cfg.postmaster.as_ref().filter(|f| !f.eq_ignore_ascii_case(address))
            {
                a.forwards.push((fallback.clone(), vec![address.clone()]));
                continue;
            }
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
                    // No fallback either: held for the operator, never bounced.
                    let reply = Response::new(451, Some("4.3.0"), "postmaster has no mailbox");
                    (address.clone(), (MarkStatus::Deferred, reply))
                }
            };
            note(&mut a.outcomes, &[addr], status, &reply);
        }
        a.waiting = a.copies.len() + a.lmtp.len();
        a.rcpts = rcpts;
        let nothing_out = a.waiting == 0;
        l.local = Some(a);
        if nothing_out {
            self.finish_local(now, id);
        }
    }

    /// The result of an action.
    pub fn handle_outcome(&mut self, now: u64, o: Outcome) {
        match o {
            Outcome::Remote(o) => {
                let id = o.id;
                self.remote_done(now, o);
                self.settle(now, id, None);
            }
            Outcome::Maildir { id, copy, result } => {
                let Some(a) = self.local_attempt(id) else { return };
                let Some(c) = a.copies.get(copy as usize).cloned() else { return };
                a.waiting -= 1;
                match result {
                    Ok(file) => self.delivered(now, id, &c, Some(file)),
                    Err(f) => {
                        let status = if f.permanent { MarkStatus::Failed } else { MarkStatus::Deferred };
                        note(&mut a.outcomes, &c.originals, status, &f.reply);
                    }
                }
                self.maybe_finish_local(now, id);
            }
            Outcome::Lmtp { id, batch, result } => {
                let Some(a) = self.local_attempt(id) else { return };
                let Some(copies) = a.lmtp.get(batch as usize).cloned() else { return };
                a.waiting -= 1;
                match result {
                    Ok(results) => {
                        for (c, r) in copies.iter().zip(results) {
                            match r {
                                Ok(()) => self.delivered(now, id, c, None),
                                Err(f) => {
                                    let status = if f.permanent { MarkStatus::Failed } else { MarkStatus::Deferred };
                                    if let Some(a) = self.local_attempt(id) {
                                        note(&mut a.outcomes, &c.originals, status, &f.reply);
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        log::warn!("queue: {id}: LMTP server: {e}");
                        let reply = Response::new(451, Some("4.4.1"), &format!("LMTP server: {e}"));
                        for c in &copies {
                            note(&mut a.outcomes, &c.originals, MarkStatus::Deferred, &reply);
                        }
                    }
                }
                self.maybe_finish_local(now, id);
            }
            Outcome::List { id, copy, result } => {
                let Some(a) = self.local_attempt(id) else { return };
                let Some(c) = a.copies.get(copy as usize).cloned() else { return };
                a.waiting -= 1;
                match result {
                    Ok(drafts) => a.drafts.extend(drafts),
                    Err(f) => {
                        let status = if f.permanent { MarkStatus::Failed } else { MarkStatus::Deferred };
                        note(&mut a.outcomes, &c.originals, status, &f.reply);
                    }
                }
                self.maybe_finish_local(now, id);
            }
        }
    }

    /// Messages the list manager wants sent outside any message's delivery (a digest that
    /// came due, a post approved from the command line).
    pub fn handle_drafts(&mut self, now: u64, drafts: Vec<Draft>) {
        for d in drafts {
            self.draft(now, QueueId(0), d);
        }
    }

    /// Queues a list manager's message; `about` is the message that caused it (0: none).
    fn draft(&mut self, now: u64, about: QueueId, d: Draft) {
        if d.to.is_empty() {
            return;
        }
        let new_id = self.ids.next(now / 1000);
        self.stats.list_messages += 1;
        self.note(now, What::Generated { id: new_id, kind: d.kind, about, to: d.to.join(",") });
        self.generate(new_id, now, d.from, d.to, d.data, |_| {});
    }

    fn local_attempt(&mut self, id: QueueId) -> Option<&mut LocalAttempt> {
        self.entries.loaded_mut(id)?.local.as_mut()
    }

    fn maybe_finish_local(&mut self, now: u64, id: QueueId) {
        if self.local_attempt(id).is_some_and(|a| a.waiting == 0) {
            self.finish_local(now, id);
        }
    }

    /// A copy reached its mailbox: the auto-responder and the delivery-event program.
    fn delivered(&mut self, now: u64, id: QueueId, c: &CopyOf, file: Option<std::path::PathBuf>) {
        self.stats.delivered += 1;
        let Some(h) = &c.hooks else { return };
        let Some(l) = self.entries.loaded(id) else { return };
        let head = &l.content[..l.content.len().min(16 * 1024)];
        let sender = l.envelope.from.clone();
        if autoreply::should_reply(&sender, head).is_err() {
            return;
        }
        if let Some(ar) = &h.autoresponder
            && self.replies.try_record(&c.delivered_to, &sender, now, self.cfg.autoreply_period).is_ok()
        {
            let reply_id = self.ids.next(now / 1000);
            let message_id = format!("{reply_id}.autoreply@{}", self.cfg.hostname);
            let data = autoreply::build(&autoreply::ReplyInput {
                from: &c.delivered_to,
                to: &sender,
                subject: &ar.subject,
                body: &ar.body,
                reply_to: ar.reply_to.as_deref(),
                original_head: head,
                now_ms: now,
                message_id: &message_id,
            });
            // RFC 3834 §3.3: an automatic response has a null reverse path.
            self.stats.autoreplies += 1;
            self.note(now, What::Generated { id: reply_id, kind: "autoreply", about: id, to: sender.clone() });
            self.generate(reply_id, now, String::new(), vec![sender], data, |_| {});
            self.actions.push_back(Action::SaveReplies);
        }
        // The delivery event names the Maildir file: there is none for an LMTP copy.
        if let (Some(program), Some(file)) = (&h.delivery_event, file) {
            self.actions.push_back(Action::RunEvent {
                program: program.clone(),
                postoffice: h.postoffice.clone(),
                mailbox: h.mailbox.clone(),
                file,
            });
        }
    }

    /// Every copy of the local part is done: one mark per local recipient, a report for the
    /// failed ones, forwards for redirects elsewhere, and the local retry if one deferred.
    fn finish_local(&mut self, now: u64, id: QueueId) {
        let Some((e, Some(l))) = self.entries.parts_mut(id) else { return };
        let Some(a) = l.local.take() else { return };
        let retry_at = now + self.cfg.local_retry.as_millis() as u64;
        let mut retry = false;
        let mut reports = Vec::new();
        let mut outcomes_for_log = Vec::new();
        for (i, addr) in &a.rcpts {
            let o = a.outcomes.iter().find(|(x, _)| x == addr).map(|(_, o)| o);
            let in_a_mailbox = a.copies.iter().chain(a.lmtp.iter().flatten()).any(|c| c.originals.contains(addr));
            let to_list = a.copies.iter().any(|c| c.list && c.originals.contains(addr));
            let (status, reply) = match o {
                None if to_list => (MarkStatus::Delivered, Response::new(250, Some("2.0.0"), "taken by the list")),
                None if in_a_mailbox => {
                    (MarkStatus::Delivered, Response::new(250, Some("2.0.0"), "delivered to mailbox"))
                }
                None => (MarkStatus::Delivered, Response::new(250, Some("2.0.0"), "forwarded")),
                Some(o) => (o.status, o.reply.clone()),
            };
            // An operator's decision while the copies were out stands.
            if e.rcpts.get(*i) != Rcpt::Inflight {
                continue;
            }
            let next_attempt_ms = if status == MarkStatus::Deferred {
                retry = true;
                e.rcpts.set(*i, Rcpt::Open);
                retry_at
            } else {
                e.rcpts.set(*i, Rcpt::Done);
                0
            };
            match status {
                MarkStatus::Deferred => {
                    self.stats.deferred += 1;
                    self.board.deferred(super::board::LOCAL, &reply.to_string(), now);
                }
                MarkStatus::Failed => self.stats.failed += 1,
                MarkStatus::Delivered => self.board.delivered(super::board::LOCAL),
                MarkStatus::Deleted => {}
            }
            if status == MarkStatus::Failed {
                reports.push(failure_report(*i as usize, &reply, now));
            }
            let text = reply.to_string();
            if self.cfg.activity {
                // A copy in a mailbox; redirected elsewhere; or decided locally (unknown, full).
                let via = match (in_a_mailbox, o.is_some()) {
                    _ if to_list => "list",
                    (true, _) => "mailbox",
                    (false, false) => "forward",
                    (false, true) => "local",
                };
                let what = (addr.clone(), via.to_string(), status, text.clone(), next_attempt_ms);
                outcomes_for_log.push(what);
            }
            let mark = Mark { id, rcpt: Some(*i), status, attempts: e.attempts, next_attempt_ms, text };
            self.actions.push_back(Action::AppendMark(mark));
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
        let (env, content) = (l.envelope.clone(), l.content.clone());
        for d in a.drafts {
            self.draft(now, id, d);
        }
        for (rcpt, via, status, reply, next) in outcomes_for_log {
            self.note_outcome(now, id, rcpt, via, status, reply, next);
        }
        if !to.is_empty() {
            log::info!("queue: {id}: forwarded to {}", to.join(", "));
            let fwd_id = self.ids.next(now / 1000);
            self.stats.forwards += 1;
            self.note(now, What::Generated { id: fwd_id, kind: "forward", about: id, to: to.join(",") });
            self.generate(fwd_id, now, env.from.clone(), to, content.to_vec(), |e| {
                e.body = env.body;
                e.smtputf8 = env.smtputf8;
                e.auth = env.auth.clone();
            });
        }
        if !reports.is_empty() {
            self.report(now, &env, content, reports);
        }
        self.settle(now, id, retry.then_some(retry_at));
    }

    /// A remote job came back: one mark per recipient, retries per the schedule, reports for
    /// failures (and successes asked for with NOTIFY=SUCCESS), a delay notice when due.
    fn remote_done(&mut self, now: u64, mut o: RemoteOutcome) {
        let Some((e, l)) = self.entries.parts_mut(o.id) else { return };
        // Only recipients still out count: an operator may have decided meanwhile.
        o.results.retain(|(i, _)| e.rcpts.get(*i) == Rcpt::Inflight);
        let Some(l) = l else { return };
        if o.results.is_empty() {
            return;
        }
        let attempts = e.attempts.max(1);
        let m = Attempted {
            received_ms: l.envelope.received_ms,
            attempts: attempts as u32,
            first_attempt_ms: ms(e.first_attempt_s),
            last_deferral_ms: ms(e.last_deferral_s),
            due_ms: (e.due != 0).then_some(e.due as u64 * 1000),
        };
        let via = o.remote_mta.clone().unwrap_or_else(|| "-".into());
        let server = Answered { remote_mta: o.remote_mta, peer_dsn: o.peer_dsn };
        let j = outcome::judge(&self.cfg.retry, &self.cfg.delay_notice, m, &server, o.results, now);
        self.stats.relayed += j.relayed;
        let mut log_lines = Vec::new();
        for mark in j.marks {
            match mark.status {
                MarkStatus::Deferred => {
                    self.stats.deferred += 1;
                    self.stats.deferred_remote += 1;
                }
                MarkStatus::Failed => {
                    self.stats.failed += 1;
                    self.stats.failed_remote += 1;
                }
                _ => {}
            }
            let tracked =
                mark.status == MarkStatus::Deferred || (mark.status == MarkStatus::Delivered && !self.board.is_empty());
            if tracked && let Some(r) = l.envelope.rcpts.get(mark.rcpt as usize) {
                let domain = super::board::domain_of(&r.address);
                if mark.status == MarkStatus::Deferred {
                    self.board.deferred(&domain, &mark.text, now);
                } else {
                    self.board.delivered(&domain);
                }
            }
            let state = if mark.status == MarkStatus::Deferred { Rcpt::Open } else { Rcpt::Done };
            e.rcpts.set(mark.rcpt, state);
            let MarkFor { rcpt, status, text, next_attempt_ms } = mark;
            if self.cfg.activity {
                let address = l.envelope.rcpts.get(rcpt as usize).map_or_else(String::new, |r| r.address.clone());
                log_lines.push((address, status, text.clone(), next_attempt_ms));
            }
            self.actions.push_back(Action::AppendMark(Mark {
                id: o.id,
                rcpt: Some(rcpt),
                status,
                attempts,
                next_attempt_ms,
                text,
            }));
        }
        if j.deferred {
            e.last_deferral_s = secs(now);
        }
        let (env, content) = (l.envelope.clone(), l.content.clone());
        for (rcpt, status, reply, next) in log_lines {
            self.note_outcome(now, o.id, rcpt, via.clone(), status, reply, next);
        }
        if !j.reports.is_empty() {
            self.report(now, &env, content, j.reports);
        }
        if let Some(t) = j.next_due_ms {
            self.settle(now, o.id, Some(t));
        }
    }

    /// Schedules a message at `due` (the earlier of it and any time already set); unloads it
    /// when nothing of it is out; forgets it once every recipient is final.
    fn settle(&mut self, now: u64, id: QueueId, due: Option<u64>) {
        let Some(slot) = self.entries.slot_of(id) else { return };
        if let Some(t) = due {
            self.schedule(slot, t, now);
        }
        let Some((e, l)) = self.entries.parts_mut(id) else { return };
        let busy = e.want != Want::Nothing || e.rcpts.any(Rcpt::Inflight) || l.is_some_and(|l| l.local.is_some());
        if busy {
            return;
        }
        let done = !e.rcpts.any(Rcpt::Open) && !e.rcpts.any(Rcpt::Held);
        if self.entries.take_loaded(id).is_some() {
            self.active -= 1;
        }
        if done {
            self.entries.remove(id);
        }
    }

    /// A report to the sender of `env`, or the message to the bad-mail folder when it came
    /// from the null sender (a report that bounced). Only the reports some recipient's
    /// NOTIFY asks for (RFC 3461 §4.1) count.
    fn report(&mut self, now: u64, env: &Envelope, content: Arc<[u8]>, mut reports: Vec<RecipientReport>) {
        // `[delivery.retry] expired = "badmail"`: a message out of time goes to the operator
        // instead of back to its sender (RFC 3463 4.4.7 marks those failures).
        let expired = |r: &RecipientReport| r.action == DsnAction::Failed && r.status == "4.4.7";
        if self.cfg.retry.expired == super::schedule::Expired::Badmail && reports.iter().any(expired) {
            reports.retain(|r| !expired(r));
            self.stats.badmail += 1;
            self.actions.push_back(Action::KeepBadmail { id: env.id, content: content.clone() });
        }
        reports.retain(|r| dsn::wants_notice(env.rcpts.get(r.rcpt).and_then(|x| x.notify), r.action));
        if reports.is_empty() {
            return;
        }
        if env.from.is_empty() {
            self.stats.badmail += 1;
            self.actions.push_back(Action::KeepBadmail { id: env.id, content });
            return;
        }
        use crate::delivery::dsn::Action as Dsn;
        let gravest = |a: Dsn| reports.iter().any(|r| r.action == a);
        if gravest(Dsn::Failed) {
            self.stats.dsn_failed += 1;
        } else if gravest(Dsn::Delayed) {
            self.stats.dsn_delayed += 1;
        } else {
            self.stats.dsn_success += 1;
        }
        let id = self.ids.next(now / 1000);
        self.note(now, What::Generated { id, kind: "dsn", about: env.id, to: env.from.clone() });
        self.actions.push_back(Action::Generate(Generate::Dsn {
            id,
            original: Box::new(env.clone()),
            content,
            reports,
            now_ms: now,
        }));
    }

    /// A message of our own, appended to the control log by the driver.
    fn generate(
        &mut self,
        id: QueueId,
        now: u64,
        from: String,
        to: Vec<String>,
        data: Vec<u8>,
        envelope_with: impl FnOnce(&mut Envelope),
    ) {
        let mut envelope = Envelope::new(id);
        envelope.received_ms = now;
        envelope.from = from;
        envelope.rcpts = to.into_iter().map(|address| Recipient { address, notify: None, orcpt: None }).collect();
        envelope_with(&mut envelope);
        self.actions.push_back(Action::Generate(Generate::Message(NewMessage { envelope, data })));
    }

    /// The suspended destinations (recipient domains), lower case, in order.
    pub fn suspended(&self) -> Vec<String> {
        self.suspended.iter().cloned().collect()
    }

    /// `ringmx queue suspend|resume`: a suspended domain's recipients are held at their next
    /// attempt; resuming tries every held recipient again at once (those still with nowhere
    /// to go are held again). The list after the change.
    pub fn handle_destinations(&mut self, now: u64, op: &str, domains: &[String]) -> Result<Vec<String>, String> {
        let norm = |d: &String| d.trim().trim_end_matches('.').to_ascii_lowercase();
        match op {
            "suspend" => self.suspended.extend(domains.iter().map(norm)),
            "resume" => {
                for d in domains {
                    self.suspended.remove(&norm(d));
                }
                for id in self.entries.ids() {
                    let Some(e) = self.entries.get_mut(id) else { continue };
                    if e.is_quarantined() || !e.rcpts.any(Rcpt::Held) {
                        continue;
                    }
                    for i in e.rcpts.with(Rcpt::Held).collect::<Vec<_>>() {
                        e.rcpts.set(i, Rcpt::Open);
                    }
                    if let Some(slot) = self.entries.slot_of(id) {
                        self.schedule(slot, now, now);
                    }
                }
            }
            "list" => {}
            other => return Err(format!("unknown operation {other:?}: suspend, resume or list")),
        }
        Ok(self.suspended())
    }

    /// `ringmx queue retry|delete|bounce` (see [`crate::queue::requests`]); held messages are
    /// queued like any other, so nothing needs the spool. The driver makes the marks durable
    /// before it answers.
    pub fn handle_queue_request(&mut self, now: u64, req: &QueueRequest) -> QueueAnswer {
        let mut answer = QueueAnswer::default();
        let ids = match &req.ids {
            None => self.entries.ids(),
            Some(ids) => match super::requests::parse_ids(ids) {
                Ok(v) => v,
                Err(bad) => {
                    let error = format!("{bad:?} is not a queue id (16 hexadecimal digits)");
                    return QueueAnswer { error: Some(error), ..QueueAnswer::default() };
                }
            },
        };
        for id in ids {
            let loaded = self.entries.is_loaded(id);
            let Some(e) = self.entries.get_mut(id) else {
                answer.not_found.push(id.to_string());
                continue;
            };
            match req.op {
                QueueOp::Locate => {
                    let at = e.at;
                    let (shard, seq, offset) = (at.shard(), at.seq(), at.offset());
                    answer.located.push(Located { id: id.to_string(), shard, seq, offset });
                    answer.done.push(id.to_string());
                    continue;
                }
                _ if let Some(why) = super::requests::quarantine_skip(req.op, id, e.is_quarantined()) => {
                    // `--all` applies to the messages it can; named ones are reported.
                    if req.ids.is_some() {
                        answer.skipped.push(why);
                    }
                    continue;
                }
                QueueOp::Hold if loaded || e.want != Want::Nothing || e.rcpts.any(Rcpt::Inflight) => {
                    answer.skipped.push(format!("{id}: being delivered now: hold it once this attempt ends"));
                    continue;
                }
                QueueOp::Hold => {
                    let attempts = e.attempts;
                    let open: Vec<u16> = (0..e.rcpts.len()).filter(|&i| e.rcpts.get(i) != Rcpt::Done).collect();
                    for &i in &open {
                        e.rcpts.set(i, Rcpt::Held);
                    }
                    e.set_quarantined(true);
                    // Its filing in the timer goes stale.
                    e.due = 0;
                    // Durable: a restart finds it held (the latest mark is a hold).
                    for i in open {
                        self.actions.push_back(Action::AppendMark(Mark {
                            id,
                            rcpt: Some(i),
                            status: MarkStatus::Deferred,
                            attempts,
                            next_attempt_ms: crate::spool::HOLD_MS,
                            text: HELD_TEXT.into(),
                        }));
                    }
                    self.note(now, What::Operator { id, action: "hold" });
                }
                QueueOp::Release => {
                    e.set_quarantined(false);
                    let held: Vec<u16> = e.rcpts.with(Rcpt::Held).collect();
                    let whole = !e.rcpts.any(Rcpt::Done);
                    let attempts = e.attempts;
                    for &i in &held {
                        e.rcpts.set(i, Rcpt::Open);
                    }
                    // Durable: after a restart it is not held again. One mark for the whole
                    // message when no recipient is finished, else one per recipient released
                    // (a whole-message mark would reopen the finished ones).
                    match whole {
                        true => self.actions.push_back(Action::AppendMark(released_mark(id, now))),
                        false => {
                            for i in held {
                                self.actions.push_back(Action::AppendMark(Mark {
                                    rcpt: Some(i),
                                    attempts,
                                    ..released_mark(id, now)
                                }));
                            }
                        }
                    }
                    self.note(now, What::Operator { id, action: "release" });
                    let slot = self.entries.slot_of(id).expect("found above");
                    self.schedule(slot, now, now);
                }
                QueueOp::Retry => {
                    for i in e.rcpts.with(Rcpt::Held).collect::<Vec<_>>() {
                        e.rcpts.set(i, Rcpt::Open);
                    }
                    e.due = 0;
                    let slot = self.entries.slot_of(id).expect("found above");
                    self.schedule(slot, now, now);
                }
                // A delivery still out comes back to no entry and is dropped.
                QueueOp::Delete => {
                    let attempts = e.attempts;
                    // One being read is counted out when its record comes back.
                    if let Some((_, Some(_))) = self.entries.remove(id) {
                        self.active -= 1;
                    }
                    self.actions.push_back(Action::AppendMark(Mark {
                        id,
                        rcpt: None,
                        status: MarkStatus::Deleted,
                        attempts,
                        next_attempt_ms: 0,
                        text: DELETED_TEXT.into(),
                    }));
                    self.note(now, What::Operator { id, action: "delete" });
                }
                QueueOp::Bounce => {
                    if self.cfg.activity {
                        self.activity.push(Activity { at_ms: now, what: What::Operator { id, action: "bounce" } });
                    }
                    // Returned unreleased: it was never attempted.
                    if e.is_quarantined() {
                        e.set_quarantined(false);
                    }
                    // The marks now (durable before the answer), the report once the message
                    // is loaded.
                    let open: Vec<u16> = (0..e.rcpts.len()).filter(|&i| e.rcpts.get(i) != Rcpt::Done).collect();
                    for &i in &open {
                        e.rcpts.set(i, Rcpt::Done);
                        self.actions.push_back(Action::AppendMark(Mark {
                            id,
                            rcpt: Some(i),
                            status: MarkStatus::Failed,
                            attempts: e.attempts,
                            next_attempt_ms: 0,
                            text: BOUNCED_TEXT.into(),
                        }));
                    }
                    let pending = self.bounced.entry(id).or_default();
                    pending.extend(open);
                    if self.load(id, Want::Bounce) {
                        self.bounce_loaded(now, id);
                    }
                    self.settle(now, id, None);
                }
            }
            log::info!("queue: {id}: {:?} by the administrator", req.op);
            answer.done.push(id.to_string());
        }
        answer
    }

    /// The report of an operator's bounce, once the message is loaded.
    fn bounce_loaded(&mut self, now: u64, id: QueueId) {
        let Some(open) = self.bounced.remove(&id) else { return };
        let Some(l) = self.entries.loaded(id) else { return };
        let bounced = Response::parse(BOUNCED_TEXT).expect("BOUNCED_TEXT is a reply");
        let reports = open.iter().map(|&i| failure_report(i as usize, &bounced, now)).collect();
        let (env, content) = (l.envelope.clone(), l.content.clone());
        self.report(now, &env, content, reports);
    }
}

/// The mark that takes a message out of quarantine: every recipient due at `now_ms`, not yet
/// attempted.
pub fn released_mark(id: QueueId, now_ms: u64) -> Mark {
    Mark {
        id,
        rcpt: None,
        status: MarkStatus::Deferred,
        attempts: 0,
        next_attempt_ms: now_ms,
        text: super::requests::RELEASED_TEXT.into(),
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

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
