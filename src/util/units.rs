//! Sizes and durations as the configuration and the command line write them, in one place:
//! `10485760` or `"10MiB"`, `300` or `"300s"`, `"5m"`, `"250ms"`, `"4h"`.

use serde::Deserialize;
use std::time::Duration;

/// Sizes as bytes or with a unit: `"64MiB"`, `"10M"`, `"512k"` (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Durations as seconds or with a unit: `"300s"`, `"5m"`, `"250ms"`, `"1h"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        "d" => Duration::from_secs(n.checked_mul(86_400)?),
        _ => return None,
    })
}

/// A value written as a bare number or as a string with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

fn duration<E: serde::de::Error>(v: NumOrStr) -> Result<Duration, E> {
    match v {
        NumOrStr::Num(n) => Ok(Duration::from_secs(n)),
        NumOrStr::Str(s) => parse_duration(&s)
            .ok_or_else(|| E::custom(format!("bad duration {s:?} (e.g. 300, \"300s\", \"5m\", \"250ms\", \"4h\")"))),
    }
}

/// `deserialize_with` for a size: bytes, or a string with a unit.
pub fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Ok(n),
        NumOrStr::Str(s) => parse_size(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("bad size {s:?} (e.g. 10485760 or \"10MiB\")"))),
    }
}

/// `deserialize_with` for a duration: seconds, or a string with a unit.
pub fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    duration(NumOrStr::deserialize(d)?)
}

/// The same for an optional duration.
pub fn de_duration_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<NumOrStr>::deserialize(d)?.map(duration).transpose()
}

/// The same for a list of durations.
pub fn de_duration_vec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<NumOrStr>::deserialize(d)?.into_iter().map(duration).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("10 MiB"), Some(10 << 20));
        assert_eq!(parse_size("3"), Some(3));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999G"), None, "overflow");
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("4h"), Some(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1w"), None);
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "de_duration")]
            a: Duration,
            #[serde(default, deserialize_with = "de_duration_opt")]
            b: Option<Duration>,
            #[serde(deserialize_with = "de_duration_vec")]
            c: Vec<Duration>,
            #[serde(deserialize_with = "de_size")]
            d: u64,
        }
        let t: T = toml::from_str("a = \"2m\"\nc = [15, \"30m\"]\nd = \"1k\"\n").unwrap();
        assert_eq!((t.a, t.b, t.d), (Duration::from_secs(120), None, 1024));
        assert_eq!(t.c, vec![Duration::from_secs(15), Duration::from_secs(1800)]);
        let e = toml::from_str::<T>("a = \"soon\"\nc = []\nd = 1\n").err().unwrap().to_string();
        assert!(e.contains("bad duration \"soon\""), "{e}");
    }
}
