//! Log contexts through the public API; ports of Synapse's `tests/util/test_logcontext.py`
//! (named `/// SY test_logcontext.py <name>`) and the seed's garbage-collection case.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use crate::support::logs;

use weft::logcontext::{
    assert_sentinel, current_context, current_request_id, make_deferred_yieldable, nested_logging_context,
    run_as_background_process, run_in_background, set_current_context, ContextStats, LoggingContext,
    PreserveLoggingContext,
};
use weft::{CancelledError, Clock, Deferred, Failure};

/// Installs the binary's capturing logger (behind `ContextLogger`) and empties this
/// thread's records.
fn capture_logs() {
    logs::capture();
}

fn records() -> Vec<(log::Level, String)> {
    logs::records()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A Deferred the clock fires after `delay`, not following any rule (Synapse's
/// "blocking function").
fn sleep(clock: &Clock, delay: Duration) -> Deferred<()> {
    let d = Deferred::new();
    let fire = d.clone();
    clock.call_later(delay, move || fire.callback(()).unwrap());
    d
}

/// Asserts the current context's request id.
#[track_caller]
fn check(expected: Option<&str>) {
    assert_eq!(current_request_id().as_deref(), expected);
}

/// Records the request id each time it is called.
fn recorder() -> (Rc<RefCell<Vec<Option<String>>>>, impl Fn() + Clone) {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    (seen, move || s.borrow_mut().push(current_request_id()))
}

/// SY test_logcontext.py test_with_context
#[test]
fn with_context_sets_and_restores() {
    check(None);
    {
        let _one = LoggingContext::new("one").enter();
        check(Some("one"));
        {
            let _two = LoggingContext::new("two").enter();
            check(Some("two"));
        }
        check(Some("one"));
    }
    check(None);
    assert_sentinel();
}

/// SY test_logcontext.py test_sleep: two requests interleaved by the clock.
#[test]
fn interleaved_requests_keep_their_contexts() {
    let clock = Clock::new();
    let (seen, rec) = recorder();
    for (name, first, second) in [("one", 1, 2), ("two", 2, 2)] {
        let _ctx = LoggingContext::new(name).enter();
        let (r1, r2, c) = (rec.clone(), rec.clone(), clock.clone());
        sleep(&clock, secs(first)).add_callback(move |_| {
            r1();
            sleep(&c, secs(second)).add_callback(move |_| r2()).clone()
        });
    }
    check(None);
    for _ in 0..4 {
        clock.advance(secs(1));
        check(None);
    }
    let seen: Vec<_> = seen.borrow().iter().map(|s| s.clone().unwrap()).collect();
    assert_eq!(seen, ["one", "two", "one", "two"]);
}

/// Awaiting a completed Deferred: the callback runs at once, in the current context.
#[test]
fn callback_on_fired_deferred_runs_in_current_context() {
    let d = weft::succeed(1);
    let _one = LoggingContext::new("one").enter();
    d.add_callback(|x| {
        check(Some("one"));
        x
    });
    check(Some("one"));
}

/// Awaiting an incomplete Deferred: the callback runs in the adder's context whoever
/// fires it, and the firer's context is back afterwards.
#[test]
fn callback_on_unfired_deferred_runs_in_adders_context() {
    let (seen, rec) = recorder();
    let d: Deferred<()> = Deferred::new();
    {
        let _one = LoggingContext::new("one").enter();
        let r = rec.clone();
        d.add_callback(move |_| r());
    }
    let r = rec.clone();
    d.add_callback(move |_| r()); // added in the sentinel
    {
        let _two = LoggingContext::new("two").enter();
        d.callback(()).unwrap();
        check(Some("two"));
    }
    check(None);
    assert_eq!(*seen.borrow(), [Some("one".to_string()), None]);
}

/// A panicking callback still has the context restored; so does the next one.
#[test]
fn context_restored_after_panicking_callback() {
    let d: Deferred<u8> = Deferred::new();
    {
        let _one = LoggingContext::new("one").enter();
        d.add_callback(|_| -> u8 { panic!("boom") });
        d.add_errback(|f: Failure| {
            check(Some("one"));
            assert!(f.check::<weft::PanicError>());
            0
        });
    }
    let _two = LoggingContext::new("two").enter();
    d.callback(1).unwrap();
    check(Some("two"));
    assert_eq!(d.result().unwrap().unwrap(), 0);
}

/// SY test_logcontext.py test_run_in_background_with_non_blocking_fn
#[test]
fn run_in_background_with_completed_result() {
    let _one = LoggingContext::new("one").enter();
    let d: Deferred<u8> = run_in_background(|| {
        check(Some("one"));
        let _other = set_current_context(LoggingContext::new("misbehaving"));
        7
    });
    check(Some("one"));
    assert_eq!(d.result().unwrap().unwrap(), 7);
}

/// SY test_logcontext.py test_run_in_background_with_blocking_fn
#[test]
fn run_in_background_with_incomplete_result() {
    let clock = Clock::new();
    let (seen, rec) = recorder();
    {
        let _one = LoggingContext::new("one").enter();
        let (c, r) = (clock.clone(), rec.clone());
        let d = run_in_background(move || sleep(&c, secs(1)).add_callback(move |_| r()).clone());
        check(Some("one"));
        let r = rec.clone();
        d.add_callback(move |_| r());
    }
    clock.advance(secs(1));
    check(None);
    assert_eq!(*seen.borrow(), [Some("one".to_string()), Some("one".to_string())]);
}

/// SY test_logcontext.py test_run_in_background_with_coroutine (a failing function).
#[test]
fn run_in_background_with_failure() {
    let _one = LoggingContext::new("one").enter();
    let d: Deferred<u8> = run_in_background(|| -> Result<u8, Failure> { Err(Failure::msg("nope")) });
    check(Some("one"));
    assert!(d.take_result().unwrap().is_err());
}

/// SY test_logcontext.py test_make_deferred_yieldable
#[test]
fn make_deferred_yieldable_restores_context_on_completion() {
    let clock = Clock::new();
    let (seen, rec) = recorder();
    {
        let _one = LoggingContext::new("one").enter();
        let d = make_deferred_yieldable(sleep(&clock, secs(0)));
        d.add_callback(move |_| rec());
    }
    clock.advance(secs(0));
    check(None);
    assert_eq!(*seen.borrow(), [Some("one".to_string())]);
}

/// SY test_logcontext.py test_make_deferred_yieldable_with_chained_deferreds
#[test]
fn make_deferred_yieldable_with_chained_deferreds() {
    let clock = Clock::new();
    let (seen, rec) = recorder();
    {
        let _one = LoggingContext::new("one").enter();
        let c = clock.clone();
        let d = weft::succeed(());
        d.add_callback(move |_| sleep(&c, secs(1)));
        make_deferred_yieldable(d).add_callback(move |_| rec());
    }
    clock.advance(secs(1));
    check(None);
    assert_eq!(*seen.borrow(), [Some("one".to_string())]);
}

/// SY test_logcontext.py test_nested_logging_context
#[test]
fn nested_logging_context_is_named_after_and_charges_its_parent() {
    let parent = LoggingContext::new("foo");
    let _p = parent.enter();
    {
        let child = nested_logging_context("bar");
        let _c = child.enter();
        check(Some("foo-bar"));
        child.add_database_transaction(Duration::from_millis(5));
        assert_eq!(parent.stats().db_txn_count, 0, "charged to the parent at finish");
    }
    check(Some("foo"));
    let stats = parent.stats();
    assert_eq!(stats.db_txn_count, 1);
    assert_eq!(stats.db_txn_duration, Duration::from_millis(5));
}

/// Synapse's `run_as_background_process`: a fresh context, not charged to the request.
#[test]
fn background_process_has_its_own_context_and_accounting() {
    let clock = Clock::new();
    let request = LoggingContext::new("request-1");
    let (seen, rec) = recorder();
    let done = {
        let _r = request.enter();
        let c = clock.clone();
        let done = run_as_background_process("bgproc", move || {
            rec();
            current_context().record_event_fetch(3);
            sleep(&c, secs(1)).add_callback(move |_| rec()).clone()
        });
        check(Some("request-1"));
        done
    };
    assert!(request.is_finished());
    clock.advance(secs(1));
    assert_eq!(done.result().unwrap().unwrap(), Some(()));
    assert_eq!(*seen.borrow(), [Some("bgproc-0".to_string()), Some("bgproc-0".to_string())]);
    assert_eq!(request.stats().evt_db_fetch_count, 0);
    // A failing one is logged in its own context and becomes `None`.
    capture_logs();
    let failed: Deferred<Option<u8>> =
        run_as_background_process("bgproc", || -> Result<u8, Failure> { Err(Failure::msg("disk on fire")) });
    assert_eq!(failed.result().unwrap().unwrap(), None);
    let logs = records();
    assert!(logs.iter().any(|(l, m)| *l == log::Level::Error && m.starts_with("[bgproc-1] ")), "{logs:?}");
}

/// A cancelled request's context finishes; its cancellers ran in it; nothing leaks.
#[test]
fn cancelled_request_finishes_its_context_and_leaks_nothing() {
    let (seen, rec) = recorder();
    let finished = Rc::new(Cell::new(false));
    let ctx = LoggingContext::new("GET-1");
    let f = finished.clone();
    ctx.on_finish(move |name, _| {
        assert_eq!(name, "GET-1");
        f.set(true)
    });
    let (r1, r2, r3) = (rec.clone(), rec.clone(), rec.clone());
    let request: Deferred<u8> = ctx.run(move || {
        let work: Deferred<u8> = Deferred::with_canceller(move |_| r1());
        work.add_canceller(move |_| r2()).add_errback(move |f: Failure| -> Result<u8, Failure> {
            r3();
            Err(f)
        });
        work
    });
    assert!(!finished.get());
    {
        let _other = LoggingContext::new("other").enter();
        request.cancel();
        check(Some("other"));
    }
    check(None);
    assert!(finished.get());
    let f = request.take_result().unwrap().unwrap_err();
    assert!(f.check::<CancelledError>());
    assert_eq!(*seen.borrow(), vec![Some("GET-1".to_string()); 3]);
}

/// The seed's garbage-collection case: a request waits on a Deferred in a listener
/// queue; both ends are dropped. No context leaks into the sentinel, and the request's
/// context finishes (its parent gets its totals).
#[test]
fn dropping_both_ends_of_a_waiting_chain_leaks_no_context() {
    let listeners: Rc<RefCell<Vec<Deferred<String>>>> = Rc::new(RefCell::new(Vec::new()));
    let finished = Rc::new(Cell::new(false));
    let parent = LoggingContext::new("server");
    let request: Deferred<u32> = {
        let ctx = LoggingContext::with_parent("GET-2", &parent);
        let f = finished.clone();
        ctx.on_finish(move |_, _| f.set(true));
        let l = listeners.clone();
        ctx.run(move || {
            current_context().add_database_transaction(Duration::from_millis(1));
            let d = Deferred::new();
            l.borrow_mut().push(d.clone());
            let _preserve = PreserveLoggingContext::sentinel();
            d.add_callback(|s: String| s + "!");
            d.map(|s| s.len() as u32)
        })
    };
    check(None);
    drop(request);
    listeners.borrow_mut().clear();
    check(None);
    assert_sentinel();
    assert!(finished.get(), "the orphaned request's context finished when dropped");
    assert_eq!(parent.stats().db_txn_count, 1);
}

/// Work left in a finished context is reported once, and charged to the parent.
#[test]
fn work_in_finished_context_warns_once_and_reaches_parent() {
    capture_logs();
    let parent = LoggingContext::new("parent");
    let d: Deferred<()> = Deferred::new();
    {
        let _child = LoggingContext::with_parent("child", &parent).enter();
        d.add_callback(|_| current_context().record_event_fetch(2));
        d.add_callback(|_| current_context().record_event_fetch(1));
    }
    let before = parent.stats();
    d.callback(()).unwrap();
    let after = parent.stats();
    assert_eq!(after.evt_db_fetch_count - before.evt_db_fetch_count, 3);
    assert_eq!(after.callbacks - before.callbacks, 2);
    let warnings: Vec<_> = records().into_iter().filter(|(l, _)| *l == log::Level::Warn).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].1.contains("'child'"), "{warnings:?}");
}

