//! Policy delegation in the session: after our own RCPT checks accept a recipient, and at
//! the end of the content, each `[[policy_service]]` asked at that stage is asked in turn
//! ([`crate::policy::delegation`]); the session waits for each verdict as it waits for a DNS
//! answer, off the shard. A refusal is the recipient's (or the message's) reply; `PREPEND`
//! headers go on top of the message.

use super::checks::Wait;
use super::{Action, Phase, Session};
use crate::policy::delegation::{Request, Stage, Verdict};
use crate::spool::Recipient;
use crate::util::time::Now;
use crate::wire::Reply;

/// What waits for the services' verdicts.
#[derive(Debug)]
pub(super) enum Pending {
    /// A recipient our checks accepted, not yet added to the transaction.
    Rcpt(Box<Recipient>),
    /// The message, its content complete, not yet with the spool.
    Content,
}

impl Session {
    /// The first service at or after `from` asked at `stage`.
    fn service_for(&self, stage: Stage, from: usize) -> Option<usize> {
        let d = &self.cfg.policy.delegation;
        (from..d.len()).find(|&i| d[i].asked_at(stage))
    }

    /// Does `stage` ask any service?
    pub(super) fn delegates(&self, stage: Stage) -> bool {
        self.service_for(stage, 0).is_some()
    }

    /// The request for `stage` about `recipient` (empty at the end of the content).
    fn request(&self, stage: Stage, recipient: &str) -> Request {
        let env = self.tx.envelope.as_ref();
        Request {
            stage: Some(stage),
            helo_name: self.helo.clone().unwrap_or_default(),
            queue_id: env.filter(|_| stage == Stage::Data).map(|e| e.id.to_string()).unwrap_or_default(),
            sender: env.map(|e| e.from.clone()).unwrap_or_default(),
            recipient: recipient.to_string(),
            recipient_count: env.map_or(0, |e| e.rcpts.len()),
            client_address: self.peer.ip().to_string(),
            client_name: "unknown".into(),
            reverse_client_name: "unknown".into(),
            instance: format!("{:x}.{:x}", self.id, self.messages),
            sasl_method: String::new(),
            sasl_username: self.auth.as_ref().map(|a| a.login.clone()).unwrap_or_default(),
            size: if stage == Stage::Data { self.tx.content_len } else { 0 },
            encryption_protocol: self.tls.as_ref().map(|t| t.version.clone()).unwrap_or_default(),
            encryption_cipher: self.tls.as_ref().map(|t| t.cipher.clone()).unwrap_or_default(),
            esmtp: self.esmtp,
            server_address: self.local.map(|a| a.ip().to_string()).unwrap_or_default(),
            server_port: self.local.map(|a| a.port().to_string()).unwrap_or_default(),
        }
    }

    /// Asks the services of `stage` about `pending`, the first of them now; the session waits
    /// for [`Session::delegation_done`].
    /// `mark`: the header fields added so far that stay even when a service refuses.
    pub(super) fn delegate(&mut self, now: Now, stage: Stage, pending: Pending, mark: usize) {
        match self.service_for(stage, 0) {
            Some(first) => self.ask_service(stage, first, pending, mark),
            None => self.delegated(pending, now),
        }
    }

    fn ask_service(&mut self, stage: Stage, index: usize, pending: Pending, mark: usize) {
        let recipient = match &pending {
            Pending::Rcpt(r) => r.address.clone(),
            Pending::Content => String::new(),
        };
        let req = self.request(stage, &recipient);
        self.wait = Some(Wait::Delegation { stage, index, pending, mark });
        self.phase = Phase::Waiting;
        self.actions.push_back(Action::Delegate(Box::new(req), index));
    }

    /// The driver's answer to [`Action::Delegate`].
    pub fn delegation_done(&mut self, now: Now, verdict: Verdict) {
        if self.phase != Phase::Waiting {
            return;
        }
        let Some(Wait::Delegation { stage, index, pending, mark }) = self.wait.take() else { return };
        self.phase = Phase::Command;
        self.wait_for(now, self.cfg.command_timeout);
        match verdict {
            Verdict::Continue { prepend } => {
                if let Some(h) = prepend {
                    self.tx.prepend.push(h);
                }
                match self.service_for(stage, index + 1) {
                    Some(next) => return self.ask_service(stage, next, pending, mark),
                    None => self.delegated(pending, now),
                }
            }
            Verdict::Refuse(r) => {
                self.tx.prepend.truncate(mark);
                self.delegation_refused(pending, r)
            }
        }
        self.process_pending(now);
    }

