//! The epoll driver: the fallback where io_uring is not available (seccomp, containers,
//! `kernel.io_uring_disabled`).
//!
//! Level-triggered epoll on non-blocking sockets; the spool batch of a loop turn is written
//! and synced with plain syscalls at the end of the turn, which is the group commit of this
//! driver (the loop waits for the sync).

use super::conn::{Effect, trim_buffer};
use super::listener;
use super::shard::{Shard, ShardStats, Slab, Slot, TOO_MANY_CONNECTIONS};
use crate::util::time::Now;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

/// Event data of listener `i`; connections use their slab token, which never has this bit.
const LISTENER_TAG: u64 = 1 << 63;
/// Event data of the shard's waker (answers from the DNS service or the password verifier).
const WAKER_TAG: u64 = 1 << 62;
use super::shard::TICK;

/// The events a connection is first registered for.
const READ_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;

struct EpollIo {
    /// The interest set registered for the socket: reading while the connection wants
    /// input, writing while output waits.
    events: u32,
}

struct Driver {
    ep: OwnedFd,
    conns: Slab<Slot<EpollIo>>,
    effects: Vec<Effect>,
    scratch: Vec<u8>,
}

fn ctl(ep: i32, op: i32, fd: i32, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a live local epoll_event that epoll_ctl only reads during the call (ignored for EPOLL_CTL_DEL);
    // `ep` and `fd` are plain descriptor numbers, a stale one only fails with EBADF.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Runs a shard until shutdown is requested and drained.
pub fn run(mut shard: Shard) -> io::Result<ShardStats> {
    // SAFETY: epoll_create1 takes no pointers; the result is checked below before it is used.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut d = Driver {
        // SAFETY: `ep` was just returned by epoll_create1 and checked non-negative: a new descriptor nothing else owns,
        // so `d.ep` becomes its only owner.
        ep: unsafe { OwnedFd::from_raw_fd(ep) },
        conns: Slab::new(),
        effects: Vec::new(),
        scratch: vec![0u8; 16 * 1024],
    };
    for (i, l) in shard.listeners.iter().enumerate() {
        ctl(ep, libc::EPOLL_CTL_ADD, l.socket.as_raw_fd(), libc::EPOLLIN as u32, LISTENER_TAG | i as u64)?;
    }
    ctl(ep, libc::EPOLL_CTL_ADD, shard.waker.fd(), libc::EPOLLIN as u32, WAKER_TAG)?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_tick = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let wait = shard.wait(d.conns.len(), true).as_millis() as i32;
        // SAFETY: the kernel writes at most `events.len()` (256, fits in i32) entries into `events`, a live Vec of that
        // length; `ep` stays open while `d` (its owner, `d.ep`) lives, i.e. the whole loop.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, wait) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let now = Now::system();
        for ev in &events[..n as usize] {
            let (data, flags) = (ev.u64, ev.events);
            if data & LISTENER_TAG != 0 {
                d.accept_all(&mut shard, (data & !LISTENER_TAG) as usize, now);
                continue;
            }
            if data == WAKER_TAG {
                for t in shard.waker.take() {
                    if let Some(s) = d.conns.get_mut(t) {
                        s.conn.pump(now, shard.tls.as_ref(), &mut d.effects);
                        shard.apply(t, &mut d.effects);
                    }
                    d.service(&mut shard, t, now);
                }
                continue;
            }
            if flags & libc::EPOLLIN as u32 != 0 {
                d.read(&mut shard, data, now, &mut buf);
            }
            if flags & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                // Reported whatever the interest set: the peer is gone both ways (or the
                // socket failed); a message already with the spool still completes.
                if let Some(s) = d.conns.get_mut(data) {
                    s.conn.closing = true;
                    s.conn.outq.clear();
                }
            }
            d.service(&mut shard, data, now);
        }
        d.flush_spool(&mut shard, now);
        shard.end_turn(now.mono);
        if now.mono.duration_since(last_tick) >= TICK {
            last_tick = now.mono;
            for t in d.conns.tokens() {
                if let Some(s) = d.conns.get_mut(t) {
                    s.conn.on_tick(now, shard.tls.as_ref(), &mut d.effects);
                    shard.apply(t, &mut d.effects);
                    if s.conn.close_overdue(now) {
                        // Its last reply did not go in time: the peer does not read.
                        d.reset(&mut shard, t);
                        continue;
                    }
                }
                d.service(&mut shard, t, now);
            }
        }
        if shard.stopping() {
            let deadline = *drain_deadline.get_or_insert_with(|| {
                // Stop accepting, tell idle sessions, wait for those with a message in the
                // spool.
                for l in &shard.listeners {
                    let _ = ctl(ep, libc::EPOLL_CTL_DEL, l.socket.as_raw_fd(), 0, 0);
                }
                now.mono + shard.drain_timeout
            });
            for t in d.conns.tokens() {
                if let Some(s) = d.conns.get_mut(t) {
                    s.conn.shutdown(now, &mut d.effects);
                }
                d.service(&mut shard, t, now);
            }
            if d.conns.is_empty() || now.mono >= deadline {
                break;
            }
        }
    }
    shard.listeners.clear();
    Ok(shard.final_stats())
}

