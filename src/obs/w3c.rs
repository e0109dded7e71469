//! The W3C extended log of SMTP sessions (`[log.w3c]`): one line per exchange — the
//! connection and its banner, each command and its reply, each message's content and the
//! reply to it — in `<log dir>/w3c/`, with the directives a W3C log reader expects
//! (`#Software`, `#Version`, `#Date`, `#Fields`) at the top of every file.
//!
//! A session hands its exchanges over in batches ([`super::What::Session`]: at most
//! [`BATCH`] lines, and whatever is left when the connection closes), so a busy session
//! costs one hand-over per batch and not one per command. Lines of different sessions are
//! therefore in the order their batches arrived; each carries its own date and time.
//!
//! Fields, in the order configured: `date`, `time` (UTC, of the input that began the
//! exchange), `c-ip`, `s-ip`, `s-port`, `cs-method` (the verb; `CONNECT` for the banner,
//! `SASL` for a line of an AUTH exchange, `EOM` for a message's content), `cs-uri-query`
//! (the command's argument; only the mechanism of AUTH, nothing of SASL lines),
//! `sc-status` (the reply's code), `sc-bytes`, `cs-bytes`, `time-taken` (ms from the input
//! to the reply), `cs-username` (the login, once authenticated), `x-session-id`,
//! `x-queue-id` (on the `EOM` line of an accepted message), `x-tls`. A value that is
//! absent is `-`; spaces in a value become `+`.
//!
//! Rollover: `daily` (`smtp-YYYYMMDD.log`), `hourly` (`smtp-YYYYMMDDHH.log`), or `size`
//! (`smtp-YYYYMMDD-HHMMSS.log`, a new file once the current one reaches `max_size`).

use crate::spool::QueueId;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Most exchanges a session keeps before handing them to the writer.
pub const BATCH: usize = 32;
/// Longest `cs-uri-query` kept, in bytes.
pub const MAX_QUERY: usize = 256;

/// A field of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Field {
    #[serde(rename = "date")]
    Date,
    #[serde(rename = "time")]
    Time,
    #[serde(rename = "c-ip")]
    ClientIp,
    #[serde(rename = "s-ip")]
    ServerIp,
    #[serde(rename = "s-port")]
    ServerPort,
    #[serde(rename = "cs-method")]
    Method,
    #[serde(rename = "cs-uri-query")]
    Query,
    #[serde(rename = "sc-status")]
    Status,
    #[serde(rename = "sc-bytes")]
    ServerBytes,
    #[serde(rename = "cs-bytes")]
    ClientBytes,
    #[serde(rename = "time-taken")]
    TimeTaken,
    #[serde(rename = "cs-username")]
    Username,
    #[serde(rename = "x-session-id")]
    SessionId,
    #[serde(rename = "x-queue-id")]
    QueueId,
    #[serde(rename = "x-tls")]
    Tls,
}

impl Field {
    pub const ALL: [Field; 15] = [
        Field::Date,
        Field::Time,
        Field::ClientIp,
        Field::ServerIp,
        Field::ServerPort,
        Field::Method,
        Field::Query,
        Field::Status,
        Field::ServerBytes,
        Field::ClientBytes,
        Field::TimeTaken,
        Field::Username,
        Field::SessionId,
        Field::QueueId,
        Field::Tls,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Date => "date",
            Field::Time => "time",
            Field::ClientIp => "c-ip",
            Field::ServerIp => "s-ip",
            Field::ServerPort => "s-port",
            Field::Method => "cs-method",
            Field::Query => "cs-uri-query",
            Field::Status => "sc-status",
            Field::ServerBytes => "sc-bytes",
            Field::ClientBytes => "cs-bytes",
            Field::TimeTaken => "time-taken",
            Field::Username => "cs-username",
            Field::SessionId => "x-session-id",
            Field::QueueId => "x-queue-id",
            Field::Tls => "x-tls",
        }
    }
}

/// `[log.w3c] rollover`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rollover {
    #[default]
    Daily,
    Hourly,
    Size,
}

/// The log's settings, as the writer needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct W3cSettings {
    pub dir: PathBuf,
    pub fields: Vec<Field>,
    pub rollover: Rollover,
    /// With `Rollover::Size`: the size at which a new file begins.
    pub max_size: u64,
}

/// One exchange of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Unix ms of the input that began it.
    pub at_ms: u64,
    pub method: std::borrow::Cow<'static, str>,
    /// The argument: a range of the batch's [`SessionLines::text`] (one buffer for the
    /// batch, not a string per command).
    pub query: std::ops::Range<u32>,
    /// The reply's code; 0 when none was sent (the client left first).
    pub status: u16,
    pub sc_bytes: u64,
    pub cs_bytes: u64,
    /// None when no reply was sent.
    pub taken_ms: Option<u64>,
    /// The session was authenticated (as [`SessionLines::user`]).
    pub user: bool,
    pub queue_id: Option<QueueId>,
    pub tls: bool,
}

