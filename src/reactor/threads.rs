//! The only `Send` code in weft: [`ThreadHandle::call_from_thread`] (a mutex-protected
//! queue plus mio's waker) and the bounded pool behind
//! [`ReactorHandle::defer_to_thread`](super::ReactorHandle::defer_to_thread).
//!
//! Pool threads never touch a `Deferred`: a finished job posts its boxed result, tagged
//! with the job's id, to the same queue `call_from_thread` uses; the reactor thread
//! finds the job's completer (which holds the Deferred) by id and fires it.
//!
//! A job runs in the caller's log context, as Synapse's `defer_to_threadpool` does: a
//! `LoggingContext` is an `Rc` and stays on the reactor thread, so the job carries the
//! context's *name* to the pool thread and runs inside a context of that name made
//! there (its log records carry the request id, and `current_context()` in the job
//! works). What that context used (thread CPU time, database counters the job added)
//! comes back with the result and is charged to the caller's context on the reactor
//! thread, before the Deferred fires.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::error::Error;
use std::fmt;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::poll::Waker;
use super::{guarded, ReactorHandle};
use crate::deferred::Next;
use crate::logcontext::{current_context, ContextStats, LoggingContext, RemoteContext};
use crate::{Deferred, Failure};

/// A `Send + Sync` handle through which other threads hand work to the reactor thread
/// (Twisted's `callFromThread`). Get one from
/// [`ReactorHandle::thread_handle`](super::ReactorHandle::thread_handle); clone it freely.
///
/// ```
/// use weft::reactor::Reactor;
///
/// let reactor = Reactor::new().unwrap();
/// let to_reactor = reactor.thread_handle();
/// let stop = reactor.thread_handle();
/// std::thread::spawn(move || {
///     to_reactor.call_from_thread(|| println!("on the reactor thread")).unwrap();
///     stop.stop().unwrap();
/// });
/// reactor.run();
/// ```
#[derive(Clone)]
pub struct ThreadHandle {
    shared: Arc<ThreadShared>,
}

/// The reactor was dropped; the call was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReactorClosedError;

impl fmt::Display for ReactorClosedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the reactor is closed")
    }
}

impl std::error::Error for ReactorClosedError {}

/// Why [`ThreadHandle::blocking_call_from_thread`] has no value to return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockingCallError {
    /// The call failed: it returned a failure, the Deferred it returned failed, or it
    /// panicked. The failure's text, since a `Failure` cannot cross threads.
    Failed(String),
    /// The call was dropped unfinished: the reactor was dropped first (before it ran
    /// the call, or while the Deferred it returned was pending), or that Deferred was
    /// freed without a result. Twisted's caller would wait forever here.
    Dropped,
    /// Called on the reactor's own thread, which would wait for itself forever.
    OnReactorThread,
}

impl fmt::Display for BlockingCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockingCallError::Failed(failure) => write!(f, "the blocking call failed: {failure}"),
            BlockingCallError::Dropped => f.write_str("the blocking call was dropped unfinished"),
            BlockingCallError::OnReactorThread => {
                f.write_str("blocking_call_from_thread called on the reactor's own thread")
            }
        }
    }
}

impl std::error::Error for BlockingCallError {}

/// The thread pool was stopped before the work ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PoolStoppedError;

impl fmt::Display for PoolStoppedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the thread pool stopped before the work ran")
    }
}

impl std::error::Error for PoolStoppedError {}

/// The cancellation token a [`defer_to_thread_with_token`] job gets: `Send + Sync`, and
/// [`is_cancelled`](Self::is_cancelled) is one atomic load, cheap enough to check in a
/// loop. It turns true once the job's Deferred is cancelled, or when the reactor stops
/// its pool, so a long job can stop early; what it returns then is dropped (or, at
/// shutdown, delivered as usual).
///
/// [`defer_to_thread_with_token`]: super::ReactorHandle::defer_to_thread_with_token
#[derive(Clone, Debug, Default)]
pub struct CancelToken {
    cancelled: Arc<AtomicBool>,
}

