//! Per-thread measurement: histograms per phase, reply codes, counters.
//!
//! A [`Recorder`] is owned by one worker thread and never shared while the run goes on;
//! it allocates everything up front so recording a value never allocates (except the first
//! time a reply code is seen, to keep its text).

use std::time::Duration;

use hdrhistogram::Histogram;

/// The SMTP phases whose latency is measured.
///
/// With PIPELINING (RFC 2920) MAIL, RCPT and DATA are sent in one write, so each of their
/// latencies runs from that write to the reply in question. When they went out with the
/// previous message's content (overlap), they run from that message's final reply, since
/// replies come in order and none of theirs could come earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// TCP connect, from `connect()` to writability.
    Connect,
    /// Connected to the 220 greeting.
    Banner,
    /// EHLO sent to its last reply line (the first EHLO; see [`Phase::StartTls`]).
    Ehlo,
    /// STARTTLS sent (or the TCP connect, for implicit TLS) to the end of the TLS handshake.
    Tls,
    /// AUTH sent to the 235.
    Auth,
    Mail,
    Rcpt,
    /// DATA sent to the 354.
    Data,
    /// The last byte of the message (after `.` or with `BDAT … LAST`) written to its reply.
    DataEnd,
    /// A whole transaction: its (intended, in open loop) start to the reply after the data.
    Transaction,
}

impl Phase {
    pub const ALL: [Phase; 10] = [
        Phase::Connect,
        Phase::Banner,
        Phase::Ehlo,
        Phase::Tls,
        Phase::Auth,
        Phase::Mail,
        Phase::Rcpt,
        Phase::Data,
        Phase::DataEnd,
        Phase::Transaction,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Banner => "banner",
            Phase::Ehlo => "ehlo",
            Phase::Tls => "tls",
            Phase::Auth => "auth",
            Phase::Mail => "mail",
            Phase::Rcpt => "rcpt",
            Phase::Data => "data",
            Phase::DataEnd => "data_end",
            Phase::Transaction => "transaction",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Highest latency a histogram holds: one hour, in nanoseconds. Larger values are clamped.
const MAX_NS: u64 = 3_600_000_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds are valid")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = (d.as_nanos() as u64).clamp(1, MAX_NS);
    h.record(ns).expect("value clamped into the histogram's range");
}

/// Why a connection or transaction failed, beside the server's own rejections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The TCP connect failed (refused, unreachable).
    Connect,
    /// Read/write failure or the peer closed mid-session.
    Io,
    /// No reply within the reply timeout.
    Timeout,
    /// A reply that does not parse, or TLS failure.
    Protocol,
    /// The run ended (duration, drain) before the transaction finished.
    Unfinished,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    pub connect: u64,
    pub io: u64,
    pub timeout: u64,
    pub protocol: u64,
    pub unfinished: u64,
}

impl ErrorCounts {
    pub fn add(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.io += o.io;
        self.timeout += o.timeout;
        self.protocol += o.protocol;
        self.unfinished += o.unfinished;
    }
}

/// Counts of reply codes (100–599) and the first text seen for each.
#[derive(Debug, Clone)]
pub struct CodeTable {
    counts: Box<[u64; 600]>,
    texts: Vec<Option<String>>,
}

impl Default for CodeTable {
    fn default() -> Self {
        CodeTable { counts: Box::new([0; 600]), texts: vec![None; 600] }
    }
}

impl CodeTable {
    pub fn record(&mut self, code: u16, text: &[u8]) {
        let i = usize::from(code).min(599);
        self.counts[i] += 1;
        if self.texts[i].is_none() {
            self.texts[i] = Some(String::from_utf8_lossy(text).trim_end().to_string());
        }
    }

    pub fn merge(&mut self, o: &CodeTable) {
        for i in 0..600 {
            self.counts[i] += o.counts[i];
            if self.texts[i].is_none() {
                self.texts[i].clone_from(&o.texts[i]);
            }
        }
    }

    /// `(code, count, first text)` for every code seen, in code order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, u64, &str)> + '_ {
        (0..600)
            .filter(|&i| self.counts[i] > 0)
            .map(|i| (i as u16, self.counts[i], self.texts[i].as_deref().unwrap_or("")))
    }

    pub fn count(&self, code: u16) -> u64 {
        self.counts[usize::from(code).min(599)]
    }
}

/// Counters since the last time the progress thread looked; see [`Recorder::take_interval`].
#[derive(Debug, Clone)]
pub struct Interval {
    pub ok: u64,
    pub failed: u64,
    /// Transaction latency in microseconds (smaller than the nanosecond histograms).
    pub latency_us: Histogram<u64>,
}

impl Default for Interval {
    fn default() -> Self {
        Interval {
            ok: 0,
            failed: 0,
            latency_us: Histogram::new_with_bounds(1, MAX_NS / 1000, 2).expect("static bounds"),
        }
    }
}

impl Interval {
    pub fn add(&mut self, o: &Interval) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.latency_us.add(&o.latency_us).expect("same bounds");
    }

    pub fn reset(&mut self) {
        self.ok = 0;
        self.failed = 0;
        self.latency_us.reset();
    }
}

