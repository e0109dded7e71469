//! Policy at the door (SPEC §2–§5): who may connect, relay, send as whom, and how often.
//!
//! Everything here is a pure decision over its inputs: the client address, the session's
//! state, the directory's answer, DNS answers and shared counters passed in. Nothing reads a
//! clock (time is an argument) or a socket. The few pieces of shared state (auto-bans, rate
//! counters, the POP-before-SMTP lookup, the password verifier) sit behind small types the
//! runtime creates once and every shard shares.
//!
//! Each decision returns a [`Verdict`] carrying the exact reply, so the session only writes
//! it.
//!
//! # Layout
//!
//! - `mod.rs`: [`Policy`] (the rules of one configuration) and the decisions: access control
//!   at connect, EHLO blocking, relay, spoofing, sender ownership, domain literals.
//! - [`iplist`]: [`IpList`], addresses, CIDR ranges and `*` wildcards.
//! - [`bans`]: [`BanList`], auto-bans with expiry, saved atomically.
//! - [`rate`]: [`RateLimiter`], recipients per hour per identity, sharded counters.
//! - [`pop`]: POP-before-SMTP behind [`PopLookup`].
//! - [`auth`]: SASL PLAIN/LOGIN decoding and the off-shard argon2 [`auth::Verifier`].

pub mod auth;
pub mod bans;
pub mod conns;
pub mod delegation;
pub mod dkim;
pub mod dkim_sign;
pub mod early;
pub mod greylist;
pub mod iplist;
pub mod milter;
pub mod pop;
pub mod rate;
pub mod script;
pub mod service_stream;
pub mod spf;
mod spf_eval;

pub use bans::{BanError, BanList};
pub use conns::ConnLimits;
pub use iplist::{IpList, IpListError};
pub use pop::{DropFolder, PopLookup};
pub use rate::RateLimiter;

use crate::wire::Reply;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The outcome of a check: go on, or answer with this reply (and maybe close).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Refuse the command with this reply; the session continues.
    Refuse(Reply),
    /// Send this reply and close the connection.
    Drop(Reply),
}

/// Why a connection was closed before it was served: the exit summary (and the logs and
/// metrics to come) count refusals by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `[limits] max_connections` or `max_connections_per_ip` (421 4.7.0).
    ConnectionLimit,
    /// The access list (554 5.7.1).
    AccessList,
    /// An automatic ban (554 5.7.1).
    Banned,
    /// A DNS blacklist lists the client (554 5.7.1).
    Dnsbl,
    /// A blocked HELO/EHLO name (554 5.7.1).
    EhloBlock,
    /// A missing or malformed PROXY protocol header (421 4.7.0).
    Proxy,
    /// The operator's script at connect (its reply).
    Script,
    /// Talked before the greeting (554 5.5.1).
    EarlyTalker,
    /// Pipelined commands without PIPELINING offered (554 5.5.1).
    Pipelining,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::ConnectionLimit,
        Refusal::AccessList,
        Refusal::Banned,
        Refusal::Dnsbl,
        Refusal::EhloBlock,
        Refusal::Proxy,
        Refusal::Script,
        Refusal::EarlyTalker,
        Refusal::Pipelining,
    ];

    /// How the exit summary and logs name it.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::ConnectionLimit => "connection limits",
            Refusal::AccessList => "access list",
            Refusal::Banned => "auto-ban",
            Refusal::Dnsbl => "DNSBL",
            Refusal::EhloBlock => "EHLO block",
            Refusal::Proxy => "PROXY header",
            Refusal::Script => "script",
            Refusal::EarlyTalker => "early talker",
            Refusal::Pipelining => "improper pipelining",
        }
    }
}

/// Refused connections, by [`Refusal`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusalCounts([u64; Refusal::ALL.len()]);

impl RefusalCounts {
    pub fn add(&mut self, r: Refusal) {
        self.0[r as usize] += 1;
    }

