//! Ports of Synapse's StopCancellationTests, DelayCancellationTests, TimeoutDeferredTest.

use std::time::Duration;

use weft::{
    add_timeout, delay_cancellation, reverse_shield, stop_cancellation, timeout_deferred, CancelledError,
    Clock, Deferred, Failure, TimeoutError,
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
    add_timeout(&d, &clock, Duration::from_secs(2));
    clock.advance(Duration::from_secs(2));
    assert!(d.take_result().unwrap().unwrap_err().check::<TimeoutError>());

    let d: Deferred<u8> = Deferred::new();
    add_timeout(&d, &clock, Duration::from_secs(2));
    d.cancel();
    assert!(d.take_result().unwrap().unwrap_err().check::<CancelledError>());
    clock.advance(Duration::from_secs(5));

    let d: Deferred<u8> = Deferred::new();
    add_timeout(&d, &clock, Duration::from_secs(2));
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
