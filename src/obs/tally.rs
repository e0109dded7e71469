//! What a shard counts about its sessions for the metrics endpoint: replies by code and
//! enhanced status code, how long each phase took to be answered, TLS handshakes and AUTH
//! results.
//!
//! One [`Tally`] per shard, shared by its connections through an `Rc<RefCell<_>>` (a shard
//! is one thread). Counting is plain integer work: a reply's code is looked up in a short
//! table, a latency falls into one of a dozen buckets. The shard copies the tally for a
//! scrape at the end of a loop turn, only when it changed and only when the scrape does
//! not hold the copy at that moment ([`Tally::publish`]): a shard never waits for a scrape.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// A session phase whose answer is timed: from the moment the client's input for it was
/// complete (or the connection accepted) to the moment its reply was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Connection accepted to the 220 banner (connect checks, DNSBL).
    Banner = 0,
    /// EHLO or HELO to its 250.
    Ehlo,
    /// MAIL to its reply (sender checks).
    Mail,
    /// RCPT to its reply.
    Rcpt,
    /// The end of the content (the dot, or the last BDAT chunk) to the reply: the message
    /// made durable.
    Data,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Banner, Stage::Ehlo, Stage::Mail, Stage::Rcpt, Stage::Data];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Banner => "banner",
            Stage::Ehlo => "ehlo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
        }
    }
}

/// Upper bounds of the latency buckets, in microseconds (the last bucket is `+Inf`).
pub const BUCKETS_US: [u64; 12] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000, 1_000_000, 10_000_000];

/// A latency histogram: counts per bucket (not cumulative), the total and the sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS_US.len() + 1],
    pub sum_us: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len());
        self.buckets[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    fn add(&mut self, o: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.sum_us += o.sum_us;
    }
}

/// Most distinct (code, enhanced status) pairs kept; later ones count as "other".
const MAX_REPLY_KINDS: usize = 64;

/// TLS versions counted by name; others count as `other`.
pub const TLS_VERSIONS: [&str; 3] = ["TLSv1.2", "TLSv1.3", "other"];

#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// (code << 32 | enhanced status packed, count); key 0 is "other".
    replies: Vec<(u64, u64)>,
    pub latency: [Histogram; Stage::ALL.len()],
    pub tls_handshakes: [u64; TLS_VERSIONS.len()],
    pub tls_failures: u64,
    pub auth_successes: u64,
    pub auth_failures: u64,
    /// The password check could not be made (454).
    pub auth_tempfails: u64,
    /// Changed since the last [`Tally::publish`].
    dirty: bool,
}

/// `class.subject.detail` packed into 24 bits (0: none or malformed).
fn pack_status(s: &[u8]) -> u32 {
    let mut parts = s.split(|&b| b == b'.');
    let mut num = |max: u32| -> Option<u32> {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v = p.iter().fold(0u32, |a, &d| a * 10 + (d - b'0') as u32);
        (v <= max).then_some(v)
    };
    match (num(9), num(999), num(999)) {
        (Some(c), Some(s), Some(d)) if (2..=5).contains(&c) => c << 20 | s << 10 | d,
        _ => 0,
    }
}

/// The last lines of the replies in `out` (`NNN text` or a bare `NNN`, never `NNN-`), as
/// (code, packed enhanced status).
///
/// Every reply the server sends passes here, a line or two at a time: the line ends are
/// found by a plain loop over bytes already in cache. (memchr's run-time dispatch loaded
/// its function pointer from a cache line the kernel's network stack had evicted between
/// two replies: a miss per call, 1% of a shard's time with a connection per message.)
pub fn reply_lines(out: &[u8]) -> impl Iterator<Item = (u32, u32)> + '_ {
    out.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (code, rest) = line.split_at_checked(3)?;
        if !code.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let status = match rest.split_first() {
            None => 0,
            Some((b' ', text)) => {
                let end = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
                pack_status(&text[..end])
            }
            Some(_) => return None,
        };
        Some((code.iter().fold(0u32, |a, &d| a * 10 + (d - b'0') as u32), status))
    })
}

fn unpack_status(p: u32) -> String {
    if p == 0 { String::new() } else { format!("{}.{}.{}", p >> 20, (p >> 10) & 0x3ff, p & 0x3ff) }
}

impl Tally {
    /// Counts the replies in `out`: complete reply lines as a session writes them. Only a
    /// reply's last line (`NNN ` or a bare `NNN`) counts, so a multi-line reply is one.
    pub fn count_replies(&mut self, out: &[u8]) {
        for (code, status) in reply_lines(out) {
            self.count_reply((code as u64) << 32 | status as u64);
        }
    }

