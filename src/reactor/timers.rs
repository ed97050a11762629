//! `DelayedCall` and the timer queue (`TimerWheel`) that both the reactor and the test
//! [`Clock`](super::Clock) keep their timers in.
//!
//! # The wheel
//!
//! A hierarchical timing wheel, as tokio's and the Linux kernel's, with exact deadlines.
//! Time is cut into ticks of 2^20 ns (about a millisecond). Level 0 has 64 slots of one
//! tick, level 1 64 slots of 64 ticks, and so on for six levels (about two years); a
//! call further away waits in an overflow heap. A call sits at the lowest level whose
//! slots still tell it apart from the wheel's current tick (`elapsed`), in the slot its
//! deadline falls in, so every call at level L is due before every call at level L + 1,
//! and slots within a level are in time order. When `elapsed` reaches a slot, its calls
//! move down a level (each call moves at most six times in its life, by a push onto a
//! vector), and the calls of the current tick go into `ready`, a sorted run and a small
//! binary heap ordered by (exact deadline, sequence number). So calls run in deadline
//! order, first-in first-out among equal deadlines, exactly as a heap over all of them
//! would run them, but no operation touches more than one tick's worth of calls at a
//! time: the cost per timer stays flat from a thousand to a million pending.
//!
//! # Cancel and reset
//!
//! A call is one allocation (`Call<F>`: its state, deadline and the callback), shared by
//! the wheel's entry and the `DelayedCall` handles. Cancelling marks it cancelled and
//! drops the callback at once, O(1); its entry stays in the wheel as a tombstone,
//! dropped when the wheel reaches it, or by a purge once tombstones outnumber the
//! live calls (O(n) for n entries, so O(1) amortized per cancel, and the wheel never
//! holds more than about twice the live calls). A reset or delay is a cancel of the old
//! entry and an insert of a new one for the same call, which keeps its sequence number
//! (its place among equal deadlines).
//!
//! Each slot keeps the earliest deadline put in it, so the earliest deadline of the
//! whole queue is found in O(levels). A cancel can leave that value early (the slot's
//! earliest call is gone): the reactor's turn and alarm use it as it is (waking at worst
//! once for nothing, then the wheel has moved past it); the exact `next_deadline` scans
//! that one slot again.
//!
//! Memory: the slots' vectors are given back to a small pool of spares when emptied
//! (large ones to the thread, for the next slot or run about to grow that large, of this
//! wheel or another: `free_list::give_buffer`), and once the queue has stayed under a
//! quarter of its peak for a second (past 1,024 entries), checked once a turn
//! (`Sparse`), tombstones are purged and every vector is shrunk, so a spike gives its
//! memory back and a burst that repeats keeps it.
//!
//! The reactor's queue also keeps its [`Alarm`] (a `timerfd` in the readiness queue) no
//! later than the earliest deadline: `schedule`, `reset` and `delay` ask the alarm for
//! the earliest deadline after each change, if someone waits on the descriptor (a
//! `Cell` compare unless it moved earlier; the alarm itself skips the system call while
//! a driver turns the loop). A cancel leaves the alarm early: the loop may wake once for
//! nothing.

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::mem;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use super::poll::Alarm;
use crate::free_list;
use crate::logcontext::Captured;

/// A scheduled call (Twisted's `IDelayedCall`), returned by `call_later`.
///
/// Dropping a `DelayedCall` does *not* cancel it: the call still runs at its time.
/// Cloning gives another handle to the same call; handles are equal when they are
/// handles to the same call, and order as the calls run (by due time, then in the order
/// they were scheduled).
#[derive(Clone)]
pub struct DelayedCall {
    timers: Weak<Timers>,
    call: Rc<DynCall>,
}

/// Where a scheduled call is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallState {
    /// In the wheel, with its callback.
    Pending,
    /// Taken out of the wheel to run; its callback is gone or running.
    Called,
    /// Cancelled (or dropped with its queue); its callback was dropped at once.
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
    wheel: RefCell<TimerWheel>,
    /// The reactor's alarm, kept no later than the earliest deadline; `None` for a `Clock`.
    alarm: Option<Alarm>,
}

/// A call taken out of the queue because it is due; the owner runs it outside every
/// borrow, in the sentinel.
pub(crate) struct Due(Rc<DynCall>);

impl Drop for Due {
    /// The last reference keeps the call for reuse if it may (see `reuse_if_last`).
    fn drop(&mut self) {
        reuse_if_last(&self.0);
    }
}

impl Due {
    /// When the call was due (on the timers' clock).
    pub(crate) fn deadline(&self) -> Duration {
        self.0.info.time.get()
    }

    /// Runs the call's callback (its log context, if any, is bound inside it).
    pub(crate) fn run(self) {
        self.0.run();
    }
}

impl Timers {
    pub(crate) fn new(source: TimeSource) -> Rc<Timers> {
        Rc::new(Timers { source, wheel: RefCell::new(TimerWheel::default()), alarm: None })
    }

