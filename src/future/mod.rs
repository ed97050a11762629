//! async/await over Deferreds: awaiting a [`Deferred`] ([`DeferredFuture`]), running a
//! future as a Deferred ([`ensure_deferred`]), and telling one's own cancellation apart
//! ([`is_cancelling`], [`is_own_cancellation`]). The marker for handlers that may be
//! cancelled ([`cancellable`]) and Synapse's test helper that cancels a handler at each
//! of its await points ([`check_cancellation_at_each_await`]) are in `testing.rs`.
//!
//! # How a cancel reaches an awaiting task
//!
//! Each task lives in a thread-local table keyed by a task id; its [`Waker`] is an `Arc`
//! holding only that id and the owning thread's id, so it is `Send` without the task
//! being so. Waking on the owning thread polls the task at once (a wake while the task
//! is being polled only asks for one more poll: the re-entrancy guard).
//!
//! While a task is suspended on a `Deferred`, the task records how to cancel it.
//! Cancelling the Deferred `ensure_deferred` returned
//! 1. marks the task as cancelling (with the cancel's [`CancelId`]),
//! 2. cancels the Deferred the task awaits right now, whose `CancelledError` comes out
//!    of the `await` as `Err(failure)` when the task is polled, and
//! 3. if the task has not finished by then (it handles the error and goes on, say to
//!    clean up), makes the returned Deferred wait for the task's own outcome, as
//!    Twisted's `ensureDeferred` does. The future is never dropped mid-await.
//!
//! A result that reached the awaited Deferred before the cancel is already moved into
//! the task's await, so a cancel arriving before the task resumed never discards it.
//!
//! A wake from another thread (a channel fed by a worker thread, say) reaches the task
//! through the owning thread's reactor (`call_from_thread`); on a thread with no reactor
//! it is logged and dropped.
//!
//! *Not supported yet:* interrupting a task suspended on a future that is not a Deferred
//! (the cancel then waits for that future).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, ThreadId};

use crate::deferred::{current_cancellation, Next};
use crate::{CancelId, CancelledError, Deferred, Failure};

mod testing;

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
/// Cancelling the returned Deferred cancels the Deferred the task awaits now; see the
/// module docs.
#[must_use = "the Deferred carries the task's outcome"]
pub fn ensure_deferred<T, F>(future: F) -> Deferred<T>
where
    T: 'static,
    F: Future<Output = Result<T, Failure>> + 'static,
{
    let id = NEXT_TASK.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    });
    let task = Rc::new(Task {
        id,
        future: RefCell::new(None),
        waker: Waker::from(Arc::new(TaskWaker { id, thread: thread::current().id() })),
        polling: Cell::new(false),
        repoll: Cell::new(false),
        done: Cell::new(false),
        cancelling: Cell::new(None),
        awaiting: RefCell::new(None),
    });
    let target: Rc<RefCell<Option<Deferred<T>>>> = Rc::new(RefCell::new(None));
    let out = target_deferred(Rc::downgrade(&task), Rc::downgrade(&target));
    *target.borrow_mut() = Some(out.clone());
    *task.future.borrow_mut() = Some(Box::pin(Wrapper { future: Box::pin(future), target }));
    // During the thread's teardown the table is gone: the task is polled once and
    // dropped when it suspends.
    let _ = TASKS.try_with(|t| t.borrow_mut().insert(id, task.clone()));
    poll_task(&task);
    out
}

/// True if the task running now (inside [`ensure_deferred`]) has been cancelled. False
/// outside a task.
pub fn is_cancelling() -> bool {
    current_task().is_some_and(|t| t.cancelling.get().is_some())
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
    let own = current_task().and_then(|t| t.cancelling.get());
    match (own, failure.downcast_ref::<CancelledError>()) {
        (Some(id), Some(c)) => c.id() == id,
        _ => false,
    }
}

/// How many tasks started by [`ensure_deferred`] on this thread have not finished.
pub fn pending_tasks() -> usize {
    TASKS.try_with(|t| t.borrow().len()).unwrap_or(0)
}

