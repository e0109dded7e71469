//! The SMTP client, sans-IO: bytes and `now` in, bytes and events out.
//!
//! A [`Client`] is one outbound SMTP connection as a state machine (RFC 5321 with
//! PIPELINING RFC 2920, SIZE RFC 1870, 8BITMIME RFC 6152, SMTPUTF8 RFC 6531, STARTTLS
//! RFC 3207 and AUTH PLAIN/LOGIN RFC 4954). It opens no socket, does no TLS and reads no
//! clock; the driver (`delivery::remote`) does.
//!
//! # The contract
//!
//! - [`Client::new`] when the TCP connection is up; the machine waits for the greeting.
//! - [`Client::handle_input`]: bytes from the server (plaintext, after TLS).
//! - [`Client::poll_transmit`]: bytes to send. Ask again after each write completes: the
//!   message body comes out in blocks, and taking a block is what restarts the RFC 5321
//!   "data block" time-out.
//! - [`Client::poll_event`]: [`Event::Ready`] (give it a message with [`Client::send`] or
//!   end with [`Client::quit`]), [`Event::StartTls`] (do the handshake, then
//!   [`Client::tls_done`]), [`Event::Done`] (one message's per-recipient results),
//!   [`Event::Closed`] (the connection is over; close the socket).
//! - [`Client::poll_timeout`] / [`Client::handle_timeout`]: the time-outs of RFC 5321
//!   §4.5.3.2.
//! - [`Client::connection_lost`]: the peer closed or the socket failed.
//!
//! # Errors
//!
//! Each failure is an [`Error`] that says whether it is permanent
//! ([`Error::is_permanent`]), what it concerns ([`Error::concern`]: one recipient, the
//! message, or the connection — then another host or a later attempt may do better), and
//! keeps the server's reply for the DSN ([`Error::reply`], [`Error::status`]).

use crate::util::units;
use serde::Deserialize;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest reply line we accept (RFC 5321 §4.5.3.1.5 says 512; servers send longer).
const MAX_REPLY_LINE: usize = 8192;
/// Most lines in one multi-line reply.
const MAX_REPLY_LINES: usize = 256;
/// Size of the body blocks [`Client::poll_transmit`] hands out.
const BLOCK: usize = 64 * 1024;

/// One server reply: code, enhanced status code when given (RFC 3463/2034), text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    /// `class.subject.detail`, e.g. `"5.1.1"`, when the reply carried one.
    pub enhanced: Option<String>,
    /// The text, the lines of a multi-line reply joined with `\n`, enhanced codes removed.
    pub text: String,
}

impl Response {
    pub fn new(code: u16, enhanced: Option<&str>, text: &str) -> Self {
        Response { code, enhanced: enhanced.map(str::to_string), text: text.to_string() }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The enhanced status code, or one derived from the class (`4.0.0`, `5.0.0`, `2.0.0`).
    pub fn status(&self) -> String {
        self.enhanced.clone().unwrap_or_else(|| format!("{}.0.0", self.code / 100))
    }

    /// A reply from its code and text, the enhanced code taken from the front of the text
    /// when it has one of the code's class (an LMTP or SMTP reply as received).
    pub fn from_code_text(code: u16, text: &str) -> Self {
        let (enhanced, text) = split_enhanced(code, text);
        Response { code, enhanced: enhanced.map(str::to_string), text: text.to_string() }
    }

    /// Parses the one-line form of [`fmt::Display`] (as stored in spool marks).
    pub fn parse(s: &str) -> Option<Response> {
        let s = s.trim_end();
        let code: u16 = s.get(..3)?.parse().ok()?;
        if !(200..600).contains(&code) {
            return None;
        }
        let rest = s[3..].trim_start_matches([' ', '-']);
        let (enhanced, text) = split_enhanced(code, rest);
        Some(Response { code, enhanced: enhanced.map(str::to_string), text: text.to_string() })
    }
}

impl From<&crate::wire::Reply> for Response {
    /// One of our own replies (a local delivery's refusal, say) as an outcome.
    fn from(r: &crate::wire::Reply) -> Self {
        Response::new(r.code, Some(r.status).filter(|s| !s.is_empty()), &r.text)
    }
}

impl fmt::Display for Response {
    /// `code [enhanced ]text` on one line (a multi-line text joined with spaces).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = &self.enhanced {
            write!(f, " {e}")?;
        }
        for (i, line) in self.text.split('\n').enumerate() {
            f.write_str(if i == 0 { " " } else { " / " })?;
            f.write_str(line)?;
        }
        Ok(())
    }
}

/// `"5.1.1 rest"` → `(Some("5.1.1"), "rest")` when the class matches the reply code.
fn split_enhanced(code: u16, text: &str) -> (Option<&str>, &str) {
    let word = text.split(' ').next().unwrap_or("");
    let mut parts = word.split('.');
    let ok = matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(c), Some(s), Some(d), None)
            if c.len() == 1 && c.as_bytes()[0] == b'0' + (code / 100) as u8
            && (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
            && (1..=3).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
    );
    if ok { (Some(word), text[word.len()..].trim_start()) } else { (None, text) }
}

