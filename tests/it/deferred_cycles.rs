//! Cycles between Deferreds: a chain that would wait on itself through others fails
//! where the cycle is made, and no cancel walk or reference cycle outlives it.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use weft::{AlreadyCalledError, CancelledError, Deferred, WaitCycleError};

use crate::support::{failure_result_of, logs, DropCount, GenericError};

/// Deferreds `ds[i]` whose first callback returns `ds[(i + 1) % n]`: a ring.
fn ring(n: usize) -> Vec<Deferred<u32>> {
    let ds: Vec<Deferred<u32>> = (0..n).map(|_| Deferred::new()).collect();
    for (i, d) in ds.iter().enumerate() {
        let next = ds[(i + 1) % n].clone();
        d.add_callback(move |_| next);
    }
    ds
}

/// The case: d0's callback returns d1, d1's returns d0, both fired. The second
/// fire closes the cycle, so its callback's result is a `WaitCycleError`, which reaches
/// both; a cancel afterwards has nothing to do and returns.
#[test]
fn two_deferreds_waiting_on_each_other_fail_with_wait_cycle_error() {
    let ds = ring(2);
    ds[0].callback(0).unwrap();
    assert!(ds[0].is_paused(), "d0 waits on d1");
    ds[1].callback(1).unwrap();
    let started = Instant::now();
    ds[0].cancel();
    assert!(started.elapsed() < Duration::from_secs(60), "the cancel returned");
    // d1's failure was handed to d0, which waited on it.
    assert!(ds[1].is_called() && !ds[1].has_result() && !ds[1].is_paused());
    failure_result_of::<WaitCycleError, _>(&ds[0]);
}

/// Exactly one of `ds` holds a `WaitCycleError` (the outermost: the others handed it on
/// to the one waiting on them), and none is left waiting.
#[track_caller]
fn one_holds_the_wait_cycle_error(ds: &[Deferred<u32>]) {
    assert!(ds.iter().all(|d| d.is_called() && !d.is_paused()));
    let holders: Vec<_> = ds.iter().filter(|d| d.has_result()).collect();
    assert_eq!(holders.len(), 1);
    failure_result_of::<WaitCycleError, _>(holders[0]);
}

/// The cycle may run through any number of Deferreds; firing in any order closes it
/// on the last fire.
#[test]
fn a_longer_ring_of_waiting_deferreds_fails_where_it_closes() {
    for order in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]] {
        let ds = ring(4);
        for i in order {
            ds[i].callback(i as u32).unwrap();
        }
        one_holds_the_wait_cycle_error(&ds);
    }
}

/// Returning a Deferred that waits on something else (not on the running one) is not a
/// cycle: the chain waits as usual.
#[test]
fn waiting_on_a_deferred_that_waits_elsewhere_is_no_cycle() {
    let (a, b, c) = (Deferred::<u32>::new(), Deferred::<u32>::new(), Deferred::<u32>::new());
    let c2 = c.clone();
    b.add_callback(move |_| c2);
    b.callback(0).unwrap();
    let b2 = b.clone();
    a.add_callback(move |_| b2);
    // `a` has a waiter of its own, so the check walks b's chain, and finds c, not a.
    let outer = Deferred::<u32>::new();
    let a2 = a.clone();
    outer.add_callback(move |_| a2);
    outer.callback(0).unwrap();
    a.callback(0).unwrap();
    assert!(a.is_paused() && outer.is_paused());
    c.callback(7).unwrap();
    assert_eq!(outer.take_result().unwrap().unwrap(), 7);
}

/// A cancel of a ring member that was never closed (the last fire did not happen)
/// reaches the creator's end and returns.
#[test]
fn cancel_of_an_open_ring_reaches_its_end() {
    let ds = ring(3);
    ds[0].callback(0).unwrap();
    ds[1].callback(1).unwrap();
    let (_, errors) = logs::errors_during(|| ds[0].cancel());
    assert!(errors.is_empty(), "{errors:?}");
    failure_result_of::<CancelledError, _>(&ds[0]);
    // ds[2], the innermost and still pending, was the one cancelled; its failure passed
    // its callback by and was handed on, through ds[1], to ds[0].
    for d in &ds[1..] {
        assert!(d.is_called() && !d.has_result());
    }
}