impl Driver {
    fn accept_all(&mut self, shard: &mut Shard, l: usize, now: Now) {
        let lfd = shard.listeners[l].socket.as_raw_fd();
        loop {
            // Draining: what waits in the queue stays there, for the server taking over
            // (tcp_migrate_req moves it when this listener closes).
            if shard.stopping() {
                return;
            }
            let (fd, peer) = match listener::accept(lfd) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog for now.
                    log::warn!("shard {}: accept: {e}", shard.id);
                    return;
                }
            };
            if !shard.limits.try_acquire(shard.counted_ip(l, peer.ip())) {
                shard.refused_at_accept(peer.ip(), now);
                listener::send_and_forget(fd.as_raw_fd(), TOO_MANY_CONNECTIONS);
                continue;
            }
            shard.stats.connections += 1;
            let raw = fd.as_raw_fd();
            let conn = shard.new_conn(l, raw, peer, now);
            let token = self.conns.add(Slot { conn, fd, io: EpollIo { events: READ_EVENTS } });
            if ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_ADD, raw, READ_EVENTS, token).is_err() {
                self.close(shard, token);
                continue;
            }
            if let Some(s) = self.conns.get_mut(token) {
                s.conn.set_waker(shard.waker.clone(), token);
                s.conn.pump(now, shard.tls.as_ref(), &mut self.effects);
            }
            self.service(shard, token, now);
        }
    }

    fn read(&mut self, shard: &mut Shard, token: u64, now: Now, buf: &mut [u8]) {
        let Some(s) = self.conns.get_mut(token) else { return };
        // A few reads per event keep one busy client from starving the rest; none once the
        // connection pushes back (its replies are not read, or its input waits).
        for _ in 0..4 {
            if !s.conn.wants_read() {
                return;
            }
            // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, a live exclusive slice; `s.fd` is this
            // slot's open socket, owned by the slab entry borrowed for the call.
            let r = unsafe { libc::recv(s.fd.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
            if r > 0 {
                s.conn.on_bytes(now, &buf[..r as usize], &mut self.scratch, shard.tls.as_ref(), &mut self.effects);
                shard.apply(token, &mut self.effects);
                if (r as usize) < buf.len() {
                    return;
                }
            } else if r == 0 {
                // The peer closed (or half-closed after QUIT). A message already with the
                // spool still completes; pending replies are still tried.
                s.conn.closing = true;
                return;
            } else {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return,
                    io::ErrorKind::Interrupted => continue,
                    _ => {
                        s.conn.closing = true;
                        s.conn.outq.clear();
                        return;
                    }
                }
            }
        }
    }

    /// Sends what is queued (resuming a session that paused on its output as it drains),
    /// adjusts the interest set, closes when done.
    fn service(&mut self, shard: &mut Shard, token: u64, now: Now) {
        let ep = self.ep.as_raw_fd();
        let Some(s) = self.conns.get_mut(token) else { return };
        let fd = s.fd.as_raw_fd();
        let mut failed = false;
        loop {
            while !s.conn.outq.is_empty() {
                // SAFETY: send(2) only reads `outq.len()` bytes from `s.conn.outq`, a live Vec not touched during the
                // call; `fd` is the raw descriptor of `s.fd`, and the slot stays in the slab (borrowed as `s`) until
                // `close` after this loop, so the descriptor is open.
                let r =
                    unsafe { libc::send(fd, s.conn.outq.as_ptr() as *const _, s.conn.outq.len(), libc::MSG_NOSIGNAL) };
                if r >= 0 {
                    s.conn.outq.drain(..r as usize);
                } else {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => {
                            failed = true;
                            break;
                        }
                    }
                }
            }
            if failed || !s.conn.on_drained(now, shard.tls.as_ref(), &mut self.effects) {
                break;
            }
            shard.apply(token, &mut self.effects);
        }
        trim_buffer(&mut s.conn.outq);
        if failed || (s.conn.wants_close() && s.conn.outq.is_empty()) {
            self.close(shard, token);
            return;
        }
        let mut events = 0;
        if s.conn.wants_read() {
            events |= READ_EVENTS;
        }
        if !s.conn.outq.is_empty() {
            events |= libc::EPOLLOUT as u32;
        }
        if events != s.io.events {
            s.io.events = events;
            let _ = ctl(ep, libc::EPOLL_CTL_MOD, fd, events, token);
        }
    }

    /// Closes at once with a reset, dropping unsent output (a peer that stopped reading).
    fn reset(&mut self, shard: &mut Shard, token: u64) {
        if let Some(s) = self.conns.get_mut(token) {
            super::listener::set_linger_zero(s.fd.as_raw_fd());
        }
        self.close(shard, token);
    }

    fn close(&mut self, shard: &mut Shard, token: u64) {
        if let Some(mut s) = self.conns.remove(token) {
            shard.conn_closed(&mut s.conn);
            // Dropping the descriptor closes it and removes it from the epoll set.
            drop(s.fd);
        }
    }

    /// Group commit: one write and one fdatasync for everything the turn produced.
    fn flush_spool(&mut self, shard: &mut Shard, now: Now) {
        // Completions can release pipelined transactions that finish more messages.
        for _ in 0..8 {
            if !shard.log.wants_batch() {
                return;
            }
            let done = shard.log.flush_sync(shard.fsync);
            for c in done {
                let result = shard.stored(c.result);
                if let Some(s) = self.conns.get_mut(c.token) {
                    s.conn.spool_done(now, result, c.data, shard.tls.as_ref(), &mut self.effects);
                    shard.apply(c.token, &mut self.effects);
                }
                self.service(shard, c.token, now);
            }
        }
    }
}