/// The step of the conversation a reply, a time-out or an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    /// The TLS handshake itself (done by the driver).
    TlsHandshake,
    Auth,
    Rset,
    Mail,
    Rcpt,
    /// The reply to `DATA` (354 expected).
    Data,
    /// Sending the content.
    DataBlock,
    /// The reply after the final dot.
    DataEnd,
    Quit,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::Helo => "HELO",
            Stage::StartTls => "STARTTLS",
            Stage::TlsHandshake => "TLS handshake",
            Stage::Auth => "AUTH",
            Stage::Rset => "RSET",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::DataBlock => "message content",
            Stage::DataEnd => "end of data",
            Stage::Quit => "QUIT",
        }
    }
}

/// What a failure is about: what can be retried elsewhere or later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concern {
    /// This recipient only (a RCPT reply).
    Recipient,
    /// The message (MAIL, DATA, the content, its size or encoding): other recipients of
    /// it fail alike on this host.
    Message,
    /// The connection or the host: another host (the next MX) may do better.
    Connection,
}

/// Why a delivery on this connection did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused at this stage.
    #[error("{stage} refused: {reply}", stage = .stage.name())]
    Rejected { stage: Stage, reply: Response },
    /// No reply (or no progress sending) within the stage's time-out.
    #[error("time-out waiting for the {stage} reply", stage = .stage.name())]
    Timeout { stage: Stage },
    /// The connection was closed or failed at this stage.
    #[error("connection lost during {stage}", stage = .stage.name())]
    ConnectionLost { stage: Stage },
    /// The server sent something that is not an SMTP reply.
    #[error("protocol error during {stage}: {what}", stage = .stage.name())]
    Protocol { stage: Stage, what: &'static str },
    /// The message is larger than the SIZE the server announced (RFC 1870).
    #[error("message of {size} bytes exceeds the server's limit of {max} bytes")]
    TooBig { size: u64, max: u64 },
    /// The content has 8-bit data and the server lacks 8BITMIME; we do not downgrade.
    #[error("the message needs 8BITMIME, which the server does not offer")]
    EightBitUnsupported,
    /// The envelope needs SMTPUTF8 and the server lacks it (RFC 6531 §3.2).
    #[error("the message needs SMTPUTF8, which the server does not offer")]
    SmtpUtf8Unsupported,
    /// TLS is required and the server does not offer STARTTLS.
    #[error("TLS is required and the server does not offer STARTTLS")]
    TlsUnavailable,
    /// The TLS handshake failed (or the certificate did not verify).
    #[error("TLS handshake failed")]
    TlsFailed,
    /// Credentials are configured and no usable AUTH mechanism is offered (or only over
    /// plaintext, which is not allowed).
    #[error("no usable AUTH mechanism: {0}")]
    AuthUnavailable(&'static str),
}

impl Error {
    /// True when trying again later cannot help: a 5xx reply to the greeting, EHLO/HELO,
    /// AUTH or the transaction, or a message this server can never take. A 5xx to RSET,
    /// STARTTLS or QUIT says nothing about the message and is not permanent.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Rejected { stage: Stage::Rset | Stage::StartTls | Stage::Quit, .. } => false,
            Error::Rejected { reply, .. } => reply.is_permanent(),
            Error::TooBig { .. } | Error::EightBitUnsupported | Error::SmtpUtf8Unsupported => true,
            _ => false,
        }
    }

    /// What the failure is about.
    pub fn concern(&self) -> Concern {
        match self {
            Error::Rejected { stage: Stage::Rcpt, .. } => Concern::Recipient,
            Error::Rejected { stage: Stage::Mail | Stage::Data | Stage::DataEnd, .. }
            | Error::TooBig { .. }
            | Error::EightBitUnsupported
            | Error::SmtpUtf8Unsupported => Concern::Message,
            _ => Concern::Connection,
        }
    }

    /// kumomta's `was_due_to_message`: the message (not the host) is at fault.
    pub fn was_due_to_message(&self) -> bool {
        self.concern() == Concern::Message
    }

    /// The server's reply, for the DSN's `Diagnostic-Code`.
    pub fn reply(&self) -> Option<&Response> {
        match self {
            Error::Rejected { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// The RFC 3463 status code for the DSN.
    pub fn status(&self) -> String {
        match self {
            Error::Rejected { reply, .. } => reply.status(),
            Error::Timeout { .. } | Error::ConnectionLost { .. } => "4.4.2".into(),
            Error::Protocol { .. } => "4.5.0".into(),
            Error::TooBig { .. } => "5.3.4".into(),
            Error::EightBitUnsupported => "5.6.3".into(),
            Error::SmtpUtf8Unsupported => "5.6.7".into(),
            Error::TlsUnavailable => "4.7.10".into(),
            Error::TlsFailed => "4.7.5".into(),
            Error::AuthUnavailable(_) => "4.7.0".into(),
        }
    }
}

/// Whether and how STARTTLS is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TlsPolicy {
    /// Never, even when offered.
    Off,
    /// When offered; without it (or when the handshake fails) mail goes in plaintext.
    #[default]
    Opportunistic,
    /// Always, with a verified certificate: without it, the delivery is deferred.
    Require,
}

/// AUTH mechanisms we speak (RFC 4954).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMechanism {
    Plain,
    Login,
}

