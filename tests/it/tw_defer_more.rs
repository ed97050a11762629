//! More ports of Twisted's `test_defer.py`: the DeferredList cancel cases, race, the
//! coroutine forms of `maybeDeferred`/`ensureDeferred`, `AlreadyCalledError` in debug
//! mode, and the lock and semaphore cases not covered in `sync.rs`.

use std::cell::{Cell, RefCell};
use std::panic::Location;
use std::rc::Rc;

use weft::future::ensure_deferred;
use weft::{
    fail, gather_results, maybe_deferred, race, succeed, CancelledError, Deferred, DeferredList,
    DeferredLock, DeferredSemaphore, Failure, FailureGroup, FirstError, ListResult, StringError,
};

use crate::support::{debugging, failure_result_of, logs};

/// Twisted's `fakeCallbackCanceller`: a Deferred whose canceller fires it with a value.
fn callback_canceller() -> Deferred<String> {
    Deferred::with_canceller(|d: &Deferred<String>| {
        d.callback("Callback Result".to_string()).unwrap();
    })
}

#[track_caller]
fn all<T: std::fmt::Debug>(d: &Deferred<ListResult<T>>) -> Vec<Result<T, Failure>> {
    match d.take_result() {
        Some(Ok(ListResult::All(v))) => v,
        other => panic!("expected All, got {other:?}"),
    }
}

/// TW test_defer.py DeferredTests.test_addCallbacksNoneErrbackArgs: of a callback and
/// errback added as one step, only the errback runs on a failure, with that failure.
#[test]
fn add_callbacks_runs_only_the_errback_on_a_failure() {
    let calls = Rc::new(RefCell::new(Vec::new()));
    let d: Deferred<()> = Deferred::new();
    let (c1, c2) = (calls.clone(), calls.clone());
    d.add_callbacks(
        move |v| c1.borrow_mut().push(format!("callback {v:?}")),
        move |f: Failure| {
            c2.borrow_mut().push(format!("errback {}", f.as_error()));
            Err::<(), _>(f)
        },
    );
    d.errback(Failure::msg("oopsie")).unwrap();
    let c3 = calls.clone();
    d.add_errback(move |f: Failure| c3.borrow_mut().push(format!("errback {}", f.as_error())));
    assert_eq!(*calls.borrow(), ["errback oopsie", "errback oopsie"]);
}

/// TW test_defer.py DeferredTests.testDeferredListDontConsumeErrors: without
/// `consume_errors` the member keeps its failure for its later errbacks, and the list
/// holds it too.
#[test]
fn list_without_consume_errors_leaves_the_failure_in_the_member() {
    let d1: Deferred<()> = Deferred::new();
    let list = DeferredList::new(vec![d1.clone()]).into_deferred();
    let trapped = Rc::new(RefCell::new(Vec::new()));
    let t = trapped.clone();
    d1.add_errback(move |f: Failure| t.borrow_mut().push(f.as_error().to_string()));
    d1.errback(Failure::msg("Bang")).unwrap();
    assert_eq!(*trapped.borrow(), ["Bang"]);
    let r = all(&list);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].as_ref().unwrap_err().as_error().to_string(), "Bang");
}

/// TW test_defer.py DeferredTests.testDeferredListConsumeErrors. Deliberate difference:
/// Twisted turns the member's result into `None`, so its later errbacks see nothing;
/// weft keeps the failure in the member, marked handled (never reported), and later
/// steps get it (src/lib.rs porting table: "`consumeErrors` leaves `None` in the member |
/// the member keeps the failure, marked handled (never reported); later steps get it").
#[test]
fn list_with_consume_errors_keeps_the_failure_marked_handled() {
    let d1: Deferred<()> = Deferred::new();
    let list = DeferredList::new(vec![d1.clone()]).consume_errors(true).into_deferred();
    let trapped = Rc::new(RefCell::new(Vec::new()));
    let t = trapped.clone();
    d1.add_errback(move |f: Failure| t.borrow_mut().push(f.as_error().to_string()));
    let ((), errors) = logs::errors_during(|| {
        d1.errback(Failure::msg("Bang")).unwrap();
        let r = all(&list);
        assert_eq!(r[0].as_ref().unwrap_err().as_error().to_string(), "Bang");
        assert_eq!(*trapped.borrow(), ["Bang"], "weft: later steps still get the failure");
        drop(d1);
    });
    assert!(errors.is_empty(), "a consumed failure is never reported: {errors:?}");
}