impl CancelToken {
    /// True once the job's Deferred was cancelled (or its pool is stopping).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }
}

type Payload = Box<dyn Any + Send>;
/// What a job hands back: its value, or its error boxed on the pool thread.
type JobResult = Result<Payload, Box<dyn Error + Send + Sync>>;
type Completer = Box<dyn FnOnce(Result<Payload, Failure>)>;

enum Msg {
    Call(Box<dyn FnOnce() + Send>),
    Stop,
    Done(u64, JobDone),
}

/// A finished job: its outcome (a panic, or its result) and what its log context used.
struct JobDone {
    outcome: std::thread::Result<JobResult>,
    stats: ContextStats,
}

/// A job waiting for its result, on the reactor thread.
struct Pending {
    complete: Completer,
    /// The caller's log context: charged with what the job used.
    context: LoggingContext,
    token: CancelToken,
    /// Where `defer_to_thread` was called: the location of the job's error `Failure`.
    location: &'static Location<'static>,
}

struct ThreadShared {
    /// The reactor's thread (a reactor never moves).
    owner: std::thread::ThreadId,
    queue: Mutex<VecDeque<Msg>>,
    waker: Waker,
    closed: AtomicBool,
    /// Run on the reactor thread when the reactor is dropped ([`ThreadHandle::on_close`]).
    on_close: Mutex<Vec<CloseHook>>,
}

type CloseHook = Box<dyn FnOnce() + Send>;

impl ThreadShared {
    fn post(&self, msg: Msg) -> Result<(), ReactorClosedError> {
        let was_empty = {
            let mut q = lock(&self.queue);
            // Looked at under the queue's lock, which the reactor's drop takes after
            // closing to drop what is queued: a message is either refused here or
            // dropped there, never left in the queue of a reactor that is gone.
            if self.closed.load(Ordering::Acquire) {
                return Err(ReactorClosedError);
            }
            let was_empty = q.is_empty();
            q.push_back(msg);
            was_empty
        };
        // The reactor takes the whole queue at once, so a non-empty queue already has a
        // wake-up on its way.
        if was_empty {
            if let Err(e) = self.waker.wake() {
                log::error!(target: "weft::reactor", "waking the reactor failed: {e}");
            }
        }
        Ok(())
    }
}

