//! The non-recursive machinery under every Deferred: a depth-bounded trampoline for
//! running callback chains, and the same bound for dropping them.
//!
//! Firing a Deferred runs its callbacks at once, as in Twisted, and a callback may fire
//! another Deferred, which runs *its* callbacks, and so on. Twisted avoids unbounded
//! recursion only for the "callback returned a Deferred" case (`_runCallbacks`' `chain`
//! list). weft bounds it for every case, including chains whose type changes at each
//! step (`then`/`map`), with one rule: a thread-local counts how many callback loops are
//! on the stack; past [`MAX_DEPTH`] a loop is not started but queued, and the outermost
//! loop drains the queue before it returns. The user sees no difference below that depth,
//! and above it the queued callbacks still run before the outermost `callback()` returns.
//!
//! Cancels nest the same way when a canceller cancels another Deferred (as `then` does
//! for its source), and are bounded the same way.
//!
//! Dropping a long waiting chain would recurse too (each Deferred owns the next through
//! its continuation link), so drops are bounded the same way: past [`MAX_DEPTH`] nested
//! drops, what a Deferred owns is parked in a thread-local list that the outermost drop
//! empties.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::thread::LocalKey;

/// How many callback loops (or drops) may nest on the stack before the next is queued.
pub(crate) const MAX_DEPTH: u32 = 32;

/// A Deferred whose callback loop can be run later from the trampoline's queue.
pub(crate) trait Runnable {
    /// Runs the callback loop until the chain finishes, pauses or waits.
    fn run_loop(self: Rc<Self>);
}

thread_local! {
    static RUN_DEPTH: Cell<u32> = const { Cell::new(0) };
    static RUN_QUEUE: RefCell<VecDeque<Rc<dyn Runnable>>> = const { RefCell::new(VecDeque::new()) };
    /// True if a loop may have been queued in `RUN_QUEUE` since the outermost loop last
    /// emptied it (no destructor: reading it costs no registration check), so the
    /// outermost loop looks at the queue only then.
    static RUN_QUEUED: Cell<bool> = const { Cell::new(false) };
    static CANCEL_DEPTH: Cell<u32> = const { Cell::new(0) };
    static CANCEL_QUEUE: RefCell<VecDeque<Box<dyn FnOnce()>>> = const { RefCell::new(VecDeque::new()) };
    static DROP_DEPTH: Cell<u32> = const { Cell::new(0) };
    static GRAVEYARD: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// Restores a depth counter on every exit, unwinding included.
struct DepthGuard(&'static LocalKey<Cell<u32>>, u32);

impl Drop for DepthGuard {
    fn drop(&mut self) {
        let depth = self.1;
        self.0.with(|d| d.set(depth));
    }
}

/// Runs `job`'s callback loop now, or queues it if too many loops are already on the stack.
///
/// The caller has marked the Deferred as running, so nobody starts a second loop on it
/// while it waits in the queue.
pub(crate) fn run<R: Runnable + 'static>(job: Rc<R>) {
    let depth = RUN_DEPTH.with(Cell::get);
    let mut job = Some(job);
    if depth >= MAX_DEPTH && queued(&RUN_QUEUE, &mut job, |q, j| q.push_back(j)) {
        RUN_QUEUED.with(|q| q.set(true));
        return;
    }
    let job = job.expect("not queued");
    run_at(depth, move || job.run_loop());
}

/// True if a callback loop started now would run at once rather than be queued.
#[inline]
pub(crate) fn may_run_now() -> bool {
    RUN_DEPTH.with(Cell::get) < MAX_DEPTH
}

/// Runs a callback loop (`job`) now, as [`run`] does below [`MAX_DEPTH`] (the caller
/// checked [`may_run_now`]): for a loop that starts with a result in hand.
#[inline]
pub(crate) fn run_now(job: impl FnOnce()) {
    let depth = RUN_DEPTH.with(Cell::get);
    debug_assert!(depth < MAX_DEPTH, "run_now past the depth bound");
    run_at(depth, job);
}

/// Runs a loop one level deeper than `depth`; the outermost one (at depth 0) then runs
/// whatever deeper loops queued, each at depth 1 again.
#[inline]
fn run_at(depth: u32, job: impl FnOnce()) {
    RUN_DEPTH.with(|d| d.set(depth + 1));
    let _restore = DepthGuard(&RUN_DEPTH, depth);
    job();
    if depth == 0 && RUN_QUEUED.with(|q| q.replace(false)) {
        // Loops queued while these run are taken by the same `while`.
        while let Some(next) = taken(&RUN_QUEUE, VecDeque::pop_front) {
            next.run_loop();
        }
    }
}

/// Runs one `cancel()` now, or queues it if too many cancels are already nested on the
/// stack (a canceller that cancels what it depends on, which cancels what *it* depends
/// on, and so on down a long `then`/`map` chain). The outermost cancel drains the queue
/// before it returns. Returns what `cancel` returned, or `None` if it was queued.
pub(crate) fn cancel_bounded<R, F: FnOnce() -> R + 'static>(cancel: F) -> Option<R> {
    let depth = CANCEL_DEPTH.with(Cell::get);
    if depth >= MAX_DEPTH {
        let mut queue_it = Some(Box::new(move || drop(cancel())) as Box<dyn FnOnce()>);
        if !queued(&CANCEL_QUEUE, &mut queue_it, VecDeque::push_back) {
            (queue_it.expect("not queued"))();
        }
        return None;
    }
    CANCEL_DEPTH.with(|d| d.set(depth + 1));
    let _restore = DepthGuard(&CANCEL_DEPTH, depth);
    let done = cancel();
    if depth == 0 {
        while let Some(next) = taken(&CANCEL_QUEUE, VecDeque::pop_front) {
            next();
        }
    }
    Some(done)
}

