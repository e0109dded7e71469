//! What the queue keeps per queued message, compactly: the whole queue stays in memory
//! during a downstream outage of millions of messages, so an [`Entry`] is 48 bytes (where
//! its record is, when it is due, the attempt counters and two bits per recipient) and the
//! envelope and content are loaded only while the message is being worked on (the active
//! window, [`Loaded`](super::manager), kept beside the entries).
//!
//! Entries live in a [`KeyedSlab`]: chunks, found by queue id through a table of `u32`
//! slots.

use super::actions::At;
use crate::spool::QueueId;
use crate::util::slab::{Keyed, KeyedSlab};
use std::collections::HashMap;

/// A recipient's state in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rcpt {
    /// To be tried (never tried, or deferred: the entry's due time says when).
    Open = 0,
    /// Final: delivered, failed, or returned by an operator; its mark is written.
    Done = 1,
    /// For an accept-all domain with nowhere to send it: waits for `queue retry`.
    Held = 2,
    /// A delivery is out (remote job, local attempt).
    Inflight = 3,
}

impl Rcpt {
    fn from_bits(b: u64) -> Rcpt {
        match b & 3 {
            0 => Rcpt::Open,
            1 => Rcpt::Done,
            2 => Rcpt::Held,
            _ => Rcpt::Inflight,
        }
    }
}

/// Two bits per recipient: 24 inline, with the count in the top 16 bits of the same word;
/// the rest in a box (rare: more than 24 recipients). 16 bytes.
#[derive(Debug, Default)]
pub struct RcptStates {
    inline: u64,
    /// A thin pointer (8 bytes; a boxed slice would take 16), allocated only past 24.
    #[allow(clippy::box_collection)]
    more: Option<Box<Vec<u64>>>,
}

/// Recipients whose states fit beside the count.
const INLINE: usize = 24;

impl RcptStates {
    /// `n` recipients, all open.
    pub fn new(n: u16) -> Self {
        let more = (n as usize > INLINE).then(|| Box::new(vec![0u64; (n as usize - INLINE).div_ceil(32)]));
        RcptStates { inline: (n as u64) << 48, more }
    }

    pub fn len(&self) -> u16 {
        (self.inline >> 48) as u16
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The word holding recipient `i`, and its shift.
    fn place(i: u16) -> (Option<usize>, u32) {
        let i = i as usize;
        if i < INLINE { (None, (i * 2) as u32) } else { (Some((i - INLINE) / 32), (((i - INLINE) % 32) * 2) as u32) }
    }

    pub fn get(&self, i: u16) -> Rcpt {
        if i >= self.len() {
            return Rcpt::Done;
        }
        let (word, shift) = Self::place(i);
        let w = match word {
            None => self.inline,
            Some(k) => self.more.as_ref().expect("boxed states past the inline ones")[k],
        };
        Rcpt::from_bits(w >> shift)
    }

    pub fn set(&mut self, i: u16, s: Rcpt) {
        if i >= self.len() {
            return;
        }
        let (word, shift) = Self::place(i);
        let w = match word {
            None => &mut self.inline,
            Some(k) => &mut self.more.as_mut().expect("boxed states past the inline ones")[k],
        };
        *w = (*w & !(3 << shift)) | ((s as u64) << shift);
    }

    /// Recipients in state `s`, in order.
    pub fn with(&self, s: Rcpt) -> impl Iterator<Item = u16> + '_ {
        (0..self.len()).filter(move |&i| self.get(i) == s)
    }

    pub fn any(&self, s: Rcpt) -> bool {
        self.with(s).next().is_some()
    }
}

/// What is loaded while the message is worked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Want {
    #[default]
    Nothing,
    /// Due: deliver the open recipients once loaded.
    Attempt,
    /// Returned by an operator: report once loaded.
    Bounce,
}

impl Default for At {
    fn default() -> Self {
        At::of_record(0, 0, 0)
    }
}

/// One queued message. See the module documentation.
#[derive(Debug)]
pub struct Entry {
    pub id: QueueId,
    pub at: At,
    /// The Unix second its due-time filing is under (the manager's `schedule`); 0: not
    /// scheduled.
    pub due: u32,
    /// Unix seconds of the first attempt and of the last deferral; 0: none. A quarantined
    /// message, never attempted, has [`QUARANTINED`] as its first attempt (no room for a
    /// flag of its own: see `an_entry_is_small`).
    pub first_attempt_s: u32,
    pub last_deferral_s: u32,
    pub attempts: u16,
    /// The record is asked for, and why.
    pub want: Want,
    pub rcpts: RcptStates,
}

/// The first attempt of a quarantined message (one that is never attempted until released).
pub const QUARANTINED: u32 = u32::MAX;

impl Entry {
    /// Held, every recipient, until an operator releases it.
    pub fn is_quarantined(&self) -> bool {
        self.first_attempt_s == QUARANTINED
    }

    pub fn set_quarantined(&mut self, q: bool) {
        self.first_attempt_s = if q { QUARANTINED } else { 0 };
    }
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            id: QueueId(0),
            at: At::default(),
            due: 0,
            first_attempt_s: 0,
            last_deferral_s: 0,
            attempts: 0,
            want: Want::Nothing,
            rcpts: RcptStates::default(),
        }
    }
}

impl Keyed for Entry {
    fn key(&self) -> u64 {
        self.id.0
    }
}

