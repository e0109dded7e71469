//! The load generator.
//!
//! # Layout
//!
//! - [`session`]: sans-IO SMTP client session (RFC 5321) with PIPELINING (RFC 2920),
//!   CHUNKING (RFC 3030), STARTTLS (RFC 3207) and AUTH PLAIN/LOGIN (RFC 4954). It takes reply
//!   bytes and `now`, and produces command bytes and observations for a [`crate::report::Recorder`].
//! - [`message`]: envelopes and message bodies: fixed, uniform or lognormal sizes, or replayed
//!   `.eml` files, rendered into reused buffers.
//! - [`schedule`]: the open-loop schedule of intended start times (with ramp-up).
//! - [`driver`]: one epoll loop per thread; connects, feeds sessions, writes their output,
//!   enforces the bounds of the run and gathers the results.

pub mod driver;
pub mod message;
pub mod schedule;
pub mod session;
