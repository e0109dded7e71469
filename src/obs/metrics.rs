//! Prometheus metrics, liveness and readiness over HTTP (`[metrics] listen`).
//!
//! # No shared counter on the hot path
//!
//! Each shard keeps its counters in plain integers ([`crate::rt::shard::ShardStats`]) and
//! publishes them once per loop turn into its own [`ShardMetrics`]: relaxed stores by that
//! one thread, read by the scrape. The control thread does the same with
//! [`ControlMetrics`]. A scrape sums the shards.
//!
//! # Endpoints
//!
//! `GET /metrics` (text exposition format 0.0.4), `GET /` (the status page,
//! [`super::status`]) and `GET /status.json` (its figures), `GET /healthz` (the server runs: 200),
//! `GET /readyz` (200 when the listeners are bound and the spool directory takes a new
//! file; 503 with the reason otherwise). One request per connection, read with a time-out
//! and a size cap: the endpoint is for a local scraper, and a slow or hostile client costs
//! one bounded wait of the metrics thread, never a shard.

use crate::policy::Refusal;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A value with one writer: the owning thread stores, a scrape loads.
#[derive(Debug, Default)]
pub struct Cell(AtomicU64);

impl Cell {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One shard's counters as it last published them.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    pub connections: Cell,
    pub refused: [Cell; Refusal::ALL.len()],
    pub messages: Cell,
    pub bytes: Cell,
    pub spool_batches: Cell,
    pub spool_records: Cell,
    pub spool_segments: Cell,
    /// Replies, phase latencies, TLS and AUTH ([`super::tally`]), copied when they change.
    pub tally: std::sync::Mutex<super::tally::Tally>,
}

/// The control thread's figures as it last published them.
#[derive(Debug, Default)]
pub struct ControlMetrics {
    pub queued: Cell,
    pub active: Cell,
    pub delivered_local: Cell,
    pub relayed: Cell,
    pub deferred: Cell,
    pub failed: Cell,
    pub segments_retired: Cell,
    pub deferred_remote: Cell,
    pub failed_remote: Cell,
    /// Messages generated, by [`GENERATED`] kind.
    pub generated: [Cell; GENERATED.len()],
    /// The oldest queued message's id (0: the queue is empty), refreshed about once a second.
    pub oldest_id: Cell,
    /// The destinations with the most deferrals since their last delivery, refreshed with
    /// `oldest_id`.
    pub deferred_destinations: std::sync::Mutex<Vec<crate::queue::board::Deferred>>,
}

/// The kinds of messages the server writes itself (`ringmx_messages_generated_total`).
pub const GENERATED: [&str; 7] =
    ["dsn_failed", "dsn_delayed", "dsn_success", "autoreply", "forward", "badmail", "list"];

impl ControlMetrics {
    /// Publishes the queue manager's counters.
    pub fn set_stats(&self, s: &crate::queue::manager::Stats) {
        self.delivered_local.set(s.delivered);
        self.relayed.set(s.relayed);
        self.deferred.set(s.deferred);
        self.failed.set(s.failed);
        self.deferred_remote.set(s.deferred_remote);
        self.failed_remote.set(s.failed_remote);
        let g = [s.dsn_failed, s.dsn_delayed, s.dsn_success, s.autoreplies, s.forwards, s.badmail, s.list_messages];
        for (cell, v) in self.generated.iter().zip(g) {
            cell.set(v);
        }
    }
}