/// TW test_defer.py DeferredTests.testDeferredListFireOnOneErrorWithAlreadyFiredDeferreds
#[test]
fn fire_on_one_errback_with_a_member_that_already_failed() {
    let d1: Deferred<()> = fail(Failure::msg("Bang"));
    let d2: Deferred<()> = Deferred::new();
    let list = DeferredList::new(vec![d1.clone(), d2]).fire_on_one_errback(true).into_deferred();
    let f = list.take_result().expect("the list fired at once").unwrap_err();
    assert_eq!(f.downcast_ref::<FirstError>().unwrap().index, 0);
    d1.add_errback(|_| ()); // swallow, as the original does
}

/// TW test_defer.py DeferredTests.test_cancelDeferredListWithFireOnOneCallback
#[test]
fn cancelling_a_fire_on_one_callback_list_cancels_every_member() {
    let (a, b) = (Deferred::<()>::new(), Deferred::<()>::new());
    let list = DeferredList::new(vec![a.clone(), b.clone()]).fire_on_one_callback(true).into_deferred();
    list.cancel();
    failure_result_of::<CancelledError, _>(&a);
    failure_result_of::<CancelledError, _>(&b);
    assert!(list.is_called());
}

/// TW test_defer.py DeferredTests.test_cancelDeferredListWithFireOnOneCallbackAndDeferredCallback
#[test]
fn cancelling_a_fire_on_one_callback_list_whose_member_callbacks() {
    let a = callback_canceller();
    let b: Deferred<String> = Deferred::new();
    let list = DeferredList::new(vec![a, b.clone()]).fire_on_one_callback(true).into_deferred();
    list.cancel();
    failure_result_of::<CancelledError, _>(&b);
    match list.take_result().unwrap().unwrap() {
        ListResult::One { index, value } => assert_eq!((index, value.as_str()), (0, "Callback Result")),
        ListResult::All(_) => panic!("expected One"),
    }
}

/// TW test_defer.py DeferredTests.test_cancelDeferredListWithFireOnOneErrback
#[test]
fn cancelling_a_fire_on_one_errback_list() {
    let (a, b) = (Deferred::<()>::new(), Deferred::<()>::new());
    let list = DeferredList::new(vec![a.clone(), b.clone()]).fire_on_one_errback(true).into_deferred();
    list.cancel();
    failure_result_of::<CancelledError, _>(&a);
    failure_result_of::<CancelledError, _>(&b);
    let f = list.take_result().unwrap().unwrap_err();
    assert!(f.downcast_ref::<FirstError>().unwrap().failure.check::<CancelledError>());
}

/// TW test_defer.py DeferredTests.test_cancelDeferredListWithFireOnOneErrbackAllDeferredsCallback
#[test]
fn cancelling_a_fire_on_one_errback_list_whose_members_all_callback() {
    let list = DeferredList::new(vec![callback_canceller(), callback_canceller()])
        .fire_on_one_errback(true)
        .into_deferred();
    list.cancel();
    let r = all(&list);
    assert_eq!(r.len(), 2);
    for member in r {
        assert_eq!(member.unwrap(), "Callback Result");
    }
}

/// TW test_defer.py DeferredTests.test_cancelDeferredListWithOriginalDeferreds: only the
/// Deferreds given to the list are cancelled.
#[test]
fn cancelling_a_list_leaves_deferreds_outside_it_alone() {
    let (a, b, c) = (Deferred::<()>::new(), Deferred::<()>::new(), Deferred::<()>::new());
    let list = DeferredList::new(vec![a.clone(), b.clone()]).into_deferred();
    list.cancel();
    failure_result_of::<CancelledError, _>(&a);
    failure_result_of::<CancelledError, _>(&b);
    assert!(!c.is_called());
}

