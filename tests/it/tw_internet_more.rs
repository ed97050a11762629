//! Twisted's reactor-time and reactor-core tests ported to weft: `DelayedCall` and
//! `call_later` (`test_internet.py` TimeTests and DelayedTests, `internet/test/test_base.py`,
//! `internet/test/test_time.py`), `call_from_thread` from the reactor thread
//! (`test_internet.py` CallFromThreadTests, CallFromThreadStopsAndWakeUpTests), and the
//! shutdown event's triggers (`test_internet.py` SystemEventTests, ThreePhaseEventTests).
//!
//! Not ported: `str()` formats, `DelayedCall.seconds()`, events other than shutdown
//! (weft has none), the resolver and signal tests.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weft::reactor::{Phase, Reactor};
use weft::{Clock, Deferred, DelayedCall, DelayedCallError, ReactorTime};

use crate::support::{home, home_reactor, logs, ms, run_bounded, run_until, secs, success_result_of, Trace};

// ---- DelayedCall (internet/test/test_base.py) ----

/// TW test_base.py DelayedCallMixin.test_eq and test_ne: a `DelayedCall` equals itself
/// (and its clones, which are the same call) and no other call, even one due at the
/// same time.
#[test]
fn a_delayed_call_equals_only_itself() {
    let clock = Clock::new();
    let zero = clock.call_later(Duration::ZERO, || ());
    let one = clock.call_later(secs(1), || ());
    let also_one = clock.call_later(secs(1), || ());
    assert!(zero == zero.clone() && one == one.clone());
    assert!(zero != one && one != also_one);
}

/// TW test_base.py DelayedCallMixin.test_lt, test_le, test_gt and test_ge: calls compare
/// by when they run. Before, `DelayedCall` had no ordering (these did not compile).
#[test]
#[allow(clippy::nonminimal_bool, clippy::eq_op)] // each operator on its own, as Twisted tests them
fn delayed_calls_compare_by_when_they_run() {
    let clock = Clock::new();
    let zero = clock.call_later(Duration::ZERO, || ());
    let one = clock.call_later(secs(1), || ());
    assert!(zero < one && !(one < zero) && !(zero < zero) && !(one < one));
    assert!(zero <= one && !(one <= zero) && zero <= zero && one <= one);
    assert!(one > zero && !(zero > one) && !(zero > zero) && !(one > one));
    assert!(one >= zero && !(zero >= one) && zero >= zero && one >= one);
}

/// Beyond Twisted (whose calls due at the same time compare as equal in time): weft
/// orders calls as its clock runs them, so calls due at the same time order by when
/// they were scheduled (a reset keeps that place), and sorting handles gives the order
/// `get_delayed_calls` lists.
#[test]
fn delayed_calls_due_together_order_as_they_run() {
    let clock = Clock::new();
    let first = clock.call_later(secs(2), || ());
    let second = clock.call_later(secs(1), || ());
    let third = clock.call_later(secs(1), || ());
    first.reset(secs(1)).unwrap();
    let mut sorted = vec![third.clone(), first.clone(), second.clone()];
    sorted.sort();
    assert_eq!(sorted, [first, second, third]);
    assert_eq!(sorted, clock.get_delayed_calls());
}

// ---- TimeTests (test_internet.py) ----

/// TW test_internet.py TimeTests.test_seconds: the reactor's time is a number that
/// does not go backwards, and `seconds()` is `now()` in seconds.
#[test]
fn the_reactors_time_goes_forward() {
    let reactor = Reactor::new().unwrap();
    let (first, seconds, second) = (reactor.now(), reactor.seconds(), reactor.now());
    assert!(first <= second);
    assert!(first.as_secs_f64() <= seconds && seconds <= second.as_secs_f64());
}

/// TW test_internet.py TimeTests.test_callLaterUsesReactorSecondsInDelayedCall and
/// testCallLaterTime: a call's time is the clock's time when it was made plus the delay,
/// on the `Clock` (moved to 100 s) and on the real reactor.
#[test]
fn a_calls_time_is_the_clocks_time_plus_the_delay() {
    let clock = Clock::new();
    clock.advance(secs(100));
    assert_eq!(clock.call_later(secs(5), || ()).get_time(), Some(secs(105)));

    let reactor = Reactor::new().unwrap();
    let before = reactor.now();
    let call = reactor.call_later(secs(10), || ());
    let after = reactor.now();
    let at = call.get_time().unwrap();
    assert!(before + secs(10) <= at && at <= after + secs(10), "{before:?} {at:?} {after:?}");
    call.cancel().unwrap();
}

