//! Policy delegation: Postfix's SMTPD access policy protocol (`[[policy_service]]`), so that
//! the policy servers operators already run (postgrey, policyd-spf, postfwd) work
//! unchanged.
//!
//! # The protocol
//!
//! The client sends `name=value` lines ending with an empty line (`request=
//! smtpd_access_policy`, `protocol_state=RCPT`, `sender=…`, `recipient=…`,
//! `client_address=…`, …); the server answers `action=…` and an empty line, on a connection
//! that stays open for further requests. The action is an access(5) table's right-hand
//! side; [`Verdict::parse`] reads it:
//!
//! - `OK`, `DUNNO`, `DEFER_IF_REJECT`, `WARN text`, `INFO text`: go on (to the next service,
//!   then our own answer);
//! - `REJECT [text]`: 554 5.7.1; `DEFER [text]` and `DEFER_IF_PERMIT text`: 450 4.7.1 (we
//!   would otherwise permit: every check of ours passed before the service is asked);
//!   `4NN [x.y.z] text` and `5NN [x.y.z] text`: that reply;
//! - `PREPEND header: value`: go on, and the header goes on top of the message;
//! - what we do not do (`HOLD`, `DISCARD`, `FILTER`, `REDIRECT`, `BCC`) or cannot read: the
//!   service's `default_action`, logged.
//!
//! # Off the shards
//!
//! Each service has its own worker threads, each with its own connection (reopened when it
//! fails), and a deadline per request; a session waits for the verdict as it waits for a
//! DNS answer. A service that cannot be reached or does not answer in time gives its
//! `default_action`: `tempfail` (451 4.3.5, as Postfix) or `accept`.
//!
//! # Cache
//!
//! As Postfix does, answers are cached: an identical request (every attribute but the
//! connection-specific `instance`) within `cache_ttl` gets the same answer without asking.
//! Temporary answers (DEFER…, 4NN) are not cached, so a greylisted client's retry is asked
//! again.

use crate::wire::Reply;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read as _, Write};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Where a service is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// After each RCPT our own checks accepted (`protocol_state=RCPT`).
    Rcpt,
    /// At the end of the message content (`protocol_state=END-OF-MESSAGE`).
    Data,
}

/// What a service's (or a milter's) failure means (`default_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    /// A temporary failure: a policy service's 451 4.3.5 Server configuration problem
    /// (Postfix's default), a milter's 451 4.7.1.
    #[default]
    Tempfail,
    /// Go on as if the service had said DUNNO.
    Accept,
}

/// One request: the attributes Postfix sends, in its order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub stage: Option<Stage>,
    pub helo_name: String,
    pub queue_id: String,
    pub sender: String,
    pub recipient: String,
    pub recipient_count: usize,
    pub client_address: String,
    pub client_name: String,
    pub reverse_client_name: String,
    /// The same for every request of one transaction (Postfix: a counter per message).
    pub instance: String,
    pub sasl_method: String,
    pub sasl_username: String,
    pub size: u64,
    pub encryption_protocol: String,
    pub encryption_cipher: String,
    pub esmtp: bool,
    pub server_address: String,
    pub server_port: String,
}

impl Request {
    /// The request as sent, the empty line included.
    pub fn encode(&self) -> String {
        let state = match self.stage {
            Some(Stage::Data) => "END-OF-MESSAGE",
            _ => "RCPT",
        };
        // Values are single lines: a name with a newline would end the request early.
        let clean = |s: &str| s.replace(['\r', '\n'], " ");
        let mut o = String::with_capacity(512);
        let mut kv = |k: &str, v: &str| {
            o.push_str(k);
            o.push('=');
            o.push_str(&clean(v));
            o.push('\n');
        };
        kv("request", "smtpd_access_policy");
        kv("protocol_state", state);
        kv("protocol_name", if self.esmtp { "ESMTP" } else { "SMTP" });
        kv("helo_name", &self.helo_name);
        kv("queue_id", &self.queue_id);
        kv("sender", &self.sender);
        kv("recipient", &self.recipient);
        kv("recipient_count", &self.recipient_count.to_string());
        kv("client_address", &self.client_address);
        kv("client_name", &self.client_name);
        kv("reverse_client_name", &self.reverse_client_name);
        kv("instance", &self.instance);
        kv("sasl_method", &self.sasl_method);
        kv("sasl_username", &self.sasl_username);
        kv("sasl_sender", "");
        kv("size", &self.size.to_string());
        kv("ccert_subject", "");
        kv("ccert_issuer", "");
        kv("ccert_fingerprint", "");
        kv("encryption_protocol", &self.encryption_protocol);
        kv("encryption_cipher", &self.encryption_cipher);
        kv("encryption_keysize", "");
        kv("etrn_domain", "");
        kv("stress", "");
        kv("server_address", &self.server_address);
        kv("server_port", &self.server_port);
        o.push('\n');
        o
    }

