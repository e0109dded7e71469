//! The io_uring driver: one ring per thread, set up with SINGLE_ISSUER, DEFER_TASKRUN and
//! COOP_TASKRUN where the kernel accepts them (the thread is the only submitter, and
//! completions are processed only when it enters the kernel). Per loop turn:
//!
//! 1. one `io_uring_enter` submits everything queued and waits for a completion, at most
//!    until the next held reply, idle scan or the end of the run;
//! 2. completions are handled in order: multishot accept, multishot recv into the thread's
//!    provided-buffer ring (the buffer goes back as soon as the session has taken the
//!    bytes), send completions, the stop eventfd's multishot poll;
//! 3. every connection touched this turn gets its due replies moved into its send buffer
//!    and, when no send is in flight, one `Send` (its buffer stays untouched until it
//!    completes).
//!
//! Closing a connection: never while a send is in flight; a synchronous `shutdown(2)` ends
//! its multishot recv, then the descriptor is closed at once. Every completion carries the
//! connection's token (slot and generation), so a late one for a closed connection is
//! recognised and only its buffer taken back. At exit everything in flight is cancelled and
//! waited for before the buffers are freed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::types::Fd;
use io_uring::{IoUring, cqueue, opcode, squeue};
use ringmx_bufring::BufRing;

use crate::sink::shard::{self, ConnState, Core, Flow, Ready, Slab};

/// Submission queue entries (the completion queue gets twice as many). Without
/// CAP_IPC_LOCK the ring and the buffer ring's entries count against the locked-memory
/// limit: a thread needs at most 48 KiB of it (measured).
const RING_ENTRIES: u32 = 256;
/// The provided buffers: 128 × 16 KiB = 2 MiB per thread (ordinary memory, not locked).
const BUF_COUNT: u16 = 128;
const BUF_SIZE: usize = 16 * 1024;
const BGID: u16 = 0;
/// How long the exit waits for cancelled operations before leaking their buffers instead.
const QUIESCE_LIMIT: Duration = Duration::from_secs(2);
/// How long the sends in flight at a stop may take to complete.
const FLUSH_LIMIT: Duration = Duration::from_millis(500);

// user_data: the operation kind in the top byte, the connection token below.
const K_ACCEPT: u64 = 1 << 56;
const K_RECV: u64 = 2 << 56;
const K_SEND: u64 = 3 << 56;
const K_WAKE: u64 = 4 << 56;
const K_CANCEL: u64 = 5 << 56;
const KIND_MASK: u64 = 0xff << 56;

/// Checks that io_uring does here what the loops need: a ring with a waiting enter with a
/// timeout (EXT_ARG), a provided-buffer ring and a multishot recv (on a socket pair).
/// Small sizes: a closed ring's memory is given back asynchronously, and it still counts
/// against the locked-memory limit while the threads set up theirs. Returns the ring flags
/// accepted.
pub(super) fn probe() -> io::Result<&'static str> {
    let (ring, flags) = ringmx_bufring::build_ring(8)?;
    if !ring.params().is_feature_ext_arg() {
        return Err(io::Error::other("the kernel lacks IORING_FEAT_EXT_ARG"));
    }
    let bufs = BufRing::new(&ring, BGID, 8, 64)?;
    let mut ring = Ring::new(ring);
    let r = recv_multishot_works(&mut ring);
    ring.release(bufs);
    r.map(|()| flags)
}

