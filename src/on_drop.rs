//! [`OnDrop`]: runs a closure when a wait ends however it ends, cancellation included, unless
//! the wait defused it first. Every wait that leaves a mark in shared memory (a lock's waiter
//! count, an arrived party, a condition ticket, a queue's waiter count) undoes it through one
//! of these, so a dropped future never leaves the shared state claiming a waiter that is gone;
//! a queue's packet lock is released through one too.
//!
//! Crate-private and below every layer that uses it (`sync`, `queue`, `manager`): it depends on
//! nothing.

/// Runs `f` when dropped, unless [`defuse`](OnDrop::defuse)d.
#[must_use = "the closure runs as soon as the guard is dropped"]
pub(crate) struct OnDrop<F: FnOnce()> {
    f: Option<F>,
}

impl<F: FnOnce()> OnDrop<F> {
    pub(crate) fn new(f: F) -> OnDrop<F> {
        OnDrop { f: Some(f) }
    }

    /// The wait ended as planned: the closure does not run.
    pub(crate) fn defuse(mut self) {
        self.f = None;
    }
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.f.take() {
            f();
        }
    }
}
