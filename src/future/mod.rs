//! async/await over Deferreds: awaiting a [`Deferred`] ([`DeferredFuture`]), running a
//! future as a Deferred ([`ensure_deferred`]), and telling one's own cancellation apart
//! ([`is_cancelling`], [`is_own_cancellation`]). The marker for handlers that may be
//! cancelled ([`cancellable`]) and Synapse's test helper that cancels a handler at each
//! of its await points ([`check_cancellation_at_each_await`]) are in `testing.rs`; the
//! task runner is in `runner.rs`, the await side in `awaiting.rs`.
//!
//! # Tasks
//!
//! Each task lives in a thread-local slab; its [`Waker`] is an `Arc` holding only its
//! slab key, its never-reused id and the owning thread's id, so it is `Send` without the
//! task being so. Waking on the owning thread polls the task at once (a wake while the task
//! is being polled only asks for one more poll: the re-entrancy guard). A wake from
//! another thread (a channel fed by a worker thread, say) reaches the task through the
//! owning thread's reactor (`call_from_thread`); on a thread with no reactor it is
//! logged and dropped.
//!
//! A thread that ends with tasks pending drops them (their futures' destructors run);
//! nothing is polled after the thread's task table is gone.
//!
//! # Which tasks are kept
//!
//! A task suspended only on Deferreds (and whose waker has no clone anywhere else) is
//! held by those Deferreds' chains, and by the task table only weakly, as Python's
//! coroutine is held only by the callbacks of the Deferred it waits on. Its own
//! Deferred holds the awaited Deferred while someone can cancel the task (a handle, a
//! combinator holding it). So a task that nobody can resume (the awaited Deferreds are
//! unreachable) and nobody can cancel (no handle to its Deferred) is garbage, and is
//! freed: its future is dropped, in its own log context, and its Deferred with it. A task
//! suspended on any other future stays in the table: another thread may wake it.
//!
//! # Log context
//!
//! A task has its own log context, as a Python coroutine run by Synapse keeps its own:
//! the context current when [`ensure_deferred`] was called, then whatever the task left
//! current when it last suspended. Every poll saves the caller's context, runs in the
//! task's, and restores the caller's after, however the task was woken (a Deferred, a
//! timer, a channel fed from another thread). So a [`ContextScope`] held across an
//! `.await` is current again when the task resumes and never leaks to whoever called
//! `ensure_deferred` or fired what it awaited.
//!
//! # Cancellation
//!
//! Cancelling the Deferred `ensure_deferred` returned marks the task as cancelling
//! ([`is_cancelling`]) with the cancel's [`CancelId`] ([`is_own_cancellation`]) and
//! passes the cancel on to what the task awaits right now:
//!
//! - **A Deferred** (or a future wrapped in [`interruptible`]): it is cancelled, and its
//!   `CancelledError` comes out of the `await` as `Err(failure)` when the task resumes.
//!   The task may handle it and go on (to clean up, even awaiting more); the returned
//!   Deferred then waits for the task's own outcome, as Twisted's `ensureDeferred` does.
//!   The future is never dropped mid-await. A result that reached the awaited Deferred
//!   before the cancel was already moved into the task's await, so a cancel arriving
//!   before the task resumed never discards it.
//! - **Any other future** (a channel, another runtime's timer), which a cancel cannot
//!   reach: the task is *aborted* at that await point, as an aborted tokio task is. Its
//!   future is dropped at once (its destructors run, in the task's log context) and the
//!   returned Deferred fails with the `CancelledError`. An output that future had
//!   produced but the task had not yet seen is dropped with it; wrap the future in
//!   [`interruptible`] to get it (or the error) in the task instead.
//! - **Nothing, because the task is running** (it cancelled itself, or something it
//!   called did): the cancel is passed on when the running poll returns, by the rules
//!   above, to whatever the task then awaits. A task that finishes within that poll
//!   keeps its outcome: the cancel came too late, as for a Deferred that already fired.
//!
//! So a cancel is never silently lost: the task sees it as an `Err` from an `await`, or
//! is stopped with it, or had already finished.
//!
//! [`ContextScope`]: crate::logcontext::ContextScope

use std::future::Future;
#[cfg(doc)]
use std::task::Waker;

#[cfg(doc)]
use crate::CancelId;
use crate::{CancelledError, Deferred, Failure};

mod awaiting;
mod runner;
mod testing;

pub use awaiting::{interruptible, DeferredFuture, Interruptible};
pub use testing::{
    cancellable, check_cancellation_at_each_await, Cancellable, CancellationReport, MaybeCancellable,
};

/// Runs `future` as a task and returns a Deferred for its outcome (Twisted's
/// `ensureDeferred`). The future is polled at once, up to its first suspension, and
/// again each time it is woken.
///
/// ```
/// use weft::{future::ensure_deferred, Deferred, Failure};
///
/// let input: Deferred<u32> = Deferred::new();
/// let i = input.clone();
/// let out = ensure_deferred(async move {
///     let x = i.await?;
///     Ok::<_, Failure>(x + 1)
/// });
/// input.callback(41).unwrap();
/// assert_eq!(out.take_result().unwrap().unwrap(), 42);
/// ```
///
/// # Cancellation
///
/// Cancelling the returned Deferred passes the cancel to what the task awaits now: a
/// Deferred is cancelled and its `CancelledError` comes out of the `await`; any other
/// future is dropped and the task stops there with `CancelledError` (unless wrapped in
/// [`interruptible`]). See the module docs.
///
/// # Log context
///
/// The task runs in the context current now, and in whatever context it leaves current
/// at each suspension; the caller's context is current again when this returns and
/// after every later poll.
#[must_use = "the Deferred carries the task's outcome"]
#[track_caller]
pub fn ensure_deferred<T, F>(future: F) -> Deferred<T>
where
    T: 'static,
    F: Future<Output = Result<T, Failure>> + 'static,
{
    runner::spawn(future)
}

/// True if the task running now (inside [`ensure_deferred`]) has been cancelled. False
/// outside a task.
pub fn is_cancelling() -> bool {
    runner::current_task().is_some_and(|t| t.is_cancelling())
}

/// True if `failure` is the `CancelledError` of a cancel of the task running now (its
/// own cancellation), false if it is some other failure, such as a `CancelledError`
/// from someone else cancelling a Deferred this task awaited.
///
/// ```
/// use weft::{future::{ensure_deferred, is_own_cancellation}, Deferred};
///
/// let shared: Deferred<()> = Deferred::new();
/// let s = shared.clone();
/// let task = ensure_deferred(async move {
///     match s.await {
///         Err(f) if is_own_cancellation(&f) => Err(f), // I am cancelled: let it through
///         Err(_) => Ok("the thing I awaited was cancelled by someone else"),
///         Ok(()) => Ok("done"),
///     }
/// });
/// shared.cancel();
/// assert_eq!(task.take_result().unwrap().unwrap(), "the thing I awaited was cancelled by someone else");
/// ```
pub fn is_own_cancellation(failure: &Failure) -> bool {
    match (runner::current_task(), failure.downcast_ref::<CancelledError>()) {
        (Some(task), Some(c)) => task.is_own(c.id()),
        _ => false,
    }
}

/// How many tasks started by [`ensure_deferred`] on this thread have not finished.
pub fn pending_tasks() -> usize {
    runner::pending_tasks()
}

/// How many times, so far on this thread, a task suspended on a Deferred that had no
/// result yet, or on an [`interruptible`] future (an *await point*: where a cancel
/// reaches the task as an error). Used by [`check_cancellation_at_each_await`].
pub fn await_points() -> u64 {
    runner::await_points()
}
