//! ringmx-loadgen: an SMTP load generator and a fast discard sink.
//!
//! # Layout
//!
//! - [`cli`]: the command line (`run`, `sink`) and the parsing of its values.
//! - [`client`]: the generator. [`client::session`] is the sans-IO SMTP client state machine
//!   (bytes and `now` in, commands and observations out); [`client::message`] renders
//!   envelopes and bodies without allocating per message; [`client::schedule`] is the
//!   open-loop schedule of intended start times; [`client::driver`] is the thread-per-core
//!   epoll loop that moves bytes between sockets and sessions.
//! - [`sink`]: the discard server. [`sink::proto`] is its sans-IO SMTP server session;
//!   [`sink::replies`] the configurable replies and delays; [`sink::server`] the
//!   thread-per-core server, on an io_uring loop or, where io_uring is unavailable, an
//!   epoll one.
//! - [`report`]: HDR histograms per SMTP phase, reply-code table, the text and JSON reports
//!   and the live progress line.
//! - [`plot`]: the SVG latency spectrum and throughput-over-time plot.
//! - [`net`], [`tls`]: the system calls and rustls I/O the loops use (the sink's io_uring
//!   driver submits its own operations).
//! - [`units`]: durations and sizes as the command line writes them.
//! - [`rng`]: a small helper kept here to keep the dependency list short (base64 is the
//!   workspace's `ringmx-b64`, shared with the server).

pub mod cli;
pub mod client;
pub mod net;
pub mod plot;
pub mod report;
pub mod rng;
pub mod sink;
pub mod tls;
pub mod units;
