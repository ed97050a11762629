//! `Failure`, the value that travels down the errback chain, and weft's own error types.
//!
//! A [`Failure`] wraps any `std::error::Error + 'static`, remembers where it was created,
//! and is cheap to clone (it is a reference-counted handle), so fan-out can hand one failure
//! to many observers without copying the error.
//!
//! Like `anyhow::Error`, `Failure` does not itself implement `std::error::Error`: that is
//! what lets `?` turn any error into a `Failure` inside a callback
//! (`impl<E: Error> From<E> for Failure`). Use [`Failure::as_error`] or the
//! `From<Failure> for Box<dyn Error>` conversion where a `dyn Error` is needed.

use std::any::Any;
use std::cell::Cell;
use std::error::Error;
use std::fmt;
use std::panic::Location;
use std::rc::Rc;

/// The error value of a Deferred: any error, shared cheaply, with the place it was created.
///
/// Twisted's `Failure` wraps an exception and its traceback; weft's wraps a boxed
/// `dyn Error` and the source [`Location`] of its creation (`#[track_caller]`).
///
/// # Examples
///
/// ```
/// use weft::{Failure, CancelledError};
/// use std::io;
///
/// let f = Failure::new(io::Error::new(io::ErrorKind::Other, "disk on fire"));
/// assert!(f.check::<io::Error>());
/// assert!(!f.check::<CancelledError>());
/// // `trap` gives the failure back as `Err` when it is not of the expected type,
/// // so an errback can pass on what it does not handle with `?`.
/// let still_failed = f.clone().trap::<CancelledError>();
/// assert!(still_failed.is_err());
/// assert_eq!(f.downcast_ref::<io::Error>().unwrap().kind(), io::ErrorKind::Other);
/// ```
#[derive(Clone)]
pub struct Failure {
    inner: Rc<FailureInner>,
}

struct FailureInner {
    error: Box<dyn Error + 'static>,
    location: &'static Location<'static>,
    /// Set when some code has looked at the failure through `trap`, so logs can say so.
    seen: Cell<bool>,
}

impl Failure {
    /// Wraps `error`, recording the caller's location.
    #[track_caller]
    pub fn new<E: Error + 'static>(error: E) -> Failure {
        Failure::from_boxed_at(Box::new(error), Location::caller())
    }

    /// Wraps an already boxed error, recording the caller's location.
    #[track_caller]
    pub fn from_boxed(error: Box<dyn Error + 'static>) -> Failure {
        Failure::from_boxed_at(error, Location::caller())
    }

    /// Wraps an error given only as a message (a [`StringError`]).
    #[track_caller]
    pub fn msg(message: impl Into<String>) -> Failure {
        Failure::new(StringError(message.into()))
    }

    fn from_boxed_at(error: Box<dyn Error + 'static>, location: &'static Location<'static>) -> Failure {
        Failure { inner: Rc::new(FailureInner { error, location, seen: Cell::new(false) }) }
    }

    /// Turns a panic payload (from `std::panic::catch_unwind`) into a Failure holding a
    /// [`PanicError`] with the panic's message.
    #[track_caller]
    pub fn from_panic(payload: Box<dyn Any + Send>) -> Failure {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_string()
        };
        Failure::new(PanicError { message })
    }

    /// Where this failure was created.
    pub fn location(&self) -> &'static Location<'static> {
        self.inner.location
    }

    /// The wrapped error.
    pub fn as_error(&self) -> &(dyn Error + 'static) {
        &*self.inner.error
    }

    /// True if the wrapped error is an `E` (Twisted's `Failure.check`).
    pub fn check<E: Error + 'static>(&self) -> bool {
        self.inner.error.is::<E>()
    }

    /// Same as [`check`](Self::check), in `std::error` spelling.
    pub fn is<E: Error + 'static>(&self) -> bool {
        self.check::<E>()
    }

    /// The wrapped error as an `E`, if it is one.
    pub fn downcast_ref<E: Error + 'static>(&self) -> Option<&E> {
        self.inner.error.downcast_ref::<E>()
    }

    /// Twisted's `Failure.trap`: `Ok(self)` if the error is an `E`, otherwise `Err(self)`,
    /// so that an errback handles what it expects and passes anything else on with `?`.
    ///
    /// ```
    /// use weft::{Deferred, CancelledError, Failure};
    /// let d: Deferred<i32> = Deferred::new();
    /// d.add_errback(|f: Failure| -> Result<i32, Failure> {
    ///     f.trap::<CancelledError>()?; // anything but a cancel goes on down the chain
    ///     Ok(-1)
    /// });
    /// d.cancel();
    /// assert_eq!(d.result().unwrap().unwrap(), -1);
    /// ```
    pub fn trap<E: Error + 'static>(self) -> Result<Failure, Failure> {
        if self.check::<E>() {
            self.inner.seen.set(true);
            Ok(self)
        } else {
            Err(self)
        }
    }

    /// True if both handles share one failure (one creation, cloned).
    pub fn ptr_eq(a: &Failure, b: &Failure) -> bool {
        Rc::ptr_eq(&a.inner, &b.inner)
    }

    /// The chain of `source()` errors below the wrapped one, outermost first.
    pub fn sources(&self) -> impl Iterator<Item = &(dyn Error + 'static)> {
        let mut next = self.inner.error.source();
        std::iter::from_fn(move || {
            let cur = next?;
            next = cur.source();
            Some(cur)
        })
    }
}

