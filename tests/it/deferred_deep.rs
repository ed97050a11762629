//! Deep Deferred chains run, cancel and drop without recursion, in linear time.
//!
//! Each test that ports one of Twisted's `src/twisted/test/test_defer.py` names it with a
//! `/// TW test_defer.py test_xxx` line; tests without one check weft's own additions.

use std::cell::Cell;
use std::rc::Rc;

use weft::{CancelledError, Deferred};

use crate::support::{cancelled, failure_result_of, record, success_result_of, Trace};

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
