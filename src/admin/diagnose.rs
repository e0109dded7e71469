//! `ringmx diagnose`: what an operator checks first, in one command.
//!
//! - the configuration (every problem `check-config` finds) and hosted domains where
//!   `postmaster@` has nowhere to go (RFC 5321 §4.5.1);
//! - each configured listener: is something answering with a 220 there;
//! - an open-relay self-test against the first listener that answers: the relay tricks
//!   (percent hack, bang path, quoted local part, source route, foreign domain literal,
//!   trailing dot, upper case) with a foreign and a local sender must all be refused;
//! - the MX records of each hosted domain, and whether they point at this host;
//! - the PTR record of the outbound address and its forward confirmation;
//! - with the server running: the queue (messages, being delivered, the oldest), and the
//!   destinations deferred since their last delivery with their last reply.
//!
//! Every result is a finding: a problem, a warning or information. The command exits 1 when
//! there is a problem or a warning, 0 otherwise; `--json` prints them for monitoring.

use crate::config::Config;
use crate::dns::{Dns, DnsAnswer, DnsQuery, DnsService, DnsSettings};
use serde::Serialize;
use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How grave a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Problem,
    Warning,
    Info,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Which check: `config`, `postmaster`, `listener`, `relay`, `mx`, `ptr`, `queue`.
    pub check: &'static str,
    pub severity: Severity,
    pub text: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub problems: usize,
    pub warnings: usize,
}

impl Report {
    fn add(&mut self, check: &'static str, severity: Severity, text: impl Into<String>) {
        match severity {
            Severity::Problem => self.problems += 1,
            Severity::Warning => self.warnings += 1,
            Severity::Info => {}
        }
        self.findings.push(Finding { check, severity, text: text.into() });
    }

    /// Exit status: 1 when there is something to act on.
    pub fn failed(&self) -> bool {
        self.problems + self.warnings > 0
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        for f in &self.findings {
            let tag = match f.severity {
                Severity::Problem => "PROBLEM",
                Severity::Warning => "warning",
                Severity::Info => "ok",
            };
            o.push_str(&format!("{tag:7}  {:10} {}\n", f.check, f.text));
        }
        o.push_str(&format!("{} problem(s), {} warning(s)\n", self.problems, self.warnings));
        o
    }
}

/// How long one network step of a check may take.
const STEP: Duration = Duration::from_secs(5);

/// Runs every check of the configuration at `config` (the embedded one when none).
pub fn run(config: Option<&Path>) -> Report {
    let mut r = Report::default();
    let cfg = match config {
        None => Config::embedded(),
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                for p in &e.problems {
                    r.add("config", Severity::Problem, p.clone());
                }
                return r;
            }
        },
    };
    r.add("config", Severity::Info, "the configuration is valid");
    let store = crate::directory::JsonFileStore::in_data_dir(&cfg.data_dir);
    let dir = match crate::directory::DirectoryHandle::open(Box::new(store)) {
        Ok(d) => Some(d.current()),
        Err(e) => {
            r.add("config", Severity::Problem, format!("the directory does not load: {e}"));
            None
        }
    };
    let mut domains: Vec<String> = cfg.local_domains.iter().map(|d| d.to_ascii_lowercase()).collect();
    if let Some(d) = &dir {
        if cfg.delivery.postmaster.is_none() {
            for name in d.domains_without_postmaster() {
                let text = format!(
                    "{name}: mail to postmaster@{name} has nowhere to go (no postmaster mailbox or address); \
                     set [delivery] postmaster or add one (RFC 5321 section 4.5.1)"
                );
                r.add("postmaster", Severity::Warning, text);
            }
        }
        for dom in &d.data().domains {
            if !domains.contains(&dom.name) {
                domains.push(dom.name.clone());
            }
        }
    }
    let answering = listeners(&cfg, &mut r);
    match answering {
        Some(addr) => relay_test(&cfg, addr, domains.first().map_or(cfg.hostname.as_str(), |d| d.as_str()), &mut r),
        None => r.add("relay", Severity::Info, "no listener answers: the open-relay self-test was not run"),
    }
    let dns = DnsService::start().ok().map(|s| {
        let d = cfg.delivery_dns();
        let settings = DnsSettings {
            servers: d.servers,
            timeout: d.timeout,
            min_ttl: d.min_ttl,
            max_ttl: d.max_ttl,
            negative_ttl: d.negative_ttl,
        };
        Dns::new(Arc::new(s), settings)
    });
    match &dns {
        Some(dns) => {
            let here = local_addresses(&cfg);
            for d in &domains {
                mx(dns, d, &here, &mut r);
            }
            ptr(dns, &mut r);
        }
        None => r.add("mx", Severity::Problem, "the resolver could not start"),
    }
    queue(&cfg.data_dir, &mut r);
    r
}

