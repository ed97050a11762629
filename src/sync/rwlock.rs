//! Synapse's `ReadWriteLock`: per-key readers-writer lock.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::rc::{Rc, Weak};

use super::Waiters;
use crate::deferred::DeferredRef;
use crate::Deferred;

/// A per-key readers-writer lock (Synapse's `ReadWriteLock`): any number of readers, or
/// one writer. Requests are served in arrival order, so a reader that comes after a
/// waiting writer waits for it, and writers do not starve.
///
/// ```
/// use weft::ReadWriteLock;
///
/// let lock: ReadWriteLock<u32> = ReadWriteLock::new();
/// let r1 = lock.read(1).take_result().unwrap().unwrap();
/// let r2 = lock.read(1).take_result().unwrap().unwrap();
/// let w = lock.write(1);
/// assert!(!w.is_called());
/// drop((r1, r2));
/// assert!(w.is_called());
/// ```
///
/// # Cancellation
///
/// Cancelling a waiting request removes it, and may let the requests behind it in.
pub struct ReadWriteLock<K: Eq + Hash + Clone + 'static> {
    keys: Rc<RefCell<HashMap<K, Rc<KeyState<K>>>>>,
}

/// A held read or write lock on one key.
///
/// # Drop
///
/// Dropping the guard releases the lock; waiting requests it was blocking get theirs.
#[must_use = "dropping the guard releases the lock at once"]
pub struct RwGuard {
    release: Option<Rc<dyn Release>>,
    write: bool,
}

trait Release {
    fn release(self: Rc<Self>, write: bool);
}

struct KeyState<K: 'static> {
    key: K,
    map: Weak<RefCell<HashMap<K, Rc<KeyState<K>>>>>,
    readers: Cell<usize>,
    writer: Cell<bool>,
    waiters: RefCell<Waiters<(bool, DeferredRef<RwGuard>)>>,
}

impl<K: Eq + Hash + Clone + 'static> ReadWriteLock<K> {
    /// An unlocked lock.
    pub fn new() -> ReadWriteLock<K> {
        ReadWriteLock { keys: Rc::new(RefCell::new(HashMap::new())) }
    }

    /// A Deferred that fires with a read guard for `key` once no writer holds or is
    /// queued before it.
    #[must_use = "the lock is released when the guard is dropped"]
    pub fn read(&self, key: K) -> Deferred<RwGuard> {
        self.state(key).request(false)
    }

    /// A Deferred that fires with a write guard for `key` once every earlier reader and
    /// writer is done.
    #[must_use = "the lock is released when the guard is dropped"]
    pub fn write(&self, key: K) -> Deferred<RwGuard> {
        self.state(key).request(true)
    }

    /// True if anyone holds or waits for `key`.
    pub fn is_locked(&self, key: &K) -> bool {
        self.keys.borrow().contains_key(key)
    }

    fn state(&self, key: K) -> Rc<KeyState<K>> {
        let existing = self.keys.borrow().get(&key).cloned();
        existing.unwrap_or_else(|| {
            let st = Rc::new(KeyState {
                key: key.clone(),
                map: Rc::downgrade(&self.keys),
                readers: Cell::new(0),
                writer: Cell::new(false),
                waiters: RefCell::new(Waiters::new()),
            });
            self.keys.borrow_mut().insert(key, st.clone());
            st
        })
    }
}

impl<K: Eq + Hash + Clone + 'static> KeyState<K> {
    fn request(self: &Rc<Self>, write: bool) -> Deferred<RwGuard> {
        if self.waiters.borrow().is_empty() && self.can_grant(write) {
            self.grant(write);
            return crate::succeed(self.guard(write));
        }
        let weak = Rc::downgrade(self);
        let id = self.waiters.borrow_mut().reserve();
        let d = Deferred::with_canceller(move |_| {
            if let Some(st) = weak.upgrade() {
                let removed = st.waiters.borrow_mut().remove(id);
                drop(removed);
                st.wake();
            }
        });
        self.waiters.borrow_mut().insert(id, (write, d.to_ref()));
        d
    }

    fn can_grant(&self, write: bool) -> bool {
        !self.writer.get() && (!write || self.readers.get() == 0)
    }

    fn grant(&self, write: bool) {
        if write {
            self.writer.set(true);
        } else {
            self.readers.set(self.readers.get() + 1);
        }
    }

    fn guard(self: &Rc<Self>, write: bool) -> RwGuard {
        RwGuard { release: Some(self.clone() as Rc<dyn Release>), write }
    }

    /// Lets in as many requests from the front of the queue as can go now.
    fn wake(self: &Rc<Self>) {
        loop {
            let next = {
                let mut waiters = self.waiters.borrow_mut();
                match waiters.front() {
                    Some((write, _)) if self.can_grant(*write) => waiters.pop_front(),
                    _ => None,
                }
            };
            let Some((write, d)) = next else { break };
            self.grant(write);
            if let Err(guard) = d.offer(self.guard(write)) {
                // Already called: the guard comes back and is dropped, releasing.
                drop(guard);
            }
        }
        let idle = !self.writer.get() && self.readers.get() == 0 && self.waiters.borrow().is_empty();
        if idle {
            if let Some(map) = self.map.upgrade() {
                let removed = {
                    let mut map = map.borrow_mut();
                    match map.get(&self.key) {
                        Some(st) if std::ptr::eq(Rc::as_ptr(st), Rc::as_ptr(self)) => map.remove(&self.key),
                        _ => None,
                    }
                };
                drop(removed);
            }
        }
    }
}

impl<K: Eq + Hash + Clone + 'static> Release for KeyState<K> {
    fn release(self: Rc<Self>, write: bool) {
        if write {
            self.writer.set(false);
        } else {
            self.readers.set(self.readers.get() - 1);
        }
        self.wake();
    }
}

impl RwGuard {
    /// True for a write guard.
    pub fn is_write(&self) -> bool {
        self.write
    }
}

impl Drop for RwGuard {
    fn drop(&mut self) {
        if let Some(r) = self.release.take() {
            r.release(self.write);
        }
    }
}

impl fmt::Debug for RwGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwGuard").field("write", &self.write).finish()
    }
}

impl<K: Eq + Hash + Clone + 'static> Clone for ReadWriteLock<K> {
    /// Another handle to the same lock.
    fn clone(&self) -> Self {
        ReadWriteLock { keys: self.keys.clone() }
    }
}

impl<K: Eq + Hash + Clone + 'static> Default for ReadWriteLock<K> {
    fn default() -> Self {
        ReadWriteLock::new()
    }
}

impl<K: Eq + Hash + Clone + 'static> fmt::Debug for ReadWriteLock<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadWriteLock").field("keys", &self.keys.borrow().len()).finish()
    }
}