/// Synapse's `LoggingContextFilter`: every record carries the current request id.
#[test]
fn log_wrapper_tags_records_with_the_request_id() {
    capture_logs();
    log::info!("before");
    {
        let _ctx = LoggingContext::new("PUT-9").enter();
        log::info!("during {}", 1);
    }
    let msgs: Vec<_> = records().into_iter().map(|(_, m)| m).collect();
    assert_eq!(msgs, ["[sentinel] before", "[PUT-9] during 1"]);
}

/// Counters, callbacks and CPU, readable while running and at finish, summed into the
/// parent, with the finish hook getting the totals.
#[test]
fn accounting_sums_into_parent_and_reaches_the_hook() {
    let parent = LoggingContext::new("parent");
    let summary = Rc::new(RefCell::new(None));
    let d: Deferred<u64> = Deferred::new();
    {
        let child = LoggingContext::with_parent("child", &parent);
        let s = summary.clone();
        child.on_finish(move |name, stats| *s.borrow_mut() = Some((name.to_string(), *stats)));
        let _c = child.enter();
        child.add_database_transaction(Duration::from_millis(3));
        child.add_database_scheduled(Duration::from_millis(2));
        child.record_event_fetch(4);
        d.add_callback(|n| (0..n).fold(0u64, |a, x| a.wrapping_mul(31).wrapping_add(x)));
        d.add_callback(|x| x);
        d.callback(2_000_000).unwrap();
        let running = child.stats();
        assert_eq!(running.callbacks, 2);
        assert!(running.cpu_time > Duration::ZERO);
    }
    let (name, stats) = summary.borrow().clone().unwrap();
    assert_eq!(name, "child");
    let expected = ContextStats {
        cpu_time: stats.cpu_time,
        callbacks: 2,
        db_txn_count: 1,
        db_txn_duration: Duration::from_millis(3),
        db_sched_duration: Duration::from_millis(2),
        evt_db_fetch_count: 4,
    };
    assert_eq!(stats, expected);
    assert_eq!(parent.stats(), expected);
}

