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
