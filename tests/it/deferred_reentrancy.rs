//! Deferred re-entrancy: callbacks that add to, fire, pause or cancel Deferreds while
//! a chain runs.
//!
//! Each test that ports one of Twisted's `src/twisted/test/test_defer.py` names it with a
//! `/// TW test_defer.py test_xxx` line; tests without one check weft's own additions.

use std::cell::Cell;
use std::rc::Rc;

use weft::{Deferred, Failure, ResultConsumedError};

use crate::support::{failure_result_of, success_result_of, GenericError, Trace};

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
// Steps added to a Deferred while the chain it handed its result to runs
// ---------------------------------------------------------------------------------------

/// `outer` waits on `inner`; when `inner` hands its result over, `outer`'s callbacks run
/// from inside `inner`'s loop. A step one of them adds to `inner` runs at once, as in
/// Twisted (whose `inner` is not running callbacks at that point), not after `outer`'s
/// chain. It gets a `ResultConsumedError`, the typed stand-in for Twisted's `None`.
#[test]
fn step_added_to_the_inner_from_the_outer_chain_runs_at_once() {
    let (inner, outer) = (Deferred::<u32>::new(), Deferred::<u32>::new());
    let trace = Trace::new();
    let i = inner.clone();
    outer.add_callback(move |_| i);
    let (i, t) = (inner.clone(), trace.clone());
    outer.add_callback(move |v| {
        t.push("outer 1");
        let t2 = t.clone();
        i.add_both(move |r: Result<u32, Failure>| -> Result<u32, Failure> {
            t2.push(if r.as_ref().is_err_and(|f| f.check::<ResultConsumedError>()) {
                "inner late step: consumed"
            } else {
                "inner late step: other"
            });
            r
        });
        t.push("outer 1 returns");
        v
    });
    let t = trace.clone();
    outer.add_callback(move |v| {
        t.push("outer 2");
        v
    });
    outer.callback(0).unwrap();
    inner.callback(7).unwrap();
    assert_eq!(trace.take(), ["outer 1", "inner late step: consumed", "outer 1 returns", "outer 2"]);
    assert_eq!(success_result_of(&outer), 7);
    let _ = inner.take_result();
}

/// The inner's steps added before `outer` began waiting run before the hand-off; those
/// added after it run after the hand-off, once each.
#[test]
fn inner_steps_run_around_the_hand_off_once_each() {
    let (inner, outer) = (Deferred::<u32>::new(), Deferred::<u32>::new());
    let trace = Trace::new();
    let t = trace.clone();
    inner.add_callback(move |v| {
        t.push("inner before");
        v
    });
    let i = inner.clone();
    outer.add_callback(move |_| i);
    outer.callback(0).unwrap();
    let t = trace.clone();
    inner.add_both(move |r: Result<u32, Failure>| -> Result<u32, Failure> {
        t.push("inner after");
        r
    });
    inner.callback(1).unwrap();
    assert_eq!(trace.take(), ["inner before", "inner after"]);
    assert_eq!(success_result_of(&outer), 1);
    let _ = inner.take_result();
}

/// A callback returning a Deferred that is itself in the middle of running its callbacks
/// (it fired this one from inside a callback): Twisted takes that Deferred's current
/// intermediate result at once. In weft that value was moved into the running callback
/// and cannot be shared, so the chain waits for the other Deferred's chain as it stands
/// (the steps already added to it run first) and takes the result there.
#[test]
fn returning_a_deferred_that_is_mid_run_waits_for_its_chain() {
    let (running, waiter) = (Deferred::<u32>::new(), Deferred::<u32>::new());
    let trace = Trace::new();
    let r = running.clone();
    waiter.add_callback(move |_| r);
    let (w, t) = (waiter.clone(), trace.clone());
    running.add_callback(move |v| {
        w.callback(0).unwrap(); // `waiter`'s callback returns `running`, mid-run
        t.push(format!("waiter paused: {}", w.is_paused()));
        v + 1
    });
    let t = trace.clone();
    running.add_callback(move |v| {
        t.push(format!("running's second step gets {v}"));
        v * 10
    });
    running.callback(1).unwrap();
    assert_eq!(trace.take(), ["waiter paused: true", "running's second step gets 2"]);
    assert_eq!(success_result_of(&waiter), 20);
}

/// Found by the model-based test (`deferred_model.rs`): `d0` hands its result to `d1`,
/// whose errback returns `d0` again; `d0`'s next errback, run in a loop of its own from
/// inside the hand-over, makes `d0` wait on `d2`. The hand-over must leave `d0` waiting
/// (it once marked it consumed, and `d2`'s result was then dropped on the floor).
#[test]
fn a_deferred_that_waits_again_during_its_hand_over_keeps_waiting() {
    let (d0, d1, d2) = (Deferred::<u32>::new(), Deferred::<u32>::new(), Deferred::<u32>::new());
    d0.errback(GenericError("first")).unwrap();
    d0.pause();
    let d = d0.clone();
    d1.add_callback(move |_| d);
    d1.callback(0).unwrap();
    let d = d0.clone();
    d1.add_errback(move |_| d);
    let d = d2.clone();
    d0.add_errback(move |_| d);
    d0.unpause().unwrap();
    assert!(d0.is_paused() && d1.is_paused(), "d0 waits on d2, d1 on d0");
    d2.callback(5).unwrap();
    assert_eq!(success_result_of(&d1), 5);
}
