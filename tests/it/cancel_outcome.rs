//! `cancel()` returns a `CancelOutcome`: every cancel path says what it did (stopped the
//! work, too late, answered by a canceller, stopped at a shield, delivered later), so an
//! invoker need not guess from side effects.
//!
//! Each test that ports one of Twisted's `test_defer.py` tests names it in a `/// TW` line.

use std::cell::Cell;
use std::rc::Rc;

use weft::future::ensure_deferred;
use weft::{
    delay_cancellation, gather_results, race, stop_cancellation, CancelOutcome, CancelledError, Deferred,
    DeferredList, DeferredLock, DeferredQueue, DeferredSemaphore, Failure, ListResult, ObservableDeferred,
    TimeoutError,
};

use crate::support::{failure_result_of, success_result_of};

/// `d.cancel()` returns `expected`, and `d` then holds a `CancelledError`.
#[track_caller]
fn check_cancelled<T: std::fmt::Debug>(d: &Deferred<T>, expected: CancelOutcome) {
    assert_eq!(d.cancel(), expected);
    failure_result_of::<CancelledError, _>(d);
}

#[test]
fn plain_cancel_is_cancelled_and_a_second_is_already_fired() {
    let d: Deferred<u8> = Deferred::new();
    assert_eq!(d.cancel(), CancelOutcome::Cancelled);
    assert_eq!(d.cancel(), CancelOutcome::AlreadyFired);
    failure_result_of::<CancelledError, _>(&d);
}

/// TW test_defer.py test_cancelAfterCallback
#[test]
fn cancel_after_callback_is_already_fired_and_keeps_the_result() {
    let d: Deferred<&str> = Deferred::new();
    d.callback("kept").unwrap();
    assert_eq!(d.cancel(), CancelOutcome::AlreadyFired);
    assert_eq!(success_result_of(&d), "kept");
}

/// A cancel from inside the Deferred's own running callback comes too late too.
#[test]
fn cancel_from_a_running_callback_is_already_fired() {
    let d: Deferred<u8> = Deferred::new();
    let seen = Rc::new(Cell::new(None));
    let (me, s) = (d.clone(), seen.clone());
    d.add_callback(move |x| {
        s.set(Some(me.cancel()));
        x
    });
    d.callback(3).unwrap();
    assert_eq!(seen.get(), Some(CancelOutcome::AlreadyFired));
    assert_eq!(success_result_of(&d), 3);
}

/// TW test_defer.py test_cancellerArg (a canceller that gives a value)
#[test]
fn canceller_giving_a_value_is_fired_by_canceller() {
    let d: Deferred<u8> = Deferred::with_canceller(|d| d.callback(9).unwrap());
    assert_eq!(d.cancel(), CancelOutcome::FiredByCanceller);
    assert_eq!(success_result_of(&d), 9);
}

/// TW test_defer.py test_cancelNestedDeferred style: a canceller that fails with a more
/// specific error.
#[test]
fn canceller_giving_another_failure_is_fired_by_canceller() {
    let d: Deferred<u8> = Deferred::with_canceller(|d| {
        d.errback(TimeoutError { timeout: std::time::Duration::from_secs(1) }).unwrap();
    });
    assert_eq!(d.cancel(), CancelOutcome::FiredByCanceller);
    failure_result_of::<TimeoutError, _>(&d);
}

#[test]
fn canceller_that_does_not_fire_leaves_cancelled() {
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    let d: Deferred<u8> = Deferred::with_canceller(move |_| r.set(true));
    check_cancelled(&d, CancelOutcome::Cancelled);
    assert!(ran.get());
}

#[test]
fn layer_canceller_firing_the_deferred_is_fired_by_canceller() {
    let d: Deferred<u8> = Deferred::new();
    let me = d.clone();
    d.add_canceller(move |_| me.callback(1).unwrap()).add_callback(|x| x + 1);
    assert_eq!(d.cancel(), CancelOutcome::FiredByCanceller);
    assert_eq!(success_result_of(&d), 2);
}

/// A paused Deferred fails at once, but its errbacks see the failure only on unpause.
#[test]
fn paused_deferred_cancel_is_delayed() {
    let d: Deferred<u8> = Deferred::new();
    d.pause();
    assert_eq!(d.cancel(), CancelOutcome::Delayed);
    d.unpause().unwrap();
    failure_result_of::<CancelledError, _>(&d);
}

/// The outcome of a chain is the outcome at the Deferred the chain waits on.
#[test]
fn chained_cancel_reports_the_innermost_outcome() {
    let cases: Vec<(Deferred<u8>, CancelOutcome)> = vec![
        (Deferred::new(), CancelOutcome::Cancelled),
        (Deferred::with_canceller(|d| d.callback(5).unwrap()), CancelOutcome::FiredByCanceller),
        (stop_cancellation(&Deferred::new()), CancelOutcome::Shielded),
        (delay_cancellation(&Deferred::new()), CancelOutcome::Delayed),
    ];
    for (inner, expected) in cases {
        let outer: Deferred<u8> = Deferred::new();
        let i = inner.clone();
        outer.add_callback(move |_| i);
        outer.callback(0).unwrap();
        assert_eq!(outer.cancel(), expected, "chained on a {expected:?} inner");
    }
}

