//! [`LoopingCall`] (Twisted's `task.LoopingCall`) on top of [`ReactorTime`]: it works with
//! the real reactor and with the test [`Clock`](super::Clock).
//!
//! A loop is in one of three states: stopped; *waiting* for its next call (a timer is
//! scheduled, `call` is `Some`); or *in a call* (the function runs, or the Deferred it
//! returned has not fired yet; `in_call` is true and no timer is scheduled). The next
//! call is scheduled only when the current one has finished, so calls never overlap.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use super::{DelayedCall, ReactorTime};
use crate::deferred::Next;
use crate::{CallbackResult, Deferred, Failure};

/// Calls a function every `interval` (Twisted's `task.LoopingCall`). Cheap to clone.
///
/// The function may return `()`, a `Result<(), Failure>` or a `Deferred<()>`. A
/// Deferred makes the loop wait for it: the next call is scheduled once it fires. An
/// `Err`, a failed Deferred or a panic stops the loop and fails the Deferred from
/// [`start`](Self::start) with that failure.
///
/// Calls are kept on the grid `start + k * interval`: if a call runs (or finishes) late,
/// the missed slots are skipped rather than run in a burst; [`with_count`](Self::with_count)
/// tells the function how many slots went by.
///
/// ```
/// use std::{cell::Cell, rc::Rc, time::Duration};
/// use weft::{Clock, reactor::LoopingCall};
///
/// let clock = Clock::new();
/// let n = Rc::new(Cell::new(0));
/// let n2 = n.clone();
/// let lc = LoopingCall::new(clock.clone(), move || n2.set(n2.get() + 1));
/// let done = lc.start(Duration::from_secs(1), true);
/// clock.pump(&[Duration::from_secs(1); 3]);
/// assert_eq!(n.get(), 4);
/// lc.stop();
/// assert!(done.is_called());
/// ```
///
/// # Log context
///
/// Each call runs in the log context current when [`start`](Self::start) was called
/// (the first one, with `now`, runs inside `start`).
///
/// # Drop
///
/// The scheduled call holds the loop: dropping every `LoopingCall` handle does not stop
/// it. Call [`stop`](Self::stop).
#[derive(Clone)]
pub struct LoopingCall {
    inner: Rc<LoopInner>,
}

struct LoopInner {
    time: Rc<dyn ReactorTime>,
    /// Taken out while it runs.
    f: RefCell<Option<LoopFn>>,
    running: Cell<bool>,
    /// The function runs, or the Deferred it returned has not fired.
    in_call: Cell<bool>,
    interval: Cell<Duration>,
    started_at: Cell<Duration>,
    run_at_start: Cell<bool>,
    /// When the counted function was last called (Twisted's `_realLastTime`).
    last_call: Cell<Option<Duration>>,
    /// The timer of the next call, while waiting for it.
    call: RefCell<Option<DelayedCall>>,
    done: RefCell<Option<Deferred<()>>>,
}

enum LoopFn {
    Plain(Box<dyn FnMut() -> Next<()>>),
    Counted(Box<dyn FnMut(u64) -> Next<()>>),
}

impl LoopingCall {
    /// A looping call of `f` on `time` (a [`Clock`](super::Clock) or a reactor handle);
    /// not started.
    pub fn new<C, F, R>(time: C, mut f: F) -> LoopingCall
    where
        C: ReactorTime + 'static,
        F: FnMut() -> R + 'static,
        R: CallbackResult<()>,
    {
        LoopingCall::with_fn(time, LoopFn::Plain(Box::new(move || f().into_next())))
    }