    /// The request without its `instance` (the cache's key).
    fn cache_text(&self) -> String {
        Request { instance: String::new(), ..self.clone() }.encode()
    }
}

/// A service's answer, as the session acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on (OK, DUNNO, WARN, …); `prepend` is a header for the message.
    Continue { prepend: Option<String> },
    /// Refuse the recipient (or the message) with this reply.
    Refuse(Reply),
}

/// Postfix's reply when a policy service fails (`default_action = tempfail`).
pub fn service_failure() -> Reply {
    Reply::new(451, "4.3.5", "Server configuration problem")
}

/// RFC 3463 `class.subject.detail` of `class` (the reply code's first digit).
fn is_status(s: &str, class: char) -> bool {
    let mut parts = s.split('.');
    parts.next() == Some(&class.to_string())
        && parts.next().is_some_and(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        && parts.next().is_some_and(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        && parts.next().is_none()
}

/// Statuses a reply may carry as a `&'static str` (the reply type's); others become the
/// class's default.
const STATUSES: [&str; 14] = [
    "4.7.1", "4.7.0", "4.2.0", "4.3.0", "4.3.5", "4.4.3", "4.2.2", "5.7.1", "5.7.0", "5.1.1", "5.1.0", "5.2.1",
    "5.2.2", "5.7.23",
];

fn reply(code: u16, rest: &str, default_text: &str) -> Reply {
    let class = if code >= 500 { '5' } else { '4' };
    let (status, text) = match rest.split_once(' ') {
        Some((s, t)) if is_status(s, class) => (s, t.trim()),
        None if is_status(rest, class) => (rest, ""),
        _ => ("", rest.trim()),
    };
    let status =
        STATUSES.iter().find(|s| **s == status).copied().unwrap_or(if class == '5' { "5.7.1" } else { "4.7.1" });
    let text = if text.is_empty() { default_text.to_string() } else { text.to_string() };
    Reply::new(code, status, text)
}

impl Verdict {
    /// The verdict of an `action=` value; `None` when it is not one we can act on.
    pub fn parse(action: &str) -> Option<Verdict> {
        let action = action.trim();
        let (word, rest) = action.split_once(char::is_whitespace).map_or((action, ""), |(w, r)| (w, r.trim()));
        let upper = word.to_ascii_uppercase();
        let go_on = Some(Verdict::Continue { prepend: None });
        match upper.as_str() {
            "OK" | "DUNNO" | "DEFER_IF_REJECT" | "WARN" | "INFO" => go_on,
            "REJECT" => Some(Verdict::Refuse(reply(554, rest, "Access denied"))),
            "DEFER" | "DEFER_IF_PERMIT" => Some(Verdict::Refuse(reply(450, rest, "Try again later"))),
            "PREPEND" if rest.contains(':') => Some(Verdict::Continue { prepend: Some(rest.to_string()) }),
            _ if word.len() == 3 && word.bytes().all(|b| b.is_ascii_digit()) => {
                let code: u16 = word.parse().ok()?;
                match code {
                    400..=499 => Some(Verdict::Refuse(reply(code, rest, "Try again later"))),
                    500..=599 => Some(Verdict::Refuse(reply(code, rest, "Access denied"))),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Temporary answers are asked again, not cached.
    fn cacheable(&self) -> bool {
        match self {
            Verdict::Continue { .. } => true,
            Verdict::Refuse(r) => r.code >= 500,
        }
    }
}

/// `[[policy_service]]`, as the client needs it.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// `HOST:PORT`, or a Unix socket's path.
    pub address: String,
    pub stages: Vec<Stage>,
    pub timeout: Duration,
    pub default_action: DefaultAction,
    pub cache_ttl: Duration,
    pub threads: usize,
}

/// Most answers a service's cache keeps.
const CACHE_MAX: usize = 10_000;

type Done = Box<dyn FnOnce(Verdict) + Send>;

/// A policy service: its workers, its cache.
pub struct PolicyService {
    pub settings: ServiceSettings,
    tx: Mutex<mpsc::Sender<(Request, Done)>>,
    cache: Arc<Mutex<HashMap<u64, (Instant, Verdict)>>>,
    keys: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for PolicyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyService").field("address", &self.settings.address).finish_non_exhaustive()
    }
}

/// A kept connection to a service.
struct Conn(BufReader<super::service_stream::ServiceStream>);

impl Conn {
    fn open(address: &str, timeout: Duration) -> std::io::Result<Conn> {
        Ok(Conn(BufReader::new(super::service_stream::ServiceStream::connect(address, timeout)?)))
    }

    /// Sends `request`; the `action=` value of the answer.
    fn ask(&mut self, request: &str, deadline: Instant) -> std::io::Result<String> {
        self.0.get_mut().write_all(request.as_bytes())?;
        let mut action = None;
        let mut line = String::new();
        let mut total = 0;
        loop {
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"));
            }
            line.clear();
            let n = self.0.by_ref().take(4096).read_line(&mut line)?;
            total += n;
            if n == 0 || total > 64 * 1024 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the service closed"));
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                return action.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no action= line"));
            }
            if let Some(v) = l.strip_prefix("action=") {
                action = Some(v.to_string());
            }
        }
    }
}

impl PolicyService {
    /// Starts the service's worker threads (connections open at their first request).
    pub fn start(settings: ServiceSettings) -> std::io::Result<PolicyService> {
        let (tx, rx) = mpsc::channel::<(Request, Done)>();
        let rx = Arc::new(Mutex::new(rx));
        let cache: Arc<Mutex<HashMap<u64, (Instant, Verdict)>>> = Arc::default();
        for i in 0..settings.threads.max(1) {
            let (rx, s) = (rx.clone(), settings.clone());
            std::thread::Builder::new().name(format!("policy-{i}")).spawn(move || worker(&s, &rx))?;
        }
        Ok(PolicyService { settings, tx: Mutex::new(tx), cache, keys: Default::default() })
    }

    pub fn asked_at(&self, stage: Stage) -> bool {
        self.settings.stages.contains(&stage)
    }

    fn key(&self, req: &Request) -> u64 {
        let mut h = self.keys.build_hasher();
        h.write(req.cache_text().as_bytes());
        h.finish()
    }

    /// Asks the service; `done` gets the verdict (from the cache, the service, or the
    /// default action), on this thread or a worker.
    pub fn submit(&self, req: Request, done: Done) {
        let ttl = self.settings.cache_ttl;
        let key = (!ttl.is_zero()).then(|| self.key(&req));
        if let Some(k) = key {
            let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, v)) = c.get(&k)
                && at.elapsed() < ttl
            {
                let v = v.clone();
                drop(c);
                return done(v);
            }
        }
        let cache = self.cache.clone();
        let done: Done = Box::new(move |v: Verdict| {
            if let Some(k) = key
                && v.cacheable()
            {
                let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
                if c.len() >= CACHE_MAX {
                    c.retain(|_, (at, _)| at.elapsed() < ttl);
                    if c.len() >= CACHE_MAX {
                        c.clear();
                    }
                }
                c.insert(k, (Instant::now(), v.clone()));
            }
            done(v)
        });
        let sent = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send((req, done));
        if let Err(mpsc::SendError((_, done))) = sent {
            done(self.failure());
        }
    }

    fn failure(&self) -> Verdict {
        failure(self.settings.default_action)
    }
}