/// TW test_defer.py DeferredTests.test_cancelDeferredListWithException: a canceller that
/// panics does not stop the other members from being cancelled, and the panic is logged
/// once.
#[test]
fn cancelling_a_list_goes_on_past_a_panicking_canceller() {
    let a: Deferred<()> = Deferred::with_canceller(|_: &Deferred<()>| panic!("test"));
    let b: Deferred<()> = Deferred::new();
    let list = DeferredList::new(vec![a.clone(), b.clone()]).into_deferred();
    let ((), errors) = logs::errors_during(|| {
        list.cancel();
    });
    failure_result_of::<CancelledError, _>(&b);
    assert_eq!(errors.iter().filter(|e| e.contains("test")).count(), 1, "{errors:?}");
}

/// TW test_defer.py DeferredTests.test_cancelFiredOnOneCallbackDeferredList
#[test]
fn cancelling_a_list_that_fired_on_one_callback_does_nothing() {
    let (a, b) = (Deferred::<()>::new(), Deferred::<()>::new());
    let list = DeferredList::new(vec![a.clone(), b.clone()]).fire_on_one_callback(true).into_deferred();
    a.callback(()).unwrap();
    list.cancel();
    assert!(!b.is_called());
    assert!(matches!(list.take_result(), Some(Ok(ListResult::One { index: 0, .. }))));
}

/// TW test_defer.py DeferredTests.test_cancelFiredOnOneErrbackDeferredList
#[test]
fn cancelling_a_list_that_fired_on_one_errback_does_nothing() {
    let (a, b) = (Deferred::<()>::new(), Deferred::<()>::new());
    let list = DeferredList::new(vec![a.clone(), b.clone()]).fire_on_one_errback(true).into_deferred();
    a.errback(Failure::msg("test")).unwrap();
    list.cancel();
    assert!(!b.is_called());
    assert_eq!(a.take_result().unwrap().unwrap_err().as_error().to_string(), "test");
    assert!(list.take_result().unwrap().unwrap_err().check::<FirstError>());
}

/// TW test_defer.py DeferredListEmptyTests.testDeferredListEmpty and
/// DeferredTests.testEmptyDeferredList (its `fireOnOneCallback` half: an empty list that
/// fires on one callback never fires).
#[test]
fn empty_lists() {
    let list = DeferredList::<u8>::new(vec![]).into_deferred();
    assert!(all(&list).is_empty());
    let one = DeferredList::<u8>::new(vec![]).fire_on_one_callback(true).into_deferred();
    assert!(!one.is_called());
}

/// TW test_defer.py RaceTests.test_resultAfterCancel: a loser that fires after it was
/// cancelled goes nowhere, and nothing is logged.
#[test]
fn race_loser_firing_after_its_cancel_is_silent() {
    for before in 0..3 {
        for after in 0..3 {
            let ds: Vec<Deferred<()>> = (0..before + 2 + after).map(|_| Deferred::new()).collect();
            let ((), errors) = logs::errors_during(|| {
                let r = race(ds.clone());
                ds[before].callback(()).unwrap();
                ds[before + 1].callback(()).unwrap();
                assert_eq!(r.take_result().unwrap().unwrap(), (before, ()));
                drop(ds.clone());
            });
            assert!(errors.is_empty(), "{errors:?}");
        }
    }
}

/// TW test_defer.py RaceTests.test_resultFromCancel: a loser whose canceller fires it
/// with a value does not disturb the result.
#[test]
fn race_loser_whose_canceller_succeeds() {
    let winner: Deferred<u32> = Deferred::new();
    let loser: Deferred<u32> = Deferred::with_canceller(|d: &Deferred<u32>| d.callback(99).unwrap());
    let r = race(vec![winner.clone(), loser]);
    winner.callback(7).unwrap();
    assert_eq!(r.take_result().unwrap().unwrap(), (0, 7));
}

