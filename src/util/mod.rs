//! Small helpers shared by several modules.

pub mod logger;
pub mod mem;
pub mod time;
pub mod units;
