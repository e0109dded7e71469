//! Records found by a 64-bit key that each record holds itself: the queue's entries and the
//! reclaimer's per-message records, kept for every queued message (millions during an
//! outage).
//!
//! # Why not a `HashMap<u64, T>`
//!
//! A map stores the key beside the value and sizes its table by powers of two: a million
//! 32-byte records take a table of two million 41-byte slots, 82 bytes a record. Here the
//! records live in fixed chunks of a slab (memory grows one chunk at a time, never by
//! doubling a large vector), and the table holds only each record's `u32` slot: 5 bytes a
//! table slot with its control byte, the key read from the record when probing.
//!
//! A vacant slot holds `T::default()`, whose key is 0: 0 is never a key.

use hashbrown::HashTable;

/// A record that carries its own key (never 0; the default record is vacant).
pub trait Keyed: Default {
    fn key(&self) -> u64;
}

/// Records in fixed chunks, by key. See the module documentation.
#[derive(Debug)]
pub struct KeyedSlab<T> {
    chunks: Vec<Vec<T>>,
    free: Vec<u32>,
    table: HashTable<u32>,
}

/// Records per chunk.
const CHUNK: usize = 4096;

impl<T> Default for KeyedSlab<T> {
    fn default() -> Self {
        KeyedSlab { chunks: Vec::new(), free: Vec::new(), table: HashTable::new() }
    }
}

/// The table's hash of a key: keys are queue ids, which differ mostly in their low and
/// high bits (a counter, a second), so every bit is mixed (the SplitMix64 finaliser). They
/// are minted here, not chosen by a peer: no keyed hash is needed.
fn hash(k: u64) -> u64 {
    let mut z = k;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn at<T>(chunks: &[Vec<T>], slot: u32) -> &T {
    &chunks[slot as usize / CHUNK][slot as usize % CHUNK]
}

impl<T: Keyed> KeyedSlab<T> {
    /// Adds `v`, or replaces the record with its key; returns its slot.
    pub fn insert(&mut self, v: T) -> u32 {
        let k = v.key();
        debug_assert_ne!(k, 0, "0 marks a vacant slot");
        if let Some(slot) = self.slot_of(k) {
            *self.slot_mut(slot) = v;
            return slot;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                *self.slot_mut(s) = v;
                s
            }
            None => {
                if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                }
                let n = self.chunks.len() - 1;
                let c = self.chunks.last_mut().expect("a chunk with room");
                c.push(v);
                (n * CHUNK + c.len() - 1) as u32
            }
        };
        let chunks = &self.chunks;
        self.table.insert_unique(hash(k), slot, |&s| hash(at(chunks, s).key()));
        slot
    }

    /// Makes room for `n` more records in the table (a large queue replayed at start: the
    /// table is sized once instead of doubling through every size below).
    pub fn reserve(&mut self, n: usize) {
        let chunks = &self.chunks;
        self.table.reserve(n, |&s| hash(at(chunks, s).key()));
    }

    /// Takes the record with key `k` out; its slot is reused.
    pub fn remove(&mut self, k: u64) -> Option<T> {
        let chunks = &self.chunks;
        let found = self.table.find_entry(hash(k), |&s| at(chunks, s).key() == k).ok()?;
        let (slot, _) = found.remove();
        self.free.push(slot);
        Some(std::mem::take(self.slot_mut(slot)))
    }

    pub fn slot_of(&self, k: u64) -> Option<u32> {
        self.table.find(hash(k), |&s| at(&self.chunks, s).key() == k).copied()
    }

    pub fn get(&self, k: u64) -> Option<&T> {
        self.slot_of(k).map(|s| at(&self.chunks, s))
    }

    pub fn get_mut(&mut self, k: u64) -> Option<&mut T> {
        let s = self.slot_of(k)?;
        Some(self.slot_mut(s))
    }

    /// The record in `slot`, if one lives there.
    pub fn at_slot(&self, slot: u32) -> Option<&T> {
        let v = self.chunks.get(slot as usize / CHUNK)?.get(slot as usize % CHUNK)?;
        (v.key() != 0).then_some(v)
    }

    fn slot_mut(&mut self, slot: u32) -> &mut T {
        &mut self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Every record, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten().filter(|v| v.key() != 0)
    }

    /// Removes every record for which `drop` holds.
    pub fn remove_where(&mut self, mut drop: impl FnMut(&T) -> bool) {
        let keys: Vec<u64> = self.iter().filter(|v| drop(v)).map(|v| v.key()).collect();
        for k in keys {
            self.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq)]
    struct R(u64, u32);

    impl Keyed for R {
        fn key(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn slots_are_reused_and_found_by_key() {
        let mut s: KeyedSlab<R> = KeyedSlab::default();
        let a = s.insert(R(10, 1));
        let b = s.insert(R(11, 2));
        assert_ne!(a, b);
        assert_eq!(s.insert(R(10, 3)), a, "same key, same slot");
        assert_eq!(s.get(10), Some(&R(10, 3)));
        assert_eq!(s.remove(10), Some(R(10, 3)));
        assert_eq!(s.remove(10), None);
        assert!(s.at_slot(a).is_none(), "vacant");
        assert_eq!(s.insert(R(12, 4)), a, "reused");
        assert_eq!(s.at_slot(a), Some(&R(12, 4)));
        // Keys as queue ids are: a second in the high half, a counter in the low bits.
        for sec in 1..=3u64 {
            for n in 0..(CHUNK as u64) {
                s.insert(R((sec << 32) | (n + 1), n as u32));
            }
        }
        assert_eq!(s.len(), 2 + 3 * CHUNK);
        assert_eq!(s.get((2 << 32) | 7).map(|r| r.1), Some(6));
        s.remove_where(|r| r.0 >> 32 == 2);
        assert_eq!(s.len(), 2 + 2 * CHUNK);
        assert!(s.get((2 << 32) | 7).is_none() && s.get((3 << 32) | 7).is_some());
        assert_eq!(s.iter().count(), s.len());
    }
}
