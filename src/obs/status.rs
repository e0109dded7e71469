//! The status page at `/` of the metrics endpoint, and its figures at `/status.json`.
//!
//! One self-contained HTML document: the figures are in its tables when it is served, so
//! it reads without JavaScript (and then reloads itself every few seconds); with
//! JavaScript it refreshes the same cells from `/status.json` instead. Nothing is fetched
//! from elsewhere.
//!
//! Rates are computed here, not in the browser: every answer takes a sample of the totals
//! (at most one a second) and a rate is the change from the oldest sample of the last
//! minute. Shards' load is their threads' CPU time from `/proc/self/task`, sampled in the
//! same way: nothing of it is counted on a shard.

use super::metrics::Registry;
use crate::spool::QueueId;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

/// Samples older than this are dropped: rates are over at most this window.
const WINDOW_MS: u64 = 60_000;
/// Samples closer together than this are not kept.
const SAMPLE_EVERY_MS: u64 = 1_000;

/// What the page shows, as `/status.json` serves it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub now_ms: u64,
    pub uptime_s: u64,
    pub totals: Totals,
    /// Per second over `rate_window_s` (none until two samples a second apart exist).
    pub rates: Option<Rates>,
    pub rate_window_s: f64,
    pub queue: Queue,
    pub deferred_destinations: Vec<crate::queue::board::Deferred>,
    pub spool: Spool,
    pub shards: Vec<ShardLoad>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Totals {
    pub connections: u64,
    pub connections_open: u64,
    pub refused: u64,
    pub accepted: u64,
    pub accepted_bytes: u64,
    /// Local copies plus recipients relayed.
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rates {
    pub accepted: f64,
    pub delivered: f64,
    pub deferred: f64,
    pub refused: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Queue {
    pub messages: u64,
    pub active: u64,
    /// The oldest message's id and age (none when the queue is empty).
    pub oldest_id: Option<String>,
    pub oldest_age_s: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spool {
    /// Disk space the spool's files take (segments, spares, indexes).
    pub bytes: u64,
    pub segments: u64,
    /// Of the file system that holds the spool.
    pub fs_free_bytes: u64,
    pub fs_size_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardLoad {
    pub shard: usize,
    pub connections: u64,
    pub messages: u64,
    /// The shard thread's CPU use over the rate window, in percent of one core.
    pub cpu_percent: Option<f64>,
}

#[derive(Debug, Clone)]
struct Sample {
    at_ms: u64,
    totals: Totals,
    /// CPU ticks of each shard thread.
    cpu: Vec<u64>,
}

/// The page's state: when the server started and the recent samples.
#[derive(Debug)]
pub struct Page {
    registry: Arc<Registry>,
    spool: PathBuf,
    started_ms: u64,
    samples: VecDeque<Sample>,
}

impl Page {
    pub fn new(registry: Arc<Registry>, spool: PathBuf) -> Page {
        Page { registry, spool, started_ms: crate::util::time::Now::system().unix_ms, samples: VecDeque::new() }
    }

    /// The figures now (and a sample kept for later rates).
    pub fn status(&mut self) -> Status {
        self.status_at(crate::util::time::Now::system().unix_ms)
    }

    /// The figures at `now_ms` (Unix ms).
    fn status_at(&mut self, now_ms: u64) -> Status {
        let r = &self.registry;
        let c = &r.control;
        let totals = Totals {
            connections: r.shards.iter().map(|s| s.connections.get()).sum(),
            connections_open: r.limits.as_ref().map_or(0, |l| l.current() as u64),
            refused: r.shards.iter().flat_map(|s| s.refused.iter()).map(|c| c.get()).sum(),
            accepted: r.shards.iter().map(|s| s.messages.get()).sum(),
            accepted_bytes: r.shards.iter().map(|s| s.bytes.get()).sum(),
            delivered: c.delivered_local.get() + c.relayed.get(),
            deferred: c.deferred.get(),
            failed: c.failed.get(),
        };
        let cpu = shard_cpu_ticks(r.shards.len());
        let base = self.samples.iter().find(|s| now_ms.saturating_sub(s.at_ms) >= SAMPLE_EVERY_MS).cloned();
        let window_ms = base.as_ref().map_or(0, |b| now_ms - b.at_ms);
        let per_s = |now: u64, then: u64| now.saturating_sub(then) as f64 * 1000.0 / window_ms as f64;
        let rates = base.as_ref().map(|b| Rates {
            accepted: per_s(totals.accepted, b.totals.accepted),
            delivered: per_s(totals.delivered, b.totals.delivered),
            deferred: per_s(totals.deferred, b.totals.deferred),
            refused: per_s(totals.refused, b.totals.refused),
        });
        let ticks = clock_ticks_per_second() as f64;
        let shards = r
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| ShardLoad {
                shard: i,
                connections: s.connections.get(),
                messages: s.messages.get(),
                cpu_percent: base.as_ref().and_then(|b| {
                    let (now, then) = (*cpu.get(i)?, *b.cpu.get(i)?);
                    Some(now.saturating_sub(then) as f64 / ticks * 100_000.0 / window_ms as f64)
                }),
            })
            .collect();
        let oldest = c.oldest_id.get();
        let queue = Queue {
            messages: c.queued.get(),
            active: c.active.get(),
            oldest_id: (oldest != 0).then(|| QueueId(oldest).to_string()),
            oldest_age_s: (oldest != 0).then(|| (now_ms / 1000).saturating_sub(oldest >> 32)),
        };
        let deferred_destinations = c.deferred_destinations.lock().map(|d| d.clone()).unwrap_or_default();
        if self.samples.back().is_none_or(|s| now_ms.saturating_sub(s.at_ms) >= SAMPLE_EVERY_MS) {
            self.samples.push_back(Sample { at_ms: now_ms, totals, cpu });
        }
        while self.samples.front().is_some_and(|s| now_ms.saturating_sub(s.at_ms) > WINDOW_MS) {
            self.samples.pop_front();
        }
        Status {
            version: env!("CARGO_PKG_VERSION"),
            now_ms,
            uptime_s: now_ms.saturating_sub(self.started_ms) / 1000,
            totals,
            rates,
            rate_window_s: window_ms as f64 / 1000.0,
            queue,
            deferred_destinations,
            spool: spool_use(&self.spool),
            shards,
        }
    }
}

/// The CPU time (user + system, in clock ticks) of the threads named `shard-N`, by N.
fn shard_cpu_ticks(shards: usize) -> Vec<u64> {
    let mut out = vec![0; shards];
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for t in tasks.flatten() {
        let p = t.path();
        let Ok(comm) = std::fs::read_to_string(p.join("comm")) else { continue };
        let Some(n) = comm.trim().strip_prefix("shard-").and_then(|n| n.parse::<usize>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(p.join("stat")) else { continue };
        // After the command's closing parenthesis: state is the 3rd field of the line,
        // utime the 14th and stime the 15th (proc(5)).
        let Some((_, rest)) = stat.rsplit_once(") ") else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if let Some(slot) = out.get_mut(n) {
            *slot = field(14) + field(15);
        }
    }
    out
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf takes a constant name and touches no memory of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// The spool's disk use (allocated blocks of its files) and its file system's space.
fn spool_use(spool: &std::path::Path) -> Spool {
    use std::os::unix::fs::MetadataExt;
    let mut s = Spool::default();
    let mut dirs = vec![spool.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                dirs.push(e.path());
            } else {
                s.bytes += md.blocks() * 512;
                if e.path().extension().is_some_and(|x| x == "seg") {
                    s.segments += 1;
                }
            }
        }
    }
    if let Ok(path) = std::ffi::CString::new(spool.as_os_str().as_encoded_bytes()) {
        // SAFETY: an all-zero statvfs is a valid value of that plain C struct.
        let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a NUL-terminated string that outlives the call and `v` is a
        // writable statvfs the call fills.
        if unsafe { libc::statvfs(path.as_ptr(), &mut v) } == 0 {
            s.fs_free_bytes = v.f_bavail as u64 * v.f_frsize as u64;
            s.fs_size_bytes = v.f_blocks as u64 * v.f_frsize as u64;
        }
    }
    s
}

/// Text for HTML: `<`, `>`, `&` and quotes escaped (remote replies are a peer's words).
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (b as f64, 0);
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// The page, its tables filled with `s`.
pub fn html(s: &Status) -> String {
    use std::fmt::Write as _;
    let t = &s.totals;
    let r = s.rates;
    let mut counts = String::new();
    for (key, label, total, per_s) in [
        ("accepted", "Accepted", t.accepted, r.map(|r| r.accepted)),
        ("delivered", "Delivered", t.delivered, r.map(|r| r.delivered)),
        ("deferred", "Deferred", t.deferred, r.map(|r| r.deferred)),
        ("refused", "Refused", t.refused, r.map(|r| r.refused)),
    ] {
        let _ = write!(
            counts,
            "<tr><th>{label}</th><td id=\"{key}\">{total}</td><td id=\"{key}-rate\">{}</td></tr>",
            rate(per_s)
        );
    }
    let _ = write!(counts, "<tr><th>Failed</th><td id=\"failed\">{}</td><td></td></tr>", t.failed);
    let mut dests = String::new();
    for d in &s.deferred_destinations {
        let _ = write!(
            dests,
            "<tr><td>{}</td><td>{}</td><td class=\"reply\">{}</td></tr>",
            esc(&d.destination),
            d.deferrals,
            esc(&d.last_reply)
        );
    }
    let mut shards = String::new();
    for l in &s.shards {
        let cpu = l.cpu_percent.map_or_else(|| "-".into(), |c| format!("{c:.0}%"));
        let _ = write!(
            shards,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{cpu}</td></tr>",
            l.shard, l.connections, l.messages
        );
    }
    let q = &s.queue;
    let age = q.oldest_age_s.map_or_else(|| "-".into(), |a| format!("{a} s"));
    let sp = &s.spool;
    TEMPLATE
        .replace("{{version}}", s.version)
        .replace("{{uptime}}", &s.uptime_s.to_string())
        .replace("{{window}}", &format!("{:.0}", s.rate_window_s))
        .replace("{{counts}}", &counts)
        .replace("{{open}}", &t.connections_open.to_string())
        .replace("{{connections}}", &t.connections.to_string())
        .replace("{{queue}}", &q.messages.to_string())
        .replace("{{active}}", &q.active.to_string())
        .replace("{{age}}", &age)
        .replace("{{destinations}}", &dests)
        .replace("{{spool}}", &bytes(sp.bytes))
        .replace("{{segments}}", &sp.segments.to_string())
        .replace("{{free}}", &bytes(sp.fs_free_bytes))
        .replace("{{shards}}", &shards)
}

const TEMPLATE: &str = include_str!("status.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_text_is_escaped() {
        assert_eq!(esc("<script>\"x\" & 'y'"), "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;");
    }

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }

    #[test]
    fn rates_from_samples_a_second_apart() {
        let registry = Arc::new(Registry { shards: vec![Arc::default()], ..Default::default() });
        let dir = tempfile::tempdir().unwrap();
        let mut page = Page::new(registry.clone(), dir.path().to_path_buf());
        // On a clock of the test's: samples at t and t + 2 s, ten messages between them.
        let t = 1_796_288_400_000;
        let first = page.status_at(t);
        assert!(first.rates.is_none(), "one sample: no rate yet");
        assert!(page.status_at(t + 500).rates.is_none(), "none a second apart yet");
        registry.shards[0].messages.set(10);
        let s = page.status_at(t + 2_000);
        let r = s.rates.expect("a sample two seconds old");
        assert_eq!(s.rate_window_s, 2.0);
        assert_eq!(r.accepted, 5.0);
        assert_eq!(s.totals.accepted, 10);
        let page_html = html(&s);
        assert!(page_html.contains("<td id=\"accepted\">10</td>"), "{page_html}");
        assert!(!page_html.contains("{{"), "every placeholder filled");
    }
}