    /// A looping call that passes `f` the number of intervals that went by since its
    /// last call (Twisted's `LoopingCall.withCount`): 1 when it runs on time, more when
    /// calls were skipped because the loop ran late or the previous call's Deferred took
    /// longer than an interval. The counts add up to the number of intervals elapsed.
    /// With a zero interval the count is always 1.
    ///
    /// ```
    /// use std::{cell::RefCell, rc::Rc, time::Duration};
    /// use weft::{Clock, reactor::LoopingCall};
    ///
    /// let clock = Clock::new();
    /// let counts = Rc::new(RefCell::new(Vec::new()));
    /// let c = counts.clone();
    /// let lc = LoopingCall::with_count(clock.clone(), move |n| c.borrow_mut().push(n));
    /// let _done = lc.start(Duration::from_secs(1), true);
    /// clock.advance(Duration::from_secs(1));
    /// clock.advance(Duration::from_secs(3)); // two calls were skipped
    /// assert_eq!(*counts.borrow(), [1, 1, 3]);
    /// # lc.stop();
    /// ```
    pub fn with_count<C, F, R>(time: C, mut f: F) -> LoopingCall
    where
        C: ReactorTime + 'static,
        F: FnMut(u64) -> R + 'static,
        R: CallbackResult<()>,
    {
        LoopingCall::with_fn(time, LoopFn::Counted(Box::new(move |n| f(n).into_next())))
    }

    fn with_fn<C: ReactorTime + 'static>(time: C, f: LoopFn) -> LoopingCall {
        LoopingCall {
            inner: Rc::new(LoopInner {
                time: Rc::new(time),
                f: RefCell::new(Some(f)),
                running: Cell::new(false),
                in_call: Cell::new(false),
                interval: Cell::new(Duration::ZERO),
                started_at: Cell::new(Duration::ZERO),
                run_at_start: Cell::new(false),
                last_call: Cell::new(None),
                call: RefCell::new(None),
                done: RefCell::new(None),
            }),
        }
    }

    /// Starts calling every `interval`, the first call at once if `now`, else after one
    /// interval. The Deferred fires with `()` once the loop stops after
    /// [`stop`](Self::stop), or fails with the failure that stopped it.
    ///
    /// # Panics
    ///
    /// If the loop is running, or still in a call that [`stop`](Self::stop) was called
    /// from (start it again once the Deferred from the previous `start` has fired).
    #[track_caller]
    #[must_use = "the Deferred tells when the loop stopped, and why"]
    pub fn start(&self, interval: Duration, now: bool) -> Deferred<()> {
        let inner = &self.inner;
        assert!(!inner.running.get(), "LoopingCall is already running");
        assert!(!inner.in_call.get(), "LoopingCall is still in its last call");
        let d = Deferred::new();
        *inner.done.borrow_mut() = Some(d.clone());
        inner.running.set(true);
        inner.interval.set(interval);
        inner.started_at.set(inner.time.now());
        inner.run_at_start.set(now);
        inner.last_call.set(None);
        if now {
            LoopInner::tick(inner);
        } else {
            LoopInner::schedule(inner);
        }
        d
    }

    /// Stops the loop. Between calls, the pending call is cancelled and the Deferred
    /// from [`start`](Self::start) fires with `()` at once. Called from inside the
    /// function (or while the Deferred it returned is pending), no further call is made
    /// and the Deferred fires when that call finishes: with `()`, or with its failure if
    /// it failed (as Twisted does). Does nothing if not running.
    pub fn stop(&self) {
        let inner = &self.inner;
        if !inner.running.replace(false) {
            return;
        }
        let call = inner.call.borrow_mut().take();
        if let Some(c) = call {
            let _ = c.cancel();
            inner.finish(Ok(()));
        }
    }

    /// Restarts the interval from now (Twisted's `reset`): the next call is one whole
    /// interval away, and the grid of later calls starts here. Does nothing if the loop
    /// is not running or is in a call (the call schedules the next one when it ends).
    pub fn reset(&self) {
        let inner = &self.inner;
        let call = inner.call.borrow_mut().take();
        if let Some(c) = call {
            let _ = c.cancel();
            inner.started_at.set(inner.time.now());
            LoopInner::schedule(inner);
        }
    }

    /// True between [`start`](Self::start) and [`stop`](Self::stop) (or the failure
    /// that stopped the loop).
    pub fn is_running(&self) -> bool {
        self.inner.running.get()
    }

    /// The interval between calls.
    pub fn interval(&self) -> Duration {
        self.inner.interval.get()
    }

    /// Changes the interval (Twisted's `loop.interval = ...`). It takes effect when the
    /// next call is scheduled: a call already scheduled keeps its time.
    pub fn set_interval(&self, interval: Duration) {
        self.inner.interval.set(interval);
    }
}

