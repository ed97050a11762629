//! `ResponseCache` on the deterministic clock: Synapse's tests
//! (tests/util/caches/test_response_cache.py), plus the cancel policies and the work's
//! own log context.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use weft::cache::{ResponseCacheContext, WhenUnobserved};
use weft::logcontext::{current_request_id, LoggingContext};
use weft::reactor::defer_later;
use weft::{CancelledError, Clock, Deferred, Failure, ResponseCache};

use crate::support::{logs, ms, secs};

fn with_cache(clock: &Clock, name: &str, timeout: Duration) -> ResponseCache<u32, String> {
    ResponseCache::new(clock, name, timeout)
}

/// Returns `o` after one second on `clock` (Synapse's `delayed_return`), counting calls.
fn delayed_return(clock: &Clock, o: &str, calls: &Rc<Cell<u32>>) -> Deferred<String> {
    calls.set(calls.get() + 1);
    let o = o.to_string();
    defer_later(clock, secs(1), move || o)
}

#[track_caller]
fn success<T: std::fmt::Debug>(d: &Deferred<T>) -> T {
    match d.take_result() {
        Some(Ok(v)) => v,
        other => panic!("expected a success, got {other:?}"),
    }
}

#[track_caller]
fn failure<T: std::fmt::Debug>(d: &Deferred<T>) -> Failure {
    match d.take_result() {
        Some(Err(f)) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// SY test_response_cache.py test_cache_hit
#[test]
fn a_result_is_kept_for_the_timeout() {
    let clock = Clock::new();
    let cache = with_cache(&clock, "keeping_cache", ms(9001));
    let d = cache.wrap(0, || "howdy".to_string());
    assert_eq!(success(&d), "howdy");
    assert_eq!(success(&cache.get(&0).expect("cached")), "howdy");
}

/// SY test_response_cache.py test_cache_miss
#[test]
fn with_no_timeout_a_result_is_not_kept() {
    let clock = Clock::new();
    let cache = with_cache(&clock, "trashing_cache", Duration::ZERO);
    assert_eq!(success(&cache.wrap(0, || "howdy".to_string())), "howdy");
    assert!(cache.get(&0).is_none());
}

/// SY test_response_cache.py test_cache_expire
#[test]
fn a_result_expires_after_the_timeout() {
    let clock = Clock::new();
    let cache = with_cache(&clock, "short_cache", ms(1000));
    assert_eq!(success(&cache.wrap(0, || "howdy".to_string())), "howdy");
    assert_eq!(success(&cache.get(&0).unwrap()), "howdy");
    clock.pump(&[secs(2)]);
    assert!(cache.get(&0).is_none());
}

/// SY test_response_cache.py test_cache_wait_hit
#[test]
fn a_caller_waits_for_the_work() {
    let clock = Clock::new();
    let cache = with_cache(&clock, "neutral_cache", Duration::ZERO);
    let calls = Rc::new(Cell::new(0));
    let d = cache.wrap(0, || delayed_return(&clock, "howdy", &calls));
    assert!(!d.is_called());
    clock.pump(&[secs(2)]);
    assert_eq!(success(&d), "howdy");
}

/// SY test_response_cache.py test_cache_wait_expire
#[test]
fn the_timeout_counts_from_completion() {
    let clock = Clock::new();
    let cache = with_cache(&clock, "medium_cache", ms(3000));
    let calls = Rc::new(Cell::new(0));
    let d = cache.wrap(0, || delayed_return(&clock, "howdy", &calls));
    assert!(!d.is_called());
    clock.pump(&[secs(1), secs(1)]);
    assert_eq!(success(&d), "howdy");
    // A second call gets the result without calling the work again.
    let again = cache.wrap(0, || -> String { panic!("the work was called again") });
    assert_eq!(success(&again), "howdy");
    clock.pump(&[secs(2)]);
    assert!(cache.keys().is_empty());
}

/// SY test_response_cache.py test_cache_context_nocache (both parameters)
#[test]
fn the_work_can_ask_not_to_be_cached() {
    for should_cache in [true, false] {
        let clock = Clock::new();
        let cache = with_cache(&clock, "medium_cache", ms(3000));
        let calls = Rc::new(Cell::new(0));
        let work = |ctx: Rc<ResponseCacheContext<u32>>| {
            calls.set(calls.get() + 1);
            defer_later(&clock, secs(1), move || {
                ctx.set_should_cache(should_cache);
                "howdy".to_string()
            })
        };
        let d1 = cache.wrap_with_context(0, work);
        assert!(!d1.is_called());
        let d2 = cache.wrap_with_context(0, work);
        assert!(!d2.is_called());
        assert_eq!(calls.get(), 1);
        clock.advance(secs(1));
        assert_eq!(success(&d1), "howdy");
        assert_eq!(success(&d2), "howdy");
        if should_cache {
            assert_eq!(success(&cache.wrap(0, || -> String { panic!("not cached") })), "howdy");
        } else {
            assert!(cache.keys().is_empty());
        }
    }
}

fn erring(clock: &Clock, calls: &Rc<Cell<u32>>, fail_first: bool) -> Deferred<String> {
    calls.set(calls.get() + 1);
    let fail = fail_first && calls.get() == 1;
    defer_later(clock, secs(1), move || -> Result<String, Failure> {
        if fail {
            Err(Failure::msg("oh no"))
        } else {
            Ok("fine".to_string())
        }
    })
}

/// SY test_response_cache.py test_errors_raised_to_all_waiters
#[test]
fn an_error_reaches_every_waiter() {
    let clock = Clock::new();
    let cache = with_cache(&clock, "error_cache", ms(3000));
    let calls = Rc::new(Cell::new(0));
    let d1 = cache.wrap(0, || erring(&clock, &calls, true));
    let d2 = cache.wrap(0, || erring(&clock, &calls, true));
    assert!(!d1.is_called() && !d2.is_called());
    clock.advance(secs(1));
    assert!(failure(&d1).to_string().contains("oh no"));
    assert!(failure(&d2).to_string().contains("oh no"));
}

/// SY test_response_cache.py test_errors_are_not_cached
#[test]
fn an_error_is_not_cached() {
    let clock = Clock::new();
    let cache = with_cache(&clock, "error_not_cached", ms(3000));
    let calls = Rc::new(Cell::new(0));
    let d1 = cache.wrap(0, || erring(&clock, &calls, true));
    clock.advance(secs(1));
    assert!(failure(&d1).to_string().contains("oh no"));
    let d2 = cache.wrap(0, || erring(&clock, &calls, true));
    clock.advance(secs(1));
    assert_eq!(success(&d2), "fine", "the error is not replayed");
    assert_eq!(calls.get(), 2);
}

/// SY test_response_cache.py test_cache_cancel_first_wait (the cancelled caller leaves
/// at once here, since the work has its own log context; the work goes on and later
/// callers get its result).
#[test]
fn a_cancelled_caller_leaves_and_the_work_goes_on() {
    let clock = Clock::new();
    let cache = with_cache(&clock, "cancel_cache", ms(3000));
    let calls = Rc::new(Cell::new(0));
    let d = cache.wrap(0, || delayed_return(&clock, "howdy", &calls));
    d.cancel();
    assert!(failure(&d).check::<CancelledError>());
    clock.advance(secs(2));
    let d2 = cache.wrap(0, || delayed_return(&clock, "howdy", &calls));
    assert_eq!(success(&d2), "howdy");
    assert_eq!(calls.get(), 1, "the work ran once");
}

/// SY test_response_cache.py test_cache_cancel_first_wait_other_observers
#[test]
fn cancelling_one_caller_leaves_the_others_waiting() {
    let clock = Clock::new();
    let cache = with_cache(&clock, "cancel_other_cache", ms(300));
    let cancelled = Rc::new(Cell::new(false));
    let c = cancelled.clone();
    let work: Deferred<String> = Deferred::with_canceller(move |_| c.set(true));
    let w = work.clone();
    let d1 = cache.wrap(0, move || w);
    let d2 = cache.wrap(0, || -> String { unreachable!() });
    d1.cancel();
    assert!(failure(&d1).check::<CancelledError>());
    assert!(!d2.is_called());
    clock.advance(ms(700));
    assert!(!d2.is_called());
    work.callback("howdy".to_string()).unwrap();
    assert!(!cancelled.get(), "the work was not cancelled");
    assert_eq!(success(&d2), "howdy");
}

/// SY test_response_cache.py test_cache_add_and_cancel
#[test]
fn callers_that_come_and_cancel_do_not_stop_the_work() {
    let clock = Clock::new();
    let cache = with_cache(&clock, "cancel_add_cache", ms(300));
    let cancelled = Rc::new(Cell::new(false));
    let c = cancelled.clone();
    let work: Deferred<String> = Deferred::with_canceller(move |_| c.set(true));
    let mut callers = Vec::new();
    for _ in 0..8 {
        let w = work.clone();
        let d = cache.wrap(0, move || w);
        clock.advance(ms(50));
        d.cancel();
        assert!(!cancelled.get());
        clock.advance(ms(50));
        callers.push(d);
    }
    work.callback("howdy".to_string()).unwrap();
    for d in &callers {
        assert!(failure(d).check::<CancelledError>());
    }
    assert!(!cancelled.get());
    assert_eq!(success(&cache.wrap(0, || -> String { unreachable!() })), "howdy");
}

/// SY test_response_cache.py test_cache_cancel_then_error
#[test]
fn a_cancelled_caller_does_not_hide_the_error_from_another() {
    let clock = Clock::new();
    let cache = with_cache(&clock, "cancel_then_error_cache", ms(3000));
    let calls = Rc::new(Cell::new(0));
    let d1 = cache.wrap(0, || erring(&clock, &calls, true));
    let d2 = cache.wrap(0, || erring(&clock, &calls, true));
    d1.cancel();
    assert!(!d2.is_called());
    clock.advance(secs(2));
    assert!(failure(&d1).check::<CancelledError>());
    assert!(failure(&d2).to_string().contains("oh no"));
}

/// Like SY test_cache_cancel_first_wait_expire: with `WhenUnobserved::Cancel`, the work
/// is cancelled when its last caller has gone, and the next caller starts afresh.
#[test]
fn the_cancel_policy_stops_work_nobody_waits_for() {
    let clock = Clock::new();
    let cache: ResponseCache<u32, String> =
        ResponseCache::with_policy(&clock, "cancel_policy", ms(3000), WhenUnobserved::Cancel);
    let cancels = Rc::new(Cell::new(0));
    let make = |cancels: &Rc<Cell<u32>>| {
        let c = cancels.clone();
        Deferred::<String>::with_canceller(move |_| c.set(c.get() + 1))
    };
    let work = make(&cancels);
    let w = work.clone();
    let d1 = cache.wrap(0, move || w);
    let d2 = cache.get(&0).unwrap();
    d1.cancel();
    assert_eq!(cancels.get(), 0, "another caller still waits");
    d2.cancel();
    assert_eq!(cancels.get(), 1, "the last caller left: the work is cancelled");
    assert!(failure(&d2).check::<CancelledError>());
    assert!(cache.is_empty());
    let fresh = make(&cancels);
    let f = fresh.clone();
    let d3 = cache.wrap(0, move || f);
    fresh.callback("new".to_string()).unwrap();
    assert_eq!(success(&d3), "new");
}

#[test]
fn the_work_runs_in_its_own_context_not_the_first_callers() {
    logs::capture();
    let clock = Clock::new();
    let cache = with_cache(&clock, "rooms", ms(3000));
    let seen = Rc::new(RefCell::new(Vec::new()));
    let d = {
        let _request = LoggingContext::new("GET-1").enter();
        let (s, c) = (seen.clone(), clock.clone());
        cache.wrap(7, move || {
            s.borrow_mut().push(current_request_id());
            defer_later(&c, secs(1), move || {
                s.borrow_mut().push(current_request_id());
                "done".to_string()
            })
        })
    }; // GET-1 finishes here, before the work does.
    clock.advance(secs(1));
    assert_eq!(success(&d), "done");
    assert_eq!(*seen.borrow(), [Some("rooms-0".to_string()), Some("rooms-0".to_string())]);
    let late: Vec<_> = logs::records().into_iter().filter(|(_, m)| m.contains("after it finished")).collect();
    assert!(late.is_empty(), "{late:?}");
}

/// SY test_response_cache.py test_cache_cancel_non_cancellable: the one caller
/// cancelling does not cancel the work, which finishes and is cached for the next
/// caller. (The caller's `CancelledError` comes at once here, not when the work
/// finishes: see src/cache.rs, "Synapse delays each caller's `CancelledError` until the
/// work completes ...; here the work has its own context, so a caller can leave at once".)
#[test]
fn cancelling_the_only_caller_leaves_the_work_running_and_cached() {
    let clock = Clock::new();
    let cache = with_cache(&clock, "cancel_non_cancellable_cache", ms(300));
    let cancelled = Rc::new(Cell::new(false));
    let c = cancelled.clone();
    let work: Deferred<String> = Deferred::with_canceller(move |_| c.set(true));
    let w = work.clone();
    let d = cache.wrap(0, move || w);
    d.cancel();
    assert!(failure(&d).check::<CancelledError>());
    assert!(!cancelled.get(), "the work was cancelled");
    clock.advance(secs(1));
    work.callback("howdy".to_string()).unwrap();
    let d2 = cache.wrap(0, || -> String { unreachable!("the result is cached") });
    assert_eq!(success(&d2), "howdy");
}

/// SY test_response_cache.py test_cache_cancel_first_wait_expire: work whose only caller
/// cancelled is itself cancelled, and the caller gets a `CancelledError`. Difference:
/// Synapse cancels such (`@cancellable`) work once the entry's timeout has passed with
/// nobody waiting; weft has no per-function marker, and the cache's policy decides
/// (src/cache.rs, `WhenUnobserved`: the default keeps the work running, `Cancel` cancels
/// it as soon as its last caller has gone), so this runs with `WhenUnobserved::Cancel`
/// and the work is cancelled at once.
#[test]
fn with_the_cancel_policy_work_nobody_waits_for_is_cancelled() {
    let clock = Clock::new();
    let cache: ResponseCache<u32, String> =
        ResponseCache::with_policy(&clock, "cancel_expire_cache", ms(300), WhenUnobserved::Cancel);
    let cancelled = Rc::new(Cell::new(false));
    let c = cancelled.clone();
    let work: Deferred<String> = Deferred::with_canceller(move |_| c.set(true));
    let w = work.clone();
    let d = cache.wrap(0, move || w);
    assert!(!cancelled.get());
    d.cancel();
    assert!(failure(&d).check::<CancelledError>());
    assert!(cancelled.get(), "the work was not cancelled");
    assert!(work.is_called(), "the cancel failed the work");
    clock.advance(ms(700));
    assert!(cache.is_empty());
}
