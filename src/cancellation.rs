//! The cancellation toolkit: shields ([`stop_cancellation`], [`delay_cancellation`]),
//! timeouts ([`add_timeout`], [`add_timeout_with`], [`timeout_deferred`]) and a reverse shield
//! ([`reverse_shield`]).
//!
//! A timeout cancels the Deferred it guards and turns *that* cancellation into a
//! [`TimeoutError`]; a cancel from anywhere else stays a `CancelledError`. The two are
//! told apart by the [`CancelId`](crate::CancelId) every `CancelledError` carries.

use std::cell::Cell;
use std::error::Error;
use std::fmt;
use std::panic::Location;
use std::rc::Rc;
use std::time::Duration;

use crate::deferred::{Consuming, Next, WeakDeferred};
use crate::{CancelledError, Deferred, Failure, ReactorTime};

/// A Deferred timed out (Twisted's `defer.TimeoutError`, Synapse's `DeferredTimeoutError`).
#[derive(Clone, Debug)]
pub struct TimeoutError {
    /// How long it was given.
    pub timeout: Duration,
}

impl fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timed out after {:?}", self.timeout)
    }
}

impl Error for TimeoutError {}

/// A new Deferred with `d`'s outcome that can be cancelled without cancelling `d`
/// (Synapse's `stop_cancellation`): cancelling it fails it with `CancelledError` at once,
/// and `d` goes on undisturbed. `d`'s result is moved to the new Deferred (steps added
/// to `d` afterwards get a `ResultConsumedError`; use an
/// [`ObservableDeferred`](crate::ObservableDeferred) to share it).
///
/// ```
/// use weft::{stop_cancellation, CancelledError, Deferred};
///
/// let shared: Deferred<u8> = Deferred::new();
/// let mine = stop_cancellation(&shared);
/// mine.cancel();
/// assert!(mine.take_result().unwrap().unwrap_err().check::<CancelledError>());
/// assert!(!shared.is_called()); // not cancelled
/// ```
#[must_use = "the shielded Deferred is the one to wait on"]
pub fn stop_cancellation<T: 'static>(d: &Deferred<T>) -> Deferred<T> {
    let shielded = Deferred::new();
    shielded.mark_shield();
    d.chain_deferred(&shielded);
    shielded
}

/// A new Deferred with `d`'s outcome whose cancellation waits for `d` (Synapse's
/// `delay_cancellation`): cancelling it never cancels `d`, and its `CancelledError` is
/// delivered only once `d` has completed, so that work `d` stands for (and the log
/// context it uses) is finished before the waiter moves on. `d`'s result is moved to the
/// new Deferred unless the new one was cancelled. In that case `d`'s outcome is consumed
/// on the caller's behalf, as Synapse does: a value stays in `d`, and a failure stays
/// too (later steps on `d` get it) but is never reported as unhandled.
///
/// ```
/// use weft::{delay_cancellation, CancelledError, Deferred};
///
/// let work: Deferred<u8> = Deferred::new();
/// let waiter = delay_cancellation(&work);
/// waiter.cancel();
/// assert!(waiter.is_paused()); // the CancelledError is held back
/// work.callback(1).unwrap();
/// assert!(!waiter.is_paused());
/// assert!(waiter.take_result().unwrap().unwrap_err().check::<CancelledError>());
/// assert_eq!(work.take_result().unwrap().unwrap(), 1); // `work` kept its result
/// ```
#[must_use = "the delayed Deferred is the one to wait on"]
#[track_caller]
pub fn delay_cancellation<T: 'static>(d: &Deferred<T>) -> Deferred<T> {
    let cancelled = Rc::new(Cell::new(false));
    let c = cancelled.clone();
    let waiter = Deferred::with_canceller(move |w: &Deferred<T>| {
        // Hold the waiter's chain; `cancel` then fails it with CancelledError, whose
        // callbacks run when `d` completes.
        c.set(true);
        w.pause();
    });
    let w = waiter.to_ref();
    d.add_both_consuming(move |r: Result<T, Failure>| -> Consuming<T> {
        if cancelled.get() {
            let _ = w.unpause();
            match r {
                Err(f) => Err(f),
                ok => Ok(Next::Ready(ok)),
            }
        } else {
            let _ = w.fire(Next::Ready(r));
            Ok(Next::Consumed)
        }
    });
    waiter
}

