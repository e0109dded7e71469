//! The MX plan (RFC 5321 §5.1) for a domain that [`crate::routing`] sends to its MX.
//!
//! - [`order_mx`]: MX records by preference, equal preferences shuffled by a seed (pure,
//!   so tests fix the seed).
//! - [`MxResolver::plan`]: the MX lookup through the server's DNS service: null MX (RFC
//!   7505) is a permanent failure (5.1.10), no MX means the domain itself (implicit MX, its
//!   A/AAAA), CNAMEs are followed by the resolver, each host gets its IPv6 and IPv4
//!   addresses.
//!
//! DNS failures say whether they are permanent (NXDOMAIN: 5.1.2) or temporary (SERVFAIL,
//! time-out: 4.4.3).

use crate::dns::{Dns, DnsAnswer, DnsQuery, DnsService, DnsSettings};
use hickory_resolver::proto::rr::Name;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why there is no plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MxError {
    /// The domain publishes a null MX (RFC 7505): it accepts no mail.
    #[error("{0} does not accept mail (null MX)")]
    NullMx(String),
    /// The domain does not exist.
    #[error("{0}: no such domain")]
    NoSuchDomain(String),
    /// The domain exists but has neither MX nor address records.
    #[error("{0} has no MX and no address")]
    NoMailHost(String),
    /// The lookup failed for now (SERVFAIL, time-out, no answer from the name servers),
    /// or no MX host had an address.
    #[error("DNS lookup for {name} failed: {what}")]
    Temporary { name: String, what: String },
}

impl MxError {
    pub fn is_permanent(&self) -> bool {
        !matches!(self, MxError::Temporary { .. })
    }

    /// RFC 3463 (and RFC 7505 §4.2) status code.
    pub fn status(&self) -> &'static str {
        match self {
            MxError::NullMx(_) => "5.1.10",
            MxError::NoSuchDomain(_) | MxError::NoMailHost(_) => "5.1.2",
            MxError::Temporary { .. } => "4.4.3",
        }
    }
}

/// One host to try, with its addresses (IPv6 first, then IPv4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub name: String,
    pub preference: u16,
    pub addrs: Vec<SocketAddr>,
}

/// The hosts for a domain, in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxPlan {
    pub domain: String,
    /// True when the domain has no MX and its own addresses are used (RFC 5321 §5.1).
    pub implicit: bool,
    pub hosts: Vec<MxHost>,
}

impl MxPlan {
    /// Every address to try, in order.
    pub fn addrs(&self) -> impl Iterator<Item = (&str, SocketAddr)> {
        self.hosts.iter().flat_map(|h| h.addrs.iter().map(move |a| (h.name.as_str(), *a)))
    }
}

/// MX records `(preference, exchange)` in the order to try: by preference, equal ones in
/// an order drawn from `seed` (RFC 5321 §5.1 asks for randomisation among equals).
pub fn order_mx(mut records: Vec<(u16, String)>, seed: u64) -> Vec<(u16, String)> {
    records.sort();
    records.dedup();
    let mut state = seed;
    let mut i = 0;
    while i < records.len() {
        let j = records[i..].iter().position(|r| r.0 != records[i].0).map_or(records.len(), |k| i + k);
        // Fisher–Yates on records[i..j] with splitmix64.
        for k in (i + 1..j).rev() {
            let r = i + (splitmix64(&mut state) % (k - i + 1) as u64) as usize;
            records.swap(k, r);
        }
        i = j;
    }
    records
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The resolver settings of MX lookups (`[dns]` with `[delivery.dns]`'s changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers, `ADDR:PORT`.
    pub servers: Vec<SocketAddr>,
    /// Per-query time-out.
    pub timeout: Duration,
    /// Port of the SMTP servers found by MX lookup (25; tests point it at a loopback port).
    pub remote_port: u16,
    /// Answers are cached for their TTL held within these bounds.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// How long "no such name / no records" is cached.
    pub negative_ttl: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            timeout: Duration::from_secs(5),
            remote_port: 25,
            min_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(300),
        }
    }
}

