//! Small helpers shared by several modules.

pub mod logger;
pub mod mem;
pub mod notify;
pub mod slab;
pub mod spare;
pub mod stack_str;
pub mod time;
pub mod units;
