//! [`IpList`]: a set of client addresses written as exact addresses, CIDR ranges or `*`
//! wildcards, fast to query however long it is.
//!
//! Entries are stored per prefix length in hash sets (the masked network as an integer), so
//! a lookup costs one hash probe per prefix length in use, not one comparison per entry:
//! 10,000 single addresses are one probe. Wildcards in trailing positions (`192.168.*.*`,
//! `10.*`, `2001:db8:*`) are prefixes; a wildcard in the middle (`192.*.0.1`) is kept as a
//! value/mask pair and checked one by one (rare in practice).
//!
//! IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are looked up as the IPv4 address.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An entry that is not an address, a CIDR range or a wildcard pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address, CIDR range (192.0.2.0/24) or wildcard (192.168.*.*)")]
pub struct IpListError(pub String);

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct IpList {
    /// `v4[len]`: networks of prefix length `len`, masked.
    v4: Vec<HashSet<u32>>,
    v6: Vec<HashSet<u128>>,
    /// Prefix lengths in use, longest first (a lookup stops at the first hit).
    v4_lens: Vec<u8>,
    v6_lens: Vec<u8>,
    /// Wildcards with a `*` before a fixed part: (value, mask).
    v4_masks: Vec<(u32, u32)>,
    v6_masks: Vec<(u128, u128)>,
    /// `*` alone: everything.
    all: bool,
    len: usize,
}

impl IpList {
    /// Parses every entry; the error names the first bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<IpList, IpListError> {
        let mut l = IpList::default();
        for e in entries {
            l.add(e.as_ref())?;
        }
        Ok(l)
    }

    /// Adds one entry.
    pub fn add(&mut self, entry: &str) -> Result<(), IpListError> {
        let e = entry.trim();
        let bad = || IpListError(entry.to_string());
        self.len += 1;
        if e == "*" {
            self.all = true;
            return Ok(());
        }
        if let Some((addr, len)) = e.split_once('/') {
            let len: u8 = len.parse().map_err(|_| bad())?;
            match addr.parse::<IpAddr>().map_err(|_| bad())? {
                IpAddr::V4(a) if len <= 32 => self.insert_v4(u32::from(a), len),
                IpAddr::V6(a) if len <= 128 => match a.to_ipv4_mapped() {
                    Some(v4) if len >= 96 => self.insert_v4(u32::from(v4), len - 96),
                    _ => self.insert_v6(u128::from(a), len),
                },
                _ => return Err(bad()),
            }
            return Ok(());
        }
        if e.contains('*') {
            return if e.contains(':') {
                self.add_v6_wildcard(e).ok_or_else(bad)
            } else {
                self.add_v4_wildcard(e).ok_or_else(bad)
            };
        }
        match e.parse::<IpAddr>().map_err(|_| bad())? {
            IpAddr::V4(a) => self.insert_v4(u32::from(a), 32),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => self.insert_v4(u32::from(v4), 32),
                None => self.insert_v6(u128::from(a), 128),
            },
        }
        Ok(())
    }

    /// `a.b.*.*`, `a.*`, `a.*.c.d`: each part a number or `*`; missing trailing parts are `*`.
    fn add_v4_wildcard(&mut self, e: &str) -> Option<()> {
        let parts: Vec<&str> = e.split('.').collect();
        if parts.len() > 4 || parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        let (mut value, mut mask) = (0u32, 0u32);
        for i in 0..4 {
            let shift = 24 - 8 * i;
            match parts.get(i).copied().unwrap_or("*") {
                "*" => {}
                p => {
                    let n: u8 = p.parse().ok()?;
                    value |= (n as u32) << shift;
                    mask |= 0xff << shift;
                }
            }
        }
        if parts.len() < 4 && parts.last() != Some(&"*") {
            return None;
        }
        self.insert_mask_v4(value, mask);
        Some(())
    }

    /// `2001:db8:*`, `2001:db8:*:*:*:*:*:*`: full groups only, no `::` with a wildcard.
    fn add_v6_wildcard(&mut self, e: &str) -> Option<()> {
        if e.contains("::") {
            return None;
        }
        let parts: Vec<&str> = e.split(':').collect();
        if parts.len() > 8 || parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        if parts.len() < 8 && parts.last() != Some(&"*") {
            return None;
        }
        let (mut value, mut mask) = (0u128, 0u128);
        for i in 0..8 {
            let shift = 112 - 16 * i;
            match parts.get(i).copied().unwrap_or("*") {
                "*" => {}
                p if p.len() <= 4 => {
                    let n = u16::from_str_radix(p, 16).ok()?;
                    value |= (n as u128) << shift;
                    mask |= 0xffff << shift;
                }
                _ => return None,
            }
        }
        match prefix_len_128(mask) {
            Some(len) => self.insert_v6(value, len),
            None => self.v6_masks.push((value, mask)),
        }
        Some(())
    }

    fn insert_mask_v4(&mut self, value: u32, mask: u32) {
        match prefix_len_32(mask) {
            Some(len) => self.insert_v4(value, len),
            None => self.v4_masks.push((value, mask)),
        }
    }

    fn insert_v4(&mut self, value: u32, len: u8) {
        if self.v4.is_empty() {
            self.v4 = vec![HashSet::new(); 33];
        }
        self.v4[len as usize].insert(value & mask32(len));
        if !self.v4_lens.contains(&len) {
            self.v4_lens.push(len);
            self.v4_lens.sort_unstable_by(|a, b| b.cmp(a));
        }
    }

    fn insert_v6(&mut self, value: u128, len: u8) {
        if self.v6.is_empty() {
            self.v6 = vec![HashSet::new(); 129];
        }
        self.v6[len as usize].insert(value & mask128(len));
        if !self.v6_lens.contains(&len) {
            self.v6_lens.push(len);
            self.v6_lens.sort_unstable_by(|a, b| b.cmp(a));
        }
    }

    /// True when `ip` matches an entry.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.all {
            return true;
        }
        match canonical(ip) {
            IpAddr::V4(a) => {
                let v = u32::from(a);
                self.v4_lens.iter().any(|&l| self.v4[l as usize].contains(&(v & mask32(l))))
                    || self.v4_masks.iter().any(|&(val, m)| v & m == val)
            }
            IpAddr::V6(a) => {
                let v = u128::from(a);
                self.v6_lens.iter().any(|&l| self.v6[l as usize].contains(&(v & mask128(l))))
                    || self.v6_masks.iter().any(|&(val, m)| v & m == val)
            }
        }
    }

    /// Entries added (duplicates counted).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Loopback, private (RFC 1918, RFC 4193), link-local, CGNAT (RFC 6598) and unspecified
