//! What a cancel did, and what it leaves behind for a person debugging it.
//!
//! - [`CancelOutcome`]: the value `cancel()` returns, read off the last Deferred the cancel
//!   reached. Computing it costs a flag in the cold part of the Deferreds the cancel
//!   reaches and a look at their state once the cancellers have run.
//! - Provenance: while [`set_debugging`](super::set_debugging) is on, a cancel records
//!   its path ([`CancelStep`]s) in a list shared by every `CancelledError` it makes
//!   (the thread-local `TRACE`, beside the cancel's id in `cancel.rs`). Off, nothing is
//!   recorded and nothing is allocated.
//! - Reports, while debugging: an errback that turns a cancel that passed through its
//!   Deferred into a value ("a swallowed cancel"), and a callback that returns with a
//!   log context other than its own current (a context leak). Both name the callback's
//!   file:line.

use std::cell::RefCell;
use std::fmt;
use std::panic::Location;
use std::rc::Rc;

use crate::failure::{At, CancelId, CancelledError, Failure};
use crate::logcontext::Captured;

/// What a call to [`Deferred::cancel`](crate::Deferred::cancel) did, read off the last
/// Deferred the cancel reached (the one the chain was waiting on at the end of the walk
/// from the invoker to the responder).
///
/// It is not `#[must_use]`: code that does not care writes `d.cancel();` as before.
///
/// ```
/// use weft::{stop_cancellation, CancelOutcome, Deferred};
///
/// let d: Deferred<u8> = Deferred::new();
/// assert_eq!(d.cancel(), CancelOutcome::Cancelled);
/// assert_eq!(d.cancel(), CancelOutcome::AlreadyFired); // the CancelledError is there
///
/// let work: Deferred<u8> = Deferred::new();
/// let mine = stop_cancellation(&work);
/// assert_eq!(mine.cancel(), CancelOutcome::Shielded); // `work` goes on
/// # let _ = (d.take_result(), mine.take_result());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CancelOutcome {
    /// The cancel stopped the work: the last Deferred it reached failed with this
    /// cancel's [`CancelledError`] (directly, or wrapped in a combinator's `FirstError`
    /// or `FailureGroup`), and that failure is on its way down the chain (already
    /// delivered unless something upstream is paused).
    Cancelled,
    /// Too late: the Deferred already had its result (or was running a callback with
    /// it), so nothing was cancelled and the result is kept. Also what a second
    /// `cancel()` returns.
    AlreadyFired,
    /// A canceller (the creator's, a layer's) or a task that caught the cancel gave the
    /// last Deferred a result other than this cancel's failure: a value, or a more
    /// specific failure (a `TimeoutError`, say). That result travels down the chain.
    /// A [`DeferredList`](crate::DeferredList) without `fire_on_one_errback` lands here
    /// too: it answers a cancel with the list of its members' outcomes.
    FiredByCanceller,
    /// The invoker's Deferred failed with `CancelledError` at once, but the cancel
    /// stopped at a shield ([`stop_cancellation`](crate::stop_cancellation), an
    /// [`ObservableDeferred`](crate::ObservableDeferred) observer): the work behind it was
    /// not cancelled and goes on, for its other users.
    Shielded,
    /// The cancel was accepted but the failure (or result) comes later: the last Deferred
    /// is paused (as [`delay_cancellation`](crate::delay_cancellation) pauses it until
    /// the work it waits for ends), a task goes on to handle the cancel, or the cancel
    /// was nested so deep in other cancellers that it was queued (it runs before the
    /// outermost `cancel()` returns).
    Delayed,
}

/// One step of a cancel's path (see [`CancelledError::trace`]). Locations are where the
/// Deferred was created, or where the canceller was added.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CancelStep {
    /// The cancel reached the Deferred created at this place.
    Entered(&'static Location<'static>),
    /// It ran the layer canceller added (with `add_canceller`) at this place.
    Layer(&'static Location<'static>),
    /// It ran the creator's canceller of the Deferred made (with `with_canceller`) at
    /// this place.
    Canceller(&'static Location<'static>),
    /// It stopped at the Deferred created at this place, with this outcome.
    Stopped(CancelOutcome, &'static Location<'static>),
}

impl fmt::Debug for CancelStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CancelStep::Entered(at) => write!(f, "entered deferred created at {}", At(at)),
            CancelStep::Layer(at) => write!(f, "ran layer canceller added at {}", At(at)),
            CancelStep::Canceller(at) => write!(f, "ran canceller of deferred created at {}", At(at)),
            CancelStep::Stopped(outcome, at) => {
                write!(f, "stopped ({outcome:?}) at deferred created at {}", At(at))
            }
        }
    }
}

/// The path of one cancel, shared by its errors.
pub(crate) type TraceLog = Rc<RefCell<Vec<CancelStep>>>;

thread_local! {
    /// The path of the cancellation under way on this thread, while debugging.
    static TRACE: RefCell<Option<TraceLog>> = const { RefCell::new(None) };
}

