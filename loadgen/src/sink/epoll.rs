//! The epoll driver (the fallback where io_uring is unavailable): level-triggered, reads
//! into one buffer per thread (the session keeps only partial command lines), replies
//! written as soon as they are due, all of a turn's pipelined replies in one `send`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use crate::net::{self, Epoll, FdIo};
use crate::sink::shard::{self, ConnState, Core, Flow, Ready, Slab};

struct Conn {
    fd: OwnedFd,
    state: ConnState,
    /// The registered interest: reading while the session wants input, writing while
    /// replies wait.
    interest: u32,
}

// Connection tokens have the top byte clear (see `ringmx_bufring::Slab`).
const LISTENER: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;
const READ_BUF: usize = 64 * 1024;

struct Loop<'a> {
    core: &'a mut Core,
    listener: OwnedFd,
    epoll: Epoll,
    conns: Slab<Conn>,
    buf: Vec<u8>,
    plain: Vec<u8>,
}

/// Runs one thread's loop until the sink stops.
pub(super) fn run(core: &mut Core, listener: OwnedFd, ready: &Ready) -> io::Result<()> {
    let epoll = ready.report((|| {
        let epoll = Epoll::new(256)?;
        epoll.add(listener.as_raw_fd(), net::READ, LISTENER)?;
        epoll.add(core.shared.wake.raw(), net::READ, WAKE)?;
        Ok(epoll)
    })())?;
    let mut l =
        Loop { core, listener, epoll, conns: Slab::new(), buf: vec![0; READ_BUF], plain: Vec::with_capacity(READ_BUF) };
    let mut events = Vec::with_capacity(256);
    let mut due = Vec::new();
    loop {
        let now = Instant::now();
        if l.core.stopping(now) {
            return Ok(());
        }
        let wait = l.core.next_wake().saturating_duration_since(now);
        events.clear();
        events.extend(l.epoll.wait(Some(wait))?);
        let now = Instant::now();
        for &(ev, token) in &events {
            match token {
                LISTENER => l.accept(now)?,
                WAKE => {}
                _ => l.on_ready(token, ev, now),
            }
        }
        l.core.due_timers(now, &mut due);
        for token in due.drain(..) {
            l.drive(token, now);
        }
        if l.core.idle_scan_due(now) {
            for token in l.conns.tokens() {
                if l.conns.get_mut(token).is_some_and(|c| l.core.is_idle(&c.state, now)) {
                    l.conns.remove(token);
                }
            }
        }
        l.core.publish();
    }
}

impl Loop<'_> {
    fn accept(&mut self, now: Instant) -> io::Result<()> {
        // A bounded batch per turn keeps one busy listener from starving the connections.
        for _ in 0..64 {
            let Some(fd) = net::accept(self.listener.as_raw_fd())? else { break };
            let Some(state) = self.core.accept(now) else { continue };
            let raw = fd.as_raw_fd();
            let token = self.conns.add(Conn { fd, state, interest: net::READ });
            self.epoll.add(raw, net::READ, token)?;
            self.drive(token, now);
        }
        Ok(())
    }

    fn on_ready(&mut self, token: u64, ev: u32, now: Instant) {
        let Some(c) = self.conns.get_mut(token) else { return };
        if ev & (net::READ | libc::EPOLLHUP as u32 | libc::EPOLLERR as u32) != 0 {
            let open = match net::read(c.fd.as_raw_fd(), &mut self.buf) {
                Ok(0) => false,
                Ok(n) => c.state.received(now, &self.buf[..n], &mut self.plain, &mut self.core.stats),
                Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            };
            if !open {
                self.conns.remove(token);
                return;
            }
        }
        self.drive(token, now);
    }

    /// Writes due replies, performs the session's actions, arms its timer and its interest.
    fn drive(&mut self, token: u64, now: Instant) {
        let Some(c) = self.conns.get_mut(token) else { return };
        let fd = c.fd.as_raw_fd();
        match shard::drive(&mut c.state, &mut FdIo(fd), self.core, now) {
            Ok(Flow::Open) => {}
            Ok(Flow::Close) | Err(_) => {
                self.conns.remove(token);
                return;
            }
        }
        self.core.arm_timer(token, &mut c.state);
        let want_write =
            !c.state.session.poll_transmit(now).is_empty() || c.state.tls.as_ref().is_some_and(|t| t.wants_write());
        // Back-pressure: a client whose replies back up is not read until they drain.
        let want_read = c.state.session.wants_input();
        let interest = if want_read { net::READ } else { 0 } | if want_write { net::WRITE } else { 0 };
        if interest != c.interest {
            c.interest = interest;
            let _ = self.epoll.modify(fd, interest, token);
        }
    }
}
