//! Twisted's `test_task.py` (ClockTests, LoopTests, ReactorLoopTests, DeferLaterTests)
//! ported to weft's `Clock`, `DelayedCall`, `LoopingCall` and `defer_later`, beyond those
//! in `time.rs`.
//!
//! `ReactTests` are in `tw_react.rs`. Not ported: `test_defaultClock` (a `LoopingCall`
//! always names its clock), `testBadDelay` (a `Duration` cannot be negative), and the
//! `repr`/deprecation tests.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use weft::reactor::{defer_later, LoopingCall};
use weft::{Clock, Deferred, DelayedCallError, Failure, PanicError, Reactor, ReactorTime};

use crate::support::{
    assert_no_result, failure_result_of, ms, run_bounded, secs, success_result_of, GenericError, Trace,
};

// ---- ClockTests ----

/// TW test_task.py ClockTests.testSeconds and test_providesIReactorTime: a new Clock is
/// at time zero, and it is a `ReactorTime` that code taking one can schedule on.
#[test]
fn a_new_clock_is_at_zero_and_serves_as_reactor_time() {
    fn schedule(time: &dyn ReactorTime, ran: Rc<Cell<bool>>) {
        time.call_later(secs(1), Box::new(move || ran.set(true)));
    }
    let clock = Clock::new();
    assert_eq!(clock.seconds(), 0.0);
    assert_eq!(clock.now(), Duration::ZERO);
    let ran = Rc::new(Cell::new(false));
    schedule(&clock, ran.clone());
    clock.advance(secs(1));
    assert!(ran.get());
    assert_eq!(clock.seconds(), 1.0);
}

/// TW test_task.py ClockTests.testCallLater: the handle says when the call is due and
/// that it is active.
#[test]
fn call_later_hands_back_an_active_call_with_its_time() {
    let clock = Clock::new();
    let call = clock.call_later(secs(1), || ());
    assert_eq!(call.get_time(), Some(secs(1)));
    assert!(call.is_active());
}

/// TW test_task.py ClockTests.testCallLaterCancelled.
#[test]
fn a_cancelled_call_is_not_active() {
    let clock = Clock::new();
    let call = clock.call_later(secs(1), || ());
    call.cancel().unwrap();
    assert!(!call.is_active());
}

/// TW test_task.py ClockTests.test_callLaterOrdering: each `call_later` makes a new
/// call, not one made before.
#[test]
fn each_call_later_makes_a_distinct_call() {
    let clock = Clock::new();
    let first = clock.call_later(secs(10), || ());
    let second = clock.call_later(secs(1), || ());
    assert_ne!(first, second);
}

/// A call `delay` from now on `clock` that records "ran" in the returned trace.
fn traced_call(clock: &Clock, delay: Duration) -> (weft::DelayedCall, Trace) {
    let events = Trace::new();
    let e = events.clone();
    (clock.call_later(delay, move || e.push("ran")), events)
}

/// TW test_task.py ClockTests.testAdvance: advancing runs the calls that fell due, and
/// a call that ran is no longer active.
#[test]
fn advancing_runs_the_calls_that_fell_due() {
    let clock = Clock::new();
    let (call, events) = traced_call(&clock, secs(2));
    clock.advance(secs(1));
    assert_eq!(events.len(), 0);
    clock.advance(secs(1));
    assert_eq!(events.take(), ["ran"]);
    assert!(!call.is_active());
}

/// TW test_task.py ClockTests.testAdvanceCancel: a call that cancels itself while it
/// runs gets `AlreadyCalled` (it is marked called before it runs).
#[test]
fn a_call_cancelling_itself_while_it_runs_gets_already_called() {
    let clock = Clock::new();
    let me: Rc<RefCell<Option<weft::DelayedCall>>> = Rc::new(RefCell::new(None));
    let got = Rc::new(Cell::new(None));
    let (m, g) = (me.clone(), got.clone());
    let call = clock.call_later(secs(1), move || g.set(Some(m.borrow().as_ref().unwrap().cancel())));
    *me.borrow_mut() = Some(call);
    clock.advance(secs(1));
    assert_eq!(got.get(), Some(Err(DelayedCallError::AlreadyCalled)));
}

