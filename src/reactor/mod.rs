//! The reactor: a single-threaded event loop on mio, its timers, threads and sockets.
//!
//! A [`Reactor`] owns the OS readiness queue, a timer heap, a call-soon queue and every
//! registered socket. [`Reactor::run`] turns until [`ReactorHandle::stop`] is called;
//! each turn waits for I/O (no longer than until the next timer), dispatches readiness to
//! the sockets' protocols, runs the due timers, then the call-soon queue. Everything runs
//! on the reactor's thread; [`ThreadHandle`] is the one way in from other threads.
//!
//! # Embedding
//!
//! Another program's loop (epoll, tokio, calloop, a GUI toolkit) can drive the reactor
//! instead of [`Reactor::run`]: wait until the reactor's descriptor ([`AsFd`]) is
//! readable, call [`Reactor::iterate`]`(Some(Duration::ZERO))`, repeat. The descriptor
//! becomes readable whenever the reactor has work: I/O, a due timer (once the descriptor
//! is lent out, a `timerfd` inside the reactor's queue follows the earliest deadline,
//! whoever scheduled it), queued calls, a stop. [`iterate`](Reactor::iterate) handles everything ready and returns an
//! [`IterateStatus`]; it works for hosts that wait level- or edge-triggered. To stop,
//! call [`stop`](ReactorHandle::stop) and keep iterating until
//! [`is_stopped`](ReactorHandle::is_stopped): the shutdown phases and the closing of
//! every connection run through `iterate` as they do in `run`.
//!
//! ```
//! use std::time::Duration;
//! use weft::reactor::{IterateStatus, Reactor};
//!
//! let reactor = Reactor::new().unwrap();
//! let handle = reactor.handle();
//! reactor.call_later(Duration::from_millis(5), move || handle.stop());
//! // A host loop; a real one waits for `reactor.as_fd()` to be readable (with its own
//! // epoll, tokio's `AsyncFd`, calloop's `Generic`) instead of blocking in `iterate`.
//! while reactor.iterate(Some(Duration::from_millis(100))).unwrap() != IterateStatus::Stopped {}
//! assert!(reactor.is_stopped());
//! ```
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
mod lifecycle;
mod poll;
mod signals;
pub(crate) use threads::handle_for_thread;
mod listen;
mod looping_call;
mod memory;
mod metrics;
mod per_core;
mod protocol;
mod stream;
#[cfg(test)]
mod tests;
mod threads;
mod timers;
#[cfg(feature = "tls")]
pub mod tls;
mod udp;

use crate::logcontext::{self, Captured, PreserveLoggingContext};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use slab::Slab;

pub use clock::defer_later;
pub use clock::{Clock, ReactorTime};
pub use lifecycle::{react, Phase, TriggerId, TriggerResult};
pub use listen::{ListenOptions, ListeningPort};
pub use looping_call::LoopingCall;
pub use memory::MemoryTransport;
pub use metrics::{Histogram, ReactorMetrics, ThreadPoolMetrics, TurnMetrics};
pub use per_core::{ReactorGroup, ReactorGroupError};
pub use protocol::{
    Address, ConnectTimeoutError, ConnectionAborted, ConnectionDone, Factory, Protocol, PushProducer,
};
pub use stream::{Transport, WriteBufferLimitsError};
pub use threads::{BlockingCallError, CancelToken, ReactorClosedError, ThreadHandle};
pub use timers::{DelayedCall, DelayedCallError};
pub use udp::{DatagramProtocol, UdpTransport};

use crate::Deferred;
use lifecycle::{Lifecycle, Stage};
use poll::{Poller, Readiness, Ready, SourceKey};
use timers::Timers;

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
/// pending timer and call, and closes every socket without calling `connection_lost`:
/// the fast path. [`stop`](ReactorHandle::stop) is the graceful one: it closes every
/// socket and tells each protocol.
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

