//! Synapse's [`ResponseCache`]: concurrent identical requests share one piece of work,
//! and its result is kept for a while after it completes.
//!
//! # How it works
//!
//! Each key has at most one entry: the work's Deferred behind an
//! [`ObservableDeferred`], so every caller gets its own observer. The work runs in a
//! log context of its own (`"{cache name}-{n}"`, with no parent: Synapse's
//! `run_as_background_process` rule), never in the context of the request that happened
//! to start it, so that request finishing (or being cancelled) leaves the work's
//! context live. A success is kept for `timeout` after it completes (dropped at once if
//! `timeout` is zero or the work said not to cache it); a failure is never kept.
//!
//! # Cancellation
//!
//! Cancelling what [`wrap`](ResponseCache::wrap) returned detaches that caller only: it
//! fails with `CancelledError` at once, and the other callers wait on. What happens to
//! the work when its last caller has gone is the cache's [`WhenUnobserved`] policy:
//! keep running (Synapse's behaviour; the result is cached for the next caller) or
//! cancel it (for work that is only worth doing for someone).
//!
//! Synapse delays each caller's `CancelledError` until the work completes, because its
//! work may run in the caller's log context; here the work has its own context, so a
//! caller can leave at once.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::rc::Rc;
use std::time::Duration;

use crate::deferred::Next;
use crate::logcontext::{LoggingContext, PreserveLoggingContext};
use crate::{CallbackResult, Deferred, DelayedCall, Failure, ObservableDeferred, ReactorTime};

/// What happens to a cached piece of work when every caller waiting for it has cancelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenUnobserved {
    /// The work goes on and its result is cached as usual (Synapse's behaviour).
    #[default]
    KeepRunning,
    /// The work is cancelled and its entry removed.
    Cancel,
}

/// Passed to the work by [`ResponseCache::wrap_with_context`] (Synapse's
/// `ResponseCacheContext`): the key, and a switch to not cache this result.
#[derive(Debug)]
pub struct ResponseCacheContext<K> {
    key: K,
    should_cache: Cell<bool>,
}

impl<K> ResponseCacheContext<K> {
    /// The key the work is for.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Whether the result will be kept after it completes (true unless changed).
    pub fn should_cache(&self) -> bool {
        self.should_cache.get()
    }

    /// Keeps (`true`) or drops (`false`) the result once it completes; callers already
    /// waiting get it either way.
    pub fn set_should_cache(&self, should_cache: bool) {
        self.should_cache.set(should_cache);
    }
}

/// Deduplicates concurrent requests for the same key and keeps each result for a while
/// (Synapse's `ResponseCache`). Cheap to clone; clones share the entries.
///
/// ```
/// use std::time::Duration;
/// use weft::{Clock, Deferred, ResponseCache};
///
/// let clock = Clock::new();
/// let cache: ResponseCache<&str, u32> = ResponseCache::new(&clock, "rooms", Duration::from_secs(2));
/// let work: Deferred<u32> = Deferred::new();
/// let w = work.clone();
/// let first = cache.wrap("room1", move || w);
/// let second = cache.wrap("room1", || -> u32 { unreachable!("deduplicated") });
/// work.callback(7).unwrap();
/// assert_eq!(first.take_result().unwrap().unwrap(), 7);
/// assert_eq!(second.take_result().unwrap().unwrap(), 7);
/// clock.advance(Duration::from_secs(2));
/// assert!(cache.is_empty());
/// ```
pub struct ResponseCache<K: Eq + Hash + Clone + 'static, V: Clone + 'static> {
    inner: Rc<Inner<K, V>>,
}

struct Inner<K, V: Clone + 'static> {
    name: String,
    time: Rc<dyn ReactorTime>,
    timeout: Duration,
    policy: WhenUnobserved,
    entries: RefCell<HashMap<K, Rc<Entry<V>>>>,
    /// Numbers the work contexts (`"{name}-{n}"`).
    started: Cell<u64>,
}

struct Entry<V: Clone + 'static> {
    result: ObservableDeferred<V>,
    /// Callers still waiting for the result.
    waiting: Cell<usize>,
    should_cache: Rc<dyn Fn() -> bool>,
    expiry: RefCell<Option<DelayedCall>>,
}

