//! The sink's event loop: one thread per core, each with its own SO_REUSEPORT listener and
//! epoll instance, driving [`SinkSession`]s. Reads go into one buffer per thread (the
//! session keeps only partial command lines), replies are written as soon as they are due,
//! all of a turn's pipelined replies in one `send`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::net::{self, Epoll, EventFd};
use crate::sink::proto::{Action, SinkConfig, SinkSession, SinkStats};
use crate::tls;

/// How a sink runs.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub listen: SocketAddr,
    pub threads: usize,
    pub config: Arc<SinkConfig>,
    /// Needed for STARTTLS (`config.starttls`) or implicit TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS from the first byte.
    pub implicit_tls: bool,
    /// Stop once this many messages were accepted.
    pub max_messages: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    pub idle_timeout: Duration,
}

impl SinkOptions {
    pub fn new(listen: SocketAddr, config: Arc<SinkConfig>) -> Self {
        SinkOptions {
            listen,
            threads: 1,
            config,
            tls: None,
            implicit_tls: false,
            max_messages: None,
            duration: None,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    wake: EventFd,
    messages: AtomicU64,
    max_messages: u64,
}

impl Shared {
    fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify();
    }
}

/// A running sink.
#[derive(Debug)]
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<io::Result<SinkStats>>>,
}

