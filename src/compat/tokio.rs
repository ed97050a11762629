//! A bridge to tokio (feature `tokio`), for the libraries that only run there (HTTP and
//! database clients, gRPC): [`spawn`] runs a `Send` future on a tokio runtime and gives
//! its output as a [`Deferred`] on the reactor thread; [`IntoSendFuture`] goes the other
//! way, handing a Deferred to tokio code as a `Send` future.
//!
//! ```
//! use std::{cell::RefCell, rc::Rc};
//! use weft::{compat::tokio::spawn, Reactor};
//!
//! let reactor = Reactor::new().unwrap();
//! let got = Rc::new(RefCell::new(None));
//! let (g, h) = (got.clone(), reactor.handle());
//! // Any `Send` future: here a computation; in practice a hyper or sqlx call.
//! spawn(async { 6 * 7 }).add_callback(move |n| {
//!     *g.borrow_mut() = Some(n); // on the reactor thread, in this callback's log context
//!     h.stop();
//!     n
//! });
//! reactor.run();
//! assert_eq!(*got.borrow(), Some(42));
//! ```
//!
//! # The runtime
//!
//! By default the futures run on one multi-thread tokio runtime with a single worker
//! thread (`weft-tokio`) and every driver the build of tokio has (`enable_all`), started
//! by the first [`spawn`] and shared by every reactor of the process. Each reactor that
//! used it keeps it alive; when the last of them is dropped, the runtime is shut down:
//! what still runs is dropped and its threads are joined (up to one second; not at all if
//! the last reactor is dropped inside another tokio runtime, where joining is not
//! allowed). The next [`spawn`] starts a fresh one. At process exit nothing is waited for:
//! the runtime's threads end with the process. An application that has its own tokio
//! runtime hands its handle over with [`use_runtime`].
//!
//! # Reactor drop
//!
//! Dropping a reactor aborts the tokio tasks it started and drops their Deferreds
//! unfired, as it drops its pending timers; the futures are dropped on the runtime's
//! threads. A [`SendFuture`] whose reactor is gone waits for a Deferred nobody can fire.
//! A graceful [`stop`](crate::ReactorHandle::stop) does not touch them: their results
//! arrive while the reactor still turns (during the shutdown phases, say), or on the next
//! run.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::panic::Location;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;
use tokio::runtime::{Handle, Runtime};
use tokio::task::AbortHandle;

use crate::deferred::Next;
use crate::reactor::{handle_for_thread, ThreadHandle};
use crate::{CancelledError, Deferred, Failure};

/// Runs `future` on the tokio runtime (see [the module docs](self)) and fires the
/// returned Deferred with its output, on the reactor thread, through
/// [`call_from_thread`](crate::reactor::ThreadHandle::call_from_thread). A panic in the
/// future becomes a [`PanicError`](crate::PanicError) Failure.
///
/// The reactor is the latest one made on the calling thread that still exists.
///
/// # Errors
///
/// The Deferred fails at once with [`NoReactorError`] if the calling thread has no
/// reactor, with the `io::Error` if the runtime could not be started, and later with
/// [`RuntimeShutdownError`] if the runtime shut down before the future finished.
///
/// # Cancellation
///
/// Cancelling the Deferred aborts the tokio task: the future is dropped on a runtime
/// thread at its next await point (its drop guards run there), and the Deferred fails
/// with `CancelledError` at once. An output that arrives after the cancel is dropped.
///
/// # Log context
///
/// The Deferred's callbacks run in the log contexts they were added in, as always; the
/// reactor delivers the output in the sentinel. The future itself runs outside weft's
/// log contexts (`log` records it makes carry no request id). With the `tracing` feature
/// it runs inside a child span of the caller's context span, so `tracing` events of the
/// libraries it calls are part of the request's trace.
#[track_caller]
#[must_use = "the Deferred carries the future's output; dropping it does not cancel the future"]
pub fn spawn<F>(future: F) -> Deferred<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    start(future, Location::caller(), |out: F::Output| Ok(out))
}