/// addresses: the ones a PTR check skips.
pub fn is_private(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => {
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || (a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || (a.segments()[0] & 0xfe00) == 0xfc00
                || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len as u32) }
}

fn mask128(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - len as u32) }
}

fn prefix_len_32(mask: u32) -> Option<u8> {
    let len = mask.leading_ones() as u8;
    (mask32(len) == mask).then_some(len)
}

fn prefix_len_128(mask: u128) -> Option<u8> {
    let len = mask.leading_ones() as u8;
    (mask128(len) == mask).then_some(len)
}

/// The reverse name of `ip` under `zone` (RFC 5782 §2.1 for IPv4, §2.4 nibbles for IPv6),
/// e.g. `2.0.0.127.zen.example.`.
pub fn reverse_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match canonical(ip) {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}.{zone}.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => {
            let mut s = String::with_capacity(64 + zone.len());
            for b in a.octets().iter().rev() {
                s.push(char::from_digit((b & 0xf) as u32, 16).unwrap_or('0'));
                s.push('.');
                s.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
                s.push('.');
            }
            s.push_str(zone);
            s.push('.');
            s
        }
    }
}

/// Parses an address as written in a PROXY header or list file.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().or_else(|| s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)).or_else(|| {
        s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).and_then(|s| s.parse::<Ipv6Addr>().ok()).map(IpAddr::V6)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entries_of_every_kind() {
        let l = IpList::parse(&[
            "192.0.2.7",
            "198.51.100.0/24",
            "10.*",
            "172.16.*.*",
            "192.*.0.1",
            "2001:db8::1",
            "2001:db8:1::/48",
            "fd00:*",
            "::ffff:203.0.113.9",
        ])
        .unwrap();
        for yes in [
            "192.0.2.7",
            "198.51.100.255",
            "10.200.3.4",
            "172.16.9.9",
            "192.77.0.1",
            "2001:db8::1",
            "2001:db8:1:ffff::2",
            "fd00:0:0:0:0:0:0:5",
            "203.0.113.9",
            "::ffff:192.0.2.7",
        ] {
            assert!(l.contains(ip(yes)), "{yes}");
        }
        for no in [
            "192.0.2.8",
            "198.51.101.0",
            "11.0.0.1",
            "172.17.0.1",
            "192.77.0.2",
            "2001:db8::2",
            "2001:db8:2::1",
            "fd01::1",
        ] {
            assert!(!l.contains(ip(no)), "{no}");
        }
        assert!(IpList::parse(&["*"]).unwrap().contains(ip("::1")));
        assert!(IpList::default().is_empty() && !IpList::default().contains(ip("127.0.0.1")));
    }

    #[test]
    fn bad_entries() {
        for bad in ["", "300.1.1.1", "1.2.3.4/33", "1.2.3", "1.2.*.x", "2001:db8::*", "::1/129", "host.example"] {
            assert!(IpList::parse(&[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ten_thousand_entries() {
        let entries: Vec<String> = (0..10_000u32).map(|i| Ipv4Addr::from(0x0a00_0000 + i * 3).to_string()).collect();
        let l = IpList::parse(&entries).unwrap();
        assert_eq!(l.len(), 10_000);
        assert!(l.contains(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 300))));
        assert!(!l.contains(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 301))));
        // One prefix length in use: one probe per lookup.
        assert_eq!(l.v4_lens, vec![32]);
    }

    #[test]
    fn reverse_names_and_private_ranges() {
        assert_eq!(reverse_name(ip("192.0.2.99"), "zen.example"), "99.2.0.192.zen.example.");
        assert_eq!(
            reverse_name(ip("2001:db8::1"), "bl.example."),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example."
        );
        for p in ["127.0.0.1", "10.1.2.3", "192.168.1.1", "172.20.0.1", "100.64.0.1", "::1", "fd12::1", "fe80::1"] {
            assert!(is_private(ip(p)), "{p}");
        }
        for p in ["192.0.2.1", "8.8.8.8", "2001:db8::1"] {
            assert!(!is_private(ip(p)), "{p}");
        }
    }
}
