//! Measurement and reporting.
//!
//! # Layout
//!
//! - [`recorder`]: what a worker thread records: one HDR histogram per SMTP phase (in
//!   nanoseconds), reply-code counts with the first text seen for each code, transaction and
//!   error counters, and the interval counters behind the live line and the timeline.
//! - [`summary`]: merges the workers' recorders into a [`summary::Summary`] and renders it as
//!   text and as JSON.
//! - [`progress`]: the one-line live progress display.

pub mod progress;
pub mod recorder;
pub mod summary;

pub use recorder::{Phase, Recorder};
