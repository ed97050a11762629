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

    pub(crate) fn from_boxed_at(
        error: Box<dyn Error + 'static>,
        location: &'static Location<'static>,
    ) -> Failure {
        Failure { inner: Rc::new(FailureInner { error, location, seen: Cell::new(false) }) }
    }

    /// Turns a panic payload (from `std::panic::catch_unwind`) into a Failure holding a
    /// [`PanicError`] with the panic's message.
    #[track_caller]
    pub fn from_panic(payload: Box<dyn Any + Send>) -> Failure {
        Failure::from_panic_at(payload, Location::caller())
    }

    /// [`from_panic`](Self::from_panic) recording `location` (a panicking callback's:
    /// where it was added).
    pub(crate) fn from_panic_at(
        payload: Box<dyn Any + Send>,
        location: &'static Location<'static>,
    ) -> Failure {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_string()
        };
        Failure::from_boxed_at(Box::new(PanicError { message }), location)
    }

    /// Wraps `error`, recording `location` instead of the caller's.
    pub(crate) fn new_at<E: Error + 'static>(error: E, location: &'static Location<'static>) -> Failure {
        Failure::from_boxed_at(Box::new(error), location)
    }

    /// Where this failure was created. For a panic in a callback, where that callback was
    /// added; for a cancel, where `cancel()` was called. (`Display` shows it relative to
    /// the crate, see [`Failure`].)
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
    /// The error, its sources, and where the failure was created, as a path relative to
    /// the crate (or, for a dependency, to the registry or checkout it came from), never
    /// an absolute path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner.error)?;
        for s in self.sources() {
            write!(f, ": {s}")?;
        }
        write!(f, " (failure created at {})", At(self.inner.location))
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failure")
            .field("error", &self.inner.error)
            .field("location", &format_args!("{}", At(self.inner.location)))
            .finish()
    }
}

/// Shows a source location as `path:line:column` with the path made relative (see
/// [`short_path`]), for messages that must not leak the build machine's directories.
#[derive(Clone, Copy)]
pub(crate) struct At(pub(crate) &'static Location<'static>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", short_path(self.0.file()), self.0.line(), self.0.column())
    }
}

impl fmt::Debug for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A source file path as messages show it: never absolute.
///
/// Cargo gives `#[track_caller]` locations relative to the workspace for the crates it
/// builds there, and absolute for others (a path dependency outside the workspace, a
/// crate from a registry or a git checkout). Those become: the part after the registry's
/// or checkout's own directory (`weft-0.1.0/src/deferred/mod.rs`), the part after the
/// current directory, the part under `/rustc/<hash>/` for the standard library, or the
/// path from the directory that holds the last `src`, `tests`, `examples` or `benches`
/// component (`peers/src/main.rs`); failing all those, the file name.
pub(crate) fn short_path(file: &str) -> &str {
    if !file.starts_with('/') {
        return file;
    }
    for (marker, skip) in [("/registry/src/", 1), ("/git/checkouts/", 2)] {
        if let Some(i) = file.find(marker) {
            let mut rest = &file[i + marker.len()..];
            for _ in 0..skip {
                rest = rest.split_once('/').map_or(rest, |(_, r)| r);
            }
            return rest;
        }
    }
    if let Some(rest) = file.strip_prefix("/rustc/") {
        return rest.split_once('/').map_or(rest, |(_, r)| r);
    }
    if let Some(rest) = current_dir().and_then(|dir| file.strip_prefix(dir)?.strip_prefix('/')) {
        return rest;
    }
    for dir in ["/src/", "/tests/", "/examples/", "/benches/"] {
        if let Some(i) = file.rfind(dir) {
            let start = file[..i].rfind('/').map_or(0, |k| k + 1);
            return &file[start..];
        }
    }
    file.rsplit('/').next().unwrap_or(file)
}

/// The process's current directory when first asked, if it is valid UTF-8.
fn current_dir() -> Option<&'static str> {
    static DIR: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| std::env::current_dir().ok().and_then(|d| d.to_str().map(str::to_owned))).as_deref()
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
///
/// While [`set_debugging`](crate::set_debugging) is on, it also records the path the
/// cancel took ([`trace`](Self::trace)), which `{:#?}` prints.
#[derive(Clone)]
pub struct CancelledError {
    pub(crate) id: CancelId,
    pub(crate) location: &'static Location<'static>,
    /// The cancel's path, shared by every error of the same cancel; recorded only while
    /// debugging.
    pub(crate) trace: Option<crate::deferred::TraceLog>,
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