/// The first address of each listener that answers with a 220; the first plain one for
/// the relay test.
fn listeners(cfg: &Config, r: &mut Report) -> Option<SocketAddr> {
    let mut plain = None;
    for (addr, l) in cfg.bind_addresses() {
        let target = match addr.ip() {
            IpAddr::V4(a) if a.is_unspecified() => SocketAddr::new(IpAddr::from([127, 0, 0, 1]), addr.port()),
            IpAddr::V6(a) if a.is_unspecified() => {
                SocketAddr::new(IpAddr::from(std::net::Ipv6Addr::LOCALHOST), addr.port())
            }
            _ => addr,
        };
        let implicit = l.tls == crate::config::ListenerTls::Implicit;
        if implicit {
            match TcpStream::connect_timeout(&target, STEP) {
                Ok(_) => r.add("listener", Severity::Info, format!("{addr}: accepting (implicit TLS)")),
                Err(e) => r.add(
                    "listener",
                    Severity::Problem,
                    format!("{addr}: nothing answers ({e}); is the server running?"),
                ),
            }
            continue;
        }
        match Smtp::connect(target) {
            Ok((_, banner)) if banner.starts_with("220") => {
                r.add("listener", Severity::Info, format!("{addr}: {}", banner.trim_end()));
                plain.get_or_insert(target);
            }
            Ok((_, banner)) => r.add("listener", Severity::Problem, format!("{addr}: answers {:?}", banner.trim_end())),
            Err(e) => {
                r.add("listener", Severity::Problem, format!("{addr}: nothing answers ({e}); is the server running?"))
            }
        }
    }
    plain
}

/// A plain SMTP client for the self-test: a command, the whole reply.
struct Smtp {
    r: BufReader<TcpStream>,
}

impl Smtp {
    fn connect(addr: SocketAddr) -> std::io::Result<(Smtp, String)> {
        let s = TcpStream::connect_timeout(&addr, STEP)?;
        s.set_read_timeout(Some(STEP))?;
        s.set_write_timeout(Some(STEP))?;
        let mut c = Smtp { r: BufReader::new(s) };
        let banner = c.reply()?;
        Ok((c, banner))
    }

    fn reply(&mut self) -> std::io::Result<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.r.by_ref().take(4096).read_line(&mut line)? == 0 {
                return Ok(all);
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(all);
            }
        }
    }

    fn cmd(&mut self, line: &str) -> std::io::Result<String> {
        self.r.get_mut().write_all(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }
}

/// The relay tricks (RFC 5321 Appendix C and the usual abuses) for local domain `local`.
fn relay_tricks(local: &str) -> Vec<String> {
    let far = "relay-test.invalid";
    vec![
        format!("ringmx-relay-test@{far}"),
        format!("ringmx-relay-test%{far}@{local}"),
        format!("{far}!ringmx-relay-test@{local}"),
        format!("\"ringmx-relay-test@{far}\"@{local}"),
        format!("@{local}:ringmx-relay-test@{far}"),
        "ringmx-relay-test@[192.0.2.1]".to_string(),
        format!("ringmx-relay-test@{far}."),
        format!("RINGMX-RELAY-TEST@{}", far.to_ascii_uppercase()),
    ]
}

fn relay_test(cfg: &Config, addr: SocketAddr, local: &str, r: &mut Report) {
    let me = IpAddr::from([127, 0, 0, 1]);
    let privileged = crate::policy::IpList::parse(&cfg.relay.privileged).unwrap_or_default();
    if addr.ip().is_loopback() && privileged.contains(me) {
        let text = "skipped: the test connects from loopback, which [relay] privileged allows to relay";
        return r.add("relay", Severity::Info, text);
    }
    let mut accepted = Vec::new();
    let mut tried = 0;
    for sender in ["ringmx-relay-test@relay-test.invalid".to_string(), format!("postmaster@{local}")] {
        // A session per sender: refusals count toward the error limit of one session.
        let Ok((mut c, _)) = Smtp::connect(addr) else { continue };
        let _ = c.cmd("EHLO diagnose.invalid");
        match c.cmd(&format!("MAIL FROM:<{sender}>")) {
            Ok(m) if m.starts_with('2') => {}
            _ => continue,
        }
        for rcpt in relay_tricks(local) {
            tried += 1;
            match c.cmd(&format!("RCPT TO:<{rcpt}>")) {
                Ok(a) if a.starts_with('2') => accepted.push(format!("<{rcpt}> from <{sender}>")),
                Ok(a) if a.starts_with("421") || a.is_empty() => break,
                _ => {}
            }
        }
        let _ = c.cmd("QUIT");
    }
    if accepted.is_empty() {
        r.add("relay", Severity::Info, format!("not an open relay: {tried} relay attempts from {me} refused"));
    } else {
        for a in accepted {
            r.add("relay", Severity::Problem, format!("OPEN RELAY: {a} was accepted"));
        }
    }
}

