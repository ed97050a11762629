//! Ports of Synapse's StopCancellationTests, DelayCancellationTests, TimeoutDeferredTest.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use weft::{
    add_timeout, add_timeout_with, delay_cancellation, reverse_shield, stop_cancellation, timeout_deferred,
    CancelledError, Clock, Deferred, Failure, TimeoutError,
};

/// SY test_async_helpers.py StopCancellationTests.test_succeed / test_cancellation
#[test]
fn stop_cancellation_shields_the_inner() {
    let inner: Deferred<&str> = Deferred::new();
    let d = stop_cancellation(&inner);
    inner.callback("yes").unwrap();
    assert_eq!(d.result().unwrap().unwrap(), "yes");

    let inner: Deferred<&str> = Deferred::new();
    let d = stop_cancellation(&inner);
    d.cancel();
    assert!(d.take_result().unwrap().unwrap_err().check::<CancelledError>());
    assert!(!inner.is_called());
    inner.callback("late").unwrap(); // no AlreadyCalledError to the responder
}

/// SY test_async_helpers.py DelayCancellationTests.test_cancellation
#[test]
fn delay_cancellation_waits_for_inner() {
    let inner: Deferred<u8> = Deferred::new();
    let d = delay_cancellation(&inner);
    let seen = std::rc::Rc::new(std::cell::Cell::new(false));
    let s = seen.clone();
    d.add_errback(move |f: Failure| -> Result<u8, Failure> {
        s.set(true);
        Err(f)
    });
    d.cancel();
    assert!(!seen.get(), "the CancelledError waits for the inner deferred");
    assert!(!inner.is_called(), "the inner deferred is not cancelled");
    inner.callback(1).unwrap();
    assert!(seen.get());
    assert!(d.take_result().unwrap().unwrap_err().check::<CancelledError>());
}

/// SY test_async_helpers.py DelayCancellationTests.test_succeed
#[test]
fn delay_cancellation_passes_result() {
    let inner: Deferred<u8> = Deferred::new();
    let d = delay_cancellation(&inner);
    inner.callback(4).unwrap();
    assert_eq!(d.take_result().unwrap().unwrap(), 4);
}

/// SY test_async_helpers.py TimeoutDeferredTest.test_times_out
#[test]
fn timeout_deferred_times_out_and_cancels() {
    let clock = Clock::new();
    let cancelled = std::rc::Rc::new(std::cell::Cell::new(false));
    let c = cancelled.clone();
    let non_completing: Deferred<u8> = Deferred::with_canceller(move |_| c.set(true));
    let d = timeout_deferred(&non_completing, Duration::from_secs(1), &clock);
    clock.advance(Duration::from_millis(999));
    assert!(!d.is_called());
    clock.advance(Duration::from_millis(1));
    assert!(cancelled.get());
    assert!(d.take_result().unwrap().unwrap_err().check::<TimeoutError>());
}

/// SY test_async_helpers.py TimeoutDeferredTest.test_times_out_when_canceller_throws
#[test]
fn timeout_deferred_times_out_even_if_inner_ignores_cancel() {
    let clock = Clock::new();
    let stubborn: Deferred<u8> = Deferred::with_canceller(|_| panic!("cannot cancel"));
    let d = timeout_deferred(&stubborn, Duration::from_secs(1), &clock);
    clock.advance(Duration::from_secs(1));
    assert!(d.take_result().unwrap().unwrap_err().check::<TimeoutError>());
    let _ = stubborn.take_result();
}

#[test]
fn timeout_deferred_cancel_from_elsewhere_stays_cancelled() {
    let clock = Clock::new();
    let inner: Deferred<u8> = Deferred::new();
    let d = timeout_deferred(&inner, Duration::from_secs(1), &clock);
    d.cancel();
    assert!(d.take_result().unwrap().unwrap_err().check::<CancelledError>());
    assert_eq!(clock.pending_calls(), 0, "the timer is stopped");
}