/// [`spawn`] for a future that returns a `Result`: an `Err` reaches the errback chain as
/// a [`Failure`] holding the error (made on the reactor thread, naming the line that
/// called this), as [`defer_to_thread_with_token`](crate::ReactorHandle::defer_to_thread_with_token)
/// does. The error may be any `Error + Send + Sync`, a boxed one or a `String`.
///
/// # Errors, Cancellation, Log context
///
/// As for [`spawn`].
#[track_caller]
#[must_use = "the Deferred carries the future's output; dropping it does not cancel the future"]
pub fn spawn_fallible<F, T, E>(future: F) -> Deferred<T>
where
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Into<Box<dyn Error + Send + Sync>> + Send + 'static,
{
    let location = Location::caller();
    start(future, location, move |out: Result<T, E>| {
        out.map_err(|e| Failure::from_boxed_at(e.into(), location))
    })
}

/// Runs the futures of [`spawn`] on `handle`'s runtime from now on, instead of the
/// runtime weft starts itself (for an application that has its own). The application
/// keeps its runtime alive while weft uses it, and shuts it down itself; the Deferreds
/// of futures it drops at its shutdown fail with [`RuntimeShutdownError`].
///
/// Reactors that already spawned keep the runtime they used until they are dropped.
pub fn use_runtime(handle: Handle) {
    *lock(&RUNTIME) = Shared::User(handle);
}

/// A Deferred as a `Send` future of its result, for tokio code (a task spawned with
/// `tokio::spawn`, a channel's other end); see [`SendFuture`].
pub trait IntoSendFuture<T> {
    /// Adds a callback that moves the Deferred's result into the returned future (steps
    /// added afterwards get a `ResultConsumedError`, as after an `await`); a Failure
    /// becomes a [`SendFailure`].
    ///
    /// ```
    /// use weft::compat::tokio::IntoSendFuture;
    /// use weft::{Deferred, Reactor};
    ///
    /// let reactor = Reactor::new().unwrap();
    /// let d: Deferred<u32> = Deferred::new();
    /// let fut = d.clone().into_send_future();
    /// let waiter = std::thread::spawn(move || futures::executor::block_on(fut));
    /// d.callback(7).unwrap();
    /// assert_eq!(waiter.join().unwrap().unwrap(), 7);
    /// # drop(reactor);
    /// ```
    fn into_send_future(self) -> SendFuture<T>;
}

/// A `Send` future of a [`Deferred`]'s result, made by
/// [`into_send_future`](IntoSendFuture::into_send_future): it can be polled on any thread
/// (a tokio worker, a `block_on`), while the Deferred stays on the reactor thread.
///
/// # Drop
///
/// Dropping it before the result arrived cancels the Deferred, on the reactor thread
/// (through `call_from_thread`), as dropping a tokio future cancels its work. That needs
/// the reactor of the thread the future was made on: without one, or once it is
/// dropped, dropping the future cancels nothing.
#[must_use = "futures do nothing unless awaited"]
pub struct SendFuture<T> {
    shared: Arc<Mutex<Slot<T>>>,
    /// Where to send the cancel on drop: the reactor and the entry of the Deferred.
    cancel: Option<(ThreadHandle, EntryKey)>,
}

/// A [`Failure`] sent to another thread by a [`SendFuture`]: its message (`Failure` is
/// not `Send`), whether it was a cancel, and where it was made.
#[derive(Clone, Debug)]
pub struct SendFailure {
    message: String,
    cancelled: bool,
    location: &'static Location<'static>,
}

/// [`spawn`] was called on a thread that has no reactor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoReactorError;

/// The tokio runtime shut down (or dropped the task) before the future finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeShutdownError;

impl SendFailure {
    /// The failure's message, as its `Display` shows it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True if the failure was a [`CancelledError`].
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// Where the failure was made.
    pub fn location(&self) -> &'static Location<'static> {
        self.location
    }

    fn new(failure: &Failure) -> SendFailure {
        SendFailure {
            message: failure.as_error().to_string(),
            cancelled: failure.check::<CancelledError>(),
            location: failure.location(),
        }
    }
}

