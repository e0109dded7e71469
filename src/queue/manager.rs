//! The queue manager: every decision of the delivery side, with no file, socket, thread or
//! clock inside (the session's contract, quinn-proto style).
//!
//! The driver feeds it what happened — a message made durable
//! ([`QueueManager::handle_accepted`]), a message found at start
//! ([`QueueManager::handle_recovered`]), the clock ([`QueueManager::handle_timeout`]), the
//! content it was asked to read ([`QueueManager::handle_content`]), the result of a delivery
//! ([`QueueManager::handle_outcome`]), an operator's request
//! ([`QueueManager::handle_queue_request`]) — and executes what
//! [`QueueManager::poll_action`] returns until it returns nothing, then sleeps until
//! [`QueueManager::poll_timeout`] or the next input. Every `now` is Unix milliseconds, the
//! unit of the spool's marks, so the whole queue is tested on a simulated clock
//! (`manager_tests.rs`).
//!
//! # One message's way
//!
//! Due → its open recipients are routed (local, remote by route, or held for an accept-all
//! domain with nowhere to send) → `ReadContent` → one `SubmitRemote` per route, and for the
//! local recipients the directory's expansion: one `StageMaildir` per mailbox copy, one
//! `DeliverLmtp` per LMTP transaction → outcomes → one `AppendMark` per recipient, reports
//! to the sender (`Generate`), forwards for redirects elsewhere, auto-replies and delivery
//! events → due again at the retry time, or forgotten once nothing is left to do (the spool
//! keeps the message until its segment is reclaimed).
//!
//! The driver makes the marks and generated messages of one turn durable in one sync, so a
//! report is never written without the marks that caused it, nor the reverse.

use super::actions::{Action, At, Content, Generate, LmtpBatch, MaildirCopy, Outcome, RemoteJob, RemoteOutcome};
use super::outcome::{self, Answered, Attempted, MarkFor};
use super::requests::{BOUNCED_TEXT, DELETED_TEXT, QueueAnswer, QueueOp, QueueRequest};
use super::{DelayNoticeConfig, RetryConfig, TimerQueue};
use crate::delivery::autoreply::{self, ReplyMemory};
use crate::delivery::client::{DsnParams, Response};
use crate::delivery::dsn::{self, Action as DsnAction, RecipientReport};
use crate::delivery::lmtp::LmtpRoute;
use crate::directory::{AutoResponder, Destination, Directory, ExpandProblem};
use crate::routing::{Route, RoutingConfig, Where, route_of};
use crate::spool::{
    CONTROL_SHARD, Envelope, IdGen, Location, Mark, MarkStatus, NewMessage, QueueId, Recipient, StoredMessage,
};
use std::collections::{BTreeMap, HashSet, VecDeque};
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
}

/// Counters for the exit summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Copies delivered to local mailboxes (Maildir or LMTP).
    pub delivered: u64,
    /// Recipients handed to a next hop.
    pub relayed: u64,
}

/// One message the manager tracks until every recipient is final.
#[derive(Debug)]
struct Pending {
    envelope: Envelope,
    at: At,
    /// Recipient indexes final (delivered, failed) or held.
    done: HashSet<u16>,
    /// Recipient indexes with a delivery out (remote job, local attempt).
    inflight: HashSet<u16>,
    /// Recipient indexes held: an accept-all domain with nowhere to send them (also in
    /// `done`, without a mark; `queue retry` tries them again).
    held: HashSet<u16>,
    attempts: u16,
    /// When delivery was first tried, and last deferred (for delay notices).
    first_attempt_ms: Option<u64>,
    last_deferral_ms: Option<u64>,
    /// Routed, waiting for the content.
    routed: Option<Routed>,
    /// The local part of the attempt, waiting for its copies' outcomes.
    local: Option<LocalAttempt>,
}

impl Pending {
    fn new(envelope: Envelope, at: At) -> Self {
        Pending {
            envelope,
            at,
            done: HashSet::new(),
            inflight: HashSet::new(),
            held: HashSet::new(),
            attempts: 0,
            first_attempt_ms: None,
            last_deferral_ms: None,
            routed: None,
            local: None,
        }
    }

    fn open_rcpts(&self) -> Vec<u16> {
        (0..self.envelope.rcpts.len() as u16).filter(|i| !self.done.contains(i) || self.held.contains(i)).collect()
    }
}

/// The recipients of an attempt, by where they go.
#[derive(Debug, Default)]
struct Routed {
    local: Vec<(u16, String)>,
    remote: Vec<(Route, u16, String)>,
}

