//! The io_uring driver.
//!
//! One ring per shard, set up with SINGLE_ISSUER, DEFER_TASKRUN and COOP_TASKRUN: the shard
//! thread is the only submitter and completions are processed only when it enters the
//! kernel, once per loop turn. Per turn:
//!
//! 1. one `io_uring_enter` submits everything queued and waits for at least one completion
//!    (or the 100 ms tick);
//! 2. completions are handled in order: multishot accept, multishot recv into the shard's
//!    provided-buffer ring (the buffer goes back as soon as the session has taken the
//!    bytes), send completions, the spool's write and sync;
//! 3. connections that have output get one send each (one in flight per connection, from a
//!    buffer nobody touches until it completes);
//! 4. if the spool has records and no batch is in flight, a linked `WRITEV` + `FSYNC`
//!    (datasync) pair is queued: the group commit. Its completion releases every waiting
//!    250 at once.
//!
//! Closing follows ARCHITECTURE.md's pitfalls: never while a send is in flight (its buffer
//! must stay put), and never through IORING_OP_SHUTDOWN (it resolves the descriptor late, so
//! after a close and a new accept it can hit another connection). A synchronous shutdown(2)
//! ends the multishot recv, and every completion carries the connection's generation, so a
//! late one for a closed connection is recognised.

use super::conn::{Effect, trim_buffer};
use super::listener;
use super::shard::{Shard, ShardStats, Slab, Slot, TOO_MANY_CONNECTIONS};
use crate::util::time::Now;
use io_uring::types::{Fd, FsyncFlags};
use io_uring::{cqueue, opcode, squeue};
use ringmx_bufring::{BufRing, Ring};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const RING_ENTRIES: u32 = 1024;
const BUF_SIZE: usize = 16 * 1024;
const BUF_COUNT: u16 = 512;
const BGID: u16 = 0;
use super::shard::TICK;
/// How long the exit waits for cancelled operations before leaking their buffers instead.
const QUIESCE_LIMIT: Duration = Duration::from_secs(2);

// user_data: operation kind in the top byte, token (or listener index) below.
const K_ACCEPT: u64 = 1 << 56;
const K_RECV: u64 = 2 << 56;
const K_SEND: u64 = 3 << 56;
const K_SPOOL_WRITE: u64 = 5 << 56;
const K_SPOOL_SYNC: u64 = 6 << 56;
const K_CANCEL_ACCEPT: u64 = 7 << 56;
const K_WAKE: u64 = 8 << 56;
/// The completion of an AsyncCancel of a connection's recv or send (nothing to do: the
/// cancelled operation completes on its own).
const K_CANCEL_OP: u64 = 9 << 56;
const KIND_MASK: u64 = 0xff << 56;

/// Checks that io_uring works here: a ring with the flags we use and a provided-buffer ring.
pub fn probe() -> io::Result<()> {
    let (ring, _) = ringmx_bufring::build_ring(RING_ENTRIES)?;
    let bufs = BufRing::new(&ring, BGID, 8, 64)?;
    if !Ring::new(ring).release(bufs, QUIESCE_LIMIT, K_CANCEL_OP) {
        return Err(io::Error::other("an idle io_uring would not release its buffers"));
    }
    Ok(())
}

/// Per-connection state of this driver.
#[derive(Default)]
struct UringIo {
    /// A multishot recv is armed (until its last completion, the one without MORE).
    recv_armed: bool,
    /// An AsyncCancel for the armed recv is on its way: the connection pushes back.
    recv_cancelling: bool,
    /// An AsyncCancel for the in-flight send is on its way: the connection is being reset.
    send_cancelling: bool,
    send_inflight: bool,
    /// The buffer being sent; untouched while `send_inflight`.
    sending: Vec<u8>,
    send_off: usize,
}

struct Driver {
    ring: Ring,
    conns: Slab<Slot<UringIo>>,
    effects: Vec<Effect>,
    scratch: Vec<u8>,
    /// Tokens to look at after this turn's completions (send, close, re-arm).
    touched: Vec<u64>,
    accept_armed: Vec<bool>,
    /// The spool write's result, kept until its linked sync completes.
    spool_write: Option<i32>,
    /// The batch in flight is a direct write (durable on completion, no linked sync).
    spool_direct: bool,
    spool_inflight: bool,
}