impl fmt::Display for SendFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (failure created at {})", self.message, self.location)
    }
}

impl Error for SendFailure {}

impl fmt::Display for NoReactorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("this thread has no reactor to deliver the result to")
    }
}

impl Error for NoReactorError {}

impl fmt::Display for RuntimeShutdownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the tokio runtime shut down before the future finished")
    }
}

impl Error for RuntimeShutdownError {}

impl<T: Send + 'static> IntoSendFuture<T> for Deferred<T> {
    fn into_send_future(self) -> SendFuture<T> {
        let shared = Arc::new(Mutex::new(Slot { result: None, waker: None }));
        let thread = handle_for_thread(std::thread::current().id());
        let key = thread.as_ref().map(|thread| {
            let d = self.clone();
            let cancel = Box::new(move |outcome| {
                if matches!(outcome, Outcome::Dropped) {
                    d.cancel();
                }
            });
            LOCAL.with(|l| l.borrow_mut().insert(thread.reactor_id(), cancel))
        });
        let s = shared.clone();
        self.add_both(move |r: Result<T, Failure>| -> Next<T> {
            if let Some(key) = key {
                drop(take_entry(key));
            }
            let waker = {
                let mut slot = lock(&s);
                slot.result = Some(r.map_err(|f| SendFailure::new(&f)));
                slot.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
            Next::Consumed
        });
        SendFuture { shared, cancel: thread.zip(key) }
    }
}

impl<T> Future for SendFuture<T> {
    type Output = Result<T, SendFailure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut slot = lock(&this.shared);
        match slot.result.take() {
            Some(r) => {
                drop(slot);
                this.cancel = None;
                Poll::Ready(r)
            }
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for SendFuture<T> {
    fn drop(&mut self) {
        let Some((thread, key)) = self.cancel.take() else { return };
        if lock(&self.shared).result.is_some() {
            return; // The Deferred has fired: nothing to cancel.
        }
        // Fails only if the reactor is gone, and with it the Deferred's entry.
        let _ = thread.call_from_thread(move || finish(key, Outcome::Dropped));
    }
}

impl<T> fmt::Debug for SendFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendFuture").field("ready", &lock(&self.shared).result.is_some()).finish()
    }
}

/// The result a [`SendFuture`] waits for.
struct Slot<T> {
    result: Option<Result<T, SendFailure>>,
    waker: Option<Waker>,
}

// The runtime.

/// Where the futures run: nowhere yet, weft's own runtime (kept alive by the reactors
/// that use it), or the application's.
enum Shared {
    None,
    Owned(Weak<OwnedRuntime>),
    User(Handle),
}

static RUNTIME: Mutex<Shared> = Mutex::new(Shared::None);

/// How many worker threads weft's own runtime has.
const WORKER_THREADS: usize = 1;

/// How long dropping weft's runtime waits for its threads.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// weft's own runtime; shut down when the last reactor using it lets go.
struct OwnedRuntime(Option<Runtime>);

/// What a reactor that used the bridge holds until it is dropped.
enum RuntimeRef {
    Owned(Arc<OwnedRuntime>),
    User(Handle),
}

impl RuntimeRef {
    fn handle(&self) -> Handle {
        match self {
            RuntimeRef::Owned(rt) => {
                rt.0.as_ref().expect("a runtime is shut down only on drop").handle().clone()
            }
            RuntimeRef::User(handle) => handle.clone(),
        }
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        let Some(rt) = self.0.take() else { return };
        if Handle::try_current().is_ok() {
            // Inside another runtime blocking is not allowed: let the threads go.
            rt.shutdown_background();
        } else {
            rt.shutdown_timeout(SHUTDOWN_WAIT);
        }
    }
}

