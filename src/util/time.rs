//! Time as the state machines see it, and the date formats mail needs.
//!
//! State machines never read a clock: the I/O layer passes a [`Now`] in, tests pass a
//! simulated one.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A point in time, monotonic and wall-clock together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    /// Unix time in milliseconds.
    pub unix_ms: u64,
}

impl Now {
    pub fn system() -> Self {
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Now { mono: Instant::now(), unix_ms }
    }

    /// The same clock `d` later (for simulated time in tests).
    pub fn advance(self, d: Duration) -> Self {
        Now { mono: self.mono + d, unix_ms: self.unix_ms + d.as_millis() as u64 }
    }

    pub fn unix_secs(&self) -> u64 {
        self.unix_ms / 1000
    }
}

/// Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

struct Parts {
    y: i64,
    mo: u32,
    d: u32,
    h: u64,
    mi: u64,
    s: u64,
    wd: usize,
}

fn parts(unix_secs: u64) -> Parts {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (y, mo, d) = civil(days);
    Parts { y, mo, d, h: rem / 3600, mi: rem / 60 % 60, s: rem % 60, wd: ((days + 4).rem_euclid(7)) as usize }
}

/// Calendar date and time of day in UTC: (year, month, day, hour, minute, second).
pub fn utc(unix_secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let p = parts(unix_secs);
    (p.y, p.mo, p.d, p.h, p.mi, p.s)
}

/// RFC 5322 §3.3 date-time in UTC: `Sun, 22 Nov 2026 04:28:17 +0000`.
pub fn rfc5322(unix_secs: u64) -> String {
    rfc5322_text(unix_secs).as_str().to_string()
}

/// [`rfc5322`] on the stack, for the greeting and the Received header of every message
/// (room for any year a `u64` of seconds reaches: 48 bytes at most).
pub fn rfc5322_text(unix_secs: u64) -> crate::util::stack_str::StackStr<64> {
    const WD: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MON: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let p = parts(unix_secs);
    let mut s = crate::util::stack_str::StackStr::default();
    s.push_str(WD[p.wd]);
    s.push_str(", ");
    s.push_dec(p.d as u64);
    s.push_str(" ");
    s.push_str(MON[p.mo as usize - 1]);
    s.push_str(" ");
    // Years before the epoch do not occur (unsigned seconds).
    s.push_dec(p.y.max(0) as u64);
    s.push_str(" ");
    s.push_dec2(p.h);
    s.push_str(":");
    s.push_dec2(p.mi);
    s.push_str(":");
    s.push_dec2(p.s);
    s.push_str(" +0000");
    s
}

/// RFC 3339 in UTC with milliseconds: `2026-11-22T04:28:17.123Z`.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let p = parts(unix_ms / 1000);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", p.y, p.mo, p.d, p.h, p.mi, p.s, unix_ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(rfc5322(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322(1_795_321_697), "Sun, 22 Nov 2026 04:28:17 +0000");
        assert_eq!(rfc5322(253_402_300_799), "Fri, 31 Dec 9999 23:59:59 +0000");
        assert!(rfc5322(u64::MAX).ends_with(" +0000"), "any time fits");
        assert_eq!(rfc3339_ms(1_795_321_697_123), "2026-11-22T04:28:17.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