    /// A queue on the real clock started at `start`, whose earliest deadline `alarm`
    /// follows.
    pub(crate) fn with_alarm(start: Instant, alarm: Alarm) -> Rc<Timers> {
        Rc::new(Timers {
            source: TimeSource::Real(start),
            wheel: RefCell::new(TimerWheel::default()),
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

    /// Asks the alarm for the earliest deadline, after the queue changed, if someone
    /// may be waiting on the reactor's descriptor.
    #[inline]
    fn follow_earliest(&self) {
        if let Some(alarm) = &self.alarm {
            if alarm.takes_requests() {
                if let Some(at) = self.wake_hint() {
                    alarm.request(at);
                }
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

    /// Schedules `f` to run `delay` from now, in the log context current now (the owner
    /// of the queue runs due calls in the sentinel). One allocation: the call.
    pub(crate) fn schedule<F: FnOnce() + 'static>(self: &Rc<Self>, delay: Duration, f: F) -> DelayedCall {
        let time = self.now().saturating_add(delay);
        let captured = Captured::capture();
        let call = if captured.is_sentinel() {
            make_call(time, f)
        } else {
            make_call(time, move || captured.run(f))
        };
        self.wheel.borrow_mut().insert(call.clone());
        self.follow_earliest();
        DelayedCall { timers: Rc::downgrade(self), call }
    }

    /// Removes and returns the earliest call due at `now`, if any. The caller runs it
    /// outside every borrow.
    pub(crate) fn pop_due(&self, now: Duration) -> Option<Due> {
        self.wheel.borrow_mut().pop_due(now).map(Due)
    }

    /// The earliest deadline, exactly, if any call is pending.
    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        self.wheel.borrow_mut().earliest(Exactness::Exact)
    }

    /// A time no later than the earliest deadline, and equal to it unless a cancel left
    /// it early; cheap, for the reactor's wait and its alarm.
    pub(crate) fn wake_hint(&self) -> Option<Duration> {
        self.wheel.borrow_mut().earliest(Exactness::LowerBound)
    }

    /// Handles to every pending call, in the order they will run (Twisted's
    /// `getDelayedCalls`).
    pub(crate) fn delayed_calls(self: &Rc<Self>) -> Vec<DelayedCall> {
        let calls = self.wheel.borrow().pending_in_order();
        calls.into_iter().map(|call| DelayedCall { timers: Rc::downgrade(self), call }).collect()
    }

    /// How many calls are pending.
    pub(crate) fn len(&self) -> usize {
        self.wheel.borrow().live
    }

    /// True if the wheel holds nothing at all (no call, no tombstone): `pop_due` would
    /// find nothing, whatever the time.
    pub(crate) fn is_empty(&self) -> bool {
        self.wheel.borrow().stored == 0
    }

    /// Gives memory back after a spike ([`Sparse`]); the reactor calls it once a turn.
    pub(crate) fn shrink_if_sparse(&self, now: impl FnOnce() -> Duration) {
        let mut wheel = self.wheel.borrow_mut();
        if wheel.sparse.should_shrink(wheel.stored, wheel.peak, SHRINK_FLOOR, now) {
            wheel.shrink();
        }
    }

    /// Drops every pending call (at shutdown), outside the borrow; their handles then
    /// report `AlreadyCancelled`.
    pub(crate) fn clear(&self) {
        let old = std::mem::take(&mut *self.wheel.borrow_mut());
        drop(old); // `TimerWheel::drop` cancels what was pending.
    }
}

impl Drop for DelayedCall {
    /// The last reference keeps the call for reuse if it may (see `reuse_if_last`).
    fn drop(&mut self) {
        reuse_if_last(&self.call);
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
        let state = self.call.state();
        state.check()?;
        state.state.set(CallState::Cancelled);
        timers.wheel.borrow_mut().forget(state);
        // Outside the borrow: the callback's captures may schedule or cancel timers as
        // they drop.
        self.call.discard();
        Ok(())
    }

    /// Reschedules the call to run `delay` from now.
    ///
    /// # Errors
    ///
    /// [`DelayedCallError`] if it already ran or was cancelled.
    pub fn reset(&self, delay: Duration) -> Result<(), DelayedCallError> {
        let timers = self.timers.upgrade().ok_or(DelayedCallError::AlreadyCancelled)?;
        self.call.state().check()?;
        let time = timers.now().saturating_add(delay);
        timers.wheel.borrow_mut().reschedule(&self.call, time);
        timers.follow_earliest();
        Ok(())
    }

    /// Postpones the call by `extra` (Twisted's `delay`).
    ///
    /// # Errors
    ///
    /// [`DelayedCallError`] if it already ran or was cancelled.
    pub fn delay(&self, extra: Duration) -> Result<(), DelayedCallError> {
        let timers = self.timers.upgrade().ok_or(DelayedCallError::AlreadyCancelled)?;
        let state = self.call.state();
        state.check()?;
        let time = state.time.get().saturating_add(extra);
        timers.wheel.borrow_mut().reschedule(&self.call, time);
        timers.follow_earliest();
        Ok(())
    }

    /// True while the call has neither run nor been cancelled (Twisted's `active()`).
    #[doc(alias = "active")]
    pub fn is_active(&self) -> bool {
        self.call.state().state.get() == CallState::Pending && self.timers.upgrade().is_some()
    }

    /// When the call is due, as time since its clock's start (Twisted's `getTime`);
    /// `None` once it ran or was cancelled.
    pub fn get_time(&self) -> Option<Duration> {
        self.timers.upgrade()?;
        let state = self.call.state();
        (state.state.get() == CallState::Pending).then(|| state.time.get())
    }
}

impl PartialEq for DelayedCall {
    /// True for two handles to the same scheduled call.
    fn eq(&self, other: &DelayedCall) -> bool {
        Rc::ptr_eq(&self.call, &other.call)
    }
}

impl Eq for DelayedCall {}

impl PartialOrd for DelayedCall {
    fn partial_cmp(&self, other: &DelayedCall) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DelayedCall {
    /// Orders calls as their clock runs them (Twisted compares `DelayedCall`s by time):
    /// by due time, then, among calls due together, in the order they were first
    /// scheduled. Only handles to the same call are equal (calls of two clocks that tie
    /// are told apart by address). A call that ran or was cancelled keeps its last due
    /// time; a reset moves it, so do not keep handles in a sorted collection across one.
    fn cmp(&self, other: &DelayedCall) -> Ordering {
        let (a, b) = (self.call.state(), other.call.state());
        (a.time.get(), a.seq.get())
            .cmp(&(b.time.get(), b.seq.get()))
            .then_with(|| Rc::as_ptr(&self.call).cast::<()>().cmp(&Rc::as_ptr(&other.call).cast::<()>()))
    }
}

impl fmt::Debug for DelayedCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelayedCall").field("time", &self.get_time()).finish()
    }
}

/// A call's state, shared by its wheel entries and its handles.
struct CallInfo {
    state: Cell<CallState>,
    /// The deadline as a wheel key (`key(time)`): an entry whose deadline differs is
    /// a tombstone left by a reset.
    key: Cell<u64>,
    /// The exact deadline, for `get_time`.
    time: Cell<Duration>,
    /// The order among equal deadlines, given when the call is first scheduled.
    seq: Cell<u64>,
    /// The entry's index in its slot's vector, while it is in a slot.
    index: Cell<u32>,
}

impl CallInfo {
    /// `Ok` while pending, else the error `cancel`, `reset` and `delay` report.
    fn check(&self) -> Result<(), DelayedCallError> {
        match self.state.get() {
            CallState::Pending => Ok(()),
            CallState::Called => Err(DelayedCallError::AlreadyCalled),
            CallState::Cancelled => Err(DelayedCallError::AlreadyCancelled),
        }
    }
}

/// A call and its callback, in one allocation; `Call<dyn Callback>` (a `DynCall`)
/// whatever the callback's type, with `info` at a fixed offset (no virtual call to
/// reach it).
struct Call<C: ?Sized> {
    info: CallInfo,
    callback: C,
}

type DynCall = Call<dyn Callback>;

impl CallInfo {
    /// A pending call's bookkeeping, due at `time` (its order is given when inserted).
    fn new(time: Duration) -> CallInfo {
        CallInfo {
            state: Cell::new(CallState::Pending),
            key: Cell::new(key(time)),
            time: Cell::new(time),
            seq: Cell::new(0),
            index: Cell::new(0),
        }
    }

    /// Makes it what [`new`](Self::new) makes, for a call kept for reuse.
    fn renew(&self, time: Duration) {
        let CallInfo { state, key, time, seq, index } = CallInfo::new(time);
        self.state.set(state.into_inner());
        self.key.set(key.into_inner());
        self.time.set(time.into_inner());
        self.seq.set(seq.into_inner());
        self.index.set(index.into_inner());
    }
}

impl<F: FnOnce()> Call<Cell<Option<F>>> {
    fn new(time: Duration, f: F) -> Self {
        Call { info: CallInfo::new(time), callback: Cell::new(Some(f)) }
    }
}

/// A call to run `f` at `time`: one kept for reuse if the thread has one of its type
/// (see `free_list.rs`), else a new allocation.
fn make_call<F: FnOnce() + 'static>(time: Duration, f: F) -> Rc<DynCall> {
    let id = TypeId::of::<Cell<Option<F>>>();
    if let Some(call) = free_list::take::<DynCall>(id, free_list::cost_of::<Call<Cell<Option<F>>>>()) {
        if let Some(slot) = call.callback.as_any().downcast_ref::<Cell<Option<F>>>() {
            call.info.renew(time);
            slot.set(Some(f));
            return call;
        }
    }
    Rc::new(Call::new(time, f))
}

/// A reference to `call` (a handle's, or the one the turn ran it from) is going: if it
/// is the last, keeps the call for a later one of its type (see [`reuse`]). The test is
/// inline: most drops of a handle are not the last.
#[inline(always)]
fn reuse_if_last(call: &Rc<DynCall>) {
    if Rc::strong_count(call) == 1 {
        reuse(call);
    }
}

/// The last reference to `call` is going: keeps it for a later call of its type if the
/// thread's free list has room. No entry of the wheel refers to it (an entry, tombstones
/// included, holds a reference), and there are no weak references to calls, so nothing
/// can reach it once kept.
fn reuse(call: &Rc<DynCall>) {
    debug_assert_eq!(Rc::strong_count(call), 1);
    let cost = free_list::cost_of_val::<DynCall>(call);
    if !free_list::has_room(cost) {
        return;
    }
    // Run or cancelled, the callback is gone already; drop it if not.
    call.discard();
    free_list::give(call.callback.kind(), cost, call);
}

impl DynCall {
    #[inline]
    fn state(&self) -> &CallInfo {
        &self.info
    }

    /// Takes the callback out and runs it.
    fn run(&self) {
        self.callback.run();
    }

    /// Takes the callback out and drops it.
    fn discard(&self) {
        self.callback.discard();
    }
}

/// A callback that runs once, from a shared reference.
trait Callback {
    fn run(&self);
    fn discard(&self);
    /// The callback as `Any`, to refill a call kept for reuse with a callback of its type.
    fn as_any(&self) -> &dyn Any;
    /// The callback's type: the key of the free list its call goes to.
    fn kind(&self) -> TypeId;
}

impl<F: FnOnce() + 'static> Callback for Cell<Option<F>> {
    fn run(&self) {
        if let Some(f) = self.take() {
            f();
        }
    }

    fn discard(&self) {
        drop(self.take());
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn kind(&self) -> TypeId {
        TypeId::of::<Self>()
    }
}

/// A deadline as the wheel orders it: nanoseconds since the clock's start, saturating
/// after about 584 years (calls due later than that run in the order they were made).
#[inline]
fn key(time: Duration) -> u64 {
    u64::try_from(time.as_nanos()).unwrap_or(u64::MAX)
}

/// log2 of a tick in nanoseconds: a tick is 2^20 ns, about a millisecond.
const TICK_SHIFT: u32 = 20;
/// log2 of the slots per level.
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// Levels of the wheel: 64^6 ticks, about 2.3 years; later calls wait in the overflow.
const LEVELS: usize = 6;
/// At most this many empty slot vectors are kept for reuse, each of at most
/// `SPARE_MAX_CAPACITY` entries.
const SPARES: usize = 64;
const SPARE_MAX_CAPACITY: usize = 16;
/// A slot of more entries than this that falls due whole becomes `ready`'s sorted run;
/// fewer go into its heap, where they cost less than a run's setting up.
const RUN_MIN: usize = 8;
/// The room `ready`'s heap is made with, and brought back to when the wheel empties.
const READY_HEAP_FIRST: usize = 4;
/// Tombstones are purged once there are more of them than live calls, and this many.
const PURGE_FLOOR: usize = 64;

#[inline]
fn tick_of(deadline: u64) -> u64 {
    deadline >> TICK_SHIFT
}

/// The level a call due at tick `when` sits at while the wheel is at tick `elapsed`
/// (`when > elapsed`): the level of the highest bit in which they differ.
#[inline]
fn level_for(elapsed: u64, when: u64) -> usize {
    let masked = (elapsed ^ when) | (SLOTS as u64 - 1);
    let significant = 63 - masked.leading_zeros();
    (significant / SLOT_BITS) as usize
}

#[inline]
fn slot_for(when: u64, level: usize) -> usize {
    ((when >> (SLOT_BITS * level as u32)) & (SLOTS as u64 - 1)) as usize
}

/// A call's place in a queue: its deadline (`u64` key or exact `Duration`), its order
/// among equal deadlines, and the call.
struct Queued<At> {
    deadline: At,
    seq: u64,
    call: Rc<DynCall>,
}

/// An entry of `ready` or of a slot, by key.
type Entry = Queued<u64>;

/// An entry of the overflow heap, beyond the wheel's reach: by exact deadline, since
/// keys saturate (calls due after about 584 years keep their order).
type Far = Queued<Duration>;

/// A deadline an entry can be ordered by, and compared with its call's.
trait Deadline: Ord + Copy {
    fn of(info: &CallInfo) -> Self;
}

impl Deadline for u64 {
    #[inline]
    fn of(info: &CallInfo) -> u64 {
        info.key.get()
    }
}

impl Deadline for Duration {
    #[inline]
    fn of(info: &CallInfo) -> Duration {
        info.time.get()
    }
}

impl<At: Deadline> Queued<At> {
    /// False for a tombstone: the call ran, was cancelled, or was moved by a reset.
    #[inline]
    fn is_live(&self) -> bool {
        let info = self.call.state();
        info.state.get() == CallState::Pending && At::of(info) == self.deadline
    }
}

// `BinaryHeap` is a max-heap: the entry due first is the greatest.
impl<At: Deadline> Ord for Queued<At> {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}

impl<At: Deadline> PartialOrd for Queued<At> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<At: Deadline> PartialEq for Queued<At> {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}

impl<At: Deadline> Eq for Queued<At> {}

/// One slot: the entries due within its span (in no order), and the earliest deadline
/// put in it (`u64::MAX` when empty), which a removal may leave early (the level's
/// `dirty` bit says so).
struct Slot {
    entries: Vec<Entry>,
    min: u64,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot { entries: Vec::new(), min: u64::MAX }
    }
}

/// Which earliest deadline a caller needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Exactness {
    /// Exact: a slot whose earliest call was removed is scanned again.
    Exact,
    /// No later than the exact one.
    LowerBound,
}

