//! `DelayedCall` and the timer queue (`TimerHeap`) that both the reactor and the test
//! [`Clock`](super::Clock) keep their timers in.
//!
//! The heap is an indexed binary min-heap over `(deadline, sequence number)`: deadline
//! order, first-in first-out among equal deadlines. Entries live in a `Slab`; each entry
//! knows its index in the heap, so cancelling or resetting a timer removes or moves it in
//! O(log n) and frees its callback at once. A daemon that schedules and cancels millions
//! of timeouts keeps only the live ones, and gives the memory back: once fewer than a
//! quarter of the slab's slots have been in use for a second, the reactor's turn moves
//! the live entries down (their handles find them through the shared cell) and the slab
//! and heap shrink.
//!
//! The reactor's queue also keeps its [`Alarm`] (a `timerfd` in the readiness queue) no
//! later than the earliest deadline: `schedule`, `reset` and `delay` ask the alarm for
//! the heap's earliest deadline after each change (a `Cell` compare unless it moved
//! earlier; the alarm itself skips the system call while a driver turns the loop). A
//! cancel leaves the alarm early: the loop may wake once for nothing.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use slab::Slab;

use super::poll::Alarm;

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

/// The cell a call's handle shares with its entry: while the state is `Pending`, `index`
/// is the entry's slot (kept up to date when the slab is compacted), so a stale handle
/// never reaches a reused slot.
#[derive(Debug)]
struct KeyCell {
    state: Cell<CallState>,
    index: Cell<usize>,
}

#[derive(Clone, Debug)]
struct TimerKey(Rc<KeyCell>);

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
    /// The reactor's alarm, kept no later than the earliest deadline; `None` for a `Clock`.
    alarm: Option<Alarm>,
}

impl Timers {
    pub(crate) fn new(source: TimeSource) -> Rc<Timers> {
        Rc::new(Timers { source, heap: RefCell::new(TimerHeap::default()), alarm: None })
    }

    /// A queue on the real clock started at `start`, whose earliest deadline `alarm`
    /// follows.
    pub(crate) fn with_alarm(start: Instant, alarm: Alarm) -> Rc<Timers> {
        Rc::new(Timers {
            source: TimeSource::Real(start),
            heap: RefCell::new(TimerHeap::default()),
            alarm: Some(alarm),
        })
    }

    /// The alarm, for the reactor (always there on a reactor's queue).
    pub(crate) fn alarm(&self) -> Option<&Alarm> {
        self.alarm.as_ref()
    }

    /// The `Instant` a time on this queue's clock falls at (`None` on manual time).
    pub(crate) fn instant_at(&self, at: Duration) -> Option<Instant> {
        match &self.source {
            TimeSource::Real(start) => start.checked_add(at),
            TimeSource::Manual(_) => None,
        }
    }

    /// Asks the alarm for the earliest deadline, after the heap changed.
    #[inline]
    fn follow_earliest(&self) {
        if let Some(alarm) = &self.alarm {
            if let Some(at) = self.heap.borrow().peek_deadline() {
                alarm.request(at);
            }
        }
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
        self.follow_earliest();
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
                key: heap.entries[index].key.clone(),
            })
            .collect()
    }

    /// How many calls are pending.
    pub(crate) fn len(&self) -> usize {
        self.heap.borrow().entries.len()
    }

    /// Gives memory back after a spike ([`Sparse`]); the reactor calls it once a turn.
    pub(crate) fn shrink_if_sparse(&self, now: Duration) {
        let mut heap = self.heap.borrow_mut();
        if heap.sparse.should_shrink(heap.entries.len(), heap.entries.capacity(), SHRINK_FLOOR, now) {
            heap.compact();
        }
    }

    /// Drops every pending call (at shutdown), outside the borrow; their handles then
    /// report `AlreadyCancelled`.
    pub(crate) fn clear(&self) {
        let old = std::mem::take(&mut *self.heap.borrow_mut());
        for (_, e) in old.entries.iter() {
            e.key.0.state.set(CallState::Cancelled);
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
        timers.follow_earliest();
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
        timers.follow_earliest();
        result
    }

    /// True while the call has neither run nor been cancelled (Twisted's `active()`).
    #[doc(alias = "active")]
    pub fn is_active(&self) -> bool {
        self.key.0.state.get() == CallState::Pending && self.timers.upgrade().is_some()
    }

    /// When the call is due, as time since its clock's start (Twisted's `getTime`);
    /// `None` once it ran or was cancelled.
    pub fn get_time(&self) -> Option<Duration> {
        let timers = self.timers.upgrade()?;
        let heap = timers.heap.borrow();
        heap.index(&self.key).ok().map(|i| heap.entries[i].deadline)
    }
}