/// TW test_defer.py RaceTests.test_failure (the FailureGroup holds each member's failure
/// in order, and nothing is cancelled).
#[test]
fn race_all_failing_gives_every_failure_in_order() {
    let count = Rc::new(Cell::new(0));
    let ds: Vec<Deferred<()>> = (0..3)
        .map(|_| {
            let c = count.clone();
            Deferred::with_canceller(move |_: &Deferred<()>| c.set(c.get() + 1))
        })
        .collect();
    let r = race(ds.clone());
    let shared = Failure::msg("The test demands failures.");
    for d in &ds {
        d.errback(shared.clone()).unwrap();
    }
    let f = r.take_result().unwrap().unwrap_err();
    let group = f.downcast_ref::<FailureGroup>().unwrap();
    assert_eq!(group.failures.len(), 3);
    assert!(group.failures.iter().all(|g| Failure::ptr_eq(g, &shared)));
    assert_eq!(count.get(), 0);
}

/// TW test_defer.py DeferredTests.test_maybeDeferredCoroutineSuccess and
/// test_maybeDeferredCoroutineSuccessIndirect: a function returning a task's Deferred
/// gives that task's result.
#[test]
fn maybe_deferred_of_a_task() {
    let d: Deferred<u32> = maybe_deferred(|| ensure_deferred(async { Ok(7) }));
    assert_eq!(d.take_result().unwrap().unwrap(), 7);
    let d: Deferred<u32> = maybe_deferred(|| ensure_deferred(async { Ok(7) }));
    d.add_callback(|x| x + 1);
    assert_eq!(d.take_result().unwrap().unwrap(), 8);
}

/// TW test_defer.py DeferredTests.test_maybeDeferredCoroutineFailure
#[test]
fn maybe_deferred_of_a_failing_task() {
    let d: Deferred<()> =
        maybe_deferred(|| ensure_deferred(async { Err(StringError("some".into()).into()) }));
    assert!(d.take_result().unwrap().unwrap_err().check::<StringError>());
}

/// TW test_defer.py DeferredTests.test_fromCoroutine and
/// EnsureDeferredTests.test_ensureDeferredCoroutine: a task awaiting a fired Deferred
/// finishes at once with the result.
#[test]
fn ensure_deferred_of_a_task_awaiting_a_fired_deferred() {
    let d = ensure_deferred(async {
        let res = succeed("foo").await?;
        Ok(res)
    });
    assert_eq!(d.take_result().unwrap().unwrap(), "foo");
}

/// TW test_defer.py InlineCallbackTests.test_coroutineNoCircularReference: once a task
/// has finished, what it held is freed at once, with no collector.
#[test]
fn a_finished_task_holds_nothing() {
    let obj = Rc::new(5u32);
    let weak = Rc::downgrade(&obj);
    let d = ensure_deferred(async move { Ok(*obj) });
    assert_eq!(d.take_result().unwrap().unwrap(), 5);
    drop(d);
    assert!(weak.upgrade().is_none());
}

fn line_of(at: Option<&'static Location<'static>>) -> u32 {
    at.expect("recorded while debugging").line()
}

/// TW test_defer.py AlreadyCalledTests.testAlreadyCalledDebug_CC, _CE, _EC and _EE: in
/// debug mode the error names where the Deferred was created and first fired (not the
/// second fire as the first), and where the second fire came from.
#[test]
fn already_called_in_debug_mode_names_the_creator_and_both_fires() {
    let _on = debugging(true);
    for (first_is_callback, second_is_callback) in
        [(true, true), (true, false), (false, true), (false, false)]
    {
        let created = line!() + 1;
        let d: Deferred<String> = Deferred::new();
        d.add_callbacks(|v| v, |f: Failure| Err::<String, _>(f));
        let first = if first_is_callback {
            d.callback("hello".to_string()).unwrap();
            line!() - 1
        } else {
            d.errback(Failure::msg("first")).unwrap();
            line!() - 1
        };
        let (second, again, first_at, created_at) = if second_is_callback {
            let line = line!() + 1;
            let e = d.callback("twice".to_string()).unwrap_err();
            (line, line_of(e.fired_again_at()), line_of(e.first_fired_at()), line_of(e.created_at()))
        } else {
            let line = line!() + 1;
            let e = d.errback(Failure::msg("twice")).unwrap_err();
            (line, line_of(e.fired_again_at()), line_of(e.first_fired_at()), line_of(e.created_at()))
        };
        assert_eq!((created_at, first_at, again), (created, first, second));
    }
}

