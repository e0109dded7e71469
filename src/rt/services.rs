//! The services the configuration asks for, started once by the runtime and passed down:
//! the policy at the door with its ban list (loaded from the data directory), its password
//! verifier threads and its DNS thread. `config.rs` only parses and validates.

use crate::config::Config;
use crate::dns::{Dns, DnsService, DnsSettings};
use crate::policy::{IpList, Policy, PtrCheck};
use std::sync::Arc;

/// What the server runs besides its shards and delivery threads.
pub struct Services {
    /// The one policy of the server: auto-bans, rate counters, the verifier and the DNS
    /// service are shared by every listener.
    pub policy: Arc<Policy>,
    /// The one DNS service: the policy's checks and delivery's lookups, one cache (none if
    /// its thread could not start: checks then see temporary failures, deliveries wait).
    pub dns: Option<Arc<DnsService>>,
}

impl Services {
    /// Loads the ban list and starts the verifier and DNS threads.
    pub fn start(cfg: &Config) -> Self {
        let dns = match DnsService::start() {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                log::error!("dns: cannot start the resolver thread: {e}");
                None
            }
        };
        let mut policy = build_policy(cfg, dns.clone());
        policy.delegation = start_delegation(cfg);
        policy.milters = start_milters(cfg);
        policy.scripts = load_scripts(cfg);
        policy.greylist = load_greylist(cfg, None);
        policy.spf = start_spf(cfg, None);
        policy.dkim = start_dkim(cfg, None);
        policy.known_good = Arc::new(crate::policy::early::KnownGood::new(cfg.policy.known_good_for.as_secs()));
        Services { policy: Arc::new(policy), dns }
    }

    /// The policy of a reloaded configuration: new lists, rules and policy services; the
    /// bans (when still on), the password verifier, the rate counters (when the limit is
    /// the same) and the DNS service carry over from `old`.
    pub fn reload_policy(&self, cfg: &Config, old: &Policy) -> Policy {
        let mut p = build_policy_with_bans(cfg, self.dns.clone(), old.bans.clone());
        p.verifier = old.verifier.clone();
        if let (Some(new), Some(prev)) = (&p.rcpt_per_hour, &old.rcpt_per_hour)
            && new.limit() == prev.limit()
        {
            p.rcpt_per_hour = Some(prev.clone());
        }
        if let (Some(new), Some(prev)) = (&p.rcpt_per_hour_per_network, &old.rcpt_per_hour_per_network)
            && new.limit() == prev.limit()
        {
            p.rcpt_per_hour_per_network = Some(prev.clone());
        }
        p.delegation = start_delegation(cfg);
        p.milters = start_milters(cfg);
        p.scripts = load_scripts(cfg);
        p.greylist = load_greylist(cfg, old.greylist.as_ref());
        p.spf = start_spf(cfg, old.spf.as_ref());
        p.dkim = start_dkim(cfg, old.dkim.as_ref());
        // Known-good clients stay known (with the new time for the next passes).
        p.known_good = if old.known_good.ttl_secs == cfg.policy.known_good_for.as_secs() {
            old.known_good.clone()
        } else {
            Arc::new(crate::policy::early::KnownGood::new(cfg.policy.known_good_for.as_secs()))
        };
        p
    }
}

/// `[greylist]`: the running list when its settings did not change, else the saved state
/// loaded with the new ones (the old list saved first). A state that cannot be read is
/// set aside and greylisting starts empty, as the log says.
fn load_greylist(
    cfg: &Config,
    old: Option<&Arc<crate::policy::greylist::Greylist>>,
) -> Option<Arc<crate::policy::greylist::Greylist>> {
    let settings = cfg.greylist.settings()?;
    if let Some(g) = old {
        if *g.settings() == settings {
            return Some(g.clone());
        }
        if let Err(e) = g.save() {
            log::error!("greylist: {e}");
        }
    }
    let path = cfg.data_dir.join("greylist");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    match crate::policy::greylist::Greylist::load(settings.clone(), &path, now) {
        Ok(g) => Some(Arc::new(g)),
        Err(e) => {
            let aside = path.with_extension("unreadable");
            log::error!("greylist: {e}; moved to {} and starting empty", aside.display());
            let _ = std::fs::rename(&path, &aside);
            crate::policy::greylist::Greylist::load(settings, &path, now)
                .map(Arc::new)
                .map_err(|e| log::error!("greylist: {e}"))
                .ok()
        }
    }
}

