//! The SMTP server session, sans-IO.
//!
//! A [`Session`] is the whole SMTP conversation of one connection as a state machine. It
//! does no I/O and reads no clock: the driver (see `rt`) feeds it what the peer sent and the
//! time, and takes out what to do.
//!
//! # The contract
//!
//! - [`Session::handle_input`]: bytes from the peer (plaintext, after TLS).
//! - [`Session::output`]: reply bytes to send; the driver drains it.
//! - [`Session::poll_action`]: [`Action::Spool`] (make a message durable, then call
//!   [`Session::spool_done`]), [`Action::Resolve`] (answer a DNS question with
//!   [`Session::provide_policy_answer`]), [`Action::Authenticate`] (verify a password off the
//!   shard, answer with [`Session::auth_done`]), [`Action::StartTls`], [`Action::Close`].
//! - [`Session::poll_timeout`] / [`Session::handle_timeout`]: the RFC 5321 §4.5.3.2 time-outs.
//! - [`Session::tls_established`]: the connection switched to TLS after STARTTLS (before
//!   the handshake completes; [`Session::set_tls`] refines it once done).
//!
//! While a message is being spooled, a DNS answer or a password check is awaited, the
//! session reads no further commands: pipelined input waits in a buffer, and replies keep
//! their order.
//!
//! On a listener with the PROXY protocol, a connection from a trusted load balancer starts
//! by reading the PROXY header; the address it names is the client for every rule and the
//! Received header. The greeting waits for the connect checks (access list, bans, DNSBL).
//!
//! # Layout
//!
//! - `mod.rs`: the type, its configuration, input dispatch, time-outs.
//! - `commands.rs`: one function per verb outside DATA and AUTH.
//! - `checks.rs`: the policy steps: connect (PROXY, access list, DNSBL, greeting), the MAIL
//!   and RCPT rules, DNS answers.
//! - `auth.rs`: AUTH PLAIN and LOGIN (RFC 4954).
//! - `data.rs`: DATA and BDAT content, the Received header, handing off to the spool.

mod auth;
mod checks;
mod commands;
mod data;
mod delegate;
mod script;
mod trace;

use crate::directory::Directory;
use crate::dns::DnsQuery;
use crate::obs::tally::Tally;
use crate::policy::auth::AuthRequest;
use crate::policy::{AuthMode, IpList, Policy, Refusal};
use crate::spool::{Envelope, IdGen, NewMessage, QueueId};
use crate::util::time::Now;
use crate::wire::{BareLinePolicy, DataScanner, Reply, next_line};
use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reply bytes after which the session stops processing input until the driver has sent
/// them ([`Session::resume`]).
pub const OUTPUT_PAUSE: usize = 16 * 1024;
/// Buffered input past which a session closes (421 4.7.0) rather than buffer more: reached
/// only by a driver that reads on when [`Session::wants_input`] says no.
pub const INPUT_BACKLOG_LIMIT: usize = 256 * 1024;
/// Buffers larger than this are given back once empty, so that a burst does not pin memory
/// for the rest of a connection.
pub const KEEP_BUFFER: usize = 64 * 1024;