/// TW test_internet.py TimeTests.test_callLater: a zero delay call runs, on the reactor.
#[test]
fn a_zero_delay_call_runs_on_the_reactor() {
    let reactor = Reactor::new().unwrap();
    let d: Deferred<()> = Deferred::new();
    let target = d.clone();
    reactor.call_later(Duration::ZERO, move || target.callback(()));
    let fired = d.clone();
    run_until(&reactor, secs(10), move || fired.is_called());
    success_result_of(&d);
}

/// TW test_internet.py TimeTests.test_callLaterReset: a reset call has a new time.
#[test]
fn a_reset_call_has_a_new_time() {
    let reactor = Reactor::new().unwrap();
    let call = reactor.call_later(secs(2), || ());
    let before = call.get_time().unwrap();
    call.reset(secs(1)).unwrap();
    assert!(call.get_time().unwrap() < before);
    call.cancel().unwrap();
}

/// TW test_internet.py TimeTests.test_cancelDelayedCall: a cancelled call does not run,
/// checked two reactor iterations later.
#[test]
fn a_cancelled_call_does_not_run() {
    let reactor = Reactor::new().unwrap();
    let called = Rc::new(Cell::new(false));
    let c = called.clone();
    reactor.call_later(Duration::ZERO, move || c.set(true)).cancel().unwrap();
    let checked = Rc::new(Cell::new(None));
    let (h, ch, c) = (reactor.handle(), checked.clone(), called.clone());
    reactor.call_later(Duration::ZERO, move || {
        let stop = h.clone();
        h.call_later(Duration::ZERO, move || {
            ch.set(Some(c.get()));
            stop.stop();
        });
    });
    run_bounded(&reactor, secs(10));
    assert_eq!(checked.get(), Some(false));
}

/// TW test_internet.py TimeTests.test_cancelCancelledDelayedCall.
#[test]
fn cancelling_twice_gets_already_cancelled() {
    let reactor = Reactor::new().unwrap();
    let call = reactor.call_later(Duration::ZERO, || ());
    call.cancel().unwrap();
    assert_eq!(call.cancel(), Err(DelayedCallError::AlreadyCancelled));
}

/// A call on the reactor that stores `cancel()`'s answer for the call `target` holds,
/// then stops the reactor.
fn cancel_and_stop(
    target: &Rc<RefCell<Option<DelayedCall>>>,
    got: &Rc<Cell<Option<Result<(), DelayedCallError>>>>,
) -> impl FnOnce() + 'static {
    let (t, g, h) = (target.clone(), got.clone(), home());
    move || {
        g.set(Some(t.borrow().as_ref().unwrap().cancel()));
        h.stop();
    }
}

/// TW test_internet.py TimeTests.test_cancelCalledDelayedCallSynchronous: a call that
/// cancels itself as it runs gets `AlreadyCalled`, on the reactor.
#[test]
fn a_call_cancelling_itself_on_the_reactor_gets_already_called() {
    let reactor = home_reactor();
    let (me, got) = (Rc::new(RefCell::new(None)), Rc::new(Cell::new(None)));
    *me.borrow_mut() = Some(reactor.call_later(Duration::ZERO, cancel_and_stop(&me, &got)));
    run_bounded(&reactor, secs(10));
    assert_eq!(got.get(), Some(Err(DelayedCallError::AlreadyCalled)));
}

/// TW test_internet.py TimeTests.test_cancelCalledDelayedCallAsynchronous: cancelling
/// a call after it ran gets `AlreadyCalled`.
#[test]
fn cancelling_a_call_that_ran_gets_already_called() {
    let reactor = home_reactor();
    let (first, got) = (Rc::new(RefCell::new(None)), Rc::new(Cell::new(None)));
    let (h, check) = (reactor.handle(), cancel_and_stop(&first, &got));
    *first.borrow_mut() = Some(reactor.call_later(Duration::ZERO, move || {
        h.call_later(Duration::ZERO, check);
    }));
    run_bounded(&reactor, secs(10));
    assert_eq!(got.get(), Some(Err(DelayedCallError::AlreadyCalled)));
}