/// What [`Reactor::iterate`] left behind, so a host knows whether to wait or to call it
/// again.
///
/// The reactor's descriptor tells the same story: it is readable while the status would
/// be `Pending`, with a fresh readiness edge for hosts that wait edge-triggered, so a
/// host may also ignore the status and just wait on the descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IterateStatus {
    /// Nothing is ready now: wait for the descriptor (or until
    /// [`next_deadline`](ReactorHandle::next_deadline)).
    Idle,
    /// More is ready now (events the turn had no room for, queued calls, due timers, a
    /// shutdown step): call `iterate` again without waiting.
    Pending,
    /// The reactor has stopped: the shutdown has finished
    /// ([`is_stopped`](ReactorHandle::is_stopped)). `iterate` still turns the loop if
    /// called again.
    Stopped,
}

/// Something registered with the readiness queue: a connection, a listener, a UDP port.
pub(crate) trait Source {
    /// The OS reported readiness for this source.
    fn ready(self: Rc<Self>, readiness: Readiness);
    /// The reactor is being dropped: close now, call no user code.
    fn close_now(&self);
    /// The reactor moved the source to `key` when it compacted its table; later
    /// deregistrations use it. Calls no user code.
    fn rekey(&self, key: SourceKey);
    /// The reactor is shutting down (its "during" phase): close as a user's close would,
    /// so the protocol hears of it (`connection_lost`, `stop_protocol`). `Graceful` may
    /// finish on a later turn (a connection flushes first); `Abort` closes now.
    fn shut_down(self: Rc<Self>, how: Closing);
    /// True for a stream connection (the reactor's metrics count them).
    fn is_connection(&self) -> bool {
        false
    }
}

/// How [`Source::shut_down`] closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closing {
    /// As `lose_connection`: write out what is buffered, then close.
    Graceful,
    /// As `abort_connection`, at once: the graceful close did not finish in time.
    Abort,
}

type Callback = Box<dyn FnOnce()>;

/// How many waits one turn may do while each fills the event buffer, before leaving the
/// rest for the next turn (and saying so in its [`IterateStatus`]).
const MAX_POLLS_PER_TURN: usize = 4;

struct SourceSlot {
    generation: u32,
    source: Rc<dyn Source>,
    /// What it was registered with, to move it to another slot.
    fd: RawFd,
    readable: bool,
    writable: bool,
}

/// Below this many slots the source table is never compacted.
const SOURCES_SHRINK_FLOOR: usize = 64;

pub(crate) struct Inner {
    poller: Poller,
    /// The timer heap, and the alarm that follows its earliest deadline.
    timers: Rc<Timers>,
    soon: RefCell<VecDeque<Callback>>,
    sources: RefCell<Slab<SourceSlot>>,
    next_generation: Cell<u32>,
    /// Reused between turns so a turn allocates nothing.
    events: RefCell<Vec<Ready>>,
    /// How many event batches are being dispatched (a callback may run a nested turn);
    /// the source table is compacted only when none is, since a batch holds slot keys.
    dispatching: Cell<u32>,
    sources_sparse: timers::Sparse,
    /// Gives back the blocks the thread keeps for reuse that stay unused
    /// (`free_list.rs`).
    free_lists_idle: crate::free_list::Decay,
    /// The last turn left events in the readiness queue (each of its waits filled the
    /// event buffer).
    events_left: Cell<bool>,
    lifecycle: Lifecycle,
    threads: threads::ReactorThreads,
    /// The scratch buffer sockets read into (64 KiB), lent out during a read.
    read_buf: RefCell<Vec<u8>>,
    /// Set by [`Reactor::stop_on_signals`].
    signals: RefCell<Option<signals::SignalWatch>>,
    /// What the turns did ([`ReactorHandle::metrics`]).
    metrics: metrics::Recorder,
}

/// How much a socket reads per system call.
pub(crate) const READ_SIZE: usize = 64 * 1024;

