//! The spool's lock: one process at a time writes the spool (the running server, or an
//! operator's command while it is stopped).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The lock a running server holds on its spool (`flock` on `<spool>/lock`).
#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
}

/// Takes the spool lock; `None` when another process (a running server) holds it.
pub fn lock_spool(spool: &Path) -> std::io::Result<Option<SpoolLock>> {
    std::fs::create_dir_all(spool)?;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(spool.join("lock"))?;
    // SAFETY: flock(2) takes no pointers; `file` is the open lock file owned here, so its descriptor is valid for
    // the call, and the lock lives as long as `file` (moved into the returned SpoolLock).
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(None) } else { Err(e) };
    }
    Ok(Some(SpoolLock { _file: file }))
}
