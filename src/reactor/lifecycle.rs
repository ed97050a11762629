//! The reactor's life: starting ([`call_when_running`](ReactorHandle::call_when_running)),
//! stopping, and the three shutdown phases, as a state machine that any driver advances
//! one turn at a time: [`Reactor::run`](super::Reactor::run), or a host calling
//! [`Reactor::iterate`](super::Reactor::iterate).
//!
//! ```text
//! NotStarted --start/run/first iterate--> Running --stop--> Stopping --last phase done--> Stopped
//!                                            ^                                               |
//!                                            +--------------- start/run again ---------------+
//! ```
//!
//! While stopping, each phase first runs its triggers (in the "during" phase the reactor
//! also starts closing every socket gracefully), then waits, over as many turns as it
//! takes, for the Deferreds the triggers returned (and in the "during" phase for every
//! socket to close), at most the shutdown timeout; the phase's deadline is a reactor
//! timer, so a host waiting on the reactor's descriptor wakes for it. Past it, a warning
//! is logged, the sockets still open are aborted, and the next phase begins. The thread
//! pool is stopped after the "during" phase.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{guarded, Callback, Closing, DelayedCall, ReactorHandle};
use crate::logcontext::{self, Captured};
use crate::Deferred;

/// When a shutdown trigger runs, relative to the reactor's own shutdown work (Twisted's
/// `"before"`, `"during"`, `"after"` phases of the `"shutdown"` system event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// First, while everything still works: the place to drain (say, finish in-flight
    /// requests) before connections are closed.
    Before,
    /// Next; the reactor closes every socket in this phase (listening sockets and UDP
    /// ports at once, connections once their write buffers drained), so each protocol
    /// gets its `connection_lost` or `stop_protocol`. The thread pool is stopped after it.
    During,
    /// Last, after the sockets closed and the thread pool stopped.
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

type Trigger = Box<dyn FnOnce() -> Option<Deferred<()>>>;

/// Where the reactor is in its life; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Neither `run`, `start` nor `iterate` was called yet. A `stop()` now is kept in
    /// `Lifecycle::stop_early` and honoured once started.
    NotStarted,
    /// Started, no stop asked for.
    Running,
    /// `stop()` was called; `Lifecycle::shutdown` says which phase runs.
    Stopping,
    /// The last phase finished. `iterate` still turns the loop; `run`/`start` start again.
    Stopped,
}

/// The lifecycle state of one reactor (a field of its `Inner`).
pub(super) struct Lifecycle {
    stage: Cell<Stage>,
    stop_early: Cell<bool>,
    when_running: RefCell<Vec<Callback>>,
    /// The `call_when_running` calls of a start, run at the top of the next turn, before
    /// any timer or queued call (Twisted fires its startup event before the loop).
    starting: RefCell<Vec<Callback>>,
    /// Each phase's triggers, with their ids, in the order added.
    triggers: RefCell<[Vec<(u64, Trigger)>; 3]>,
    timeout: Cell<Duration>,
    /// `Some` while stopping.
    shutdown: RefCell<Option<Shutdown>>,
    /// Polling failed: the shutdown goes on without waiting for anything.
    abandon: Cell<bool>,
}

struct Shutdown {
    phase: Phase,
    /// `None` until the phase's triggers ran.
    wait: Option<PhaseWait>,
}

/// What a phase waits for once its triggers ran.
struct PhaseWait {
    /// Deferreds returned by the triggers that have not fired yet.
    pending: Rc<Cell<usize>>,
    deadline: Instant,
    /// A no-op timer at `deadline`, so the loop (and a host waiting on its descriptor)
    /// wakes for it.
    timer: DelayedCall,
}

impl Lifecycle {
    pub(super) fn new() -> Lifecycle {
        Lifecycle {
            stage: Cell::new(Stage::NotStarted),
            stop_early: Cell::new(false),
            when_running: RefCell::new(Vec::new()),
            starting: RefCell::new(Vec::new()),
            triggers: RefCell::new([Vec::new(), Vec::new(), Vec::new()]),
            timeout: Cell::new(Duration::from_secs(30)),
            shutdown: RefCell::new(None),
            abandon: Cell::new(false),
        }
    }

    pub(super) fn stage(&self) -> Stage {
        self.stage.get()
    }