/// The timing wheel; see the module docs.
///
/// Where an entry is: `ready` if its tick is at most `elapsed`; else, if its key is not
/// saturated and `level_for(elapsed, tick) < LEVELS`, in that level's slot for its tick,
/// at the index its call records; else in `overflow`. An entry stays where it is put
/// until the wheel reaches its slot, so the place of a pending call's entry follows from
/// its deadline and `elapsed` alone: a cancel or reset finds it in O(1).
#[derive(Default)]
pub(crate) struct TimerWheel {
    /// The tick the wheel has reached: every entry due at or before it is in `ready`,
    /// every later one in a slot or in `overflow`. Never past the time of the last
    /// `pop_due`.
    elapsed: u64,
    /// Entries of ticks up to `elapsed`, by (deadline, sequence number), tombstones
    /// included (they leave with the next `pop_due` that reaches them).
    ready: Ready,
    /// `LEVELS * SLOTS` slots, level by level; allocated with the first call.
    slots: Vec<Slot>,
    /// Per level, bit s is set while slot s holds entries.
    occupied: [u64; LEVELS],
    /// Per level, bit s is set when slot s's `min` may be early.
    dirty: [u64; LEVELS],
    /// Entries beyond the last level's reach, and every entry whose key saturated, by
    /// (exact deadline, sequence number), tombstones included.
    overflow: BinaryHeap<Far>,
    /// Empty slot vectors kept for reuse, so a slot that fills and empties each tick does
    /// not allocate each time.
    spare: Vec<Vec<Entry>>,
    next_seq: u64,
    /// Calls pending.
    live: usize,
    /// Entries held, tombstones included.
    stored: usize,
    /// The most entries held since the last shrink, for `Sparse`.
    peak: usize,
    sparse: Sparse,
}

impl TimerWheel {
    /// Adds a newly scheduled call.
    fn insert(&mut self, call: Rc<DynCall>) {
        if self.slots.is_empty() {
            self.slots.resize_with(LEVELS * SLOTS, Slot::default);
            self.ready.heap.reserve_exact(READY_HEAP_FIRST);
        }
        let info = call.state();
        let seq = self.next_seq;
        self.next_seq += 1;
        info.seq.set(seq);
        let deadline = info.key.get();
        self.live += 1;
        self.stored += 1;
        self.peak = self.peak.max(self.stored);
        self.place(Entry { deadline, seq, call });
        self.debug_check();
    }