/// TW test_task.py ClockTests.testCallLaterDelayed: `delay` pushes the call back by
/// the given amount from its own time.
#[test]
fn delay_pushes_the_call_back() {
    let clock = Clock::new();
    let (call, events) = traced_call(&clock, secs(1));
    call.delay(secs(1)).unwrap();
    assert_eq!(call.get_time(), Some(secs(2)));
    clock.advance(ms(1500));
    assert_eq!(events.len(), 0);
    clock.advance(secs(1));
    assert_eq!(events.take(), ["ran"]);
}

/// TW test_task.py ClockTests.testCallLaterResetLater, and TW test_internet.py
/// TimeTests.testDelayedCallSecondsOverride: `reset` counts from the clock's current
/// time, not from when the call was made.
#[test]
fn reset_to_later_counts_from_now() {
    let clock = Clock::new();
    let (call, events) = traced_call(&clock, secs(2));
    clock.advance(secs(1));
    call.reset(secs(3)).unwrap();
    assert_eq!(call.get_time(), Some(secs(4)));
    clock.advance(secs(2));
    assert_eq!(events.len(), 0);
    clock.advance(secs(1));
    assert_eq!(events.take(), ["ran"]);
}

/// TW test_task.py ClockTests.testCallLaterResetSooner.
#[test]
fn reset_to_sooner_runs_earlier() {
    let clock = Clock::new();
    let (call, events) = traced_call(&clock, secs(4));
    call.reset(secs(3)).unwrap();
    assert_eq!(call.get_time(), Some(secs(3)));
    clock.advance(secs(3));
    assert_eq!(events.take(), ["ran"]);
}