/// TW test_internet.py TimeTests.testDelayedCallStringification: a call can be shown
/// (`Debug`) in every state: pending (with its time), reset, cancelled, run.
#[test]
fn a_call_can_be_shown_in_every_state() {
    let clock = Clock::new();
    let call = clock.call_later(Duration::ZERO, || ());
    assert!(format!("{call:?}").contains("Some(0ns)"), "{call:?}");
    call.reset(secs(5)).unwrap();
    assert!(format!("{call:?}").contains("Some(5s)"), "{call:?}");
    call.cancel().unwrap();
    assert!(format!("{call:?}").contains("None"), "{call:?}");
    let ran = clock.call_later(Duration::ZERO, || ());
    clock.advance(Duration::ZERO);
    assert!(format!("{ran:?}").contains("None"), "{ran:?}");
}

// ---- DelayedTests (test_internet.py) ----

/// The timers of [`getting_delayed_calls_lists_every_pending_call`] by tag, the next
/// tag, and the tags the reactor failed to list (a panic in a timer would only be
/// logged, so the checks record what they find for the test to assert).
#[derive(Clone, Default)]
struct Timers {
    pending: Rc<RefCell<HashMap<u32, DelayedCall>>>,
    next: Rc<Cell<u32>>,
    missing: Rc<RefCell<Vec<u32>>>,
}

impl Timers {
    fn check(&self) {
        let listed = home().get_delayed_calls();
        for (tag, call) in self.pending.borrow().iter() {
            if !listed.contains(call) {
                self.missing.borrow_mut().push(*tag);
            }
        }
    }

    /// Schedules `then` for `when` milliseconds from now, under a new tag.
    fn add(&self, when: u64, then: fn(&Timers, u32)) {
        let tag = self.next.get();
        self.next.set(tag + 1);
        let me = self.clone();
        let call = home().call_later(ms(when), move || then(&me, tag));
        self.pending.borrow_mut().insert(tag, call);
        self.check();
    }

    fn ran(&self, tag: u32) {
        self.pending.borrow_mut().remove(&tag);
        self.check();
    }
}

/// TW test_internet.py DelayedTests.testGetDelayedCalls: while timers run, add more and
/// are cancelled, every pending one is in the reactor's `get_delayed_calls`.
#[test]
fn getting_delayed_calls_lists_every_pending_call() {
    thread_local! {
        /// The last timer of the test ran.
        static DONE: Cell<bool> = const { Cell::new(false) };
    }
    let reactor = home_reactor();
    let timers = Timers::default();
    timers.check();
    timers.add(35, |t, tag| {
        t.ran(tag);
        DONE.set(true);
        home().stop();
    });
    timers.add(20, Timers::ran);
    timers.add(30, Timers::ran);
    let which = timers.next.get();
    timers.add(29, Timers::ran);
    timers.add(25, |t, tag| {
        t.ran(tag);
        t.add(15, Timers::ran);
    });
    timers.add(26, Timers::ran);
    timers.pending.borrow_mut().remove(&which).unwrap().cancel().unwrap();
    timers.check();
    run_bounded(&reactor, secs(10));
    timers.check();
    assert_eq!(*timers.missing.borrow(), [] as [u32; 0], "timers missing from get_delayed_calls");
    // Which timers are left when the last one runs depends on how long the setup took
    // (each delay counts from when its timer was added), so only membership is checked.
    assert!(DONE.get());
}

/// TW test_internet.py DelayedTests.test_active: a call is active until it has run.
#[test]
fn a_call_is_active_until_it_ran() {
    let reactor = home_reactor();
    let seen = Rc::new(Cell::new(None));
    let me: Rc<RefCell<Option<DelayedCall>>> = Rc::new(RefCell::new(None));
    let (s, m) = (seen.clone(), me.clone());
    let call = reactor.call_later(ms(10), move || {
        let me = m.clone();
        home().call_later(Duration::ZERO, move || {
            s.set(Some(me.borrow().as_ref().unwrap().is_active()));
            home().stop();
        });
    });
    assert!(call.is_active());
    *me.borrow_mut() = Some(call);
    run_bounded(&reactor, secs(10));
    assert_eq!(seen.get(), Some(false));
}