impl Reactor {
    /// A new reactor with nothing scheduled.
    ///
    /// # Errors
    ///
    /// The OS error if the readiness queue, the waker or the timer descriptor (the
    /// alarm, see [`AsFd`]) cannot be created.
    pub fn new() -> io::Result<Reactor> {
        let start = Instant::now();
        let (poller, waker) = Poller::new()?;
        let alarm = poller.alarm()?;
        let inner = Rc::new(Inner {
            poller,
            timers: Timers::with_alarm(start, alarm),
            soon: RefCell::new(VecDeque::new()),
            sources: RefCell::new(Slab::new()),
            next_generation: Cell::new(0),
            events: RefCell::new(Vec::with_capacity(poll::EVENTS_PER_POLL)),
            dispatching: Cell::new(0),
            sources_sparse: timers::Sparse::default(),
            free_lists_idle: crate::free_list::Decay::new(),
            events_left: Cell::new(false),
            lifecycle: Lifecycle::new(),
            threads: threads::ReactorThreads::new(waker),
            read_buf: RefCell::new(vec![0; READ_SIZE]),
            signals: RefCell::new(None),
            metrics: metrics::Recorder::new(),
        });
        inner.threads.register_for_current_thread();
        Ok(Reactor { handle: ReactorHandle { inner } })
    }

    /// Stops the reactor gracefully on SIGINT or SIGTERM, as [`ReactorHandle::stop`]
    /// does: the shutdown phases run (closing every connection) and
    /// [`run`](Reactor::run) returns, or a host driving [`iterate`](Reactor::iterate) sees
    /// [`is_stopping`](ReactorHandle::is_stopping), then
    /// [`is_stopped`](ReactorHandle::is_stopped). Off unless
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
    /// shutdown phases ([`Phase::Before`], [`Phase::During`] (which closes every socket),
    /// [`Phase::After`]), waiting for the Deferreds their triggers return, stops the
    /// thread pool, and returns.
    ///
    /// Calls registered with [`call_when_running`](ReactorHandle::call_when_running)
    /// run on the first turn. A reactor may be run again after `run` returns; shutdown
    /// triggers run once per registration.
    ///
    /// If waiting for readiness fails (it should not), the error is logged and the
    /// shutdown runs at once, without waiting for its triggers or connections.
    pub fn run(&self) {
        // The reactor's own loop runs in the sentinel; each callback brings its own context.
        let _sentinel = PreserveLoggingContext::sentinel();
        let _driving = Driving::new(&self.handle);
        self.handle.start_running();
        while !self.handle.is_stopped() {
            if let Err(e) = self.handle.turn(None) {
                log::error!(target: "weft::reactor", "polling failed, stopping the reactor: {e}");
                self.handle.abandon();
            }
        }
    }

    /// Starts the reactor without running the loop, for a host that drives it with
    /// [`iterate`](Self::iterate) (Twisted's `startRunning`): the
    /// [`call_when_running`](ReactorHandle::call_when_running) calls are queued for the
    /// next turn and the descriptor becomes readable. The first `iterate` starts the
    /// reactor if this was not called. Does nothing if it runs already; after it
    /// stopped, starts it again.
    pub fn start(&self) {
        self.handle.start_running();
    }

