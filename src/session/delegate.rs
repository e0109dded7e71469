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
    pub(super) fn delegate(&mut self, now: Now, stage: Stage, pending: Pending) {
        match self.service_for(stage, 0) {
            Some(first) => self.ask_service(stage, first, pending, self.tx.prepend.len()),
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

    /// Every service said go on.
    fn delegated(&mut self, pending: Pending, now: Now) {
        match pending {
            Pending::Rcpt(r) => self.rcpt_accepted(*r),
            Pending::Content => self.spool_message(now),
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
