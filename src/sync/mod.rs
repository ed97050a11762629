//! Cancellation-safe locks and queues: [`DeferredLock`], [`DeferredSemaphore`],
//! [`DeferredQueue`], [`Linearizer`] and [`ReadWriteLock`].
//!
//! # Cancellation
//!
//! Every waiter is a Deferred with a canceller that removes it from its queue, so a
//! cancelled waiter never receives the lock, permit or item. Ownership is handed over
//! as a value inside the waiter's result (a [`Permit`], an [`RwGuard`] or the queued
//! item), which a later cancel never takes away; if the waiter's chain drops a permit,
//! the permit passes to the next waiter. So there is no lost wake-up and no lost item.
//!
//! Waiters are kept in FIFO order in a `BTreeMap` keyed by a counter, so removing a
//! cancelled waiter is `O(log n)` and keys are never reused.

mod linearizer;
mod queue;
mod rwlock;
mod semaphore;

use std::collections::BTreeMap;

pub use linearizer::Linearizer;
pub use queue::{DeferredQueue, QueueOverflow, QueueUnderflow};
pub use rwlock::{ReadWriteLock, RwGuard};
pub use semaphore::{DeferredLock, DeferredSemaphore, Permit};

/// Waiters in arrival order, removable by id.
struct Waiters<W> {
    next: u64,
    map: BTreeMap<u64, W>,
}

impl<W> Waiters<W> {
    fn new() -> Self {
        Waiters { next: 0, map: BTreeMap::new() }
    }

    /// Reserves an id for a waiter inserted later with `insert`.
    fn reserve(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        id
    }

    fn insert(&mut self, id: u64, w: W) {
        self.map.insert(id, w);
    }

    fn remove(&mut self, id: u64) -> Option<W> {
        self.map.remove(&id)
    }

    fn pop_front(&mut self) -> Option<W> {
        self.map.pop_first().map(|(_, w)| w)
    }

    fn front(&self) -> Option<&W> {
        self.map.first_key_value().map(|(_, w)| w)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
