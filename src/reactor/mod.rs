//! The reactor: a single-threaded event loop on mio, its timers, threads and sockets.
//!
//! A [`Reactor`] owns the OS readiness queue, a timer heap, a call-soon queue and every
//! registered socket. [`Reactor::run`] turns until [`ReactorHandle::stop`] is called;
//! each turn waits for I/O (no longer than until the next timer), dispatches readiness to
//! the sockets' protocols, runs the due timers, then the call-soon queue. Everything runs
//! on the reactor's thread; [`ThreadHandle`] is the one way in from other threads.
//!
//! ```
//! use std::time::Duration;
//! use weft::reactor::Reactor;
//!
//! let reactor = Reactor::new().unwrap();
//! let handle = reactor.handle();
//! // Stop 10 ms from now; `run` returns once the shutdown triggers have run.
//! reactor.call_later(Duration::from_millis(10), move || handle.stop());
//! reactor.run();
//! ```
//!
//! The deterministic [`Clock`] and the [`ReactorTime`] trait let code that needs time be
//! tested without the real loop.

mod clock;
mod poll;
mod signals;
pub(crate) use threads::handle_for_thread;
mod looping_call;
mod tcp;
mod threads;
mod timers;
mod udp;

use crate::logcontext::{self, Captured, PreserveLoggingContext};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use slab::Slab;

pub use clock::defer_later;
pub use clock::{Clock, ReactorTime};
pub use looping_call::LoopingCall;
pub use tcp::{
    Address, ConnectTimeoutError, ConnectionAborted, ConnectionDone, Factory, ListeningPort, Protocol,
    PushProducer, Transport,
};
pub use threads::{ReactorClosedError, ThreadHandle};
pub use timers::{DelayedCall, DelayedCallError};
pub use udp::{DatagramProtocol, UdpTransport};

use crate::Deferred;
use poll::{Poller, Readiness, Ready, SourceKey};
use timers::{TimeSource, Timers};

/// The event loop (Twisted's reactor). Owns the OS readiness queue, the timers, the
/// call-soon queue, the thread pool and every registered socket.
///
/// `Reactor` dereferences to its [`ReactorHandle`], so every scheduling method is
/// available on both; [`handle`](Reactor::handle) gives a cheap clone to move into
/// callbacks. It is not `Send`: it lives on the thread that made it.
///
/// # Drop
///
/// Dropping the `Reactor` stops its thread pool (joining its threads), drops every
/// pending timer and call, and closes every socket without calling `connection_lost`.
pub struct Reactor {
    handle: ReactorHandle,
}

/// A cheap, cloneable handle to a [`Reactor`], for use inside callbacks. All methods
/// work from any callback the reactor runs.
///
/// Holding a handle keeps the reactor's state alive but does not keep the loop running.
#[derive(Clone)]
pub struct ReactorHandle {
    inner: Rc<Inner>,
}

/// A handle that does not keep the reactor alive; [`upgrade`](WeakReactorHandle::upgrade)
/// gives a [`ReactorHandle`] while the reactor exists.
#[derive(Clone)]
pub struct WeakReactorHandle {
    inner: Weak<Inner>,
}

/// When a shutdown trigger runs, relative to the reactor's own shutdown work (Twisted's
/// `"before"`, `"during"`, `"after"` phases of the `"shutdown"` system event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// First, while everything still works.
    Before,
    /// Next; the thread pool is stopped after this phase.
    During,
    /// Last, after the thread pool stopped.
    After,
}

/// What a shutdown trigger may return: nothing, or a `Deferred<()>` the reactor waits
/// for (bounded by [`ReactorHandle::set_shutdown_timeout`]) before going on to the next
/// phase.
pub trait TriggerResult: trigger_sealed::Sealed {
    #[doc(hidden)]
    fn into_deferred(self) -> Option<Deferred<()>>;
}

mod trigger_sealed {
    pub trait Sealed {}
}

impl trigger_sealed::Sealed for () {}
impl TriggerResult for () {
    fn into_deferred(self) -> Option<Deferred<()>> {
        None
    }
}
impl trigger_sealed::Sealed for Deferred<()> {}
impl TriggerResult for Deferred<()> {
    fn into_deferred(self) -> Option<Deferred<()>> {
        Some(self)
    }
}

/// Something registered with the readiness queue: a connection, a listener, a UDP port.
pub(crate) trait Source {
    /// The OS reported readiness for this source.
    fn ready(self: Rc<Self>, readiness: Readiness);
    /// The reactor is being dropped: close now, call no user code.
    fn close_now(&self);
}