impl Sink {
    /// Binds and starts the event-loop threads. The sink is accepting when this returns.
    pub fn start(opts: SinkOptions) -> io::Result<Sink> {
        if (opts.implicit_tls || opts.config.starttls) && opts.tls.is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "TLS requested without a certificate"));
        }
        let threads = opts.threads.max(1);
        let first = net::listen_reuseport(&opts.listen, 1024)?;
        let addr = net::local_addr(first.as_raw_fd())?;
        let mut listeners = vec![first];
        for _ in 1..threads {
            listeners.push(net::listen_reuseport(&addr, 1024)?);
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            wake: EventFd::new()?,
            messages: AtomicU64::new(0),
            max_messages: opts.max_messages.unwrap_or(u64::MAX),
        });
        let opts = Arc::new(opts);
        let end = opts.duration.map(|d| Instant::now() + d);
        let mut handles = Vec::new();
        for (id, listener) in listeners.into_iter().enumerate() {
            let mut shard = Shard::new(id, listener, Arc::clone(&opts), Arc::clone(&shared), end)?;
            handles.push(std::thread::Builder::new().name(format!("sink-{id}")).spawn(move || {
                let r = shard.run();
                // One shard ending (bound reached, error) ends them all.
                shard.shared.request_stop();
                r.map(|()| shard.stats)
            })?);
        }
        Ok(Sink { addr, shared, handles })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Messages accepted so far (updated as each thread finishes a read).
    pub fn messages(&self) -> u64 {
        self.shared.messages.load(Ordering::Relaxed)
    }

    /// The fd that wakes the threads; the binary points SIGINT/SIGTERM at it.
    pub fn wake_fd(&self) -> RawFd {
        self.shared.wake.raw()
    }

    /// Asks the sink to stop, then returns its counters.
    pub fn stop(self) -> io::Result<SinkStats> {
        self.shared.request_stop();
        self.wait()
    }

    /// Waits until the sink stops by itself (bound, duration, signal) and returns its counters.
    pub fn wait(self) -> io::Result<SinkStats> {
        let mut total = SinkStats::default();
        let mut err = None;
        for h in self.handles {
            match h.join() {
                Ok(Ok(s)) => total.merge(&s),
                Ok(Err(e)) => err = Some(e),
                Err(_) => err = Some(io::Error::other("sink thread panicked")),
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }
}

struct Conn {
    fd: OwnedFd,
    session: SinkSession,
    tls: Option<Box<rustls::Connection>>,
    want_write: bool,
    last_active: Instant,
}

const LISTENER: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;
const READ_BUF: usize = 64 * 1024;
const IDLE_SCAN: Duration = Duration::from_secs(1);

struct Shard {
    id: usize,
    listener: OwnedFd,
    opts: Arc<SinkOptions>,
    shared: Arc<Shared>,
    epoll: Epoll,
    conns: Vec<Option<Conn>>,
    gens: Vec<u32>,
    free: Vec<usize>,
    /// Held replies: `(due, slot, generation)`.
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    buf: Vec<u8>,
    plain: Vec<u8>,
    stats: SinkStats,
    /// Messages already added to the shared count.
    published: u64,
    seed: u64,
    end: Option<Instant>,
    next_idle_scan: Instant,
}

impl Shard {
    fn new(
        id: usize,
        listener: OwnedFd,
        opts: Arc<SinkOptions>,
        shared: Arc<Shared>,
        end: Option<Instant>,
    ) -> io::Result<Self> {
        let epoll = Epoll::new(256)?;
        epoll.add(listener.as_raw_fd(), net::READ, LISTENER)?;
        epoll.add(shared.wake.raw(), net::READ, WAKE)?;
        Ok(Shard {
            id,
            listener,
            opts,
            shared,
            epoll,
            conns: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            buf: vec![0; READ_BUF],
            plain: Vec::with_capacity(READ_BUF),
            stats: SinkStats::default(),
            published: 0,
            seed: (id as u64) << 48,
            end,
            next_idle_scan: Instant::now() + IDLE_SCAN,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Vec::with_capacity(256);
        loop {
            if self.shared.stop.load(Ordering::Relaxed) || net::stop_requested() {
                return Ok(());
            }
            let now = Instant::now();
            if self.end.is_some_and(|e| now >= e) {
                return Ok(());
            }
            let mut wake = self.next_idle_scan;
            if let Some(Reverse((t, _, _))) = self.timers.peek() {
                wake = wake.min(*t);
            }
            if let Some(e) = self.end {
                wake = wake.min(e);
            }
            events.clear();
            events.extend(self.epoll.wait(Some(wake.saturating_duration_since(now)))?);
            let now = Instant::now();
            for &(ev, token) in &events {
                match token {
                    LISTENER => self.accept(now)?,
                    WAKE => {}
                    _ => {
                        let (slot, gen_) = ((token & 0xffff_ffff) as usize, (token >> 32) as u32);
                        if self.gens.get(slot) == Some(&gen_) && self.conns[slot].is_some() {
                            self.on_ready(slot, ev, now);
                        }
                    }
                }
            }
            while let Some(&Reverse((t, slot, gen_))) = self.timers.peek() {
                if t > now {
                    break;
                }
                self.timers.pop();
                if self.gens[slot] == gen_ && self.conns[slot].is_some() {
                    self.drive(slot, now);
                }
            }
            if now >= self.next_idle_scan {
                self.next_idle_scan = now + IDLE_SCAN;
                for slot in 0..self.conns.len() {
                    if self.conns[slot].as_ref().is_some_and(|c| now >= c.last_active + self.opts.idle_timeout) {
                        self.close(slot);
                    }
                }
            }
            self.publish();
        }
    }

    /// Adds newly accepted messages to the shared count; stops everything at the bound.
    fn publish(&mut self) {
        let delta = self.stats.messages - self.published;
        if delta > 0 {
            self.published = self.stats.messages;
            let total = self.shared.messages.fetch_add(delta, Ordering::Relaxed) + delta;
            if total >= self.shared.max_messages {
                self.shared.request_stop();
            }
        }
    }

    fn accept(&mut self, now: Instant) -> io::Result<()> {
        // A bounded batch per turn keeps one busy listener from starving the connections.
        for _ in 0..64 {
            let Some(fd) = net::accept(self.listener.as_raw_fd())? else { break };
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.gens.push(0);
                self.conns.len() - 1
            });
            self.gens[slot] = self.gens[slot].wrapping_add(1);
            let token = (u64::from(self.gens[slot]) << 32) | slot as u64;
            self.epoll.add(fd.as_raw_fd(), net::READ, token)?;
            self.seed += 1;
            let implicit = self.opts.implicit_tls;
            let tls = if implicit {
                let cfg = Arc::clone(self.opts.tls.as_ref().expect("checked at start"));
                match rustls::ServerConnection::new(cfg) {
                    Ok(c) => Some(Box::new(rustls::Connection::from(c))),
                    Err(_) => continue,
                }
            } else {
                None
            };
            if implicit {
                self.stats.tls_handshakes += 1;
            }
            let session = SinkSession::new(Arc::clone(&self.opts.config), now, self.seed, implicit, &mut self.stats);
            self.conns[slot] = Some(Conn { fd, session, tls, want_write: false, last_active: now });
            self.drive(slot, now);
        }
        Ok(())
    }

    fn close(&mut self, slot: usize) {
        if self.conns[slot].take().is_some() {
            self.free.push(slot);
        }
    }

    fn on_ready(&mut self, slot: usize, ev: u32, now: Instant) {
        let c = self.conns[slot].as_mut().expect("live slot");
        if ev & (net::READ | libc::EPOLLHUP as u32 | libc::EPOLLERR as u32) != 0 {
            c.last_active = now;
            let fd = c.fd.as_raw_fd();
            let eof = match &mut c.tls {
                None => match net::read(fd, &mut self.buf) {
                    Ok(0) => true,
                    Ok(n) => {
                        c.session.handle_input(now, &self.buf[..n], &mut self.stats);
                        false
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(_) => true,
                },
                Some(t) => {
                    self.plain.clear();
                    let r = tls::read(t, fd, &mut self.plain);
                    if !self.plain.is_empty() {
                        c.session.handle_input(now, &self.plain, &mut self.stats);
                    }
                    !matches!(r, Ok(tls::ReadOutcome::Open))
                }
            };
            if eof {
                return self.close(slot);
            }
        }
        self.drive(slot, now);
    }

    /// Writes due replies, performs the session's actions, arms its timer.
    fn drive(&mut self, slot: usize, now: Instant) {
        let c = self.conns[slot].as_mut().expect("live slot");
        let fd = c.fd.as_raw_fd();
        loop {
            if write_due(c, fd, now).is_err() {
                return self.close(slot);
            }
            match c.session.poll_action() {
                Some(Action::Close) => {
                    // Let TLS's close_notify and the last reply go out first.
                    if let Some(t) = &mut c.tls {
                        t.send_close_notify();
                        let _ = tls::flush(t, fd);
                    }
                    return self.close(slot);
                }
                Some(Action::StartTls) => {
                    let cfg = Arc::clone(self.opts.tls.as_ref().expect("checked at start"));
                    match rustls::ServerConnection::new(cfg) {
                        Ok(t) => c.tls = Some(Box::new(t.into())),
                        Err(_) => return self.close(slot),
                    }
                    c.session.tls_started(&mut self.stats);
                    continue;
                }
                None => break,
            }
        }
        if let Some(due) = c.session.poll_timeout() {
            self.timers.push(Reverse((due, slot, self.gens[slot])));
        }
        let want_write = !c.session.poll_transmit(now).is_empty() || c.tls.as_ref().is_some_and(|t| t.wants_write());
        if want_write != c.want_write {
            c.want_write = want_write;
            let token = (u64::from(self.gens[slot]) << 32) | slot as u64;
            let interest = if want_write { net::READ | net::WRITE } else { net::READ };
            let _ = self.epoll.modify(fd, interest, token);
        }
        let _ = self.id;
    }
}

/// Writes the replies due at `now` until done or the socket is full.
fn write_due(c: &mut Conn, fd: RawFd, now: Instant) -> io::Result<()> {
    match &mut c.tls {
        None => loop {
            let out = c.session.poll_transmit(now);
            if out.is_empty() {
                return Ok(());
            }
            match net::write(fd, out) {
                Ok(n) => c.session.transmitted(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        },
        Some(t) => loop {
            let out = c.session.poll_transmit(now);
            let n = tls::write_plaintext(t, out)?;
            c.session.transmitted(n);
            if tls::flush(t, fd)? || c.session.poll_transmit(now).is_empty() {
                return Ok(());
            }
        },
    }
}