/// The running service `old` when its settings equal `settings`, else a new one from
/// `start` (none when off, or when its thread cannot start: logged under `what`).
fn reuse_or_start<S, T: PartialEq>(
    what: &str,
    settings: Option<T>,
    old: Option<&Arc<S>>,
    current: impl Fn(&S) -> &T,
    start: impl FnOnce(T) -> std::io::Result<S>,
) -> Option<Arc<S>> {
    let settings = settings?;
    if let Some(s) = old.filter(|s| *current(s) == settings) {
        return Some(s.clone());
    }
    start(settings)
        .map(Arc::new)
        .map_err(|e| log::error!("{what}: cannot start its thread: {e}; its checks answer temperror"))
        .ok()
}

/// `[spf]`: the running SPF thread when its settings did not change, else a new one.
fn start_spf(
    cfg: &Config,
    old: Option<&Arc<crate::policy::spf::SpfService>>,
) -> Option<Arc<crate::policy::spf::SpfService>> {
    reuse_or_start("spf", cfg.spf_settings(), old, |s| &s.settings, crate::policy::spf::SpfService::start)
}

/// `[dkim]`/`[dmarc]`: the running thread when its settings did not change, else a new one.
fn start_dkim(
    cfg: &Config,
    old: Option<&Arc<crate::policy::dkim::DkimService>>,
) -> Option<Arc<crate::policy::dkim::DkimService>> {
    reuse_or_start("dkim", cfg.dkim_settings(), old, |s| &s.settings, crate::policy::dkim::DkimService::start)
}

/// Compiles `[scripts]` (validated already: an error here means the file changed since;
/// the server then runs without the script, and says so).
fn load_scripts(cfg: &Config) -> Option<Arc<crate::policy::script::Scripts>> {
    let settings = cfg.scripts.settings()?;
    crate::policy::script::Scripts::load(settings).map_err(|e| log::error!("scripts: {e}; running without them")).ok()
}

/// Starts each `[[milter]]`'s worker threads.
fn start_milters(cfg: &Config) -> Vec<Arc<crate::policy::milter::Milter>> {
    let mut v = Vec::new();
    for m in &cfg.milter {
        let settings = crate::policy::milter::MilterSettings {
            address: m.address.clone(),
            timeout: m.timeout,
            default_action: m.default_action,
        };
        match crate::policy::milter::Milter::start(settings, m.connections.clamp(1, 64)) {
            Ok(x) => v.push(Arc::new(x)),
            Err(e) => log::error!("milter {}: cannot start its threads: {e}", m.address),
        }
    }
    v
}

/// Starts each `[[policy_service]]`'s worker threads.
fn start_delegation(cfg: &Config) -> Vec<Arc<crate::policy::delegation::PolicyService>> {
    let mut v = Vec::new();
    for s in &cfg.policy_service {
        let settings = crate::policy::delegation::ServiceSettings {
            address: s.address.clone(),
            stages: s.at.clone(),
            timeout: s.timeout,
            default_action: s.default_action,
            cache_ttl: s.cache_ttl,
            threads: s.connections.clamp(1, 64),
        };
        match crate::policy::delegation::PolicyService::start(settings) {
            Ok(p) => v.push(Arc::new(p)),
            Err(e) => log::error!("policy service {}: cannot start its threads: {e}", s.address),
        }
    }
    v
}

fn build_policy(cfg: &Config, dns: Option<Arc<DnsService>>) -> Policy {
    build_policy_with_bans(cfg, dns, None)
}

