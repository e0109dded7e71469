//! The policy steps of a session: connect (PROXY header, access list, bans, DNSBL,
//! greeting), the MAIL FROM and RCPT TO rules, and the DNS answers they wait for.

use super::{Action, Phase, Session, Transaction};
use crate::directory::RcptVerdict;
use crate::dns::{DnsAnswer, DnsQuery};
use crate::policy::iplist::{is_private, reverse_name};
use crate::policy::{InboundAuth, Policy, PtrCheck, Refusal, RelayContext, Verdict, is_relay_syntax};
use crate::spool::Envelope;
use crate::util::time::{Now, rfc5322};
use crate::wire::proxy::{self, ProxyError};
use crate::wire::{Mailbox, Reply};

/// What an outstanding question is for.
#[derive(Debug)]
pub(super) enum Wait {
    /// DNSBL provider `i` of the policy, at connect.
    Dnsbl(usize),
    /// The client's PTR record, at MAIL; the transaction waits.
    Ptr(Box<Envelope>),
    /// The sender's domain, at MAIL.
    MailDomain(Box<Envelope>),
    /// A password check.
    Auth { login: String, maildir: Option<String> },
    /// Policy service `index` at `stage`.
    /// `mark`: the transaction's PREPEND headers before this recipient's (or the content's)
    /// services answered; a refusal drops the ones they added.
    Delegation { stage: crate::policy::delegation::Stage, index: usize, pending: super::delegate::Pending, mark: usize },
    /// Milter `index`, at the end of the content.
    Milter { index: usize },
    /// Milter `index`'s conversation opening, at MAIL (the transaction is set, not yet
    /// answered).
    MilterMail { index: usize },
    /// Milter `index` about a recipient our checks and the policy services accepted.
    MilterRcpt { index: usize, rcpt: Box<crate::spool::Recipient> },
    /// The SPF check of the transaction being opened, at MAIL.
    Spf(Box<Envelope>),
    /// DKIM and DMARC, at the end of the content.
    Dkim,
}

/// How a recipient is to be treated.
enum RcptKind {
    /// Hosted here: the directory's (or the accept-all domains') verdict applies.
    Local,
    /// Not hosted here, or written to route elsewhere: relaying.
    Relay,
}

impl Session {
    /// PROXY header bytes; returns the bytes used, or `None` to wait for more.
    pub(super) fn proxy_input(&mut self, now: Now, buf: &[u8]) -> Option<usize> {
        match proxy::parse(buf) {
            Ok(Some((h, used))) => {
                if let Some(src) = h.source {
                    self.peer = src;
                    self.trace_if_debugged();
                }
                // The per-address limit applies to the client, not to the load balancer.
                if let Some(limits) = &self.cfg.conn_limits {
                    let ip = self.peer.ip();
                    if !limits.try_acquire_ip(ip) {
                        let reply =
                            Reply::new(421, "4.7.0", "Error: too many connections from your address or network");
                        self.refuse(now.unix_ms, Refusal::ConnectionLimit, "max_connections_per_ip".into(), reply);
                        return Some(buf.len());
                    }
                    self.counted_ip = Some(ip);
                }
                self.phase = Phase::Command;
                self.connect(now);
                Some(used)
            }
            Ok(None) => None,
            Err(e) => {
                let reason = match e {
                    ProxyError::Missing => "Error: PROXY protocol header expected",
                    _ => "Error: malformed PROXY protocol header",
                };
                self.refuse(now.unix_ms, Refusal::Proxy, reason.into(), Reply::new(421, "4.7.0", reason));
                Some(buf.len())
            }
        }
    }

    /// The connect checks, then the greeting.
    pub(super) fn connect(&mut self, now: Now) {
        self.open_connect(now);
        let ip = self.peer.ip();
        if let Err((why, r)) = self.cfg.policy.connect(ip, now.unix_secs()) {
            let rule = if why == Refusal::Banned { "auto_ban" } else { "access_list" }.to_string();
            return self.refuse(now.unix_ms, why, rule, r);
        }
        if self.cfg.policy.dnsbl_applies(ip) {
            self.ask_dnsbl(0);
        } else {
            self.greet(now);
        }
    }

    fn ask_dnsbl(&mut self, i: usize) {
        let p = &self.cfg.policy.dnsbl[i];
        let q = DnsQuery::Dnsbl { name: reverse_name(self.peer.ip(), &p.zone), server: p.server };
        self.ask(Wait::Dnsbl(i), q);
    }

