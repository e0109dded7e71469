//! Early talkers (issue 14, as Postfix postscreen's pregreet test): a listener may wait a
//! moment before its greeting; a client that talks first, or pipelines commands without
//! PIPELINING offered, is a bot and is refused with 554 5.5.1. A client that waited and
//! was served is remembered as known good for a while and skips the wait ([`KnownGood`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Addresses most recently known good, at most this many (the oldest expiries go first).
pub const MAX_KNOWN_GOOD: usize = 100_000;

/// Clients that passed the pregreet test, each until an expiry (Unix seconds). Shared by
/// every shard and kept across reloads; in memory only (a restart tests clients again).
#[derive(Debug)]
pub struct KnownGood {
    map: Mutex<HashMap<IpAddr, u64>>,
    /// How long a pass counts.
    pub ttl_secs: u64,
}

impl KnownGood {
    pub fn new(ttl_secs: u64) -> Self {
        KnownGood { map: Mutex::new(HashMap::new()), ttl_secs }
    }

    pub fn is_good(&self, ip: IpAddr, now: u64) -> bool {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&super::iplist::canonical(ip)).is_some_and(|&until| until > now)
    }

    /// `ip` passed at `now`.
    pub fn pass(&self, ip: IpAddr, now: u64) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_KNOWN_GOOD {
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_KNOWN_GOOD {
                // Still full of live entries: the tenth that expire soonest make room.
                let mut untils: Vec<u64> = map.values().copied().collect();
                let (_, cut, _) = untils.select_nth_unstable(MAX_KNOWN_GOOD / 10);
                let cut = *cut;
                map.retain(|_, until| *until > cut);
            }
        }
        map.insert(super::iplist::canonical(ip), now + self.ttl_secs);
    }
}

impl Default for KnownGood {
    fn default() -> Self {
        KnownGood::new(24 * 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_lasts_its_time_and_the_table_stays_bounded() {
        let k = KnownGood::new(100);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(!k.is_good(a, 10));
        k.pass(a, 10);
        assert!(k.is_good(a, 109) && !k.is_good(a, 110));
        assert!(k.is_good("::ffff:192.0.2.1".parse().unwrap(), 50));
        for i in 0..(MAX_KNOWN_GOOD as u32 + 10) {
            k.pass(IpAddr::from(i.to_be_bytes()), 20 + (i as u64 % 50));
        }
        assert!(k.map.lock().unwrap().len() <= MAX_KNOWN_GOOD);
    }
}