impl ThreadHandle {
    /// Queues `f` to run on the reactor thread, waking the reactor. Calls run in the
    /// order they were queued (first-in first-out across all threads' handles).
    ///
    /// # Errors
    ///
    /// [`ReactorClosedError`] if the reactor was dropped; `f` is dropped unrun.
    pub fn call_from_thread<F: FnOnce() + Send + 'static>(&self, f: F) -> Result<(), ReactorClosedError> {
        self.shared.post(Msg::Call(Box::new(f)))
    }

    /// Runs `f` on the reactor thread and blocks this thread until it has an outcome
    /// (Twisted's `threads.blockingCallFromThread`): `f`'s value, or, if it returns a
    /// Deferred, that Deferred's result once it has one.
    ///
    /// ```
    /// use weft::reactor::Reactor;
    ///
    /// let reactor = Reactor::new().unwrap();
    /// let handle = reactor.thread_handle();
    /// let worker = std::thread::spawn(move || {
    ///     let got = handle.blocking_call_from_thread(|| weft::succeed(20 + 1));
    ///     handle.stop().unwrap();
    ///     got
    /// });
    /// reactor.run();
    /// assert_eq!(worker.join().unwrap(), Ok(21));
    /// ```
    ///
    /// # Errors
    ///
    /// [`BlockingCallError`]: `Failed` with the failure's text; `Dropped` if the reactor
    /// was dropped first (a reactor that is only stopped keeps the call queued, and this
    /// thread waits, as in Twisted); `OnReactorThread` at once if called on the
    /// reactor's own thread.
    pub fn blocking_call_from_thread<T, F, R>(&self, f: F) -> Result<T, BlockingCallError>
    where
        T: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
        R: crate::CallbackResult<T>,
    {
        if self.is_in_io_thread() {
            return Err(BlockingCallError::OnReactorThread);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<T, String>>(1);
        self.call_from_thread(move || {
            crate::maybe_deferred(f).add_both(move |r: Result<T, Failure>| {
                let _ = tx.send(r.map_err(|failure| failure.to_string()));
                Next::Consumed
            });
        })
        .map_err(|_| BlockingCallError::Dropped)?;
        match rx.recv() {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(failure)) => Err(BlockingCallError::Failed(failure)),
            Err(_) => Err(BlockingCallError::Dropped),
        }
    }

    /// True on the reactor's own thread (Twisted's `threadable.isInIOThread`, for this
    /// reactor).
    pub fn is_in_io_thread(&self) -> bool {
        std::thread::current().id() == self.shared.owner
    }

    /// Asks the reactor to stop, from another thread (as `call_from_thread(reactor.stop)`).
    ///
    /// # Errors
    ///
    /// [`ReactorClosedError`] if the reactor was dropped.
    pub fn stop(&self) -> Result<(), ReactorClosedError> {
        self.shared.post(Msg::Stop)
    }

    /// Runs `hook` on the reactor thread when the reactor is dropped, for bridges that
    /// keep per-reactor state elsewhere (`compat::tokio`); hands it back if the reactor
    /// is gone already.
    #[allow(dead_code)] // Only the optional bridges use it.
    pub(crate) fn on_close(&self, hook: CloseHook) -> Result<(), CloseHook> {
        let mut hooks = lock(&self.shared.on_close);
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(hook);
        }
        hooks.push(hook);
        Ok(())
    }

    /// Identifies the reactor this handle reaches (stable while the reactor exists).
    #[allow(dead_code)] // Only the optional bridges use it.
    pub(crate) fn reactor_id(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }
}

impl fmt::Debug for ThreadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadHandle").field("closed", &self.shared.closed.load(Ordering::Relaxed)).finish()
    }
}

/// The reactor thread's side: the shared queue, the pool and the completers.
pub(crate) struct ReactorThreads {
    shared: Arc<ThreadShared>,
    pool: RefCell<Option<Pool>>,
    pool_size: Cell<usize>,
    completers: RefCell<HashMap<u64, Pending>>,
    next_job: Cell<u64>,
}

struct Pool {
    shared: Arc<PoolShared>,
    threads: Vec<JoinHandle<()>>,
}

struct PoolShared {
    state: Mutex<PoolState>,
    work_ready: Condvar,
}

struct PoolState {
    jobs: VecDeque<Job>,
    idle: usize,
    stopping: bool,
}

struct Job {
    id: u64,
    work: Box<dyn FnOnce() -> JobResult + Send>,
    /// The caller's log context (its name, and its span with `tracing`), if it had one.
    context: Option<RemoteContext>,
}

impl ReactorThreads {
    pub(crate) fn new(waker: Waker) -> ReactorThreads {
        ReactorThreads {
            shared: Arc::new(ThreadShared {
                owner: std::thread::current().id(),
                queue: Mutex::new(VecDeque::new()),
                waker,
                closed: AtomicBool::new(false),
                on_close: Mutex::new(Vec::new()),
            }),
            pool: RefCell::new(None),
            pool_size: Cell::new(4),
            completers: RefCell::new(HashMap::new()),
            next_job: Cell::new(0),
        }
    }

    pub(crate) fn handle(&self) -> ThreadHandle {
        ThreadHandle { shared: self.shared.clone() }
    }

    /// Makes this reactor the one that calls from other threads reach for work owned by
    /// the current thread (see [`handle_for_thread`]), until it is unregistered.
    pub(crate) fn register_for_current_thread(&self) {
        let mut map = REACTOR_OF_THREAD.lock().unwrap_or_else(|e| e.into_inner());
        let id = std::thread::current().id();
        map.get_or_insert_with(HashMap::new).entry(id).or_default().push(self.handle());
    }