/// Drops `value` now, or parks it if too many drops are already nested on the stack.
pub(crate) fn drop_bounded<X: 'static>(value: X) {
    let depth = DROP_DEPTH.with(Cell::get);
    if depth >= MAX_DEPTH {
        let mut parked = Some(Box::new(value) as Box<dyn Any>);
        if !queued(&GRAVEYARD, &mut parked, Vec::push) {
            drop(parked);
        }
        return;
    }
    DROP_DEPTH.with(|d| d.set(depth + 1));
    let _restore = DepthGuard(&DROP_DEPTH, depth);
    drop(value);
    if depth == 0 {
        while let Some(parked) = taken(&GRAVEYARD, Vec::pop) {
            drop(parked);
        }
    }
}

// While a thread ends, its thread-locals are destroyed one by one, and values dropped
// then (pending tasks, permits, guards, Deferreds in another thread-local) may still run
// callbacks. A queue destroyed by then cannot be reached: the work is done at once
// instead (deeper on the stack, but the thread is ending), and nothing panics.
// The depth counters have no destructor and stay readable to the end.

/// Moves `item` into the thread-local queue `key`; false (and `item` left in place) if
/// the queue is already destroyed.
fn queued<Q: 'static, X>(
    key: &'static LocalKey<RefCell<Q>>,
    item: &mut Option<X>,
    push: impl FnOnce(&mut Q, X),
) -> bool {
    key.try_with(|q| {
        if let Some(x) = item.take() {
            push(&mut q.borrow_mut(), x);
        }
    })
    .is_ok()
}

/// The next item of the thread-local queue `key`; `None` if it is empty or destroyed.
fn taken<Q: 'static, X>(
    key: &'static LocalKey<RefCell<Q>>,
    pop: impl FnOnce(&mut Q) -> Option<X>,
) -> Option<X> {
    key.try_with(|q| pop(&mut q.borrow_mut())).ok().flatten()
}