/// TW test_defer.py AlreadyCalledTests.testNoDebugging: without debug mode the error
/// records no earlier fire.
#[test]
fn already_called_without_debug_mode_records_no_first_fire() {
    let _off = debugging(false);
    let d: Deferred<String> = Deferred::new();
    d.add_callbacks(|v| v, |f: Failure| Err::<String, _>(f));
    d.callback("hello".to_string()).unwrap();
    let e = d.callback("twice".to_string()).unwrap_err();
    assert!(e.first_fired_at().is_none() && e.created_at().is_none());
    assert_eq!(e.into_inner(), "twice");
}

/// TW test_defer.py AlreadyCalledTests.testSwitchDebugging: debug mode flipping between
/// adding a step and firing (either order) does no harm.
#[test]
fn switching_debug_mode_mid_chain() {
    let switch = debugging(false);
    let d: Deferred<()> = Deferred::new();
    let ran = Rc::new(Cell::new(0));
    let r = ran.clone();
    d.add_both(move |_| r.set(r.get() + 1));
    weft::set_debugging(true);
    d.callback(()).unwrap();
    weft::set_debugging(false);
    let d: Deferred<()> = Deferred::new();
    d.callback(()).unwrap();
    weft::set_debugging(true);
    let r = ran.clone();
    d.add_both(move |_| r.set(r.get() + 1));
    drop(switch);
    assert_eq!(ran.get(), 2);
}

/// TW test_defer.py LogTests.test_errorLogWithInnerFrameRef: a Deferred made, failed and
/// dropped inside a function has its failure logged.
#[test]
fn a_failure_dropped_in_an_inner_function_is_logged() {
    fn inner() {
        let d: Deferred<u32> = Deferred::new();
        d.add_callback(|_| -> Result<u32, Failure> { Err(Failure::msg("division by zero")) });
        d.callback(1).unwrap();
    }
    let ((), errors) = logs::errors_during(inner);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("division by zero"), "{errors:?}");
}

/// TW test_defer.py OtherPrimitivesTests.test_cancelSemaphoreAfterAcquired: cancelling
/// a Deferred that already has its permit changes nothing.
#[test]
fn cancelling_an_acquired_semaphore_permit_does_nothing() {
    let sem = DeferredSemaphore::new(1);
    let d = sem.acquire();
    let errbacks = Rc::new(Cell::new(0));
    let e = errbacks.clone();
    d.add_errback(move |f: Failure| {
        e.set(e.get() + 1);
        Err::<weft::Permit, _>(f)
    });
    d.cancel();
    assert_eq!(errbacks.get(), 0);
    assert!(d.take_result().unwrap().is_ok());
}

/// TW test_defer.py OtherPrimitivesTests.test_cancelSemaphoreBeforeAcquired
#[test]
fn cancelling_a_waiting_semaphore_acquire_fails_it() {
    let sem = DeferredSemaphore::new(1);
    let _held = sem.acquire();
    let d = sem.acquire();
    d.cancel();
    failure_result_of::<CancelledError, _>(&d);
    assert_eq!(sem.waiting(), 0);
}

/// TW test_defer.py OtherPrimitivesTests.test_semaphoreInvalidTokens. Deliberate
/// difference: Twisted raises `ValueError`; `DeferredSemaphore::new` takes a `usize`, so
/// only zero is invalid, and it panics as documented (src/sync/semaphore.rs, `new`:
/// "# Panics If `limit` is zero"), a programming error rather than bad input.
#[test]
#[should_panic(expected = "at least one token")]
fn a_semaphore_needs_a_token() {
    let _ = DeferredSemaphore::new(0);
}