    /// The shutdown is about to run a phase's triggers: the loop should not wait.
    pub(super) fn needs_step(&self) -> bool {
        self.stage.get() == Stage::Stopping
            && self.shutdown.borrow().as_ref().is_some_and(|s| s.wait.is_none())
    }

    /// True if no trigger, when-running call or shutdown state is held.
    pub(super) fn is_empty(&self) -> bool {
        self.triggers.borrow().iter().all(Vec::is_empty)
            && self.when_running.borrow().is_empty()
            && self.starting.borrow().is_empty()
            && self.shutdown.borrow().is_none()
    }

    /// Drops everything still registered, outside the borrows (the reactor is dropped).
    pub(super) fn clear(&self) {
        let triggers = std::mem::take(&mut *self.triggers.borrow_mut());
        drop(triggers);
        let when = std::mem::take(&mut *self.when_running.borrow_mut());
        drop(when);
        let starting = std::mem::take(&mut *self.starting.borrow_mut());
        drop(starting);
        let shutdown = self.shutdown.borrow_mut().take();
        drop(shutdown);
    }
}

impl ReactorHandle {
    /// Asks the reactor to stop gracefully: the current turn finishes, then the shutdown
    /// runs its three phases (see [`Phase`]): [`Reactor::run`](super::Reactor::run)
    /// returns once they are done; a host driving the loop with
    /// [`iterate`](super::Reactor::iterate) keeps calling it until
    /// [`is_stopped`](Self::is_stopped). Callable from any callback and from host code.
    ///
    /// Asked before the reactor started, the stop happens as soon as it starts (after the
    /// [`call_when_running`](Self::call_when_running) calls). Asked while stopping or
    /// after the reactor stopped, it does nothing.
    pub fn stop(&self) {
        let lc = &self.inner.lifecycle;
        match lc.stage.get() {
            Stage::Running => {
                lc.stage.set(Stage::Stopping);
                *lc.shutdown.borrow_mut() = Some(Shutdown { phase: Phase::Before, wait: None });
                // A host waiting on the descriptor must wake to drive the shutdown.
                self.wake_host();
            }
            Stage::NotStarted => lc.stop_early.set(true),
            Stage::Stopping | Stage::Stopped => {}
        }
    }

    /// True from the start ([`Reactor::run`](super::Reactor::run),
    /// [`Reactor::start`](super::Reactor::start) or the first
    /// [`iterate`](super::Reactor::iterate)) until the shutdown has finished, the
    /// shutdown included.
    pub fn is_running(&self) -> bool {
        matches!(self.inner.lifecycle.stage.get(), Stage::Running | Stage::Stopping)
    }

    /// True while the shutdown runs: [`stop`](Self::stop) was called and the last phase
    /// has not finished.
    pub fn is_stopping(&self) -> bool {
        self.inner.lifecycle.stage.get() == Stage::Stopping
    }

    /// True once [`stop`](Self::stop) was called, until the shutdown has finished: while
    /// stopping, and also before the reactor started if `stop` came first.
    pub fn stop_requested(&self) -> bool {
        let lc = &self.inner.lifecycle;
        match lc.stage.get() {
            Stage::Stopping => true,
            Stage::NotStarted => lc.stop_early.get(),
            Stage::Running | Stage::Stopped => false,
        }
    }

    /// True once the shutdown has finished (until the reactor is started again). A host
    /// driving the loop calls [`iterate`](super::Reactor::iterate) until this is true.
    pub fn is_stopped(&self) -> bool {
        self.inner.lifecycle.stage.get() == Stage::Stopped
    }

