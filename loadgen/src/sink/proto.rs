//! Sans-IO SMTP server session of the discard sink.
//!
//! The contract, for any event loop (epoll here; an io_uring runtime works the same way):
//!
//! 1. [`SinkSession::new`] when a connection is accepted: the greeting is queued.
//! 2. [`SinkSession::handle_input`] with every chunk read, in order. It consumes all of it
//!    (a partial command line is kept inside), so the caller can read into one shared buffer.
//! 3. [`SinkSession::poll_transmit`] gives the reply bytes that may be sent at `now` (replies
//!    held back by an injected delay are released in order); report what was written with
//!    [`SinkSession::transmitted`].
//! 4. [`SinkSession::poll_timeout`]: when held replies become due. Call `poll_transmit` then.
//! 5. [`SinkSession::poll_action`]: [`Action::StartTls`] after the 220 to STARTTLS has been
//!    sent (switch the transport, then [`SinkSession::tls_started`]); [`Action::Close`] once
//!    the 221 to QUIT has been sent.
//!
//! Behaviour follows RFC 5321 §4.1 (commands, sequencing, 503 for bad sequence), RFC 2920
//! (replies in command order, DATA refused with 554 when no recipient was accepted),
//! RFC 3030 (BDAT chunks are read whatever the state, then answered), RFC 3207 (STARTTLS,
//! bytes pipelined after it are discarded) and RFC 4954 (AUTH PLAIN and LOGIN).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memchr::memmem;

use crate::report::recorder::CodeTable;
use crate::rng::Rng;
use crate::sink::replies::{PhaseReplies, SinkPhase};
use ringmx_b64 as b64;

/// A command line longer than this (RFC 5321 §4.5.3.1.4 says 512) is refused and skipped.
const MAX_COMMAND_LINE: usize = 4096;
/// Unsent reply bytes at which the session stops reading its input: a client that
/// pipelines without reading its replies cannot make the sink buffer without bound. The
/// unprocessed input is held until [`SinkSession::resume`].
pub const OUTPUT_PAUSE: usize = 64 * 1024;
/// Input held while paused past which the connection is closed (reached only by a driver
/// that reads on when [`SinkSession::wants_input`] says no).
const MAX_HELD_INPUT: usize = 256 * 1024;

/// What every sink session shares. Build with [`SinkConfig::new`], adjust, then
/// [`SinkConfig::build`].
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub hostname: String,
    pub pipelining: bool,
    pub chunking: bool,
    /// Advertise STARTTLS (the event loop must have a TLS config).
    pub starttls: bool,
    /// Accept AUTH PLAIN/LOGIN with these credentials; AUTH is not offered when `None`.
    pub auth: Option<(String, String)>,
    /// Announced with SIZE (RFC 1870); a MAIL declaring more gets 552.
    pub max_message_size: u64,
    /// Replies per phase, indexed by [`SinkPhase::index`].
    pub replies: [PhaseReplies; 6],
    /// Delays before the reply of each phase, indexed by [`SinkPhase::index`].
    pub delays: [Duration; 6],
    ehlo_plain: Vec<u8>,
    ehlo_tls: Vec<u8>,
}

impl SinkConfig {
    pub fn new(hostname: &str) -> Self {
        let banner = format!("220 {hostname} ESMTP ringmx-loadgen sink");
        SinkConfig {
            hostname: hostname.to_string(),
            pipelining: true,
            chunking: true,
            starttls: false,
            auth: None,
            max_message_size: 100 << 20,
            replies: [
                PhaseReplies::new(&banner),
                PhaseReplies::new("250 ok"), // only used when overridden; see `ehlo_reply`
                PhaseReplies::new("250 2.1.0 Ok"),
                PhaseReplies::new("250 2.1.5 Ok"),
                PhaseReplies::new("354 End data with <CR><LF>.<CR><LF>"),
                PhaseReplies::new("250 2.0.0 Ok: queued"),
            ],
            delays: [Duration::ZERO; 6],
            ehlo_plain: Vec::new(),
            ehlo_tls: Vec::new(),
        }
    }