fn failure(a: DefaultAction) -> Verdict {
    match a {
        DefaultAction::Tempfail => Verdict::Refuse(service_failure()),
        DefaultAction::Accept => Verdict::Continue { prepend: None },
    }
}

/// One worker: its connection, reopened after a failure; each request has `timeout`.
fn worker(s: &ServiceSettings, rx: &Mutex<mpsc::Receiver<(Request, Done)>>) {
    let mut conn: Option<Conn> = None;
    loop {
        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((req, done)) = job else { return };
        let deadline = Instant::now() + s.timeout;
        let text = req.encode();
        // A kept connection the service closed meanwhile fails at once: one more try on a
        // fresh one.
        let mut answer = Err(std::io::Error::other("not asked"));
        for attempt in 0..2 {
            let c = match conn.take() {
                Some(c) => c,
                None => match Conn::open(&s.address, s.timeout) {
                    Ok(c) => c,
                    Err(e) => {
                        answer = Err(e);
                        break;
                    }
                },
            };
            let mut c = c;
            answer = c.ask(&text, deadline);
            if answer.is_ok() {
                conn = Some(c);
                break;
            }
            if attempt == 0 && Instant::now() >= deadline {
                break;
            }
        }
        let verdict = match answer {
            Ok(action) => Verdict::parse(&action).unwrap_or_else(|| {
                log::warn!("policy service {}: action {action:?} not supported: default action", s.address);
                failure(s.default_action)
            }),
            Err(e) => {
                log::warn!("policy service {}: {e}: default action", s.address);
                failure(s.default_action)
            }
        };
        done(verdict);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_as_access_tables_have_them() {
        let go = Verdict::Continue { prepend: None };
        for a in ["OK", "dunno", "DEFER_IF_REJECT whatever", "WARN look", "INFO x"] {
            assert_eq!(Verdict::parse(a), Some(go.clone()), "{a}");
        }
        assert_eq!(Verdict::parse("REJECT"), Some(Verdict::Refuse(Reply::new(554, "5.7.1", "Access denied"))));
        assert_eq!(
            Verdict::parse("DEFER_IF_PERMIT Greylisted, see http://postgrey.schweikert.ch/help/example.net.html"),
            Some(Verdict::Refuse(Reply::new(
                450,
                "4.7.1",
                "Greylisted, see http://postgrey.schweikert.ch/help/example.net.html"
            )))
        );
        assert_eq!(
            Verdict::parse("550 5.1.1 no such user"),
            Some(Verdict::Refuse(Reply::new(550, "5.1.1", "no such user")))
        );
        assert_eq!(Verdict::parse("421 try later"), Some(Verdict::Refuse(Reply::new(421, "4.7.1", "try later"))));
        assert_eq!(
            Verdict::parse("PREPEND X-Greylist: delayed 60 seconds by postgrey-1.37"),
            Some(Verdict::Continue { prepend: Some("X-Greylist: delayed 60 seconds by postgrey-1.37".into()) })
        );
        for a in ["HOLD", "DISCARD spam", "FILTER smtp:x", "REDIRECT a@b", "", "250 ok", "PREPEND no colon"] {
            assert_eq!(Verdict::parse(a), None, "{a}");
        }
    }

    #[test]
    fn request_in_postfix_order_with_an_empty_line() {
        let r = Request {
            stage: Some(Stage::Rcpt),
            helo_name: "mx.sender.example".into(),
            sender: "a@sender.example".into(),
            recipient: "b@example.net".into(),
            client_address: "192.0.2.7".into(),
            client_name: "unknown".into(),
            instance: "0100000000000007.1".into(),
            esmtp: true,
            ..Request::default()
        };
        let text = r.encode();
        assert!(text.starts_with(
            "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nhelo_name=mx.sender.example\n"
        ));
        assert!(text.contains("\nrecipient=b@example.net\n") && text.contains("\nclient_address=192.0.2.7\n"));
        assert!(text.ends_with("\n\n") && !text.ends_with("\n\n\n"));
        let evil = Request { helo_name: "x\nrecipient=forged".into(), ..r.clone() };
        assert!(!evil.encode().contains("\nrecipient=forged"), "a value stays on its line");
        assert_eq!(r.cache_text(), Request { instance: "other".into(), ..r }.cache_text());
    }

    /// A one-connection policy server on loopback answering `answers` in turn.
    fn server(answers: Vec<&'static str>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut seen = Vec::new();
            for a in answers {
                let mut req = String::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap() == 0 {
                        return seen;
                    }
                    if line == "\n" {
                        break;
                    }
                    req.push_str(&line);
                }
                seen.push(req);
                w.write_all(format!("action={a}\n\n").as_bytes()).unwrap();
            }
            seen
        });
        (addr, t)
    }

    fn settings(address: String, ttl: Duration) -> ServiceSettings {
        ServiceSettings {
            address,
            stages: vec![Stage::Rcpt],
            timeout: Duration::from_secs(5),
            default_action: DefaultAction::Tempfail,
            cache_ttl: ttl,
            threads: 1,
        }
    }

    fn ask(s: &PolicyService, r: Request) -> Verdict {
        let (tx, rx) = mpsc::channel();
        s.submit(r, Box::new(move |v| tx.send(v).unwrap()));
        rx.recv().unwrap()
    }

    #[test]
    fn one_connection_cache_and_temporary_answers_asked_again() {
        let (addr, srv) = server(vec!["DEFER_IF_PERMIT greylisted", "DUNNO", "REJECT go away"]);
        let s = PolicyService::start(settings(addr, Duration::from_secs(60))).unwrap();
        let r = Request { recipient: "b@example.net".into(), ..Request::default() };
        assert!(matches!(ask(&s, r.clone()), Verdict::Refuse(x) if x.code == 450));
        // Not cached: asked again, on the same connection.
        assert_eq!(ask(&s, r.clone()), Verdict::Continue { prepend: None });
        // Cached now (another instance of the same request).
        assert_eq!(ask(&s, Request { instance: "2".into(), ..r.clone() }), Verdict::Continue { prepend: None });
        let other = Request { recipient: "c@example.net".into(), ..r };
        assert_eq!(ask(&s, other), Verdict::Refuse(Reply::new(554, "5.7.1", "go away")));
        drop(s);
        let seen = srv.join().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
    }

    #[test]
    fn a_service_down_gives_the_default_action() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let s = PolicyService::start(settings(addr.clone(), Duration::ZERO)).unwrap();
        assert_eq!(ask(&s, Request::default()), Verdict::Refuse(service_failure()));
        let s = PolicyService::start(ServiceSettings {
            default_action: DefaultAction::Accept,
            ..settings(addr, Duration::ZERO)
        })
        .unwrap();
        assert_eq!(ask(&s, Request::default()), Verdict::Continue { prepend: None });
    }
}
