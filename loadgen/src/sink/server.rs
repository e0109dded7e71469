//! The sink's threads: one per core, each with its own SO_REUSEPORT listener and event
//! loop driving [`SinkSession`](crate::sink::SinkSession)s, on io_uring
//! ([`super::uring`]) or epoll ([`super::epoll`]), chosen at start ([`IoMode`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::net::{self, EventFd};
use crate::sink::options::{IoMode, SinkOptions};
use crate::sink::proto::SinkStats;
use crate::sink::shard::{Core, Ready, Shared};
use crate::sink::{epoll, uring};

/// The event loop a sink runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driver {
    /// io_uring, with the ring setup flags the kernel accepted.
    Uring { flags: &'static str },
    /// epoll; `why` says why io_uring is not used (empty when epoll was asked for).
    Epoll { why: String },
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Driver::Uring { flags } => write!(f, "io_uring ({flags})"),
            Driver::Epoll { why } if why.is_empty() => write!(f, "epoll"),
            Driver::Epoll { why } => write!(f, "epoll (io_uring unavailable: {why})"),
        }
    }
}

impl IoMode {
    /// Picks the driver; for `Uring`, fails where io_uring does not work.
    pub fn choose(self) -> io::Result<Driver> {
        match self {
            IoMode::Epoll => Ok(Driver::Epoll { why: String::new() }),
            IoMode::Uring => uring::probe()
                .map(|flags| Driver::Uring { flags })
                .map_err(|e| io::Error::new(e.kind(), format!("io_uring is not available: {e} (use --io epoll)"))),
            IoMode::Auto => Ok(match uring::probe() {
                Ok(flags) => Driver::Uring { flags },
                Err(e) => Driver::Epoll { why: e.to_string() },
            }),
        }
    }
}

/// A running sink.
#[derive(Debug)]
pub struct Sink {
    addr: SocketAddr,
    driver: Driver,
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<io::Result<SinkStats>>>,
}

impl Sink {
    /// Picks the driver, binds and starts the event-loop threads. The sink is accepting
    /// when this returns.
    pub fn start(opts: SinkOptions) -> io::Result<Sink> {
        if (opts.implicit_tls || opts.config.starttls) && opts.tls.is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "TLS requested without a certificate"));
        }
        let driver = opts.io.choose()?;
        let uring = matches!(driver, Driver::Uring { .. });
        let opts = Arc::new(opts);
        match Sink::spawn(&opts, driver) {
            // The probe passed but a thread could not set up its ring (say, the locked-memory
            // limit with many threads): `auto` starts over on epoll. Nothing was announced
            // yet, so new listeners (a new port, for port 0) are fine.
            Err(e) if uring && opts.io == IoMode::Auto => Sink::spawn(&opts, Driver::Epoll { why: e.to_string() }),
            r => r,
        }
    }

    /// Binds, starts the threads on `driver` and waits until every one has set up its loop.
    fn spawn(opts: &Arc<SinkOptions>, driver: Driver) -> io::Result<Sink> {
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
        let end = opts.duration.map(|d| Instant::now() + d);
        let uring = matches!(driver, Driver::Uring { .. });
        let (ready_tx, ready) = mpsc::channel();
        let mut handles = Vec::new();
        for (id, listener) in listeners.into_iter().enumerate() {
            let mut core = Core::new(id, Arc::clone(opts), Arc::clone(&shared), end);
            let ready = Ready(ready_tx.clone());
            handles.push(std::thread::Builder::new().name(format!("sink-{id}")).spawn(move || {
                let r = run_shard(uring, &mut core, listener, &ready);
                // One thread ending (bound reached, error) ends them all.
                core.shared.request_stop();
                r.map(|()| core.stats)
            })?);
        }
        let sink = Sink { addr, driver, shared, handles };
        for _ in 0..threads {
            match ready.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let hint = if opts.io == IoMode::Uring { " (use --io epoll)" } else { "" };
                    let e = io::Error::new(e.kind(), format!("{} setup: {e}{hint}", sink.driver));
                    let _ = sink.stop();
                    return Err(e);
                }
                Err(_) => return sink.stop().and(Err(io::Error::other("a sink thread ended during setup"))),
            }
        }
        Ok(sink)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The event loop in use.
    pub fn driver(&self) -> &Driver {
        &self.driver
    }

    /// Messages accepted so far (updated as each thread finishes a loop turn).
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

fn run_shard(uring: bool, core: &mut Core, listener: OwnedFd, ready: &Ready) -> io::Result<()> {
    if uring { uring::run(core, listener, ready) } else { epoll::run(core, listener, ready) }
}
