//! Deferred cancellation: `cancel`, the creator's canceller, late fires after a cancel,
//! and cancelling a Deferred that waits on another.
//!
//! Each test that ports one of Twisted's `src/twisted/test/test_defer.py` names it with a
//! `/// TW test_defer.py test_xxx` line; tests without one check weft's own additions.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use weft::{succeed, CancelledError, Deferred, Failure};

use crate::support::{
    assert_no_result, cancelled, failure_result_of, success_result_of, GenericError, Trace,
};

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