/// Settings of a session that come from the configuration, shared by every connection of
/// a listener.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our name, in the greeting, EHLO reply and Received header.
    pub hostname: String,
    /// Text of the 220 greeting after the host name.
    pub banner: String,
    /// Largest message accepted, in bytes of content; 0 for no limit (SIZE without a value).
    pub max_message_size: u64,
    /// Refuse SIZE= above the maximum and stop storing an oversized body (552 5.3.4).
    pub enforce_size: bool,
    /// Recipients per transaction (RFC 5321 §4.5.3.1.8 asks for at least 100); 452 4.5.3 past it.
    pub max_recipients: usize,
    /// Longest command line, with CRLF (RFC 5321 §4.5.3.1.4: at least 512).
    pub max_line: usize,
    /// Errors (4xx/5xx replies) after which the connection is dropped with 421 4.7.0.
    pub max_errors: u32,
    pub bare_line_policy: BareLinePolicy,
    /// Waiting for a command (RFC 5321 §4.5.3.2.7: 5 minutes).
    pub command_timeout: Duration,
    /// Receiving a DATA body or one BDAT chunk (RFC 5321 §4.5.3.2.5/6: 3 minutes), stretched
    /// by `min_data_rate` but never past this much after the last block.
    pub data_timeout: Duration,
    /// Bytes per second of content that extend the data deadline (each block of n bytes adds
    /// n / rate, as Postfix's `smtpd_min_data_rate`); a slower sender hits `data_timeout`.
    /// 0: every block renews `data_timeout` (RFC 5321's literal reading, which a trickling
    /// sender can stretch for ever).
    pub min_data_rate: u64,
    /// The whole AUTH exchange, from the AUTH command to its last response line.
    pub auth_timeout: Duration,
    /// Longest a connection may last, whatever it does (421 4.4.2); zero for no limit.
    pub max_session_time: Duration,
    /// Under stress (open connections at or above `stress_threshold` of the server's
    /// maximum) every wait is cut to this: a whole command, a SASL exchange, or the gap
    /// between two blocks of content (Postfix's stress-dependent `smtpd_timeout`).
    pub stress_timeout: Duration,
    /// The fraction of `max_connections` at which stress begins; 0 turns it off.
    pub stress_threshold: f64,
    /// Recipients past `max_recipients` that get 452 4.5.3 without counting as errors
    /// (Postfix's `smtpd_recipient_overshoot_limit`); the transaction goes on with the first
    /// `max_recipients`.
    pub recipient_overshoot: usize,
    /// Offer STARTTLS (a certificate is configured and the listener is not implicit TLS).
    pub starttls: bool,
    /// Domains accepted for every address without directory entries (held in the queue,
    /// or relayed to a smart host), lower case. Directory domains are looked up there.
    pub local_domains: HashSet<String>,
    /// Catch-all addresses of directory domains apply (the "disable all catch-alls" switch
    /// turns this off).
    pub catch_alls: bool,
    /// Mailbox usage, kept by local delivery, so that RCPT can refuse a mailbox known to be
    /// full (552 5.2.2). None: no mailbox is known full.
    pub usage: Option<Arc<crate::delivery::maildir::UsageCache>>,
    /// The server's connection limits: a PROXY-protocol session counts its client's real
    /// address there once the header is read (421 4.7.0 over the per-address limit).
    pub conn_limits: Option<Arc<crate::policy::ConnLimits>>,
    /// Show 127.0.0.1 instead of the client address in the Received header.
    pub hide_client_ip: bool,
    /// The rules at the door, shared by every listener of the server.
    pub policy: Arc<Policy>,
    /// May clients authenticate on this listener (538 5.7.11 before TLS for `tls_only`)?
    pub auth_mode: AuthMode,
    /// Transactions on this listener must authenticate first (530 5.7.0).
    pub require_auth: bool,
    /// PROXY protocol: the load balancers whose header is read; `None` when off.
    pub proxy_from: Option<Arc<IpList>>,
    /// The listener's own bound addresses (domain literals naming them are local).
    pub own_addresses: Vec<IpAddr>,
    /// Report accepted messages and refused clients ([`Action::Log`]) for the activity log.
    pub activity: bool,
    /// Record each exchange for the W3C log (handed over in batches as [`Action::Log`]).
    pub w3c: bool,
    /// The debug log's switch: sessions of the clients it names trace their protocol
    /// (none: never).
    pub debug: Option<Arc<crate::obs::debug::DebugSwitch>>,
    /// The listener's pregreet wait ([`crate::policy::early`]); zero: off.
    pub pregreet: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hostname: "localhost".into(),
            banner: "ESMTP ringmx".into(),
            max_message_size: 10 * 1024 * 1024,
            enforce_size: true,
            max_recipients: 100,
            max_line: 2048,
            max_errors: 20,
            bare_line_policy: BareLinePolicy::Reject,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            min_data_rate: 500,
            auth_timeout: Duration::from_secs(60),
            max_session_time: Duration::from_secs(3600),
            stress_timeout: Duration::from_secs(10),
            stress_threshold: 0.8,
            recipient_overshoot: 1000,
            starttls: false,
            local_domains: HashSet::new(),
            catch_alls: true,
            usage: None,
            conn_limits: None,
            hide_client_ip: false,
            policy: Arc::new(Policy::default()),
            auth_mode: AuthMode::TlsOnly,
            require_auth: false,
            proxy_from: None,
            own_addresses: Vec::new(),
            activity: false,
            w3c: false,
            debug: None,
            pregreet: Duration::ZERO,
        }
    }
}