    /// Every service said go on: the milters next.
    fn delegated(&mut self, pending: Pending, now: Now) {
        match pending {
            Pending::Rcpt(r) if self.cfg.policy.milters.is_empty() || self.tx.milter_discard => self.rcpt_accepted(*r),
            Pending::Rcpt(r) => self.ask_milter_rcpt(0, r),
            Pending::Content => self.content_checked(now),
        }
    }

    fn delegation_refused(&mut self, pending: Pending, r: Reply) {
        let from = self.tx.envelope.as_ref().map(|e| e.from.clone()).unwrap_or_default();
        match pending {
            Pending::Rcpt(rcpt) => self.reject("rcpt", "policy_service", &from, &rcpt.address, r),
            Pending::Content => {
                self.tx = super::Transaction::default();
                self.body.clear();
                self.reject("data", "policy_service", &from, "", r);
            }
        }
    }
}

impl Session {
    /// The content passed the policy services: the milters, in order, then the spool.
    pub(super) fn content_checked(&mut self, now: Now) {
        if self.tx.milter_discard {
            return self.milter_discarded(now);
        }
        if self.cfg.policy.milters.is_empty() {
            return self.spool_message(now);
        }
        self.ask_milter(0);
    }

    /// What a milter is told about the transaction (the content only at its end).
    fn milter_request(&self, with_content: bool) -> crate::policy::milter::Request {
        let env = self.tx.envelope.as_ref();
        crate::policy::milter::Request {
            hostname: self.cfg.hostname.clone(),
            client_ip: Some(self.peer.ip()),
            client_port: self.peer.port(),
            client_name: "unknown".into(),
            helo: self.helo.clone().unwrap_or_default(),
            from: env.map(|e| e.from.clone()).unwrap_or_default(),
            mail_args: Vec::new(),
            queue_id: env.map(|e| e.id.to_string()).unwrap_or_default(),
            auth: self.auth.as_ref().map(|a| a.login.clone()),
            tls: self.tls.as_ref().map(|t| (t.version.clone(), t.cipher.clone())),
            message: if with_content { self.body.clone() } else { Vec::new() },
        }
    }

    pub(super) fn ask_milter_open(&mut self, index: usize) {
        let req = self.milter_request(false);
        self.wait = Some(Wait::MilterMail { index });
        self.phase = Phase::Waiting;
        self.actions.push_back(Action::MilterOpen(std::sync::Arc::new(req), index));
    }

    fn ask_milter_rcpt(&mut self, index: usize, rcpt: Box<Recipient>) {
        let address = rcpt.address.clone();
        self.wait = Some(Wait::MilterRcpt { index, rcpt });
        self.phase = Phase::Waiting;
        self.actions.push_back(Action::MilterRcpt(address, index));
    }

