//! Helpers shared by the test modules.

use std::cell::{Cell, RefCell};
use std::error::Error;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use weft::{CancelledError, Deferred, Failure, Reactor};

pub(crate) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub(crate) fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

pub(crate) fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Runs `reactor` until stopped, failing the test if `limit` passes first.
#[track_caller]
pub(crate) fn run_bounded(reactor: &Reactor, limit: Duration) {
    let timed_out = Rc::new(Cell::new(false));
    let (t, h) = (timed_out.clone(), reactor.handle());
    let guard = reactor.call_later(limit, move || {
        t.set(true);
        h.stop();
    });
    reactor.run();
    let _ = guard.cancel();
    assert!(!timed_out.get(), "the reactor test did not finish within {limit:?}");
}

/// One capturing logger for the whole test binary (`log` allows one per process).
///
/// It sits behind weft's `ContextLogger`, so each record carries the request id of the
/// log context it was made in, and keeps records per thread: tests run on their own
/// threads and each sees only its own records.
pub(crate) mod logs {
    use std::cell::RefCell;
    use std::sync::Once;

    use weft::logcontext::ContextLogger;

    struct Capture;

    thread_local! {
        static RECORDS: RefCell<Vec<(log::Level, String)>> = const { RefCell::new(Vec::new()) };
    }

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }

        fn log(&self, record: &log::Record<'_>) {
            RECORDS.with(|r| r.borrow_mut().push((record.level(), record.args().to_string())));
        }

        fn flush(&self) {}
    }

    /// Installs the logger (once per binary) and empties this thread's records.
    pub(crate) fn capture() {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| ContextLogger::new(Capture).install(log::LevelFilter::Trace).unwrap());
        RECORDS.with(|r| r.borrow_mut().clear());
    }

    /// This thread's records since the last `capture()`.
    pub(crate) fn records() -> Vec<(log::Level, String)> {
        RECORDS.with(|r| r.borrow().clone())
    }

    /// Runs `f` and returns the messages logged at error level on this thread meanwhile.
    pub(crate) fn errors_during<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
        capture();
        let out = f();
        let errors = RECORDS.with(|r| {
            r.borrow_mut()
                .drain(..)
                .filter(|(level, _)| *level == log::Level::Error)
                .map(|(_, m)| m)
                .collect()
        });
        (out, errors)
    }
}

// ---------------------------------------------------------------------------------------
// Deferred helpers (Twisted trial's `successResultOf` and friends)
// ---------------------------------------------------------------------------------------

/// The error most tests fail with (Twisted's `GenericError`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GenericError(pub(crate) &'static str);

impl fmt::Display for GenericError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "generic error: {}", self.0)
    }
}

impl Error for GenericError {}

/// A shared, ordered record of what ran.
#[derive(Clone, Default)]
pub(crate) struct Trace(Rc<RefCell<Vec<String>>>);

impl Trace {
    pub(crate) fn new() -> Trace {
        Trace::default()
    }

    pub(crate) fn push(&self, event: impl Into<String>) {
        self.0.borrow_mut().push(event.into());
    }

    pub(crate) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.borrow_mut())
    }

    pub(crate) fn len(&self) -> usize {
        self.0.borrow().len()
    }
}

/// Counts how many times it is dropped, to prove captured values are freed.
pub(crate) struct DropCount(pub(crate) Rc<Cell<u32>>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// The finished value of `d`, taken out (Twisted's `successResultOf`).
#[track_caller]
pub(crate) fn success_result_of<T: fmt::Debug>(d: &Deferred<T>) -> T {
    match d.take_result() {
        Some(Ok(v)) => v,
        Some(Err(f)) => panic!("expected a value, got failure {f}"),
        None => panic!("expected a result, deferred has none: {d:?}"),
    }
}

/// The finished failure of `d`, taken out and checked to hold an `E` (Twisted's
/// `failureResultOf`).
#[track_caller]
pub(crate) fn failure_result_of<E: Error + 'static, T: fmt::Debug>(d: &Deferred<T>) -> Failure {
    match d.take_result() {
        Some(Err(f)) => {
            assert!(f.check::<E>(), "expected a {} failure, got {f}", std::any::type_name::<E>());
            f
        }
        Some(Ok(v)) => panic!("expected a failure, got value {v:?}"),
        None => panic!("expected a result, deferred has none: {d:?}"),
    }
}

/// The `CancelledError` inside a failure.
#[track_caller]
pub(crate) fn cancelled(f: &Failure) -> CancelledError {
    f.downcast_ref::<CancelledError>().unwrap_or_else(|| panic!("not a CancelledError: {f}")).clone()
}

/// `d` has no result yet (Twisted's `assertNoResult`).
#[track_caller]
pub(crate) fn assert_no_result<T>(d: &Deferred<T>) {
    assert!(!d.has_result(), "expected no result: {d:?}");
}

/// A canceller that records `name` in `trace`.
pub(crate) fn record(trace: &Trace, name: &'static str) -> impl FnOnce(&CancelledError) + 'static {
    let t = trace.clone();
    move |_| t.push(name)
}