/// A batch of one session's exchanges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLines {
    pub session: u64,
    pub client: IpAddr,
    /// The address the client connected to (none when unknown).
    pub local: Option<SocketAddr>,
    /// The login of the session, once authenticated.
    pub user: Option<String>,
    /// The arguments of the lines' commands, one after the other.
    pub text: String,
    pub lines: Vec<Exchange>,
}

/// A value as the format wants it: `-` when empty, spaces as `+`, no control characters.
fn push_value(out: &mut String, v: &str) {
    if v.is_empty() {
        out.push('-');
        return;
    }
    // Most values (verbs, addresses, host names) need nothing replaced.
    if v.bytes().all(|b| b > b' ' && b < 0x7f) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        out.push(match c {
            ' ' => '+',
            c if c.is_control() => '?',
            c => c,
        });
    }
}

/// Appends `v` as 16 upper-case hexadecimal digits (a session or queue id, as `{:016X}`).
fn push_hex16(out: &mut impl std::fmt::Write, v: u64) {
    let _ = out.write_str(crate::util::stack_str::hex16(v).as_str());
}

/// A batch's fixed values, formatted once into a stack buffer and taken back by range.
struct Fixed {
    buf: [u8; 128],
    len: usize,
    start: usize,
}

impl Default for Fixed {
    fn default() -> Self {
        Fixed { buf: [0; 128], len: 0, start: 0 }
    }
}

impl Fixed {
    /// The range written since the last split.
    fn split(&mut self) -> std::ops::Range<usize> {
        let r = self.start..self.len;
        self.start = self.len;
        r
    }

    fn get(&self, r: std::ops::Range<usize>) -> &str {
        std::str::from_utf8(&self.buf[r]).unwrap_or("-")
    }
}

impl std::fmt::Write for Fixed {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Appends `v` in decimal (no formatting machinery: the writer does this for every field).
fn push_u64(out: &mut String, v: u64) {
    out.push_str(crate::util::stack_str::dec(v).as_str());
}

/// The `date` and `time` values of one second, kept while lines stay in that second.
#[derive(Debug, Default)]
pub struct Clock {
    second: Option<u64>,
    date: String,
    time: String,
}

impl Clock {
    fn at(&mut self, unix_ms: u64) -> (&str, &str) {
        let sec = unix_ms / 1000;
        if self.second != Some(sec) {
            let (y, mo, d, h, mi, s) = crate::util::time::utc(sec);
            self.date = format!("{y:04}-{mo:02}-{d:02}");
            self.time = format!("{h:02}:{mi:02}:{s:02}");
            self.second = Some(sec);
        }
        (&self.date, &self.time)
    }
}

impl SessionLines {
    /// Appends the batch's lines to `out`.
    pub fn write(&self, fields: &[Field], out: &mut String) {
        self.write_with(fields, &mut Clock::default(), out);
    }

    /// As [`SessionLines::write`], with the writer's `clock` (one calendar conversion a
    /// second).
    pub fn write_with(&self, fields: &[Field], clock: &mut Clock, out: &mut String) {
        use std::fmt::Write as _;
        // What is the same on every line of the batch, formatted once into `fixed` (on
        // the stack: an address, a port and a session id fit).
        let mut fixed = Fixed::default();
        let _ = write!(fixed, "{}", self.client);
        let client = fixed.split();
        let (s_ip, s_port) = match self.local {
            Some(a) => {
                let _ = write!(fixed, "{}", a.ip());
                let ip = fixed.split();
                let _ = write!(fixed, "{}", a.port());
                (ip, fixed.split())
            }
            None => {
                let _ = fixed.write_str("-");
                let ip = fixed.split();
                let _ = fixed.write_str("-");
                (ip, fixed.split())
            }
        };
        push_hex16(&mut fixed, self.session);
        let session = fixed.split();
        let (client, s_ip, s_port, session) =
            (fixed.get(client), fixed.get(s_ip), fixed.get(s_port), fixed.get(session));
        for x in &self.lines {
            let (date, time) = clock.at(x.at_ms);
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                match f {
                    Field::Date => out.push_str(date),
                    Field::Time => out.push_str(time),
                    Field::ClientIp => out.push_str(client),
                    Field::ServerIp => out.push_str(s_ip),
                    Field::ServerPort => out.push_str(s_port),
                    Field::Method => push_value(out, &x.method),
                    Field::Query => {
                        let q = self.text.get(x.query.start as usize..x.query.end as usize).unwrap_or("");
                        push_value(out, q)
                    }
                    Field::Status if x.status == 0 => out.push('-'),
                    Field::Status => push_u64(out, x.status as u64),
                    Field::ServerBytes => push_u64(out, x.sc_bytes),
                    Field::ClientBytes => push_u64(out, x.cs_bytes),
                    Field::TimeTaken => match x.taken_ms {
                        Some(t) => push_u64(out, t),
                        None => out.push('-'),
                    },
                    Field::Username => push_value(out, self.user.as_deref().filter(|_| x.user).unwrap_or("")),
                    Field::SessionId => out.push_str(session),
                    Field::QueueId => match x.queue_id {
                        Some(id) => push_hex16(out, id.0),
                        None => out.push('-'),
                    },
                    Field::Tls => out.push_str(if x.tls { "yes" } else { "no" }),
                }
            }
            out.push('\n');
        }
    }
}

