//! The lost-result guard: a responder's late `callback(value)` or `errback(failure)` on
//! a Deferred that a cancel already failed is not an error (Twisted ignores the first
//! one), but the value would be dropped silently: a connection, a permit, a row fetched
//! just after the cancel. weft hands it to the Deferred's own hook
//! ([`Deferred::on_lost_result`]) or, without one, to the thread's hook
//! ([`set_lost_result_hook`]), which by default logs a warning.
//!
//! Cost: nothing on the paths that do not lose a result; the hook lives in the cold part
//! of the Deferred.

use std::any::{type_name, Any};
use std::cell::RefCell;
use std::fmt;
use std::panic::Location;
use std::rc::Rc;

use super::{Deferred, Next};
use crate::failure::{At, CancelledError, Failure};
use crate::logcontext::Captured;

/// A Deferred's own lost-result hook.
pub(super) type LostHook<T> = Box<dyn FnOnce(Result<T, Failure>)>;

type ThreadHook = Rc<dyn Fn(LostResult)>;

thread_local! {
    /// This thread's hook for results without a hook of their own; `None` is the default
    /// (log a warning).
    static THREAD_HOOK: RefCell<Option<ThreadHook>> = const { RefCell::new(None) };
}

/// A result that arrived after its Deferred was cancelled, handed to the thread's
/// lost-result hook (see [`set_lost_result_hook`]). The value is boxed, so the hook can
/// take it back with [`downcast`](Self::downcast) and return it where it belongs.
pub struct LostResult {
    result: Result<Box<dyn Any>, Failure>,
    type_name: &'static str,
    created_at: &'static Location<'static>,
    fired_at: &'static Location<'static>,
    cancel: Option<CancelledError>,
}

impl LostResult {
    /// The Rust type of the value (`T` of the `Deferred<T>`).
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// True if the late fire was an `errback`.
    pub fn is_failure(&self) -> bool {
        self.result.is_err()
    }

    /// The failure of a late `errback`, if it was one.
    pub fn failure(&self) -> Option<&Failure> {
        self.result.as_ref().err()
    }

    /// The value of a late `callback`, if it is a `V`; otherwise `self` back.
    ///
    /// # Errors
    ///
    /// `self`, unchanged, if the late fire was an `errback` or the value is not a `V`.
    pub fn downcast<V: 'static>(self) -> Result<V, LostResult> {
        match self.result {
            Ok(value) => match value.downcast::<V>() {
                Ok(v) => Ok(*v),
                Err(value) => Err(LostResult { result: Ok(value), ..self }),
            },
            Err(f) => Err(LostResult { result: Err(f), ..self }),
        }
    }

    /// Where the Deferred was created.
    pub fn created_at(&self) -> &'static Location<'static> {
        self.created_at
    }

    /// Where the late `callback`/`errback` was called.
    pub fn fired_at(&self) -> &'static Location<'static> {
        self.fired_at
    }

    /// The cancel that failed the Deferred before the result came; known while
    /// [`set_debugging`](crate::set_debugging) was on when it was cancelled.
    pub fn cancel(&self) -> Option<&CancelledError> {
        self.cancel.as_ref()
    }
}

impl fmt::Display for LostResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(_) => write!(f, "a value of type {}", self.type_name)?,
            Err(failure) => write!(f, "a failure ({failure})")?,
        }
        write!(f, " given at {} to the deferred created at {}", At(self.fired_at), At(self.created_at))?;
        match &self.cancel {
            Some(c) => write!(f, " after cancel #{} (at {}) failed it", c.id.0, At(c.location)),
            None => write!(f, " after a cancel failed it"),
        }
    }
}

impl fmt::Debug for LostResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LostResult")
            .field("type_name", &self.type_name)
            .field("failure", &self.failure())
            .field("created_at", &At(self.created_at))
            .field("fired_at", &At(self.fired_at))
            .field("cancel", &self.cancel)
            .finish()
    }
}

