//! [`DnsService`]: the server's one resolver: a thread running hickory-resolver on a
//! current-thread tokio runtime, answering [`DnsQuery`]s for every shard (policy checks)
//! and the delivery runtime (MX and address lookups), with one cache.
//!
//! Nobody waits on it: [`Dns::submit`] queues the question and returns; the answer comes
//! through the callback, called on the service thread (or at once on a cache hit);
//! [`Dns::ask`] is the same for async callers. Identical questions in flight are asked
//! once. Answers are cached for their TTL, held between `min_ttl` and `max_ttl`; negative
//! answers for `negative_ttl`; failures are not cached. hickory's own cache is off: this
//! one is the only one.
//!
//! Each part asks with its [`DnsSettings`] (`[dns]`, or its own `[policy.dns]` /
//! `[delivery.dns]`): the settings pick the name servers and are part of the cache key, so
//! parts with the same settings share every answer.

use super::{DnsAnswer, DnsQuery};
use crate::policy::iplist::reverse_name;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{ResolverBuilder, TokioResolver};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The callback that receives an answer.
pub type ReplyTo = Box<dyn FnOnce(DnsAnswer) + Send>;

/// Name servers, time-out and cache bounds of a part (`[dns]`, `[policy.dns]`,
/// `[delivery.dns]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsSettings {
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub negative_ttl: Duration,
}

/// A question as the cache keys it: the same question asked of other servers is another.
type Key = (Arc<DnsSettings>, DnsQuery);
type Waiters = HashMap<Key, Vec<ReplyTo>>;

struct Shared {
    cache: HashMap<Key, (DnsAnswer, Instant)>,
    inflight: Waiters,
    /// Questions asked, answered from the cache, failed (for the metrics).
    queries: u64,
    hits: u64,
    failures: u64,
}

/// See the module documentation. Dropping it (and every [`Dns`]) ends the thread.
pub struct DnsService {
    tx: tokio::sync::mpsc::UnboundedSender<(Key, ReplyTo)>,
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for DnsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsService").finish_non_exhaustive()
    }
}

const CACHE_MAX: usize = 100_000;

impl DnsService {
    /// Starts the service thread.
    pub fn start() -> std::io::Result<DnsService> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Key, ReplyTo)>();
        let shared = Arc::new(Mutex::new(Shared {
            cache: HashMap::new(),
            inflight: HashMap::new(),
            queries: 0,
            hits: 0,
            failures: 0,
        }));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let state = shared.clone();
        std::thread::Builder::new().name("dns".into()).spawn(move || {
            rt.block_on(async move {
                let mut resolvers: HashMap<(Vec<SocketAddr>, Duration), TokioResolver> = HashMap::new();
                while let Some((key, reply_to)) = rx.recv().await {
                    {
                        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(w) = s.inflight.get_mut(&key) {
                            w.push(reply_to);
                            continue;
                        }
                        s.inflight.insert(key.clone(), vec![reply_to]);
                    }
                    let (settings, q) = &key;
                    let servers = match q {
                        DnsQuery::Dnsbl { server: Some(s), .. } => vec![*s],
                        _ => settings.servers.clone(),
                    };
                    let resolver = match resolvers.get(&(servers.clone(), settings.timeout)) {
                        Some(r) => r.clone(),
                        None => match build_resolver(&servers, settings.timeout) {
                            Some(r) => {
                                resolvers.insert((servers, settings.timeout), r.clone());
                                r
                            }
                            None => {
                                finish(&state, &key, DnsAnswer::TempFail, None);
                                continue;
                            }
                        },
                    };
                    let state = state.clone();
                    tokio::spawn(async move {
                        let (settings, q) = &key;
                        let (answer, valid_until) = ask(&resolver, q).await;
                        let now = Instant::now();
                        let expires = match &answer {
                            DnsAnswer::Found(_) => {
                                let ttl = valid_until.map_or(settings.min_ttl, |v| v.saturating_duration_since(now));
                                Some(now + ttl.clamp(settings.min_ttl, settings.max_ttl))
                            }
                            DnsAnswer::NotFound | DnsAnswer::NoSuchName => Some(now + settings.negative_ttl),
                            DnsAnswer::TempFail => None,
                        };
                        finish(&state, &key, answer, expires);
                    });
                }
            });
        })?;
        Ok(DnsService { tx, shared })
    }

    /// Asks `q` of the servers `settings` name; `reply_to` gets the answer (at once when
    /// cached).
    fn submit(&self, settings: &Arc<DnsSettings>, q: DnsQuery, reply_to: ReplyTo) {
        let key = (settings.clone(), q);
        {
            let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            s.queries += 1;
            if let Some((a, until)) = s.cache.get(&key)
                && *until > Instant::now()
            {
                let a = a.clone();
                s.hits += 1;
                drop(s);
                return reply_to(a);
            }
        }
        if let Err(e) = self.tx.send((key, reply_to)) {
            (e.0.1)(DnsAnswer::TempFail);
        }
    }
}

