//! The crate's panic policy, in one place.
//!
//! weft runs user code from its own loops: callbacks and errbacks, cancellers, protocol
//! and producer methods, timer and reactor callbacks, request handlers, hooks, futures.
//! A panic there must not unwind through weft's state (a borrowed `RefCell`, a loop half
//! way through its queue), so every such call goes through one of these three, chosen by
//! who waits for the code's result:
//!
//! - [`catching`] (and [`catching_at`]): someone does. The panic becomes the outcome, a
//!   [`PanicError`](crate::PanicError) [`Failure`], and goes where the result would have
//!   gone: a Deferred's next link, a connection's `connection_lost`, a 500 response, a
//!   looping call's Deferred.
//! - [`guarded`]: nobody does (a canceller, a timer, a hook). The panic is logged at
//!   error level, naming what was running, and the caller goes on.
//! - [`caught`]: the payload itself, for a panic that must cross a thread before it
//!   becomes a `Failure` (a pool thread's job: a `Failure` is not `Send`), be told as a
//!   message (a reactor group's setup), or be handed on as `std::thread::Result` (a future
//!   polled for tokio).
//!
//! A Deferred's callback loop catches once per loop, not once per callback (see
//! `deferred/mod.rs`, `run_held`): a panic ends the loop's `run_links`, and the loop
//! starts it again with the failure.
//!
//! Nothing else in the crate calls `catch_unwind`. Each closure is wrapped in
//! `AssertUnwindSafe`: after a panic, weft's own state is left consistent by the borrow
//! discipline (no borrow is held across user code), and the user's state is the user's,
//! as with Twisted, where an exception in a callback leaves the objects it touched as
//! they were.

use std::panic::{catch_unwind, AssertUnwindSafe, Location};

use crate::Failure;

/// Runs `f`, turning a panic into a `PanicError` [`Failure`] created at the caller's
/// place, for the caller to act on.
#[inline]
#[track_caller]
pub(crate) fn catching<R>(f: impl FnOnce() -> R) -> Result<R, Failure> {
    catching_at(Location::caller(), f)
}

/// [`catching`], with the `Failure` created at `at` (where the callback that panicked
/// was added, which says more than the place in weft that called it).
#[inline]
pub(crate) fn catching_at<R>(at: &'static Location<'static>, f: impl FnOnce() -> R) -> Result<R, Failure> {
    caught(f).map_err(|panic| Failure::from_panic_at(panic, at))
}

/// Runs `f`; a panic is logged at error level under `target` as "panic in {what}: ..."
/// and gives `None`.
#[track_caller]
pub(crate) fn guarded<R>(target: &str, what: &str, f: impl FnOnce() -> R) -> Option<R> {
    catching(f).map_err(|failure| log::error!(target: target, "panic in {what}: {failure}")).ok()
}

/// Runs `f`, handing back a panic's payload as it is.
#[inline]
pub(crate) fn caught<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    catch_unwind(AssertUnwindSafe(f))
}
