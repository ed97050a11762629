//! Deferred `pause` and `unpause`.
//!
//! Each test that ports one of Twisted's `src/twisted/test/test_defer.py` names it with a
//! `/// TW test_defer.py test_xxx` line; tests without one check weft's own additions.

use std::cell::Cell;
use std::rc::Rc;

use weft::{fail, Deferred, Failure, NotPausedError};

use crate::support::{assert_no_result, success_result_of, GenericError, Trace};

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