    /// Renders the EHLO replies once; call after the fields are final.
    pub fn build(mut self) -> Arc<SinkConfig> {
        self.ehlo_plain = self.render_ehlo(false);
        self.ehlo_tls = self.render_ehlo(true);
        Arc::new(self)
    }

    fn render_ehlo(&self, tls: bool) -> Vec<u8> {
        let mut lines = vec![self.hostname.clone()];
        if self.pipelining {
            lines.push("PIPELINING".into());
        }
        lines.push(format!("SIZE {}", self.max_message_size));
        lines.push("8BITMIME".into());
        lines.push("SMTPUTF8".into());
        lines.push("ENHANCEDSTATUSCODES".into());
        if self.chunking {
            lines.push("CHUNKING".into());
        }
        if self.starttls && !tls {
            lines.push("STARTTLS".into());
        }
        if self.auth.is_some() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        let mut out = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
        }
        out
    }
}

/// The sink's counters. One per event-loop thread, merged at the end.
#[derive(Debug, Clone, Default)]
pub struct SinkStats {
    pub connections: u64,
    /// Messages accepted (a 2xx after the data).
    pub messages: u64,
    /// Recipients of accepted messages.
    pub recipients: u64,
    /// Message bytes of accepted messages, as received (DATA: dot-stuffed, without the dot).
    pub bytes: u64,
    pub tls_handshakes: u64,
    pub auth_successes: u64,
    /// Every reply sent, by code, with the first text.
    pub codes: CodeTable,
}

impl SinkStats {
    pub fn merge(&mut self, o: &SinkStats) {
        self.connections += o.connections;
        self.messages += o.messages;
        self.recipients += o.recipients;
        self.bytes += o.bytes;
        self.tls_handshakes += o.tls_handshakes;
        self.auth_successes += o.auth_successes;
        self.codes.merge(&o.codes);
    }
}

/// What the event loop must do besides moving bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The 220 to STARTTLS is sent: start the TLS handshake.
    StartTls,
    /// Close the connection (after QUIT, or a fatal condition).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Command,
    Data,
    /// Reading a BDAT chunk: bytes left, whether it is the last, whether it is accepted.
    Bdat {
        remaining: u64,
        last: bool,
        ok: bool,
    },
    AuthPlain,
    AuthLoginUser,
    AuthLoginPassword,
    /// STARTTLS accepted; input is ignored until the handshake.
    AwaitTls,
    /// QUIT answered (or fatal): close once the output is sent.
    Closing,
}

/// Finds `CRLF.CRLF` across reads. The state is how much of it ends the bytes seen so far;
/// it starts at 2, as if a CRLF had just been seen, so an empty message works. A bare LF
/// never matches (no SMTP smuggling through `\n.\n` or `\r.\r`).
#[derive(Debug, Clone, Copy)]
struct EodScanner(usize);

const EOD: &[u8; 5] = b"\r\n.\r\n";

impl EodScanner {
    fn new() -> Self {
        EodScanner(2)
    }

    fn step(s: usize, b: u8) -> usize {
        if EOD[s] == b {
            s + 1
        } else if b == b'\r' {
            1
        } else {
            0
        }
    }

    /// Returns the length of `input` up to and including the terminator, if it ends here.
    fn find(&mut self, input: &[u8]) -> Option<usize> {
        // A match begun in an earlier chunk can only finish within the first 4 bytes.
        let mut s = self.0;
        for (i, &b) in input.iter().enumerate().take(4) {
            if s == 0 {
                break;
            }
            s = Self::step(s, b);
            if s == EOD.len() {
                return Some(i + 1);
            }
        }
        if let Some(p) = memmem::find(input, EOD) {
            return Some(p + EOD.len());
        }
        // No match: the state is the longest pattern prefix ending the input, which lies in
        // its last 4 bytes (or, for a short input, continues the previous state).
        self.0 = if input.len() >= 4 {
            input[input.len() - 4..].iter().fold(0, |s, &b| Self::step(s, b))
        } else {
            input.iter().fold(self.0, |s, &b| Self::step(s, b))
        };
        None
    }
}

