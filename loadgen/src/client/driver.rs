//! The generator's event loop: one thread per core, each with its own epoll instance,
//! connections, message factory and [`Recorder`]. Threads share only the message budget
//! (an atomic counter) and, every 100 ms, their interval counters for the live line.
//!
//! A loop turn: wait for readiness (or the next deadline), then per ready connection read
//! once, feed the session, start the next transaction if it is idle, and write everything
//! the session queued in one `send`. Then time-driven work: reply timeouts, the open-loop
//! schedule, reconnects and the end of the run.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::ServerName;

use crate::client::message::{MessageConfig, MessageFactory};
use crate::client::schedule::{Schedule, WorkerSchedule};
use crate::client::session::{ClientSession, SessionConfig};
use crate::net::{self, Epoll, FdIo};
use crate::report::recorder::{ErrorKind, Interval};
use crate::report::{Phase, Recorder};
use crate::tls;

/// TLS towards the target.
#[derive(Debug, Clone)]
pub struct TlsClient {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
    /// TLS from the first byte; otherwise STARTTLS when the session asks.
    pub implicit: bool,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub target: SocketAddr,
    pub threads: usize,
    pub connections: usize,
    /// Open loop at this many messages per second; closed loop when `None`.
    pub rate: Option<f64>,
    pub messages: Option<u64>,
    pub duration: Option<Duration>,
    pub ramp_up: Duration,
    pub session: SessionConfig,
    pub tls: Option<TlsClient>,
    pub message: MessageConfig,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Neither `messages` nor `duration`: the run would not stop by itself.
    #[error("give --messages and/or --duration: a run must end by itself")]
    Unbounded,
    #[error("--connections must be at least 1")]
    NoConnections,
    #[error("setting up the event loop: {0}")]
    Setup(#[from] io::Error),
    #[error("a worker thread panicked")]
    WorkerPanicked,
}

/// One second of the run, for the live line and the throughput plot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    /// End of the interval, from the start of the run.
    pub t: Duration,
    pub ok: u64,
    pub failed: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub total_ok: u64,
    pub total_failed: u64,
}

#[derive(Debug)]
pub struct RunResult {
    pub recorder: Recorder,
    /// Wall-clock start.
    pub started: SystemTime,
    /// From the start to the last reply.
    pub elapsed: Duration,
    /// CPU time (user + system) of the generator during the run.
    pub cpu: Duration,
    pub timeline: Vec<Tick>,
    pub threads: usize,
}

/// What the workers share.
#[derive(Debug)]
struct Shared {
    claimed: AtomicU64,
    limit: u64,
    stop: AtomicBool,
    finished: AtomicUsize,
}

impl Shared {
    /// Takes one message from the budget.
    fn claim(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && self.claimed.fetch_add(1, Ordering::Relaxed) < self.limit
    }
}