/// The local part of an attempt between the content and the last copy's outcome.
#[derive(Debug)]
struct LocalAttempt {
    /// The local recipients tried: index and lower-cased address.
    rcpts: Vec<(u16, String)>,
    content: Arc<[u8]>,
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
}

/// One copy: which original recipients it stands for, and the mailbox's hooks.
#[derive(Debug, Clone)]
struct CopyOf {
    originals: Vec<String>,
    delivered_to: String,
    hooks: Option<Hooks>,
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

/// The queue manager (see the module documentation).
pub struct QueueManager {
    cfg: ManagerConfig,
    ids: IdGen,
    /// Messages with something left to do, by id.
    queue: BTreeMap<QueueId, Pending>,
    /// When each queued message is next due (Unix ms).
    due: TimerQueue<QueueId>,
    actions: VecDeque<Action>,
    replies: ReplyMemory,
    stats: Stats,
}

impl QueueManager {
    /// `max_id` is the largest queue id seen (generated messages get ids above it);
    /// `replies` the auto-responders' memory as saved.
    pub fn new(cfg: ManagerConfig, max_id: QueueId, replies: ReplyMemory) -> Self {
        QueueManager {
            cfg,
            ids: IdGen::new(CONTROL_SHARD, max_id),
            queue: BTreeMap::new(),
            due: TimerQueue::new(),
            actions: VecDeque::new(),
            replies,
            stats: Stats::default(),
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`QueueManager::handle_timeout`] has work next (Unix ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.due.next_due()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The auto-responders' memory (to save after [`Action::SaveReplies`]).
    pub fn replies(&self) -> &ReplyMemory {
        &self.replies
    }

    /// Messages tracked (queued or with a delivery out).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A message was made durable (by a shard, or a generated one by the driver): due now.
    pub fn handle_accepted(&mut self, now: u64, envelope: Envelope, shard: u8, location: Location) {
        let id = envelope.id;
        self.queue.insert(id, Pending::new(envelope, At::new(shard, location)));
        self.due.insert(id, now);
    }

    /// A message recovery found unfinished: its final recipients stay done, the others are
    /// due at their latest mark's next attempt (now, if they were never tried).
    pub fn handle_recovered(&mut self, now: u64, m: StoredMessage) {
        let latest = m.latest_marks();
        let done: HashSet<u16> = latest
            .iter()
            .enumerate()
            .filter(|(_, k)| k.is_some_and(|k| k.status.is_final()))
            .map(|(i, _)| i as u16)
            .collect();
        let next =
            latest.iter().flatten().filter(|k| k.status == MarkStatus::Deferred).map(|k| k.next_attempt_ms).min();
        let at = At { shard: m.shard, seq: m.seq, offset: m.content_offset, len: m.content_len };
        let mut p = Pending::new(m.envelope, at);
        p.attempts = m.marks.iter().map(|k| k.attempts).max().unwrap_or(0);
        p.done = done;
        if next.is_some() {
            p.first_attempt_ms = Some(p.envelope.received_ms);
            p.last_deferral_ms = Some(now);
        }
        let id = p.envelope.id;
        self.queue.insert(id, p);
        self.due.insert(id, next.unwrap_or(now).max(now));
    }

    /// Compaction copied a message forward: its content is now there.
    pub fn handle_moved(&mut self, id: QueueId, at: At) {
        if let Some(p) = self.queue.get_mut(&id) {
            p.at = at;
        }
    }

    /// Whether a message may be copied by compaction: known, with no delivery out and not
    /// due before `not_before`.
    pub fn is_idle_until(&self, id: QueueId, not_before: u64) -> bool {
        self.queue.get(&id).is_some_and(|p| p.inflight.is_empty())
            && self.due.due_of(&id).is_some_and(|t| t >= not_before)
    }

    /// Where a tracked message's content is, and its envelope.
    pub fn message(&self, id: QueueId) -> Option<(&Envelope, At)> {
        self.queue.get(&id).map(|p| (&p.envelope, p.at))
    }

    /// Routes every message due at `now`: held recipients are set aside, the others wait
    /// for the content ([`Action::ReadContent`]).
    pub fn handle_timeout(&mut self, now: u64, dir: &Directory) {
        let mut due = Vec::new();
        self.due.drain_due(now, usize::MAX, &mut due);
        for id in due {
            let Some(p) = self.queue.get_mut(&id) else { continue };
            let mut routed = Routed::default();
            for (i, r) in p.envelope.rcpts.iter().enumerate() {
                let i = i as u16;
                if p.done.contains(&i) || p.inflight.contains(&i) {
                    continue;
                }
                let a = r.address.to_ascii_lowercase();
                match route_of(dir, &a, &self.cfg.routing, &self.cfg.local_domains) {
                    Where::Local => routed.local.push((i, a)),
                    Where::Remote(route) => routed.remote.push((route, i, a)),
                    Where::Held => {
                        p.done.insert(i);
                        p.held.insert(i);
                    }
                }
            }
            if routed.local.is_empty() && routed.remote.is_empty() {
                self.settle(id, None);
                continue;
            }
            for (i, _) in &routed.local {
                p.inflight.insert(*i);
            }
            for (_, i, _) in &routed.remote {
                p.inflight.insert(*i);
            }
            p.routed = Some(routed);
            self.actions.push_back(Action::ReadContent { id, at: p.at });
        }
    }

    /// The content of a message routed by [`QueueManager::handle_timeout`], or why it could
    /// not be read (the attempt is put off by the local retry pause).
    pub fn handle_content(&mut self, now: u64, dir: &Directory, id: QueueId, content: Result<Arc<[u8]>, String>) {
        let Some(p) = self.queue.get_mut(&id) else { return };
        let Some(routed) = p.routed.take() else { return };
        let content = match content {
            Ok(c) => c,
            Err(e) => {
                log::error!("queue: {id}: reading the content: {e}");
                for (i, _) in &routed.local {
                    p.inflight.remove(i);
                }
                for (_, i, _) in &routed.remote {
                    p.inflight.remove(i);
                }
                let retry = now + self.cfg.local_retry.as_millis() as u64;
                self.settle(id, Some(retry));
                return;
            }
        };
        p.attempts = p.attempts.saturating_add(1);
        if !routed.remote.is_empty() {
            p.first_attempt_ms.get_or_insert(now);
            self.submit_remote(id, routed.remote, &content, now);
        }
        if !routed.local.is_empty() {
            self.stage_local(now, dir, id, routed.local, content);
        }
    }

    /// One job per route with the recipients that share it.
    fn submit_remote(&mut self, id: QueueId, mut rcpts: Vec<(Route, u16, String)>, content: &Arc<[u8]>, now: u64) {
        let Some(p) = self.queue.get(&id) else { return };
        rcpts.sort_by(|a, b| a.0.cmp(&b.0));
        let mut start = 0;
        while start < rcpts.len() {
            let end = start + rcpts[start..].iter().take_while(|r| r.0 == rcpts[start].0).count();
            let group: Vec<(u16, String)> = rcpts[start..end].iter().map(|(_, i, a)| (*i, a.clone())).collect();
            let env = &p.envelope;
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
                rcpts: group,
                content: content.clone(),
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
    fn stage_local(&mut self, now: u64, dir: &Directory, id: QueueId, rcpts: Vec<(u16, String)>, content: Arc<[u8]>) {
        let Some(p) = self.queue.get_mut(&id) else { return };
        let addrs: Vec<&str> = rcpts.iter().map(|(_, a)| a.as_str()).collect();
        let expansion = dir.expand_all(&addrs, self.cfg.catch_alls);
        let mut a = LocalAttempt {
            rcpts: Vec::new(),
            content: content.clone(),
            copies: Vec::new(),
            lmtp: Vec::new(),
            waiting: 0,
            outcomes: Vec::new(),
            forwards: Vec::new(),
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
            };
            let body = if t.catch_all { with_header(&t.original_recipients) } else { content.clone() };
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
                from: p.envelope.from.clone(),
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
                from: p.envelope.from.clone(),
                rcpts: copies.iter().map(|c| c.delivered_to.clone()).collect(),
                body,
            }));
            a.lmtp.push(copies);
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
            note(&mut a.outcomes, &[addr], status, &reply);
        }
        a.waiting = a.copies.len() + a.lmtp.len();
        a.rcpts = rcpts;
        p.local = Some(a);
        if p.local.as_ref().is_some_and(|a| a.waiting == 0) {
            self.finish_local(now, id);
        }
    }