    /// Moves a pending call to `time`: its old entry is removed (or left as a tombstone
    /// in `ready` or `overflow`) and a new one placed, with the call's sequence number.
    fn reschedule(&mut self, call: &Rc<DynCall>, time: Duration) {
        let info = call.state();
        if info.time.replace(time) == time {
            return;
        }
        self.remove(info.key.get(), info.index.get());
        info.key.set(key(time));
        self.stored += 1;
        self.peak = self.peak.max(self.stored);
        self.place(Entry { deadline: key(time), seq: info.seq.get(), call: call.clone() });
        self.purge_if_mostly_tombstones();
        self.debug_check();
    }

    /// A pending call was cancelled (its state says so already).
    fn forget(&mut self, info: &CallInfo) {
        self.live -= 1;
        self.remove(info.key.get(), info.index.get());
        self.purge_if_mostly_tombstones();
        self.release_if_empty();
        self.debug_check();
    }

    /// Once the wheel holds nothing, frees the spare vectors and the run's buffer and
    /// brings the heap back to its first size: what an empty wheel holds does not depend
    /// on its past (the slots' vectors are all empty and given back already).
    #[inline]
    fn release_if_empty(&mut self) {
        if self.stored == 0 {
            self.release();
        }
    }

    #[cold]
    fn release(&mut self) {
        let run = mem::take(&mut self.ready.run);
        self.recycle(Vec::from(run));
        self.spare = Vec::new();
        self.ready.heap.shrink_to(READY_HEAP_FIRST);
    }

    /// Puts a live entry where it belongs given `elapsed`.
    fn place(&mut self, entry: Entry) {
        match self.place_of(entry.deadline) {
            Place::Ready => self.place_ready(entry),
            Place::Far => {
                let time = entry.call.state().time.get();
                self.overflow.push(Far { deadline: time, seq: entry.seq, call: entry.call });
            }
            Place::Slot(level, s) => {
                let slot = &mut self.slots[level * SLOTS + s];
                if slot.entries.capacity() == 0 {
                    if let Some(spare) = self.spare.pop() {
                        slot.entries = spare;
                    }
                }
                slot.min = slot.min.min(entry.deadline);
                // About to grow: into a larger vector the thread kept, if any (the
                // entries keep their indexes).
                if let Some(mut larger) = kept_for_growth(slot.entries.len(), slot.entries.capacity()) {
                    larger.append(&mut slot.entries);
                    let emptied = mem::replace(&mut slot.entries, larger);
                    self.recycle(emptied);
                }
                let slot = &mut self.slots[level * SLOTS + s];
                entry.call.state().index.set(slot.entries.len() as u32);
                slot.entries.push(entry);
                self.occupied[level] |= 1 << s;
            }
        }
    }

    /// Puts an entry of a tick the wheel has reached into `ready`: at the back of the
    /// sorted run if it comes after the run's last entry (a burst of `call_later(0)`
    /// arrives in order, and popping the run is O(1) where the heap sifts through its
    /// depth), else into the heap. An empty run takes a spare vector, so a call
    /// scheduled for now on each turn does not allocate each time.
    #[inline]
    fn place_ready(&mut self, entry: Entry) {
        let run = &mut self.ready.run;
        match run.back() {
            Some(last) if (last.deadline, last.seq) > (entry.deadline, entry.seq) => {
                self.ready.heap.push(entry);
            }
            _ => {
                if run.capacity() == 0 {
                    if let Some(spare) = self.spare.pop() {
                        *run = VecDeque::from(spare);
                    }
                } else if let Some(larger) = kept_for_growth(run.len(), run.capacity()) {
                    let mut larger = VecDeque::from(larger);
                    larger.extend(run.drain(..));
                    let emptied = mem::replace(run, larger);
                    self.recycle(Vec::from(emptied));
                }
                self.ready.run.push_back(entry);
            }
        }
    }

    /// Where an entry due at `deadline` goes, or is, given `elapsed`.
    #[inline]
    fn place_of(&self, deadline: u64) -> Place {
        let when = tick_of(deadline);
        if deadline == u64::MAX {
            return Place::Far;
        }
        if when <= self.elapsed {
            return Place::Ready;
        }
        match level_for(self.elapsed, when) {
            level if level < LEVELS => Place::Slot(level, slot_for(when, level)),
            _ => Place::Far,
        }
    }

    /// Takes the entry of a pending call due at `deadline` out of its slot (O(1): the
    /// last entry moves into its place); in `ready` or `overflow` it stays, a tombstone.
    fn remove(&mut self, deadline: u64, index: u32) {
        let Place::Slot(level, s) = self.place_of(deadline) else { return };
        let slot = &mut self.slots[level * SLOTS + s];
        let removed = slot.entries.swap_remove(index as usize);
        debug_assert_eq!(removed.deadline, deadline, "the call's index points at another entry");
        if let Some(moved) = slot.entries.get(index as usize) {
            moved.call.state().index.set(index);
        }
        self.stored -= 1;
        if slot.entries.is_empty() {
            self.empty_slot(level, s);
        } else if slot.min == deadline {
            self.dirty[level] |= 1 << s;
        }
        // Dropping the entry drops a reference to the call, never its last: the caller
        // holds one.
        drop(removed);
    }

    /// The lowest level's first occupied slot: the one holding the earliest entries.
    #[inline]
    fn first_slot(&self) -> Option<(usize, usize)> {
        let level = self.occupied.iter().position(|&o| o != 0)?;
        Some((level, self.occupied[level].trailing_zeros() as usize))
    }

    /// The first tick slot `s` of `level` covers (its entries share the bits above the
    /// level with `elapsed`).
    #[inline]
    fn slot_start(&self, level: usize, s: usize) -> u64 {
        let above = SLOT_BITS * (level as u32 + 1);
        let high = if above >= 64 { 0 } else { self.elapsed >> above << above };
        high | ((s as u64) << (SLOT_BITS * level as u32))
    }

    /// Marks slot `s` of `level` empty and keeps its vector for reuse.
    fn empty_slot(&mut self, level: usize, s: usize) {
        let v = self.take_slot(level, s);
        self.recycle(v);
    }

    /// Empties slot `s` of `level`, returning its entries.
    fn take_slot(&mut self, level: usize, s: usize) -> Vec<Entry> {
        self.occupied[level] &= !(1 << s);
        self.dirty[level] &= !(1 << s);
        let slot = &mut self.slots[level * SLOTS + s];
        slot.min = u64::MAX;
        std::mem::take(&mut slot.entries)
    }

    /// Keeps an emptied vector for reuse: a small one in the wheel's pool (if not full),
    /// a larger one in the thread's (see `free_list::give_buffer`).
    fn recycle(&mut self, v: Vec<Entry>) {
        debug_assert!(v.is_empty());
        if v.capacity() > SPARE_MAX_CAPACITY {
            free_list::give_buffer(v);
        } else if self.spare.len() < SPARES && v.capacity() > 0 {
            self.spare.push(v);
        }
    }

    /// Gives an emptied run's buffer back to the pool (so what the wheel holds between
    /// calls does not depend on when the run emptied).
    #[inline]
    fn recycle_run(&mut self) {
        if self.ready.run.is_empty() && self.ready.run.capacity() != 0 {
            let emptied = Vec::from(std::mem::take(&mut self.ready.run));
            self.recycle(emptied);
        }
    }

