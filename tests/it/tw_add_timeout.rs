//! Ports of Twisted's `DeferredAddTimeoutTests` (test_defer.py) not covered in
//! `cancellation.rs`: `add_timeout` and `add_timeout_with` on the deterministic clock.

use std::cell::RefCell;
use std::rc::Rc;

use weft::{add_timeout, add_timeout_with, CancelledError, Clock, Deferred, Failure, TimeoutError};

use crate::support::secs;

type Seen<T> = Rc<RefCell<Option<T>>>;

/// Twisted's `_overrideFunc`.
fn overridden(_: Result<String, Failure>, _: std::time::Duration) -> Result<String, Failure> {
    Ok("OVERRIDDEN".to_string())
}

/// Gives `d` a timeout of ten seconds on `clock`, with Twisted's `_overrideFunc` as the
/// translation if `custom`.
fn ten_second_timeout(d: &Deferred<String>, clock: &Clock, custom: bool) {
    if custom {
        add_timeout_with(d, secs(10), clock, overridden);
    } else {
        add_timeout(d, secs(10), clock);
    }
}

/// Adds to `d` a callback that records the value and returns `inner` (not yet fired).
fn on_callback_return(d: &Deferred<String>, inner: &Deferred<String>) -> Seen<String> {
    let seen: Seen<String> = Rc::new(RefCell::new(None));
    let (s, i) = (seen.clone(), inner.clone());
    d.add_callback(move |v: String| {
        *s.borrow_mut() = Some(v);
        i
    });
    seen
}

/// Adds to `d` an errback that records the failure and returns `inner` (not yet fired).
fn on_errback_return(d: &Deferred<String>, inner: &Deferred<String>) -> Seen<Failure> {
    let seen: Seen<Failure> = Rc::new(RefCell::new(None));
    let (s, i) = (seen.clone(), inner.clone());
    d.add_errback(move |f: Failure| {
        *s.borrow_mut() = Some(f);
        i
    });
    seen
}

/// Adds to `d` an errback that records the failure and passes it on.
fn errback_passing_on(d: &Deferred<String>) -> Seen<Failure> {
    let seen: Seen<Failure> = Rc::new(RefCell::new(None));
    let s = seen.clone();
    d.add_errback(move |f: Failure| {
        *s.borrow_mut() = Some(f.clone());
        Err::<String, _>(f)
    });
    seen
}

/// TW test_defer.py DeferredAddTimeoutTests.test_timeoutChainable: callbacks go on being
/// added after the timeout.
#[test]
fn a_timeout_is_one_step_of_the_chain() {
    let d: Deferred<String> = Deferred::new();
    add_timeout(&d, secs(5), &Clock::new());
    d.add_callback(|_| "done".to_string());
    d.callback(String::new()).unwrap();
    assert_eq!(d.take_result().unwrap().unwrap(), "done");
}

/// TW test_defer.py DeferredAddTimeoutTests.test_successResultBeforeTimeout and
/// test_successResultBeforeTimeoutCustom: a result before the timeout goes through, and
/// the timeout never cancels what a later callback returned.
#[test]
fn a_result_before_the_timeout_goes_through_and_nothing_is_cancelled_later() {
    for custom in [false, true] {
        let clock = Clock::new();
        let d: Deferred<String> = Deferred::new();
        ten_second_timeout(&d, &clock, custom);
        let inner: Deferred<String> = Deferred::new();
        let seen = on_callback_return(&d, &inner);
        d.callback("results".to_string()).unwrap();
        assert_eq!(seen.borrow().as_deref(), Some("results"));
        clock.advance(secs(15));
        assert!(!inner.is_called(), "custom: {custom}");
    }
}

/// TW test_defer.py DeferredAddTimeoutTests.test_failureBeforeTimeout and
/// test_failureBeforeTimeoutCustom
#[test]
fn a_failure_before_the_timeout_goes_through_and_nothing_is_cancelled_later() {
    for custom in [false, true] {
        let clock = Clock::new();
        let d: Deferred<String> = Deferred::new();
        ten_second_timeout(&d, &clock, custom);
        let inner: Deferred<String> = Deferred::new();
        let seen = on_errback_return(&d, &inner);
        let error = Failure::msg("fail");
        d.errback(error.clone()).unwrap();
        assert!(Failure::ptr_eq(seen.borrow().as_ref().unwrap(), &error));
        clock.advance(secs(15));
        assert!(!inner.is_called(), "custom: {custom}");
    }
}

