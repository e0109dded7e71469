//! Listening sockets: one per shard per address, joined with SO_REUSEPORT so that the
//! kernel spreads connections over the shards.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog: deep enough for a connection-per-message load.
const BACKLOG: i32 = 4096;

/// Binds `addr` with SO_REUSEPORT (and TCP_NODELAY, which accepted sockets inherit).
/// For an IPv6 address, IPV6_V6ONLY is set so that `::` and `0.0.0.0` can both be bound.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_tcp_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// Binds `addr` once per shard. With port 0 the first socket picks the port and the
/// others join it.
pub fn bind_shards(addr: SocketAddr, shards: usize) -> io::Result<Vec<TcpListener>> {
    let first = bind(addr)?;
    let actual = first.local_addr()?;
    let mut v = vec![first];
    for _ in 1..shards {
        v.push(bind(actual)?);
    }
    Ok(v)
}

/// Accepts one pending connection, non-blocking and close-on-exec, with its peer's address
/// from the accept itself (no `getpeername` after it).
pub fn accept(listener_fd: i32) -> io::Result<(OwnedFd, SocketAddr)> {
    // SAFETY: `try_init` hands accept4(2) a zeroed address storage of its own and its length, which the kernel fills
    // with at most that many bytes; `listener_fd` is only used as a descriptor, and a bad one just fails.
    let (fd, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let fd = libc::accept4(listener_fd, storage.cast(), len, libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
            if fd < 0 { Err(io::Error::last_os_error()) } else { Ok(fd) }
        })
    }?;
    // SAFETY: `fd` was just returned by accept4 and checked non-negative: a new descriptor that nothing else owns, so
    // the OwnedFd takes sole ownership and closes it once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let peer = addr.as_socket().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))?;
    Ok((owned, peer))
}

/// The peer address of a connected socket.
pub fn peer_addr(fd: i32) -> io::Result<SocketAddr> {
    // SAFETY: the Socket only borrows `fd` for getpeername: `into_raw_fd` below releases it without closing, so the
    // caller keeps ownership. This needs `fd` to be an open socket for the call; the signature does not enforce that,
    // and every caller passes `as_raw_fd()` of an OwnedFd it holds.
    let s = unsafe { Socket::from_raw_fd(fd) };
    let r = s.peer_addr();
    let _ = s.into_raw_fd();
    r?.as_socket().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))
}

/// The local address of a connected socket (the address its client connected to).
pub fn local_addr(fd: i32) -> io::Result<SocketAddr> {
    // SAFETY: as in `peer_addr`: the Socket only borrows `fd` for getsockname and
    // `into_raw_fd` releases it without closing; every caller passes `as_raw_fd()` of an
    // OwnedFd it holds.
    let s = unsafe { Socket::from_raw_fd(fd) };
    let r = s.local_addr();
    let _ = s.into_raw_fd();
    r?.as_socket().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))
}

/// Best-effort, non-blocking write of a short reply on a socket we are about to close
/// (connection limits).
pub fn send_and_forget(fd: i32, bytes: &[u8]) {
    // SAFETY: send(2) only reads `bytes.len()` bytes from `bytes`, a live slice borrowed for the whole call;
    // MSG_NOSIGNAL avoids SIGPIPE and MSG_DONTWAIT never blocks. `fd` is the caller's open socket (each caller passes
    // `as_raw_fd()` of an OwnedFd it holds); the result is ignored on purpose (best effort).
    unsafe {
        libc::send(fd, bytes.as_ptr() as *const _, bytes.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT);
    }
}

/// SO_LINGER with a zero time-out: the close that follows resets the connection and drops
/// whatever the kernel still holds to send (a peer that stopped reading), instead of
/// keeping the socket and its buffers while they time out.
pub fn set_linger_zero(fd: i32) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a valid
    // `linger` whose size is passed with it, and setsockopt only reads it.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