/// The runtime to use, started if needed.
fn runtime() -> io::Result<RuntimeRef> {
    let mut shared = lock(&RUNTIME);
    match &*shared {
        Shared::User(handle) => return Ok(RuntimeRef::User(handle.clone())),
        Shared::Owned(weak) => {
            if let Some(rt) = weak.upgrade() {
                return Ok(RuntimeRef::Owned(rt));
            }
        }
        Shared::None => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .thread_name("weft-tokio")
        .enable_all()
        .build()?;
    let rt = Arc::new(OwnedRuntime(Some(rt)));
    *shared = Shared::Owned(Arc::downgrade(&rt));
    Ok(RuntimeRef::Owned(rt))
}

// The reactor thread's side: the Deferreds waiting for the runtime, by entry.

/// An entry in [`Local::entries`]: its slab key and a never-reused id, so a late message
/// for a removed entry never reaches one that reused the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryKey {
    key: usize,
    id: u64,
}

/// What happened on the runtime's side.
enum Outcome {
    /// The future's output (boxed, `Send`).
    Output(Box<dyn Any + Send>),
    /// The future panicked.
    Panic(Box<dyn Any + Send>),
    /// The future was dropped unfinished: by the runtime (spawn), or by its owner (a
    /// `SendFuture`, which asks for a cancel).
    Dropped,
}

struct Entry {
    id: u64,
    reactor: usize,
    abort: Option<AbortHandle>,
    deliver: Box<dyn FnOnce(Outcome)>,
}

