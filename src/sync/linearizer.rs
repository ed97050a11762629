//! Synapse's `Linearizer`: a per-key concurrency limit.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::rc::Rc;

use super::semaphore::{run_with, DeferredSemaphore, Permit};
use crate::{CallbackResult, Deferred};

/// Limits how many holders each key may have at once, queueing the rest in FIFO order
/// (Synapse's `Linearizer`). With `max_count` 1 it serialises the work per key.
///
/// A key's state exists only while someone holds or waits for it
/// ([`is_held`](Self::is_held)); [`is_queued`](Self::is_queued) tells whether someone
/// waits.
///
/// ```
/// use weft::Linearizer;
///
/// let lin: Linearizer<&str> = Linearizer::new(1);
/// let a = lin.queue("room").take_result().unwrap().unwrap();
/// let b = lin.queue("room");
/// let other = lin.queue("other room");
/// assert!(!b.is_called() && other.is_called());
/// drop(a);
/// assert!(b.is_called());
/// ```
///
/// # Cancellation
///
/// Cancelling a queued request removes it; a cancel after the [`Permit`] was handed
/// over changes nothing, and dropping the permit passes the key on.
pub struct Linearizer<K: Eq + Hash + Clone + 'static> {
    max_count: usize,
    keys: Rc<RefCell<HashMap<K, DeferredSemaphore>>>,
}

impl<K: Eq + Hash + Clone + 'static> Linearizer<K> {
    /// A linearizer allowing `max_count` concurrent holders per key.
    ///
    /// # Panics
    ///
    /// If `max_count` is zero.
    #[track_caller]
    pub fn new(max_count: usize) -> Linearizer<K> {
        assert!(max_count > 0, "a linearizer needs max_count >= 1");
        Linearizer { max_count, keys: Rc::new(RefCell::new(HashMap::new())) }
    }

    /// A Deferred that fires with a [`Permit`] for `key` once fewer than `max_count`
    /// others hold it.
    #[must_use = "the key is released when the permit is dropped"]
    pub fn queue(&self, key: K) -> Deferred<Permit> {
        let sem = {
            let existing = self.keys.borrow().get(&key).cloned();
            match existing {
                Some(sem) => sem,
                None => {
                    let sem = DeferredSemaphore::new(self.max_count);
                    let (weak, k) = (Rc::downgrade(&self.keys), key.clone());
                    *sem.inner().on_idle.borrow_mut() = Some(Box::new(move || {
                        if let Some(keys) = weak.upgrade() {
                            let removed = keys.borrow_mut().remove(&k);
                            drop(removed);
                        }
                    }));
                    self.keys.borrow_mut().insert(key, sem.clone());
                    sem
                }
            }
        };
        sem.acquire()
    }

    /// Queues for `key`, runs `f`, and releases when its Deferred has a result.
    pub fn run<T, F, R>(&self, key: K, f: F) -> Deferred<T>
    where
        T: 'static,
        F: FnOnce() -> R + 'static,
        R: CallbackResult<T>,
    {
        run_with(self.queue(key), f)
    }

    /// True if someone is waiting for `key` (Synapse's `is_queued`): its holders are at
    /// `max_count` and at least one more request is queued behind them. A key that is
    /// held with nobody waiting is not queued; see [`is_held`](Self::is_held).
    pub fn is_queued(&self, key: &K) -> bool {
        self.keys.borrow().get(key).is_some_and(|sem| sem.waiting() > 0)
    }

    /// True if someone holds `key` or waits for it (weft's addition; what `is_queued`
    /// meant before it took Synapse's meaning).
    pub fn is_held(&self, key: &K) -> bool {
        self.keys.borrow().contains_key(key)
    }

    /// How many keys are held or waited for.
    pub fn active_keys(&self) -> usize {
        self.keys.borrow().len()
    }
}

impl<K: Eq + Hash + Clone + 'static> Clone for Linearizer<K> {
    /// Another handle to the same linearizer.
    fn clone(&self) -> Self {
        Linearizer { max_count: self.max_count, keys: self.keys.clone() }
    }
}

impl<K: Eq + Hash + Clone + 'static> fmt::Debug for Linearizer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Linearizer")
            .field("max_count", &self.max_count)
            .field("active_keys", &self.active_keys())
            .finish()
    }
}