    pub fn get(&self, r: Refusal) -> u64 {
        self.0[r as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &RefusalCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// "access list 3, DNSBL 1": the reasons that refused something, in [`Refusal::ALL`]
    /// order (empty when none did).
    pub fn describe(&self) -> String {
        let parts: Vec<String> = Refusal::ALL
            .iter()
            .filter(|&&r| self.get(r) > 0)
            .map(|&r| format!("{} {}", r.name(), self.get(r)))
            .collect();
        parts.join(", ")
    }
}

/// `[policy] access_control`: what the access list means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclMode {
    /// Listed addresses are refused; everyone else may connect.
    #[default]
    DenyListed,
    /// Only listed addresses may connect.
    AllowOnlyListed,
}

/// `[[listener]] auth`: may clients authenticate on this listener?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    Always,
    Never,
    /// Only over TLS (538 5.7.11 before it).
    #[default]
    TlsOnly,
}

/// `[policy] sender_spoofing`: who may use an address of a local domain in MAIL FROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spoofing {
    /// Anyone (an MX receives mail "from" its own domains, e.g. via forwarders).
    #[default]
    Anyone,
    /// Only authenticated sessions.
    AuthenticatedOnly,
    /// Authenticated sessions and privileged IP ranges.
    Authorized,
}

/// `[policy] ptr_check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PtrCheck {
    #[default]
    Never,
    /// Unauthenticated clients without a PTR record get 550 5.7.25 at MAIL.
    Reject,
    /// Their messages get a header the spam filter can score.
    Tag,
}

/// `[policy] inbound_auth`: must senders to local mailboxes authenticate?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundAuth {
    NotRequired,
    /// Every connection (530 5.7.0 at RCPT otherwise).
    Required,
    /// As the recipient's postoffice says (`require_auth_inbound`).
    #[default]
    PerPostoffice,
}

/// One DNS blacklist (RFC 5782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsblProvider {
    /// The zone, e.g. `zen.spamhaus.org`; the answer names it.
    pub zone: String,
    /// Ask this server instead of the configured resolvers.
    pub server: Option<std::net::SocketAddr>,
}

/// The relay rules (SPEC §4): relay needs `enabled` and one of the others.
#[derive(Debug, Clone)]
pub struct RelayRules {
    pub enabled: bool,
    pub authenticated: bool,
    pub privileged: IpList,
    pub local_senders: bool,
    pub pop_before_smtp: Option<Arc<dyn PopLookup>>,
}

impl Default for RelayRules {
    fn default() -> Self {
        RelayRules {
            enabled: true,
            authenticated: true,
            privileged: IpList::default(),
            local_senders: false,
            pop_before_smtp: None,
        }
    }
}

