//! The configuration file (TOML), its defaults and its validation.
//!
//! Every key has a default, so an empty file (or none: [`Config::embedded`]) is a working
//! MX. Unknown keys are errors. [`Config::load`] validates the whole file and reports every
//! problem at once, each naming its key and line. `docs/configuration.md` documents each
//! key; keep the two in step.

use crate::policy::{AclMode, AuthMode, InboundAuth, IpList, Policy, PtrCheck, Spoofing};
use crate::session::SessionConfig;
use crate::util::units::{de_duration, de_size};
pub use crate::util::units::{parse_duration, parse_size};
use crate::wire::BareLinePolicy;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Our host name in the greeting, EHLO and Received. Default: the system's host name.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Where the spool (and later mailboxes) live. Default `./var`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Domains whose mail is accepted here. Default `["example.test"]`.
    #[serde(default = "default_local_domains")]
    pub local_domains: Vec<String>,
    /// Text after the host name in the 220 greeting. Default `ESMTP ringmx`.
    #[serde(default = "default_banner")]
    pub banner: String,
    #[serde(default = "default_listeners", rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub relay: RelayConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[dns]`: the name servers and cache bounds of every lookup (policy checks, MX).
    #[serde(default)]
    pub dns: ResolverConfig,
    /// `[log]`: the activity log.
    #[serde(default)]
    pub log: LogConfig,
    /// `[metrics]`: the Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[admin]`: the admin API's TCP address (it is always on the admin socket).
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[[policy_service]]`: policy servers asked over Postfix's policy delegation protocol,
    /// in order.
    #[serde(default)]
    pub policy_service: Vec<PolicyServiceConfig>,
    /// `[[milter]]`: milters asked at the end of the content, in order.
    #[serde(default)]
    pub milter: Vec<MilterConfig>,
    /// `[scripts]`: the operator's Lua script, called at connect, EHLO, MAIL, RCPT and DATA.
    #[serde(default)]
    pub scripts: ScriptsConfig,
    /// `[greylist]`: greylisting at RCPT.
    #[serde(default)]
    pub greylist: GreylistConfig,
    /// `[spf]`: SPF at MAIL FROM.
    #[serde(default)]
    pub spf: SpfConfig,
    /// `[dkim]`: DKIM verification at the end of the content.
    #[serde(default)]
    pub dkim: DkimConfig,
    /// `[dmarc]`: DMARC at the end of the content.
    #[serde(default)]
    pub dmarc: DmarcConfig,
    /// `[lists]`: what every mailing list shares.
    #[serde(default)]
    pub lists: crate::rt::lists::ListsConfig,
    /// `ringmx serve --takeover` (not a key of the file): take the listeners and the spool
    /// over from the server running on this data directory (a zero-downtime restart).
    #[serde(skip)]
    pub takeover: bool,
}

/// `[dkim]`: see [`crate::policy::dkim`].
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// Verify the signatures of mail from unauthenticated, non-whitelisted clients.
    /// Default false.
    #[serde(default)]
    pub verify: bool,
    /// Longest a verification may take (then temperror, and the message is accepted).
    /// Default 10s.
    #[serde(default = "default_spf_timeout", deserialize_with = "de_duration")]
    pub timeout: std::time::Duration,
    /// `[[dkim.sign]]`: our domains' keys; authenticated clients' mail from them is signed.
    #[serde(default)]
    pub sign: Vec<DkimSignConfig>,
    /// ARC-seal verified mail that a redirect or group forwards elsewhere, with the RSA key
    /// of the forwarding recipient's domain. Default false.
    #[serde(default)]
    pub arc_seal_forwards: bool,
    /// Threads verifying signatures at once; 0 (the default): one per two cores, at most 8
    /// (on two cores a second one cost 15% more CPU per message for 2% more messages).
    #[serde(default)]
    pub threads: usize,
}

/// `[[dkim.sign]]`: one domain's key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DkimSignConfig {
    pub domain: String,
    pub selector: String,
    /// PEM private key: ed25519 (PKCS#8) or RSA (PKCS#1 or PKCS#8).
    pub key: PathBuf,
}

impl Default for DkimConfig {
    fn default() -> Self {
        toml::from_str("").expect("the empty [dkim] is valid")
    }
}

/// `[dmarc]`: see [`crate::policy::dkim`].
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DmarcConfig {
    /// Evaluate DMARC (verifies DKIM too). Default false.
    #[serde(default)]
    pub enabled: bool,
    /// Refuse a failure under `p=reject` (550 5.7.1); false: only record it. Default true.
    #[serde(default = "yes")]
    pub reject: bool,
    /// ARC sealers (domains) whose valid chain overrides a DMARC failure (mailing lists and
    /// forwarders the operator trusts). Default none.
    #[serde(default)]
    pub trusted_arc_sealers: Vec<String>,
}

impl Default for DmarcConfig {
    fn default() -> Self {
        toml::from_str("").expect("the empty [dmarc] is valid")
    }
}

/// `[spf]`: see [`crate::policy::spf`].
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpfConfig {
    /// Check SPF for unauthenticated clients not in `[policy] whitelist`. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// `reject` (550 5.7.23), `tempfail` or `tag`. Default reject.
    #[serde(default = "spf_reject")]
    pub fail: crate::policy::spf::SpfAction,
    /// Default tag.
    #[serde(default = "spf_tag")]
    pub softfail: crate::policy::spf::SpfAction,
    /// Default tempfail (451 4.7.24).
    #[serde(default = "spf_tempfail")]
    pub temperror: crate::policy::spf::SpfAction,
    /// Default tag (`reject`: 550 5.7.24).
    #[serde(default = "spf_tag")]
    pub permerror: crate::policy::spf::SpfAction,
    /// Longest a check may take (then temperror). Default 10s.
    #[serde(default = "default_spf_timeout", deserialize_with = "de_duration")]
    pub timeout: std::time::Duration,
    /// RFC 7208 §4.6.4: void lookups (NXDOMAIN or no records) allowed among the terms
    /// that query DNS before the result is permerror. Default 2, as the RFC recommends.
    #[serde(default = "default_spf_max_void")]
    pub max_void_lookups: u32,
}

fn default_spf_max_void() -> u32 {
    2
}

impl Default for SpfConfig {
    fn default() -> Self {
        toml::from_str("").expect("the empty [spf] is valid")
    }
}

fn spf_reject() -> crate::policy::spf::SpfAction {
    crate::policy::spf::SpfAction::Reject
}
fn spf_tag() -> crate::policy::spf::SpfAction {
    crate::policy::spf::SpfAction::Tag
}
fn spf_tempfail() -> crate::policy::spf::SpfAction {
    crate::policy::spf::SpfAction::Tempfail
}
fn default_spf_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

impl Config {
    /// The DKIM and DMARC settings, when either is on.
    pub fn dkim_settings(&self) -> Option<crate::policy::dkim::Settings> {
        let signers = self
            .dkim
            .sign
            .iter()
            .filter_map(|s| {
                crate::policy::dkim_sign::SignKey::load(&s.domain, &s.selector, &s.key)
                    .map(Arc::new)
                    .map_err(|e| log::error!("dkim: {e}; mail from {} goes unsigned", s.domain))
                    .ok()
            })
            .collect();
        let verify = self.dkim.verify || self.dmarc.enabled;
        (verify || !self.dkim.sign.is_empty()).then(|| crate::policy::dkim::Settings {
            verify,
            signers,
            dmarc: self.dmarc.enabled,
            dmarc_reject: self.dmarc.reject,
            trusted_sealers: self.dmarc.trusted_arc_sealers.iter().map(|d| d.to_ascii_lowercase()).collect(),
            arc_seal_forwards: self.dkim.arc_seal_forwards,
            threads: match self.dkim.threads {
                0 => (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).clamp(1, 8),
                n => n,
            },
            timeout: self.dkim.timeout,
            servers: self.dns.servers.clone(),
        })
    }

    /// The SPF settings, when SPF is on.
    pub fn spf_settings(&self) -> Option<crate::policy::spf::Settings> {
        let s = &self.spf;
        s.enabled.then(|| crate::policy::spf::Settings {
            fail: s.fail,
            softfail: s.softfail,
            temperror: s.temperror,
            permerror: s.permerror,
            timeout: s.timeout,
            max_void_lookups: s.max_void_lookups,
            servers: self.dns.servers.clone(),
        })
    }
}

/// `[greylist]`: see [`crate::policy::greylist`].
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GreylistConfig {
    /// Greylist unauthenticated clients at RCPT. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// How long a first attempt must wait before its retry passes. Default 5m.
    #[serde(default = "default_greylist_delay", deserialize_with = "de_duration")]
    pub delay: std::time::Duration,
    /// How long a first attempt waits for its retry before it is forgotten. Default 2d.
    #[serde(default = "default_greylist_window", deserialize_with = "de_duration")]
    pub retry_window: std::time::Duration,
    /// How long a triplet that passed (and a whitelisted network) stays known after it was
    /// last seen. Default 35d.
    #[serde(default = "default_greylist_lifetime", deserialize_with = "de_duration")]
    pub lifetime: std::time::Duration,
    /// Passes after which the client's network (/24, /64) skips greylisting; 0: never.
    /// Default 5.
    #[serde(default = "default_greylist_awl")]
    pub auto_whitelist: u32,
    /// Networks never greylisted (addresses, CIDR, `*`). Default none.
    #[serde(default)]
    pub exempt: Vec<String>,
    /// Most triplets kept (about 40 bytes each); past it, new ones pass. Default 1000000.
    #[serde(default = "default_greylist_max")]
    pub max_entries: usize,
    /// Senders whose domain's SPF passed for this client are not greylisted (needs
    /// `[spf] enabled`). Default true.
    #[serde(default = "yes")]
    pub exempt_spf_pass: bool,
}

impl Default for GreylistConfig {
    fn default() -> Self {
        GreylistConfig {
            enabled: false,
            delay: default_greylist_delay(),
            retry_window: default_greylist_window(),
            lifetime: default_greylist_lifetime(),
            auto_whitelist: default_greylist_awl(),
            exempt: Vec::new(),
            max_entries: default_greylist_max(),
            exempt_spf_pass: true,
        }
    }
}

impl GreylistConfig {
    /// The settings, when greylisting is on.
    pub fn settings(&self) -> Option<crate::policy::greylist::Settings> {
        self.enabled.then(|| crate::policy::greylist::Settings {
            delay: self.delay,
            retry_window: self.retry_window,
            lifetime: self.lifetime,
            auto_whitelist: self.auto_whitelist,
            exempt: IpList::parse(&self.exempt).unwrap_or_default(),
            exempt_spec: self.exempt.clone(),
            max_entries: self.max_entries,
            exempt_spf_pass: self.exempt_spf_pass,
        })
    }
}

fn default_greylist_delay() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

fn default_greylist_window() -> std::time::Duration {
    std::time::Duration::from_secs(2 * 86400)
}

fn default_greylist_lifetime() -> std::time::Duration {
    std::time::Duration::from_secs(35 * 86400)
}

fn default_greylist_awl() -> u32 {
    5
}

fn default_greylist_max() -> usize {
    1_000_000
}

/// `[scripts]`: see [`crate::policy::script`].
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScriptsConfig {
    /// The Lua file; none: no scripts.
    pub path: Option<PathBuf>,
    /// Longest one hook call may run (then 451 4.3.0). Default 5ms.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub budget: Option<std::time::Duration>,
    /// Most memory a shard's script state may hold. Default 16MiB.
    #[serde(default, deserialize_with = "de_opt_size")]
    pub memory_limit: Option<u64>,
    /// Extra Lua libraries: `io`, `os` (files, environment). Default none.
    #[serde(default)]
    pub libraries: Vec<crate::policy::script::Library>,
    /// The `data` hook sees the body (`ctx.body`), not only the header fields. Default false.
    #[serde(default)]
    pub body: bool,
}

impl ScriptsConfig {
    /// The engine's settings, when a script is configured.
    pub fn settings(&self) -> Option<crate::policy::script::Settings> {
        let path = self.path.as_ref()?;
        let mut s = crate::policy::script::settings(path);
        if let Some(b) = self.budget {
            s.budget = b;
        }
        if let Some(m) = self.memory_limit {
            s.memory_limit = m as usize;
        }
        s.libraries = self.libraries.clone();
        s.body = self.body;
        Some(s)
    }
}

fn de_opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<std::time::Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_opt_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_size(d).map(Some)
}

/// `[[milter]]`: one milter (rspamd, OpenDKIM, ClamAV, …).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilterConfig {
    /// `HOST:PORT`, Postfix's `inet:PORT@HOST`, or a Unix socket (`unix:/path` or `/path`).
    pub address: String,
    /// Longest the whole conversation about one message may take. Default 30s.
    #[serde(default = "default_milter_timeout", deserialize_with = "de_duration")]
    pub timeout: std::time::Duration,
    /// When it cannot be reached or fails: `tempfail` (451 4.7.1) or `accept`. Default `tempfail`.
    #[serde(default)]
    pub default_action: crate::policy::milter::DefaultAction,
    /// Messages it is asked about at once (one connection and thread each). Default 4.
    #[serde(default = "default_milter_connections")]
    pub connections: usize,
}

fn default_milter_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

fn default_milter_connections() -> usize {
    4
}

/// `[[policy_service]]`: one policy server (postgrey, policyd-spf, postfwd, …).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyServiceConfig {
    /// `HOST:PORT`, or the path of a Unix socket.
    pub address: String,
    /// Where it is asked: `rcpt` (after each recipient our checks accepted) and/or `data`
    /// (at the end of the content). Default `["rcpt"]`.
    #[serde(default = "default_policy_stages")]
    pub at: Vec<crate::policy::delegation::Stage>,
    /// Longest wait for an answer. Default 10s.
    #[serde(default = "default_policy_timeout", deserialize_with = "de_duration")]
    pub timeout: std::time::Duration,
    /// When it cannot be reached or answers nothing we can act on: `tempfail` (451 4.3.5)
    /// or `accept`. Default `tempfail`.
    #[serde(default)]
    pub default_action: crate::policy::delegation::DefaultAction,
    /// How long a final answer is reused for an identical request. Default 60s; 0 turns the
    /// cache off.
    #[serde(default = "default_policy_cache_ttl", deserialize_with = "de_duration")]
    pub cache_ttl: std::time::Duration,
    /// Connections (and threads) to it. Default 2.
    #[serde(default = "default_policy_threads")]
    pub connections: usize,
}

fn default_policy_stages() -> Vec<crate::policy::delegation::Stage> {
    vec![crate::policy::delegation::Stage::Rcpt]
}

fn default_policy_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

fn default_policy_cache_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

fn default_policy_threads() -> usize {
    2
}

/// `[metrics]`: Prometheus metrics, liveness and readiness over HTTP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the endpoint (`/metrics`, `/healthz`, `/readyz`), e.g. `127.0.0.1:9464`.
    /// Default none: off. It has no authentication: keep it on loopback or a management
    /// network.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// `[admin]`: the admin API (HTTP/JSON, docs/admin-api.yaml). It is always served on the
/// Unix socket `<data_dir>/control.sock` (mode 0600: the server's user and root); this adds
/// a TCP address, where every request needs the bearer token. Read at start.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// TCP address of the admin API, e.g. `127.0.0.1:8026`. Default none: the socket only.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token (at least 32 characters; surrounding white space is
    /// ignored). Required with `listen`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// The smallest admin API token accepted.
pub const MIN_ADMIN_TOKEN: usize = 32;

impl AdminConfig {
    /// The token from `token_file`, or why there is none to use.
    pub fn token(&self) -> Result<String, String> {
        let Some(p) = &self.token_file else { return Err("needs [admin] token_file".into()) };
        let t = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let t = t.trim();
        if t.len() < MIN_ADMIN_TOKEN || t.contains(char::is_whitespace) {
            return Err(format!(
                "{}: the token must be at least {MIN_ADMIN_TOKEN} characters, without spaces",
                p.display()
            ));
        }
        Ok(t.to_string())
    }
}

/// `[log]`: the activity log (one line per message event and refused client).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Where the logs are written. Default `<data_dir>/log`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Write `activity.log`. Default true.
    #[serde(default = "yes")]
    pub activity: bool,
    /// `kv` (`key=value` pairs) or `json` (one object per line). Default `kv`.
    #[serde(default)]
    pub format: crate::obs::LogFormat,
    /// Events each producing thread may have waiting for the writer; past it they are
    /// dropped and counted. Default 16384.
    #[serde(default = "default_log_queue")]
    pub queue: usize,
    /// `[log.w3c]`: the W3C extended log of SMTP sessions.
    #[serde(default)]
    pub w3c: W3cConfig,
    /// Trace SMTP sessions in `debug.log` from the start (`ringmx log debug` switches it
    /// on the running server). Default false.
    #[serde(default)]
    pub debug: bool,
    /// The clients traced (addresses, networks, wildcards, as `access_list`); empty: all.
    #[serde(default)]
    pub debug_clients: Vec<String>,
}

/// `[log.w3c]`: the W3C extended log of SMTP sessions, in `<log dir>/w3c/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct W3cConfig {
    /// Default false.
    #[serde(default)]
    pub enabled: bool,
    /// The fields of each line, in order. Default: all of them.
    #[serde(default = "default_w3c_fields")]
    pub fields: Vec<crate::obs::w3c::Field>,
    /// `daily`, `hourly` or `size`. Default `daily`.
    #[serde(default)]
    pub rollover: crate::obs::w3c::Rollover,
    /// With `rollover = "size"`: a new file once the current one reaches this. Default 100MiB.
    #[serde(default = "default_w3c_max_size", deserialize_with = "de_size")]
    pub max_size: u64,
}