    /// Runs one turn of the loop (Twisted's `iterate`), for a host that owns the loop:
    /// waits for I/O at most `timeout` (`None`: until something happens; less if a timer
    /// is due sooner or calls are queued), then runs what became ready, the due timers,
    /// the queued calls, and the next step of a shutdown if one is under way. Starts the
    /// reactor on the first call (see [`start`](Self::start)).
    ///
    /// One turn handles every event ready when it waits (up to 4 × 1,024 at once; more
    /// is reported as [`IterateStatus::Pending`]), so a host waiting edge-triggered on
    /// the descriptor misses nothing. The status says whether to wait or call again;
    /// the descriptor agrees with it (see [`IterateStatus`]).
    ///
    /// After [`stop`](ReactorHandle::stop), keep calling it until it returns
    /// [`IterateStatus::Stopped`]: the shutdown phases run through it, their triggers
    /// and Deferreds included, and every connection gets its `connection_lost`. The turn
    /// that ends the "during" phase stops the thread pool, joining its threads: it
    /// blocks while a [`defer_to_thread`](ReactorHandle::defer_to_thread) job still
    /// runs. Once stopped, `iterate` still turns the loop (waiting up to `timeout` when
    /// nothing is due, never spinning).
    ///
    /// # Errors
    ///
    /// The OS error if waiting for readiness failed (an interrupted wait is not an
    /// error).
    ///
    /// # Examples
    ///
    /// A host that waits on the descriptor itself (here with `poll(2)` through
    /// `rustix`; `epoll`, tokio's `AsyncFd` or calloop's `Generic` work the same way):
    ///
    /// ```
    /// use std::os::fd::AsFd;
    /// use std::time::Duration;
    /// use rustix::event::{poll, PollFd, PollFlags};
    /// use weft::reactor::{IterateStatus, Reactor};
    ///
    /// let reactor = Reactor::new().unwrap();
    /// let handle = reactor.handle();
    /// // Host code, outside weft's callbacks: the descriptor wakes the host when it is due.
    /// reactor.call_later(Duration::from_millis(5), move || handle.stop());
    /// let fd = reactor.as_fd();
    /// loop {
    ///     let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    ///     poll(&mut fds, None).unwrap(); // no timeout to compute
    ///     if reactor.iterate(Some(Duration::ZERO)).unwrap() == IterateStatus::Stopped {
    ///         break;
    ///     }
    /// }
    /// ```
    pub fn iterate(&self, timeout: Option<Duration>) -> io::Result<IterateStatus> {
        let _sentinel = PreserveLoggingContext::sentinel();
        let driving = Driving::new(&self.handle);
        if self.handle.inner.lifecycle.stage() == Stage::NotStarted {
            self.handle.start_running();
        }
        self.handle.turn(timeout)?;
        drop(driving);
        Ok(self.handle.status())
    }
}

/// Holds the alarm while a driver turns the loop (deadlines set meanwhile are the
/// driver's business, not a system call each), and on drop brings the alarm in line with
/// what is left, for a host that waits on the descriptor next.
struct Driving<'a> {
    handle: &'a ReactorHandle,
    was_held: bool,
}

impl<'a> Driving<'a> {
    fn new(handle: &'a ReactorHandle) -> Driving<'a> {
        let was_held = handle.inner.timers.alarm().is_some_and(|a| a.hold());
        Driving { handle, was_held }
    }
}

impl Drop for Driving<'_> {
    fn drop(&mut self) {
        let Some(alarm) = self.handle.inner.timers.alarm() else { return };
        alarm.release(self.was_held);
        if self.was_held {
            return;
        }
        let inner = &*self.handle.inner;
        if inner.events_left.get() {
            // The host saw its edge for those events already: give it a fresh one.
            alarm.kick();
        } else {
            alarm.sync(self.handle.next_wake());
        }
    }
}

impl std::ops::Deref for Reactor {
    type Target = ReactorHandle;
    fn deref(&self) -> &ReactorHandle {
        &self.handle
    }
}

impl AsFd for Reactor {
    /// The reactor's descriptor (its readiness queue): readable whenever
    /// [`iterate`](Reactor::iterate) has work to do: I/O, a due timer (whoever scheduled
    /// it, from weft's callbacks or from host code), queued calls, a wake-up from
    /// another thread, a stop. A host waits for it to be readable, level- or
    /// edge-triggered, and needs no timeout of its own.
    fn as_fd(&self) -> BorrowedFd<'_> {
        // The alarm works only once someone may be waiting on the descriptor: a reactor
        // driven by `run` alone never pays for it.
        if let Some(alarm) = self.handle.inner.timers.alarm() {
            if alarm.enable() && !alarm.is_held() {
                alarm.sync(self.handle.next_wake());
            }
        }
        self.handle.inner.poller.as_fd()
    }
}

impl AsRawFd for Reactor {
    /// The descriptor [`AsFd`] lends; prefer `as_fd`.
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
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
            inner.lifecycle.clear();
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
            && self.lifecycle.is_empty()
    }
}