    /// The result of an action.
    pub fn handle_outcome(&mut self, now: u64, o: Outcome) {
        match o {
            Outcome::Remote(o) => self.remote_done(now, o),
            Outcome::Maildir { id, copy, result } => {
                let Some(a) = self.queue.get_mut(&id).and_then(|p| p.local.as_mut()) else { return };
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
                let Some(a) = self.queue.get_mut(&id).and_then(|p| p.local.as_mut()) else { return };
                let Some(copies) = a.lmtp.get(batch as usize).cloned() else { return };
                a.waiting -= 1;
                match result {
                    Ok(results) => {
                        for (c, r) in copies.iter().zip(results) {
                            match r {
                                Ok(()) => self.delivered(now, id, c, None),
                                Err(f) => {
                                    let status = if f.permanent { MarkStatus::Failed } else { MarkStatus::Deferred };
                                    if let Some(a) = self.queue.get_mut(&id).and_then(|p| p.local.as_mut()) {
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
        }
    }

    fn maybe_finish_local(&mut self, now: u64, id: QueueId) {
        if self.queue.get(&id).and_then(|p| p.local.as_ref()).is_some_and(|a| a.waiting == 0) {
            self.finish_local(now, id);
        }
    }

    /// A copy reached its mailbox: the auto-responder and the delivery-event program.
    fn delivered(&mut self, now: u64, id: QueueId, c: &CopyOf, file: Option<std::path::PathBuf>) {
        self.stats.delivered += 1;
        let Some(h) = &c.hooks else { return };
        let Some(p) = self.queue.get(&id) else { return };
        let Some(a) = &p.local else { return };
        let head = &a.content[..a.content.len().min(16 * 1024)];
        let bulk = autoreply::should_reply(&p.envelope.from, head).is_err();
        if bulk {
            return;
        }
        let sender = p.envelope.from.clone();
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
        let Some(p) = self.queue.get_mut(&id) else { return };
        let Some(a) = p.local.take() else { return };
        let retry_at = now + self.cfg.local_retry.as_millis() as u64;
        let mut retry = false;
        let mut reports = Vec::new();
        let mut marks = Vec::new();
        for (i, addr) in &a.rcpts {
            p.inflight.remove(i);
            let o = a.outcomes.iter().find(|(x, _)| x == addr).map(|(_, o)| o);
            let (status, reply) = match o {
                None => (MarkStatus::Delivered, Response::new(250, Some("2.0.0"), "delivered to mailbox")),
                Some(o) => (o.status, o.reply.clone()),
            };
            let next_attempt_ms = if status == MarkStatus::Deferred {
                retry = true;
                retry_at
            } else {
                p.done.insert(*i);
                0
            };
            if status == MarkStatus::Failed {
                reports.push(failure_report(*i as usize, &reply, now));
            }
            let text = reply.to_string();
            marks.push(Mark { id, rcpt: Some(*i), status, attempts: p.attempts, next_attempt_ms, text });
        }
        self.actions.extend(marks.into_iter().map(Action::AppendMark));
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
        let env = p.envelope.clone();
        if !to.is_empty() {
            log::info!("queue: {id}: forwarded to {}", to.join(", "));
            let fwd_id = self.ids.next(now / 1000);
            self.generate(fwd_id, now, env.from.clone(), to, a.content.to_vec(), |e| {
                e.body = env.body;
                e.smtputf8 = env.smtputf8;
                e.auth = env.auth.clone();
            });
        }
        if !reports.is_empty() {
            self.report(now, &env, Content::Bytes(a.content.clone()), reports);
        }
        self.settle(id, retry.then_some(retry_at));
    }

    /// A remote job came back: one mark per recipient, retries per the schedule, reports for
    /// failures (and successes asked for with NOTIFY=SUCCESS), a delay notice when due.
    fn remote_done(&mut self, now: u64, o: RemoteOutcome) {
        let Some(p) = self.queue.get_mut(&o.id) else { return };
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
        self.stats.relayed += j.relayed;
        for mark in j.marks {
            if mark.status != MarkStatus::Deferred {
                p.done.insert(mark.rcpt);
            }
            let MarkFor { rcpt, status, text, next_attempt_ms } = mark;
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
            p.last_deferral_ms = Some(now);
        }
        if !j.reports.is_empty() {
            let (env, at) = (p.envelope.clone(), p.at);
            self.report(now, &env, Content::At(at), j.reports);
        }
        self.settle(o.id, j.next_due_ms);
    }

    /// Schedules a message at `due` (the earlier of it and any time already set), or
    /// forgets it when nothing is left: no delivery out and no time set.
    fn settle(&mut self, id: QueueId, due: Option<u64>) {
        match due {
            Some(t) => {
                let t = self.due.due_of(&id).map_or(t, |prev| prev.min(t));
                self.due.insert(id, t);
            }
            None => {
                let idle = self.queue.get(&id).is_some_and(|p| p.inflight.is_empty());
                if idle && self.due.due_of(&id).is_none() {
                    self.queue.remove(&id);
                }
            }
        }
    }

    /// A report to the sender of `env`, or the message to the bad-mail folder when it came
    /// from the null sender (a report that bounced).
    /// Only the reports some recipient's NOTIFY asks for (RFC 3461 §4.1) count.
    fn report(&mut self, now: u64, env: &Envelope, content: Content, mut reports: Vec<RecipientReport>) {
        reports.retain(|r| dsn::wants_notice(env.rcpts.get(r.rcpt).and_then(|x| x.notify), r.action));
        if reports.is_empty() {
            return;
        }
        if env.from.is_empty() {
            self.actions.push_back(Action::KeepBadmail { id: env.id, content });
            return;
        }
        let id = self.ids.next(now / 1000);
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

    /// Whether [`QueueManager::handle_queue_request`] needs the messages of the spool that
    /// are not tracked (those held for an accept-all domain with no route are not kept in
    /// memory): for `--all`, or when a named id is not tracked.
    pub fn queue_request_reads_spool(&self, req: &QueueRequest) -> bool {
        match &req.ids {
            None => true,
            Some(ids) => ids.iter().any(|s| QueueId::parse(s).is_none_or(|id| !self.queue.contains_key(&id))),
        }
    }

    /// `ringmx queue retry|delete|bounce` (see [`crate::queue::requests`]). `spool` are the
    /// unfinished messages of the spool when [`QueueManager::queue_request_reads_spool`]
    /// says so (tracked ones among them are ignored). The driver makes the marks durable
    /// before it answers.
    pub fn handle_queue_request(&mut self, now: u64, req: &QueueRequest, spool: Vec<StoredMessage>) -> QueueAnswer {
        let mut answer = QueueAnswer::default();
        let named = match &req.ids {
            None => None,
            Some(ids) => match super::requests::parse_ids(ids) {
                Ok(v) => Some(v),
                Err(bad) => {
                    let error = format!("{bad:?} is not a queue id (16 hexadecimal digits)");
                    return QueueAnswer { error: Some(error), ..QueueAnswer::default() };
                }
            },
        };
        let mut held: BTreeMap<QueueId, Pending> = BTreeMap::new();
        for m in spool.into_iter().filter(|m| !self.queue.contains_key(&m.envelope.id)) {
            let done: HashSet<u16> = m
                .latest_marks()
                .iter()
                .enumerate()
                .filter(|(_, k)| k.is_some_and(|k| k.status.is_final()))
                .map(|(i, _)| i as u16)
                .collect();
            let at = At { shard: m.shard, seq: m.seq, offset: m.content_offset, len: m.content_len };
            let attempts = m.attempts();
            let mut p = Pending::new(m.envelope, at);
            p.held = (0..p.envelope.rcpts.len() as u16).filter(|i| !done.contains(i)).collect();
            p.done = (0..p.envelope.rcpts.len() as u16).collect();
            p.attempts = attempts;
            held.insert(p.envelope.id, p);
        }
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
                    self.queue.insert(id, p);
                    self.due.insert(id, now);
                }
                // A delivery still out comes back to no queue entry and is dropped.
                QueueOp::Delete => self.actions.push_back(Action::AppendMark(Mark {
                    id,
                    rcpt: None,
                    status: MarkStatus::Deleted,
                    attempts: p.attempts,
                    next_attempt_ms: 0,
                    text: DELETED_TEXT.into(),
                })),
                QueueOp::Bounce => {
                    let bounced = Response::parse(BOUNCED_TEXT).expect("BOUNCED_TEXT is a reply");
                    let mut reports = Vec::new();
                    for i in p.open_rcpts() {
                        reports.push(failure_report(i as usize, &bounced, now));
                        self.actions.push_back(Action::AppendMark(Mark {
                            id,
                            rcpt: Some(i),
                            status: MarkStatus::Failed,
                            attempts: p.attempts,
                            next_attempt_ms: 0,
                            text: BOUNCED_TEXT.into(),
                        }));
                    }
                    let content = match &p.local {
                        Some(a) => Content::Bytes(a.content.clone()),
                        None => Content::At(p.at),
                    };
                    self.report(now, &p.envelope, content, reports);
                }
            }
            log::info!("queue: {id}: {:?} by the administrator", req.op);
            answer.done.push(id.to_string());
        }
        answer
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
