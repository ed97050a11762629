//! The context core: the current context in a thread-local, the switch, the guards, and
//! the crate-internal capture API (`Captured`, `Switcher`, `bind`) that the Deferred core,
//! the timers and the reactor use. It names no `Deferred` and no reactor.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::Location;
use std::rc::{Rc, Weak};
use std::time::Duration;

use smallvec::SmallVec;

use super::accounting::{self, ContextStats, CpuClock, Scale};
use crate::failure::At;

/// A named log context (Synapse's `LoggingContext`), or the sentinel meaning "no
/// context".
///
/// A cheap handle: `clone()` gives another handle to the same context. A context is
/// *finished* once: when the scope returned by [`enter`](Self::enter) ends, when the
/// Deferred given to [`run`](Self::run) completes, on [`finish`](Self::finish), or when
/// its last handle (including those held by pending callbacks) is dropped. On finishing,
/// its totals are added to its parent's and its [`on_finish`](Self::on_finish) hook runs.
///
/// # Log context
///
/// Work that runs in a finished context (a callback added while it was live that runs
/// after) is reported once with `log::warn!` naming the context; its accounting still
/// reaches the parent.
#[derive(Clone, Default)]
pub struct LoggingContext {
    inner: Option<Rc<ContextInner>>,
}

/// The scope of an entered context, returned by [`LoggingContext::enter`] (Synapse's
/// `with LoggingContext(...)`).
///
/// Dropping it restores the context that was current before `enter` and finishes the
/// entered context.
#[must_use = "the context is left and finished as soon as the scope is dropped"]
pub struct ContextScope {
    ctx: LoggingContext,
    previous: Option<Option<Rc<ContextInner>>>,
}

/// Switches to a context without finishing it, and switches back on drop (Synapse's
/// `PreserveLoggingContext`).
///
/// `PreserveLoggingContext::new(LoggingContext::sentinel())` runs a block in no context,
/// for code that must not charge anything to the current request.
#[must_use = "the previous context is restored as soon as the guard is dropped"]
pub struct PreserveLoggingContext {
    previous: Option<Option<Rc<ContextInner>>>,
}

/// The hook run when a context finishes: gets its name and final totals.
type FinishHook = Box<dyn FnOnce(&str, &ContextStats)>;

struct ContextInner {
    name: Box<str>,
    parent: Option<Rc<ContextInner>>,
    finished: Cell<bool>,
    warned_late: Cell<bool>,
    callbacks: Cell<u64>,
    cpu_time: Cell<Duration>,
    db_txn_count: Cell<u64>,
    db_txn_duration: Cell<Duration>,
    db_sched_duration: Cell<Duration>,
    evt_db_fetch_count: Cell<u64>,
    on_finish: RefCell<Option<FinishHook>>,
    /// Where its totals are added when it finishes ([`LoggingContext::set_metrics_name`]).
    metrics_name: Cell<Option<Rc<str>>>,
    /// The context's `tracing` span, entered while the context is current.
    #[cfg(feature = "tracing")]
    span: tracing::Span,
    /// Time-stamp counter ticks charged since the last settlement (see `accounting`).
    pending: Cell<u64>,
    /// On the thread's list of contexts to settle.
    listed: Cell<bool>,
    /// Stretches it was current for in the thread's open window (see [`State::skip`]);
    /// on the thread's `WINDOW` while above zero.
    stretches: Cell<u32>,
}

/// The thread's switch bookkeeping. Nothing in it needs dropping, so reading it is a
/// plain thread-local load (no destructor-registration check): the hot path reads only
/// this.
struct State {
    /// The address of the current context (0 for the sentinel), to compare without
    /// touching the `Rc` in `CURRENT`.
    id: Cell<usize>,
    /// The time-stamp counter at the last read (0 before the first with a clock on).
    mark: Cell<u64>,
    cpu_clock: Cell<CpuClock>,
    /// Switches left before the next read of the counter. Zero (a read at every switch)
    /// but where switches are dense (see [`next_stride`]): then the switches in between
    /// only count the stretch each ends, and the read shares the time since the mark
    /// among the window's stretches.
    skip: Cell<u32>,
    /// Reads come every `stride` switches (1 to [`MAX_STRIDE`]).
    stride: Cell<u32>,
    /// Stretches ended in the open window (since the mark) without a read: 0 when the
    /// window is closed.
    stretches: Cell<u32>,
    /// Reads of the counter, for the tests.
    #[cfg(test)]
    reads: Cell<u64>,
    /// The tests' [`accounting::DENSE`] in ticks, if not 0: so that what they check
    /// does not depend on how fast the machine (or valgrind) runs.
    #[cfg(test)]
    dense: Cell<u64>,
    /// Contexts are listed in `TO_SETTLE`.
    unsettled: Cell<bool>,
    /// The thread's CPU time at the last settlement, or (before the first) when the
    /// thread first left the sentinel with the thread clock on (see [`base_settlement`]).
    settled_cpu: Cell<Duration>,
    /// Pending time (ticks) settled since `settled_cpu` was read, by settlements too
    /// small to read the CPU clock for (see [`window_scale`]).
    window: Cell<u64>,
    /// What those settlements charged.
    early: Cell<Duration>,
    /// The scale of the last settlement that read the CPU clock.
    last_scale: Cell<Scale>,
}

impl State {
    /// A thread's state before its first switch.
    const fn new() -> State {
        State {
            id: Cell::new(0),
            mark: Cell::new(0),
            cpu_clock: Cell::new(CpuClock::Thread),
            skip: Cell::new(0),
            stride: Cell::new(1),
            stretches: Cell::new(0),
            #[cfg(test)]
            reads: Cell::new(0),
            #[cfg(test)]
            dense: Cell::new(0),
            unsettled: Cell::new(false),
            settled_cpu: Cell::new(Duration::ZERO),
            window: Cell::new(0),
            early: Cell::new(Duration::ZERO),
            last_scale: Cell::new(Scale::ONE),
        }
    }
}

thread_local! {
    static STATE: State = const { State::new() };
    /// The contexts charged since the last settlement (weakly: a context dropped
    /// meanwhile settles itself as it finishes).
    static TO_SETTLE: RefCell<Vec<Weak<ContextInner>>> = const { RefCell::new(Vec::new()) };
    /// The contexts with stretches in the open window (weakly: a context finishing
    /// closes the window first, so every one is alive or the one finishing). A window
    /// holds at most [`MAX_STRIDE`] stretches, so it never leaves the inline array.
    static WINDOW: RefCell<SmallVec<[Weak<ContextInner>; MAX_STRIDE as usize]>> =
        const { RefCell::new(SmallVec::new_const()) };
    /// The current context; `None` is the sentinel. Its address is `STATE.id`.
    static CURRENT: Current = const { Current(Cell::new(None)) };
}

