//! Time through the public API: timers, `LoopingCall` and `defer_later` under the
//! deterministic `Clock`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use weft::reactor::{defer_later, LoopingCall};
use weft::{CancelledError, Clock, Deferred, Failure, PanicError, ReactorTime};

use crate::support::secs;

// ---- timers under the Clock ----

#[test]
fn clock_timers_fire_in_order_fifo_among_ties() {
    let clock = Clock::new();
    let order = Rc::new(RefCell::new(Vec::new()));
    for (name, delay) in [("c", 3), ("a1", 1), ("b", 2), ("a2", 1)] {
        let o = order.clone();
        clock.call_later(secs(delay), move || o.borrow_mut().push(name));
    }
    clock.advance(secs(1));
    assert_eq!(*order.borrow(), ["a1", "a2"]);
    clock.advance(secs(5));
    assert_eq!(*order.borrow(), ["a1", "a2", "b", "c"]);
}

#[test]
fn clock_cancel_and_reset() {
    let clock = Clock::new();
    let hits = Rc::new(RefCell::new(Vec::new()));
    let h = hits.clone();
    let a = clock.call_later(secs(5), move || h.borrow_mut().push("a"));
    let h = hits.clone();
    let b = clock.call_later(secs(5), move || h.borrow_mut().push("b"));
    a.cancel().unwrap();
    b.reset(secs(10)).unwrap();
    clock.advance(secs(9));
    assert!(hits.borrow().is_empty());
    clock.advance(secs(1));
    assert_eq!(*hits.borrow(), ["b"]);
    assert_eq!(clock.pending_calls(), 0);
}

#[test]
fn looping_call_runs_on_the_interval_grid_and_stops() {
    let clock = Clock::new();
    let times = Rc::new(RefCell::new(Vec::new()));
    let (t, c) = (times.clone(), clock.clone());
    let lc = LoopingCall::new(clock.clone(), move || t.borrow_mut().push(c.now()));
    let done = lc.start(secs(2), false);
    clock.advance(secs(2));
    clock.advance(secs(5)); // late: the slot at 4 s runs at 7 s, the one at 6 s is skipped
    clock.advance(secs(1));
    assert_eq!(*times.borrow(), [secs(2), secs(7), secs(8)]);
    assert!(!done.is_called());
    lc.stop();
    assert!(done.result().unwrap().is_ok());
    clock.advance(secs(100));
    assert_eq!(times.borrow().len(), 3);
    assert_eq!(clock.pending_calls(), 0);
}

#[test]
fn looping_call_panic_fails_its_deferred() {
    let clock = Clock::new();
    let n = Rc::new(Cell::new(0));
    let n2 = n.clone();
    let lc = LoopingCall::new(clock.clone(), move || {
        n2.set(n2.get() + 1);
        if n2.get() == 2 {
            panic!("second call fails");
        }
    });
    let done = lc.start(secs(1), true);
    clock.pump(&[secs(1), secs(1), secs(1)]);
    assert_eq!(n.get(), 2);
    assert!(!lc.is_running());
    assert!(done.take_result().unwrap().unwrap_err().check::<PanicError>());
}

#[test]
fn defer_later_fires_and_cancel_cancels_the_timer() {
    let clock = Clock::new();
    let d: Deferred<u32> = defer_later(&clock, secs(3), || 7);
    clock.advance(secs(3));
    assert_eq!(d.result().unwrap().unwrap(), 7);

    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    let d: Deferred<()> = defer_later(&clock, secs(3), move || r.set(true));
    assert_eq!(clock.pending_calls(), 1);
    d.cancel();
    assert_eq!(clock.pending_calls(), 0);
    clock.advance(secs(10));
    assert!(!ran.get());
    assert!(d.take_result().unwrap().unwrap_err().check::<CancelledError>());
}

// ---- LoopingCall: Twisted's test_task.py ----

fn ms(m: u64) -> std::time::Duration {
    std::time::Duration::from_millis(m)
}