/// Everything one worker measures.
#[derive(Debug, Clone)]
pub struct Recorder {
    phases: Vec<Histogram<u64>>,
    pub codes: CodeTable,
    /// Transactions accepted (final 2xx after the data, at least one recipient accepted).
    pub ok: u64,
    /// Transactions refused by the server at any step.
    pub rejected: u64,
    /// Error events (a connection can fail without losing a message).
    pub errors: ErrorCounts,
    /// Message attempts lost to errors (connection failures, timeouts, the end of the run).
    pub lost: u64,
    /// Accepted recipients, over all transactions.
    pub recipients: u64,
    /// Message bytes (as on the wire, after dot-stuffing) of accepted transactions.
    pub bytes: u64,
    pub connections: u64,
    /// Open loop: how late each message started after its intended start.
    pub start_lag: Histogram<u64>,
    pub interval: Interval,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            phases: Phase::ALL.iter().map(|_| new_histogram()).collect(),
            codes: CodeTable::default(),
            ok: 0,
            rejected: 0,
            errors: ErrorCounts::default(),
            lost: 0,
            recipients: 0,
            bytes: 0,
            connections: 0,
            start_lag: new_histogram(),
            interval: Interval::default(),
        }
    }
}

impl Recorder {
    pub fn phase(&mut self, phase: Phase, d: Duration) {
        record(&mut self.phases[phase.index()], d);
    }

    pub fn record_start_lag(&mut self, d: Duration) {
        record(&mut self.start_lag, d);
    }

    pub fn histogram(&self, phase: Phase) -> &Histogram<u64> {
        &self.phases[phase.index()]
    }

    pub fn reply(&mut self, code: u16, text: &[u8]) {
        self.codes.record(code, text);
    }

    /// A transaction ended with the server's final answer.
    pub fn transaction(&mut self, accepted: bool, latency: Duration, bytes: usize, recipients: u32) {
        if accepted {
            self.ok += 1;
            self.interval.ok += 1;
            self.bytes += bytes as u64;
            self.recipients += u64::from(recipients);
            self.phase(Phase::Transaction, latency);
            let us = (latency.as_micros() as u64).clamp(1, MAX_NS / 1000);
            self.interval.latency_us.record(us).expect("clamped");
        } else {
            self.rejected += 1;
            self.interval.failed += 1;
        }
    }

    /// A failure that is not a server reply. `lost_message` says whether a message attempt
    /// was lost with it (it then counts as a failed message).
    pub fn error(&mut self, kind: ErrorKind, lost_message: bool) {
        let c = &mut self.errors;
        match kind {
            ErrorKind::Connect => c.connect += 1,
            ErrorKind::Io => c.io += 1,
            ErrorKind::Timeout => c.timeout += 1,
            ErrorKind::Protocol => c.protocol += 1,
            ErrorKind::Unfinished => c.unfinished += 1,
        }
        if lost_message {
            self.lose_message();
        }
    }

    /// A message attempt ended without the server's verdict.
    pub fn lose_message(&mut self) {
        self.lost += 1;
        self.interval.failed += 1;
    }

    /// Failed message attempts: rejections plus messages lost to errors.
    pub fn failed(&self) -> u64 {
        self.rejected + self.lost
    }

    pub fn merge(&mut self, o: &Recorder) {
        for (a, b) in self.phases.iter_mut().zip(&o.phases) {
            a.add(b).expect("same bounds");
        }
        self.codes.merge(&o.codes);
        self.ok += o.ok;
        self.rejected += o.rejected;
        self.errors.add(&o.errors);
        self.lost += o.lost;
        self.recipients += o.recipients;
        self.bytes += o.bytes;
        self.connections += o.connections;
        self.start_lag.add(&o.start_lag).expect("same bounds");
        self.interval.add(&o.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_values() {
        let mut r = Recorder::default();
        for ms in 1..=100u64 {
            r.phase(Phase::DataEnd, Duration::from_millis(ms));
        }
        let h = r.histogram(Phase::DataEnd);
        let p50 = h.value_at_quantile(0.5) as f64 / 1e6;
        let p99 = h.value_at_quantile(0.99) as f64 / 1e6;
        assert!((p50 - 50.0).abs() < 0.1, "p50 {p50}");
        assert!((p99 - 99.0).abs() < 0.1, "p99 {p99}");
        assert_eq!(h.len(), 100);
    }

    #[test]
    fn code_table_keeps_first_text_and_merges() {
        let mut a = CodeTable::default();
        a.record(250, b"2.0.0 Ok\r\n");
        a.record(250, b"2.0.0 other");
        let mut b = CodeTable::default();
        b.record(450, b"4.2.1 busy");
        b.record(250, b"ignored");
        a.merge(&b);
        let v: Vec<_> = a.iter().collect();
        assert_eq!(v, vec![(250, 3, "2.0.0 Ok"), (450, 1, "4.2.1 busy")]);
    }
}
