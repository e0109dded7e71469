//! Observability: the activity log, one line per message event and per refused client.
//!
//! # One event stream, written off the shards
//!
//! Shards and the control thread hand compact [`Activity`] values to their own
//! [`Emitter`]: a bounded channel per thread (std's bounded channel is a lock-free array
//! queue), so producers never share a queue and never wait. One writer thread
//! ([`ActivityLog`]) drains every channel, formats the lines and writes them; it wakes on
//! its own every [`WRITER_PERIOD`] (up to [`WRITER_IDLE_PERIOD`] when nothing comes), so a
//! producer makes no system call either. When the
//! writer falls behind and a channel is full, the event is dropped and counted; the writer
//! logs how many were dropped (`events-dropped count=N`), so a gap in the log is never
//! silent.
//!
//! # Lines
//!
//! `key=value` (greppable; values with spaces or quotes are quoted) or JSON lines, by
//! `[log] format`. Every line of a message carries its queue id (`id=`), so
//! `grep id=<ID> activity.log` shows it from receipt to its last recipient's outcome.
//! SIGUSR1 reopens the file (after logrotate renamed it).

pub mod debug;
pub mod metrics;
pub mod status;
pub mod summary;
pub mod tally;
pub mod w3c;

use crate::policy::Refusal;
use crate::spool::QueueId;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the writer drains the producers' channels while events come.
pub const WRITER_PERIOD: Duration = Duration::from_millis(50);
/// The longest the writer sleeps once nothing comes: its wait doubles from
/// [`WRITER_PERIOD`] up to this after each empty turn, so an idle server wakes it about
/// three times a second rather than twenty; a producer's queue (`[log] queue`, 16,384
/// events by default) holds what a burst brings meanwhile.
pub const WRITER_IDLE_PERIOD: Duration = Duration::from_millis(400);
/// Events are written in time order once they are this old: a message's delivery (control
/// thread) never precedes its receipt (a shard) in the file, though the two threads hand
/// them over independently.
pub const REORDER_WINDOW_MS: u64 = 200;

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `key=value` pairs after the time and the event name.
    #[default]
    Kv,
    /// One JSON object per line.
    Json,
}

