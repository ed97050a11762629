//! The await side: [`DeferredFuture`] (what `d.await` runs) and [`Interruptible`] (a
//! foreign future a task's cancel can interrupt). Each registers with the running task
//! while it is suspended, so the task's cancel reaches it.

use std::cell::RefCell;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

use super::runner::{current_task, CancelAwaited, Task, TaskRef};
use crate::deferred::{AnyDeferred, Next, WeakAnyDeferred, WeakDeferred};
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
///
/// # Ownership
///
/// Suspended inside [`ensure_deferred`](super::ensure_deferred), the future keeps the
/// Deferred only weakly: the Deferred's chain holds the task until the result comes,
/// and the task's own Deferred holds the awaited one while someone can cancel it. So a
/// task waiting on a Deferred nobody can fire, whose own Deferred nobody holds, is
/// freed (its future dropped), as Python collects such a coroutine.
#[must_use = "futures do nothing unless awaited"]
pub struct DeferredFuture<T: 'static> {
    d: Awaited<T>,
    slot: Option<Rc<AwaitSlot<T>>>,
    registered: Option<Registration>,
    /// The Deferred's await link wakes (and holds) the task this future runs in.
    links_task: bool,
}

/// How a [`DeferredFuture`] holds its Deferred.
enum Awaited<T: 'static> {
    /// Until it suspends inside a task (and always outside one).
    Strong(Deferred<T>),
    /// Suspended inside a task (see the ownership rules above).
    Weak(WeakDeferred<T>),
}

impl<T: 'static> Awaited<T> {
    fn get(&self) -> Option<Deferred<T>> {
        match self {
            Awaited::Strong(d) => Some(d.clone()),
            Awaited::Weak(w) => w.upgrade(),
        }
    }
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

/// An entry in the running task's `awaiting` slot, removed when the await ends, with
/// (weakly: the task must not hold it) the Deferred awaited, held meanwhile by the task's
/// Deferred.
struct Registration {
    task: Weak<Task>,
    token: u64,
    held: Option<WeakAnyDeferred>,
}

struct AwaitSlot<T> {
    result: RefCell<Option<Result<T, Failure>>>,
    waker: RefCell<Option<Waker>>,
}

impl<T: 'static> IntoFuture for Deferred<T> {
    type Output = Result<T, Failure>;
    type IntoFuture = DeferredFuture<T>;

    fn into_future(self) -> DeferredFuture<T> {
        DeferredFuture { d: Awaited::Strong(self), slot: None, registered: None, links_task: false }
    }
}

impl<T: 'static> Future for DeferredFuture<T> {
    type Output = Result<T, Failure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, Failure>> {
        let this = self.get_mut();
        if this.slot.is_none() {
            let Awaited::Strong(d) = &this.d else { unreachable!("weak only once suspended") };
            if !d.is_paused() {
                if let Some(r) = d.take_result() {
                    return Poll::Ready(r);
                }
            }
            // Inside a task whose own waker is the one given, the Deferred's chain wakes
            // the task itself and holds it meanwhile (see `runner::Entry`).
            let task = current_task().filter(|t| cx.waker().will_wake(t.waker())).map(TaskRef::new);
            this.links_task = task.is_some();
            let slot = Rc::new(AwaitSlot { result: RefCell::new(None), waker: RefCell::new(None) });
            let s = slot.clone();
            d.add_both(move |r: Result<T, Failure>| -> Next<T> {
                *s.result.borrow_mut() = Some(r);
                let waker = s.waker.borrow_mut().take();
                if let Some(w) = waker {
                    w.wake();
                }
                if let Some(task) = task {
                    task.wake();
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
        let own_waker = this.links_task && current_task().is_some_and(|t| cx.waker().will_wake(t.waker()));
        if !own_waker {
            *slot.waker.borrow_mut() = Some(cx.waker().clone());
        }
        if this.registered.is_none() {
            let d = this.d.get().expect("strong until registered");
            let weak = d.downgrade();
            this.registered = Registration::new(
                Rc::new(move |e: &CancelledError| {
                    if let Some(d) = weak.upgrade() {
                        d.cancel_as(e);
                    }
                }),
                Some(d.erased()),
            );
            if this.registered.is_some() && own_waker {
                // The chain holds the task, the task's Deferred holds this one: keeping it
                // here too would make a cycle no cancel handle breaks.
                this.d = Awaited::Weak(d.downgrade());
            }
        }
        Poll::Pending
    }
}

impl<T: 'static> fmt::Debug for DeferredFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferredFuture").field("deferred", &self.d.get()).finish()
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
            this.registered = Registration::new(
                Rc::new(move |e: &CancelledError| {
                    *s.cancelled.borrow_mut() = Some(e.clone());
                    let waker = s.waker.borrow_mut().take();
                    if let Some(w) = waker {
                        w.wake();
                    }
                }),
                None,
            );
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
    /// Registers `cancel` with the task being polled now, if any, and has the task's
    /// Deferred hold `awaited` meanwhile.
    fn new(cancel: CancelAwaited, awaited: Option<AnyDeferred>) -> Option<Registration> {
        let task = current_task()?;
        let token = task.register(cancel);
        if let Some(d) = &awaited {
            task.target().hold(d);
        }
        Some(Registration {
            task: Rc::downgrade(&task),
            token,
            held: awaited.as_ref().map(AnyDeferred::downgrade),
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self.task.upgrade() {
            task.unregister(self.token);
            if let Some(d) = &self.held {
                task.target().unhold(d);
            }
        }
    }
}
