//! What the queue keeps per queued message, compactly: the whole queue stays in memory
//! during a downstream outage of millions of messages, so an [`Entry`] is 72 bytes (where
//! its record is, when it is due, the attempt counters and two bits per recipient) and the
//! envelope and content are loaded only while the message is being worked on (the active
//! window, [`Loaded`]).
//!
//! Entries live in chunks of a slab (no doubling of one large vector: memory grows by one
//! chunk at a time), found by queue id through one hash map of `u32` slots.

use super::actions::At;
use crate::spool::QueueId;
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

/// One queued message. See the module documentation.
#[derive(Debug)]
pub struct Entry<L> {
    pub id: QueueId,
    pub at: At,
    /// Unix ms it is due at; 0: not scheduled.
    pub due: u64,
    /// Unix seconds of the first attempt and of the last deferral; 0: none.
    pub first_attempt_s: u32,
    pub last_deferral_s: u32,
    pub attempts: u16,
    /// The record is asked for, and why.
    pub want: Want,
    pub rcpts: RcptStates,
    /// The envelope and content, while the message is in the active window.
    pub loaded: Option<Box<L>>,
}

impl<L> Default for Entry<L> {
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
            loaded: None,
        }
    }
}

impl Default for At {
    fn default() -> Self {
        At::of_record(0, 0, 0, 0)
    }
}

/// Entries in chunks, by queue id.
#[derive(Debug)]
pub struct Entries<L> {
    chunks: Vec<Vec<Entry<L>>>,
    free: Vec<u32>,
    by_id: HashMap<QueueId, u32>,
}

const CHUNK: usize = 4096;

impl<L> Default for Entries<L> {
    fn default() -> Self {
        Entries { chunks: Vec::new(), free: Vec::new(), by_id: HashMap::new() }
    }
}

impl<L> Entries<L> {
    /// Adds (or replaces) the entry of `e.id`; returns its slot.
    pub fn insert(&mut self, e: Entry<L>) -> u32 {
        if let Some(&slot) = self.by_id.get(&e.id) {
            *self.slot_mut(slot) = e;
            return slot;
        }
        let id = e.id;
        let slot = match self.free.pop() {
            Some(s) => {
                *self.slot_mut(s) = e;
                s
            }
            None => {
                if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                }
                let n = self.chunks.len() - 1;
                let c = self.chunks.last_mut().expect("a chunk with room");
                c.push(e);
                (n * CHUNK + c.len() - 1) as u32
            }
        };
        self.by_id.insert(id, slot);
        slot
    }

    pub fn remove(&mut self, id: QueueId) -> Option<Entry<L>> {
        let slot = self.by_id.remove(&id)?;
        self.free.push(slot);
        Some(std::mem::take(self.slot_mut(slot)))
    }

    pub fn slot_of(&self, id: QueueId) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    pub fn get(&self, id: QueueId) -> Option<&Entry<L>> {
        self.slot_of(id).map(|s| self.slot(s))
    }

    pub fn get_mut(&mut self, id: QueueId) -> Option<&mut Entry<L>> {
        let s = self.slot_of(id)?;
        Some(self.slot_mut(s))
    }

    /// The entry in `slot`, if one lives there (a vacant slot has id 0).
    pub fn at_slot(&self, slot: u32) -> Option<&Entry<L>> {
        let e = self.chunks.get(slot as usize / CHUNK)?.get(slot as usize % CHUNK)?;
        (e.id.0 != 0).then_some(e)
    }

    fn slot(&self, slot: u32) -> &Entry<L> {
        &self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
    }

    fn slot_mut(&mut self, slot: u32) -> &mut Entry<L> {
        &mut self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every queue id, in order.
    pub fn ids(&self) -> Vec<QueueId> {
        let mut v: Vec<QueueId> = self.by_id.keys().copied().collect();
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
        assert!(std::mem::size_of::<Entry<u64>>() <= 72, "{}", std::mem::size_of::<Entry<u64>>());
    }

    #[test]
    fn slots_are_reused_and_found_by_id() {
        let mut e: Entries<u64> = Entries::default();
        let entry = |n: u64| Entry { id: QueueId(n), ..Entry::default() };
        let a = e.insert(entry(10));
        let b = e.insert(entry(11));
        assert_ne!(a, b);
        assert_eq!(e.insert(entry(10)), a, "same id, same slot");
        assert_eq!(e.remove(QueueId(10)).map(|x| x.id), Some(QueueId(10)));
        assert!(e.at_slot(a).is_none(), "vacant");
        assert_eq!(e.insert(entry(12)), a, "reused");
        assert_eq!(e.at_slot(a).map(|x| x.id), Some(QueueId(12)));
        assert_eq!(e.ids(), [QueueId(11), QueueId(12)]);
        for n in 100..(100 + 2 * CHUNK as u64) {
            e.insert(entry(n));
        }
        assert_eq!(e.len(), 2 + 2 * CHUNK);
        assert_eq!(e.get(QueueId(100 + CHUNK as u64)).map(|x| x.id.0), Some(100 + CHUNK as u64));
    }
}