type Callback = Box<dyn FnOnce()>;
type Trigger = Box<dyn FnOnce() -> Option<Deferred<()>>>;

struct SourceSlot {
    generation: u32,
    source: Rc<dyn Source>,
}

pub(crate) struct Inner {
    poller: RefCell<Poller>,
    timers: Rc<Timers>,
    soon: RefCell<VecDeque<Callback>>,
    sources: RefCell<Slab<SourceSlot>>,
    next_generation: Cell<u32>,
    /// Reused between turns so a turn allocates nothing.
    events: RefCell<Vec<Ready>>,
    running: Cell<bool>,
    stop_requested: Cell<bool>,
    when_running: RefCell<Vec<Callback>>,
    triggers: RefCell<[Vec<Trigger>; 3]>,
    shutdown_timeout: Cell<Duration>,
    threads: threads::ReactorThreads,
    /// The scratch buffer sockets read into (64 KiB), lent out during a read.
    read_buf: RefCell<Vec<u8>>,
    /// Set by [`Reactor::stop_on_signals`].
    signals: RefCell<Option<signals::SignalWatch>>,
}

/// How much a socket reads per system call.
pub(crate) const READ_SIZE: usize = 64 * 1024;

impl Reactor {
    /// A new reactor with nothing scheduled.
    ///
    /// # Errors
    ///
    /// The OS error if the readiness queue or the waker cannot be created.
    pub fn new() -> io::Result<Reactor> {
        let (poller, waker) = Poller::new()?;
        let inner = Rc::new(Inner {
            poller: RefCell::new(poller),
            timers: Timers::new(TimeSource::Real(Instant::now())),
            soon: RefCell::new(VecDeque::new()),
            sources: RefCell::new(Slab::new()),
            next_generation: Cell::new(0),
            events: RefCell::new(Vec::with_capacity(1024)),
            running: Cell::new(false),
            stop_requested: Cell::new(false),
            when_running: RefCell::new(Vec::new()),
            triggers: RefCell::new([Vec::new(), Vec::new(), Vec::new()]),
            shutdown_timeout: Cell::new(Duration::from_secs(30)),
            threads: threads::ReactorThreads::new(waker),
            read_buf: RefCell::new(vec![0; READ_SIZE]),
            signals: RefCell::new(None),
        });
        inner.threads.register_for_current_thread();
        Ok(Reactor { handle: ReactorHandle { inner } })
    }

    /// Stops the reactor gracefully on SIGINT or SIGTERM, as [`ReactorHandle::stop`]
    /// does: the shutdown triggers run and [`run`](Reactor::run) returns. Off unless
    /// called (Twisted's `installSignalHandlers`), so a daemon that embeds the reactor
    /// keeps its own signal handling. Calling it again does nothing.
    ///
    /// A small thread waits for the signals (through `signal-hook`) and wakes the loop;
    /// it is closed and joined when the reactor is dropped.
    ///
    /// # Errors
    ///
    /// The OS error if the handlers or the thread could not be set up.
    pub fn stop_on_signals(&self) -> io::Result<()> {
        let mut slot = self.handle.inner.signals.borrow_mut();
        if slot.is_none() {
            *slot = Some(signals::SignalWatch::start(self.handle.thread_handle())?);
        }
        Ok(())
    }

    /// A cheap handle to move into callbacks.
    pub fn handle(&self) -> ReactorHandle {
        self.handle.clone()
    }

    /// Runs the loop until [`stop`](ReactorHandle::stop) is called, then runs the
    /// shutdown triggers ([`Phase::Before`], [`Phase::During`], [`Phase::After`]),
    /// waiting for the Deferreds they return, stops the thread pool, and returns.
    ///
    /// Calls registered with [`call_when_running`](ReactorHandle::call_when_running)
    /// run on the first turn. A reactor may be run again after `run` returns; shutdown
    /// triggers run once per registration.
    pub fn run(&self) {
        // The reactor's own loop runs in the sentinel; each callback brings its own context.
        let _sentinel = PreserveLoggingContext::sentinel();
        let inner = &self.handle.inner;
        inner.running.set(true);
        inner.stop_requested.set(false);
        let starting = std::mem::take(&mut *inner.when_running.borrow_mut());
        for f in starting {
            self.handle.call_soon(f);
        }
        while !inner.stop_requested.get() {
            if let Err(e) = self.handle.turn(None) {
                log::error!(target: "weft::reactor", "polling failed, stopping the reactor: {e}");
                break;
            }
        }
        self.handle.shutdown();
        inner.running.set(false);
    }

