//! `DelayedCall` and the timer queue (`TimerHeap`) that both the reactor and the test
//! [`Clock`](super::Clock) keep their timers in.
//!
//! The heap is an indexed binary min-heap over `(deadline, sequence number)`: deadline
//! order, first-in first-out among equal deadlines. Entries live in a `Slab`; each entry
//! knows its index in the heap, so cancelling or resetting a timer removes or moves it in
//! O(log n) and frees its callback at once. A daemon that schedules and cancels millions
//! of timeouts keeps only the live ones.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use slab::Slab;

/// A scheduled call (Twisted's `IDelayedCall`), returned by `call_later`.
///
/// Dropping a `DelayedCall` does *not* cancel it: the call still runs at its time.
/// Cloning gives another handle to the same call.
#[derive(Clone)]
pub struct DelayedCall {
    timers: Weak<Timers>,
    key: TimerKey,
}

/// Where a scheduled call is in its life; shared by the entry and its handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallState {
    Pending,
    Called,
    Cancelled,
}

/// The error `cancel`, `reset` and `delay` return when the call is no longer pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayedCallError {
    /// The call already ran (Twisted's `AlreadyCalled`).
    AlreadyCalled,
    /// The call was cancelled (Twisted's `AlreadyCancelled`).
    AlreadyCancelled,
}

impl fmt::Display for DelayedCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DelayedCallError::AlreadyCalled => f.write_str("delayed call already ran"),
            DelayedCallError::AlreadyCancelled => f.write_str("delayed call already cancelled"),
        }
    }
}

impl std::error::Error for DelayedCallError {}

/// A slab index plus the call's state cell: while the state is `Pending` the index is
/// the call's own slot, so a stale handle never reaches a reused slot.
#[derive(Clone, Debug)]
struct TimerKey {
    index: usize,
    state: Rc<Cell<CallState>>,
}

/// How the owner of a timer queue tells the time.
pub(crate) enum TimeSource {
    /// Time since `start`, read from the OS monotonic clock.
    Real(Instant),
    /// Virtual time, moved only by `Clock::advance`.
    Manual(Cell<Duration>),
}

/// A timer queue and the clock it runs on; shared by `Rc` with the `DelayedCall`s.
pub(crate) struct Timers {
    pub(crate) source: TimeSource,
    heap: RefCell<TimerHeap>,
}

impl Timers {
    pub(crate) fn new(source: TimeSource) -> Rc<Timers> {
        Rc::new(Timers { source, heap: RefCell::new(TimerHeap::default()) })
    }

    /// The current time, as a duration since the clock's start.
    pub(crate) fn now(&self) -> Duration {
        match &self.source {
            TimeSource::Real(start) => start.elapsed(),
            TimeSource::Manual(now) => now.get(),
        }
    }

    pub(crate) fn schedule(self: &Rc<Self>, delay: Duration, f: Box<dyn FnOnce()>) -> DelayedCall {
        let deadline = self.now().saturating_add(delay);
        // The call runs in the log context current now (unwrapped in the sentinel: the
        // owner of the queue runs due calls in the sentinel).
        let f = crate::logcontext::bind(f);
        let key = self.heap.borrow_mut().insert(deadline, f);
        DelayedCall { timers: Rc::downgrade(self), key }
    }

    /// Removes and returns the earliest call due at `now`, if any. The caller runs it
    /// outside every borrow.
    pub(crate) fn pop_due(&self, now: Duration) -> Option<Box<dyn FnOnce()>> {
        self.heap.borrow_mut().pop_due(now)
    }