/// Makes `d` time out after `timeout` on `time` (Twisted's `Deferred.addTimeout`): if it
/// has no result by then it is cancelled, and that cancellation reaches the callbacks
/// added after this call as a [`TimeoutError`]. Callbacks added before see the
/// `CancelledError`. A cancel from anywhere else stays a `CancelledError`. The timer is
/// stopped when `d` gets a result.
///
/// The `CancelledError` of the timeout's cancel and the `TimeoutError`'s [`Failure`]
/// name the line that called `add_timeout` (`#[track_caller]`).
///
/// ```
/// use std::time::Duration;
/// use weft::{add_timeout, Clock, Deferred, TimeoutError};
///
/// let clock = Clock::new();
/// let d: Deferred<u8> = Deferred::new();
/// add_timeout(&d, Duration::from_secs(5), &clock);
/// clock.advance(Duration::from_secs(5));
/// assert!(d.take_result().unwrap().unwrap_err().check::<TimeoutError>());
/// ```
#[track_caller]
pub fn add_timeout<T: 'static>(d: &Deferred<T>, timeout: Duration, time: &dyn ReactorTime) {
    let location = Location::caller();
    let this = d.downgrade();
    add_timeout_at(d, timeout, time, location, move |r, timeout| as_timeout(r, &this, timeout, location));
}

/// [`add_timeout`] with the translation of the timeout's outcome chosen by the caller
/// (Twisted's `addTimeout(timeout, clock, onTimeoutCancel)`): once the timer has fired
/// and cancelled `d`, `on_timeout_cancel` gets the result the cancel produced (a
/// `CancelledError`, or a value if `d`'s canceller supplied one) and the timeout, and
/// returns what the callbacks added after this call get. It is not called if `d` got its
/// result before the timeout.
///
/// ```
/// use std::time::Duration;
/// use weft::{add_timeout_with, Clock, Deferred};
///
/// let clock = Clock::new();
/// let d: Deferred<&str> = Deferred::new();
/// add_timeout_with(&d, Duration::from_secs(5), &clock, |_cancelled, _timeout| Ok("too slow"));
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(d.take_result().unwrap().unwrap(), "too slow");
/// ```
#[track_caller]
pub fn add_timeout_with<T, F>(
    d: &Deferred<T>,
    timeout: Duration,
    time: &dyn ReactorTime,
    on_timeout_cancel: F,
) where
    T: 'static,
    F: FnOnce(Result<T, Failure>, Duration) -> Result<T, Failure> + 'static,
{
    add_timeout_at(d, timeout, time, Location::caller(), on_timeout_cancel);
}

fn add_timeout_at<T, F>(
    d: &Deferred<T>,
    timeout: Duration,
    time: &dyn ReactorTime,
    location: &'static Location<'static>,
    on_timeout_cancel: F,
) where
    T: 'static,
    F: FnOnce(Result<T, Failure>, Duration) -> Result<T, Failure> + 'static,
{
    let timed_out = Rc::new(Cell::new(false));
    let t = timed_out.clone();
    let target = d.downgrade();
    let call = time.call_later(
        timeout,
        Box::new(move || {
            if let Some(d) = target.upgrade() {
                t.set(true);
                d.cancel_at(location);
            }
        }),
    );
    d.add_both(move |r: Result<T, Failure>| -> Result<T, Failure> {
        let _ = call.cancel();
        if timed_out.get() {
            on_timeout_cancel(r, timeout)
        } else {
            r
        }
    });
}

