//! The destinations in trouble: for each recipient domain (or the local mailboxes) the
//! deferrals since mail last went through to it, with the last reply. The status page and
//! its JSON show the worst of them; a destination leaves the board when a recipient of it
//! is delivered.
//!
//! Bounded: at most [`CAPACITY`] destinations; a new one past that replaces the one
//! deferred least recently (a destination deferred long ago matters least to an operator
//! looking at what fails now).

use std::collections::HashMap;

/// Most destinations tracked.
pub const CAPACITY: usize = 1024;

/// The destination of local deliveries (Maildir, LMTP, forwards decided here).
pub const LOCAL: &str = "(local)";

/// One destination's deferrals since its last delivery.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deferred {
    pub destination: String,
    pub deferrals: u64,
    pub last_reply: String,
    /// Unix ms of the last deferral.
    pub last_ms: u64,
}

#[derive(Debug, Default)]
pub struct Board {
    rows: HashMap<String, (u64, String, u64)>,
}

/// The domain of an address (the whole of it when it has no `@`), lower-cased.
pub fn domain_of(address: &str) -> String {
    address.rsplit_once('@').map_or(address, |(_, d)| d).to_ascii_lowercase()
}

impl Board {
    /// A recipient of `destination` was deferred with `reply`.
    pub fn deferred(&mut self, destination: &str, reply: &str, now_ms: u64) {
        if let Some(r) = self.rows.get_mut(destination) {
            r.0 += 1;
            if r.1 != reply {
                r.1 = reply.to_string();
            }
            r.2 = now_ms;
            return;
        }
        if self.rows.len() >= CAPACITY {
            let stalest = self.rows.iter().min_by_key(|(_, r)| r.2).map(|(k, _)| k.clone());
            if let Some(k) = stalest {
                self.rows.remove(&k);
            }
        }
        self.rows.insert(destination.to_string(), (1, reply.to_string(), now_ms));
    }

    /// A recipient of `destination` was delivered: it is no longer in trouble.
    pub fn delivered(&mut self, destination: &str) {
        if !self.rows.is_empty() {
            self.rows.remove(destination);
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The `n` destinations with the most deferrals (ties: the most recent first).
    pub fn top(&self, n: usize) -> Vec<Deferred> {
        let mut v: Vec<_> = self.rows.iter().collect();
        v.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(b.1.2.cmp(&a.1.2)).then(a.0.cmp(b.0)));
        v.into_iter()
            .take(n)
            .map(|(d, (n, reply, at))| Deferred {
                destination: d.clone(),
                deferrals: *n,
                last_reply: reply.clone(),
                last_ms: *at,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_until_delivered_and_ranks_by_deferrals() {
        let mut b = Board::default();
        b.deferred("slow.example", "451 4.7.1 try later", 1_000);
        b.deferred("slow.example", "421 4.3.2 busy", 2_000);
        b.deferred("down.example", "connection refused", 1_500);
        let top = b.top(10);
        assert_eq!(top.len(), 2);
        assert_eq!(
            top[0],
            Deferred {
                destination: "slow.example".into(),
                deferrals: 2,
                last_reply: "421 4.3.2 busy".into(),
                last_ms: 2_000
            }
        );
        assert_eq!(top[1].destination, "down.example");
        b.delivered("slow.example");
        assert_eq!(b.top(10).iter().map(|d| d.destination.as_str()).collect::<Vec<_>>(), ["down.example"]);
        assert_eq!(b.top(0), []);
    }

    #[test]
    fn bounded_the_stalest_goes_first() {
        let mut b = Board::default();
        for i in 0..CAPACITY as u64 {
            b.deferred(&format!("d{i}.example"), "451", 10 + i);
        }
        b.deferred("d0.example", "451", 5_000);
        b.deferred("new.example", "451", 6_000);
        assert_eq!(b.len(), CAPACITY);
        let names: Vec<_> = b.top(CAPACITY).into_iter().map(|d| d.destination).collect();
        assert!(names.contains(&"d0.example".to_string()), "refreshed, kept");
        assert!(!names.contains(&"d1.example".to_string()), "stalest, replaced");
        assert!(names.contains(&"new.example".to_string()));
    }

    #[test]
    fn domain_of_addresses() {
        assert_eq!(domain_of("Bob@Remote.Example"), "remote.example");
        assert_eq!(domain_of("postmaster"), "postmaster");
    }
}