    /// The driver's answer to [`Action::MilterOpen`] and [`Action::MilterRcpt`]: at MAIL a
    /// refusal refuses the transaction; at RCPT, the recipient. Discard at either takes the
    /// message and drops it.
    pub fn milter_step_done(&mut self, now: Now, verdict: crate::policy::milter::StepVerdict) {
        use crate::policy::milter::StepVerdict as V;
        if self.phase != Phase::Waiting {
            return;
        }
        let last = self.cfg.policy.milters.len();
        match self.wait.take() {
            Some(Wait::MilterMail { index }) => {
                self.phase = Phase::Command;
                self.wait_for(now, self.cfg.command_timeout);
                match verdict {
                    V::Continue if index + 1 < last => return self.ask_milter_open(index + 1),
                    V::Continue => self.reply(Reply::new(250, "2.1.0", "Ok")),
                    V::Discard => {
                        self.tx.milter_discard = true;
                        self.reply(Reply::new(250, "2.1.0", "Ok"));
                    }
                    V::Refuse(r) => {
                        let from = self.tx.envelope.as_ref().map(|e| e.from.clone()).unwrap_or_default();
                        self.tx = super::Transaction::default();
                        self.actions.push_back(Action::MilterAbort);
                        self.reject("mail", "milter", &from, "", r);
                    }
                }
            }
            Some(Wait::MilterRcpt { index, rcpt }) => {
                self.phase = Phase::Command;
                self.wait_for(now, self.cfg.command_timeout);
                match verdict {
                    V::Continue if index + 1 < last => return self.ask_milter_rcpt(index + 1, rcpt),
                    V::Continue => self.rcpt_accepted(*rcpt),
                    V::Discard => {
                        self.tx.milter_discard = true;
                        self.rcpt_accepted(*rcpt);
                    }
                    V::Refuse(r) => {
                        let from = self.tx.envelope.as_ref().map(|e| e.from.clone()).unwrap_or_default();
                        self.reject("rcpt", "milter", &from, &rcpt.address, r);
                    }
                }
            }
            other => {
                self.wait = other;
                return;
            }
        }
        self.process_pending(now);
    }

    fn ask_milter(&mut self, index: usize) {
        let req = self.milter_request(true);
        self.wait = Some(Wait::Milter { index });
        self.phase = Phase::Waiting;
        self.actions.push_back(Action::Milter(std::sync::Arc::new(req), index));
    }

    /// The driver's answer to [`Action::Milter`].
    pub fn milter_done(&mut self, now: Now, verdict: crate::policy::milter::Verdict) {
        use crate::policy::milter::{Change, Verdict as M};
        if self.phase != Phase::Waiting {
            return;
        }
        let Some(Wait::Milter { index }) = self.wait.take() else { return };
        self.phase = Phase::Command;
        self.wait_for(now, self.cfg.command_timeout);
        let from = self.tx.envelope.as_ref().map(|e| e.from.clone()).unwrap_or_default();
        match verdict {
            M::Accept(changes) => {
                if changes.iter().any(|c| {
                    !matches!(
                        c,
                        Change::ChangeFrom(_) | Change::AddRcpt(_) | Change::DeleteRcpt(_) | Change::Quarantine(_)
                    )
                }) {
                    self.body = crate::policy::milter::apply(&self.body, &changes);
                    // Header positions moved: what is added later goes on top.
                    self.received_hdr_len = 0;
                }
                let strip = |a: &str| a.trim().trim_start_matches('<').trim_end_matches('>').to_string();
                if let Some(env) = self.tx.envelope.as_mut() {
                    for c in &changes {
                        match c {
                            Change::ChangeFrom(f) => env.from = strip(f),
                            Change::AddRcpt(r) => {
                                env.rcpts.push(Recipient { address: strip(r), notify: None, orcpt: None })
                            }
                            Change::DeleteRcpt(r) => env.rcpts.retain(|x| !x.address.eq_ignore_ascii_case(&strip(r))),
                            Change::Quarantine(why) => {
                                let why = if why.is_empty() { "held by a milter" } else { why.as_str() };
                                self.tx.quarantine = Some(why.to_string());
                            }
                            _ => {}
                        }
                    }
                }
                if self.tx.envelope.as_ref().is_some_and(|e| e.rcpts.is_empty()) {
                    return self.milter_discarded(now);
                }
                if index + 1 < self.cfg.policy.milters.len() {
                    return self.ask_milter(index + 1);
                }
                self.spool_message(now);
            }
            M::Discard => self.milter_discarded(now),
            M::Refuse(r) => {
                self.tx = super::Transaction::default();
                self.body.clear();
                self.reject("data", "milter", &from, "", r);
            }
        }
        self.process_pending(now);
    }

    /// A milter discarded the message (or removed every recipient): the client is told it
    /// was taken, and nothing is stored.
    fn milter_discarded(&mut self, now: Now) {
        // Also reached straight from the end of the content (a discard at MAIL or RCPT).
        self.phase = Phase::Command;
        self.wait_for(now, self.cfg.command_timeout);
        self.tx = super::Transaction::default();
        self.body.clear();
        self.reply(Reply::new(250, "2.0.0", "Ok: discarded by a content filter"));
        self.process_pending(now);
    }
}