    /// Moves `elapsed` forward to `tick` and brings the overflow entries now in reach into
    /// the wheel; true if it brought any.
    fn set_elapsed(&mut self, tick: u64) -> bool {
        self.elapsed = tick;
        let mut moved = false;
        while let Some(top) = live_top(&mut self.overflow, &mut self.stored) {
            let deadline = key(top.deadline);
            if self.place_of(deadline) == Place::Far {
                break;
            }
            let Far { seq, call, .. } = self.overflow.pop().expect("peeked");
            self.place(Entry { deadline, seq, call });
            moved = true;
        }
        moved
    }

    /// Moves the next slot due by tick `target` closer to `ready`: all of it into `ready`
    /// if its whole span is due (a level-0 slot always; a higher one when time jumped past
    /// it, as `Clock::advance` over everything does), else its entries down a level; with
    /// none, moves `elapsed` to `target`. True if it moved any entry.
    fn cascade_next(&mut self, target: u64) -> bool {
        if let Some((level, s)) = self.first_slot() {
            let start = self.slot_start(level, s);
            let last = start + ((1u64 << (SLOT_BITS * level as u32)) - 1);
            if last <= target {
                // Every entry is due by `target`'s tick, and `ready` is empty (`set_elapsed`
                // brings overflow entries into slots only: they are due after the last
                // level's span, so after `last`): a large slot becomes its sorted run, a
                // small one goes into its heap.
                self.set_elapsed(last);
                let mut entries = self.take_slot(level, s);
                if entries.len() > RUN_MIN && self.ready.run.is_empty() {
                    entries = self.ready.start_run(entries);
                } else {
                    self.ready.heap.extend(entries.drain(..));
                }
                self.recycle(entries);
                return true;
            }
            if start <= target {
                self.set_elapsed(start);
                let mut entries = self.take_slot(level, s);
                for entry in entries.drain(..) {
                    debug_assert!(entry.is_live(), "slots hold no tombstones");
                    self.place(entry);
                }
                self.recycle(entries);
                return true;
            }
        }
        // Nothing in the slots is due by `target` (all of it is later than `target`),
        // so the wheel may move there.
        self.elapsed < target && self.set_elapsed(target)
    }

    /// Removes the earliest call due at `now`, marked as called.
    fn pop_due(&mut self, now_time: Duration) -> Option<Rc<DynCall>> {
        let now = key(now_time);
        let target = tick_of(now);
        loop {
            if let Some((deadline, run)) = self.ready.live_first(&mut self.stored) {
                if deadline > now {
                    return None; // Everything else is later still.
                }
                let entry = self.ready.pop_from(run);
                if run {
                    self.recycle_run();
                }
                return Some(self.called(entry.call));
            }
            self.recycle_run();
            if !self.cascade_next(target) {
                return self.pop_due_far(now_time);
            }
        }
    }

    /// A live entry was taken out to run: its call is marked called.
    fn called(&mut self, call: Rc<DynCall>) -> Rc<DynCall> {
        self.stored -= 1;
        self.live -= 1;
        call.state().state.set(CallState::Called);
        self.release_if_empty();
        self.debug_check();
        call
    }

    /// Removes the earliest call whose key saturated, if it is due at `now` (the wheel
    /// has nothing due: these are later than anything it holds).
    fn pop_due_far(&mut self, now: Duration) -> Option<Rc<DynCall>> {
        let top = live_top(&mut self.overflow, &mut self.stored)?;
        if key(top.deadline) != u64::MAX || top.deadline > now {
            return None;
        }
        let Far { call, .. } = self.overflow.pop().expect("peeked");
        Some(self.called(call))
    }

    /// The earliest deadline, exact or a lower bound (see [`Exactness`]).
    fn earliest(&mut self, exactness: Exactness) -> Option<Duration> {
        if self.stored == 0 {
            return None; // Asked once a turn; most turns of a server have no timer.
        }
        if let Some((_, run)) = self.ready.live_first(&mut self.stored) {
            let top = if run { self.ready.run.front() } else { self.ready.heap.peek() };
            return top.map(|top| top.call.state().time.get());
        }
        if let Some((level, s)) = self.first_slot() {
            if self.dirty[level] & (1 << s) != 0 && exactness == Exactness::Exact {
                self.rescan(level, s);
            }
            return Some(Duration::from_nanos(self.slots[level * SLOTS + s].min));
        }
        live_top(&mut self.overflow, &mut self.stored).map(|top| top.deadline)
    }

    /// Finds a slot's exact earliest deadline again, O(entries in the slot).
    fn rescan(&mut self, level: usize, s: usize) {
        let slot = &mut self.slots[level * SLOTS + s];
        slot.min = slot.entries.iter().map(|e| e.deadline).min().unwrap_or(u64::MAX);
        self.dirty[level] &= !(1 << s);
    }

    /// Purges the tombstones once they outnumber the live calls (and `PURGE_FLOOR`).
    #[inline]
    fn purge_if_mostly_tombstones(&mut self) {
        let tombstones = self.stored - self.live;
        if tombstones > PURGE_FLOOR && tombstones > self.live {
            self.purge();
        }
    }

    /// Drops every tombstone (they are all in `ready` and `overflow`), O(entries there).
    fn purge(&mut self) {
        let before = self.ready.len() + self.overflow.len();
        self.ready.run.retain(Entry::is_live);
        self.ready.heap.retain(Entry::is_live);
        self.overflow.retain(Far::is_live);
        self.stored -= before - (self.ready.len() + self.overflow.len());
        self.release_if_empty();
    }

    /// Drops the tombstones and shrinks every vector to what it holds.
    fn shrink(&mut self) {
        self.purge();
        self.ready.run.shrink_to_fit();
        self.ready.heap.shrink_to_fit();
        self.overflow.shrink_to_fit();
        self.spare = Vec::new();
        for slot in &mut self.slots {
            slot.entries.shrink_to_fit();
        }
        self.peak = self.stored;
    }

    /// Every pending call, in the order they will run.
    fn pending_in_order(&self) -> Vec<Rc<DynCall>> {
        let slots = self.slots.iter().flat_map(|s| s.entries.iter());
        let near = self.ready.iter().filter(|e| e.is_live()).chain(slots).map(|e| &e.call);
        let far = self.overflow.iter().filter(|e| e.is_live()).map(|e| &e.call);
        let mut live: Vec<(Duration, u64, &Rc<DynCall>)> =
            near.chain(far).map(|c| (c.state().time.get(), c.state().seq.get(), c)).collect();
        live.sort_unstable_by_key(|e| (e.0, e.1));
        // A call reset back to a deadline it had can have two live-looking entries.
        live.dedup_by_key(|e| e.1);
        live.into_iter().map(|e| e.2.clone()).collect()
    }