/// How often a worker publishes its interval counters.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Pause before reconnecting after a failed connect, so a dead port is not hammered.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// Runs the load until its bounds; `on_tick` is called about once a second from the
/// calling thread.
pub fn run(cfg: RunConfig, on_tick: &mut dyn FnMut(&Tick)) -> Result<RunResult, RunError> {
    if cfg.messages.is_none() && cfg.duration.is_none() {
        return Err(RunError::Unbounded);
    }
    if cfg.connections == 0 {
        return Err(RunError::NoConnections);
    }
    let threads = cfg.threads.clamp(1, cfg.connections);
    let shared = Arc::new(Shared {
        claimed: AtomicU64::new(0),
        limit: cfg.messages.unwrap_or(u64::MAX),
        stop: AtomicBool::new(false),
        finished: AtomicUsize::new(0),
    });
    let cfg = Arc::new(cfg);
    let cpu0 = net::process_cpu_time();
    let started = SystemTime::now();
    // A short head start so every thread is waiting when the clock starts.
    let start = Instant::now() + Duration::from_millis(5);
    let mut intervals = Vec::new();
    let mut handles = Vec::new();
    for id in 0..threads {
        let interval = Arc::new(Mutex::new(Interval::default()));
        intervals.push(Arc::clone(&interval));
        let mut worker = Worker::new(id, threads, Arc::clone(&cfg), Arc::clone(&shared), interval, start)?;
        let shared = Arc::clone(&shared);
        let h = std::thread::Builder::new().name(format!("loadgen-{id}")).spawn(move || {
            let r = worker.run();
            shared.finished.fetch_add(1, Ordering::Release);
            r.map(|last| (worker.rec, last))
        })?;
        handles.push(h);
    }

    let mut timeline = Vec::new();
    let mut acc = Interval::default();
    let (mut total_ok, mut total_failed) = (0, 0);
    let mut next_tick = start + Duration::from_secs(1);
    loop {
        let done = shared.finished.load(Ordering::Acquire) == threads;
        if net::stop_requested() {
            shared.stop.store(true, Ordering::Relaxed);
        }
        let now = Instant::now();
        if now >= next_tick || done {
            for i in &intervals {
                let mut i = i.lock().expect("interval lock");
                acc.add(&i);
                i.reset();
            }
            total_ok += acc.ok;
            total_failed += acc.failed;
            let tick = Tick {
                t: now.saturating_duration_since(start),
                ok: acc.ok,
                failed: acc.failed,
                p50_us: acc.latency_us.value_at_quantile(0.5),
                p99_us: acc.latency_us.value_at_quantile(0.99),
                total_ok,
                total_failed,
            };
            if !done || tick.ok + tick.failed > 0 {
                on_tick(&tick);
                timeline.push(tick);
            }
            acc.reset();
            next_tick += Duration::from_secs(1);
        }
        if done {
            break;
        }
        std::thread::sleep(next_tick.saturating_duration_since(Instant::now()).min(Duration::from_millis(20)));
    }

    let mut recorder = Recorder::default();
    let mut last = start;
    for h in handles {
        let (rec, worker_last) = h.join().map_err(|_| RunError::WorkerPanicked)??;
        recorder.merge(&rec);
        last = last.max(worker_last);
    }
    Ok(RunResult {
        recorder,
        started,
        elapsed: last.saturating_duration_since(start),
        cpu: net::process_cpu_time().saturating_sub(cpu0),
        timeline,
        threads,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnPhase {
    Connecting,
    /// Implicit TLS: the handshake before the greeting.
    Handshaking,
    Open,
}

struct Conn {
    fd: OwnedFd,
    session: ClientSession,
    tls: Option<Box<rustls::Connection>>,
    /// Reply bytes not yet consumed by the session (an incomplete reply).
    inbuf: Vec<u8>,
    phase: ConnPhase,
    since: Instant,
    /// Whether EPOLLOUT is registered (output blocked). Unused when `edge`.
    want_write: bool,
    /// Registered once, edge-triggered, for reading and writing (a connection without
    /// TLS): no epoll_ctl after the first, and the connect's outcome read from the event
    /// instead of SO_ERROR. A read that fills the buffer reads again; a shorter one has
    /// drained the socket (the next data is a new edge).
    edge: bool,
    /// Closed loop: the message claimed when the connection was opened, not yet started.
    /// Every connection attempt thus takes a message from the budget, so a target that
    /// refuses or breaks sessions still ends a `--messages` run.
    reserved: bool,
}

enum Slot {
    /// No connection; (re)open at this time.
    Empty(Instant),
    Busy(Box<Conn>),
    /// Will not be reopened.
    Done,
}

struct Worker {
    cfg: Arc<RunConfig>,
    session_cfg: Arc<SessionConfig>,
    shared: Arc<Shared>,
    interval: Arc<Mutex<Interval>>,
    rec: Recorder,
    factory: MessageFactory,
    epoll: Epoll,
    slots: Vec<Slot>,
    /// Generation per slot, part of the epoll token, so a stale event never reaches a new
    /// connection in the same slot.
    gens: Vec<u32>,
    schedule: Option<WorkerSchedule>,
    /// Open loop: intended starts that are due but not yet started.
    backlog: VecDeque<Instant>,
    start: Instant,
    end: Option<Instant>,
    /// No new transactions: the budget is spent, time is up or a stop was asked.
    no_more_starts: bool,
    drain_deadline: Option<Instant>,
    last_reply: Instant,
    next_flush: Instant,
    events: Vec<(u32, u64)>,
}

impl Worker {
    fn new(
        id: usize,
        workers: usize,
        cfg: Arc<RunConfig>,
        shared: Arc<Shared>,
        interval: Arc<Mutex<Interval>>,
        start: Instant,
    ) -> io::Result<Self> {
        let n = cfg.connections / workers + usize::from(id < cfg.connections % workers);
        // Stagger connection opening over the ramp-up (closed loop).
        let slots = (0..n)
            .map(|i| {
                let global = i * workers + id;
                let frac = if cfg.rate.is_none() { global as f64 / cfg.connections as f64 } else { 0.0 };
                Slot::Empty(start + cfg.ramp_up.mul_f64(frac))
            })
            .collect();
        let schedule = cfg.rate.map(|r| WorkerSchedule::new(Schedule::new(r, cfg.ramp_up), id, workers));
        Ok(Worker {
            session_cfg: Arc::new(cfg.session.clone()),
            factory: MessageFactory::new(cfg.message.clone(), id),
            end: cfg.duration.map(|d| start + d),
            epoll: Epoll::new(256)?,
            slots,
            gens: vec![0; n],
            schedule,
            backlog: VecDeque::new(),
            start,
            no_more_starts: false,
            drain_deadline: None,
            last_reply: start,
            next_flush: start + FLUSH_EVERY,
            events: Vec::with_capacity(256),
            cfg,
            shared,
            interval,
            rec: Recorder::default(),
        })
    }

    /// Runs until every connection is closed and no more may open. Returns the time of
    /// the last transaction's end.
    fn run(&mut self) -> Result<Instant, RunError> {
        let wait = self.start.saturating_duration_since(Instant::now());
        std::thread::sleep(wait);
        loop {
            let now = Instant::now();
            self.tick(now);
            if self.slots.iter().all(|s| matches!(s, Slot::Done)) {
                break;
            }
            let timeout = self.next_wakeup(now).map(|t| t.saturating_duration_since(now));
            self.events.clear();
            self.events.extend(self.epoll.wait(timeout)?);
            let now = Instant::now();
            for i in 0..self.events.len() {
                let (ev, token) = self.events[i];
                let (slot, gen_) = ((token & 0xffff_ffff) as usize, (token >> 32) as u32);
                if self.gens[slot] == gen_ && matches!(self.slots[slot], Slot::Busy(_)) {
                    self.on_ready(slot, ev, now);
                }
            }
        }
        self.publish_interval();
        Ok(self.last_reply)
    }

    fn token(&self, slot: usize) -> u64 {
        (u64::from(self.gens[slot]) << 32) | slot as u64
    }

    fn publish_interval(&mut self) {
        let mut shared = self.interval.lock().expect("interval lock");
        shared.add(&self.rec.interval);
        self.rec.interval.reset();
    }

    fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        let mut t = self.next_flush;
        let mut consider = |x: Instant| t = t.min(x);
        for s in &self.slots {
            match s {
                Slot::Empty(at) if !self.no_more_starts => consider(*at),
                Slot::Busy(c) => {
                    if let Some(d) = c.session.poll_timeout() {
                        consider(d);
                    }
                    if c.phase != ConnPhase::Open {
                        consider(c.since + self.cfg.session.reply_timeout);
                    }
                }
                _ => {}
            }
        }
        if let Some(s) = &self.schedule
            && !self.no_more_starts
        {
            consider(self.start + s.next_due());
        }
        if let Some(e) = self.end
            && !self.no_more_starts
        {
            consider(e);
        }
        if let Some(d) = self.drain_deadline {
            consider(d);
        }
        Some(t.max(now))
    }

    /// Time-driven work: end of run, timeouts, schedule, reconnects.
    fn tick(&mut self, now: Instant) {
        if now >= self.next_flush {
            self.publish_interval();
            self.next_flush = now + FLUSH_EVERY;
        }
        if !self.no_more_starts && (self.shared.stop.load(Ordering::Relaxed) || self.end.is_some_and(|e| now >= e)) {
            self.stop_starting(now);
        }
        if let Some(d) = self.drain_deadline
            && now >= d
        {
            for slot in 0..self.slots.len() {
                if let Slot::Busy(c) = &mut self.slots[slot] {
                    c.session.abort(ErrorKind::Unfinished, &mut self.rec);
                    self.close(slot, now, false);
                }
            }
        }
        // Reply and connect timeouts.
        for slot in 0..self.slots.len() {
            let Slot::Busy(c) = &mut self.slots[slot] else { continue };
            let connect_overdue = c.phase != ConnPhase::Open && now >= c.since + self.cfg.session.reply_timeout;
            if connect_overdue || c.session.poll_timeout().is_some_and(|d| now >= d) {
                match c.phase {
                    ConnPhase::Open => c.session.handle_timeout(&mut self.rec),
                    ConnPhase::Handshaking => self.rec.error(ErrorKind::Timeout, false),
                    ConnPhase::Connecting => {
                        self.close(slot, now, true);
                        continue;
                    }
                }
                self.close(slot, now, false);
            }
        }
        // The open-loop schedule.
        if let Some(s) = &mut self.schedule
            && !self.no_more_starts
        {
            let elapsed = now.saturating_duration_since(self.start);
            while let Some(t) = s.take_due(elapsed) {
                if !self.shared.claim() {
                    self.schedule = None;
                    break;
                }
                self.backlog.push_back(self.start + t);
            }
            if self.schedule.is_none() && self.backlog.is_empty() {
                self.stop_starting(now);
            }
        }
        if !self.backlog.is_empty() {
            for slot in 0..self.slots.len() {
                if self.backlog.is_empty() {
                    break;
                }
                if matches!(&self.slots[slot], Slot::Busy(c) if c.session.is_ready()) {
                    self.drive(slot, now);
                }
            }
        }
        // (Re)connect, or retire the empty slots once nothing more starts.
        for slot in 0..self.slots.len() {
            match self.slots[slot] {
                Slot::Empty(_) if self.no_more_starts => self.slots[slot] = Slot::Done,
                Slot::Empty(at) if at <= now => self.open(slot, now),
                _ => {}
            }
        }
    }

    /// No new transactions: idle sessions QUIT, busy ones after their transaction; unstarted
    /// open-loop messages count as unfinished.
    fn stop_starting(&mut self, now: Instant) {
        self.no_more_starts = true;
        self.drain_deadline = Some(now + self.cfg.session.reply_timeout);
        for _ in self.backlog.drain(..) {
            self.rec.error(ErrorKind::Unfinished, true);
        }
        for slot in 0..self.slots.len() {
            match &mut self.slots[slot] {
                Slot::Empty(_) => self.slots[slot] = Slot::Done,
                Slot::Busy(c) => {
                    c.session.quit(now);
                    self.drive(slot, now);
                }
                Slot::Done => {}
            }
        }
    }

    fn open(&mut self, slot: usize, now: Instant) {
        let closed_loop = self.cfg.rate.is_none();
        if closed_loop && !self.shared.claim() {
            self.slots[slot] = Slot::Done;
            self.budget_spent(now);
            return;
        }
        self.gens[slot] = self.gens[slot].wrapping_add(1);
        let tls_implicit = self.cfg.tls.as_ref().is_some_and(|t| t.implicit);
        // With TLS the connection keeps level-triggered interest (rustls reads and writes
        // on its own schedule); without, two system calls a connection are saved.
        let edge = self.cfg.tls.is_none();
        match net::connect_nonblocking(&self.cfg.target) {
            Ok(fd) => {
                let token = self.token(slot);
                let interest = if edge { net::WRITE | net::READ | net::EDGE } else { net::WRITE | net::READ };
                if let Err(e) = self.epoll.add(fd.as_raw_fd(), interest, token) {
                    panic!("epoll_ctl add: {e}");
                }
                self.slots[slot] = Slot::Busy(Box::new(Conn {
                    fd,
                    session: ClientSession::new(Arc::clone(&self.session_cfg), now, tls_implicit),
                    tls: None,
                    inbuf: Vec::with_capacity(4096),
                    phase: ConnPhase::Connecting,
                    since: now,
                    want_write: true,
                    edge,
                    reserved: closed_loop,
                }));
            }
            Err(_) => {
                self.rec.error(ErrorKind::Connect, closed_loop);
                self.slots[slot] = Slot::Empty(now + RECONNECT_BACKOFF);
            }
        }
    }

    /// The closed-loop budget is spent: this worker starts nothing more.
    fn budget_spent(&mut self, now: Instant) {
        if !self.no_more_starts {
            self.no_more_starts = true;
            self.drain_deadline = Some(now + self.cfg.session.reply_timeout);
        }
    }

    /// Drops the connection; the slot reopens unless the run is ending. `failed_connect`:
    /// the TCP connect itself failed (refused, timed out).
    fn close(&mut self, slot: usize, now: Instant, failed_connect: bool) {
        let Slot::Busy(c) = std::mem::replace(&mut self.slots[slot], Slot::Done) else { return };
        if failed_connect {
            self.rec.error(ErrorKind::Connect, c.reserved);
        } else if c.reserved && !self.no_more_starts {
            // The session failed before its first message (refused greeting, TLS, AUTH).
            self.rec.lose_message();
        }
        self.slots[slot] = match (self.no_more_starts, failed_connect) {
            (true, _) => Slot::Done,
            (false, true) => Slot::Empty(now + RECONNECT_BACKOFF),
            (false, false) => Slot::Empty(now),
        };
    }

    fn on_ready(&mut self, slot: usize, ev: u32, now: Instant) {
        let Slot::Busy(c) = &mut self.slots[slot] else { return };
        let fd = c.fd.as_raw_fd();
        match c.phase {
            ConnPhase::Connecting => {
                // A failed connect is reported as an error event; edge-triggered
                // connections need not ask for SO_ERROR otherwise.
                if (!c.edge || ev & net::ERROR != 0) && net::take_socket_error(fd).is_err() {
                    return self.close(slot, now, true);
                }
                self.rec.connections += 1;
                self.rec.phase(Phase::Connect, now.saturating_duration_since(c.since));
                c.since = now;
                if let Some(t) = &self.cfg.tls
                    && t.implicit
                {
                    match rustls::ClientConnection::new(Arc::clone(&t.config), t.server_name.clone()) {
                        Ok(tc) => c.tls = Some(Box::new(tc.into())),
                        Err(_) => {
                            self.rec.error(ErrorKind::Protocol, false);
                            return self.close(slot, now, false);
                        }
                    }
                    c.phase = ConnPhase::Handshaking;
                } else {
                    c.phase = ConnPhase::Open;
                    c.session.connected(now);
                    // The greeting may have come with the connect's edge: no other edge
                    // announces it.
                    if c.edge && ev & net::READ != 0 && !self.read(slot, now, ev) {
                        return;
                    }
                }
            }
            ConnPhase::Handshaking | ConnPhase::Open => {
                if ev & (net::READ | libc::EPOLLHUP as u32 | libc::EPOLLERR as u32) != 0 && !self.read(slot, now, ev) {
                    return;
                }
            }
        }
        self.drive(slot, now);
    }

    /// Reads what is there. Returns false if the connection was closed.
    /// `ev`: the event that announced it (an edge-triggered connection whose peer closed
    /// reads until the end, as no further edge will come).
    fn read(&mut self, slot: usize, now: Instant, ev: u32) -> bool {
        let Slot::Busy(c) = &mut self.slots[slot] else { return false };
        let fd = c.fd.as_raw_fd();
        let eof = match &mut c.tls {
            Some(t) => match tls::read(t, fd, &mut c.inbuf) {
                Ok(o) => o == tls::ReadOutcome::Eof,
                Err(e) => {
                    let kind = if e.kind() == io::ErrorKind::InvalidData { ErrorKind::Protocol } else { ErrorKind::Io };
                    c.session.abort(kind, &mut self.rec);
                    self.close(slot, now, false);
                    return false;
                }
            },
            None => {
                let closing = ev & (libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0;
                loop {
                    if c.inbuf.capacity() - c.inbuf.len() < 2048 {
                        c.inbuf.reserve(4096);
                    }
                    let len = c.inbuf.len();
                    let spare = c.inbuf.spare_capacity_mut();
                    let room = spare.len();
                    match net::read_uninit(fd, spare) {
                        Ok(0) => break true,
                        Ok(n) => {
                            // SAFETY: `n` <= `buf.len()` = capacity - `len`, and read() initialised
                            // exactly those `n` bytes after the old length, so `len + n` bytes are
                            // initialised.
                            unsafe { c.inbuf.set_len(len + n) };
                            // Level-triggered: the next turn reads the rest. Edge-triggered: a
                            // full buffer may have left more; a short read after the peer's
                            // close has taken all it sent, the end included (no further edge
                            // would announce it, and a read more would only return 0).
                            if !c.edge || n < room {
                                break c.edge && closing;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                        Err(_) => break true,
                    }
                }
            }
        };
        if eof {
            // Let the session see what arrived before the close (a 221, say).
            if c.phase == ConnPhase::Open && !c.inbuf.is_empty() {
                let _ = c.session.handle_input(now, &c.inbuf, &mut self.rec);
            }
            c.session.abort(ErrorKind::Io, &mut self.rec);
            self.close(slot, now, false);
            return false;
        }
        true
    }

    /// Feeds input, handles TLS upgrades, starts transactions, writes output.
    fn drive(&mut self, slot: usize, now: Instant) {
        let Slot::Busy(c) = &mut self.slots[slot] else { return };
        let fd = c.fd.as_raw_fd();
        if c.phase == ConnPhase::Handshaking {
            let t = c.tls.as_mut().expect("handshaking has TLS");
            if !t.is_handshaking() {
                self.rec.phase(Phase::Tls, now.saturating_duration_since(c.since));
                c.phase = ConnPhase::Open;
                c.session.connected(now);
            }
        }
        if c.phase == ConnPhase::Open {
            loop {
                if !c.inbuf.is_empty() && !c.session.wants_tls() {
                    match c.session.handle_input(now, &c.inbuf, &mut self.rec) {
                        Ok(0) => {}
                        Ok(n) => {
                            self.last_reply = now;
                            c.inbuf.drain(..n);
                        }
                        Err(_) => return self.close(slot, now, false),
                    }
                }
                if c.session.wants_tls() {
                    if c.tls.is_none() {
                        // RFC 3207 §5: nothing received before the handshake is kept.
                        c.inbuf.clear();
                        let t = self.cfg.tls.as_ref().expect("STARTTLS needs a TLS config");
                        match rustls::ClientConnection::new(Arc::clone(&t.config), t.server_name.clone()) {
                            Ok(tc) => c.tls = Some(Box::new(tc.into())),
                            Err(_) => {
                                c.session.abort(ErrorKind::Protocol, &mut self.rec);
                                return self.close(slot, now, false);
                            }
                        }
                    } else if !c.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
                        c.session.tls_established(now, &mut self.rec);
                        continue;
                    }
                }
                break;
            }
            if c.session.is_ready() {
                let start = if self.cfg.rate.is_some() {
                    self.backlog.pop_front()
                } else if std::mem::take(&mut c.reserved) || (!self.no_more_starts && self.shared.claim()) {
                    Some(now)
                } else {
                    None
                };
                match start {
                    Some(intended) => {
                        if self.cfg.rate.is_some() {
                            self.rec.record_start_lag(now.saturating_duration_since(intended));
                        }
                        let bdat = c.session.uses_bdat();
                        self.factory.fill(c.session.outbound_mut(), bdat);
                        c.session.start_transaction(now, intended);
                    }
                    None if self.cfg.rate.is_none() || self.no_more_starts => {
                        c.session.quit(now);
                        if !self.no_more_starts {
                            self.no_more_starts = true;
                            self.drain_deadline = Some(now + self.cfg.session.reply_timeout);
                        }
                    }
                    None => {}
                }
            }
            if c.session.can_queue_next() {
                let start = if self.cfg.rate.is_some() {
                    self.backlog.pop_front()
                } else if !self.no_more_starts && self.shared.claim() {
                    Some(now)
                } else {
                    None
                };
                if let Some(intended) = start {
                    if self.cfg.rate.is_some() {
                        self.rec.record_start_lag(now.saturating_duration_since(intended));
                    }
                    self.factory.fill(c.session.next_outbound_mut(), false);
                    c.session.queue_next(intended);
                }
            }
        }
        let Slot::Busy(c) = &mut self.slots[slot] else { return };
        if let Err(e) = flush(c, now) {
            let kind = if e.kind() == io::ErrorKind::InvalidData { ErrorKind::Protocol } else { ErrorKind::Io };
            c.session.abort(kind, &mut self.rec);
            return self.close(slot, now, false);
        }
        if c.session.is_closed() {
            return self.close(slot, now, false);
        }
        let want_write = c.phase == ConnPhase::Connecting
            || !c.session.pending_output().is_empty()
            || c.tls.as_ref().is_some_and(|t| t.wants_write());
        if want_write != c.want_write && !c.edge {
            c.want_write = want_write;
            let interest = if want_write { net::READ | net::WRITE } else { net::READ };
            let token = (u64::from(self.gens[slot]) << 32) | slot as u64;
            let _ = self.epoll.modify(fd, interest, token);
        }
    }
}

/// Writes the session's output (through TLS if any) until done or the socket is full.
fn flush(c: &mut Conn, now: Instant) -> io::Result<()> {
    let fd = c.fd.as_raw_fd();
    if c.phase == ConnPhase::Connecting {
        return Ok(());
    }
    match &mut c.tls {
        None => {
            while !c.session.pending_output().is_empty() {
                match net::write(fd, c.session.pending_output()) {
                    Ok(n) => c.session.transmitted(now, n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Some(t) => loop {
            // During a handshake only TLS records move.
            if !t.is_handshaking() && !c.session.wants_tls() {
                let n = tls::write_plaintext(t, c.session.pending_output())?;
                c.session.transmitted(now, n);
            }
            if tls::flush(t, &mut FdIo(fd))? || c.session.pending_output().is_empty() || t.is_handshaking() {
                break;
            }
        },
    }
    Ok(())
}