/// The log's files: which one is current, and rolling over to the next.
pub struct W3cLog {
    settings: W3cSettings,
    current: Option<(String, BufWriter<File>, u64)>,
    /// The day or hour (since the epoch) the current file is for (daily, hourly).
    period: u64,
    line: String,
    clock: Clock,
}

impl W3cLog {
    pub fn new(settings: W3cSettings) -> std::io::Result<W3cLog> {
        std::fs::create_dir_all(&settings.dir)?;
        Ok(W3cLog { settings, current: None, period: 0, line: String::with_capacity(4096), clock: Clock::default() })
    }

    /// The file name for a line at `at_ms` (for size rollover: the name a new file gets).
    fn name_for(&self, at_ms: u64) -> String {
        let (y, mo, d, h, mi, s) = crate::util::time::utc(at_ms / 1000);
        match self.settings.rollover {
            Rollover::Daily => format!("smtp-{y:04}{mo:02}{d:02}.log"),
            Rollover::Hourly => format!("smtp-{y:04}{mo:02}{d:02}{h:02}.log"),
            Rollover::Size => format!("smtp-{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}.log"),
        }
    }

    /// Opens `name` for appending, writing the directives when it is new.
    fn open(&self, name: &str, at_ms: u64) -> std::io::Result<(BufWriter<File>, u64)> {
        let path = self.settings.dir.join(name);
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut len = f.metadata()?.len();
        let mut w = BufWriter::with_capacity(64 * 1024, f);
        if len == 0 {
            let (y, mo, d, h, mi, s) = crate::util::time::utc(at_ms / 1000);
            let fields: Vec<&str> = self.settings.fields.iter().map(|f| f.name()).collect();
            let head = format!(
                "#Software: ringmx {}\n#Version: 1.0\n#Date: {y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}\n#Fields: {}\n",
                env!("CARGO_PKG_VERSION"),
                fields.join(" ")
            );
            w.write_all(head.as_bytes())?;
            len = head.len() as u64;
        }
        Ok((w, len))
    }

    /// Writes a batch, rolling over first when its first line belongs to another file.
    pub fn write(&mut self, batch: &SessionLines) -> std::io::Result<()> {
        let Some(first) = batch.lines.first() else { return Ok(()) };
        // The period of a line by arithmetic, not by formatting its file name.
        let period = match self.settings.rollover {
            Rollover::Daily => first.at_ms / 86_400_000,
            Rollover::Hourly => first.at_ms / 3_600_000,
            Rollover::Size => 0,
        };
        let roll = match (&self.current, self.settings.rollover) {
            (None, _) => true,
            (Some((_, _, len)), Rollover::Size) => *len >= self.settings.max_size,
            (Some(_), _) => period != self.period,
        };
        if roll {
            if let Some((_, mut w, _)) = self.current.take() {
                w.flush()?;
            }
            let mut name = self.name_for(first.at_ms);
            if self.settings.rollover == Rollover::Size {
                // Two files begun in the same second: the later one gets a suffix.
                let mut n = 1;
                while self.settings.dir.join(&name).metadata().is_ok_and(|m| m.len() >= self.settings.max_size) {
                    name = format!("{}-{n}.log", self.name_for(first.at_ms).trim_end_matches(".log"));
                    n += 1;
                }
            }
            let (w, len) = self.open(&name, first.at_ms)?;
            self.current = Some((name, w, len));
            self.period = period;
        }
        self.line.clear();
        batch.write_with(&self.settings.fields, &mut self.clock, &mut self.line);
        let Some((_, w, len)) = self.current.as_mut() else { return Ok(()) };
        w.write_all(self.line.as_bytes())?;
        *len += self.line.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        match self.current.as_mut() {
            Some((_, w, _)) => w.flush(),
            None => Ok(()),
        }
    }

