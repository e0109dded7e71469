//! The runtime: the only place that does I/O.
//!
//! # Layout
//!
//! - [`serve`] (here): recovery, binding, one thread per ingress shard, signals, drain.
//! - `shard`: what a shard owns (listeners, spool log, connection slab, limits).
//! - `conn`: a connection as the drivers see it: session + TLS + output queue.
//! - `uring`: the io_uring driver (multishot accept/recv, provided buffers, batched
//!   submission, linked write + fdatasync for group commit).
//! - `epoll`: the fallback driver.
//! - `listener`, `tls`: sockets and certificates.
//! - `control`, `remote`: the control thread (the driver of `queue::QueueManager`: record
//!   reads, Maildir commits, marks, reclaiming) and the delivery runtime (remote SMTP and
//!   LMTP); `admin_socket`: the operator's way in to the control thread (`ringmx queue
//!   retry|delete|bounce`, and `queue show`'s lookup).

pub mod admin_http;
pub mod admin_socket;
mod conn;
pub mod control;
mod epoll;
pub mod listener;
pub mod lists;
pub mod reload;
pub mod remote;
mod services;
mod shard;
pub mod tls;
pub use services::Services;
mod uring;
mod waker;

pub use shard::{ConnLimits, ShardStats};

use crate::config::{Config, IoMode, ListenerTls};
use crate::delivery::maildir::UsageCache;
use crate::directory::{DirectoryHandle, JsonFileStore};
use crate::spool::{CONTROL_SHARD, IdGen, ShardLog, shard_dir};
use shard::{Shard, ShardListener};
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Failures that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("spool: {0}")]
    Spool(#[from] crate::spool::SpoolError),
    #[error("binding {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("io_uring is not available: {0} (use --io epoll)")]
    UringUnavailable(std::io::Error),
    #[error("starting shard thread: {0}")]
    Thread(std::io::Error),
    #[error("directory: {0}")]
    Directory(crate::directory::DirectoryError),
    #[error("shard {shard} failed: {source}")]
    Shard { shard: u8, source: std::io::Error },
    #[error("the spool {0} is in use by another ringmx process")]
    SpoolInUse(std::path::PathBuf),
}

/// Which driver runs the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Uring,
    Epoll,
}

/// Picks the driver: io_uring when asked or when `auto` and the kernel allows it.
pub fn choose_driver(mode: IoMode) -> Result<Driver, ServeError> {
    match mode {
        IoMode::Epoll => Ok(Driver::Epoll),
        IoMode::Uring => uring::probe().map(|_| Driver::Uring).map_err(ServeError::UringUnavailable),
        IoMode::Auto => match uring::probe() {
            Ok(()) => Ok(Driver::Uring),
            Err(e) => {
                log::warn!("io_uring unavailable ({e}); using epoll");
                Ok(Driver::Epoll)
            }
        },
    }
}

/// A running server: its shard threads and the flag that stops them.
pub struct Server {
    threads: Vec<std::thread::JoinHandle<Result<ShardStats, std::io::Error>>>,
    control: Option<std::thread::JoinHandle<()>>,
    lists: Option<std::thread::JoinHandle<()>>,
    socket: Option<std::thread::JoinHandle<()>>,
    spares: Option<std::thread::JoinHandle<()>>,
    /// Held while the server runs: one server per spool, and the queue commands know.
    _lock: crate::spool::SpoolLock,
    /// Set once the shards have stopped: the control thread then finishes.
    control_stop: Arc<AtomicBool>,
    /// To wake the control thread when `control_stop` is set.
    control_tx: std::sync::mpsc::SyncSender<control::link::ControlMsg>,
    /// To wake the lists thread then too.
    lists_wake: lists::ListsHandle,
    /// The directory in use; SIGHUP reloads it.
    pub directory: Arc<DirectoryHandle>,
    shutdown: Arc<AtomicBool>,
    /// The shards' and the admin socket's wakers: an idle shard sleeps up to
    /// [`shard::IDLE_TICK`], the admin socket until a client comes; a stop wakes them.
    wakers: Vec<Arc<shard::ShardWaker>>,
    /// The addresses actually bound (port 0 resolved).
    pub local_addrs: Vec<std::net::SocketAddr>,
    pub driver: Driver,
    /// The log writer (activity, W3C and debug logs; always there once serving, an
    /// `Option` so that `join` can drop it last); SIGUSR1 reopens its files. Dropped after
    /// every producer has stopped, so that their last lines are written.
    pub activity: Option<crate::obs::ActivityLog>,
    /// The metrics endpoint's address, thread and stop flag (none when it is off).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The admin API's TCP address (`[admin] listen`; it is always on the admin socket).
    pub admin_addr: Option<std::net::SocketAddr>,
    metrics: Option<(std::thread::JoinHandle<()>, Arc<AtomicBool>)>,
    /// `/readyz`: true while the listeners are bound and the shards serve.
    serving: Arc<AtomicBool>,
    /// What a configuration reload replaces, and what it keeps.
    reloadable: Reloadable,
}