    fn count_reply(&mut self, key: u64) {
        self.dirty = true;
        if let Some(e) = self.replies.iter_mut().find(|e| e.0 == key) {
            e.1 += 1;
            return;
        }
        if self.replies.len() < MAX_REPLY_KINDS {
            self.replies.push((key, 1));
        } else if let Some(e) = self.replies.iter_mut().find(|e| e.0 == 0) {
            e.1 += 1;
        } else {
            // The table is full of real kinds: the last one becomes "other".
            let last = self.replies.len() - 1;
            let n = self.replies[last].1;
            self.replies[last] = (0, n + 1);
        }
    }

    pub fn observe(&mut self, stage: Stage, d: Duration) {
        self.latency[stage as usize].observe(d);
        self.dirty = true;
    }

    /// A TLS handshake completed with `version` (as rustls names it, e.g. `TLSv1_3`).
    pub fn tls_handshake(&mut self, version: &str) {
        let i = match version {
            "TLSv1_2" | "TLSv1.2" => 0,
            "TLSv1_3" | "TLSv1.3" => 1,
            _ => 2,
        };
        self.tls_handshakes[i] += 1;
        self.dirty = true;
    }

    pub fn tls_failure(&mut self) {
        self.tls_failures += 1;
        self.dirty = true;
    }

    pub fn auth(&mut self, outcome: crate::policy::auth::AuthOutcome) {
        use crate::policy::auth::AuthOutcome;
        match outcome {
            AuthOutcome::Success => self.auth_successes += 1,
            AuthOutcome::Failure => self.auth_failures += 1,
            AuthOutcome::Unavailable => self.auth_tempfails += 1,
        }
        self.dirty = true;
    }

