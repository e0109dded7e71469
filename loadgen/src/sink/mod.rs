//! The discard sink: a fast, correct ESMTP server that throws messages away.
//!
//! # Layout
//!
//! - [`replies`]: the reply chosen at each phase (with probabilities) and injected delays.
//! - [`proto`]: [`proto::SinkSession`], the sans-IO server session: input bytes and `now`
//!   in, reply bytes (released when their delay has passed) out. Any event loop can drive
//!   it; the two below do.
//! - [`options`]: [`SinkOptions`] and [`IoMode`], what a sink is asked to do.
//! - [`server`]: [`Sink`]: the choice of driver ([`IoMode`]), one thread per core with its
//!   own SO_REUSEPORT listener, the bounds (`max_messages`, `duration`, stop) and the
//!   counters at the end.
//! - `shard`: what both drivers share: per-thread counters, held-reply timers, idle scan,
//!   the connection table, and the step from a session's due replies to a transport (TLS
//!   included).
//! - `uring`: the io_uring driver (multishot accept and recv, a provided-buffer ring, one
//!   `io_uring_enter` per loop turn); `epoll`: the fallback driver.

mod epoll;
pub mod options;
pub mod proto;
pub mod replies;
pub mod server;
mod shard;
mod uring;

pub use options::{IoMode, SinkOptions};
pub use proto::{SinkConfig, SinkSession, SinkStats};
pub use server::{Driver, Sink};
