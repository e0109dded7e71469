//! Delivery events (SPEC §6, MailEnable's "delivery event"): after a message lands in a
//! mailbox, `program postoffice mailbox messagefile` runs in the background and is killed
//! if it outlives its time-out.
//!
//! One reaper thread watches every running program: it polls a pidfd per child (Linux 5.3)
//! and an eventfd that announces new ones, sleeping until a child exits or the nearest
//! deadline, so a thousand events cost one thread and no periodic wake-ups. Where pidfds
//! are not available the reaper looks at such children every 100 ms instead.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

/// How often a child without a pidfd is looked at.
const FALLBACK_TICK: Duration = Duration::from_millis(100);

struct Running {
    child: Child,
    /// Readable once the child has exited; `None` where pidfd_open failed.
    pidfd: Option<OwnedFd>,
    deadline: Instant,
    program: String,
}

/// Starts delivery-event programs and reaps them on one thread.
pub struct EventRunner {
    tx: Option<Sender<Running>>,
    wake: std::sync::Arc<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EventRunner {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; the result is checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let wake = std::sync::Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let (tx, rx) = std::sync::mpsc::channel();
        let w = wake.clone();
        let thread = std::thread::Builder::new().name("events".into()).spawn(move || reap(rx, &w))?;
        Ok(EventRunner { tx: Some(tx), wake, thread: Some(thread) })
    }

    /// Runs `program postoffice mailbox file` with no input or output; it is killed after
    /// `timeout`. A program that cannot be started is logged and forgotten.
    pub fn run(&self, program: &str, postoffice: &str, mailbox: &str, file: &Path, timeout: Duration) {
        let child = Command::new(program)
            .arg(postoffice)
            .arg(mailbox)
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                log::warn!("delivery event {program}: {e}");
                return;
            }
        };
        let pidfd = pidfd_open(child.id());
        let job = Running { child, pidfd, deadline: Instant::now() + timeout, program: program.to_string() };
        if let Some(tx) = &self.tx
            && tx.send(job).is_ok()
        {
            wake(&self.wake);
        }
    }
}

impl Drop for EventRunner {
    /// Stops taking programs; those still running are waited for until their deadlines.
    fn drop(&mut self) {
        drop(self.tx.take());
        wake(&self.wake);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wake(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live 8-byte array to our own eventfd.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) };
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, no pointers; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a non-negative result is a new descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The reaper: until the runner is dropped and every child is gone.
fn reap(rx: Receiver<Running>, wake: &OwnedFd) {
    let mut running: Vec<Running> = Vec::new();
    let mut open = true;
    loop {
        // New programs.
        loop {
            match rx.try_recv() {
                Ok(r) => running.push(r),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        // Exited, or past their deadline.
        let now = Instant::now();
        running.retain_mut(|r| match r.child.try_wait() {
            Ok(Some(_)) | Err(_) => false,
            Ok(None) if now >= r.deadline => {
                log::warn!("delivery event {} killed after its time-out", r.program);
                let _ = r.child.kill();
                let _ = r.child.wait();
                false
            }
            Ok(None) => true,
        });
        if !open && running.is_empty() {
            return;
        }
        // Sleep until a child exits, a new one comes, or the nearest deadline.
        let mut wait = running.iter().map(|r| r.deadline.saturating_duration_since(now)).min();
        if running.iter().any(|r| r.pidfd.is_none()) {
            wait = Some(wait.map_or(FALLBACK_TICK, |w| w.min(FALLBACK_TICK)));
        }
        let mut fds: Vec<libc::pollfd> = std::iter::once(wake.as_raw_fd())
            .chain(running.iter().filter_map(|r| r.pidfd.as_ref().map(|f| f.as_raw_fd())))
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        let timeout_ms = wait.map_or(-1, |w| w.as_millis().min(i32::MAX as u128) as i32 + 1);
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structures for the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if fds[0].revents != 0 {
            let mut buf = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live 8-byte array from our own eventfd.
            unsafe { libc::read(wake.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, 8) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// A quick program runs with its arguments and is reaped; a slow one is killed at its
    /// time-out; dropping the runner waits for both, leaving no child behind.
    #[test]
    fn programs_run_are_reaped_and_killed_at_their_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("args");
        let quick = script(dir.path(), "quick", &format!("echo \"$1 $2 $3\" > {}", out.display()));
        let slow = script(dir.path(), "slow", "exec sleep 30");
        let file = dir.path().join("msg");
        let runner = EventRunner::new().unwrap();
        runner.run(&quick, "po", "alice", &file, Duration::from_secs(30));
        runner.run(&slow, "po", "bob", &file, Duration::from_millis(200));
        runner.run("/nonexistent/program", "po", "x", &file, Duration::from_secs(1));
        drop(runner);
        // Dropping returned (it waits for every child): the quick one finished with its
        // arguments, and the slow one, 30 s long, was killed at its deadline.
        assert_eq!(std::fs::read_to_string(&out).unwrap(), format!("po alice {}\n", file.display()));
    }
}