    /// Runs `f` once the reactor runs, on its first turn (at once, on the next turn, if
    /// it already runs).
    ///
    /// # Log context
    ///
    /// `f` runs in the log context current when this was called; what it returns is
    /// dropped.
    pub fn call_when_running<F: FnOnce() -> R + 'static, R>(&self, f: F) {
        if self.is_running() {
            self.call_soon(f);
        } else {
            self.inner
                .lifecycle
                .when_running
                .borrow_mut()
                .push(logcontext::bind(Box::new(move || drop(f()))));
        }
    }

    /// Adds a shutdown trigger (Twisted's `addSystemEventTrigger(phase, "shutdown", f)`).
    /// If `f` returns a `Deferred<()>`, the reactor keeps turning until it fires (or
    /// until the [shutdown timeout](Self::set_shutdown_timeout)) before the next phase.
    /// A failure is logged.
    ///
    /// Returns the trigger's id, for
    /// [`remove_shutdown_trigger`](Self::remove_shutdown_trigger).
    ///
    /// # Log context
    ///
    /// `f` runs in the log context current when this was called.
    pub fn add_shutdown_trigger<F, R>(&self, phase: Phase, f: F) -> TriggerId
    where
        F: FnOnce() -> R + 'static,
        R: TriggerResult,
    {
        let captured = Captured::capture();
        // Unique in the process, so another reactor's id never removes one of ours.
        static NEXT_TRIGGER: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_TRIGGER.fetch_add(1, Ordering::Relaxed);
        let lc = &self.inner.lifecycle;
        lc.triggers.borrow_mut()[phase as usize]
            .push((id, Box::new(move || captured.run(|| f().into_deferred()))));
        TriggerId(id)
    }

    /// Removes a shutdown trigger that has not run (Twisted's
    /// `removeSystemEventTrigger`); its function is dropped unrun. False if there is no
    /// such trigger (removed already, run already, or another reactor's), where Twisted
    /// raises `ValueError`.
    pub fn remove_shutdown_trigger(&self, id: TriggerId) -> bool {
        let removed = {
            let mut triggers = self.inner.lifecycle.triggers.borrow_mut();
            triggers.iter_mut().find_map(|phase| {
                let at = phase.iter().position(|(i, _)| *i == id.0)?;
                Some(phase.remove(at))
            })
        };
        // Dropped outside the borrow: its captures may add or remove triggers.
        removed.is_some()
    }

    /// How long each shutdown phase waits for the Deferreds its triggers returned, and
    /// the "during" phase for connections to close (default 30 s). Past it, the reactor
    /// logs a warning, aborts the connections still open, and goes on.
    pub fn set_shutdown_timeout(&self, timeout: Duration) {
        self.inner.lifecycle.timeout.set(timeout);
    }

    /// Moves `NotStarted` or `Stopped` to `Running` and queues the `call_when_running`
    /// calls: they run at the top of the next turn, before its timers and queued calls;
    /// does nothing if running or stopping.
    pub(super) fn start_running(&self) {
        let lc = &self.inner.lifecycle;
        if !matches!(lc.stage.get(), Stage::NotStarted | Stage::Stopped) {
            return;
        }
        lc.stage.set(Stage::Running);
        lc.abandon.set(false);
        let when = std::mem::take(&mut *lc.when_running.borrow_mut());
        if !when.is_empty() {
            lc.starting.borrow_mut().extend(when);
            self.wake_host();
        }
        if lc.stop_early.replace(false) {
            self.stop();
        }
    }

    /// Runs the `call_when_running` calls of the last start, if any (top of a turn).
    pub(super) fn run_starting(&self) {
        let lc = &self.inner.lifecycle;
        if lc.starting.borrow().is_empty() {
            return;
        }
        let starting = std::mem::take(&mut *lc.starting.borrow_mut());
        for f in starting {
            super::guarded("call_when_running", f);
        }
    }

    /// True if a start left `call_when_running` calls for the next turn.
    pub(super) fn has_starting(&self) -> bool {
        !self.inner.lifecycle.starting.borrow().is_empty()
    }

    /// Polling failed: finish the shutdown now, without waiting for anything.
    pub(super) fn abandon(&self) {
        self.inner.lifecycle.abandon.set(true);
        self.stop();
        self.advance_shutdown();
    }

    /// Moves the shutdown on as far as it can go now; called at the end of every turn
    /// while stopping. Runs a phase's triggers, then checks what the phase waits for; a
    /// finished (or timed-out) phase gives way to the next within the same call.
    pub(super) fn advance_shutdown(&self) {
        let lc = &self.inner.lifecycle;
        loop {
            let (phase, fired) = match &*lc.shutdown.borrow() {
                Some(s) => (s.phase, s.wait.is_some()),
                None => return,
            };
            if !fired {
                self.start_phase(phase);
            }
            let (pending, timed_out) = {
                let shutdown = lc.shutdown.borrow();
                let Some(wait) = shutdown.as_ref().and_then(|s| s.wait.as_ref()) else { return };
                (wait.pending.get(), lc.abandon.get() || Instant::now() >= wait.deadline)
            };
            // The "during" phase also waits for the sockets to close, and for the calls
            // their closing queued (`stop_protocol`, say) to run.
            let open = if phase == Phase::During { self.inner.sources.borrow().len() } else { 0 };
            let queued = phase == Phase::During && !self.inner.soon.borrow().is_empty();
            if pending + open > 0 || queued {
                if !timed_out {
                    return;
                }
                if !lc.abandon.get() {
                    log::warn!(
                        target: "weft::reactor",
                        "shutdown phase {phase:?}: {pending} trigger(s) still pending and {open} socket(s) still open after the timeout"
                    );
                }
                if open > 0 {
                    self.close_sources(Closing::Abort);
                }
            }
            let done = lc.shutdown.borrow_mut().as_mut().and_then(|s| s.wait.take());
            if let Some(wait) = done {
                let _ = wait.timer.cancel();
            }
            if phase == Phase::During {
                self.inner.threads.shutdown(self);
            }
            let next = match phase {
                Phase::Before => Some(Phase::During),
                Phase::During => Some(Phase::After),
                Phase::After => None,
            };
            match next {
                Some(phase) => *lc.shutdown.borrow_mut() = Some(Shutdown { phase, wait: None }),
                None => {
                    let finished = lc.shutdown.borrow_mut().take();
                    drop(finished);
                    lc.stage.set(Stage::Stopped);
                    return;
                }
            }
        }
    }

    /// Records what `phase` waits for, then runs its triggers (in the "during" phase,
    /// after starting to close every socket, as Twisted's `disconnectAll` is the first
    /// "during" trigger). The wait is recorded first, and counts the running of the
    /// triggers as pending, so a trigger that turns the loop itself neither starts the
    /// phase again nor finishes it early.
    fn start_phase(&self, phase: Phase) {
        let lc = &self.inner.lifecycle;
        let pending = Rc::new(Cell::new(1usize));
        let timeout = lc.timeout.get();
        let deadline = Instant::now().checked_add(timeout).unwrap_or_else(far_future);
        let timer = self.call_later(timeout, || {});
        if let Some(s) = lc.shutdown.borrow_mut().as_mut() {
            s.wait = Some(PhaseWait { pending: pending.clone(), deadline, timer });
        }
        if phase == Phase::During {
            self.close_sources(Closing::Graceful);
        }
        let triggers = std::mem::take(&mut lc.triggers.borrow_mut()[phase as usize]);
        for (_, t) in triggers {
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
        pending.set(pending.get() - 1);
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// A shutdown trigger's id ([`ReactorHandle::add_shutdown_trigger`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TriggerId(u64);

/// Twisted's `task.react`: makes a reactor, calls `main` with it, runs the reactor until
/// what `main` returned has a result, and returns that result: `Ok(Some(value))`, or
/// the failure (where Twisted logs it and exits with status 1). `Ok(None)` if something
/// else stopped the reactor first (Twisted exits with status 0 then). The reactor goes
/// through its whole shutdown (its triggers, its connections) before this returns.
///
/// ```
/// use std::time::Duration;
/// use weft::reactor::{defer_later, react};
///
/// let answer = react(|reactor| defer_later(&reactor.handle(), Duration::from_millis(1), || 42)).unwrap();
/// assert_eq!(answer, Some(42));
/// ```
///
/// # Errors
///
/// The failure `main` ended with (a panic in it included), or the error of making the
/// reactor.
pub fn react<T, F, R>(main: F) -> Result<Option<T>, crate::Failure>
where
    T: 'static,
    F: FnOnce(&super::Reactor) -> R,
    R: crate::CallbackResult<T>,
{
    let reactor = super::Reactor::new()?;
    let outcome: Rc<RefCell<Option<Result<T, crate::Failure>>>> = Rc::default();
    let (o, handle) = (outcome.clone(), reactor.handle());
    crate::maybe_deferred(|| main(&reactor)).add_both(move |r: Result<T, crate::Failure>| {
        *o.borrow_mut() = Some(r);
        let h = handle.clone();
        handle.call_when_running(move || h.stop());
        crate::deferred::Next::Consumed
    });
    reactor.run();
    drop(reactor);
    let outcome = outcome.borrow_mut().take();
    outcome.transpose()
}