    /// The path this cancellation took, in order: each Deferred it passed into, each
    /// canceller it ran (with where it was added), and where it stopped. Recorded only
    /// while [`set_debugging`](crate::set_debugging) was on when the cancel started;
    /// empty otherwise. Every `CancelledError` of one cancel shares the same record, so
    /// this shows the whole path even on an error made half way along it.
    ///
    /// ```
    /// use weft::{set_debugging, CancelStep, CancelledError, Deferred};
    ///
    /// set_debugging(true);
    /// let d: Deferred<u8> = Deferred::with_canceller(|_| ());
    /// d.cancel();
    /// set_debugging(false);
    /// let f = d.take_result().unwrap().unwrap_err();
    /// let trace = f.downcast_ref::<CancelledError>().unwrap().trace();
    /// assert!(matches!(trace[..], [CancelStep::Entered(_), CancelStep::Canceller(_), CancelStep::Stopped(..)]));
    /// ```
    pub fn trace(&self) -> Vec<crate::deferred::CancelStep> {
        self.trace.as_ref().map_or_else(Vec::new, |t| t.borrow().clone())
    }
}

impl fmt::Debug for CancelledError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("CancelledError");
        s.field("id", &self.id).field("location", &At(self.location));
        if let Some(trace) = &self.trace {
            s.field("trace", &*trace.borrow());
        }
        s.finish()
    }
}

impl fmt::Display for CancelledError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deferred cancelled (cancel #{} at {})", self.id.0, At(self.location))
    }
}

impl Error for CancelledError {}

/// Returned when a Deferred that already has a result is fired again; it hands the
/// value back so that nothing given to weft is lost.
///
/// It knows where the second fire came from ([`fired_again_at`](Self::fired_again_at)).
/// With [`set_debugging`](crate::set_debugging) on when the Deferred was first fired, it
/// also knows where that was and where the Deferred was created, and its message names
/// all three (Twisted's `setDebugging`); otherwise the message is Twisted's plain one.
pub struct AlreadyCalledError<V> {
    value: V,
    /// Where the Deferred was created and first fired (recorded only while debugging).
    first: Option<(&'static Location<'static>, &'static Location<'static>)>,
    /// Where the fire that failed came from.
    again: Option<&'static Location<'static>>,
}

impl<V> AlreadyCalledError<V> {
    /// The error for a fire at `again` of a Deferred created and first fired at `first`
    /// (if recorded).
    pub(crate) fn at(
        value: V,
        first: Option<(&'static Location<'static>, &'static Location<'static>)>,
        again: &'static Location<'static>,
    ) -> Self {
        AlreadyCalledError { value, first, again: Some(again) }
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

    /// Where the fire that failed came from: the `callback`/`errback` call, or the
    /// `chain_deferred` step that fired the Deferred again.
    pub fn fired_again_at(&self) -> Option<&'static Location<'static>> {
        self.again
    }

    /// Where the Deferred was first fired, if [`set_debugging`](crate::set_debugging)
    /// was on then.
    pub fn first_fired_at(&self) -> Option<&'static Location<'static>> {
        self.first.map(|(_, fired)| fired)
    }

    /// Where the Deferred was created, recorded with [`first_fired_at`](Self::first_fired_at).
    pub fn created_at(&self) -> Option<&'static Location<'static>> {
        self.first.map(|(created, _)| created)
    }
}

impl<V> fmt::Debug for AlreadyCalledError<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlreadyCalledError")
            .field("created_at", &self.created_at().map(At))
            .field("first_fired_at", &self.first_fired_at().map(At))
            .field("fired_again_at", &self.again.map(At))
            .finish_non_exhaustive()
    }
}

impl<V> fmt::Display for AlreadyCalledError<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deferred already called")?;
        // Only with the debugging record: without it the message stays Twisted's plain
        // one (the second fire's place is still there, from `fired_again_at`).
        if let Some((created, first)) = self.first {
            write!(f, " (created at {}, first fired at {}", At(created), At(first))?;
            if let Some(again) = self.again {
                write!(f, "; fired again at {}", At(again))?;
            }
            f.write_str(")")?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::short_path;

    #[test]
    fn short_path_never_shows_an_absolute_path() {
        for (file, shown) in [
            ("src/deferred/mod.rs", "src/deferred/mod.rs"),
            (
                "/home/u/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/weft-0.1.0/src/deferred/mod.rs",
                "weft-0.1.0/src/deferred/mod.rs",
            ),
            ("/home/u/.cargo/git/checkouts/weft-3f2a/9c1e2b4/src/failure.rs", "src/failure.rs"),
            ("/rustc/59807616e1fa2540/library/core/src/ops/function.rs", "library/core/src/ops/function.rs"),
            ("/srv/build/peers/src/main.rs", "peers/src/main.rs"),
            ("/srv/build/weft/tests/it/main.rs", "weft/tests/it/main.rs"),
            ("/generated.rs", "generated.rs"),
        ] {
            assert_eq!(short_path(file), shown, "{file}");
        }
        let inside = format!("{}/examples/tour.rs", std::env::current_dir().unwrap().display());
        assert_eq!(short_path(&inside), "examples/tour.rs");
    }
}
