//! The delivery queue's pure parts: when to try a recipient again, when to give up, when
//! to tell the sender about a delay, and the timer queue that wakes the deliverer.
//!
//! Nothing here reads a clock: every function takes `now` (Unix milliseconds, the unit of
//! the spool's marks) as an argument, so schedules are tested as literal vectors on a
//! simulated clock.
//!
//! # Layout
//!
//! - [`schedule`]: [`RetryConfig`] and [`RetryConfig::decide`] (retry or give up, SPEC §7),
//!   [`DelayNoticeConfig`] and [`DelayNoticeConfig::should_notify`].
//! - [`timer`]: [`TimerQueue`], keys ordered by next attempt.
//! - [`status`]: a recipient's [`Status`] and its conversion to and from spool marks, so a
//!   restart keeps attempt counts and next-attempt times.

pub mod schedule;
pub mod status;
pub mod timer;

pub use schedule::{DelayNoticeConfig, DelayNoticeMode, RetryConfig, RetryDecision};
pub use status::Status;
pub use timer::TimerQueue;

/// Serde helpers for durations written as in the rest of the configuration (`300`, `"15m"`,
/// `"4h"`), shared by the delivery configuration structs.
pub(crate) mod serde_duration {
    use crate::config::parse_duration;
    use serde::Deserialize;
    use std::time::Duration;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(u64),
        Str(String),
    }

    fn one<E: serde::de::Error>(v: NumOrStr) -> Result<Duration, E> {
        match v {
            NumOrStr::Num(n) => Ok(Duration::from_secs(n)),
            NumOrStr::Str(s) => parse_duration(&s)
                .ok_or_else(|| E::custom(format!("bad duration {s:?} (e.g. 300, \"300s\", \"15m\", \"4h\")"))),
        }
    }

    pub fn de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        one(NumOrStr::deserialize(d)?)
    }

    pub fn de_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<NumOrStr>::deserialize(d)?.map(one).transpose()
    }

    pub fn de_vec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<NumOrStr>::deserialize(d)?.into_iter().map(one).collect()
    }
}