    /// Every entry's vector capacity, for tests.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        let slots: usize = self.slots.iter().map(|s| s.entries.capacity()).sum();
        let spare: usize = self.spare.iter().map(Vec::capacity).sum();
        slots + spare + self.ready.run.capacity() + self.ready.heap.capacity() + self.overflow.capacity()
    }

    /// Checks the placement invariants when the wheel is small (debug builds).
    #[inline]
    fn debug_check(&self) {
        #[cfg(debug_assertions)]
        if self.stored <= 64 {
            let mut count = self.ready.len() + self.overflow.len();
            for e in self.ready.iter() {
                debug_assert!(tick_of(e.deadline) <= self.elapsed, "a later entry in ready");
            }
            for e in self.overflow.iter() {
                debug_assert!(self.place_of(key(e.deadline)) == Place::Far, "overflow in reach");
            }
            for (i, slot) in self.slots.iter().enumerate() {
                let (level, s) = (i / SLOTS, i % SLOTS);
                debug_assert_eq!(self.occupied[level] & (1 << s) != 0, !slot.entries.is_empty());
                let dirty = self.dirty[level] & (1 << s) != 0;
                for (index, e) in slot.entries.iter().enumerate() {
                    debug_assert!(e.is_live(), "a tombstone in a slot");
                    debug_assert!(self.place_of(e.deadline) == Place::Slot(level, s), "entry misplaced");
                    debug_assert_eq!(e.call.state().index.get() as usize, index, "stale index");
                    debug_assert!(slot.min <= e.deadline, "slot min above an entry");
                }
                if !dirty && !slot.entries.is_empty() {
                    debug_assert!(
                        slot.entries.iter().any(|e| e.deadline == slot.min),
                        "a clean min is exact"
                    );
                }
                count += slot.entries.len();
            }
            debug_assert_eq!(count, self.stored);
            debug_assert!(self.live <= self.stored);
        }
    }
}

/// The first live entry of `heap`, after dropping the tombstones above it (counted out
/// of `stored`).
#[inline]
fn live_top<'a, At: Deadline>(
    heap: &'a mut BinaryHeap<Queued<At>>,
    stored: &mut usize,
) -> Option<&'a Queued<At>> {
    while !heap.peek()?.is_live() {
        heap.pop();
        *stored -= 1;
    }
    heap.peek()
}

/// The entries of ticks up to the wheel's `elapsed`: a sorted run (the entries of the
/// level-0 slot the wheel reached last, sorted once as they arrive, often in order
/// already, then every entry placed there afterwards that comes after its last) and a
/// heap for the others placed there afterwards (scheduled for a tick the wheel has
/// reached, earlier than the run's last), both by (deadline, sequence number). The next
/// entry is the earlier of their fronts: popping the run is O(1), where a heap of one tick's calls
/// (thousands, for a burst of `call_later(0)`) would sift through its depth each time.
#[derive(Default)]
struct Ready {
    run: VecDeque<Entry>,
    heap: BinaryHeap<Entry>,
}

impl Ready {
    fn len(&self) -> usize {
        self.run.len() + self.heap.len()
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.run.iter().chain(self.heap.iter())
    }

    /// Makes `entries` (while the run is empty) the sorted run; returns the old run's
    /// emptied buffer, for reuse.
    fn start_run(&mut self, mut entries: Vec<Entry>) -> Vec<Entry> {
        debug_assert!(self.run.is_empty());
        entries.sort_unstable_by_key(|e| (e.deadline, e.seq));
        Vec::from(std::mem::replace(&mut self.run, VecDeque::from(entries)))
    }

    /// The entry due first, and whether it is the run's (else the heap's).
    #[inline(always)]
    fn first(&self) -> Option<(&Entry, bool)> {
        match (self.run.front(), self.heap.peek()) {
            (Some(a), Some(b)) if (b.deadline, b.seq) < (a.deadline, a.seq) => Some((b, false)),
            (Some(a), _) => Some((a, true)),
            (None, b) => b.map(|b| (b, false)),
        }
    }

    /// Removes the first entry of the run (`true`) or of the heap.
    #[inline]
    fn pop_from(&mut self, run: bool) -> Entry {
        if run { self.run.pop_front() } else { self.heap.pop() }.expect("not empty")
    }

    /// The first live entry (its deadline, call and part), after dropping the tombstones
    /// before it (counted out of `stored`).
    #[inline(always)]
    fn live_first(&mut self, stored: &mut usize) -> Option<(u64, bool)> {
        loop {
            let (top, run) = self.first()?;
            if top.is_live() {
                return Some((top.deadline, run));
            }
            self.pop_from(run);
            *stored -= 1;
        }
    }
}

/// For a full vector of `len` entries (`capacity`) about to grow: a larger one the
/// thread kept, if it has one (see `free_list::take_buffer`).
#[inline]
fn kept_for_growth(len: usize, capacity: usize) -> Option<Vec<Entry>> {
    if len == capacity {
        free_list::take_buffer(len + 1)
    } else {
        None
    }
}

/// Where an entry goes: see [`TimerWheel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Ready,
    Slot(usize, usize),
    Far,
}

impl Drop for TimerWheel {
    /// The queue is gone (its clock or reactor dropped, or cleared at shutdown): the
    /// pending calls are cancelled and their callbacks dropped, so a callback holding its
    /// own handle does not keep itself alive.
    fn drop(&mut self) {
        let slots = self.slots.iter_mut().flat_map(|s| s.entries.drain(..));
        let far = self.overflow.drain().map(|f| f.call);
        let ready = self.ready.run.drain(..).chain(self.ready.heap.drain());
        let calls: Vec<_> = ready.chain(slots).map(|e| e.call).chain(far).collect();
        for call in &calls {
            if call.state().state.get() == CallState::Pending {
                call.state().state.set(CallState::Cancelled);
                call.discard();
            }
        }
        // The emptied vectors (drained above) can serve the thread's next wheel.
        for slot in mem::take(&mut self.slots) {
            self.recycle(slot.entries);
        }
        self.release();
    }
}

/// Below this many entries the timer wheel is never shrunk.
const SHRINK_FLOOR: usize = 1024;

/// How long a table must stay under a quarter full before it is compacted: a spike that
/// comes back within this time keeps its memory, so a burst that repeats does not pay
/// for shrinking and growing again each time. (Short in unit tests.)
const SHRINK_AFTER: Duration = if cfg!(test) { Duration::from_millis(20) } else { Duration::from_secs(1) };

/// Since when a table (the timer wheel, the reactor's source table) has been sparse:
/// under a quarter full, past its floor.
#[derive(Debug, Default)]
pub(crate) struct Sparse {
    since: Cell<Option<Duration>>,
}

