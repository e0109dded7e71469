//! `check_host()` of RFC 7208 §4, evaluated here over the SPF thread's resolver.
//!
//! `mail-auth` parses the record (§12's grammar) and expands macros (§7); the evaluation is
//! ours so that every limit of §4.6.4 holds: at most ten terms that query DNS (`include`,
//! `a`, `mx`, `ptr`, `exists`, `redirect`), at most ten MX names per `mx` and ten PTR names
//! per `ptr` or `%{p}`, and at most two *void lookups* (an answer with no records, or
//! NXDOMAIN) among those terms (`[spf] max_void_lookups`); past any of them the result is
//! permerror. A void lookup counts once per term: the TXT query of an `include` or
//! `redirect`, the A/AAAA query of `a`, the MX query of `mx` (not the addresses of its
//! exchanges), the A query of `exists`, the PTR query of `ptr`.

use super::spf::Result;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::spf::{Macro, Mechanism, Qualifier, Spf, Variables};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

/// §4.6.4: terms that query DNS.
const MAX_LOOKUPS: u32 = 10;
/// §4.6.4: names of one `mx` or `ptr` looked up.
const MAX_NAMES: usize = 10;

/// What one query gave.
enum Answer<T> {
    Records(T),
    /// NXDOMAIN, or no records of the type asked: a void lookup.
    Void,
    /// A server failure or time-out.
    Temp,
}

/// Why an evaluation stopped before its end.
enum Stop {
    Temp,
    Perm,
}

type Step<T> = std::result::Result<T, Stop>;

/// A record's result and, for a fail, its explanation.
type Verdict = (Result, Option<String>);

/// An evaluation, boxed: `include` and `redirect` recurse.
type Evaluation<'a> = Pin<Box<dyn Future<Output = Step<Verdict>> + Send + 'a>>;

/// One `check_host()` with its counters (shared by the records it includes or redirects to).
pub(crate) struct Check<'a> {
    resolver: &'a TokioResolver,
    ip: IpAddr,
    /// `<sender>`: `local@domain` (`postmaster@HELO` for the HELO identity, §2.3).
    sender: String,
    helo: &'a str,
    hostname: &'a str,
    max_void: u32,
    lookups: u32,
    voids: u32,
    /// `%{p}`, once looked up.
    validated: Option<String>,
}