/// One event of the activity log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// Unix ms.
    pub at_ms: u64,
    pub what: What,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A message was accepted (its 250 sent).
    Received {
        id: QueueId,
        session: u64,
        client: IpAddr,
        helo: String,
        from: String,
        rcpts: usize,
        size: u64,
        tls: Option<String>,
        auth: Option<String>,
    },
    /// A client was refused before it was served, by `reason`; `rule` says which (the
    /// DNSBL zone, the EHLO name, the limit).
    Refused { session: u64, client: IpAddr, reason: Refusal, rule: String },
    /// A command of a served client was refused by a rule: at `step` (`mail`, `rcpt`,
    /// `data`), `rule` names it (`relay`, `ptr`, `size`, `rate`, `unknown_user`, …).
    Rejected {
        session: u64,
        client: IpAddr,
        step: &'static str,
        rule: &'static str,
        from: String,
        rcpt: String,
        reply: String,
    },
    /// Where a message's recipients go, at its first attempt: `route` is `local`, `held`
    /// (an accept-all domain with nowhere to send), `mx:DOMAIN` or `smart_host:HOST:PORT`;
    /// `rcpts` the recipients sharing it, comma-separated.
    Routed { id: QueueId, route: String, rcpts: String },
    /// A recipient's copy reached its destination: `via` is `mailbox`, `lmtp`, `forward` or
    /// the remote host that answered.
    Delivered { id: QueueId, rcpt: String, via: String, reply: String },
    /// A recipient waits for another attempt.
    Deferred { id: QueueId, rcpt: String, via: String, reply: String, next_attempt_ms: u64 },
    /// A recipient failed for good (a report goes to the sender when asked for).
    Failed { id: QueueId, rcpt: String, via: String, reply: String },
    /// An operator's decision on a queued message (`delete`, `bounce`, `release`).
    Operator { id: QueueId, action: &'static str },
    /// A message was accepted into quarantine (a milter or script asked): held until an
    /// operator releases it.
    Quarantined { id: QueueId, reason: String },
    /// A message was generated (`dsn`, `autoreply`, `forward`) because of message `about`.
    Generated { id: QueueId, kind: &'static str, about: QueueId, to: String },
    /// Exchanges of an SMTP session, for the W3C log (not the activity log).
    Session(Box<w3c::SessionLines>),
    /// Protocol trace lines of a session, for the debug log.
    Debug(Box<debug::DebugLines>),
}

impl What {
    /// Among events of the same millisecond, a message's receipt comes first.
    fn rank(&self) -> u8 {
        match self {
            What::Received { .. }
            | What::Refused { .. }
            | What::Rejected { .. }
            | What::Session(_)
            | What::Debug(_) => 0,
            _ => 1,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            What::Received { .. } => "received",
            What::Refused { .. } => "refused",
            What::Rejected { .. } => "rejected",
            What::Routed { .. } => "routed",
            What::Delivered { .. } => "delivered",
            What::Deferred { .. } => "deferred",
            What::Failed { .. } => "failed",
            What::Operator { .. } => "operator",
            What::Quarantined { .. } => "quarantined",
            What::Generated { .. } => "generated",
            What::Session(_) => "session",
            What::Debug(_) => "debug",
        }
    }

    /// Calls `f` with each field after the event's name, in order (no allocation).
    fn visit(&self, f: &mut dyn FnMut(&'static str, std::fmt::Arguments<'_>)) {
        match self {
            What::Received { id, session, client, helo, from, rcpts, size, tls, auth } => {
                f("id", format_args!("{id}"));
                f("session", format_args!("{session:016X}"));
                f("client", format_args!("{client}"));
                f("helo", format_args!("{helo}"));
                f("from", format_args!("<{from}>"));
                f("rcpts", format_args!("{rcpts}"));
                f("size", format_args!("{size}"));
                f("tls", format_args!("{}", tls.as_deref().unwrap_or("-")));
                f("auth", format_args!("{}", auth.as_deref().unwrap_or("-")));
            }
            What::Refused { session, client, reason, rule } => {
                f("session", format_args!("{session:016X}"));
                f("client", format_args!("{client}"));
                f("reason", format_args!("{}", reason.name()));
                f("rule", format_args!("{rule}"));
            }
            What::Rejected { session, client, step, rule, from, rcpt, reply } => {
                f("session", format_args!("{session:016X}"));
                f("client", format_args!("{client}"));
                f("step", format_args!("{step}"));
                f("rule", format_args!("{rule}"));
                f("from", format_args!("<{from}>"));
                if !rcpt.is_empty() {
                    f("rcpt", format_args!("<{rcpt}>"));
                }
                f("reply", format_args!("{reply}"));
            }
            What::Routed { id, route, rcpts } => {
                f("id", format_args!("{id}"));
                f("route", format_args!("{route}"));
                f("rcpts", format_args!("{rcpts}"));
            }
            What::Delivered { id, rcpt, via, reply } | What::Failed { id, rcpt, via, reply } => {
                f("id", format_args!("{id}"));
                f("rcpt", format_args!("<{rcpt}>"));
                f("via", format_args!("{via}"));
                f("reply", format_args!("{reply}"));
            }
            What::Deferred { id, rcpt, via, reply, next_attempt_ms } => {
                f("id", format_args!("{id}"));
                f("rcpt", format_args!("<{rcpt}>"));
                f("via", format_args!("{via}"));
                f("reply", format_args!("{reply}"));
                f("next_attempt", format_args!("{}", crate::util::time::rfc3339_ms(*next_attempt_ms)));
            }
            What::Operator { id, action } => {
                f("id", format_args!("{id}"));
                f("action", format_args!("{action}"));
            }
            What::Quarantined { id, reason } => {
                f("id", format_args!("{id}"));
                f("reason", format_args!("{reason}"));
            }
            What::Generated { id, kind, about, to } => {
                f("id", format_args!("{id}"));
                f("kind", format_args!("{kind}"));
                f("about", format_args!("{about}"));
                f("to", format_args!("{to}"));
            }
            What::Session(s) => {
                f("session", format_args!("{:016X}", s.session));
                f("exchanges", format_args!("{}", s.lines.len()));
            }
            What::Debug(d) => {
                f("session", format_args!("{:016X}", d.session));
                f("lines", format_args!("{}", d.lines.len()));
            }
        }
    }
}

/// Appends `v` to `out` as a `key=value` value: bare when it has no space, quote,
/// backslash or `=`; else quoted with `"` and `\` escaped. Control characters never reach
/// the log.
fn push_kv_value(out: &mut String, v: &str) {
    // Most values (ids, addresses, host names, numbers) need neither quotes nor escapes:
    // copied whole, not a character at a time.
    if !v.is_empty() && v.bytes().all(|b| b > b' ' && b < 0x7f && b != b'"' && b != b'\\' && b != b'=') {
        out.push_str(v);
        return;
    }
    let quote = v.is_empty() || v.contains([' ', '"', '\\', '=']);
    if quote {
        out.push('"');
    }
    for c in v.chars() {
        match c {
            c if c.is_control() => out.push('?'),
            '"' | '\\' if quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    if quote {
        out.push('"');
    }
}

#[cfg(test)]
fn kv_value(v: &str) -> String {
    let mut s = String::new();
    push_kv_value(&mut s, v);
    s
}

impl Activity {
    /// The line, without its newline.
    pub fn line(&self, format: LogFormat) -> String {
        let mut out = String::with_capacity(256);
        self.write_line(format, &mut out, &mut Scratch::default());
        out
    }

    /// Appends the line (without its newline) to `out`; `scratch` is reused from line to
    /// line by the writer.
    fn write_line(&self, format: LogFormat, out: &mut String, scratch: &mut Scratch) {
        use std::fmt::Write as _;
        let (scratch, ts) = (&mut scratch.value, scratch.clock.at(self.at_ms));
        match format {
            LogFormat::Kv => {
                out.push_str(&ts);
                out.push(' ');
                out.push_str(self.what.name());
                self.what.visit(&mut |k, v| {
                    scratch.clear();
                    let _ = scratch.write_fmt(v);
                    out.push(' ');
                    out.push_str(k);
                    out.push('=');
                    push_kv_value(out, scratch);
                });
            }
            LogFormat::Json => {
                let mut m = serde_json::Map::new();
                m.insert("ts".into(), ts.into());
                m.insert("event".into(), self.what.name().into());
                self.what.visit(&mut |k, v| {
                    m.insert(k.into(), v.to_string().into());
                });
                out.push_str(&serde_json::Value::Object(m).to_string());
            }
        }
    }
}

/// What the writer reuses from line to line: a value's text and the time stamp's second.
#[derive(Debug, Default)]
struct Scratch {
    value: String,
    clock: TsClock,
}

/// RFC 3339 time stamps with milliseconds, the calendar conversion done once a second.
#[derive(Debug, Default)]
struct TsClock {
    second: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS` of `second`.
    prefix: String,
}

impl TsClock {
    fn at(&mut self, unix_ms: u64) -> String {
        let sec = unix_ms / 1000;
        if self.second != Some(sec) {
            let full = crate::util::time::rfc3339_ms(sec * 1000);
            self.prefix = full[..full.len() - 5].to_string();
            self.second = Some(sec);
        }
        let ms = unix_ms % 1000;
        let mut ts = String::with_capacity(self.prefix.len() + 5);
        ts.push_str(&self.prefix);
        ts.push('.');
        ts.push(char::from(b'0' + (ms / 100) as u8));
        ts.push(char::from(b'0' + (ms / 10 % 10) as u8));
        ts.push(char::from(b'0' + (ms % 10) as u8));
        ts.push('Z');
        ts
    }
}

/// A thread's way into the activity log. See the module documentation.
#[derive(Debug)]
pub struct Emitter {
    tx: SyncSender<Activity>,
    dropped: Arc<AtomicU64>,
}

impl Emitter {
    /// Hands `a` to the writer, or counts it dropped when the writer is behind. Never waits.
    pub fn emit(&self, a: Activity) {
        match self.tx.try_send(a) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// `[log]`, as the writer needs it.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub dir: PathBuf,
    /// Write `activity.log`.
    pub activity: bool,
    pub format: LogFormat,
    /// Events a producer's channel holds before they are dropped.
    pub capacity: usize,
    /// The W3C log of sessions, when on.
    pub w3c: Option<w3c::W3cSettings>,
}

struct Shared {
    producers: Mutex<Vec<Receiver<Activity>>>,
    dropped: Arc<AtomicU64>,
    reopen: AtomicBool,
    stop: AtomicBool,
}

/// The writer thread and the files it writes (`activity.log` in `[log] dir`, the W3C log
/// in its `w3c/`).
pub struct ActivityLog {
    shared: Arc<Shared>,
    capacity: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ActivityLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityLog").finish_non_exhaustive()
    }
}

/// The activity log's file in `dir`.
pub fn activity_path(dir: &Path) -> PathBuf {
    dir.join("activity.log")
}

fn open(path: &Path) -> std::io::Result<BufWriter<File>> {
    Ok(BufWriter::with_capacity(64 * 1024, OpenOptions::new().create(true).append(true).open(path)?))
}

impl ActivityLog {
    /// Opens (appends to) the file and starts the writer.
    pub fn start(settings: LogSettings) -> std::io::Result<ActivityLog> {
        std::fs::create_dir_all(&settings.dir)?;
        let path = activity_path(&settings.dir);
        let mut out = if settings.activity { Some(open(&path)?) } else { None };
        let mut w3c = settings.w3c.clone().map(w3c::W3cLog::new).transpose()?;
        // Opened at its first line (the debug log is off unless switched on).
        let debug_path = settings.dir.join("debug.log");
        let mut debug_out: Option<BufWriter<File>> = None;
        let shared = Arc::new(Shared {
            producers: Mutex::new(Vec::new()),
            dropped: Arc::new(AtomicU64::new(0)),
            reopen: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let format = settings.format;
        let thread = std::thread::Builder::new().name("log-writer".into()).spawn(move || {
            let mut reported_drops = 0;
            let mut period = WRITER_PERIOD;
            // Drained, not yet written: waiting for REORDER_WINDOW_MS.
            // Each with its arrival number, so that an unstable sort keeps the order of
            // events of equal time and rank as they came (a stable sort allocates a scratch
            // buffer each time: with a fresh huge page to zero, 30% of this thread's time).
            let mut pending: Vec<(u64, Activity)> = Vec::new();
            let mut arrived = 0u64;
            let (mut line, mut scratch) = (String::with_capacity(512), Scratch::default());
            loop {
                let stopping = s.stop.load(Ordering::Acquire);
                if s.reopen.swap(false, Ordering::AcqRel) {
                    if let Some(o) = out.as_mut() {
                        let _ = o.flush();
                        match open(&path) {
                            Ok(f) => *o = f,
                            Err(e) => log::error!("activity log {}: reopening: {e}", path.display()),
                        }
                    }
                    if let Some(w) = w3c.as_mut()
                        && let Err(e) = w.reopen()
                    {
                        log::error!("W3C log {}: {e}", w.dir().display());
                    }
                    if let Some(mut d) = debug_out.take() {
                        let _ = d.flush();
                    }
                }
                let arrived_before = arrived;
                {
                    let mut producers = s.producers.lock().unwrap_or_else(|e| e.into_inner());
                    producers.retain(|rx| {
                        loop {
                            match rx.try_recv() {
                                Ok(a) => {
                                    pending.push((arrived, a));
                                    arrived += 1;
                                }
                                Err(std::sync::mpsc::TryRecvError::Empty) => break true,
                                Err(std::sync::mpsc::TryRecvError::Disconnected) => break false,
                            }
                        }
                    });
                }
                pending.sort_unstable_by_key(|(n, a)| (a.at_ms, a.what.rank(), *n));
                let now_ms = crate::util::time::Now::system().unix_ms;
                let ripe = if stopping {
                    pending.len()
                } else {
                    pending.partition_point(|(_, a)| a.at_ms + REORDER_WINDOW_MS <= now_ms)
                };
                // Nothing came and nothing waits: sleep longer next time.
                period = if arrived == arrived_before && pending.is_empty() {
                    (period * 2).min(WRITER_IDLE_PERIOD)
                } else {
                    WRITER_PERIOD
                };
                let mut wrote = ripe > 0;
                let mut w3c_wrote = false;
                let mut debug_wrote = false;
                for (_, a) in pending.drain(..ripe) {
                    if let What::Debug(lines) = &a.what {
                        if debug_out.is_none() {
                            match open(&debug_path) {
                                Ok(f) => debug_out = Some(f),
                                Err(e) => log::error!("debug log {}: {e}", debug_path.display()),
                            }
                        }
                        if let Some(d) = debug_out.as_mut() {
                            line.clear();
                            lines.write(&mut line);
                            let _ = d.write_all(line.as_bytes());
                            debug_wrote = true;
                        }
                        continue;
                    }
                    if let What::Session(lines) = &a.what {
                        if let Some(w) = w3c.as_mut() {
                            if let Err(e) = w.write(lines) {
                                log::error!("W3C log {}: {e}", w.dir().display());
                            }
                            w3c_wrote = true;
                        }
                        continue;
                    }
                    let Some(o) = out.as_mut() else { continue };
                    line.clear();
                    a.write_line(format, &mut line, &mut scratch);
                    line.push('\n');
                    let _ = o.write_all(line.as_bytes());
                }
                if w3c_wrote && let Some(w) = w3c.as_mut() {
                    let _ = w.flush();
                }
                if debug_wrote && let Some(d) = debug_out.as_mut() {
                    let _ = d.flush();
                }
                let dropped = s.dropped.load(Ordering::Relaxed);
                if dropped > reported_drops
                    && let Some(out) = out.as_mut()
                {
                    let at_ms = crate::util::time::Now::system().unix_ms;
                    let ts = crate::util::time::rfc3339_ms(at_ms);
                    let n = dropped - reported_drops;
                    let _ = match format {
                        LogFormat::Kv => writeln!(out, "{ts} events-dropped count={n}"),
                        LogFormat::Json => {
                            writeln!(out, "{}", serde_json::json!({"ts": ts, "event": "events-dropped", "count": n}))
                        }
                    };
                    reported_drops = dropped;
                    wrote = true;
                }
                if wrote
                    && let Some(out) = out.as_mut()
                    && let Err(e) = out.flush()
                {
                    log::error!("activity log {}: {e}", path.display());
                }
                if stopping {
                    break;
                }
                std::thread::park_timeout(period);
            }
        })?;
        Ok(ActivityLog { shared, capacity: settings.capacity.max(1), thread: Some(thread) })
    }

    /// A new producer's emitter (one per thread).
    pub fn emitter(&self) -> Emitter {
        let (tx, rx) = std::sync::mpsc::sync_channel(self.capacity);
        self.shared.producers.lock().unwrap_or_else(|e| e.into_inner()).push(rx);
        Emitter { tx, dropped: self.shared.dropped.clone() }
    }

    /// Reopens the file at its path (SIGUSR1, after a rename by logrotate).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// Events dropped so far (the writer was behind).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// The count of dropped events, for the metrics.
    pub fn dropped_counter(&self) -> Arc<AtomicU64> {
        self.shared.dropped.clone()
    }
}

impl Drop for ActivityLog {
    /// Writes what is left and stops the writer.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_stamps_from_the_second_cache() {
        let mut c = TsClock::default();
        for ms in [1_796_288_400_000, 1_796_288_400_007, 1_796_288_400_999, 1_796_288_401_050, 951_782_400_120] {
            assert_eq!(c.at(ms), crate::util::time::rfc3339_ms(ms));
        }
    }
    fn received() -> Activity {
        Activity {
            at_ms: 1_764_000_000_123,
            what: What::Received {
                id: QueueId(0x1234),
                session: 0x0100_0000_0000_0007,
                client: "192.0.2.7".parse().unwrap(),
                helo: "mx \"x\"".into(),
                from: "a@b.example".into(),
                rcpts: 2,
                size: 1000,
                tls: Some("TLSv1.3".into()),
                auth: None,
            },
        }
    }

    #[test]
    fn kv_and_json_lines() {
        let a = received();
        assert_eq!(
            a.line(LogFormat::Kv),
            "2025-11-24T16:00:00.123Z received id=0000000000001234 session=0100000000000007 client=192.0.2.7 \
             helo=\"mx \\\"x\\\"\" \
             from=<a@b.example> rcpts=2 size=1000 tls=TLSv1.3 auth=-"
        );
        let j: serde_json::Value = serde_json::from_str(&a.line(LogFormat::Json)).unwrap();
        assert_eq!(
            (j["event"].as_str(), j["id"].as_str(), j["helo"].as_str()),
            (Some("received"), Some("0000000000001234"), Some("mx \"x\""))
        );
        let r = Activity {
            at_ms: 0,
            what: What::Refused {
                session: 0,
                client: "192.0.2.9".parse().unwrap(),
                reason: Refusal::Dnsbl,
                rule: "bl.test".into(),
            },
        };
        assert_eq!(
            r.line(LogFormat::Kv),
            "1970-01-01T00:00:00.000Z refused session=0000000000000000 client=192.0.2.9 reason=DNSBL rule=bl.test"
        );
        assert_eq!(kv_value("a\r\nb"), "a??b", "no line breaks from a peer");
        assert_eq!(kv_value(""), "\"\"");
    }

    /// A producer never waits: past its channel's capacity events are dropped, counted,
    /// and the count is logged once the writer catches up.
    #[test]
    fn a_full_channel_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let log = ActivityLog::start(LogSettings {
            dir: dir.path().into(),
            activity: true,
            format: LogFormat::Kv,
            capacity: 4,
            w3c: None,
        })
        .unwrap();
        let e = log.emitter();
        {
            // Holding the producers' list keeps the writer from draining meanwhile: past the
            // 4 slots, every event is dropped, whatever the scheduling.
            let _writer_waits = log.shared.producers.lock().unwrap();
            for _ in 0..1000 {
                e.emit(received());
            }
        }
        let dropped = log.dropped();
        assert_eq!(dropped, 996);
        drop(e);
        drop(log);
        let text = std::fs::read_to_string(activity_path(dir.path())).unwrap();
        let lines = text.lines().filter(|l| l.contains(" received ")).count() as u64;
        assert_eq!(lines + dropped, 1000, "every event written or counted");
        let counted: u64 = text
            .lines()
            .filter_map(|l| l.split_once(" events-dropped count=").map(|(_, n)| n.parse::<u64>().unwrap()))
            .sum();
        assert_eq!(counted, dropped, "{text}");
    }
}
