//! Synapse's helpers over Deferreds (`make_deferred_yieldable`, `run_in_background`,
//! `run_as_background_process`, `nested_logging_context`, `LoggingContext::run`).
//!
//! This is the only part of `logcontext` that names `Deferred`: the context core in
//! `context.rs` sits below `deferred`, these helpers above it.

use std::cell::RefCell;
use std::collections::HashMap;

use super::context::Restore;
use super::{current_context, LoggingContext, PreserveLoggingContext};
use crate::deferred::{maybe_deferred, CallbackResult, Deferred};
use crate::failure::Failure;

thread_local! {
    static BACKGROUND_COUNTS: RefCell<HashMap<String, u64>> = RefCell::new(HashMap::new());
}

impl LoggingContext {
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
    let ctx = LoggingContext::new(name);
    ctx.set_metrics_name(&desc);
    ctx.run(move || {
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