// ---- internet/test/test_time.py ----

/// TW test_time.py TimeTestsBuilder.test_delayedCallStopsReactor.
#[test]
fn a_delayed_call_can_stop_the_reactor() {
    let reactor = Reactor::new().unwrap();
    let h = reactor.handle();
    reactor.call_later(Duration::ZERO, move || h.stop());
    run_bounded(&reactor, secs(10));
    assert!(reactor.is_stopped());
}

/// TW test_time.py TimeTestsBuilder.test_distantDelayedCall: a call in the extreme
/// future (here `Duration::MAX`, which saturates) does not keep the reactor from
/// working, and stays pending.
#[test]
fn a_call_in_the_distant_future_does_not_block_the_reactor() {
    let reactor = Reactor::new().unwrap();
    let distant = reactor.call_later(Duration::MAX, || ());
    let th = reactor.thread_handle();
    let inner = th.clone();
    th.call_from_thread(move || {
        let stop = inner.clone();
        let _ = inner.call_from_thread(move || {
            let _ = stop.stop();
        });
    })
    .unwrap();
    run_bounded(&reactor, secs(10));
    assert!(distant.is_active());
    assert!(reactor.get_delayed_calls().contains(&distant));
}

// ---- call_from_thread (test_internet.py) ----

/// TW test_internet.py CallFromThreadTests.test_lotsOfThreadsAreScheduledCorrectly:
/// 100 calls queued with `call_from_thread` all run.
#[test]
fn a_hundred_calls_from_thread_all_run() {
    let reactor = Reactor::new().unwrap();
    let counter = Arc::new(AtomicUsize::new(0));
    let th = reactor.thread_handle();
    for _ in 0..100 {
        let (c, th2) = (counter.clone(), th.clone());
        th.call_from_thread(move || {
            if c.fetch_add(1, Ordering::SeqCst) + 1 == 100 {
                let _ = th2.stop();
            }
        })
        .unwrap();
    }
    run_bounded(&reactor, secs(10));
    assert_eq!(counter.load(Ordering::SeqCst), 100);
}

/// TW test_internet.py CallFromThreadTests.test_threadsAreRunInScheduledOrder: calls
/// run in the order they were queued, and one queued by a queued call runs after them.
#[test]
fn calls_from_thread_run_in_the_order_queued() {
    let reactor = Reactor::new().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let th = reactor.thread_handle();
    for i in 1..=3 {
        let o = order.clone();
        th.call_from_thread(move || o.lock().unwrap().push(i)).unwrap();
    }
    let (o, th2) = (order.clone(), th.clone());
    th.call_from_thread(move || {
        let stop = th2.clone();
        th2.call_from_thread(move || {
            o.lock().unwrap().push(4);
            let _ = stop.stop();
        })
        .unwrap();
    })
    .unwrap();
    run_bounded(&reactor, secs(10));
    assert_eq!(*order.lock().unwrap(), [1, 2, 3, 4]);
}

/// TW test_internet.py CallFromThreadTests.test_scheduledThreadsNotRunUntilReactorRuns.
#[test]
fn calls_from_thread_wait_for_the_reactor_to_run() {
    let reactor = Reactor::new().unwrap();
    let counter = Arc::new(AtomicUsize::new(0));
    let (c, th) = (counter.clone(), reactor.thread_handle());
    let stop = th.clone();
    th.call_from_thread(move || {
        c.store(1, Ordering::SeqCst);
        let _ = stop.stop();
    })
    .unwrap();
    assert_eq!(counter.load(Ordering::SeqCst), 0);
    run_bounded(&reactor, secs(10));
    assert_eq!(counter.load(Ordering::SeqCst), 1);
}

/// TW test_internet.py CallFromThreadStopsAndWakeUpTests.testWakeUp: a call from
/// another thread wakes a reactor that has nothing else to do.
#[test]
fn a_call_from_another_thread_wakes_the_reactor() {
    let reactor = Reactor::new().unwrap();
    let ran_on = Arc::new(Mutex::new(None));
    let (r, th) = (ran_on.clone(), reactor.thread_handle());
    let worker = std::thread::spawn(move || {
        let stop = th.clone();
        th.call_from_thread(move || {
            *r.lock().unwrap() = Some(std::thread::current().id());
            let _ = stop.stop();
        })
        .unwrap();
    });
    run_bounded(&reactor, secs(10));
    worker.join().unwrap();
    assert_eq!(*ran_on.lock().unwrap(), Some(std::thread::current().id()));
}