/// Everything a scrape reads.
#[derive(Debug, Default)]
pub struct Registry {
    pub shards: Vec<Arc<ShardMetrics>>,
    pub control: Arc<ControlMetrics>,
    /// The server's connection limits (open connections now).
    pub limits: Option<Arc<crate::policy::ConnLimits>>,
    /// Activity-log events dropped because the writer was behind.
    pub log_dropped: Option<Arc<AtomicU64>>,
    /// DNS questions, answers from the cache, failures.
    pub dns: Option<Arc<crate::dns::DnsService>>,
    /// The automatic bans (none when they are off).
    pub bans: Option<Arc<crate::policy::BanList>>,
    /// Configuration reloads: applied, refused.
    pub reloads: Arc<crate::rt::reload::Outcomes>,
    /// One-click unsubscription (`POST /lists/unsubscribe`), with `[lists] unsubscribe_url`.
    pub unsubscribe: Option<(Arc<crate::lists::OneClick>, crate::rt::lists::ListsHandle)>,
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Registry {
    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let sum = |f: &dyn Fn(&ShardMetrics) -> u64| self.shards.iter().map(|s| f(s)).sum::<u64>();
        let one = |v: u64| vec![(String::new(), v)];
        let mut out = String::with_capacity(4096);
        metric(
            &mut out,
            "ringmx_connections_total",
            "counter",
            "Connections accepted.",
            &one(sum(&|s| s.connections.get())),
        );
        metric(
            &mut out,
            "ringmx_connections_open",
            "gauge",
            "Connections open now.",
            &one(self.limits.as_ref().map_or(0, |l| l.current() as u64)),
        );
        let refused: Vec<(String, u64)> = Refusal::ALL
            .iter()
            .map(|&r| (format!("{{reason=\"{}\"}}", r.name()), sum(&|s| s.refused[r as usize].get())))
            .collect();
        metric(&mut out, "ringmx_connections_refused_total", "counter", "Connections refused, by why.", &refused);
        metric(
            &mut out,
            "ringmx_messages_accepted_total",
            "counter",
            "Messages accepted (250 sent).",
            &one(sum(&|s| s.messages.get())),
        );
        metric(
            &mut out,
            "ringmx_message_bytes_accepted_total",
            "counter",
            "Content bytes of accepted messages.",
            &one(sum(&|s| s.bytes.get())),
        );
        metric(
            &mut out,
            "ringmx_spool_syncs_total",
            "counter",
            "Spool batches written (one fdatasync each when syncing).",
            &one(sum(&|s| s.spool_batches.get())),
        );
        metric(
            &mut out,
            "ringmx_spool_records_total",
            "counter",
            "Message records made durable by the shards.",
            &one(sum(&|s| s.spool_records.get())),
        );
        metric(
            &mut out,
            "ringmx_spool_segments_created_total",
            "counter",
            "Spool segments begun by the shards.",
            &one(sum(&|s| s.spool_segments.get())),
        );
        let mut tally = super::tally::Tally::default();
        for s in &self.shards {
            if let Ok(t) = s.tally.lock() {
                tally.merge(&t);
            }
        }
        tally.render(&mut out);
        let c = &self.control;
        metric(&mut out, "ringmx_queue_messages", "gauge", "Messages in the queue.", &one(c.queued.get()));
        metric(
            &mut out,
            "ringmx_queue_active_messages",
            "gauge",
            "Messages loaded for delivery now (the active window).",
            &one(c.active.get()),
        );
        metric(
            &mut out,
            "ringmx_local_deliveries_total",
            "counter",
            "Copies delivered to local mailboxes.",
            &one(c.delivered_local.get()),
        );
        metric(
            &mut out,
            "ringmx_remote_deliveries_total",
            "counter",
            "Recipients relayed to remote servers.",
            &one(c.relayed.get()),
        );
        metric(
            &mut out,
            "ringmx_spool_segments_retired_total",
            "counter",
            "Spool segments retired.",
            &one(c.segments_retired.get()),
        );
        let deferred = one(c.deferred.get());
        metric(
            &mut out,
            "ringmx_recipients_deferred_total",
            "counter",
            "Attempts that left a recipient deferred.",
            &deferred,
        );
        metric(
            &mut out,
            "ringmx_recipients_failed_total",
            "counter",
            "Recipients failed for good.",
            &one(c.failed.get()),
        );
        let (dl, dr) = (c.deferred.get().saturating_sub(c.deferred_remote.get()), c.deferred_remote.get());
        let (fl, fr) = (c.failed.get().saturating_sub(c.failed_remote.get()), c.failed_remote.get());
        let attempts: Vec<(String, u64)> = [
            ("local", "delivered", c.delivered_local.get()),
            ("local", "deferred", dl),
            ("local", "failed", fl),
            ("remote", "delivered", c.relayed.get()),
            ("remote", "deferred", dr),
            ("remote", "failed", fr),
        ]
        .iter()
        .map(|(kind, result, v)| (format!("{{destination=\"{kind}\",result=\"{result}\"}}"), *v))
        .collect();
        metric(
            &mut out,
            "ringmx_delivery_results_total",
            "counter",
            "Recipients' delivery results, by destination kind (local mailboxes and forwards, or remote servers).",
            &attempts,
        );
        let generated: Vec<(String, u64)> =
            GENERATED.iter().zip(&c.generated).map(|(k, v)| (format!("{{kind=\"{k}\"}}"), v.get())).collect();
        metric(
            &mut out,
            "ringmx_messages_generated_total",
            "counter",
            "Messages the server wrote: delivery status notifications by their gravest action, auto-replies, forwards, mailing lists' messages (distributions, notices, digests); reports to the null sender kept as bad mail.",
            &generated,
        );
        let troubled: Vec<(String, u64)> = c
            .deferred_destinations
            .lock()
            .map(|d| {
                d.iter()
                    .map(|x| (format!("{{destination=\"{}\"}}", label_value(&x.destination)), x.deferrals))
                    .collect()
            })
            .unwrap_or_default();
        metric(
            &mut out,
            "ringmx_deferred_destination_deferrals",
            "gauge",
            "The ten destinations with the most deferrals since mail to them last went through.",
            &troubled,
        );
        let reloads = [
            ("{result=\"applied\"}".to_string(), self.reloads.applied.load(Ordering::Relaxed)),
            ("{result=\"refused\"}".to_string(), self.reloads.refused.load(Ordering::Relaxed)),
        ];
        metric(
            &mut out,
            "ringmx_config_reloads_total",
            "counter",
            "Configuration reloads (SIGHUP): applied, or refused (the configuration in force stays).",
            &reloads,
        );
        if let Some(b) = &self.bans {
            let now = crate::util::time::Now::system().unix_secs();
            metric(
                &mut out,
                "ringmx_bans_active",
                "gauge",
                "Client addresses banned now.",
                &one(b.list(now).len() as u64),
            );
        }
        if let Some(d) = &self.log_dropped {
            metric(
                &mut out,
                "ringmx_log_events_dropped_total",
                "counter",
                "Activity-log events dropped (the writer was behind).",
                &one(d.load(Ordering::Relaxed)),
            );
        }
        if let Some(dns) = &self.dns {
            let (q, hits, failures) = dns.counts();
            metric(
                &mut out,
                "ringmx_dns_queries_total",
                "counter",
                "DNS questions asked (policy checks and delivery).",
                &one(q),
            );
            metric(
                &mut out,
                "ringmx_dns_cache_hits_total",
                "counter",
                "DNS questions answered from the cache.",
                &one(hits),
            );
            metric(
                &mut out,
                "ringmx_dns_failures_total",
                "counter",
                "DNS questions that failed for now.",
                &one(failures),
            );
        }
        out
    }
}

