//! Small helpers shared by several modules.

pub mod logger;
pub mod time;
pub mod units;
