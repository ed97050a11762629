//! The time interface ([`ReactorTime`]) shared by the reactor and the deterministic test
//! [`Clock`] (Twisted's `task.Clock`), so application code takes either, and
//! [`defer_later`] (Twisted's `task.deferLater`) on top of it.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::timers::{DelayedCall, TimeSource, Timers};
use crate::logcontext::PreserveLoggingContext;
use crate::{CallbackResult, Deferred};

/// What code that needs time asks of a reactor (Twisted's `IReactorTime`): the current
/// time and calls scheduled for later. Implemented by the real reactor and by [`Clock`].
///
/// Take `&dyn ReactorTime` (or `impl ReactorTime`) in application code, and pass a
/// [`Clock`] in tests to move time by hand.
///
/// ```
/// use std::{cell::Cell, rc::Rc, time::Duration};
/// use weft::{Clock, ReactorTime};
///
/// fn remind(time: &dyn ReactorTime, fired: Rc<Cell<bool>>) {
///     time.call_later(Duration::from_secs(30), Box::new(move || fired.set(true)));
/// }
///
/// let clock = Clock::new();
/// let fired = Rc::new(Cell::new(false));
/// remind(&clock, fired.clone());
/// clock.advance(Duration::from_secs(29));
/// assert!(!fired.get());
/// clock.advance(Duration::from_secs(1));
/// assert!(fired.get());
/// ```
pub trait ReactorTime {
    /// The current time, as a duration since this clock started.
    fn now(&self) -> Duration;

    /// The current time in seconds (Twisted's `seconds()`).
    fn seconds(&self) -> f64 {
        self.now().as_secs_f64()
    }

    /// Schedules `f` to run `delay` from now (Twisted's `callLater`). Calls run in
    /// deadline order, first-in first-out among equal deadlines.
    fn call_later(&self, delay: Duration, f: Box<dyn FnOnce()>) -> DelayedCall;
}

/// A deterministic clock for tests (Twisted's `task.Clock`): time moves only when
/// [`advance`](Clock::advance) or [`pump`](Clock::pump) is called, and nothing sleeps.
///
/// Cloning gives another handle to the same clock.
#[derive(Clone)]
pub struct Clock {
    timers: Rc<Timers>,
    /// The watch over the thread's free lists, kept at each `advance` as a reactor keeps
    /// it at each turn (on the real clock: the memory is real), and when it began.
    free_lists_idle: Rc<(crate::free_list::Decay, Instant)>,
}

impl Clock {
    /// A clock at time zero with nothing scheduled.
    pub fn new() -> Clock {
        Clock {
            timers: Timers::new(TimeSource::Manual(Default::default())),
            free_lists_idle: Rc::new((crate::free_list::Decay::new(), Instant::now())),
        }
    }

    /// Moves time forward by `amount` and runs every call that is due, in order,
    /// including calls scheduled by those calls that fall due within the new time.
    pub fn advance(&self, amount: Duration) {
        let now = match &self.timers.source {
            TimeSource::Manual(now) => {
                now.set(now.get().saturating_add(amount));
                now.get()
            }
            TimeSource::Real(_) => unreachable!("a Clock always has manual time"),
        };
        while let Some(call) = self.timers.pop_due(now) {
            // Due calls run in the sentinel, as in the reactor; `Timers::schedule`
            // wrapped those scheduled in a log context to run in it.
            let _sentinel = PreserveLoggingContext::sentinel();
            call.run();
        }
        let (decay, start) = &*self.free_lists_idle;
        decay.release_idle(|| start.elapsed());
    }

    /// Advances by each of `timings` in turn (Twisted's `pump`).
    pub fn pump(&self, timings: &[Duration]) {
        for &t in timings {
            self.advance(t);
        }
    }

    /// Schedules `f` to run `delay` from now; the generic form of
    /// [`ReactorTime::call_later`]. What `f` returns is dropped, so
    /// `move || d.cancel()` fits (Twisted's `clock.callLater(5, d.cancel)`).
    pub fn call_later<F: FnOnce() -> R + 'static, R>(&self, delay: Duration, f: F) -> DelayedCall {
        self.timers.schedule(delay, move || drop(f()))
    }

    /// How many calls are scheduled and not yet run or cancelled (Twisted's
    /// `len(getDelayedCalls())`).
    pub fn pending_calls(&self) -> usize {
        self.timers.len()
    }

    /// The calls scheduled and not yet run or cancelled, in the order they will run
    /// (Twisted's `getDelayedCalls`). Each is a handle like the one `call_later`
    /// returned (equal to it), so it can be inspected, cancelled or reset.
    ///
    /// ```
    /// use std::time::Duration;
    /// use weft::Clock;
    ///
    /// let clock = Clock::new();
    /// let later = clock.call_later(Duration::from_secs(2), || ());
    /// let sooner = clock.call_later(Duration::from_secs(1), || ());
    /// assert_eq!(clock.get_delayed_calls(), [sooner, later]);
    /// ```
    pub fn get_delayed_calls(&self) -> Vec<DelayedCall> {
        self.timers.delayed_calls()
    }

    /// When the next call is due, if any.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.timers.next_deadline()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl ReactorTime for Clock {
    fn now(&self) -> Duration {
        self.timers.now()
    }

    fn call_later(&self, delay: Duration, f: Box<dyn FnOnce()>) -> DelayedCall {
        self.timers.schedule(delay, f)
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clock").field("now", &self.timers.now()).field("pending", &self.timers.len()).finish()
    }
}