/// The parts of a running server that a configuration reload works with.
struct Reloadable {
    /// The configuration in force.
    cfg: Config,
    live: Arc<reload::Live>,
    services: Services,
    limits: Arc<ConnLimits>,
    usage: Arc<UsageCache>,
    debug: Arc<crate::obs::debug::DebugSwitch>,
    /// What became of the reloads (a metric; `ringmx reload` waits on it).
    reloads: Arc<reload::Outcomes>,
}

impl Server {
    /// Recovers the spool, binds every listener once per shard and starts the shards.
    pub fn start(cfg: &Config) -> Result<Server, ServeError> {
        let driver = choose_driver(cfg.runtime.io)?;
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let shards = cfg.ingress_cores(cpus);
        let spool = cfg.spool_dir();
        let bind_all = || -> Result<Vec<_>, ServeError> {
            let mut bound = Vec::new();
            for (addr, l) in cfg.bind_addresses() {
                let socks = listener::bind_shards(addr, shards).map_err(|source| ServeError::Bind { addr, source })?;
                let actual = socks[0].local_addr().map_err(|source| ServeError::Bind { addr, source })?;
                bound.push((actual, l, socks));
            }
            Ok(bound)
        };
        // A takeover binds first: its sockets join the running server's SO_REUSEPORT group,
        // and connections wait in their accept queues until our shards run. Otherwise the
        // spool lock comes first, so that a server started twice by mistake never takes
        // (and then drops) connections of the one that runs; the listeners are bound right
        // after it, before recovery, so connections queue while the spool is read.
        let (lock, bound) = if cfg.takeover {
            let bound = bind_all()?;
            (takeover(cfg, &spool)?, bound)
        } else {
            let lock = crate::spool::lock_spool(&spool)
                .map_err(|e| crate::spool::SpoolError::io("lock", &spool.join("lock"), 0, e))?
                .ok_or_else(|| ServeError::SpoolInUse(spool.clone()))?;
            (lock, bind_all()?)
        };
        // The queue is about to change: the last stop's snapshot goes (durably) first.
        crate::spool::snapshot::remove(&spool)
            .map_err(|e| crate::spool::SpoolError::io("remove the queue snapshot in", &spool, 0, e))?;
        let rec = crate::spool::recover_queue(&spool)?;
        for note in &rec.notes {
            log::warn!("spool recovery: {note}");
        }
        log::info!(
            "spool {}: {} queued message(s) recovered, {} finished",
            spool.display(),
            rec.messages.len(),
            rec.finished
        );
        let tls = match (&cfg.tls.certificate, &cfg.tls.private_key) {
            (Some(c), Some(k)) => Some(tls::server_config(c, k)?),
            _ => None,
        };
        // Mailbox usage: local delivery keeps it, RCPT reads it.
        let usage = Arc::new(UsageCache::new());
        let l = &cfg.limits;
        let limits =
            Arc::new(ConnLimits::new(l.max_connections, l.max_connections_per_ip, l.max_connections_per_network));
        let services = Services::start(cfg);
        let shard_metrics: Vec<Arc<crate::obs::metrics::ShardMetrics>> = (0..shards).map(|_| Arc::default()).collect();
        let control_metrics = Arc::new(crate::obs::metrics::ControlMetrics::default());
        let serving = Arc::new(AtomicBool::new(false));
        let activity = {
            let s = cfg.log_settings();
            let dir = s.dir.clone();
            Some(
                crate::obs::ActivityLog::start(s)
                    .map_err(|e| crate::spool::SpoolError::io("open the logs in", &dir, 0, e))?,
            )
        };
        // `check-config` refuses a bad list; here it can only be one that was checked.
        let debug =
            Arc::new(crate::obs::debug::DebugSwitch::new(cfg.log.debug, &cfg.log.debug_clients).unwrap_or_else(|e| {
                log::warn!("[log] debug_clients: {e}: debug log off");
                crate::obs::debug::DebugSwitch::new(false, &[]).expect("the empty list")
            }));
        // Bind everything first, so that a bad address fails the start before any thread.
        let mut per_shard: Vec<Vec<ShardListener>> = (0..shards).map(|_| Vec::new()).collect();
        let mut local_addrs = Vec::new();
        let mut sessions = Vec::new();
        for (actual, l, socks) in bound {
            local_addrs.push(actual);
            let mut session = cfg.session_config(&l, tls.is_some(), services.policy.clone());
            session.usage = Some(usage.clone());
            session.conn_limits = Some(limits.clone());
            session.debug = Some(debug.clone());
            let session = Arc::new(session);
            sessions.push(session.clone());
            for (i, socket) in socks.into_iter().enumerate() {
                per_shard[i].push(ShardListener::new(socket, session.clone(), l.tls == ListenerTls::Implicit));
            }
        }
        let live = Arc::new(reload::Live::new(sessions, tls.clone()));
        let reloads: Arc<reload::Outcomes> = Arc::default();
        let directory = Arc::new(
            DirectoryHandle::open(Box::new(JsonFileStore::in_data_dir(&cfg.data_dir)))
                .map_err(ServeError::Directory)?,
        );
        if cfg.delivery.postmaster.is_none() {
            let missing = directory.current().domains_without_postmaster();
            if !missing.is_empty() {
                log::warn!(
                    "no postmaster for {} (RFC 5321 §4.5.1): its mail waits, deferred; add a postmaster mailbox \
                     or address, or set [delivery] postmaster",
                    missing.join(", ")
                );
            }
        }
        // One flag per spool directory: its log raises it when the next segment is near.
        let spare_flags: Vec<(std::path::PathBuf, Arc<AtomicBool>)> = (0..shards as u8)
            .chain([CONTROL_SHARD])
            .map(|s| (shard_dir(&spool, s), Arc::new(AtomicBool::new(false))))
            .collect();
        let (tx, rx) = std::sync::mpsc::sync_channel(control::link::CHANNEL_CAPACITY);
        let control_stop = Arc::new(AtomicBool::new(false));
        let remote = remote::spawn(
            cfg.delivery.remote.clone(),
            cfg.delivery_dns(),
            services.dns.clone(),
            &cfg.hostname,
            tx.clone(),
        )
        .map_err(ServeError::Thread)?;
        let signers: Vec<Arc<crate::policy::dkim_sign::SignKey>> = cfg
            .dkim
            .sign
            .iter()
            .filter_map(|k| {
                crate::policy::dkim_sign::SignKey::load(&k.domain, &k.selector, &k.key)
                    .inspect_err(|e| log::warn!("lists: [[dkim.sign]] {}: {e}", k.domain))
                    .ok()
                    .map(Arc::new)
            })
            .collect();
        let one_click = match &cfg.lists.unsubscribe_url {
            Some(url) => Some(Arc::new(crate::lists::OneClick {
                url: url.clone(),
                key: lists::one_click_key(&cfg.data_dir).map_err(|e| {
                    ServeError::Thread(std::io::Error::other(format!("the one-click unsubscription key: {e}")))
                })?,
                signers: signers.clone(),
            })),
            None => None,
        };
        let (lists, lists_thread) = lists::spawn(lists::ListsSetup {
            cfg: cfg.lists.clone(),
            data_dir: cfg.data_dir.clone(),
            hostname: cfg.hostname.clone(),
            directory: directory.clone(),
            dns: services.dns.clone().map(|s| crate::dns::Dns::new(s, cfg.delivery_dns().settings())),
            signers,
            one_click: one_click.clone(),
            control: tx.clone(),
            stop: control_stop.clone(),
            auth_servers: cfg.dns.servers.clone(),
            auth_timeout: cfg.dkim.timeout,
        })
        .map_err(ServeError::Thread)?;
        let lists_handle = lists.clone();
        let control_thread = control::spawn(
            control::ControlConfig {
                data_dir: cfg.data_dir.clone(),
                dsn: cfg.delivery.dsn.clone(),
                event_timeout: cfg.delivery.event_timeout,
                spool: spool.clone(),
                maildir_root: cfg.maildir_root(),
                segment_size: cfg.spool.segment_size,
                direct_io: cfg.spool.direct_io,
                lmtp: crate::delivery::lmtp::LmtpRoute::from_config(&cfg.delivery.lmtp),
                spare_wanted: Some(spare_flags[shards].1.clone()),
                manager: crate::queue::ManagerConfig {
                    hostname: cfg.hostname.clone(),
                    autoreply_period: cfg.delivery.autoreply_period,
                    catch_alls: cfg.policy.catch_alls,
                    catch_all_header: cfg.delivery.catch_all_header.clone(),
                    local_retry: cfg.delivery.local_retry,
                    local_domains: cfg.local_domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
                    routing: cfg.delivery.routing.clone(),
                    lmtp: crate::delivery::lmtp::LmtpRoute::from_config(&cfg.delivery.lmtp),
                    retry: cfg.delivery.retry.clone(),
                    delay_notice: cfg.delivery.delay_notice,
                    active_limit: cfg.delivery.active_limit,
                    postmaster: cfg.delivery.postmaster.clone(),
                    activity: cfg.log.activity,
                    one_click: one_click.clone(),
                },
            },
            directory.clone(),
            usage.clone(),
            rec.messages,
            rec.reclaimer,
            rec.tails.get(&CONTROL_SHARD).copied(),
            rec.max_id,
            rx,
            remote,
            lists.clone(),
            activity.as_ref().map(|a| a.emitter()),
            control_metrics.clone(),
            control_stop.clone(),
        )?;
        // Replaying a large spool allocated and freed a lot on this thread: the queue keeps a
        // compact entry per message, not what replay read.
        crate::util::mem::release_free_memory();
        let shutdown = Arc::new(AtomicBool::new(false));
        let socket_path = crate::queue::requests::socket_path(&cfg.data_dir);
        // Without the socket the server still serves mail; only the queue commands need it.
        let bans = services.policy.bans.clone();
        // The admin API on TCP, when configured (its token was checked with the config).
        let tcp_admin = match (cfg.admin.listen, cfg.admin.token()) {
            (Some(addr), Ok(token)) => match std::net::TcpListener::bind(addr) {
                Ok(listener) => {
                    log::info!("admin API on {}", listener.local_addr().unwrap_or(addr));
                    Some(admin_socket::TcpAdmin { listener, token })
                }
                Err(e) => {
                    log::error!("admin API: binding {addr}: {e}; the admin socket still serves it");
                    None
                }
            },
            _ => None,
        };
        let admin_addr = tcp_admin.as_ref().and_then(|t| t.listener.local_addr().ok());
        // Every thread that would otherwise poll the stop flag is woken by [`Server::stop`].
        let mut wakers = Vec::new();
        let admin_wake = Arc::new(shard::ShardWaker::new().map_err(ServeError::Thread)?);
        wakers.push(admin_wake.clone());
        let socket = admin_socket::spawn(
            socket_path.clone(),
            admin_socket::Admin {
                tx: tx.clone(),
                bans,
                answerers: admin_socket::Answerers {
                    debug: debug.clone(),
                    metrics: control_metrics.clone(),
                    reloads: reloads.clone(),
                    lists,
                    data_dir: cfg.data_dir.clone(),
                    spool: spool.clone(),
                    maildir_root: cfg.maildir_root(),
                },
                listing: std::sync::Mutex::new(None),
            },
            tcp_admin,
            shutdown.clone(),
            admin_wake,
        )
        .inspect_err(|e| {
            log::error!(
                "control socket {}: {e}; `ringmx queue retry|delete|bounce` will not reach the server",
                socket_path.display()
            )
        })
        .ok();
        let mut threads = Vec::new();
        for (i, listeners) in per_shard.into_iter().enumerate() {
            let shard_id = i as u8;
            let tail = rec.tails.get(&shard_id).copied();
            let dir = shard_dir(&spool, shard_id);
            let mut log = match tail {
                Some(t) => ShardLog::open(&dir, shard_id, cfg.spool.segment_size, t.seq, Some(t.end))?,
                None => ShardLog::open(&dir, shard_id, cfg.spool.segment_size, 1, None)?,
            };
            log.want_spares(spare_flags[i].1.clone());
            if cfg.spool.direct_io
                && let Err(e) = log.use_direct_io()
                && i == 0
            {
                log::warn!("[spool] direct_io: {}: {e}; writing with fdatasync instead", dir.display());
            }
            let max_id = rec.max_id;
            let tls = tls.clone();
            let directory = directory.clone();
            let link = control::link::ControlLink::new(tx.clone());
            // Made here so that a stop can wake a shard sleeping with nothing to do.
            let waker = Arc::new(shard::ShardWaker::new().map_err(ServeError::Thread)?);
            wakers.push(waker.clone());
            let limits = limits.clone();
            let shutdown = shutdown.clone();
            let fsync = cfg.spool.fsync;
            let drain_timeout = cfg.timeouts.shutdown;
            let pin = cfg.runtime.pin_cores.then_some(i % cpus);
            let emitter = activity.as_ref().map(|a| a.emitter());
            let metrics = shard_metrics[i].clone();
            let shard_live = live.clone();
            let t = std::thread::Builder::new()
                .name(format!("shard-{i}"))
                .spawn(move || {
                    if let Some(core) = pin {
                        pin_to_core(core);
                    }
                    let shard = Shard {
                        id: shard_id,
                        listeners,
                        log,
                        ids: Rc::new(RefCell::new(IdGen::new(shard_id, max_id))),
                        tls,
                        directory,
                        waker,
                        control: Some(link),
                        limits,
                        shutdown,
                        fsync,
                        drain_timeout,
                        stats: ShardStats::default(),
                        activity: emitter,
                        metrics,
                        sessions: 0,
                        tally: Default::default(),
                        tally_published: None,
                        live: Some(shard_live),
                        live_generation: 0,
                    };
                    match driver {
                        Driver::Uring => uring::run(shard),
                        Driver::Epoll => epoll::run(shard),
                    }
                })
                .map_err(ServeError::Thread)?;
            threads.push(t);
        }
        let spares = spawn_housekeeping(
            spare_flags,
            (cfg.spool.segment_size, cfg.spool.direct_io),
            directory.clone(),
            shutdown.clone(),
        )?;
        let (metrics_addr, metrics) = match cfg.metrics.listen {
            None => (None, None),
            Some(addr) => {
                let listener = std::net::TcpListener::bind(addr).map_err(|source| ServeError::Bind { addr, source })?;
                let bound = listener.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
                let registry = Arc::new(crate::obs::metrics::Registry {
                    shards: shard_metrics,
                    control: control_metrics,
                    limits: Some(limits.clone()),
                    log_dropped: activity.as_ref().map(|a| a.dropped_counter()),
                    reloads: reloads.clone(),
                    dns: services.dns.clone(),
                    bans: services.policy.bans.clone(),
                    unsubscribe: one_click.clone().map(|o| (o, lists_handle.clone())),
                });
                let ready = crate::obs::metrics::Readiness { spool: spool.clone(), serving: serving.clone() };
                let stop = Arc::new(AtomicBool::new(false));
                let s = stop.clone();
                let t = std::thread::Builder::new()
                    .name("metrics".into())
                    .spawn(move || crate::obs::metrics::serve(listener, registry, ready, s))
                    .map_err(ServeError::Thread)?;
                (Some(bound), Some((t, stop)))
            }
        };
        serving.store(true, Ordering::Relaxed);
        log::info!(
            "{shards} ingress shard(s), {driver:?} driver, fsync {}",
            if cfg.spool.fsync { "on" } else { "OFF" }
        );
        Ok(Server {
            threads,
            control: Some(control_thread),
            lists: Some(lists_thread),
            socket,
            spares: Some(spares),
            _lock: lock,
            control_stop,
            control_tx: tx,
            lists_wake: lists_handle,
            directory,
            shutdown,
            wakers,
            local_addrs,
            driver,
            activity,
            metrics_addr,
            admin_addr,
            metrics,
            serving,
            reloadable: Reloadable { cfg: cfg.clone(), live, services, limits, usage, debug, reloads },
        })
    }