fn default_w3c_fields() -> Vec<crate::obs::w3c::Field> {
    crate::obs::w3c::Field::ALL.to_vec()
}

fn default_w3c_max_size() -> u64 {
    100 * 1024 * 1024
}

impl Default for W3cConfig {
    fn default() -> Self {
        toml::from_str("").expect("the empty [log.w3c] is valid")
    }
}

fn default_log_queue() -> usize {
    16384
}

impl Default for LogConfig {
    fn default() -> Self {
        toml::from_str("").expect("the empty [log] is valid")
    }
}

/// `[delivery]`: local delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Root of the mailboxes: `<root>/<postoffice>/<mailbox>/Maildir`. Default
    /// `<data_dir>/mailboxes`.
    #[serde(default)]
    pub maildir_root: Option<PathBuf>,
    /// Header that names the original recipients of a catch-all copy. Default
    /// `X-Original-Recipients`.
    #[serde(default = "default_catch_all_header")]
    pub catch_all_header: String,
    /// Pause before a local delivery that failed for a transient reason is tried again.
    /// Default 5 minutes.
    #[serde(default = "default_local_retry", deserialize_with = "de_duration")]
    pub local_retry: Duration,
    /// An auto-responder answers one sender at most once per this period (RFC 3834 §2).
    /// Default 1 day.
    #[serde(default = "default_autoreply_period", deserialize_with = "de_duration")]
    pub autoreply_period: Duration,
    /// A mailbox's delivery-event program is killed after this long. Default 30 s.
    #[serde(default = "default_event_timeout", deserialize_with = "de_duration")]
    pub event_timeout: Duration,
    /// Messages the queue works on at a time (envelope and content in memory, like
    /// Postfix's active queue); the rest of the queue costs a compact entry each. Default
    /// 20,000.
    #[serde(default = "default_active_limit")]
    pub active_limit: usize,
    /// Where mail for `postmaster@` a hosted domain goes when the directory gives that
    /// domain no postmaster (RFC 5321 §4.5.1). Default none: such mail waits, deferred.
    #[serde(default)]
    pub postmaster: Option<String>,
    /// `[delivery.dsn]`: non-delivery reports.
    #[serde(default)]
    pub dsn: crate::delivery::dsn::DsnConfig,
    /// `[delivery.retry]`: the retry schedule and the lifetime of a message.
    #[serde(default)]
    pub retry: crate::queue::RetryConfig,
    /// `[delivery.delay_notice]`: when senders are told of a delay.
    #[serde(default)]
    pub delay_notice: crate::queue::DelayNoticeConfig,
    /// `[delivery.remote]`: outbound SMTP (TLS, time-outs, concurrency, source address).
    #[serde(default)]
    pub remote: crate::delivery::remote::RemoteConfig,
    /// `[delivery.routing]`: smart hosts.
    #[serde(default)]
    pub routing: crate::routing::RoutingConfig,
    /// `[delivery.dns]`: the resolver for MX lookups.
    #[serde(default)]
    pub dns: DeliveryDnsConfig,
    /// `[delivery.lmtp]`: mailboxes delivered to an LMTP server instead of Maildirs.
    #[serde(default)]
    pub lmtp: crate::delivery::lmtp::LmtpConfig,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            maildir_root: None,
            catch_all_header: default_catch_all_header(),
            local_retry: default_local_retry(),
            autoreply_period: default_autoreply_period(),
            event_timeout: default_event_timeout(),
            active_limit: default_active_limit(),
            postmaster: None,
            dsn: Default::default(),
            retry: Default::default(),
            delay_notice: Default::default(),
            remote: Default::default(),
            routing: Default::default(),
            dns: Default::default(),
            lmtp: Default::default(),
        }
    }
}

