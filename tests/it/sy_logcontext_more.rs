//! More ports of Synapse's `tests/util/test_logcontext.py` (beside `logcontext.rs`):
//! scheduled calls, looping calls and background work, each with a competing context.
//!
//! Difference from Synapse throughout: Synapse's `Clock.call_later` and
//! `Clock.looping_call` run their callbacks in a fresh context named after the method;
//! weft runs every scheduled call in the context that was current when it was scheduled
//! (src/lib.rs: "Every callback, canceller and scheduled call runs in the log context
//! that was current when it was registered"), so those callbacks see the scheduler's
//! context ("foo" here). And where Synapse's rules leave the sentinel current after a
//! function returns an incomplete Deferred, weft puts the caller's context back
//! (src/future/mod.rs, `ensure_deferred`: "the caller's context is current again when
//! this returns and after every later poll").

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use weft::future::ensure_deferred;
use weft::logcontext::{current_request_id, make_deferred_yieldable, run_in_background, LoggingContext};
use weft::reactor::LoopingCall;
use weft::{succeed, Clock, Deferred, Failure};

/// Asserts the current context's request id.
#[track_caller]
fn check(expected: Option<&str>) {
    assert_eq!(current_request_id().as_deref(), expected);
}

/// Synapse's `Clock.sleep`: a Deferred the clock fires after `delay`.
fn sleep(clock: &Clock, delay: Duration) -> Deferred<()> {
    let d = Deferred::new();
    let fire = d.clone();
    clock.call_later(delay, move || fire.callback(()).unwrap());
    d
}

/// Moves the clock on a millisecond at a time until `done` holds (at most 100 times).
#[track_caller]
fn pump_until(clock: &Clock, done: impl Fn() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        clock.advance(Duration::from_millis(1));
    }
    panic!("never finished");
}

/// Synapse's `competing_callback`: checks it starts in `start`, sleeps in a context of
/// its own, checks that context was kept across the sleep, and that `start` is back
/// after it; sets `finished` at the end either way.
fn competing(clock: &Clock, start: &'static str, finished: &Rc<Cell<bool>>) -> Deferred<()> {
    let (c, f) = (clock.clone(), finished.clone());
    ensure_deferred(async move {
        let outcome = async {
            check(Some(start));
            {
                let _competing = LoggingContext::new("competing").enter();
                sleep(&c, Duration::ZERO).await?;
                check(Some("competing"));
            }
            check(Some(start));
            Ok::<(), Failure>(())
        }
        .await;
        f.set(true);
        outcome
    })
}

/// The shape of Synapse's tests with a competing callback: in "foo", `start` sets the
/// competing callback going (given the clock and its `finished` flag), then the test's
/// own body sleeps twice with "foo" kept across each; the clock runs until both are
/// done, and the sentinel is current at the end.
fn beside_a_competing_callback(clock: &Clock, start: impl FnOnce(&Clock, &Rc<Cell<bool>>)) {
    check(None);
    let finished = Rc::new(Cell::new(false));
    let body = {
        let _foo = LoggingContext::new("foo").enter();
        start(clock, &finished);
        check(Some("foo"));
        let c = clock.clone();
        ensure_deferred(async move {
            sleep(&c, Duration::ZERO).await?;
            check(Some("foo"));
            sleep(&c, Duration::ZERO).await?;
            check(Some("foo"));
            Ok(())
        })
    };
    pump_until(clock, || finished.get() && body.has_result());
    body.take_result().unwrap().unwrap();
    check(None);
}

/// SY test_logcontext.py LoggingContextTestCase.test_call_later. The callback starts in
/// the scheduler's context "foo" here (Synapse: "call_later"; see the module docs).
#[test]
fn call_later_callback_with_a_competing_context() {
    beside_a_competing_callback(&Clock::new(), |clock, finished| {
        let (c, f) = (clock.clone(), finished.clone());
        clock.call_later(Duration::ZERO, move || drop(competing(&c, "foo", &f)));
    });
}