/// The TLS parameters of a connection, for the Received header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
}

/// What the driver must do for the session.
#[derive(Debug)]
pub enum Action {
    /// Make this message durable; answer with [`Session::spool_done`].
    Spool(Box<NewMessage>),
    /// Answer this DNS question with [`Session::provide_policy_answer`].
    Resolve(DnsQuery),
    /// Verify this password off the shard; answer with [`Session::auth_done`].
    Authenticate(Box<AuthRequest>),
    /// Ask policy service `usize` (of the policy's `delegation`); answer with
    /// [`Session::delegation_done`].
    Delegate(Box<crate::policy::delegation::Request>, usize),
    /// Check SPF; answer with [`Session::spf_done`].
    Spf(Box<crate::policy::spf::Request>),
    /// Verify DKIM and DMARC; answer with [`Session::dkim_done`].
    Dkim(Box<crate::policy::dkim::Request>),
    /// Open milter `usize`'s conversation about the transaction (connect, HELO, MAIL);
    /// answer with [`Session::milter_step_done`].
    MilterOpen(Arc<crate::policy::milter::Request>, usize),
    /// Ask milter `usize` about a recipient; answer with [`Session::milter_step_done`].
    MilterRcpt(String, usize),
    /// Ask milter `usize` about the content (its conversation ends); answer with
    /// [`Session::milter_done`].
    Milter(Arc<crate::policy::milter::Request>, usize),
    /// The transaction's milter conversations will not reach their end: abort them.
    MilterAbort,
    /// Send the pending output, then start a TLS handshake as the server.
    StartTls,
    /// Send the pending output, then close the connection.
    Close,
    /// A line for the activity log (only when [`SessionConfig::activity`] is on).
    Log(Box<crate::obs::Activity>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the PROXY protocol header of a trusted load balancer.
    Proxy,
    /// The pregreet wait: the greeting is not sent yet, and the client must not talk.
    Pregreet,
    /// Reading command lines.
    Command,
    /// Reading a SASL response line of AUTH.
    Sasl(auth::SaslStep),
    /// A DNS answer or a password check is awaited.
    Waiting,
    /// A command line was too long: discard up to the next LF.
    SkipLine,
    /// Reading DATA content.
    Data,
    /// Reading a BDAT chunk; `discard` when the chunk is read only to be thrown away.
    Bdat {
        remaining: u64,
        last: bool,
        discard: bool,
    },
    /// A message is with the spool.
    Spooling,
    /// STARTTLS accepted; waiting for the handshake.
    TlsPending,
    Closed,
}

/// The transaction between MAIL and the end of data.
#[derive(Debug, Default)]
struct Transaction {
    envelope: Option<Envelope>,
    /// Content bytes received (for the SIZE limit).
    content_len: u64,
    /// The content is being read only to be refused (too big, bare line endings).
    too_big: bool,
    /// A BDAT transaction has started (DATA is then out of sequence, RFC 3030 §2).
    bdat: bool,
    /// The Received header is written and content follows.
    started: bool,
    /// A BDAT chunk is read only to be refused with this reply (RFC 3030 §2).
    refusal: Option<Reply>,
    /// Recipients refused for exceeding `max_recipients` so far.
    overshoot: usize,
    /// Header fields policy services and scripts asked to put on top of the message.
    prepend: Vec<String>,
    /// A script asked to deliver the message through this host.
    route: Option<String>,
    /// A script or milter asked to hold the message in the queue, for this reason.
    quarantine: Option<String>,
    /// The SPF result at MAIL.
    spf: Option<crate::policy::spf::Outcome>,
    /// Our `Authentication-Results` methods (SPF, DKIM, DMARC), for the field on top.
    auth_results: Vec<String>,
    /// A milter said discard at MAIL or RCPT: the message is taken and dropped.
    milter_discard: bool,
}

/// One SMTP server conversation; see the module documentation.
pub struct Session {
    cfg: Arc<SessionConfig>,
    ids: Rc<RefCell<IdGen>>,
    /// The directory as it was when the connection came; a reload affects later ones.
    directory: Arc<Directory>,
    /// The client: the connection's peer, or the address a PROXY header named.
    peer: SocketAddr,
    /// The authenticated login, once AUTH succeeded.
    auth: Option<auth::Identity>,
    /// AUTH LOGIN: the user name, until the password comes.
    sasl_user: Option<String>,
    /// What an outstanding DNS question or password check is for.
    wait: Option<checks::Wait>,
    /// The PTR check's result on this connection: `Some(true)` has a PTR record.
    ptr_found: Option<bool>,
    /// Unix time of the latest input, for decisions that need wall time (bans).
    last_unix: u64,
    phase: Phase,
    /// The HELO/EHLO argument, once given.
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    tx: Transaction,
    scanner: DataScanner,
    /// Message buffer: Received header and content; handed to the spool and given back.
    body: Vec<u8>,
    /// Input not yet processed (a partial line, or pipelined commands while spooling).
    pending: Vec<u8>,
    out: Vec<u8>,
    actions: VecDeque<Action>,
    errors: u32,
    /// When the current wait times out (before stress and the session limit are applied).
    deadline: Instant,
    /// When the current wait began: the command awaited, or the last block of content.
    wait_start: Instant,
    /// The end of the connection's allowed lifetime (`max_session_time`).
    session_end: Option<Instant>,
    /// Output is backed up: input stays in `pending` until [`Session::resume`].
    paused: bool,
    /// Start of the Received header in `body`, for the Received "for" clause.
    received_hdr_len: usize,
    messages: u64,
    /// The client address this session counts in `cfg.conn_limits` (a proxied client).
    counted_ip: Option<std::net::IpAddr>,
    /// Why the session closed the connection before serving it, if it did.
    refusal: Option<Refusal>,
    /// The session's id in the activity log (the driver's: [`Session::set_id`]).
    id: u64,
    /// The message with the spool, for its activity line: sender, recipients, size.
    spooling: Option<(String, usize, u64)>,
    /// The exchange waiting for its reply to be sent ([`trace`]).
    exchange: Option<trace::Open>,
    /// W3C lines not yet handed to the log (with `[log.w3c]` on).
    w3c_lines: Vec<crate::obs::w3c::Exchange>,
    /// Their arguments, one after the other.
    w3c_text: String,
    /// The address the client connected to, when the driver said (W3C `s-ip`, `s-port`).
    local: Option<SocketAddr>,
    /// The protocol trace not yet handed to the debug log (only when this session traces).
    debug: Option<Vec<crate::obs::debug::DebugLine>>,
    /// Where phase latencies and AUTH results are counted (the shard's; none in tests
    /// that do not look).
    tally: Option<Rc<RefCell<Tally>>>,
    /// This shard's state for the configuration's script (when there is one).
    scripts: Option<Rc<RefCell<crate::policy::script::ScriptHost>>>,
    /// Under the pregreet test: commands pipelined without PIPELINING offered (before or
    /// with HELO/EHLO, or after HELO) end the session.
    strict_pipelining: bool,
    /// The SPF result of the transaction being opened, and its method for
    /// `Authentication-Results`.
    spf_result: Option<(crate::policy::spf::Outcome, String)>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let (Some(ip), Some(l)) = (self.counted_ip, &self.cfg.conn_limits) {
            l.release_ip(ip);
        }
        // For the next session of this thread (a shard's).
        crate::util::spare::give(std::mem::take(&mut self.out));
        crate::util::spare::give(std::mem::take(&mut self.body));
    }
}

