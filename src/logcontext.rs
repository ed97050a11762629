//! Log contexts: a thread-local "which request is this work for" that weft swaps in
//! around every callback, as Synapse's `synapse.logging.context` does by hand.
//!
//! A [`LoggingContext`] is a named context (the request id), with an optional parent.
//! Exactly one context is *current* on a thread at a time, or none: the *sentinel*
//! ([`LoggingContext::sentinel`]). Log records are tagged with the current context by
//! [`ContextLogger`], and CPU time and counters are charged to it (see [`ContextStats`]).
//!
//! # Examples
//!
//! ```
//! use weft::logcontext::{current_request_id, LoggingContext};
//! use weft::Deferred;
//!
//! let d: Deferred<u32> = Deferred::new();
//! {
//!     // Synapse's `with LoggingContext("GET-1"):`
//!     let _scope = LoggingContext::new("GET-1").enter();
//!     d.add_callback(|n| {
//!         // Runs in GET-1, whoever fires `d`.
//!         assert_eq!(current_request_id().as_deref(), Some("GET-1"));
//!         n
//!     });
//! } // GET-1 finishes here; the previous context (the sentinel) is back.
//! assert_eq!(current_request_id(), None);
//! d.callback(1).unwrap(); // (the callback runs late, in a finished context: a warning)
//! assert_eq!(current_request_id(), None);
//! ```
//!
//! # The rule weft keeps for you
//!
//! **A callback runs in the logcontext that was current when it was added, and the
//! context that was current before it is back when the callback loop returns, whatever
//! fired the Deferred.** The same holds for cancellers (the context current when they
//! were registered) and for calls scheduled with `call_later` (the context current when
//! they were scheduled). So the reactor, which runs in the sentinel, can never pick up a
//! request's context, and one request's callbacks never run in another's.
//!
//! # Porting from Synapse
//!
//! Synapse's rules exist because a Python coroutine suspends with the context still set,
//! and a Deferred's callbacks run in whatever context fired it. weft captures the context
//! per callback, so:
//!
//! | Synapse | weft |
//! |---|---|
//! | `with LoggingContext("req"):` around sync code | `let _s = LoggingContext::new("req").enter();` |
//! | `with LoggingContext("req"): await handler()` | `LoggingContext::new("req").run(handler)`: finishes when the Deferred completes |
//! | `await make_deferred_yieldable(d)` | `d.add_callback(..)`: every Deferred already follows the rules; [`make_deferred_yieldable`] returns `d` unchanged |
//! | `run_in_background(f)` | [`run_in_background`]: calls `f` and restores the caller's context; kept for ported code |
//! | `defer.gatherResults([run_in_background(a), ...])` | gather the Deferreds directly |
//! | `with PreserveLoggingContext(): d.callback(x)` | `d.callback(x)`: the callbacks swap in their own contexts |
//! | `with PreserveLoggingContext(ctx):` | [`PreserveLoggingContext::new`]`(ctx)`: switches without finishing |
//! | `run_as_background_process(desc, f)` | [`run_as_background_process`]: a fresh context, its own accounting |
//! | `nested_logging_context(suffix)` | [`nested_logging_context`]`(suffix).enter()` (or `.run(..)`) |
//! | `current_context()`, `set_current_context(ctx)` | [`current_context`], [`set_current_context`] |
//! | `LoggingContextFilter` | [`ContextLogger`], [`current_request_id`] |
//! | `context.add_database_transaction(d)` etc. | [`LoggingContext::add_database_transaction`] etc. |
//!
//! What stays the porter's job: a context is finished when its scope ends, so background
//! work started from a request and not cancelled with it runs in a finished context (the
//! pitfall in Synapse's cancellation docs). weft reports it once with `log::warn!` and
//! still charges its work to the parent; give such work its own context with
//! [`run_as_background_process`].
//!
//! # Cost
//!
//! The current context is an `Option<Rc<_>>` in a thread-local `Cell`: capturing it is a
//! reference-count increment, switching is a pointer move, and neither allocates. The
//! callback loop switches only when a callback's context differs from the current one,
//! and restores once when it returns. Thread CPU time is read only on an actual switch
//! (a `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` system call: about 200 to 400 ns on a
//! virtual machine); [`set_cpu_clock`] can make it the cheaper monotonic clock (wall time
//! spent in the context, the same thing while callbacks do not block) or turn it off.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::deferred::{maybe_deferred, CallbackResult, Deferred};
use crate::failure::Failure;

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

