//! Connection limits (SPEC §2: "maximum connections", "per IP"), shared by every shard and
//! by the sessions of PROXY-protocol listeners.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// The network `ip` counts under for per-network limits: its IPv4 /24 or IPv6 /48 (an
/// IPv4-mapped IPv6 address as its IPv4 network), as text (`192.0.2.0/24`).
pub fn network_key(ip: IpAddr) -> String {
    match super::iplist::canonical(ip) {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

/// Connection counts shared by all shards, without locks: a total and tables of per-address
/// and per-network counters indexed by a hash (a collision only makes a limit stricter).
#[derive(Debug)]
pub struct ConnLimits {
    total: AtomicUsize,
    per_ip: Box<[AtomicU32]>,
    /// Per network: an IPv4 /24, an IPv6 /48 (issue 14: a botnet's neighbours).
    per_net: Box<[AtomicU32]>,
    /// The limits (changed by a configuration reload; connections over a lowered limit
    /// stay, new ones are refused until the count is under it). `max_per_net` 0: none.
    max_total: AtomicUsize,
    max_per_ip: AtomicUsize,
    max_per_net: AtomicUsize,
}

const IP_SLOTS: usize = 4096;

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize, max_per_net: usize) -> Self {
        ConnLimits {
            total: AtomicUsize::new(0),
            per_ip: (0..IP_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            per_net: (0..IP_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            max_total: AtomicUsize::new(max_total),
            max_per_ip: AtomicUsize::new(max_per_ip),
            max_per_net: AtomicUsize::new(max_per_net),
        }
    }

    pub fn max_total(&self) -> usize {
        self.max_total.load(Ordering::Relaxed)
    }

    /// New limits (a configuration reload).
    pub fn set_max(&self, max_total: usize, max_per_ip: usize, max_per_net: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_ip.store(max_per_ip, Ordering::Relaxed);
        self.max_per_net.store(max_per_net, Ordering::Relaxed);
    }

    fn net_slot(&self, ip: IpAddr) -> &AtomicU32 {
        let h = match ip {
            IpAddr::V4(a) => (u32::from(a) >> 8).wrapping_mul(0x9e37_79b9) as usize,
            IpAddr::V6(a) => {
                let b = a.octets();
                let mut p = [0u8; 8];
                p[..6].copy_from_slice(&b[..6]);
                (u64::from_be_bytes(p).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize
            }
        };
        &self.per_net[h % IP_SLOTS]
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

    /// Counts a connection under `ip` alone (a proxied client, once its address is known):
    /// its address and its network.
    pub fn try_acquire_ip(&self, ip: IpAddr) -> bool {
        let ip = super::iplist::canonical(ip);
        let s = self.slot(ip);
        if s.fetch_add(1, Ordering::Relaxed) as usize >= self.max_per_ip.load(Ordering::Relaxed) {
            s.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        let n = self.net_slot(ip);
        let max_net = self.max_per_net.load(Ordering::Relaxed);
        if n.fetch_add(1, Ordering::Relaxed) as usize >= max_net && max_net > 0 {
            n.fetch_sub(1, Ordering::Relaxed);
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
        let ip = super::iplist::canonical(ip);
        self.slot(ip).fetch_sub(1, Ordering::Relaxed);
        self.net_slot(ip).fetch_sub(1, Ordering::Relaxed);
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
        let l = ConnLimits::new(3, 2, 0);
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

    #[test]
    fn per_network_limit() {
        let l = ConnLimits::new(100, 2, 3);
        let ips: Vec<IpAddr> =
            ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"].map(|a| a.parse().unwrap()).to_vec();
        assert!(l.try_acquire(Some(ips[0])) && l.try_acquire(Some(ips[1])) && l.try_acquire(Some(ips[2])));
        assert!(!l.try_acquire(Some(ips[3])), "fourth of the /24");
        assert!(l.try_acquire(Some("198.51.100.1".parse().unwrap())), "another /24");
        // IPv4-mapped IPv6 counts as its IPv4 network.
        assert!(!l.try_acquire(Some("::ffff:192.0.2.9".parse().unwrap())));
        l.release(Some(ips[0]));
        assert!(l.try_acquire(Some(ips[3])));
        // IPv6: per /48.
        let v6: Vec<IpAddr> = ["2001:db8:1:1::1", "2001:db8:1:2::1", "2001:db8:1:3::1", "2001:db8:1:4::1"]
            .map(|a| a.parse().unwrap())
            .to_vec();
        assert!(l.try_acquire(Some(v6[0])) && l.try_acquire(Some(v6[1])) && l.try_acquire(Some(v6[2])));
        assert!(!l.try_acquire(Some(v6[3])));
        assert!(l.try_acquire(Some("2001:db8:2::1".parse().unwrap())));
    }
}