    /// The earliest deadline, if any call is pending.
    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        self.heap.borrow().peek_deadline()
    }

    /// Handles to every pending call, in the order they will run (Twisted's
    /// `getDelayedCalls`).
    pub(crate) fn delayed_calls(self: &Rc<Self>) -> Vec<DelayedCall> {
        let heap = self.heap.borrow();
        let mut calls: Vec<_> = heap.entries.iter().map(|(index, e)| (e.deadline, e.seq, index)).collect();
        calls.sort_unstable();
        calls
            .into_iter()
            .map(|(_, _, index)| DelayedCall {
                timers: Rc::downgrade(self),
                key: TimerKey { index, state: heap.entries[index].state.clone() },
            })
            .collect()
    }

    /// How many calls are pending.
    pub(crate) fn len(&self) -> usize {
        self.heap.borrow().entries.len()
    }

    /// Drops every pending call (at shutdown), outside the borrow; their handles then
    /// report `AlreadyCancelled`.
    pub(crate) fn clear(&self) {
        let old = std::mem::take(&mut *self.heap.borrow_mut());
        for (_, e) in old.entries.iter() {
            e.state.set(CallState::Cancelled);
        }
        drop(old);
    }
}

impl DelayedCall {
    /// Cancels the call; its callback is dropped at once.
    ///
    /// # Errors
    ///
    /// [`DelayedCallError`] if it already ran or was cancelled.
    pub fn cancel(&self) -> Result<(), DelayedCallError> {
        let timers = self.timers.upgrade().ok_or(DelayedCallError::AlreadyCancelled)?;
        let removed = timers.heap.borrow_mut().remove(&self.key);
        match removed {
            Ok(callback) => {
                drop(callback);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Reschedules the call to run `delay` from now.
    ///
    /// # Errors
    ///
    /// [`DelayedCallError`] if it already ran or was cancelled.
    pub fn reset(&self, delay: Duration) -> Result<(), DelayedCallError> {
        let timers = self.timers.upgrade().ok_or(DelayedCallError::AlreadyCancelled)?;
        let deadline = timers.now().saturating_add(delay);
        let result = timers.heap.borrow_mut().set_deadline(&self.key, |_| deadline);
        result
    }

    /// Postpones the call by `extra` (Twisted's `delay`).
    ///
    /// # Errors
    ///
    /// [`DelayedCallError`] if it already ran or was cancelled.
    pub fn delay(&self, extra: Duration) -> Result<(), DelayedCallError> {
        let timers = self.timers.upgrade().ok_or(DelayedCallError::AlreadyCancelled)?;
        let result = timers.heap.borrow_mut().set_deadline(&self.key, |old| old.saturating_add(extra));
        result
    }

    /// True while the call has neither run nor been cancelled (Twisted's `active()`).
    #[doc(alias = "active")]
    pub fn is_active(&self) -> bool {
        self.key.state.get() == CallState::Pending && self.timers.upgrade().is_some()
    }

    /// When the call is due, as time since its clock's start (Twisted's `getTime`);
    /// `None` once it ran or was cancelled.
    pub fn get_time(&self) -> Option<Duration> {
        let timers = self.timers.upgrade()?;
        let heap = timers.heap.borrow();
        heap.state(&self.key).ok().map(|i| heap.entries[i].deadline)
    }
}

impl PartialEq for DelayedCall {
    /// True for two handles to the same scheduled call.
    fn eq(&self, other: &DelayedCall) -> bool {
        Rc::ptr_eq(&self.key.state, &other.key.state)
    }
}

impl Eq for DelayedCall {}

impl fmt::Debug for DelayedCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelayedCall").field("time", &self.get_time()).finish()
    }
}

struct Entry {
    deadline: Duration,
    seq: u64,
    heap_pos: usize,
    state: Rc<Cell<CallState>>,
    callback: Box<dyn FnOnce()>,
}

/// The indexed min-heap; see the module docs.
#[derive(Default)]
pub(crate) struct TimerHeap {
    entries: Slab<Entry>,
    /// Slab indexes, heap-ordered by `(deadline, seq)`.
    heap: Vec<usize>,
    /// Sequence numbers order calls with equal deadlines first-in first-out.
    next_seq: u64,
}

impl TimerHeap {
    fn insert(&mut self, deadline: Duration, callback: Box<dyn FnOnce()>) -> TimerKey {
        let seq = self.next_seq;
        self.next_seq += 1;
        let pos = self.heap.len();
        let state = Rc::new(Cell::new(CallState::Pending));
        let index =
            self.entries.insert(Entry { deadline, seq, heap_pos: pos, state: state.clone(), callback });
        self.heap.push(index);
        self.sift_up(pos);
        self.debug_check();
        TimerKey { index, state }
    }

