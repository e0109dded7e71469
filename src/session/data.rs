//! Message content: DATA (RFC 5321 §4.1.1.4), BDAT (RFC 3030), the Received header
//! (RFC 5321 §4.4) and the hand-off to the spool.

use super::{Action, Phase, Session, Transaction};
use crate::policy::PtrCheck;
use crate::spool::NewMessage;
use crate::util::time::{Now, rfc5322};
use crate::wire::{BareLinePolicy, DataStatus, Reply};
use std::io::Write;
use std::net::IpAddr;

impl Session {
    pub(super) fn data_command(&mut self, now: Now) {
        if let Some(r) = self.content_refusal(false) {
            return self.reply_error(r);
        }
        self.begin_content(now);
        self.reply(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
        self.scanner.reset();
        self.phase = Phase::Data;
        self.wait_for(now, self.cfg.data_timeout);
    }

    pub(super) fn data_input(&mut self, now: Now, buf: &[u8]) -> usize {
        let p = self.scanner.feed(buf, &mut self.body);
        self.data_progress(now, p.consumed);
        self.check_size();
        if p.status == DataStatus::Done {
            if self.tx.too_big {
                let r = Reply::new(552, "5.3.4", "Error: message size exceeds fixed maximum message size");
                self.refuse_content("size", r);
            } else if self.scanner.saw_bare_line_ending() && self.cfg.bare_line_policy == BareLinePolicy::Reject {
                // RFC 5321 §2.3.8: CR and LF only as CRLF. Refused whole (SMTP smuggling).
                let text = "Error: bare CR or LF in message content (RFC 5321 section 2.3.8)";
                self.refuse_content("bare_line_ending", Reply::new(554, "5.5.2", text));
            } else {
                self.hand_off(now);
            }
        }
        p.consumed
    }

    pub(super) fn bdat_command(&mut self, now: Now, size: u64, last: bool) {
        let refusal = self.content_refusal(true);
        let discard = refusal.is_some() || self.tx.too_big;
        if let Some(r) = refusal {
            // RFC 3030 §2: the chunk is read (and dropped) before the reply.
            self.tx.refusal = Some(r);
        } else if !self.tx.started {
            self.begin_content(now);
            self.tx.bdat = true;
        }
        self.phase = Phase::Bdat { remaining: size, last, discard };
        self.wait_for(now, self.cfg.data_timeout);
        if size == 0 {
            self.chunk_done(now, last);
        }
    }

    pub(super) fn bdat_input(&mut self, now: Now, buf: &[u8]) -> usize {
        let Phase::Bdat { remaining, last, discard } = self.phase else { return 0 };
        let n = remaining.min(buf.len() as u64) as usize;
        self.data_progress(now, n);
        if !discard {
            self.body.extend_from_slice(&buf[..n]);
            self.check_size();
        }
        let remaining = remaining - n as u64;
        self.phase = Phase::Bdat { remaining, last, discard: discard || self.tx.too_big };
        if remaining == 0 {
            self.chunk_done(now, last);
        }
        n
    }

    fn chunk_done(&mut self, now: Now, last: bool) {
        // The chunk is in: the next command has its own time.
        self.wait_for(now, self.cfg.command_timeout);
        if let Some(r) = self.tx.refusal.take() {
            self.phase = Phase::Command;
            if r.code != 503 {
                self.tx = Transaction::default();
            }
            return self.reply_error(r);
        }
        if self.tx.too_big {
            let r = Reply::new(552, "5.3.4", "Error: message size exceeds fixed maximum message size");
            return self.refuse_content("size", r);
        }
        if last {
            self.hand_off(now);
        } else {
            self.phase = Phase::Command;
            let len = crate::util::stack_str::dec(self.tx.content_len);
            crate::wire::write_reply_lines(&mut self.out, 250, "2.0.0", &[&["Ok: ", len.as_str(), " octets received"]]);
        }
    }

    /// Past the size limit, stop storing: the rest is read and dropped (RFC 1870 §6.2).
    fn check_size(&mut self) {
        self.tx.content_len = (self.body.len() - self.received_hdr_len) as u64;
        if self.cfg.enforce_size && self.cfg.max_message_size > 0 && self.tx.content_len > self.cfg.max_message_size {
            self.tx.too_big = true;
            self.scanner.set_discard();
            self.body.truncate(self.received_hdr_len);
        }
    }

    /// The content is refused by `rule`: the transaction ends.
    fn refuse_content(&mut self, rule: &'static str, r: Reply) {
        let tx = std::mem::take(&mut self.tx);
        self.body.clear();
        self.phase = Phase::Command;
        let from = tx.envelope.map(|e| e.from).unwrap_or_default();
        self.reject("data", rule, &from, "", r);
    }

    /// Mints the queue id and writes our Received header at the top of the message buffer.
    fn begin_content(&mut self, now: Now) {
        let id = self.ids.borrow_mut().next(now.unix_secs());
        let Some(env) = self.tx.envelope.as_mut() else { return };
        env.id = id;
        self.tx.started = true;
        self.body.clear();
        // Room for a typical message at once, rather than growing by doubling from the
        // header's size (eight reallocations for a 2 KB message).
        self.body.reserve(4096);
        let helo = self.helo.as_deref().unwrap_or("unknown");
        let ip = if self.cfg.hide_client_ip { IpAddr::from([127, 0, 0, 1]) } else { self.peer.ip() };
        let b = &mut self.body;
        b.extend_from_slice(b"Received: from ");
        // The HELO argument is the peer's word: keep it to visible ASCII.
        b.extend(helo.bytes().map(|c| if c.is_ascii_graphic() && c != b'(' && c != b')' { c } else { b'?' }));
        let _ = match ip {
            IpAddr::V4(a) => write!(b, " (unknown [{a}])"),
            IpAddr::V6(a) => write!(b, " (unknown [IPv6:{a}])"),
        };
        if let Some(tls) = &self.tls {
            for p in ["\r\n\t(using ", &tls.version, " with cipher ", &tls.cipher, ")"] {
                b.extend_from_slice(p.as_bytes());
            }
        }
        // RFC 3848 and RFC 6531 §4.3: S for TLS, A for an authenticated session.
        let proto = match (env.smtputf8, self.esmtp, self.tls.is_some(), self.auth.is_some()) {
            (true, _, false, false) => "UTF8SMTP",
            (true, _, true, false) => "UTF8SMTPS",
            (true, _, false, true) => "UTF8SMTPA",
            (true, _, true, true) => "UTF8SMTPSA",
            (false, true, false, false) => "ESMTP",
            (false, true, true, false) => "ESMTPS",
            (false, true, false, true) => "ESMTPA",
            (false, true, true, true) => "ESMTPSA",
            (false, false, _, _) => "SMTP",
        };
        // Every message's header: pieces copied, no formatting machinery.
        let (id_text, date) = (id.text(), crate::util::time::rfc5322_text(now.unix_secs()));
        for p in ["\r\n\tby ", &self.cfg.hostname, " (ringmx) with ", proto, " id ", id_text.as_str()] {
            b.extend_from_slice(p.as_bytes());
        }
        if let [only] = env.rcpts.as_slice() {
            for p in ["\r\n\tfor <", &only.address, ">"] {
                b.extend_from_slice(p.as_bytes());
            }
        }
        for p in ["; ", date.as_str(), "\r\n"] {
            b.extend_from_slice(p.as_bytes());
        }
        if self.ptr_found == Some(false) && self.auth.is_none() && self.cfg.policy.ptr_check == PtrCheck::Tag {
            let _ = write!(b, "{}: none (client {} has no PTR record)\r\n", self.cfg.policy.ptr_header, ip);
        }
        self.received_hdr_len = b.len();
        self.tx.content_len = 0;
    }

    /// The content is complete: the policy services asked at the end of the content, then
    /// the spool.
    fn hand_off(&mut self, now: Now) {
        self.open_content(now, self.tx.content_len);
        // Before anything reads or signs the content (a DKIM signature covers Date and
        // Message-ID).
        if self.auth.is_some()
            && self.cfg.policy.add_missing_headers
            && let Some(env) = self.tx.envelope.clone()
        {
            self.add_missing_headers(now, &env);
        }
        let p = &self.cfg.policy;
        if p.spf.is_some() || p.dkim.is_some() {
            self.remove_forged_results();
        }
        let p = &self.cfg.policy;
        if let Some(d) = &p.dkim {
            let verify = d.settings.verify && self.auth.is_none() && !p.whitelist.contains(self.peer.ip());
            // Our users' mail from a domain with a key is signed.
            let sign = match (&self.auth, d.settings.signers.is_empty()) {
                (Some(_), false) => {
                    crate::policy::dkim_sign::from_domain(self.body.get(self.received_hdr_len..).unwrap_or_default())
                        .and_then(|dom| d.settings.signer_for(&dom))
                }
                _ => None,
            };
            if verify || sign.is_some() {
                return self.verify_content(verify, sign);
            }
        }
        self.content_verified(now);
    }

    /// DKIM and DMARC (issue 14), and our signature: the session waits for
    /// [`Session::dkim_done`].
    fn verify_content(&mut self, verify: bool, sign: Option<std::sync::Arc<crate::policy::dkim_sign::SignKey>>) {
        let env = self.tx.envelope.as_ref();
        let helo = self.helo.clone().unwrap_or_default();
        let mail_from_domain = env.and_then(|e| e.from.rsplit_once('@').map(|(_, d)| d.to_string())).unwrap_or(helo);
        let seal = if verify { self.forward_seal() } else { None };
        let req = crate::policy::dkim::Request {
            message: std::sync::Arc::from(self.body.get(self.received_hdr_len..).unwrap_or_default()),
            mail_from_domain,
            spf: self.tx.spf.as_ref().map(|o| o.result),
            verify,
            sign,
            seal,
        };
        self.wait = Some(super::checks::Wait::Dkim);
        self.phase = Phase::Waiting;
        self.actions.push_back(Action::Dkim(Box::new(req)));
    }

    /// `[dkim] arc_seal_forwards`: when a recipient forwards the message elsewhere (a
    /// redirect, a group member outside our domains), the seal of its domain's RSA key.
    fn forward_seal(&self) -> Option<Box<crate::policy::dkim::Seal>> {
        use crate::directory::Destination;
        let d = self.cfg.policy.dkim.as_ref().filter(|d| d.settings.arc_seal_forwards)?;
        let env = self.tx.envelope.as_ref()?;
        let key = env.rcpts.iter().find_map(|r| {
            let ex = self.directory.expand_all(&[r.address.as_str()], self.cfg.catch_alls);
            let forwarded = ex.targets.iter().any(|t| match &t.destination {
                Destination::Remote(a) | Destination::Relay { address: a, .. } => !a.eq_ignore_ascii_case(&r.address),
                Destination::Mailbox { .. } | Destination::List { .. } => false,
            });
            let domain = r.address.rsplit_once('@')?.1.to_ascii_lowercase();
            let rsa = d.settings.signers.iter().find(|k| k.domain == domain && k.is_rsa());
            rsa.filter(|_| forwarded).cloned()
        })?;
        Some(Box::new(crate::policy::dkim::Seal {
            key,
            authserv_id: self.cfg.hostname.clone(),
            client: self.peer.ip().to_canonical(),
            mail_from: env.from.clone(),
            helo: self.helo.clone().unwrap_or_default(),
        }))
    }

    /// The driver's answer to [`Action::Dkim`].
    pub fn dkim_done(&mut self, now: Now, o: crate::policy::dkim::Outcome) {
        if self.phase != Phase::Waiting || !matches!(self.wait, Some(super::checks::Wait::Dkim)) {
            return;
        }
        self.wait = None;
        self.phase = Phase::Command;
        self.wait_for(now, self.cfg.command_timeout);
        if o.verified {
            self.tx.auth_results.extend(o.methods());
        }
        if let Some(sig) = o.signature.clone() {
            self.tx.prepend.push(sig);
        }
        if let Some(set) = o.arc_set.clone() {
            self.tx.prepend.push(set);
        }
        match self.cfg.policy.dkim.as_ref().and_then(|d| d.settings.refusal(&o)) {
            Some(r) => self.refuse_content("dmarc", r),
            None => self.content_verified(now),
        }
        self.process_pending(now);
    }

    /// The content is authenticated (or needs not be): the script's data hook, then the
    /// policy services asked at the end of the content, then the milters.
    fn content_verified(&mut self, now: Now) {
        let mark = self.tx.prepend.len();
        let message = self.body.get(self.received_hdr_len..).unwrap_or_default();
        if let Some(o) = self.script(crate::policy::script::Hook::Data, None, None, Some(message)) {
            if let crate::policy::script::Verdict::Refuse(r) = o.verdict() {
                return self.refuse_content("script", r.clone());
            }
            self.keep_script_effects(o);
        }
        let stage = crate::policy::delegation::Stage::Data;
        if self.delegates(stage) {
            return self.delegate(now, stage, super::delegate::Pending::Content, mark);
        }
        self.content_checked(now);
    }

    /// Gives the message to the spool and waits for its answer.
    pub(super) fn spool_message(&mut self, now: Now) {
        let tx = std::mem::take(&mut self.tx);
        let Some(mut envelope) = tx.envelope else { return };
        envelope.received_ms = now.unix_ms;
        envelope.route = tx.route;
        envelope.quarantine = tx.quarantine;
        let mut prepend = tx.prepend;
        if !tx.auth_results.is_empty() {
            // RFC 8601 §4: our Authentication-Results field goes on top.
            prepend.insert(0, crate::policy::spf::header(&self.cfg.hostname, &tx.auth_results));
        }
        if !prepend.is_empty() {
            // PREPEND: on top of the message, above our Received header.
            let mut top = Vec::new();
            for h in &prepend {
                top.extend_from_slice(h.as_bytes());
                top.extend_from_slice(b"\r\n");
            }
            self.body.splice(0..0, top);
        }
        let data = std::mem::take(&mut self.body);
        if self.cfg.activity {
            self.spooling = Some((envelope.from.clone(), envelope.rcpts.len(), data.len() as u64));
        }
        self.phase = Phase::Spooling;
        self.actions.push_back(Action::Spool(Box::new(NewMessage { envelope, data })));
    }
}

impl Session {
    /// RFC 8601 §5: `Authentication-Results` fields in the content that claim our
    /// authserv-id (our host name) were not written by us: they go, before ours is added.
    fn remove_forged_results(&mut self) {
        const NAME: &[u8] = b"authentication-results:";
        let start = self.received_hdr_len.min(self.body.len());
        let content = &self.body[start..];
        let line_end = |from: usize| memchr::memchr(b'\n', &content[from..]).map_or(content.len(), |i| from + i + 1);
        let mut cuts = Vec::new();
        let mut pos = 0;
        while pos < content.len() {
            let first = line_end(pos);
            if matches!(&content[pos..first], b"\r\n" | b"\n") {
                break; // the end of the header section
            }
            // The field: its first line and its continuation lines.
            let mut end = first;
            while end < content.len() && matches!(content[end], b' ' | b'\t') {
                end = line_end(end);
            }
            let field = &content[pos..end];
            if field.len() > NAME.len() && field[..NAME.len()].eq_ignore_ascii_case(NAME) {
                let value = String::from_utf8_lossy(&field[NAME.len()..]);
                let id = value.trim_start().split([';', ' ', '\t', '\r', '\n']).next().unwrap_or("");
                if id.eq_ignore_ascii_case(&self.cfg.hostname) {
                    cuts.push(start + pos..start + end);
                }
            }
            pos = end;
        }
        for r in cuts.into_iter().rev() {
            self.body.drain(r);
        }
    }

    /// For authenticated senders (SPEC §5): a Message-ID and a Date (RFC 5322 §3.6) when the
    /// message has none, placed after our own header fields.
    fn add_missing_headers(&mut self, now: Now, env: &crate::spool::Envelope) {
        let content = &self.body[self.received_hdr_len..];
        let (mut has_id, mut has_date) = (false, false);
        let mut at_line_start = true;
        for (i, &c) in content.iter().enumerate() {
            if at_line_start {
                let rest = &content[i..];
                if rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
                    break; // end of the header section
                }
                let starts = |name: &[u8]| rest.len() > name.len() && rest[..name.len()].eq_ignore_ascii_case(name);
                has_id |= starts(b"message-id:");
                has_date |= starts(b"date:");
            }
            at_line_start = c == b'\n';
        }
        if has_id && has_date {
            return;
        }
        let mut add = Vec::with_capacity(128);
        if !has_id {
            let _ = write!(add, "Message-ID: <{}.{}@{}>\r\n", env.id, now.unix_ms, self.cfg.hostname);
        }
        if !has_date {
            let _ = write!(add, "Date: {}\r\n", rfc5322(now.unix_secs()));
        }
        let at = self.received_hdr_len;
        self.body.splice(at..at, add);
    }
}