    /// Runs one turn of the loop (Twisted's `iterate`): waits for I/O at most `timeout`
    /// (`None`: until something happens; less if a timer is due sooner or calls are
    /// queued), then runs what became ready, the due timers and the queued calls.
    ///
    /// For embedding in a loop someone else owns, together with
    /// [`time_until_next`](ReactorHandle::time_until_next) and the file descriptor from
    /// [`AsRawFd`].
    ///
    /// # Errors
    ///
    /// The OS error if waiting for readiness failed (an interrupted wait is not an
    /// error).
    pub fn iterate(&self, timeout: Option<Duration>) -> io::Result<()> {
        let _sentinel = PreserveLoggingContext::sentinel();
        self.handle.turn(timeout)
    }
}

impl std::ops::Deref for Reactor {
    type Target = ReactorHandle;
    fn deref(&self) -> &ReactorHandle {
        &self.handle
    }
}

impl AsRawFd for Reactor {
    /// The readiness queue's descriptor: it becomes readable when an
    /// [`iterate`](Reactor::iterate) would find I/O to dispatch. Timers and queued calls
    /// do not make it readable: ask [`time_until_next`](ReactorHandle::time_until_next).
    fn as_raw_fd(&self) -> RawFd {
        self.handle.inner.poller.borrow().as_raw_fd()
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        let inner = &self.handle.inner;
        let signals = inner.signals.borrow_mut().take();
        drop(signals);
        inner.threads.unregister_for_current_thread();
        inner.threads.close();
        inner.threads.shutdown(&self.handle);
        // What is dropped here may hold handles on the reactor and schedule more work
        // from its own `Drop`; a leftover would keep `Inner` alive through its handle, so
        // drop until nothing is left (bounded, against drops that reschedule forever).
        for _ in 0..MAX_DROP_ROUNDS {
            let sources: Vec<_> = inner.sources.borrow_mut().drain().collect();
            for s in &sources {
                s.source.close_now();
            }
            drop(sources);
            inner.timers.clear();
            let soon = std::mem::take(&mut *inner.soon.borrow_mut());
            drop(soon);
            let triggers = std::mem::take(&mut *inner.triggers.borrow_mut());
            drop(triggers);
            let when = std::mem::take(&mut *inner.when_running.borrow_mut());
            drop(when);
            if inner.is_empty() {
                return;
            }
        }
        log::error!(target: "weft::reactor", "dropping the reactor: work is still being scheduled as it is dropped");
    }
}

/// How many times dropping a [`Reactor`] empties its queues before giving up.
const MAX_DROP_ROUNDS: usize = 100;

impl Inner {
    /// True if no socket, timer, queued call, trigger or when-running call is held.
    fn is_empty(&self) -> bool {
        self.sources.borrow().is_empty()
            && self.timers.len() == 0
            && self.soon.borrow().is_empty()
            && self.triggers.borrow().iter().all(Vec::is_empty)
            && self.when_running.borrow().is_empty()
    }
}

impl ReactorHandle {
    /// Asks the loop to stop: [`Reactor::run`] finishes the current turn, runs the
    /// shutdown triggers and returns. Callable from any callback.
    pub fn stop(&self) {
        self.inner.stop_requested.set(true);
    }

    /// True while [`Reactor::run`] is running (shutdown included).
    pub fn is_running(&self) -> bool {
        self.inner.running.get()
    }

