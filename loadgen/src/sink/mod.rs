//! The discard sink: a fast, correct ESMTP server that throws messages away.
//!
//! # Layout
//!
//! - [`replies`]: the reply chosen at each phase (with probabilities) and injected delays.
//! - [`proto`]: [`proto::SinkSession`], the sans-IO server session: input bytes and `now`
//!   in, reply bytes (released when their delay has passed) out. Any event loop can drive
//!   it; [`server`] is one.
//! - [`server`]: the thread-per-core epoll loop, SO_REUSEPORT listeners, TLS, counters,
//!   and the bounds (`max_messages`, `duration`, stop).

pub mod proto;
pub mod replies;
pub mod server;

pub use proto::{SinkConfig, SinkSession, SinkStats};
pub use server::{Sink, SinkOptions};
