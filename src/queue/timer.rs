//! A timer queue keyed by next attempt.
//!
//! # Why a `BTreeMap` and not a hashed wheel
//!
//! Retry times span 15 minutes to days and are kept to the millisecond (they are written
//! to the spool and shown by `queue list`). A hashed wheel needs several levels for such a
//! span and rounds to its tick; a hierarchical wheel (KumoMTA's `timeq`) pays off with
//! millions of entries churning every second. A delivery core holds far fewer pending
//! recipients, and each entry is followed by a network round trip: O(log n) insert, remove
//! and pop-first on an ordered map cost nothing next to it, are exact, and keep the code
//! obviously right. The map key `(due, seq)` keeps equal times in insertion order.
//!
//! # Invariants
//!
//! Every key is in `by_key` exactly when its `(due, seq)` is in `by_due`.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Keys (a message, a recipient, a destination) ordered by the Unix ms they are due at.
/// Nothing here reads a clock: [`TimerQueue::pop_due`] takes `now`.
#[derive(Debug)]
pub struct TimerQueue<K> {
    by_due: BTreeMap<(u64, u64), K>,
    by_key: HashMap<K, (u64, u64)>,
    seq: u64,
}

impl<K> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue { by_due: BTreeMap::new(), by_key: HashMap::new(), seq: 0 }
    }
}

impl<K: Clone + Eq + Hash> TimerQueue<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedules `key` at `due_ms`, replacing any earlier schedule of the same key.
    pub fn insert(&mut self, key: K, due_ms: u64) {
        self.remove(&key);
        let slot = (due_ms, self.seq);
        self.seq += 1;
        self.by_due.insert(slot, key.clone());
        self.by_key.insert(key, slot);
    }

    /// Unschedules `key`; returns when it was due.
    pub fn remove(&mut self, key: &K) -> Option<u64> {
        let slot = self.by_key.remove(key)?;
        self.by_due.remove(&slot);
        Some(slot.0)
    }

    /// When `key` is due, if it is scheduled.
    pub fn due_of(&self, key: &K) -> Option<u64> {
        self.by_key.get(key).map(|s| s.0)
    }

    /// The earliest due time: how long the driver may sleep.
    pub fn next_due(&self) -> Option<u64> {
        self.by_due.first_key_value().map(|(s, _)| s.0)
    }

    /// Takes out the earliest key due at or before `now_ms`.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(K, u64)> {
        let entry = self.by_due.first_entry()?;
        if entry.key().0 > now_ms {
            return None;
        }
        let ((due, _), key) = entry.remove_entry();
        self.by_key.remove(&key);
        Some((key, due))
    }

    /// Takes out every key due at or before `now_ms`, earliest first, up to `max`.
    pub fn drain_due(&mut self, now_ms: u64, max: usize, out: &mut Vec<K>) {
        while out.len() < max {
            match self.pop_due(now_ms) {
                Some((k, _)) => out.push(k),
                None => break,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_order_on_a_simulated_clock() {
        let mut q = TimerQueue::new();
        q.insert("c", 300);
        q.insert("a", 100);
        q.insert("b", 200);
        q.insert("a2", 100); // same time as "a": after it
        assert_eq!(q.len(), 4);
        assert_eq!(q.next_due(), Some(100));
        let mut fired = Vec::new();
        for now in (0..=400).step_by(50) {
            while let Some((k, due)) = q.pop_due(now) {
                assert!(due <= now);
                fired.push((now, k));
            }
        }
        assert_eq!(fired, vec![(100, "a"), (100, "a2"), (200, "b"), (300, "c")]);
        assert!(q.is_empty());
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn reschedule_and_remove() {
        let mut q = TimerQueue::new();
        q.insert(1u64, 1000);
        q.insert(2, 2000);
        q.insert(1, 3000); // deferred again: moves, not duplicated
        assert_eq!(q.len(), 2);
        assert_eq!(q.due_of(&1), Some(3000));
        assert_eq!(q.pop_due(2500), Some((2, 2000)));
        assert_eq!(q.pop_due(2500), None);
        assert_eq!(q.remove(&1), Some(3000));
        assert_eq!(q.remove(&1), None);
        assert!(q.is_empty());
    }

    #[test]
    fn drain_is_bounded() {
        let mut q = TimerQueue::new();
        for i in 0..10u32 {
            q.insert(i, u64::from(i) * 10);
        }
        let mut out = Vec::new();
        q.drain_due(45, 3, &mut out);
        assert_eq!(out, vec![0, 1, 2]);
        out.clear();
        q.drain_due(45, 100, &mut out);
        assert_eq!(out, vec![3, 4]);
        assert_eq!(q.next_due(), Some(50));
    }
}