/// Runs a shard until shutdown is requested and drained.
pub fn run(mut shard: Shard) -> io::Result<ShardStats> {
    let (ring, _) = ringmx_bufring::build_ring(RING_ENTRIES)?;
    let mut bufs = BufRing::new(&ring, BGID, BUF_COUNT, BUF_SIZE)?;
    let mut d = Driver {
        ring: Ring::new(ring),
        conns: Slab::new(),
        effects: Vec::new(),
        scratch: vec![0u8; 16 * 1024],
        touched: Vec::new(),
        accept_armed: vec![false; shard.listeners.len()],
        spool_write: None,
        spool_direct: false,
        spool_inflight: false,
    };
    let result = d.run(&mut shard, &mut bufs);
    let stats = shard.final_stats();
    // Cancel what is still out (a drain time-out, an error) and wait for the kernel to be
    // done with every buffer before any is freed.
    let Driver { ring, conns, .. } = d;
    if !ring.release(bufs, QUIESCE_LIMIT, K_CANCEL_OP) {
        log::error!("shard {}: io_uring operations would not end; leaking their buffers", shard.id);
        std::mem::forget(conns);
        std::mem::forget(shard);
    }
    result.map(|()| stats)
}

impl Driver {
    /// The loop: until shutdown is requested and drained, or the ring fails.
    fn run(&mut self, shard: &mut Shard, bufs: &mut BufRing) -> io::Result<()> {
        for l in 0..shard.listeners.len() {
            self.arm_accept(shard, l);
        }
        self.arm_waker(shard);
        let mut last_tick = Instant::now();
        let mut drain_deadline: Option<Instant> = None;
        loop {
            self.ring.enter(shard.wait(self.conns.len(), self.accept_armed.iter().all(|a| *a)))?;
            let now = Now::system();
            let cqes = std::mem::take(&mut self.ring.cqes);
            for &(ud, res, flags) in &cqes {
                let token = ud & !KIND_MASK;
                match ud & KIND_MASK {
                    K_ACCEPT => self.on_accept(shard, token as usize, res, flags, now),
                    K_RECV => self.on_recv(shard, bufs, token, res, flags, now),
                    K_SEND => self.on_send(token, res),
                    K_CANCEL_OP => {}
                    K_SPOOL_WRITE => self.on_spool_write(shard, res, now),
                    K_SPOOL_SYNC => self.on_spool_sync(shard, res, now),
                    K_CANCEL_ACCEPT => {}
                    K_WAKE => {
                        for t in shard.waker.take() {
                            if let Some(s) = self.conns.get_mut(t) {
                                s.conn.pump(now, shard.tls.as_ref(), &mut self.effects);
                                shard.apply(t, &mut self.effects);
                            }
                            self.touched.push(t);
                        }
                        if !cqueue::more(flags) {
                            self.arm_waker(shard);
                        }
                    }
                    _ => {}
                }
            }
            self.ring.cqes = cqes;
            bufs.publish();
            if now.mono.duration_since(last_tick) >= TICK {
                last_tick = now.mono;
                for t in self.conns.tokens() {
                    if let Some(s) = self.conns.get_mut(t) {
                        s.conn.on_tick(now, shard.tls.as_ref(), &mut self.effects);
                        shard.apply(t, &mut self.effects);
                        if s.conn.close_overdue(now) {
                            // Its last reply did not go in time: the peer does not reaself.
                            self.reset(t);
                        }
                    }
                    self.touched.push(t);
                }
                for l in 0..shard.listeners.len() {
                    if !self.accept_armed[l] && !shard.stopping() {
                        self.arm_accept(shard, l);
                    }
                }
            }
            if shard.stopping() {
                let deadline = *drain_deadline.get_or_insert_with(|| {
                    for l in 0..shard.listeners.len() {
                        if self.accept_armed[l] {
                            let e = opcode::AsyncCancel::new(K_ACCEPT | l as u64).build().user_data(K_CANCEL_ACCEPT);
                            self.push(e);
                        }
                    }
                    now.mono + shard.drain_timeout
                });
                for t in self.conns.tokens() {
                    if let Some(s) = self.conns.get_mut(t) {
                        s.conn.shutdown(now, &mut self.effects);
                    }
                    self.touched.push(t);
                }
                if self.conns.is_empty() && !self.spool_inflight {
                    break;
                }
                if now.mono >= deadline {
                    log::warn!("shard {}: drain time-out with {} connection(s) open", shard.id, self.conns.len());
                    break;
                }
            }
            self.start_spool_batch(shard);
            shard.end_turn(now.mono);
            let touched = std::mem::take(&mut self.touched);
            for t in &touched {
                self.service(shard, *t, now);
            }
            self.touched = touched;
            self.touched.clear();
        }
        Ok(())
    }