/// The rules of one configuration, shared by every session (see the module documentation).
#[derive(Debug, Clone)]
pub struct Policy {
    pub acl_mode: AclMode,
    pub acl: IpList,
    /// Exempt from DNSBL and auto-ban.
    pub whitelist: IpList,
    /// Auto-bans (looked up at connect, added at the failure limit).
    pub bans: Option<Arc<BanList>>,
    /// Ban an address that reached the failure limit, for this long (zero: for ever).
    pub auto_ban: Option<Duration>,
    pub dnsbl: Vec<DnsblProvider>,
    pub ptr_check: PtrCheck,
    /// Header added to messages of clients without a PTR record in `tag` mode.
    pub ptr_header: String,
    /// Lower case substrings of HELO/EHLO arguments that drop the connection.
    pub ehlo_block: Vec<String>,
    pub relay: RelayRules,
    pub spoofing: Spoofing,
    /// The sender's domain must be local or have MX, A or AAAA records.
    pub sender_domain_resolves: bool,
    /// Authenticated senders must use an address of their own mailbox.
    pub sender_must_own: bool,
    pub domain_literals: bool,
    /// Addresses accepted in domain literals besides the listeners' own.
    pub literal_addresses: Vec<IpAddr>,
    pub rcpt_per_hour: Option<Arc<RateLimiter>>,
    /// Recipients per hour per network of unauthenticated clients ([`conns::network_key`]).
    pub rcpt_per_hour_per_network: Option<Arc<RateLimiter>>,
    pub inbound_auth: InboundAuth,
    /// Verbs answered 502 5.5.1, upper case.
    pub disabled_commands: Vec<String>,
    /// The whole 220 text, with `%LOCALDOMAIN%` and `%TIME%`.
    pub welcome: Option<String>,
    /// Add Message-ID and Date for authenticated senders when missing.
    pub add_missing_headers: bool,
    /// Login against the directory's mailbox passwords.
    pub auth_directory: bool,
    /// A fixed relay login: (user, password).
    pub auth_fixed: Option<(String, String)>,
    pub verifier: Option<Arc<auth::Verifier>>,
    /// The resolver thread for DNSBL, PTR and sender-domain checks (when any is on).
    pub dns: Option<crate::dns::Dns>,
    /// Policy services asked over Postfix's policy delegation protocol, in order.
    pub delegation: Vec<Arc<delegation::PolicyService>>,
    /// Milters asked at the end of the content, in order.
    pub milters: Vec<Arc<milter::Milter>>,
    /// The operator's script (`[scripts]`), compiled; each shard runs it in its own state.
    pub scripts: Option<Arc<script::Scripts>>,
    /// Greylisting at RCPT (`[greylist]`), for clients not authenticated.
    pub greylist: Option<Arc<greylist::Greylist>>,
    /// Clients that passed a listener's pregreet test (`[[listener]] pregreet`).
    pub known_good: Arc<early::KnownGood>,
    /// SPF at MAIL FROM (`[spf]`), for clients neither authenticated nor whitelisted.
    pub spf: Option<Arc<spf::SpfService>>,
    /// DKIM and DMARC at the end of the content (`[dkim]`, `[dmarc]`), for the same clients.
    pub dkim: Option<Arc<dkim::DkimService>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            acl_mode: AclMode::DenyListed,
            acl: IpList::default(),
            whitelist: IpList::default(),
            bans: None,
            auto_ban: None,
            dnsbl: Vec::new(),
            ptr_check: PtrCheck::Never,
            ptr_header: "X-Ringmx-PTR".into(),
            ehlo_block: Vec::new(),
            relay: RelayRules::default(),
            spoofing: Spoofing::Anyone,
            sender_domain_resolves: false,
            sender_must_own: true,
            domain_literals: false,
            literal_addresses: Vec::new(),
            rcpt_per_hour: None,
            rcpt_per_hour_per_network: None,
            inbound_auth: InboundAuth::PerPostoffice,
            disabled_commands: ["VRFY", "EXPN", "ETRN", "TURN"].map(String::from).to_vec(),
            welcome: None,
            add_missing_headers: true,
            auth_directory: true,
            auth_fixed: None,
            verifier: None,
            dns: None,
            delegation: Vec::new(),
            milters: Vec::new(),
            scripts: None,
            greylist: None,
            known_good: Arc::default(),
            spf: None,
            dkim: None,
        }
    }
}

/// What the relay decision needs to know about the session.
#[derive(Debug, Clone, Copy)]
pub struct RelayContext {
    pub client: IpAddr,
    pub authenticated: bool,
    /// The envelope sender's domain is one of ours.
    pub sender_local: bool,
    pub now_unix: u64,
}

pub fn relay_denied() -> Reply {
    Reply::new(550, "5.7.1", "Error: relay access denied")
}

impl Policy {
    /// At connect: the access list and auto-bans (554 5.7.1).
    pub fn connect(&self, client: IpAddr, now_unix: u64) -> Result<(), (Refusal, Reply)> {
        let listed = self.acl.contains(client);
        let refused = match self.acl_mode {
            AclMode::DenyListed => listed,
            AclMode::AllowOnlyListed => !listed,
        };
        if refused {
            return Err((Refusal::AccessList, Reply::new(554, "5.7.1", format!("Error: access denied for {client}"))));
        }
        if !self.whitelist.contains(client) && self.bans.as_ref().is_some_and(|b| b.is_banned(client, now_unix)) {
            let reply = Reply::new(554, "5.7.1", format!("Error: access denied for {client} (banned)"));
            return Err((Refusal::Banned, reply));
        }
        Ok(())
    }

    /// True when DNSBL lookups apply to `client` (not whitelisted, not private).
    pub fn dnsbl_applies(&self, client: IpAddr) -> bool {
        !self.dnsbl.is_empty() && !self.whitelist.contains(client) && !iplist::is_private(client)
    }