impl PartialEq for DelayedCall {
    /// True for two handles to the same scheduled call.
    fn eq(&self, other: &DelayedCall) -> bool {
        Rc::ptr_eq(&self.key.0, &other.key.0)
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
    key: TimerKey,
    callback: Box<dyn FnOnce()>,
}

/// Below this many slots the timer slab is never compacted.
const SHRINK_FLOOR: usize = 1024;

/// How long a table must stay under a quarter full before it is compacted: a spike that
/// comes back within this time keeps its memory, so a burst that repeats does not pay
/// for shrinking and growing again each time. (Short in unit tests.)
const SHRINK_AFTER: Duration = if cfg!(test) { Duration::from_millis(20) } else { Duration::from_secs(1) };

/// Since when a table (the timer slab, the reactor's source table) has been sparse:
/// under a quarter full, past its floor.
#[derive(Debug, Default)]
pub(crate) struct Sparse {
    since: Cell<Option<Duration>>,
}

impl Sparse {
    /// True if a table of `len` entries in `capacity` slots has been sparse for
    /// [`SHRINK_AFTER`] at `now`; the caller then compacts it. Checked once a turn, so
    /// the cost of compacting is paid at most once per spike, O(n) for a table of n.
    pub(crate) fn should_shrink(&self, len: usize, capacity: usize, floor: usize, now: Duration) -> bool {
        if capacity <= floor || len >= capacity / 4 {
            self.since.set(None);
            return false;
        }
        match self.since.get() {
            None => {
                self.since.set(Some(now));
                false
            }
            Some(since) if now.saturating_sub(since) < SHRINK_AFTER => false,
            Some(_) => {
                self.since.set(None);
                true
            }
        }
    }
}

/// The indexed min-heap; see the module docs.
#[derive(Default)]
pub(crate) struct TimerHeap {
    entries: Slab<Entry>,
    /// Slab indexes, heap-ordered by `(deadline, seq)`.
    heap: Vec<usize>,
    /// Sequence numbers order calls with equal deadlines first-in first-out.
    next_seq: u64,
    sparse: Sparse,
}

impl TimerHeap {
    fn insert(&mut self, deadline: Duration, callback: Box<dyn FnOnce()>) -> TimerKey {
        let seq = self.next_seq;
        self.next_seq += 1;
        let pos = self.heap.len();
        let vacant = self.entries.vacant_entry();
        let index = vacant.key();
        let key =
            TimerKey(Rc::new(KeyCell { state: Cell::new(CallState::Pending), index: Cell::new(index) }));
        vacant.insert(Entry { deadline, seq, heap_pos: pos, key: key.clone(), callback });
        self.heap.push(index);
        self.sift_up(pos);
        self.debug_check();
        key
    }

    /// The slab index of `key`'s entry, or why it has none.
    fn index(&self, key: &TimerKey) -> Result<usize, DelayedCallError> {
        match key.0.state.get() {
            CallState::Pending => Ok(key.0.index.get()),
            CallState::Called => Err(DelayedCallError::AlreadyCalled),
            CallState::Cancelled => Err(DelayedCallError::AlreadyCancelled),
        }
    }

    fn remove(&mut self, key: &TimerKey) -> Result<Box<dyn FnOnce()>, DelayedCallError> {
        let index = self.index(key)?;
        let pos = self.entries[index].heap_pos;
        let entry = self.remove_at(pos);
        entry.key.0.state.set(CallState::Cancelled);
        self.debug_check();
        Ok(entry.callback)
    }