    /// The slab index of `key`'s entry, or why it has none.
    fn state(&self, key: &TimerKey) -> Result<usize, DelayedCallError> {
        match key.state.get() {
            CallState::Pending => Ok(key.index),
            CallState::Called => Err(DelayedCallError::AlreadyCalled),
            CallState::Cancelled => Err(DelayedCallError::AlreadyCancelled),
        }
    }

    fn remove(&mut self, key: &TimerKey) -> Result<Box<dyn FnOnce()>, DelayedCallError> {
        let index = self.state(key)?;
        let pos = self.entries[index].heap_pos;
        let entry = self.remove_at(pos);
        entry.state.set(CallState::Cancelled);
        self.debug_check();
        Ok(entry.callback)
    }

    fn set_deadline(
        &mut self,
        key: &TimerKey,
        f: impl FnOnce(Duration) -> Duration,
    ) -> Result<(), DelayedCallError> {
        let index = self.state(key)?;
        let entry = &mut self.entries[index];
        let old = entry.deadline;
        entry.deadline = f(old);
        let pos = entry.heap_pos;
        if entry.deadline < old {
            self.sift_up(pos);
        } else {
            self.sift_down(pos);
        }
        self.debug_check();
        Ok(())
    }

    fn peek_deadline(&self) -> Option<Duration> {
        self.heap.first().map(|&i| self.entries[i].deadline)
    }

    fn pop_due(&mut self, now: Duration) -> Option<Box<dyn FnOnce()>> {
        let &top = self.heap.first()?;
        if self.entries[top].deadline > now {
            return None;
        }
        let entry = self.remove_at(0);
        entry.state.set(CallState::Called);
        self.debug_check();
        Some(entry.callback)
    }

    fn remove_at(&mut self, pos: usize) -> Entry {
        let last = self.heap.len() - 1;
        self.heap.swap(pos, last);
        let index = self.heap.pop().expect("heap is not empty");
        if pos < self.heap.len() {
            let moved = self.heap[pos];
            self.entries[moved].heap_pos = pos;
            self.sift_down(pos);
            self.sift_up(pos);
        }
        self.entries.remove(index)
    }

    fn less(&self, a: usize, b: usize) -> bool {
        let (ea, eb) = (&self.entries[self.heap[a]], &self.entries[self.heap[b]]);
        (ea.deadline, ea.seq) < (eb.deadline, eb.seq)
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        let (ia, ib) = (self.heap[a], self.heap[b]);
        self.entries[ia].heap_pos = a;
        self.entries[ib].heap_pos = b;
    }

    fn sift_up(&mut self, mut pos: usize) {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if !self.less(pos, parent) {
                break;
            }
            self.swap(pos, parent);
            pos = parent;
        }
    }

    fn sift_down(&mut self, mut pos: usize) {
        loop {
            let (l, r) = (2 * pos + 1, 2 * pos + 2);
            let mut smallest = pos;
            if l < self.heap.len() && self.less(l, smallest) {
                smallest = l;
            }
            if r < self.heap.len() && self.less(r, smallest) {
                smallest = r;
            }
            if smallest == pos {
                break;
            }
            self.swap(pos, smallest);
            pos = smallest;
        }
    }

    #[inline]
    fn debug_check(&self) {
        #[cfg(debug_assertions)]
        if self.heap.len() <= 64 {
            for (pos, &i) in self.heap.iter().enumerate() {
                debug_assert_eq!(self.entries[i].heap_pos, pos);
                if pos > 0 {
                    debug_assert!(!self.less(pos, (pos - 1) / 2), "heap order broken");
                }
            }
        }
    }
}