    /// Applies a reloaded configuration to the sessions that start from now on: listeners'
    /// settings, policy, connection limits, the TLS certificate. What needs a restart
    /// (listeners added or removed, the data directory, the runtime, logs, metrics,
    /// delivery) is kept as it is and named in the notes returned. An error (a certificate
    /// that does not load) changes nothing.
    pub fn reload(&mut self, mut new: Config) -> Result<Vec<String>, String> {
        let r = &mut self.reloadable;
        let old = &r.cfg;
        let mut notes = Vec::new();
        let addrs = |c: &Config| c.bind_addresses().into_iter().map(|(a, l)| (a, l.tls)).collect::<Vec<_>>();
        if addrs(&new) != addrs(old) {
            notes.push("listeners changed: the old ones stay until a restart".to_string());
            new.listeners = old.listeners.clone();
        }
        let needs_restart = [
            ("data_dir", new.data_dir != old.data_dir),
            ("[runtime]", format!("{:?}", new.runtime) != format!("{:?}", old.runtime)),
            ("[spool]", format!("{:?}", new.spool) != format!("{:?}", old.spool)),
            ("[log]", format!("{:?}", new.log) != format!("{:?}", old.log)),
            ("[metrics]", format!("{:?}", new.metrics) != format!("{:?}", old.metrics)),
            ("[admin]", format!("{:?}", new.admin) != format!("{:?}", old.admin)),
            ("[lists]", format!("{:?}", new.lists) != format!("{:?}", old.lists)),
            ("[delivery]", format!("{:?}", new.delivery) != format!("{:?}", old.delivery)),
        ];
        for (what, changed) in needs_restart {
            if changed {
                notes.push(format!("{what} changed: takes effect at the next restart"));
            }
        }
        let tls = match (&new.tls.certificate, &new.tls.private_key) {
            (Some(c), Some(k)) => Some(tls::server_config(c, k).map_err(|e| e.to_string())?),
            _ => None,
        };
        let (_, current, _) = r.live.get();
        let old_policy = current.first().map(|s| s.policy.clone()).unwrap_or_default();
        let policy = Arc::new(r.services.reload_policy(&new, &old_policy));
        let sessions = new
            .bind_addresses()
            .iter()
            .map(|(_, l)| {
                let mut s = new.session_config(l, tls.is_some(), policy.clone());
                s.usage = Some(r.usage.clone());
                s.conn_limits = Some(r.limits.clone());
                s.debug = Some(r.debug.clone());
                Arc::new(s)
            })
            .collect();
        let l = &new.limits;
        r.limits.set_max(l.max_connections, l.max_connections_per_ip, l.max_connections_per_network);
        r.live.set(sessions, tls);
        r.cfg = new;
        r.reloads.applied.fetch_add(1, Ordering::Release);
        Ok(notes)
    }