#[test]
fn stop_cancellation_is_shielded_and_the_work_goes_on() {
    let work: Deferred<u8> = Deferred::new();
    let mine = stop_cancellation(&work);
    check_cancelled(&mine, CancelOutcome::Shielded);
    assert!(!work.is_called());
}

#[test]
fn delay_cancellation_is_delayed_until_the_work_ends() {
    let work: Deferred<u8> = Deferred::new();
    let waiter = delay_cancellation(&work);
    assert_eq!(waiter.cancel(), CancelOutcome::Delayed);
    assert!(waiter.is_paused());
    work.callback(1).unwrap();
    failure_result_of::<CancelledError, _>(&waiter);
}

#[test]
fn observer_cancel_is_shielded_and_the_source_goes_on() {
    let source: Deferred<u8> = Deferred::new();
    let obs = ObservableDeferred::new(source.clone(), false);
    let a = obs.observe();
    let b = obs.observe();
    check_cancelled(&a, CancelOutcome::Shielded);
    source.callback(4).unwrap();
    assert_eq!(success_result_of(&b), 4);
}

#[test]
fn combinators_report_cancelled_when_their_members_are() {
    let all = gather_results(vec![Deferred::<u8>::new(), Deferred::new()], false);
    assert_eq!(all.cancel(), CancelOutcome::Cancelled);
    let _ = all.take_result();
    let r = race(vec![Deferred::<u8>::new(), Deferred::new()]);
    assert_eq!(r.cancel(), CancelOutcome::Cancelled);
    let _ = r.take_result();
}

/// A `DeferredList` (without `fire_on_one_errback`) answers a cancel with a value: the
/// list of its members' outcomes, each a `CancelledError` here.
#[test]
fn deferred_list_answers_a_cancel_with_its_list() {
    let list = DeferredList::new(vec![Deferred::<u8>::new()]).into_deferred();
    assert_eq!(list.cancel(), CancelOutcome::FiredByCanceller);
    match success_result_of(&list) {
        ListResult::All(results) => assert!(results[0].as_ref().unwrap_err().check::<CancelledError>()),
        other => panic!("expected every result, got {other:?}"),
    }
}

/// A race member whose canceller supplies a value wins the cancelled race.
#[test]
fn race_won_by_a_cancellers_value_is_fired_by_canceller() {
    let r = race(vec![Deferred::<u8>::new(), Deferred::with_canceller(|d| d.callback(8).unwrap())]);
    assert_eq!(r.cancel(), CancelOutcome::FiredByCanceller);
    assert_eq!(success_result_of(&r), (1, 8));
}

#[test]
fn then_chain_reports_its_sources_outcome() {
    let src: Deferred<u8> = Deferred::new();
    let mapped = src.clone().map(|x| x + 1);
    check_cancelled(&mapped, CancelOutcome::Cancelled);
    let src: Deferred<u8> = Deferred::with_canceller(|d| d.callback(1).unwrap());
    let mapped = src.map(|x| x + 1);
    assert_eq!(mapped.cancel(), CancelOutcome::FiredByCanceller);
    assert_eq!(success_result_of(&mapped), 2);
}

#[test]
fn task_letting_the_cancel_through_is_cancelled() {
    let awaited: Deferred<u8> = Deferred::new();
    let a = awaited.clone();
    let task = ensure_deferred(async move { a.await });
    check_cancelled(&task, CancelOutcome::Cancelled);
}

/// A task that catches the cancel and answers with a value.
#[test]
fn task_recovering_from_the_cancel_is_fired_by_canceller() {
    let awaited: Deferred<u8> = Deferred::new();
    let a = awaited.clone();
    let task = ensure_deferred(async move { Ok::<u8, Failure>(a.await.unwrap_or(0)) });
    assert_eq!(task.cancel(), CancelOutcome::FiredByCanceller);
    assert_eq!(success_result_of(&task), 0);
}

#[test]
fn lock_semaphore_and_queue_waiters_are_cancelled() {
    let lock = DeferredLock::new();
    let held = lock.acquire();
    let waiter = lock.acquire();
    check_cancelled(&waiter, CancelOutcome::Cancelled);
    drop(success_result_of(&held));
    let again = lock.acquire();
    assert!(again.is_called(), "the lock went to the next waiter, not the cancelled one");

    let sem = DeferredSemaphore::new(1);
    let _p = success_result_of(&sem.acquire());
    check_cancelled(&sem.acquire(), CancelOutcome::Cancelled);
    assert_eq!(sem.waiting(), 0);

    let q: DeferredQueue<u8> = DeferredQueue::unbounded();
    let g = q.get();
    check_cancelled(&g, CancelOutcome::Cancelled);
    q.try_put(1).unwrap();
    assert_eq!(q.len(), 1, "the item stayed in the queue");
}
