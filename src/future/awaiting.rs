//! The await side: [`DeferredFuture`] (what `d.await` runs) and [`Interruptible`] (a
//! foreign future a task's cancel can interrupt). Each registers with the running task
//! while it is suspended, so the task's cancel reaches it.

use std::cell::RefCell;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

use super::runner::{current_task, CancelAwaited, Task};
use crate::deferred::Next;
use crate::{CancelledError, Deferred, Failure};

/// The future that awaits a [`Deferred`]: `Deferred<T>` implements `IntoFuture` with
/// this as the future, so `d.await` gives `Result<T, Failure>`.
///
/// Awaiting moves the result out of the Deferred: steps added to it afterwards get a
/// `ResultConsumedError`.
///
/// # Cancellation
///
/// Inside [`ensure_deferred`](super::ensure_deferred), cancelling the task cancels the
/// Deferred it awaits, and the `CancelledError` comes out of the `await`.
///
/// # Drop
///
/// Dropping the future does not cancel the Deferred; its result, when it comes, is
/// dropped.
#[must_use = "futures do nothing unless awaited"]
pub struct DeferredFuture<T: 'static> {
    d: Deferred<T>,
    slot: Option<Rc<AwaitSlot<T>>>,
    registered: Option<Registration>,
}

/// Makes a future that a task's cancel cannot otherwise reach (a channel, a timer of
/// another runtime) interruptible: inside [`ensure_deferred`](super::ensure_deferred),
/// cancelling the task while it awaits this future drops `future` and makes the
/// `await` yield `Err(CancelledError)` at once, as awaiting a Deferred does, so the task
/// can clean up and decide what to return. An output that is already there when the
/// cancel comes is not thrown away: the `await` yields it.
///
/// Without the wrapper, a task cancelled while it awaits a future that is not a
/// Deferred is aborted there (see the [module docs](super)).
///
/// ```
/// use std::future::pending;
/// use weft::future::{ensure_deferred, interruptible};
/// use weft::CancelledError;
///
/// let task = ensure_deferred(async {
///     match interruptible(pending::<u8>()).await {
///         Ok(v) => Ok(v),
///         Err(f) if f.check::<CancelledError>() => Ok(0), // cleaned up; report 0
///         Err(f) => Err(f),
///     }
/// });
/// task.cancel();
/// assert_eq!(task.take_result().unwrap().unwrap(), 0);
/// ```
pub fn interruptible<F: Future>(future: F) -> Interruptible<F> {
    Interruptible { future: Some(Box::pin(future)), state: None, registered: None }
}

/// The future returned by [`interruptible`].
#[must_use = "futures do nothing unless awaited"]
pub struct Interruptible<F> {
    future: Option<Pin<Box<F>>>,
    state: Option<Rc<InterruptState>>,
    registered: Option<Registration>,
}

/// What a task's cancel left for a suspended [`Interruptible`], and how to wake it.
struct InterruptState {
    cancelled: RefCell<Option<CancelledError>>,
    waker: RefCell<Option<Waker>>,
}

/// An entry in the running task's `awaiting` slot, removed when the await ends.
struct Registration {
    task: Weak<Task>,
    token: u64,
}

struct AwaitSlot<T> {
    result: RefCell<Option<Result<T, Failure>>>,
    waker: RefCell<Option<Waker>>,
}

impl<T: 'static> IntoFuture for Deferred<T> {
    type Output = Result<T, Failure>;
    type IntoFuture = DeferredFuture<T>;

    fn into_future(self) -> DeferredFuture<T> {
        DeferredFuture { d: self, slot: None, registered: None }
    }
}

impl<T: 'static> Future for DeferredFuture<T> {
    type Output = Result<T, Failure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, Failure>> {
        let this = self.get_mut();
        if this.slot.is_none() {
            if !this.d.is_paused() {
                if let Some(r) = this.d.take_result() {
                    return Poll::Ready(r);
                }
            }
            let slot = Rc::new(AwaitSlot { result: RefCell::new(None), waker: RefCell::new(None) });
            let s = slot.clone();
            this.d.add_both(move |r: Result<T, Failure>| -> Next<T> {
                *s.result.borrow_mut() = Some(r);
                let waker = s.waker.borrow_mut().take();
                if let Some(w) = waker {
                    w.wake();
                }
                Next::Consumed
            });
            this.slot = Some(slot);
        }
        let slot = this.slot.as_ref().expect("set above");
        let result = slot.result.borrow_mut().take();
        if let Some(r) = result {
            this.registered.take();
            return Poll::Ready(r);
        }
        *slot.waker.borrow_mut() = Some(cx.waker().clone());
        if this.registered.is_none() {
            let d = this.d.clone();
            this.registered = Registration::new(Rc::new(move |e: &CancelledError| d.cancel_as(e)));
        }
        Poll::Pending
    }
}

impl<T: 'static> fmt::Debug for DeferredFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferredFuture").field("deferred", &self.d).finish()
    }
}

impl<F: Future> Future for Interruptible<F> {
    type Output = Result<F::Output, Failure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(future) = this.future.as_mut() else {
            return Poll::Ready(Err(Failure::msg("an Interruptible future was polled after it completed")));
        };
        let cancelled = this.state.as_ref().and_then(|s| s.cancelled.borrow_mut().take());
        let polled = future.as_mut().poll(cx);
        if let Poll::Ready(v) = polled {
            this.future = None;
            this.registered.take();
            return Poll::Ready(Ok(v));
        }
        if let Some(err) = cancelled {
            this.future = None;
            this.registered.take();
            return Poll::Ready(Err(Failure::new(err)));
        }
        let state = this.state.get_or_insert_with(|| {
            Rc::new(InterruptState { cancelled: RefCell::new(None), waker: RefCell::new(None) })
        });
        *state.waker.borrow_mut() = Some(cx.waker().clone());
        if this.registered.is_none() {
            let s = state.clone();
            this.registered = Registration::new(Rc::new(move |e: &CancelledError| {
                *s.cancelled.borrow_mut() = Some(e.clone());
                let waker = s.waker.borrow_mut().take();
                if let Some(w) = waker {
                    w.wake();
                }
            }));
        }
        Poll::Pending
    }
}

impl<F> fmt::Debug for Interruptible<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interruptible").field("completed", &self.future.is_none()).finish()
    }
}

impl Registration {
    /// Registers `cancel` with the task being polled now, if any.
    fn new(cancel: CancelAwaited) -> Option<Registration> {
        let task = current_task()?;
        let token = task.register(cancel);
        Some(Registration { task: Rc::downgrade(&task), token })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self.task.upgrade() {
            task.unregister(self.token);
        }
    }
}