    fn set_deadline(
        &mut self,
        key: &TimerKey,
        f: impl FnOnce(Duration) -> Duration,
    ) -> Result<(), DelayedCallError> {
        let index = self.index(key)?;
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
        entry.key.0.state.set(CallState::Called);
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

    /// Moves the live entries to the lowest slots (updating their heap positions and
    /// their handles' cells) and shrinks the slab and the heap to fit.
    fn compact(&mut self) {
        let heap = &mut self.heap;
        self.entries.compact(|entry, _from, to| {
            heap[entry.heap_pos] = to;
            entry.key.0.index.set(to);
            true
        });
        self.heap.shrink_to_fit();
    }

    /// The slab's and the heap's capacities, for tests.
    #[cfg(test)]
    fn capacities(&self) -> (usize, usize) {
        (self.entries.capacity(), self.heap.capacity())
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use super::{TimeSource, Timers, SHRINK_AFTER, SHRINK_FLOOR};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// After a spike of 100,000 timers, cancelling all but a few scattered ones gives the
    /// memory back; the survivors' handles still cancel, reset and fire them, in order.
    #[test]
    fn the_timer_heap_shrinks_after_a_spike_and_keeps_its_survivors() {
        let timers = Timers::new(TimeSource::Manual(Default::default()));
        let fired = Rc::new(RefCell::new(Vec::new()));
        let handles: Vec<_> = (0..100_000u64)
            .map(|i| {
                let f = fired.clone();
                timers.schedule(ms(100_000 - i), Box::new(move || f.borrow_mut().push(i)))
            })
            .collect();
        let (peak, _) = timers.heap.borrow().capacities();
        assert!(peak >= 100_000);
        let survivors = [7u64, 20_000, 50_001, 77_777, 99_999];
        for (i, h) in handles.iter().enumerate() {
            if !survivors.contains(&(i as u64)) {
                h.cancel().unwrap();
            }
        }
        // Nothing moves until the heap has been sparse for a while.
        timers.shrink_if_sparse(ms(0));
        assert_eq!(timers.heap.borrow().capacities().0, peak);
        timers.shrink_if_sparse(ms(1));
        assert_eq!(timers.heap.borrow().capacities().0, peak);
        timers.shrink_if_sparse(ms(1) + SHRINK_AFTER);
        let (entries, heap) = timers.heap.borrow().capacities();
        assert!(
            entries <= SHRINK_FLOOR && heap <= SHRINK_FLOOR,
            "slab {entries}, heap {heap} slots after the spike"
        );
        assert_eq!(timers.len(), 5);
        // The handles reach their moved entries.
        handles[20_000].cancel().unwrap();
        handles[7].reset(ms(1)).unwrap();
        assert_eq!(handles[99_999].get_time(), Some(ms(1)));
        assert_eq!(handles[7].get_time(), Some(ms(1)));
        while let Some(call) = timers.pop_due(ms(200_000)) {
            call();
        }
        assert_eq!(*fired.borrow(), [7, 99_999, 77_777, 50_001]);
    }

    /// A spike that comes back before the delay keeps its memory: no shrinking and
    /// growing again for a burst that repeats.
    #[test]
    fn a_spike_that_comes_back_soon_keeps_its_memory() {
        let timers = Timers::new(TimeSource::Manual(Default::default()));
        let burst = |timers: &std::rc::Rc<Timers>| {
            let handles: Vec<_> = (0..10_000).map(|_| timers.schedule(ms(5), Box::new(|| {}))).collect();
            handles.iter().for_each(|h| h.cancel().unwrap());
        };
        burst(&timers);
        let peak = timers.heap.borrow().capacities().0;
        timers.shrink_if_sparse(ms(0));
        burst(&timers);
        timers.shrink_if_sparse(SHRINK_AFTER / 2);
        burst(&timers);
        assert_eq!(timers.heap.borrow().capacities().0, peak);
    }
}