impl<'a> Check<'a> {
    pub(crate) fn new(
        resolver: &'a TokioResolver,
        ip: IpAddr,
        sender: String,
        helo: &'a str,
        hostname: &'a str,
        max_void: u32,
    ) -> Check<'a> {
        // RFC 7208 §5: a client on an IPv4-mapped IPv6 address (a dual-stack listener) is
        // an IPv4 client: its `A` records and `ip4` mechanisms apply.
        let ip = ip.to_canonical();
        Check { resolver, ip, sender, helo, hostname, max_void, lookups: 0, voids: 0, validated: None }
    }

    /// `check_host(<ip>, <domain>, <sender>)`: the result and, for a fail, the domain's
    /// explanation (§6.2).
    pub(crate) async fn run(&mut self, domain: &str) -> Verdict {
        match self.evaluate(domain.to_ascii_lowercase(), false).await {
            Ok(r) => r,
            Err(Stop::Temp) => (Result::TempError, None),
            Err(Stop::Perm) => (Result::PermError, None),
        }
    }

    /// One record's evaluation (§4.6); `term`: reached by `include` or `redirect`, whose
    /// TXT query counts as a void lookup when it finds nothing.
    fn evaluate(&mut self, domain: String, term: bool) -> Evaluation<'_> {
        Box::pin(async move {
            // §4.3: a malformed or single-label name has no record.
            if !valid_domain(&domain) {
                return Ok((Result::None, None));
            }
            let record = match self.txt(&domain).await {
                Answer::Records(txts) => {
                    // §4.5: the records that start "v=spf1"; more than one is an error.
                    let mut spf = txts.iter().filter(|t| is_spf(t));
                    match (spf.next(), spf.next()) {
                        (None, _) => return Ok((Result::None, None)),
                        (Some(_), Some(_)) => return Err(Stop::Perm),
                        (Some(t), None) => Spf::parse(t).map_err(|_| Stop::Perm)?,
                    }
                }
                Answer::Void => {
                    if term {
                        self.void()?;
                    }
                    return Ok((Result::None, None));
                }
                Answer::Temp => return Err(Stop::Temp),
            };
            let mut vars = self.variables(&domain);
            let mut has_all = false;
            for directive in record.directives.iter() {
                if let Some(m) = target_macro(&directive.mechanism)
                    && m.needs_ptr()
                {
                    self.validate_ptr(&domain, &mut vars).await;
                }
                has_all |= matches!(directive.mechanism, Mechanism::All);
                if self.matches(&directive.mechanism, &domain, &vars).await? {
                    let r = qualified(&directive.qualifier);
                    let why = match (r, &record.exp) {
                        (Result::Fail, Some(exp)) => self.explanation(exp, &domain, &mut vars).await,
                        _ => None,
                    };
                    return Ok((r, why));
                }
            }
            // §6.1: redirect= applies when no mechanism matched (and there is no `all`).
            if let (Some(target), false) = (&record.redirect, has_all) {
                self.term()?;
                if target.needs_ptr() {
                    self.validate_ptr(&domain, &mut vars).await;
                }
                let name = expand(target, &vars, &domain);
                // The target's own exp= is the one used, never this record's (§6.2).
                return match self.evaluate(name, true).await? {
                    (Result::None, _) => Err(Stop::Perm),
                    r => Ok(r),
                };
            }
            // §4.7: nothing matched.
            Ok((Result::Neutral, None))
        })
    }

    /// Whether `m` matches `<ip>` (§5).
    async fn matches(&mut self, m: &Mechanism, domain: &str, vars: &Variables<'_>) -> Step<bool> {
        match m {
            Mechanism::All => Ok(true),
            Mechanism::Ip4 { addr, mask } => Ok(match self.ip {
                IpAddr::V4(ip) => u32::from(ip) & mask == u32::from(*addr) & mask,
                IpAddr::V6(_) => false,
            }),
            Mechanism::Ip6 { addr, mask } => Ok(match self.ip {
                IpAddr::V6(ip) => u128::from(ip) & mask == u128::from(*addr) & mask,
                IpAddr::V4(_) => false,
            }),
            Mechanism::A { macro_string, ip4_mask, ip6_mask } => {
                self.term()?;
                let name = expand(macro_string, vars, domain);
                match self.addresses(&name, self.ip.is_ipv6()).await {
                    Answer::Records(addrs) => Ok(addrs.iter().any(|a| self.within(a, *ip4_mask, *ip6_mask))),
                    Answer::Void => self.void().map(|_| false),
                    Answer::Temp => Err(Stop::Temp),
                }
            }
            Mechanism::Mx { macro_string, ip4_mask, ip6_mask } => {
                self.term()?;
                let name = expand(macro_string, vars, domain);
                let exchanges = match self.mx(&name).await {
                    Answer::Records(x) => x,
                    Answer::Void => return self.void().map(|_| false),
                    Answer::Temp => return Err(Stop::Temp),
                };
                // §4.6.4: more than ten exchanges is an error of the mechanism.
                if exchanges.len() > MAX_NAMES {
                    return Err(Stop::Perm);
                }
                for x in &exchanges {
                    match self.addresses(x, self.ip.is_ipv6()).await {
                        Answer::Records(addrs) if addrs.iter().any(|a| self.within(a, *ip4_mask, *ip6_mask)) => {
                            return Ok(true);
                        }
                        Answer::Records(_) | Answer::Void => {}
                        Answer::Temp => return Err(Stop::Temp),
                    }
                }
                Ok(false)
            }
            Mechanism::Include { macro_string } => {
                self.term()?;
                let name = expand(macro_string, vars, domain);
                // §5.2: pass matches; fail, softfail and neutral do not; no record is an error.
                match self.evaluate(name, true).await? {
                    (Result::Pass, _) => Ok(true),
                    (Result::Fail | Result::SoftFail | Result::Neutral, _) => Ok(false),
                    (Result::TempError, _) => Err(Stop::Temp),
                    (Result::PermError | Result::None, _) => Err(Stop::Perm),
                }
            }
            Mechanism::Ptr { macro_string } => {
                self.term()?;
                let target = expand(macro_string, vars, domain);
                // §5.5: the names of <ip> that lead back to it, one of them at or under the
                // target; a DNS error only fails to match.
                let names = match self.ptr().await {
                    Answer::Records(n) => n,
                    Answer::Void => return self.void().map(|_| false),
                    Answer::Temp => return Ok(false),
                };
                for n in names.iter().take(MAX_NAMES) {
                    if under(n, &target) && self.leads_back(n).await {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Exists { macro_string } => {
                self.term()?;
                let name = expand(macro_string, vars, domain);
                // §5.7: an A query whatever the client's address family.
                match self.addresses(&name, false).await {
                    Answer::Records(a) => Ok(!a.is_empty()),
                    Answer::Void => self.void().map(|_| false),
                    Answer::Temp => Err(Stop::Temp),
                }
            }
        }
    }

    /// §6.2: the explanation of a fail; any trouble finding it gives none.
    async fn explanation(&mut self, exp: &Macro, domain: &str, vars: &mut Variables<'_>) -> Option<String> {
        if exp.needs_ptr() {
            self.validate_ptr(domain, vars).await;
        }
        let name = expand(exp, vars, domain);
        let Answer::Records(txts) = self.txt(&name).await else { return None };
        let [text] = txts.as_slice() else { return None };
        let m = Macro::parse(text).ok()?;
        if m.needs_ptr() {
            self.validate_ptr(domain, vars).await;
        }
        let s = m.eval(vars, domain, false).into_owned();
        (!s.is_empty()).then_some(s)
    }

    fn term(&mut self) -> Step<()> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS { Err(Stop::Perm) } else { Ok(()) }
    }

    fn void(&mut self) -> Step<()> {
        self.voids += 1;
        if self.voids > self.max_void { Err(Stop::Perm) } else { Ok(()) }
    }

    fn variables(&self, domain: &str) -> Variables<'static> {
        let mut v = Variables::new();
        v.set_ip(&self.ip);
        v.set_sender(self.sender.clone().into_bytes());
        v.set_domain(domain.as_bytes().to_vec());
        v.set_helo_domain(self.helo.as_bytes().to_vec());
        v.set_host_domain(self.hostname.as_bytes().to_vec());
        v.set_validated_domain(self.validated.clone().unwrap_or_else(|| "unknown".into()).into_bytes());
        v
    }

    /// `%{p}` (§7.3): a name of <ip> that leads back to it, preferring one at or under
    /// `domain`; "unknown" when none does. Looked up once per check.
    async fn validate_ptr(&mut self, domain: &str, vars: &mut Variables<'_>) {
        if self.validated.is_none() {
            let mut found: Option<String> = None;
            if let Answer::Records(names) = self.ptr().await {
                for n in names.iter().take(MAX_NAMES) {
                    if self.leads_back(n).await {
                        let better = under(n, domain);
                        if found.is_none() || better {
                            found = Some(n.clone());
                        }
                        if better {
                            break;
                        }
                    }
                }
            }
            self.validated = Some(found.unwrap_or_else(|| "unknown".into()));
        }
        vars.set_validated_domain(self.validated.clone().unwrap_or_default().into_bytes());
    }

    /// Whether `name`'s addresses include <ip>.
    async fn leads_back(&self, name: &str) -> bool {
        matches!(self.addresses(name, self.ip.is_ipv6()).await, Answer::Records(a) if a.contains(&self.ip))
    }

    fn within(&self, a: &IpAddr, m4: u32, m6: u128) -> bool {
        match (self.ip, a) {
            (IpAddr::V4(ip), IpAddr::V4(a)) => u32::from(ip) & m4 == u32::from(*a) & m4,
            (IpAddr::V6(ip), IpAddr::V6(a)) => u128::from(ip) & m6 == u128::from(*a) & m6,
            _ => false,
        }
    }

    async fn txt(&self, name: &str) -> Answer<Vec<Vec<u8>>> {
        match self.resolver.txt_lookup(fqdn(name).as_str()).await {
            Ok(l) => records(
                l.answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(t) => Some(t.txt_data.iter().flat_map(|s| s.iter().copied()).collect()),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) => classify(e),
        }
    }

    async fn addresses(&self, name: &str, v6: bool) -> Answer<Vec<IpAddr>> {
        let name = fqdn(name);
        let found = if v6 {
            self.resolver.ipv6_lookup(name.as_str()).await
        } else {
            self.resolver.ipv4_lookup(name.as_str()).await
        };
        match found {
            Ok(l) => records(
                l.answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) => classify(e),
        }
    }

    async fn mx(&self, name: &str) -> Answer<Vec<String>> {
        match self.resolver.mx_lookup(fqdn(name).as_str()).await {
            Ok(l) => records(
                l.answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some(mx.exchange.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) => classify(e),
        }
    }

    async fn ptr(&self) -> Answer<Vec<String>> {
        let zone = if self.ip.is_ipv4() { "in-addr.arpa" } else { "ip6.arpa" };
        match self.resolver.reverse_lookup(crate::policy::iplist::reverse_name(self.ip, zone).as_str()).await {
            Ok(l) => records(
                l.answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::PTR(p) => Some(p.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) => classify(e),
        }
    }
}

fn records<T>(v: Vec<T>) -> Answer<Vec<T>> {
    if v.is_empty() { Answer::Void } else { Answer::Records(v) }
}

fn classify<T>(e: hickory_resolver::net::NetError) -> Answer<T> {
    if e.is_nx_domain() || e.is_no_records_found() { Answer::Void } else { Answer::Temp }
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// The macro naming what a mechanism queries, if it has one.
fn target_macro(m: &Mechanism) -> Option<&Macro> {
    match m {
        Mechanism::A { macro_string, .. }
        | Mechanism::Mx { macro_string, .. }
        | Mechanism::Include { macro_string }
        | Mechanism::Ptr { macro_string }
        | Mechanism::Exists { macro_string } => Some(macro_string),
        Mechanism::All | Mechanism::Ip4 { .. } | Mechanism::Ip6 { .. } => None,
    }
}

/// A domain-spec expanded (§7.3, over-long names shortened from the left), or the current
/// domain when the term has none.
fn expand(m: &Macro, vars: &Variables<'_>, domain: &str) -> String {
    m.eval(vars, domain, true).trim_end_matches('.').to_ascii_lowercase()
}

fn qualified(q: &Qualifier) -> Result {
    match q {
        Qualifier::Pass => Result::Pass,
        Qualifier::Fail => Result::Fail,
        Qualifier::SoftFail => Result::SoftFail,
        Qualifier::Neutral => Result::Neutral,
    }
}

/// §4.5: "v=spf1" alone or followed by a space, in any case.
fn is_spf(t: &[u8]) -> bool {
    t.len() >= 6 && t[..6].eq_ignore_ascii_case(b"v=spf1") && t.get(6).is_none_or(|&c| c == b' ')
}

/// Whether `name` is `domain` or under it.
fn under(name: &str, domain: &str) -> bool {
    let (n, d) = (name.trim_end_matches('.'), domain.trim_end_matches('.'));
    n.eq_ignore_ascii_case(d)
        || (n.len() > d.len()
            && n.as_bytes()[n.len() - d.len() - 1] == b'.'
            && n[n.len() - d.len()..].eq_ignore_ascii_case(d))
}

/// §4.3: at most 255 octets, labels of 1–63 octets, at least two of them.
fn valid_domain(d: &str) -> bool {
    let d = d.strip_suffix('.').unwrap_or(d);
    d.len() <= 253 && d.split('.').count() >= 2 && d.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_selection_and_names() {
        assert!(is_spf(b"v=spf1"));
        assert!(is_spf(b"V=SPF1 -all"));
        assert!(!is_spf(b"v=spf10 -all"));
        assert!(!is_spf(b"spf1 -all"));
        assert!(under("mail.example.org", "example.org"));
        assert!(under("Example.org.", "example.org"));
        assert!(!under("badexample.org", "example.org"));
        assert!(!under("org", "example.org"));
        assert!(valid_domain("example.org"));
        assert!(!valid_domain("localhost"));
        assert!(!valid_domain("a..example.org"));
        assert!(!valid_domain(&format!("{}.org", "a".repeat(64))));
    }
}