impl DnsConfig {
    /// The settings delivery asks the DNS service with.
    pub fn settings(&self) -> DnsSettings {
        DnsSettings {
            servers: self.servers.clone(),
            timeout: self.timeout,
            min_ttl: self.min_ttl,
            max_ttl: self.max_ttl,
            negative_ttl: self.negative_ttl,
        }
    }
}

/// What a temporary DNS failure says.
const NO_ANSWER: &str = "no answer from the name servers (time-out, failure or refusal)";

/// MX and address lookups through the server's one DNS service (async: the delivery
/// runtime awaits the answers, which come from the service's thread or its cache).
#[derive(Clone, Debug)]
pub struct MxResolver {
    dns: Dns,
    remote_port: u16,
}

impl MxResolver {
    /// Lookups through `service` with the delivery settings of `cfg`.
    pub fn new(cfg: &DnsConfig, service: Arc<DnsService>) -> Self {
        MxResolver { dns: Dns::new(service, cfg.settings()), remote_port: cfg.remote_port }
    }

    /// The hosts to try for `domain`, equal preferences shuffled with `seed`.
    pub async fn plan(&self, domain: &str, seed: u64) -> Result<MxPlan, MxError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        // An address literal: that host and nothing else.
        if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip: IpAddr =
                lit.strip_prefix("ipv6:").unwrap_or(lit).parse().map_err(|_| MxError::NoSuchDomain(domain.clone()))?;
            let addrs = vec![SocketAddr::new(ip, self.remote_port)];
            return Ok(MxPlan {
                hosts: vec![MxHost { name: domain.clone(), preference: 0, addrs }],
                domain,
                implicit: true,
            });
        }
        if Name::from_utf8(format!("{domain}.")).is_err() {
            return Err(MxError::NoSuchDomain(domain));
        }
        let records: Vec<(u16, String)> = match self.dns.ask(DnsQuery::Mx(domain.clone())).await {
            // `PREFERENCE EXCHANGE`, as the service gives them.
            DnsAnswer::Found(v) => v
                .iter()
                .filter_map(|r| {
                    let (p, x) = r.split_once(' ')?;
                    Some((p.parse().ok()?, x.to_string()))
                })
                .collect(),
            DnsAnswer::NoSuchName => return Err(MxError::NoSuchDomain(domain)),
            DnsAnswer::NotFound => Vec::new(),
            DnsAnswer::TempFail => return Err(MxError::Temporary { name: domain, what: NO_ANSWER.into() }),
        };
        // RFC 7505 §3: a single MX of preference 0 with the root as exchange.
        if records.iter().any(|(_, x)| x == "." || x.is_empty()) {
            return Err(MxError::NullMx(domain));
        }
        if records.is_empty() {
            // Implicit MX: the domain's own addresses (RFC 5321 §5.1).
            let addrs = match self.addresses(&domain).await {
                Ok(a) if !a.is_empty() => a,
                Ok(_) => return Err(MxError::NoMailHost(domain)),
                Err(AddrError::NoSuchName | AddrError::NoRecords) => return Err(MxError::NoMailHost(domain)),
                Err(AddrError::Temporary(what)) => return Err(MxError::Temporary { name: domain, what }),
            };
            let host = MxHost { name: domain.clone(), preference: 0, addrs };
            return Ok(MxPlan { domain, implicit: true, hosts: vec![host] });
        }
        let mut hosts = Vec::new();
        let mut temporary = None;
        for (preference, exchange) in order_mx(records, seed) {
            let host = exchange.trim_end_matches('.').to_string();
            match self.addresses(&host).await {
                Ok(addrs) if !addrs.is_empty() => hosts.push(MxHost { name: host, preference, addrs }),
                Ok(_) | Err(AddrError::NoSuchName | AddrError::NoRecords) => {}
                Err(AddrError::Temporary(what)) => temporary = Some(what),
            }
        }
        if hosts.is_empty() {
            let what = temporary.unwrap_or_else(|| "no MX host has an address".into());
            return Err(MxError::Temporary { name: domain, what });
        }
        Ok(MxPlan { domain, implicit: false, hosts })
    }

    /// A smart host's addresses on `port`, through the resolver (never a blocking lookup
    /// on the delivery runtime): an address literal as it is, `localhost` as the loopback
    /// addresses (RFC 6761 §6.3), any other name from DNS.
    pub async fn smart_host(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, MxError> {
        if let Some(addrs) = literal_host(host, port) {
            return Ok(addrs);
        }
        match self.addresses(host).await {
            Ok(a) if !a.is_empty() => Ok(a.into_iter().map(|a| SocketAddr::new(a.ip(), port)).collect()),
            Ok(_) | Err(AddrError::NoRecords) => Err(MxError::NoMailHost(host.to_string())),
            Err(AddrError::NoSuchName) => Err(MxError::NoSuchDomain(host.to_string())),
            Err(AddrError::Temporary(what)) => Err(MxError::Temporary { name: host.to_string(), what }),
        }
    }

    /// A host's addresses, IPv6 first then IPv4 (RFC 5321 §5.1 leaves the order to us).
    async fn addresses(&self, host: &str) -> Result<Vec<SocketAddr>, AddrError> {
        if Name::from_utf8(format!("{host}.")).is_err() {
            return Err(AddrError::NoSuchName);
        }
        match self.dns.ask(DnsQuery::Addrs(host.to_string())).await {
            DnsAnswer::Found(v) => {
                let mut ips: Vec<IpAddr> = v.iter().filter_map(|a| a.parse().ok()).collect();
                ips.sort_by_key(|ip| ip.is_ipv4());
                ips.dedup();
                Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, self.remote_port)).collect())
            }
            DnsAnswer::NoSuchName => Err(AddrError::NoSuchName),
            DnsAnswer::NotFound => Err(AddrError::NoRecords),
            DnsAnswer::TempFail => Err(AddrError::Temporary(NO_ANSWER.into())),
        }
    }
}