/// One connection's SMTP state. See the module docs for the contract.
#[derive(Debug)]
pub struct SinkSession {
    cfg: Arc<SinkConfig>,
    state: State,
    rng: Rng,
    tls: bool,
    greeted: bool,
    authenticated: bool,
    /// AUTH LOGIN: whether the user name given matched.
    login_user_ok: bool,
    mail: bool,
    rcpts: u32,
    msg_bytes: u64,
    eod: EodScanner,
    /// A command line split across reads.
    partial: Vec<u8>,
    /// Skipping the rest of an over-long line.
    skipping_line: bool,
    out: Vec<u8>,
    sent: usize,
    /// Bytes of `out` that may be sent now.
    released: usize,
    /// Delayed replies: `(due, end offset in out)`, in order.
    held: VecDeque<(Instant, usize)>,
    action: Option<Action>,
    /// Input not processed yet because the replies are backed up.
    held_input: Vec<u8>,
}

impl SinkSession {
    /// A new connection; `seed` varies the random reply choices between connections,
    /// `tls` is true for an implicit-TLS listener. Counts the connection.
    pub fn new(cfg: Arc<SinkConfig>, now: Instant, seed: u64, tls: bool, stats: &mut SinkStats) -> Self {
        stats.connections += 1;
        let mut s = SinkSession {
            cfg,
            state: State::Command,
            rng: Rng::new(seed),
            tls,
            greeted: false,
            authenticated: false,
            login_user_ok: false,
            mail: false,
            rcpts: 0,
            msg_bytes: 0,
            eod: EodScanner::new(),
            partial: Vec::new(),
            skipping_line: false,
            out: Vec::with_capacity(512),
            sent: 0,
            released: 0,
            held: VecDeque::new(),
            action: None,
            held_input: Vec::new(),
        };
        let cfg = Arc::clone(&s.cfg);
        let banner = cfg.replies[SinkPhase::Banner.index()].pick(&mut s.rng);
        s.reply(now, SinkPhase::Banner, banner.code, &banner.wire, stats);
        if banner.code != 220 {
            // RFC 5321 §3.1: a 554 greeting; we then close (a client may still QUIT first).
            s.state = State::Closing;
        }
        s
    }

    /// Takes all of `input`. Replies are queued for [`Self::poll_transmit`]; once
    /// [`OUTPUT_PAUSE`] bytes of them are unsent, the rest of the input is held (and
    /// [`Self::wants_input`] is false) until [`Self::resume`].
    pub fn handle_input(&mut self, now: Instant, input: &[u8], stats: &mut SinkStats) {
        if !self.held_input.is_empty() {
            if self.held_input.len() + input.len() > MAX_HELD_INPUT {
                self.held_input = Vec::new();
                self.state = State::Closing;
                return;
            }
            self.held_input.extend_from_slice(input);
            return;
        }
        let used = self.process(now, input, stats);
        if used < input.len() {
            self.held_input.extend_from_slice(&input[used..]);
        }
    }

    /// Should the driver read more? Not while input is held or the replies are backed up.
    pub fn wants_input(&self) -> bool {
        self.held_input.is_empty() && self.unsent() < OUTPUT_PAUSE
    }

    fn unsent(&self) -> usize {
        self.out.len() - self.sent
    }

    /// The driver sent replies: go on with held input once they are below half the pause
    /// mark. Returns true when it processed some.
    pub fn resume(&mut self, now: Instant, stats: &mut SinkStats) -> bool {
        if self.held_input.is_empty() || self.unsent() >= OUTPUT_PAUSE / 2 {
            return false;
        }
        let held = std::mem::take(&mut self.held_input);
        let used = self.process(now, &held, stats);
        if used < held.len() {
            self.held_input = held[used..].to_vec();
        }
        true
    }

