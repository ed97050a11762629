//! What dropping a Deferred does: unhandled failures are logged once, and captured
//! values are freed (no chain keeps itself alive).
//!
//! Each test that ports one of Twisted's `src/twisted/test/test_defer.py` names it with a
//! `/// TW test_defer.py test_xxx` line; tests without one check weft's own additions.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use weft::{fail, succeed, CancelledError, Deferred, Failure, ResultConsumedError};

use crate::support::{failure_result_of, logs, success_result_of, DropCount, GenericError, Trace};

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

/// A `ResultConsumedError` (what steps added after the result moved elsewhere get) is
/// never reported as unhandled: the result it stands for went somewhere that handles it.
#[test]
fn result_consumed_error_is_never_reported() {
    let ((), errors) = logs::errors_during(|| {
        let d: Deferred<u32> = Deferred::new();
        let moved = d.clone().map(|x| x + 1);
        d.add_callback(|x| x);
        d.callback(1).unwrap();
        assert_eq!(success_result_of(&moved), 2);
        assert!(d.result().unwrap().unwrap_err().check::<ResultConsumedError>());
        drop(d);
    });
    assert!(errors.is_empty(), "{errors:?}");
}

/// A paused Deferred dropped while it holds a failure reports it: nothing handled it and,
/// paused, nothing ever will. (Twisted stays silent here: it records a failure for
/// reporting only when the chain runs to its end.)
#[test]
fn paused_deferred_dropped_holding_a_failure_reports_it() {
    let ((), errors) = logs::errors_during(|| {
        let d: Deferred<u32> = Deferred::new();
        d.pause();
        d.errback(GenericError("never handled")).unwrap();
        d.add_errback(|f: Failure| -> Result<u32, Failure> { panic!("paused: never runs: {f}") });
        drop(d);
    });
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("never handled"), "{errors:?}");
}