/// Sets this thread's hook for results that arrive after their Deferred was cancelled
/// and that have no hook of their own ([`Deferred::on_lost_result`]). It replaces the
/// default, which logs a warning naming the Deferred, the late fire and the cancel.
///
/// ```
/// use std::{cell::RefCell, rc::Rc};
/// use weft::{reset_lost_result_hook, set_lost_result_hook, Deferred};
///
/// let returned = Rc::new(RefCell::new(Vec::new()));
/// let r = returned.clone();
/// set_lost_result_hook(move |lost| {
///     if let Ok(conn) = lost.downcast::<u32>() {
///         r.borrow_mut().push(conn); // back to the pool
///     }
/// });
/// let d: Deferred<u32> = Deferred::new();
/// d.cancel();
/// d.callback(7).unwrap(); // the responder's late answer is ignored, not lost
/// assert_eq!(*returned.borrow(), [7]);
/// reset_lost_result_hook();
/// # let _ = d.take_result();
/// ```
pub fn set_lost_result_hook(hook: impl Fn(LostResult) + 'static) {
    THREAD_HOOK.with(|h| *h.borrow_mut() = Some(Rc::new(hook)));
}

/// Puts back this thread's default lost-result hook (a warning; see
/// [`set_lost_result_hook`]).
pub fn reset_lost_result_hook() {
    let old = THREAD_HOOK.with(|h| h.borrow_mut().take());
    drop(old);
}

impl<T: 'static> Deferred<T> {
    /// Sets what to do with a result that arrives after this Deferred was cancelled: the
    /// responder's first late [`callback`](Self::callback) or [`errback`](Self::errback)
    /// is not an error (as in Twisted), and its value or failure goes to `hook` instead
    /// of being dropped, so a connection or permit fetched just after the cancel can be
    /// given back. Without a hook, the thread's hook gets it ([`set_lost_result_hook`];
    /// by default it logs a warning). Replaces a hook set before.
    ///
    /// The hook runs in the log context current when it was set, at most once, even if
    /// that context has finished by then (a request that ended with the cancel: its work
    /// goes to the parent, with no warning about late work); it is dropped with the
    /// Deferred. A panic in it is logged.
    ///
    /// ```
    /// use std::{cell::Cell, rc::Rc};
    /// use weft::Deferred;
    ///
    /// let back = Rc::new(Cell::new(None));
    /// let b = back.clone();
    /// let d: Deferred<u32> = Deferred::new();
    /// d.on_lost_result(move |r| b.set(r.ok()));
    /// d.cancel();
    /// d.callback(5).unwrap();
    /// assert_eq!(back.get(), Some(5));
    /// # let _ = d.take_result();
    /// ```
    pub fn on_lost_result(&self, hook: impl FnOnce(Result<T, Failure>) + 'static) -> &Self {
        let captured = Captured::capture();
        // A late result often comes after the request that added the hook has ended: the
        // hook runs in its context all the same, without the warning about late work.
        let hook: LostHook<T> = Box::new(move |r| captured.run_late(|| hook(r)));
        let old = self.inner.core.borrow_mut().cold_mut().extra_mut().on_lost.replace(hook);
        drop(old);
        self
    }
}

/// What a late fire on a cancelled Deferred needs to hand its result over.
pub(super) struct Lost<T: 'static> {
    pub(super) hook: Option<LostHook<T>>,
    pub(super) cancel: Option<CancelledError>,
    pub(super) created_at: &'static Location<'static>,
}

impl<T: 'static> Lost<T> {
    /// Hands what the late fire from `at` brought to the hook.
    #[cold]
    #[inline(never)]
    pub(super) fn deliver(self, next: Next<T>, at: &'static Location<'static>) {
        let result = match next {
            Next::Ready(r) => r,
            // weft's own forwarding fires (a task moving on) never come late with these.
            Next::Wait(_) | Next::Consumed => return,
        };
        match self.hook {
            Some(hook) => crate::panics::guarded(module_path!(), "a lost-result hook", || hook(result)),
            None => {
                let lost = LostResult {
                    result: result.map(|v| Box::new(v) as Box<dyn Any>),
                    type_name: type_name::<T>(),
                    created_at: self.created_at,
                    fired_at: at,
                    cancel: self.cancel,
                };
                let hook = THREAD_HOOK.with(|h| h.borrow().clone());
                crate::panics::guarded(module_path!(), "a lost-result hook", || {
                    match hook {
                    Some(hook) => hook(lost),
                    None => log::warn!(
                        "lost result: {lost}; it is dropped (Deferred::on_lost_result or set_lost_result_hook can take it back)"
                    ),
                }
                })
            }
        };
    }
}