/// Synapse's `timeout_deferred`: a new Deferred with `d`'s outcome, or a
/// [`TimeoutError`] if `d` has none after `timeout`, in which case `d` is cancelled.
/// Takes its arguments in the order [`add_timeout`] does.
///
/// The new Deferred fails with `TimeoutError` when the time is up even if `d` ignores
/// the cancel. Cancelling the new Deferred cancels `d`, and that stays a
/// `CancelledError`. The timeout's `CancelledError` and `TimeoutError` name the line
/// that called `timeout_deferred` (`#[track_caller]`). The new Deferred holds `d` until
/// it fires (as [`then`](Deferred::then) holds its source), so `d` need not be kept
/// elsewhere; once the new Deferred has no handle left it lets go of `d`, and the timer
/// holds neither, so a pair nobody can fire or cancel is freed.
///
/// ```
/// use std::time::Duration;
/// use weft::{timeout_deferred, Clock, Deferred, TimeoutError};
///
/// let clock = Clock::new();
/// let slow: Deferred<u8> = Deferred::new();
/// let d = timeout_deferred(&slow, Duration::from_secs(1), &clock);
/// clock.advance(Duration::from_secs(1));
/// assert!(d.take_result().unwrap().unwrap_err().check::<TimeoutError>());
/// ```
#[track_caller]
#[must_use = "the Deferred with the timeout is the one to wait on"]
pub fn timeout_deferred<T: 'static>(
    d: &Deferred<T>,
    timeout: Duration,
    time: &dyn ReactorTime,
) -> Deferred<T> {
    let location = Location::caller();
    let out: Deferred<T> = Deferred::new();
    // `out` holds `d` until it fires, and a cancel of `out` cancels it, even if nobody
    // else holds it.
    out.add_source(d.clone());
    let timed_out = Rc::new(Cell::new(false));
    let (t, target, o) = (timed_out.clone(), d.downgrade(), out.downgrade());
    let call = time.call_later(
        timeout,
        Box::new(move || {
            t.set(true);
            if let Some(d) = target.upgrade() {
                d.cancel_at(location);
            }
            if let Some(o) = o.upgrade() {
                if !o.is_called() {
                    let _ = o.errback(timeout_failure(timeout, location));
                }
            }
        }),
    );
    let (o, this) = (out.to_ref(), d.downgrade());
    d.add_both(move |r: Result<T, Failure>| -> Next<T> {
        let _ = call.cancel();
        let r = if timed_out.get() { as_timeout(r, &this, timeout, location) } else { r };
        if o.is_called() {
            return Next::Ready(r);
        }
        let _ = o.fire(Next::Ready(r));
        Next::Consumed
    });
    out
}

/// The reverse shield: a new Deferred with `d`'s outcome, except that a cancellation of
/// `d` that did not come from cancelling the new Deferred is turned into the failure
/// `convert` returns. So a caller can tell "the thing I awaited was cancelled by someone
/// else" (a converted error it may handle) from "I am being cancelled" (a
/// `CancelledError`, to let through).
///
/// ```
/// use weft::{reverse_shield, CancelledError, Deferred, Failure};
///
/// let callee: Deferred<u8> = Deferred::new();
/// let mine = reverse_shield(callee.clone(), |_| Failure::msg("callee went away"));
/// callee.cancel(); // someone else cancels the callee
/// let f = mine.take_result().unwrap().unwrap_err();
/// assert!(!f.check::<CancelledError>());
///
/// let callee: Deferred<u8> = Deferred::new();
/// let mine = reverse_shield(callee.clone(), |_| Failure::msg("callee went away"));
/// mine.cancel(); // I am cancelled: that stays a CancelledError
/// assert!(mine.take_result().unwrap().unwrap_err().check::<CancelledError>());
/// ```
#[must_use = "the shielded Deferred is the one to wait on"]
pub fn reverse_shield<T, F>(d: Deferred<T>, convert: F) -> Deferred<T>
where
    T: 'static,
    F: FnOnce(&CancelledError) -> Failure + 'static,
{
    let me: Rc<Cell<Option<crate::CancelId>>> = Rc::new(Cell::new(None));
    let m = me.clone();
    let out = d.then(move |r: Result<T, Failure>| -> Result<T, Failure> {
        match r {
            Err(f) => match f.downcast_ref::<CancelledError>() {
                Some(c) if Some(c.id()) != m.get() => Err(convert(c)),
                _ => Err(f),
            },
            ok => ok,
        }
    });
    // Remember the id of a cancel that starts at `out` (or passes through it) before it
    // reaches `d`.
    out.add_canceller(move |c: &CancelledError| me.set(Some(c.id())));
    out
}

/// After the timer fired: turns the `CancelledError` of the timer's own cancel of
/// `this` into a `TimeoutError`; any other outcome passes unchanged.
fn as_timeout<T: 'static>(
    r: Result<T, Failure>,
    this: &WeakDeferred<T>,
    timeout: Duration,
    location: &'static Location<'static>,
) -> Result<T, Failure> {
    match r {
        Err(f) => {
            let ours = match (f.downcast_ref::<CancelledError>(), this.upgrade()) {
                (Some(c), Some(d)) => c.cancelled_by(&d),
                _ => false,
            };
            if ours {
                Err(timeout_failure(timeout, location))
            } else {
                Err(f)
            }
        }
        r => r,
    }
}

/// A `TimeoutError` failure naming `location` (the caller of the timeout function).
fn timeout_failure(timeout: Duration, location: &'static Location<'static>) -> Failure {
    Failure::from_boxed_at(Box::new(TimeoutError { timeout }), location)
}
