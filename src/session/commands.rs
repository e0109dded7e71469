//! The verbs outside message content.

use super::{Action, Phase, Session, Transaction};
use crate::policy::{Refusal, Verdict};
use crate::spool::{Envelope, QueueId, Recipient};
use crate::util::time::Now;
use crate::wire::{Body, Command, MailParams, Mailbox, Path, RcptParams, Reply, parse_command};

impl Session {
    pub(super) fn command(&mut self, now: Now, line: &[u8]) {
        let cmd = match parse_command(line) {
            Ok(c) => c,
            Err(e) => return self.reply_error(e.reply()),
        };
        if self.cfg.policy.is_disabled(cmd.verb()) {
            return self.reply_error(Reply::new(502, "5.5.1", "Error: command not implemented"));
        }
        match cmd {
            Command::Ehlo(d) => self.hello(d, true),
            Command::Helo(d) => self.hello(d, false),
            Command::Mail { from, params } => self.mail(now, from, params),
            Command::Rcpt { to, params } => self.rcpt(now, to, params),
            Command::Data => self.data_command(now),
            Command::Bdat { size, last } => self.bdat_command(now, size, last),
            Command::Rset => {
                if self.tx.envelope.is_some() && !self.cfg.policy.milters.is_empty() {
                    self.actions.push_back(super::Action::MilterAbort);
                }
                self.tx = Transaction::default();
                self.reply(Reply::new(250, "2.0.0", "Ok"));
            }
            Command::Noop => self.reply(Reply::new(250, "2.0.0", "Ok")),
            Command::Quit => {
                crate::wire::write_reply_lines(&mut self.out, 221, "2.0.0", &[&[&self.cfg.hostname, " Bye"]]);
                self.close();
            }
            Command::Help(_) => self.reply(Reply::new(214, "2.0.0", "See https://www.rfc-editor.org/rfc/rfc5321")),
            // VRFY and EXPN give away the directory: disabled by default (see above). Enabled,
            // VRFY says neither yes nor no (RFC 5321 §3.5.3) and EXPN shows groups.
            Command::Vrfy(_) => {
                self.reply(Reply::new(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"))
            }
            Command::Expn(list) => self.expn(list),
            Command::Etrn(_) | Command::Turn => {
                self.reply_error(Reply::new(502, "5.5.1", "Error: command not implemented"))
            }
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth_command(mechanism, initial),
        }
    }

    /// RFC 5321 §4.1.1.1. EHLO also resets any transaction (§4.1.4).
    fn hello(&mut self, domain: &str, esmtp: bool) {
        if let Verdict::Drop(r) | Verdict::Refuse(r) = self.cfg.policy.helo(domain) {
            let at_ms = self.last_unix * 1000;
            return self.refuse(at_ms, Refusal::EhloBlock, domain.to_string(), r);
        }
        let (helo, was_esmtp) = (self.helo.replace(domain.to_owned()), std::mem::replace(&mut self.esmtp, esmtp));
        if let Some(o) = self.script(crate::policy::script::Hook::Ehlo, None, None, None)
            && let crate::policy::script::Verdict::Refuse(r) = o.verdict()
        {
            // The client stays as it was before this command.
            (self.helo, self.esmtp) = (helo, was_esmtp);
            return self.reject("ehlo", "script", "", "", r.clone());
        }
        self.tx = Transaction::default();
        if !esmtp {
            crate::wire::write_reply(&mut self.out, 250, "", &self.cfg.hostname);
            return;
        }
        // Written line by line into the output: no string is made for the reply of every
        // session's EHLO.
        let size = crate::util::stack_str::dec(self.cfg.max_message_size);
        let size: &[&str] = if self.cfg.max_message_size > 0 { &["SIZE ", size.as_str()] } else { &["SIZE"] };
        let host = [self.cfg.hostname.as_str()];
        let mut lines: [&[&str]; 12] = [&[]; 12];
        let mut n = 0;
        for line in [
            &host[..],
            &["PIPELINING"],
            size,
            &["8BITMIME"],
            &["SMTPUTF8"],
            &["ENHANCEDSTATUSCODES"],
            &["CHUNKING"],
            &["BINARYMIME"],
            &["DSN"],
        ] {
            lines[n] = line;
            n += 1;
        }
        if self.cfg.starttls && self.tls.is_none() {
            lines[n] = &["STARTTLS"];
            n += 1;
        }
        if self.auth_available() && self.auth.is_none() {
            lines[n] = &["AUTH ", crate::policy::auth::MECHANISMS];
            n += 1;
        }
        crate::wire::write_reply_lines(&mut self.out, 250, "", &lines[..n]);
    }

    fn starttls(&mut self) {
        if self.tls.is_some() {
            return self.reply_error(Reply::new(503, "5.5.1", "Error: TLS already active"));
        }
        if !self.cfg.starttls {
            return self.reply_error(Reply::new(502, "5.5.1", "Error: command not implemented"));
        }
        self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
        // RFC 3207 §4.2 and §6: anything pipelined after STARTTLS is discarded.
        self.phase = Phase::TlsPending;
        self.pending.clear();
        self.actions.push_back(Action::StartTls);
    }

    /// RFC 5321 §4.1.1.2.
    fn mail(&mut self, now: Now, from: Path<'_>, params: MailParams<'_>) {
        if self.helo.is_none() {
            return self.reply_error(Reply::new(503, "5.5.1", "Error: send HELO/EHLO first"));
        }
        if self.tx.envelope.is_some() {
            return self.reply_error(Reply::new(503, "5.5.1", "Error: nested MAIL command"));
        }
        // Extensions exist only after EHLO (RFC 5321 §4.1.1.1, §2.2.1).
        if !self.esmtp && params != MailParams::default() {
            return self.reply_error(Reply::new(555, "5.5.4", "Error: parameters need EHLO"));
        }
        if let Path::Mailbox(m) = from
            && !m.is_ascii()
            && !params.smtputf8
        {
            // RFC 6531 §3.5.
            return self.reply_error(Reply::new(553, "5.6.7", "Error: non-ASCII sender address needs SMTPUTF8"));
        }
        if let (Some(size), true) = (params.size, self.cfg.enforce_size)
            && self.cfg.max_message_size > 0
            && size > self.cfg.max_message_size
        {
            // RFC 1870 §6.
            let from = if let Path::Mailbox(m) = &from { m.to_string() } else { String::new() };
            let r = Reply::new(552, "5.3.4", "Error: message size exceeds fixed maximum message size");
            return self.reject("mail", "size", &from, "", r);
        }
        let mut env = Envelope::new(QueueId::default());
        env.received_ms = now.unix_ms;
        if let Path::Mailbox(m) = from {
            env.from = m.to_string();
        }
        env.body = params.body;
        env.smtputf8 = params.smtputf8;
        env.ret = params.ret;
        env.envid = params.envid.map(str::to_owned);
        // RFC 4954 §5: an authenticated client may name the original submitter (AUTH=),
        // or is the submitter itself (its login, when that is an address); from anyone
        // else AUTH= is treated as AUTH=<> (unknown) and not passed on.
        env.auth = match (&self.auth, params.auth) {
            (None, _) | (Some(_), Some("<>")) => None,
            (Some(_), Some(a)) => Some(a.to_string()),
            (Some(id), None) => id.login.contains('@').then(|| crate::wire::command::xtext_encode(&id.login)),
        };
        self.mail_policy(env);
    }

    /// RFC 5321 §4.1.1.3.
    fn rcpt(&mut self, now: Now, to: Mailbox<'_>, params: RcptParams<'_>) {
        let Some(env) = self.tx.envelope.as_ref() else {
            return self.reply_error(Reply::new(503, "5.5.1", "Error: need MAIL command"));
        };
        if self.tx.bdat {
            return self.reply_error(Reply::new(503, "5.5.1", "Error: RCPT after BDAT"));
        }
        if !to.is_ascii() && !env.smtputf8 {
            return self.reply_error(Reply::new(553, "5.6.7", "Error: non-ASCII recipient address needs SMTPUTF8"));
        }
        if env.rcpts.len() >= self.cfg.max_recipients {
            // RFC 5321 §4.5.3.1.10: the client delivers to the recipients accepted and tries
            // the rest later, so a pipelining client's excess is not an error, up to the
            // overshoot limit (RFC 5321 §4.5.3.1.8 wants 100 per transaction).
            self.tx.overshoot += 1;
            let r = Reply::new(452, "4.5.3", "Error: too many recipients");
            if self.tx.overshoot <= self.cfg.recipient_overshoot {
                return self.reply(r);
            }
            return self.reply_error(r);
        }
        if let Err((rule, reply)) = self.rcpt_policy(&to) {
            let from = self.tx.envelope.as_ref().map(|e| e.from.clone()).unwrap_or_default();
            return self.reject("rcpt", rule, &from, &to.to_string(), reply);
        }
        let rcpt = Recipient { address: to.to_string(), notify: params.notify, orcpt: params.orcpt.map(str::to_owned) };
        // A policy service refusing the recipient drops what the script added for it too.
        let mark = self.tx.prepend.len();
        if let Some(o) = self.script(crate::policy::script::Hook::Rcpt, None, Some(&rcpt.address), None) {
            if let crate::policy::script::Verdict::Refuse(r) = o.verdict() {
                let from = self.tx.envelope.as_ref().map(|e| e.from.clone()).unwrap_or_default();
                return self.reject("rcpt", "script", &from, &rcpt.address, r.clone());
            }
            self.keep_script_effects(o);
        }
        // The policy services, then the milters (delegate() goes on to them).
        let stage = crate::policy::delegation::Stage::Rcpt;
        if self.delegates(stage) || !self.cfg.policy.milters.is_empty() {
            return self.delegate(now, stage, super::delegate::Pending::Rcpt(Box::new(rcpt)), mark);
        }
        self.rcpt_accepted(rcpt);
    }

    /// Every check passed: the recipient joins the transaction.
    pub(super) fn rcpt_accepted(&mut self, rcpt: Recipient) {
        if let Some(env) = self.tx.envelope.as_mut() {
            env.rcpts.push(rcpt);
        }
        self.reply(Reply::new(250, "2.1.5", "Ok"));
    }

    /// EXPN (RFC 5321 §3.5.2), when enabled: the members of a group of the directory. A
    /// mailing list's members are not shown (its subscribers did not sign up to be listed):
    /// 550 5.7.1, naming where its commands go.
    fn expn(&mut self, list: &str) {
        let name = list.trim().trim_start_matches('<').trim_end_matches('>');
        if let Some(l) = self.directory.list(name) {
            let text = format!(
                "Error: the members of {} are not disclosed; send help to {}",
                l.address,
                l.role_address("request")
            );
            return self.reply_error(Reply::new(550, "5.7.1", text));
        }
        let group = self.directory.data().groups.iter().find(|g| g.address.eq_ignore_ascii_case(name));
        match group {
            Some(g) if !g.members.is_empty() => {
                let text: Vec<String> = g.members.iter().map(|m| format!("<{m}>")).collect();
                self.reply(Reply::new(250, "2.1.5", text.join("\n")))
            }
            _ => self.reply_error(Reply::new(550, "5.1.1", "Error: no such mailing list")),
        }
    }

    /// Checks common to DATA and BDAT; the reply when the transaction cannot take content.
    pub(super) fn content_refusal(&self, bdat: bool) -> Option<Reply> {
        let Some(env) = self.tx.envelope.as_ref() else {
            return Some(Reply::new(503, "5.5.1", "Error: need MAIL command"));
        };
        if env.rcpts.is_empty() {
            // RFC 5321 §3.3: 554 when no recipient was accepted.
            return Some(Reply::new(554, "5.5.1", "Error: no valid recipients"));
        }
        if !bdat && env.body == Some(Body::BinaryMime) {
            // RFC 3030 §3: BINARYMIME content only with BDAT.
            return Some(Reply::new(503, "5.5.1", "Error: BINARYMIME requires BDAT"));
        }
        if !bdat && self.tx.bdat {
            return Some(Reply::new(503, "5.5.1", "Error: DATA after BDAT"));
        }
        None
    }
}