/// How many times, so far on this thread, a task suspended on a Deferred that had no
/// result yet (an *await point*). Used by [`check_cancellation_at_each_await`].
pub fn await_points() -> u64 {
    AWAIT_POINTS.with(Cell::get)
}

/// The future that awaits a [`Deferred`]: `Deferred<T>` implements `IntoFuture` with
/// this as the future, so `d.await` gives `Result<T, Failure>`.
///
/// Awaiting moves the result out of the Deferred: steps added to it afterwards get a
/// `ResultConsumedError`.
///
/// # Drop
///
/// Dropping the future does not cancel the Deferred; its result, when it comes, is
/// dropped.
#[must_use = "futures do nothing unless awaited"]
pub struct DeferredFuture<T: 'static> {
    d: Deferred<T>,
    slot: Option<Rc<AwaitSlot<T>>>,
    registered: Option<(Weak<Task>, u64)>,
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
            this.unregister();
            return Poll::Ready(r);
        }
        *slot.waker.borrow_mut() = Some(cx.waker().clone());
        if this.registered.is_none() {
            let task = current_task();
            if let Some(task) = task {
                AWAIT_POINTS.with(|n| n.set(n.get() + 1));
                let token = NEXT_TOKEN.with(|n| {
                    let t = n.get();
                    n.set(t + 1);
                    t
                });
                let d = this.d.clone();
                *task.awaiting.borrow_mut() = Some((token, Rc::new(move || d.cancel())));
                this.registered = Some((Rc::downgrade(&task), token));
            }
        }
        Poll::Pending
    }
}

impl<T: 'static> DeferredFuture<T> {
    fn unregister(&mut self) {
        if let Some((task, token)) = self.registered.take() {
            if let Some(task) = task.upgrade() {
                let stale = {
                    let mut awaiting = task.awaiting.borrow_mut();
                    if awaiting.as_ref().is_some_and(|(t, _)| *t == token) {
                        awaiting.take()
                    } else {
                        None
                    }
                };
                drop(stale);
            }
        }
    }
}

impl<T: 'static> Drop for DeferredFuture<T> {
    fn drop(&mut self) {
        self.unregister();
    }
}

impl<T: 'static> fmt::Debug for DeferredFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferredFuture").field("deferred", &self.d).finish()
    }
}

// ---- helpers ----

thread_local! {
    static TASKS: RefCell<HashMap<u64, Rc<Task>>> = RefCell::new(HashMap::new());
    static CURRENT_TASK: RefCell<Option<Rc<Task>>> = const { RefCell::new(None) };
    static NEXT_TASK: Cell<u64> = const { Cell::new(1) };
    static NEXT_TOKEN: Cell<u64> = const { Cell::new(1) };
    static AWAIT_POINTS: Cell<u64> = const { Cell::new(0) };
}

type CancelAwaited = Rc<dyn Fn()>;

/// One task: its future (taken out while it is polled), and its cancel bookkeeping.
struct Task {
    id: u64,
    future: RefCell<Option<Pin<Box<dyn Future<Output = ()>>>>>,
    waker: Waker,
    /// A poll is on the stack; a wake now only sets `repoll`.
    polling: Cell<bool>,
    repoll: Cell<bool>,
    /// The future has completed and the outcome was delivered.
    done: Cell<bool>,
    /// Set when the task's Deferred was cancelled: that cancel's id.
    cancelling: Cell<Option<CancelId>>,
    /// How to cancel the Deferred the task awaits now, with the await's token.
    awaiting: RefCell<Option<(u64, CancelAwaited)>>,
}

/// Only `Send` data: a task id and the owning thread.
struct TaskWaker {
    id: u64,
    thread: ThreadId,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if thread::current().id() == self.thread {
            wake_here(self.id);
            return;
        }
        // Another thread: hand the wake to the owning thread's reactor.
        let id = self.id;
        match crate::reactor::handle_for_thread(self.thread) {
            Some(reactor) if reactor.call_from_thread(move || wake_here(id)).is_ok() => {}
            _ => log::warn!("weft task {id} woken from another thread, whose reactor is gone (or that has none); wake dropped"),
        }
    }
}