    /// The reply for a client a DNSBL lists.
    pub fn dnsbl_listed(client: IpAddr, zone: &str) -> Reply {
        Reply::new(554, "5.7.1", format!("Error: client {client} is listed by {zone}"))
    }

    /// HELO/EHLO argument: a blocked string drops the connection (554 5.7.1).
    pub fn helo(&self, arg: &str) -> Verdict {
        if self.ehlo_block.is_empty() {
            return Verdict::Accept;
        }
        let lower = arg.to_ascii_lowercase();
        if self.ehlo_block.iter().any(|b| lower.contains(b.as_str())) {
            return Verdict::Drop(Reply::new(554, "5.7.1", "Error: HELO/EHLO name refused"));
        }
        Verdict::Accept
    }

    /// May this session relay (send to a recipient not hosted here)? 550 5.7.1 if not.
    pub fn relay(&self, cx: &RelayContext) -> Verdict {
        let r = &self.relay;
        let allowed = r.enabled
            && ((r.authenticated && cx.authenticated)
                || r.privileged.contains(cx.client)
                || (r.local_senders && cx.sender_local)
                || r.pop_before_smtp.as_ref().is_some_and(|p| p.recent(cx.client, cx.now_unix)));
        if allowed { Verdict::Accept } else { Verdict::Refuse(relay_denied()) }
    }

    /// MAIL FROM with an address of a local domain: allowed to this session?
    pub fn spoofing(&self, client: IpAddr, authenticated: bool) -> Verdict {
        let ok = match self.spoofing {
            Spoofing::Anyone => true,
            Spoofing::AuthenticatedOnly => authenticated,
            Spoofing::Authorized => authenticated || self.relay.privileged.contains(client),
        };
        if ok {
            Verdict::Accept
        } else {
            Verdict::Refuse(Reply::new(553, "5.7.1", "Error: sender address of a local domain needs authentication"))
        }
    }

    /// True when the verb is switched off.
    pub fn is_disabled(&self, verb: &str) -> bool {
        self.disabled_commands.iter().any(|v| v == verb)
    }

    /// Is `literal` (the domain of `user@[...]`, brackets included) one of ours?
    /// `own` are the listeners' bound addresses.
    pub fn literal_is_ours(&self, literal: &str, own: &[IpAddr]) -> bool {
        if !self.domain_literals {
            return false;
        }
        let Some(inner) = literal.strip_prefix('[').and_then(|l| l.strip_suffix(']')) else { return false };
        let inner = match inner.get(..5) {
            Some(p) if p.eq_ignore_ascii_case("IPv6:") => &inner[5..],
            _ => inner,
        };
        let Ok(ip) = inner.parse::<IpAddr>() else { return false };
        let ip = iplist::canonical(ip);
        own.iter().chain(&self.literal_addresses).any(|a| iplist::canonical(*a) == ip)
    }

    /// The greeting text after `220 `.
    pub fn welcome_text(&self, hostname: &str, banner: &str, time: &str) -> String {
        let text = match &self.welcome {
            Some(w) => w.clone(),
            None => format!("{hostname} {banner}"),
        };
        text.replace("%LOCALDOMAIN%", hostname).replace("%TIME%", time)
    }
}