/// The addresses of a host named without DNS: an IP address (bracketed or not), or
/// `localhost` (RFC 6761 §6.3: always the loopback, never looked up).
pub fn literal_host(host: &str, port: u16) -> Option<Vec<SocketAddr>> {
    let h = host.trim_matches(|c| c == '[' || c == ']');
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Some(vec![SocketAddr::new(ip, port)]);
    }
    let h = h.trim_end_matches('.');
    if h.eq_ignore_ascii_case("localhost") || h.to_ascii_lowercase().ends_with(".localhost") {
        return Some(vec![
            SocketAddr::new(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), port),
            SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port),
        ]);
    }
    None
}

enum AddrError {
    NoSuchName,
    NoRecords,
    Temporary(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Smart hosts named without DNS: address literals and RFC 6761 §6.3's localhost.
    #[test]
    fn literal_smart_hosts() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(literal_host("192.0.2.1", 25), Some(vec![a("192.0.2.1:25")]));
        assert_eq!(literal_host("[2001:db8::1]", 587), Some(vec![a("[2001:db8::1]:587")]));
        assert_eq!(literal_host("LocalHost.", 10025), Some(vec![a("[::1]:10025"), a("127.0.0.1:10025")]));
        assert_eq!(literal_host("relay.localhost", 25).map(|v| v.len()), Some(2));
        assert_eq!(literal_host("relay.example", 25), None);
        assert_eq!(literal_host("notlocalhost", 25), None);
    }

    #[test]
    fn mx_order_is_by_preference_and_seeded_among_equals() {
        let recs = || {
            vec![
                (20, "c.test".to_string()),
                (10, "a.test".to_string()),
                (10, "b.test".to_string()),
                (10, "d.test".to_string()),
                (30, "e.test".to_string()),
            ]
        };
        let names = |v: Vec<(u16, String)>| v.into_iter().map(|(_, n)| n).collect::<Vec<_>>().join(",");
        for seed in 0..50 {
            let o = order_mx(recs(), seed);
            assert_eq!(o.iter().map(|r| r.0).collect::<Vec<_>>(), vec![10, 10, 10, 20, 30]);
        }
        assert_eq!(names(order_mx(recs(), 1)), names(order_mx(recs(), 1)), "same seed, same order");
        let orders: std::collections::HashSet<String> = (0..50).map(|s| names(order_mx(recs(), s))).collect();
        assert!(orders.len() > 1, "equal preferences are shuffled");
    }
}