/// TW test_defer.py DeferredAddTimeoutTests.test_timedOut
#[test]
fn no_result_by_the_timeout_is_a_timeout_error() {
    let clock = Clock::new();
    let d: Deferred<()> = Deferred::new();
    add_timeout(&d, secs(10), &clock);
    assert!(!d.is_called());
    clock.advance(secs(15));
    assert!(d.take_result().unwrap().unwrap_err().check::<TimeoutError>());
}

/// TW test_defer.py DeferredAddTimeoutTests.test_cancelBeforeTimeout: a cancel before
/// the timeout stays a `CancelledError`, and the timer does not cancel again later.
#[test]
fn a_cancel_before_the_timeout_stays_a_cancel() {
    let clock = Clock::new();
    let d: Deferred<String> = Deferred::new();
    add_timeout(&d, secs(10), &clock);
    let inner: Deferred<String> = Deferred::new();
    let seen = on_errback_return(&d, &inner);
    d.cancel();
    assert!(seen.borrow().as_ref().unwrap().check::<CancelledError>());
    assert!(!seen.borrow().as_ref().unwrap().check::<TimeoutError>());
    clock.advance(secs(15));
    assert!(!inner.is_called());
    assert!(clock.get_delayed_calls().is_empty(), "the timer was stopped");
}

/// TW test_defer.py DeferredAddTimeoutTests.test_providedCancelCalledBeforeTimeoutCustom:
/// the translation runs on whatever the Deferred's own canceller produced.
#[test]
fn the_translation_handles_a_canceller_that_fails() {
    let clock = Clock::new();
    let d: Deferred<String> =
        Deferred::with_canceller(|d: &Deferred<String>| d.errback(Failure::msg("what!")).unwrap());
    add_timeout_with(&d, secs(10), &clock, overridden);
    assert!(!d.is_called());
    clock.advance(secs(15));
    assert_eq!(d.take_result().unwrap().unwrap(), "OVERRIDDEN");
}

/// TW test_defer.py DeferredAddTimeoutTests.test_errbackAddedBeforeTimeoutCustom: an
/// errback added before the timeout sees the `CancelledError`; the translation then runs.
#[test]
fn an_errback_before_a_custom_timeout_sees_the_cancel() {
    let clock = Clock::new();
    let d: Deferred<String> = Deferred::new();
    let seen = errback_passing_on(&d);
    add_timeout_with(&d, secs(10), &clock, overridden);
    clock.advance(secs(15));
    assert!(seen.borrow().as_ref().unwrap().check::<CancelledError>());
    assert_eq!(d.take_result().unwrap().unwrap(), "OVERRIDDEN");
}

/// TW test_defer.py DeferredAddTimeoutTests.test_errbackAddedBeforeTimeoutSuppressesCancellationCustom:
/// the translation runs even when an earlier errback turned the cancel into a value.
#[test]
fn a_custom_timeout_translates_a_suppressed_cancel_too() {
    let clock = Clock::new();
    let d: Deferred<String> = Deferred::new();
    let seen: Seen<Failure> = Rc::new(RefCell::new(None));
    let s = seen.clone();
    d.add_errback(move |f: Failure| {
        *s.borrow_mut() = Some(f);
        String::new()
    });
    add_timeout_with(&d, secs(10), &clock, overridden);
    clock.advance(secs(15));
    assert!(seen.borrow().as_ref().unwrap().check::<CancelledError>());
    assert_eq!(d.take_result().unwrap().unwrap(), "OVERRIDDEN");
}

/// TW test_defer.py DeferredAddTimeoutTests.test_callbackAddedToCancelerBeforeTimeout and
/// test_callbackAddedToCancelerBeforeTimeoutCustom: a canceller that fires the Deferred
/// with a value makes the timeout a success, a callback added before the timeout sees
/// that value, and a custom translation still runs on it.
#[test]
fn a_canceller_that_succeeds_makes_the_timeout_a_success() {
    for custom in [false, true] {
        let clock = Clock::new();
        let d: Deferred<String> =
            Deferred::with_canceller(|d: &Deferred<String>| d.callback("success".to_string()).unwrap());
        let seen: Seen<String> = Rc::new(RefCell::new(None));
        let s = seen.clone();
        d.add_callback(move |v: String| {
            *s.borrow_mut() = Some(v.clone());
            v
        });
        ten_second_timeout(&d, &clock, custom);
        clock.advance(secs(15));
        assert_eq!(seen.borrow().as_deref(), Some("success"));
        let expected = if custom { "OVERRIDDEN" } else { "success" };
        assert_eq!(d.take_result().unwrap().unwrap(), expected);
    }
}