/// A Deferred that fires with what `f` returns, `delay` from now (Twisted's
/// `deferLater`). `f` may return a value, a `Result<T, Failure>` or a `Deferred<T>`; a
/// panic in `f` becomes a Failure.
///
/// # Cancellation
///
/// Cancelling the Deferred before `delay` passed cancels the timer: `f` never runs.
///
/// ```
/// use std::time::Duration;
/// use weft::{Clock, reactor::defer_later};
///
/// let clock = Clock::new();
/// let d = defer_later(&clock, Duration::from_secs(2), || 42);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(d.result().unwrap().unwrap(), 42);
/// ```
#[must_use = "the Deferred carries f's result"]
pub fn defer_later<T, F, R>(time: &dyn ReactorTime, delay: Duration, f: F) -> Deferred<T>
where
    T: 'static,
    F: FnOnce() -> R + 'static,
    R: CallbackResult<T>,
{
    let slot: Rc<RefCell<Option<DelayedCall>>> = Rc::new(RefCell::new(None));
    let s = slot.clone();
    let d = Deferred::with_canceller(move |_| {
        let call = s.borrow_mut().take();
        if let Some(call) = call {
            let _ = call.cancel();
        }
    });
    let target = d.to_ref();
    let call = time.call_later(
        delay,
        Box::new(move || {
            let next = crate::panics::catching(|| f().into_next())
                .unwrap_or_else(|failure| crate::deferred::Next::Ready(Err(failure)));
            if target.fire(next).is_err() {
                log::debug!(target: "weft::reactor", "defer_later: Deferred already called");
            }
        }),
    );
    *slot.borrow_mut() = Some(call);
    d
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::DelayedCallError;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn cancel_reset_delay_and_states() {
        let clock = Clock::new();
        let hits = Rc::new(RefCell::new(Vec::new()));
        let h = hits.clone();
        let a = clock.call_later(secs(5), move || h.borrow_mut().push("a"));
        let h = hits.clone();
        let b = clock.call_later(secs(5), move || h.borrow_mut().push("b"));
        assert_eq!(a.get_time(), Some(secs(5)));
        a.reset(secs(1)).unwrap();
        assert_eq!(a.get_time(), Some(secs(1)));
        b.delay(secs(2)).unwrap();
        assert_eq!(b.get_time(), Some(secs(7)));
        clock.advance(secs(1));
        assert_eq!(*hits.borrow(), ["a"]);
        assert!(!a.is_active());
        assert_eq!(a.cancel(), Err(DelayedCallError::AlreadyCalled));
        b.cancel().unwrap();
        assert_eq!(b.cancel(), Err(DelayedCallError::AlreadyCancelled));
        assert_eq!(b.reset(secs(1)), Err(DelayedCallError::AlreadyCancelled));
        clock.advance(secs(100));
        assert_eq!(*hits.borrow(), ["a"]);
        assert_eq!(clock.pending_calls(), 0);
    }

    #[test]
    fn calls_scheduled_while_advancing_fire_if_due() {
        let clock = Clock::new();
        let hits = Rc::new(RefCell::new(Vec::new()));
        let (c, h) = (clock.clone(), hits.clone());
        clock.call_later(secs(1), move || {
            h.borrow_mut().push(c.now());
            let h2 = h.clone();
            let c2 = c.clone();
            c.call_later(secs(0), move || h2.borrow_mut().push(c2.now()));
            let h3 = h.clone();
            c.call_later(secs(5), move || h3.borrow_mut().push(Duration::MAX));
        });
        clock.pump(&[secs(1), secs(1)]);
        assert_eq!(*hits.borrow(), [secs(1), secs(1)]);
        assert_eq!(clock.pending_calls(), 1);
    }

    #[test]
    fn cancelled_timers_release_memory() {
        let clock = Clock::new();
        let payload = Rc::new(());
        let calls: Vec<_> = (0..10_000)
            .map(|i| {
                let p = payload.clone();
                clock.call_later(secs(3600) + Duration::from_millis(i), move || drop(p))
            })
            .collect();
        assert_eq!(Rc::strong_count(&payload), 10_001);
        for c in calls.iter().rev().step_by(2).chain(calls.iter().step_by(2)) {
            let _ = c.cancel();
        }
        assert_eq!(Rc::strong_count(&payload), 1);
        assert_eq!(clock.pending_calls(), 0);
    }
}
