//! SPF (RFC 7208) at MAIL FROM (issue 14): the client's address checked against the
//! sender's domain (the HELO name for the null sender, §2.3), off the shards.
//!
//! `check_host()` is [`super::spf_eval`]'s, with every limit of §4.6.4 (ten DNS-querying
//! terms, two void lookups, ten names per `mx` and `ptr`), over Stalwart's `mail-auth` for
//! parsing records and expanding macros; its resolver asks the `[dns]` name servers and
//! keeps hickory's own cache. It runs on a thread of its own with a tokio
//! runtime, many checks at once; the session waits for the answer as it waits for a DNS
//! answer ([`crate::session`]). The result's action comes from `[spf]`: a refusal (fail:
//! 550 5.7.23, RFC 7372 §3.2), a temporary refusal (temperror: 451 4.7.24), or a tag, the
//! `Authentication-Results` field (RFC 8601) put on top of the message.

use crate::wire::Reply;
use mail_auth::MessageAuthenticator;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// What a result does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpfAction {
    /// 550 5.7.23 (fail) or 550 5.7.24 (permerror).
    Reject,
    /// 451 4.7.24: the client tries again.
    Tempfail,
    /// Accepted, the result in `Authentication-Results`.
    Tag,
}

/// `[spf]` as the policy uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub fail: SpfAction,
    pub softfail: SpfAction,
    pub temperror: SpfAction,
    pub permerror: SpfAction,
    pub timeout: Duration,
    /// Void lookups allowed (RFC 7208 §4.6.4).
    pub max_void_lookups: u32,
    pub servers: Vec<SocketAddr>,
}

/// One check: the client, its HELO name and the sender (empty: `<>`).
#[derive(Debug, Clone)]
pub struct Request {
    pub ip: IpAddr,
    pub helo: String,
    pub sender: String,
    /// Our host name (the `%{r}` macro, and the authserv-id).
    pub hostname: String,
}

/// The outcome of a check, as the session acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub result: Result,
    /// The domain checked (the sender's, or the HELO name).
    pub domain: String,
    /// The `exp=` explanation of a fail, when the domain gave one.
    pub explanation: Option<String>,
}

/// RFC 7208 §2.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Result {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    TempError,
    PermError,
}

impl Result {
    /// The name RFC 8601 §2.7.2 and RFC 7208 §2.6 give it.
    pub fn name(self) -> &'static str {
        match self {
            Result::Pass => "pass",
            Result::Fail => "fail",
            Result::SoftFail => "softfail",
            Result::Neutral => "neutral",
            Result::None => "none",
            Result::TempError => "temperror",
            Result::PermError => "permerror",
        }
    }
}

impl Settings {
    /// The refusal `o` calls for, if any.
    pub fn refusal(&self, o: &Outcome) -> Option<Reply> {
        let action = match o.result {
            Result::Fail => self.fail,
            Result::SoftFail => self.softfail,
            Result::TempError => self.temperror,
            Result::PermError => self.permerror,
            Result::Pass | Result::Neutral | Result::None => SpfAction::Tag,
        };
        let d = &o.domain;
        match (action, o.result) {
            (SpfAction::Tag, _) => None,
            (SpfAction::Tempfail, _) => {
                Some(Reply::new(451, "4.7.24", format!("Error: SPF check of {d} failed temporarily, try again later")))
            }
            (SpfAction::Reject, Result::PermError) => {
                Some(Reply::new(550, "5.7.24", format!("Error: the SPF record of {d} is broken")))
            }
            (SpfAction::Reject, r) => {
                // The domain's own explanation (`exp=`, RFC 7208 §6.2), on one line.
                let why = o
                    .explanation
                    .as_deref()
                    .map(|e| e.chars().filter(|c| !c.is_control()).take(300).collect::<String>())
                    .unwrap_or_else(|| format!("SPF {} for {d}", r.name()));
                Some(Reply::new(550, "5.7.23", format!("Error: {why}")))
            }
        }
    }
}

/// The SPF method of an `Authentication-Results` field (RFC 8601 §2.7.2) for `o`.
pub fn method(o: &Outcome, sender: &str, helo: &str) -> String {
    let prop = if sender.is_empty() { format!("smtp.helo={helo}") } else { format!("smtp.mailfrom={sender}") };
    format!("spf={} {prop}", o.result.name())
}

/// The `Authentication-Results` field (RFC 8601) with our host name as authserv-id and
/// `methods`, one per line.
pub fn header(hostname: &str, methods: &[String]) -> String {
    format!("Authentication-Results: {hostname};\r\n\t{}", methods.join(";\r\n\t"))
}

type Done = Box<dyn FnOnce(Outcome) + Send>;

/// The SPF thread: checks are handed to it and answered through their callback.
pub struct SpfService {
    pub settings: Settings,
    tx: tokio::sync::mpsc::Sender<(Request, Done)>,
}

impl std::fmt::Debug for SpfService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpfService").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// Checks waiting for the thread at most; past it, temperror at once.
const QUEUE: usize = 4096;