/// `[policy]`: who may do what at the door (SPEC §3, §5).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Catch-all addresses of directory domains apply. Default true; false is MailEnable's
    /// "disable all catch-alls".
    #[serde(default = "yes")]
    pub catch_alls: bool,
    /// What `access_list` means: `deny_listed` or `allow_only_listed`. Default `deny_listed`.
    #[serde(default)]
    pub access_control: AclMode,
    /// Client addresses, CIDR ranges or `*` wildcards refused (or the only ones allowed) at
    /// connect, 554 5.7.1. Default empty.
    #[serde(default)]
    pub access_list: Vec<String>,
    /// Addresses exempt from DNSBL checks and auto-bans. Default empty.
    #[serde(default)]
    pub whitelist: Vec<String>,
    /// Add a client that reaches `limits.max_errors` to the ban list. Default false.
    #[serde(default)]
    pub auto_ban: bool,
    /// How long an auto-ban lasts; 0 for ever. Default 24 hours.
    #[serde(default = "default_auto_ban_duration", deserialize_with = "de_duration")]
    pub auto_ban_duration: Duration,
    /// Substrings of the HELO/EHLO argument (any case) that drop the connection (554 5.7.1).
    /// Default empty.
    #[serde(default)]
    pub ehlo_block: Vec<String>,
    /// PTR check for unauthenticated clients: `never`, `reject` (550 5.7.25 at MAIL) or
    /// `tag` (a header). Private and loopback clients are not checked. Default `never`.
    #[serde(default)]
    pub ptr_check: PtrCheck,
    /// Header added in `tag` mode. Default `X-Ringmx-PTR`.
    #[serde(default = "default_ptr_header")]
    pub ptr_header: String,
    /// The sender's domain must be local or have MX, A or AAAA records (550 5.1.8; 451
    /// 4.4.3 when DNS fails). Default false.
    #[serde(default)]
    pub sender_domain_resolves: bool,
    /// Authenticated senders must use an address of their own mailbox (553 5.7.1).
    /// Default true.
    #[serde(default = "yes")]
    pub sender_must_own: bool,
    /// Who may use a local domain in MAIL FROM: `anyone`, `authenticated_only` or
    /// `authorized` (authenticated or privileged IP); 553 5.7.1. Default `anyone`.
    #[serde(default)]
    pub sender_spoofing: Spoofing,
    /// Accept `user@[address]` for our own addresses. Default false.
    #[serde(default)]
    pub domain_literals: bool,
    /// Addresses accepted in domain literals besides the listeners' bound ones (NAT).
    /// Default empty.
    #[serde(default)]
    pub domain_literal_addresses: Vec<IpAddr>,
    /// Recipients per hour per sender identity (authenticated user, else client address);
    /// 451 4.7.1 past it; 0 for no limit. Default 0.
    #[serde(default)]
    pub max_recipients_per_hour: u32,
    /// Recipients per hour from one network of unauthenticated clients, an IPv4 /24 or an
    /// IPv6 /48 (a botnet's neighbours sharing the allowance); 451 4.7.1 past it; 0 for no
    /// limit. Default 0.
    #[serde(default)]
    pub max_recipients_per_hour_per_network: u32,
    /// How long a client that passed a listener's pregreet test skips it. Default 24h.
    #[serde(default = "default_known_good_for", deserialize_with = "de_duration")]
    pub known_good_for: Duration,
    /// Authentication for mail to local mailboxes: `not_required`, `required` or
    /// `per_postoffice` (530 5.7.0). Default `per_postoffice`.
    #[serde(default)]
    pub inbound_auth: InboundAuth,
    /// Commands answered 502 5.5.1: any of VRFY, EXPN, HELP, ETRN, TURN, NOOP. Default
    /// `["VRFY", "EXPN", "ETRN", "TURN"]`.
    #[serde(default = "default_disabled_commands")]
    pub disabled_commands: Vec<String>,
    /// Alternate welcome: the whole 220 text, `%LOCALDOMAIN%` and `%TIME%` substituted.
    /// Default none (host name and `banner`).
    #[serde(default)]
    pub welcome: Option<String>,
    /// The Received header shows 127.0.0.1 instead of the client address. Default false.
    #[serde(default)]
    pub hide_client_ip: bool,
    /// Add Message-ID and Date to messages of authenticated senders that lack them.
    /// Default true.
    #[serde(default = "yes")]
    pub add_missing_headers: bool,
    /// `[[policy.dnsbl]]`: DNS blacklists, asked at connect. Default none.
    #[serde(default)]
    pub dnsbl: Vec<DnsblConfig>,
    /// `[policy.dns]`: the resolver of the DNSBL, PTR and sender-domain checks when it must
    /// differ from `[dns]` (the older, per-part form of it). Default: `[dns]`.
    #[serde(default)]
    pub dns: Option<ResolverConfig>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        toml::from_str("").expect("the empty [policy] is valid")
    }
}