/// Credentials for AUTH (a smart host). Their `Debug` leaves the password out, so they can
/// be part of a logged key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// User name. No default.
    pub user: String,
    /// Password. No default; never logged.
    pub password: String,
    /// `plain` or `login`; default: PLAIN when offered, else LOGIN.
    #[serde(default)]
    pub mechanism: Option<AuthMechanism>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("mechanism", &self.mechanism).finish()
    }
}

/// `[delivery.remote.timeouts]`: RFC 5321 §4.5.3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTimeouts {
    /// The 220 greeting (§4.5.3.2.1). Default `"5m"`.
    #[serde(default = "five_min", deserialize_with = "units::de_duration")]
    pub greeting: Duration,
    /// EHLO, HELO, STARTTLS, AUTH, RSET and QUIT replies. Default `"5m"`.
    #[serde(default = "five_min", deserialize_with = "units::de_duration")]
    pub command: Duration,
    /// MAIL FROM (§4.5.3.2.2). Default `"5m"`.
    #[serde(default = "five_min", deserialize_with = "units::de_duration")]
    pub mail: Duration,
    /// Each RCPT TO (§4.5.3.2.3). Default `"5m"`.
    #[serde(default = "five_min", deserialize_with = "units::de_duration")]
    pub rcpt: Duration,
    /// The 354 to DATA (§4.5.3.2.4). Default `"2m"`.
    #[serde(default = "two_min", deserialize_with = "units::de_duration")]
    pub data_init: Duration,
    /// Each block of content sent (§4.5.3.2.5). Default `"3m"`.
    #[serde(default = "three_min", deserialize_with = "units::de_duration")]
    pub data_block: Duration,
    /// The reply after the final dot (§4.5.3.2.6). Default `"10m"`.
    #[serde(default = "ten_min", deserialize_with = "units::de_duration")]
    pub data_end: Duration,
}

fn five_min() -> Duration {
    Duration::from_secs(300)
}
fn two_min() -> Duration {
    Duration::from_secs(120)
}
fn three_min() -> Duration {
    Duration::from_secs(180)
}
fn ten_min() -> Duration {
    Duration::from_secs(600)
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            greeting: five_min(),
            command: five_min(),
            mail: five_min(),
            rcpt: five_min(),
            data_init: two_min(),
            data_block: three_min(),
            data_end: ten_min(),
        }
    }
}

impl ClientTimeouts {
    fn of(&self, stage: Stage) -> Duration {
        match stage {
            Stage::Greeting => self.greeting,
            Stage::Mail => self.mail,
            Stage::Rcpt => self.rcpt,
            Stage::Data => self.data_init,
            Stage::DataBlock => self.data_block,
            Stage::DataEnd => self.data_end,
            _ => self.command,
        }
    }
}

/// Settings of one connection.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our name in EHLO/HELO.
    pub ehlo_name: String,
    pub tls: TlsPolicy,
    /// AUTH with these when given (smart hosts).
    pub auth: Option<Credentials>,
    /// Send credentials over a connection without TLS (only for trusted local relays).
    pub auth_without_tls: bool,
    /// Use PIPELINING when offered.
    pub pipelining: bool,
    pub timeouts: ClientTimeouts,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            ehlo_name: "localhost".into(),
            tls: TlsPolicy::Opportunistic,
            auth: None,
            auth_without_tls: false,
            pipelining: true,
            timeouts: ClientTimeouts::default(),
        }
    }
}

/// One message to send: envelope and content.
#[derive(Debug, Clone)]
pub struct OutboundMessage {
    /// Reverse path; empty for the null sender `<>`.
    pub from: String,
    pub rcpts: Vec<String>,
    /// The content, CRLF line endings, not dot-stuffed.
    pub content: Arc<[u8]>,
    /// Has bytes above 127: needs 8BITMIME.
    pub eight_bit: bool,
    /// Needs SMTPUTF8 (non-ASCII addresses or headers).
    pub smtputf8: bool,
    /// DSN parameters, relayed to a next hop that offers DSN (RFC 3461 §4).
    pub dsn: DsnParams,
    /// The submitter (RFC 4954 §5, xtext), sent as `AUTH=` to a next hop we authenticated
    /// to; `None` sends `AUTH=<>` there.
    pub auth: Option<String>,
}

/// The RFC 3461 parameters of a message as received, still xtext-encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DsnParams {
    pub ret: Option<crate::wire::Ret>,
    pub envid: Option<String>,
    /// NOTIFY and ORCPT per recipient, in the order of `rcpts` (empty: none).
    pub rcpts: Vec<(Option<crate::wire::Notify>, Option<String>)>,
}

impl OutboundMessage {
    /// A message; `eight_bit` is found from the content (`BODY=8BITMIME` at reception
    /// says nothing more), `smtputf8` from the flag at reception or the addresses.
    pub fn new(from: &str, rcpts: Vec<String>, content: Arc<[u8]>, smtputf8: bool) -> Self {
        let eight_bit = !content.is_ascii();
        let smtputf8 = smtputf8 || !from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii());
        OutboundMessage {
            from: from.to_string(),
            rcpts,
            content,
            eight_bit,
            smtputf8,
            dsn: DsnParams::default(),
            auth: None,
        }
    }
}