fn recv_multishot_works(ring: &mut Ring) -> io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes exactly two c_ints into `fds`, a live local [c_int; 2]; the result is checked before
    // they are used.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: one invariant for both: socketpair succeeded, so `fds` holds two new, distinct descriptors that nothing
    // else owns; each OwnedFd becomes the only owner of one.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    ring.push(opcode::RecvMulti::new(Fd(a.as_raw_fd()), BGID).build().user_data(K_RECV));
    let r = (|| {
        // SAFETY: write(2) only reads 1 byte from the static `b"x"`; `b` is the open socket owned above, alive for the
        // call.
        if unsafe { libc::write(b.as_raw_fd(), b"x".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while ring.cqes.is_empty() && Instant::now() < deadline {
            ring.enter(Duration::from_millis(100))?;
        }
        match ring.cqes.first() {
            Some(&(_, 1, flags)) if cqueue::buffer_select(flags).is_some() => Ok(()),
            Some(&(_, res, _)) if res < 0 => Err(io::Error::from_raw_os_error(-res)),
            Some(_) => Err(io::Error::other("multishot recv answered unexpectedly")),
            None => Err(io::Error::other("multishot recv did not complete")),
        }
    })();
    // Ends the recv, so that releasing the ring finds nothing in flight.
    // SAFETY: `a` is the open socket owned above (closed only when it drops at the end of this function); shutdown(2)
    // takes no memory.
    unsafe { libc::shutdown(a.as_raw_fd(), libc::SHUT_RDWR) };
    r
}

/// The shared ring (it counts operations in flight and quiesces before buffers are freed),
/// with this driver's argument for the memory of what it submits.
struct Ring(ringmx_bufring::Ring);

impl std::ops::Deref for Ring {
    type Target = ringmx_bufring::Ring;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Ring {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Ring {
    fn new(ring: IoUring) -> Self {
        Ring(ringmx_bufring::Ring::new(ring))
    }

    /// Queues an SQE, handing the queue to the kernel first if it is full.
    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: an SQE's memory must stay valid until its final completion, which `inflight` counts. A Send
        // points into `Conn::sending`, untouched while `send_inflight`; `service` removes a connection only when no
        // send is in flight, and `finish` keeps the in-flight `sending` Vecs until `Ring::release` has seen every
        // operation end (or leaks them). A RecvMulti takes buffers from `bufs`, freed only after `release` has
        // quiesced the ring (else leaked). Accept, PollAdd and the cancels carry no buffers. Not upheld if a panic
        // unwinds out of `run`: `Loop` then drops the ring, the connections and `bufs` without waiting.
        unsafe { self.0.push(e) }
    }

    /// Cancels everything in flight, waits for it, then frees `bufs`; false (and `bufs`
    /// leaked) when operations would not end: the caller leaks its send buffers too.
    fn release(self, bufs: BufRing) -> bool {
        let n = self.0.inflight();
        if self.0.release(bufs, QUIESCE_LIMIT, K_CANCEL) {
            return true;
        }
        eprintln!("ringmx-loadgen sink: io_uring operation(s) of {n} did not end; leaking their buffers");
        false
    }
}

/// Reply bytes a connection may have queued for sending (in flight and next).
const OUT_ROOM: usize = 64 * 1024;

/// A send buffer that takes at most `room` more bytes, then says WouldBlock.
struct Bounded<'a> {
    buf: &'a mut Vec<u8>,
    room: usize,
}

impl io::Write for Bounded<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let free = self.room.saturating_sub(self.buf.len());
        if free == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = free.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Conn {
    fd: OwnedFd,
    state: ConnState,
    recv_armed: bool,
    /// An AsyncCancel of the recv is on its way (back-pressure).
    recv_cancelling: bool,
    send_inflight: bool,
    /// The bytes being sent; untouched while `send_inflight`.
    sending: Vec<u8>,
    /// How much of `sending` is sent.
    sent: usize,
    /// Bytes for the next send.
    pending: Vec<u8>,
    /// The peer closed its side: send what is due, then close.
    eof: bool,
    /// The session is over: close once the output is out.
    closing: bool,
    /// The socket failed or the connection idled out: drop the output and close.
    dead: bool,
}

struct Loop<'a> {
    core: &'a mut Core,
    ring: Ring,
    bufs: BufRing,
    listener: OwnedFd,
    accept_armed: bool,
    conns: Slab<Conn>,
    plain: Vec<u8>,
    /// Connections to service after this turn's completions.
    touched: Vec<u64>,
}

/// Runs one thread's loop until the sink stops.
pub(super) fn run(core: &mut Core, listener: OwnedFd, ready: &Ready) -> io::Result<()> {
    // Built on this thread: with SINGLE_ISSUER the creating thread is the only submitter.
    let (ring, bufs) = ready.report((|| {
        let (ring, _) = ringmx_bufring::build_ring(RING_ENTRIES)?;
        let bufs = BufRing::new(&ring, BGID, BUF_COUNT, BUF_SIZE)?;
        Ok((Ring::new(ring), bufs))
    })())?;
    let mut l = Loop {
        core,
        ring,
        bufs,
        listener,
        accept_armed: false,
        conns: Slab::new(),
        plain: Vec::with_capacity(BUF_SIZE),
        touched: Vec::new(),
    };
    l.arm_accept();
    l.arm_wake();
    let r = l.turns();
    l.flush_sends();
    l.finish();
    r
}