impl Session {
    /// A new session, named `id` in the activity log (the shard's number and a counter); the
    /// greeting is already in [`Session::output`].
    pub fn new(
        cfg: Arc<SessionConfig>,
        ids: Rc<RefCell<IdGen>>,
        directory: Arc<Directory>,
        peer: SocketAddr,
        tls: Option<TlsInfo>,
        now: Now,
        id: u64,
    ) -> Self {
        let proxied = cfg.proxy_from.as_ref().is_some_and(|l| l.contains(peer.ip()));
        let mut s = Session {
            scanner: DataScanner::new(cfg.bare_line_policy),
            deadline: now.mono + cfg.command_timeout,
            wait_start: now.mono,
            session_end: (!cfg.max_session_time.is_zero()).then(|| now.mono + cfg.max_session_time),
            paused: false,
            cfg,
            ids,
            directory,
            peer,
            auth: None,
            sasl_user: None,
            wait: None,
            ptr_found: None,
            last_unix: now.unix_secs(),
            phase: if proxied { Phase::Proxy } else { Phase::Command },
            helo: None,
            esmtp: false,
            tls,
            tx: Transaction::default(),
            body: crate::util::spare::take(0),
            pending: Vec::new(),
            out: crate::util::spare::take(512),
            actions: VecDeque::new(),
            errors: 0,
            received_hdr_len: 0,
            messages: 0,
            counted_ip: None,
            refusal: None,
            spooling: None,
            id,
            exchange: None,
            w3c_lines: Vec::new(),
            w3c_text: String::new(),
            local: None,
            debug: None,
            tally: None,
            scripts: None,
            strict_pipelining: false,
            spf_result: None,
        };
        if let Some(scripts) = s.cfg.policy.scripts.clone() {
            s.scripts = crate::policy::script::host_for_this_thread(&scripts);
        }
        s.trace_if_debugged();
        if !proxied {
            s.connect(now);
        }
        s
    }

