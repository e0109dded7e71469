//! What every ingress shard has, whichever I/O driver runs it: its listeners, its spool
//! log, its connections, and the shared connection limits.

use super::conn::{Conn, Effect};
use super::link::{Accepted, ControlLink};
pub use super::waker::ShardWaker;
use crate::directory::DirectoryHandle;
pub use crate::policy::ConnLimits;
use crate::session::{Session, SessionConfig};
use crate::spool::{IdGen, QueueId, ShardLog, SpoolError, Stored};
use crate::util::time::Now;
use crate::wire::Reply;
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
}

/// The reply to a connection over a limit (SPEC §2).
pub const TOO_MANY_CONNECTIONS: &[u8] = b"421 4.7.0 Error: too many connections, try again later\r\n";

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
}

/// Counters a shard reports at exit.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShardStats {
    pub connections: u64,
    pub refused_connections: u64,
    pub messages: u64,
    /// Spool batches written (each one `fdatasync` when syncing) and records in them: their
    /// ratio is the group-commit factor.
    pub spool_batches: u64,
    pub spool_records: u64,
}

/// A connection slot: the connection, its socket and the driver's own state.
pub struct Slot<D> {
    pub conn: Conn,
    pub fd: OwnedFd,
    pub io: D,
}

impl<D> Slab<Slot<D>> {
    /// Adds a connection; returns its token.
    pub fn insert(&mut self, conn: Conn, fd: OwnedFd, io: D) -> u64 {
        self.add(Slot { conn, fd, io })
    }
}

/// Items by index, with a generation so that a late completion for a closed connection
/// is recognised: a token is `generation << 32 | index`, generation 24 bits (never 0).
pub struct Slab<T> {
    slots: Vec<Option<(u32, T)>>,
    free: Vec<u32>,
    next_generation: u32,
    len: usize,
}

impl<T> Slab<T> {
    pub fn new() -> Self {
        Slab { slots: Vec::new(), free: Vec::new(), next_generation: 1, len: 0 }
    }

    /// Adds an item; returns its token.
    pub fn add(&mut self, item: T) -> u64 {
        let generation = self.next_generation;
        // 24 bits, so that a token fits below the io_uring driver's operation byte.
        self.next_generation = (self.next_generation + 1) & 0xff_ffff;
        if self.next_generation == 0 {
            self.next_generation = 1;
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[idx as usize] = Some((generation, item));
        self.len += 1;
        (generation as u64) << 32 | idx as u64
    }

    pub fn get_mut(&mut self, token: u64) -> Option<&mut T> {
        let idx = (token & 0xffff_ffff) as usize;
        let generation = (token >> 32) as u32;
        self.slots.get_mut(idx)?.as_mut().filter(|s| s.0 == generation).map(|s| &mut s.1)
    }

    pub fn remove(&mut self, token: u64) -> Option<T> {
        let idx = (token & 0xffff_ffff) as usize;
        let generation = (token >> 32) as u32;
        let slot = self.slots.get_mut(idx)?;
        if slot.as_ref().is_some_and(|s| s.0 == generation) {
            self.free.push(idx as u32);
            self.len -= 1;
            slot.take().map(|s| s.1)
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens of every live item.
    pub fn tokens(&self) -> Vec<u64> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|s| (s.0 as u64) << 32 | i as u64)).collect()
    }
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl Shard {
    /// A new connection on listener `l`: its session, greeting included.
    /// The address a new connection on listener `l` is counted under at accept: none for a
    /// trusted load balancer speaking the PROXY protocol (the session counts the client's
    /// real address once the header is read).
    pub fn counted_ip(&self, l: usize, peer: IpAddr) -> Option<IpAddr> {
        let proxied = self.listeners[l].session.proxy_from.as_ref().is_some_and(|list| list.contains(peer));
        (!proxied).then_some(peer)
    }

    pub fn new_conn(&self, l: usize, peer: SocketAddr, now: Now) -> Conn {
        let lst = &self.listeners[l];
        let session = Session::new(lst.session.clone(), self.ids.clone(), self.directory.current(), peer, None, now);
        let implicit = if lst.implicit_tls { self.tls.clone() } else { None };
        Conn::new(session, self.counted_ip(l, peer.ip()), implicit)
    }

    /// Queues the effects of connection `token` (spool requests).
    pub fn apply(&mut self, token: u64, effects: &mut Vec<Effect>) {
        for e in effects.drain(..) {
            match e {
                Effect::Spool(req) => self.log.append(token, *req),
            }
        }
    }

    /// A spool completion: the answer for the session, and a stored message goes to the
    /// control side.
    pub fn stored(&mut self, result: Result<Stored, SpoolError>) -> Result<QueueId, Reply> {
        match result {
            Ok(s) => {
                let id = s.id;
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

    /// Once per loop turn: retries hand-overs the control channel had no room for.
    pub fn flush_control(&mut self) {
        if let Some(link) = self.control.as_mut() {
            link.flush();
        }
    }

    /// The counters, with the spool's.
    pub fn final_stats(&self) -> ShardStats {
        let l = self.log.stats();
        ShardStats { spool_batches: l.batches, spool_records: l.records, ..self.stats }
    }

    pub fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;

    /// A token names one item: after removal and reuse of its slot, the old token finds
    /// nothing (a late completion for a closed connection), the new one finds the new item.
    #[test]
    fn a_reused_slot_does_not_answer_to_an_old_token() {
        let mut s = Slab::new();
        let a = s.add("a");
        let b = s.add("b");
        assert_eq!((s.len(), s.get_mut(a).copied(), s.get_mut(b).copied()), (2, Some("a"), Some("b")));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None, "removed twice");
        let c = s.add("c");
        assert_eq!(c & 0xffff_ffff, a & 0xffff_ffff, "the free slot is reused");
        assert_ne!(c, a);
        assert_eq!(s.get_mut(a), None);
        assert_eq!(s.get_mut(c).copied(), Some("c"));
        let mut tokens = s.tokens();
        tokens.sort();
        let mut want = vec![b, c];
        want.sort();
        assert_eq!(tokens, want);
        assert!(!s.is_empty());
    }

    /// Generations stay in 24 bits (the io_uring driver keeps its operation in the top
    /// byte) and skip 0, however many connections come and go.
    #[test]
    fn generations_wrap_within_24_bits() {
        let mut s = Slab::new();
        let mut last = 0;
        for i in 0..(1u32 << 24) + 5 {
            let t = s.add(i);
            assert!(t >> 32 != 0 && t >> 32 <= 0xff_ffff);
            assert_ne!(t, last);
            last = t;
            s.remove(t);
        }
    }
}
