//! What a session records about its exchanges: how long each phase took to be answered
//! (the shard's latency histograms) and, with the W3C log on, one line per exchange.
//!
//! An exchange begins when its input is complete: the connection (answered by the banner),
//! a command line, a line of an AUTH exchange, or a message's content. It ends when the
//! driver is about to send the output that holds its reply ([`Session::flushed`]), or when
//! the next exchange begins in the same turn (pipelining: then at the same instant). Its
//! reply is what the session wrote to its output in between. A session that waits for a
//! DNS answer, a password check or the spool keeps the exchange open across turns, so its
//! time includes the wait.

use super::{Phase, Session};
use crate::obs::tally::Stage;
use crate::obs::w3c::{BATCH, Exchange, MAX_QUERY, SessionLines};
use crate::spool::QueueId;
use crate::util::time::Now;
use std::borrow::Cow;
use std::time::Instant;

/// The exchange waiting for its reply to go out.
#[derive(Debug)]
pub(super) struct Open {
    stage: Option<Stage>,
    start: Instant,
    /// Where this exchange's replies begin in the session's output.
    mark: usize,
    /// Its W3C line, once the reply is known (only with the W3C log on).
    line: Option<Exchange>,
}

/// The phase whose latency a command's reply ends, by its verb.
fn stage_of(verb: &[u8]) -> Option<Stage> {
    match verb4(verb) {
        Some(v) if v == *b"EHLO" || v == *b"HELO" => Some(Stage::Ehlo),
        Some(v) if v == *b"MAIL" => Some(Stage::Mail),
        Some(v) if v == *b"RCPT" => Some(Stage::Rcpt),
        _ => None,
    }
}

/// A four-letter verb upper-cased in place (every command passes here: one comparison of
/// four bytes per verb, no upper-cased copy on the heap).
fn verb4(verb: &[u8]) -> Option<[u8; 4]> {
    let v: [u8; 4] = verb.try_into().ok()?;
    Some(v.map(|b| b.to_ascii_uppercase()))
}

/// The verbs of RFC 5321 and its extensions, named without an allocation.
const VERBS: [&str; 15] = [
    "EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP", "AUTH", "ETRN",
    "TURN",
];

/// A command's verb, upper case.
fn verb_name(verb: &[u8]) -> Cow<'static, str> {
    let known = match verb4(verb) {
        Some(v) => VERBS.iter().find(|n| n.as_bytes() == v),
        None if verb.eq_ignore_ascii_case(b"STARTTLS") => Some(&"STARTTLS"),
        None => None,
    };
    match known {
        Some(v) => Cow::Borrowed(v),
        None => Cow::Owned(text(verb, 16).to_ascii_uppercase()),
    }
}

/// Appends at most `max` bytes of `b` to `out` as text, cut at a character boundary.
fn push_text(out: &mut String, b: &[u8], max: usize) {
    let b = &b[..b.len().min(max)];
    match std::str::from_utf8(b) {
        Ok(s) => out.push_str(s),
        Err(_) => out.push_str(&text(b, max)),
    }
}

/// Text of at most `max` bytes of `b`, cut at a character boundary.
fn text(b: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(max)]);
    s.trim_end_matches('\u{FFFD}').to_string()
}

/// The code of the last complete reply in `out` (0: none).
fn last_code(out: &[u8]) -> u16 {
    // Every exchange ends here: the last line is looked at first (a reply ends the output
    // but for a client that left first), the others only when it is not a reply's end.
    let body = out.strip_suffix(b"\r\n").unwrap_or(out);
    let last = &body[body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)..];
    match last {
        [a, b, c] | [a, b, c, b' ', ..] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
            [a, b, c].iter().fold(0u16, |n, &&d| n * 10 + (d - b'0') as u16)
        }
        _ => crate::obs::tally::reply_lines(out).filter_map(|(code, _)| u16::try_from(code).ok()).last().unwrap_or(0),
    }
}