/// TW test_internet.py CallFromThreadStopsAndWakeUpTests.testCallFromThreadStops: a call
/// queued from inside a `call_from_thread` call does not run in the same batch: a timer
/// the first call scheduled for now runs before it, so the loop cannot spin on the queue.
#[test]
fn a_call_from_thread_queued_by_one_runs_after_the_loop_went_on() {
    thread_local! {
        static STOPPED: Cell<bool> = const { Cell::new(false) };
        static SEEN: Cell<Option<bool>> = const { Cell::new(None) };
    }
    let reactor = home_reactor();
    let th = reactor.thread_handle();
    let th2 = th.clone();
    th.call_from_thread(move || {
        th2.call_from_thread(move || {
            SEEN.set(Some(STOPPED.get()));
            home().stop();
        })
        .unwrap();
        home().call_later(Duration::ZERO, || STOPPED.set(true));
    })
    .unwrap();
    run_bounded(&reactor, secs(10));
    assert_eq!(SEEN.get(), Some(true));
}

// ---- the shutdown event's triggers (test_internet.py) ----

/// A started reactor asked to stop, whose next turn runs the "before" triggers.
fn stopping(reactor: &Reactor) {
    reactor.start();
    reactor.stop();
}

/// One turn of `reactor`, waiting for nothing.
fn turn(reactor: &Reactor) {
    reactor.iterate(Some(Duration::ZERO)).unwrap();
}