#[derive(Default)]
struct Local {
    entries: Slab<Entry>,
    next_id: u64,
    /// The reactors of this thread that used the bridge, with the runtime their futures go to.
    reactors: Vec<(usize, Handle)>,
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

impl Local {
    fn insert(&mut self, reactor: usize, deliver: Box<dyn FnOnce(Outcome)>) -> EntryKey {
        let id = self.next_id;
        self.next_id += 1;
        let key = self.entries.insert(Entry { id, reactor, abort: None, deliver });
        EntryKey { key, id }
    }
}

/// Removes an entry (`None` if it is gone already).
fn take_entry(at: EntryKey) -> Option<Entry> {
    LOCAL
        .try_with(|l| {
            let mut l = l.borrow_mut();
            match l.entries.get(at.key) {
                Some(e) if e.id == at.id => Some(l.entries.remove(at.key)),
                _ => None,
            }
        })
        .ok()
        .flatten()
}

/// On the reactor thread: tells the entry's Deferred what happened, outside the borrow.
fn finish(at: EntryKey, outcome: Outcome) {
    if let Some(entry) = take_entry(at) {
        (entry.deliver)(outcome);
    }
}

/// The runtime handle for `thread`'s reactor, attaching the reactor on first use: it
/// keeps the runtime alive, and its drop aborts its tasks and drops their entries.
fn attach(thread: &ThreadHandle) -> io::Result<Handle> {
    let reactor = thread.reactor_id();
    let known =
        LOCAL.with(|l| l.borrow().reactors.iter().find(|(r, _)| *r == reactor).map(|(_, h)| h.clone()));
    if let Some(handle) = known {
        return Ok(handle);
    }
    let rt = runtime()?;
    let handle = rt.handle();
    let hook = Box::new(move || {
        detach(reactor);
        drop(rt);
    });
    if thread.on_close(hook).is_err() {
        return Err(io::Error::other(crate::reactor::ReactorClosedError));
    }
    LOCAL.with(|l| l.borrow_mut().reactors.push((reactor, handle.clone())));
    Ok(handle)
}

/// The reactor is being dropped: abort its tasks and drop their Deferreds unfired.
fn detach(reactor: usize) {
    let gone: Vec<Entry> = LOCAL
        .try_with(|l| {
            let mut l = l.borrow_mut();
            l.reactors.retain(|(r, _)| *r != reactor);
            let keys: Vec<usize> =
                l.entries.iter().filter(|(_, e)| e.reactor == reactor).map(|(k, _)| k).collect();
            keys.into_iter().map(|k| l.entries.remove(k)).collect()
        })
        .unwrap_or_default();
    for entry in &gone {
        if let Some(abort) = &entry.abort {
            abort.abort();
        }
    }
    drop(gone);
}

fn start<F, T>(
    future: F,
    location: &'static Location<'static>,
    convert: impl FnOnce(F::Output) -> Result<T, Failure> + 'static,
) -> Deferred<T>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
    T: 'static,
{
    let Some(thread) = handle_for_thread(std::thread::current().id()) else {
        return crate::fail(Failure::from_boxed_at(Box::new(NoReactorError), location));
    };
    let rt = match attach(&thread) {
        Ok(rt) => rt,
        Err(e) => return crate::fail(Failure::from_boxed_at(Box::new(e), location)),
    };
    let at: Rc<Cell<Option<EntryKey>>> = Rc::default();
    let a = at.clone();
    let d: Deferred<T> = Deferred::with_canceller(move |_| {
        if let Some(entry) = a.get().and_then(take_entry) {
            if let Some(abort) = &entry.abort {
                abort.abort();
            }
        }
    });
    let target = d.clone();
    let deliver = Box::new(move |outcome: Outcome| {
        let fired = match outcome {
            Outcome::Output(out) => match out.downcast::<F::Output>() {
                Ok(out) => match convert(*out) {
                    Ok(v) => target.callback(v).map_err(drop),
                    Err(f) => target.errback(f).map_err(drop),
                },
                Err(_) => unreachable!("an entry's output has the entry's type"),
            },
            Outcome::Panic(payload) => target.errback(Failure::from_panic(payload)).map_err(drop),
            Outcome::Dropped => {
                target.errback(Failure::from_boxed_at(Box::new(RuntimeShutdownError), location)).map_err(drop)
            }
        };
        if fired.is_err() {
            log::debug!(target: "weft::compat", "tokio bridge: Deferred already called; output dropped");
        }
    });
    let key = LOCAL.with(|l| l.borrow_mut().insert(thread.reactor_id(), deliver));
    at.set(Some(key));
    let report = Report { thread, at: key, sent: false, output: PhantomData };
    let future = instrument(future);
    let task = rt.spawn(async move {
        let out = CatchUnwind(Box::pin(future)).await;
        report.send(out);
    });
    LOCAL.with(|l| {
        if let Some(entry) = l.borrow_mut().entries.get_mut(key.key) {
            entry.abort = Some(task.abort_handle());
        }
    });
    d
}

/// Sends the future's outcome to the reactor thread; if it is dropped first (the task was
/// aborted, or the runtime shut down), says so.
struct Report<O> {
    thread: ThreadHandle,
    at: EntryKey,
    sent: bool,
    output: PhantomData<fn(O)>,
}

impl<O: Send + 'static> Report<O> {
    fn send(mut self, out: std::thread::Result<O>) {
        self.sent = true;
        let outcome = match out {
            Ok(out) => Outcome::Output(Box::new(out)),
            Err(panic) => Outcome::Panic(panic),
        };
        let at = self.at;
        // Fails only if the reactor is gone, and with it the entry.
        let _ = self.thread.call_from_thread(move || finish(at, outcome));
    }
}

impl<O> Drop for Report<O> {
    fn drop(&mut self) {
        if !self.sent {
            let at = self.at;
            let _ = self.thread.call_from_thread(move || finish(at, Outcome::Dropped));
        }
    }
}

/// Polls a future, turning a panic into an `Err` (the output goes to the reactor thread
/// either way).
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match crate::panics::caught(|| self.0.as_mut().poll(cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// With `tracing`, runs the future in a child span of the caller's context span (and
/// with that span's subscriber); without, leaves it as it is.
#[cfg(feature = "tracing")]
fn instrument<F: Future + Send + 'static>(future: F) -> impl Future<Output = F::Output> + Send + 'static {
    use tracing::instrument::{Instrument, WithSubscriber};
    let remote = crate::logcontext::RemoteContext::capture();
    let span = remote.as_ref().map_or_else(tracing::Span::none, |r| r.child_span());
    let dispatch = remote
        .as_ref()
        .and_then(|r| r.dispatch())
        .unwrap_or_else(|| tracing::dispatcher::get_default(Clone::clone));
    future.instrument(span).with_subscriber(dispatch)
}

#[cfg(not(feature = "tracing"))]
fn instrument<F: Future + Send + 'static>(future: F) -> F {
    future
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