    /// Runs the protocol over `input`; returns the bytes used (all of them unless the
    /// replies backed up).
    fn process(&mut self, now: Instant, input: &[u8], stats: &mut SinkStats) -> usize {
        let mut i = 0;
        while i < input.len() {
            let rest = &input[i..];
            if self.unsent() >= OUTPUT_PAUSE && !matches!(self.state, State::Data | State::Bdat { .. }) {
                return i;
            }
            match self.state {
                State::Closing | State::AwaitTls => return input.len(),
                State::Data => match self.eod.find(rest) {
                    Some(n) => {
                        // The final ".\r\n" is not part of the message (it may have
                        // started in an earlier read).
                        self.msg_bytes = (self.msg_bytes + n as u64).saturating_sub(3);
                        i += n;
                        self.end_of_data(now, true, stats);
                    }
                    None => {
                        self.msg_bytes += rest.len() as u64;
                        i = input.len();
                    }
                },
                State::Bdat { remaining, last, ok } => {
                    let n = (rest.len() as u64).min(remaining);
                    i += n as usize;
                    self.msg_bytes += n;
                    let remaining = remaining - n;
                    self.state = State::Bdat { remaining, last, ok };
                    if remaining == 0 {
                        self.state = State::Command;
                        self.bdat_chunk_done(now, last, ok, stats);
                    }
                }
                State::Command | State::AuthPlain | State::AuthLoginUser | State::AuthLoginPassword => {
                    match memchr::memchr(b'\n', rest) {
                        Some(nl) => {
                            i += nl + 1;
                            if self.skipping_line {
                                self.skipping_line = false;
                            } else if self.partial.is_empty() {
                                self.line(now, &rest[..nl + 1], stats);
                            } else {
                                let mut line = std::mem::take(&mut self.partial);
                                line.extend_from_slice(&rest[..nl + 1]);
                                self.line(now, &line, stats);
                                line.clear();
                                self.partial = line;
                            }
                        }
                        None => {
                            i = input.len();
                            if !self.skipping_line {
                                self.partial.extend_from_slice(rest);
                                if self.partial.len() > MAX_COMMAND_LINE {
                                    self.partial.clear();
                                    self.skipping_line = true;
                                    self.fixed(now, 500, b"500 5.5.6 Line too long\r\n", stats);
                                }
                            }
                        }
                    }
                }
            }
        }
        input.len()
    }

    /// Reply bytes that may be written at `now`.
    pub fn poll_transmit(&mut self, now: Instant) -> &[u8] {
        while let Some(&(due, end)) = self.held.front() {
            if due > now {
                break;
            }
            self.released = end;
            self.held.pop_front();
        }
        &self.out[self.sent..self.released]
    }

