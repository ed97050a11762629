//! The task runner behind [`ensure_deferred`](super::ensure_deferred): the thread's task
//! table, the waker, the poll loop with its log-context swap, and how a cancel is
//! delivered to a task (see the module docs of [`crate::future`]).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, ThreadId};

use slab::Slab;

use crate::deferred::{current_cancellation, AnyDeferred, DeferredRef, Next, WeakAnyDeferred};
use crate::logcontext::{Captured, Restore};
use crate::{CancelId, CancelledError, Deferred, Failure};

thread_local! {
    /// The thread's pending tasks, by slab key (a task's `key`); see [`Entry`].
    static TASKS: RefCell<Table> = const { RefCell::new(Table(Slab::new())) };
    static CURRENT_TASK: RefCell<Option<Rc<Task>>> = const { RefCell::new(None) };
    static NEXT_TASK: Cell<u64> = const { Cell::new(1) };
    static NEXT_TOKEN: Cell<u64> = const { Cell::new(1) };
    static AWAIT_POINTS: Cell<u64> = const { Cell::new(0) };
}

/// How the task table holds a pending task.
///
/// A task suspended only on Deferreds (each of which holds it through its await link, a
/// [`TaskRef`]) with no clone of its waker anywhere is held weakly, as Python's
/// generator is held only by the callbacks of the Deferred it waits on: if those
/// Deferreds become unreachable, nobody can ever resume the task, and it is freed with
/// them (its future dropped in its own log context). Any other pending task (suspended
/// on a foreign future, which another thread may wake through a waker clone, or on
/// nothing that could wake it) is held strongly.
enum Entry {
    Strong(Rc<Task>),
    Weak(Weak<Task>),
}

impl Entry {
    fn get(&self) -> Option<Rc<Task>> {
        match self {
            Entry::Strong(t) => Some(t.clone()),
            Entry::Weak(w) => w.upgrade(),
        }
    }
}

/// The thread's task table.
struct Table(Slab<Entry>);

impl Drop for Table {
    /// The thread is ending: every pending task is dropped, as before a task could be
    /// held weakly. A weakly held task's future may hold what resumes it (a lock its own
    /// waiter is queued on, say): a cycle through user values that only this breaks.
    fn drop(&mut self) {
        let tasks: Vec<Rc<Task>> = self.0.drain().filter_map(|e| e.get()).collect();
        for task in &tasks {
            task.listed.set(false);
            task.done.set(true);
            task.drop_future();
        }
    }
}

/// How to pass a cancel on to what a task awaits now (a Deferred, or an
/// [`Interruptible`](super::Interruptible) future).
pub(super) type CancelAwaited = Rc<dyn Fn(&CancelledError)>;

/// One task: its future (taken out while it is polled), its log context, and its cancel
/// bookkeeping.
pub(super) struct Task {
    /// Never reused: tells a stale waker from the task now in the same slab slot.
    id: u64,
    /// The task's slot in `TASKS` (`usize::MAX` if it could not be put there).
    key: usize,
    future: RefCell<Option<Pin<Box<dyn Future<Output = ()>>>>>,
    waker: Waker,
    /// The waker's own `Arc`: its strong count tells whether a clone of the waker exists
    /// outside the task (see [`Entry`]).
    waker_arc: Arc<TaskWaker>,
    /// How many [`TaskRef`]s (await links of pending Deferreds) hold the task.
    task_refs: Cell<u32>,
    /// The task is in the table (its entry is removed when it finishes, and when it is
    /// freed).
    listed: Cell<bool>,
    /// The task's own log context: the one current at `ensure_deferred`, then whatever
    /// the task left current when it last suspended. Each poll runs in it.
    context: RefCell<Captured>,
    /// Fails the task's current target Deferred (used when the task is aborted).
    target: Rc<dyn FailTarget>,
    /// A poll is on the stack; a wake now only sets `repoll`.
    polling: Cell<bool>,
    repoll: Cell<bool>,
    /// The future has completed or was aborted; the outcome was delivered.
    done: Cell<bool>,
    /// The ids of the cancels of the task's Deferred so far (its own cancellations).
    cancels: RefCell<Vec<CancelId>>,
    /// Where the first of them started (for the swallowed-cancel report).
    first_cancel_at: Cell<Option<&'static Location<'static>>>,
    /// A cancel not yet passed on to what the task awaits: it arrived during a poll.
    undelivered: RefCell<Option<CancelledError>>,
    /// How to cancel what the task awaits now, with the await's token.
    awaiting: RefCell<Option<(u64, CancelAwaited)>>,
}