/// What `/readyz` checks.
#[derive(Debug)]
pub struct Readiness {
    pub spool: PathBuf,
    /// Set once every listener is bound and the shards run.
    pub serving: Arc<AtomicBool>,
}

impl Readiness {
    /// `Ok` when ready, else why not.
    pub fn check(&self) -> Result<(), String> {
        if !self.serving.load(Ordering::Relaxed) {
            return Err("not serving (starting or stopping)".into());
        }
        let probe = self.spool.join(".readyz");
        std::fs::write(&probe, b"").map_err(|e| format!("spool {} does not take a file: {e}", self.spool.display()))?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    }
}

/// Longest request read; slower clients are dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const REQUEST_MAX: usize = 8 * 1024;

/// Serves scrapes on `listener` until `stop` is set (then one connection to it wakes the
/// thread: [`wake`]).
pub fn serve(listener: TcpListener, registry: Arc<Registry>, ready: Readiness, stop: Arc<AtomicBool>) {
    let mut page = super::status::Page::new(registry.clone(), ready.spool.clone());
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(s) = conn else { continue };
        let _ = answer(s, &registry, &mut page, &ready);
    }
}

/// RFC 8058 one-click unsubscription: `POST /lists/unsubscribe?l=LIST&m=MEMBER&t=TOKEN`
/// (the body `List-Unsubscribe=One-Click` is not needed: the URL says it all) removes the
/// member; a GET (a person who followed the link, or a scanner: §3.2 says it must not
/// unsubscribe) gets a page with a button that POSTs.
fn unsubscribe(registry: &Registry, post: bool, target: &str) -> (&'static str, &'static str, String) {
    let Some((oc, lists)) = &registry.unsubscribe else {
        return ("404 Not Found", "text/plain", "not found\n".to_string());
    };
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let arg = |k: &str| {
        query.split('&').find_map(|kv| kv.split_once('=').filter(|(n, _)| *n == k).map(|(_, v)| crate::lists::unpct(v)))
    };
    let (Some(list), Some(member), Some(token)) = (arg("l"), arg("m"), arg("t")) else {
        return ("400 Bad Request", "text/plain", "the link is incomplete\n".to_string());
    };
    if oc.token(&list, &member) != token.to_ascii_lowercase() {
        return ("403 Forbidden", "text/plain", "this link is not valid\n".to_string());
    }
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    if !post {
        let page = format!(
            "<!doctype html><title>Unsubscribe</title><form method=\"post\" action=\"{}\">\
             <p>Stop mail from {} to {}?</p><button>Unsubscribe</button></form>\n",
            esc(target),
            esc(&list),
            esc(&member)
        );
        return ("200 OK", "text/html; charset=utf-8", page);
    }
    match lists.unsubscribe(&list, &member, Duration::from_secs(10)) {
        Ok(true) => ("200 OK", "text/plain", format!("{member} no longer gets mail from {list}\n")),
        Ok(false) => ("200 OK", "text/plain", format!("{member} is not a member of {list}\n")),
        Err(e) => {
            log::warn!("one-click unsubscription of {member} from {list}: {e}");
            ("503 Service Unavailable", "text/plain", "try again later\n".to_string())
        }
    }
}

