//! Wakes a shard's loop from another thread: the DNS service and the password verifier
//! answer a connection, and the shard picks the answer up in its next turn.

/// Wakes a shard's loop from another thread (DNS answers, password checks) and says which
/// connections have an answer waiting: an eventfd the loop watches, and a list of tokens.
pub struct ShardWaker {
    fd: std::os::fd::OwnedFd,
    ready: std::sync::Mutex<Vec<u64>>,
}

impl ShardWaker {
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(ShardWaker { fd: unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }, ready: Default::default() })
    }

    pub fn fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }

    /// Called by the answering thread.
    pub fn wake(&self, token: u64) {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).push(token);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live 8-byte array to our own eventfd.
        unsafe { libc::write(self.fd(), one.as_ptr() as *const _, 8) };
    }

    /// Wakes the loop with no answer for it: it looks at its flags (a stop) at once.
    pub fn nudge(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live 8-byte array to our own eventfd.
        unsafe { libc::write(self.fd(), one.as_ptr() as *const _, 8) };
    }

    /// Clears the eventfd and takes the tokens woken since the last call.
    pub fn take(&self) -> Vec<u64> {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live 8-byte array from our own eventfd.
        unsafe { libc::read(self.fd(), buf.as_mut_ptr() as *mut _, 8) };
        std::mem::take(&mut *self.ready.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