    /// Runs `f` once the reactor runs (at once, on the next turn, if it already does).
    pub fn call_when_running<F: FnOnce() + 'static>(&self, f: F) {
        if self.inner.running.get() {
            self.call_soon(f);
        } else {
            self.inner.when_running.borrow_mut().push(logcontext::bind(Box::new(f)));
        }
    }

    /// Runs `f` at the end of the current turn (or of the next one, if called from the
    /// call-soon queue itself), in the order calls were queued. Cheaper than
    /// `call_later(0)`: no timer is made.
    pub fn call_soon<F: FnOnce() + 'static>(&self, f: F) {
        self.inner.soon.borrow_mut().push_back(logcontext::bind(Box::new(f)));
    }

    /// Schedules `f` to run after `delay`; the generic form of
    /// [`ReactorTime::call_later`].
    pub fn call_later<F: FnOnce() + 'static>(&self, delay: Duration, f: F) -> DelayedCall {
        self.inner.timers.schedule(delay, Box::new(f))
    }

    /// How long the loop may sleep before something is due: zero if calls are queued,
    /// `None` if nothing is scheduled at all.
    pub fn time_until_next(&self) -> Option<Duration> {
        if !self.inner.soon.borrow().is_empty() || self.inner.threads.has_pending() {
            return Some(Duration::ZERO);
        }
        self.inner.timers.next_deadline().map(|d| d.saturating_sub(self.inner.timers.now()))
    }

    /// Adds a shutdown trigger (Twisted's `addSystemEventTrigger(phase, "shutdown", f)`).
    /// If `f` returns a `Deferred<()>`, the reactor keeps turning until it fires (or
    /// until the [shutdown timeout](Self::set_shutdown_timeout)) before the next phase.
    /// A failure is logged.
    pub fn add_shutdown_trigger<F, R>(&self, phase: Phase, f: F)
    where
        F: FnOnce() -> R + 'static,
        R: TriggerResult,
    {
        let i = phase as usize;
        let captured = Captured::capture();
        self.inner.triggers.borrow_mut()[i].push(Box::new(move || captured.run(|| f().into_deferred())));
    }

    /// How long each shutdown phase waits for the Deferreds its triggers returned
    /// (default 30 s). Past it, the reactor logs a warning and goes on.
    pub fn set_shutdown_timeout(&self, timeout: Duration) {
        self.inner.shutdown_timeout.set(timeout);
    }

    /// A `Send` handle for other threads (see [`ThreadHandle::call_from_thread`]).
    pub fn thread_handle(&self) -> ThreadHandle {
        self.inner.threads.handle()
    }

    /// Runs `f` on the reactor's thread pool and fires the returned Deferred, on the
    /// reactor thread, with what it returned (Twisted's `deferToThread`). A panic in `f`
    /// becomes a [`PanicError`](crate::PanicError) Failure.
    ///
    /// # Cancellation
    ///
    /// Cancelling before a pool thread picked the work up removes it: `f` never runs.
    /// Once it runs it cannot be stopped; the Deferred fails with `CancelledError` at
    /// once and the late result is dropped.
    #[must_use = "the Deferred carries f's result"]
    pub fn defer_to_thread<T, F>(&self, f: F) -> Deferred<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.inner.threads.defer_to_thread(self, f)
    }

    /// The maximum number of threads [`defer_to_thread`](Self::defer_to_thread) uses
    /// (default 4). Takes effect for threads started afterwards.
    pub fn set_thread_pool_size(&self, threads: usize) {
        self.inner.threads.set_pool_size(threads.max(1));
    }

    /// A handle that does not keep the reactor alive.
    pub fn downgrade(&self) -> WeakReactorHandle {
        WeakReactorHandle { inner: Rc::downgrade(&self.inner) }
    }

    /// One turn of the loop; see [`Reactor::iterate`].
    fn turn(&self, max_wait: Option<Duration>) -> io::Result<()> {
        // Every callback restores the context it found, so a context current here leaked.
        logcontext::assert_sentinel();
        let inner = &*self.inner;
        if inner.signals.borrow().as_ref().is_some_and(signals::SignalWatch::take) {
            inner.stop_requested.set(true);
        }
        let timeout = if !inner.soon.borrow().is_empty() || inner.stop_requested.get() {
            Some(Duration::ZERO)
        } else {
            let next = inner.timers.next_deadline().map(|d| d.saturating_sub(inner.timers.now()));
            match (next, max_wait) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        let mut events = std::mem::take(&mut *inner.events.borrow_mut());
        events.clear();
        let polled = inner.poller.borrow_mut().poll(timeout, &mut events);
        for ready in events.drain(..) {
            match ready {
                Ready::Wake => inner.threads.drain(self),
                Ready::Source(key, readiness) => {
                    let source = {
                        let sources = inner.sources.borrow();
                        match sources.get(key.index as usize) {
                            Some(slot) if slot.generation == key.generation => Some(slot.source.clone()),
                            _ => None,
                        }
                    };
                    if let Some(source) = source {
                        guarded("I/O handler", move || source.ready(readiness));
                    }
                }
            }
        }
        *inner.events.borrow_mut() = events;
        polled?;
        let now = inner.timers.now();
        while let Some(call) = inner.timers.pop_due(now) {
            guarded("timer", call);
        }
        let batch = std::mem::take(&mut *inner.soon.borrow_mut());
        for call in batch {
            guarded("call_soon", call);
        }
        Ok(())
    }

    /// Runs the three shutdown phases, turning the loop while their Deferreds are pending.
    fn shutdown(&self) {
        for phase in [Phase::Before, Phase::During, Phase::After] {
            let triggers = std::mem::take(&mut self.inner.triggers.borrow_mut()[phase as usize]);
            let pending = Rc::new(Cell::new(0usize));
            for t in triggers {
                let pending = pending.clone();
                guarded("shutdown trigger", move || {
                    if let Some(d) = t() {
                        pending.set(pending.get() + 1);
                        d.add_both(move |r| {
                            if let Err(f) = r {
                                log::error!(target: "weft::reactor", "shutdown trigger failed: {f}");
                            }
                            pending.set(pending.get() - 1);
                        });
                    }
                });
            }
            let deadline = Instant::now() + self.inner.shutdown_timeout.get();
            while pending.get() > 0 {
                let now = Instant::now();
                if now >= deadline {
                    log::warn!(
                        target: "weft::reactor",
                        "shutdown phase {phase:?}: {} trigger(s) still pending after the timeout",
                        pending.get()
                    );
                    break;
                }
                if let Err(e) = self.turn(Some(deadline - now)) {
                    log::error!(target: "weft::reactor", "polling failed during shutdown: {e}");
                    break;
                }
            }
            if phase == Phase::During {
                self.inner.threads.shutdown(self);
            }
        }
    }

    pub(crate) fn register(
        &self,
        fd: RawFd,
        source: Rc<dyn Source>,
        readable: bool,
        writable: bool,
    ) -> io::Result<SourceKey> {
        let generation = self.inner.next_generation.get().wrapping_add(1);
        self.inner.next_generation.set(generation);
        let index = self.inner.sources.borrow_mut().insert(SourceSlot { generation, source });
        let key = SourceKey { index: index as u32, generation };
        if let Err(e) = self.inner.poller.borrow().register(fd, key, readable, writable) {
            let slot = self.inner.sources.borrow_mut().remove(index);
            drop(slot);
            return Err(e);
        }
        Ok(key)
    }

    pub(crate) fn deregister(&self, key: SourceKey, fd: RawFd) {
        if let Err(e) = self.inner.poller.borrow().deregister(fd) {
            log::debug!(target: "weft::reactor", "deregister failed: {e}");
        }
        let removed = {
            let mut sources = self.inner.sources.borrow_mut();
            match sources.get(key.index as usize) {
                Some(slot) if slot.generation == key.generation => Some(sources.remove(key.index as usize)),
                _ => None,
            }
        };
        drop(removed);
    }

    /// Lends the 64 KiB read buffer to `f` (a fresh one if it is already lent out).
    pub(crate) fn with_read_buf<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let mut buf = std::mem::take(&mut *self.inner.read_buf.borrow_mut());
        if buf.len() < READ_SIZE {
            buf = vec![0; READ_SIZE];
        }
        let r = f(&mut buf);
        *self.inner.read_buf.borrow_mut() = buf;
        r
    }
}

impl ReactorTime for ReactorHandle {
    fn now(&self) -> Duration {
        self.inner.timers.now()
    }

    fn call_later(&self, delay: Duration, f: Box<dyn FnOnce()>) -> DelayedCall {
        self.inner.timers.schedule(delay, f)
    }
}

impl WeakReactorHandle {
    /// The reactor, if it still exists.
    pub fn upgrade(&self) -> Option<ReactorHandle> {
        self.inner.upgrade().map(|inner| ReactorHandle { inner })
    }
}

impl fmt::Debug for Reactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.handle.fmt(f)
    }
}

impl fmt::Debug for ReactorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor")
            .field("running", &self.inner.running.get())
            .field("timers", &self.inner.timers.len())
            .field("sources", &self.inner.sources.borrow().len())
            .finish()
    }
}

impl fmt::Debug for WeakReactorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WeakReactorHandle")
    }
}

/// Runs a reactor callback, catching and logging a panic so the loop keeps running.
pub(crate) fn guarded<R>(what: &str, f: impl FnOnce() -> R) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(payload) => {
            let failure = crate::Failure::from_panic(payload);
            log::error!(target: "weft::reactor", "panic in {what}: {failure}");
            None
        }
    }
}