/// Every address of this host's interfaces, and the listeners' own.
fn local_addresses(cfg: &Config) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = cfg.bind_addresses().iter().map(|(a, _)| a.ip()).filter(|a| !a.is_unspecified()).collect();
    let mut ifs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `ifs` (a live local) and returns 0 on
    // success; the list is read below and freed once with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifs) } == 0 {
        let mut p = ifs;
        while !p.is_null() {
            // SAFETY: `p` is a node of the list getifaddrs returned, not yet freed.
            let ifa = unsafe { &*p };
            if !ifa.ifa_addr.is_null() {
                // SAFETY: ifa_addr points to a sockaddr whose family says its layout.
                let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
                if family == libc::AF_INET {
                    // SAFETY: an AF_INET address is a sockaddr_in.
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    v.push(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()));
                } else if family == libc::AF_INET6 {
                    // SAFETY: an AF_INET6 address is a sockaddr_in6.
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    v.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
            }
            p = ifa.ifa_next;
        }
        // SAFETY: `ifs` came from getifaddrs and is freed once, after its last use.
        unsafe { libc::freeifaddrs(ifs) };
    }
    v
}

fn mx(dns: &Dns, domain: &str, here: &[IpAddr], r: &mut Report) {
    let hosts: Vec<String> = match dns.resolve_blocking(DnsQuery::Mx(domain.to_string())) {
        DnsAnswer::Found(records) => {
            let mut v: Vec<(u16, String)> = records
                .iter()
                .filter_map(|rec| {
                    rec.split_once(' ').map(|(p, h)| (p.parse().unwrap_or(0), h.trim_end_matches('.').to_string()))
                })
                .collect();
            v.sort();
            if v.iter().any(|(_, h)| h.is_empty()) {
                return r.add("mx", Severity::Warning, format!("{domain}: a null MX (RFC 7505): it accepts no mail"));
            }
            v.into_iter().map(|(_, h)| h).collect()
        }
        DnsAnswer::NotFound => vec![domain.to_string()],
        DnsAnswer::NoSuchName => {
            return r.add("mx", Severity::Warning, format!("{domain}: the domain does not exist in DNS"));
        }
        DnsAnswer::TempFail => {
            return r.add("mx", Severity::Warning, format!("{domain}: no DNS answer (time-out or server failure)"));
        }
    };
    let mut pointing_here = Vec::new();
    let mut elsewhere = Vec::new();
    for h in &hosts {
        match dns.resolve_blocking(DnsQuery::Addrs(h.clone())) {
            DnsAnswer::Found(addrs) => {
                let ours = addrs.iter().filter_map(|a| a.parse::<IpAddr>().ok()).any(|a| here.contains(&a));
                if ours { pointing_here.push(h.clone()) } else { elsewhere.push(format!("{h} ({})", addrs.join(", "))) }
            }
            _ => elsewhere.push(format!("{h} (no address)")),
        }
    }
    if pointing_here.is_empty() {
        let text = format!("{domain}: MX {} does not point at this host: {}", hosts.join(", "), elsewhere.join("; "));
        r.add("mx", Severity::Warning, text);
    } else {
        let text = format!("{domain}: MX {} points here ({})", hosts.join(", "), pointing_here.join(", "));
        r.add("mx", Severity::Info, text);
    }
}

/// The address mail leaves from: the source of a route to a documentation address (a UDP
/// connect sends nothing).
fn outbound_address() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:25").ok()?;
    Some(s.local_addr().ok()?.ip())
}