    /// The caller wrote `n` bytes of what [`Self::poll_transmit`] returned.
    pub fn transmitted(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
            self.released = 0;
        }
    }

    /// When the next held reply is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.held.front().map(|h| h.0)
    }

    /// Whether everything queued has been written.
    pub fn is_flushed(&self) -> bool {
        self.out.is_empty()
    }

    /// [`Action::StartTls`] and [`Action::Close`] are given once the replies before them
    /// are all written.
    pub fn poll_action(&mut self) -> Option<Action> {
        if !self.is_flushed() {
            return None;
        }
        match self.state {
            State::AwaitTls if self.action.is_none() => {
                self.action = Some(Action::StartTls);
                self.action
            }
            State::Closing => Some(Action::Close),
            _ => None,
        }
    }

    /// The TLS handshake after STARTTLS is done: back to the initial state (RFC 3207 §4.2).
    pub fn tls_started(&mut self, stats: &mut SinkStats) {
        stats.tls_handshakes += 1;
        self.tls = true;
        self.greeted = false;
        self.authenticated = false;
        self.reset_transaction();
        self.partial.clear();
        self.state = State::Command;
        self.action = None;
    }

    fn reply(&mut self, now: Instant, phase: SinkPhase, code: u16, wire: &[u8], stats: &mut SinkStats) {
        stats.codes.record(code, first_line_text(wire));
        self.out.extend_from_slice(wire);
        let delay = self.cfg.delays[phase.index()];
        if delay.is_zero() && self.held.is_empty() {
            self.released = self.out.len();
        } else {
            let due = (now + delay).max(self.held.back().map_or(now, |h| h.0));
            self.held.push_back((due, self.out.len()));
        }
    }

    /// A reply outside the configurable phases (no delay of its own; keeps order).
    fn fixed(&mut self, now: Instant, code: u16, wire: &[u8], stats: &mut SinkStats) {
        stats.codes.record(code, first_line_text(wire));
        self.out.extend_from_slice(wire);
        if self.held.is_empty() {
            self.released = self.out.len();
        } else {
            let due = self.held.back().map_or(now, |h| h.0);
            self.held.push_back((due, self.out.len()));
        }
    }

    /// Picks and queues the configured reply of `phase`; returns its code.
    fn phase_reply(&mut self, now: Instant, phase: SinkPhase, stats: &mut SinkStats) -> u16 {
        let cfg = Arc::clone(&self.cfg);
        let r = cfg.replies[phase.index()].pick(&mut self.rng);
        self.reply(now, phase, r.code, &r.wire, stats);
        r.code
    }

    fn reset_transaction(&mut self) {
        self.mail = false;
        self.rcpts = 0;
        self.msg_bytes = 0;
    }

    fn line(&mut self, now: Instant, line: &[u8], stats: &mut SinkStats) {
        let line = trim_eol(line);
        match self.state {
            State::AuthPlain => return self.auth_plain_response(now, line, stats),
            State::AuthLoginUser => {
                self.state = State::AuthLoginPassword;
                // The user name is checked together with the password.
                self.partial_user_ok(line);
                return self.fixed(now, 334, b"334 UGFzc3dvcmQ6\r\n", stats);
            }
            State::AuthLoginPassword => {
                let ok = self.login_user_ok && b64_eq(line, self.cfg.auth.as_ref().map(|a| a.1.as_str()));
                return self.auth_done(now, ok, stats);
            }
            _ => {}
        }
        let (verb, args) = split_verb(line);
        match &verb {
            b"EHLO" | b"HELO" => {
                self.reset_transaction();
                self.greeted = true;
                let cfg = Arc::clone(&self.cfg);
                let replies = &cfg.replies[SinkPhase::Ehlo.index()];
                if replies.is_overridden() || verb == *b"HELO" {
                    let r = replies.pick(&mut self.rng);
                    if verb == *b"HELO" && !replies.is_overridden() {
                        let wire = format!("250 {}\r\n", cfg.hostname);
                        self.reply(now, SinkPhase::Ehlo, 250, wire.as_bytes(), stats);
                    } else {
                        self.reply(now, SinkPhase::Ehlo, r.code, &r.wire, stats);
                    }
                } else {
                    let wire = if self.tls { &cfg.ehlo_tls } else { &cfg.ehlo_plain };
                    self.reply(now, SinkPhase::Ehlo, 250, wire, stats);
                }
            }
            b"MAIL" => {
                if !self.greeted {
                    self.fixed(now, 503, b"503 5.5.1 Error: send EHLO first\r\n", stats);
                } else if self.mail {
                    self.fixed(now, 503, b"503 5.5.1 Error: nested MAIL command\r\n", stats);
                } else if declared_size(args).is_some_and(|n| n > self.cfg.max_message_size) {
                    self.fixed(now, 552, b"552 5.3.4 Message size exceeds fixed limit\r\n", stats);
                } else if is_2xx(self.phase_reply(now, SinkPhase::Mail, stats)) {
                    self.mail = true;
                }
            }
            b"RCPT" => {
                if !self.mail {
                    self.fixed(now, 503, b"503 5.5.1 Error: need MAIL command\r\n", stats);
                } else if is_2xx(self.phase_reply(now, SinkPhase::Rcpt, stats)) {
                    self.rcpts += 1;
                }
            }
            b"DATA" => {
                if !self.mail {
                    self.fixed(now, 503, b"503 5.5.1 Error: need MAIL command\r\n", stats);
                } else if self.rcpts == 0 {
                    self.fixed(now, 554, b"554 5.5.1 Error: no valid recipients\r\n", stats);
                } else if self.phase_reply(now, SinkPhase::Data, stats) == 354 {
                    self.state = State::Data;
                    self.eod = EodScanner::new();
                    self.msg_bytes = 0;
                }
            }
            b"BDAT" => match parse_bdat(args) {
                // RFC 3030 §3: the chunk is read even when it will be refused.
                Some((size, last)) => {
                    let ok = self.mail && self.rcpts > 0;
                    self.state = State::Bdat { remaining: size, last, ok };
                    if size == 0 {
                        self.state = State::Command;
                        self.bdat_chunk_done(now, last, ok, stats);
                    }
                }
                None => self.fixed(now, 501, b"501 5.5.4 Syntax: BDAT size [LAST]\r\n", stats),
            },
            b"RSET" => {
                self.reset_transaction();
                self.fixed(now, 250, b"250 2.0.0 Ok\r\n", stats);
            }
            b"NOOP" => self.fixed(now, 250, b"250 2.0.0 Ok\r\n", stats),
            b"QUIT" => {
                self.fixed(now, 221, b"221 2.0.0 Bye\r\n", stats);
                self.state = State::Closing;
            }
            b"VRFY" => self.fixed(now, 252, b"252 2.0.0 Cannot VRFY user\r\n", stats),
            b"HELP" => self.fixed(now, 214, b"214 2.0.0 See RFC 5321\r\n", stats),
            b"STAR" if eq_ignore_case(line, b"STARTTLS") => {
                if !self.cfg.starttls {
                    self.fixed(now, 502, b"502 5.5.1 Error: command not implemented\r\n", stats);
                } else if self.tls {
                    self.fixed(now, 503, b"503 5.5.1 Error: TLS already active\r\n", stats);
                } else {
                    self.fixed(now, 220, b"220 2.0.0 Ready to start TLS\r\n", stats);
                    // RFC 3207 §5: anything pipelined after STARTTLS is dropped.
                    self.state = State::AwaitTls;
                }
            }
            b"AUTH" => self.auth(now, args, stats),
            _ => self.fixed(now, 500, b"500 5.5.2 Error: command not recognized\r\n", stats),
        }
    }

    fn end_of_data(&mut self, now: Instant, ok: bool, stats: &mut SinkStats) {
        self.state = State::Command;
        let code = if ok {
            self.phase_reply(now, SinkPhase::DataEnd, stats)
        } else {
            self.fixed(now, 503, b"503 5.5.1 Error: need MAIL and RCPT\r\n", stats);
            503
        };
        if is_2xx(code) {
            stats.messages += 1;
            stats.recipients += u64::from(self.rcpts);
            stats.bytes += self.msg_bytes;
        }
        self.reset_transaction();
    }

    fn bdat_chunk_done(&mut self, now: Instant, last: bool, ok: bool, stats: &mut SinkStats) {
        if last || !ok {
            self.end_of_data(now, ok, stats);
        } else {
            self.fixed(now, 250, b"250 2.0.0 Chunk received\r\n", stats);
        }
    }

    fn auth(&mut self, now: Instant, args: &[u8], stats: &mut SinkStats) {
        if self.cfg.auth.is_none() {
            return self.fixed(now, 502, b"502 5.5.1 Error: AUTH not enabled\r\n", stats);
        }
        if self.authenticated || self.mail {
            return self.fixed(now, 503, b"503 5.5.1 Error: bad sequence of commands\r\n", stats);
        }
        let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let mech = words.next().unwrap_or(b"").to_ascii_uppercase();
        let initial = words.next();
        match (mech.as_slice(), initial) {
            (b"PLAIN", Some(resp)) => self.auth_plain_response(now, resp, stats),
            (b"PLAIN", None) => {
                self.state = State::AuthPlain;
                self.fixed(now, 334, b"334 \r\n", stats);
            }
            (b"LOGIN", None) => {
                self.state = State::AuthLoginUser;
                self.fixed(now, 334, b"334 VXNlcm5hbWU6\r\n", stats);
            }
            (b"LOGIN", Some(user)) => {
                self.partial_user_ok(user);
                self.state = State::AuthLoginPassword;
                self.fixed(now, 334, b"334 UGFzc3dvcmQ6\r\n", stats);
            }
            _ => self.fixed(now, 504, b"504 5.5.4 Unrecognized authentication type\r\n", stats),
        }
    }

    fn partial_user_ok(&mut self, b64_user: &[u8]) {
        self.login_user_ok = b64_eq(b64_user, self.cfg.auth.as_ref().map(|a| a.0.as_str()));
    }

    /// RFC 4616: `authzid NUL authcid NUL passwd`.
    fn auth_plain_response(&mut self, now: Instant, resp: &[u8], stats: &mut SinkStats) {
        if resp == b"*" {
            self.state = State::Command;
            return self.fixed(now, 501, b"501 5.7.0 Authentication cancelled\r\n", stats);
        }
        let ok = match (b64::decode(resp), &self.cfg.auth) {
            (Some(d), Some((user, pass))) => {
                let mut parts = d.split(|&b| b == 0);
                let _authz = parts.next();
                parts.next() == Some(user.as_bytes()) && parts.next() == Some(pass.as_bytes()) && parts.next().is_none()
            }
            _ => false,
        };
        self.auth_done(now, ok, stats);
    }

    fn auth_done(&mut self, now: Instant, ok: bool, stats: &mut SinkStats) {
        self.state = State::Command;
        self.login_user_ok = false;
        if ok {
            self.authenticated = true;
            stats.auth_successes += 1;
            self.fixed(now, 235, b"235 2.7.0 Authentication successful\r\n", stats);
        } else {
            self.fixed(now, 535, b"535 5.7.8 Authentication credentials invalid\r\n", stats);
        }
    }
}

