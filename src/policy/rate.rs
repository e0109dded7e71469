//! [`RateLimiter`]: recipients per hour per sender identity (the authenticated user, else the
//! client address), shared by every shard.
//!
//! The counters are split over [`SHARDS`] independently locked maps chosen by a hash of the
//! identity, so shards rarely wait on each other and no lock is global. Each identity counts
//! in a fixed window that starts with its first recipient and lasts an hour.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

/// Number of independently locked counter maps.
pub const SHARDS: usize = 64;
const WINDOW_SECS: u64 = 3600;
/// Past this many identities in one map, expired windows are swept out.
const SWEEP_AT: usize = 4096;

type Window = HashMap<String, (u64, u32)>;

/// See the module documentation.
#[derive(Debug)]
pub struct RateLimiter {
    per_hour: u32,
    /// Identity → (window start, recipients counted in it).
    shards: Box<[Mutex<Window>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl RateLimiter {
    /// A limiter allowing `per_hour` recipients per identity per hour.
    /// Recipients allowed per hour.
    pub fn limit(&self) -> u32 {
        self.per_hour
    }

    pub fn new(per_hour: u32) -> Self {
        RateLimiter {
            per_hour,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    /// Counts one recipient for `identity` at `now_unix`; false (and nothing counted) when
    /// the hour's allowance is used up.
    pub fn try_acquire(&self, identity: &str, now_unix: u64) -> bool {
        let shard = &self.shards[self.hasher.hash_one(identity) as usize % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= SWEEP_AT {
            map.retain(|_, (start, _)| now_unix < *start + WINDOW_SECS);
        }
        let entry = match map.get_mut(identity) {
            Some(e) => e,
            None => map.entry(identity.to_string()).or_insert((now_unix, 0)),
        };
        if now_unix >= entry.0 + WINDOW_SECS {
            *entry = (now_unix, 0);
        }
        if entry.1 >= self.per_hour {
            return false;
        }
        entry.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_identity_per_hour() {
        let r = RateLimiter::new(3);
        for _ in 0..3 {
            assert!(r.try_acquire("alice", 1000));
        }
        assert!(!r.try_acquire("alice", 1001));
        assert!(r.try_acquire("192.0.2.1", 1001));
        assert!(!r.try_acquire("alice", 1000 + 3599));
        assert!(r.try_acquire("alice", 1000 + 3600));
    }

    #[test]
    fn shared_between_threads() {
        let r = std::sync::Arc::new(RateLimiter::new(1000));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || (0..400).filter(|_| r.try_acquire("bulk", 5)).count())
            })
            .collect();
        let total: usize = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 1000);
    }
}