/// Polls task `id` if it still exists; on its own thread.
fn wake_here(id: u64) {
    // Once the thread's task table is destroyed (the thread is ending and its tasks are
    // being dropped), a wake finds nothing to poll.
    let task = TASKS.try_with(|t| t.borrow().get(&id).cloned()).ok().flatten();
    if let Some(task) = task {
        poll_task(&task);
    }
}

struct AwaitSlot<T> {
    result: RefCell<Option<Result<T, Failure>>>,
    waker: RefCell<Option<Waker>>,
}

/// The user's future, delivering its outcome to the task's current target Deferred.
struct Wrapper<T: 'static, F> {
    future: Pin<Box<F>>,
    target: Rc<RefCell<Option<Deferred<T>>>>,
}

impl<T: 'static, F: Future<Output = Result<T, Failure>>> Future for Wrapper<T, F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let polled = catch_unwind(AssertUnwindSafe(|| self.future.as_mut().poll(cx)));
        let r = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(r)) => r,
            Err(panic) => Err(Failure::from_panic(panic)),
        };
        let target = self.target.borrow_mut().take();
        if let Some(t) = target {
            if t.fire(Next::Ready(r)).is_err() {
                log::debug!("weft task: its deferred was already called; outcome dropped");
            }
        }
        Poll::Ready(())
    }
}

/// The Deferred a task delivers to; its canceller implements the cancel steps in the
/// module docs.
fn target_deferred<T: 'static>(task: Weak<Task>, target: Weak<RefCell<Option<Deferred<T>>>>) -> Deferred<T> {
    Deferred::with_canceller(move |me: &Deferred<T>| {
        let Some(task) = task.upgrade().filter(|t| !t.done.get()) else { return };
        let id = current_cancellation().map(|c| c.id());
        if task.cancelling.get().is_none() {
            task.cancelling.set(id);
        }
        let awaiting = task.awaiting.borrow().as_ref().map(|(_, c)| c.clone());
        if let Some(cancel_awaited) = awaiting {
            cancel_awaited();
        }
        if me.is_called() || task.done.get() {
            return;
        }
        // The task goes on (it handled the error, or awaits something that is not a
        // Deferred): wait for its own outcome instead of cutting it off.
        let Some(target) = target.upgrade() else { return };
        let next = target_deferred(Rc::downgrade(&task), Rc::downgrade(&target));
        *target.borrow_mut() = Some(next.clone());
        let _ = me.fire(Next::Wait(next));
    })
}

/// Polls `task` until it is pending with no wake outstanding, or done.
fn poll_task(task: &Rc<Task>) {
    if task.polling.get() {
        task.repoll.set(true);
        return;
    }
    task.polling.set(true);
    let _polling = PollingGuard(task.clone());
    loop {
        task.repoll.set(false);
        let future = task.future.borrow_mut().take();
        let Some(mut future) = future else { break };
        let mut cx = Context::from_waker(&task.waker);
        let ready = {
            let _current = CurrentTask::enter(task.clone());
            future.as_mut().poll(&mut cx).is_ready()
        };
        if ready {
            task.done.set(true);
            let removed = TASKS.try_with(|t| t.borrow_mut().remove(&task.id)).ok().flatten();
            let awaiting = task.awaiting.borrow_mut().take();
            drop((future, removed, awaiting));
            break;
        }
        *task.future.borrow_mut() = Some(future);
        if !task.repoll.get() {
            break;
        }
    }
}

/// The task being polled now, if any.
fn current_task() -> Option<Rc<Task>> {
    CURRENT_TASK.try_with(|c| c.borrow().clone()).ok().flatten()
}

struct PollingGuard(Rc<Task>);

impl Drop for PollingGuard {
    fn drop(&mut self) {
        self.0.polling.set(false);
    }
}

/// Sets the current task; restores the previous one on every exit.
struct CurrentTask(Option<Rc<Task>>);

impl CurrentTask {
    fn enter(task: Rc<Task>) -> CurrentTask {
        CurrentTask(CURRENT_TASK.try_with(|c| c.replace(Some(task))).ok().flatten())
    }
}

impl Drop for CurrentTask {
    fn drop(&mut self) {
        let previous = self.0.take();
        let _task = CURRENT_TASK.try_with(|c| c.replace(previous));
    }
}