/// TW test_defer.py DeferredTests.test_timeOutWithTimeout / test_timedOutCustom-like
#[test]
fn add_timeout_converts_only_its_own_cancel() {
    let clock = Clock::new();
    let d: Deferred<u8> = Deferred::new();
    add_timeout(&d, Duration::from_secs(2), &clock);
    clock.advance(Duration::from_secs(2));
    assert!(d.take_result().unwrap().unwrap_err().check::<TimeoutError>());

    let d: Deferred<u8> = Deferred::new();
    add_timeout(&d, Duration::from_secs(2), &clock);
    d.cancel();
    assert!(d.take_result().unwrap().unwrap_err().check::<CancelledError>());
    clock.advance(Duration::from_secs(5));

    let d: Deferred<u8> = Deferred::new();
    add_timeout(&d, Duration::from_secs(2), &clock);
    d.callback(1).unwrap();
    assert_eq!(clock.pending_calls(), 0);
    assert_eq!(d.take_result().unwrap().unwrap(), 1);
}

#[test]
fn reverse_shield_converts_only_foreign_cancels() {
    let callee: Deferred<u8> = Deferred::new();
    let mine = reverse_shield(callee.clone(), |_| Failure::msg("callee died"));
    callee.cancel();
    let f = mine.take_result().unwrap().unwrap_err();
    assert!(!f.check::<CancelledError>());
    let callee: Deferred<u8> = Deferred::new();
    let mine = reverse_shield(callee.clone(), |_| Failure::msg("callee died"));
    mine.cancel();
    assert!(mine.take_result().unwrap().unwrap_err().check::<CancelledError>());
}

// ---- add_timeout: Twisted's test_defer.py timeout tests ----

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// TW test_defer.py DeferredTests.test_timedOutCustom: the translator gets the
/// timeout's `CancelledError` and the timeout, and its result goes down the chain.
#[test]
fn add_timeout_with_translates_the_timeouts_outcome() {
    let clock = Clock::new();
    let d: Deferred<String> = Deferred::new();
    add_timeout_with(&d, secs(10), &clock, |r, timeout| {
        assert!(r.unwrap_err().check::<CancelledError>());
        Ok(format!("OVERRIDDEN after {timeout:?}"))
    });
    clock.advance(secs(15));
    assert_eq!(d.take_result().unwrap().unwrap(), "OVERRIDDEN after 10s");
}

/// TW test_defer.py DeferredTests.test_timedOutProvidedCancelSuccess and
/// test_timedOutProvidedCancelFailure: a canceller that supplies an outcome wins over
/// the TimeoutError.
#[test]
fn a_canceller_that_fires_decides_the_outcome_of_a_timeout() {
    let clock = Clock::new();
    let d: Deferred<&str> = Deferred::with_canceller(|d: &Deferred<&str>| {
        let _ = d.callback("CANCELLED");
    });
    add_timeout(&d, secs(10), &clock);
    clock.advance(secs(15));
    assert_eq!(d.take_result().unwrap().unwrap(), "CANCELLED");

    let d: Deferred<&str> = Deferred::with_canceller(|d: &Deferred<&str>| {
        let _ = d.errback(Failure::msg("what!"));
    });
    add_timeout(&d, secs(10), &clock);
    clock.advance(secs(15));
    let f = d.take_result().unwrap().unwrap_err();
    assert!(!f.check::<TimeoutError>() && !f.check::<CancelledError>(), "{f}");
}

/// TW test_defer.py DeferredTests.test_cancelBeforeTimeoutCustom: a cancel before the
/// timeout is not handed to the translator.
#[test]
fn add_timeout_with_leaves_an_earlier_cancel_alone() {
    let clock = Clock::new();
    let d: Deferred<String> = Deferred::new();
    add_timeout_with(&d, secs(10), &clock, |_, _| Ok("OVERRIDDEN".to_string()));
    d.cancel();
    assert!(d.take_result().unwrap().unwrap_err().check::<CancelledError>());
    assert_eq!(clock.pending_calls(), 0);
}

/// TW test_defer.py DeferredTests.test_errbackAddedBeforeTimeoutSuppressesCancellation
/// (test_errbackAddedBeforeTimeout is in `timeouts_name_the_line_that_set_them`).
#[test]
fn an_errback_added_before_a_timeout_may_suppress_it() {
    let clock = Clock::new();
    let d: Deferred<u8> = Deferred::new();
    d.add_errback(|_: Failure| -> Result<u8, Failure> { Ok(0) });
    add_timeout(&d, secs(10), &clock);
    clock.advance(secs(15));
    assert_eq!(d.take_result().unwrap().unwrap(), 0);
}