/// The typed slot holding the Deferred a task delivers to, seen without its type.
pub(super) trait FailTarget {
    fn fail(&self, failure: Failure);
    /// The task is suspended on `awaited`: the task's Deferred holds it as a source, so
    /// that while someone can cancel the task's Deferred, the cancel can reach it.
    fn hold(&self, awaited: &AnyDeferred);
    /// The await on `awaited` is over.
    fn unhold(&self, awaited: &WeakAnyDeferred);
}

/// The slot of the Deferred a task delivers its outcome to: a forward reference (the
/// task fires it; it cannot cancel it). A cancel that lets the task go on replaces it
/// with a fresh Deferred (see the module docs).
type Target<T> = RefCell<Option<DeferredRef<T>>>;

impl<T: 'static> FailTarget for Target<T> {
    fn fail(&self, failure: Failure) {
        let target = self.borrow_mut().take();
        if let Some(d) = target {
            let _ = d.fire(Next::Ready(Err(failure)));
        }
    }

    fn hold(&self, awaited: &AnyDeferred) {
        let target = self.borrow().clone();
        if let Some(d) = target {
            d.add_source(awaited);
        }
    }

    fn unhold(&self, awaited: &WeakAnyDeferred) {
        let target = self.borrow().clone();
        if let Some(d) = target {
            d.remove_source(awaited);
        }
    }
}

/// Starts `future` as a task; see [`ensure_deferred`](super::ensure_deferred).
#[track_caller]
pub(super) fn spawn<T, F>(future: F) -> Deferred<T>
where
    T: 'static,
    F: Future<Output = Result<T, Failure>> + 'static,
{
    let id = NEXT_TASK.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    });
    // During the thread's teardown the table is gone: the task is polled once and
    // dropped when it suspends.
    let key = TASKS.try_with(|t| t.borrow().0.vacant_key()).unwrap_or(usize::MAX);
    let target: Rc<Target<T>> = Rc::new(RefCell::new(None));
    let waker_arc = Arc::new(TaskWaker { key, id, thread: thread::current().id() });
    let task = Rc::new(Task {
        id,
        key,
        future: RefCell::new(None),
        waker: Waker::from(waker_arc.clone()),
        waker_arc,
        task_refs: Cell::new(0),
        listed: Cell::new(false),
        context: RefCell::new(Captured::capture()),
        target: target.clone(),
        polling: Cell::new(false),
        repoll: Cell::new(false),
        done: Cell::new(false),
        cancels: RefCell::new(Vec::new()),
        first_cancel_at: Cell::new(None),
        undelivered: RefCell::new(None),
        awaiting: RefCell::new(None),
    });
    let out = target_deferred(Rc::downgrade(&task), Rc::downgrade(&target));
    *target.borrow_mut() = Some(out.to_ref());
    let spawned_at = Location::caller();
    *task.future.borrow_mut() = Some(Box::pin(Wrapper { future: Box::pin(future), target, spawned_at }));
    let _ = TASKS.try_with(|t| {
        let inserted = t.borrow_mut().0.insert(Entry::Strong(task.clone()));
        debug_assert_eq!(inserted, key);
        task.listed.set(true);
    });
    poll_task(&task);
    out
}