    /// Reopens the current file by name (after logrotate moved it).
    pub fn reopen(&mut self) -> std::io::Result<()> {
        if let Some((_, mut w, _)) = self.current.take() {
            w.flush()?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(at_ms: u64) -> SessionLines {
        SessionLines {
            session: 0x0100_0000_0000_0002,
            client: "192.0.2.7".parse().unwrap(),
            local: Some("198.51.100.1:25".parse().unwrap()),
            user: Some("alice".into()),
            text: "FROM:<a@b.example> SIZE=10".into(),
            lines: vec![
                Exchange {
                    at_ms,
                    method: "MAIL".into(),
                    query: 0..26,
                    status: 250,
                    sc_bytes: 14,
                    cs_bytes: 36,
                    taken_ms: Some(0),
                    user: false,
                    queue_id: None,
                    tls: false,
                },
                Exchange {
                    at_ms: at_ms + 20,
                    method: "EOM".into(),
                    query: 26..26,
                    status: 250,
                    sc_bytes: 40,
                    cs_bytes: 1000,
                    taken_ms: Some(3),
                    user: true,
                    queue_id: Some(QueueId(0xAB)),
                    tls: true,
                },
            ],
        }
    }

    #[test]
    fn hex_and_values_without_format() {
        for v in [0, 0xAB, 0x0100_0000_0000_0002, u64::MAX] {
            let mut s = String::new();
            push_hex16(&mut s, v);
            assert_eq!(s, format!("{v:016X}"));
        }
        for (v, want) in
            [("", "-"), ("MAIL", "MAIL"), ("FROM:<a@b> SIZE=1", "FROM:<a@b>+SIZE=1"), ("a\tb\u{85}é", "a?b?é")]
        {
            let mut s = String::new();
            push_value(&mut s, v);
            assert_eq!(s, want, "{v:?}");
        }
    }

    #[test]
    fn decimal_without_format() {
        for v in [0, 7, 10, 999, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, v);
            assert_eq!(s, v.to_string());
        }
    }

    #[test]
    fn lines_with_every_field() {
        let mut out = String::new();
        batch(1_796_288_400_000).write(&Field::ALL, &mut out);
        assert_eq!(
            out,
            "2026-12-03 09:00:00 192.0.2.7 198.51.100.1 25 MAIL FROM:<a@b.example>+SIZE=10 250 14 36 0 - 0100000000000002 - no\n\
             2026-12-03 09:00:00 192.0.2.7 198.51.100.1 25 EOM - 250 40 1000 3 alice 0100000000000002 00000000000000AB yes\n"
        );
        let mut some = String::new();
        batch(1_796_288_400_000).write(&[Field::Time, Field::Status, Field::QueueId], &mut some);
        assert_eq!(some, "09:00:00 250 -\n09:00:00 250 00000000000000AB\n");
    }

    #[test]
    fn directives_then_lines_and_daily_files() {
        let dir = tempfile::tempdir().unwrap();
        let settings = W3cSettings {
            dir: dir.path().to_path_buf(),
            fields: vec![Field::Date, Field::Method],
            rollover: Rollover::Daily,
            max_size: 0,
        };
        let mut log = W3cLog::new(settings).unwrap();
        log.write(&batch(1_796_288_400_000)).unwrap();
        log.write(&batch(1_796_288_400_000 + 86_400_000)).unwrap();
        log.flush().unwrap();
        let first = std::fs::read_to_string(dir.path().join("smtp-20261203.log")).unwrap();
        assert_eq!(
            first,
            format!(
                "#Software: ringmx {}\n#Version: 1.0\n#Date: 2026-12-03 09:00:00\n#Fields: date cs-method\n\
                 2026-12-03 MAIL\n2026-12-03 EOM\n",
                env!("CARGO_PKG_VERSION")
            )
        );
        let second = std::fs::read_to_string(dir.path().join("smtp-20261204.log")).unwrap();
        assert!(second.starts_with("#Software: ringmx ") && second.ends_with("2026-12-04 MAIL\n2026-12-04 EOM\n"));
    }

    #[test]
    fn rollover_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let settings = W3cSettings {
            dir: dir.path().to_path_buf(),
            fields: Field::ALL.to_vec(),
            rollover: Rollover::Size,
            max_size: 400,
        };
        let mut log = W3cLog::new(settings).unwrap();
        // Every batch in the same second: the names differ by their suffix.
        for _ in 0..6 {
            log.write(&batch(1_796_288_400_000)).unwrap();
        }
        log.flush().unwrap();
        let mut names: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert!(names.len() >= 2, "{names:?}");
        assert_eq!(names[0], "smtp-20261203-090000-1.log");
        for n in &names {
            let text = std::fs::read_to_string(dir.path().join(n)).unwrap();
            assert!(text.starts_with("#Software: ringmx "), "{n}: every file has the directives");
            assert_eq!(text.lines().filter(|l| l.starts_with("2026-12-03")).count() % 2, 0, "whole batches");
        }
    }
}
