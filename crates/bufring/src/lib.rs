//! The io_uring pieces the ringmx server and its load generator share.
//!
//! - [`Ring`]: a ring that counts the operations in flight (submitted, final completion
//!   not yet seen), so that at exit it can cancel them all and wait for the kernel to be
//!   done before any buffer is freed ([`Ring::release`]); it leaks what it cannot prove
//!   unused rather than free memory the kernel may still write.
//! - [`BufRing`]: a provided-buffer ring (IORING_REGISTER_PBUF_RING) for multishot recv.
//! - [`Slab`]: connections by token (index and generation), so that a late completion for
//!   a closed connection is recognised; both drivers of both programs use it.

mod slab;
pub use slab::Slab;

use io_uring::types::{BufRingEntry, CancelBuilder, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Builds a ring of `entries` with the flags that batch best for a thread that is the
/// ring's only submitter and enters it once per loop turn (SINGLE_ISSUER, DEFER_TASKRUN,
/// COOP_TASKRUN, SUBMIT_ALL), or with fewer where the kernel refuses them; returns the
/// flags used.
pub fn build_ring(entries: u32) -> io::Result<(IoUring, &'static str)> {
    if let Ok(r) = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_submit_all()
        .build(entries)
    {
        return Ok((r, "SINGLE_ISSUER, DEFER_TASKRUN, COOP_TASKRUN"));
    }
    if let Ok(r) = IoUring::builder().setup_coop_taskrun().build(entries) {
        return Ok((r, "COOP_TASKRUN"));
    }
    Ok((IoUring::new(entries)?, "no setup flags"))
}

/// The ring and the count of operations whose last completion has not come yet.
pub struct Ring {
    pub ring: IoUring,
    /// Operations submitted (or queued) whose final completion (one without
    /// IORING_CQE_F_MORE) has not been seen.
    inflight: usize,
    /// This turn's completions: `(user_data, result, flags)`.
    pub cqes: Vec<(u64, i32, u32)>,
}

impl Ring {
    pub fn new(ring: IoUring) -> Self {
        let cq = ring.params().cq_entries() as usize;
        Ring { ring, inflight: 0, cqes: Vec::with_capacity(cq) }
    }

    /// Queues an SQE, handing the queue to the kernel first if it is full.
    ///
    /// # Safety
    ///
    /// Every buffer, iovec or other memory the entry points at must stay valid (and, for
    /// memory the kernel reads, unchanged) until the entry's final completion has been
    /// collected by [`Ring::enter`] — or until [`Ring::release`] returned true; if it
    /// returned false, that memory must be leaked.
    // SAFETY: the ring cannot check the entry's memory, so the caller
    // states that invariant (above); `inflight` counts the entry until its final
    // completion so that `quiesce` and `release` can wait for it.
    pub unsafe fn push(&mut self, e: squeue::Entry) {
        self.inflight += 1;
        loop {
            // SAFETY: the caller guarantees the entry's memory outlives its completion (see
            // the contract above); the ring itself outlives the queue slot.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            let _ = self.ring.submit();
        }
    }

    /// Submits what is queued and waits up to `wait` for a completion; collects every
    /// completion into `cqes`.
    pub fn enter(&mut self, wait: Duration) -> io::Result<()> {
        let ts = Timespec::from(wait);
        let args = SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        self.cqes.clear();
        for c in self.ring.completion() {
            if !cqueue::more(c.flags()) {
                self.inflight -= 1;
            }
            self.cqes.push((c.user_data(), c.result(), c.flags()));
        }
        Ok(())
    }

    /// Operations whose final completion has not been collected.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Cancels everything in flight and waits, at most `limit`, for the kernel to finish
    /// with it (completions collected meanwhile are dropped; the cancel's own carries
    /// `cancel_user_data`). Returns whether nothing is in flight any more.
    pub fn quiesce(&mut self, limit: Duration, cancel_user_data: u64) -> bool {
        if self.inflight > 0 {
            let e = opcode::AsyncCancel2::new(CancelBuilder::any()).build().user_data(cancel_user_data);
            // SAFETY: a cancel carries no memory.
            unsafe { self.push(e) };
        }
        let deadline = Instant::now() + limit;
        while self.inflight > 0 && Instant::now() < deadline {
            if self.enter(Duration::from_millis(100)).is_err() {
                break;
            }
        }
        self.inflight == 0
    }

    /// Ends the ring's use of `bufs` and frees them, after [`Ring::quiesce`]. If the kernel
    /// may still write into them (operations that would not end within `limit`), they are
    /// leaked rather than freed, and the result is false: the caller must then leak the
    /// memory of every other operation it submitted too (send buffers, iovecs).
    pub fn release(mut self, bufs: BufRing, limit: Duration, cancel_user_data: u64) -> bool {
        if self.quiesce(limit, cancel_user_data) {
            let _ = self.ring.submitter().unregister_buf_ring(bufs.bgid);
            drop(self.ring);
            drop(bufs);
            return true;
        }
        std::mem::forget(bufs);
        false
    }
}

/// The provided-buffer ring (IORING_REGISTER_PBUF_RING) and the buffers behind it.
pub struct BufRing {
    entries: *mut BufRingEntry,
    entries_len: usize,
    bgid: u16,
    count: u16,
    size: usize,
    mem: Vec<u8>,
    tail: u16,
}

impl BufRing {
    /// Maps `count` entries (a power of two) over `count` buffers of `size` bytes and
    /// registers them as buffer group `bgid` of `ring`. Give it back with [`Ring::release`].
    pub fn new(ring: &IoUring, bgid: u16, count: u16, size: usize) -> io::Result<Self> {
        debug_assert!(count.is_power_of_two());
        let entries_len = count as usize * std::mem::size_of::<BufRingEntry>();
        // Page-aligned, as the kernel requires.
        // SAFETY: a fresh anonymous private mapping (null hint, fd -1) of `entries_len` bytes: mmap touches no existing
        // memory, and the result is checked against MAP_FAILED before use. It is unmapped only in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                entries_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut b = BufRing {
            entries: ptr as *mut BufRingEntry,
            entries_len,
            bgid,
            count,
            size,
            mem: vec![0u8; count as usize * size],
            tail: 0,
        };
        // SAFETY: `ptr` is the page-aligned mapping of `entries_len` bytes (`count` entries)
        // made above, owned by `b` and unmapped only in Drop; the entries will point into
        // `b.mem` (`count * size` bytes), owned by `b` too. The kernel may use both while the
        // group is registered: the contract of this type is that a registered BufRing is
        // given back through `Ring::release`, which waits for every operation to end and
        // unregisters the group before dropping it, or leaks it. On failure `b` is dropped
        // unregistered, which only unmaps.
        unsafe { ring.submitter().register_buf_ring_with_flags(ptr as u64, count, bgid, 0)? };
        for bid in 0..count {
            b.push(bid);
        }
        b.publish();
        Ok(b)
    }

    /// The first `len` bytes of buffer `bid` (as a completion reported them).
    pub fn slice(&self, bid: u16, len: usize) -> &[u8] {
        let start = bid as usize * self.size;
        &self.mem[start..start + len.min(self.size)]
    }

    /// Gives buffer `bid` back to the kernel (visible after [`BufRing::publish`]).
    pub fn push(&mut self, bid: u16) {
        let idx = (self.tail & (self.count - 1)) as usize;
        // SAFETY: `idx` = tail & (count - 1) < `count`, so the entry lies inside the `entries_len`-byte mapping made in
        // `new` and unmapped only in Drop. It is the unpublished tail slot: the kernel holds at most `count - 1`
        // pending entries (`bid` is not among them) and reads none past the published tail, and the reference ends with
        // this call. Every `bid` is < `count` (from `new`, or handed back by the kernel), so the address set below lies
        // inside `mem`.
        let e = unsafe { &mut *self.entries.add(idx) };
        e.set_addr(self.mem.as_ptr() as u64 + (bid as usize * self.size) as u64);
        e.set_len(self.size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the tail with a release store, so the kernel sees the entries first.
    pub fn publish(&self) {
        // SAFETY: `self.entries` is the base (entry 0) of the page-aligned mapping made in `new`, mapped until Drop, so
        // `tail` points at entry 0's `resv` field, the ring's 2-byte-aligned tail. The kernel only reads it (an acquire
        // load) and this thread is the only writer, so the release store through AtomicU16 is the only access of ours.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: `entries`/`entries_len` are exactly the mapping made in `new` (Drop runs
        // once, and no reference into it outlives `push`/`publish`). The kernel no longer
        // uses it: Drop runs after `Ring::release` unregistered the group (a BufRing it
        // cannot release is forgotten, never dropped), or on one never registered.
        unsafe { libc::munmap(self.entries as *mut _, self.entries_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::types::Fd;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// A multishot recv fills a provided buffer, the buffer goes back, and releasing the
    /// ring cancels the recv still armed and waits for it before freeing the buffers.
    #[test]
    fn recv_into_a_buffer_then_release_after_quiesce() {
        let ring = match IoUring::new(8) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("skipped: io_uring unavailable: {e}");
                return;
            }
        };
        let mut bufs = BufRing::new(&ring, 3, 4, 64).unwrap();
        let mut ring = Ring::new(ring);
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two c_ints into the live local array; checked below.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) }, 0);
        // SAFETY: two new descriptors that nothing else owns.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let recv = opcode::RecvMulti::new(Fd(a.as_raw_fd()), 3).build().user_data(7);
        // SAFETY: the recv uses only the registered buffers, released through `Ring::release`.
        unsafe { ring.push(recv) };
        // SAFETY: write(2) reads 5 bytes from a static string.
        assert_eq!(unsafe { libc::write(b.as_raw_fd(), b"hello".as_ptr().cast(), 5) }, 5);
        let mut got = None;
        for _ in 0..50 {
            ring.enter(Duration::from_millis(100)).unwrap();
            if let Some(&(7, n, flags)) = ring.cqes.first() {
                got = Some((n, cqueue::buffer_select(flags).unwrap(), cqueue::more(flags)));
                break;
            }
        }
        let (n, bid, more) = got.expect("a completion");
        assert_eq!(bufs.slice(bid, n as usize), b"hello");
        assert!(more, "the multishot recv stays armed");
        bufs.push(bid);
        bufs.publish();
        assert_eq!(ring.inflight(), 1);
        assert!(ring.release(bufs, Duration::from_secs(2), 99), "the armed recv was cancelled and waited for");
    }
}