/// Entries by queue id, and what is loaded for those in the active window (a few thousand
/// at most: kept aside rather than as a pointer in every entry).
#[derive(Debug)]
pub struct Entries<L> {
    slab: KeyedSlab<Entry>,
    loaded: HashMap<u32, Box<L>>,
}

impl<L> Default for Entries<L> {
    fn default() -> Self {
        Entries { slab: KeyedSlab::default(), loaded: HashMap::new() }
    }
}

impl<L> Entries<L> {
    /// Adds (or replaces) the entry of `e.id`; returns its slot.
    pub fn insert(&mut self, e: Entry) -> u32 {
        self.slab.insert(e)
    }

    /// Makes room for `n` more entries.
    pub fn reserve(&mut self, n: usize) {
        self.slab.reserve(n);
    }

    /// Takes an entry out, with what was loaded for it.
    pub fn remove(&mut self, id: QueueId) -> Option<(Entry, Option<Box<L>>)> {
        let slot = self.slab.slot_of(id.0)?;
        let loaded = self.loaded.remove(&slot);
        Some((self.slab.remove(id.0)?, loaded))
    }

    pub fn slot_of(&self, id: QueueId) -> Option<u32> {
        self.slab.slot_of(id.0)
    }

    pub fn get(&self, id: QueueId) -> Option<&Entry> {
        self.slab.get(id.0)
    }

    pub fn get_mut(&mut self, id: QueueId) -> Option<&mut Entry> {
        self.slab.get_mut(id.0)
    }

    /// The entry in `slot`, if one lives there.
    pub fn at_slot(&self, slot: u32) -> Option<&Entry> {
        self.slab.at_slot(slot)
    }

    /// What is loaded for a message in the active window.
    pub fn loaded(&self, id: QueueId) -> Option<&L> {
        self.loaded.get(&self.slot_of(id)?).map(|l| &**l)
    }

    pub fn loaded_mut(&mut self, id: QueueId) -> Option<&mut L> {
        let slot = self.slot_of(id)?;
        self.loaded.get_mut(&slot).map(|l| &mut **l)
    }

    pub fn is_loaded(&self, id: QueueId) -> bool {
        self.loaded(id).is_some()
    }

    /// The entry and what is loaded for it, both mutable.
    pub fn parts_mut(&mut self, id: QueueId) -> Option<(&mut Entry, Option<&mut L>)> {
        let slot = self.slab.slot_of(id.0)?;
        let e = self.slab.get_mut(id.0)?;
        Some((e, self.loaded.get_mut(&slot).map(|l| &mut **l)))
    }

    /// Loads a queued message (nothing when `id` is not queued).
    pub fn set_loaded(&mut self, id: QueueId, l: L) {
        if let Some(slot) = self.slot_of(id) {
            self.loaded.insert(slot, Box::new(l));
        }
    }

    /// Unloads a message: it leaves the active window.
    pub fn take_loaded(&mut self, id: QueueId) -> Option<Box<L>> {
        let slot = self.slot_of(id)?;
        self.loaded.remove(&slot)
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.slab.iter()
    }

    /// Every queue id, in order.
    pub fn ids(&self) -> Vec<QueueId> {
        let mut v: Vec<QueueId> = self.slab.iter().map(|e| e.id).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_bits_per_recipient_inline_and_boxed() {
        for n in [0u16, 1, 23, 24, 25, 56, 57, 1000] {
            let mut r = RcptStates::new(n);
            assert_eq!(r.len(), n);
            assert_eq!(r.with(Rcpt::Open).count(), n as usize);
            let states = [Rcpt::Open, Rcpt::Done, Rcpt::Held, Rcpt::Inflight];
            for i in 0..n {
                r.set(i, states[i as usize % 4]);
            }
            for i in 0..n {
                assert_eq!(r.get(i), states[i as usize % 4], "n {n} i {i}");
            }
            r.set(n, Rcpt::Inflight); // past the end: nothing
            assert_eq!(r.get(n), Rcpt::Done);
            assert_eq!(r.with(Rcpt::Held).count(), (0..n).filter(|i| i % 4 == 2).count());
        }
    }

    #[test]
    fn an_entry_is_small() {
        assert!(std::mem::size_of::<Entry>() <= 48, "{}", std::mem::size_of::<Entry>());
    }

    #[test]
    fn what_is_loaded_goes_with_its_entry() {
        let mut e: Entries<u64> = Entries::default();
        let entry = |n: u64| Entry { id: QueueId(n), ..Entry::default() };
        e.insert(entry(10));
        e.insert(entry(11));
        e.set_loaded(QueueId(10), 7);
        e.set_loaded(QueueId(12), 8); // not queued: nothing
        assert_eq!(e.loaded(QueueId(10)), Some(&7));
        assert!(!e.is_loaded(QueueId(11)) && !e.is_loaded(QueueId(12)));
        if let Some((en, l)) = e.parts_mut(QueueId(10)) {
            en.attempts = 1;
            *l.unwrap() += 1;
        }
        let (gone, loaded) = e.remove(QueueId(10)).unwrap();
        assert_eq!((gone.attempts, loaded.as_deref()), (1, Some(&8)));
        // The slot is reused by the next entry, which has nothing loaded.
        e.insert(entry(13));
        assert!(!e.is_loaded(QueueId(13)));
        assert_eq!(e.ids(), [QueueId(11), QueueId(13)]);
    }
}