impl SpfService {
    pub fn start(settings: Settings) -> std::io::Result<SpfService> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Request, Done)>(QUEUE);
        let servers = settings.servers.clone();
        let timeout = settings.timeout;
        let max_void = settings.max_void_lookups;
        std::thread::Builder::new().name("spf".into()).spawn(move || {
            let Some((rt, auth)) = runtime_and_authenticator("spf", &servers, timeout) else { return };
            rt.block_on(async move {
                while let Some((req, done)) = rx.recv().await {
                    let auth = auth.clone();
                    tokio::spawn(async move {
                        let domain = spf_domain(&req);
                        let checked = tokio::time::timeout(timeout, check(&auth, &req, max_void)).await;
                        let o = checked.unwrap_or(Outcome { result: Result::TempError, domain, explanation: None });
                        done(o);
                    });
                }
            });
        })?;
        Ok(SpfService { settings, tx })
    }

    /// Hands a check to the thread; `done` is called there (at once with temperror when
    /// the thread is gone or too far behind).
    pub fn submit(&self, req: Request, done: Done) {
        let domain = spf_domain(&req);
        if let Err(e) = self.tx.try_send((req, done)) {
            let (_, done) = match e {
                tokio::sync::mpsc::error::TrySendError::Full(v) | tokio::sync::mpsc::error::TrySendError::Closed(v) => {
                    v
                }
            };
            done(Outcome { result: Result::TempError, domain, explanation: None });
        }
    }
}

/// The domain checked: the sender's, or the HELO name for `<>`.
fn spf_domain(req: &Request) -> String {
    match req.sender.rsplit_once('@') {
        Some((_, d)) if !req.sender.is_empty() => d.to_string(),
        _ => req.helo.clone(),
    }
}

/// The runtime and resolver of a verification thread (`what` names it in the log).
pub(crate) fn runtime_and_authenticator(
    what: &str,
    servers: &[SocketAddr],
    timeout: Duration,
) -> Option<(tokio::runtime::Runtime, std::sync::Arc<MessageAuthenticator>)> {
    runtime_with_workers(what, servers, timeout, 0)
}

/// The same with `workers` threads of its own beside the calling one (0: none, the checks
/// run on the thread that drives the runtime).
pub(crate) fn runtime_with_workers(
    what: &str,
    servers: &[SocketAddr],
    timeout: Duration,
    workers: usize,
) -> Option<(tokio::runtime::Runtime, std::sync::Arc<MessageAuthenticator>)> {
    let mut b = match workers {
        0 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n).thread_name(what.to_string());
            b
        }
    };
    let rt = b.enable_all().build().map_err(|e| log::error!("{what}: cannot start its runtime: {e}")).ok()?;
    let auth =
        authenticator(servers, timeout).map_err(|e| log::error!("{what}: cannot build its resolver: {e}")).ok()?;
    Some((rt, std::sync::Arc::new(auth)))
}

fn authenticator(servers: &[SocketAddr], timeout: Duration) -> std::result::Result<MessageAuthenticator, String> {
    use hickory_resolver::config::{ResolveHosts, ResolverOpts};
    let mut o = ResolverOpts::default();
    o.use_hosts_file = ResolveHosts::Never;
    o.timeout = timeout.min(Duration::from_secs(5));
    o.attempts = 2;
    MessageAuthenticator::new(crate::dns::service::name_servers(servers), o).map_err(|e| e.to_string())
}

async fn check(auth: &MessageAuthenticator, req: &Request, max_void: u32) -> Outcome {
    let domain = spf_domain(req);
    // RFC 7208 §2.3: the null sender's identity is postmaster@HELO.
    let sender = if req.sender.is_empty() { format!("postmaster@{}", req.helo) } else { req.sender.clone() };
    let mut c = super::spf_eval::Check::new(auth.resolver(), req.ip, sender, &req.helo, &req.hostname, max_void);
    let (result, explanation) = c.run(&domain).await;
    Outcome { result, domain, explanation }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            fail: SpfAction::Reject,
            softfail: SpfAction::Tag,
            temperror: SpfAction::Tempfail,
            permerror: SpfAction::Tag,
            timeout: Duration::from_secs(5),
            max_void_lookups: 2,
            servers: Vec::new(),
        }
    }

    fn o(result: Result, explanation: Option<&str>) -> Outcome {
        Outcome { result, domain: "example.org".into(), explanation: explanation.map(str::to_string) }
    }

    #[test]
    fn actions_and_replies() {
        let s = settings();
        assert_eq!(s.refusal(&o(Result::Pass, None)), None);
        assert_eq!(s.refusal(&o(Result::SoftFail, None)), None);
        assert_eq!(
            s.refusal(&o(Result::Fail, None)),
            Some(Reply::new(550, "5.7.23", "Error: SPF fail for example.org"))
        );
        assert_eq!(
            s.refusal(&o(Result::Fail, Some("not\r\nauthorized"))),
            Some(Reply::new(550, "5.7.23", "Error: notauthorized"))
        );
        assert_eq!(s.refusal(&o(Result::TempError, None)).map(|r| (r.code, r.status)), Some((451, "4.7.24")));
        assert_eq!(s.refusal(&o(Result::PermError, None)), None);
        let strict = Settings { permerror: SpfAction::Reject, softfail: SpfAction::Reject, ..settings() };
        assert_eq!(strict.refusal(&o(Result::PermError, None)).map(|r| (r.code, r.status)), Some((550, "5.7.24")));
        assert_eq!(strict.refusal(&o(Result::SoftFail, None)).map(|r| (r.code, r.status)), Some((550, "5.7.23")));
        let spf = method(&o(Result::Pass, None), "a@example.org", "h.example.org");
        assert_eq!(
            header("mx.example.test", &[spf, "dkim=none".into()]),
            "Authentication-Results: mx.example.test;\r\n\tspf=pass smtp.mailfrom=a@example.org;\r\n\tdkim=none"
        );
        assert_eq!(method(&o(Result::None, None), "", "h.example.org"), "spf=none smtp.helo=h.example.org");
    }
}