impl<E: Error + 'static> From<E> for Failure {
    #[track_caller]
    fn from(error: E) -> Failure {
        Failure::new(error)
    }
}

impl From<Failure> for Box<dyn Error + 'static> {
    fn from(f: Failure) -> Box<dyn Error + 'static> {
        Box::new(SharedError(f))
    }
}

/// A `Failure` seen as a `std::error::Error` (what `From<Failure> for Box<dyn Error>` makes).
struct SharedError(Failure);

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.0.as_error(), f)
    }
}

impl Error for SharedError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.0.as_error())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner.error)?;
        for s in self.sources() {
            write!(f, ": {s}")?;
        }
        write!(f, " (failure created at {})", self.inner.location)
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failure")
            .field("error", &self.inner.error)
            .field("location", &format_args!("{}", self.inner.location))
            .finish()
    }
}

/// Identifies one cancellation: the `cancel()` call that started it.
///
/// Every [`CancelledError`] produced while that cancel travels through cancellers and
/// chained deferreds carries the same id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CancelId(pub(crate) u64);

/// The error a cancelled Deferred fails with (Twisted's `defer.CancelledError`).
///
/// It records which `cancel()` call started it (its [`CancelId`] and source location), so
/// a layer can tell "my deferred was cancelled" ([`CancelledError::cancelled_by`] is true
/// for the deferred it is on) from "something I waited on was cancelled by someone else".
#[derive(Clone, Debug)]
pub struct CancelledError {
    pub(crate) id: CancelId,
    pub(crate) location: &'static Location<'static>,
}

impl CancelledError {
    /// The id of the cancel that started this cancellation.
    pub fn id(&self) -> CancelId {
        self.id
    }

    /// Where the `cancel()` call that started this cancellation was made.
    pub fn location(&self) -> &'static Location<'static> {
        self.location
    }

    /// True if this cancellation was started by calling `cancel()` on `d` itself, rather
    /// than on something that `d` waited on, or on an unrelated deferred.
    pub fn cancelled_by<T: 'static>(&self, d: &crate::Deferred<T>) -> bool {
        d.cancel_started_here() == Some(self.id)
    }
}

impl fmt::Display for CancelledError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deferred cancelled (cancel #{} at {})", self.id.0, self.location)
    }
}

impl Error for CancelledError {}

/// Returned when a Deferred that already has a result is fired again; it hands the
/// value back so that nothing given to weft is lost.
pub struct AlreadyCalledError<V> {
    value: V,
}

impl<V> AlreadyCalledError<V> {
    pub(crate) fn new(value: V) -> Self {
        AlreadyCalledError { value }
    }

    /// The value (or failure) that could not be delivered.
    pub fn into_inner(self) -> V {
        self.value
    }

    /// A reference to the value (or failure) that could not be delivered, for when the
    /// error is inside a [`Failure`] (as after a
    /// [`chain_deferred`](crate::Deferred::chain_deferred) into a fired target).
    pub fn value(&self) -> &V {
        &self.value
    }
}

impl<V> fmt::Debug for AlreadyCalledError<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AlreadyCalledError")
    }
}

impl<V> fmt::Display for AlreadyCalledError<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deferred already called")
    }
}

impl<V: 'static> Error for AlreadyCalledError<V> {
    /// The failure that could not be delivered, if that is what it holds.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        (&self.value as &dyn Any).downcast_ref::<Failure>().map(Failure::as_error)
    }
}

/// A panic inside a callback, caught and turned into a Failure.
#[derive(Clone, Debug)]
pub struct PanicError {
    message: String,
}

impl PanicError {
    /// The panic's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PanicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "callback panicked: {}", self.message)
    }
}

impl Error for PanicError {}

/// What later callbacks receive when the result was moved out of a Deferred to somewhere
/// else (by [`then`](crate::Deferred::then), [`chain_deferred`](crate::Deferred::chain_deferred),
/// [`take_result`](crate::Deferred::take_result) or a chaining outer Deferred).
///
/// Twisted leaves `None` in the source Deferred in these cases; a typed chain cannot, so
/// callbacks added afterwards get this error instead of silently never running.
#[derive(Clone, Debug)]
pub struct ResultConsumedError;

impl fmt::Display for ResultConsumedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the deferred's result was already moved elsewhere")
    }
}

impl Error for ResultConsumedError {}

/// A callback returned the very Deferred it runs on, which would wait for itself forever.
#[derive(Clone, Debug)]
pub struct ChainedToSelfError;

impl fmt::Display for ChainedToSelfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a callback returned the deferred it was running on")
    }
}

impl Error for ChainedToSelfError {}

/// A callback returned a Deferred that waits, directly or through others, on the
/// Deferred running the callback: each would wait for the other forever.
///
/// The callback's result becomes this failure, which then goes down the chain (and on to
/// every Deferred waiting on it) as usual. Twisted has no such check: the chains hang,
/// and cancelling one overflows the stack.
#[derive(Clone, Debug)]
pub struct WaitCycleError;

impl fmt::Display for WaitCycleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a callback returned a deferred that waits on the deferred running it")
    }
}

impl Error for WaitCycleError {}

/// `unpause` called on a Deferred that is not paused.
#[derive(Clone, Debug)]
pub struct NotPausedError;

impl fmt::Display for NotPausedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unpause called on a deferred that is not paused")
    }
}

impl Error for NotPausedError {}

/// An error given only as a message.
#[derive(Clone, Debug)]
pub struct StringError(pub String);

impl fmt::Display for StringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for StringError {}