impl Sparse {
    /// True if a table of `len` entries in `capacity` slots has been sparse for
    /// [`SHRINK_AFTER`] at `now`; the caller then compacts it. Checked once a turn, so
    /// the cost of compacting is paid at most once per spike, O(n) for a table of n.
    /// `now` is read only when the table is sparse.
    pub(crate) fn should_shrink(
        &self,
        len: usize,
        capacity: usize,
        floor: usize,
        now: impl FnOnce() -> Duration,
    ) -> bool {
        if capacity <= floor || len >= capacity / 4 {
            self.since.set(None);
            return false;
        }
        let now = now();
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
    fn the_timer_wheel_shrinks_after_a_spike_and_keeps_its_survivors() {
        let timers = Timers::new(TimeSource::Manual(Default::default()));
        let fired = Rc::new(RefCell::new(Vec::new()));
        let handles: Vec<_> = (0..100_000u64)
            .map(|i| {
                let f = fired.clone();
                timers.schedule(ms(100_000 - i), move || f.borrow_mut().push(i))
            })
            .collect();
        let peak = timers.wheel.borrow().capacity();
        assert!(peak >= 100_000);
        let survivors = [7u64, 20_000, 50_001, 77_777, 99_999];
        for (i, h) in handles.iter().enumerate() {
            if !survivors.contains(&(i as u64)) {
                h.cancel().unwrap();
            }
        }
        // Purging the tombstones on the way gave back the slots it emptied; the rest
        // stays until the wheel has been sparse for a while.
        let kept = timers.wheel.borrow().capacity();
        assert!(kept < peak);
        timers.shrink_if_sparse(|| ms(0));
        assert_eq!(timers.wheel.borrow().capacity(), kept);
        timers.shrink_if_sparse(|| ms(1));
        assert_eq!(timers.wheel.borrow().capacity(), kept);
        timers.shrink_if_sparse(|| ms(1) + SHRINK_AFTER);
        let entries = timers.wheel.borrow().capacity();
        assert!(entries <= SHRINK_FLOOR, "room for {entries} entries after the spike");
        assert_eq!(timers.len(), 5);
        // The handles reach their moved entries.
        handles[20_000].cancel().unwrap();
        handles[7].reset(ms(1)).unwrap();
        assert_eq!(handles[99_999].get_time(), Some(ms(1)));
        assert_eq!(handles[7].get_time(), Some(ms(1)));
        while let Some(call) = timers.pop_due(ms(200_000)) {
            call.run();
        }
        assert_eq!(*fired.borrow(), [7, 99_999, 77_777, 50_001]);
    }

    /// A spike that comes back before the delay keeps its memory: no shrinking and
    /// growing again for a burst that repeats.
    #[test]
    fn a_spike_that_comes_back_soon_keeps_its_memory() {
        let timers = Timers::new(TimeSource::Manual(Default::default()));
        let burst = |timers: &std::rc::Rc<Timers>| {
            let handles: Vec<_> = (0..10_000).map(|_| timers.schedule(ms(5), || {})).collect();
            handles.iter().for_each(|h| h.cancel().unwrap());
        };
        burst(&timers);
        let peak = timers.wheel.borrow().capacity();
        timers.shrink_if_sparse(|| ms(0));
        burst(&timers);
        timers.shrink_if_sparse(|| SHRINK_AFTER / 2);
        burst(&timers);
        assert_eq!(timers.wheel.borrow().capacity(), peak);
    }

    /// Runs every call due at `now`, as the reactor's turn does.
    fn run_due(timers: &Rc<Timers>, now: Duration) {
        while let Some(due) = timers.pop_due(now) {
            due.run();
        }
    }

    /// A call that ran, and whose handle is gone, is kept and reused by the next call of
    /// its type: it runs the new callback once, at its own time, and its handle is fresh.
    #[test]
    fn a_call_that_ran_is_reused_by_the_next_of_its_type() {
        crate::trim_free_lists();
        let timers = Timers::new(TimeSource::Manual(Default::default()));
        let runs = Rc::new(RefCell::new(Vec::new()));
        let schedule = |delay: u64, tag: u64| {
            let r = runs.clone();
            timers.schedule(ms(delay), move || r.borrow_mut().push(tag))
        };
        let first = schedule(1, 1);
        let first_ptr = Rc::as_ptr(&first.call) as *const ();
        drop(first);
        run_due(&timers, ms(1));
        assert!(crate::free_list::held() > 0, "kept once run with no handle left");
        let second = schedule(5, 2);
        assert_eq!(Rc::as_ptr(&second.call) as *const (), first_ptr, "reused");
        assert_eq!(crate::free_list::held(), 0);
        assert!(second.is_active());
        // (The manual clock stays at 0: `pop_due` is given the time, it does not set it.)
        assert_eq!(second.get_time(), Some(ms(5)));
        // Order among equal deadlines still follows scheduling.
        let third = schedule(5, 3);
        run_due(&timers, ms(4));
        assert_eq!(*runs.borrow(), [1], "not due before its time");
        run_due(&timers, ms(5));
        assert_eq!(*runs.borrow(), [1, 2, 3]);
        assert_eq!(second.cancel(), Err(super::DelayedCallError::AlreadyCalled));
        drop((second, third));
        crate::trim_free_lists();
    }

    /// A call whose handle is still held is not reused: the handle keeps reporting on the
    /// call it was given for. A cancelled call drops its callback at once, reused or not.
    #[test]
    fn a_call_still_held_is_not_reused_and_a_cancel_drops_the_callback() {
        crate::trim_free_lists();
        let timers = Timers::new(TimeSource::Manual(Default::default()));
        let token = Rc::new(());
        let t = token.clone();
        let kept = timers.schedule(ms(1), move || drop(t));
        run_due(&timers, ms(1));
        assert_eq!(crate::free_list::held(), 0, "its handle still holds it");
        let t = token.clone();
        let other = timers.schedule(ms(1), move || drop(t));
        assert!(kept != other);
        assert_eq!(kept.cancel(), Err(super::DelayedCallError::AlreadyCalled));
        other.cancel().unwrap();
        assert_eq!(Rc::strong_count(&token), 1, "the cancelled callback was dropped at once");
        drop(other);
        drop(kept);
        crate::trim_free_lists();
    }

    /// A slot that grew large in a burst keeps its vector on the thread once emptied,
    /// and the next wheel's slot that grows that large takes it instead of growing by
    /// reallocation; its calls keep their places (cancels find them, the rest run in
    /// order). The same for the run of calls due now.
    #[test]
    fn a_large_emptied_vector_serves_the_next_burst_of_the_thread() {
        use crate::free_list::buffered;
        crate::trim_free_lists();
        let burst = |timers: &Rc<Timers>,
                     delay: u64,
                     n: u64,
                     runs: &Rc<RefCell<Vec<u64>>>|
         -> Vec<super::DelayedCall> {
            (0..n)
                .map(|i| {
                    let r = runs.clone();
                    timers.schedule(ms(delay), move || r.borrow_mut().push(i))
                })
                .collect()
        };
        let runs = Rc::new(RefCell::new(Vec::new()));
        // 5,000 calls 10 s away share one slot.
        let first = Timers::new(TimeSource::Manual(Default::default()));
        burst(&first, 10_000, 5_000, &runs).iter().for_each(|h| h.cancel().unwrap());
        let kept = buffered();
        assert!(kept >= 5_000 * std::mem::size_of::<super::Entry>(), "the slot's vector kept: {kept}");
        drop(first);
        let second = Timers::new(TimeSource::Manual(Default::default()));
        let handles = burst(&second, 10_000, 5_000, &runs);
        assert!(buffered() < kept, "taken by the slot as it grew");
        for h in handles.iter().step_by(2) {
            h.cancel().unwrap();
        }
        run_due(&second, ms(10_000));
        let odd: Vec<u64> = (1..5_000).step_by(2).collect();
        assert_eq!(*runs.borrow(), odd);
        assert!(buffered() >= kept, "given back once emptied");
        // The run of calls due now grows into it the same way.
        runs.borrow_mut().clear();
        let now = burst(&second, 0, 5_000, &runs);
        assert!(buffered() < kept, "taken by the run as it grew");
        now[4_999].cancel().unwrap();
        run_due(&second, ms(10_000));
        assert_eq!(*runs.borrow(), (0..4_999).collect::<Vec<u64>>());
        drop((now, handles, second));
        crate::trim_free_lists();
        assert_eq!(buffered(), 0);
    }
}

/// The wheel against a model (a sorted map of (deadline, order)) under random schedules,
/// cancels, resets, delays and advances, with delays from nanoseconds to centuries so
/// every level and the overflow are used.
#[cfg(test)]
mod model {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;
    use std::time::Duration;

    use super::{DelayedCall, DelayedCallError, TimeSource, Timers};

    struct Rng {
        state: u64,
        /// Delays of a few ticks only, so level-0 slots fill up (`ready`'s sorted run).
        burst: bool,
        /// Delays under half a tick, so most calls land in a tick the wheel has reached:
        /// at the back of `ready`'s run when they come after it, else in its heap.
        near: bool,
    }

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// A delay whose size is spread over every scale: 0 ns up to about 3,000 years.
        fn delay(&mut self) -> Duration {
            if self.burst {
                return Duration::from_nanos(self.below(4 << 20));
            }
            if self.near {
                return Duration::from_nanos(self.below(1 << 19));
            }
            match self.below(10) {
                0 => Duration::ZERO,
                1 => Duration::from_nanos(self.below(1 << 20)),
                _ => {
                    let bits = self.below(57) as u32 + 5;
                    Duration::from_nanos(self.below(1 << bits))
                        .saturating_add(Duration::from_secs(if bits > 60 { self.below(1 << 36) } else { 0 }))
                }
            }
        }
    }

