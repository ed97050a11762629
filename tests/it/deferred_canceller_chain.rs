//! The canceller chain, from the invoker back to the responder (layer cancellers),
//! and which cancel a `CancelledError` came from (`cancelled_by`, `CancelId`).
//!
//! Each test that ports one of Twisted's `src/twisted/test/test_defer.py` names it with a
//! `/// TW test_defer.py test_xxx` line; tests without one check weft's own additions.

use std::cell::RefCell;
use std::rc::Rc;

use weft::{CancelledError, Deferred, Failure};

use crate::support::{cancelled, failure_result_of, logs, record, success_result_of, Trace};

// ---------------------------------------------------------------------------------------
// The canceller chain: from the invoker back to the responder
// ---------------------------------------------------------------------------------------

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
    assert_eq!(e.location().file(), file!());
}
