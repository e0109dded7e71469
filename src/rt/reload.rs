//! What a configuration reload (SIGHUP) changes while the server runs: the settings new
//! sessions start with (banner, policy, limits, time-outs, TLS certificate), handed to the
//! shards through [`Live`]. Open sessions keep the settings they started with (each holds
//! its `Arc`). A shard looks at [`Live::generation`] (one relaxed load) when it accepts a
//! connection and takes the new settings when it changed.

use crate::session::SessionConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Each listener's session settings and the TLS configuration.
type Settings = (Vec<Arc<SessionConfig>>, Option<Arc<rustls::ServerConfig>>);

/// The settings of each listener (in the order of `Config::bind_addresses`) and the TLS
/// configuration, as last reloaded.
#[derive(Debug)]
pub struct Live {
    generation: AtomicU64,
    current: Mutex<Settings>,
}

impl Live {
    pub fn new(sessions: Vec<Arc<SessionConfig>>, tls: Option<Arc<rustls::ServerConfig>>) -> Live {
        Live { generation: AtomicU64::new(0), current: Mutex::new((sessions, tls)) }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The settings now, with their generation.
    pub fn get(&self) -> (u64, Vec<Arc<SessionConfig>>, Option<Arc<rustls::ServerConfig>>) {
        let c = self.current.lock().unwrap_or_else(|e| e.into_inner());
        (self.generation(), c.0.clone(), c.1.clone())
    }

    /// New settings for the sessions that start from now on.
    pub fn set(&self, sessions: Vec<Arc<SessionConfig>>, tls: Option<Arc<rustls::ServerConfig>>) {
        let mut c = self.current.lock().unwrap_or_else(|e| e.into_inner());
        *c = (sessions, tls);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// What became of the reloads, for the metrics and for `ringmx reload`.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub applied: AtomicU64,
    pub refused: AtomicU64,
    /// SIGHUPs dealt with (a reload, or only the directory's when there is no file);
    /// `done` is signalled at each.
    handled: Mutex<u64>,
    done: std::sync::Condvar,
    /// The errors of the last refused reload.
    pub last_errors: Mutex<Vec<String>>,
}

/// `ringmx reload` over the control socket: `{"reload": {}}`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ReloadRequest {
    pub reload: Empty,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Empty {}

/// What the reload came to.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReloadAnswer {
    pub applied: bool,
    /// The errors of a refused configuration (the one in force stays).
    pub errors: Vec<String>,
    /// No answer in time, or no configuration file to read.
    pub note: Option<String>,
}

impl Outcomes {
    /// The main thread dealt with a SIGHUP: wakes a waiting `ringmx reload`.
    pub fn handled(&self) {
        *self.handled.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.done.notify_all();
    }

    /// Raises SIGHUP in this process and waits (at most `limit`) for the main thread to
    /// have dealt with it.
    pub fn request(&self, limit: std::time::Duration) -> ReloadAnswer {
        let (applied, refused) = (self.applied.load(Ordering::Acquire), self.refused.load(Ordering::Acquire));
        let guard = self.handled.lock().unwrap_or_else(|e| e.into_inner());
        let before = *guard;
        // SAFETY: kill(2) takes a pid and a signal, no memory; getpid(2) cannot fail. The
        // signal is blocked in every thread and taken by the main thread's sigwait.
        unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
        // The lock is held from before the signal: the main thread's count cannot be missed.
        let (_guard, wait) =
            self.done.wait_timeout_while(guard, limit, |n| *n == before).unwrap_or_else(|e| e.into_inner());
        if wait.timed_out() {
            return ReloadAnswer {
                note: Some("the server did not finish the reload in time".into()),
                ..Default::default()
            };
        }
        if self.applied.load(Ordering::Acquire) > applied {
            ReloadAnswer { applied: true, ..Default::default() }
        } else if self.refused.load(Ordering::Acquire) > refused {
            let errors = self.last_errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
            ReloadAnswer { errors, ..Default::default() }
        } else {
            ReloadAnswer {
                note: Some("the server has no configuration file: only the directory was reloaded".into()),
                ..Default::default()
            }
        }
    }
}