    /// Undoes [`register_for_current_thread`](Self::register_for_current_thread): a
    /// reactor made earlier on this thread and still alive becomes the registered one
    /// again, and the map is freed once no thread has a reactor.
    pub(crate) fn unregister_for_current_thread(&self) {
        let mut guard = REACTOR_OF_THREAD.lock().unwrap_or_else(|e| e.into_inner());
        let id = std::thread::current().id();
        let Some(map) = guard.as_mut() else { return };
        let Some(stack) = map.get_mut(&id) else { return };
        stack.retain(|h| !Arc::ptr_eq(&h.shared, &self.shared));
        if stack.is_empty() {
            map.remove(&id);
        }
        if map.is_empty() {
            *guard = None;
        }
    }

    /// Refuses further calls from other threads (the reactor is going away), and runs
    /// the close hooks.
    pub(crate) fn close(&self) {
        let hooks = {
            let mut hooks = lock(&self.shared.on_close);
            self.shared.closed.store(true, Ordering::Release);
            std::mem::take(&mut *hooks)
        };
        for hook in hooks {
            guarded("a reactor close hook", hook);
        }
    }

    pub(crate) fn has_pending(&self) -> bool {
        !lock(&self.shared.queue).is_empty()
    }

    pub(crate) fn set_pool_size(&self, n: usize) {
        self.pool_size.set(n);
    }

    /// Runs everything other threads queued, in order (on the waker's event); returns
    /// how many messages there were.
    pub(crate) fn drain(&self, reactor: &ReactorHandle) -> usize {
        let msgs = std::mem::take(&mut *lock(&self.shared.queue));
        let n = msgs.len();
        for msg in msgs {
            match msg {
                Msg::Call(f) => {
                    guarded("call_from_thread", f);
                }
                Msg::Stop => reactor.stop(),
                Msg::Done(id, done) => {
                    let pending = self.completers.borrow_mut().remove(&id);
                    if let Some(p) = pending {
                        p.context.charge(&done.stats);
                        let result = match done.outcome {
                            Ok(Ok(value)) => Ok(value),
                            Ok(Err(error)) => Err(Failure::from_boxed_at(error, p.location)),
                            Err(panic) => Err(Failure::from_panic(panic)),
                        };
                        let complete = p.complete;
                        guarded("defer_to_thread completion", move || complete(result));
                    }
                }
            }
        }
        n
    }

    /// The pool's queue and threads, for the reactor's metrics.
    pub(crate) fn pool_metrics(&self) -> super::ThreadPoolMetrics {
        let max_threads = self.pool_size.get();
        let pool = self.pool.borrow();
        let Some(p) = pool.as_ref() else {
            return super::ThreadPoolMetrics { max_threads, ..Default::default() };
        };
        let st = lock(&p.shared.state);
        let threads = p.threads.len();
        super::ThreadPoolMetrics {
            queued: st.jobs.len(),
            busy: threads.saturating_sub(st.idle),
            threads,
            max_threads,
        }
    }