    /// A reload was refused for `errors` (counted; `ringmx reload` shows them).
    pub fn reload_refused(&self, errors: Vec<String>) {
        let o = &self.reloadable.reloads;
        *o.last_errors.lock().unwrap_or_else(|e| e.into_inner()) = errors;
        o.refused.fetch_add(1, Ordering::Release);
    }

    /// A SIGHUP has been dealt with.
    pub fn reload_handled(&self) {
        self.reloadable.reloads.handled();
    }

    /// Asks every shard to drain and stop.
    pub fn stop(&self) {
        self.serving.store(false, Ordering::Relaxed);
        self.shutdown.store(true, Ordering::Relaxed);
        for w in &self.wakers {
            w.nudge();
        }
        if let Some(t) = &self.spares {
            t.thread().unpark();
        }
    }

    /// Waits for the shards; returns their counters.
    pub fn join(mut self) -> Result<Vec<ShardStats>, ServeError> {
        // Written out last, after the shards and the control thread.
        let _activity = self.activity.take();
        if let (Some((t, stop)), Some(addr)) = (self.metrics.take(), self.metrics_addr) {
            stop.store(true, Ordering::Relaxed);
            crate::obs::metrics::wake(addr);
            let _ = t.join();
        }
        let mut all = Vec::new();
        for (i, t) in self.threads.into_iter().enumerate() {
            match t.join() {
                Ok(Ok(s)) => all.push(s),
                Ok(Err(source)) => return Err(ServeError::Shard { shard: i as u8, source }),
                Err(_) => {
                    return Err(ServeError::Shard { shard: i as u8, source: std::io::Error::other("shard panicked") });
                }
            }
        }
        // The shards set `shutdown`, which also ends the control socket and the preparer.
        for t in [self.socket, self.spares].into_iter().flatten() {
            let _ = t.join();
        }
        // The shards are done: the greylist's last state goes to disk.
        if let Some(g) = self.reloadable.live.get().1.first().and_then(|s| s.policy.greylist.clone())
            && let Err(e) = g.save()
        {
            log::error!("greylist: {e}");
        }
        self.control_stop.store(true, Ordering::Relaxed);
        let _ = self.control_tx.try_send(control::link::ControlMsg::Wake);
        self.lists_wake.wake();
        if let Some(c) = self.control
            && c.join().is_err()
        {
            return Err(ServeError::Shard { shard: CONTROL_SHARD, source: std::io::Error::other("control panicked") });
        }
        if let Some(l) = self.lists {
            let _ = l.join();
        }
        Ok(all)
    }
}

