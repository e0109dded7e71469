//! Small helpers shared by several modules.

pub mod logger;
pub mod mem;
pub mod notify;
pub mod slab;
pub mod time;
pub mod units;