/// TW test_task.py ReactorLoopTests.testFailAndStop: `stop()` inside the call, then a
/// failure in that same call. Before, `stop()` fired the Deferred at once with `()` and
/// the failure was lost.
#[test]
fn stop_inside_the_call_fires_after_it_with_its_failure() {
    let clock = Clock::new();
    let cell: Rc<RefCell<Option<LoopingCall>>> = Rc::new(RefCell::new(None));
    let c = cell.clone();
    let lc = LoopingCall::new(clock.clone(), move || -> Result<(), Failure> {
        c.borrow().as_ref().unwrap().stop();
        Err(Failure::msg("bar"))
    });
    *cell.borrow_mut() = Some(lc.clone());
    let done = lc.start(secs(1), true);
    let f = done.take_result().unwrap().unwrap_err();
    assert_eq!(f.to_string().split(" (").next(), Some("bar"));
    assert!(!lc.is_running());
    assert_eq!(clock.pending_calls(), 0);
    // The loop's function holds the loop through the cell: break that cycle.
    cell.borrow_mut().take();

    // stop() inside a call that succeeds: the Deferred fires with () once it returns.
    let fired_during_call = Rc::new(Cell::new(None));
    type Handles = Option<(LoopingCall, Deferred<()>)>;
    let cell: Rc<RefCell<Handles>> = Rc::new(RefCell::new(None));
    let (c, fd) = (cell.clone(), fired_during_call.clone());
    let lc = LoopingCall::new(clock.clone(), move || {
        if let Some((lc, done)) = c.borrow().as_ref() {
            lc.stop();
            fd.set(Some(done.is_called()));
        }
    });
    let done = lc.start(secs(1), false);
    *cell.borrow_mut() = Some((lc.clone(), done.clone()));
    clock.advance(secs(1));
    assert_eq!(fired_during_call.get(), Some(false), "not fired while the call ran");
    assert!(done.take_result().unwrap().is_ok());
    assert_eq!(clock.pending_calls(), 0);
    // The loop's function holds the loop through the cell: break that cycle.
    cell.borrow_mut().take();
}

/// TW test_task.py ReactorLoopTests.testFailure: a function returning `Err` fails the
/// Deferred from `start()` (not only a panic).
#[test]
fn an_err_from_the_function_fails_the_loop() {
    let clock = Clock::new();
    let n = Rc::new(Cell::new(0));
    let n2 = n.clone();
    let lc = LoopingCall::new(clock.clone(), move || -> Result<(), Failure> {
        n2.set(n2.get() + 1);
        if n2.get() == 3 {
            return Err(Failure::msg("third call fails"));
        }
        Ok(())
    });
    let done = lc.start(secs(1), true);
    clock.pump(&[secs(1); 5]);
    assert_eq!(n.get(), 3);
    assert!(!lc.is_running());
    assert!(done.take_result().unwrap().is_err());
    assert_eq!(clock.pending_calls(), 0);
}

/// TW test_task.py ReactorLoopTests.testEveryIteration, on the Clock.
#[test]
fn a_zero_interval_calls_on_every_iteration_until_stopped() {
    let clock = Clock::new();
    let ran = Rc::new(Cell::new(0));
    let cell: Rc<RefCell<Option<LoopingCall>>> = Rc::new(RefCell::new(None));
    let (r, c) = (ran.clone(), cell.clone());
    let lc = LoopingCall::new(clock.clone(), move || {
        r.set(r.get() + 1);
        if r.get() > 5 {
            c.borrow().as_ref().unwrap().stop();
        }
    });
    *cell.borrow_mut() = Some(lc.clone());
    let done = lc.start(Duration::ZERO, true);
    clock.advance(Duration::ZERO);
    assert_eq!(ran.get(), 6);
    assert!(done.take_result().unwrap().is_ok());
    // The loop's function holds the loop through the cell: break that cycle.
    cell.borrow_mut().take();
}

/// TW test_task.py ReactorLoopTests.testWaitDeferred / testFailurePropagation: a
/// function returning a Deferred is not called again before it fires, and its failure
/// fails the loop.
#[test]
fn a_returned_deferred_is_waited_for_and_its_failure_stops_the_loop() {
    let clock = Clock::new();
    let calls = Rc::new(Cell::new(0));
    let pending: Rc<RefCell<Option<Deferred<()>>>> = Rc::new(RefCell::new(None));
    let (n, p) = (calls.clone(), pending.clone());
    let lc = LoopingCall::new(clock.clone(), move || {
        n.set(n.get() + 1);
        let d = Deferred::new();
        *p.borrow_mut() = Some(d.clone());
        d
    });
    let done = lc.start(ms(200), true);
    clock.pump(&[ms(200), ms(800)]);
    assert_eq!(calls.get(), 1, "not called again while its Deferred is pending");
    assert_eq!(clock.pending_calls(), 0);
    pending.borrow_mut().take().unwrap().callback(()).unwrap();
    clock.advance(ms(200)); // back on the 200 ms grid: the next slot is at 1.2 s
    assert_eq!(calls.get(), 2);
    pending.borrow_mut().take().unwrap().errback(Failure::msg("TestException")).unwrap();
    assert!(done.take_result().unwrap().is_err());
    assert!(!lc.is_running());
    assert_eq!(clock.pending_calls(), 0);
}