    /// Queues `f` on the pool; see `ReactorHandle::defer_to_thread_with_token`. The
    /// Deferred is made at `location`, the caller's place (and so is named there in
    /// diagnostics and in a lost result's report).
    #[track_caller]
    pub(crate) fn defer_to_thread<T, E, F>(
        &self,
        reactor: &ReactorHandle,
        location: &'static Location<'static>,
        f: F,
    ) -> Deferred<T>
    where
        T: Send + 'static,
        E: Into<Box<dyn Error + Send + Sync>>,
        F: FnOnce(&CancelToken) -> Result<T, E> + Send + 'static,
    {
        let id = self.next_job.get();
        self.next_job.set(id + 1);
        let pool_shared = self.ensure_pool();
        let token = CancelToken::default();
        let weak = reactor.downgrade();
        let (ps, t) = (pool_shared.clone(), token.clone());
        let d: Deferred<T> = Deferred::with_canceller(move |_| {
            t.cancel();
            let removed = {
                let mut st = lock(&ps.state);
                let before = st.jobs.len();
                st.jobs.retain(|j| j.id != id);
                st.jobs.len() != before
            };
            if removed {
                if let Some(r) = weak.upgrade() {
                    let p = r.inner.threads.completers.borrow_mut().remove(&id);
                    drop(p);
                }
            }
        });
        let target = d.to_ref();
        let complete: Completer = Box::new(move |r: Result<Payload, Failure>| {
            let outcome = match r {
                // A value that comes after a cancel goes to the lost-result guard, named
                // by the caller's place.
                Ok(b) => match b.downcast::<T>() {
                    Ok(v) => target.fire_at(Next::Ready(Ok(*v)), location).map_err(|_| ()),
                    Err(_) => unreachable!("a job's result has the job's type"),
                },
                // A failure after a cancel is the job stopping as its token asked (or
                // failing anyway): there is nothing in it to give back.
                Err(f) if target.is_called() => {
                    log::debug!(target: "weft::reactor", "defer_to_thread: a cancelled job ended with {f}");
                    Ok(())
                }
                Err(f) => target.errback(f).map_err(|_| ()),
            };
            if outcome.is_err() {
                log::debug!(target: "weft::reactor", "defer_to_thread: Deferred already called; result dropped");
            }
        });
        let context = current_context();
        let name = RemoteContext::capture();
        self.completers
            .borrow_mut()
            .insert(id, Pending { complete, context, token: token.clone(), location });
        let work: Box<dyn FnOnce() -> JobResult + Send> =
            Box::new(move || f(&token).map(|v| Box::new(v) as Payload).map_err(Into::into));
        let spawn = {
            let mut st = lock(&pool_shared.state);
            st.jobs.push_back(Job { id, work, context: name });
            st.idle == 0
        };
        if spawn {
            self.maybe_spawn();
        }
        pool_shared.work_ready.notify_one();
        d
    }

    fn ensure_pool(&self) -> Arc<PoolShared> {
        let mut pool = self.pool.borrow_mut();
        let p = pool.get_or_insert_with(|| Pool {
            shared: Arc::new(PoolShared {
                state: Mutex::new(PoolState { jobs: VecDeque::new(), idle: 0, stopping: false }),
                work_ready: Condvar::new(),
            }),
            threads: Vec::new(),
        });
        p.shared.clone()
    }

    fn maybe_spawn(&self) {
        let mut pool = self.pool.borrow_mut();
        let Some(p) = pool.as_mut() else { return };
        if p.threads.len() >= self.pool_size.get() {
            return;
        }
        let shared = p.shared.clone();
        let out = self.shared.clone();
        let n = p.threads.len();
        match std::thread::Builder::new().name(format!("weft-pool-{n}")).spawn(move || worker(shared, out)) {
            Ok(t) => p.threads.push(t),
            Err(e) => log::error!(target: "weft::reactor", "could not start a pool thread: {e}"),
        }
    }

    /// Stops the pool: work not started is dropped and its Deferreds fail; running work
    /// finishes and the threads are joined; finished results are delivered.
    pub(crate) fn shutdown(&self, reactor: &ReactorHandle) {
        // Running jobs that check their token may stop early.
        for p in self.completers.borrow().values() {
            p.token.cancel();
        }
        let pool = self.pool.borrow_mut().take();
        if let Some(pool) = pool {
            let dropped = {
                let mut st = lock(&pool.shared.state);
                st.stopping = true;
                std::mem::take(&mut st.jobs)
            };
            pool.shared.work_ready.notify_all();
            drop(dropped);
            for t in pool.threads {
                if t.join().is_err() {
                    log::error!(target: "weft::reactor", "a pool thread panicked outside a job");
                }
            }
        }
        let _ = self.drain(reactor);
        let left: Vec<_> = self.completers.borrow_mut().drain().collect();
        for (_, p) in left {
            let complete = p.complete;
            guarded("defer_to_thread completion", move || complete(Err(Failure::new(PoolStoppedError))));
        }
    }
}