impl Loop<'_> {
    fn turns(&mut self) -> io::Result<()> {
        loop {
            let now = Instant::now();
            if self.core.stopping(now) {
                return Ok(());
            }
            self.ring.enter(self.core.next_wake().saturating_duration_since(now))?;
            let now = Instant::now();
            let cqes = std::mem::take(&mut self.ring.cqes);
            for &(ud, res, flags) in &cqes {
                let token = ud & !KIND_MASK;
                match ud & KIND_MASK {
                    K_ACCEPT => self.on_accept(res, flags, now),
                    K_RECV => self.on_recv(token, res, flags, now),
                    K_SEND => self.on_send(token, res),
                    K_WAKE if !cqueue::more(flags) => self.arm_wake(),
                    _ => {}
                }
            }
            self.ring.cqes = cqes;
            self.bufs.publish();
            self.core.due_timers(now, &mut self.touched);
            if self.core.idle_scan_due(now) {
                // An accept refused for want of descriptors is retried here.
                if !self.accept_armed {
                    self.arm_accept();
                }
                for token in self.conns.tokens() {
                    if let Some(c) = self.conns.get_mut(token).filter(|c| self.core.is_idle(&c.state, now)) {
                        c.dead = true;
                        self.touched.push(token);
                    }
                }
            }
            let mut touched = std::mem::take(&mut self.touched);
            for &token in &touched {
                self.service(token, now);
            }
            touched.clear();
            self.touched = touched;
            self.core.publish();
        }
    }

    /// Lets the output already produced go out (bounded by [`FLUSH_LIMIT`]): the replies
    /// of the last turn, such as the one to the message that reached `max_messages`, are
    /// sent as the epoll driver would have written them. Input that arrives meanwhile is
    /// dropped.
    fn flush_sends(&mut self) {
        let deadline = Instant::now() + FLUSH_LIMIT;
        let mut sending: Vec<u64> = self.conns.tokens().into_iter().filter(|&t| self.start_send(t)).collect();
        while !sending.is_empty() {
            let now = Instant::now();
            if now >= deadline || self.ring.enter(deadline - now).is_err() {
                return;
            }
            let cqes = std::mem::take(&mut self.ring.cqes);
            for &(ud, res, flags) in &cqes {
                let token = ud & !KIND_MASK;
                match ud & KIND_MASK {
                    K_SEND => {
                        self.on_send(token, res);
                        if !self.start_send(token) {
                            sending.retain(|&t| t != token);
                        }
                    }
                    K_RECV => {
                        if let Some(b) = cqueue::buffer_select(flags) {
                            self.bufs.push(b);
                        }
                        if let Some(c) = self.conns.get_mut(token).filter(|_| !cqueue::more(flags)) {
                            c.recv_armed = false;
                        }
                    }
                    _ => {}
                }
            }
            self.ring.cqes = cqes;
            self.bufs.publish();
        }
    }

    /// Ends every connection and waits for the kernel to be done with the ring's buffers.
    fn finish(self) {
        let Loop { ring, bufs, mut conns, .. } = self;
        // The buffers of sends in flight must outlive them.
        let mut sending = Vec::new();
        for c in conns.drain() {
            if c.recv_armed {
                // SAFETY: `c` was just taken out of the slots and owns its open socket until it drops at the end of
                // this iteration; shutdown(2) takes no memory.
                unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
            if c.send_inflight {
                sending.push(c.sending);
            }
        }
        if !ring.release(bufs) {
            std::mem::forget(sending);
        }
    }

    fn arm_accept(&mut self) {
        let e = opcode::AcceptMulti::new(Fd(self.listener.as_raw_fd())).flags(libc::SOCK_CLOEXEC).build();
        self.ring.push(e.user_data(K_ACCEPT));
        self.accept_armed = true;
    }

    /// A multishot poll on the sink's eventfd: a stop request or signal wakes the loop.
    fn arm_wake(&mut self) {
        let e = opcode::PollAdd::new(Fd(self.core.shared.wake.raw()), libc::POLLIN as u32).multi(true).build();
        self.ring.push(e.user_data(K_WAKE));
    }

    fn arm_recv(&mut self, token: u64, fd: RawFd) {
        self.ring.push(opcode::RecvMulti::new(Fd(fd), BGID).build().user_data(K_RECV | token));
    }

    fn on_accept(&mut self, res: i32, flags: u32, now: Instant) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
            // Re-armed at once, unless out of descriptors (then at the next idle scan).
            if ![-libc::ECANCELED, -libc::EMFILE, -libc::ENFILE].contains(&res) {
                self.arm_accept();
            }
        }
        if res < 0 {
            return;
        }
        // SAFETY: `res` >= 0 is the descriptor a (non-fixed) accept completion installed in our table: each completion
        // carries a new one that nothing else owns, so the OwnedFd becomes its only owner.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        let Some(state) = self.core.accept(now) else { return };
        let raw = fd.as_raw_fd();
        let conn = Conn {
            fd,
            state,
            recv_armed: true,
            recv_cancelling: false,
            send_inflight: false,
            sending: Vec::new(),
            sent: 0,
            pending: Vec::new(),
            eof: false,
            closing: false,
            dead: false,
        };
        let token = self.conns.add(conn);
        self.arm_recv(token, raw);
        // The greeting goes out with this turn's sends.
        self.touched.push(token);
    }

    fn on_recv(&mut self, token: u64, res: i32, flags: u32, now: Instant) {
        let bid = cqueue::buffer_select(flags);
        let Some(c) = self.conns.get_mut(token) else {
            // A late completion for a closed connection.
            if let Some(b) = bid {
                self.bufs.push(b);
            }
            return;
        };
        let more = cqueue::more(flags);
        if !more {
            // Ended (cancelled for back-pressure, out of buffers, EOF, error): `service`
            // arms a new one whenever the session wants input again.
            c.recv_armed = false;
            c.recv_cancelling = false;
        }
        if res > 0 {
            if let Some(b) = bid {
                let data = self.bufs.slice(b, res as usize);
                if !c.dead && !c.state.received(now, data, &mut self.plain, &mut self.core.stats) {
                    c.eof = true;
                }
                self.bufs.push(b);
            }
            if more && !c.recv_cancelling && !c.state.session.wants_input() {
                // Stop the recv as soon as the session pushes back, not after the turn.
                c.recv_cancelling = true;
                self.ring.push(opcode::AsyncCancel::new(K_RECV | token).build().user_data(K_CANCEL | token));
            }
        } else {
            if let Some(b) = bid {
                self.bufs.push(b);
            }
            match -res {
                0 => c.eof = true,
                // Every buffer was in use (they are back after this turn), or our cancel.
                libc::ENOBUFS | libc::ECANCELED => {}
                _ => c.dead = true,
            }
        }
        self.touched.push(token);
    }

    fn on_send(&mut self, token: u64, res: i32) {
        let Some(c) = self.conns.get_mut(token) else { return };
        c.send_inflight = false;
        if res < 0 {
            c.dead = true;
        } else {
            c.sent += res as usize;
        }
        self.touched.push(token);
    }

    /// Starts the connection's next send unless one is in flight; returns whether a send
    /// is in flight now. A dead connection's output is dropped.
    fn start_send(&mut self, token: u64) -> bool {
        let Some(c) = self.conns.get_mut(token) else { return false };
        if c.dead {
            c.pending.clear();
        }
        if c.send_inflight || c.dead {
            return c.send_inflight;
        }
        if c.sent == c.sending.len() {
            c.sending.clear();
            c.sent = 0;
            std::mem::swap(&mut c.sending, &mut c.pending);
        }
        if c.sent == c.sending.len() {
            return false;
        }
        let rest = &c.sending[c.sent..];
        let e = opcode::Send::new(Fd(c.fd.as_raw_fd()), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(K_SEND | token);
        c.send_inflight = true;
        self.ring.push(e);
        true
    }

    /// Moves due replies into the send buffer, starts a send, re-arms the recv, or closes.
    fn service(&mut self, token: u64, now: Instant) {
        let Some(c) = self.conns.get_mut(token) else { return };
        if !c.dead && !c.closing {
            // Replies move to the send buffer only while little is unsent there, so that a
            // client that does not read backs them up in the session, which then stops
            // taking input.
            let in_flight = c.sending.len() - c.sent;
            let mut out = Bounded { buf: &mut c.pending, room: OUT_ROOM.saturating_sub(in_flight) };
            match shard::drive(&mut c.state, &mut out, self.core, now) {
                Ok(Flow::Open) => self.core.arm_timer(token, &mut c.state),
                Ok(Flow::Close) => c.closing = true,
                Err(_) => c.dead = true,
            }
            c.closing |= c.eof;
        }
        if self.start_send(token) {
            return;
        }
        let Some(c) = self.conns.get_mut(token) else { return };
        if (c.closing || c.dead) && !c.send_inflight {
            // Ends the multishot recv at once; its last completion finds the slot gone.
            if c.recv_armed {
                // SAFETY: `c` is still in the slots (removed just below), so `c.fd` is its open socket; shutdown(2)
                // takes no memory.
                unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
            self.conns.remove(token);
            return;
        }
        let wants = c.state.session.wants_input();
        if wants && !c.recv_armed && !c.eof {
            c.recv_armed = true;
            let fd = c.fd.as_raw_fd();
            self.arm_recv(token, fd);
        } else if !wants && c.recv_armed && !c.recv_cancelling {
            c.recv_cancelling = true;
            self.ring.push(opcode::AsyncCancel::new(K_RECV | token).build().user_data(K_CANCEL | token));
        }
    }
}