/// `[[policy.dnsbl]]`: one DNS blacklist (RFC 5782).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsblConfig {
    /// The zone, e.g. `zen.spamhaus.org`; named in the 554 5.7.1 reply. Required.
    pub zone: String,
    /// Ask this DNS server (`ADDR:PORT`) instead of `[policy.dns] servers`. Default none.
    #[serde(default)]
    pub server: Option<SocketAddr>,
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// `[policy.dns]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    /// Name servers, `ADDR:PORT`. Default `["127.0.0.1:53"]` (a local caching resolver;
    /// /etc/resolv.conf is not read).
    #[serde(default = "default_dns_servers")]
    pub servers: Vec<SocketAddr>,
    /// Per-query time-out. Default 5 s.
    #[serde(default = "default_dns_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Cached answers live at least this long, whatever their TTL. Default 30 s.
    #[serde(default = "default_dns_min_ttl", deserialize_with = "de_duration")]
    pub min_ttl: Duration,
    /// And at most this long. Default 1 hour.
    #[serde(default = "default_dns_max_ttl", deserialize_with = "de_duration")]
    pub max_ttl: Duration,
    /// Negative answers (no such name, no records) are cached this long. Default 5 minutes.
    #[serde(default = "default_dns_negative_ttl", deserialize_with = "de_duration")]
    pub negative_ttl: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        toml::from_str("").expect("the empty [dns] is valid")
    }
}

/// `[delivery.dns]`: what MX lookups do differently from `[dns]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryDnsConfig {
    /// Name servers for MX and address lookups. Default: `[dns] servers`.
    #[serde(default)]
    pub servers: Option<Vec<SocketAddr>>,
    /// Per-query time-out. Default: `[dns] timeout`.
    #[serde(default, deserialize_with = "crate::util::units::de_duration_opt")]
    pub timeout: Option<Duration>,
    /// Port of the SMTP servers found by MX lookup. Default 25; tests point it at a
    /// loopback port.
    #[serde(default = "crate::routing::default_port")]
    pub remote_port: u16,
}

impl Default for DeliveryDnsConfig {
    fn default() -> Self {
        toml::from_str("").expect("the empty [delivery.dns] is valid")
    }
}

/// `[relay]`: who may send to recipients not hosted here (SPEC §4); 550 5.7.1 otherwise.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Relaying at all. Default true (for the cases below).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Authenticated sessions may relay. Default true.
    #[serde(default = "yes")]
    pub authenticated: bool,
    /// Client addresses that may relay without authenticating (addresses, CIDR, `*`).
    /// Default empty: not even loopback.
    #[serde(default)]
    pub privileged: Vec<String>,
    /// Senders whose address is in a local domain may relay. Default false: anyone can
    /// forge such a sender.
    #[serde(default)]
    pub local_senders: bool,
    /// POP-before-SMTP drop folder: files named by client address (or address`.pbs`).
    /// Default none (off).
    #[serde(default)]
    pub pop_before_smtp_dir: Option<PathBuf>,
    /// How recent the file must be. Default 30 minutes.
    #[serde(default = "default_pop_window", deserialize_with = "de_duration")]
    pub pop_before_smtp_window: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        toml::from_str("").expect("the empty [relay] is valid")
    }
}

/// `[auth]`: SMTP AUTH (RFC 4954) with PLAIN and LOGIN.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Log in with a mailbox's address (or bare name in the default postoffice) and
    /// password. Default true.
    #[serde(default = "yes")]
    pub directory: bool,
    /// A fixed relay login, with `password`. Default none.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Threads that verify argon2 hashes. Default 1.
    #[serde(default = "one")]
    pub verifier_threads: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        toml::from_str("").expect("the empty [auth] is valid")
    }
}

fn default_auto_ban_duration() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_ptr_header() -> String {
    "X-Ringmx-PTR".into()
}
fn default_disabled_commands() -> Vec<String> {
    ["VRFY", "EXPN", "ETRN", "TURN"].map(String::from).to_vec()
}
fn default_dns_servers() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 53))]
}
fn default_dns_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_dns_min_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_dns_max_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_dns_negative_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_known_good_for() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_pop_window() -> Duration {
    Duration::from_secs(1800)
}

/// Verbs `[policy] disabled_commands` may name.
pub const DISABLEABLE: &[&str] = &["VRFY", "EXPN", "HELP", "ETRN", "TURN", "NOOP"];

fn default_catch_all_header() -> String {
    "X-Original-Recipients".into()
}
fn default_local_retry() -> Duration {
    Duration::from_secs(300)
}
fn default_active_limit() -> usize {
    20_000
}
fn default_autoreply_period() -> Duration {
    Duration::from_secs(86_400)
}
fn default_event_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[[listener]]`: one port and the addresses it is bound on. Defaults depend on the port
/// (SPEC §2): 465 is implicit TLS; 587 and 465 require authentication.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(from = "RawListener")]
pub struct ListenerConfig {
    pub port: u16,
    /// Addresses to bind. Default: every IPv4 and IPv6 address.
    pub bind: Vec<IpAddr>,
    /// `none`, `starttls` (offered when a certificate is configured) or `implicit` (RFC 8314).
    /// Default `implicit` on port 465, else `starttls`.
    pub tls: ListenerTls,
    /// `always`, `never` or `tls_only` (538 5.7.11 before TLS). Default `tls_only`.
    pub auth: AuthMode,
    /// Every transaction must authenticate first (530 5.7.0). Default true on 587 and 465.
    pub require_auth: bool,
    /// Read a PROXY protocol v1/v2 header from the addresses in `proxy_trusted`. Default false.
    pub proxy_protocol: bool,
    /// Load balancers whose PROXY header is believed (addresses, CIDR, `*`). Default empty.
    pub proxy_trusted: Vec<String>,
    /// Wait this long before the greeting for clients not known good; one that talks
    /// first, or pipelines without PIPELINING offered, gets 554 5.5.1 (Postfix postscreen's
    /// pregreet test). Default 0s: off (keep it off on submission ports).
    pub pregreet: std::time::Duration,
}

/// `[[listener]]` as written; the port decides the defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    port: u16,
    #[serde(default = "default_bind")]
    bind: Vec<IpAddr>,
    #[serde(default)]
    tls: Option<ListenerTls>,
    #[serde(default)]
    auth: Option<AuthMode>,
    #[serde(default)]
    require_auth: Option<bool>,
    #[serde(default)]
    proxy_protocol: bool,
    #[serde(default)]
    proxy_trusted: Vec<String>,
    #[serde(default, deserialize_with = "de_duration")]
    pregreet: std::time::Duration,
}

impl ListenerConfig {
    /// A listener on `port` with the defaults of that port (SPEC §2).
    pub fn new(port: u16, bind: Vec<IpAddr>) -> Self {
        RawListener {
            port,
            bind,
            tls: None,
            auth: None,
            require_auth: None,
            proxy_protocol: false,
            proxy_trusted: Vec::new(),
            pregreet: std::time::Duration::ZERO,
        }
        .into()
    }
}

impl From<RawListener> for ListenerConfig {
    fn from(r: RawListener) -> Self {
        ListenerConfig {
            port: r.port,
            bind: r.bind,
            tls: r.tls.unwrap_or(if r.port == 465 { ListenerTls::Implicit } else { ListenerTls::Starttls }),
            auth: r.auth.unwrap_or(AuthMode::TlsOnly),
            require_auth: r.require_auth.unwrap_or(r.port == 587 || r.port == 465),
            proxy_protocol: r.proxy_protocol,
            proxy_trusted: r.proxy_trusted,
            pregreet: r.pregreet,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ListenerTls {
    None,
    #[default]
    Starttls,
    Implicit,
}

/// `[tls]`: the server certificate, PEM files.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first. No default: without it, no TLS is offered.
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
}

/// `[runtime]`: cores and the I/O driver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `auto` (io_uring when the kernel allows it, else epoll), `uring` or `epoll`.
    #[serde(default)]
    pub io: IoMode,
    /// Ingress shards (threads, one per core). Default: cores − delivery cores, at least 1.
    #[serde(default)]
    pub ingress_cores: Option<usize>,
    /// Cores for routing and delivery. Default 1.
    #[serde(default = "one")]
    pub delivery_cores: usize,
    /// Pin each shard thread to a core. Default false.
    #[serde(default)]
    pub pin_cores: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { io: IoMode::Auto, ingress_cores: None, delivery_cores: 1, pin_cores: false }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    #[default]
    Auto,
    Uring,
    Epoll,
}

impl std::str::FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoMode::Auto),
            "uring" => Ok(IoMode::Uring),
            "epoll" => Ok(IoMode::Epoll),
            _ => Err(format!("unknown I/O mode {s:?}: auto, uring or epoll")),
        }
    }
}

/// `[spool]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Size of a segment file, preallocated. Default 64 MiB.
    #[serde(default = "default_segment_size", deserialize_with = "de_size")]
    pub segment_size: u64,
    /// Sync before saying 250. Default true. Turning it off trades the durability contract
    /// for speed: a power loss (not a process crash) can lose acknowledged mail.
    #[serde(default = "yes")]
    pub fsync: bool,
    /// Write batches with direct I/O (`O_DIRECT` + `RWF_DSYNC`, no `fdatasync`): see
    /// spool/log.rs and docs/decisions/007-direct-io-spool.md. Default true. Where the file
    /// system refuses it (tmpfs) the server says so once at start and writes as without.
    #[serde(default = "yes")]
    pub direct_io: bool,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig { segment_size: default_segment_size(), fsync: true, direct_io: true }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest message in bytes, advertised in SIZE; 0 for none. Default 10 MiB.
    #[serde(default = "default_max_message_size", deserialize_with = "de_size")]
    pub max_message_size: u64,
    /// Refuse larger messages (552 5.3.4). Default true.
    #[serde(default = "yes")]
    pub enforce_message_size: bool,
    /// Recipients per message (452 4.5.3 past it). Default 100.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// Longest command line in bytes (500 5.5.2). Default 2048, at least 512.
    #[serde(default = "default_max_line")]
    pub max_line_length: usize,
    /// Errors before the connection is dropped (421 4.7.0); 0 for no limit. Default 20.
    #[serde(default = "default_max_errors")]
    pub max_errors: u32,
    /// Concurrent connections in total (421 4.7.0 past it). Default 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent connections from one client address (421 4.7.0). Default 100.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Concurrent connections from one network, an IPv4 /24 or an IPv6 /48 (421 4.7.0);
    /// 0 for no limit. Default 0.
    #[serde(default)]
    pub max_connections_per_network: usize,
    /// Bare CR or LF in DATA: `reject` (554 5.5.2) or `allow`. Default reject.
    #[serde(default)]
    pub bare_newlines: BareLinePolicy,
    /// Recipients past `max_recipients` answered 452 4.5.3 without counting as errors
    /// (`max_errors`); past these, each counts. Default 1000.
    #[serde(default = "default_recipient_overshoot")]
    pub recipient_overshoot: usize,
    /// Minimum content rate in bytes per second: each block of DATA or BDAT content extends
    /// the data time-out by its size over this rate, never past `timeouts.data` from the
    /// block; 0: every block renews `timeouts.data`. Default 500.
    #[serde(default = "default_min_data_rate")]
    pub min_data_rate: u64,
    /// Fraction of `max_connections` from which the server is under stress and every wait
    /// is cut to `timeouts.stress`; 0 turns this off. Default 0.8.
    #[serde(default = "default_stress_threshold")]
    pub stress_threshold: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_size: default_max_message_size(),
            enforce_message_size: true,
            max_recipients: default_max_recipients(),
            max_line_length: default_max_line(),
            max_errors: default_max_errors(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            max_connections_per_network: 0,
            bare_newlines: BareLinePolicy::Reject,
            recipient_overshoot: default_recipient_overshoot(),
            min_data_rate: default_min_data_rate(),
            stress_threshold: default_stress_threshold(),
        }
    }
}