/// What a context has used: thread CPU time and callbacks run in it, and counters the
/// application bumps (Synapse's `ContextResourceUsage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextStats {
    /// Thread CPU time spent while this context was current.
    pub cpu_time: Duration,
    /// Callbacks, cancellers and scheduled calls run in this context.
    pub callbacks: u64,
    /// Database transactions run (Synapse's `db_txn_count`).
    pub db_txn_count: u64,
    /// Time spent in database transactions (`db_txn_duration_sec`).
    pub db_txn_duration: Duration,
    /// Time spent waiting for a database connection (`db_sched_duration_sec`).
    pub db_sched_duration: Duration,
    /// Events fetched from the database (`evt_db_fetch_count`).
    pub evt_db_fetch_count: u64,
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

/// A `log::Log` that prefixes every record's message with the current context's request
/// id (`"[GET-1] message"`, `"[sentinel] message"`) and passes it on to the logger it
/// wraps (Synapse's `LoggingContextFilter`).
///
/// ```
/// use weft::logcontext::ContextLogger;
///
/// struct Stderr;
/// impl log::Log for Stderr {
///     fn enabled(&self, _: &log::Metadata<'_>) -> bool { true }
///     fn log(&self, r: &log::Record<'_>) { eprintln!("{} {}", r.level(), r.args()) }
///     fn flush(&self) {}
/// }
/// // Installs it as the global logger: `ContextLogger::new(env_logger::Logger::from_default_env())` works too.
/// ContextLogger::new(Stderr).install(log::LevelFilter::Info).unwrap();
/// ```
#[derive(Debug)]
pub struct ContextLogger<L> {
    inner: L,
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
}

/// The thread's switch bookkeeping. Nothing in it needs dropping, so reading it is a
/// plain thread-local load (no destructor-registration check): the hot path reads only
/// this.
struct State {
    /// The address of the current context (0 for the sentinel), to compare without
    /// touching the `Rc` in `CURRENT`.
    id: Cell<usize>,
    /// Thread CPU time at the last switch.
    cpu_mark: Cell<Duration>,
    cpu_clock: Cell<CpuClock>,
}