/// `call_later` runs in the context current when it was scheduled, the sentinel
/// included, whichever context advances the clock.
#[test]
fn call_later_runs_in_scheduling_context() {
    let clock = Clock::new();
    let (seen, rec) = recorder();
    clock.call_later(secs(1), rec.clone());
    {
        let _one = LoggingContext::new("one").enter();
        clock.call_later(secs(1), rec.clone());
    }
    let _two = LoggingContext::new("two").enter();
    clock.advance(secs(1));
    check(Some("two"));
    assert_eq!(*seen.borrow(), [None, Some("one".to_string())]);
}

/// The reactor's per-turn check catches a leaked context (debug builds).
#[test]
#[cfg(debug_assertions)]
fn assert_sentinel_catches_a_leak() {
    assert_sentinel();
    let previous = set_current_context(LoggingContext::new("leaky"));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(assert_sentinel));
    set_current_context(previous);
    let msg = caught.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("leaky"), "{msg}");
    assert_sentinel();
}

/// A request finished by its own last callback, with a callback from outside after it:
/// restoring the finished request's context when the loops unwind is not late work.
#[test]
fn request_finished_from_its_own_callback_does_not_warn() {
    capture_logs();
    let clock = Clock::new();
    let c = clock.clone();
    let done: Deferred<u8> = LoggingContext::new("GET-3").run(move || sleep(&c, secs(1)).map(|_| 3u8));
    done.add_callback(|x| {
        check(None);
        x
    });
    clock.advance(secs(1));
    check(None);
    assert_eq!(done.result().unwrap().unwrap(), 3);
    let warnings: Vec<_> = records().into_iter().filter(|(l, _)| *l == log::Level::Warn).collect();
    assert!(warnings.is_empty(), "{warnings:?}");
}
