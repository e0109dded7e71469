//! Byte buffers of ended connections, kept for the next ones on the same thread.
//!
//! A shard is one thread, and with a connection per message it begins and ends thousands
//! of sessions a second, each with an output buffer, a message buffer and a send queue.
//! Ended sessions leave theirs here (cleared, up to [`KEEP`] of them, none larger than
//! [`MAX_CAPACITY`]), and new ones take them: in steady state a connection allocates none
//! of these, and a message buffer comes already grown to the size of recent messages.

use std::cell::RefCell;

/// Most buffers kept per thread.
pub const KEEP: usize = 256;
/// A buffer grown past this (a large message's) is freed rather than kept: idle memory
/// stays bounded at `KEEP * MAX_CAPACITY` per shard.
pub const MAX_CAPACITY: usize = 64 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer: a kept one, or a new one of `capacity`.
pub fn take(capacity: usize) -> Vec<u8> {
    SPARE.with_borrow_mut(|s| s.pop()).unwrap_or_else(|| Vec::with_capacity(capacity))
}

/// Keeps `buf` for a later [`take`] on this thread, unless it is empty of capacity, too
/// large, or enough are kept.
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > MAX_CAPACITY {
        return;
    }
    buf.clear();
    SPARE.with_borrow_mut(|s| {
        if s.len() < KEEP {
            s.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_cleared_and_bounded() {
        let mut b = take(100);
        b.extend_from_slice(b"hello");
        let ptr = b.as_ptr();
        give(b);
        let again = take(100);
        assert_eq!((again.as_ptr(), again.len()), (ptr, 0), "the same buffer, cleared");
        give(vec![0; MAX_CAPACITY + 1]);
        give(Vec::new());
        assert!(SPARE.with_borrow(|s| s.is_empty()), "too large and empty ones are not kept");
        for _ in 0..KEEP + 10 {
            give(Vec::with_capacity(16));
        }
        assert_eq!(SPARE.with_borrow(|s| s.len()), KEEP);
    }
}
