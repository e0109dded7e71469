//! What every ingress shard has, whichever I/O driver runs it: its listeners, its spool
//! log, its connections, and the shared connection limits.

use super::conn::{Conn, Effect};
use super::control::link::{Accepted, ControlLink};
pub use super::waker::ShardWaker;
use crate::directory::DirectoryHandle;
pub use crate::policy::ConnLimits;
use crate::session::{Session, SessionConfig};
use crate::spool::{IdGen, QueueId, ShardLog, SpoolError, Stored};
use crate::util::time::Now;
use crate::wire::Reply;
pub use ringmx_bufring::Slab;
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A listening socket of this shard and what its connections get.
pub struct ShardListener {
    pub socket: TcpListener,
    pub session: Arc<SessionConfig>,
    pub implicit_tls: bool,
    /// The address it is bound to, when that is one address (not a wildcard): then it is
    /// the address every connection reached, and the W3C log needs no `getsockname` per
    /// connection to name it.
    pub bound: Option<SocketAddr>,
}

impl ShardListener {
    pub fn new(socket: TcpListener, session: Arc<SessionConfig>, implicit_tls: bool) -> Self {
        let bound = socket.local_addr().ok().filter(|a| !a.ip().is_unspecified());
        ShardListener { socket, session, implicit_tls, bound }
    }
}

/// How often a busy shard copies its tally for the metrics endpoint.
pub const TALLY_PERIOD: std::time::Duration = std::time::Duration::from_millis(50);
/// How often a shard's loop turns at the least while it has connections: their timers
/// (reply and idle deadlines, the drain) are looked at each time.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(100);
/// The longest an idle shard sleeps: with no connection nothing is due but what wakes it
/// anyway (a connection, an answer, a stop through its waker), so it turns once a second
/// rather than ten times.
pub const IDLE_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// The reply to a connection over a limit (SPEC §2).
pub const TOO_MANY_CONNECTIONS: &[u8] = b"421 4.7.0 Error: too many connections, try again later\r\n";
/// The greeting of a connection accepted while the shard drains (RFC 5321 §3.8: a server
/// that must shut down answers 421): the client tries again, at the server that took over.
pub const SHUTTING_DOWN: &[u8] = b"421 4.3.2 Service shutting down, try again later\r\n";

/// Everything a shard thread owns.
pub struct Shard {
    pub id: u8,
    pub listeners: Vec<ShardListener>,
    pub log: ShardLog,
    pub ids: Rc<RefCell<IdGen>>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub directory: Arc<DirectoryHandle>,
    pub waker: Arc<ShardWaker>,
    /// Where stored messages go next (none in tools and tests that only accept).
    pub control: Option<ControlLink>,
    pub limits: Arc<ConnLimits>,
    pub shutdown: Arc<AtomicBool>,
    /// When false, records are written but not synced before 250 (operator's choice).
    pub fsync: bool,
    pub drain_timeout: std::time::Duration,
    pub stats: ShardStats,
    /// This shard's way into the activity log (none when it is off).
    pub activity: Option<crate::obs::Emitter>,
    /// Where `stats` are published once per loop turn for the metrics endpoint.
    pub metrics: Arc<crate::obs::metrics::ShardMetrics>,
    /// Sessions begun: the low bits of the next session's id (the shard's number is the top
    /// byte).
    pub sessions: u64,
    /// Replies, phase latencies, TLS and AUTH, counted by this shard's connections.
    pub tally: Rc<RefCell<crate::obs::tally::Tally>>,
    /// When the tally was last offered to the metrics endpoint.
    pub tally_published: Option<std::time::Instant>,
    /// Reloaded settings for new sessions, and the generation this shard has.
    pub live: Option<Arc<super::reload::Live>>,
    pub live_generation: u64,
}

/// Counters a shard reports at exit.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShardStats {
    pub connections: u64,
    /// Connections refused, by why: at accept (connection limits) or by the session.
    pub refused: crate::policy::RefusalCounts,
    /// Messages accepted (their 250 sent) and their content bytes.
    pub messages: u64,
    pub bytes: u64,
    /// Spool batches written (each one `fdatasync` when syncing) and records in them: their
    /// ratio is the group-commit factor.
    pub spool_batches: u64,
    pub spool_records: u64,
    /// Bytes of records made durable, and bytes written to do it (see `LogStats::written`).
    pub spool_bytes: u64,
    pub spool_written: u64,
    /// The log wrote with direct I/O.
    pub spool_direct: bool,
}

/// A connection slot: the connection, its socket and the driver's own state.
pub struct Slot<D> {
    pub conn: Conn,
    pub fd: OwnedFd,
    pub io: D,
}

impl Shard {
    /// The address a new connection on listener `l` is counted under at accept: none for a
    /// trusted load balancer speaking the PROXY protocol (the session counts the client's
    /// real address once the header is read).
    pub fn counted_ip(&self, l: usize, peer: IpAddr) -> Option<IpAddr> {
        let proxied = self.listeners[l].session.proxy_from.as_ref().is_some_and(|list| list.contains(peer));
        (!proxied).then_some(peer)
    }