    /// Counts phase latencies and AUTH results into `tally` from now on.
    pub fn set_tally(&mut self, tally: Rc<RefCell<Tally>>) {
        self.tally = Some(tally);
    }

    /// The settings this session runs with (the driver finds the shared services there).
    pub fn config(&self) -> &Arc<SessionConfig> {
        &self.cfg
    }

    /// The client address the rules see (after any PROXY header).
    pub fn client(&self) -> SocketAddr {
        self.peer
    }

    /// The login that authenticated, if any.
    pub fn authenticated(&self) -> Option<&str> {
        self.auth.as_ref().map(|a| a.login.as_str())
    }

    /// Reply bytes waiting to be sent. The driver sends them and clears (or swaps) the vector.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// True once the session has asked to be closed.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Messages accepted on this connection so far.
    pub fn messages_accepted(&self) -> u64 {
        self.messages
    }

    /// Why the session refused the connection (closed it before serving it), if it did.
    pub fn refusal(&self) -> Option<Refusal> {
        self.refusal
    }

    /// A line for the activity log, when it is on.
    fn log(&mut self, at_ms: u64, what: crate::obs::What) {
        if self.cfg.activity {
            self.actions.push_back(Action::Log(Box::new(crate::obs::Activity { at_ms, what })));
        }
    }

    /// Refuses the client before serving it: `reply`, then close; counted and logged
    /// under `why` with the `rule` that refused it.
    fn refuse(&mut self, at_ms: u64, why: Refusal, rule: String, reply: Reply) {
        self.reply(reply);
        self.refusal = Some(why);
        let client = self.peer.ip();
        self.log(at_ms, crate::obs::What::Refused { session: self.id, client, reason: why, rule });
        self.close();
    }

    /// True while the session waits for the driver (spool, DNS, password check).
    fn is_blocked(&self) -> bool {
        matches!(self.phase, Phase::Spooling | Phase::Waiting)
    }

    /// True while input is not being processed: the session waits for the driver, or its
    /// output is backed up.
    fn is_stalled(&self) -> bool {
        self.paused || self.is_blocked()
    }

    /// Should the driver read more from the peer? False while the output is backed up
    /// ([`Session::is_paused`]), while the session waits for the driver with pipelined input
    /// already buffered, and once it is closed. The driver then stops reading (the peer's
    /// further bytes wait in the kernel, and TCP's window pushes back on the peer); at most
    /// one read's worth more is buffered here.
    pub fn wants_input(&self) -> bool {
        !matches!(self.phase, Phase::Closed | Phase::TlsPending)
            && !self.paused
            && (self.pending.is_empty() || !self.is_blocked())
    }

    /// True when processing stopped because [`Session::output`] reached
    /// [`OUTPUT_PAUSE`]: the driver calls [`Session::resume`] once it has sent enough.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The driver sent the backed-up output: go on with the buffered input.
    pub fn resume(&mut self, now: Now) {
        if !self.paused {
            return;
        }
        self.paused = false;
        self.process_pending(now);
    }

