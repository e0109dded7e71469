//! Connection limits (SPEC §2: "maximum connections", "per IP"), shared by every shard and
//! by the sessions of PROXY-protocol listeners.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Connection counts shared by all shards, without locks: a total and a table of per-address
/// counters indexed by a hash of the address (a collision only makes the limit stricter).
#[derive(Debug)]
pub struct ConnLimits {
    total: AtomicUsize,
    per_ip: Box<[AtomicU32]>,
    /// The limits (changed by a configuration reload; connections over a lowered limit
    /// stay, new ones are refused until the count is under it).
    max_total: AtomicUsize,
    max_per_ip: AtomicUsize,
}

const IP_SLOTS: usize = 4096;

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        ConnLimits {
            total: AtomicUsize::new(0),
            per_ip: (0..IP_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            max_total: AtomicUsize::new(max_total),
            max_per_ip: AtomicUsize::new(max_per_ip),
        }
    }

    pub fn max_total(&self) -> usize {
        self.max_total.load(Ordering::Relaxed)
    }

    /// New limits (a configuration reload).
    pub fn set_max(&self, max_total: usize, max_per_ip: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_ip.store(max_per_ip, Ordering::Relaxed);
    }

    fn slot(&self, ip: IpAddr) -> &AtomicU32 {
        let h = match ip {
            IpAddr::V4(a) => u32::from(a).wrapping_mul(0x9e37_79b9) as usize,
            // IPv6 clients are counted per /64, the unit an end site gets.
            IpAddr::V6(a) => {
                let b = a.octets();
                (u64::from_be_bytes(b[..8].try_into().unwrap()).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize
            }
        };
        &self.per_ip[h % IP_SLOTS]
    }

    /// Counts a new connection, under `ip` too when given; false (and nothing counted)
    /// when a limit is reached.
    pub fn try_acquire(&self, ip: Option<IpAddr>) -> bool {
        if self.total.fetch_add(1, Ordering::Relaxed) >= self.max_total() {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        if let Some(ip) = ip
            && !self.try_acquire_ip(ip)
        {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Counts a connection under `ip` alone (a proxied client, once its address is known).
    pub fn try_acquire_ip(&self, ip: IpAddr) -> bool {
        let s = self.slot(ip);
        if s.fetch_add(1, Ordering::Relaxed) as usize >= self.max_per_ip.load(Ordering::Relaxed) {
            s.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Undoes [`ConnLimits::try_acquire`] with the same `ip`.
    pub fn release(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            self.release_ip(ip);
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
    }

    /// Undoes [`ConnLimits::try_acquire_ip`].
    pub fn release_ip(&self, ip: IpAddr) {
        self.slot(ip).fetch_sub(1, Ordering::Relaxed);
    }

    pub fn current(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_and_per_address_limits() {
        let l = ConnLimits::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b_same_64: IpAddr = "2001:db8:1:2::99".parse().unwrap();
        assert!(l.try_acquire(Some(a)) && l.try_acquire(Some(a)));
        assert!(!l.try_acquire(Some(a)), "third from one address");
        assert!(l.try_acquire(Some(b)));
        assert!(!l.try_acquire(None), "total reached");
        assert_eq!(l.current(), 3);
        l.release(Some(a));
        // A proxied connection: the total at accept, the client's address later.
        assert!(l.try_acquire(None));
        assert!(l.try_acquire_ip(b_same_64), "second of the /64");
        assert!(!l.try_acquire_ip(b), "third of the /64");
        l.release_ip(b_same_64);
        l.release(None);
        assert_eq!(l.current(), 2);
    }
}