    /// The replies counted: (code, enhanced status or "", count); code 0 is "other".
    pub fn replies(&self) -> impl Iterator<Item = (u16, String, u64)> + '_ {
        self.replies.iter().map(|&(k, n)| ((k >> 32) as u16, unpack_status(k as u32), n))
    }

    /// Counts not yet published.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Copies the tally into `to` if it changed and `to` is free now.
    pub fn publish(&mut self, to: &Mutex<Tally>) {
        if !self.dirty {
            return;
        }
        if let Ok(mut t) = to.try_lock() {
            t.clone_from(self);
            self.dirty = false;
        }
    }

    /// Adds `o` (another shard's) into this one.
    pub fn merge(&mut self, o: &Tally) {
        for &(k, n) in &o.replies {
            match self.replies.iter_mut().find(|e| e.0 == k) {
                Some(e) => e.1 += n,
                None => self.replies.push((k, n)),
            }
        }
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            a.add(b);
        }
        for (a, b) in self.tls_handshakes.iter_mut().zip(o.tls_handshakes) {
            *a += b;
        }
        self.tls_failures += o.tls_failures;
        self.auth_successes += o.auth_successes;
        self.auth_failures += o.auth_failures;
        self.auth_tempfails += o.auth_tempfails;
    }

    /// The Prometheus exposition of the tally.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP ringmx_smtp_replies_total SMTP replies sent, by code and enhanced status code.");
        let _ = writeln!(out, "# TYPE ringmx_smtp_replies_total counter");
        let mut replies: Vec<_> = self.replies().collect();
        replies.sort();
        for (code, status, n) in replies {
            let code = if code == 0 { "other".to_string() } else { code.to_string() };
            let _ = writeln!(out, "ringmx_smtp_replies_total{{code=\"{code}\",status=\"{status}\"}} {n}");
        }
        let name = "ringmx_smtp_phase_seconds";
        let _ = writeln!(out, "# HELP {name} Time from a session phase's input to its reply.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for s in Stage::ALL {
            let h = &self.latency[s as usize];
            let mut cumulative = 0;
            for (i, n) in h.buckets.iter().enumerate() {
                cumulative += n;
                let le = BUCKETS_US.get(i).map_or_else(|| "+Inf".to_string(), |&us| format!("{}", us as f64 / 1e6));
                let _ = writeln!(out, "{name}_bucket{{phase=\"{}\",le=\"{le}\"}} {cumulative}", s.name());
            }
            let _ = writeln!(out, "{name}_sum{{phase=\"{}\"}} {}", s.name(), h.sum_us as f64 / 1e6);
            let _ = writeln!(out, "{name}_count{{phase=\"{}\"}} {}", s.name(), h.count());
        }
        let _ = writeln!(out, "# HELP ringmx_tls_handshakes_total TLS handshakes completed as the server, by version.");
        let _ = writeln!(out, "# TYPE ringmx_tls_handshakes_total counter");
        for (v, n) in TLS_VERSIONS.iter().zip(self.tls_handshakes) {
            let _ = writeln!(out, "ringmx_tls_handshakes_total{{version=\"{v}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP ringmx_tls_handshake_failures_total TLS handshakes that failed.");
        let _ = writeln!(out, "# TYPE ringmx_tls_handshake_failures_total counter");
        let _ = writeln!(out, "ringmx_tls_handshake_failures_total {}", self.tls_failures);
        let _ = writeln!(out, "# HELP ringmx_auth_total AUTH attempts, by result.");
        let _ = writeln!(out, "# TYPE ringmx_auth_total counter");
        let _ = writeln!(out, "ringmx_auth_total{{result=\"success\"}} {}", self.auth_successes);
        let _ = writeln!(out, "ringmx_auth_total{{result=\"failure\"}} {}", self.auth_failures);
        let _ = writeln!(out, "ringmx_auth_total{{result=\"tempfail\"}} {}", self.auth_tempfails);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_by_code_and_status_multiline_once() {
        let mut t = Tally::default();
        t.count_replies(b"250-mx.example\r\n250-PIPELINING\r\n250 DSN\r\n");
        t.count_replies(b"250 2.1.0 Ok\r\n550 5.1.1 <x@y>: unknown\r\n250 2.1.0 Ok\r\n");
        t.count_replies(b"354 End data with <CR><LF>.<CR><LF>\r\n221 2.0.0 Bye\r\n");
        let mut r: Vec<_> = t.replies().collect();
        r.sort();
        assert_eq!(
            r,
            [
                (221, "2.0.0".into(), 1),
                (250, "".into(), 1),
                (250, "2.1.0".into(), 2),
                (354, "".into(), 1),
                (550, "5.1.1".into(), 1),
            ]
        );
    }

    #[test]
    fn reply_kinds_are_bounded() {
        let mut t = Tally::default();
        for d in 0..200u32 {
            t.count_replies(format!("550 5.7.{d} no\r\n").as_bytes());
        }
        let r: Vec<_> = t.replies().collect();
        assert_eq!(r.len(), MAX_REPLY_KINDS);
        assert_eq!(r.iter().map(|x| x.2).sum::<u64>(), 200);
        assert_eq!(r.iter().filter(|x| x.0 == 0).map(|x| x.2).sum::<u64>(), 200 - MAX_REPLY_KINDS as u64 + 1);
    }

    #[test]
    fn statuses_outside_rfc3463_are_not_labels() {
        assert_eq!(pack_status(b"5.1.1"), 5 << 20 | 1 << 10 | 1);
        assert_eq!(unpack_status(pack_status(b"4.7.23")), "4.7.23");
        for bad in [&b"mx.example"[..], b"1.2.3", b"5.1", b"5.1.1000", b"", b"5..1"] {
            assert_eq!(pack_status(bad), 0, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn histogram_buckets_and_exposition() {
        let mut t = Tally::default();
        t.observe(Stage::Data, Duration::from_micros(40));
        t.observe(Stage::Data, Duration::from_millis(3));
        t.observe(Stage::Data, Duration::from_secs(60));
        let h = t.latency[Stage::Data as usize];
        assert_eq!(h.count(), 3);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[BUCKETS_US.len()], 1, "beyond the last bound: +Inf");
        let mut out = String::new();
        t.render(&mut out);
        assert!(out.contains("ringmx_smtp_phase_seconds_bucket{phase=\"data\",le=\"0.00005\"} 1\n"), "{out}");
        assert!(out.contains("ringmx_smtp_phase_seconds_bucket{phase=\"data\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("ringmx_smtp_phase_seconds_bucket{phase=\"data\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("ringmx_smtp_phase_seconds_count{phase=\"data\"} 3\n"), "{out}");
    }

    #[test]
    fn published_only_when_changed_and_free() {
        let shared = Mutex::new(Tally::default());
        let mut t = Tally::default();
        t.auth(crate::policy::auth::AuthOutcome::Success);
        {
            let _scrape = shared.lock().unwrap();
            t.publish(&shared);
            assert!(t.dirty, "held by a scrape: tried again next turn");
        }
        t.publish(&shared);
        assert_eq!(shared.lock().unwrap().auth_successes, 1);
        assert!(!t.dirty);
        let mut sum = Tally::default();
        sum.merge(&shared.lock().unwrap());
        sum.merge(&shared.lock().unwrap());
        assert_eq!(sum.auth_successes, 2);
    }
}