/// TW test_defer.py CoroutineContextVarsTests.test_asyncWithLock: the lock held across an
/// `await` in a task, a second acquire waits until the first permit is dropped.
#[test]
fn lock_held_in_a_task() {
    let lock = DeferredLock::new();
    let second: Rc<RefCell<Option<Deferred<weft::Permit>>>> = Rc::new(RefCell::new(None));
    let (l, s) = (lock.clone(), second.clone());
    let task = ensure_deferred(async move {
        let permit = l.acquire().await?;
        assert!(l.locked());
        let d = l.acquire();
        *s.borrow_mut() = Some(d.clone());
        assert!(!d.is_called());
        drop(permit);
        assert!(d.is_called());
        drop(d.await?);
        Ok(())
    });
    task.take_result().unwrap().unwrap();
    assert!(second.borrow().as_ref().unwrap().is_called());
    second.borrow_mut().take();
    assert!(!lock.locked());
}

/// TW test_defer.py CoroutineContextVarsTests.test_asyncWithLockException: an error in
/// the task while it holds the lock comes out, and the lock is released.
#[test]
fn lock_released_when_the_task_fails() {
    let lock = DeferredLock::new();
    let l = lock.clone();
    let task: Deferred<()> = ensure_deferred(async move {
        let _permit = l.acquire().await?;
        assert!(l.locked());
        Err(Failure::msg("some specific exception"))
    });
    assert_eq!(task.take_result().unwrap().unwrap_err().as_error().to_string(), "some specific exception");
    assert!(!lock.locked());
}

/// TW test_defer.py CoroutineContextVarsTests.test_asyncWithSemaphore
#[test]
fn semaphore_held_in_a_task() {
    let sem = DeferredSemaphore::new(3);
    let s = sem.clone();
    let task = ensure_deferred(async move {
        let outer = s.acquire().await?;
        assert_eq!(s.tokens(), 2);
        let (d1, d2) = {
            let _inner = s.acquire().await?;
            assert_eq!(s.tokens(), 1);
            let (d1, d2) = (s.acquire(), s.acquire());
            assert_eq!(s.tokens(), 0);
            assert!(d1.is_called() && !d2.is_called());
            (d1, d2)
        };
        assert_eq!(s.tokens(), 0);
        assert!(d2.is_called());
        drop(d1.await?);
        drop(d2.await?);
        assert_eq!(s.tokens(), 2);
        drop(outer);
        Ok(())
    });
    task.take_result().unwrap().unwrap();
    assert_eq!(sem.tokens(), 3);
}

/// TW test_defer.py DeferredTests.test_gatherResults: a failing member fails the gather
/// with a FirstError naming it.
#[test]
fn gather_with_a_failing_member_fails_with_its_index() {
    let dl = vec![succeed(1), fail(Failure::msg("bad"))];
    let g = gather_results(dl.clone(), false);
    let f = g.take_result().unwrap().unwrap_err();
    assert_eq!(f.downcast_ref::<FirstError>().unwrap().index, 1);
    dl[1].add_errback(|_| 1);
}

/// TW test_defer.py FirstErrorTests.test_str. Difference in form: Twisted's text is
/// `FirstError[#5, <the sub-failure's text>]`; weft's `FirstError` names the index in its
/// own message and gives the sub-failure as its `source()` (Rust's error-chain
/// convention, src/combinators/mod.rs: `impl Error for FirstError`), so a reporter that
/// walks the chain prints the member's error once.
#[test]
fn first_error_names_the_index_and_chains_the_member_failure() {
    let f = Failure::msg("some text");
    let error = FirstError { failure: f.clone(), index: 5 };
    assert!(error.to_string().contains('5'), "{error}");
    let source = std::error::Error::source(&error).expect("the member's failure is the source");
    assert_eq!(source.to_string(), "some text");
    assert!(std::ptr::addr_eq(source, f.as_error()));
}
