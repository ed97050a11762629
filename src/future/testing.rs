//! Testing and marking handlers for cancellation: the [`cancellable`] marker (Synapse's
//! `@cancellable`) and [`check_cancellation_at_each_await`] (Synapse's
//! `make_request_with_cancellation_test`).

use super::{await_points, pending_tasks};
use crate::Deferred;

/// Marks a request handler as safe to cancel when its client goes away (Synapse's
/// `@cancellable`). The marker does nothing by itself; a server asks
/// [`MaybeCancellable::is_cancellable`] before cancelling a request's Deferred.
///
/// ```
/// use weft::future::{cancellable, MaybeCancellable};
///
/// let on_get = cancellable(|| weft::succeed(200));
/// assert!(on_get.is_cancellable());
/// assert_eq!((on_get.0)().take_result().unwrap().unwrap(), 200);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Cancellable<H>(pub H);

/// Marks `handler` as cancellable.
pub fn cancellable<H>(handler: H) -> Cancellable<H> {
    Cancellable(handler)
}

/// Whether a handler may be cancelled when its client disconnects. Handlers are not
/// cancellable unless wrapped in [`Cancellable`].
pub trait MaybeCancellable {
    /// True if the handler was marked with [`cancellable`].
    fn is_cancellable(&self) -> bool {
        false
    }
}

impl<H> MaybeCancellable for Cancellable<H> {
    fn is_cancellable(&self) -> bool {
        true
    }
}

/// What [`check_cancellation_at_each_await`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancellationReport {
    /// Await points in the uncancelled run.
    pub await_points: u64,
    /// The await points at which a cancel was made.
    pub cancelled_at: Vec<u64>,
}

/// Synapse's cancellation test helper: runs a handler once to count its await points,
/// then once per await point, cancelling it there, and checks that it finishes cleanly.
///
/// - `start` starts the handler (typically `ensure_deferred(handler(..))`) and returns
///   its Deferred.
/// - `step` moves the world on by one step (say, advances a [`Clock`](crate::Clock) or
///   fires a pending Deferred); it returns false when there is nothing left to do.
/// - `check` is called after each cancelled run has been driven to the end, with the
///   await point and the handler's Deferred, to assert that shared work observed by
///   others was not cancelled and that no waiter is left in a lock or queue.
///
/// Each cancelled run is checked to finish (the Deferred has a result), to leave no
/// task of [`ensure_deferred`](super::ensure_deferred) pending, and to leave the log context that was current
/// before it current again (no context leaks out of a cancelled handler).
///
/// An await point is counted when a task suspends on a Deferred without a result (or on
/// an [`interruptible`](super::interruptible) future). If a
/// single step passes several await points, the cancel is made at the first one
/// reached at or after the target.
///
/// # Panics
///
/// If a run does not finish, leaves a task pending, or leaks a log context.
#[track_caller]
pub fn check_cancellation_at_each_await<T: 'static>(
    mut start: impl FnMut() -> Deferred<T>,
    mut step: impl FnMut() -> bool,
    mut check: impl FnMut(u64, &Deferred<T>),
) -> CancellationReport {
    const MAX_STEPS: usize = 100_000;
    let baseline_tasks = pending_tasks();
    let c0 = await_points();
    let d = start();
    drive(&d, &mut step, MAX_STEPS);
    assert!(d.is_called(), "the handler did not finish in the uncancelled run");
    let n = await_points() - c0;
    let context_before = crate::logcontext::current_context();
    let context_before_name = crate::logcontext::current_request_id();
    let mut cancelled_at = Vec::new();
    for i in 1..=n {
        let c0 = await_points();
        let d = start();
        let mut steps = 0;
        while await_points() - c0 < i && !d.is_called() && steps < MAX_STEPS && step() {
            steps += 1;
        }
        if !d.is_called() {
            cancelled_at.push(await_points() - c0);
            d.cancel();
        }
        drive(&d, &mut step, MAX_STEPS);
        assert!(d.is_called(), "the handler cancelled at await point {i} never finished");
        assert_eq!(
            pending_tasks(),
            baseline_tasks,
            "a task was left pending after a cancel at await point {i}"
        );
        let now = crate::logcontext::current_context();
        assert!(
            crate::logcontext::LoggingContext::ptr_eq(&now, &context_before),
            "the log context leaked after a cancel at await point {i}: {:?} is current instead of {:?}",
            crate::logcontext::current_request_id(),
            context_before_name,
        );
        check(i, &d);
    }
    CancellationReport { await_points: n, cancelled_at }
}

fn drive<T: 'static>(d: &Deferred<T>, step: &mut impl FnMut() -> bool, max: usize) {
    let mut steps = 0;
    while steps < max && (!d.is_called() || pending_tasks() > 0) && step() {
        steps += 1;
    }
}