/// Twisted keeps "timed out" once the timer fired: a chain paused when the timeout
/// cancels it still gets the TimeoutError when it resumes. Before, the conversion held
/// only while the timer's cancel ran, and the resumed chain saw a bare CancelledError.
#[test]
fn a_paused_chain_gets_the_timeout_error_when_it_resumes() {
    let clock = Clock::new();
    let d: Deferred<u8> = Deferred::new();
    add_timeout(&d, secs(1), &clock);
    d.pause();
    clock.advance(secs(1));
    d.unpause().unwrap();
    assert!(d.take_result().unwrap().unwrap_err().check::<TimeoutError>());
}

/// `add_timeout` and `timeout_deferred` take (deferred, timeout, time) and are
/// `#[track_caller]`: the timeout's `CancelledError` and `TimeoutError` name the line
/// that set the timeout, not weft's. Before, both named src/cancellation.rs. Also
/// TW test_defer.py DeferredTests.test_errbackAddedBeforeTimeout: an errback added
/// before the timeout sees the `CancelledError`, those after the `TimeoutError`.
#[test]
fn timeouts_name_the_line_that_set_them() {
    let clock = Clock::new();
    let d: Deferred<u8> = Deferred::new();
    let cancelled_at = cancel_seen_at(&d);
    add_timeout(&d, secs(1), &clock);
    check_timeout_names(&clock, &d, &cancelled_at, line!() - 1);

    let slow: Deferred<u8> = Deferred::new();
    let cancelled_at = cancel_seen_at(&slow);
    let d = timeout_deferred(&slow, secs(1), &clock);
    check_timeout_names(&clock, &d, &cancelled_at, line!() - 1);
}

/// Lets the 1 s timeout on `d` fire and checks that its `TimeoutError` and the
/// `CancelledError` seen before it name `line` of this file.
#[track_caller]
fn check_timeout_names(clock: &Clock, d: &Deferred<u8>, cancelled_at: &Cell<Option<(&str, u32)>>, line: u32) {
    clock.advance(secs(1));
    let f = d.take_result().unwrap().unwrap_err();
    assert!(f.check::<TimeoutError>());
    assert_eq!((f.location().file(), f.location().line()), (file!(), line));
    assert_eq!(cancelled_at.get(), Some((file!(), line)));
}

/// Adds an errback to `d` that records where the `CancelledError` it sees was started
/// (file and line), and passes the failure on.
fn cancel_seen_at(d: &Deferred<u8>) -> Rc<Cell<Option<(&'static str, u32)>>> {
    let seen = Rc::new(Cell::new(None));
    let s = seen.clone();
    d.add_errback(move |f: Failure| -> Result<u8, Failure> {
        s.set(f.downcast_ref::<CancelledError>().map(|e| (e.location().file(), e.location().line())));
        Err(f)
    });
    seen
}

/// `timeout_deferred` owns its source until it settles: a cancel reaches a source the
/// caller did not keep.
#[test]
fn timeout_deferred_cancel_reaches_a_source_the_caller_did_not_keep() {
    let clock = Clock::new();
    let d = timeout_deferred(
        &Deferred::with_canceller(|d| d.callback(5u8).unwrap()),
        Duration::from_secs(1),
        &clock,
    );
    d.cancel();
    assert_eq!(d.take_result().unwrap().unwrap(), 5);
}

/// SY test_async_helpers.py DelayCancellationTests.test_cancellation: once the wrapper is
/// cancelled, the original's failure is consumed ("otherwise unwanted tracebacks will be
/// printed when GC happens"): it is marked handled, so dropping the original reports
/// nothing, and the wrapper still fails with `CancelledError`.
#[test]
fn delay_cancellation_consumes_the_original_failure_once_cancelled() {
    let ((), errors) = crate::support::logs::errors_during(|| {
        let original: Deferred<u8> = Deferred::new();
        let wrapper = delay_cancellation(&original);
        wrapper.cancel();
        assert!(!original.is_called(), "the original is not cancelled");
        original.errback(Failure::msg("abc")).unwrap();
        assert!(wrapper.take_result().unwrap().unwrap_err().check::<CancelledError>());
        drop(original);
    });
    assert!(errors.is_empty(), "{errors:?}");
}