/// The task being polled now, if any.
pub(super) fn current_task() -> Option<Rc<Task>> {
    CURRENT_TASK.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// How many tasks on this thread have not finished.
pub(super) fn pending_tasks() -> usize {
    TASKS.try_with(|t| t.borrow().0.len()).unwrap_or(0)
}

/// How many times a task suspended on a Deferred with no result yet (or on an
/// interruptible future), on this thread.
pub(super) fn await_points() -> u64 {
    AWAIT_POINTS.with(Cell::get)
}

impl Task {
    /// True once the task's Deferred was cancelled.
    pub(super) fn is_cancelling(&self) -> bool {
        !self.cancels.borrow().is_empty()
    }

    /// True if `id` is the id of a cancel of this task's Deferred.
    pub(super) fn is_own(&self, id: CancelId) -> bool {
        self.cancels.borrow().contains(&id)
    }

    /// Records that the task now awaits something a cancel can reach, and counts an
    /// await point; returns the token to [`unregister`](Self::unregister) with.
    pub(super) fn register(&self, cancel: CancelAwaited) -> u64 {
        AWAIT_POINTS.with(|n| n.set(n.get() + 1));
        let token = NEXT_TOKEN.with(|n| {
            let t = n.get();
            n.set(t + 1);
            t
        });
        *self.awaiting.borrow_mut() = Some((token, cancel));
        token
    }

    /// Undoes [`register`](Self::register), unless something registered since.
    pub(super) fn unregister(&self, token: u64) {
        let stale = {
            let mut awaiting = self.awaiting.borrow_mut();
            if awaiting.as_ref().is_some_and(|(t, _)| *t == token) {
                awaiting.take()
            } else {
                None
            }
        };
        drop(stale);
    }

    /// The task's waker, to tell it from another one (`Waker::will_wake`).
    pub(super) fn waker(&self) -> &Waker {
        &self.waker
    }

    /// The task's Deferred, to hold what the task awaits (see [`FailTarget::hold`]).
    pub(super) fn target(&self) -> &dyn FailTarget {
        &*self.target
    }

    /// Takes the task out of the thread's table (it finished, was aborted or is freed);
    /// returns the entry for the caller to drop outside the table's borrow.
    fn unlist(&self) -> Option<Entry> {
        if !self.listed.replace(false) {
            return None;
        }
        TASKS.try_with(|t| t.try_borrow_mut().ok().and_then(|mut t| t.0.try_remove(self.key))).ok().flatten()
    }

    /// After a poll left the task pending: held weakly by the table if only the await
    /// links of Deferreds can resume it, strongly otherwise (see [`Entry`]).
    fn relist(self: &Rc<Self>) {
        if !self.listed.get() {
            return;
        }
        // The task's own `Waker` and `waker_arc`: no clone exists elsewhere.
        let weak = self.task_refs.get() > 0 && Arc::strong_count(&self.waker_arc) == 2;
        let old = TASKS.try_with(|t| {
            let mut t = t.borrow_mut();
            let entry = t.0.get_mut(self.key)?;
            match (&*entry, weak) {
                (Entry::Strong(_), true) => Some(std::mem::replace(entry, Entry::Weak(Rc::downgrade(self)))),
                (Entry::Weak(_), false) => Some(std::mem::replace(entry, Entry::Strong(self.clone()))),
                _ => None,
            }
        });
        // Outside the borrow (it is not the last reference: `self` is one).
        drop(old);
    }

    /// Drops the task's future (if it has not completed) in the task's own log context,
    /// so that scopes it holds restore into it, and the caller's context is current
    /// again after.
    fn drop_future(&self) {
        let future = self.future.borrow_mut().take();
        if future.is_some() {
            let _caller = Restore::capture();
            let _own = self.context.borrow().enter();
            drop(future);
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        // A task still pending when the last reference goes: the thread is ending and
        // its task table is being dropped, or the task was held weakly and the Deferreds
        // it awaited became unreachable, so nothing can resume it.
        let entry = self.unlist();
        self.drop_future();
        drop(entry);
    }
}

/// A strong reference to a task from the await link of a pending Deferred the task
/// awaits (see [`Entry`]).
pub(super) struct TaskRef(Rc<Task>);

impl TaskRef {
    pub(super) fn new(task: Rc<Task>) -> TaskRef {
        task.task_refs.set(task.task_refs.get() + 1);
        TaskRef(task)
    }

    /// The awaited Deferred has its result: polls the task (as its waker would), unless
    /// the thread's task table is gone (the thread is ending: nothing is polled then).
    pub(super) fn wake(self) {
        // Held across the poll: this may have been the last reference.
        let task = self.0.clone();
        drop(self);
        if !task.done.get() && TASKS.try_with(|_| ()).is_ok() {
            poll_task(&task);
        }
    }
}

impl Drop for TaskRef {
    fn drop(&mut self) {
        self.0.task_refs.set(self.0.task_refs.get() - 1);
    }
}

/// Only `Send` data: the task's key and id, and the owning thread.
struct TaskWaker {
    key: usize,
    id: u64,
    thread: ThreadId,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if thread::current().id() == self.thread {
            wake_here(self.key, self.id);
            return;
        }
        // Another thread: hand the wake to the owning thread's reactor.
        let (key, id) = (self.key, self.id);
        match crate::reactor::handle_for_thread(self.thread) {
            Some(reactor) if reactor.call_from_thread(move || wake_here(key, id)).is_ok() => {}
            _ => log::warn!("weft task {id} woken from another thread, whose reactor is gone (or that has none); wake dropped"),
        }
    }
}

/// Polls task `id` (in slot `key`) if it still exists; on its own thread.
fn wake_here(key: usize, id: u64) {
    // Once the thread's task table is destroyed (the thread is ending and its tasks are
    // being dropped), a wake finds nothing to poll.
    let task =
        TASKS.try_with(|t| t.borrow().0.get(key).and_then(Entry::get).filter(|t| t.id == id)).ok().flatten();
    if let Some(task) = task {
        poll_task(&task);
    }
}

/// The user's future, delivering its outcome to the task's current target Deferred.
struct Wrapper<T: 'static, F> {
    future: Pin<Box<F>>,
    target: Rc<Target<T>>,
    /// Where `ensure_deferred` was called, for the swallowed-cancel report.
    spawned_at: &'static Location<'static>,
}