/// The cell behind `CURRENT`. When the thread ends and it is destroyed, the thread is
/// back in the sentinel: `STATE.id` (which has no destructor) is reset, and every later
/// access goes through `try_with` and sees the sentinel, so values dropped later in the
/// thread's teardown (tasks, scopes, Deferreds) can still switch and restore without
/// panicking.
struct Current(Cell<Option<Rc<ContextInner>>>);

impl Drop for Current {
    fn drop(&mut self) {
        STATE.with(|s| s.id.set(0));
        // The thread ends inside a context: leave its span too.
        #[cfg(feature = "tracing")]
        if let Some(left) = self.0.take() {
            super::spans::switch(Some(&left.span), None);
        }
    }
}

impl LoggingContext {
    /// A new context named `name` (the request id), with no parent. It is not current
    /// until it is entered.
    pub fn new(name: impl Into<String>) -> LoggingContext {
        LoggingContext::build(name.into(), None)
    }

    /// A new context named `name` whose totals are added to `parent`'s when it finishes.
    /// A sentinel `parent` means no parent.
    pub fn with_parent(name: impl Into<String>, parent: &LoggingContext) -> LoggingContext {
        LoggingContext::build(name.into(), parent.inner.clone())
    }

    fn build(name: String, parent: Option<Rc<ContextInner>>) -> LoggingContext {
        #[cfg(feature = "tracing")]
        let span = super::spans::open(&name, parent.as_ref().map(|p| &p.span));
        LoggingContext::build_with(
            name,
            parent,
            #[cfg(feature = "tracing")]
            span,
        )
    }

    fn build_with(
        name: String,
        parent: Option<Rc<ContextInner>>,
        #[cfg(feature = "tracing")] span: tracing::Span,
    ) -> LoggingContext {
        LoggingContext {
            inner: Some(Rc::new(ContextInner {
                name: name.into_boxed_str(),
                parent,
                finished: Cell::new(false),
                warned_late: Cell::new(false),
                callbacks: Cell::new(0),
                cpu_time: Cell::new(Duration::ZERO),
                db_txn_count: Cell::new(0),
                db_txn_duration: Cell::new(Duration::ZERO),
                db_sched_duration: Cell::new(Duration::ZERO),
                evt_db_fetch_count: Cell::new(0),
                on_finish: RefCell::new(None),
                metrics_name: Cell::new(None),
                #[cfg(feature = "tracing")]
                span,
                pending: Cell::new(0),
                listed: Cell::new(false),
                stretches: Cell::new(0),
            })),
        }
    }

    /// The sentinel: no context (Synapse's `SENTINEL_CONTEXT`). The reactor's own loop
    /// runs in it.
    pub const fn sentinel() -> LoggingContext {
        LoggingContext { inner: None }
    }

    /// True for the sentinel.
    pub fn is_sentinel(&self) -> bool {
        self.inner.is_none()
    }

    /// The context's name (its request id); `"sentinel"` for the sentinel.
    pub fn name(&self) -> &str {
        self.inner.as_ref().map_or("sentinel", |c| &c.name)
    }

    /// The parent context, if any.
    pub fn parent(&self) -> Option<LoggingContext> {
        let parent = self.inner.as_ref()?.parent.clone()?;
        Some(LoggingContext { inner: Some(parent) })
    }

    /// True once the context has finished. The sentinel never finishes.
    pub fn is_finished(&self) -> bool {
        self.inner.as_ref().is_some_and(|c| c.finished.get())
    }

    /// The context's `tracing` span (feature `tracing`; `None` for the sentinel): entered
    /// whenever the context is current, so `tracing` events are recorded inside it. Hand
    /// it to work that runs elsewhere (`future.instrument(span.clone())` on another
    /// executor) to keep that work in the request's trace.
    ///
    /// The span is named `logcontext` (level INFO, target `weft::logcontext`) with the
    /// context's name in its `request` field; its parent is the parent context's span,
    /// and a context with no parent opens a root span.
    ///
    /// ```
    /// use weft::logcontext::LoggingContext;
    ///
    /// let ctx = LoggingContext::new("GET-1");
    /// assert!(ctx.span().is_some());
    /// assert!(LoggingContext::sentinel().span().is_none());
    /// ```
    #[cfg(feature = "tracing")]
    pub fn span(&self) -> Option<&tracing::Span> {
        self.inner.as_ref().map(|c| &c.span)
    }

    /// True if both handles refer to the same context (two sentinels are the same).
    pub fn ptr_eq(a: &LoggingContext, b: &LoggingContext) -> bool {
        id_of(&a.inner) == id_of(&b.inner)
    }

    /// Makes this context current until the returned scope is dropped, which restores
    /// the previous context and finishes this one (Synapse's `with LoggingContext(..)`).
    ///
    /// For work that goes on after the scope returns (callbacks on a Deferred), use
    /// [`run`](Self::run), which finishes the context when the Deferred completes.
    pub fn enter(&self) -> ContextScope {
        warn_if_finished(&self.inner);
        let previous =
            if id_of(&self.inner) == current_id() { None } else { Some(switch(self.inner.clone())) };
        ContextScope { ctx: self.clone(), previous }
    }

    /// Finishes the context now: adds its totals to its parent's and runs its
    /// [`on_finish`](Self::on_finish) hook. Does nothing if it has finished already, or
    /// for the sentinel. The context stays current if it is.
    pub fn finish(&self) {
        if let Some(c) = &self.inner {
            c.finish();
        }
    }

    /// Sets a hook to run once when the context finishes, with its name and totals (for
    /// a request summary line). Replaces any previous hook. Ignored for the sentinel and
    /// for a finished context.
    ///
    /// The hook runs in whatever context is current when the context finishes (normally
    /// the caller of the scope's drop) and must not panic.
    pub fn on_finish(&self, hook: impl FnOnce(&str, &ContextStats) + 'static) {
        if let Some(c) = &self.inner {
            if !c.finished.get() {
                *c.on_finish.borrow_mut() = Some(Box::new(hook));
            }
        }
    }

    /// Adds the context's totals, when it finishes, to this thread's totals for `name`
    /// ([`context_totals`](super::context_totals), and the reactor's
    /// [`metrics`](crate::ReactorHandle::metrics)): the per-servlet or per-job resource
    /// metrics Synapse keeps. Use a small fixed set of names (a servlet, a job kind), not
    /// request ids. Replaces an earlier name; ignored for the sentinel and for a finished
    /// context. [`run_as_background_process`](super::run_as_background_process) names its
    /// contexts after their `desc`.
    pub fn set_metrics_name(&self, name: &str) {
        if let Some(c) = &self.inner {
            if !c.finished.get() {
                c.metrics_name.set(Some(Rc::from(name)));
            }
        }
    }