/// A new, empty path if debugging is on.
pub(super) fn new_trace() -> Option<TraceLog> {
    super::is_debugging().then(|| Rc::new(RefCell::new(Vec::new())))
}

/// The path of the cancellation under way, if one is being recorded.
pub(super) fn current_trace() -> Option<TraceLog> {
    if !super::is_debugging() {
        return None;
    }
    TRACE.with(|t| t.borrow().clone())
}

/// Makes `trace` the current path; returns the previous one, for [`restore_trace`].
pub(super) fn replace_trace(trace: Option<TraceLog>) -> Option<TraceLog> {
    TRACE.with(|t| t.replace(trace))
}

/// Puts back the path [`replace_trace`] returned.
pub(super) fn restore_trace(previous: Option<TraceLog>) {
    TRACE.with(|t| *t.borrow_mut() = previous);
}

/// Records `step` in the current path, if one is being recorded.
pub(super) fn record(step: CancelStep) {
    if !super::is_debugging() {
        return;
    }
    record_slow(step);
}

#[cold]
fn record_slow(step: CancelStep) {
    TRACE.with(|t| {
        if let Some(trace) = &*t.borrow() {
            trace.borrow_mut().push(step);
        }
    });
}

/// The cancel a failure stands for: a [`CancelledError`], or one that a combinator's
/// `FirstError` (or an error's `source()` chain) wraps, or the first a `FailureGroup`
/// holds.
pub(crate) fn cancel_in(f: &Failure) -> Option<&CancelledError> {
    if let Some(c) = f.downcast_ref::<CancelledError>() {
        return Some(c);
    }
    if let Some(group) = f.downcast_ref::<crate::FailureGroup>() {
        return group.failures.iter().find_map(cancel_in);
    }
    if let Some(first) = f.downcast_ref::<crate::FirstError>() {
        return cancel_in(&first.failure);
    }
    let mut source = f.as_error().source();
    while let Some(e) = source {
        if let Some(c) = e.downcast_ref::<CancelledError>() {
            return Some(c);
        }
        source = e.source();
    }
    None
}

/// How a Deferred was fired while its cancellers ran (see `Cold::cancel_fire`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum CancelFire {
    /// No cancel is running cancellers on this Deferred.
    Off,
    /// A cancel runs this Deferred's cancellers; not fired yet.
    Watching,
    /// Fired with the failure of the cancel under way.
    ThisCancel,
    /// Fired with something else (a value, another failure).
    Other,
    /// Told to wait on another Deferred (a task that goes on).
    Wait,
}

impl CancelFire {
    /// What firing with `next` while watching means.
    pub(super) fn of<T>(next: &super::Next<T>, current: Option<CancelId>) -> CancelFire {
        match next {
            super::Next::Ready(Err(f)) if current.is_some() && cancel_in(f).map(|c| c.id) == current => {
                CancelFire::ThisCancel
            }
            super::Next::Wait(_) => CancelFire::Wait,
            _ => CancelFire::Other,
        }
    }
}

/// While debugging, before a callback runs on `input`: the cancel it carries, if that
/// cancel passed through this Deferred (`passed`), so that an errback turning it into a
/// value can be reported.
#[cold]
pub(super) fn invoker_cancel<T>(input: &Result<T, Failure>, passed: u64) -> Option<CancelledError> {
    let Err(f) = input else { return None };
    let c = cancel_in(f)?;
    (c.id.0 == passed).then(|| c.clone())
}

/// While debugging, after a callback added at `at` returned: warns if it left a log
/// context other than its own current (a leak).
#[cold]
pub(super) fn check_leak(captured: &Captured, at: &'static Location<'static>) {
    if !captured.is_current() {
        log::warn!(
            "log context '{}' is still current after the callback added at {} returned (expected '{}'): the callback leaked it",
            crate::logcontext::current_request_id().as_deref().unwrap_or("sentinel"),
            At(at),
            captured.name()
        );
    }
}

/// While debugging, when a chain that an errback (added at `at`) recovered from the
/// invoker's `cancel` stops with a value: the cancel was swallowed.
#[cold]
pub(super) fn report_swallowed(at: &'static Location<'static>, cancel: &CancelledError) {
    log::warn!(
        "the errback added at {} swallowed cancel #{} (started at {}): the chain succeeded although its invoker cancelled it; let the CancelledError through (trap other errors only)",
        At(at),
        cancel.id.0,
        At(cancel.location)
    );
}

/// While debugging, when a task started (by `ensure_deferred`) at `spawned_at` finishes
/// with a value although its Deferred was cancelled (cancel `id`, started at `at`): its
/// code caught the cancel.
#[cold]
pub(crate) fn report_task_swallowed(
    spawned_at: &'static Location<'static>,
    id: CancelId,
    at: &'static Location<'static>,
) {
    log::warn!(
        "the task started at {} swallowed cancel #{} (started at {}): it finished with a value although its invoker cancelled it; let the CancelledError through (match on other errors only)",
        At(spawned_at),
        id.0,
        At(at)
    );
}
