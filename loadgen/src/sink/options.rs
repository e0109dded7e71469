//! How a sink is asked to run: what the command line and the tests set, read by the
//! server and by every loop thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::sink::proto::SinkConfig;

/// Which event loop to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// io_uring when the kernel allows it (checked at start), else epoll.
    #[default]
    Auto,
    /// io_uring; the start fails where it is unavailable.
    Uring,
    Epoll,
}

/// How a sink runs.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub listen: SocketAddr,
    pub threads: usize,
    pub config: Arc<SinkConfig>,
    /// Needed for STARTTLS (`config.starttls`) or implicit TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS from the first byte.
    pub implicit_tls: bool,
    /// Stop once this many messages were accepted.
    pub max_messages: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    pub idle_timeout: Duration,
    pub io: IoMode,
}

impl SinkOptions {
    pub fn new(listen: SocketAddr, config: Arc<SinkConfig>) -> Self {
        SinkOptions {
            listen,
            threads: 1,
            config,
            tls: None,
            implicit_tls: false,
            max_messages: None,
            duration: None,
            idle_timeout: Duration::from_secs(300),
            io: IoMode::Auto,
        }
    }
}
