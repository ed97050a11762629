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
    static CANCEL_DEPTH: Cell<u32> = const { Cell::new(0) };
    static CANCEL_QUEUE: RefCell<VecDeque<Box<dyn FnOnce()>>> = const { RefCell::new(VecDeque::new()) };
    static DROP_DEPTH: Cell<u32> = const { Cell::new(0) };
    static GRAVEYARD: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// Restores a depth counter on every exit, unwinding included.
struct DepthGuard(&'static std::thread::LocalKey<Cell<u32>>, u32);

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
    if depth >= MAX_DEPTH {
        RUN_QUEUE.with(|q| q.borrow_mut().push_back(job));
        return;
    }
    RUN_DEPTH.with(|d| d.set(depth + 1));
    let _restore = DepthGuard(&RUN_DEPTH, depth);
    job.run_loop();
    if depth == 0 {
        // The outermost loop: run whatever deeper loops queued, each at depth 1 again.
        while let Some(next) = RUN_QUEUE.with(|q| q.borrow_mut().pop_front()) {
            next.run_loop();
        }
    }
}

/// Runs one `cancel()` now, or queues it if too many cancels are already nested on the
/// stack (a canceller that cancels what it depends on, which cancels what *it* depends
/// on, and so on down a long `then`/`map` chain). The outermost cancel drains the queue
/// before it returns.
pub(crate) fn cancel_bounded<F: FnOnce() + 'static>(cancel: F) {
    let depth = CANCEL_DEPTH.with(Cell::get);
    if depth >= MAX_DEPTH {
        CANCEL_QUEUE.with(|q| q.borrow_mut().push_back(Box::new(cancel)));
        return;
    }
    CANCEL_DEPTH.with(|d| d.set(depth + 1));
    let _restore = DepthGuard(&CANCEL_DEPTH, depth);
    cancel();
    if depth == 0 {
        while let Some(next) = CANCEL_QUEUE.with(|q| q.borrow_mut().pop_front()) {
            next();
        }
    }
}

/// Drops `value` now, or parks it if too many drops are already nested on the stack.
pub(crate) fn drop_bounded<X: 'static>(value: X) {
    let depth = DROP_DEPTH.with(Cell::get);
    if depth >= MAX_DEPTH {
        GRAVEYARD.with(|g| g.borrow_mut().push(Box::new(value)));
        return;
    }
    DROP_DEPTH.with(|d| d.set(depth + 1));
    let _restore = DepthGuard(&DROP_DEPTH, depth);
    drop(value);
    if depth == 0 {
        while let Some(parked) = GRAVEYARD.with(|g| g.borrow_mut().pop()) {
            drop(parked);
        }
    }
}
