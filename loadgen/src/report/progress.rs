//! The live progress line, drawn on stderr when it is a terminal.

use std::io::Write as _;

use crate::client::driver::Tick;

/// Redraws one line: elapsed time, rate of the last second, totals, errors, p50/p99.
pub fn draw(t: &Tick) {
    let us = |v: u64| if v >= 10_000 { format!("{:.1}ms", v as f64 / 1000.0) } else { format!("{v}µs") };
    let line = format!(
        "\r{:>6.1}s  {:>7} msg/s  ok {:>9}  errors {:>6}  p50 {:>8}  p99 {:>8} ",
        t.t.as_secs_f64(),
        t.ok,
        t.total_ok,
        t.total_failed,
        us(t.p50_us),
        us(t.p99_us)
    );
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(line.as_bytes());
    let _ = err.flush();
}

/// Ends the progress line so the report starts on a fresh one.
pub fn finish() {
    eprintln!();
}