impl DnsService {
    /// Questions asked, answered from the cache, and failed so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        (s.queries, s.hits, s.failures)
    }
}

/// A part's way to the one [`DnsService`]: its settings with the shared thread and cache.
#[derive(Clone)]
pub struct Dns {
    service: Arc<DnsService>,
    settings: Arc<DnsSettings>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Dns {
    pub fn new(service: Arc<DnsService>, settings: DnsSettings) -> Self {
        Dns { service, settings: Arc::new(settings) }
    }

    pub fn settings(&self) -> &DnsSettings {
        &self.settings
    }

    /// Asks `q`; `reply_to` gets the answer (at once when cached).
    pub fn submit(&self, q: DnsQuery, reply_to: ReplyTo) {
        self.service.submit(&self.settings, q, reply_to)
    }

    /// Asks `q` and waits for the answer, for async callers (the delivery runtime).
    pub async fn ask(&self, q: DnsQuery) -> DnsAnswer {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(q, Box::new(move |a| drop(tx.send(a))));
        rx.await.unwrap_or(DnsAnswer::TempFail)
    }

    /// Asks `q` and waits for the answer (tools and tests; never on a shard).
    pub fn resolve_blocking(&self, q: DnsQuery) -> DnsAnswer {
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(q, Box::new(move |a| drop(tx.send(a))));
        rx.recv().unwrap_or(DnsAnswer::TempFail)
    }
}

fn finish(state: &Mutex<Shared>, q: &Key, answer: DnsAnswer, expires: Option<Instant>) {
    let waiters = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        if answer == DnsAnswer::TempFail {
            s.failures += 1;
        }
        if let Some(until) = expires {
            if s.cache.len() >= CACHE_MAX {
                let now = Instant::now();
                s.cache.retain(|_, (_, u)| *u > now);
                if s.cache.len() >= CACHE_MAX {
                    s.cache.clear();
                }
            }
            s.cache.insert(q.clone(), (answer.clone(), until));
        }
        s.inflight.remove(q).unwrap_or_default()
    };
    for w in waiters {
        w(answer.clone());
    }
}

fn build_resolver(servers: &[SocketAddr], timeout: Duration) -> Option<TokioResolver> {
    match resolver_builder(servers, timeout).build() {
        Ok(r) => Some(r),
        Err(e) => {
            log::error!("dns: cannot build a resolver: {e}");
            None
        }
    }
}

/// These name servers (`ADDR:PORT`), over UDP and TCP, and no others.
pub(crate) fn name_servers(servers: &[SocketAddr]) -> ResolverConfig {
    let servers = servers
        .iter()
        .map(|s| {
            let mut ns = NameServerConfig::udp_and_tcp(s.ip());
            for c in &mut ns.connections {
                c.port = s.port();
            }
            ns
        })
        .collect();
    ResolverConfig::from_name_servers(servers)
}

/// A resolver of the service: these name servers only (no hosts file), each question
/// bounded by `timeout`, two attempts, both address families, no cache of its own.
fn resolver_builder(servers: &[SocketAddr], timeout: Duration) -> ResolverBuilder<TokioRuntimeProvider> {
    let mut b = TokioResolver::builder_with_config(name_servers(servers), TokioRuntimeProvider::default());
    let o = b.options_mut();
    o.use_hosts_file = ResolveHosts::Never;
    o.timeout = timeout;
    o.attempts = 2;
    o.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    o.cache_size = 0;
    b
}