impl ReactorHandle {
    /// Runs `f` at the end of the current turn (or of the next one, if called from the
    /// call-soon queue itself), in the order calls were queued. Cheaper than
    /// `call_later(0)`: no timer is made.
    ///
    /// # Log context
    ///
    /// `f` runs in the log context current when this was called. What it returns is
    /// dropped, so `move || d.cancel()` (which returns a [`CancelOutcome`](crate::CancelOutcome)) fits.
    pub fn call_soon<F: FnOnce() -> R + 'static, R>(&self, f: F) {
        self.push_soon(logcontext::bind(Box::new(move || drop(f()))));
    }

    /// Queues an already bound call, waking a host that waits on the descriptor.
    fn push_soon(&self, f: Callback) {
        self.inner.soon.borrow_mut().push_back(f);
        self.wake_host();
    }

    /// Makes the descriptor readable now, unless a driver is turning the loop (it looks
    /// at the call-soon queue and the shutdown itself).
    #[inline]
    fn wake_host(&self) {
        if let Some(alarm) = self.inner.timers.alarm() {
            alarm.request(Duration::ZERO);
        }
    }

    /// Schedules `f` to run after `delay`; the generic form of
    /// [`ReactorTime::call_later`]. What `f` returns is dropped, so
    /// `move || d.cancel()` fits (Twisted's `reactor.callLater(5, d.cancel)`).
    pub fn call_later<F: FnOnce() -> R + 'static, R>(&self, delay: Duration, f: F) -> DelayedCall {
        self.inner.timers.schedule(delay, move || drop(f()))
    }

    /// The timers scheduled with [`call_later`](Self::call_later) and not yet run or
    /// cancelled, in the order they will run (Twisted's `getDelayedCalls`).
    pub fn get_delayed_calls(&self) -> Vec<DelayedCall> {
        self.inner.timers.delayed_calls()
    }

    /// How long a host may wait before the reactor has something to do: zero if work
    /// is ready now (queued calls, a shutdown step, events left by the last turn),
    /// `None` if nothing is scheduled at all (only I/O or another thread can bring work).
    ///
    /// Rounded *up* to a whole millisecond, so a host that passes
    /// `timeout.as_millis()` to `epoll_wait`/`poll` never wakes a fraction of a
    /// millisecond early and spins until the deadline (a truncated 0.7 ms would be a
    /// zero timeout, again and again). For the exact time, use
    /// [`next_deadline`](Self::next_deadline); a host that waits on the reactor's
    /// descriptor needs neither: the descriptor becomes readable when a timer is due.
    pub fn time_until_next(&self) -> Option<Duration> {
        let at = self.next_time()?;
        let left = at.saturating_sub(self.inner.timers.now());
        let part = left.subsec_nanos() % 1_000_000;
        Some(if part == 0 {
            left
        } else {
            left.saturating_add(Duration::from_nanos(u64::from(1_000_000 - part)))
        })
    }

    /// When the reactor next has something to do, for hosts that keep their own timers
    /// (calloop's `Timer::from_deadline`, tokio's `sleep_until`): a time already passed
    /// if work is ready now, `None` if nothing is scheduled. Exact, not rounded.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_time().and_then(|at| self.inner.timers.instant_at(at))
    }

    /// The time (on the timers' clock) the reactor next has work: zero if it has some now.
    fn next_time(&self) -> Option<Duration> {
        if self.has_work_now() {
            return Some(Duration::ZERO);
        }
        self.inner.timers.next_deadline()
    }

    /// As `next_time`, but possibly early after a cancel (the timers' `wake_hint`): for
    /// the alarm and the status, where waking once for nothing is cheaper than finding
    /// the exact deadline.
    fn next_wake(&self) -> Option<Duration> {
        if self.has_work_now() {
            return Some(Duration::ZERO);
        }
        self.inner.timers.wake_hint()
    }

    /// True if something other than a timer is ready now.
    fn has_work_now(&self) -> bool {
        let inner = &*self.inner;
        !inner.soon.borrow().is_empty()
            || self.has_starting()
            || inner.events_left.get()
            || inner.lifecycle.needs_step()
            || inner.threads.has_pending()
    }

    /// What the last turn left: see [`IterateStatus`].
    fn status(&self) -> IterateStatus {
        if self.is_stopped() {
            IterateStatus::Stopped
        } else if self.next_wake().is_some_and(|at| at <= self.inner.timers.now()) {
            IterateStatus::Pending
        } else {
            IterateStatus::Idle
        }
    }

    /// A `Send` handle for other threads (see [`ThreadHandle::call_from_thread`]).
    pub fn thread_handle(&self) -> ThreadHandle {
        self.inner.threads.handle()
    }

    /// Runs `f` on the reactor's thread pool and fires the returned Deferred, on the
    /// reactor thread, with what it returned (Twisted's `deferToThread`). A panic in `f`
    /// becomes a [`PanicError`](crate::PanicError) Failure.
    /// [`defer_to_thread_with_token`](Self::defer_to_thread_with_token) is the form for
    /// jobs that can fail or stop early.
    ///
    /// # Log context
    ///
    /// As Synapse's `defer_to_threadpool`: `f` runs in a log context named after the
    /// caller's (its log records carry the request id), and the thread CPU time it
    /// used, with any database counters it added to `current_context()`, is charged to
    /// the caller's context when the result is delivered. The Deferred's callbacks run
    /// in the contexts they were added in, as always.
    ///
    /// # Cancellation
    ///
    /// Cancelling before a pool thread picked the work up removes it: `f` never runs.
    /// Once it runs it cannot be stopped; the Deferred fails with `CancelledError` at
    /// once and the late result goes to the lost-result guard (its CPU is still
    /// charged): the Deferred's [`on_lost_result`](crate::Deferred::on_lost_result)
    /// hook if it has one (to give back a connection, say, or `|_| ()` to drop what a
    /// cancelled request no longer needs), otherwise the thread's, which by default logs
    /// a warning.
    #[track_caller]
    #[must_use = "the Deferred carries f's result"]
    pub fn defer_to_thread<T, F>(&self, f: F) -> Deferred<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let location = std::panic::Location::caller();
        self.inner
            .threads
            .defer_to_thread(self, location, move |_: &CancelToken| Ok::<T, std::convert::Infallible>(f()))
    }

    /// [`defer_to_thread`](Self::defer_to_thread) for a job that may fail and may stop
    /// early: `f` gets a [`CancelToken`] that turns true once the Deferred is cancelled
    /// (or the pool stops), and returns a `Result`. An `Err` reaches the errback chain as
    /// a [`Failure`](crate::Failure) holding the error (made on the reactor thread,
    /// naming the line that called this); the error may be any `Error + Send + Sync`, a
    /// `Box<dyn Error + Send + Sync>` or a `String`.
    ///
    /// ```
    /// use std::{cell::RefCell, rc::Rc};
    /// use weft::reactor::{CancelToken, Reactor};
    ///
    /// let reactor = Reactor::new().unwrap();
    /// let read = reactor.defer_to_thread_with_token(|token: &CancelToken| {
    ///     let mut lines = 0;
    ///     for _ in 0..1000 {
    ///         if token.is_cancelled() {
    ///             return Err(std::io::Error::other("stopped early"));
    ///         }
    ///         lines += 1; // ... one unit of blocking work ...
    ///     }
    ///     Ok(lines)
    /// });
    /// let got = Rc::new(RefCell::new(None));
    /// let (g, h) = (got.clone(), reactor.handle());
    /// read.add_both(move |r| {
    ///     *g.borrow_mut() = Some(r.is_ok());
    ///     h.stop();
    ///     r
    /// });
    /// reactor.run();
    /// assert_eq!(*got.borrow(), Some(true));
    /// ```
    ///
    /// # Cancellation
    ///
    /// As for `defer_to_thread`; in addition the token of a running job turns true. A
    /// job that then stops with an error is not reported (it did as asked); a value it
    /// still returns goes to the lost-result guard.
    #[track_caller]
    #[must_use = "the Deferred carries f's result"]
    pub fn defer_to_thread_with_token<T, E, F>(&self, f: F) -> Deferred<T>
    where
        T: Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
        F: FnOnce(&CancelToken) -> Result<T, E> + Send + 'static,
    {
        self.inner.threads.defer_to_thread(self, std::panic::Location::caller(), f)
    }

    /// The maximum number of threads [`defer_to_thread`](Self::defer_to_thread) uses
    /// (default 4). Takes effect for threads started afterwards.
    pub fn set_thread_pool_size(&self, threads: usize) {
        self.inner.threads.set_pool_size(threads.max(1));
    }

    /// The reactor's metrics now: per-turn histograms (tick time, calls, ready sources,
    /// timer lateness) and counters since it was made, and gauges (timers, connections,
    /// the thread pool, per-context totals) read now. See [`ReactorMetrics`];
    /// [`ReactorMetrics::to_prometheus`] writes them for a `/metrics` endpoint.
    ///
    /// ```
    /// use std::time::Duration;
    /// use weft::Reactor;
    ///
    /// let reactor = Reactor::new().unwrap();
    /// reactor.call_later(Duration::ZERO, || {});
    /// reactor.call_later(Duration::from_secs(60), || {});
    /// reactor.iterate(Some(Duration::ZERO)).unwrap();
    /// let m = reactor.metrics();
    /// assert_eq!((m.turns, m.last_turn.calls, m.pending_timers), (1, 1, 1));
    /// ```
    pub fn metrics(&self) -> ReactorMetrics {
        let inner = &*self.inner;
        let (sources, open_connections) = {
            let sources = inner.sources.borrow();
            (sources.len(), sources.iter().filter(|(_, s)| s.source.is_connection()).count())
        };
        inner.metrics.snapshot(metrics::Gauges {
            pending_timers: inner.timers.len(),
            open_connections,
            sources,
            thread_pool: inner.threads.pool_metrics(),
        })
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
        self.run_starting();
        if inner.signals.borrow().as_ref().is_some_and(signals::SignalWatch::take) {
            self.stop();
        }
        let timeout = if !inner.soon.borrow().is_empty() || inner.lifecycle.needs_step() {
            Some(Duration::ZERO)
        } else {
            let next = inner.timers.wake_hint().map(|d| d.saturating_sub(inner.timers.now()));
            match (next, max_wait) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        let (woke, ready) = self.poll_and_dispatch(timeout)?;
        // The time after polling, read once, and only if something needs it.
        let now = std::cell::OnceCell::new();
        let now = || *now.get_or_init(|| inner.timers.now());
        let mut calls = 0;
        let mut late = None;
        if !inner.timers.is_empty() {
            while let Some(call) = inner.timers.pop_due(now()) {
                // Calls come in deadline order: the first is the latest of the turn.
                if calls == 0 {
                    late = Some(now().saturating_sub(call.deadline()));
                }
                guarded("timer", move || call.run());
                calls += 1;
            }
        }
        inner.timers.shrink_if_sparse(now);
        if inner.dispatching.get() == 0 {
            self.shrink_sources_if_sparse(now);
        }
        inner.free_lists_idle.release_idle(now);
        // Most turns of a busy server queue no call: skip taking (and dropping) the queue.
        if !inner.soon.borrow().is_empty() {
            let batch = std::mem::take(&mut *inner.soon.borrow_mut());
            calls += batch.len();
            for call in batch {
                guarded("call_soon", call);
            }
        }
        if inner.lifecycle.stage() == Stage::Stopping {
            self.advance_shutdown();
        }
        inner.metrics.end_turn(woke, ready, calls, late);
        // One read of the thread's CPU clock for the contexts that ran in this turn.
        logcontext::settle_turn();
        Ok(())
    }

    /// Waits up to `timeout` and dispatches the events; while a wait fills the event
    /// buffer, waits again without blocking (at most [`MAX_POLLS_PER_TURN`] times), so
    /// nothing ready is left behind unseen. Returns when the first wait returned and how
    /// many events were dispatched (for the metrics).
    fn poll_and_dispatch(&self, timeout: Option<Duration>) -> io::Result<(Instant, usize)> {
        let inner = &*self.inner;
        let mut events = std::mem::take(&mut *inner.events.borrow_mut());
        let mut wait = timeout;
        let mut result = Ok(());
        let (mut woke, mut ready) = (None, 0);
        inner.dispatching.set(inner.dispatching.get() + 1);
        for _ in 0..MAX_POLLS_PER_TURN {
            events.clear();
            let full = match inner.poller.poll(wait, &mut events) {
                Ok(full) => full,
                Err(e) => {
                    result = Err(e);
                    false
                }
            };
            inner.events_left.set(full);
            woke.get_or_insert_with(Instant::now);
            ready += events.len();
            for event in events.drain(..) {
                self.dispatch(event);
            }
            if !full {
                break;
            }
            wait = Some(Duration::ZERO);
        }
        inner.dispatching.set(inner.dispatching.get() - 1);
        *inner.events.borrow_mut() = events;
        result.map(|()| (woke.unwrap_or_else(Instant::now), ready))
    }

    fn dispatch(&self, ready: Ready) {
        let inner = &*self.inner;
        match ready {
            Ready::Wake => inner.metrics.thread_calls(inner.threads.drain(self)),
            Ready::Alarm => {
                if let Some(alarm) = inner.timers.alarm() {
                    alarm.fired();
                }
            }
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

    /// Closes every registered socket (the shutdown's "during" phase), outside the
    /// slab's borrow.
    fn close_sources(&self, how: Closing) {
        let sources: Vec<Rc<dyn Source>> =
            self.inner.sources.borrow().iter().map(|(_, slot)| slot.source.clone()).collect();
        for source in sources {
            guarded("closing a socket at shutdown", move || source.shut_down(how));
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
        let index =
            self.inner.sources.borrow_mut().insert(SourceSlot { generation, source, fd, readable, writable });
        let key = SourceKey { index: index as u32, generation };
        if let Err(e) = self.inner.poller.register(fd, key, readable, writable) {
            let slot = self.inner.sources.borrow_mut().remove(index);
            drop(slot);
            return Err(e);
        }
        Ok(key)
    }

    pub(crate) fn deregister(&self, key: SourceKey, fd: RawFd) {
        if let Err(e) = self.inner.poller.deregister(fd) {
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

    /// Gives memory back after a spike of connections: once the table has stayed under
    /// a quarter full for a second (`timers::Sparse`), moves the live sources to the
    /// lowest slots (re-registering each fd under its new key, which keeps the
    /// generation) and shrinks the table.
    fn shrink_sources_if_sparse(&self, now: impl FnOnce() -> Duration) {
        let mut sources = self.inner.sources.borrow_mut();
        let (len, capacity) = (sources.len(), sources.capacity());
        if !self.inner.sources_sparse.should_shrink(len, capacity, SOURCES_SHRINK_FLOOR, now) {
            return;
        }
        let poller = &self.inner.poller;
        sources.compact(|slot, _from, to| {
            let key = SourceKey { index: to as u32, generation: slot.generation };
            match poller.reregister(slot.fd, key, slot.readable, slot.writable) {
                Ok(()) => {
                    slot.source.rekey(key);
                    true
                }
                Err(e) => {
                    log::debug!(target: "weft::reactor", "not compacting the source table: {e}");
                    false
                }
            }
        });
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

    /// Queues `f` like [`call_soon`](Self::call_soon), but to run in `ctx` instead of the
    /// caller's context: for work weft does on behalf of a connection or a listener,
    /// which must not be charged to (or outlive) whatever request asked for it.
    pub(crate) fn call_soon_in(&self, ctx: &Captured, f: impl FnOnce() + 'static) {
        let call: Callback = if ctx.is_sentinel() {
            Box::new(f)
        } else {
            let ctx = ctx.clone();
            Box::new(move || ctx.run(f))
        };
        self.inner.soon.borrow_mut().push_back(call);
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
            .field("stage", &self.inner.lifecycle.stage())
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

/// Runs a reactor callback, logging a panic (target `weft::reactor`) so the loop keeps
/// running (see `panics.rs`).
#[track_caller]
pub(crate) fn guarded<R>(what: &str, f: impl FnOnce() -> R) -> Option<R> {
    crate::panics::guarded("weft::reactor", what, f)
}

/// A connection whose protocol panicked is aborted with the panic's failure.
pub(crate) use crate::panics::catching;