/// Wakes a [`serve`] blocked in accept on `addr`, after its stop flag was set.
pub fn wake(addr: std::net::SocketAddr) {
    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
}

fn answer(
    mut s: TcpStream,
    registry: &Registry,
    page: &mut super::status::Page,
    ready: &Readiness,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    s.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = s.read(&mut buf)?;
        if n == 0 || head.len() + n > REQUEST_MAX {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    // A body (a one-click POST's) is read before the answer, at most 4 KiB: closing with
    // bytes unread would reset the connection before the client reads the answer.
    let head_end = head.windows(4).position(|w| w == b"\r\n\r\n").map_or(head.len(), |i| i + 4);
    let length: usize = String::from_utf8_lossy(&head[..head_end])
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut have = head.len() - head_end;
    while have < length.min(4096) {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        have += n;
    }
    let line = String::from_utf8_lossy(head.split(|&b| b == b'\n').next().unwrap_or(&[]));
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", registry.render()),
        ("GET", "/") => ("200 OK", "text/html; charset=utf-8", super::status::html(&page.status())),
        ("GET", "/status.json") => {
            let body = serde_json::to_string(&page.status()).unwrap_or_default();
            ("200 OK", "application/json", body)
        }
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => match ready.check() {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        (m @ ("GET" | "POST"), "/lists/unsubscribe") => unsubscribe(registry, m == "POST", target),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())
}