    fn ask(&mut self, wait: Wait, q: DnsQuery) {
        self.wait = Some(wait);
        self.phase = Phase::Waiting;
        self.actions.push_back(Action::Resolve(q));
    }

    /// The connect checks passed: the pregreet wait when the listener has one and the client
    /// is not known good, else the greeting.
    fn greet(&mut self, now: Now) {
        let p = &self.cfg.policy;
        let ip = self.peer.ip();
        if !self.cfg.pregreet.is_zero() && !p.whitelist.contains(ip) && !p.known_good.is_good(ip, now.unix_secs()) {
            self.phase = Phase::Pregreet;
            self.strict_pipelining = true;
            return self.wait_for(now, self.cfg.pregreet);
        }
        self.banner(now);
    }

    /// The client waited its turn: it is known good from now on (for later connections; this
    /// one stays under the pipelining test), and gets its greeting.
    pub(super) fn pregreet_passed(&mut self, now: Now) {
        self.cfg.policy.known_good.pass(self.peer.ip(), now.unix_secs());
        self.phase = Phase::Command;
        self.wait_for(now, self.cfg.command_timeout);
        self.banner(now);
    }

    /// Talked before the greeting (postscreen's pregreet test).
    pub(super) fn early_talker(&mut self, now: Now) {
        let r = Reply::new(554, "5.5.1", "Error: protocol error: talked before the greeting");
        self.refuse(now.unix_ms, Refusal::EarlyTalker, "pregreet".into(), r);
    }

    /// Pipelined without PIPELINING offered (RFC 2920 §3.1).
    pub(super) fn improper_pipelining(&mut self, now: Now) {
        let r = Reply::new(554, "5.5.1", "Error: improper use of SMTP command pipelining");
        self.refuse(now.unix_ms, Refusal::Pipelining, "pipelining".into(), r);
    }

    /// The greeting, unless the script's connect hook refuses the client.
    fn banner(&mut self, now: Now) {
        use crate::policy::script::{Hook, Verdict as S};
        if let Some(o) = self.script(Hook::Connect, None, None, None)
            && let S::Refuse(r) = o.verdict()
        {
            return self.refuse(now.unix_ms, Refusal::Script, "script".into(), r.clone());
        }
        let (host, banner) = (self.cfg.hostname.as_str(), self.cfg.banner.as_str());
        if self.cfg.policy.welcome.is_none() && !host.contains(['%', '\n']) && !banner.contains(['%', '\n']) {
            // The usual greeting, `host banner`, with nothing to replace: written in place.
            crate::wire::write_reply_lines(&mut self.out, 220, "", &[&[host, " ", banner]]);
            return;
        }
        let text = self.cfg.policy.welcome_text(host, banner, &rfc5322(now.unix_secs()));
        crate::wire::write_reply(&mut self.out, 220, "", &text);
    }

    /// The driver's answer to [`Action::Resolve`].
    pub fn provide_policy_answer(&mut self, now: Now, answer: DnsAnswer) {
        if self.phase != Phase::Waiting {
            return;
        }
        let Some(wait) = self.wait.take() else { return };
        self.phase = Phase::Command;
        self.wait_for(now, self.cfg.command_timeout);
        match wait {
            Wait::Dnsbl(i) => {
                // RFC 5782 §2.1: listed means an A record in 127/8; 127.255.255.x are the
                // lists' own error codes (query refused), not listings.
                let listed = matches!(&answer, DnsAnswer::Found(a)
                    if a.iter().any(|r| r.starts_with("127.") && !r.starts_with("127.255.255.")));
                if listed {
                    let zone = self.cfg.policy.dnsbl[i].zone.clone();
                    let reply = Policy::dnsbl_listed(self.peer.ip(), &zone);
                    return self.refuse(now.unix_ms, Refusal::Dnsbl, zone, reply);
                }
                // Not listed, or the list did not answer: a broken list must not stop mail.
                if i + 1 < self.cfg.policy.dnsbl.len() {
                    return self.ask_dnsbl(i + 1);
                }
                self.greet(now);
            }
            Wait::Ptr(env) => {
                match answer {
                    DnsAnswer::Found(_) => self.ptr_found = Some(true),
                    DnsAnswer::NotFound | DnsAnswer::NoSuchName => self.ptr_found = Some(false),
                    DnsAnswer::TempFail => {}
                }
                match (self.cfg.policy.ptr_check, &answer) {
                    (PtrCheck::Reject, DnsAnswer::NotFound | DnsAnswer::NoSuchName) => {
                        let text = format!("Error: client {} has no PTR record", self.peer.ip());
                        self.reject("mail", "ptr", &env.from, "", Reply::new(550, "5.7.25", text));
                    }
                    (PtrCheck::Reject, DnsAnswer::TempFail) => {
                        let text =
                            format!("Error: cannot look up the PTR record of {}, try again later", self.peer.ip());
                        self.reject("mail", "ptr", &env.from, "", Reply::new(450, "4.7.25", text));
                    }
                    _ => self.mail_domain_check(*env),
                }
            }
            Wait::MailDomain(env) => match answer {
                DnsAnswer::Found(_) => self.mail_accepted(*env),
                DnsAnswer::NotFound | DnsAnswer::NoSuchName => {
                    let r = Reply::new(550, "5.1.8", "Error: sender address rejected: domain not found");
                    self.reject("mail", "sender_domain", &env.from, "", r)
                }
                DnsAnswer::TempFail => {
                    let text = "Error: sender address rejected: cannot resolve the domain, try again later";
                    self.reject("mail", "sender_domain", &env.from, "", Reply::new(451, "4.4.3", text))
                }
            },
            Wait::Auth { .. }
            | Wait::Delegation { .. }
            | Wait::Milter { .. }
            | Wait::MilterMail { .. }
            | Wait::MilterRcpt { .. }
            | Wait::Spf(_)
            | Wait::Dkim => {}
        }
        self.process_pending(now);
    }