    /// The peer sent `data`.
    pub fn handle_input(&mut self, now: Now, data: &[u8]) {
        if self.phase == Phase::Closed || self.phase == Phase::TlsPending {
            return;
        }
        self.last_unix = now.unix_secs();
        if self.pending.is_empty() && !self.is_stalled() {
            let used = self.process(now, data);
            if used < data.len() && self.phase != Phase::Closed && self.phase != Phase::TlsPending {
                self.pending.extend_from_slice(&data[used..]);
            }
        } else if self.pending.len() + data.len() > INPUT_BACKLOG_LIMIT {
            // A driver that honours `wants_input` never gets here; one that does not must
            // not make us buffer without bound.
            let text = format!("{} Error: too much unread input", self.cfg.hostname);
            crate::wire::write_reply(&mut self.out, 421, "4.7.0", &text);
            self.close();
        } else {
            self.pending.extend_from_slice(data);
            self.process_pending(now);
        }
    }

    /// Implicit TLS behind a trusted load balancer: the PROXY header comes first, in
    /// plaintext, then the TLS handshake. Reads the header only and returns how many bytes
    /// of `data` it took (the rest is TLS): all of them while the header is incomplete, none
    /// when no header is expected.
    pub fn proxy_prelude(&mut self, now: Now, data: &[u8]) -> usize {
        if self.phase != Phase::Proxy {
            return 0;
        }
        self.last_unix = now.unix_secs();
        let before = self.pending.len();
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(data);
        match self.proxy_input(now, &buf) {
            None => {
                self.pending = buf;
                data.len()
            }
            Some(used) => used.saturating_sub(before).min(data.len()),
        }
    }

    fn process_pending(&mut self, now: Now) {
        if self.pending.is_empty() || self.is_stalled() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let used = self.process(now, &pending);
        let mut pending = pending;
        if self.phase == Phase::Closed || self.phase == Phase::TlsPending {
            pending.clear();
        } else {
            pending.drain(..used);
        }
        // Keep whatever arrived meanwhile (nothing can, we are single-threaded) and the
        // allocation, unless a burst made it large.
        if pending.is_empty() && pending.capacity() > KEEP_BUFFER {
            pending = Vec::new();
        }
        self.pending = pending;
    }

