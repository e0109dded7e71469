//! The end-of-run report, as text and as JSON.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::client::driver::RunResult;
use crate::report::Phase;

/// What the run was asked to do, echoed in the report.
#[derive(Debug, Clone)]
pub struct RunDescription {
    pub target: String,
    pub connections: usize,
    pub rate: Option<f64>,
    pub messages: Option<u64>,
    pub duration: Option<Duration>,
    pub messages_per_connection: u64,
    pub recipients: usize,
    pub size: String,
    pub pipelining: bool,
    pub bdat: bool,
    pub tls: &'static str,
    pub auth: bool,
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }

    fn json(&self) -> Value {
        let r = |v: f64| (v * 10.0).round() / 10.0;
        json!({
            "count": self.count, "mean": r(self.mean), "p50": r(self.p50), "p90": r(self.p90),
            "p99": r(self.p99), "p99_9": r(self.p999), "max": r(self.max),
        })
    }
}

/// Throughput, error rate and CPU figures derived from a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub attempted: u64,
    pub ok: u64,
    pub failed: u64,
    pub error_rate: f64,
    pub msgs_per_s: f64,
    pub bytes_per_s: f64,
    pub cpu_s: f64,
    pub cpu_us_per_msg: f64,
}

impl Figures {
    pub fn of(r: &RunResult) -> Self {
        let rec = &r.recorder;
        let failed = rec.failed();
        let attempted = rec.ok + failed;
        let secs = r.elapsed.as_secs_f64().max(1e-9);
        let cpu_s = r.cpu.as_secs_f64();
        Figures {
            attempted,
            ok: rec.ok,
            failed,
            error_rate: if attempted == 0 { 0.0 } else { failed as f64 / attempted as f64 },
            msgs_per_s: rec.ok as f64 / secs,
            bytes_per_s: rec.bytes as f64 / secs,
            cpu_s,
            cpu_us_per_msg: if rec.ok == 0 { 0.0 } else { cpu_s * 1e6 / rec.ok as f64 },
        }
    }
}

/// The quantiles plotted as the latency spectrum: denser towards the tail.
pub fn spectrum_quantiles() -> impl Iterator<Item = f64> {
    (0..=100).map(|i| 1.0 - 10f64.powf(-(i as f64) / 20.0)).map(|q| q.clamp(0.0, 0.99999))
}

/// `(quantile, microseconds)` points of a histogram's spectrum.
pub fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    spectrum_quantiles().map(|q| (q, h.value_at_quantile(q) as f64 / 1000.0)).collect()
}

pub fn to_json(r: &RunResult, d: &RunDescription) -> Value {
    let f = Figures::of(r);
    let rec = &r.recorder;
    let mut phases = serde_json::Map::new();
    for p in Phase::ALL {
        let h = rec.histogram(p);
        if !h.is_empty() {
            phases.insert(p.name().to_string(), Percentiles::of(h).json());
        }
    }
    let codes: Vec<Value> =
        rec.codes.iter().map(|(code, count, text)| json!({"code": code, "count": count, "text": text})).collect();
    let timeline: Vec<Value> = r
        .timeline
        .iter()
        .map(|t| {
            json!({"t": (t.t.as_secs_f64() * 1000.0).round() / 1000.0, "ok": t.ok, "failed": t.failed,
                   "p50_us": t.p50_us, "p99_us": t.p99_us})
        })
        .collect();
    let spectrum: Vec<Value> =
        spectrum(rec.histogram(Phase::Transaction)).into_iter().map(|(q, v)| json!([q, v])).collect();
    let e = &rec.errors;
    json!({
        "tool": "ringmx-loadgen",
        "version": env!("CARGO_PKG_VERSION"),
        "started_unix": r.started.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        "config": {
            "target": d.target,
            "mode": if d.rate.is_some() { "open" } else { "closed" },
            "connections": d.connections,
            "rate": d.rate,
            "messages": d.messages,
            "duration_s": d.duration.map(|x| x.as_secs_f64()),
            "messages_per_connection": d.messages_per_connection,
            "recipients": d.recipients,
            "size": d.size,
            "pipelining": d.pipelining,
            "bdat": d.bdat,
            "tls": d.tls,
            "auth": d.auth,
            "threads": r.threads,
        },
        "elapsed_s": r.elapsed.as_secs_f64(),
        "messages": {"attempted": f.attempted, "ok": f.ok, "failed": f.failed, "rejected": rec.rejected},
        "recipients_accepted": rec.recipients,
        "bytes_accepted": rec.bytes,
        "connections": rec.connections,
        "throughput": {"msgs_per_s": f.msgs_per_s, "bytes_per_s": f.bytes_per_s},
        "error_rate": f.error_rate,
        "errors": {"connect": e.connect, "io": e.io, "timeout": e.timeout, "protocol": e.protocol,
                   "unfinished": e.unfinished, "rejected": rec.rejected},
        "latency_us": phases,
        "start_lag_us": if d.rate.is_some() { Percentiles::of(&rec.start_lag).json() } else { Value::Null },
        "codes": codes,
        "cpu": {"seconds": f.cpu_s, "us_per_msg": f.cpu_us_per_msg},
        "timeline": timeline,
        "spectrum_transaction_us": spectrum,
    })
}

fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2}s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{us:.0}µs")
    }
}

pub fn to_text(r: &RunResult, d: &RunDescription) -> String {
    let f = Figures::of(r);
    let rec = &r.recorder;
    let mut s = String::new();
    let mode = match d.rate {
        Some(rate) => format!("open loop at {rate}/s, up to {} connections", d.connections),
        None => format!("closed loop, {} connections", d.connections),
    };
    let _ = writeln!(s, "target {}  ({mode}, {} threads)", d.target, r.threads);
    let _ = writeln!(
        s,
        "messages  {} ok, {} failed of {} in {:.2}s  →  {:.0} msg/s, {:.2} MB/s",
        f.ok,
        f.failed,
        f.attempted,
        r.elapsed.as_secs_f64(),
        f.msgs_per_s,
        f.bytes_per_s / 1e6
    );
    let e = &rec.errors;
    if f.failed > 0 {
        let _ = writeln!(
            s,
            "errors    rate {:.4}: rejected {}, connect {}, io {}, timeout {}, protocol {}, unfinished {}",
            f.error_rate, rec.rejected, e.connect, e.io, e.timeout, e.protocol, e.unfinished
        );
    }
    let _ =
        writeln!(s, "cpu       {:.2}s  →  {:.1} µs per message (generator, user+system)", f.cpu_s, f.cpu_us_per_msg);
    let _ = writeln!(s, "connections {}", rec.connections);
    let _ = writeln!(
        s,
        "\n{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    let mut rows: Vec<(&str, Percentiles)> = Phase::ALL
        .iter()
        .filter(|p| !rec.histogram(**p).is_empty())
        .map(|p| (p.name(), Percentiles::of(rec.histogram(*p))))
        .collect();
    if d.rate.is_some() && !rec.start_lag.is_empty() {
        rows.push(("start lag", Percentiles::of(&rec.start_lag)));
    }
    for (name, p) in rows {
        let _ = writeln!(
            s,
            "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            name,
            p.count,
            fmt_us(p.p50),
            fmt_us(p.p90),
            fmt_us(p.p99),
            fmt_us(p.p999),
            fmt_us(p.max)
        );
    }
    let _ = writeln!(s, "\nreplies");
    for (code, count, text) in rec.codes.iter() {
        let _ = writeln!(s, "  {code} ×{count:<10} {text}");
    }
    s
}