/// TW test_task.py LoopTests.test_reset.
#[test]
fn reset_restarts_the_interval_from_now() {
    let clock = Clock::new();
    let ran = Rc::new(Cell::new(0));
    let r = ran.clone();
    let lc = LoopingCall::new(clock.clone(), move || r.set(r.get() + 1));
    let _done = lc.start(secs(2), false);
    clock.advance(secs(1));
    lc.reset();
    clock.advance(secs(1));
    assert_eq!(ran.get(), 0);
    clock.advance(secs(1));
    assert_eq!(ran.get(), 1);
    lc.stop();
}

/// TW test_task.py LoopTests.test_callbackTimeSkips: a call that takes longer than the
/// interval skips the slots that went by meanwhile.
#[test]
fn a_slow_call_skips_the_slots_it_overran() {
    let clock = Clock::new();
    let times = Rc::new(RefCell::new(Vec::new()));
    let duration = Rc::new(Cell::new(secs(2)));
    let (t, c, d) = (times.clone(), clock.clone(), duration.clone());
    let lc = LoopingCall::new(clock.clone(), move || {
        t.borrow_mut().push(c.now());
        c.advance(d.get());
    });
    let _done = lc.start(ms(500), true);
    assert_eq!(*times.borrow(), [secs(0)]);
    assert_eq!(clock.now(), secs(2));
    clock.advance(Duration::ZERO);
    assert_eq!(*times.borrow(), [secs(0)], "the slot at 2 s is now, not the future: skipped");
    duration.set(secs(1));
    clock.advance(ms(500));
    assert_eq!(*times.borrow(), [secs(0), ms(2500)]);
    duration.set(Duration::ZERO);
    clock.advance(ms(500));
    assert_eq!(*times.borrow(), [secs(0), ms(2500), secs(4)]);
    lc.stop();
}

/// TW test_task.py LoopTests.test_reactorTimeCountSkips and
/// test_countLengthyIntervalCounts.
#[test]
fn with_count_counts_the_intervals_since_the_last_call() {
    let clock = Clock::new();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let (s, c) = (seen.clone(), clock.clone());
    let lc = LoopingCall::with_count(clock.clone(), move |n| s.borrow_mut().push((c.now(), n)));
    let _done = lc.start(ms(500), true);
    clock.advance(ms(510));
    clock.advance(ms(1510));
    clock.advance(Duration::ZERO);
    assert_eq!(*seen.borrow(), [(secs(0), 1), (ms(510), 1), (ms(2020), 3)]);
    lc.stop();

    // Lengthy intervals: called at T, 2.75T and 3T, the count stays 1.
    seen.borrow_mut().clear();
    let (s, c) = (seen.clone(), clock.clone());
    let lc = LoopingCall::with_count(clock.clone(), move |n| s.borrow_mut().push((c.now(), n)));
    let t0 = clock.now();
    let _done = lc.start(ms(500), true);
    clock.advance(ms(510));
    clock.advance(ms(875));
    clock.advance(ms(125));
    let counts: Vec<_> = seen.borrow().iter().map(|(t, n)| (*t - t0, *n)).collect();
    assert_eq!(counts, [(secs(0), 1), (ms(510), 1), (ms(1385), 1), (ms(1510), 1)]);
    lc.stop();
}

/// TW test_task.py LoopTests.test_deferredWithCount: a call whose Deferred outlives
/// several intervals is not repeated, and the next call gets the skipped count.
#[test]
fn with_count_after_a_slow_deferred_reports_the_skipped_calls() {
    let clock = Clock::new();
    let slow: Deferred<()> = Deferred::new();
    let (lc, counts) = counting_loop(&clock, 1, &slow);
    let _done = lc.start(ms(200), false);
    assert!(counts.borrow().is_empty());
    clock.pump(&[ms(200), ms(400)]);
    assert_eq!(*counts.borrow(), [1]);
    slow.callback(()).unwrap();
    clock.pump(&[ms(200)]);
    assert_eq!(*counts.borrow(), [1, 3]);
    lc.stop();
}