    /// The totals so far: while the context runs, at finish, or after. Children's totals
    /// are included once they have finished. If the context is current, CPU time up to
    /// now is included. All zero for the sentinel.
    pub fn stats(&self) -> ContextStats {
        let Some(c) = &self.inner else { return ContextStats::default() };
        if id_of(&self.inner) == current_id() {
            charge_running(c);
        }
        settle(Some(c));
        c.snapshot()
    }

    /// Records a database transaction that took `duration` (Synapse's
    /// `add_database_transaction`): bumps `db_txn_count` and `db_txn_duration`.
    pub fn add_database_transaction(&self, duration: Duration) {
        self.charge(&ContextStats { db_txn_count: 1, db_txn_duration: duration, ..Default::default() });
    }

    /// Adds time spent waiting for a database connection (`add_database_scheduled`).
    pub fn add_database_scheduled(&self, duration: Duration) {
        self.charge(&ContextStats { db_sched_duration: duration, ..Default::default() });
    }

    /// Adds `count` events fetched from the database (`record_event_fetch`).
    pub fn record_event_fetch(&self, count: u64) {
        self.charge(&ContextStats { evt_db_fetch_count: count, ..Default::default() });
    }

    /// Adds any totals to this context (to its parent too if it has finished). Does
    /// nothing for the sentinel.
    pub fn charge(&self, delta: &ContextStats) {
        if let Some(c) = &self.inner {
            c.charge(delta);
        }
    }
}

impl ContextScope {
    /// The context this scope entered.
    pub fn context(&self) -> &LoggingContext {
        &self.ctx
    }
}

impl Drop for ContextScope {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            restore(previous);
        }
        self.ctx.finish();
    }
}

impl PreserveLoggingContext {
    /// Makes `ctx` current (the sentinel if you pass [`LoggingContext::sentinel`]) until
    /// the guard is dropped; does not finish anything.
    pub fn new(ctx: LoggingContext) -> PreserveLoggingContext {
        warn_if_finished(&ctx.inner);
        let previous = if id_of(&ctx.inner) == current_id() { None } else { Some(switch(ctx.inner)) };
        PreserveLoggingContext { previous }
    }

    /// Switches to the sentinel until the guard is dropped (Synapse's
    /// `PreserveLoggingContext()` with no argument).
    pub fn sentinel() -> PreserveLoggingContext {
        PreserveLoggingContext::new(LoggingContext::sentinel())
    }
}

impl Drop for PreserveLoggingContext {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            restore(previous);
        }
    }
}

/// The current context (the sentinel if none), as Synapse's `current_context()`.
pub fn current_context() -> LoggingContext {
    LoggingContext { inner: with_current(|c| c.cloned()) }
}

/// Makes `ctx` current and returns the context that was (Synapse's
/// `set_current_context`). Prefer the guards ([`LoggingContext::enter`],
/// [`PreserveLoggingContext`]), which restore on every exit, panics included; whoever
/// calls this must restore the returned context.
pub fn set_current_context(ctx: LoggingContext) -> LoggingContext {
    warn_if_finished(&ctx.inner);
    if id_of(&ctx.inner) == current_id() {
        return ctx;
    }
    LoggingContext { inner: switch(ctx.inner) }
}

/// The current context's request id, for code that formats its own log records; `None`
/// in the sentinel.
pub fn current_request_id() -> Option<String> {
    with_current(|c| c.map(|c| c.name.to_string()))
}

/// Calls `f` with the current context's name (`"sentinel"` for none), without copying it.
pub fn with_current_request_id<R>(f: impl FnOnce(&str) -> R) -> R {
    with_current(|c| f(c.map_or("sentinel", |c| &c.name)))
}

/// Panics, in debug builds, if a context is current: the reactor calls this at the top
/// of every turn, where only the sentinel may be current. Does nothing in release builds.
///
/// # Panics
///
/// In debug builds, if the current context is not the sentinel; the message names it.
#[track_caller]
pub fn assert_sentinel() {
    #[cfg(debug_assertions)]
    with_current(|c| {
        if let Some(c) = c {
            panic!("log context '{}' leaked: expected the sentinel", c.name);
        }
    })
}

impl fmt::Debug for LoggingContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggingContext")
            .field("name", &self.name())
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl fmt::Display for LoggingContext {
    /// The context's name (`"sentinel"` for none), as Synapse's `str(context)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for ContextScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextScope").field("context", &self.ctx).finish()
    }
}

impl fmt::Debug for PreserveLoggingContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreserveLoggingContext").field("switched", &self.previous.is_some()).finish()
    }
}

// Crate-internal API: how the Deferred core, the timers and the reactor carry a context
// from where work is registered to where it runs.

/// The context current when some work was registered, carried with the work.
///
/// `Captured::capture()` where a callback is registered, `captured.run(|| ..)` (or
/// `captured.enter()`) where it runs. A callback loop that runs many captured pieces of
/// work uses a [`Switcher`] instead, to switch only when the context changes.
#[derive(Clone, Default)]
pub(crate) struct Captured(Option<Rc<ContextInner>>);

/// Restores a context on drop; returned by [`Captured::enter`].
pub(crate) struct Restore(Option<Option<Rc<ContextInner>>>);

/// Switches lazily for a loop that runs many captured callbacks: `enter` before each
/// callback switches only if its context is not current, and the context current when
/// the switcher was made is restored once, when it is dropped.
pub(crate) struct Switcher {
    /// The context to restore, once the switcher has switched (`Restore(None)` before).
    saved: Restore,
}

impl Captured {
    /// The current context.
    #[inline]
    pub(crate) fn capture() -> Captured {
        if current_id() == 0 {
            return Captured(None);
        }
        Captured(current_rc())
    }

    /// The sentinel.
    #[allow(dead_code)] // For the reactor, which lands on another branch.
    pub(crate) const fn sentinel() -> Captured {
        Captured(None)
    }

    /// The captured context as a public handle.
    pub(crate) fn to_context(&self) -> LoggingContext {
        LoggingContext { inner: self.0.clone() }
    }

    /// True if this is the sentinel.
    #[inline]
    pub(crate) fn is_sentinel(&self) -> bool {
        self.0.is_none()
    }

    /// True if the captured context is the current one.
    #[inline]
    pub(crate) fn is_current(&self) -> bool {
        id_of(&self.0) == current_id()
    }

    /// The captured context's name (`"sentinel"` for none).
    pub(crate) fn name(&self) -> &str {
        self.0.as_ref().map_or("sentinel", |c| &c.name)
    }