    /// A new connection on listener `l` (socket `fd`): its session, greeting included.
    pub fn new_conn(&mut self, l: usize, fd: std::os::fd::RawFd, peer: SocketAddr, now: Now) -> Conn {
        self.take_reloaded();
        let lst = &self.listeners[l];
        self.sessions += 1;
        let id = (self.id as u64) << 56 | self.sessions;
        let mut session =
            Session::new(lst.session.clone(), self.ids.clone(), self.directory.current(), peer, None, now, id);
        // The W3C log names the address the client reached: the listener's own, or with a
        // wildcard one, from getsockname (only then).
        if lst.session.w3c
            && let Some(local) = lst.bound.or_else(|| super::listener::local_addr(fd).ok())
        {
            session.set_local(local);
        }
        let implicit = if lst.implicit_tls { self.tls.clone() } else { None };
        Conn::new(session, self.counted_ip(l, peer.ip()), implicit, self.tally.clone())
    }

    /// Takes the settings of a configuration reload, if there was one since the last look.
    fn take_reloaded(&mut self) {
        let Some(live) = &self.live else { return };
        if live.generation() == self.live_generation {
            return;
        }
        let (generation, sessions, tls) = live.get();
        for (lst, s) in self.listeners.iter_mut().zip(sessions) {
            lst.session = s;
        }
        self.tls = tls;
        self.live_generation = generation;
    }

    /// A connection is gone: its refusal counted, its place in the limits released, its
    /// last W3C lines handed to the log.
    pub fn conn_closed(&mut self, conn: &mut Conn) {
        if let Some(r) = conn.session.refusal() {
            self.stats.refused.add(r);
        }
        self.limits.release(conn.counted_ip);
        if let Some(em) = &self.activity {
            for a in conn.session.end_trace(Now::system()) {
                em.emit(a);
            }
        }
    }

    /// Queues the effects of connection `token` (spool requests).
    pub fn apply(&mut self, token: u64, effects: &mut Vec<Effect>) {
        for e in effects.drain(..) {
            match e {
                Effect::Spool(req) => self.log.append(token, *req),
                Effect::Log(a) => {
                    if let Some(em) = &self.activity {
                        em.emit(*a);
                    }
                }
            }
        }
    }

    /// A connection refused at accept by the connection limits (before any session).
    pub fn refused_at_accept(&mut self, client: std::net::IpAddr, now: Now) {
        let reason = crate::policy::Refusal::ConnectionLimit;
        self.stats.refused.add(reason);
        if let Some(em) = &self.activity
            && self.listeners.first().is_some_and(|l| l.session.activity)
        {
            let rule = "max_connections / max_connections_per_ip / max_connections_per_network".to_string();
            em.emit(crate::obs::Activity {
                at_ms: now.unix_ms,
                what: crate::obs::What::Refused { session: 0, client, reason, rule },
            });
        }
    }

    /// A spool completion: the answer for the session, and a stored message goes to the
    /// control side.
    pub fn stored(&mut self, result: Result<Stored, SpoolError>) -> Result<QueueId, Reply> {
        match result {
            Ok(s) => {
                let id = s.id;
                self.stats.messages += 1;
                self.stats.bytes += s.location.content_len;
                if let (Some(envelope), Some(link)) = (s.envelope, self.control.as_mut()) {
                    link.send(Accepted { shard: self.id, envelope, location: s.location });
                }
                Ok(id)
            }
            Err(e) => {
                log::error!("shard {}: spool: {e}", self.id);
                Err(e.smtp_reply())
            }
        }
    }

    /// Once per loop turn: retries hand-overs the control channel had no room for, and
    /// publishes the counters for the metrics endpoint (relaxed stores of this thread's
    /// own cells: no shared counter on the hot path); the larger tally at most every
    /// [`TALLY_PERIOD`] (the loop turns at least every tick, so it is never older).
    pub fn end_turn(&mut self, now: std::time::Instant) {
        if let Some(link) = self.control.as_mut() {
            link.flush();
        }
        let (s, m, l) = (&self.stats, &self.metrics, self.log.stats());
        m.connections.set(s.connections);
        for r in crate::policy::Refusal::ALL {
            m.refused[r as usize].set(s.refused.get(r));
        }
        m.messages.set(s.messages);
        m.bytes.set(s.bytes);
        m.spool_batches.set(l.batches);
        m.spool_records.set(l.records);
        m.spool_segments.set(l.segments_created);
        if self.tally_published.is_none_or(|t| now.saturating_duration_since(t) >= TALLY_PERIOD) {
            self.tally.borrow_mut().publish(&m.tally);
            self.tally_published = Some(now);
        }
    }

    /// The counters, with the spool's.
    pub fn final_stats(&self) -> ShardStats {
        let l = self.log.stats();
        ShardStats {
            spool_batches: l.batches,
            spool_records: l.records,
            spool_bytes: l.bytes,
            spool_written: l.written,
            spool_direct: self.log.is_direct(),
            ..self.stats
        }
    }

    pub fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// How long the loop may sleep: [`IDLE_TICK`] when it has no connection, every
    /// listener's accept armed and its counters published, else [`TICK`].
    pub fn wait(&self, connections: usize, accepting: bool) -> std::time::Duration {
        if connections == 0 && accepting && !self.stopping() && !self.tally.borrow().is_dirty() {
            IDLE_TICK
        } else {
            TICK
        }
    }
}