    fn check(seed: u64, steps: usize, burst: bool) {
        check_with(Rng { state: seed, burst, near: false }, steps);
    }

    fn check_with(mut rng: Rng, steps: usize) {
        let timers = Timers::new(TimeSource::Manual(Default::default()));
        let fired = Rc::new(RefCell::new(Vec::new()));
        // id -> (handle, deadline, order), for the pending ones.
        let mut model: BTreeMap<u64, (DelayedCall, Duration, u64)> = BTreeMap::new();
        let mut done: Vec<(DelayedCall, DelayedCallError)> = Vec::new();
        let mut next_id = 0u64;
        let now = |t: &Rc<Timers>| t.now();
        for _ in 0..steps {
            match rng.below(12) {
                0..=4 => {
                    let id = next_id;
                    next_id += 1;
                    let delay = rng.delay();
                    let f = fired.clone();
                    let h = timers.schedule(delay, move || f.borrow_mut().push(id));
                    model.insert(id, (h, now(&timers).saturating_add(delay), id));
                }
                5 | 6 if !model.is_empty() => {
                    let &id = model.keys().nth(rng.below(model.len() as u64) as usize).unwrap();
                    let (h, _, _) = model.remove(&id).unwrap();
                    h.cancel().unwrap();
                    done.push((h, DelayedCallError::AlreadyCancelled));
                }
                7 if !model.is_empty() => {
                    let &id = model.keys().nth(rng.below(model.len() as u64) as usize).unwrap();
                    let delay = rng.delay();
                    let entry = model.get_mut(&id).unwrap();
                    if rng.below(2) == 0 {
                        entry.0.reset(delay).unwrap();
                        entry.1 = now(&timers).saturating_add(delay);
                    } else {
                        entry.0.delay(delay).unwrap();
                        entry.1 = entry.1.saturating_add(delay);
                    }
                }
                8 => {
                    let got = timers.next_deadline();
                    let want = model.values().map(|e| e.1).min();
                    assert_eq!(got, want, "exact earliest deadline");
                    if let (Some(hint), Some(want)) = (timers.wake_hint(), want) {
                        assert!(hint <= want, "the hint is never late");
                    }
                }
                9 if rng.below(8) == 0 => {
                    let mut want: Vec<_> = model.values().map(|e| (e.1, e.2, e.0.clone())).collect();
                    want.sort_by_key(|e| (e.0, e.1));
                    let want: Vec<DelayedCall> = want.into_iter().map(|e| e.2).collect();
                    assert_eq!(timers.delayed_calls(), want, "pending calls in run order");
                }
                _ => {
                    // Advance, sometimes a little, sometimes past everything.
                    let small = if rng.burst || rng.near { 1 << 18 } else { 1 << 24 };
                    let step =
                        if rng.below(4) == 0 { rng.delay() } else { Duration::from_nanos(rng.below(small)) };
                    let TimeSource::Manual(clock) = &timers.source else { unreachable!() };
                    let to = clock.get().saturating_add(step);
                    clock.set(to);
                    let mut due: Vec<_> =
                        model.iter().filter(|(_, e)| e.1 <= to).map(|(&id, e)| (e.1, e.2, id)).collect();
                    due.sort();
                    while let Some(call) = timers.pop_due(to) {
                        call.run();
                    }
                    let want: Vec<u64> = due.iter().map(|d| d.2).collect();
                    assert_eq!(*fired.borrow(), want, "calls run in (deadline, order)");
                    fired.borrow_mut().clear();
                    for id in want {
                        let (h, _, _) = model.remove(&id).unwrap();
                        done.push((h, DelayedCallError::AlreadyCalled));
                    }
                }
            }
            assert_eq!(timers.len(), model.len());
            for (h, time, _) in model.values().take(4) {
                assert_eq!(h.get_time(), Some(*time));
                assert!(h.is_active());
            }
            if let Some((h, e)) = done.last() {
                assert_eq!(h.cancel(), Err(*e));
                assert!(!h.is_active());
            }
        }
    }

    #[test]
    fn the_wheel_runs_calls_as_a_sorted_queue_would() {
        for seed in 1..=20u64 {
            check(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 3_000, false);
        }
        // Small queues, where the debug checks of the placement run after every change.
        for seed in 21..=220u64 {
            check(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 120, false);
        }
        // Many calls a few ticks away: full level-0 slots, a sorted run and a heap.
        for seed in 221..=240u64 {
            check(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 3_000, true);
        }
        // Calls for ticks already reached, in and out of order: `ready`'s run grows at its
        // back, the rest go into its heap, and the two still merge in order.
        for seed in 241..=260u64 {
            check_with(
                Rng { state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), burst: false, near: true },
                3_000,
            );
        }
    }

    /// A burst of calls for now, in a tick the wheel has reached, goes to the back of
    /// `ready`'s sorted run (O(1) to pop), not into its heap; one out of order goes to
    /// the heap, and all run in (deadline, order).
    #[test]
    fn calls_for_a_reached_tick_in_order_go_to_the_run() {
        let timers = Timers::new(TimeSource::Manual(Default::default()));
        let TimeSource::Manual(clock) = &timers.source else { unreachable!() };
        let fired = Rc::new(RefCell::new(Vec::new()));
        let at = |id: u64, delay: Duration| {
            let f = fired.clone();
            timers.schedule(delay, move || f.borrow_mut().push(id))
        };
        clock.set(Duration::from_millis(5));
        assert!(timers.pop_due(clock.get()).is_none()); // The wheel reaches this tick.
        let late = at(0, Duration::from_nanos(1000));
        let handles: Vec<_> = (1..=100).map(|id| at(id, Duration::from_nanos(1000))).collect();
        let early = at(101, Duration::ZERO);
        {
            let wheel = timers.wheel.borrow();
            assert_eq!((wheel.ready.run.len(), wheel.ready.heap.len()), (101, 1));
        }
        clock.set(clock.get() + Duration::from_nanos(1000));
        while let Some(call) = timers.pop_due(clock.get()) {
            call.run();
        }
        let want: Vec<u64> = std::iter::once(101).chain(0..=100).collect();
        assert_eq!(*fired.borrow(), want);
        drop((late, handles, early));
    }

    /// Resetting a call back to a deadline it had leaves two entries that both look
    /// live; it still runs once, and is listed once.
    #[test]
    fn a_call_reset_back_to_an_old_deadline_runs_once() {
        let timers = Timers::new(TimeSource::Manual(Default::default()));
        let runs = Rc::new(RefCell::new(0));
        let r = runs.clone();
        let h = timers.schedule(Duration::from_secs(5), move || *r.borrow_mut() += 1);
        h.reset(Duration::from_secs(7)).unwrap();
        h.reset(Duration::from_secs(5)).unwrap();
        assert_eq!(timers.delayed_calls(), std::slice::from_ref(&h));
        assert_eq!(timers.len(), 1);
        while let Some(call) = timers.pop_due(Duration::from_secs(10)) {
            call.run();
        }
        assert_eq!(*runs.borrow(), 1);
        assert_eq!(timers.len(), 0);
        assert_eq!(timers.next_deadline(), None);
    }
}