    /// Runs the state machine over `buf`; returns the bytes used. Stops early when the
    /// session must wait for the driver or its output reached [`OUTPUT_PAUSE`].
    fn process(&mut self, now: Now, buf: &[u8]) -> usize {
        let mut pos = 0;
        while pos < buf.len() {
            if self.out.len() >= OUTPUT_PAUSE && matches!(self.phase, Phase::Command | Phase::Sasl(_)) {
                // Back-pressure: a client that pipelines without reading the replies gets no
                // more of them until it reads.
                self.paused = true;
                break;
            }
            match self.phase {
                Phase::Proxy => match self.proxy_input(now, &buf[pos..]) {
                    Some(used) => pos += used,
                    None => break,
                },
                Phase::Sasl(step) => match next_line(&buf[pos..], self.cfg.max_line) {
                    Ok(Some((line, used))) => {
                        pos += used;
                        self.open_sasl(now, line.len());
                        self.sasl_line(now, step, line);
                        self.line_done(now, true);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        self.phase = Phase::SkipLine;
                        self.reply_error(Reply::new(500, "5.5.6", "Error: authentication exchange line too long"));
                    }
                },
                Phase::Pregreet => {
                    self.early_talker(now);
                    break;
                }
                Phase::Command => match next_line(&buf[pos..], self.cfg.max_line) {
                    Ok(Some((line, used))) => {
                        pos += used;
                        self.open_command(now, line);
                        // RFC 2920 §3.1: EHLO ends a group; without PIPELINING offered (before
                        // EHLO, after HELO) every command does.
                        let ends_group = self.strict_pipelining
                            && (self.helo.is_none()
                                || !self.esmtp
                                || line.get(..4).is_some_and(|v| v.eq_ignore_ascii_case(b"EHLO")));
                        self.command(now, line);
                        self.line_done(now, false);
                        if ends_group && pos < buf.len() && self.phase == Phase::Command {
                            self.improper_pipelining(now);
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        self.reply_error(Reply::new(500, "5.5.2", "Error: line too long"));
                        self.phase = Phase::SkipLine;
                    }
                },
                Phase::SkipLine => match memchr::memchr(b'\n', &buf[pos..]) {
                    Some(i) => {
                        pos += i + 1;
                        if self.phase == Phase::SkipLine {
                            self.phase = Phase::Command;
                            self.wait_for(now, self.cfg.command_timeout);
                        }
                    }
                    None => pos = buf.len(),
                },
                Phase::Data => {
                    pos += self.data_input(now, &buf[pos..]);
                    if self.phase == Phase::Command {
                        // The content was refused: the next command has its own time.
                        self.wait_for(now, self.cfg.command_timeout);
                    }
                }
                Phase::Bdat { .. } => pos += self.bdat_input(now, &buf[pos..]),
                Phase::Spooling | Phase::Waiting | Phase::TlsPending | Phase::Closed => break,
            }
        }
        pos
    }

    /// A command or SASL line was handled: start the clock of whatever is awaited next. A
    /// command line has the whole `command_timeout` to arrive, however it is split (the
    /// clock does not restart on each byte); the SASL exchange has `auth_timeout` in all,
    /// from AUTH to its last line.
    fn line_done(&mut self, now: Now, in_sasl: bool) {
        match self.phase {
            Phase::Command => self.wait_for(now, self.cfg.command_timeout),
            Phase::Waiting if !in_sasl => self.wait_for(now, self.cfg.command_timeout),
            Phase::Sasl(_) if !in_sasl => self.wait_for(now, self.cfg.auth_timeout),
            // DATA and BDAT set their own; a SASL exchange keeps its overall deadline.
            _ => {}
        }
    }

    /// A new wait begins now and lasts `timeout`.
    fn wait_for(&mut self, now: Now, timeout: Duration) {
        self.wait_start = now.mono;
        self.deadline = now.mono + timeout;
    }

    /// `n` bytes of content arrived: with a minimum data rate they buy `n / rate` more time,
    /// never more than `data_timeout` from now; without one, the full time-out again.
    fn data_progress(&mut self, now: Now, n: usize) {
        if n == 0 {
            return;
        }
        self.wait_start = now.mono;
        let cap = now.mono + self.cfg.data_timeout;
        self.deadline = match self.cfg.min_data_rate {
            0 => cap,
            rate => (self.deadline + Duration::from_secs_f64(n as f64 / rate as f64)).min(cap),
        };
    }

    /// True when the server has so many connections that waits are cut to `stress_timeout`.
    fn under_stress(&self) -> bool {
        let Some(l) = &self.cfg.conn_limits else { return false };
        self.cfg.stress_threshold > 0.0 && l.current() as f64 >= l.max_total() as f64 * self.cfg.stress_threshold
    }

    /// The spool answered an [`Action::Spool`]: `Ok` once the message is durable. `buffer`
    /// is the request's data vector, given back for reuse.
    pub fn spool_done(&mut self, now: Now, result: Result<QueueId, Reply>, mut buffer: Vec<u8>) {
        debug_assert_eq!(self.phase, Phase::Spooling);
        let spooled = self.spooling.take();
        match result {
            Ok(id) => {
                self.exchange_queued(id);
                self.messages += 1;
                crate::wire::write_reply_lines(&mut self.out, 250, "2.0.0", &[&["Ok: queued as ", id.text().as_str()]]);
                if let Some((from, rcpts, size)) = spooled {
                    let what = crate::obs::What::Received {
                        id,
                        session: self.id,
                        client: self.peer.ip(),
                        helo: self.helo.clone().unwrap_or_default(),
                        from,
                        rcpts,
                        size,
                        tls: self.tls.as_ref().map(|t| t.version.clone()),
                        auth: self.auth.as_ref().map(|a| a.login.clone()),
                    };
                    self.log(now.unix_ms, what);
                }
            }
            Err(reply) => self.reply_error(reply),
        }
        buffer.clear();
        // Keep a modest buffer for the next message; an idle connection should stay small.
        if buffer.capacity() <= 64 * 1024 {
            self.body = buffer;
        }
        if self.phase == Phase::Spooling {
            self.phase = Phase::Command;
        }
        self.wait_for(now, self.cfg.command_timeout);
        self.process_pending(now);
    }

    /// STARTTLS was answered and the connection now speaks TLS (RFC 3207 §4.2: the session
    /// starts over, the client must say EHLO again). The driver calls this as soon as it
    /// switches the connection to TLS, before the handshake completes: every byte after the
    /// 220 is TLS, so no plaintext command can reach the new session; `info` is refined with
    /// [`Session::set_tls`] once the handshake is done.
    pub fn tls_established(&mut self, now: Now, info: TlsInfo) {
        self.tls = Some(info);
        self.auth = None;
        self.helo = None;
        self.esmtp = false;
        self.tx = Transaction::default();
        self.pending.clear();
        self.phase = Phase::Command;
        self.wait_for(now, self.cfg.command_timeout);
    }

    /// The TLS handshake finished (implicit TLS, RFC 8314, or after STARTTLS): its version
    /// and cipher go into the Received header.
    pub fn set_tls(&mut self, info: TlsInfo) {
        self.tls = Some(info);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        // Waiting for DNS or a password check still times out: a lost answer must not keep
        // the connection for ever.
        match self.phase {
            Phase::Closed | Phase::Spooling => None,
            _ => Some(self.effective_deadline()),
        }
    }

    /// The deadline with stress and the session's lifetime applied: stress is judged now,
    /// so waits that began before it are cut too.
    fn effective_deadline(&self) -> Instant {
        let mut d = self.deadline;
        if self.under_stress() {
            d = d.min(self.wait_start + self.cfg.stress_timeout);
        }
        if let Some(end) = self.session_end {
            d = d.min(end);
        }
        d
    }

    /// Time passed; closes the session with 421 4.4.2 when its deadline is reached.
    pub fn handle_timeout(&mut self, now: Now) {
        if self.phase == Phase::Closed || self.phase == Phase::Spooling || now.mono < self.effective_deadline() {
            return;
        }
        if self.phase == Phase::Pregreet && self.session_end.is_none_or(|end| now.mono < end) {
            return self.pregreet_passed(now);
        }
        self.wait = None;
        let what = match self.session_end {
            Some(end) if now.mono >= end => "connection time limit exceeded",
            _ => "timeout exceeded",
        };
        let text = format!("{} Error: {what}", self.cfg.hostname);
        crate::wire::write_reply(&mut self.out, 421, "4.4.2", &text);
        self.close();
    }

    /// Server shutdown: says 421 and closes unless a message is being spooled (then the
    /// driver asks again after the spool answered).
    pub fn shutdown(&mut self) -> bool {
        match self.phase {
            Phase::Closed => true,
            Phase::Spooling => false,
            _ => {
                let text = format!("{} Service shutting down, closing transmission channel", self.cfg.hostname);
                crate::wire::write_reply(&mut self.out, 421, "4.3.2", &text);
                self.close();
                true
            }
        }
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.pending = Vec::new();
        self.actions.push_back(Action::Close);
    }

    fn reply(&mut self, r: Reply) {
        r.write(&mut self.out);
    }

    /// A command refused by a rule at `step` (`mail`, `rcpt`, `data`): the error reply and,
    /// with the activity log on, a line naming the rule, the sender and the recipient.
    fn reject(&mut self, step: &'static str, rule: &'static str, from: &str, rcpt: &str, r: Reply) {
        if self.cfg.activity {
            let what = crate::obs::What::Rejected {
                session: self.id,
                client: self.peer.ip(),
                step,
                rule,
                from: from.to_string(),
                rcpt: rcpt.to_string(),
                reply: r.to_string(),
            };
            self.log(self.last_unix * 1000, what);
        }
        self.reply_error(r);
    }

    /// Sends an error reply and counts it (failed commands and recipients alike); too many
    /// errors end the session, and with auto-ban on, ban the client.
    fn reply_error(&mut self, r: Reply) {
        r.write(&mut self.out);
        self.errors += 1;
        if self.cfg.max_errors > 0 && self.errors >= self.cfg.max_errors && self.phase != Phase::Closed {
            let text = format!("{} Error: too many errors", self.cfg.hostname);
            crate::wire::write_reply(&mut self.out, 421, "4.7.0", &text);
            self.close();
            self.auto_ban();
        }
    }
}

#[cfg(test)]
mod tests;