/// TW test_task.py LoopTests.test_withCountIntervalZero, test_withCountIntervalZeroDelay
/// and test_withCountIntervalZeroDelayThenNonZeroInterval.
#[test]
fn with_count_and_a_zero_interval() {
    let clock = Clock::new();
    let blocked: Deferred<()> = Deferred::new();
    let (lc, counts) = counting_loop(&clock, 2, &blocked);
    let _done = lc.start(Duration::ZERO, false);
    clock.advance(secs(10));
    assert_eq!(*counts.borrow(), [1, 1], "blocked at the second call");
    lc.set_interval(secs(2));
    blocked.callback(()).unwrap();
    clock.advance(secs(7));
    assert_eq!(*counts.borrow(), [1, 1, 3]);
    clock.advance(secs(2));
    assert_eq!(*counts.borrow(), [1, 1, 3, 1]);
    clock.advance(secs(4));
    assert_eq!(*counts.borrow(), [1, 1, 3, 1, 2]);
    lc.stop();
}

/// A `with_count` loop that records its counts and whose `block_at`-th call returns
/// `blocker` (the others return a fired Deferred).
fn counting_loop(
    clock: &Clock,
    block_at: usize,
    blocker: &Deferred<()>,
) -> (LoopingCall, Rc<RefCell<Vec<u64>>>) {
    let counts = Rc::new(RefCell::new(Vec::new()));
    let (c, b) = (counts.clone(), blocker.clone());
    let lc = LoopingCall::with_count(clock.clone(), move |n| {
        c.borrow_mut().push(n);
        if c.borrow().len() == block_at {
            b.clone()
        } else {
            weft::succeed(())
        }
    });
    (lc, counts)
}

/// TW test_task.py ClockTestCase.test_getDelayedCalls and test_getDelayedCallsEmpty:
/// the Clock lists its pending calls (not only a count), in the order they will run,
/// as handles equal to those `call_later` returned.
#[test]
fn clock_lists_its_pending_delayed_calls() {
    let clock = Clock::new();
    assert!(clock.get_delayed_calls().is_empty());
    let c = clock.call_later(secs(3), || ());
    let a = clock.call_later(secs(1), || ());
    let b = clock.call_later(secs(2), || ());
    let cancelled = clock.call_later(secs(2), || ());
    cancelled.cancel().unwrap();
    assert_eq!(clock.get_delayed_calls(), [a.clone(), b.clone(), c.clone()]);
    clock.advance(secs(1));
    let left = clock.get_delayed_calls();
    assert_eq!(left, [b, c]);
    assert_eq!(left[0].get_time(), Some(secs(2)));
    left[1].cancel().unwrap(); // the listed handle controls the call
    assert_eq!(clock.get_delayed_calls().len(), 1);
    // TW test_task.py DeferLaterTests.test_cancel: nothing left behind.
    let d: Deferred<()> = defer_later(&clock, secs(1), || ());
    d.cancel();
    assert_eq!(clock.get_delayed_calls().len(), 1);
    let _ = d.take_result();
}

/// Twisted's idiom `clock.callLater(1, d.cancel)`: the timers take a closure whatever it
/// returns (here `cancel()`'s `CancelOutcome`), and the cancel runs when due.
#[test]
fn a_timer_may_call_cancel_directly() {
    let clock = Clock::new();
    let d: Deferred<u32> = Deferred::new();
    let target = d.clone();
    clock.call_later(secs(1), move || target.cancel());
    clock.advance(secs(1));
    assert!(d.take_result().unwrap().unwrap_err().check::<CancelledError>());
}

/// Twisted's `d.addCallback(lambda _: other.cancel())`: a callback on a `Deferred<()>`
/// may end with a cancel; the chain goes on with `()`.
#[test]
fn a_unit_callback_may_end_with_a_cancel() {
    let (d, other) = (Deferred::<()>::new(), Deferred::<u32>::new());
    let target = other.clone();
    d.add_callback(move |()| target.cancel());
    d.callback(()).unwrap();
    assert_eq!(d.take_result().unwrap().unwrap(), ());
    assert!(other.take_result().unwrap().unwrap_err().check::<CancelledError>());
}