impl Session {
    /// `line` gives the W3C method, the argument (appended to the batch's text) and the
    /// client's bytes; it is called only with the W3C log on.
    fn open(&mut self, now: Now, stage: Option<Stage>, line: impl FnOnce(&mut String) -> (Cow<'static, str>, u64)) {
        self.close_exchange(now.mono);
        let line = self.cfg.w3c.then(|| {
            if self.w3c_lines.capacity() == 0 {
                // A batch's room at once, not grown by copying as its lines come.
                self.w3c_lines.reserve(BATCH);
                self.w3c_text.reserve(256);
            }
            let start = self.w3c_text.len() as u32;
            let (method, cs_bytes) = line(&mut self.w3c_text);
            Exchange {
                at_ms: now.unix_ms,
                method,
                query: start..self.w3c_text.len() as u32,
                status: 0,
                sc_bytes: 0,
                cs_bytes,
                taken_ms: None,
                user: false,
                queue_id: None,
                tls: false,
            }
        });
        self.exchange = Some(Open { stage, start: now.mono, mark: self.out.len(), line });
    }

    /// The connection: the banner answers it.
    pub(super) fn open_connect(&mut self, now: Now) {
        self.open(now, Some(Stage::Banner), |_| ("CONNECT".into(), 0));
    }

    /// A command line (without its line ending).
    pub(super) fn open_command(&mut self, now: Now, line: &[u8]) {
        let verb = line.split(|&b| b == b' ').next().unwrap_or(&[]);
        if self.debug.is_some() {
            let text = if verb.eq_ignore_ascii_case(b"AUTH") {
                // The mechanism only: an initial response is a secret.
                let mech = line.split(|&b| b == b' ').nth(1).unwrap_or(&[]);
                let hidden =
                    if line.split(|&b| b == b' ').nth(2).is_some() { " <initial response hidden>" } else { "" };
                format!("{} {}{hidden}", text(verb, 16), text(mech, 32))
            } else {
                text(line, crate::obs::debug::MAX_LINE)
            };
            self.trace(now, true, text);
        }
        self.open(now, stage_of(verb), |query| {
            let method = verb_name(verb);
            let rest = line.get(verb.len() + 1..).unwrap_or(&[]);
            // AUTH: the mechanism only, never an initial response.
            let arg = if method.as_ref() == "AUTH" { rest.split(|&b| b == b' ').next().unwrap_or(&[]) } else { rest };
            push_text(query, arg, MAX_QUERY);
            (method, line.len() as u64 + 2)
        });
    }

    /// A line of an AUTH exchange: its reply is logged, its content never.
    pub(super) fn open_sasl(&mut self, now: Now, len: usize) {
        self.trace_with(now, true, || format!("<SASL response of {len} bytes hidden>"));
        self.open(now, None, |_| ("SASL".into(), len as u64 + 2));
    }

    /// A message's content is complete: the reply is the spool's answer. After BDAT LAST
    /// the chunk's command is that exchange; after DATA, a new one (`EOM`) begins.
    pub(super) fn open_content(&mut self, now: Now, size: u64) {
        self.trace_with(now, true, || format!("<message content of {size} bytes>"));
        if let Some(o) = self.exchange.as_mut()
            && o.line.as_ref().is_none_or(|l| l.method == "BDAT")
            && self.out.len() == o.mark
        {
            o.stage = Some(Stage::Data);
            o.start = now.mono;
            return;
        }
        self.open(now, Some(Stage::Data), |_| ("EOM".into(), size));
    }

    /// The message of the open exchange was queued as `id`.
    pub(super) fn exchange_queued(&mut self, id: QueueId) {
        if let Some(l) = self.exchange.as_mut().and_then(|o| o.line.as_mut()) {
            l.queue_id = Some(id);
        }
    }

    /// Ends the open exchange at `now` with the replies written since it began.
    fn close_exchange(&mut self, now: Instant) {
        let Some(o) = self.exchange.take() else { return };
        let taken = now.saturating_duration_since(o.start);
        let replies = self.out.get(o.mark..).unwrap_or(&[]);
        // Unanswered (the client left first): no latency to count.
        if !replies.is_empty()
            && let (Some(s), Some(t)) = (o.stage, &self.tally)
        {
            t.borrow_mut().observe(s, taken);
        }
        let Some(mut l) = o.line else { return };
        l.status = last_code(replies);
        l.sc_bytes = replies.len() as u64;
        l.taken_ms = (l.status != 0).then_some(taken.as_millis() as u64);
        l.user = self.auth.is_some();
        l.tls = self.tls.is_some();
        self.w3c_lines.push(l);
        if self.w3c_lines.len() >= BATCH {
            let a = self.take_w3c_lines();
            self.actions.push_back(super::Action::Log(Box::new(a)));
        }
    }

    fn take_w3c_lines(&mut self) -> crate::obs::Activity {
        let lines = std::mem::take(&mut self.w3c_lines);
        let text = std::mem::take(&mut self.w3c_text);
        let at_ms = lines.last().map_or(0, |l| l.at_ms);
        let what = crate::obs::What::Session(Box::new(SessionLines {
            session: self.id,
            client: self.peer.ip(),
            local: self.local,
            user: self.auth.as_ref().map(|a| a.login.clone()),
            text,
            lines,
        }));
        crate::obs::Activity { at_ms, what }
    }

    /// The driver is about to send [`Session::output`] at `now`: an exchange whose reply
    /// is in it (output written since it began, and the session no longer waits for a DNS
    /// answer, a password or the spool) ends now.
    pub fn flushed(&mut self, now: Now) {
        if self.debug.is_some() && !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                self.trace(now, false, String::from_utf8_lossy(line).into_owned());
            }
            self.out = out;
        }
        let Some(o) = self.exchange.as_mut() else { return };
        let waiting = matches!(self.phase, Phase::Waiting | Phase::Spooling | Phase::Proxy);
        if self.out.len() > o.mark && !waiting {
            self.close_exchange(now.mono);
        } else {
            // Not answered yet (a wait, or a BDAT chunk still coming): the output is sent
            // and cleared, and the reply to come starts at its beginning.
            o.mark = 0;
        }
    }

    /// The connection is gone: the W3C and debug lines not yet handed over (an exchange
    /// left without a reply has no status), for the driver to hand to the log.
    pub fn end_trace(&mut self, now: Now) -> impl Iterator<Item = crate::obs::Activity> + use<> {
        self.close_exchange(now.mono);
        let w3c = (!self.w3c_lines.is_empty()).then(|| self.take_w3c_lines());
        w3c.into_iter().chain(self.take_debug_lines())
    }

    /// Traces the protocol when the debug log is on for this session's client.
    pub(super) fn trace_if_debugged(&mut self) {
        let on = self.cfg.debug.as_ref().is_some_and(|d| d.applies(self.peer.ip()));
        if on != self.debug.is_some() {
            self.debug = on.then(Vec::new);
        }
    }

    fn trace(&mut self, now: Now, from_client: bool, text: String) {
        self.trace_with(now, from_client, || text);
    }

    /// As [`Session::trace`], the text made only when the session is traced: a message's
    /// content line must not cost a `format!` on every message with the debug log off.
    fn trace_with(&mut self, now: Now, from_client: bool, text: impl FnOnce() -> String) {
        let Some(lines) = self.debug.as_mut() else { return };
        let text = text();
        lines.push(crate::obs::debug::DebugLine { at_ms: now.unix_ms, from_client, text });
        if lines.len() >= crate::obs::debug::BATCH
            && let Some(a) = self.take_debug_lines()
        {
            self.actions.push_back(super::Action::Log(Box::new(a)));
        }
    }

    fn take_debug_lines(&mut self) -> Option<crate::obs::Activity> {
        let lines = std::mem::take(self.debug.as_mut()?);
        let at_ms = lines.last()?.at_ms;
        let what = crate::obs::What::Debug(Box::new(crate::obs::debug::DebugLines {
            session: self.id,
            client: self.peer.ip(),
            lines,
        }));
        Some(crate::obs::Activity { at_ms, what })
    }

    /// The address the client connected to (for the W3C log's `s-ip` and `s-port`).
    pub fn set_local(&mut self, local: std::net::SocketAddr) {
        self.local = Some(local);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_and_verbs() {
        assert_eq!(last_code(b"250-a\r\n250 b\r\n"), 250);
        assert_eq!(last_code(b"250 2.1.0 Ok\r\n550 5.1.1 no\r\n"), 550);
        assert_eq!(last_code(b""), 0);
        assert_eq!(stage_of(b"ehlo"), Some(Stage::Ehlo));
        assert_eq!(stage_of(b"NOOP"), None);
        assert_eq!(text("é".as_bytes(), 1), "");
    }
}
