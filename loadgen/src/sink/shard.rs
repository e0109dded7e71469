//! What both event loops of the sink share: the per-thread state ([`Core`]: counters,
//! bounds, held-reply timers, idle scan), the connection table ([`Slots`]) and the step that
//! moves a session's due replies into a transport and performs its actions ([`drive`]).
//!
//! The drivers differ only in how bytes reach the socket: the epoll loop writes to it
//! directly (and may be told to wait), the io_uring loop appends to a send buffer that one
//! `Send` at a time carries out.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::net::{self, EventFd};
use crate::sink::options::SinkOptions;
use crate::sink::proto::{Action, SinkSession, SinkStats};
use crate::tls;

/// State shared by every thread of one sink.
#[derive(Debug)]
pub(super) struct Shared {
    pub stop: AtomicBool,
    /// Wakes every loop: stop requests and signals.
    pub wake: EventFd,
    pub messages: AtomicU64,
    pub max_messages: u64,
}

impl Shared {
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify();
    }
}

/// How a thread tells [`Sink::start`](crate::sink::Sink::start) that its event loop is set
/// up (or why it could not be), so that setup failures surface before the sink is said to
/// be listening.
pub(super) struct Ready(pub mpsc::Sender<io::Result<()>>);

impl Ready {
    /// Passes `r` through, telling the starter whether it is an error.
    pub fn report<T>(&self, r: io::Result<T>) -> io::Result<T> {
        let _ = self.0.send(r.as_ref().map(|_| ()).map_err(|e| io::Error::new(e.kind(), e.to_string())));
        r
    }
}

/// How often idle connections are looked for.
const IDLE_SCAN: Duration = Duration::from_secs(1);

/// One thread's state besides its connections and its I/O.
pub(super) struct Core {
    pub opts: Arc<SinkOptions>,
    pub shared: Arc<Shared>,
    pub stats: SinkStats,
    /// Messages already added to the shared count.
    published: u64,
    seed: u64,
    end: Option<Instant>,
    /// Held replies: `(due, connection token)`.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    next_idle_scan: Instant,
}

impl Core {
    pub fn new(id: usize, opts: Arc<SinkOptions>, shared: Arc<Shared>, end: Option<Instant>) -> Self {
        Core {
            opts,
            shared,
            stats: SinkStats::default(),
            published: 0,
            seed: (id as u64) << 48,
            end,
            timers: BinaryHeap::new(),
            next_idle_scan: Instant::now() + IDLE_SCAN,
        }
    }

    /// A stop was asked for (by the sink, a signal or another thread), or the duration is over.
    pub fn stopping(&self, now: Instant) -> bool {
        self.shared.stop.load(Ordering::Relaxed) || net::stop_requested() || self.end.is_some_and(|e| now >= e)
    }

    /// When the loop must wake up at the latest: the next held reply, idle scan or the end.
    pub fn next_wake(&self) -> Instant {
        let mut wake = self.next_idle_scan;
        if let Some(Reverse((t, _))) = self.timers.peek() {
            wake = wake.min(*t);
        }
        if let Some(e) = self.end {
            wake = wake.min(e);
        }
        wake
    }

    /// A session (and its TLS state, for implicit TLS) for a connection accepted at `now`;
    /// `None` if TLS cannot start.
    pub fn accept(&mut self, now: Instant) -> Option<ConnState> {
        self.seed += 1;
        let implicit = self.opts.implicit_tls;
        let tls = if implicit { Some(self.new_tls()?) } else { None };
        if implicit {
            self.stats.tls_handshakes += 1;
        }
        let session = SinkSession::new(Arc::clone(&self.opts.config), now, self.seed, implicit, &mut self.stats);
        Some(ConnState { session, tls, last_active: now, timer_at: None })
    }

    fn new_tls(&self) -> Option<Box<rustls::Connection>> {
        let cfg = Arc::clone(self.opts.tls.as_ref().expect("checked at start"));
        rustls::ServerConnection::new(cfg).ok().map(|c| Box::new(c.into()))
    }

    /// Arms the timer of the connection's next held reply, once per due time.
    pub fn arm_timer(&mut self, token: u64, c: &mut ConnState) {
        let due = c.session.poll_timeout();
        if let Some(t) = due.filter(|_| due != c.timer_at) {
            self.timers.push(Reverse((t, token)));
        }
        c.timer_at = due;
    }

