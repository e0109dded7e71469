//! ringmx: an SMTP mail gateway — inbound MX and relay on io_uring with a durable,
//! segmented spool.
//!
//! # Layout
//!
//! The modules follow the flow of a message:
//!
//! - [`wire`]: bytes ⇄ SMTP commands and replies; DATA framing. Pure, zero-copy.
//! - [`session`]: the sans-IO SMTP server session: bytes and time in, replies and actions
//!   out.
//! - [`spool`]: the per-shard segmented log that makes an accepted message durable, and its
//!   recovery.
//! - [`rt`]: the only place that does I/O: ingress shards on io_uring (or epoll), TLS,
//!   listeners, group commit.
//! - [`queue`]: retry schedule, lifetime, delay notices and the timer queue, as pure
//!   functions of `now`; per-recipient delivery status.
//! - [`directory`]: postoffices, domains, mailboxes, groups; the RCPT check and recipient
//!   expansion, in memory.
//! - [`delivery`]: getting messages out: the SMTP client, MX plan, DSNs (and local delivery).
//! - [`policy`]: decisions at the door (access lists, DNSBL, relay, spoofing, AUTH, rate
//!   limits), pure; and the off-shard password verifier.
//! - [`dns`]: DNS for policy checks: the questions and the resolver thread that answers
//!   them off the shards.
//! - [`config`]: the TOML configuration, validated as a whole.
//! - [`admin`]: the operator commands (`queue list`, `queue show`).
//! - [`util`]: small helpers (time formatting).

pub mod admin;
pub mod config;
pub mod delivery;
pub mod directory;
pub mod dns;
pub mod lists;
pub mod obs;
pub mod policy;
pub mod queue;
pub mod routing;
pub mod rt;
pub mod session;
pub mod spool;
pub mod util;
pub mod wire;
