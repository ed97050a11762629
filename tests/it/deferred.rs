//! The Deferred core through its public API: the behaviours of Twisted's
//! `src/twisted/test/test_defer.py` that apply to weft, plus the canceller chain.
//!
//! Each test names the Twisted test it ports with a `/// TW test_defer.py test_xxx` line;
//! tests without one check weft's own additions (typed chains, the canceller chain,
//! `CancelId`, drop behaviour).

use std::cell::{Cell, RefCell};
use std::error::Error;
use std::fmt;
use std::rc::Rc;

use weft::{
    fail, maybe_deferred, succeed, AlreadyCalledError, CancelledError, ChainedToSelfError, Deferred, Failure,
    NotPausedError, PanicError, ResultConsumedError,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The error most tests fail with (Twisted's `GenericError`).
#[derive(Debug, Clone, PartialEq)]
struct GenericError(&'static str);

impl fmt::Display for GenericError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "generic error: {}", self.0)
    }
}

impl Error for GenericError {}

/// A shared, ordered record of what ran.
#[derive(Clone, Default)]
struct Trace(Rc<RefCell<Vec<String>>>);

impl Trace {
    fn new() -> Trace {
        Trace::default()
    }

    fn push(&self, event: impl Into<String>) {
        self.0.borrow_mut().push(event.into());
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.borrow_mut())
    }

    fn len(&self) -> usize {
        self.0.borrow().len()
    }
}