    /// Runs `f` in the captured context and restores the current one after, panics
    /// included; counts one callback.
    #[inline]
    pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let _restore = self.enter();
        f()
    }

    /// As [`run`](Self::run), for work that comes after its context's request by design
    /// (a lost-result hook, which runs when a late result arrives, often after the
    /// request has ended): if the context has finished, the work is charged to its
    /// parent as usual, without the warning about late work.
    pub(crate) fn run_late<R>(&self, f: impl FnOnce() -> R) -> R {
        let _restore = self.make_current();
        if let Some(c) = &self.0 {
            c.count_callback_quietly();
        }
        f()
    }

    /// Makes the captured context current until the returned guard is dropped; counts
    /// one callback.
    #[inline]
    pub(crate) fn enter(&self) -> Restore {
        let restore = self.make_current();
        if let Some(c) = &self.0 {
            c.count_callback(None);
        }
        restore
    }

    /// Makes the captured context current (if it is not) until the guard is dropped.
    #[inline]
    fn make_current(&self) -> Restore {
        if id_of(&self.0) == current_id() {
            Restore(None)
        } else {
            Restore(Some(switch(self.0.clone())))
        }
    }
}

impl Restore {
    /// A guard that restores the context current now.
    pub(crate) fn capture() -> Restore {
        Restore(Some(Captured::capture().0))
    }
}

impl Drop for Restore {
    #[inline(always)]
    fn drop(&mut self) {
        if self.0.is_some() {
            self.restore_saved();
        }
    }
}

impl Restore {
    /// The drop's work when there is a context to restore, out of line: the common drop
    /// (a callback loop that ran every callback in the context current already) is one
    /// test.
    #[inline(never)]
    fn restore_saved(&mut self) {
        if let Some(previous) = self.0.take() {
            restore(previous);
        }
    }
}

impl Switcher {
    /// A switcher that has not switched yet.
    #[inline]
    pub(crate) fn new() -> Switcher {
        Switcher { saved: Restore(None) }
    }

    /// Makes `captured` current for the next callback, which was added at `added_at`
    /// (named if the context has finished); counts one callback.
    #[inline]
    pub(crate) fn enter(&mut self, captured: &Captured, added_at: &'static Location<'static>) {
        if id_of(&captured.0) != current_id() {
            self.switch_slow(captured);
        }
        if let Some(c) = &captured.0 {
            c.count_callback(Some(added_at));
        }
    }

    #[cold]
    #[inline(never)]
    fn switch_slow(&mut self, captured: &Captured) {
        let previous = switch(captured.0.clone());
        if self.saved.0.is_none() {
            self.saved = Restore(Some(previous));
        }
    }
}

/// What another thread needs to run work on behalf of the current context (a pool job,
/// a future on another runtime): the context's name and, with `tracing`, its span. A
/// `LoggingContext` is an `Rc` and stays on its thread.
#[derive(Clone, Debug)]
pub(crate) struct RemoteContext {
    name: String,
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

impl RemoteContext {
    /// The current context's, or `None` in the sentinel.
    pub(crate) fn capture() -> Option<RemoteContext> {
        with_current(|c| {
            c.map(|c| RemoteContext {
                name: c.name.to_string(),
                #[cfg(feature = "tracing")]
                span: c.span.clone(),
            })
        })
    }

    /// Runs `f` on this thread in a new context named after the captured one, with no
    /// parent (the caller charges what it used back to the original), and returns what
    /// that context used. With `tracing`, its span is a child of the original's span,
    /// and the original span's subscriber is the default while `f` runs.
    pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> (R, ContextStats) {
        let run = || {
            let ctx = LoggingContext::build_with(
                self.name.clone(),
                None,
                #[cfg(feature = "tracing")]
                super::spans::open(&self.name, Some(&self.span)),
            );
            let r = {
                let _scope = ctx.enter();
                f()
            };
            (r, ctx.stats())
        };
        #[cfg(feature = "tracing")]
        return super::spans::with_dispatch_of(&self.span, run);
        #[cfg(not(feature = "tracing"))]
        run()
    }

    /// A child span of the captured context's span (made with its subscriber), for
    /// work that runs outside any log context: a future on another runtime.
    #[cfg(feature = "tracing")]
    #[allow(dead_code)] // Only the optional bridges use it.
    pub(crate) fn child_span(&self) -> tracing::Span {
        super::spans::with_dispatch_of(&self.span, || super::spans::open(&self.name, Some(&self.span)))
    }

    /// The subscriber that records the captured context's span, if any.
    #[cfg(feature = "tracing")]
    #[allow(dead_code)] // Only the optional bridges use it.
    pub(crate) fn dispatch(&self) -> Option<tracing::Dispatch> {
        self.span.with_subscriber(|(_, dispatch)| dispatch.clone())
    }
}

/// Wraps `f` so that it runs in the context current now; `f` is returned as it is in
/// the sentinel (the caller then runs it in the sentinel).
pub(crate) fn bind(f: Box<dyn FnOnce()>) -> Box<dyn FnOnce()> {
    let captured = Captured::capture();
    if captured.is_sentinel() {
        return f;
    }
    Box::new(move || captured.run(f))
}

impl ContextInner {
    /// Counts one callback, added at `added_at` if it is a Deferred's.
    #[inline]
    fn count_callback(&self, added_at: Option<&'static Location<'static>>) {
        self.callbacks.set(self.callbacks.get() + 1);
        if self.finished.get() {
            self.late_work(added_at);
        }
    }

    /// Counts one callback, without a warning if the context has finished: for work
    /// that comes after its request by design (a lost-result hook).
    fn count_callback_quietly(&self) {
        self.callbacks.set(self.callbacks.get() + 1);
        if self.finished.get() {
            self.pass_callback_to_parent();
        }
    }

    /// A callback ran in this finished context: warn once (naming the callback, if it
    /// is a Deferred's), and pass the count on.
    #[cold]
    fn late_work(&self, added_at: Option<&'static Location<'static>>) {
        if !self.warned_late.replace(true) {
            match added_at {
                Some(at) => log::warn!(
                    "log context '{}' is used after it finished, by the callback added at {}; its work is charged to its parent",
                    self.name,
                    At(at)
                ),
                None => log::warn!(
                    "log context '{}' is used after it finished; its work is charged to its parent",
                    self.name
                ),
            }
        }
        self.pass_callback_to_parent();
    }

    /// A callback ran in this finished context: its parent counts it.
    #[cold]
    fn pass_callback_to_parent(&self) {
        if let Some(parent) = &self.parent {
            parent.charge(&ContextStats { callbacks: 1, ..Default::default() });
        }
    }

    fn snapshot(&self) -> ContextStats {
        ContextStats {
            cpu_time: self.cpu_time.get(),
            callbacks: self.callbacks.get(),
            db_txn_count: self.db_txn_count.get(),
            db_txn_duration: self.db_txn_duration.get(),
            db_sched_duration: self.db_sched_duration.get(),
            evt_db_fetch_count: self.evt_db_fetch_count.get(),
        }
    }

