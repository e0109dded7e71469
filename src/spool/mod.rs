//! The spool: a per-shard segmented log that makes accepted messages durable.

mod envelope;

pub use envelope::{Envelope, IdGen, QueueId, Recipient};