/// `[timeouts]` (RFC 5321 §4.5.3.2), as `"300s"`, `"5m"`, `"250ms"` or seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// Receiving a whole command line, however it is split. Default 5 minutes.
    #[serde(default = "default_command_timeout", deserialize_with = "de_duration")]
    pub command: Duration,
    /// Receiving message content: at most this between blocks, and at most this after the
    /// last block once the sender is below `limits.min_data_rate`. Default 3 minutes.
    #[serde(default = "default_data_timeout", deserialize_with = "de_duration")]
    pub data: Duration,
    /// The whole AUTH exchange, from AUTH to its last response. Default 1 minute.
    #[serde(default = "default_auth_timeout", deserialize_with = "de_duration")]
    pub auth: Duration,
    /// Longest a connection may last; 0 for no limit. Default 1 hour.
    #[serde(default = "default_session_timeout", deserialize_with = "de_duration")]
    pub session: Duration,
    /// Under stress (see `limits.stress_threshold`), every wait is cut to this. Default 10 s.
    #[serde(default = "default_stress_timeout", deserialize_with = "de_duration")]
    pub stress: Duration,
    /// Draining on SIGTERM: how long to wait for sessions in a transaction. Default 30 s.
    #[serde(default = "default_drain_timeout", deserialize_with = "de_duration")]
    pub shutdown: Duration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            command: default_command_timeout(),
            data: default_data_timeout(),
            auth: default_auth_timeout(),
            session: default_session_timeout(),
            stress: default_stress_timeout(),
            shutdown: default_drain_timeout(),
        }
    }
}