    /// Turns the pending time into CPU time, scaled by a settlement.
    fn commit(&self, scale: Scale) {
        let ticks = self.pending.replace(0);
        self.listed.set(false);
        if ticks > 0 {
            let cpu_time = scale.apply(accounting::ticks_to_duration(ticks));
            self.charge(&ContextStats { cpu_time, ..Default::default() });
        }
    }

    fn charge(&self, d: &ContextStats) {
        self.cpu_time.set(self.cpu_time.get() + d.cpu_time);
        self.callbacks.set(self.callbacks.get() + d.callbacks);
        self.db_txn_count.set(self.db_txn_count.get() + d.db_txn_count);
        self.db_txn_duration.set(self.db_txn_duration.get() + d.db_txn_duration);
        self.db_sched_duration.set(self.db_sched_duration.get() + d.db_sched_duration);
        self.evt_db_fetch_count.set(self.evt_db_fetch_count.get() + d.evt_db_fetch_count);
        if self.finished.get() {
            // Its totals already went to the parent: send the late part after them.
            if let Some(parent) = &self.parent {
                parent.charge(d);
            }
        }
    }

    fn finish(&self) {
        // Settle first, so the totals include this context's CPU (and, for a context
        // finished earlier, late work reaches the parent before the context is gone).
        settle(Some(self));
        if self.finished.replace(true) {
            return;
        }
        let stats = self.snapshot();
        if let Some(parent) = &self.parent {
            parent.charge(&stats);
        }
        if let Some(name) = self.metrics_name.take() {
            super::accounting::record_totals(name, &stats);
        }
        let hook = self.on_finish.borrow_mut().take();
        if let Some(hook) = hook {
            hook(&self.name, &stats);
        }
    }
}

impl Drop for ContextInner {
    fn drop(&mut self) {
        // The last handle went away unfinished (say the Deferred that `run` waited on was
        // dropped unfired): finish it, so the parent still gets its totals.
        self.finish();
    }
}

#[inline]
fn id_of(ctx: &Option<Rc<ContextInner>>) -> usize {
    ctx.as_ref().map_or(0, |c| Rc::as_ptr(c) as usize)
}

#[inline]
fn current_id() -> usize {
    STATE.with(|cur| cur.id.get())
}

fn with_current<R>(f: impl FnOnce(Option<&Rc<ContextInner>>) -> R) -> R {
    if current_id() == 0 {
        return f(None);
    }
    f(current_rc().as_ref())
}

/// A handle to the current context (`None` in the sentinel, or once the thread's
/// `CURRENT` is destroyed).
fn current_rc() -> Option<Rc<ContextInner>> {
    CURRENT
        .try_with(|cur| {
            let ctx = cur.0.take();
            cur.0.set(ctx.clone());
            ctx
        })
        .ok()
        .flatten()
}

/// Makes `new` current and returns the previous context; charges the time since the
/// last switch to the previous context (pending until settled, see `accounting`). Every
/// switch goes through here. It does not warn about finished contexts: restoring one (a
/// guard going out of scope after the context it had saved finished) is not new work in
/// it. Entering points warn instead.
fn switch(new: Option<Rc<ContextInner>>) -> Option<Rc<ContextInner>> {
    // A handle on the context being entered, to enter its span once the switch is done.
    #[cfg(feature = "tracing")]
    let entered = new.clone();
    let previous = switch_state(new);
    // The thread is consistent again (in the new context) before the subscriber is told;
    // a thread that is ending stays in the sentinel (`switch_state` did nothing).
    #[cfg(feature = "tracing")]
    if current_id() == id_of(&entered) {
        super::spans::switch(previous.as_ref().map(|p| &p.span), entered.as_ref().map(|c| &c.span));
    }
    previous
}

/// The switch without `tracing`: the thread-local state and the CPU charge.
#[inline]
fn switch_state(new: Option<Rc<ContextInner>>) -> Option<Rc<ContextInner>> {
    STATE.with(|cur| {
        let id = id_of(&new);
        let mut new = Some(new);
        let Ok(previous) = CURRENT.try_with(|c| c.0.replace(new.take().flatten())) else {
            // The thread is ending and `CURRENT` is gone: it stays in the sentinel.
            drop(new);
            return None;
        };
        cur.id.set(id);
        charge_since_mark(cur, previous.as_ref());
        previous
    })
}

/// Charges the current context `c` the time since the last read, reading the counter
/// now (closing the open window, if any).
fn charge_running(c: &Rc<ContextInner>) {
    STATE.with(|cur| {
        let clock = cur.cpu_clock.get();
        if clock != CpuClock::Off {
            charge_read(cur, clock, Some(c), None);
        }
    })
}

/// At a switch: charges `c` (the context being left, if any) the stretch that ends,
/// pending until settled; nothing while the clock is off. Reads the counter unless
/// switches are dense (then only every [`State::stride`] switches).
#[inline]
fn charge_since_mark(cur: &State, c: Option<&Rc<ContextInner>>) {
    let clock = cur.cpu_clock.get();
    if clock == CpuClock::Off {
        return;
    }
    let skip = cur.skip.get();
    if skip != 0 {
        cur.skip.set(skip - 1);
        count_stretch(cur, c);
        return;
    }
    charge_read(cur, clock, c, None);
}

/// Reads the counter, moves the mark to now and charges the ticks since the mark: all
/// to `c` (the context whose stretch ends, if any) when the window is closed, else
/// shared among the window's stretches, `c`'s included (`finishing`, if given, is a
/// context in the window that is being settled and may be past its last handle). Then
/// picks the next stride.
#[inline]
fn charge_read(cur: &State, clock: CpuClock, c: Option<&Rc<ContextInner>>, finishing: Option<&ContextInner>) {
    let now = accounting::ticks();
    let mark = cur.mark.replace(now);
    let elapsed = now.saturating_sub(mark);
    #[cfg(test)]
    cur.reads.set(cur.reads.get() + 1);
    if cur.stretches.get() == 0 {
        match c {
            Some(c) => add_pending(c, elapsed, clock),
            // The thread's first switch (it leaves the sentinel).
            None if mark == 0 && clock.settles() => base_settlement(cur),
            None => {}
        }
        if clock == CpuClock::Thread {
            next_stride(cur, elapsed, 1);
        }
    } else {
        count_stretch(cur, c);
        let stretches = share_window(cur, clock, elapsed, finishing);
        next_stride(cur, elapsed, stretches);
    }
}

/// Adds `ticks` to `c`'s pending time, and lists it to settle if `clock` settles.
#[inline]
fn add_pending(c: &Rc<ContextInner>, ticks: u64, clock: CpuClock) {
    c.pending.set(c.pending.get() + ticks);
    if clock.settles() && !c.listed.get() {
        list_to_settle(c);
    }
}

/// Most switches between two reads of the counter.
const MAX_STRIDE: u32 = 8;

/// After a read that closed `stretches` stretches lasting `elapsed` ticks: if they were
/// dense (under [`accounting::DENSE`] each on average), the next read comes after twice
/// as many switches (up to [`MAX_STRIDE`]); otherwise at the next switch again.
#[inline]
fn next_stride(cur: &State, elapsed: u64, stretches: u32) {
    #[cfg(not(test))]
    let dense = accounting::dense_ticks();
    #[cfg(test)]
    let dense = match cur.dense.get() {
        0 => accounting::dense_ticks(),
        ticks => ticks,
    };
    let stride = if elapsed < u64::from(stretches).saturating_mul(dense) {
        (cur.stride.get() * 2).min(MAX_STRIDE)
    } else {
        1
    };
    cur.stride.set(stride);
    cur.skip.set(stride - 1);
}

/// Counts a stretch of `c` (if not the sentinel) in the open window.
#[inline]
fn count_stretch(cur: &State, c: Option<&Rc<ContextInner>>) {
    cur.stretches.set(cur.stretches.get() + 1);
    if let Some(c) = c {
        let s = c.stretches.get();
        c.stretches.set(s + 1);
        if s == 0 && WINDOW.try_with(|w| w.borrow_mut().push(Rc::downgrade(c))).is_err() {
            // The thread is ending: its share stays with the sentinel.
            c.stretches.set(0);
        }
    }
}

/// Closes the open window: shares `elapsed` ticks among its stretches, equally (the
/// sentinel's share, and the remainder of the division, are charged to no one), and
/// returns how many there were.
#[cold]
#[inline(never)]
fn share_window(cur: &State, clock: CpuClock, elapsed: u64, finishing: Option<&ContextInner>) -> u32 {
    let stretches = cur.stretches.replace(0);
    let each = elapsed / u64::from(stretches.max(1));
    let share = |c: &ContextInner| each * u64::from(c.stretches.replace(0));
    // Nothing below runs user code or drops a context (each upgrade is not the last
    // handle), so the window stays borrowed throughout.
    let _ = WINDOW.try_with(|w| {
        for member in w.borrow_mut().drain(..) {
            if let Some(c) = member.upgrade() {
                add_pending(&c, share(&c), clock);
            } else if let Some(f) = finishing.filter(|f| std::ptr::eq(member.as_ptr(), *f)) {
                // Past its last handle: its settlement commits it as `also`.
                f.pending.set(f.pending.get() + share(f));
            }
        }
    });
    stretches
}

/// Closes the open window, if any, at a point that is not a switch: the current
/// context's stretch so far counts as one of the window's.
fn close_window(finishing: Option<&ContextInner>) {
    let (open, clock) = STATE.with(|cur| (cur.stretches.get() > 0, cur.cpu_clock.get()));
    if open && clock != CpuClock::Off {
        let current = current_rc();
        STATE.with(|cur| charge_read(cur, clock, current.as_ref(), finishing));
    }
}

/// The first time the thread leaves the sentinel (the first time anything can be
/// charged), and when [`set_clock`] turns the thread clock on: reads the thread's CPU
/// clock as the start of the first settlement, so that
/// what the thread did before (its other work, the counter's calibration) does not count
/// as CPU used by the contexts settled first.
#[cold]
fn base_settlement(cur: &State) {
    cur.settled_cpu.set(accounting::thread_cpu_time());
    cur.window.set(0);
    cur.early.set(Duration::ZERO);
}

/// Puts `c` on the thread's list of contexts to settle (once per settlement).
#[cold]
fn list_to_settle(c: &Rc<ContextInner>) {
    if TO_SETTLE.try_with(|l| l.borrow_mut().push(Rc::downgrade(c))).is_ok() {
        c.listed.set(true);
        STATE.with(|cur| cur.unsettled.set(true));
    }
}

/// Settles the contexts charged since the last settlement (see `accounting`): one read
/// of the thread's CPU clock, and their pending time becomes CPU time. The reactor calls
/// this at the end of each turn; it does nothing if no context was charged.
pub(crate) fn settle_turn() {
    let (unsettled, open) = STATE.with(|cur| (cur.unsettled.get(), cur.stretches.get() > 0));
    if unsettled || open {
        settle(None);
    }
    // The next switch reads the counter: no window spans the wait for events.
    STATE.with(|cur| cur.skip.set(0));
}

/// Closes the open window, then settles the listed contexts, and `also` (a context
/// finishing, or whose stats are read; it may be listed, or being dropped and so no
/// longer reachable from the list). With the monotonic clock there is no list: `also`'s
/// pending time is charged as it is.
fn settle(also: Option<&ContextInner>) {
    close_window(also);
    let also = also.filter(|c| c.pending.get() > 0);
    let clock = STATE.with(|cur| cur.cpu_clock.get());
    if !clock.settles() || !STATE.with(|cur| cur.unsettled.get()) {
        if let Some(c) = also {
            c.commit(Scale::ONE);
        }
        return;
    }
    // Take the list out, so that dropping the last handle on a listed context below (its
    // `finish` settles again) finds it empty.
    let Ok(mut listed) = TO_SETTLE.try_with(|l| std::mem::take(&mut *l.borrow_mut())) else {
        if let Some(c) = also {
            c.commit(Scale::ONE);
        }
        return;
    };
    STATE.with(|cur| cur.unsettled.set(false));
    // The listed contexts still alive, but `also` (counted once, below). None of them is
    // dropped here: each upgrade is not the last handle, and committing runs no user code.
    let also_ptr = also.map_or(std::ptr::null(), |c| c as *const ContextInner);
    let others = || listed.iter().filter_map(Weak::upgrade).filter(|c| !std::ptr::eq(&**c, also_ptr));
    let pending = others().map(|c| c.pending.get()).sum::<u64>() + also.map_or(0, |c| c.pending.get());
    let scale = STATE.with(|cur| window_scale(cur, pending));
    others().for_each(|c| c.commit(scale));
    if let Some(c) = also {
        c.commit(scale);
    }
    listed.clear();
    // Give the list's allocation back for the next settlement.
    let _ = TO_SETTLE.try_with(|l| {
        let mut l = l.borrow_mut();
        if l.is_empty() {
            *l = listed;
        }
    });
}

/// Pending time below which a settlement does not read the thread's CPU clock.
const MIN_WINDOW: Duration = Duration::from_millis(1);

/// The scale for a settlement of `pending` ticks. The thread's CPU clock (a system
/// call) is read only once the time settled since the last read reaches [`MIN_WINDOW`]:
/// below that, pending time is scaled as the last read found (all of it was CPU, or a
/// share of it was), and added to the window. A read then settles the whole window:
/// what is pending now is scaled so that the window's total is the CPU the thread used
/// over it (or the window's time, if less), as far as what was charged early allows.
/// So a server whose requests each finish in microseconds reads the clock about once
/// per millisecond of their time, not once per request; the total charged over a
/// window is as exact as before, and its split among the contexts settled early
/// follows the previous window's ratio.
fn window_scale(cur: &State, pending: u64) -> Scale {
    let window = cur.window.get() + pending;
    let window_time = accounting::ticks_to_duration(window);
    let pending_time = accounting::ticks_to_duration(pending);
    if window_time < MIN_WINDOW {
        let scale = cur.last_scale.get();
        cur.window.set(window);
        cur.early.set(cur.early.get() + scale.apply(pending_time));
        return scale;
    }
    cur.window.set(0);
    let early = cur.early.replace(Duration::ZERO);
    let cpu = accounting::thread_cpu_time();
    let used = cpu.saturating_sub(cur.settled_cpu.replace(cpu));
    cur.last_scale.set(Scale::new(used, window_time));
    Scale::new(used.min(window_time).saturating_sub(early), pending_time)
}

/// Restores a context saved by a guard; the context being left is dropped after the
/// switch.
#[inline]
fn restore(previous: Option<Rc<ContextInner>>) {
    if id_of(&previous) != current_id() {
        drop(switch(previous));
    }
}

/// Warns (once per context) when code explicitly enters a finished context.
#[inline]
fn warn_if_finished(ctx: &Option<Rc<ContextInner>>) {
    if let Some(c) = ctx {
        if c.finished.get() && !c.warned_late.replace(true) {
            log::warn!(
                "log context '{}' is used after it finished; its work is charged to its parent",
                c.name
            );
        }
    }
}

/// Sets this thread's clock for charging time at switches ([`super::set_cpu_clock`]),
/// after settling what the previous clock charged.
pub(super) fn set_clock(clock: CpuClock) {
    if let Some(c) = current_rc() {
        charge_running(&c);
        settle(Some(&c));
    } else {
        settle(None);
    }
    STATE.with(|cur| {
        cur.cpu_clock.set(clock);
        cur.mark.set(if clock == CpuClock::Off { 0 } else { accounting::ticks() });
        // The settlement closed the window; the new clock starts with a read per switch.
        cur.stride.set(1);
        cur.skip.set(0);
        // Settlements start afresh: the other clocks did not keep `settled_cpu`.
        if clock.settles() {
            base_settlement(cur);
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::rc::Rc;

    use super::{
        accounting, close_window, settle_turn, switch, window_scale, ContextInner, LoggingContext, State,
        MAX_STRIDE, MIN_WINDOW, STATE,
    };

    /// Settlements of a few microseconds each read the CPU clock only once a millisecond
    /// of pending time has gone by: the window grows until then, and the read empties it.
    #[test]
    fn small_settlements_read_the_cpu_clock_once_per_window() {
        let cur = State::new();
        cur.settled_cpu.set(accounting::thread_cpu_time());
        let ticks_per_10us = (0..)
            .map(|t: u64| t * 1000)
            .find(|&t| accounting::ticks_to_duration(t) >= Duration::from_micros(10))
            .unwrap();
        let mut reads = 0;
        for _ in 0..250 {
            window_scale(&cur, ticks_per_10us);
            if cur.window.get() == 0 {
                reads += 1;
            }
        }
        // 250 settlements of about 10 µs: 2.5 ms, so two reads (not 250).
        let expected =
            (250 * accounting::ticks_to_duration(ticks_per_10us).as_nanos() / MIN_WINDOW.as_nanos()) as i32;
        assert!((reads - expected).abs() <= 1 && reads >= 1, "{reads} reads, expected about {expected}");
    }

    /// Runs `f` on a fresh thread (a first switch, no window, its own `STATE`), with
    /// stretches dense below `dense` ticks.
    fn on_a_thread<R: Send + 'static>(dense: u64, f: impl FnOnce() -> R + Send + 'static) -> R {
        std::thread::spawn(move || {
            STATE.with(|cur| cur.dense.set(dense));
            f()
        })
        .join()
        .expect("the test thread panicked")
    }

    fn inner(ctx: &LoggingContext) -> Rc<ContextInner> {
        ctx.inner.clone().expect("not the sentinel")
    }

    fn reads() -> u64 {
        STATE.with(|cur| cur.reads.get())
    }

    fn mark() -> u64 {
        STATE.with(|cur| cur.mark.get())
    }

    /// Switches alternately into `a` and `b`, `n` times (the thread is in `a` first).
    fn alternate(a: &Rc<ContextInner>, b: &Rc<ContextInner>, n: usize) {
        for i in 0..n {
            drop(switch(Some(if i % 2 == 0 { b.clone() } else { a.clone() })));
        }
    }

    /// Switches in pairs (into `b`, back into `a`) until `done`, at most 1000 pairs.
    fn alternate_until(a: &Rc<ContextInner>, b: &Rc<ContextInner>, done: impl Fn(&State) -> bool) {
        for _ in 0..1000 {
            if STATE.with(|cur| done(cur)) {
                return;
            }
            alternate(a, b, 2);
        }
        panic!("not reached in 1000 pairs of switches");
    }

    /// Where every stretch is dense, the counter is read every eighth switch once the
    /// stride has grown, and the reads share all the time between them: what the two
    /// contexts are charged is the time from the first read to the last, less under
    /// a tick per stretch (the division's remainder); and as every window held as many
    /// stretches of one as of the other, equal halves.
    #[test]
    fn dense_switches_read_the_counter_every_few_and_lose_no_time() {
        let (reads, charged, span, halves) = on_a_thread(u64::MAX / 64, || {
            let (ca, cb) = (LoggingContext::new("a"), LoggingContext::new("b"));
            let (a, b) = (inner(&ca), inner(&cb));
            drop(switch(Some(a.clone())));
            let (start, reads_before) = (mark(), reads());
            alternate(&a, &b, 1000);
            let halves = (a.pending.get(), b.pending.get());
            // In `a` again, 1000 being even: its stretch so far counts too.
            close_window(None);
            let (reads, span) = (reads() - reads_before, mark() - start);
            let charged = a.pending.get() + b.pending.get();
            drop(switch(None));
            (reads, charged, span, halves)
        });
        // Strides 2, 4, then 8: reads at switches 2 and 6, 124 from 14 to 998, and the
        // close.
        assert_eq!(reads, 127, "reads for 1000 switches");
        assert!(charged <= span && span - charged < 8 * reads, "charged {charged} of {span} ticks");
        assert!(halves.0 == halves.1 && halves.0 > 0, "{halves:?}");
    }

    /// What [`alternate_from_the_sentinel`] did: the two contexts, the reads of the
    /// counter after the first, the ticks from the first read to the last, and the
    /// pending ticks of the two by the last read.
    struct Alternation {
        a: LoggingContext,
        b: LoggingContext,
        reads: u64,
        span: u64,
        charged: u64,
    }

    /// From the sentinel, enters a new context `a`, switches `n` times between it and a
    /// new `b`, and goes back to the sentinel.
    fn alternate_from_the_sentinel(n: usize) -> Alternation {
        let (ca, cb) = (LoggingContext::new("a"), LoggingContext::new("b"));
        let (a, b) = (inner(&ca), inner(&cb));
        drop(switch(Some(a.clone())));
        let (start, reads_before) = (mark(), reads());
        alternate(&a, &b, n);
        let (reads, span) = (reads() - reads_before, mark() - start);
        let charged = a.pending.get() + b.pending.get();
        drop(switch(None));
        Alternation { a: ca, b: cb, reads, span, charged }
    }

    /// Where no stretch is dense, every switch reads the counter and charges the
    /// context it leaves exactly the time since the previous switch.
    #[test]
    fn sparse_switches_read_the_counter_at_each() {
        let (reads, charged, span) = on_a_thread(1, || {
            let run = alternate_from_the_sentinel(100);
            (run.reads, run.charged, run.span)
        });
        assert_eq!(reads, 100);
        assert_eq!(charged, span, "every tick from the first read to the last");
    }

    /// `CpuClock::ThreadPerSwitch` reads the counter at every switch however dense, and
    /// settles what it charged against the thread's CPU clock.
    #[test]
    fn the_per_switch_clock_reads_at_every_switch() {
        let (reads, charged, span, (pending, cpu)) = on_a_thread(u64::MAX / 64, || {
            super::set_clock(super::CpuClock::ThreadPerSwitch);
            let run = alternate_from_the_sentinel(100);
            let pending = inner(&run.a).pending.get() + inner(&run.b).pending.get();
            let cpu = run.a.stats().cpu_time + run.b.stats().cpu_time;
            (run.reads, run.charged, run.span, (accounting::ticks_to_duration(pending), cpu))
        });
        assert_eq!((reads, charged), (100, span));
        assert!(cpu > std::time::Duration::ZERO && cpu <= pending, "{cpu:?} settled of {pending:?} pending");
    }

    /// A slow stretch after dense ones is shared with its window's other stretches (it
    /// gets at least its own share), and the read that closes that window brings back a
    /// read at every switch.
    #[test]
    fn a_slow_stretch_after_dense_ones_brings_back_a_read_per_switch() {
        let ms =
            (1..).map(|t: u64| t << 10).find(|&t| accounting::ticks_to_duration(t) >= MIN_WINDOW).unwrap();
        let (stride_before, slow_charged, slow_ticks, reads_after, stride_after) =
            on_a_thread(ms, move || {
                let (ca, cb, cs) =
                    (LoggingContext::new("a"), LoggingContext::new("b"), LoggingContext::new("slow"));
                let (a, b, slow) = (inner(&ca), inner(&cb), inner(&cs));
                drop(switch(Some(a.clone())));
                alternate(&a, &b, 100);
                let stride_before = STATE.with(|cur| cur.stride.get());
                // Into `slow` between two reads, for 20 ms.
                alternate_until(&a, &b, |cur| cur.skip.get() >= 2);
                drop(switch(Some(slow.clone())));
                let entered = accounting::ticks();
                while accounting::ticks() - entered < 20 * ms {
                    std::hint::spin_loop();
                }
                let slow_ticks = accounting::ticks() - entered;
                drop(switch(Some(a.clone())));
                // Dense switches until the read that closes the window.
                let (reads_before, mut next) = (reads(), &b);
                for _ in 0..=MAX_STRIDE {
                    if reads() > reads_before {
                        break;
                    }
                    drop(switch(Some(next.clone())));
                    next = if Rc::ptr_eq(next, &a) { &b } else { &a };
                }
                let stride_after = STATE.with(|cur| cur.stride.get());
                let reads_before = reads();
                drop(switch(Some(next.clone())));
                let reads_after = reads() - reads_before;
                let slow_charged = slow.pending.get();
                drop(switch(None));
                (stride_before, slow_charged, slow_ticks, reads_after, stride_after)
            });
        assert_eq!(stride_before, MAX_STRIDE, "dense switches read every eighth");
        assert!(slow_charged >= slow_ticks / u64::from(MAX_STRIDE), "{slow_charged} of {slow_ticks} ticks");
        assert_eq!((stride_after, reads_after), (1, 1), "the next switch reads again");
    }

    /// A context dropped inside an open window (its last handle gone, so it finishes
    /// there) is charged its share of the window, and its parent gets it.
    #[test]
    fn a_context_dropped_inside_a_window_is_charged_its_share() {
        let (shared_before, parent_cpu) = on_a_thread(u64::MAX / 64, || {
            let parent = LoggingContext::new("parent");
            let (ca, cb, cc) = (
                LoggingContext::new("a"),
                LoggingContext::new("b"),
                LoggingContext::with_parent("c", &parent),
            );
            let (a, b, c) = (inner(&ca), inner(&cb), inner(&cc));
            drop(switch(Some(a.clone())));
            alternate(&a, &b, 20);
            alternate_until(&a, &b, |cur| cur.skip.get() >= 3);
            // Into `c` and out of it without a read.
            drop(switch(Some(c.clone())));
            drop(switch(Some(a.clone())));
            let shared_before = (c.stretches.get(), c.pending.get(), c.cpu_time.get());
            drop((cc, c));
            let parent_cpu = parent.stats().cpu_time;
            drop(switch(None));
            (shared_before, parent_cpu)
        });
        assert_eq!(shared_before, (1, 0, std::time::Duration::ZERO), "c's stretch was in the open window");
        assert!(parent_cpu > std::time::Duration::ZERO, "c's share reached its parent");
    }

    /// The end of a reactor turn closes the open window and makes the next switch read
    /// the counter, so that no window spans the wait for events.
    #[test]
    fn the_end_of_a_turn_closes_the_window() {
        let (open_before, after, charged) = on_a_thread(u64::MAX / 64, || {
            let (ca, cb) = (LoggingContext::new("a"), LoggingContext::new("b"));
            let (a, b) = (inner(&ca), inner(&cb));
            drop(switch(Some(a.clone())));
            alternate(&a, &b, 20);
            alternate_until(&a, &b, |cur| cur.stretches.get() > 0 && cur.skip.get() >= 2);
            let open_before = STATE.with(|cur| cur.stretches.get());
            drop(switch(None));
            settle_turn();
            let after =
                STATE.with(|cur| (cur.stretches.get(), cur.skip.get(), a.stretches.get(), b.stretches.get()));
            let charged = ca.stats().cpu_time + cb.stats().cpu_time;
            (open_before, after, charged)
        });
        assert!(open_before > 0, "the window was open");
        assert_eq!(after, (0, 0, 0, 0), "closed, and the next switch reads");
        assert!(charged > std::time::Duration::ZERO);
    }
}