/// The policy of `cfg`; `kept_bans` is the running server's list (a reload keeps it).
fn build_policy_with_bans(
    cfg: &Config,
    dns: Option<Arc<DnsService>>,
    kept_bans: Option<Arc<crate::policy::BanList>>,
) -> Policy {
    let p = &cfg.policy;
    // Checked by validate(); a configuration built in code falls back to empty lists.
    let list = |l: &[String]| IpList::parse(l).unwrap_or_default();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let bans = if p.auto_ban && kept_bans.is_some() {
        kept_bans
    } else if p.auto_ban {
        let path = cfg.data_dir.join("bans");
        Some(Arc::new(crate::policy::BanList::load(&path, now).unwrap_or_else(|e| {
            log::error!("auto-bans: {e}; starting with an empty list");
            crate::policy::BanList::in_memory()
        })))
    } else {
        None
    };
    Policy {
        acl_mode: p.access_control,
        acl: list(&p.access_list),
        whitelist: list(&p.whitelist),
        bans,
        auto_ban: p.auto_ban.then_some(p.auto_ban_duration),
        dnsbl: p
            .dnsbl
            .iter()
            .filter(|d| d.enabled)
            .map(|d| crate::policy::DnsblProvider {
                zone: d.zone.trim_end_matches('.').to_ascii_lowercase(),
                server: d.server,
            })
            .collect(),
        ptr_check: p.ptr_check,
        ptr_header: p.ptr_header.clone(),
        ehlo_block: p.ehlo_block.iter().map(|s| s.trim().to_ascii_lowercase()).collect(),
        relay: crate::policy::RelayRules {
            enabled: cfg.relay.enabled,
            authenticated: cfg.relay.authenticated,
            privileged: list(&cfg.relay.privileged),
            local_senders: cfg.relay.local_senders,
            pop_before_smtp: cfg.relay.pop_before_smtp_dir.as_ref().map(|dir| {
                Arc::new(crate::policy::DropFolder { dir: dir.clone(), window: cfg.relay.pop_before_smtp_window })
                    as Arc<dyn crate::policy::PopLookup>
            }),
        },
        spoofing: p.sender_spoofing,
        sender_domain_resolves: p.sender_domain_resolves,
        sender_must_own: p.sender_must_own,
        domain_literals: p.domain_literals,
        literal_addresses: p.domain_literal_addresses.clone(),
        rcpt_per_hour: (p.max_recipients_per_hour > 0)
            .then(|| Arc::new(crate::policy::RateLimiter::new(p.max_recipients_per_hour))),
        rcpt_per_hour_per_network: (p.max_recipients_per_hour_per_network > 0)
            .then(|| Arc::new(crate::policy::RateLimiter::new(p.max_recipients_per_hour_per_network))),
        inbound_auth: p.inbound_auth,
        disabled_commands: p.disabled_commands.iter().map(|c| c.to_ascii_uppercase()).collect(),
        welcome: p.welcome.clone(),
        add_missing_headers: p.add_missing_headers,
        auth_directory: cfg.auth.directory,
        auth_fixed: cfg.auth.username.clone().zip(cfg.auth.password.clone()),
        verifier: Some(Arc::new(crate::policy::auth::Verifier::new(cfg.auth.verifier_threads))),
        dns: dns.filter(|_| needs_dns(cfg)).map(|s| Dns::new(s, policy_dns(cfg))),
        // The services' threads and state: started by the caller.
        ..Policy::default()
    }
}

/// True when a policy check asks DNS.
fn needs_dns(cfg: &Config) -> bool {
    let p = &cfg.policy;
    p.dnsbl.iter().any(|d| d.enabled) || p.ptr_check != PtrCheck::Never || p.sender_domain_resolves
}

/// The policy's settings: `[policy.dns]` if given, else `[dns]`.
fn policy_dns(cfg: &Config) -> DnsSettings {
    let d = cfg.policy_dns();
    DnsSettings {
        servers: d.servers.clone(),
        timeout: d.timeout,
        min_ttl: d.min_ttl,
        max_ttl: d.max_ttl,
        negative_ttl: d.negative_ttl,
    }
}