/// SY test_logcontext.py LoggingContextTestCase.test_looping_call and
/// test_looping_call_now. Each call starts in the context that started the loop, "foo"
/// here (Synapse: "looping_call"; see the module docs). The interval is a millisecond,
/// not zero: on a test clock a zero-interval loop runs again within the same `advance`
/// for ever (as on Twisted's `task.Clock`), where Synapse's test runs on the real reactor.
#[test]
fn looping_call_callback_with_a_competing_context() {
    for now in [false, true] {
        let lc = Rc::new(RefCell::new(None));
        let l = lc.clone();
        beside_a_competing_callback(&Clock::new(), move |clock, finished| {
            let (c, f) = (clock.clone(), finished.clone());
            let looping = LoopingCall::new(clock.clone(), move || competing(&c, "foo", &f));
            let done = looping.start(Duration::from_millis(1), now);
            done.add_errback(|f: Failure| -> Result<(), Failure> { panic!("the loop failed: {f}") });
            *l.borrow_mut() = Some(looping);
        });
        lc.borrow_mut().take().unwrap().stop();
    }
}

/// Synapse's `_test_run_in_background`: starts `f` in the background in "foo", checks
/// "foo" is current after, lets the clock run until `f`'s result has come, and checks
/// that nothing leaked into the sentinel.
fn run_in_background_then_check(clock: &Clock, f: impl FnOnce() -> Deferred<()>) {
    let completed = Rc::new(Cell::new(false));
    {
        let _foo = LoggingContext::new("foo").enter();
        let d = run_in_background(f);
        let c = completed.clone();
        d.add_callback(move |_| {
            check(Some("foo"));
            c.set(true)
        });
        check(Some("foo"));
    }
    pump_until(clock, || completed.get());
    check(None);
}

/// Synapse's `_chained_deferred_function`: a fired Deferred whose callback returned a
/// Deferred the clock fires later, so new callbacks wait.
fn chained_deferred_function(clock: &Clock) -> Deferred<()> {
    let d = succeed(());
    let c = clock.clone();
    d.add_callback(move |_| sleep(&c, Duration::ZERO));
    d
}

/// SY test_logcontext.py LoggingContextTestCase.test_run_in_background_with_chained_deferred
#[test]
fn run_in_background_with_a_chained_deferred() {
    let clock = Clock::new();
    let c = clock.clone();
    run_in_background_then_check(&clock, move || make_deferred_yieldable(chained_deferred_function(&c)));
}

/// SY test_logcontext.py LoggingContextTestCase.test_run_in_background_with_nonblocking_coroutine
#[test]
fn run_in_background_with_a_task_that_does_not_block() {
    let clock = Clock::new();
    run_in_background_then_check(&clock, || {
        ensure_deferred(async {
            check(Some("foo"));
            Ok(())
        })
    });
}

/// SY test_logcontext.py LoggingContextTestCase.test_run_in_background_with_coroutine: the
/// task starts in "foo" and has "foo" back after awaiting a sleep. Difference: Synapse
/// sees the sentinel just after starting the sleep (its rules); weft keeps "foo" (see
/// the module docs).
#[test]
fn run_in_background_with_a_task_that_blocks() {
    let clock = Clock::new();
    let c = clock.clone();
    run_in_background_then_check(&clock, move || {
        ensure_deferred(async move {
            check(Some("foo"));
            let s = sleep(&c, Duration::ZERO);
            let d = ensure_deferred(async move { s.await });
            check(Some("foo"));
            d.await?;
            check(Some("foo"));
            Ok(())
        })
    });
}

/// SY test_logcontext.py LoggingContextTestCase.test_run_coroutine_in_background: weft
/// has no separate `run_coroutine_in_background`; `run_in_background` of a task is the
/// same. The task starts in the caller's context, its own context survives its sleep,
/// and the caller's context is back after.
#[test]
fn a_task_in_the_background_with_a_competing_context() {
    beside_a_competing_callback(&Clock::new(), |clock, finished| {
        let (c, f) = (clock.clone(), finished.clone());
        let _: Deferred<()> = run_in_background(move || competing(&c, "foo", &f));
    });
}

/// SY test_logcontext.py LoggingContextTestCase.test_run_coroutine_in_background_already_complete:
/// a task that awaits only a fired Deferred runs to the end at once, in its own
/// context while it is entered, and leaves the caller's context current.
#[test]
fn a_task_in_the_background_that_completes_at_once() {
    check(None);
    let finished = Rc::new(Cell::new(false));
    {
        let _foo = LoggingContext::new("foo").enter();
        let f = finished.clone();
        let d: Deferred<()> = run_in_background(move || {
            ensure_deferred(async move {
                check(Some("foo"));
                {
                    let _competing = LoggingContext::new("competing").enter();
                    succeed(()).await?;
                    check(Some("competing"));
                }
                check(Some("foo"));
                f.set(true);
                Ok(())
            })
        });
        check(Some("foo"));
        d.take_result().unwrap().unwrap();
    }
    assert!(finished.get());
    check(None);
}
