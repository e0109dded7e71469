//! Giving memory back after a burst.
//!
//! mimalloc (the server's allocator, docs/decisions/004-allocator.md) keeps pages freed by a
//! thread for that thread's next allocations. After a one-off burst — replaying a large
//! spool at start, copying a control segment's marks forward — that would stay resident for
//! the server's whole life, so the thread that had the burst asks for a collection.

/// Returns this thread's free pages to the system (a no-op for what the system allocator
/// manages, with `--features system-alloc`).
pub fn release_free_memory() {
    // SAFETY: mi_collect takes no pointers and may be called at any time from any thread;
    // it only frees pages this thread's heap no longer uses.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