    /// Appends the tokens of connections whose held replies are due.
    pub fn due_timers(&mut self, now: Instant, out: &mut Vec<u64>) {
        while let Some(&Reverse((t, token))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            out.push(token);
        }
    }

    /// Whether it is time to look for idle connections (then not again for a while).
    pub fn idle_scan_due(&mut self, now: Instant) -> bool {
        if now < self.next_idle_scan {
            return false;
        }
        self.next_idle_scan = now + IDLE_SCAN;
        true
    }

    pub fn is_idle(&self, c: &ConnState, now: Instant) -> bool {
        now >= c.last_active + self.opts.idle_timeout
    }

    /// Adds newly accepted messages to the shared count; stops everything at the bound.
    pub fn publish(&mut self) {
        let delta = self.stats.messages - self.published;
        if delta > 0 {
            self.published = self.stats.messages;
            let total = self.shared.messages.fetch_add(delta, Ordering::Relaxed) + delta;
            if total >= self.shared.max_messages {
                self.shared.request_stop();
            }
        }
    }
}

/// A connection's protocol state, whatever the driver.
pub(super) struct ConnState {
    pub session: SinkSession,
    pub tls: Option<Box<rustls::Connection>>,
    pub last_active: Instant,
    /// The due time of the timer armed for this connection, to arm each one once.
    timer_at: Option<Instant>,
}

impl ConnState {
    /// Gives received bytes to the session (through TLS if it is on); false once the
    /// peer has closed the TLS session.
    pub fn received(&mut self, now: Instant, data: &[u8], plain: &mut Vec<u8>, stats: &mut SinkStats) -> bool {
        self.last_active = now;
        match &mut self.tls {
            None => {
                self.session.handle_input(now, data, stats);
                true
            }
            Some(t) => {
                plain.clear();
                let r = tls::read_bytes(t, data, plain);
                if !plain.is_empty() {
                    self.session.handle_input(now, plain, stats);
                }
                matches!(r, Ok(tls::ReadOutcome::Open))
            }
        }
    }
}

/// What [`drive`] leaves the connection in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Open,
    /// The session is over (QUIT answered, or a refusing banner): close once the output
    /// given to the transport has gone out.
    Close,
}

/// Writes the replies due at `now` into `out` (encrypted if TLS is on) until done or `out`
/// would block, and performs the session's actions: STARTTLS switches the transport,
/// the end of the session appends TLS's close_notify and returns [`Flow::Close`].
pub(super) fn drive(c: &mut ConnState, out: &mut impl io::Write, core: &mut Core, now: Instant) -> io::Result<Flow> {
    loop {
        write_due(c, out, now)?;
        // Replies went out: input held back while they were backed up goes on.
        if c.session.resume(now, &mut core.stats) {
            continue;
        }
        match c.session.poll_action() {
            Some(Action::Close) => {
                if let Some(t) = &mut c.tls {
                    t.send_close_notify();
                    let _ = tls::flush(t, out);
                }
                return Ok(Flow::Close);
            }
            Some(Action::StartTls) => {
                c.tls = Some(core.new_tls().ok_or_else(|| io::Error::other("TLS session refused"))?);
                c.session.tls_started(&mut core.stats);
            }
            None => return Ok(Flow::Open),
        }
    }
}

/// Writes the replies due at `now` until done or `out` is full.
fn write_due(c: &mut ConnState, out: &mut impl io::Write, now: Instant) -> io::Result<()> {
    match &mut c.tls {
        None => loop {
            let due = c.session.poll_transmit(now);
            if due.is_empty() {
                return Ok(());
            }
            match out.write(due) {
                Ok(n) => c.session.transmitted(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        },
        Some(t) => loop {
            let due = c.session.poll_transmit(now);
            let n = tls::write_plaintext(t, due)?;
            c.session.transmitted(n);
            if tls::flush(t, out)? || c.session.poll_transmit(now).is_empty() {
                return Ok(());
            }
        },
    }
}

/// The connection table (shared with the server): a token names one connection even after
/// its slot is reused; late events and timers for a closed connection are ignored.
pub(super) use ringmx_bufring::Slab;