/// The text of a reply's first line, for the code table.
fn first_line_text(wire: &[u8]) -> &[u8] {
    let end = memchr::memchr(b'\r', wire).unwrap_or(wire.len());
    wire.get(4..end).unwrap_or(b"")
}

fn is_2xx(code: u16) -> bool {
    (200..300).contains(&code)
}

fn trim_eol(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b'\r' | b'\n'] = s {
        s = rest;
    }
    s
}

fn eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The verb (first four bytes, upper-cased) and the arguments after the following space.
fn split_verb(line: &[u8]) -> ([u8; 4], &[u8]) {
    let mut verb = [0u8; 4];
    for (v, c) in verb.iter_mut().zip(line) {
        *v = c.to_ascii_uppercase();
    }
    let args = match line.get(4) {
        Some(b' ') => &line[5..],
        _ => b"",
    };
    (verb, args)
}

/// The SIZE=n parameter of a MAIL command (RFC 1870 §6), if any.
fn declared_size(args: &[u8]) -> Option<u64> {
    args.split(|&b| b == b' ').find_map(|p| {
        p.get(..5).filter(|k| k.eq_ignore_ascii_case(b"SIZE="))?;
        std::str::from_utf8(&p[5..]).ok()?.parse().ok()
    })
}

/// `BDAT size [LAST]` arguments (RFC 3030 §3).
fn parse_bdat(args: &[u8]) -> Option<(u64, bool)> {
    let mut w = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = std::str::from_utf8(w.next()?).ok()?.parse().ok()?;
    let last = match w.next() {
        None => false,
        Some(l) if l.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return None,
    };
    w.next().is_none().then_some((size, last))
}

fn b64_eq(encoded: &[u8], expected: Option<&str>) -> bool {
    matches!((b64::decode(encoded), expected), (Some(d), Some(e)) if d == e.as_bytes())
}

#[cfg(test)]
mod tests;