fn ptr(dns: &Dns, r: &mut Report) {
    let Some(ip) = outbound_address() else {
        return r.add("ptr", Severity::Info, "no route to the Internet: the outbound address was not checked");
    };
    if crate::policy::iplist::is_private(ip) || ip.is_loopback() {
        return r.add("ptr", Severity::Info, format!("outbound address {ip} is private: PTR not checked"));
    }
    match dns.resolve_blocking(DnsQuery::Ptr(ip)) {
        DnsAnswer::Found(names) => {
            let confirmed = names.iter().find(|n| {
                matches!(dns.resolve_blocking(DnsQuery::Addrs(n.trim_end_matches('.').to_string())),
                    DnsAnswer::Found(a) if a.iter().any(|x| x.parse::<IpAddr>().ok() == Some(ip)))
            });
            match confirmed {
                Some(n) => r.add("ptr", Severity::Info, format!("outbound address {ip}: PTR {n}, forward-confirmed")),
                None => r.add(
                    "ptr",
                    Severity::Warning,
                    format!("outbound address {ip}: PTR {} does not resolve back to it", names.join(", ")),
                ),
            }
        }
        DnsAnswer::TempFail => {
            r.add("ptr", Severity::Warning, format!("outbound address {ip}: no DNS answer for its PTR"))
        }
        _ => r.add(
            "ptr",
            Severity::Warning,
            format!("outbound address {ip} has no PTR record: many receivers refuse such mail"),
        ),
    }
}

fn queue(data_dir: &Path, r: &mut Report) {
    let socket = crate::queue::requests::socket_path(data_dir);
    let Ok(s) = std::os::unix::net::UnixStream::connect(&socket) else {
        return r.add("queue", Severity::Info, "the server is not running: queue state not shown");
    };
    let a: Result<(u16, StatusAnswer), _> = super::api::json(s, "GET", "/v1/status", None::<&()>);
    let Ok((_, a)) = a else {
        return r.add("queue", Severity::Warning, "the server's control socket did not answer the status request");
    };
    let oldest = a.oldest_age_s.map_or_else(String::new, |s| format!(", the oldest {s} s old"));
    r.add("queue", Severity::Info, format!("{} message(s) queued, {} being delivered{oldest}", a.queued, a.active));
    for d in &a.deferred_destinations {
        let text = format!(
            "{}: {} deferral(s) since its last delivery; last reply: {}",
            d.destination, d.deferrals, d.last_reply
        );
        r.add("queue", Severity::Warning, text);
    }
}

#[derive(Debug, Serialize, serde::Deserialize)]
struct Empty {}

/// A request on the control socket: `{"status": {}}`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct StatusRequest {
    status: Empty,
}

/// The running server's queue, as the control socket answers `{"status": {}}`.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct StatusAnswer {
    pub queued: u64,
    pub active: u64,
    pub oldest_age_s: Option<u64>,
    pub deferred_destinations: Vec<crate::queue::board::Deferred>,
}

/// The answer from the control thread's published figures.
pub fn status(m: &crate::obs::metrics::ControlMetrics) -> StatusAnswer {
    let oldest = m.oldest_id.get();
    let now = crate::util::time::Now::system().unix_secs();
    StatusAnswer {
        queued: m.queued.get(),
        active: m.active.get(),
        oldest_age_s: (oldest != 0).then(|| now.saturating_sub(oldest >> 32)),
        deferred_destinations: m.deferred_destinations.lock().map(|d| d.clone()).unwrap_or_default(),
    }
}

/// Is this line a status request?
pub fn is_status_request(line: &str) -> bool {
    serde_json::from_str::<StatusRequest>(line).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tricks_cover_the_classic_relay_abuses() {
        let t = relay_tricks("example.net");
        assert!(t.contains(&"ringmx-relay-test%relay-test.invalid@example.net".to_string()));
        assert!(t.contains(&"relay-test.invalid!ringmx-relay-test@example.net".to_string()));
        assert!(t.contains(&"\"ringmx-relay-test@relay-test.invalid\"@example.net".to_string()));
        assert!(t.contains(&"@example.net:ringmx-relay-test@relay-test.invalid".to_string()));
        assert_eq!(t.len(), 8);
    }

    #[test]
    fn findings_count_and_render() {
        let mut r = Report::default();
        r.add("mx", Severity::Info, "fine");
        assert!(!r.failed());
        r.add("relay", Severity::Problem, "OPEN RELAY");
        r.add("ptr", Severity::Warning, "no PTR");
        assert!(r.failed());
        assert_eq!(
            r.render(),
            "ok       mx         fine\nPROBLEM  relay      OPEN RELAY\nwarning  ptr        no PTR\n1 problem(s), 1 warning(s)\n"
        );
        assert!(is_status_request("{\"status\":{}}\n") && !is_status_request("{\"ban\":{\"op\":\"list\"}}"));
    }
}