/// Recipient forms that route mail elsewhere through a local domain: `user%remote@local`
/// (percent hack), `remote!user@local` (bang path), `"user@remote"@local` (quoted `@`).
/// They are treated as relaying, never as local mail.
pub fn is_relay_syntax(local_part: &str) -> bool {
    local_part.contains(['%', '!', '@'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cx(client: &str, authenticated: bool, sender_local: bool) -> RelayContext {
        RelayContext { client: ip(client), authenticated, sender_local, now_unix: 1000 }
    }

    #[test]
    fn access_control_modes_and_bans() {
        let mut p = Policy { acl: IpList::parse(&["192.0.2.*"]).unwrap(), ..Policy::default() };
        assert!(
            matches!(p.connect(ip("192.0.2.9"), 0), Err((Refusal::AccessList, r)) if r.code == 554 && r.status == "5.7.1")
        );
        assert_eq!(p.connect(ip("198.51.100.1"), 0), Ok(()));
        p.acl_mode = AclMode::AllowOnlyListed;
        assert_eq!(p.connect(ip("192.0.2.9"), 0), Ok(()));
        assert!(matches!(p.connect(ip("198.51.100.1"), 0), Err((Refusal::AccessList, _))));
        let bans = Arc::new(BanList::in_memory());
        bans.ban(ip("192.0.2.50"), 500, 0);
        p.bans = Some(bans);
        assert!(matches!(p.connect(ip("192.0.2.50"), 100), Err((Refusal::Banned, _))));
        assert_eq!(p.connect(ip("192.0.2.50"), 500), Ok(()));
        p.whitelist = IpList::parse(&["192.0.2.50"]).unwrap();
        assert_eq!(p.connect(ip("192.0.2.50"), 100), Ok(()));
    }

    #[test]
    fn relay_needs_enabled_and_one_reason() {
        let mut p = Policy::default();
        assert_eq!(p.relay(&cx("192.0.2.1", false, false)), Verdict::Refuse(relay_denied()));
        assert_eq!(p.relay(&cx("192.0.2.1", true, false)), Verdict::Accept);
        assert_eq!(p.relay(&cx("127.0.0.1", false, true)), Verdict::Refuse(relay_denied()), "no loopback privilege");
        p.relay.local_senders = true;
        assert_eq!(p.relay(&cx("192.0.2.1", false, true)), Verdict::Accept);
        p.relay.privileged = IpList::parse(&["10.0.0.0/8"]).unwrap();
        assert_eq!(p.relay(&cx("10.1.1.1", false, false)), Verdict::Accept);
        p.relay.enabled = false;
        assert_eq!(p.relay(&cx("10.1.1.1", true, true)), Verdict::Refuse(relay_denied()));
    }

    #[test]
    fn spoofing_rules() {
        let mut p = Policy {
            relay: RelayRules { privileged: IpList::parse(&["10.*"]).unwrap(), ..Default::default() },
            ..Default::default()
        };
        assert_eq!(p.spoofing(ip("192.0.2.1"), false), Verdict::Accept);
        p.spoofing = Spoofing::AuthenticatedOnly;
        assert!(matches!(p.spoofing(ip("10.0.0.1"), false), Verdict::Refuse(r) if r.code == 553));
        assert_eq!(p.spoofing(ip("192.0.2.1"), true), Verdict::Accept);
        p.spoofing = Spoofing::Authorized;
        assert_eq!(p.spoofing(ip("10.0.0.1"), false), Verdict::Accept);
        assert!(matches!(p.spoofing(ip("192.0.2.1"), false), Verdict::Refuse(_)));
    }

    #[test]
    fn helo_blocking_and_literals_and_welcome() {
        let p = Policy {
            ehlo_block: vec!["ylmf-pc".into()],
            domain_literals: true,
            literal_addresses: vec![ip("203.0.113.5")],
            welcome: Some("%LOCALDOMAIN% at %TIME%".into()),
            ..Policy::default()
        };
        assert!(matches!(p.helo("YLMF-PC"), Verdict::Drop(_)));
        assert_eq!(p.helo("mail.example"), Verdict::Accept);
        assert!(p.literal_is_ours("[203.0.113.5]", &[]));
        assert!(p.literal_is_ours("[192.0.2.1]", &[ip("192.0.2.1")]));
        assert!(p.literal_is_ours("[IPv6:2001:db8::1]", &[ip("2001:db8::1")]));
        assert!(!p.literal_is_ours("[198.51.100.1]", &[ip("192.0.2.1")]));
        assert!(!Policy::default().literal_is_ours("[203.0.113.5]", &[ip("203.0.113.5")]));
        assert_eq!(p.welcome_text("mx.example", "ESMTP", "Sun, 22 Nov 2026"), "mx.example at Sun, 22 Nov 2026");
        assert_eq!(Policy::default().welcome_text("mx", "ESMTP ringmx", "t"), "mx ESMTP ringmx");
        assert!(is_relay_syntax("user%remote.example") && is_relay_syntax("remote!user") && is_relay_syntax("\"a@b\""));
        assert!(!is_relay_syntax("first.last+tag"));
    }
}