impl<T: 'static, F: Future<Output = Result<T, Failure>>> Future for Wrapper<T, F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let r = match crate::panics::catching(|| self.future.as_mut().poll(cx)) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(r)) => r,
            Err(failure) => Err(failure),
        };
        if r.is_ok() && crate::is_debugging() {
            report_if_swallowed(self.spawned_at);
        }
        let target = self.target.borrow_mut().take();
        if let Some(t) = target {
            if t.fire(Next::Ready(r)).is_err() {
                log::debug!("weft task: its deferred was already called; outcome dropped");
            }
        }
        Poll::Ready(())
    }
}

/// The Deferred a task delivers to; its canceller delivers the cancel to the task (see
/// the module docs).
fn target_deferred<T: 'static>(task: Weak<Task>, target: Weak<Target<T>>) -> Deferred<T> {
    Deferred::with_canceller(move |me: &Deferred<T>| {
        let Some(task) = task.upgrade().filter(|t| !t.done.get()) else { return };
        let Some(err) = current_cancellation() else { return };
        task.cancels.borrow_mut().push(err.id());
        if task.first_cancel_at.get().is_none() {
            task.first_cancel_at.set(Some(err.location()));
        }
        *task.undelivered.borrow_mut() = Some(err);
        if !task.polling.get() {
            deliver_cancel(&task);
        }
        if me.is_called() || task.done.get() {
            return;
        }
        // The task goes on (it handles the error, say to clean up, or the cancel waits
        // for the end of the running poll): wait for its own outcome instead of cutting
        // it off.
        let Some(target) = target.upgrade() else { return };
        let next = target_deferred(Rc::downgrade(&task), Rc::downgrade(&target));
        *target.borrow_mut() = Some(next.to_ref());
        let _ = me.fire(Next::Wait(next));
    })
}

/// Passes an undelivered cancel on: to what the task awaits now, or, if that is a future
/// a cancel cannot reach, by aborting the task there.
fn deliver_cancel(task: &Rc<Task>) {
    let Some(err) = task.undelivered.borrow_mut().take() else { return };
    let awaiting = task.awaiting.borrow().as_ref().map(|(_, c)| c.clone());
    match awaiting {
        Some(cancel_awaited) => cancel_awaited(&err),
        None => abort(task, err),
    }
}

/// Stops a suspended task at its await point, as an aborted tokio task stops: its
/// future is dropped (in its own log context) and its Deferred fails with `err`.
fn abort(task: &Rc<Task>, err: CancelledError) {
    task.done.set(true);
    let removed = task.unlist();
    let awaiting = task.awaiting.borrow_mut().take();
    task.drop_future();
    task.target.fail(Failure::new(err));
    drop((removed, awaiting));
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
            let _caller = Restore::capture();
            let own = task.context.borrow().enter();
            let ready = future.as_mut().poll(&mut cx).is_ready();
            // What the task left current is its context for the next poll.
            *task.context.borrow_mut() = Captured::capture();
            drop(own);
            ready
        };
        if ready {
            task.done.set(true);
            let removed = task.unlist();
            let awaiting = task.awaiting.borrow_mut().take();
            drop((future, removed, awaiting));
            break;
        }
        *task.future.borrow_mut() = Some(future);
        // A cancel that came during the poll goes to what the task awaits now.
        deliver_cancel(task);
        if !task.repoll.get() || task.done.get() {
            break;
        }
    }
    if !task.done.get() {
        task.relist();
    }
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

/// While debugging: the task running now finished with a value although its Deferred
/// was cancelled (its code caught the `CancelledError`): report it, naming where the
/// task was started and where the cancel came from.
#[cold]
fn report_if_swallowed(spawned_at: &'static Location<'static>) {
    let Some(task) = current_task() else { return };
    let first = task.cancels.borrow().first().copied();
    if let (Some(id), Some(at)) = (first, task.first_cancel_at.get()) {
        crate::deferred::report_task_swallowed(spawned_at, id, at);
    }
}
