//! Sans-IO SMTP client session.
//!
//! The caller owns the socket. It calls [`ClientSession::connected`] once the transport is
//! up, feeds reply bytes to [`ClientSession::handle_input`], writes
//! [`ClientSession::pending_output`] and reports what it wrote with
//! [`ClientSession::transmitted`]. Time is always an argument. When the session is
//! [`ClientSession::is_ready`] the caller may fill [`ClientSession::outbound_mut`] and call
//! [`ClientSession::start_transaction`]. [`ClientSession::wants_tls`] asks the caller to run
//! a TLS handshake (after a 220 to STARTTLS) and to call [`ClientSession::tls_established`].
//!
//! A transaction is MAIL, RCPT×K, then DATA and the dot-terminated content (RFC 5321 §3.3),
//! or `BDAT n LAST` with the raw content when CHUNKING is offered and wanted (RFC 3030 §2).
//! With PIPELINING (RFC 2920 §3.1) MAIL, the RCPTs and DATA (or BDAT with its content) go out
//! in one write, and a final QUIT rides along with the last message's content.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::report::recorder::ErrorKind;
use crate::report::{Phase, Recorder};
use ringmx_b64 as b64;

/// Longest reply line accepted; RFC 5321 §4.5.3.1.5 says 512, servers send more.
const MAX_REPLY_LINE: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    Plain,
    Login,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mechanism: AuthMechanism,
    pub user: String,
    pub password: String,
}

/// What every session of a run shares.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub ehlo_name: String,
    /// Use PIPELINING when the server offers it.
    pub pipelining: bool,
    /// Use BDAT when the server offers CHUNKING.
    pub chunking: bool,
    /// Issue STARTTLS after the first EHLO; the session fails if it is not offered.
    pub starttls: bool,
    pub auth: Option<AuthConfig>,
    /// Send the next transaction's MAIL, RCPT and DATA with the previous message's content
    /// (RFC 2920 §3.1 allows content first in a group): one round trip per message.
    pub overlap: bool,
    /// Transactions per connection before QUIT; 0 means no limit.
    pub messages_per_connection: u64,
    /// How long to wait for any reply.
    pub reply_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ehlo_name: "loadgen.example.test".into(),
            pipelining: true,
            chunking: false,
            starttls: false,
            auth: None,
            overlap: true,
            messages_per_connection: 0,
            reply_timeout: Duration::from_secs(30),
        }
    }
}

/// A session that cannot go on. The reply that caused it, if any, is already recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// A reply line that is not `DDD[ -]text`.
    #[error("malformed reply line")]
    MalformedReply,
    /// A reply line longer than we accept.
    #[error("reply line longer than {MAX_REPLY_LINE} bytes")]
    ReplyTooLong,
    /// A reply when none was expected (e.g. while idle).
    #[error("unexpected reply {0}")]
    UnsolicitedReply(u16),
    /// The greeting was not 220.
    #[error("server refused the session: {0}")]
    Refused(u16),
    /// EHLO was refused.
    #[error("EHLO refused: {0}")]
    EhloRefused(u16),
    #[error("STARTTLS required but not offered")]
    StartTlsNotOffered,
    #[error("STARTTLS refused: {0}")]
    StartTlsRefused(u16),
    #[error("AUTH required but the mechanism is not offered")]
    AuthNotOffered,
    #[error("authentication failed: {0}")]
    AuthFailed(u16),
}

/// What the server said it supports in its EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    pub chunking: bool,
    pub starttls: bool,
    pub auth_plain: bool,
    pub auth_login: bool,
    /// SIZE (RFC 1870): when present we declare each message's size in MAIL.
    pub size: Option<u64>,
    pub smtputf8: bool,
    pub eight_bit_mime: bool,
}