thread_local! {
    static STATE: State = const {
        State { id: Cell::new(0), cpu_mark: Cell::new(Duration::ZERO), cpu_clock: Cell::new(CpuClock::Thread) }
    };
    /// The current context; `None` is the sentinel. Its address is `STATE.id`.
    static CURRENT: Cell<Option<Rc<ContextInner>>> = const { Cell::new(None) };
    static BACKGROUND_COUNTS: RefCell<HashMap<String, u64>> = RefCell::new(HashMap::new());
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

    /// Runs `f` in this context, and finishes the context when the Deferred `f` returns
    /// completes: with a value, a failure or a cancel (Synapse's
    /// `with LoggingContext(..): await f()`). The calling context is current again when
    /// `run` returns. A panic in `f` becomes a failed Deferred (see
    /// [`maybe_deferred`]).
    ///
    /// ```
    /// use weft::logcontext::{current_request_id, LoggingContext};
    /// use weft::Deferred;
    ///
    /// let reply: Deferred<u16> = Deferred::new();
    /// let r = reply.clone();
    /// let ctx = LoggingContext::new("GET-7");
    /// let request: Deferred<u16> = ctx.clone().run(move || {
    ///     r.add_callback(|code| {
    ///         assert_eq!(current_request_id().as_deref(), Some("GET-7"));
    ///         code
    ///     });
    ///     r
    /// });
    /// assert!(!ctx.is_finished());
    /// reply.callback(200).unwrap();
    /// assert!(ctx.is_finished());
    /// assert_eq!(request.result().unwrap().unwrap(), 200);
    /// ```
    ///
    /// # Cancellation
    ///
    /// Cancelling the returned Deferred cancels what `f` returned; the context finishes
    /// when the resulting `CancelledError` comes down the chain.
    pub fn run<T, F, R>(self, f: F) -> Deferred<T>
    where
        T: 'static,
        F: FnOnce() -> R,
        R: CallbackResult<T>,
    {
        let _switch = PreserveLoggingContext::new(self.clone());
        let d = maybe_deferred(f);
        let ctx = self;
        d.add_both(move |r: Result<T, Failure>| {
            ctx.finish();
            r
        });
        d
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

    /// The totals so far: while the context runs, at finish, or after. Children's totals
    /// are included once they have finished. If the context is current, CPU time up to
    /// now is included. All zero for the sentinel.
    pub fn stats(&self) -> ContextStats {
        let Some(c) = &self.inner else { return ContextStats::default() };
        let mut stats = c.snapshot();
        if id_of(&self.inner) == current_id() {
            STATE.with(|cur| {
                if let Some(now) = cur.cpu_clock.get().now() {
                    stats.cpu_time += now.saturating_sub(cur.cpu_mark.get());
                }
            });
        }
        stats
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

impl ContextStats {
    /// Adds `other` to `self`, field by field.
    pub fn add(&mut self, other: &ContextStats) {
        self.cpu_time += other.cpu_time;
        self.callbacks += other.callbacks;
        self.db_txn_count += other.db_txn_count;
        self.db_txn_duration += other.db_txn_duration;
        self.db_sched_duration += other.db_sched_duration;
        self.evt_db_fetch_count += other.evt_db_fetch_count;
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

impl<L: log::Log> ContextLogger<L> {
    /// Wraps `inner`: records reach it with the request id in front of their message.
    pub fn new(inner: L) -> ContextLogger<L> {
        ContextLogger { inner }
    }

    /// The wrapped logger.
    pub fn inner(&self) -> &L {
        &self.inner
    }

    /// Installs this as the global logger (`log::set_boxed_logger`) and sets the maximum
    /// level.
    ///
    /// # Errors
    ///
    /// `log::SetLoggerError` if a global logger was already installed.
    pub fn install(self, max_level: log::LevelFilter) -> Result<(), log::SetLoggerError>
    where
        L: 'static,
    {
        log::set_boxed_logger(Box::new(self))?;
        log::set_max_level(max_level);
        Ok(())
    }
}

impl<L: log::Log> log::Log for ContextLogger<L> {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        with_current(|ctx| {
            let id = ctx.map_or("sentinel", |c| &c.name);
            self.inner.log(
                &log::Record::builder()
                    .args(format_args!("[{id}] {}", record.args()))
                    .metadata(record.metadata().clone())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            )
        })
    }

    fn flush(&self) {
        self.inner.flush()
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

/// Which clock charges time to contexts at each switch; see [`set_cpu_clock`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuClock {
    /// The thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`): exact CPU time, a system call
    /// per switch. The default.
    #[default]
    Thread,
    /// The monotonic clock (`Instant`): wall time while the context was current, which is
    /// CPU time as long as callbacks do not block; no system call.
    Monotonic,
    /// No clock: `cpu_time` stays zero and switches read no clock.
    Off,
}

/// Chooses the clock that charges time to contexts at switches on this thread
/// ([`CpuClock::Thread`] by default).
pub fn set_cpu_clock(clock: CpuClock) {
    STATE.with(|cur| {
        cur.cpu_clock.set(clock);
        cur.cpu_mark.set(clock.now().unwrap_or_default());
    })
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

/// Returns `d` unchanged (Synapse's `make_deferred_yieldable`).
///
/// In Synapse it makes a Deferred that does not follow the log-context rules follow them:
/// its callbacks get the caller's context back. In weft every Deferred already does: a
/// callback runs in the context that was current when it was added. It is kept so that
/// ported code reads the same; new code need not call it.
///
/// ```
/// use weft::logcontext::{current_request_id, make_deferred_yieldable, LoggingContext};
/// let d: weft::Deferred<()> = weft::Deferred::new();
/// {
///     let _s = LoggingContext::new("one").enter();
///     make_deferred_yieldable(d.clone())
///         .add_callback(|_| assert_eq!(current_request_id().as_deref(), Some("one")));
/// }
/// d.callback(()).unwrap(); // fired from the sentinel
/// ```
#[must_use = "add callbacks to the Deferred"]
pub fn make_deferred_yieldable<T: 'static>(d: Deferred<T>) -> Deferred<T> {
    d
}

/// Calls `f` in the current context and returns its outcome as a Deferred, with the
/// caller's context current again afterwards (Synapse's `run_in_background`).
///
/// A value or `Ok` gives a fired Deferred, an `Err` or a panic a failed one, and a
/// Deferred is returned as it is ([`maybe_deferred`]). Work `f` leaves pending runs in
/// the caller's context (callbacks captured it), and callbacks added to the result run
/// in the context current when they are added. Even if `f` changes the current context
/// and does not restore it, the caller's context is restored.
#[must_use = "a Deferred's failure is reported only if nobody handles it"]
pub fn run_in_background<T, F, R>(f: F) -> Deferred<T>
where
    T: 'static,
    F: FnOnce() -> R,
    R: CallbackResult<T>,
{
    let _restore = Restore::capture();
    maybe_deferred(f)
}

/// Runs `f` in a fresh context named `"{desc}-{n}"` (n counts the processes started
/// with this `desc` on this thread), with no parent, so the request that started it is
/// not charged (Synapse's `run_as_background_process`). The context finishes when the
/// work completes. A failure or panic is logged with `log::error!` in the background
/// context and becomes `None`; a value becomes `Some`.
///
/// ```
/// use weft::logcontext::{current_request_id, run_as_background_process};
/// let done = run_as_background_process("prune", || {
///     assert_eq!(current_request_id().as_deref(), Some("prune-0"));
///     42
/// });
/// assert_eq!(done.result().unwrap().unwrap(), Some(42));
/// ```
pub fn run_as_background_process<T, F, R>(desc: &str, f: F) -> Deferred<Option<T>>
where
    T: 'static,
    F: FnOnce() -> R,
    R: CallbackResult<T>,
{
    let n = BACKGROUND_COUNTS.with(|counts| {
        let mut counts = counts.borrow_mut();
        let n = counts.entry(desc.to_string()).or_insert(0);
        *n += 1;
        *n - 1
    });
    let name = format!("{desc}-{n}");
    let desc = desc.to_string();
    LoggingContext::new(name).run(move || {
        maybe_deferred(f).then(move |r: Result<T, Failure>| match r {
            Ok(v) => Some(v),
            Err(failure) => {
                log::error!("background process '{desc}' failed: {failure}");
                None
            }
        })
    })
}

/// A new context, child of the current one, named `"{current}-{suffix}"` (Synapse's
/// `nested_logging_context`): enter it with [`LoggingContext::enter`] or run async work
/// in it with [`LoggingContext::run`]. Its totals reach the current context when it
/// finishes. From the sentinel, it is named `suffix`, has no parent, and a warning is
/// logged (its totals are lost).
pub fn nested_logging_context(suffix: &str) -> LoggingContext {
    let parent = current_context();
    if parent.is_sentinel() {
        log::warn!("starting nested logging context '{suffix}' from the sentinel: its totals will be lost");
        return LoggingContext::new(suffix);
    }
    LoggingContext::with_parent(format!("{}-{suffix}", parent.name()), &parent)
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
    saved: Option<Option<Rc<ContextInner>>>,
}

impl Captured {
    /// The current context.
    #[inline]
    pub(crate) fn capture() -> Captured {
        if current_id() == 0 {
            return Captured(None);
        }
        Captured(CURRENT.with(|cur| {
            let ctx = cur.take();
            cur.set(ctx.clone());
            ctx
        }))
    }

    /// The sentinel.
    #[allow(dead_code)] // For the reactor, which lands on another branch.
    pub(crate) const fn sentinel() -> Captured {
        Captured(None)
    }

    /// True if this is the sentinel.
    #[inline]
    pub(crate) fn is_sentinel(&self) -> bool {
        self.0.is_none()
    }

    /// Runs `f` in the captured context and restores the current one after, panics
    /// included; counts one callback.
    #[inline]
    pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let _restore = self.enter();
        f()
    }

    /// Makes the captured context current until the returned guard is dropped; counts
    /// one callback.
    #[inline]
    pub(crate) fn enter(&self) -> Restore {
        let restore = if id_of(&self.0) == current_id() {
            Restore(None)
        } else {
            Restore(Some(switch(self.0.clone())))
        };
        if let Some(c) = &self.0 {
            c.count_callback();
        }
        restore
    }
}

impl Restore {
    /// A guard that restores the context current now.
    fn capture() -> Restore {
        Restore(Some(Captured::capture().0))
    }
}

impl Drop for Restore {
    #[inline]
    fn drop(&mut self) {
        if let Some(previous) = self.0.take() {
            restore(previous);
        }
    }
}

impl Switcher {
    /// A switcher that has not switched yet.
    #[inline]
    pub(crate) fn new() -> Switcher {
        Switcher { saved: None }
    }

    /// Makes `captured` current for the next callback; counts one callback.
    #[inline]
    pub(crate) fn enter(&mut self, captured: &Captured) {
        if id_of(&captured.0) != current_id() {
            self.switch_slow(captured);
        }
        if let Some(c) = &captured.0 {
            c.count_callback();
        }
    }

    #[cold]
    #[inline(never)]
    fn switch_slow(&mut self, captured: &Captured) {
        let previous = switch(captured.0.clone());
        if self.saved.is_none() {
            self.saved = Some(previous);
        }
    }
}

impl Drop for Switcher {
    #[inline]
    fn drop(&mut self) {
        if let Some(previous) = self.saved.take() {
            restore(previous);
        }
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
    #[inline]
    fn count_callback(&self) {
        self.callbacks.set(self.callbacks.get() + 1);
        if self.finished.get() {
            self.late_work();
        }
    }

    /// A callback ran in this finished context: warn once, and pass the count on.
    #[cold]
    fn late_work(&self) {
        if !self.warned_late.replace(true) {
            log::warn!(
                "log context '{}' is used after it finished; its work is charged to its parent",
                self.name
            );
        }
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
        if self.finished.replace(true) {
            return;
        }
        let stats = self.snapshot();
        if let Some(parent) = &self.parent {
            parent.charge(&stats);
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
    let ctx = CURRENT.with(|cur| {
        let ctx = cur.take();
        cur.set(ctx.clone());
        ctx
    });
    f(ctx.as_ref())
}

/// Makes `new` current and returns the previous context; charges the CPU time since the
/// last switch to the previous context. Every switch goes through here. It does not warn
/// about finished contexts: restoring one (a guard going out of scope after the context
/// it had saved finished) is not new work in it. Entering points warn instead.
fn switch(new: Option<Rc<ContextInner>>) -> Option<Rc<ContextInner>> {
    STATE.with(|cur| {
        cur.id.set(id_of(&new));
        let previous = CURRENT.with(|c| c.replace(new));
        if let Some(now) = cur.cpu_clock.get().now() {
            if let Some(p) = &previous {
                p.charge(&ContextStats {
                    cpu_time: now.saturating_sub(cur.cpu_mark.get()),
                    ..Default::default()
                });
            }
            cur.cpu_mark.set(now);
        }
        previous
    })
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

impl CpuClock {
    /// The clock's reading, or `None` when off.
    fn now(self) -> Option<Duration> {
        static START: OnceLock<Instant> = OnceLock::new();
        match self {
            CpuClock::Thread => {
                Some(cpu_time::ThreadTime::try_now().map(|t| t.as_duration()).unwrap_or_default())
            }
            CpuClock::Monotonic => Some(START.get_or_init(Instant::now).elapsed()),
            CpuClock::Off => None,
        }
    }
}