    /// True when `domain` is hosted here (directory or accept-all), in any case, with or
    /// without a trailing dot.
    pub(super) fn is_local_domain(&self, domain: &str) -> bool {
        let d = domain.trim_end_matches('.');
        // The accept-all domains are kept in lower case: a domain in lower case already (the
        // usual) is looked up as it is, without a lower-cased copy per command.
        self.directory.is_local_domain(d)
            || if d.bytes().any(|b| b.is_ascii_uppercase()) {
                self.cfg.local_domains.contains(&d.to_ascii_lowercase())
            } else {
                self.cfg.local_domains.contains(d)
            }
    }

    /// The MAIL FROM rules once the command itself is valid: authentication required,
    /// sender ownership, spoofing, then the DNS checks.
    pub(super) fn mail_policy(&mut self, env: Envelope) {
        let p = self.cfg.policy.clone();
        if self.cfg.require_auth && self.auth.is_none() {
            let r = Reply::new(530, "5.7.0", "Error: authentication required");
            return self.reject("mail", "auth_required", &env.from, "", r);
        }
        let sender_domain = env.from.rsplit_once('@').map(|(_, d)| d.to_string());
        if let (Some(id), false) = (&self.auth, env.from.is_empty())
            && p.sender_must_own
            && let Some(maildir) = &id.maildir
        {
            let owned = self.directory.mailbox_by_address(&env.from).is_some_and(|(_, m)| m == maildir);
            if !owned {
                let text = format!("Error: sender address <{}> not owned by user {}", env.from, id.login);
                return self.reject("mail", "sender_ownership", &env.from, "", Reply::new(553, "5.7.1", text));
            }
        }
        if let Some(d) = &sender_domain
            && self.is_local_domain(d)
            && let Verdict::Refuse(r) = p.spoofing(self.peer.ip(), self.auth.is_some())
        {
            return self.reject("mail", "spoofing", &env.from, "", r);
        }
        if p.ptr_check != PtrCheck::Never && self.auth.is_none() && !is_private(self.peer.ip()) {
            match self.ptr_found {
                None => return self.ask(Wait::Ptr(Box::new(env)), DnsQuery::Ptr(self.peer.ip())),
                Some(false) if p.ptr_check == PtrCheck::Reject => {
                    let text = format!("Error: client {} has no PTR record", self.peer.ip());
                    return self.reject("mail", "ptr", &env.from, "", Reply::new(550, "5.7.25", text));
                }
                _ => {}
            }
        }
        self.spf_check(env);
    }

    /// SPF (issue 14) for clients neither authenticated nor whitelisted; then the sender's
    /// domain.
    fn spf_check(&mut self, env: Envelope) {
        let p = &self.cfg.policy;
        let Some(_) = p.spf.as_ref().filter(|_| self.auth.is_none() && !p.whitelist.contains(self.peer.ip())) else {
            return self.mail_domain_check(env);
        };
        let req = crate::policy::spf::Request {
            ip: self.peer.ip(),
            helo: self.helo.clone().unwrap_or_default(),
            sender: env.from.clone(),
            hostname: self.cfg.hostname.clone(),
        };
        self.wait = Some(Wait::Spf(Box::new(env)));
        self.phase = Phase::Waiting;
        self.actions.push_back(Action::Spf(Box::new(req)));
    }