fn default_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the live 256-byte array.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    let n = buf.iter().position(|&b| b == 0).unwrap_or(0);
    match std::str::from_utf8(&buf[..n]) {
        Ok(h) if r == 0 && !h.is_empty() => h.to_string(),
        _ => "localhost".into(),
    }
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./var")
}
fn default_local_domains() -> Vec<String> {
    vec!["example.test".into()]
}
fn default_banner() -> String {
    "ESMTP ringmx".into()
}
fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig {
        port: 2525,
        bind: vec![IpAddr::from([127, 0, 0, 1])],
        tls: ListenerTls::Starttls,
        auth: AuthMode::TlsOnly,
        require_auth: false,
        proxy_protocol: false,
        proxy_trusted: Vec::new(),
        pregreet: Duration::ZERO,
    }]
}
fn default_bind() -> Vec<IpAddr> {
    vec![IpAddr::from([0, 0, 0, 0]), IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 0])]
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_segment_size() -> u64 {
    64 << 20
}
fn default_max_message_size() -> u64 {
    10 << 20
}
fn default_max_recipients() -> usize {
    100
}
fn default_max_line() -> usize {
    2048
}
fn default_max_errors() -> u32 {
    20
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_connections_per_ip() -> usize {
    100
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_data_timeout() -> Duration {
    Duration::from_secs(180)
}
fn default_auth_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_stress_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_recipient_overshoot() -> usize {
    1000
}
fn default_min_data_rate() -> u64 {
    500
}
fn default_stress_threshold() -> f64 {
    0.8
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Type errors reported in one file at most (each costs a parse).
const MAX_TYPE_PROBLEMS: usize = 64;

/// Configuration errors: every problem found, each with its key and line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl Config {
    /// The built-in configuration of `ringmx serve` without `--config`.
    pub fn embedded() -> Config {
        toml::from_str("").expect("the empty configuration is valid")
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError { problems: vec![format!("{}: {e}", path.display())] })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text` (named `origin` in messages). Every problem is listed: a
    /// key whose value has the wrong type is reported and left out (its default stands in)
    /// and the reading goes on, so later keys and [`Config::validate`] are checked too. A
    /// syntax error ends the reading: what follows it cannot be parsed.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        // `text` with the lines of the keys reported so far blanked (line numbers kept).
        let mut work = text.to_string();
        let mut blanked: Vec<String> = Vec::new();
        for _ in 0..MAX_TYPE_PROBLEMS {
            let e = match toml::from_str::<Config>(&work) {
                Ok(cfg) => {
                    if let Err(e) = cfg.validate(text, origin) {
                        problems.extend(e.problems);
                    }
                    return if problems.is_empty() { Ok(cfg) } else { Err(ConfigError { problems }) };
                }
                Err(e) => e,
            };
            let line = e.span().map(|s| work[..s.start].matches('\n').count() + 1);
            let key = line.and_then(|l| key_at_line(&work, l));
            let msg = e.message().to_string();
            // A required key left out for its bad value is now missing: said already.
            if blanked.iter().any(|k| msg == format!("missing field `{}`", k.rsplit('.').next().unwrap_or(k))) {
                break;
            }
            problems.push(match (line, &key) {
                (Some(l), Some(key)) => format!("{origin}:{l}: {key}: {msg}"),
                (Some(l), None) => format!("{origin}:{l}: {msg}"),
                (None, _) => format!("{origin}: {msg}"),
            });
            // Only a `key = value` line of a file that parses as TOML can be left out, and only
            // if the file still parses without it (a value over several lines does not).
            let (Some(l), Some(k)) = (line, key) else { break };
            blanked.push(k);
            if work.parse::<toml::Table>().is_err() {
                break;
            }
            let next = work
                .split('\n')
                .enumerate()
                .map(|(i, s)| if i + 1 == l { "" } else { s })
                .collect::<Vec<_>>()
                .join("\n");
            if next.parse::<toml::Table>().is_err() {
                break;
            }
            work = next;
        }
        Err(ConfigError { problems })
    }

    /// Checks what types alone cannot; every error names the key and, when the key is in
    /// the file, its line.
    pub fn validate(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, msg: String| {
            let leaf = key.rsplit('.').next().unwrap_or(key);
            let line = text
                .lines()
                .position(|l| l.trim_start().strip_prefix(leaf).is_some_and(|r| r.trim_start().starts_with('=')))
                .map(|i| format!(":{}", i + 1))
                .unwrap_or_default();
            problems.push(format!("{origin}{line}: {key}: {msg}"));
        };
        if self.hostname.is_empty() || self.hostname.contains(char::is_whitespace) {
            bad("hostname", format!("{:?} is not a host name", self.hostname));
        }
        if self.listeners.is_empty() {
            bad("listener", "at least one listener is needed".into());
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.bind.is_empty() {
                bad(&format!("listener[{i}].bind"), "no address to bind".into());
            }
            if l.tls == ListenerTls::Implicit && self.tls.certificate.is_none() {
                bad(&format!("listener[{i}].tls"), "implicit TLS needs [tls] certificate and private_key".into());
            }
            if let Err(e) = IpList::parse(&l.proxy_trusted) {
                bad(&format!("listener[{i}].proxy_trusted"), e.to_string());
            }
            if l.proxy_protocol && l.proxy_trusted.is_empty() {
                bad(
                    &format!("listener[{i}].proxy_protocol"),
                    "needs proxy_trusted, the load balancers' addresses".into(),
                );
            }
        }
        if self.tls.certificate.is_some() != self.tls.private_key.is_some() {
            bad("tls.certificate", "certificate and private_key go together".into());
        }
        if let Err(e) = IpList::parse(&self.log.debug_clients) {
            bad("log.debug_clients", e.to_string());
        }
        if self.log.w3c.enabled && self.log.w3c.fields.is_empty() {
            bad("log.w3c.fields", "no field to log".into());
        }
        for d in &self.local_domains {
            if crate::wire::command::parse_mailbox(&format!("postmaster@{d}")).is_none() || d.starts_with('[') {
                bad("local_domains", format!("{d:?} is not a domain name"));
            }
        }
        if self.runtime.ingress_cores == Some(0) {
            bad("runtime.ingress_cores", "must be at least 1".into());
        }
        if self.runtime.ingress_cores.is_some_and(|n| n > 64) {
            bad("runtime.ingress_cores", "at most 64".into());
        }
        if self.spool.segment_size < 64 * 1024 {
            bad("spool.segment_size", "at least 64KiB".into());
        }
        if self.spool.segment_size > 4 << 30 {
            bad("spool.segment_size", "at most 4GiB (the queue keeps offsets in 32 bits)".into());
        }
        if self.delivery.active_limit == 0 {
            bad("delivery.active_limit", "must be at least 1".into());
        }
        if let Some(p) = &self.delivery.postmaster
            && !p.rsplit_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        {
            bad("delivery.postmaster", format!("{p:?} is not an address (local@domain)"));
        }
        if self.admin.listen.is_some()
            && let Err(e) = self.admin.token()
        {
            bad("admin.token_file", e);
        }
        if let Some(u) = &self.lists.unsubscribe_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                bad("lists.unsubscribe_url", format!("{u:?} is not an http(s) URL"));
            }
            if self.metrics.listen.is_none() {
                bad(
                    "lists.unsubscribe_url",
                    "needs [metrics] listen: POST /lists/unsubscribe is served there (behind your proxy)".into(),
                );
            }
        }
        if let Some(p) = &self.delivery.dsn.sender
            && crate::directory::model::normalize_address(p).is_err()
        {
            bad("delivery.dsn.sender", format!("{p:?} is not an address (local@domain)"));
        }
        if self.limits.max_line_length < 512 {
            bad("limits.max_line_length", "RFC 5321 §4.5.3.1.4 requires at least 512".into());
        }
        if self.limits.max_recipients == 0 {
            bad("limits.max_recipients", "must be at least 1 (RFC 5321 §4.5.3.1.8 asks for 100)".into());
        }
        if self.limits.max_connections == 0 || self.limits.max_connections_per_ip == 0 {
            bad("limits.max_connections", "must be at least 1".into());
        }
        for problem in self.delivery.retry.problems() {
            bad("delivery.retry", problem);
        }
        if self.delivery.catch_all_header.is_empty()
            || !self.delivery.catch_all_header.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        {
            bad("delivery.catch_all_header", "not a header field name (RFC 5322 §3.6.8)".into());
        }
        if let Some(server) = &self.delivery.lmtp.server
            && let Err(e) = crate::delivery::lmtp::LmtpEndpoint::parse(server)
        {
            bad("delivery.lmtp.server", e);
        }
        if self.timeouts.command.is_zero()
            || self.timeouts.data.is_zero()
            || self.timeouts.auth.is_zero()
            || self.timeouts.stress.is_zero()
        {
            bad("timeouts", "time-outs must be positive (only timeouts.session may be 0, for no limit)".into());
        }
        if !(0.0..=1.0).contains(&self.limits.stress_threshold) {
            bad("limits.stress_threshold", "a fraction of max_connections, from 0 (off) to 1".into());
        }
        self.validate_policy(&mut bad);
        for (i, s) in self.dkim.sign.iter().enumerate() {
            if let Err(e) = crate::policy::dkim_sign::SignKey::load(&s.domain, &s.selector, &s.key) {
                bad(&format!("dkim.sign[{i}].key"), e);
            }
        }
        if self.dkim.arc_seal_forwards && !(self.dkim.verify || self.dmarc.enabled) {
            bad(
                "dkim.arc_seal_forwards",
                "needs [dkim] verify or [dmarc] enabled: a seal says what the verification found".into(),
            );
        }
        if self.dkim.arc_seal_forwards && self.dkim.sign.is_empty() {
            bad("dkim.arc_seal_forwards", "needs an RSA [[dkim.sign]] key of each forwarding domain".into());
        }
        if self.dkim.threads > 64 {
            bad("dkim.threads", "at most 64".into());
        }
        if let Err(e) = IpList::parse(&self.greylist.exempt) {
            bad("greylist.exempt", e.to_string());
        }
        if self.greylist.enabled && self.greylist.retry_window <= self.greylist.delay {
            bad("greylist.retry_window", "must be longer than greylist.delay, or no retry ever passes".into());
        }
        if self.greylist.max_entries == 0 {
            bad("greylist.max_entries", "must be at least 1".into());
        }
        if self.scripts.budget.is_some_and(|b| b.is_zero() || b > std::time::Duration::from_secs(10)) {
            bad("scripts.budget", "from 1ms to 10s: a shard waits for its hooks".into());
        }
        if self.scripts.memory_limit.is_some_and(|m| m < 1 << 20) {
            bad("scripts.memory_limit", "at least 1MiB".into());
        }
        if let Some(s) = self.scripts.settings()
            && let Err(e) = crate::policy::script::Scripts::load(s)
        {
            bad("scripts.path", e);
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError { problems }) }
    }

    fn validate_policy(&self, bad: &mut dyn FnMut(&str, String)) {
        let p = &self.policy;
        for (key, list) in [
            ("policy.access_list", &p.access_list),
            ("policy.whitelist", &p.whitelist),
            ("relay.privileged", &self.relay.privileged),
        ] {
            if let Err(e) = IpList::parse(list) {
                bad(key, e.to_string());
            }
        }
        for c in &p.disabled_commands {
            if !DISABLEABLE.contains(&c.to_ascii_uppercase().as_str()) {
                bad(
                    "policy.disabled_commands",
                    format!("{c:?} cannot be disabled (any of {})", DISABLEABLE.join(", ")),
                );
            }
        }
        if p.ehlo_block.iter().any(|s| s.trim().is_empty()) {
            bad("policy.ehlo_block", "an empty string would block every client".into());
        }
        if p.ptr_header.is_empty() || !p.ptr_header.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            bad("policy.ptr_header", "not a header field name (RFC 5322 §3.6.8)".into());
        }
        for d in &p.dnsbl {
            if crate::wire::command::parse_mailbox(&format!("x@{}", d.zone.trim_end_matches('.'))).is_none() {
                bad("policy.dnsbl.zone", format!("{:?} is not a domain name", d.zone));
            }
        }
        let (dns, key) = if p.dns.is_some() { (self.policy_dns(), "policy.dns") } else { (&self.dns, "dns") };
        if dns.servers.is_empty()
            && (p.dnsbl.iter().any(|d| d.enabled && d.server.is_none())
                || p.ptr_check != PtrCheck::Never
                || p.sender_domain_resolves)
        {
            bad(&format!("{key}.servers"), "DNS checks are on but no server is configured".into());
        }
        for (r, key) in [(&self.dns, "dns"), (dns, key)] {
            if r.timeout.is_zero() {
                bad(&format!("{key}.timeout"), "must be positive".into());
            }
            if r.min_ttl > r.max_ttl {
                bad(&format!("{key}.min_ttl"), "greater than max_ttl".into());
            }
        }
        if self.delivery.dns.timeout.is_some_and(|t| t.is_zero()) {
            bad("delivery.dns.timeout", "must be positive".into());
        }
        if self.auth.username.is_some() != self.auth.password.is_some() {
            bad("auth.username", "username and password go together".into());
        }
        if self.auth.verifier_threads == 0 || self.auth.verifier_threads > 64 {
            bad("auth.verifier_threads", "from 1 to 64".into());
        }
        if self.relay.pop_before_smtp_dir.is_some() && self.relay.pop_before_smtp_window.is_zero() {
            bad("relay.pop_before_smtp_window", "must be positive".into());
        }
    }

    /// The ingress shard count for a machine with `cpus` cores.
    pub fn ingress_cores(&self, cpus: usize) -> usize {
        self.runtime.ingress_cores.unwrap_or_else(|| cpus.saturating_sub(self.runtime.delivery_cores).max(1))
    }

    /// The resolver settings of the policy checks: `[policy.dns]` if given, else `[dns]`.
    pub fn policy_dns(&self) -> &ResolverConfig {
        self.policy.dns.as_ref().unwrap_or(&self.dns)
    }

    /// The resolver settings of MX lookups: `[dns]`, with what `[delivery.dns]` changes.
    pub fn delivery_dns(&self) -> crate::delivery::mx::DnsConfig {
        let d = &self.delivery.dns;
        crate::delivery::mx::DnsConfig {
            servers: d.servers.clone().unwrap_or_else(|| self.dns.servers.clone()),
            timeout: d.timeout.unwrap_or(self.dns.timeout),
            remote_port: d.remote_port,
            min_ttl: self.dns.min_ttl,
            max_ttl: self.dns.max_ttl,
            negative_ttl: self.dns.negative_ttl,
        }
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }

    /// The log writer's settings. It always runs: the debug log can be switched on at any
    /// time.
    pub fn log_settings(&self) -> crate::obs::LogSettings {
        let dir = self.log.dir.clone().unwrap_or_else(|| self.data_dir.join("log"));
        let w3c = self.log.w3c.enabled.then(|| crate::obs::w3c::W3cSettings {
            dir: dir.join("w3c"),
            fields: self.log.w3c.fields.clone(),
            rollover: self.log.w3c.rollover,
            max_size: self.log.w3c.max_size.max(1),
        });
        crate::obs::LogSettings {
            dir,
            activity: self.log.activity,
            format: self.log.format,
            capacity: self.log.queue,
            w3c,
        }
    }

    pub fn maildir_root(&self) -> PathBuf {
        self.delivery.maildir_root.clone().unwrap_or_else(|| self.data_dir.join("mailboxes"))
    }

    /// Every address to listen on, with its listener.
    pub fn bind_addresses(&self) -> Vec<(SocketAddr, ListenerConfig)> {
        self.listeners
            .iter()
            .flat_map(|l| l.bind.iter().map(move |ip| (SocketAddr::new(*ip, l.port), l.clone())))
            .collect()
    }

    /// The session settings of one listener; `policy` is the server's one policy (with its
    /// services: bans, verifier, DNS), built by the runtime ([`crate::rt::Services`]).
    pub fn session_config(&self, listener: &ListenerConfig, tls_available: bool, policy: Arc<Policy>) -> SessionConfig {
        SessionConfig {
            hostname: self.hostname.clone(),
            banner: self.banner.clone(),
            max_message_size: self.limits.max_message_size,
            enforce_size: self.limits.enforce_message_size,
            max_recipients: self.limits.max_recipients,
            max_line: self.limits.max_line_length,
            max_errors: self.limits.max_errors,
            bare_line_policy: self.limits.bare_newlines,
            command_timeout: self.timeouts.command,
            data_timeout: self.timeouts.data,
            min_data_rate: self.limits.min_data_rate,
            auth_timeout: self.timeouts.auth,
            max_session_time: self.timeouts.session,
            stress_timeout: self.timeouts.stress,
            stress_threshold: self.limits.stress_threshold,
            recipient_overshoot: self.limits.recipient_overshoot,
            starttls: tls_available && listener.tls == ListenerTls::Starttls,
            local_domains: self.local_domains.iter().map(|d| d.to_ascii_lowercase()).collect::<HashSet<_>>(),
            catch_alls: self.policy.catch_alls,
            usage: None,
            conn_limits: None,
            hide_client_ip: self.policy.hide_client_ip,
            policy,
            auth_mode: listener.auth,
            require_auth: listener.require_auth,
            proxy_from: listener
                .proxy_protocol
                .then(|| Arc::new(IpList::parse(&listener.proxy_trusted).unwrap_or_default())),
            own_addresses: listener.bind.iter().copied().filter(|a| !a.is_unspecified()).collect(),
            activity: self.log.activity,
            w3c: self.log.w3c.enabled,
            debug: None,
            pregreet: listener.pregreet,
        }
    }
}

/// The dotted key set on line `line` (1-based) of a TOML text, with the table it is in
/// (`limits.max_recipients`), for error messages whose parser names only a line.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    for (i, l) in text.lines().enumerate().take(line) {
        let l = l.trim();
        if let Some(h) = l.strip_prefix('[') {
            table = h.trim_start_matches('[').split(']').next().unwrap_or("").trim().to_string();
        }
        if i + 1 == line {
            let (key, _) = l.split_once('=')?;
            let key = key.trim().trim_matches('"');
            if key.is_empty() || key.contains(char::is_whitespace) {
                return None;
            }
            return Some(if table.is_empty() { key.to_string() } else { format!("{table}.{key}") });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults() {
        let c = Config::embedded();
        assert_eq!(c.listeners, default_listeners());
        assert_eq!(c.local_domains, ["example.test"]);
        assert_eq!(c.limits.max_recipients, 100);
        assert_eq!(c.spool.segment_size, 64 << 20);
        assert!(c.spool.fsync);
        assert_eq!(c.delivery.catch_all_header, "X-Original-Recipients");
        assert_eq!(c.delivery.local_retry, Duration::from_secs(300));
        assert!(c.policy.catch_alls);
        assert_eq!(c.maildir_root(), PathBuf::from("./var/mailboxes"));
        assert_eq!(c.runtime.io, IoMode::Auto);
        assert_eq!(c.ingress_cores(2), 1);
        assert_eq!(c.ingress_cores(8), 7);
    }

    /// Every problem of a file is listed: values of the wrong type and unknown keys in
    /// several sections, then the checks of values; a syntax error ends the list.
    #[test]
    fn every_problem_is_listed() {
        let text = "hostname = \"bad name\"\n[limits]\nmax_recipients = \"many\"\nmax_size = 5\n\
                    [spool]\nfsync = \"yes\"\n[delivery]\nactive_limit = 0\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        let p = &e.problems;
        assert_eq!(p.len(), 5, "{e}");
        assert!(p[0].starts_with("c.toml:3: limits.max_recipients: "), "{e}");
        assert!(p[1].starts_with("c.toml:4: limits.max_size: unknown field"), "{e}");
        assert!(p[2].starts_with("c.toml:6: spool.fsync: "), "{e}");
        assert!(p.iter().any(|l| l.starts_with("c.toml:1: hostname: ")), "{e}");
        assert!(p.iter().any(|l| l.starts_with("c.toml:8: delivery.active_limit: ")), "{e}");
        // A syntax error: what follows cannot be read, so it is the last problem.
        let e =
            Config::parse("[limits]\nmax_recipients = \"many\"\nport = = 1\n[delivery]\nactive_limit = 0\n", "c.toml")
                .unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert!(e.problems[0].starts_with("c.toml:3"), "{e}");
        // A required key with a bad value is reported once, not again as missing.
        let e = Config::parse("[[listener]]\nport = 99999\n", "c.toml").unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert!(e.problems[0].starts_with("c.toml:2: listener.port: "), "{e}");
        // A wrong value over several lines is reported once, without follow-on errors.
        let e = Config::parse("local_domains = [\n  1,\n  2,\n]\n", "c.toml").unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
    }

    /// The queue's keys: a bad postmaster fallback and an empty active window are named.
    #[test]
    fn queue_keys_are_checked() {
        let c = Config::parse("[delivery]\npostmaster = \"hostmaster@isp.example\"\nactive_limit = 500\n", "q.toml")
            .unwrap();
        assert_eq!((c.delivery.postmaster.as_deref(), c.delivery.active_limit), (Some("hostmaster@isp.example"), 500));
        let e = Config::parse("[delivery]\npostmaster = \"nobody\"\nactive_limit = 0\n", "q.toml").unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
        assert!(e.problems.iter().any(|p| p.starts_with("q.toml:2: delivery.postmaster:")), "{e}");
        assert!(e.problems.iter().any(|p| p.starts_with("q.toml:3: delivery.active_limit:")), "{e}");
        assert_eq!(Config::embedded().delivery.postmaster, None);
    }

    #[test]
    fn full_file() {
        let c = Config::parse(
            r#"
hostname = "mx1.example.net"
local_domains = ["example.net", "Example.ORG"]
[[listener]]
port = 25
[[listener]]
port = 465
bind = ["127.0.0.1"]
tls = "implicit"
[tls]
certificate = "/etc/ringmx/cert.pem"
private_key = "/etc/ringmx/key.pem"
[runtime]
io = "epoll"
ingress_cores = 3
[spool]
segment_size = "16MiB"
fsync = false
[limits]
max_message_size = "25M"
bare_newlines = "allow"
[timeouts]
command = "5m"
data = 120
"#,
            "test.toml",
        )
        .unwrap();
        assert_eq!(c.bind_addresses().len(), 3);
        assert_eq!(c.spool.segment_size, 16 << 20);
        assert_eq!(c.limits.max_message_size, 25 << 20);
        assert_eq!(c.timeouts.command, Duration::from_secs(300));
        assert_eq!(c.timeouts.data, Duration::from_secs(120));
        let s = c.session_config(&c.listeners[0], true, Arc::default());
        assert!(s.starttls);
        assert!(s.local_domains.contains("example.org"));
        assert!(!c.session_config(&c.listeners[1], true, Arc::default()).starttls);
    }

    #[test]
    fn every_error_is_reported_with_key_and_line() {
        let e =
            Config::parse("hostname = \"bad name\"\n[limits]\nmax_line_length = 100\nmax_recipients = 0\n", "f.toml")
                .unwrap_err();
        assert_eq!(e.problems.len(), 3, "{e}");
        assert!(e.problems[0].starts_with("f.toml:1: hostname:"), "{e}");
        assert!(e.problems[1].starts_with("f.toml:3: limits.max_line_length:"), "{e}");
        assert!(e.problems[2].starts_with("f.toml:4: limits.max_recipients:"), "{e}");
        let e = Config::parse("[limits]\nmax_lines = 3\n", "f.toml").unwrap_err();
        assert!(e.problems[0].starts_with("f.toml:2: limits.max_lines: unknown field `max_lines`"), "{e}");
        // A type error names its key too (the parser gives only the place).
        let e = Config::parse("hostname = \"mx\"\n[[listener]]\nport = 99999\n", "f.toml").unwrap_err();
        assert!(e.problems[0].starts_with("f.toml:3: listener.port: "), "{e}");
        assert!(e.problems[0].contains("99999"), "{e}");
        let e = Config::parse("[spool]\nsegment_size = \"lots\"\n", "f.toml").unwrap_err();
        assert!(e.problems[0].contains("bad size"), "{e}");
        // Sealing forwards needs a verification to say what was found, and a key.
        let e = Config::parse("[dkim]\narc_seal_forwards = true\nthreads = 100\n", "f.toml").unwrap_err();
        assert_eq!(e.problems.len(), 3, "{e}");
        assert!(e.problems.iter().all(|p| p.starts_with("f.toml:2: dkim.arc_seal_forwards:")
            || p.starts_with("f.toml:3: dkim.threads:")), "{e}");
    }

    #[test]
    fn listener_defaults_by_port_and_policy_keys() {
        let c = Config::parse(
            "[tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n[[listener]]\nport = 25\n[[listener]]\nport = 587\n\
             [[listener]]\nport = 465\n[[listener]]\nport = 2525\nauth = \"always\"\nrequire_auth = false\n\
             proxy_protocol = true\nproxy_trusted = [\"10.0.0.0/8\"]\n\
             [policy]\naccess_list = [\"192.0.2.*\"]\nptr_check = \"tag\"\n[[policy.dnsbl]]\nzone = \"bl.example\"\n\
             [relay]\nprivileged = [\"10.*\"]\n[auth]\nusername = \"relay\"\npassword = \"pw\"\n",
            "t.toml",
        )
        .unwrap();
        let l = &c.listeners;
        assert_eq!((l[0].tls, l[0].auth, l[0].require_auth), (ListenerTls::Starttls, AuthMode::TlsOnly, false));
        assert_eq!((l[1].tls, l[1].require_auth), (ListenerTls::Starttls, true));
        assert_eq!((l[2].tls, l[2].require_auth), (ListenerTls::Implicit, true));
        assert_eq!((l[3].auth, l[3].require_auth, l[3].proxy_protocol), (AuthMode::Always, false, true));
        let p = crate::rt::Services::start(&c).policy;
        assert!(
            p.acl.contains("192.0.2.5".parse().unwrap()) && p.relay.privileged.contains("10.1.1.1".parse().unwrap())
        );
        assert_eq!(p.dnsbl[0].zone, "bl.example");
        assert_eq!(p.auth_fixed, Some(("relay".into(), "pw".into())));
        assert_eq!(p.inbound_auth, InboundAuth::PerPostoffice);
        assert!(p.is_disabled("VRFY") && !p.relay.local_senders && p.relay.authenticated);
        let e = Config::parse(
            "[[listener]]\nport = 25\nproxy_protocol = true\n[policy]\naccess_list = [\"300.1.1.1\"]\n\
             disabled_commands = [\"MAIL\"]\n[auth]\nusername = \"u\"\n",
            "f.toml",
        )
        .unwrap_err();
        assert_eq!(e.problems.len(), 4, "{e}");
        assert!(e.problems[0].starts_with("f.toml:3: listener[0].proxy_protocol:"), "{e}");
        assert!(e.problems[1].starts_with("f.toml:5: policy.access_list:"), "{e}");
        assert!(e.problems[2].starts_with("f.toml:6: policy.disabled_commands:"), "{e}");
        assert!(e.problems[3].starts_with("f.toml:8: auth.username:"), "{e}");
    }

    /// One `[dns]` serves the policy checks and MX lookups; `[policy.dns]` and
    /// `[delivery.dns]`, the older per-part sections, still override it where given.
    #[test]
    fn one_dns_section_with_per_part_overrides() {
        let c = Config::parse("[dns]\nservers = [\"192.0.2.53:53\"]\ntimeout = \"3s\"\nmax_ttl = \"10m\"\n", "t.toml")
            .unwrap();
        let ns: SocketAddr = "192.0.2.53:53".parse().unwrap();
        assert_eq!((c.policy_dns().servers.clone(), c.policy_dns().timeout), (vec![ns], Duration::from_secs(3)));
        let d = c.delivery_dns();
        assert_eq!(
            (d.servers, d.timeout, d.max_ttl, d.remote_port),
            (vec![ns], Duration::from_secs(3), Duration::from_secs(600), 25)
        );
        let c = Config::parse(
            "[dns]\nservers = [\"192.0.2.53:53\"]\n[policy.dns]\nservers = [\"198.51.100.1:5353\"]\n\
             [delivery.dns]\ntimeout = \"1s\"\nremote_port = 2525\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.policy_dns().servers, vec!["198.51.100.1:5353".parse::<SocketAddr>().unwrap()]);
        let d = c.delivery_dns();
        assert_eq!((d.servers, d.timeout, d.remote_port), (vec![ns], Duration::from_secs(1), 2525));
        let e = Config::parse("[dns]\ntimeout = 0\n", "f.toml").unwrap_err();
        assert!(e.problems[0].contains("dns.timeout"), "{e}");
    }

    /// The hostile-client settings: their defaults reach the session, bad values are named.
    #[test]
    fn hostile_client_keys() {
        let c = Config::parse("", "t.toml").unwrap();
        let l = &c.listeners[0];
        let s = c.session_config(l, false, Arc::default());
        assert_eq!((s.recipient_overshoot, s.min_data_rate, s.stress_threshold), (1000, 500, 0.8));
        assert_eq!(
            (s.auth_timeout, s.max_session_time, s.stress_timeout),
            (Duration::from_secs(60), Duration::from_secs(3600), Duration::from_secs(10))
        );
        let c = Config::parse(
            "[limits]\nrecipient_overshoot = 0\nmin_data_rate = 0\n[timeouts]\nsession = 0\nauth = \"30s\"\n",
            "t.toml",
        )
        .unwrap();
        let s = c.session_config(&c.listeners[0], false, Arc::default());
        assert_eq!((s.recipient_overshoot, s.min_data_rate, s.max_session_time), (0, 0, Duration::ZERO));
        assert_eq!(s.auth_timeout, Duration::from_secs(30));
        let e = Config::parse("[limits]\nstress_threshold = 1.5\n[timeouts]\nstress = 0\n", "f.toml").unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
        assert!(e.problems.iter().any(|p| p.contains("limits.stress_threshold")), "{e}");
        assert!(e.problems.iter().any(|p| p.contains("timeouts")), "{e}");
    }
}
