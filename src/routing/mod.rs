//! Routing: where each recipient's mail goes, from the configuration and the directory
//! alone (pure: no DNS, no I/O). A recipient is delivered locally, sent on a [`Route`] (a
//! smart host, or the MX of its domain, which `delivery::mx` plans), or held (an accept-all
//! domain of ours with nowhere to send it).

use crate::delivery::client::Credentials;
use crate::directory::Directory;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};

/// A smart host: every message of its scope goes there instead of to the MX.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmartHostConfig {
    /// Host name or address. No default.
    pub host: String,
    /// Port. Default 25 (587 for submission to a provider is common).
    #[serde(default = "default_port")]
    pub port: u16,
    /// AUTH credentials (PLAIN or LOGIN). Default none.
    #[serde(default)]
    pub auth: Option<Credentials>,
}

/// The SMTP port (RFC 5321 §4.5.4.2's relay port 25).
pub fn default_port() -> u16 {
    25
}

/// `[delivery.routing]`: smart hosts and the port of MX delivery.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Smart host for all outbound mail. Default none (MX delivery).
    #[serde(default)]
    pub smart_host: Option<SmartHostConfig>,
    /// Smart hosts per recipient domain (lower case). Default none.
    #[serde(default)]
    pub domain_smart_hosts: HashMap<String, SmartHostConfig>,
    /// A domain's smart host wins over the global one. Default false: with a global smart
    /// host, everything goes there.
    #[serde(default)]
    pub domain_smart_host_priority: bool,
}

/// Where mail for a domain goes: what identifies a destination, so that recipients with
/// equal routes share a connection. It orders and hashes on that (credentials included:
/// two logins are two destinations); its `Debug` never shows a password.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    SmartHost {
        host: String,
        port: u16,
        auth: Option<Credentials>,
    },
    /// Look up the domain's MX.
    Mx(String),
}

/// The route for recipient domain `domain` (pure).
pub fn route(domain: &str, cfg: &RoutingConfig) -> Route {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let per_domain = cfg.domain_smart_hosts.get(&domain);
    let chosen = match (&cfg.smart_host, per_domain) {
        (Some(_), Some(d)) if cfg.domain_smart_host_priority => Some(d),
        (Some(g), _) => Some(g),
        (None, d) => d,
    };
    match chosen {
        Some(s) => Route::SmartHost { host: s.host.clone(), port: s.port, auth: s.auth.clone() },
        None => Route::Mx(domain),
    }
}

/// `host:port` of a directory domain's smart host (`[v6]:port` for an IPv6 address).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    Some((h.trim_matches(|c| c == '[' || c == ']').to_string(), p.parse().ok()?))
}

/// Where a recipient's mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Where {
    /// A mailbox, group or catch-all of a hosted domain.
    Local,
    Remote(Route),
    /// One of the configuration's accept-all domains with no smart host: its MX is us, so
    /// the mail waits in the queue (`queue retry` tries it again).
    Held,
}

/// Where mail for `addr` goes: a hosted domain is local unless the directory gives it a
/// smart host (the backup-MX case); an accept-all domain of ours is held unless a smart
/// host applies; anything else follows [`route`].
pub fn route_of(dir: &Directory, addr: &str, cfg: &RoutingConfig, local_domains: &HashSet<String>) -> Where {
    let Some((_, domain)) = addr.rsplit_once('@') else { return Where::Local };
    if let Some(d) = dir.domain(domain) {
        return match d.smart_host.as_deref().and_then(split_host_port) {
            Some((host, port)) => Where::Remote(Route::SmartHost { host, port, auth: None }),
            None => Where::Local,
        };
    }
    let r = route(domain, cfg);
    if local_domains.contains(domain) && matches!(r, Route::Mx(_)) {
        return Where::Held;
    }
    Where::Remote(r)
}

#[cfg(test)]
mod tests;