impl Drop for ReactorThreads {
    /// Refuses further calls and drops the calls still queued, unrun (outside the lock:
    /// dropping one may post again, and be refused), so a thread waiting on one (a
    /// `blocking_call_from_thread`) hears of it.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        let queued = std::mem::take(&mut *lock(&self.shared.queue));
        drop(queued);
    }
}

fn worker(pool: Arc<PoolShared>, out: Arc<ThreadShared>) {
    loop {
        let job = {
            let mut st = lock(&pool.state);
            loop {
                if st.stopping {
                    return;
                }
                if let Some(job) = st.jobs.pop_front() {
                    break job;
                }
                st.idle += 1;
                st = pool.work_ready.wait(st).unwrap_or_else(|e| e.into_inner());
                st.idle -= 1;
            }
        };
        let done = run_job(job.work, job.context);
        if out.post(Msg::Done(job.id, done)).is_err() {
            return;
        }
    }
}

/// Runs a job on a pool thread, inside a log context named after the caller's (if it
/// had one), and measures what that context used.
fn run_job(work: Box<dyn FnOnce() -> JobResult + Send>, context: Option<RemoteContext>) -> JobDone {
    let Some(remote) = context else {
        return JobDone { outcome: crate::panics::caught(work), stats: ContextStats::default() };
    };
    let (outcome, stats) = remote.run(|| crate::panics::caught(work));
    JobDone { outcome, stats }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The reactors of each thread that has one, oldest first (the last is the one
/// [`handle_for_thread`] finds), for code that must reach a thread's single-threaded
/// state from elsewhere: a `Waker` of an `ensure_deferred` task woken by another thread.
/// A reactor is removed when it is dropped; an entry never outlives its reactor.
static REACTOR_OF_THREAD: Mutex<Option<HashMap<std::thread::ThreadId, Vec<ThreadHandle>>>> = Mutex::new(None);

/// The call-from-thread handle of the latest reactor created on `thread` that still
/// exists.
pub(crate) fn handle_for_thread(thread: std::thread::ThreadId) -> Option<ThreadHandle> {
    let map = REACTOR_OF_THREAD.lock().unwrap_or_else(|e| e.into_inner());
    map.as_ref().and_then(|m| m.get(&thread)).and_then(|stack| stack.last().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::Reactor;

    fn registered_here() -> Vec<ThreadHandle> {
        let map = REACTOR_OF_THREAD.lock().unwrap_or_else(|e| e.into_inner());
        map.as_ref().and_then(|m| m.get(&std::thread::current().id()).cloned()).unwrap_or_default()
    }

    fn is(h: &ThreadHandle, reactor: &Reactor) -> bool {
        Arc::ptr_eq(&h.shared, &reactor.inner.threads.shared)
    }

    #[test]
    fn a_dropped_reactor_is_unregistered_and_an_older_one_found_again() {
        let first = Reactor::new().unwrap();
        let second = Reactor::new().unwrap();
        assert_eq!(registered_here().len(), 2);
        let here = std::thread::current().id();
        assert!(is(&handle_for_thread(here).unwrap(), &second));
        drop(second);
        assert!(is(&handle_for_thread(here).unwrap(), &first));
        drop(first);
        assert!(registered_here().is_empty());
        assert!(handle_for_thread(here).is_none());
    }

    #[test]
    fn reactors_dropped_oldest_first_leave_nothing_registered() {
        let first = Reactor::new().unwrap();
        let second = Reactor::new().unwrap();
        drop(first);
        let here = std::thread::current().id();
        assert!(is(&handle_for_thread(here).unwrap(), &second));
        drop(second);
        assert!(registered_here().is_empty());
    }
}
