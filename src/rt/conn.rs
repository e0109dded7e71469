//! One connection as both drivers see it: the SMTP session, TLS when there is any, and
//! the bytes waiting to go out. The drivers only move bytes between this and the socket.

use super::waker::ShardWaker;
use crate::dns::DnsAnswer;
use crate::obs::tally::Tally;
use crate::policy::auth::AuthOutcome;
use crate::session::{Action, Session};
use crate::spool::NewMessage;
use crate::spool::QueueId;
use crate::util::time::Now;
use crate::wire::Reply;
use rustls::ServerConnection;
use std::cell::RefCell;
use std::io::{Read, Write};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Unsent wire bytes (queued here and in the driver's send) at or above which the
/// connection is not read: a peer that does not read its replies cannot make us buffer.
pub const OUTQ_HIGH: usize = 32 * 1024;
/// A paused session resumes once the unsent bytes are below this.
pub const OUTQ_RESUME: usize = 8 * 1024;
/// How long a closing connection may take to flush its last replies before it is reset: a
/// peer that reads nothing must not hold the slot after its time-out.
pub const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// An answer from the DNS service or the password verifier, filled in by their threads.
enum ServiceAnswer {
    Dns(DnsAnswer),
    Auth(AuthOutcome),
    Policy(crate::policy::delegation::Verdict),
    Milter(crate::policy::milter::Verdict),
    /// A milter step before the content, with the conversation to keep (none: it failed).
    MilterStep(usize, Option<crate::policy::milter::Conversation>, crate::policy::milter::StepVerdict),
    Spf(crate::policy::spf::Outcome),
    Dkim(crate::policy::dkim::Outcome),
}

/// Where a service thread leaves its answer for this connection; the thread then wakes the
/// shard through its [`ShardWaker`], which pumps this connection in its next turn.
type AnswerSlot = Arc<Mutex<Option<ServiceAnswer>>>;

/// What a connection asks of its shard after it handled input.
pub enum Effect {
    /// Make this message durable for connection `token`.
    Spool(Box<NewMessage>),
    /// A line for the activity log.
    Log(Box<crate::obs::Activity>),
}

pub struct Conn {
    pub session: Session,
    tls: Option<Box<ServerConnection>>,
    /// Set for implicit TLS until the handshake completes: the session is told then.
    tls_pending_info: bool,
    /// Wire bytes (ciphertext under TLS) ready to be sent.
    pub outq: Vec<u8>,
    /// The session asked to close; close once `outq` is flushed.
    pub closing: bool,
    /// A message of this connection is with the spool.
    pub spooling: bool,
    /// The address this connection is counted under in the limits (none: a proxied
    /// connection, whose session counts the client's address).
    pub counted_ip: Option<std::net::IpAddr>,
    /// The answer awaited from a service thread (DNS, password check).
    awaiting: Option<AnswerSlot>,
    /// Wakes the shard's loop when a service answers this connection.
    waker: Option<(Arc<ShardWaker>, u64)>,
    /// Bytes the driver took from `outq` and has not sent yet (the io_uring send buffer).
    pub driver_unsent: usize,
    /// When a connection that wants to close is reset if its output has not gone by then.
    close_deadline: Option<Instant>,
    /// The transaction's milter conversations, by milter (open from MAIL to the end of the
    /// content).
    milters: Vec<Option<crate::policy::milter::Conversation>>,
    /// The TLS close_notify alert is queued (once, after the last reply).
    close_notify: bool,
    /// The shard's counts of replies, TLS handshakes (and, through the session, phase
    /// latencies and AUTH results).
    tally: Rc<RefCell<Tally>>,
}

impl Drop for Conn {
    /// The send queue is kept for the next connection of this shard.
    fn drop(&mut self) {
        crate::util::spare::give(std::mem::take(&mut self.outq));
    }
}

/// A TLS failure; the connection is closed after any alert in `outq` is sent.
#[derive(Debug)]
pub struct TlsFailure;

impl Conn {
    pub fn new(
        session: Session,
        counted_ip: Option<std::net::IpAddr>,
        implicit_tls: Option<Arc<rustls::ServerConfig>>,
        tally: Rc<RefCell<Tally>>,
    ) -> Self {
        let mut session = session;
        session.set_tally(tally.clone());
        let mut c = Conn {
            session,
            tally,
            tls: None,
            tls_pending_info: false,
            outq: crate::util::spare::take(0),
            closing: false,
            spooling: false,
            counted_ip,
            awaiting: None,
            waker: None,
            driver_unsent: 0,
            close_deadline: None,
            close_notify: false,
            milters: Vec::new(),
        };
        if let Some(cfg) = implicit_tls {
            match ServerConnection::new(cfg) {
                Ok(t) => {
                    c.tls = Some(Box::new(t));
                    c.tls_pending_info = true;
                }
                Err(_) => c.closing = true,
            }
        }
        c
    }

    /// Bytes arrived from the socket. `scratch` is a shard buffer for TLS plaintext.
    pub fn on_bytes(
        &mut self,
        now: Now,
        data: &[u8],
        scratch: &mut [u8],
        starttls: Option<&Arc<rustls::ServerConfig>>,
        effects: &mut Vec<Effect>,
    ) {
        if self.closing {
            return;
        }
        match self.tls.as_mut() {
            None => self.session.handle_input(now, data),
            Some(_) => {
                // Implicit TLS behind a load balancer: its PROXY header precedes the handshake.
                let data = &data[self.session.proxy_prelude(now, data)..];
                if !data.is_empty() && self.tls_input(now, data, scratch).is_err() {
                    self.closing = true;
                }
            }
        }
        self.pump(now, starttls, effects);
    }

    fn tls_input(&mut self, now: Now, mut data: &[u8], scratch: &mut [u8]) -> Result<(), TlsFailure> {
        while !data.is_empty() {
            let tls = self.tls.as_mut().ok_or(TlsFailure)?;
            tls.read_tls(&mut data).map_err(|_| TlsFailure)?;
            let state = match tls.process_new_packets() {
                Ok(s) => s,
                Err(_) => {
                    if tls.is_handshaking() {
                        self.tally.borrow_mut().tls_failure();
                    }
                    // Send the alert rustls prepared, then close.
                    let _ = tls.write_tls(&mut self.outq);
                    return Err(TlsFailure);
                }
            };
            if self.tls_pending_info && !tls.is_handshaking() {
                self.tls_pending_info = false;
                let info = super::tls::describe(tls);
                self.tally.borrow_mut().tls_handshake(&info.version);
                self.session.set_tls(info);
            }
            let mut plain = state.plaintext_bytes_to_read();
            while plain > 0 {
                let n = tls.reader().read(scratch).map_err(|_| TlsFailure)?;
                if n == 0 {
                    break;
                }
                plain -= n.min(plain);
                self.session.handle_input(now, &scratch[..n]);
                if self.session.is_closed() {
                    return Ok(());
                }
            }
            if state.peer_has_closed() {
                self.closing = true;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Moves session output to `outq` and turns session actions into effects.
    pub fn pump(&mut self, now: Now, starttls: Option<&Arc<rustls::ServerConfig>>, effects: &mut Vec<Effect>) {
        loop {
            self.flush_session_output(now);
            if let Some(answer) = self.take_answer() {
                match answer {
                    ServiceAnswer::Dns(a) => self.session.provide_policy_answer(now, a),
                    ServiceAnswer::Auth(o) => self.session.auth_done(now, o),
                    ServiceAnswer::Policy(v) => self.session.delegation_done(now, v),
                    ServiceAnswer::Milter(v) => self.session.milter_done(now, v),
                    ServiceAnswer::MilterStep(index, conv, v) => {
                        if self.milters.len() <= index {
                            self.milters.resize_with(index + 1, || None);
                        }
                        self.milters[index] = conv;
                        self.session.milter_step_done(now, v)
                    }
                    ServiceAnswer::Spf(o) => self.session.spf_done(now, o),
                    ServiceAnswer::Dkim(o) => self.session.dkim_done(now, o),
                }
                continue;
            }
            let Some(action) = self.session.poll_action() else { break };
            match action {
                Action::Resolve(q) => {
                    let slot = AnswerSlot::default();
                    self.awaiting = Some(slot.clone());
                    let waker = self.waker.clone();
                    match self.session.config().policy.dns.clone() {
                        Some(dns) => {
                            dns.submit(q, Box::new(move |a| set_answer(&slot, ServiceAnswer::Dns(a), waker.as_ref())))
                        }
                        None => set_answer(&slot, ServiceAnswer::Dns(DnsAnswer::TempFail), None),
                    }
                }
                Action::Authenticate(req) => {
                    let slot = AnswerSlot::default();
                    self.awaiting = Some(slot.clone());
                    let waker = self.waker.clone();
                    match self.session.config().policy.verifier.clone() {
                        Some(v) => {
                            v.submit(*req, Box::new(move |o| set_answer(&slot, ServiceAnswer::Auth(o), waker.as_ref())))
                        }
                        None => set_answer(&slot, ServiceAnswer::Auth(AuthOutcome::Unavailable), None),
                    }
                }
                Action::Delegate(req, index) => {
                    let slot = AnswerSlot::default();
                    self.awaiting = Some(slot.clone());
                    let waker = self.waker.clone();
                    match self.session.config().policy.delegation.get(index).cloned() {
                        Some(s) => s.submit(
                            *req,
                            Box::new(move |v| set_answer(&slot, ServiceAnswer::Policy(v), waker.as_ref())),
                        ),
                        None => {
                            let v = crate::policy::delegation::Verdict::Refuse(
                                crate::policy::delegation::service_failure(),
                            );
                            set_answer(&slot, ServiceAnswer::Policy(v), None)
                        }
                    }
                }
                Action::MilterOpen(req, index) => {
                    use crate::policy::milter::StepVerdict;
                    let slot = AnswerSlot::default();
                    self.awaiting = Some(slot.clone());
                    let waker = self.waker.clone();
                    match self.session.config().policy.milters.get(index).cloned() {
                        Some(m) => m.open(
                            req,
                            Box::new(move |c, v| {
                                set_answer(&slot, ServiceAnswer::MilterStep(index, c, v), waker.as_ref())
                            }),
                        ),
                        None => set_answer(&slot, ServiceAnswer::MilterStep(index, None, StepVerdict::Continue), None),
                    }
                }
                Action::MilterRcpt(address, index) => {
                    use crate::policy::milter::StepVerdict;
                    let slot = AnswerSlot::default();
                    self.awaiting = Some(slot.clone());
                    let waker = self.waker.clone();
                    let conv = self.milters.get_mut(index).and_then(Option::take);
                    match (self.session.config().policy.milters.get(index).cloned(), conv) {
                        (Some(m), Some(c)) => m.rcpt(
                            c,
                            address,
                            Box::new(move |c, v| {
                                set_answer(&slot, ServiceAnswer::MilterStep(index, c, v), waker.as_ref())
                            }),
                        ),
                        // No conversation: the milter was down at MAIL and its default
                        // action let the transaction go on.
                        (m, None) => {
                            let v =
                                m.map_or(StepVerdict::Continue, |m| crate::policy::milter::default_step(&m.settings));
                            set_answer(&slot, ServiceAnswer::MilterStep(index, None, v), None)
                        }
                        (None, Some(_)) => {
                            set_answer(&slot, ServiceAnswer::MilterStep(index, None, StepVerdict::Continue), None)
                        }
                    }
                }
                Action::Milter(req, index) => {
                    let slot = AnswerSlot::default();
                    self.awaiting = Some(slot.clone());
                    let waker = self.waker.clone();
                    let conv = self.milters.get_mut(index).and_then(Option::take);
                    match (self.session.config().policy.milters.get(index).cloned(), conv) {
                        (Some(m), Some(c)) => m.content(
                            c,
                            req,
                            Box::new(move |v| set_answer(&slot, ServiceAnswer::Milter(v), waker.as_ref())),
                        ),
                        (m, _) => {
                            let v = m.map_or(crate::policy::milter::Verdict::Accept(Vec::new()), |m| {
                                crate::policy::milter::default_verdict(&m.settings)
                            });
                            set_answer(&slot, ServiceAnswer::Milter(v), None)
                        }
                    }
                }
                Action::MilterAbort => {
                    let milters = self.session.config().policy.milters.clone();
                    for (i, c) in self.milters.iter_mut().enumerate() {
                        if let (Some(c), Some(m)) = (c.take(), milters.get(i)) {
                            m.abort(c);
                        }
                    }
                }
                Action::Spf(req) => {
                    let slot = AnswerSlot::default();
                    self.awaiting = Some(slot.clone());
                    let waker = self.waker.clone();
                    match self.session.config().policy.spf.clone() {
                        Some(s) => {
                            s.submit(*req, Box::new(move |o| set_answer(&slot, ServiceAnswer::Spf(o), waker.as_ref())))
                        }
                        None => {
                            let o = crate::policy::spf::Outcome {
                                result: crate::policy::spf::Result::TempError,
                                domain: String::new(),
                                explanation: None,
                            };
                            set_answer(&slot, ServiceAnswer::Spf(o), None)
                        }
                    }
                }
                Action::Dkim(req) => {
                    let slot = AnswerSlot::default();
                    self.awaiting = Some(slot.clone());
                    let waker = self.waker.clone();
                    match self.session.config().policy.dkim.clone() {
                        Some(s) => {
                            s.submit(*req, Box::new(move |o| set_answer(&slot, ServiceAnswer::Dkim(o), waker.as_ref())))
                        }
                        None => set_answer(&slot, ServiceAnswer::Dkim(crate::policy::dkim::Outcome::default()), None),
                    }
                }
                Action::Spool(req) => {
                    self.spooling = true;
                    effects.push(Effect::Spool(req));
                }
                Action::StartTls => {
                    // The 220 is already in `outq` in plaintext; what follows is TLS.
                    match starttls.map(|cfg| ServerConnection::new(cfg.clone())) {
                        Some(Ok(t)) => {
                            self.tls = Some(Box::new(t));
                            // The handshake happens on the next input; the session is told
                            // when it completes.
                            self.tls_pending_info = false;
                            self.session_tls_restart(now);
                        }
                        _ => self.closing = true,
                    }
                }
                Action::Close => self.closing = true,
                Action::Log(a) => effects.push(Effect::Log(a)),
            }
        }
        // Closing an established TLS session: close_notify after the last reply (RFC 8446
        // §6.1), so that the peer sees an orderly end and not a truncation.
        if self.closing
            && !self.close_notify
            && let Some(tls) = self.tls.as_mut()
            && !tls.is_handshaking()
        {
            self.close_notify = true;
            tls.send_close_notify();
        }
        // Handshake messages and alerts rustls wants to send.
        if let Some(tls) = self.tls.as_mut() {
            while tls.wants_write() {
                if tls.write_tls(&mut self.outq).is_err() {
                    break;
                }
            }
        }
    }

    /// STARTTLS: the handshake is driven by later input; tell the session now, with the
    /// parameters filled in once known, so that it starts over (RFC 3207 §4.2).
    fn session_tls_restart(&mut self, now: Now) {
        self.tls_pending_info = true;
        self.session.tls_established(now, crate::session::TlsInfo { version: "TLS".into(), cipher: String::new() });
    }

    fn flush_session_output(&mut self, now: Now) {
        self.session.flushed(now);
        let out = self.session.output();
        if out.is_empty() {
            return;
        }
        self.tally.borrow_mut().count_replies(out);
        match self.tls.as_mut() {
            Some(tls) => {
                let _ = tls.writer().write_all(out);
                out.clear();
                while tls.wants_write() {
                    if tls.write_tls(&mut self.outq).is_err() {
                        break;
                    }
                }
            }
            None if self.outq.is_empty() => std::mem::swap(&mut self.outq, out),
            None => {
                self.outq.extend_from_slice(out);
                out.clear();
            }
        }
    }

    /// The spool answered for this connection's message.
    pub fn spool_done(
        &mut self,
        now: Now,
        result: Result<QueueId, Reply>,
        data: Vec<u8>,
        starttls: Option<&Arc<rustls::ServerConfig>>,
        effects: &mut Vec<Effect>,
    ) {
        self.spooling = false;
        self.session.spool_done(now, result, data);
        self.pump(now, starttls, effects);
    }

    /// The awaited service answer, once it is there.
    fn take_answer(&mut self) -> Option<ServiceAnswer> {
        let slot = self.awaiting.as_ref()?;
        let answer = slot.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        self.awaiting = None;
        Some(answer)
    }

    /// The shard's waker and this connection's token, set once it has one.
    pub fn set_waker(&mut self, waker: Arc<ShardWaker>, token: u64) {
        self.waker = Some((waker, token));
    }

    /// Time passed.
    pub fn on_tick(&mut self, now: Now, starttls: Option<&Arc<rustls::ServerConfig>>, effects: &mut Vec<Effect>) {
        if self.awaiting.is_some() {
            self.pump(now, starttls, effects);
        }
        if let Some(deadline) = self.session.poll_timeout()
            && now.mono >= deadline
        {
            self.session.handle_timeout(now);
            self.pump(now, starttls, effects);
        }
    }

    /// Server shutdown: returns true when the connection can be closed now.
    pub fn shutdown(&mut self, now: Now, effects: &mut Vec<Effect>) -> bool {
        let done = self.session.shutdown();
        self.pump(now, None, effects);
        done
    }

    /// True when the connection should be closed once `outq` is empty.
    pub fn wants_close(&self) -> bool {
        self.closing && !self.spooling
    }

    /// Wire bytes not yet sent: queued here and held by the driver's send.
    pub fn backlog(&self) -> usize {
        self.outq.len() + self.driver_unsent
    }

    /// Should the driver read from the socket now? Not while the session holds buffered
    /// input it cannot process yet, nor while the replies are backed up (the peer does not
    /// read them), nor once closing. This is the connection's back-pressure: what the
    /// driver does not read stays in the kernel, whose TCP window then stops the peer.
    pub fn wants_read(&self) -> bool {
        !self.closing && self.session.wants_input() && self.backlog() < OUTQ_HIGH
    }

    /// The driver sent some output: a session paused on its output goes on once the
    /// backlog is below [`OUTQ_RESUME`]. Returns true when it resumed (effects may follow).
    pub fn on_drained(
        &mut self,
        now: Now,
        starttls: Option<&Arc<rustls::ServerConfig>>,
        effects: &mut Vec<Effect>,
    ) -> bool {
        if !self.session.is_paused() || self.backlog() >= OUTQ_RESUME || self.closing {
            return false;
        }
        self.session.resume(now);
        self.pump(now, starttls, effects);
        true
    }

    /// Called on every tick: true once a connection that wants to close has had
    /// [`CLOSE_LINGER`] to flush its output and has not; the driver then resets it.
    pub fn close_overdue(&mut self, now: Now) -> bool {
        if !self.wants_close() {
            return false;
        }
        let deadline = *self.close_deadline.get_or_insert(now.mono + CLOSE_LINGER);
        now.mono >= deadline
    }
}

/// Gives back a send buffer that a burst made large, once it is empty.
pub fn trim_buffer(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > crate::session::KEEP_BUFFER {
        *buf = Vec::new();
    }
}

/// Stores a service's answer and wakes the shard, which then pumps this connection.
fn set_answer(slot: &AnswerSlot, answer: ServiceAnswer, waker: Option<&(Arc<ShardWaker>, u64)>) {
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
    if let Some((w, token)) = waker {
        w.wake(*token);
    }
}
