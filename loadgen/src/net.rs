//! Thin, safe wrappers over the Linux calls the event loops use: epoll, non-blocking
//! sockets, eventfd, CPU accounting and the stop signal.
//!
//! Everything here is a direct system call; no buffering, no allocation.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// An epoll instance; the `u64` of each event is the caller's token.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

pub const READ: u32 = libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32;
pub const WRITE: u32 = libc::EPOLLOUT as u32;
/// Edge-triggered: an event when readiness changes, not while it lasts.
pub const EDGE: u32 = libc::EPOLLET as u32;
/// The connection failed or was reset (always reported, never asked for).
pub const ERROR: u32 = libc::EPOLLERR as u32;

impl Epoll {
    pub fn new(capacity: usize) -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; `cvt` turns a failure into an error before the descriptor is used.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll {
            // SAFETY: `fd` was just returned by epoll_create1 and checked by `cvt`: a new descriptor nothing else owns,
            // so the OwnedFd is its only owner.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, interest: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: interest, u64: token };
        // SAFETY: `ev` is a live local epoll_event that epoll_ctl only reads (ignored for EPOLL_CTL_DEL); `self.fd` is
        // this instance's open epoll descriptor, and `fd` is only a number to the kernel (a stale one fails with
        // EBADF).
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) }).map(|_| ())
    }

    pub fn add(&self, fd: RawFd, interest: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, interest, token)
    }

    pub fn modify(&self, fd: RawFd, interest: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, interest, token)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout` (to the microsecond, with epoll_pwait2); returns
    /// `(events, token)` pairs.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<impl Iterator<Item = (u32, u64)> + '_> {
        let ts =
            timeout.map(|d| libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as _ });
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: the kernel writes at most `self.events.len()` (>= 1) entries into `self.events`, a live Vec of that
        // length borrowed mutably for the call; `ts_ptr` is null or points at `ts`, a local that outlives the call, and
        // a null sigmask means none; `self.fd` is this instance's open epoll descriptor.
        let n = unsafe {
            libc::epoll_pwait2(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                ts_ptr,
                std::ptr::null(),
            )
        };
        let n = match cvt(n) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        Ok(self.events[..n].iter().map(|e| (e.events, e.u64)))
    }
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage (it is plain integers).
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: `ss` is a live local sockaddr_storage (128 bytes, aligned for every socket address type), so
            // writing a sockaddr_in (16 bytes, align 4) at its start is in bounds and aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: `ss` is a live local sockaddr_storage (128 bytes, aligned for every socket address type), so
            // writing a sockaddr_in6 (28 bytes, align 4) at its start is in bounds and aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn stream_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket(2) takes no pointers; `cvt` checks the result before the descriptor is used.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket(2) and checked by `cvt`: a new descriptor nothing else owns, so the
    // OwnedFd is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt only reads `size_of::<c_int>()` bytes from `value`, a live local c_int of that size; `fd` is
    // the caller's open socket (both callers pass `as_raw_fd()` of an OwnedFd they hold).
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Starts a non-blocking connect with TCP_NODELAY set; completion shows as writability.
pub fn connect_nonblocking(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let fd = stream_socket(addr)?;
    set_int_opt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    let (ss, len) = sockaddr(addr);
    // SAFETY: connect only reads `len` bytes from `ss`, a live sockaddr_storage that `sockaddr` filled with a
    // sockaddr_in or sockaddr_in6 of exactly that length; `fd` is the socket owned by the local `fd`, open for the
    // call.
    let r = unsafe { libc::connect(fd.as_raw_fd(), &ss as *const _ as *const libc::sockaddr, len) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(fd)
}

/// The pending error of a socket (SO_ERROR), e.g. the outcome of a non-blocking connect.
pub fn take_socket_error(fd: RawFd) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` (= size_of::<c_int>()) bytes into `err`, a live local c_int, and updates
    // `len`, a live local; `fd` is only a number to the kernel (the caller passes its slot's socket), a bad one fails
    // with EBADF.
    cvt(unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, &mut err as *mut _ as *mut libc::c_void, &mut len)
    })?;
    if err == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(err)) }
}