/// Background chores, four times a second, off the shards:
/// - a spare segment file, written through, for each spool directory whose log asked for
///   one (its active segment is half full), so that the shard moving to its next segment
///   finds it ready instead of writing it on its own thread
///   ([`crate::spool::log::prepare_spare`]);
/// - the directory reloaded when its store changed (`ringmx directory …` saved it), as on
///   SIGHUP: connections keep the directory they started with.
fn spawn_housekeeping(
    spare_flags: Vec<(std::path::PathBuf, Arc<AtomicBool>)>,
    (segment_size, direct): (u64, bool),
    directory: Arc<DirectoryHandle>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, ServeError> {
    std::thread::Builder::new()
        .name("housekeeping".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match directory.reload_if_changed() {
                    Some(Ok(d)) => log::info!("directory changed: reloaded ({} domain(s))", d.data().domains.len()),
                    Some(Err(e)) => log::error!("directory changed but not reloaded, the previous one stays: {e}"),
                    None => {}
                }
                for (dir, wanted) in &spare_flags {
                    if wanted.swap(false, Ordering::Relaxed)
                        && let Err(e) = crate::spool::log::prepare_spare(dir, segment_size, direct)
                    {
                        log::warn!("spool: preparing a spare segment in {}: {e}", dir.display());
                    }
                }
                // Once a second: a directory change is seen within it, and a spare asked for
                // is ready long before the segment in use fills (a rotation without one
                // makes its segment itself). A stop unparks it.
                std::thread::park_timeout(std::time::Duration::from_secs(1));
            }
        })
        .map_err(ServeError::Thread)
}