    /// Queues an SQE, flushing the submission queue to the kernel if it is full.
    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every SQE built in this driver points only at memory that outlives its
        // final completion: send buffers stay in `UringIo::sending` (untouched while
        // `send_inflight`; a connection is removed only with no send in flight), the spool
        // batch's iovecs stay in the shard's log until the batch finishes, and recv uses
        // the registered buffer ring. At exit `run` has the ring cancel and wait for every
        // operation before the connections, the log and the buffer ring are dropped, and
        // leaks them if it cannot.
        unsafe { self.ring.push(e) }
    }

    fn arm_accept(&mut self, shard: &Shard, l: usize) {
        let fd = shard.listeners[l].socket.as_raw_fd();
        let e = opcode::AcceptMulti::new(Fd(fd)).flags(libc::SOCK_CLOEXEC).build().user_data(K_ACCEPT | l as u64);
        self.push(e);
        self.accept_armed[l] = true;
    }

    /// A multishot poll on the shard's eventfd: answers from other threads wake the loop.
    fn arm_waker(&mut self, shard: &Shard) {
        let e = opcode::PollAdd::new(Fd(shard.waker.fd()), libc::POLLIN as u32).multi(true).build().user_data(K_WAKE);
        self.push(e);
    }

    fn arm_recv(&mut self, token: u64, fd: i32) {
        let e = opcode::RecvMulti::new(Fd(fd), BGID).build().user_data(K_RECV | token);
        self.push(e);
    }

    fn on_accept(&mut self, shard: &mut Shard, l: usize, res: i32, flags: u32, now: Now) {
        if !cqueue::more(flags) {
            self.accept_armed[l] = false;
            // Re-armed at once, unless stopping or the kernel refuses (then at the next tick).
            if !shard.stopping() && res != -libc::ECANCELED && res != -libc::EMFILE && res != -libc::ENFILE {
                self.arm_accept(shard, l);
            }
        }
        if res < 0 {
            if res != -libc::ECANCELED {
                log::warn!("shard {}: accept: {}", shard.id, io::Error::from_raw_os_error(-res));
            }
            return;
        }
        // SAFETY: a non-negative accept result is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        if shard.stopping() {
            // Accepted by the multishot accept before it was cancelled: told, not dropped
            // without a word.
            listener::send_and_forget(fd.as_raw_fd(), super::shard::SHUTTING_DOWN);
            return;
        }
        let Ok(peer) = listener::peer_addr(fd.as_raw_fd()) else { return };
        if !shard.limits.try_acquire(shard.counted_ip(l, peer.ip())) {
            shard.refused_at_accept(peer.ip(), now);
            listener::send_and_forget(fd.as_raw_fd(), TOO_MANY_CONNECTIONS);
            return;
        }
        shard.stats.connections += 1;
        let raw = fd.as_raw_fd();
        let conn = shard.new_conn(l, raw, peer, now);
        let token = self.conns.add(Slot { conn, fd, io: UringIo::default() });
        if let Some(s) = self.conns.get_mut(token) {
            s.io.recv_armed = true;
            s.conn.set_waker(shard.waker.clone(), token);
            s.conn.pump(now, shard.tls.as_ref(), &mut self.effects);
        }
        self.arm_recv(token, raw);
        self.touched.push(token);
    }

    fn on_recv(&mut self, shard: &mut Shard, bufs: &mut BufRing, token: u64, res: i32, flags: u32, now: Now) {
        let bid = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        let Some(s) = self.conns.get_mut(token) else {
            if let Some(b) = bid {
                bufs.push(b);
            }
            return;
        };
        if !more {
            // The recv ended (cancelled for back-pressure, out of buffers, EOF, error);
            // `service` arms a new one whenever the connection wants input again.
            s.io.recv_armed = false;
            s.io.recv_cancelling = false;
        }
        if res > 0 {
            if let Some(b) = bid {
                // Completions already posted when the connection began to push back still
                // arrive here: the session keeps them (at most a few buffers, then capped).
                let data = bufs.slice(b, res as usize);
                s.conn.on_bytes(now, data, &mut self.scratch, shard.tls.as_ref(), &mut self.effects);
                bufs.push(b);
                shard.apply(token, &mut self.effects);
            }
        } else if res == 0 {
            // EOF: the peer closed (maybe half-closed after QUIT).
            if let Some(b) = bid {
                bufs.push(b);
            }
            s.conn.closing = true;
        } else if res != -libc::ENOBUFS && res != -libc::ECANCELED {
            // ENOBUFS: every buffer is in use; they come back this turn and the recv is
            // armed again. ECANCELED: our own back-pressure.
            s.conn.closing = true;
            s.conn.outq.clear();
        }
        self.touched.push(token);
    }

    fn on_send(&mut self, token: u64, res: i32) {
        let Some(s) = self.conns.get_mut(token) else { return };
        s.io.send_inflight = false;
        if res < 0 {
            s.io.sending.clear();
            s.io.send_off = 0;
            s.conn.outq.clear();
            s.conn.closing = true;
        } else {
            s.io.send_off += res as usize;
            if s.io.send_off >= s.io.sending.len() {
                s.io.sending.clear();
                s.io.send_off = 0;
            }
        }
        self.touched.push(token);
    }

    /// Starts a send (resuming a session that paused on its output once it drains), arms
    /// or cancels the recv as the connection wants input or pushes back, or moves the
    /// connection towards closing.
    fn service(&mut self, shard: &mut Shard, token: u64, now: Now) {
        let Some(s) = self.conns.get_mut(token) else { return };
        let fd = s.fd.as_raw_fd();
        if !s.io.send_inflight {
            s.conn.driver_unsent = s.io.sending.len() - s.io.send_off;
            if s.conn.on_drained(now, shard.tls.as_ref(), &mut self.effects) {
                shard.apply(token, &mut self.effects);
            }
            if s.io.sending.is_empty() && !s.conn.outq.is_empty() {
                std::mem::swap(&mut s.io.sending, &mut s.conn.outq);
                s.io.send_off = 0;
                trim_buffer(&mut s.conn.outq);
            }
            if s.io.send_off < s.io.sending.len() {
                let rest = &s.io.sending[s.io.send_off..];
                let e = opcode::Send::new(Fd(fd), rest.as_ptr(), rest.len() as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(K_SEND | token);
                s.io.send_inflight = true;
                s.conn.driver_unsent = rest.len();
                self.push(e);
            } else {
                s.conn.driver_unsent = 0;
                trim_buffer(&mut s.io.sending);
            }
        }
        let Some(s) = self.conns.get_mut(token) else { return };
        let flushed = !s.io.send_inflight && s.io.sending.is_empty() && s.conn.outq.is_empty();
        if s.conn.wants_close() && flushed {
            // A synchronous shutdown(2) ends the armed multishot recv at once (it completes
            // with EOF); the descriptor can then be closed right away: the recv holds its own
            // reference to the socket, and its late completion carries this slot's old
            // generation, so it is recognised and only its buffer is taken back. This saves
            // the AsyncCancel round trip per connection (and avoids IORING_OP_SHUTDOWN,
            // which resolves the descriptor late).
            if s.io.recv_armed {
                // SAFETY: `fd` is this slot's open socket; shutdown(2) takes no memory.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
            if let Some(mut s) = self.conns.remove(token) {
                shard.conn_closed(&mut s.conn);
                drop(s.fd);
                // No send is in flight (`flushed`): the kernel is done with the buffer.
                crate::util::spare::give(std::mem::take(&mut s.io.sending));
            }
            return;
        }
        let wants = s.conn.wants_read();
        if wants && !s.io.recv_armed && !s.conn.closing {
            s.io.recv_armed = true;
            self.arm_recv(token, fd);
        } else if !wants && s.io.recv_armed && !s.io.recv_cancelling {
            // Back-pressure: stop the multishot recv; the peer's bytes stay in the kernel.
            s.io.recv_cancelling = true;
            let e = opcode::AsyncCancel::new(K_RECV | token).build().user_data(K_CANCEL_OP | token);
            self.push(e);
        }
    }

    /// A closing connection whose output did not drain in time: drop the output, cancel a
    /// send stuck on a peer that does not read, and reset the connection when it closes.
    fn reset(&mut self, token: u64) {
        let Some(s) = self.conns.get_mut(token) else { return };
        listener::set_linger_zero(s.fd.as_raw_fd());
        s.conn.outq.clear();
        if s.io.send_inflight {
            if !s.io.send_cancelling {
                s.io.send_cancelling = true;
                let e = opcode::AsyncCancel::new(K_SEND | token).build().user_data(K_CANCEL_OP | token);
                self.push(e);
            }
        } else {
            s.io.sending.clear();
            s.io.send_off = 0;
        }
    }

    /// Group commit: queue the write of every waiting record, linked to one fdatasync.
    fn start_spool_batch(&mut self, shard: &mut Shard) {
        if self.spool_inflight || !shard.log.wants_batch() {
            return;
        }
        let fsync = shard.fsync;
        let (write, fd, direct) = match shard.log.begin_batch() {
            Ok(Some(b)) => {
                let iov = b.iovecs();
                // A direct write is durable when it completes (RWF_DSYNC): no fdatasync, and no
                // io-wq worker to run one.
                let flags = if b.direct && fsync { libc::RWF_DSYNC } else { 0 };
                let w = opcode::Writev::new(Fd(b.fd), iov.as_ptr(), iov.len() as u32)
                    .offset(b.offset)
                    .rw_flags(flags)
                    .build();
                (w, b.fd, b.direct)
            }
            Ok(None) => return,
            Err(failed) => {
                let now = Now::system();
                for c in failed {
                    let result = shard.stored(c.result);
                    self.complete(shard, c.token, result, c.data, now);
                }
                return;
            }
        };
        self.spool_inflight = true;
        self.spool_write = None;
        self.spool_direct = direct;
        if fsync && !direct {
            self.push(write.flags(squeue::Flags::IO_LINK).user_data(K_SPOOL_WRITE));
            let sync = opcode::Fsync::new(Fd(fd)).flags(FsyncFlags::DATASYNC).build().user_data(K_SPOOL_SYNC);
            self.push(sync);
        } else {
            self.push(write.user_data(K_SPOOL_WRITE));
        }
    }

    fn on_spool_write(&mut self, shard: &mut Shard, res: i32, now: Now) {
        self.spool_write = Some(res);
        if !shard.fsync || self.spool_direct {
            self.finish_spool_batch(shard, 0, now);
        }
    }

    fn on_spool_sync(&mut self, shard: &mut Shard, res: i32, now: Now) {
        self.finish_spool_batch(shard, res, now);
    }

    fn finish_spool_batch(&mut self, shard: &mut Shard, sync_res: i32, now: Now) {
        let expected = shard.log.inflight_len();
        let result = match self.spool_write.take() {
            Some(w) if w < 0 => Err(io::Error::from_raw_os_error(-w)),
            Some(w) if Some(w as u64) != expected => {
                Err(io::Error::new(io::ErrorKind::WriteZero, "short write to segment"))
            }
            None => Err(io::Error::other("spool sync completed without its write")),
            Some(_) if sync_res < 0 => Err(io::Error::from_raw_os_error(-sync_res)),
            Some(_) => Ok(()),
        };
        self.spool_inflight = false;
        for c in shard.log.finish_batch(result) {
            let result = shard.stored(c.result);
            self.complete(shard, c.token, result, c.data, now);
        }
    }

    fn complete(
        &mut self,
        shard: &mut Shard,
        token: u64,
        result: Result<crate::spool::QueueId, crate::wire::Reply>,
        data: Vec<u8>,
        now: Now,
    ) {
        if let Some(s) = self.conns.get_mut(token) {
            s.conn.spool_done(now, result, data, shard.tls.as_ref(), &mut self.effects);
            shard.apply(token, &mut self.effects);
            self.touched.push(token);
        }
    }
}
