//! A timer queue for a large queue: keys filed by the second they are due.
//!
//! # Why buckets of a second, and no index
//!
//! The queue may hold millions of waiting messages during a downstream outage, so what it
//! costs per key matters more than exactness below the second: retries are minutes to hours
//! apart. Keys are filed under the second they are due in (rounded up: never early), a
//! `Vec` per second in a `BTreeMap`: a few bytes per key, where an ordered map of
//! `(due, key)` plus a map from key to due costs tens. There is no removal: the owner knows
//! when each of its keys is due, and when a key pops it checks that the key is still due
//! then ([`TimerQueue::pop_due`] returns the second it was filed under). A key rescheduled is
//! simply filed again.
//!
//! Keys due at once (a new message, an operator's retry) skip the map: they go to a FIFO
//! and pop at the next call, without waiting for a second boundary.

use std::collections::{BTreeMap, VecDeque};

/// Keys ordered by the second they are due; see the module documentation.
#[derive(Debug)]
pub struct TimerQueue<K> {
    /// Keys due already, with their due time.
    now: VecDeque<(K, u64)>,
    by_second: BTreeMap<u64, Vec<K>>,
    len: usize,
}

impl<K> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue { now: VecDeque::new(), by_second: BTreeMap::new(), len: 0 }
    }
}

/// The second a time in Unix ms is filed under: rounded up, so a key never pops early.
pub fn second_of(due_ms: u64) -> u64 {
    due_ms.div_ceil(1000)
}

impl<K: Copy> TimerQueue<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Files `key` as due at `due_ms`; `now_ms` is the caller's clock (a key already due goes
    /// to the front queue). Filing a key again does not remove the earlier filing: the owner
    /// tells stale ones apart when they pop.
    pub fn insert(&mut self, key: K, due_ms: u64, now_ms: u64) {
        self.len += 1;
        if due_ms <= now_ms {
            self.now.push_back((key, due_ms));
        } else {
            self.by_second.entry(second_of(due_ms)).or_default().push(key);
        }
    }

    /// The earliest time (Unix ms) something may pop: how long the driver may sleep (a key
    /// filed as due already gives the time it was due).
    pub fn next_due(&self) -> Option<u64> {
        if let Some(&(_, due)) = self.now.front() {
            return Some(due);
        }
        self.by_second.first_key_value().map(|(s, _)| s * 1000)
    }

    /// Takes out one key due at or before `now_ms`, with the second (in ms) it was filed
    /// under (0 for one filed as due at once).
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(K, u64)> {
        if let Some((k, _)) = self.now.pop_front() {
            self.len -= 1;
            return Some((k, 0));
        }
        let mut entry = self.by_second.first_entry()?;
        let second = *entry.key();
        if second * 1000 > now_ms {
            return None;
        }
        let k = entry.get_mut().pop().expect("no empty bucket is kept");
        if entry.get().is_empty() {
            entry.remove();
        }
        self.len -= 1;
        Some((k, second * 1000))
    }

    /// Filings, stale ones included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_second_order_never_early() {
        let mut q = TimerQueue::new();
        q.insert('c', 3_000, 0);
        q.insert('a', 1_200, 0);
        q.insert('b', 2_000, 0);
        q.insert('n', 500, 900); // due already: at once
        assert_eq!(q.len(), 4);
        assert_eq!(q.next_due(), Some(500));
        assert_eq!(q.pop_due(900), Some(('n', 0)));
        assert_eq!(q.next_due(), Some(2_000), "1.2 s is filed under the second that ends it");
        let mut fired = Vec::new();
        for now in (0..=4_000).step_by(250) {
            while let Some((k, filed)) = q.pop_due(now) {
                assert!(filed <= now);
                fired.push((now, k));
            }
        }
        assert_eq!(fired.len(), 3);
        assert_eq!(fired[2], (3_000, 'c'));
        assert!(fired[..2].iter().all(|&(t, _)| t == 2_000), "{fired:?}");
        assert!(q.is_empty());
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn a_key_filed_twice_pops_twice_with_its_second() {
        let mut q = TimerQueue::new();
        q.insert(1u32, 60_000, 0);
        q.insert(1, 120_000, 0); // rescheduled: the owner now expects 120 s
        assert_eq!(q.pop_due(60_000), Some((1, 60_000)), "stale: the owner skips it");
        assert_eq!(q.pop_due(60_000), None);
        assert_eq!(q.pop_due(120_000), Some((1, 120_000)));
        assert_eq!(second_of(120_000), 120);
        assert_eq!(second_of(120_001), 121);
    }
}
