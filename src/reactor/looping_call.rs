//! [`LoopingCall`] (Twisted's `task.LoopingCall`) on top of [`ReactorTime`]: it works with
//! the real reactor and with the test [`Clock`](super::Clock).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use super::{DelayedCall, ReactorTime};
use crate::{Deferred, Failure};

/// Calls a function every `interval` (Twisted's `task.LoopingCall`). Cheap to clone.
///
/// Calls are kept on the grid `start + k * interval`: if a call runs late, the missed
/// slots are skipped rather than run in a burst. A panic in the function stops the loop
/// and fails the Deferred from [`start`](Self::start).
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
#[derive(Clone)]
pub struct LoopingCall {
    inner: Rc<LoopInner>,
}

struct LoopInner {
    time: Rc<dyn ReactorTime>,
    f: RefCell<Box<dyn FnMut()>>,
    running: Cell<bool>,
    interval: Cell<Duration>,
    started_at: Cell<Duration>,
    call: RefCell<Option<DelayedCall>>,
    done: RefCell<Option<Deferred<()>>>,
}

impl LoopingCall {
    /// A looping call of `f` on `time` (a [`Clock`](super::Clock) or a reactor handle);
    /// not started.
    pub fn new<C: ReactorTime + 'static, F: FnMut() + 'static>(time: C, f: F) -> LoopingCall {
        LoopingCall {
            inner: Rc::new(LoopInner {
                time: Rc::new(time),
                f: RefCell::new(Box::new(f)),
                running: Cell::new(false),
                interval: Cell::new(Duration::ZERO),
                started_at: Cell::new(Duration::ZERO),
                call: RefCell::new(None),
                done: RefCell::new(None),
            }),
        }
    }

    /// Starts calling every `interval`, the first call at once if `now`, else after one
    /// interval. The Deferred fires with `()` when [`stop`](Self::stop) is called, or
    /// fails if the function panics.
    ///
    /// # Panics
    ///
    /// If the call is already running.
    #[track_caller]
    #[must_use = "the Deferred tells when the loop stopped"]
    pub fn start(&self, interval: Duration, now: bool) -> Deferred<()> {
        assert!(!self.inner.running.get(), "LoopingCall is already running");
        let d = Deferred::new();
        *self.inner.done.borrow_mut() = Some(d.clone());
        self.inner.running.set(true);
        self.inner.interval.set(interval);
        self.inner.started_at.set(self.inner.time.now());
        if now {
            LoopInner::tick(&self.inner);
        } else {
            LoopInner::schedule(&self.inner);
        }
        d
    }

    /// Stops the loop: the pending call is cancelled and the Deferred from
    /// [`start`](Self::start) fires with `()`. Does nothing if not running.
    pub fn stop(&self) {
        if !self.inner.running.replace(false) {
            return;
        }
        let call = self.inner.call.borrow_mut().take();
        if let Some(c) = call {
            let _ = c.cancel();
        }
        let done = self.inner.done.borrow_mut().take();
        if let Some(d) = done {
            let _ = d.callback(());
        }
    }

    /// True between [`start`](Self::start) and [`stop`](Self::stop).
    pub fn is_running(&self) -> bool {
        self.inner.running.get()
    }
}

impl LoopInner {
    fn tick(this: &Rc<LoopInner>) {
        let r = {
            let mut f = this.f.borrow_mut();
            catch_unwind(AssertUnwindSafe(&mut *f))
        };
        if let Err(panic) = r {
            this.running.set(false);
            let done = this.done.borrow_mut().take();
            if let Some(d) = done {
                let _ = d.errback(Failure::from_panic(panic));
            }
            return;
        }
        if this.running.get() {
            LoopInner::schedule(this);
        }
    }

    fn schedule(this: &Rc<LoopInner>) {
        let interval = this.interval.get();
        let now = this.time.now();
        let delay = if interval.is_zero() {
            Duration::ZERO
        } else {
            let elapsed = now.saturating_sub(this.started_at.get());
            let slots = elapsed.as_nanos() / interval.as_nanos() + 1;
            let next = this.started_at.get() + interval.saturating_mul(slots as u32);
            next.saturating_sub(now)
        };
        let me = this.clone();
        let call = this.time.call_later(delay, Box::new(move || LoopInner::tick(&me)));
        *this.call.borrow_mut() = Some(call);
    }
}

impl fmt::Debug for LoopingCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopingCall")
            .field("running", &self.inner.running.get())
            .field("interval", &self.inner.interval.get())
            .finish()
    }
}