/// A non-blocking listener with SO_REUSEADDR and SO_REUSEPORT (one per shard on one port)
/// and TCP_NODELAY, which accepted sockets inherit.
pub fn listen_reuseport(addr: &SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let fd = stream_socket(addr)?;
    let raw = fd.as_raw_fd();
    set_int_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    set_int_opt(raw, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    let (ss, len) = sockaddr(addr);
    // SAFETY: bind only reads `len` bytes from `ss`, a live sockaddr_storage that `sockaddr` filled with exactly that
    // length; `raw` is the socket owned by `fd`, open for the call.
    cvt(unsafe { libc::bind(raw, &ss as *const _ as *const libc::sockaddr, len) })?;
    // SAFETY: listen(2) takes no pointers; `raw` is the socket owned by `fd`, open for the call.
    cvt(unsafe { libc::listen(raw, backlog) })?;
    Ok(fd)
}

/// The address a socket is bound to.
pub fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: all-zero bytes are a valid sockaddr_storage (it is plain integers).
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` (= size_of::<sockaddr_storage>()) bytes into `ss`, a live local of that
    // size, and updates `len`, a live local; `fd` is only a number to the kernel, a bad one fails with EBADF.
    cvt(unsafe { libc::getsockname(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) })?;
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: `ss` is fully initialized (zeroed, then filled by getsockname), larger than and aligned for
            // sockaddr_in, whose fields are plain integers, so the read is in bounds and valid; `ss_family` is AF_INET,
            // so these are the bytes the kernel wrote for that type.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read(&ss as *const _ as *const _) };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Ok(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
        }
        _ => {
            // SAFETY: as above for sockaddr_in6 (28 bytes, align 4): in bounds, initialized and plain integers, so the
            // read is valid whatever the family; the address means something only for AF_INET6, the other family of the
            // TCP sockets this is used on.
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read(&ss as *const _ as *const _) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::new(IpAddr::V6(ip), u16::from_be(sin6.sin6_port)))
        }
    }
}

/// Accepts one connection, non-blocking and close-on-exec; `Ok(None)` when none is pending.
pub fn accept(listener: RawFd) -> io::Result<Option<OwnedFd>> {
    // SAFETY: accept4(2) with null `addr`/`addrlen` is allowed and stores no peer address, so the kernel writes into no
    // memory of ours; `listener` is only a number to the kernel, a bad one fails with EBADF.
    let fd = unsafe {
        libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(None),
            // The peer gave up before we accepted; not our failure.
            Some(libc::ECONNABORTED) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: `fd` was just returned by accept4 and checked non-negative: a new descriptor nothing else owns, so the
    // OwnedFd is its only owner.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, a live exclusive slice; `fd` is only a number to
    // the kernel (callers pass an OwnedFd they hold), a bad one fails with EBADF.
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) })
}

/// `read` into the spare capacity of a buffer, which may be uninitialised: the caller then
/// marks the bytes returned as initialised (`Vec::set_len`).
pub fn read_uninit(fd: RawFd, buf: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes through the pointer into `buf`, a
    // live exclusive slice; no `&[u8]` is formed over the uninitialised bytes.
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) })
}

/// `send` with MSG_NOSIGNAL: a peer reset must be an error, never a SIGPIPE.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: send(2) only reads `buf.len()` bytes from `buf`, a live slice borrowed for the call; MSG_NOSIGNAL keeps a
    // reset peer from raising SIGPIPE; `fd` is only a number to the kernel (callers pass an OwnedFd they hold).
    cvt_size(unsafe { libc::send(fd, buf.as_ptr() as *const libc::c_void, buf.len(), libc::MSG_NOSIGNAL) })
}

/// `io::Read`/`io::Write` over a raw non-blocking socket, for rustls's `read_tls`/`write_tls`.
pub struct FdIo(pub RawFd);

impl io::Read for FdIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read(self.0, buf)
    }
}

impl io::Write for FdIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write(self.0, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An eventfd used to wake event loops (stop requests, signals).
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; `cvt` checks the result before the descriptor is used.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by eventfd and checked by `cvt`: a new descriptor nothing else owns, so the
        // OwnedFd is its only owner.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
    pub fn notify(&self) {
        notify_raw(self.0.as_raw_fd());
    }
}

fn notify_raw(fd: RawFd) {
    let one: u64 = 1;
    // Async-signal-safe; a full counter (EAGAIN) still leaves the fd readable.
    // SAFETY: write(2) only reads 8 bytes from `one`, a live local u64, and is async-signal-safe, so the signal handler
    // may call it. `fd` must be an open eventfd: `EventFd::notify` passes its own; the handler passes the fd given to
    // `stop_on_signals`, which is only as valid as the caller keeps it open (the sink binary lets it close after
    // `sink.wait()` while the handler stays installed).
    unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
}

static SIGNAL_EVENTFD: AtomicI32 = AtomicI32::new(-1);
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// Whether SIGINT or SIGTERM arrived (after [`stop_on_signals`]).
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::Relaxed)
}

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::Relaxed);
    let fd = SIGNAL_EVENTFD.load(Ordering::Relaxed);
    if fd >= 0 {
        notify_raw(fd);
    }
}

/// Makes SIGINT and SIGTERM set [`stop_requested`] and notify `fd` (an [`EventFd`] the
/// caller keeps open, or -1) instead of killing the process. The binary calls this once;
/// library users never need it.
pub fn stop_on_signals(fd: RawFd) -> io::Result<()> {
    SIGNAL_EVENTFD.store(fd, Ordering::Relaxed);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: all-zero bytes are a valid sigaction (SIG_DFL, empty mask, no flags); the handler and flags are set
        // below.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_stop_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: sigaction only reads `sa`, a live local, and a null old-action pointer is allowed; without SA_SIGINFO
        // the handler is called with one c_int, the signature of `on_stop_signal`, which does only async-signal-safe
        // work (atomic loads/stores and write(2)).
        cvt(unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) })?;
    }
    Ok(())
}

/// User + system CPU time of this process so far.
pub fn process_cpu_time() -> Duration {
    // SAFETY: all-zero bytes are a valid rusage (plain integers).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into `ru`, a live local of that type.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub fn stderr_is_tty() -> bool {
    // SAFETY: isatty takes no pointers; descriptor 2 is only queried (an unopened one returns 0).
    unsafe { libc::isatty(2) == 1 }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