/// One question over the network: the answer and, when found, how long it is valid.
async fn ask(r: &TokioResolver, q: &DnsQuery) -> (DnsAnswer, Option<Instant>) {
    let classify = |e: hickory_resolver::net::NetError| {
        if e.is_nx_domain() || e.is_no_records_found() { DnsAnswer::NotFound } else { DnsAnswer::TempFail }
    };
    // Delivery tells a name that does not exist from one without such records.
    let classify_nx = |e: hickory_resolver::net::NetError| {
        if e.is_nx_domain() {
            DnsAnswer::NoSuchName
        } else if e.is_no_records_found() {
            DnsAnswer::NotFound
        } else {
            DnsAnswer::TempFail
        }
    };
    let records = |l: &hickory_resolver::lookup::Lookup| -> Vec<String> {
        l.answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                RData::AAAA(a) => Some(a.0.to_string()),
                RData::PTR(p) => Some(p.0.to_ascii()),
                RData::MX(mx) => Some(mx.exchange.to_ascii()),
                _ => None,
            })
            .collect()
    };
    let found = |l: hickory_resolver::lookup::Lookup| {
        let v = records(&l);
        if v.is_empty() { (DnsAnswer::NotFound, None) } else { (DnsAnswer::Found(v), Some(l.valid_until())) }
    };
    match q {
        DnsQuery::Mx(domain) => {
            let name = format!("{}.", domain.trim_end_matches('.'));
            match r.mx_lookup(name.as_str()).await {
                Ok(l) => {
                    let v: Vec<String> = l
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::MX(mx) => Some(format!("{} {}", mx.preference, mx.exchange.to_ascii())),
                            _ => None,
                        })
                        .collect();
                    if v.is_empty() {
                        (DnsAnswer::NotFound, None)
                    } else {
                        (DnsAnswer::Found(v), Some(l.valid_until()))
                    }
                }
                Err(e) => (classify_nx(e), None),
            }
        }
        DnsQuery::Addrs(host) => match addresses(r, host).await {
            Ok(Some((v, until))) => (DnsAnswer::Found(v), Some(until)),
            Ok(None) => (DnsAnswer::NotFound, None),
            Err(e) => (classify_nx(e), None),
        },
        DnsQuery::Txt(name) => match r.txt_lookup(format!("{}.", name.trim_end_matches('.')).as_str()).await {
            Ok(l) => {
                let v: Vec<String> = l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(t) => {
                            Some(t.txt_data.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect::<String>())
                        }
                        _ => None,
                    })
                    .collect();
                if v.is_empty() { (DnsAnswer::NotFound, None) } else { (DnsAnswer::Found(v), Some(l.valid_until())) }
            }
            Err(e) => (classify(e), None),
        },
        DnsQuery::Dnsbl { name, .. } => match r.ipv4_lookup(name.as_str()).await {
            Ok(l) => found(l),
            Err(e) => (classify(e), None),
        },
        DnsQuery::Ptr(ip) => {
            let zone = if matches!(crate::policy::iplist::canonical(*ip), IpAddr::V4(_)) {
                "in-addr.arpa"
            } else {
                "ip6.arpa"
            };
            match r.reverse_lookup(reverse_name(*ip, zone).as_str()).await {
                Ok(l) => found(l),
                Err(e) => (classify(e), None),
            }
        }
        DnsQuery::MailDomain(d) => {
            let name = format!("{}.", d.trim_end_matches('.'));
            match r.mx_lookup(name.as_str()).await {
                Ok(l) => {
                    let v = records(&l);
                    // RFC 7505: a null MX says the domain takes no mail.
                    if v.iter().any(|x| x == "." || x.is_empty()) {
                        return (DnsAnswer::NotFound, None);
                    }
                    if !v.is_empty() {
                        return (DnsAnswer::Found(v), Some(l.valid_until()));
                    }
                }
                Err(e) if e.is_nx_domain() => return (DnsAnswer::NotFound, None),
                Err(e) if e.is_no_records_found() => {}
                Err(_) => return (DnsAnswer::TempFail, None),
            }
            // No MX: the domain's own addresses (RFC 5321 §5.1).
            match addresses(r, d).await {
                Ok(Some((v, until))) => (DnsAnswer::Found(v), Some(until)),
                Ok(None) => (DnsAnswer::NotFound, None),
                Err(e) => (classify(e), None),
            }
        }
    }
}

/// A name's A and AAAA records with how long they are valid; `None` when it has none.
async fn addresses(
    r: &TokioResolver,
    name: &str,
) -> Result<Option<(Vec<String>, Instant)>, hickory_resolver::net::NetError> {
    let l = r.lookup_ip(format!("{}.", name.trim_end_matches('.')).as_str()).await?;
    let v: Vec<String> = l.iter().map(|ip| ip.to_string()).collect();
    Ok((!v.is_empty()).then(|| (v, l.valid_until())))
}