/// One recipient's result: the server's acceptance (the reply after the data) or why not.
pub type RcptResult = Result<Response, Error>;

/// What the driver must do or know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The connection can take a message ([`Client::send`]) or end ([`Client::quit`]).
    Ready,
    /// Send what is pending, then do the TLS handshake as client; report with
    /// [`Client::tls_done`].
    StartTls,
    /// A message is finished: one result per recipient, in order.
    Done(Vec<RcptResult>),
    /// The connection is over: send what is still pending (a QUIT), then close the
    /// socket. `None` after a clean QUIT, else why.
    Closed(Option<Error>),
}

/// What the server offers in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    /// `SIZE` with its value (0: no fixed limit).
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub auth_plain: bool,
    pub auth_login: bool,
    pub enhanced_status_codes: bool,
    /// RFC 3461.
    pub dsn: bool,
}

impl Extensions {
    fn parse(reply_lines: &[String]) -> Self {
        let mut x = Extensions::default();
        for line in reply_lines.iter().skip(1) {
            let mut words = line.get(4..).unwrap_or("").split([' ', '=']);
            let kw = words.next().unwrap_or("").to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => x.pipelining = true,
                "SIZE" => x.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
                "8BITMIME" => x.eight_bit_mime = true,
                "SMTPUTF8" => x.smtputf8 = true,
                "STARTTLS" => x.starttls = true,
                "ENHANCEDSTATUSCODES" => x.enhanced_status_codes = true,
                "DSN" => x.dsn = true,
                "AUTH" => {
                    for m in words {
                        match m.to_ascii_uppercase().as_str() {
                            "PLAIN" => x.auth_plain = true,
                            "LOGIN" => x.auth_login = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        x
    }
}

/// A reply the machine waits for, in the order the commands went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    /// AUTH PLAIN with the initial response, or the last step of LOGIN.
    AuthDone,
    /// AUTH LOGIN: the 334 asking for the user name.
    AuthLoginUser,
    /// AUTH LOGIN: the 334 asking for the password.
    AuthLoginPass,
    Rset,
    Mail,
    Rcpt(usize),
    Data,
    DataEnd,
    /// The reply to a lone dot sent because the server took DATA with no recipient.
    DataEndIgnored,
    Quit,
}

impl Expect {
    fn stage(self) -> Stage {
        match self {
            Expect::Greeting => Stage::Greeting,
            Expect::Ehlo => Stage::Ehlo,
            Expect::Helo => Stage::Helo,
            Expect::StartTls => Stage::StartTls,
            Expect::AuthDone | Expect::AuthLoginUser | Expect::AuthLoginPass => Stage::Auth,
            Expect::Rset => Stage::Rset,
            Expect::Mail => Stage::Mail,
            Expect::Rcpt(_) => Stage::Rcpt,
            Expect::Data => Stage::Data,
            Expect::DataEnd | Expect::DataEndIgnored => Stage::DataEnd,
            Expect::Quit => Stage::Quit,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Greeting, EHLO, STARTTLS, AUTH: before the first message.
    Opening,
    /// Waiting for the driver's TLS handshake.
    TlsHandshake,
    /// No message in flight.
    Idle,
    /// A message in flight.
    Transaction,
    /// QUIT sent.
    Quitting,
    Closed,
}

/// The message in flight.
#[derive(Debug)]
struct Txn {
    msg: Arc<OutboundMessage>,
    results: Vec<Option<RcptResult>>,
    /// MAIL was refused: every recipient gets that.
    mail_error: Option<Error>,
    /// Commands not yet sent (without PIPELINING, one at a time).
    queued: VecDeque<(Vec<u8>, Expect)>,
    accepted: usize,
    /// Position in `msg.content` while sending it; `None` until the 354.
    body_pos: Option<usize>,
    /// The body sender is at the start of a line (for dot-stuffing).
    line_start: bool,
}

/// One outbound SMTP connection. See the module documentation for the contract.
#[derive(Debug)]
pub struct Client {
    cfg: Arc<ClientConfig>,
    state: State,
    input: Vec<u8>,
    /// Lines of the multi-line reply being read.
    lines: Vec<String>,
    output: Vec<u8>,
    events: VecDeque<Event>,
    awaiting: VecDeque<Expect>,
    deadline: Option<(Instant, Stage)>,
    ext: Extensions,
    tls_active: bool,
    ehlo_done: bool,
    authenticated: bool,
    /// The connection carried a message: the next one starts with RSET.
    used: bool,
    txn: Option<Txn>,
}

impl Client {
    /// A connection just established (TCP, or implicit TLS done); waits for the greeting.
    pub fn new(cfg: Arc<ClientConfig>, now: Instant) -> Self {
        let deadline = Some((now + cfg.timeouts.greeting, Stage::Greeting));
        Client {
            cfg,
            state: State::Opening,
            input: Vec::new(),
            lines: Vec::new(),
            output: Vec::new(),
            events: VecDeque::new(),
            awaiting: VecDeque::from([Expect::Greeting]),
            deadline,
            ext: Extensions::default(),
            tls_active: false,
            ehlo_done: false,
            authenticated: false,
            used: false,
            txn: None,
        }
    }

    /// What the server offered in its last EHLO reply.
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    pub fn is_tls(&self) -> bool {
        self.tls_active
    }

    /// True when a message can be given to [`Client::send`].
    pub fn is_ready(&self) -> bool {
        self.state == State::Idle
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The next thing for the driver to do.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes to send now, if any. Call again after each write completes.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.output.is_empty() {
            return Some(std::mem::take(&mut self.output));
        }
        let txn = self.txn.as_mut()?;
        let pos = txn.body_pos?;
        let content = &txn.msg.content;
        if pos > content.len() {
            return None; // the final dot is out
        }
        let end = (pos + BLOCK).min(content.len());
        let mut out = Vec::with_capacity(end - pos + 64);
        stuff(&content[pos..end], &mut txn.line_start, &mut out);
        if end == content.len() {
            if !txn.line_start {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
            txn.body_pos = Some(content.len() + 1);
            self.awaiting.push_back(Expect::DataEnd);
            self.deadline = Some((now + self.cfg.timeouts.data_end, Stage::DataEnd));
        } else {
            txn.body_pos = Some(end);
            self.deadline = Some((now + self.cfg.timeouts.data_block, Stage::DataBlock));
        }
        Some(out)
    }

    /// When [`Client::handle_timeout`] must be called, if something is awaited.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline.map(|d| d.0)
    }

    /// Fails the connection if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((at, stage)) = self.deadline
            && now >= at
        {
            self.fail(Error::Timeout { stage });
        }
    }

    /// The socket was closed by the peer or failed.
    pub fn connection_lost(&mut self) {
        if self.state == State::Closed {
            return;
        }
        if self.state == State::Quitting {
            self.close(None);
            return;
        }
        let stage = self.awaiting.front().map_or(Stage::Quit, |e| e.stage());
        let stage = if self.txn.as_ref().is_some_and(|t| t.body_pos.is_some()) && self.awaiting.is_empty() {
            Stage::DataBlock
        } else {
            stage
        };
        self.fail(Error::ConnectionLost { stage });
    }

    /// The handshake that [`Event::StartTls`] asked for is over.
    pub fn tls_done(&mut self, ok: bool, now: Instant) {
        if self.state != State::TlsHandshake {
            return;
        }
        if !ok {
            // The stream is unusable after a failed handshake, whatever the policy; the
            // driver may reconnect in plaintext when the policy is opportunistic.
            self.fail(Error::TlsFailed);
            return;
        }
        self.tls_active = true;
        self.state = State::Opening;
        self.ext = Extensions::default();
        self.ehlo_done = false;
        self.command(format!("EHLO {}\r\n", self.cfg.ehlo_name).into_bytes(), Expect::Ehlo, now);
    }

    /// Starts a message. Only when [`Client::is_ready`]; otherwise the message gets
    /// a connection error at once.
    pub fn send(&mut self, msg: Arc<OutboundMessage>, now: Instant) {
        let n = msg.rcpts.len();
        if self.state != State::Idle {
            let err = Error::ConnectionLost { stage: Stage::Mail };
            self.events.push_back(Event::Done((0..n).map(|_| Err(err.clone())).collect()));
            return;
        }
        // Refusals decided before a byte is sent; the connection stays usable.
        let refusal = match self.ext.size {
            Some(max) if max > 0 && msg.content.len() as u64 > max => {
                Some(Error::TooBig { size: msg.content.len() as u64, max })
            }
            _ if msg.eight_bit && !self.ext.eight_bit_mime => Some(Error::EightBitUnsupported),
            _ if msg.smtputf8 && !self.ext.smtputf8 => Some(Error::SmtpUtf8Unsupported),
            _ => None,
        };
        if let Some(err) = refusal {
            self.events.push_back(Event::Done((0..n).map(|_| Err(err.clone())).collect()));
            self.events.push_back(Event::Ready);
            return;
        }
        let mut queued = VecDeque::new();
        if self.used {
            queued.push_back((b"RSET\r\n".to_vec(), Expect::Rset));
        }
        let mut mail = format!("MAIL FROM:<{}>", msg.from);
        if self.ext.size.is_some() {
            mail.push_str(&format!(" SIZE={}", msg.content.len()));
        }
        if msg.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if msg.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        // RFC 3461 §4: the DSN parameters go on to a next hop that offers DSN.
        if self.ext.dsn {
            match msg.dsn.ret {
                Some(crate::wire::Ret::Full) => mail.push_str(" RET=FULL"),
                Some(crate::wire::Ret::Hdrs) => mail.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = &msg.dsn.envid {
                mail.push_str(&format!(" ENVID={envid}"));
            }
        }
        // RFC 4954 §5: to a next hop we authenticated to, the submitter or <> (unknown).
        if self.authenticated {
            mail.push_str(&format!(" AUTH={}", msg.auth.as_deref().unwrap_or("<>")));
        }
        mail.push_str("\r\n");
        queued.push_back((mail.into_bytes(), Expect::Mail));
        for (i, r) in msg.rcpts.iter().enumerate() {
            let mut line = format!("RCPT TO:<{r}>");
            if self.ext.dsn
                && let Some((notify, orcpt)) = msg.dsn.rcpts.get(i)
            {
                if let Some(n) = notify {
                    line.push_str(&format!(" NOTIFY={}", n.keywords()));
                }
                if let Some(o) = orcpt {
                    line.push_str(&format!(" ORCPT={o}"));
                }
            }
            line.push_str("\r\n");
            queued.push_back((line.into_bytes(), Expect::Rcpt(i)));
        }
        queued.push_back((b"DATA\r\n".to_vec(), Expect::Data));
        self.used = true;
        self.state = State::Transaction;
        self.txn = Some(Txn {
            msg,
            results: vec![None; n],
            mail_error: None,
            queued,
            accepted: 0,
            body_pos: None,
            line_start: true,
        });
        self.send_queued(now);
    }

    /// Ends the connection politely (QUIT), when no message is in flight.
    pub fn quit(&mut self, now: Instant) {
        match self.state {
            State::Idle | State::Opening => self.send_quit(now),
            State::Closed | State::Quitting | State::Transaction | State::TlsHandshake => {}
        }
    }

    /// Bytes from the server.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        self.input.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &self.input[start..]) {
            let end = start + nl;
            let line = &self.input[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let parsed = parse_line(line);
            start = end + 1;
            match parsed {
                Err(what) => {
                    self.input.clear();
                    self.protocol_error(what);
                    return;
                }
                Ok((code, last, text)) => {
                    if self.lines.len() >= MAX_REPLY_LINES {
                        self.input.clear();
                        self.protocol_error("reply with too many lines");
                        return;
                    }
                    self.lines.push(format!("{code:03} {text}"));
                    if last {
                        let lines = std::mem::take(&mut self.lines);
                        if lines.iter().any(|l| !l.starts_with(&lines[0][..3])) {
                            self.input.clear();
                            self.protocol_error("multi-line reply with changing codes");
                            return;
                        }
                        self.on_reply(code, lines, now);
                        if self.state == State::Closed || self.state == State::TlsHandshake {
                            // Anything after a reply that hands the stream to TLS is
                            // plaintext injection (RFC 3207 §5): drop it.
                            self.input.clear();
                            return;
                        }
                    }
                }
            }
        }
        self.input.drain(..start);
        if self.input.len() > MAX_REPLY_LINE {
            self.input.clear();
            self.protocol_error("reply line too long");
        }
    }

    fn protocol_error(&mut self, what: &'static str) {
        let stage = self.awaiting.front().map_or(Stage::Quit, |e| e.stage());
        self.fail(Error::Protocol { stage, what });
    }

    fn on_reply(&mut self, code: u16, lines: Vec<String>, now: Instant) {
        let Some(expect) = self.awaiting.pop_front() else {
            self.protocol_error("reply without a command");
            return;
        };
        let text: Vec<&str> = lines.iter().map(|l| &l[4..]).collect();
        let (enhanced, first) = split_enhanced(code, text[0]);
        let mut joined = first.to_string();
        for t in &text[1..] {
            joined.push('\n');
            joined.push_str(if enhanced.is_some() { split_enhanced(code, t).1 } else { t });
        }
        let reply = Response { code, enhanced: enhanced.map(str::to_string), text: joined };
        let closing = (code == 421).then(|| reply.clone());
        // Restart the clock for the next awaited reply.
        self.deadline = self.awaiting.front().map(|e| (now + self.cfg.timeouts.of(e.stage()), e.stage()));
        match expect {
            Expect::Greeting => {
                if code == 220 {
                    self.command(format!("EHLO {}\r\n", self.cfg.ehlo_name).into_bytes(), Expect::Ehlo, now);
                } else {
                    self.refuse_opening(Stage::Greeting, reply, now);
                }
            }
            Expect::Ehlo => {
                if code == 250 {
                    self.ext = Extensions::parse(&lines);
                    self.ehlo_done = true;
                    self.after_ehlo(now);
                } else if (500..600).contains(&code) {
                    self.command(format!("HELO {}\r\n", self.cfg.ehlo_name).into_bytes(), Expect::Helo, now);
                } else {
                    self.refuse_opening(Stage::Ehlo, reply, now);
                }
            }
            Expect::Helo => {
                if code == 250 {
                    self.ext = Extensions::default();
                    self.after_ehlo(now);
                } else {
                    self.refuse_opening(Stage::Helo, reply, now);
                }
            }
            Expect::StartTls => {
                if code == 220 {
                    self.state = State::TlsHandshake;
                    self.deadline = None;
                    self.events.push_back(Event::StartTls);
                } else if self.cfg.tls == TlsPolicy::Require {
                    self.refuse_opening(Stage::StartTls, reply, now);
                } else {
                    // Opportunistic: carry on in plaintext; the EHLO state still holds.
                    self.ext.starttls = false;
                    self.after_ehlo(now);
                }
            }
            Expect::AuthLoginUser | Expect::AuthLoginPass => {
                if code == 334 {
                    let cred = self.cfg.auth.clone().expect("AUTH only with credentials");
                    let (value, next) = if expect == Expect::AuthLoginUser {
                        (cred.user, Expect::AuthLoginPass)
                    } else {
                        (cred.password, Expect::AuthDone)
                    };
                    let mut line = base64(value.as_bytes());
                    line.push_str("\r\n");
                    self.command(line.into_bytes(), next, now);
                } else {
                    self.refuse_opening(Stage::Auth, reply, now);
                }
            }
            Expect::AuthDone => {
                if code == 235 {
                    self.authenticated = true;
                    self.become_idle();
                } else {
                    self.refuse_opening(Stage::Auth, reply, now);
                }
            }
            Expect::Rset => {
                if code == 250 {
                    self.send_queued(now);
                } else {
                    // The connection is not in a state we know: give up on it.
                    self.fail(Error::Rejected { stage: Stage::Rset, reply });
                }
            }
            Expect::Mail => {
                let Some(txn) = self.txn.as_mut() else { return };
                if !reply.is_positive() {
                    txn.mail_error = Some(Error::Rejected { stage: Stage::Mail, reply });
                    // Not pipelined: nothing more to send for this message.
                    txn.queued.clear();
                }
                self.send_queued(now);
                self.maybe_finish();
            }
            Expect::Rcpt(i) => {
                let Some(txn) = self.txn.as_mut() else { return };
                let result = match &txn.mail_error {
                    Some(e) => Err(e.clone()),
                    None if reply.is_positive() => {
                        txn.accepted += 1;
                        Ok(reply)
                    }
                    None => Err(Error::Rejected { stage: Stage::Rcpt, reply }),
                };
                txn.results[i] = Some(result);
                // Without PIPELINING, DATA is worth sending only if someone was accepted.
                if txn.queued.front().is_some_and(|(_, e)| *e == Expect::Data) && txn.accepted == 0 {
                    let last_rcpt = txn.results.iter().all(Option::is_some);
                    if last_rcpt {
                        txn.queued.clear();
                    }
                }
                self.send_queued(now);
                self.maybe_finish();
            }
            Expect::Data => {
                let Some(txn) = self.txn.as_mut() else { return };
                if code == 354 {
                    if txn.accepted == 0 {
                        // Pipelined DATA taken with no recipient (RFC 2920 §3.1): an
                        // empty message, whose reply we ignore.
                        self.output.extend_from_slice(b".\r\n");
                        self.awaiting.push_back(Expect::DataEndIgnored);
                        self.deadline = Some((now + self.cfg.timeouts.data_end, Stage::DataEnd));
                    } else {
                        txn.body_pos = Some(0);
                        self.deadline = Some((now + self.cfg.timeouts.data_block, Stage::DataBlock));
                    }
                } else {
                    let err = txn.mail_error.clone().unwrap_or(Error::Rejected { stage: Stage::Data, reply });
                    Self::fill_accepted(txn, &err);
                    self.maybe_finish();
                }
            }
            Expect::DataEnd => {
                let Some(txn) = self.txn.as_mut() else { return };
                let result =
                    if reply.is_positive() { Ok(reply) } else { Err(Error::Rejected { stage: Stage::DataEnd, reply }) };
                for r in txn.results.iter_mut() {
                    if let Some(Ok(_)) = r {
                        *r = Some(result.clone());
                    }
                }
                txn.body_pos = None;
                self.maybe_finish();
            }
            Expect::DataEndIgnored => {
                if let Some(txn) = self.txn.as_mut() {
                    txn.body_pos = None;
                }
                self.maybe_finish();
            }
            Expect::Quit => self.close(None),
        }
        if let Some(reply) = closing
            && self.state != State::Closed
        {
            // The server is closing the channel (RFC 5321 §3.8).
            self.fail(Error::Rejected { stage: expect.stage(), reply });
        }
    }

    /// After a pipelined DATA was refused, accepted recipients share its error.
    fn fill_accepted(txn: &mut Txn, err: &Error) {
        for r in txn.results.iter_mut() {
            if matches!(r, Some(Ok(_))) {
                *r = Some(Err(err.clone()));
            }
        }
    }

    /// Sends the next queued commands: all of them with PIPELINING, else one when nothing
    /// is awaited.
    fn send_queued(&mut self, now: Instant) {
        let pipelining = self.cfg.pipelining && self.ext.pipelining;
        let Some(txn) = self.txn.as_mut() else { return };
        while let Some((bytes, expect)) = txn.queued.pop_front() {
            if !pipelining && !self.awaiting.is_empty() {
                txn.queued.push_front((bytes, expect));
                break;
            }
            self.output.extend_from_slice(&bytes);
            if self.awaiting.is_empty() {
                self.deadline = Some((now + self.cfg.timeouts.of(expect.stage()), expect.stage()));
            }
            self.awaiting.push_back(expect);
        }
    }

    /// Ends the message once every reply is in and no content is being sent.
    fn maybe_finish(&mut self) {
        let Some(txn) = self.txn.as_ref() else { return };
        if !self.awaiting.is_empty() || !txn.queued.is_empty() || txn.body_pos.is_some() {
            return;
        }
        let txn = self.txn.take().expect("checked");
        let mail_error = txn.mail_error;
        let results = txn
            .results
            .into_iter()
            .map(|r| match r {
                Some(r) => r,
                None => Err(mail_error.clone().unwrap_or(Error::Protocol { stage: Stage::Rcpt, what: "no reply" })),
            })
            .collect();
        self.events.push_back(Event::Done(results));
        self.become_idle();
    }

    fn become_idle(&mut self) {
        self.state = State::Idle;
        self.deadline = None;
        self.events.push_back(Event::Ready);
    }

    /// EHLO (or HELO) succeeded: STARTTLS, AUTH, or ready.
    fn after_ehlo(&mut self, now: Instant) {
        if !self.tls_active && self.cfg.tls != TlsPolicy::Off {
            if self.ext.starttls {
                self.command(b"STARTTLS\r\n".to_vec(), Expect::StartTls, now);
                return;
            }
            if self.cfg.tls == TlsPolicy::Require {
                self.send_quit_with(Error::TlsUnavailable, now);
                return;
            }
        }
        if let Some(cred) = self.cfg.auth.clone()
            && !self.authenticated
        {
            if !self.tls_active && !self.cfg.auth_without_tls {
                self.send_quit_with(Error::AuthUnavailable("credentials are not sent without TLS"), now);
                return;
            }
            let mech = match cred.mechanism {
                Some(AuthMechanism::Plain) if self.ext.auth_plain => AuthMechanism::Plain,
                Some(AuthMechanism::Login) if self.ext.auth_login => AuthMechanism::Login,
                None if self.ext.auth_plain => AuthMechanism::Plain,
                None if self.ext.auth_login => AuthMechanism::Login,
                _ => {
                    self.send_quit_with(Error::AuthUnavailable("the server offers neither PLAIN nor LOGIN"), now);
                    return;
                }
            };
            match mech {
                AuthMechanism::Plain => {
                    let mut raw = Vec::with_capacity(cred.user.len() + cred.password.len() + 2);
                    raw.push(0);
                    raw.extend_from_slice(cred.user.as_bytes());
                    raw.push(0);
                    raw.extend_from_slice(cred.password.as_bytes());
                    let line = format!("AUTH PLAIN {}\r\n", base64(&raw));
                    self.command(line.into_bytes(), Expect::AuthDone, now);
                }
                AuthMechanism::Login => self.command(b"AUTH LOGIN\r\n".to_vec(), Expect::AuthLoginUser, now),
            }
            return;
        }
        self.become_idle();
    }

    /// Sends one command outside a transaction and waits for its reply.
    fn command(&mut self, bytes: Vec<u8>, expect: Expect, now: Instant) {
        self.output.extend_from_slice(&bytes);
        self.awaiting.push_back(expect);
        self.deadline = Some((now + self.cfg.timeouts.of(expect.stage()), expect.stage()));
    }

    fn refuse_opening(&mut self, stage: Stage, reply: Response, now: Instant) {
        let closing = reply.code == 421;
        let err = Error::Rejected { stage, reply };
        if closing { self.fail(err) } else { self.send_quit_with(err, now) }
    }

    fn send_quit(&mut self, now: Instant) {
        self.command(b"QUIT\r\n".to_vec(), Expect::Quit, now);
        self.state = State::Quitting;
    }

    /// QUIT, and report `err` as the reason the connection ended.
    fn send_quit_with(&mut self, err: Error, now: Instant) {
        self.send_quit(now);
        self.events.push_back(Event::Closed(Some(err)));
        // Done: the QUIT reply is not awaited by anyone.
        self.state = State::Closed;
        self.awaiting.clear();
        self.deadline = None;
    }

    /// The connection failed: the message in flight (if any) gets `err` for every
    /// recipient without a final result, and the connection ends.
    fn fail(&mut self, err: Error) {
        if let Some(txn) = self.txn.take() {
            let mail_error = txn.mail_error;
            let results = txn
                .results
                .into_iter()
                .map(|r| match r {
                    Some(Err(e)) => Err(e),
                    // Accepted at RCPT but the data never completed.
                    Some(Ok(_)) => Err(err.clone()),
                    None => Err(mail_error.clone().unwrap_or_else(|| err.clone())),
                })
                .collect();
            self.events.push_back(Event::Done(results));
        }
        self.close(Some(err));
    }

    fn close(&mut self, err: Option<Error>) {
        if self.state != State::Closed {
            self.events.push_back(Event::Closed(err));
        }
        self.state = State::Closed;
        self.awaiting.clear();
        self.deadline = None;
    }
}

/// Parses `ddd[ -]text`: (code, is last line, text).
fn parse_line(line: &[u8]) -> Result<(u16, bool, String), &'static str> {
    if line.len() > MAX_REPLY_LINE {
        return Err("reply line too long");
    }
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err("reply without a code");
    }
    let code = (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
    if !(200..600).contains(&code) {
        return Err("reply code out of range");
    }
    let last = match line.get(3) {
        None | Some(b' ') => true,
        Some(b'-') => false,
        Some(_) => return Err("bad reply separator"),
    };
    let text = String::from_utf8_lossy(line.get(4..).unwrap_or(b"")).into_owned();
    Ok((code, last, text))
}

/// Appends `data` dot-stuffed (RFC 5321 §4.5.2); `line_start` carries across blocks.
fn stuff(data: &[u8], line_start: &mut bool, out: &mut Vec<u8>) {
    for &b in data {
        if *line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        *line_start = b == b'\n';
    }
}

/// Standard base64 with padding (RFC 4648 §4), for AUTH.
pub fn base64(data: &[u8]) -> String {
    ringmx_b64::encode(data)
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