impl Capabilities {
    fn parse_line(&mut self, kw: &[u8]) {
        let mut words = kw.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let Some(first) = words.next() else { return };
        let up = |w: &[u8]| w.to_ascii_uppercase();
        match up(first).as_slice() {
            b"PIPELINING" => self.pipelining = true,
            b"CHUNKING" => self.chunking = true,
            b"STARTTLS" => self.starttls = true,
            b"SMTPUTF8" => self.smtputf8 = true,
            b"8BITMIME" => self.eight_bit_mime = true,
            b"SIZE" => {
                let n = words.next().and_then(|w| std::str::from_utf8(w).ok()?.parse().ok());
                self.size = Some(n.unwrap_or(0));
            }
            b"AUTH" => {
                for w in words {
                    match up(w).as_slice() {
                        b"PLAIN" => self.auth_plain = true,
                        b"LOGIN" => self.auth_login = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// The message the next transaction sends, filled by the caller into reused buffers.
#[derive(Debug, Default)]
pub struct Outbound {
    /// Envelope sender, without angle brackets.
    pub from: String,
    /// All recipients, concatenated; `rcpt_ends[i]` is the end of the i-th.
    pub rcpts: String,
    pub rcpt_ends: Vec<usize>,
    /// The content: CRLF lines. Dot-stuffed and without the final `.` line when the session
    /// uses DATA ([`ClientSession::uses_bdat`] false), raw when it uses BDAT.
    pub content: Vec<u8>,
}

impl Outbound {
    pub fn clear(&mut self) {
        self.from.clear();
        self.rcpts.clear();
        self.rcpt_ends.clear();
        self.content.clear();
    }

    pub fn push_rcpt(&mut self, rcpt: &str) {
        self.rcpts.push_str(rcpt);
        self.rcpt_ends.push(self.rcpts.len());
    }

    fn rcpt(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.rcpt_ends[i - 1] };
        &self.rcpts[start..self.rcpt_ends[i]]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthStep {
    Plain,
    LoginUser,
    LoginPassword,
    LoginDone,
}

/// Which reply of a transaction comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Mail,
    Rcpt,
    Data,
    DataEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the transport (connect, implicit TLS).
    Connecting,
    Banner,
    Ehlo,
    StartTls,
    /// The caller runs the TLS handshake.
    TlsHandshake,
    Auth(AuthStep),
    Ready,
    Transaction(Expect),
    Rset,
    Quit,
    Closed,
}

#[derive(Debug, Clone, Copy)]
struct Txn {
    /// Intended start (open loop) or the moment MAIL was queued (closed loop).
    start: Instant,
    rcpts_sent: usize,
    rcpts_replied: usize,
    rcpts_ok: u32,
    mail_ok: bool,
    rejected: bool,
    bytes: usize,
}

impl Txn {
    fn new(start: Instant) -> Self {
        Txn { start, rcpts_sent: 0, rcpts_replied: 0, rcpts_ok: 0, mail_ok: false, rejected: false, bytes: 0 }
    }
}

/// One SMTP client connection's protocol state. See the module docs for the contract.
#[derive(Debug)]
pub struct ClientSession {
    cfg: Arc<SessionConfig>,
    state: State,
    caps: Capabilities,
    tls_active: bool,
    /// Command bytes not yet written; `out_pos` is how far the caller got.
    out: Vec<u8>,
    out_pos: usize,
    /// Offset in `out` where the message data ends, until written.
    eod_mark: Option<usize>,
    eod_sent_at: Option<Instant>,
    /// When the commands now awaiting replies were queued; phases are measured from here.
    sent_at: Instant,
    connected_at: Instant,
    /// When a reply is overdue, while one is awaited.
    deadline: Option<Instant>,
    txn: Option<Txn>,
    /// The next transaction, whose commands went out with the current content; its replies
    /// follow the current transaction's last reply.
    pending: Option<Txn>,
    /// Intended start of the message queued in `next_outbound`, not yet sent.
    next_start: Option<Instant>,
    outbound: Outbound,
    next_outbound: Outbound,
    txns_done: u64,
    /// QUIT once the current transaction is over (or already sent with it).
    quit_requested: bool,
    quit_sent: bool,
    ehlo_recorded: bool,
}

impl ClientSession {
    /// A session whose transport is not yet up. `tls_active` is true for implicit TLS.
    pub fn new(cfg: Arc<SessionConfig>, now: Instant, tls_active: bool) -> Self {
        ClientSession {
            cfg,
            state: State::Connecting,
            caps: Capabilities::default(),
            tls_active,
            out: Vec::with_capacity(4096),
            out_pos: 0,
            eod_mark: None,
            eod_sent_at: None,
            sent_at: now,
            connected_at: now,
            deadline: None,
            txn: None,
            pending: None,
            next_start: None,
            outbound: Outbound::default(),
            next_outbound: Outbound::default(),
            txns_done: 0,
            quit_requested: false,
            quit_sent: false,
            ehlo_recorded: false,
        }
    }

    /// The transport is up: wait for the greeting.
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = now;
        self.sent_at = now;
        self.state = State::Banner;
        self.deadline = Some(now + self.cfg.reply_timeout);
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready && !self.quit_requested
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// True once after a 220 to STARTTLS: the caller must start the TLS handshake, with any
    /// bytes already received discarded (RFC 3207 §5).
    pub fn wants_tls(&self) -> bool {
        self.state == State::TlsHandshake
    }

    /// Whether transactions use BDAT (so [`Outbound::content`] must be raw, not stuffed).
    pub fn uses_bdat(&self) -> bool {
        self.cfg.chunking && self.caps.chunking
    }

    /// Bytes waiting to be written.
    pub fn pending_output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// The caller wrote `n` bytes of [`Self::pending_output`].
    pub fn transmitted(&mut self, now: Instant, n: usize) {
        self.out_pos += n;
        if let Some(mark) = self.eod_mark
            && self.out_pos >= mark
        {
            self.eod_sent_at = Some(now);
            self.eod_mark = None;
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// When [`Self::handle_timeout`] must be called, if a reply is awaited.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// The reply timeout passed: the session is dead.
    pub fn handle_timeout(&mut self, rec: &mut Recorder) {
        self.abort(ErrorKind::Timeout, rec);
    }

    /// The connection failed under the session (I/O error, peer closed, TLS failure).
    /// Counts a lost transaction if one was under way. No-op once closed.
    pub fn abort(&mut self, kind: ErrorKind, rec: &mut Recorder) {
        if self.state == State::Closed {
            return;
        }
        // A close right after our QUIT was sent is the normal end.
        let graceful = self.state == State::Quit && kind == ErrorKind::Io;
        if !graceful {
            rec.error(kind, self.txn.is_some());
            if self.pending.take().is_some() {
                rec.lose_message();
            }
        }
        self.txn = None;
        self.pending = None;
        self.next_start = None;
        self.state = State::Closed;
        self.deadline = None;
    }

    /// Ask for QUIT: now if idle, else after the current transaction.
    pub fn quit(&mut self, now: Instant) {
        self.quit_requested = true;
        // A queued message not yet sent is dropped.
        self.next_start = None;
        if matches!(self.state, State::Ready) {
            self.send_quit(now);
        } else if matches!(self.state, State::Connecting | State::Banner) {
            // Nothing said yet: just close.
            self.state = State::Closed;
            self.deadline = None;
        }
    }

    pub fn outbound_mut(&mut self) -> &mut Outbound {
        &mut self.outbound
    }

    /// Whether a next message may be queued with [`Self::queue_next`]: overlap is on, the
    /// server pipelines, the session uses DATA, and nothing is queued yet.
    pub fn can_queue_next(&self) -> bool {
        self.cfg.overlap
            && self.pipelining()
            && !self.uses_bdat()
            && self.txn.is_some()
            && self.next_start.is_none()
            && !self.quit_requested
    }

    /// Where to render the message for [`Self::queue_next`].
    pub fn next_outbound_mut(&mut self) -> &mut Outbound {
        &mut self.next_outbound
    }

    /// Queues the message in [`Self::next_outbound_mut`]: its commands go out with the
    /// current message's content.
    ///
    /// # Panics
    /// If [`Self::can_queue_next`] is false.
    pub fn queue_next(&mut self, start: Instant) {
        assert!(self.can_queue_next(), "queue_next while it is not allowed");
        self.count_transaction();
        self.next_start = Some(start);
    }

    /// Counts a started transaction; QUIT follows the last one of the connection.
    fn count_transaction(&mut self) {
        self.txns_done += 1;
        if self.cfg.messages_per_connection != 0 && self.txns_done >= self.cfg.messages_per_connection {
            self.quit_requested = true;
        }
    }

    /// Starts a transaction with the message in [`Self::outbound_mut`]. `start` is when it
    /// was meant to start (open loop) or `now` (closed loop).
    ///
    /// # Panics
    /// If the session is not [`Self::is_ready`].
    pub fn start_transaction(&mut self, now: Instant, start: Instant) {
        assert!(self.is_ready(), "start_transaction on a session that is not ready");
        self.count_transaction();
        self.begin(now, start);
    }

    fn begin(&mut self, now: Instant, start: Instant) {
        self.txn = Some(Txn::new(start));
        self.write_commands();
        self.state = State::Transaction(Expect::Mail);
        self.awaiting(now);
    }

    /// MAIL, and with PIPELINING the RCPTs and DATA (or BDAT and the content) too.
    fn write_commands(&mut self) {
        self.write_mail();
        if self.pipelining() {
            while self.write_next_rcpt() {}
            if self.uses_bdat() {
                self.write_bdat();
            } else {
                self.out.extend_from_slice(b"DATA\r\n");
            }
        }
    }

    fn pipelining(&self) -> bool {
        self.cfg.pipelining && self.caps.pipelining
    }

    fn awaiting(&mut self, now: Instant) {
        self.sent_at = now;
        self.deadline = Some(now + self.cfg.reply_timeout);
    }

    fn write_mail(&mut self) {
        let o = &self.outbound;
        self.out.extend_from_slice(b"MAIL FROM:<");
        self.out.extend_from_slice(o.from.as_bytes());
        self.out.push(b'>');
        if self.caps.size.is_some() {
            let _ = write!(self.out, " SIZE={}", o.content.len());
        }
        self.out.extend_from_slice(b"\r\n");
    }

    /// Queues the next RCPT; false when all are sent.
    fn write_next_rcpt(&mut self) -> bool {
        let txn = self.txn.as_mut().expect("in a transaction");
        if txn.rcpts_sent >= self.outbound.rcpt_ends.len() {
            return false;
        }
        let i = txn.rcpts_sent;
        txn.rcpts_sent += 1;
        self.out.extend_from_slice(b"RCPT TO:<");
        self.out.extend_from_slice(self.outbound.rcpt(i).as_bytes());
        self.out.extend_from_slice(b">\r\n");
        true
    }

    /// `BDAT n LAST` and the whole content as one chunk (RFC 3030 §2).
    fn write_bdat(&mut self) {
        let n = self.outbound.content.len();
        let _ = write!(self.out, "BDAT {n} LAST\r\n");
        self.out.extend_from_slice(&self.outbound.content);
        self.txn.as_mut().expect("in a transaction").bytes = n;
        self.mark_eod();
    }

    /// The data just queued ends the message; QUIT rides along when pipelining.
    fn mark_eod(&mut self) {
        self.eod_mark = Some(self.out.len());
        self.eod_sent_at = None;
        if self.quit_requested && self.pipelining() && self.next_start.is_none() {
            self.out.extend_from_slice(b"QUIT\r\n");
            self.quit_sent = true;
        }
    }

    fn send_quit(&mut self, now: Instant) {
        if !self.quit_sent {
            self.out.extend_from_slice(b"QUIT\r\n");
            self.quit_sent = true;
        }
        self.state = State::Quit;
        self.awaiting(now);
    }

    fn send_ehlo(&mut self, now: Instant) {
        self.out.extend_from_slice(b"EHLO ");
        self.out.extend_from_slice(self.cfg.ehlo_name.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.caps = Capabilities::default();
        self.state = State::Ehlo;
        self.awaiting(now);
    }

    /// The TLS handshake the session asked for is complete: EHLO again (RFC 3207 §4.2).
    pub fn tls_established(&mut self, now: Instant, rec: &mut Recorder) {
        rec.phase(Phase::Tls, now.saturating_duration_since(self.sent_at));
        self.tls_active = true;
        self.send_ehlo(now);
    }

    /// Feeds reply bytes. Returns how many were consumed: only whole replies are, so the
    /// caller keeps the rest and passes it again with more. Stops early when the session
    /// asks for TLS (the caller must then drop what is left, RFC 3207 §5) or closes.
    pub fn handle_input(&mut self, now: Instant, input: &[u8], rec: &mut Recorder) -> Result<usize, SessionError> {
        let mut consumed = 0;
        while !matches!(self.state, State::TlsHandshake | State::Closed) {
            let rest = &input[consumed..];
            let Some(len) = complete_reply_len(rest)? else { break };
            let reply = &rest[..len];
            consumed += len;
            self.on_reply(now, reply, rec)?;
        }
        Ok(consumed)
    }

    fn fail(&mut self, err: SessionError, rec: &mut Recorder) -> Result<(), SessionError> {
        rec.error(ErrorKind::Protocol, self.txn.is_some());
        self.txn = None;
        self.state = State::Closed;
        self.deadline = None;
        Err(err)
    }

    fn on_reply(&mut self, now: Instant, reply: &[u8], rec: &mut Recorder) -> Result<(), SessionError> {
        let code = reply_code(reply).ok_or(SessionError::MalformedReply)?;
        let text = first_line_text(reply);
        rec.reply(code, text);
        let elapsed = now.saturating_duration_since(self.sent_at);
        let positive = (200..300).contains(&code);
        self.deadline = None;
        match self.state {
            State::Connecting | State::Ready | State::TlsHandshake | State::Closed => {
                return self.fail(SessionError::UnsolicitedReply(code), rec);
            }
            State::Banner => {
                rec.phase(Phase::Banner, now.saturating_duration_since(self.connected_at));
                if code != 220 {
                    return self.fail(SessionError::Refused(code), rec);
                }
                self.send_ehlo(now);
            }
            State::Ehlo => {
                if !positive {
                    return self.fail(SessionError::EhloRefused(code), rec);
                }
                if !self.ehlo_recorded {
                    rec.phase(Phase::Ehlo, elapsed);
                    self.ehlo_recorded = true;
                }
                for line in reply.split(|&b| b == b'\n').skip(1) {
                    if line.len() > 4 {
                        self.caps.parse_line(trim_crlf(&line[4..]));
                    }
                }
                self.after_ehlo(now, rec)?;
            }
            State::StartTls => {
                if code != 220 {
                    return self.fail(SessionError::StartTlsRefused(code), rec);
                }
                self.state = State::TlsHandshake;
                // The handshake is the caller's; keep measuring from the STARTTLS.
                self.deadline = Some(now + self.cfg.reply_timeout);
            }
            State::Auth(step) => self.on_auth_reply(now, step, code, rec)?,
            State::Transaction(expect) => self.on_transaction_reply(now, expect, code, elapsed, rec),
            State::Rset => self.after_transaction(now),
            State::Quit => {
                self.state = State::Closed;
            }
        }
        Ok(())
    }

    fn after_ehlo(&mut self, now: Instant, rec: &mut Recorder) -> Result<(), SessionError> {
        if self.cfg.starttls && !self.tls_active {
            if !self.caps.starttls {
                return self.fail(SessionError::StartTlsNotOffered, rec);
            }
            self.out.extend_from_slice(b"STARTTLS\r\n");
            self.state = State::StartTls;
            self.awaiting(now);
            return Ok(());
        }
        if let Some(auth) = self.cfg.auth.clone() {
            // RFC 4954 §4: the initial response saves a round trip for PLAIN.
            match auth.mechanism {
                AuthMechanism::Plain if self.caps.auth_plain => {
                    let mut cred = Vec::with_capacity(auth.user.len() + auth.password.len() + 2);
                    cred.push(0);
                    cred.extend_from_slice(auth.user.as_bytes());
                    cred.push(0);
                    cred.extend_from_slice(auth.password.as_bytes());
                    self.out.extend_from_slice(b"AUTH PLAIN ");
                    b64::encode_into(&cred, &mut self.out);
                    self.out.extend_from_slice(b"\r\n");
                    self.state = State::Auth(AuthStep::Plain);
                }
                AuthMechanism::Login if self.caps.auth_login => {
                    self.out.extend_from_slice(b"AUTH LOGIN\r\n");
                    self.state = State::Auth(AuthStep::LoginUser);
                }
                _ => return self.fail(SessionError::AuthNotOffered, rec),
            }
            self.awaiting(now);
            return Ok(());
        }
        self.become_ready(now);
        Ok(())
    }

    fn on_auth_reply(
        &mut self,
        now: Instant,
        step: AuthStep,
        code: u16,
        rec: &mut Recorder,
    ) -> Result<(), SessionError> {
        let auth = self.cfg.auth.clone().expect("auth configured");
        match (step, code) {
            (AuthStep::LoginUser, 334) => {
                b64::encode_into(auth.user.as_bytes(), &mut self.out);
                self.out.extend_from_slice(b"\r\n");
                self.state = State::Auth(AuthStep::LoginPassword);
            }
            (AuthStep::LoginPassword, 334) => {
                b64::encode_into(auth.password.as_bytes(), &mut self.out);
                self.out.extend_from_slice(b"\r\n");
                self.state = State::Auth(AuthStep::LoginDone);
            }
            (AuthStep::Plain | AuthStep::LoginDone, 235) => {
                // `sent_at` still marks the AUTH command: LOGIN's later steps keep it.
                rec.phase(Phase::Auth, now.saturating_duration_since(self.sent_at));
                self.become_ready(now);
                return Ok(());
            }
            _ => return self.fail(SessionError::AuthFailed(code), rec),
        }
        self.deadline = Some(now + self.cfg.reply_timeout);
        Ok(())
    }

    fn become_ready(&mut self, now: Instant) {
        self.state = State::Ready;
        if self.quit_requested {
            self.send_quit(now);
        }
    }

    fn on_transaction_reply(&mut self, now: Instant, expect: Expect, code: u16, elapsed: Duration, rec: &mut Recorder) {
        let positive = (200..300).contains(&code);
        let pipelining = self.pipelining();
        let txn = self.txn.as_mut().expect("in a transaction");
        match expect {
            Expect::Mail => {
                rec.phase(Phase::Mail, elapsed);
                txn.mail_ok = positive;
                if !positive {
                    txn.rejected = true;
                }
                if pipelining {
                    self.state = State::Transaction(Expect::Rcpt);
                    if self.outbound.rcpt_ends.is_empty() {
                        self.state = State::Transaction(if self.uses_bdat() { Expect::DataEnd } else { Expect::Data });
                    }
                    self.deadline = Some(now + self.cfg.reply_timeout);
                } else if positive && self.write_next_rcpt() {
                    self.state = State::Transaction(Expect::Rcpt);
                    self.awaiting(now);
                } else {
                    self.end_transaction(now, false, rec);
                }
            }
            Expect::Rcpt => {
                rec.phase(Phase::Rcpt, elapsed);
                txn.rcpts_replied += 1;
                if positive {
                    txn.rcpts_ok += 1;
                }
                let all_replied = txn.rcpts_replied >= self.outbound.rcpt_ends.len();
                let any_ok = txn.rcpts_ok > 0;
                if pipelining {
                    if all_replied {
                        self.state = State::Transaction(if self.uses_bdat() { Expect::DataEnd } else { Expect::Data });
                    }
                    self.deadline = Some(now + self.cfg.reply_timeout);
                } else if !all_replied {
                    self.write_next_rcpt();
                    self.awaiting(now);
                } else if !any_ok {
                    self.end_transaction(now, false, rec);
                } else if self.uses_bdat() {
                    self.write_bdat();
                    self.state = State::Transaction(Expect::DataEnd);
                    self.awaiting(now);
                } else {
                    self.out.extend_from_slice(b"DATA\r\n");
                    self.state = State::Transaction(Expect::Data);
                    self.awaiting(now);
                }
            }
            Expect::Data => {
                if code != 354 {
                    self.end_transaction(now, false, rec);
                    return;
                }
                rec.phase(Phase::Data, elapsed);
                if txn.rcpts_ok > 0 {
                    txn.bytes = self.outbound.content.len();
                    self.out.extend_from_slice(&self.outbound.content);
                }
                // A 354 with no recipient accepted (a server that should have said 554,
                // RFC 2920 §3.1) still needs the terminating dot.
                self.out.extend_from_slice(b".\r\n");
                self.mark_eod();
                if let Some(start) = self.next_start.take() {
                    // Content first, then the next MAIL/RCPT/DATA (RFC 2920 §3.1).
                    std::mem::swap(&mut self.outbound, &mut self.next_outbound);
                    let current = self.txn.replace(Txn::new(start));
                    self.write_commands();
                    self.pending = std::mem::replace(&mut self.txn, current);
                }
                self.state = State::Transaction(Expect::DataEnd);
                self.awaiting(now);
            }
            Expect::DataEnd => {
                let since = self.eod_sent_at.unwrap_or(self.sent_at);
                rec.phase(Phase::DataEnd, now.saturating_duration_since(since));
                let accepted = positive && txn.mail_ok && txn.rcpts_ok > 0;
                self.end_transaction(now, accepted, rec);
            }
        }
    }

    /// Records the transaction. After the reply to the data the transaction is over either
    /// way (RFC 5321 §4.1.1.4); a refusal before it is cleared with RSET.
    fn end_transaction(&mut self, now: Instant, accepted: bool, rec: &mut Recorder) {
        let txn = self.txn.take().expect("in a transaction");
        let latency = now.saturating_duration_since(txn.start);
        rec.transaction(accepted, latency, txn.bytes, txn.rcpts_ok);
        let data_done = matches!(self.state, State::Transaction(Expect::DataEnd));
        if let Some(next) = self.pending.take() {
            // Its commands are already out; its replies come next. Its phases are measured
            // from now: replies come in order, so none could come before this one.
            self.txn = Some(next);
            self.state = State::Transaction(Expect::Mail);
            self.awaiting(now);
        } else if accepted || data_done || self.quit_sent {
            self.after_transaction(now);
        } else {
            self.out.extend_from_slice(b"RSET\r\n");
            self.state = State::Rset;
            self.awaiting(now);
        }
    }

    fn after_transaction(&mut self, now: Instant) {
        if let Some(start) = self.next_start.take() {
            // Queued but not sent (the previous message never reached its content).
            std::mem::swap(&mut self.outbound, &mut self.next_outbound);
            self.begin(now, start);
        } else if self.quit_requested {
            self.send_quit(now);
        } else {
            self.state = State::Ready;
        }
    }
}

/// Length of the first complete reply in `buf` (all its lines), or `None` if incomplete.
fn complete_reply_len(buf: &[u8]) -> Result<Option<usize>, SessionError> {
    let mut pos = 0;
    loop {
        let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
            return if buf.len() - pos > MAX_REPLY_LINE { Err(SessionError::ReplyTooLong) } else { Ok(None) };
        };
        let line = &buf[pos..pos + nl + 1];
        pos += nl + 1;
        if line.len() < 4 || !line[..3].iter().all(u8::is_ascii_digit) {
            // "250\r\n" is a valid last line with no text.
            if line.len() >= 3 && line[..3].iter().all(u8::is_ascii_digit) {
                return Ok(Some(pos));
            }
            return Err(SessionError::MalformedReply);
        }
        match line[3] {
            b'-' => continue,
            b' ' | b'\r' | b'\n' => return Ok(Some(pos)),
            _ => return Err(SessionError::MalformedReply),
        }
    }
}

fn reply_code(reply: &[u8]) -> Option<u16> {
    let d = reply.get(..3)?;
    Some(d.iter().fold(0u16, |acc, &c| acc * 10 + u16::from(c - b'0')))
}

fn first_line_text(reply: &[u8]) -> &[u8] {
    let end = memchr::memchr(b'\n', reply).unwrap_or(reply.len());
    trim_crlf(reply.get(4..end + 1).unwrap_or(b""))
}

fn trim_crlf(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b'\r' | b'\n'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests;