    /// The driver's answer to [`Action::Spf`].
    pub fn spf_done(&mut self, now: Now, o: crate::policy::spf::Outcome) {
        if self.phase != Phase::Waiting {
            return;
        }
        let Some(Wait::Spf(env)) = self.wait.take() else { return };
        self.phase = Phase::Command;
        self.wait_for(now, self.cfg.command_timeout);
        let refusal = self.cfg.policy.spf.as_ref().and_then(|s| s.settings.refusal(&o));
        match refusal {
            Some(r) => self.reject("mail", "spf", &env.from, "", r),
            None => {
                let helo = self.helo.clone().unwrap_or_default();
                let method = crate::policy::spf::method(&o, &env.from, &helo);
                self.spf_result = Some((o, method));
                self.mail_domain_check(*env);
            }
        }
        self.process_pending(now);
    }

    fn mail_domain_check(&mut self, env: Envelope) {
        let domain = env.from.rsplit_once('@').map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase());
        match domain {
            Some(d) if self.cfg.policy.sender_domain_resolves && !d.starts_with('[') && !self.is_local_domain(&d) => {
                self.ask(Wait::MailDomain(Box::new(env)), DnsQuery::MailDomain(d))
            }
            _ => self.mail_accepted(env),
        }
    }

    fn mail_accepted(&mut self, env: Envelope) {
        use crate::policy::script::{Hook, Verdict as S};
        let script = self.script(Hook::Mail, Some(&env), None, None);
        if let Some(S::Refuse(r)) = script.as_ref().map(|o| o.verdict()) {
            return self.reject("mail", "script", &env.from, "", r.clone());
        }
        self.tx = Transaction { envelope: Some(env), ..Transaction::default() };
        if let Some((o, method)) = self.spf_result.take() {
            self.tx.spf = Some(o);
            self.tx.auth_results.push(method);
        }
        if let Some(o) = script {
            self.keep_script_effects(o);
        }
        if !self.cfg.policy.milters.is_empty() {
            // Conversations of an earlier transaction that did not end are aborted first.
            self.actions.push_back(Action::MilterAbort);
            return self.ask_milter_open(0);
        }
        self.reply(Reply::new(250, "2.1.0", "Ok"));
    }

    /// The RCPT TO rules for `to`: relay or local, the directory's verdict, inbound
    /// authentication, the hourly limit.
    /// A refusal names its rule for the activity log.
    pub(super) fn rcpt_policy(&mut self, to: &Mailbox<'_>) -> Result<(), (&'static str, Reply)> {
        let p = self.cfg.policy.clone();
        let kind = if is_relay_syntax(to.local) {
            RcptKind::Relay
        } else if to.is_domain_literal() {
            if p.literal_is_ours(to.domain, &self.cfg.own_addresses) { RcptKind::Local } else { RcptKind::Relay }
        } else if to.domain.is_empty() || self.is_local_domain(to.domain) {
            RcptKind::Local
        } else {
            RcptKind::Relay
        };
        let sender = self.tx.envelope.as_ref().map(|e| e.from.as_str()).filter(|f| !f.is_empty());
        match kind {
            RcptKind::Relay => {
                let sender_local =
                    sender.and_then(|s| s.rsplit_once('@')).is_some_and(|(_, d)| self.is_local_domain(d));
                let cx = RelayContext {
                    client: self.peer.ip(),
                    authenticated: self.auth.is_some(),
                    sender_local,
                    now_unix: self.last_unix,
                };
                if let Verdict::Refuse(r) | Verdict::Drop(r) = p.relay(&cx) {
                    return Err(("relay", r));
                }
                // Permitted relaying to a domain of ours still gets the directory's verdict.
                if !to.is_domain_literal() && self.is_local_domain(to.domain) && !is_relay_syntax(to.local) {
                    self.local_recipient(to)?;
                }
            }
            RcptKind::Local if to.is_domain_literal() => {
                // user@[our address]: a mailbox by its bare name in the default postoffice.
                if !to.local.eq_ignore_ascii_case("postmaster") && self.directory.mailbox_for_login(to.local).is_none()
                {
                    let r = crate::directory::Refusal::UnknownUser;
                    return Err((r.rule(), r.reply()));
                }
            }
            RcptKind::Local => {
                self.inbound_auth(to)?;
                self.local_recipient(to)?;
            }
        }
        // Greylisting (issue 14): unauthenticated clients, once the recipient is known good.
        let spf_passed = self.tx.spf.as_ref().is_some_and(|o| o.result == crate::policy::spf::Result::Pass);
        if let (Some(g), None) = (&p.greylist, &self.auth)
            && !(spf_passed && g.settings().exempt_spf_pass)
        {
            let sender = self.tx.envelope.as_ref().map_or("", |e| e.from.as_str());
            if let crate::policy::greylist::Check::Greylisted { retry_in } =
                g.check(self.peer.ip(), sender, &to.to_string(), self.last_unix)
            {
                let text = format!("Error: greylisted, try again in {retry_in} seconds");
                return Err(("greylist", Reply::new(451, "4.7.1", text)));
            }
        }
        if let Some(limiter) = &p.rcpt_per_hour {
            let ip;
            let identity = match &self.auth {
                Some(a) => a.login.as_str(),
                None => {
                    ip = self.peer.ip().to_string();
                    ip.as_str()
                }
            };
            if !limiter.try_acquire(identity, self.last_unix) {
                let r = Reply::new(451, "4.7.1", "Error: too many recipients this hour, try again later");
                return Err(("rate", r));
            }
        }
        // The client's network shares one allowance (an authenticated user is counted as
        // the user above, wherever it connects from).
        if let (Some(limiter), None) = (&p.rcpt_per_hour_per_network, &self.auth)
            && !limiter.try_acquire(&crate::policy::conns::network_key(self.peer.ip()), self.last_unix)
        {
            let r = Reply::new(451, "4.7.1", "Error: too many recipients from your network this hour, try again later");
            return Err(("rate", r));
        }
        Ok(())
    }

    /// Inbound authentication for local mailboxes (530 5.7.0).
    fn inbound_auth(&self, to: &Mailbox<'_>) -> Result<(), (&'static str, Reply)> {
        if self.auth.is_some() {
            return Ok(());
        }
        let required = match self.cfg.policy.inbound_auth {
            InboundAuth::NotRequired => false,
            InboundAuth::Required => true,
            InboundAuth::PerPostoffice => self.directory.domain_requires_auth(to.domain.trim_end_matches('.')),
        };
        match required {
            true => Err(("auth_required", Reply::new(530, "5.7.0", "Error: authentication required"))),
            false => Ok(()),
        }
    }

    /// The directory's verdict for a recipient of a local domain; the accept-all domains of
    /// the configuration take any address.
    fn local_recipient(&self, to: &Mailbox<'_>) -> Result<(), (&'static str, Reply)> {
        use std::fmt::Write as _;
        let mut addr = String::with_capacity(to.local.len() + to.domain.len() + 1);
        let _ = write!(addr, "{to}");
        let sender = self.tx.envelope.as_ref().map(|e| e.from.as_str()).filter(|f| !f.is_empty());
        let usage: &dyn crate::directory::QuotaView = match &self.cfg.usage {
            Some(u) => u.as_ref(),
            None => &crate::directory::NoUsage,
        };
        match self.directory.check_recipient_with(sender, &addr, self.cfg.catch_alls, usage) {
            RcptVerdict::Accept(_) => Ok(()),
            RcptVerdict::Refuse(r) => Err((r.rule(), r.reply())),
            RcptVerdict::NotLocal if self.is_local_domain(to.domain) || to.domain.is_empty() => Ok(()),
            RcptVerdict::NotLocal => Err(("relay", crate::policy::relay_denied())),
        }
    }

    /// The failure limit was reached: ban the client when the policy says so.
    pub(super) fn auto_ban(&mut self) {
        let p = &self.cfg.policy;
        let (Some(bans), Some(d)) = (&p.bans, p.auto_ban) else { return };
        let ip = self.peer.ip();
        // A client on this host (an operator's probe, monitoring) is never banned: a ban
        // there could only be lifted by stopping the server.
        if p.whitelist.contains(ip) || ip.to_canonical().is_loopback() {
            return;
        }
        let until = if d.is_zero() { 0 } else { self.last_unix + d.as_secs() };
        bans.ban(ip, until, self.last_unix);
        log::warn!("auto-ban: {ip} until {}", if until == 0 { "revoked".to_string() } else { until.to_string() });
    }
}
