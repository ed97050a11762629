//! Deferred callbacks and errbacks: values and failures flowing down the chain,
//! `maybe_deferred`, panics in callbacks, and `AlreadyCalledError`.
//!
//! Each test that ports one of Twisted's `src/twisted/test/test_defer.py` names it with a
//! `/// TW test_defer.py test_xxx` line; tests without one check weft's own additions.

use std::cell::RefCell;
use std::rc::Rc;

use weft::{fail, maybe_deferred, succeed, AlreadyCalledError, Deferred, Failure, PanicError};

use crate::support::{
    assert_no_result, debugging, failure_result_of, success_result_of, GenericError, Trace,
};

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
    // The plain message is the one without debugging, which other tests turn on.
    let _off = debugging(false);
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