impl<K: Eq + Hash + Clone + 'static, V: Clone + 'static> ResponseCache<K, V> {
    /// A cache called `name` (for log contexts and logs) that keeps each result for
    /// `timeout` after it completes (zero: only while it is being computed), on `time`
    /// (the reactor, or a [`Clock`](crate::Clock) in tests).
    pub fn new(
        time: &(impl ReactorTime + Clone + 'static),
        name: impl Into<String>,
        timeout: Duration,
    ) -> Self {
        Self::with_policy(time, name, timeout, WhenUnobserved::KeepRunning)
    }

    /// As [`new`](Self::new), with a policy for work nobody waits for any more.
    pub fn with_policy(
        time: &(impl ReactorTime + Clone + 'static),
        name: impl Into<String>,
        timeout: Duration,
        policy: WhenUnobserved,
    ) -> Self {
        ResponseCache {
            inner: Rc::new(Inner {
                name: name.into(),
                time: Rc::new(time.clone()),
                timeout,
                policy,
                entries: RefCell::new(HashMap::new()),
                started: Cell::new(0),
            }),
        }
    }

    /// The result for `key`: the cached one, the one being computed, or a new one from
    /// `work` (called at once, in a fresh log context, only if there is no entry).
    ///
    /// # Cancellation
    ///
    /// Cancelling the returned Deferred detaches this caller; see the module docs.
    #[must_use = "the Deferred carries the result"]
    pub fn wrap<F, R>(&self, key: K, work: F) -> Deferred<V>
    where
        F: FnOnce() -> R,
        R: CallbackResult<V>,
    {
        if let Some(d) = self.get(&key) {
            return d;
        }
        self.start(key, |_| work(), Rc::new(|| true))
    }

    /// As [`wrap`](Self::wrap), handing `work` a [`ResponseCacheContext`] through which
    /// it can ask for its result not to be cached (Synapse's `cache_context=True`).
    #[must_use = "the Deferred carries the result"]
    pub fn wrap_with_context<F, R>(&self, key: K, work: F) -> Deferred<V>
    where
        F: FnOnce(Rc<ResponseCacheContext<K>>) -> R,
        R: CallbackResult<V>,
    {
        if let Some(d) = self.get(&key) {
            return d;
        }
        let context = Rc::new(ResponseCacheContext { key: key.clone(), should_cache: Cell::new(true) });
        let c = context.clone();
        self.start(key, move |_| work(c), Rc::new(move || context.should_cache()))
    }

    /// A new observer of the entry for `key`, if there is one (computing or cached).
    #[must_use = "the Deferred carries the result"]
    pub fn get(&self, key: &K) -> Option<Deferred<V>> {
        let entry = self.inner.entries.borrow().get(key).cloned()?;
        Some(observe(&self.inner, key, &entry))
    }

    /// The keys with an entry (computing or cached).
    pub fn keys(&self) -> Vec<K> {
        self.inner.entries.borrow().keys().cloned().collect()
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.inner.entries.borrow().len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.inner.entries.borrow().is_empty()
    }

    /// Forgets the entry for `key` (callers already waiting still get the result).
    pub fn unset(&self, key: &K) {
        let removed = self.inner.entries.borrow_mut().remove(key);
        if let Some(e) = &removed {
            let expiry = e.expiry.borrow_mut().take();
            if let Some(t) = expiry {
                let _ = t.cancel();
            }
        }
        drop(removed);
    }

    fn start<F, R>(&self, key: K, work: F, should_cache: Rc<dyn Fn() -> bool>) -> Deferred<V>
    where
        F: FnOnce(()) -> R,
        R: CallbackResult<V>,
    {
        let inner = &self.inner;
        let n = inner.started.get();
        inner.started.set(n + 1);
        let context = LoggingContext::new(format!("{}-{n}", inner.name));
        let source = context.run(|| work(()));
        // The cache's own bookkeeping never runs in the caller's context.
        let _sentinel = PreserveLoggingContext::sentinel();
        let entry = Rc::new(Entry {
            result: ObservableDeferred::new(source.clone(), true),
            waiting: Cell::new(0),
            should_cache,
            expiry: RefCell::new(None),
        });
        inner.entries.borrow_mut().insert(key.clone(), entry.clone());
        let (weak, k, e) = (Rc::downgrade(inner), key.clone(), Rc::downgrade(&entry));
        source.add_both(move |_: Result<V, Failure>| -> Next<V> {
            if let (Some(inner), Some(entry)) = (weak.upgrade(), e.upgrade()) {
                completed(&inner, &k, &entry);
            }
            Next::Consumed
        });
        observe(inner, &key, &entry)
    }
}

/// The work for `key` completed: keep a success for the timeout, drop anything else.
fn completed<K: Eq + Hash + Clone + 'static, V: Clone + 'static>(
    inner: &Rc<Inner<K, V>>,
    key: &K,
    entry: &Rc<Entry<V>>,
) {
    let current = inner.entries.borrow().get(key).is_some_and(|e| Rc::ptr_eq(e, entry));
    if !current {
        return;
    }
    let keep = entry.result.has_succeeded() && (entry.should_cache)() && !inner.timeout.is_zero();
    if !keep {
        let removed = inner.entries.borrow_mut().remove(key);
        drop(removed);
        return;
    }
    let (weak, k, e) = (Rc::downgrade(inner), key.clone(), Rc::downgrade(entry));
    let timer = inner.time.call_later(
        inner.timeout,
        Box::new(move || {
            if let (Some(inner), Some(entry)) = (weak.upgrade(), e.upgrade()) {
                let mut entries = inner.entries.borrow_mut();
                if entries.get(&k).is_some_and(|cur| Rc::ptr_eq(cur, &entry)) {
                    let removed = entries.remove(&k);
                    drop(entries);
                    drop(removed);
                }
            }
        }),
    );
    *entry.expiry.borrow_mut() = Some(timer);
}

/// A new caller of `entry`, counted while it waits.
fn observe<K: Eq + Hash + Clone + 'static, V: Clone + 'static>(
    inner: &Rc<Inner<K, V>>,
    key: &K,
    entry: &Rc<Entry<V>>,
) -> Deferred<V> {
    let d = entry.result.observe();
    if d.is_called() {
        return d;
    }
    entry.waiting.set(entry.waiting.get() + 1);
    let (weak, k, e) = (Rc::downgrade(inner), key.clone(), Rc::downgrade(entry));
    let _sentinel = PreserveLoggingContext::sentinel();
    d.add_both(move |r: Result<V, Failure>| -> Result<V, Failure> {
        if let Some(entry) = e.upgrade() {
            entry.waiting.set(entry.waiting.get() - 1);
            if entry.waiting.get() == 0 && !entry.result.has_called() {
                if let Some(inner) = weak.upgrade() {
                    unobserved(&inner, &k, &entry);
                }
            }
        }
        r
    });
    d
}

/// Every caller of a pending entry has cancelled.
fn unobserved<K: Eq + Hash + Clone + 'static, V: Clone + 'static>(
    inner: &Rc<Inner<K, V>>,
    key: &K,
    entry: &Rc<Entry<V>>,
) {
    match inner.policy {
        WhenUnobserved::KeepRunning => {
            log::debug!(target: "weft::cache", "{}: nobody waits for an entry any more; its work goes on", inner.name);
        }
        WhenUnobserved::Cancel => {
            log::debug!(target: "weft::cache", "{}: nobody waits for an entry any more; cancelling its work", inner.name);
            let removed = {
                let mut entries = inner.entries.borrow_mut();
                if entries.get(key).is_some_and(|cur| Rc::ptr_eq(cur, entry)) {
                    entries.remove(key)
                } else {
                    None
                }
            };
            drop(removed);
            entry.result.source().cancel();
        }
    }
}

impl<K: Eq + Hash + Clone + 'static, V: Clone + 'static> Clone for ResponseCache<K, V> {
    fn clone(&self) -> Self {
        ResponseCache { inner: self.inner.clone() }
    }
}

impl<K: Eq + Hash + Clone + 'static, V: Clone + 'static> fmt::Debug for ResponseCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("name", &self.inner.name)
            .field("entries", &self.len())
            .field("timeout", &self.inner.timeout)
            .field("policy", &self.inner.policy)
            .finish()
    }
}