impl LoopInner {
    /// The timer fired (or `start` with `now`): make one call.
    fn tick(this: &Rc<LoopInner>) {
        this.call.borrow_mut().take();
        this.in_call.set(true);
        let f = this.f.borrow_mut().take();
        let Some(mut f) = f else { return };
        let next = crate::panics::catching(|| match &mut f {
            LoopFn::Plain(f) => f(),
            LoopFn::Counted(f) => match this.count() {
                0 => Next::Ready(Ok(())),
                n => f(n),
            },
        });
        *this.f.borrow_mut() = Some(f);
        match next {
            Ok(Next::Ready(r)) => LoopInner::call_done(this, r),
            Ok(Next::Wait(d)) => {
                let me = this.clone();
                d.add_both(move |r: Result<(), Failure>| LoopInner::call_done(&me, r));
            }
            Ok(Next::Consumed) => LoopInner::call_done(this, Ok(())),
            Err(failure) => LoopInner::call_done(this, Err(failure)),
        }
    }

    /// The call (and the Deferred it returned) finished with `r`.
    fn call_done(this: &Rc<LoopInner>, r: Result<(), Failure>) {
        this.in_call.set(false);
        match r {
            Err(f) => {
                this.running.set(false);
                this.finish(Err(f));
            }
            Ok(()) if this.running.get() => LoopInner::schedule(this),
            Ok(()) => this.finish(Ok(())),
        }
    }

    /// Fires the Deferred from `start`, if it has not been.
    fn finish(&self, r: Result<(), Failure>) {
        let done = self.done.borrow_mut().take();
        if let Some(d) = done {
            let _ = d.fire(Next::Ready(r));
        }
    }

    /// Schedules the next call at the next point of the grid after now.
    fn schedule(this: &Rc<LoopInner>) {
        let interval = this.interval.get().as_nanos();
        let delay = if interval == 0 {
            Duration::ZERO
        } else {
            let elapsed = this.time.now().saturating_sub(this.started_at.get()).as_nanos();
            nanos(interval - elapsed % interval)
        };
        let me = this.clone();
        let call = this.time.call_later(delay, Box::new(move || LoopInner::tick(&me)));
        *this.call.borrow_mut() = Some(call);
    }

    /// For [`LoopingCall::with_count`]: the intervals elapsed since the last call, or 0 to
    /// skip this call (it came before the next interval began).
    fn count(&self) -> u64 {
        let now = self.time.now();
        if self.interval.get().is_zero() {
            self.last_call.set(Some(now));
            return 1;
        }
        let last = match self.last_call.get() {
            Some(t) => self.intervals_at(t),
            None if self.run_at_start.get() => -1,
            None => 0,
        };
        let count = self.intervals_at(now) - last;
        if count <= 0 {
            return 0;
        }
        self.last_call.set(Some(now));
        u64::try_from(count).unwrap_or(u64::MAX)
    }

    /// Whole intervals from the start to `t` (rounded towards zero, as Twisted's
    /// `_intervalOf`).
    fn intervals_at(&self, t: Duration) -> i128 {
        let elapsed = t.as_nanos() as i128 - self.started_at.get().as_nanos() as i128;
        elapsed / self.interval.get().as_nanos() as i128
    }
}

/// A duration of `n` nanoseconds.
fn nanos(n: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(n / NANOS_PER_SEC).unwrap_or(u64::MAX);
    Duration::new(secs, (n % NANOS_PER_SEC) as u32)
}

impl fmt::Debug for LoopingCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopingCall")
            .field("running", &self.inner.running.get())
            .field("in_call", &self.inner.in_call.get())
            .field("interval", &self.inner.interval.get())
            .finish()
    }
}