/// A call that records its name and the clock's time when it runs.
fn log_time(
    clock: &Clock,
    log: &Rc<RefCell<Vec<(&'static str, Duration)>>>,
    name: &'static str,
) -> impl FnOnce() {
    let (c, l) = (clock.clone(), log.clone());
    move || l.borrow_mut().push((name, c.now()))
}

/// TW test_task.py ClockTests.test_callLaterKeepsCallsOrdered: a call reset to later
/// runs after one scheduled afterwards for an earlier time.
#[test]
fn a_call_reset_later_runs_after_a_newer_earlier_one() {
    let clock = Clock::new();
    let log = Rc::new(RefCell::new(Vec::new()));
    let a = clock.call_later(secs(1), log_time(&clock, &log, "a"));
    a.reset(secs(3)).unwrap();
    clock.call_later(secs(2), log_time(&clock, &log, "b"));
    clock.pump(&[secs(1); 3]);
    assert_eq!(*log.borrow(), [("b", secs(2)), ("a", secs(3))]);
}

/// TW test_task.py ClockTests.test_callLaterResetKeepsCallsOrdered: the same when the
/// reset comes after the second call was scheduled.
#[test]
fn a_call_reset_past_another_runs_after_it() {
    let clock = Clock::new();
    let log = Rc::new(RefCell::new(Vec::new()));
    let a = clock.call_later(secs(1), log_time(&clock, &log, "a"));
    clock.call_later(secs(2), log_time(&clock, &log, "b"));
    a.reset(secs(3)).unwrap();
    clock.pump(&[secs(1); 3]);
    assert_eq!(*log.borrow(), [("b", secs(2)), ("a", secs(3))]);
}

/// TW test_task.py ClockTests.test_callLaterResetInsideCallKeepsCallsOrdered: a reset
/// made by another call while the clock advances keeps the order too.
#[test]
fn a_reset_made_by_a_running_call_keeps_the_order() {
    let clock = Clock::new();
    let log = Rc::new(RefCell::new(Vec::new()));
    let b = clock.call_later(secs(2), log_time(&clock, &log, "b"));
    clock.call_later(secs(1), move || b.reset(secs(3)).unwrap());
    clock.call_later(secs(3), log_time(&clock, &log, "c"));
    clock.pump(&[ms(500); 10]);
    assert_eq!(*log.borrow(), [("c", secs(3)), ("b", secs(4))]);
}

// ---- LoopTests ----

/// A plain loop on `clock` that records the clock's time at each call.
fn timing_loop(clock: &Clock) -> (LoopingCall, Rc<RefCell<Vec<Duration>>>) {
    let times = Rc::new(RefCell::new(Vec::new()));
    let (t, c) = (times.clone(), clock.clone());
    (LoopingCall::new(clock.clone(), move || t.borrow_mut().push(c.now())), times)
}

/// TW test_task.py LoopTests.test_reactorTimeSkips: when the clock jumps past several
/// intervals, one call runs, and the next is on the next interval still in the future.
#[test]
fn a_clock_jump_makes_one_call_not_a_burst() {
    let clock = Clock::new();
    let (lc, times) = timing_loop(&clock);
    let _done = lc.start(ms(500), true);
    assert_eq!(*times.borrow(), [secs(0)]);
    clock.advance(secs(2));
    assert_eq!(*times.borrow(), [secs(0), secs(2)]);
    clock.advance(secs(1));
    assert_eq!(*times.borrow(), [secs(0), secs(2), secs(3)]);
    clock.advance(Duration::ZERO);
    assert_eq!(*times.borrow(), [secs(0), secs(2), secs(3)]);
    lc.stop();
}

/// TW test_task.py LoopTests.test_withCountFloatingPointBoundary: with an interval that
/// does not divide the time span exactly (here 1 s / 7, rounded down to whole
/// nanoseconds), the counts are never 0 and add up to the intervals elapsed.
#[test]
fn with_count_never_passes_zero_and_adds_up() {
    let clock = Clock::new();
    let counts = Rc::new(RefCell::new(Vec::new()));
    let c = counts.clone();
    let lc = LoopingCall::with_count(clock.clone(), move |n| c.borrow_mut().push(n));
    let count = 7u32;
    let interval = secs(1) / count;
    let _done = lc.start(interval, false);
    for _ in 0..count {
        clock.advance(interval);
    }
    let epsilon = secs(1) - interval * count;
    assert!(epsilon > Duration::ZERO, "the case needs an inexact interval");
    clock.advance(epsilon);
    assert!(clock.now() >= secs(1));
    assert_eq!(counts.borrow().iter().sum::<u64>(), u64::from(count));
    assert!(!counts.borrow().contains(&0), "{:?}", counts.borrow());
    lc.stop();
}

/// TW test_task.py LoopTests.testBasicFunction: started with the first call at once,
/// 0.25 s of 0.1 s intervals make three calls; `stop` fires the Deferred and leaves
/// nothing scheduled. The Deferred fires with `()`, not with the loop as in Twisted
/// (documented in src/lib.rs's porting table: "`start`'s Deferred fires with `()`, not
/// the loop").
#[test]
fn a_loop_started_now_calls_at_once_then_every_interval() {
    let clock = Clock::new();
    let (lc, times) = timing_loop(&clock);
    let done = lc.start(ms(100), true);
    clock.pump(&[ms(50), ms(100), ms(100)]);
    // Each call runs when the clock reaches past its slot (0.1 s at 0.15 s, ...).
    assert_eq!(*times.borrow(), [ms(0), ms(150), ms(250)]);
    assert_no_result(&done);
    lc.stop();
    success_result_of(&done);
    assert_eq!(clock.pending_calls(), 0);
}

/// TW test_task.py LoopTests.testDelayedStart: started with `now = false`, the same
/// 0.25 s makes two calls.
#[test]
fn a_loop_started_later_waits_one_interval() {
    let clock = Clock::new();
    let (lc, times) = timing_loop(&clock);
    let done = lc.start(ms(100), false);
    clock.pump(&[ms(50), ms(100), ms(100)]);
    assert_eq!(*times.borrow(), [ms(150), ms(250)]);
    lc.stop();
    success_result_of(&done);
    assert_eq!(clock.pending_calls(), 0);
}

/// TW test_task.py LoopTests.testStopAtOnce and testStoppingBeforeDelayedStart (the
/// `_stoppingTest` helper): a loop stopped before its first call never calls and
/// leaves nothing scheduled, with a zero or a long interval.
#[test]
fn a_loop_stopped_before_its_first_call_never_calls() {
    for interval in [Duration::ZERO, secs(10)] {
        let clock = Clock::new();
        let (lc, times) = timing_loop(&clock);
        let done = lc.start(interval, false);
        lc.stop();
        assert!(times.borrow().is_empty());
        assert_eq!(clock.pending_calls(), 0, "interval {interval:?}");
        success_result_of(&done);
        clock.advance(secs(20));
        assert!(times.borrow().is_empty());
    }
}

// ---- ReactorLoopTests ----

/// TW test_task.py ReactorLoopTests.testStopAtOnceLater: `stop()` from a reactor timer
/// before the first call keeps the loop from ever calling, on the real reactor.
#[test]
fn stop_from_a_reactor_timer_prevents_every_call() {
    let reactor = Reactor::new().unwrap();
    let d: Deferred<&str> = Deferred::new();
    let never = d.clone();
    let lc = LoopingCall::new(reactor.handle(), move || {
        let _ = never.errback(Failure::msg("this task should never get called"));
    });
    let _done = lc.start(secs(1), false);
    let (h, target) = (reactor.handle(), d.clone());
    reactor.call_later(Duration::ZERO, move || {
        lc.stop();
        h.call_later(Duration::ZERO, move || target.callback("success"));
    });
    let h = reactor.handle();
    d.add_both(move |r| {
        h.stop();
        r
    });
    run_bounded(&reactor, secs(10));
    assert_eq!(success_result_of(&d), "success");
}

// ---- DeferLaterTests ----

/// TW test_task.py DeferLaterTests.test_callback: the Deferred fires after the delay
/// with what the function returned, and the function runs only then.
#[test]
fn defer_later_fires_with_the_functions_value_after_the_delay() {
    let clock = Clock::new();
    let calls = Trace::new();
    let c = calls.clone();
    let d: Deferred<&str> = defer_later(&clock, secs(3), move || {
        c.push("called");
        "flag"
    });
    clock.advance(secs(2));
    assert_eq!(calls.len(), 0);
    assert_no_result(&d);
    clock.advance(secs(1));
    assert_eq!(calls.take(), ["called"]);
    assert_eq!(success_result_of(&d), "flag");
}

/// TW test_task.py DeferLaterTests.test_errback: a function that fails (an `Err`, or a
/// panic, Rust's other way to raise) fails the Deferred.
#[test]
fn defer_later_fails_when_the_function_fails() {
    let clock = Clock::new();
    let d: Deferred<u8> = defer_later(&clock, secs(1), || Err(Failure::new(GenericError("test exception"))));
    let panics: Deferred<u8> = defer_later(&clock, secs(1), || -> u8 { panic!("test exception") });
    clock.advance(secs(1));
    failure_result_of::<GenericError, _>(&d);
    failure_result_of::<PanicError, _>(&panics);
}

/// TW test_task.py DeferLaterTests.test_noCallback: with a function that returns
/// nothing (Twisted: no function at all), the Deferred fires with `()` after the delay.
#[test]
fn defer_later_with_nothing_to_return_fires_with_unit() {
    let clock = Clock::new();
    let d: Deferred<()> = defer_later(&clock, secs(2), || ());
    assert_no_result(&d);
    clock.advance(secs(2));
    success_result_of(&d);
}
