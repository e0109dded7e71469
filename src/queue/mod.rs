//! The delivery queue: the queue manager (every decision of the delivery side) and its pure
//! parts: when to try a recipient again, when to give up, when to tell the sender about a
//! delay, and the timer queue that wakes the deliverer.
//!
//! Nothing here reads a clock: every function takes `now` (Unix milliseconds, the unit of
//! the spool's marks) as an argument, so schedules are tested as literal vectors on a
//! simulated clock.
//!
//! # Layout
//!
//! - [`schedule`]: [`RetryConfig`] and [`RetryConfig::decide`] (retry or give up, SPEC §7),
//!   [`DelayNoticeConfig`] and [`DelayNoticeConfig::should_notify`].
//! - [`timer`]: [`TimerQueue`], keys filed by the second they are due.
//! - [`entries`]: what the queue keeps per message (72 bytes and two bits per recipient).
//! - [`manager`]: [`QueueManager`], the sans-IO state machine of the delivery side, and
//!   [`actions`], what it asks its driver to do and what comes back.
//! - [`board`]: the destinations in trouble (deferrals since their last delivery).
//! - [`status`]: a recipient's [`Status`] and its conversion to and from spool marks, so a
//!   restart keeps attempt counts and next-attempt times.

pub mod actions;
pub mod board;
pub mod entries;
pub mod manager;
pub mod outcome;
pub mod requests;
pub mod schedule;
pub mod status;
pub mod timer;

pub use manager::{ManagerConfig, QueueManager};
pub use schedule::{DelayNoticeConfig, DelayNoticeMode, RetryConfig, RetryDecision};
pub use status::Status;
pub use timer::TimerQueue;
