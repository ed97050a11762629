//! Deferred chaining: a callback returning a Deferred, `chain_deferred`, and the
//! type-changing `then`/`map`.
//!
//! Each test that ports one of Twisted's `src/twisted/test/test_defer.py` names it with a
//! `/// TW test_defer.py test_xxx` line; tests without one check weft's own additions.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use weft::{
    fail, succeed, AlreadyCalledError, CancelledError, ChainedToSelfError, Deferred, Failure, PanicError,
    ResultConsumedError,
};

use crate::support::{
    assert_no_result, cancelled, failure_result_of, logs, success_result_of, GenericError, Trace,
};

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

/// The result of a Deferred waited on goes on through the chains that wait on it in one
/// loop (as Twisted's `_runCallbacks` does): a panic in a waiting Deferred's next
/// callback fails that Deferred, not the one it waited on, and the chains below it, and
/// a paused one waits for `unpause`.
#[test]
fn a_result_goes_on_through_the_waiting_chains_and_a_panic_fails_the_right_one() {
    let inner: Deferred<u32> = Deferred::new();
    let (middle, outer): (Deferred<u32>, Deferred<u32>) = (Deferred::new(), Deferred::new());
    let i = inner.clone();
    middle.add_callback(move |_| i).add_callback(|n: u32| -> u32 { panic!("middle broke on {n}") });
    let m = middle.clone();
    outer.add_callback(move |_| m);
    let trace = Trace::new();
    let t = trace.clone();
    outer.add_errback(move |f: Failure| -> Result<u32, Failure> {
        t.push(f.to_string());
        Ok(9)
    });
    middle.callback(0).unwrap();
    outer.callback(0).unwrap();
    outer.pause();
    inner.callback(5).unwrap();
    // The panic failed `middle`, whose failure went on to the paused outer chain, which
    // has not run yet.
    assert!(!middle.has_result() && !inner.has_result());
    assert_eq!(trace.len(), 0);
    assert_no_result(&outer);
    outer.unpause().unwrap();
    let seen = trace.take();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].contains("middle broke on 5"), "{seen:?}");
    assert_eq!(success_result_of(&outer), 9);
}

/// A chain of 10,000 Deferreds, each waiting on the next, fires through when the last
/// one does, each level's callback running once, in order from the innermost.
#[test]
fn a_deep_wait_chain_fires_through_in_order() {
    let n = 10_000;
    let order = Rc::new(RefCell::new(Vec::new()));
    let ds: Vec<Deferred<u64>> = (0..n).map(|_| Deferred::new()).collect();
    for i in (0..n - 1).rev() {
        let next = ds[i + 1].clone();
        ds[i].add_callback(move |_| next);
        let o = order.clone();
        ds[i].add_callback(move |x: u64| {
            o.borrow_mut().push(i);
            x + 1
        });
        ds[i].callback(0).unwrap();
    }
    ds[n - 1].callback(0).unwrap();
    assert_eq!(success_result_of(&ds[0]), n as u64 - 1);
    let expected: Vec<usize> = (0..n - 1).rev().collect();
    assert_eq!(*order.borrow(), expected);
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

/// The source of `map` is owned by the mapped Deferred until it settles: cancelling the
/// mapped one reaches a source nobody else holds, and the source canceller's value goes
/// through the mapping.
#[test]
fn cancelling_a_mapped_deferred_reaches_a_source_it_alone_holds() {
    let doubled = Deferred::<u32>::with_canceller(|d| d.callback(21).unwrap()).map(|x| x * 2);
    doubled.cancel();
    assert_eq!(success_result_of(&doubled), 42);
}

/// `chain_deferred` into a target that has already fired fails the source's chain with
/// `AlreadyCalledError`, as Twisted's `d1.addCallbacks(d2.callback, d2.errback)` does;
/// the error hands back what could not be delivered.
#[test]
fn chain_deferred_into_a_fired_target_fails_the_source_chain() {
    let (a, b) = (Deferred::<i32>::new(), Deferred::<i32>::new());
    a.chain_deferred(&b);
    b.callback(1).unwrap();
    let ((), errors) = logs::errors_during(|| a.callback(2).unwrap());
    assert!(errors.is_empty(), "{errors:?}");
    let f = failure_result_of::<AlreadyCalledError<i32>, _>(&a);
    assert_eq!(*f.downcast_ref::<AlreadyCalledError<i32>>().unwrap().value(), 2);
    assert_eq!(success_result_of(&b), 1);

    let (a, b) = (Deferred::<i32>::new(), Deferred::<i32>::new());
    a.chain_deferred(&b);
    b.callback(1).unwrap();
    a.errback(GenericError("undeliverable")).unwrap();
    let f = failure_result_of::<AlreadyCalledError<Failure>, _>(&a);
    let original = f.downcast_ref::<AlreadyCalledError<Failure>>().unwrap().value();
    assert!(original.check::<GenericError>());
    let _ = b.take_result();
}