/// A trigger that records `what` in `trace`.
fn note(trace: &Trace, what: &'static str) -> impl FnOnce() + 'static {
    let t = trace.clone();
    move || t.push(what)
}

/// TW test_internet.py SystemEventTests.test_beforeReturnsDeferred and
/// test_multipleBeforeReturnDeferred: the "during" phase waits for every Deferred the
/// "before" triggers returned.
#[test]
fn the_during_phase_waits_for_every_before_deferred() {
    let reactor = Reactor::new().unwrap();
    let events = Trace::new();
    let (first, second) = (Deferred::<()>::new(), Deferred::<()>::new());
    for d in [&first, &second] {
        let d = d.clone();
        reactor.add_shutdown_trigger(Phase::Before, move || d);
    }
    reactor.add_shutdown_trigger(Phase::During, note(&events, "during"));
    stopping(&reactor);
    turn(&reactor);
    assert_eq!(events.len(), 0);
    first.callback(()).unwrap();
    turn(&reactor);
    assert_eq!(events.len(), 0);
    second.callback(()).unwrap();
    turn(&reactor);
    assert_eq!(events.take(), ["during"]);
}

/// TW test_internet.py SystemEventTests.test_subsequentBeforeTriggerFiresPriorBeforeDeferred:
/// a "before" trigger that fires the Deferred an earlier one returned: the later
/// triggers still run, and the phase waits for their Deferreds.
#[test]
fn a_before_trigger_may_fire_an_earlier_ones_deferred() {
    let reactor = Reactor::new().unwrap();
    let events = Trace::new();
    let (first, second) = (Deferred::<()>::new(), Deferred::<()>::new());
    let d = first.clone();
    reactor.add_shutdown_trigger(Phase::Before, move || d);
    let d = first.clone();
    reactor.add_shutdown_trigger(Phase::Before, move || d.callback(()).unwrap());
    let (d, e) = (second.clone(), events.clone());
    reactor.add_shutdown_trigger(Phase::Before, move || {
        e.push("before");
        d
    });
    reactor.add_shutdown_trigger(Phase::During, note(&events, "during"));
    stopping(&reactor);
    turn(&reactor);
    assert_eq!(events.take(), ["before"]);
    second.callback(()).unwrap();
    turn(&reactor);
    assert_eq!(events.take(), ["during"]);
}

/// A trigger that panics with `message`.
fn panicking(message: &'static str) -> impl FnOnce() + 'static {
    move || panic!("{message}")
}

/// TW test_internet.py ThreePhaseEventTests.test_beforeTriggerException and
/// test_duringTriggerException: a trigger that fails (panics) is logged and the other
/// triggers of its phase and the next ones still run.
#[test]
fn a_panicking_trigger_is_logged_and_the_rest_run() {
    logs::capture();
    let reactor = Reactor::new().unwrap();
    let events = Trace::new();
    reactor.add_shutdown_trigger(Phase::Before, panicking("dummy exception before"));
    reactor.add_shutdown_trigger(Phase::Before, note(&events, "before"));
    reactor.add_shutdown_trigger(Phase::During, panicking("dummy exception during"));
    reactor.add_shutdown_trigger(Phase::During, note(&events, "during"));
    reactor.add_shutdown_trigger(Phase::After, note(&events, "after"));
    let h = reactor.handle();
    reactor.call_later(Duration::ZERO, move || h.stop());
    run_bounded(&reactor, secs(10));
    assert_eq!(events.take(), ["before", "during", "after"]);
    let errors: Vec<String> =
        logs::records().into_iter().map(|(_, m)| m).filter(|m| m.contains("dummy")).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
}

/// TW test_internet.py ThreePhaseEventTests.test_triggersRunOnce: a second shutdown (the
/// reactor run and stopped again) does not run the triggers again (documented on
/// `Reactor::run`: "shutdown triggers run once per registration"). With TW test_core.py
/// SystemEventTestsBuilder.test_stopShutDownEvents: the first `stop()` runs the three
/// phases in order before `run()` returns.
#[test]
fn triggers_run_once() {
    let reactor = Reactor::new().unwrap();
    let events = Trace::new();
    reactor.add_shutdown_trigger(Phase::Before, note(&events, "before"));
    reactor.add_shutdown_trigger(Phase::During, note(&events, "during"));
    reactor.add_shutdown_trigger(Phase::After, note(&events, "after"));
    for _ in 0..2 {
        let h = reactor.handle();
        reactor.call_later(Duration::ZERO, move || h.stop());
        run_bounded(&reactor, secs(10));
    }
    assert_eq!(events.take(), ["before", "during", "after"]);
}

/// TW test_internet.py SystemEventTests.test_removeSystemEventTrigger: a removed trigger
/// does not run when the shutdown comes; the others do.
#[test]
fn a_removed_shutdown_trigger_does_not_run() {
    let reactor = Reactor::new().unwrap();
    let events = Rc::new(RefCell::new(Vec::new()));
    let (e1, e2) = (events.clone(), events.clone());
    reactor.add_shutdown_trigger(Phase::Before, move || e1.borrow_mut().push("first"));
    let second = reactor.add_shutdown_trigger(Phase::Before, move || e2.borrow_mut().push("second"));
    assert!(reactor.remove_shutdown_trigger(second));
    assert!(events.borrow().is_empty());
    let h = reactor.handle();
    reactor.call_when_running(move || h.stop());
    run_bounded(&reactor, secs(10));
    assert_eq!(*events.borrow(), ["first"]);
}

/// TW test_internet.py SystemEventTests.test_removeNonExistentSystemEventTrigger: a
/// trigger removed already, or another reactor's, is not removed again (false, where
/// Twisted raises `ValueError`), and the one that ran cannot be removed.
#[test]
fn removing_a_trigger_that_is_not_there_says_so() {
    let reactor = Reactor::new().unwrap();
    let other = Reactor::new().unwrap();
    let id = reactor.add_shutdown_trigger(Phase::During, || ());
    assert!(reactor.remove_shutdown_trigger(id));
    assert!(!reactor.remove_shutdown_trigger(id));
    let elsewhere = other.add_shutdown_trigger(Phase::During, || ());
    let _ = reactor.add_shutdown_trigger(Phase::During, || ());
    assert!(!reactor.remove_shutdown_trigger(elsewhere), "another reactor's id");
    assert!(other.remove_shutdown_trigger(elsewhere));
    let ran = reactor.add_shutdown_trigger(Phase::After, || ());
    let h = reactor.handle();
    reactor.call_when_running(move || h.stop());
    run_bounded(&reactor, secs(10));
    assert!(!reactor.remove_shutdown_trigger(ran));
}
