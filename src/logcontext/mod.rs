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
//! | `with LoggingContext(..)` inside a task another executor polls | `fut.in_context(ctx)` ([`InContextExt`]): the context is current only while the future is polled |
//! | `context.add_database_transaction(d)` etc. | [`LoggingContext::add_database_transaction`] etc. |
//! | a coroutine keeping its context across `await` | [`ensure_deferred`](crate::future::ensure_deferred): each task keeps its own context across awaits, and its polls never leak it to whoever woke it |
//! | `defer_to_threadpool(reactor, pool, f)` | [`ReactorHandle::defer_to_thread`](crate::ReactorHandle::defer_to_thread): `f` runs in a context named after the caller's and its CPU and database counters are charged back; from the sentinel it runs in none (without Synapse's "metrics will be lost" warning) |
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
//! and restores once when it returns.
//!
//! # CPU time
//!
//! A switch charges the context it leaves the time since the previous switch, read from
//! the CPU's time-stamp counter (through `quanta`: 5 to 40 ns by machine, no system call;
//! the monotonic clock where the CPU has no usable counter). Where switches are dense
//! (under a microsecond apart on average, as when a server interleaves many requests'
//! short callbacks), even that read would be most of a switch's cost, so the default
//! clock reads it every 2, 4 or 8 switches instead (twice as far apart after each
//! window found dense, back to every switch after one that was not, and at the first
//! switch of each reactor turn): the switches in between only count the *stretch* each
//! ends, and the read shares the window's time equally among its stretches. That time is
//! *pending* until a
//! settlement reads the thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`, a system call of
//! about 1 µs on a virtual machine) and turns the pending time of every context charged
//! since the previous settlement into CPU time: scaled down by the ratio of the CPU the
//! thread used to the time pending if the thread used less (it was preempted, or a
//! callback blocked), as it is otherwise. The reactor settles at the end of each turn in
//! which a context was charged; a context also settles when it finishes and when its
//! [`stats`](LoggingContext::stats) are read (each closing the open window first). A
//! settlement reads the CPU clock only once
//! a millisecond of pending time has been settled since the last read (a server whose
//! requests finish in microseconds would otherwise pay a system call per request); a
//! smaller one scales by the ratio the last read found, and the next read settles the
//! difference on what is pending then.
//!
//! So [`ContextStats::cpu_time`] is never more than the time the context was current
//! (where switches are dense: than its share of the windows it ran in, each at most
//! eight stretches long; a slow callback that follows dense ones can see up to seven
//! eighths of its time charged to the contexts of its window, once, before reads come
//! at every switch again), a callback that sleeps a millisecond or more is not charged
//! its sleep (a shorter one is charged by the previous window's ratio, evened out at the
//! next read), and over each window between two reads of the CPU clock the contexts
//! together are charged the CPU the thread used while they were current (the thread's
//! clock also counts the sentinel's work between them, which can only raise the ratio),
//! as far as the time pending at the read can absorb; within a settlement, time is
//! shared by how long each context was current.
//! [`set_cpu_clock`] can read the counter at every switch however dense
//! ([`CpuClock::ThreadPerSwitch`]: no window shared, to find which request a slow
//! callback belongs to), charge the counter's time unsettled ([`CpuClock::Monotonic`]:
//! wall time while current, read at every switch, no system call at all) or turn
//! charging off.

mod accounting;
pub(crate) mod context;
mod helpers;
mod instrument;
mod logger;
#[cfg(feature = "tracing")]
mod spans;

pub use accounting::{context_totals, set_cpu_clock, ContextStats, ContextTotals, CpuClock};
pub use context::{
    assert_sentinel, current_context, current_request_id, set_current_context, with_current_request_id,
    ContextScope, LoggingContext, PreserveLoggingContext,
};
pub use helpers::{
    make_deferred_yieldable, nested_logging_context, run_as_background_process, run_in_background,
};
pub use instrument::{InContext, InContextExt};
pub use logger::ContextLogger;

pub(crate) use context::{bind, settle_turn, Captured, RemoteContext, Restore, Switcher};