/// `d.chain_deferred(&d)`: as in Twisted, the step fires `d` from inside its own chain,
/// which fails with `AlreadyCalledError` holding the result; and it keeps no reference
/// to `d`, so an unfired `d` is freed with its last handle.
#[test]
fn chain_deferred_to_itself_fails_the_chain_and_keeps_no_reference() {
    let d: Deferred<u32> = Deferred::new();
    d.chain_deferred(&d);
    d.callback(5).unwrap();
    let f = failure_result_of::<AlreadyCalledError<u32>, _>(&d);
    assert_eq!(*f.downcast_ref::<AlreadyCalledError<u32>>().unwrap().value(), 5);

    let drops = Rc::new(Cell::new(0));
    let d: Deferred<u32> = Deferred::new();
    let counted = DropCount(drops.clone());
    d.add_callback(move |x| {
        let _keep = &counted;
        x
    });
    d.chain_deferred(&d);
    drop(d);
    assert_eq!(drops.get(), 1, "the unfired Deferred was freed");
}

/// a→b→a: when either is dropped by everyone outside, the pair is freed, and a failure
/// one of them holds is reported.
#[test]
fn chain_deferred_ring_is_freed_and_its_unhandled_failure_reported() {
    let drops = Rc::new(Cell::new(0));
    let (a, b) = (Deferred::<u32>::new(), Deferred::<u32>::new());
    let counted = DropCount(drops.clone());
    b.add_callback(move |x| {
        let _keep = &counted;
        x
    });
    a.chain_deferred(&b);
    b.chain_deferred(&a);
    a.pause();
    a.errback(GenericError("held by a paused ring")).unwrap();
    let ((), errors) = logs::errors_during(|| drop((a, b)));
    assert_eq!(drops.get(), 1, "both were freed");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("held by a paused ring"), "{errors:?}");
}

/// A three-link ring of chain_deferred is freed too.
#[test]
fn longer_chain_deferred_ring_is_freed() {
    let drops = Rc::new(Cell::new(0));
    let ds: Vec<Deferred<u32>> = (0..3).map(|_| Deferred::new()).collect();
    for d in &ds {
        let counted = DropCount(drops.clone());
        d.add_callback(move |x| {
            let _keep = &counted;
            x
        });
    }
    for i in 0..3 {
        ds[i].chain_deferred(&ds[(i + 1) % 3]);
    }
    drop(ds);
    assert_eq!(drops.get(), 3);
}

/// A fired ring behaves as Twisted's: a's result goes to b, whose chain fires a again,
/// which is already called, so b's chain fails with `AlreadyCalledError`.
#[test]
fn fired_chain_deferred_ring_ends_in_already_called_error() {
    let (a, b) = (Deferred::<u32>::new(), Deferred::<u32>::new());
    a.chain_deferred(&b);
    b.chain_deferred(&a);
    a.callback(3).unwrap();
    assert!(a.is_called() && !a.has_result(), "a's result moved to b");
    let f = failure_result_of::<AlreadyCalledError<u32>, _>(&b);
    assert_eq!(*f.downcast_ref::<AlreadyCalledError<u32>>().unwrap().value(), 3);
}

/// Found by the model-based test (`deferred_model.rs`): `d1`'s errback returns `d0`,
/// whose chain runs at once inside that call and whose errback returns `d1`, which was
/// still running, not yet waiting. That closed a ring the check did not see (the next
/// cancel then went round it). Now `d1` counts as waiting on `d0` from the moment `d0`
/// holds its continuation, so `d0`'s errback gets a `WaitCycleError`.
#[test]
fn ring_closed_while_the_returned_deferred_runs_is_a_wait_cycle() {
    let d0: Deferred<u32> = Deferred::new();
    let d1: Deferred<u32> = Deferred::with_canceller(|d| d.callback(20).unwrap());
    d1.cancel(); // the canceller fires 20
    let d = d0.clone();
    d1.add_callback(move |_| d); // d1 waits on d0
    let d = d1.clone();
    d0.add_errback(move |_| d);
    let d = d0.clone();
    d1.add_callbacks(|v| v, move |_| d);
    d1.cancel(); // d0 fails; d1 gets the failure and its errback returns d0 again
    d1.cancel();
    assert!(!d0.is_paused() && !d1.is_paused(), "neither waits on the other");
    failure_result_of::<WaitCycleError, _>(&d1);
}