fn pin_to_core(core: usize) {
    // SAFETY: one invariant for the three calls: `set` is a local cpu_set_t, for which all-zero bytes are a valid
    // (empty) value; CPU_SET indexes its bit array with a bounds check (a `core` past CPU_SETSIZE panics, it does not
    // write out of bounds); sched_setaffinity only reads `size_of::<cpu_set_t>()` bytes from it and applies to the
    // calling thread (pid 0). A failure is ignored: the thread stays unpinned.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Set when a new server asked this one to hand over: its drain is not the service's stop.
pub static HANDING_OVER: AtomicBool = AtomicBool::new(false);

/// SIGUSR2: starts the program at our own path (`argv[0]`: after a package upgrade, the new
/// binary) with our arguments and `--takeover`; it inherits our standard output and error
/// and, under systemd, `$NOTIFY_SOCKET`.
fn upgrade() {
    let mut args = std::env::args_os();
    let Some(program) = args.next() else { return };
    let rest: Vec<std::ffi::OsString> = args.filter(|a| a != "--takeover").collect();
    match std::process::Command::new(&program).args(&rest).arg("--takeover").spawn() {
        Ok(child) => log::info!("SIGUSR2: {} started (pid {}) to take over", program.to_string_lossy(), child.id()),
        Err(e) => log::error!("SIGUSR2: cannot start {}: {e}", program.to_string_lossy()),
    }
}

/// `serve --takeover`: asks the server running on this data directory to hand over (it
/// drains, as on SIGTERM: its listeners stop accepting, and the connections waiting in
/// their queues move to ours when it closes them, with `net.ipv4.tcp_migrate_req`), then
/// waits for its spool lock. Nothing is refused meanwhile: new connections wait in our
/// accept queues until our shards start.
fn takeover(cfg: &Config, spool: &std::path::Path) -> Result<crate::spool::SpoolLock, ServeError> {
    let fail = |what: String| ServeError::Thread(std::io::Error::other(format!("takeover: {what}")));
    let knob = "/proc/sys/net/ipv4/tcp_migrate_req";
    if std::fs::read_to_string(knob).is_ok_and(|v| v.trim() == "0") && std::fs::write(knob, "1").is_err() {
        log::warn!(
            "takeover: {knob} is 0 and cannot be set: connections waiting in the old server's queues when it \
             closes them are reset (sysctl -w net.ipv4.tcp_migrate_req=1)"
        );
    }
    // Under systemd (`NotifyAccess=all`), this process becomes the service's main one before
    // the old one exits: its exit is then not the service's end.
    crate::util::notify::notify(&format!("MAINPID={}", std::process::id()));
    match crate::admin::control::handover_request(&cfg.data_dir) {
        Ok(()) => log::info!("takeover: the running server drains"),
        Err(e) => log::info!("takeover: {e}: starting as soon as the spool is free"),
    }
    // The old server drains for at most its shutdown time-out, then stops its delivery.
    let limit = std::time::Instant::now() + cfg.timeouts.shutdown + std::time::Duration::from_secs(60);
    loop {
        match crate::spool::lock_spool(spool) {
            Ok(Some(lock)) => return Ok(lock),
            Ok(None) if std::time::Instant::now() < limit => std::thread::sleep(std::time::Duration::from_millis(50)),
            Ok(None) => return Err(fail(format!("the spool {} is still in use", spool.display()))),
            Err(e) => return Err(fail(format!("lock {}: {e}", spool.display()))),
        }
    }
}

/// Runs the server until SIGTERM or SIGINT, then drains. Prints `listening on ADDR` per
/// bound address on stdout once connections are accepted.
/// SIGHUP reloads the directory and, given `reload` (which reads the configuration file
/// again), the configuration ([`Server::reload`]); a configuration with errors is refused
/// with every error logged, and the one in force stays.
pub fn serve(
    cfg: &Config,
    reload: Option<&dyn Fn() -> Result<Config, Vec<String>>>,
) -> Result<Vec<ShardStats>, ServeError> {
    // Signals are taken synchronously by this thread: block them before the shard
    // threads start so that they inherit the mask.
    let set = signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2]);
    // SAFETY: one invariant for both calls: pthread_sigmask only reads `set`, a sigset_t initialized by `signal_set`,
    // and a null old-set pointer is allowed (the old mask is not stored); it changes only this thread's mask, before
    // `Server::start` spawns the shard threads that inherit it. SIG_IGN for SIGPIPE installs no Rust handler, so
    // nothing runs in signal context.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let mut server = Server::start(cfg)?;
    {
        let mut out = std::io::stdout().lock();
        for a in &server.local_addrs {
            let _ = writeln!(out, "listening on {a}");
        }
        if let Some(a) = server.metrics_addr {
            let _ = writeln!(out, "metrics on http://{a}/metrics");
        }
        if let Some(a) = server.admin_addr {
            let _ = writeln!(out, "admin API on http://{a}/v1/");
        }
        let _ = out.flush();
    }
    crate::util::notify::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    loop {
        let mut sig = 0;
        // SAFETY: sigwait only reads `set` (initialized by `signal_set`, and blocked in this thread above) and writes
        // one c_int into `sig`, a live local.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        match sig {
            libc::SIGUSR1 => {
                if let Some(a) = &server.activity {
                    a.reopen();
                    log::info!("SIGUSR1: logs reopened");
                }
            }
            // A zero-downtime upgrade: the binary at our path (a new one, once installed)
            // starts with our arguments and `--takeover`, and takes over from us.
            libc::SIGUSR2 => upgrade(),
            libc::SIGHUP => {
                match reload.map(|f| f()) {
                    None => log::info!("SIGHUP: no configuration file: only the directory is reloaded"),
                    Some(Err(problems)) => {
                        for p in &problems {
                            log::error!("SIGHUP: {p}");
                        }
                        log::error!(
                            "SIGHUP: configuration not reloaded ({} error(s)): the one in force stays",
                            problems.len()
                        );
                        server.reload_refused(problems);
                    }
                    Some(Ok(new)) => match server.reload(new) {
                        Ok(notes) => {
                            for n in &notes {
                                log::warn!("SIGHUP: {n}");
                            }
                            log::info!("SIGHUP: configuration reloaded: new sessions use it");
                        }
                        Err(e) => {
                            log::error!("SIGHUP: configuration not reloaded: {e}: the one in force stays");
                            server.reload_refused(vec![e]);
                        }
                    },
                }
                match server.directory.reload() {
                    Ok(d) => log::info!("SIGHUP: directory reloaded ({} domain(s))", d.data().domains.len()),
                    Err(e) => log::error!("SIGHUP: directory not reloaded, the previous one stays: {e}"),
                }
                server.reload_handled();
            }
            _ => {
                log::info!("signal {sig}: draining");
                if !HANDING_OVER.load(Ordering::Relaxed) {
                    crate::util::notify::notify("STOPPING=1");
                }
                break;
            }
        }
    }
    server.stop();
    let stats = server.join()?;
    let sum = |f: fn(&ShardStats) -> u64| stats.iter().map(f).sum::<u64>();
    let (batches, records) = (sum(|s| s.spool_batches), sum(|s| s.spool_records));
    let mut refused = crate::policy::RefusalCounts::default();
    for s in &stats {
        refused.merge(&s.refused);
    }
    let why = refused.describe();
    let why = if why.is_empty() { why } else { format!(" ({why})") };
    let (bytes, written) = (sum(|s| s.spool_bytes), sum(|s| s.spool_written));
    log::info!(
        "stopped: {} connection(s), {} message(s) accepted, {} refused connection(s){why}; spool: {records} record(s) in {batches} batch(es), {:.2} per {}; {written} byte(s) written for {bytes} of records ({:.0} more per record)",
        sum(|s| s.connections),
        sum(|s| s.messages),
        refused.total(),
        records as f64 / batches.max(1) as f64,
        match (cfg.spool.fsync, stats.iter().any(|s| s.spool_direct)) {
            (false, _) => "write (fsync off)",
            (true, false) => "fdatasync",
            (true, true) => "durable write (direct I/O)",
        },
        written.saturating_sub(bytes) as f64 / records.max(1) as f64,
    );
    Ok(stats)
}

fn signal_set(sigs: &[i32]) -> libc::sigset_t {
    // SAFETY: one invariant for the block: all-zero bytes are a valid sigset_t (plain integers), and sigemptyset then
    // initializes it as POSIX requires; sigemptyset/sigaddset write only inside `set`, a live local, and an invalid
    // signal number makes sigaddset return EINVAL without writing.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}