/// Counts how many times it is dropped, to prove captured values are freed.
struct DropCount(Rc<Cell<u32>>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// The finished value of `d`, taken out (Twisted's `successResultOf`).
#[track_caller]
fn success_result_of<T: fmt::Debug>(d: &Deferred<T>) -> T {
    match d.take_result() {
        Some(Ok(v)) => v,
        Some(Err(f)) => panic!("expected a value, got failure {f}"),
        None => panic!("expected a result, deferred has none: {d:?}"),
    }
}

/// The finished failure of `d`, taken out and checked to hold an `E` (Twisted's
/// `failureResultOf`).
#[track_caller]
fn failure_result_of<E: Error + 'static, T: fmt::Debug>(d: &Deferred<T>) -> Failure {
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
fn cancelled(f: &Failure) -> CancelledError {
    f.downcast_ref::<CancelledError>().unwrap_or_else(|| panic!("not a CancelledError: {f}")).clone()
}

/// `d` has no result yet (Twisted's `assertNoResult`).
#[track_caller]
fn assert_no_result<T>(d: &Deferred<T>) {
    assert!(!d.has_result(), "expected no result: {d:?}");
}

use crate::support::logs;

// ---------------------------------------------------------------------------------------
// Callbacks, errbacks and the values flowing through them
// ---------------------------------------------------------------------------------------

/// TW test_defer.py testCallbackWithoutArgs
#[test]
fn callback_gets_the_fired_value() {
    let d: Deferred<&str> = Deferred::new();
    let trace = Trace::new();
    let (t, e) = (trace.clone(), trace.clone());
    d.add_callbacks(
        move |v| {
            t.push(format!("callback {v}"));
            v
        },
        move |f| -> Result<&str, Failure> {
            e.push("errback");
            Err(f)
        },
    );
    assert_eq!(trace.len(), 0);
    d.callback("hello").unwrap();
    assert_eq!(trace.take(), ["callback hello"]);
    assert_eq!(success_result_of(&d), "hello");
}

/// TW test_defer.py testTwoCallbacks
#[test]
fn callbacks_run_in_the_order_added_and_pass_values_on() {
    let d: Deferred<i32> = Deferred::new();
    let trace = Trace::new();
    for step in 0..5 {
        let t = trace.clone();
        d.add_callback(move |x| {
            t.push(format!("{step}:{x}"));
            x * 10 + step
        });
    }
    d.callback(1).unwrap();
    assert_eq!(trace.take(), ["0:1", "1:10", "2:101", "3:1012", "4:10123"]);
    assert_eq!(success_result_of(&d), 101234);
}

/// TW test_defer.py test_addCallbacksNoneErrback
#[test]
fn a_failure_passes_callbacks_by_to_the_next_errback() {
    let d: Deferred<i32> = Deferred::new();
    let trace = Trace::new();
    let (t1, t2) = (trace.clone(), trace.clone());
    d.add_callback(move |x| {
        t1.push("callback");
        x
    })
    .add_errback(move |f: Failure| -> Result<i32, Failure> {
        t2.push(format!("errback {}", f.downcast_ref::<GenericError>().unwrap().0));
        Err(f)
    });
    d.errback(GenericError("oopsie")).unwrap();
    assert_eq!(trace.take(), ["errback oopsie"]);
    let f = failure_result_of::<GenericError, _>(&d);
    assert_eq!(f.downcast_ref::<GenericError>(), Some(&GenericError("oopsie")));
}

/// TW test_defer.py testImmediateFailure
#[test]
fn errback_recovers_into_a_value_for_the_next_callback() {
    let d: Deferred<String> = Deferred::new();
    let trace = Trace::new();
    let t = trace.clone();
    d.add_errback(|f: Failure| format!("recovered from {}", f.downcast_ref::<GenericError>().unwrap().0))
        .add_callback(move |s| {
            t.push(s.clone());
            s.to_uppercase()
        });
    d.errback(GenericError("boom")).unwrap();
    assert_eq!(trace.take(), ["recovered from boom"]);
    assert_eq!(success_result_of(&d), "RECOVERED FROM BOOM");
}

/// TW test_defer.py testCallbackErrors
#[test]
fn callback_returning_err_goes_down_the_errback_chain() {
    let d: Deferred<i32> = Deferred::new();
    let trace = Trace::new();
    let (t1, t2, t3) = (trace.clone(), trace.clone(), trace.clone());
    d.add_callback(|_| -> Result<i32, Failure> { Err(Failure::new(GenericError("division"))) })
        .add_callback(move |x| {
            t1.push("skipped callback");
            x
        })
        .add_errback(move |f: Failure| {
            t2.push(format!("errback {}", f.downcast_ref::<GenericError>().unwrap().0));
            -1
        })
        .add_callback(move |x| {
            t3.push(format!("callback {x}"));
            x
        });
    d.callback(1).unwrap();
    assert_eq!(trace.take(), ["errback division", "callback -1"]);
    assert_eq!(success_result_of(&d), -1);
}

/// TW test_defer.py test_callbackMaybeReturnsFailure
#[test]
fn callback_may_return_ok_or_err_and_the_same_failure_arrives() {
    let maybe_fail = |fail_it: bool| {
        move |x: i32| -> Result<i32, Failure> {
            if fail_it {
                Err(Failure::new(GenericError("rte")))
            } else {
                Ok(x + 1)
            }
        }
    };
    let d = succeed(6);
    d.add_callback(maybe_fail(false));
    assert_eq!(success_result_of(&d), 7);

    let seen = Rc::new(RefCell::new(None));
    let s = seen.clone();
    let d = succeed(6);
    d.add_callback(maybe_fail(true)).add_errback(move |f: Failure| -> Result<i32, Failure> {
        *s.borrow_mut() = Some(f.clone());
        Err(f)
    });
    d.add_callback(maybe_fail(true));
    let f = failure_result_of::<GenericError, _>(&d);
    // The failure is handed on, not copied: the errback saw the very same one.
    assert!(Failure::ptr_eq(&f, seen.borrow().as_ref().unwrap()));
}

/// TW test_defer.py test_addCallbacksNoneCallbackArgs
#[test]
fn add_callbacks_runs_exactly_one_of_its_pair() {
    #[track_caller]
    fn check(fire_ok: bool, expected: &[&str], expected_result: Result<i32, &'static str>) {
        let d: Deferred<i32> = Deferred::new();
        let trace = Trace::new();
        let (t1, t2, t3, t4) = (trace.clone(), trace.clone(), trace.clone(), trace.clone());
        d.add_callbacks(
            move |x| {
                t1.push(format!("cb1 {x}"));
                x + 1
            },
            move |f: Failure| -> Result<i32, Failure> {
                t2.push(format!("eb1 {}", f.downcast_ref::<GenericError>().unwrap().0));
                Err(f)
            },
        )
        .add_callbacks(
            move |x| -> Result<i32, Failure> {
                t3.push(format!("cb2 {x}"));
                Err(Failure::new(GenericError("from cb2")))
            },
            move |f: Failure| {
                t4.push(format!("eb2 {}", f.downcast_ref::<GenericError>().unwrap().0));
                100
            },
        );
        if fire_ok {
            d.callback(1).unwrap();
        } else {
            d.errback(GenericError("fired")).unwrap();
        }
        assert_eq!(trace.take(), expected);
        match (d.take_result().unwrap(), expected_result) {
            (Ok(v), Ok(e)) => assert_eq!(v, e),
            (Err(f), Err(e)) => assert_eq!(f.downcast_ref::<GenericError>().unwrap().0, e),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }
    check(true, &["cb1 1", "cb2 2"], Err("from cb2"));
    // The errback of the same pair does not see what its callback returned.
    check(false, &["eb1 fired", "eb2 fired"], Ok(100));
}

/// Twisted has no direct test of `addBoth`; it is used throughout test_defer.py.
#[test]
fn add_both_sees_values_and_failures() {
    let trace = Trace::new();
    let both = |t: Trace| {
        move |r: Result<i32, Failure>| -> Result<i32, Failure> {
            match &r {
                Ok(v) => t.push(format!("value {v}")),
                Err(f) => t.push(format!("failure {}", f.downcast_ref::<GenericError>().unwrap().0)),
            }
            r
        }
    };
    let ok: Deferred<i32> = Deferred::new();
    ok.add_both(both(trace.clone())).add_both(|r| r.map(|v| v * 2));
    ok.callback(4).unwrap();
    let bad: Deferred<i32> = Deferred::new();
    bad.add_both(both(trace.clone())).add_both(|r: Result<i32, Failure>| r.unwrap_or(-7));
    bad.errback(GenericError("bad")).unwrap();
    assert_eq!(trace.take(), ["value 4", "failure bad"]);
    assert_eq!(success_result_of(&ok), 8);
    assert_eq!(success_result_of(&bad), -7);
}

/// TW test_defer.py testImmediateSuccess
#[test]
fn callbacks_added_after_firing_run_at_once() {
    let d: Deferred<&str> = Deferred::new();
    d.callback("early").unwrap();
    let trace = Trace::new();
    let t = trace.clone();
    d.add_callback(move |v| {
        t.push(v);
        "later"
    });
    assert_eq!(trace.take(), ["early"]);
    let t = trace.clone();
    d.add_callback(move |v| {
        t.push(v);
        v
    });
    assert_eq!(trace.take(), ["later"]);
    assert!(d.is_called());
    assert_eq!(success_result_of(&d), "later");
}

/// TW test_defer.py testImmediateSuccess
#[test]
fn succeed_is_already_called_with_its_value() {
    let d = succeed("success");
    assert!(d.is_called());
    assert!(d.has_result());
    let trace = Trace::new();
    let t = trace.clone();
    d.add_callback(move |v| {
        t.push(v);
        v
    });
    assert_eq!(trace.take(), ["success"]);
    assert_eq!(d.result().unwrap().unwrap(), "success");
}

/// TW test_defer.py testImmediateFailure
#[test]
fn fail_is_already_called_with_its_failure() {
    let d: Deferred<u8> = fail(GenericError("fail"));
    assert!(d.is_called());
    let trace = Trace::new();
    let t = trace.clone();
    d.add_errback(move |f: Failure| {
        t.push(f.downcast_ref::<GenericError>().unwrap().0);
        0
    });
    assert_eq!(trace.take(), ["fail"]);
    assert_eq!(success_result_of(&d), 0);
}

/// TW test_defer.py test_errbackReturnsDeferred
#[test]
fn errback_can_return_a_deferred_to_wait_on() {
    let d: Deferred<&str> = Deferred::new();
    let d2: Deferred<&str> = Deferred::new();
    let trace = Trace::new();
    let (inner, t) = (d2.clone(), trace.clone());
    d.add_errback(move |_f: Failure| inner).add_callback(move |v| {
        t.push(v);
        v
    });
    d.errback(GenericError("value error")).unwrap();
    assert_no_result(&d);
    assert!(d.is_paused());
    assert_eq!(trace.len(), 0);
    d2.callback("result").unwrap();
    assert_eq!(trace.take(), ["result"]);
    assert_eq!(success_result_of(&d), "result");
}

// ---------------------------------------------------------------------------------------
// maybe_deferred
// ---------------------------------------------------------------------------------------

/// TW test_defer.py test_maybeDeferredSync
#[test]
fn maybe_deferred_wraps_a_plain_value() {
    let d: Deferred<i32> = maybe_deferred(|| 10 + 5);
    assert_eq!(success_result_of(&d), 15);
    let d: Deferred<i32> = maybe_deferred(|| -> Result<i32, Failure> { Ok(3) });
    assert_eq!(success_result_of(&d), 3);
}

/// TW test_defer.py test_maybeDeferredSyncFailure
#[test]
fn maybe_deferred_wraps_an_err_as_the_same_failure() {
    let expected = Failure::new(GenericError("type error"));
    let e = expected.clone();
    let d: Deferred<i32> = maybe_deferred(move || -> Result<i32, Failure> { Err(e) });
    let f = failure_result_of::<GenericError, _>(&d);
    assert!(Failure::ptr_eq(&f, &expected));
}

/// TW test_defer.py test_maybeDeferredSyncException
#[test]
fn maybe_deferred_turns_a_panic_into_a_failure() {
    let d: Deferred<i32> = maybe_deferred(|| -> i32 { panic!("that value is unacceptable") });
    let f = failure_result_of::<PanicError, _>(&d);
    assert_eq!(f.downcast_ref::<PanicError>().unwrap().message(), "that value is unacceptable");
}

/// TW test_defer.py test_maybeDeferredAsync
#[test]
fn maybe_deferred_passes_a_deferred_through() {
    let d1: Deferred<&str> = Deferred::new();
    let inner = d1.clone();
    let d2: Deferred<&str> = maybe_deferred(move || inner);
    assert!(Deferred::ptr_eq(&d1, &d2));
    d1.callback("Success").unwrap();
    assert_eq!(success_result_of(&d2), "Success");
}

/// TW test_defer.py test_maybeDeferredAsyncError
#[test]
fn maybe_deferred_passes_a_later_failure_through() {
    let d1: Deferred<()> = Deferred::new();
    let inner = d1.clone();
    let d2: Deferred<()> = maybe_deferred(move || inner);
    d1.errback(GenericError("runtime")).unwrap();
    failure_result_of::<GenericError, _>(&d2);
}

// ---------------------------------------------------------------------------------------
// Panics in callbacks
// ---------------------------------------------------------------------------------------

/// TW test_defer.py testCallbackErrors (an exception raised in a callback)
#[test]
fn panic_in_a_callback_becomes_a_failure_and_does_not_unwind_through_callback() {
    let d: Deferred<i32> = Deferred::new();
    let trace = Trace::new();
    let (t1, t2) = (trace.clone(), trace.clone());
    d.add_callback(|x| -> i32 {
        if x == 1 {
            panic!("integer division by zero");
        }
        x
    })
    .add_callback(move |x| {
        t1.push("skipped");
        x
    })
    .add_errback(move |f: Failure| -> Result<i32, Failure> {
        t2.push(format!("errback: {}", f.downcast_ref::<PanicError>().unwrap().message()));
        Err(f)
    });
    // `callback` returns normally: the panic stays inside the chain.
    assert!(d.callback(1).is_ok());
    assert_eq!(trace.take(), ["errback: integer division by zero"]);
    failure_result_of::<PanicError, _>(&d);
}

#[test]
fn panic_in_an_errback_replaces_the_failure() {
    let d: Deferred<i32> = Deferred::new();
    d.add_errback(|_f: Failure| -> i32 { panic!("errback broke") });
    assert!(d.errback(GenericError("first")).is_ok());
    let f = failure_result_of::<PanicError, _>(&d);
    assert_eq!(f.downcast_ref::<PanicError>().unwrap().message(), "errback broke");
}

#[test]
fn panic_with_a_formatted_message_keeps_the_message() {
    let d = succeed(41);
    d.add_callback(|x| -> i32 { panic!("bad value {x}") });
    let f = failure_result_of::<PanicError, _>(&d);
    assert_eq!(f.downcast_ref::<PanicError>().unwrap().message(), "bad value 41");
}

// ---------------------------------------------------------------------------------------
// AlreadyCalledError
// ---------------------------------------------------------------------------------------

/// TW test_defer.py testAlreadyCalled_CC
#[test]
fn callback_twice_is_already_called_and_hands_the_value_back() {
    let d: Deferred<String> = Deferred::new();
    d.add_callbacks(|v| v, |f: Failure| -> Result<String, Failure> { Err(f) });
    d.callback("hello".to_string()).unwrap();
    let err: AlreadyCalledError<String> = d.callback("twice".to_string()).unwrap_err();
    assert_eq!(err.to_string(), "deferred already called");
    assert_eq!(err.into_inner(), "twice");
    assert_eq!(success_result_of(&d), "hello");
}

/// TW test_defer.py testAlreadyCalled_CE
#[test]
fn errback_after_callback_is_already_called_and_hands_the_failure_back() {
    let d: Deferred<&str> = Deferred::new();
    d.callback("hello").unwrap();
    let second = Failure::new(GenericError("second"));
    let err = d.errback(second.clone()).unwrap_err();
    assert!(Failure::ptr_eq(&err.into_inner(), &second));
    assert_eq!(success_result_of(&d), "hello");
}

/// TW test_defer.py testAlreadyCalled_EE
#[test]
fn errback_twice_is_already_called_and_keeps_the_first_failure() {
    let d: Deferred<&str> = Deferred::new();
    d.errback(GenericError("first")).unwrap();
    let err = d.errback(GenericError("second")).unwrap_err();
    assert_eq!(err.into_inner().downcast_ref::<GenericError>(), Some(&GenericError("second")));
    let f = failure_result_of::<GenericError, _>(&d);
    assert_eq!(f.downcast_ref::<GenericError>(), Some(&GenericError("first")));
}

/// TW test_defer.py testAlreadyCalled_EC
#[test]
fn callback_after_errback_is_already_called_and_hands_the_value_back() {
    let d: Deferred<Vec<u8>> = Deferred::new();
    d.errback(GenericError("first")).unwrap();
    let err = d.callback(vec![1, 2, 3]).unwrap_err();
    assert_eq!(err.into_inner(), [1, 2, 3]);
    failure_result_of::<GenericError, _>(&d);
}

#[test]
fn already_called_applies_to_succeed_and_fail_too() {
    let d = succeed(1);
    assert_eq!(d.callback(2).unwrap_err().into_inner(), 2);
    let d: Deferred<i32> = fail(GenericError("x"));
    assert!(d.errback(GenericError("y")).is_err());
    failure_result_of::<GenericError, _>(&d);
}

// ---------------------------------------------------------------------------------------
// pause / unpause
// ---------------------------------------------------------------------------------------

/// TW test_defer.py testUnpauseBeforeCallback
#[test]
fn unpause_before_callback_lets_callbacks_run_when_fired() {
    let d: Deferred<i32> = Deferred::new();
    let trace = Trace::new();
    let t = trace.clone();
    d.pause();
    assert!(d.is_paused());
    d.add_callback(move |x| {
        t.push(format!("cb {x}"));
        x
    });
    d.unpause().unwrap();
    assert!(!d.is_paused());
    assert_eq!(trace.len(), 0);
    d.callback(3).unwrap();
    assert_eq!(trace.take(), ["cb 3"]);
}

#[test]
fn paused_deferred_holds_its_callbacks_until_unpaused() {
    let d: Deferred<i32> = Deferred::new();
    let trace = Trace::new();
    let t = trace.clone();
    d.add_callback(move |x| {
        t.push(format!("cb {x}"));
        x + 1
    });
    d.pause();
    d.callback(1).unwrap();
    assert!(d.is_called());
    assert!(d.is_paused());
    assert_no_result(&d);
    assert_eq!(trace.len(), 0);
    d.unpause().unwrap();
    assert_eq!(trace.take(), ["cb 1"]);
    assert_eq!(success_result_of(&d), 2);
}

/// TW test_defer.py testPausedFailure
#[test]
fn paused_failure_reaches_the_errback_on_unpause() {
    let d: Deferred<i32> = fail(GenericError("fail"));
    let trace = Trace::new();
    let t = trace.clone();
    d.pause();
    d.add_errback(move |f: Failure| {
        t.push(f.downcast_ref::<GenericError>().unwrap().0);
        0
    });
    assert_eq!(trace.len(), 0);
    d.unpause().unwrap();
    assert_eq!(trace.take(), ["fail"]);
}

#[test]
fn unpause_without_pause_is_not_paused_error() {
    let d: Deferred<i32> = Deferred::new();
    let err: NotPausedError = d.unpause().unwrap_err();
    assert_eq!(err.to_string(), "unpause called on a deferred that is not paused");
    d.pause();
    d.unpause().unwrap();
    assert!(d.unpause().is_err());
    // A fired deferred is no different.
    d.callback(1).unwrap();
    assert!(d.unpause().is_err());
    assert_eq!(success_result_of(&d), 1);
}

#[test]
fn nested_pauses_need_as_many_unpauses() {
    let d: Deferred<i32> = Deferred::new();
    let ran = Rc::new(Cell::new(0));
    let r = ran.clone();
    d.add_callback(move |x| {
        r.set(r.get() + 1);
        x
    });
    d.pause();
    d.pause();
    d.pause();
    d.callback(1).unwrap();
    d.unpause().unwrap();
    assert!(d.is_paused());
    d.unpause().unwrap();
    assert!(d.is_paused());
    assert_eq!(ran.get(), 0);
    d.unpause().unwrap();
    assert!(!d.is_paused());
    assert_eq!(ran.get(), 1);
    assert!(d.unpause().is_err());
}

#[test]
fn callback_that_pauses_its_own_deferred_holds_the_rest_of_the_chain() {
    let d: Deferred<i32> = Deferred::new();
    let trace = Trace::new();
    let (me, t1, t2) = (d.clone(), trace.clone(), trace.clone());
    d.add_callback(move |x| {
        t1.push("pauser");
        me.pause();
        x + 1
    })
    .add_callback(move |x| {
        t2.push(format!("after {x}"));
        x
    });
    d.callback(1).unwrap();
    assert_eq!(trace.take(), ["pauser"]);
    assert!(d.is_paused());
    d.unpause().unwrap();
    assert_eq!(trace.take(), ["after 2"]);
    assert_eq!(success_result_of(&d), 2);
}

/// TW test_defer.py test_callbackReturnsDeferred
#[test]
fn chain_waits_for_a_returned_deferred_that_is_paused() {
    let d1: Deferred<i32> = Deferred::new();
    let d2: Deferred<i32> = Deferred::new();
    d2.pause();
    let trace = Trace::new();
    let (inner, t) = (d2.clone(), trace.clone());
    d1.add_callback(move |_| inner).add_callback(move |x| {
        t.push(format!("got {x}"));
        x
    });
    d1.callback(1).unwrap();
    assert_eq!(trace.len(), 0);
    d2.callback(2).unwrap();
    assert_eq!(trace.len(), 0, "d2 is paused: its result must not move on yet");
    d2.unpause().unwrap();
    assert_eq!(trace.take(), ["got 2"]);
    assert_eq!(success_result_of(&d1), 2);
}

// ---------------------------------------------------------------------------------------
// Chaining: a callback returning a Deferred
// ---------------------------------------------------------------------------------------

/// TW test_defer.py test_synchronousImplicitChain
#[test]
fn returning_a_fired_deferred_takes_its_result_at_once() {
    let first = succeed("result");
    let second: Deferred<&str> = Deferred::new();
    let f = first.clone();
    second.add_callback(move |_| f);
    second.callback("ignored").unwrap();
    assert!(!second.is_paused());
    assert_eq!(success_result_of(&second), "result");
    // The result moved: `first` is left without one, and what is added to it now is
    // told so (Twisted leaves `None` there instead).
    assert!(first.is_called());
    assert!(!first.has_result());
    let seen = Trace::new();
    let s = seen.clone();
    first.add_errback(move |f: Failure| {
        s.push(format!("consumed: {}", f.check::<ResultConsumedError>()));
        "handled"
    });
    assert_eq!(seen.take(), ["consumed: true"]);
}

/// TW test_defer.py test_asynchronousImplicitChain
#[test]
fn returning_an_unfired_deferred_makes_the_outer_wait_then_resume() {
    let first: Deferred<i32> = Deferred::new();
    let second: Deferred<i32> = Deferred::new();
    let f = first.clone();
    second.add_callback(move |_| f);
    second.callback(0).unwrap();
    assert!(second.is_called());
    assert!(second.is_paused(), "waiting on a chained deferred counts as paused");
    let trace = Trace::new();
    let t = trace.clone();
    second.add_callback(move |x| {
        t.push(format!("second got {x}"));
        x
    });
    assert_eq!(trace.len(), 0);
    assert_no_result(&second);
    first.callback(42).unwrap();
    assert_eq!(trace.take(), ["second got 42"]);
    assert!(!second.is_paused());
    assert_eq!(success_result_of(&second), 42);
}

/// TW test_defer.py test_synchronousImplicitErrorChain
#[test]
fn returning_a_failed_deferred_moves_its_failure_and_logs_nothing() {
    let ((), errors) = logs::errors_during(|| {
        let first: Deferred<()> = fail(GenericError("first deferred's failure"));
        let second: Deferred<()> = Deferred::new();
        let f = first.clone();
        second.add_callback(move |_| f);
        second.callback(()).unwrap();
        failure_result_of::<GenericError, _>(&second);
        assert!(!first.has_result());
    });
    assert!(errors.is_empty(), "unexpected errors logged: {errors:?}");
}

/// TW test_defer.py test_asynchronousImplicitErrorChain
#[test]
fn later_failure_of_a_returned_deferred_reaches_the_outer_errbacks() {
    let ((), errors) = logs::errors_during(|| {
        let first: Deferred<()> = Deferred::new();
        let second: Deferred<()> = Deferred::new();
        let f = first.clone();
        second.add_callback(move |_| f);
        second.callback(()).unwrap();
        let trace = Trace::new();
        let t = trace.clone();
        second.add_errback(move |f: Failure| t.push(f.downcast_ref::<GenericError>().unwrap().0));
        first.errback(GenericError("first deferred's failure")).unwrap();
        assert_eq!(trace.take(), ["first deferred's failure"]);
        success_result_of(&second);
    });
    assert!(errors.is_empty(), "unexpected errors logged: {errors:?}");
}

/// TW test_defer.py test_doubleAsynchronousImplicitChaining
#[test]
fn chaining_is_transitive() {
    let first: Deferred<&str> = Deferred::new();
    let second: Deferred<&str> = Deferred::new();
    let third: Deferred<&str> = Deferred::new();
    let f = first.clone();
    second.add_callback(move |_| f);
    let s = second.clone();
    third.add_callback(move |_| s);
    let trace = Trace::new();
    let t = trace.clone();
    third.add_callback(move |v| {
        t.push(v);
        v
    });
    second.callback("ignored").unwrap();
    third.callback("ignored").unwrap();
    assert_eq!(trace.len(), 0);
    assert!(second.is_paused() && third.is_paused());
    first.callback("result").unwrap();
    assert_eq!(trace.take(), ["result"]);
    assert_eq!(success_result_of(&third), "result");
}

/// TW test_defer.py test_nestedAsynchronousChainedDeferreds
#[test]
fn nested_asynchronous_chained_deferreds_continue_when_the_inner_fires() {
    let trace = Trace::new();
    let inner: Deferred<String> = Deferred::new();
    let (t, i) = (trace.clone(), inner.clone());
    let cb = move |result: String| {
        t.push(format!("start-of-cb {result}"));
        let d = succeed("inner".to_string());
        let (t1, t2) = (t.clone(), t.clone());
        d.add_callback(move |_| {
            t1.push("firstCallback inner");
            i
        })
        .add_callback(move |result: String| {
            t2.push(format!("secondCallback {result}"));
            result.repeat(2)
        });
        d
    };
    let outer = succeed("outer".to_string());
    let t = trace.clone();
    outer.add_callback(cb).add_callback(move |r| {
        t.push(r.clone());
        r
    });
    assert_eq!(trace.take(), ["start-of-cb outer", "firstCallback inner"]);
    inner.callback("orange".to_string()).unwrap();
    assert_eq!(trace.take(), ["secondCallback orange", "orangeorange"]);
    assert_eq!(success_result_of(&outer), "orangeorange");
}

/// TW test_defer.py test_nestedAsynchronousChainedDeferredsWithExtraCallbacks
#[test]
fn nested_chained_deferred_with_its_own_callbacks_runs_them_first() {
    let trace = Trace::new();
    let inner: Deferred<Vec<String>> = Deferred::new();
    let (t, i) = (trace.clone(), inner.clone());
    let cb = move |result: Vec<String>| {
        t.push(format!("start-of-cb {result:?}"));
        let d = succeed(vec!["inner".to_string()]);
        let (t1, t2) = (t.clone(), t.clone());
        d.add_callback(move |result| {
            t1.push(format!("firstCallback {result:?}"));
            // A callback on the returned deferred itself, before it is returned.
            i.add_callback(|mut v: Vec<String>| {
                v.push("transformed".to_string());
                v
            });
            i
        })
        .add_callback(move |result| {
            t2.push(format!("secondCallback {result:?}"));
            [result.clone(), result].concat()
        });
        d
    };
    let outer = succeed(vec!["outer".to_string()]);
    let t = trace.clone();
    outer.add_callback(cb).add_callback(move |r| {
        t.push(format!("final {r:?}"));
        r
    });
    assert_eq!(trace.take(), [r#"start-of-cb ["outer"]"#, r#"firstCallback ["inner"]"#]);
    inner.callback(vec!["withers".to_string()]).unwrap();
    assert_eq!(
        trace.take(),
        [
            r#"secondCallback ["withers", "transformed"]"#,
            r#"final ["withers", "transformed", "withers", "transformed"]"#
        ]
    );
}

/// TW test_defer.py test_innerCallbacksPreserved
#[test]
fn inner_callbacks_run_before_the_outer_gets_the_result() {
    let trace = Trace::new();
    let inner: Deferred<String> = Deferred::new();
    let (t, i) = (trace.clone(), inner.clone());
    let cb = move |result: String| {
        t.push(format!("start-of-cb {result}"));
        let d = succeed("inner".to_string());
        let (t1, t2) = (t.clone(), t.clone());
        d.add_callback(move |_| {
            t1.push("firstCallback");
            i
        })
        .add_callback(move |result: String| {
            t2.push(format!("secondCallback {result}"));
            result.repeat(2)
        });
        d
    };
    let outer = succeed("outer".to_string());
    outer.add_callback(cb);
    inner.callback("orange".to_string()).unwrap();
    let t = trace.clone();
    outer.add_callback(move |r| {
        t.push(r.clone());
        r
    });
    assert_eq!(trace.take(), ["start-of-cb outer", "firstCallback", "secondCallback orange", "orangeorange"]);
}

/// Builds the middle deferred of Twisted's test_continueCallbackNotFirst and
/// test_callbackOrderPreserved: it fires at once and waits on a deferred derived from `a`.
fn middle_waiting_on(a: &Deferred<String>, trace: &Trace, result: String) -> Deferred<Vec<String>> {
    trace.push(format!("cb {result}"));
    let d: Deferred<Vec<String>> = Deferred::new();
    let (t1, t2, a) = (trace.clone(), trace.clone(), a.clone());
    d.add_callback(move |result| {
        t1.push(format!("firstCallback {result:?}"));
        // A new deferred linked to `a`, as Twisted's test uses gatherResults([a]).
        a.clone().map(|s| vec![s])
    })
    .add_callback(move |result| {
        t2.push(format!("secondCallback {result:?}"));
        result
    });
    d.callback(Vec::new()).unwrap();
    d
}

/// TW test_defer.py test_continueCallbackNotFirst
#[test]
fn continue_link_need_not_be_the_first_callback() {
    let trace = Trace::new();
    let a: Deferred<String> = Deferred::new();
    let (aa, t) = (a.clone(), trace.clone());
    let outer: Deferred<Vec<String>> = succeed(Vec::new());
    outer.add_callback(move |_| middle_waiting_on(&aa, &t, "outer".to_string()));
    assert_eq!(trace.take(), ["cb outer", "firstCallback []"]);
    a.callback("withers".to_string()).unwrap();
    assert_eq!(trace.take(), [r#"secondCallback ["withers"]"#]);
    assert_eq!(success_result_of(&outer), ["withers"]);
}

/// TW test_defer.py test_callbackOrderPreserved
#[test]
fn callback_added_after_a_chaining_callback_runs_after_the_inner_callbacks() {
    let trace = Trace::new();
    let a: Deferred<String> = Deferred::new();
    let outer: Deferred<Vec<String>> = Deferred::new();
    let (aa, t1, t2) = (a.clone(), trace.clone(), trace.clone());
    outer.add_callback(move |_| middle_waiting_on(&aa, &t1, "outer".to_string())).add_callback(move |r| {
        t2.push("final");
        r
    });
    outer.callback(Vec::new()).unwrap();
    assert_eq!(trace.take(), ["cb outer", "firstCallback []"]);
    a.callback("withers".to_string()).unwrap();
    assert_eq!(trace.take(), [r#"secondCallback ["withers"]"#, "final"]);
}

/// TW test_defer.py test_chainedPausedDeferredWithResult
#[test]
fn returned_paused_deferred_with_a_result_is_waited_for() {
    let paused = succeed("expected");
    paused.pause();
    let chained: Deferred<&str> = Deferred::new();
    let p = paused.clone();
    chained.add_callback(move |_| p);
    chained.callback("ignored").unwrap();
    let trace = Trace::new();
    let t = trace.clone();
    chained.add_callback(move |v| {
        t.push(v);
        v
    });
    assert_eq!(trace.len(), 0);
    assert!(chained.is_paused());
    paused.unpause().unwrap();
    assert_eq!(trace.take(), ["expected"]);
}

/// TW test_defer.py test_pausedDeferredChained
#[test]
fn paused_outer_does_not_stop_the_inner_from_going_on() {
    let first: Deferred<i32> = Deferred::new();
    let second: Deferred<i32> = Deferred::new();
    let s = second.clone();
    first.add_callback(move |_| s);
    first.callback(0).unwrap();
    first.pause();
    second.callback(5).unwrap();
    // The inner's own later callbacks still run (its result has moved to `first`).
    let trace = Trace::new();
    let t = trace.clone();
    second.add_both(move |r: Result<i32, Failure>| {
        t.push(format!("second ran, consumed: {}", r.unwrap_err().check::<ResultConsumedError>()));
        0
    });
    assert_eq!(trace.take(), ["second ran, consumed: true"]);
    assert_no_result(&first);
    first.unpause().unwrap();
    assert_eq!(success_result_of(&first), 5);
}

/// TW test_defer.py test_resultOfDeferredResultOfDeferredOfFiredDeferredCalled
#[test]
fn callbacks_added_to_the_middle_of_three_chained_deferreds_run() {
    let first: Deferred<i32> = Deferred::new();
    let second: Deferred<i32> = Deferred::new();
    let third: Deferred<i32> = Deferred::new();
    let (s, t) = (second.clone(), third.clone());
    first.add_callback(move |_| s);
    second.add_callback(move |_| t);
    second.callback(0).unwrap();
    first.callback(0).unwrap();
    third.callback(3).unwrap();
    // `first` took second's result; `second` is left consumed. Callbacks added to it
    // still run, each exactly once.
    assert_eq!(success_result_of(&first), 3);
    let ran = Rc::new(Cell::new(0));
    let r = ran.clone();
    second.add_both(move |_r: Result<i32, Failure>| {
        r.set(r.get() + 1);
        0
    });
    assert_eq!(ran.get(), 1);
}

/// TW test_defer.py test_circularChainException
#[test]
fn callback_returning_its_own_deferred_is_chained_to_self_error() {
    let d: Deferred<&str> = Deferred::new();
    let me = d.clone();
    d.add_callback(move |_| me);
    d.callback("foo").unwrap();
    failure_result_of::<ChainedToSelfError, _>(&d);
}

#[test]
fn chain_deferred_passes_values_and_failures_on() {
    let a: Deferred<i32> = Deferred::new();
    let b: Deferred<i32> = Deferred::new();
    a.add_callback(|x| x + 1).chain_deferred(&b);
    b.add_callback(|x| x * 10);
    assert!(!b.is_called());
    a.callback(1).unwrap();
    assert_eq!(success_result_of(&b), 20);

    let a: Deferred<i32> = Deferred::new();
    let b: Deferred<i32> = Deferred::new();
    a.chain_deferred(&b);
    a.errback(GenericError("chained")).unwrap();
    failure_result_of::<GenericError, _>(&b);
}

#[test]
fn cancelling_the_target_of_chain_deferred_does_not_cancel_the_source() {
    let cancelled = Rc::new(Cell::new(false));
    let c = cancelled.clone();
    let a: Deferred<i32> = Deferred::with_canceller(move |_| c.set(true));
    let b: Deferred<i32> = Deferred::new();
    a.chain_deferred(&b);
    b.cancel();
    assert!(!cancelled.get());
    failure_result_of::<CancelledError, _>(&b);
    // The source's later result is dropped quietly by the cancelled target.
    let ((), errors) = logs::errors_during(|| a.callback(1).unwrap());
    assert!(errors.is_empty(), "{errors:?}");
}

// ---------------------------------------------------------------------------------------
// Re-entrancy
// ---------------------------------------------------------------------------------------

/// TW test_defer.py test_reentrantRunCallbacks
#[test]
fn callback_added_by_a_callback_goes_to_the_end_of_the_chain() {
    let d: Deferred<()> = Deferred::new();
    let trace = Trace::new();
    let (me, t1, t2, t3) = (d.clone(), trace.clone(), trace.clone(), trace.clone());
    d.add_callback(move |()| {
        t1.push("1");
        me.add_callback(move |()| t3.push("3"));
    })
    .add_callback(move |()| t2.push("2"));
    d.callback(()).unwrap();
    assert_eq!(trace.take(), ["1", "2", "3"]);
}

/// TW test_defer.py test_nonReentrantCallbacks
#[test]
fn callback_added_by_a_callback_waits_for_the_running_one_to_return() {
    let d: Deferred<()> = Deferred::new();
    let trace = Trace::new();
    let (me, t1) = (d.clone(), trace.clone());
    d.add_callback(move |()| {
        t1.push("1");
        let t2 = t1.clone();
        me.add_callback(move |()| t2.push("2"));
        // Not run yet: the chain is busy running this very callback.
        t1.push(format!("len {}", t1.len()));
    });
    d.callback(()).unwrap();
    assert_eq!(trace.take(), ["1", "len 1", "2"]);
}

/// TW test_defer.py test_reentrantRunCallbacksWithFailure
#[test]
fn failing_callback_added_by_a_callback_fails_the_chain() {
    let d: Deferred<()> = Deferred::new();
    let me = d.clone();
    d.add_callback(move |()| {
        me.add_callback(|()| -> Result<(), Failure> { Err(Failure::new(GenericError("callback raised"))) });
    });
    d.callback(()).unwrap();
    let f = failure_result_of::<GenericError, _>(&d);
    assert_eq!(f.downcast_ref::<GenericError>().unwrap().0, "callback raised");
}

#[test]
fn callbacks_added_reentrantly_run_once_each_in_order() {
    let d: Deferred<u32> = Deferred::new();
    let trace = Trace::new();
    let (me, t) = (d.clone(), trace.clone());
    d.add_callback(move |x| {
        for i in 0..3 {
            let (t, me2) = (t.clone(), me.clone());
            me.add_callback(move |x| {
                t.push(format!("added {i} got {x}"));
                // One level deeper: a callback added by a callback added by a callback.
                if i == 0 {
                    let t = t.clone();
                    me2.add_callback(move |x| {
                        t.push(format!("grandchild got {x}"));
                        x
                    });
                }
                x + 1
            });
        }
        x
    });
    d.callback(10).unwrap();
    assert_eq!(trace.take(), ["added 0 got 10", "added 1 got 11", "added 2 got 12", "grandchild got 13"]);
    assert_eq!(success_result_of(&d), 13);
}

#[test]
fn callback_firing_another_deferred_whose_callback_fires_a_third() {
    let (a, b, c): (Deferred<u32>, Deferred<u32>, Deferred<u32>) =
        (Deferred::new(), Deferred::new(), Deferred::new());
    let trace = Trace::new();
    let (t, bb) = (trace.clone(), b.clone());
    a.add_callback(move |x| {
        t.push(format!("a {x}"));
        bb.callback(x + 1).unwrap();
        t.push("a done");
        x
    });
    let (t, cc) = (trace.clone(), c.clone());
    b.add_callback(move |x| {
        t.push(format!("b {x}"));
        cc.callback(x + 1).unwrap();
        t.push("b done");
        x
    });
    let t = trace.clone();
    c.add_callback(move |x| {
        t.push(format!("c {x}"));
        x
    });
    a.callback(1).unwrap();
    // Each fire runs the other chain to completion before returning, as in Twisted.
    assert_eq!(trace.take(), ["a 1", "b 2", "c 3", "b done", "a done"]);
    assert_eq!((success_result_of(&a), success_result_of(&b), success_result_of(&c)), (1, 2, 3));
}

#[test]
fn callback_firing_its_own_deferred_gets_already_called() {
    let d: Deferred<u32> = Deferred::new();
    let trace = Trace::new();
    let (me, t) = (d.clone(), trace.clone());
    d.add_callback(move |x| {
        let err = me.callback(99).unwrap_err();
        t.push(format!("refired: {}", err.into_inner()));
        x
    });
    d.callback(1).unwrap();
    assert_eq!(trace.take(), ["refired: 99"]);
    assert_eq!(success_result_of(&d), 1);
}

#[test]
fn callback_cancelling_its_own_deferred_changes_nothing() {
    let cancels = Rc::new(Cell::new(0));
    let c = cancels.clone();
    let d: Deferred<u32> = Deferred::with_canceller(move |_| c.set(c.get() + 1));
    let layer = Rc::new(Cell::new(0));
    let (me, l) = (d.clone(), layer.clone());
    d.add_callback(move |x| {
        // The result has arrived: a cancel from inside the chain finds nothing to stop.
        me.cancel();
        x + 1
    });
    d.add_canceller(move |_| l.set(l.get() + 1)).add_callback(|x| x * 2);
    d.callback(1).unwrap();
    assert_eq!((cancels.get(), layer.get()), (0, 0));
    assert_eq!(success_result_of(&d), 4);
}

#[test]
fn callback_unpausing_its_own_deferred_resumes_after_it_returns() {
    let d: Deferred<u32> = Deferred::new();
    let trace = Trace::new();
    let (me, t1, t2) = (d.clone(), trace.clone(), trace.clone());
    d.add_callback(move |x| {
        me.pause();
        me.unpause().unwrap();
        t1.push("first");
        x
    })
    .add_callback(move |x| {
        t2.push("second");
        x
    });
    d.callback(1).unwrap();
    assert_eq!(trace.take(), ["first", "second"]);
}

#[test]
fn callback_on_one_deferred_adds_to_and_fires_another() {
    let a: Deferred<u32> = Deferred::new();
    let b: Deferred<u32> = Deferred::new();
    let trace = Trace::new();
    let (bb, t) = (b.clone(), trace.clone());
    a.add_callback(move |x| {
        let t2 = t.clone();
        bb.add_callback(move |y| {
            t2.push(format!("b {y}"));
            y
        });
        bb.callback(x * 2).unwrap();
        let t3 = t.clone();
        // b already fired: this one runs at once, inside a's callback.
        bb.add_callback(move |y| {
            t3.push(format!("b late {y}"));
            y
        });
        t.push("a done");
        x
    });
    a.callback(4).unwrap();
    assert_eq!(trace.take(), ["b 8", "b late 8", "a done"]);
}

// ---------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------

/// TW test_defer.py test_noCanceller
#[test]
fn cancel_without_canceller_fails_with_cancelled_error() {
    let d: Deferred<i32> = Deferred::new();
    let trace = Trace::new();
    let (t1, t2) = (trace.clone(), trace.clone());
    d.add_callbacks(
        move |x| {
            t1.push("callback");
            x
        },
        move |f: Failure| -> Result<i32, Failure> {
            t2.push(format!("errback cancelled: {}", f.check::<CancelledError>()));
            Err(f)
        },
    );
    d.cancel();
    assert_eq!(trace.take(), ["errback cancelled: true"]);
    assert!(d.is_called());
    failure_result_of::<CancelledError, _>(&d);
}

/// TW test_defer.py test_raisesAfterCancelAndCallback
#[test]
fn one_late_callback_after_cancel_is_ignored_then_already_called() {
    let d: Deferred<i32> = Deferred::new();
    d.cancel();
    assert!(d.callback(1).is_ok(), "the responder's first late callback is swallowed");
    assert_eq!(d.callback(2).unwrap_err().into_inner(), 2);
    assert!(d.errback(GenericError("late")).is_err());
    failure_result_of::<CancelledError, _>(&d);
}

/// TW test_defer.py test_raisesAfterCancelAndErrback
#[test]
fn one_late_errback_after_cancel_is_ignored_then_already_called() {
    let d: Deferred<i32> = Deferred::new();
    d.cancel();
    assert!(d.errback(GenericError("late")).is_ok(), "the responder's first late errback is swallowed");
    assert_eq!(d.callback(2).unwrap_err().into_inner(), 2);
    assert!(d.errback(GenericError("later")).is_err());
    failure_result_of::<CancelledError, _>(&d);
}

/// TW test_defer.py test_noCancellerMultipleCancelsAfterCancelAndCallback
#[test]
fn cancels_after_cancel_and_late_callback_change_nothing() {
    let d: Deferred<i32> = Deferred::new();
    let seen = Rc::new(RefCell::new(Vec::<Failure>::new()));
    let s = seen.clone();
    d.add_errback(move |f: Failure| -> Result<i32, Failure> {
        s.borrow_mut().push(f.clone());
        Err(f)
    });
    d.cancel();
    d.callback(1).unwrap();
    d.cancel();
    assert_eq!(seen.borrow().len(), 1);
    let f = failure_result_of::<CancelledError, _>(&d);
    assert!(Failure::ptr_eq(&f, &seen.borrow()[0]));
}

/// TW test_defer.py test_noCancellerMultipleCancelsAfterCancelAndErrback
#[test]
fn cancels_after_cancel_and_late_errback_keep_the_cancelled_error() {
    let d: Deferred<i32> = Deferred::new();
    d.cancel();
    d.errback(GenericError("ignored")).unwrap();
    d.cancel();
    failure_result_of::<CancelledError, _>(&d);
}

/// TW test_defer.py test_noCancellerMultipleCancel
#[test]
fn cancelling_twice_keeps_the_first_cancelled_error() {
    let d: Deferred<i32> = Deferred::new();
    let errbacks = Rc::new(Cell::new(0));
    let e = errbacks.clone();
    d.add_errback(move |f: Failure| -> Result<i32, Failure> {
        e.set(e.get() + 1);
        Err(f)
    });
    d.cancel();
    let first = d.result().unwrap().unwrap_err();
    d.cancel();
    let second = d.take_result().unwrap().unwrap_err();
    assert!(Failure::ptr_eq(&first, &second));
    assert_eq!(errbacks.get(), 1);
}

/// TW test_defer.py test_cancellerMultipleCancel
#[test]
fn canceller_runs_once_however_often_cancel_is_called() {
    let count = Rc::new(Cell::new(0));
    let c = count.clone();
    let d: Deferred<i32> = Deferred::with_canceller(move |_| c.set(c.get() + 1));
    d.cancel();
    d.cancel();
    d.cancel();
    assert_eq!(count.get(), 1);
    failure_result_of::<CancelledError, _>(&d);
}

/// TW test_defer.py test_simpleCanceller
///
/// Twisted raises `AlreadyCalledError` for the first late fire when a canceller ran and
/// did not fire the deferred; weft ignores that first late fire whenever the cancel
/// ended in `CancelledError` (see `Deferred::callback`), with or without a canceller.
#[test]
fn simple_canceller_runs_once_and_the_deferred_fails_cancelled() {
    let count = Rc::new(Cell::new(0));
    let c = count.clone();
    let d: Deferred<i32> = Deferred::with_canceller(move |_| c.set(c.get() + 1));
    let trace = Trace::new();
    let t = trace.clone();
    d.add_errback(move |f: Failure| -> Result<i32, Failure> {
        t.push(format!("cancelled: {}", f.check::<CancelledError>()));
        Err(f)
    });
    d.cancel();
    assert_eq!(count.get(), 1);
    assert_eq!(trace.take(), ["cancelled: true"]);
    assert!(d.callback(1).is_ok());
    assert!(d.callback(2).is_err());
    assert!(d.errback(GenericError("late")).is_err());
    failure_result_of::<CancelledError, _>(&d);
}

/// TW test_defer.py test_cancellerArg
#[test]
fn canceller_gets_the_deferred_being_cancelled() {
    let seen: Rc<RefCell<Option<Deferred<i32>>>> = Rc::new(RefCell::new(None));
    let s = seen.clone();
    let d: Deferred<i32> = Deferred::with_canceller(move |arg| *s.borrow_mut() = Some(arg.clone()));
    d.cancel();
    assert!(Deferred::ptr_eq(seen.borrow().as_ref().unwrap(), &d));
    failure_result_of::<CancelledError, _>(&d);
}

/// TW test_defer.py test_cancelAfterCallback
#[test]
fn cancel_after_callback_is_noop() {
    let count = Rc::new(Cell::new(0));
    let c = count.clone();
    let d: Deferred<&str> = Deferred::with_canceller(move |d| {
        c.set(c.get() + 1);
        d.errback(GenericError("from canceller")).unwrap();
    });
    let errbacks = Rc::new(Cell::new(0));
    let e = errbacks.clone();
    d.add_errback(move |f: Failure| -> Result<&str, Failure> {
        e.set(e.get() + 1);
        Err(f)
    });
    d.callback("biff!").unwrap();
    d.cancel();
    assert_eq!((count.get(), errbacks.get()), (0, 0));
    assert_eq!(success_result_of(&d), "biff!");
}

/// TW test_defer.py test_cancelAfterErrback
#[test]
fn cancel_after_errback_is_noop() {
    let count = Rc::new(Cell::new(0));
    let c = count.clone();
    let d: Deferred<i32> = Deferred::with_canceller(move |_| c.set(c.get() + 1));
    d.errback(GenericError("original")).unwrap();
    d.cancel();
    assert_eq!(count.get(), 0);
    let f = failure_result_of::<GenericError, _>(&d);
    assert!(!f.check::<CancelledError>());
}

/// TW test_defer.py test_cancellerThatErrbacks
#[test]
fn canceller_that_errbacks_sets_its_own_failure() {
    let d: Deferred<i32> = Deferred::with_canceller(|d| d.errback(GenericError("canceller's")).unwrap());
    d.cancel();
    let f = failure_result_of::<GenericError, _>(&d);
    assert_eq!(f.downcast_ref::<GenericError>().unwrap().0, "canceller's");
    // The deferred was fired by its own canceller: a late responder is not excused.
    assert!(d.callback(1).is_err());
}

/// TW test_defer.py test_cancellerThatCallbacks
#[test]
fn canceller_that_callbacks_sets_the_value() {
    let d: Deferred<&str> = Deferred::with_canceller(|d| d.callback("hello!").unwrap());
    let errbacks = Rc::new(Cell::new(0));
    let e = errbacks.clone();
    d.add_errback(move |f: Failure| -> Result<&str, Failure> {
        e.set(e.get() + 1);
        Err(f)
    });
    d.cancel();
    assert_eq!(errbacks.get(), 0);
    assert_eq!(success_result_of(&d), "hello!");
}

/// TW test_defer.py test_simpleCanceller (a canceller that does not fire)
#[test]
fn canceller_that_does_not_fire_leaves_cancelled_error() {
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    let d: Deferred<i32> = Deferred::with_canceller(move |d| {
        r.set(true);
        assert!(!d.is_called(), "the canceller runs before the deferred fails");
    });
    d.cancel();
    assert!(ran.get());
    let f = failure_result_of::<CancelledError, _>(&d);
    assert!(cancelled(&f).cancelled_by(&d));
}

#[test]
fn cancel_of_a_paused_unfired_deferred_fails_it_when_unpaused() {
    let d: Deferred<i32> = Deferred::new();
    let trace = Trace::new();
    let t = trace.clone();
    d.add_errback(move |f: Failure| {
        t.push(format!("cancelled: {}", f.check::<CancelledError>()));
        0
    });
    d.pause();
    d.cancel();
    assert!(d.is_called());
    assert_eq!(trace.len(), 0);
    d.unpause().unwrap();
    assert_eq!(trace.take(), ["cancelled: true"]);
}

/// TW test_defer.py test_cancelNestedDeferred
#[test]
fn cancel_of_a_deferred_waiting_on_an_inner_cancels_the_inner() {
    let inner_cancels = Rc::new(Cell::new(0));
    let c = inner_cancels.clone();
    let b: Deferred<()> = Deferred::with_canceller(move |_| c.set(c.get() + 1));
    let a: Deferred<()> = Deferred::with_canceller(|_| panic!("a has fired: its canceller must not run"));
    a.callback(()).unwrap();
    let bb = b.clone();
    a.add_callback(move |()| bb);
    assert!(a.is_paused());
    a.cancel();
    let trace = Trace::new();
    let t = trace.clone();
    a.add_errback(move |f: Failure| t.push(format!("a errback cancelled: {}", f.check::<CancelledError>())));
    assert_eq!(inner_cancels.get(), 1);
    assert_eq!(trace.take(), ["a errback cancelled: true"]);
    // The inner's failure went to `a` through the chain.
    assert!(b.is_called());
    assert!(!b.has_result());
}

#[test]
fn cancel_of_outer_while_inner_has_a_paused_result_keeps_the_result() {
    let inner = succeed(7);
    inner.pause();
    let outer: Deferred<i32> = Deferred::new();
    let i = inner.clone();
    outer.add_callback(move |_| i);
    outer.callback(0).unwrap();
    assert!(outer.is_paused());
    outer.cancel();
    assert_no_result(&outer);
    inner.unpause().unwrap();
    assert_eq!(success_result_of(&outer), 7);
}

#[test]
fn cancelled_error_comes_back_through_the_outer_errbacks_after_inner_callbacks() {
    let inner: Deferred<i32> = Deferred::new();
    let trace = Trace::new();
    let t = trace.clone();
    inner.add_errback(move |f: Failure| -> Result<i32, Failure> {
        t.push("inner errback");
        Err(f)
    });
    let outer: Deferred<i32> = Deferred::new();
    let (i, t1, t2) = (inner.clone(), trace.clone(), trace.clone());
    outer
        .add_callback(move |_| i)
        .add_callback(move |x| {
            t1.push("outer callback");
            x
        })
        .add_errback(move |f: Failure| {
            t2.push(format!("outer errback cancelled: {}", f.check::<CancelledError>()));
            -1
        });
    outer.callback(0).unwrap();
    outer.cancel();
    assert_eq!(trace.take(), ["inner errback", "outer errback cancelled: true"]);
    assert_eq!(success_result_of(&outer), -1);
}

// ---------------------------------------------------------------------------------------
// The canceller chain: from the invoker back to the responder
// ---------------------------------------------------------------------------------------

/// A canceller that records `name` in `trace`.
fn record(trace: &Trace, name: &'static str) -> impl FnOnce(&CancelledError) + 'static {
    let t = trace.clone();
    move |_| t.push(name)
}

#[test]
fn layer_cancellers_run_newest_first_then_the_creators() {
    let trace = Trace::new();
    let t = trace.clone();
    let d: Deferred<i32> = Deferred::with_canceller(move |_| t.push("creator"));
    d.add_canceller(record(&trace, "layer 1")).add_callback(|x| x + 1);
    d.add_callbacks_with_canceller(
        |x| x * 2,
        |f: Failure| -> Result<i32, Failure> { Err(f) },
        record(&trace, "layer 2"),
    );
    d.add_canceller(record(&trace, "layer 3")).add_errback(|f: Failure| -> Result<i32, Failure> { Err(f) });
    d.cancel();
    assert_eq!(trace.take(), ["layer 3", "layer 2", "layer 1", "creator"]);
    failure_result_of::<CancelledError, _>(&d);
    // Each canceller ran once: a second cancel finds nothing left to run.
    d.cancel();
    assert_eq!(trace.len(), 0);
}

#[test]
fn layer_canceller_gets_the_cancelled_error_of_this_cancel() {
    let seen = Rc::new(RefCell::new(None));
    let s = seen.clone();
    let d: Deferred<i32> = Deferred::new();
    d.add_canceller(move |e| *s.borrow_mut() = Some(e.clone())).add_callback(|x| x);
    d.cancel();
    let layer_saw = seen.borrow_mut().take().unwrap();
    let f = failure_result_of::<CancelledError, _>(&d);
    assert_eq!(layer_saw.id(), cancelled(&f).id());
    assert!(layer_saw.cancelled_by(&d));
}

#[test]
fn layer_whose_callbacks_ran_no_longer_has_its_canceller_run() {
    let trace = Trace::new();
    let inner: Deferred<i32> = Deferred::with_canceller({
        let t = trace.clone();
        move |_| t.push("inner creator")
    });
    let t = trace.clone();
    let outer: Deferred<i32> = Deferred::with_canceller(move |_| t.push("outer creator"));
    let i = inner.clone();
    outer.add_canceller(record(&trace, "spent layer")).add_callback(move |_| i);
    outer.callback(0).unwrap();
    assert!(outer.is_paused());
    outer.cancel();
    // The spent layer's callbacks ran; the outer's creator canceller went when it fired.
    assert_eq!(trace.take(), ["inner creator"]);
    failure_result_of::<CancelledError, _>(&outer);
}

#[test]
fn layers_added_while_waiting_run_before_the_inner_is_cancelled() {
    let trace = Trace::new();
    let inner: Deferred<i32> = Deferred::with_canceller({
        let t = trace.clone();
        move |_| t.push("inner creator")
    });
    inner.add_canceller(record(&trace, "inner layer")).add_callback(|x| x);
    let outer: Deferred<i32> = Deferred::new();
    let i = inner.clone();
    outer.add_canceller(record(&trace, "spent layer")).add_callback(move |_| i);
    outer.callback(0).unwrap();
    outer.add_canceller(record(&trace, "outer layer A")).add_callback(|x| x);
    outer.add_canceller(record(&trace, "outer layer B")).add_callback(|x| x);
    outer.cancel();
    assert_eq!(trace.take(), ["outer layer B", "outer layer A", "inner layer", "inner creator"]);
    failure_result_of::<CancelledError, _>(&outer);
}

#[test]
fn layer_canceller_that_fires_the_deferred_stops_the_cancel_there() {
    let trace = Trace::new();
    let t = trace.clone();
    let d: Deferred<i32> = Deferred::with_canceller(move |_| t.push("creator"));
    d.add_canceller(record(&trace, "older layer")).add_callback(|x| x);
    let (me, t) = (d.clone(), trace.clone());
    d.add_canceller(move |_| {
        t.push("newest layer fires");
        me.callback(5).unwrap();
    })
    .add_callback(|x| x * 10);
    d.cancel();
    // Every live layer is told (they may hold resources), but the creator is not
    // asked to stop work whose result has arrived.
    assert_eq!(trace.take(), ["newest layer fires", "older layer"]);
    assert_eq!(success_result_of(&d), 50);
}

#[test]
fn canceller_chain_reaches_through_several_nested_deferreds() {
    let trace = Trace::new();
    let innermost: Deferred<i32> = Deferred::with_canceller({
        let t = trace.clone();
        move |_| t.push("innermost creator")
    });
    let middle: Deferred<i32> = Deferred::new();
    let i = innermost.clone();
    middle.add_callback(move |_| i);
    middle.add_canceller(record(&trace, "middle layer")).add_callback(|x| x);
    middle.callback(0).unwrap();
    let outer: Deferred<i32> = Deferred::new();
    let m = middle.clone();
    outer.add_callback(move |_| m);
    outer.add_canceller(record(&trace, "outer layer")).add_callback(|x| x);
    outer.callback(0).unwrap();
    outer.cancel();
    assert_eq!(trace.take(), ["outer layer", "middle layer", "innermost creator"]);
    let f = failure_result_of::<CancelledError, _>(&outer);
    assert!(cancelled(&f).cancelled_by(&outer));
}

#[test]
fn canceller_that_panics_is_logged_and_the_cancel_goes_on() {
    let (d, errors) = logs::errors_during(|| {
        let d: Deferred<i32> = Deferred::with_canceller(|_| panic!("canceller broke"));
        d.add_canceller(|_| panic!("layer broke")).add_callback(|x| x);
        d.cancel();
        d
    });
    failure_result_of::<CancelledError, _>(&d);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("layer broke"), "{errors:?}");
    assert!(errors[1].contains("canceller broke"), "{errors:?}");
}

// ---------------------------------------------------------------------------------------
// Which cancel: CancelledError::cancelled_by and CancelId
// ---------------------------------------------------------------------------------------

#[test]
fn cancelled_by_names_the_deferred_cancel_was_called_on() {
    let inner: Deferred<i32> = Deferred::new();
    let inner_saw = Rc::new(RefCell::new(None));
    let s = inner_saw.clone();
    inner.add_errback(move |f: Failure| -> Result<i32, Failure> {
        *s.borrow_mut() = Some(cancelled(&f));
        Err(f)
    });
    let outer: Deferred<i32> = Deferred::new();
    let i = inner.clone();
    outer.add_callback(move |_| i);
    outer.callback(0).unwrap();
    let unrelated: Deferred<i32> = Deferred::new();
    outer.cancel();
    let err = cancelled(&failure_result_of::<CancelledError, _>(&outer));
    assert!(err.cancelled_by(&outer));
    assert!(!err.cancelled_by(&inner), "inner was reached by the cancel, not cancelled itself");
    assert!(!err.cancelled_by(&unrelated));
    // Inside the inner chain, a layer can tell it was cancelled by someone else.
    let seen_inside = inner_saw.borrow_mut().take().unwrap();
    assert_eq!(seen_inside.id(), err.id());
    assert!(!seen_inside.cancelled_by(&inner));
}

#[test]
fn separate_cancels_have_separate_ids() {
    let a: Deferred<i32> = Deferred::new();
    let b: Deferred<i32> = Deferred::new();
    a.cancel();
    b.cancel();
    let ea = cancelled(&failure_result_of::<CancelledError, _>(&a));
    let eb = cancelled(&failure_result_of::<CancelledError, _>(&b));
    assert_ne!(ea.id(), eb.id());
    assert!(ea.cancelled_by(&a) && !ea.cancelled_by(&b));
    assert!(eb.cancelled_by(&b) && !eb.cancelled_by(&a));
}

#[test]
fn one_cancel_gives_the_same_id_to_every_cancelled_error_it_makes() {
    // A canceller that cancels two more deferreds: all three fail with one id.
    let (x, y): (Deferred<i32>, Deferred<i32>) = (Deferred::new(), Deferred::new());
    let (xx, yy) = (x.clone(), y.clone());
    let d: Deferred<i32> = Deferred::with_canceller(move |_| {
        xx.cancel();
        yy.cancel();
    });
    d.cancel();
    let id = cancelled(&failure_result_of::<CancelledError, _>(&d)).id();
    for other in [&x, &y] {
        let e = cancelled(&failure_result_of::<CancelledError, _>(other));
        assert_eq!(e.id(), id);
        assert!(!e.cancelled_by(other));
    }
    // A later, separate cancel gets a fresh id.
    let z: Deferred<i32> = Deferred::new();
    z.cancel();
    assert_ne!(cancelled(&failure_result_of::<CancelledError, _>(&z)).id(), id);
}

#[test]
fn cancelled_error_records_where_cancel_was_called() {
    let d: Deferred<i32> = Deferred::new();
    let line = line!() + 1;
    d.cancel();
    let e = cancelled(&failure_result_of::<CancelledError, _>(&d));
    assert_eq!(e.location().line(), line);
    assert!(e.location().file().ends_with("deferred.rs"));
}

// ---------------------------------------------------------------------------------------
// then / map
// ---------------------------------------------------------------------------------------

#[test]
fn map_and_then_change_the_value_type_along_the_chain() {
    let source: Deferred<u32> = Deferred::new();
    let text: Deferred<String> = source.clone().map(|n| format!("n={n}"));
    let len: Deferred<usize> = text.clone().then(|r: Result<String, Failure>| r.map(|s| s.len()));
    source.callback(42).unwrap();
    assert_eq!(success_result_of(&len), 4);
    // The results moved along: the earlier deferreds keep none.
    assert!(!source.has_result() && !text.has_result());
}

#[test]
fn map_passes_a_failure_straight_on_and_then_can_recover_it() {
    let source: Deferred<u32> = Deferred::new();
    let mapped: Deferred<String> = source.clone().map(|n| -> String { panic!("not called for {n}") });
    let recovered: Deferred<bool> = mapped.clone().then(|r: Result<String, Failure>| r.is_err());
    source.errback(GenericError("source failed")).unwrap();
    assert!(success_result_of(&recovered));
}

#[test]
fn then_callback_may_return_a_deferred_of_the_new_type() {
    let source = succeed(3u8);
    let later: Deferred<String> = Deferred::new();
    let l = later.clone();
    let out: Deferred<String> = source.map(move |_| l);
    assert_no_result(&out);
    later.callback("three".to_string()).unwrap();
    assert_eq!(success_result_of(&out), "three");
}

#[test]
fn panic_in_then_becomes_a_failure_of_the_new_deferred() {
    let out: Deferred<u8> = succeed(1u32).map(|_| -> u8 { panic!("map broke") });
    let f = failure_result_of::<PanicError, _>(&out);
    assert_eq!(f.downcast_ref::<PanicError>().unwrap().message(), "map broke");
}

#[test]
fn cancelling_the_mapped_deferred_cancels_the_source_with_the_same_id() {
    let trace = Trace::new();
    let t = trace.clone();
    let source: Deferred<u32> = Deferred::with_canceller(move |_| t.push("source creator"));
    let source_saw = Rc::new(RefCell::new(None));
    let s = source_saw.clone();
    source.add_errback(move |f: Failure| -> Result<u32, Failure> {
        *s.borrow_mut() = Some(cancelled(&f));
        Err(f)
    });
    let mapped: Deferred<String> = source.clone().map(|n| n.to_string());
    let further: Deferred<usize> = mapped.clone().map(|s| s.len());
    further.cancel();
    assert_eq!(trace.take(), ["source creator"]);
    let err = cancelled(&failure_result_of::<CancelledError, _>(&further));
    let at_source = source_saw.borrow_mut().take().unwrap();
    assert_eq!(at_source.id(), err.id());
    assert!(err.cancelled_by(&further));
    assert!(!err.cancelled_by(&mapped));
    assert!(!err.cancelled_by(&source));
}

#[test]
fn cancelling_a_mapped_deferred_after_the_source_fired_is_noop() {
    let count = Rc::new(Cell::new(0));
    let c = count.clone();
    let source: Deferred<u32> = Deferred::with_canceller(move |_| c.set(c.get() + 1));
    let mapped: Deferred<u32> = source.clone().map(|n| n + 1);
    source.callback(1).unwrap();
    mapped.cancel();
    assert_eq!(count.get(), 0);
    assert_eq!(success_result_of(&mapped), 2);
}

#[test]
fn cancelling_a_mapped_deferred_waiting_on_an_inner_cancels_the_inner() {
    let trace = Trace::new();
    let inner: Deferred<String> = Deferred::with_canceller({
        let t = trace.clone();
        move |_| t.push("inner creator")
    });
    let i = inner.clone();
    let mapped: Deferred<String> = succeed(1u32).map(move |_| i);
    assert_no_result(&mapped);
    mapped.cancel();
    assert_eq!(trace.take(), ["inner creator"]);
    failure_result_of::<CancelledError, _>(&mapped);
}

// ---------------------------------------------------------------------------------------
// Unhandled failures are logged once, at drop
// ---------------------------------------------------------------------------------------

/// TW test_defer.py test_errorLog
#[test]
fn unhandled_failure_in_a_dropped_deferred_is_logged_once() {
    let ((), errors) = logs::errors_during(|| {
        let d: Deferred<i32> = Deferred::new();
        d.add_callback(|_| -> Result<i32, Failure> { Err(Failure::new(GenericError("zero division"))) });
        d.callback(1).unwrap();
        let other_handle = d.clone();
        drop(d);
        drop(other_handle);
    });
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("Unhandled error in Deferred"), "{errors:?}");
    assert!(errors[0].contains("zero division"), "{errors:?}");
}

#[test]
fn unhandled_failure_is_logged_when_the_last_handle_goes_not_before() {
    let (d, errors) = logs::errors_during(|| {
        let d: Deferred<i32> = fail(GenericError("kept"));
        drop(d.clone());
        d
    });
    assert!(errors.is_empty(), "{errors:?}");
    let ((), errors) = logs::errors_during(|| drop(d));
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn reading_a_failure_with_result_does_not_handle_it() {
    let ((), errors) = logs::errors_during(|| {
        let d: Deferred<i32> = fail(GenericError("only looked at"));
        assert!(d.result().unwrap().is_err());
    });
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn handled_failures_are_not_logged() {
    let ((), errors) = logs::errors_during(|| {
        // Recovered by an errback.
        let d: Deferred<i32> = fail(GenericError("recovered"));
        d.add_errback(|_f: Failure| 0);
        // Taken out.
        let d: Deferred<i32> = fail(GenericError("taken"));
        assert!(d.take_result().unwrap().is_err());
        // Never fired, or fired with a value.
        let _pending: Deferred<i32> = Deferred::new();
        let _fine = succeed(1);
        // Recovered after a cancel.
        let d: Deferred<i32> = Deferred::new();
        d.add_errback(|f: Failure| -> Result<i32, Failure> {
            f.trap::<CancelledError>()?;
            Ok(-1)
        });
        d.cancel();
    });
    assert!(errors.is_empty(), "unexpected errors logged: {errors:?}");
}

/// TW test_defer.py test_chainedErrorCleanup
#[test]
fn failure_moved_to_an_outer_deferred_is_not_logged_by_the_inner() {
    let ((), errors) = logs::errors_during(|| {
        let d: Deferred<()> = Deferred::new();
        d.add_callback(|()| fail::<()>(GenericError("zoop")));
        d.callback(()).unwrap();
        let errors = Rc::new(Cell::new(0));
        let e = errors.clone();
        d.add_errback(move |f: Failure| {
            assert!(f.check::<GenericError>());
            e.set(e.get() + 1);
        });
        assert_eq!(errors.get(), 1);
    });
    assert!(errors.is_empty(), "unexpected errors logged: {errors:?}");
}

/// TW test_defer.py test_errorClearedByChaining
#[test]
fn failure_handed_to_an_errback_that_chains_is_not_logged() {
    let ((), errors) = logs::errors_during(|| {
        let bad: Deferred<()> = fail(GenericError("oh no"));
        let good: Deferred<()> = Deferred::new();
        let g = good.clone();
        bad.add_errback(move |_f: Failure| g);
        drop(good);
        drop(bad);
    });
    assert!(errors.is_empty(), "unexpected errors logged: {errors:?}");
}

#[test]
fn unhandled_failure_of_a_cancel_is_logged_too() {
    let ((), errors) = logs::errors_during(|| {
        let d: Deferred<()> = Deferred::new();
        d.cancel();
    });
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("Unhandled error in Deferred") && errors[0].contains("cancelled"),
        "{errors:?}"
    );
}

// ---------------------------------------------------------------------------------------
// No leaks: captured values are freed, chains do not keep themselves alive
// ---------------------------------------------------------------------------------------

#[test]
fn callbacks_are_freed_as_they_run_and_the_value_when_dropped() {
    let drops = Rc::new(Cell::new(0));
    let token = Rc::new(());
    let d: Deferred<Rc<DropCount>> = Deferred::new();
    for _ in 0..10 {
        let t = token.clone();
        d.add_callback(move |v| {
            let _keep = &t;
            v
        });
    }
    assert_eq!(Rc::strong_count(&token), 11);
    d.callback(Rc::new(DropCount(drops.clone()))).unwrap();
    assert_eq!(Rc::strong_count(&token), 1, "callbacks that ran are freed at once");
    assert_eq!(drops.get(), 0, "the result is still held");
    let other = d.clone();
    drop(d);
    assert_eq!(drops.get(), 0);
    drop(other);
    assert_eq!(drops.get(), 1, "the last handle frees the result");
}

#[test]
fn dropping_an_unfired_deferred_frees_its_callbacks_and_cancellers() {
    let token = Rc::new(());
    let d: Deferred<i32> = Deferred::with_canceller({
        let t = token.clone();
        move |_| drop(t)
    });
    let (t1, t2, t3) = (token.clone(), token.clone(), token.clone());
    d.add_canceller(move |_| drop(t1)).add_callbacks(
        move |x| {
            let _keep = &t2;
            x
        },
        move |f: Failure| -> Result<i32, Failure> {
            let _keep = &t3;
            Err(f)
        },
    );
    assert_eq!(Rc::strong_count(&token), 5);
    drop(d);
    assert_eq!(Rc::strong_count(&token), 1);
}

/// TW test_defer.py test_canceller_circular_reference_callback
#[test]
fn canceller_holding_its_own_deferred_is_freed_when_the_deferred_fires() {
    let drops = Rc::new(Cell::new(0));
    let slot: Rc<RefCell<Option<Deferred<DropCount>>>> = Rc::new(RefCell::new(None));
    let s = slot.clone();
    let d: Deferred<DropCount> = Deferred::with_canceller(move |_| {
        let _keep = &s;
    });
    // The canceller owns a handle to its own deferred: a cycle until the deferred fires.
    *slot.borrow_mut() = Some(d.clone());
    d.callback(DropCount(drops.clone())).unwrap();
    drop(d);
    drop(slot);
    assert_eq!(drops.get(), 1, "the fired deferred and its canceller were freed");
}

/// TW test_defer.py test_canceller_circular_reference_errback
#[test]
fn canceller_holding_its_own_deferred_is_freed_when_the_deferred_fails() {
    let token = Rc::new(());
    let d: Deferred<()> = Deferred::with_canceller({
        let t = token.clone();
        move |_| drop(t)
    });
    let me = d.clone();
    d.add_canceller(move |_| drop(me)).add_callback(|()| ());
    d.errback(GenericError("the test demands failures")).unwrap();
    failure_result_of::<GenericError, _>(&d);
    assert_eq!(Rc::strong_count(&token), 1, "the creator's canceller is dropped on firing");
}

/// TW test_defer.py test_canceller_circular_reference_non_final
#[test]
fn canceller_cycle_is_broken_even_when_the_chain_then_waits() {
    let token = Rc::new(());
    let d: Deferred<()> = Deferred::with_canceller({
        let t = token.clone();
        move |_| drop(t)
    });
    let inner: Deferred<()> = Deferred::new();
    let i = inner.clone();
    d.add_callback(move |()| i);
    d.callback(()).unwrap();
    assert!(d.is_paused());
    assert_eq!(Rc::strong_count(&token), 1);
}

#[test]
fn callback_holding_its_own_deferred_does_not_keep_it_alive_after_firing() {
    let drops = Rc::new(Cell::new(0));
    let d: Deferred<Rc<DropCount>> = Deferred::new();
    let me = d.clone();
    d.add_callback(move |v| {
        let _keep = &me;
        v
    });
    d.callback(Rc::new(DropCount(drops.clone()))).unwrap();
    drop(d);
    assert_eq!(drops.get(), 1);
}

#[test]
fn fire_and_forget_outer_chain_runs_when_the_inner_fires_then_is_freed() {
    let drops = Rc::new(Cell::new(0));
    let trace = Trace::new();
    let inner: Deferred<u32> = Deferred::new();
    {
        let outer: Deferred<u32> = Deferred::new();
        let (i, t, dc) = (inner.clone(), trace.clone(), DropCount(drops.clone()));
        outer.add_callback(move |_| i).add_callback(move |x| {
            let _keep = &dc;
            t.push(format!("outer got {x}"));
            x
        });
        outer.callback(0).unwrap();
        // The only handle to `outer` goes here; the inner keeps it while it waits.
    }
    assert_eq!(drops.get(), 0);
    inner.callback(9).unwrap();
    assert_eq!(trace.take(), ["outer got 9"]);
    assert_eq!(drops.get(), 1, "the outer's callback was freed after it ran");
    drop(inner);
}

#[test]
fn finished_nested_chain_frees_everything_when_the_handles_go() {
    let drops = Rc::new(Cell::new(0));
    let outer: Deferred<Rc<DropCount>> = Deferred::new();
    let inner: Deferred<Rc<DropCount>> = Deferred::new();
    let i = inner.clone();
    outer.add_callback(move |_| i);
    outer.callback(Rc::new(DropCount(drops.clone()))).unwrap();
    assert_eq!(drops.get(), 1, "the outer's first value was dropped by the callback");
    inner.callback(Rc::new(DropCount(drops.clone()))).unwrap();
    drop(inner);
    assert_eq!(drops.get(), 1);
    drop(outer);
    assert_eq!(drops.get(), 2);
}

// ---------------------------------------------------------------------------------------
// Deep chains: no recursion, linear time
// ---------------------------------------------------------------------------------------

const DEEP: usize = 100_000;

/// TW test_defer.py test_boundedStackDepth
#[test]
fn deep_chain_of_returned_deferreds_fired_in_reverse_order() {
    let ds: Vec<Deferred<u64>> = (0..DEEP).map(|_| Deferred::new()).collect();
    for i in 0..DEEP - 1 {
        let next = ds[i + 1].clone();
        ds[i].add_callback(move |x| {
            next.add_callback(move |y| y + x);
            next
        });
    }
    // Fire the innermost first, the outermost last: each callback finds the deferred it
    // returns already fired.
    for (i, d) in ds.iter().enumerate().rev() {
        d.callback(i as u64).unwrap();
    }
    let expected = (DEEP as u64 - 1) + (0..DEEP as u64 - 1).sum::<u64>();
    assert_eq!(success_result_of(&ds[0]), expected);
}

#[test]
fn deep_chain_of_returned_deferreds_fired_outermost_first() {
    let ds: Vec<Deferred<u64>> = (0..DEEP).map(|_| Deferred::new()).collect();
    for i in 0..DEEP - 1 {
        let next = ds[i + 1].clone();
        ds[i].add_callback(move |_| next).add_callback(|x| x + 1);
    }
    // Each fire leaves one more deferred waiting on the next one.
    for d in &ds[..DEEP - 1] {
        d.callback(0).unwrap();
        assert!(d.is_paused());
    }
    ds[DEEP - 1].callback(0).unwrap();
    assert_eq!(success_result_of(&ds[0]), DEEP as u64 - 1);
    assert!(!ds[0].is_paused());
}

#[test]
fn long_map_chain_runs_without_overflow() {
    let first: Deferred<u64> = Deferred::new();
    let mut last: Deferred<u64> = first.clone().map(|x| x + 1);
    for _ in 1..DEEP {
        last = last.map(|x| x + 1);
    }
    first.callback(0).unwrap();
    assert_eq!(success_result_of(&last), DEEP as u64);
}

#[test]
fn cancel_reaches_through_a_deep_chain_of_waiting_deferreds() {
    let trace = Trace::new();
    let ds: Vec<Deferred<u64>> = (0..DEEP - 1)
        .map(|_| Deferred::new())
        .chain(std::iter::once(Deferred::with_canceller({
            let t = trace.clone();
            move |_| t.push("innermost creator")
        })))
        .collect();
    for i in 0..DEEP - 1 {
        let next = ds[i + 1].clone();
        ds[i].add_callback(move |_| next);
    }
    for d in &ds[..DEEP - 1] {
        d.callback(0).unwrap();
    }
    ds[DEEP / 2].add_canceller(record(&trace, "middle layer")).add_callback(|x| x);
    ds[0].cancel();
    assert_eq!(trace.take(), ["middle layer", "innermost creator"]);
    let err = cancelled(&failure_result_of::<CancelledError, _>(&ds[0]));
    assert!(err.cancelled_by(&ds[0]));
}

#[test]
fn cancel_travels_back_through_a_map_chain_to_the_source() {
    let cancels = Rc::new(Cell::new(0));
    let c = cancels.clone();
    let first: Deferred<u64> = Deferred::with_canceller(move |_| c.set(c.get() + 1));
    let mut last: Deferred<u64> = first.clone().map(|x| x + 1);
    for _ in 1..200 {
        last = last.map(|x| x + 1);
    }
    last.cancel();
    assert_eq!(cancels.get(), 1);
    let err = cancelled(&failure_result_of::<CancelledError, _>(&last));
    assert!(err.cancelled_by(&last));
}

/// Each `then`/`map` link cancels its source from inside its creator's canceller; the
/// cancel must still run in bounded stack (it once recursed once per link and a debug
/// build overflowed near 1,000 links).
#[test]
fn cancel_of_a_long_map_chain_does_not_overflow() {
    let first: Deferred<u64> = Deferred::new();
    let mut last: Deferred<u64> = first.clone().map(|x| x + 1);
    for _ in 1..DEEP {
        last = last.map(|x| x + 1);
    }
    last.cancel();
    failure_result_of::<CancelledError, _>(&last);
    assert!(first.is_called());
}
