//! A table of connections by token, shared by the server's and the sink's event loops.

/// Items by index, with a generation so that a late completion for a closed connection
/// is recognised: a token is `generation << 32 | index`, generation 24 bits (never 0).
pub struct Slab<T> {
    slots: Vec<Option<(u32, T)>>,
    free: Vec<u32>,
    next_generation: u32,
    len: usize,
}

impl<T> Slab<T> {
    pub fn new() -> Self {
        Slab { slots: Vec::new(), free: Vec::new(), next_generation: 1, len: 0 }
    }

    /// Adds an item; returns its token.
    pub fn add(&mut self, item: T) -> u64 {
        let generation = self.next_generation;
        // 24 bits, so that a token fits below the io_uring driver's operation byte.
        self.next_generation = (self.next_generation + 1) & 0xff_ffff;
        if self.next_generation == 0 {
            self.next_generation = 1;
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[idx as usize] = Some((generation, item));
        self.len += 1;
        (generation as u64) << 32 | idx as u64
    }

    pub fn get_mut(&mut self, token: u64) -> Option<&mut T> {
        let idx = (token & 0xffff_ffff) as usize;
        let generation = (token >> 32) as u32;
        self.slots.get_mut(idx)?.as_mut().filter(|s| s.0 == generation).map(|s| &mut s.1)
    }

    pub fn remove(&mut self, token: u64) -> Option<T> {
        let idx = (token & 0xffff_ffff) as usize;
        let generation = (token >> 32) as u32;
        let slot = self.slots.get_mut(idx)?;
        if slot.as_ref().is_some_and(|s| s.0 == generation) {
            self.free.push(idx as u32);
            self.len -= 1;
            slot.take().map(|s| s.1)
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes every item out (at shutdown); all tokens go stale.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.len = 0;
        self.free.clear();
        self.free.extend(0..self.slots.len() as u32);
        self.slots.iter_mut().filter_map(|s| s.take().map(|s| s.1))
    }

    /// Tokens of every live item.
    pub fn tokens(&self) -> Vec<u64> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|s| (s.0 as u64) << 32 | i as u64)).collect()
    }
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;

    /// A token names one item: after removal and reuse of its slot, the old token finds
    /// nothing (a late completion for a closed connection), the new one finds the new item.
    #[test]
    fn a_reused_slot_does_not_answer_to_an_old_token() {
        let mut s = Slab::new();
        let a = s.add("a");
        let b = s.add("b");
        assert_eq!((s.len(), s.get_mut(a).copied(), s.get_mut(b).copied()), (2, Some("a"), Some("b")));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None, "removed twice");
        let c = s.add("c");
        assert_eq!(c & 0xffff_ffff, a & 0xffff_ffff, "the free slot is reused");
        assert_ne!(c, a);
        assert_eq!(s.get_mut(a), None);
        assert_eq!(s.get_mut(c).copied(), Some("c"));
        let mut tokens = s.tokens();
        tokens.sort();
        let mut want = vec![b, c];
        want.sort();
        assert_eq!(tokens, want);
        assert!(!s.is_empty());
    }

    /// Generations stay in 24 bits (the io_uring driver keeps its operation in the top
    /// byte) and skip 0, however many connections come and go.
    #[test]
    fn generations_wrap_within_24_bits() {
        let mut s = Slab::new();
        let mut last = 0;
        for i in 0..(1u32 << 24) + 5 {
            let t = s.add(i);
            assert!(t >> 32 != 0 && t >> 32 <= 0xff_ffff);
            assert_ne!(t, last);
            last = t;
            s.remove(t);
        }
    }
}
