//! Ports of Twisted's DeferredList, gatherResults and race tests.

use weft::{
    gather_results, race, succeed, unwrap_first_error, CancelledError, Deferred, DeferredList, Failure,
    FailureGroup, FirstError, ListResult,
};

fn all<T>(d: &Deferred<ListResult<T>>) -> Vec<Result<T, Failure>> {
    match d.take_result().unwrap().unwrap() {
        ListResult::All(v) => v,
        ListResult::One { .. } => panic!("expected All"),
    }
}

/// TW test_defer.py DeferredListTests.testDeferredList
#[test]
fn list_collects_in_member_order() {
    let (a, b, c) = (Deferred::<u8>::new(), Deferred::<u8>::new(), Deferred::<u8>::new());
    let list = DeferredList::new(vec![a.clone(), b.clone(), c.clone()]).into_deferred();
    a.callback(1).unwrap();
    assert!(!list.is_called());
    c.errback(Failure::msg("c")).unwrap();
    b.callback(2).unwrap();
    let r = all(&list);
    assert_eq!(*r[0].as_ref().unwrap(), 1);
    assert_eq!(*r[1].as_ref().unwrap(), 2);
    assert!(r[2].is_err());
    // Without consume_errors, the member keeps its failure.
    assert!(c.take_result().unwrap().is_err());
}

/// TW test_defer.py DeferredListTests.testEmptyDeferredList
#[test]
fn empty_list_fires_at_once() {
    let list = DeferredList::<u8>::new(vec![]).into_deferred();
    assert!(all(&list).is_empty());
}

/// TW test_defer.py DeferredListTests.testDeferredListFireOnOneError
#[test]
fn fire_on_one_errback_gives_first_error() {
    let (a, b) = (Deferred::<u8>::new(), Deferred::<u8>::new());
    let list = DeferredList::new(vec![a.clone(), b.clone()])
        .fire_on_one_errback(true)
        .consume_errors(true)
        .into_deferred();
    b.errback(Failure::msg("b failed")).unwrap();
    let f = list.take_result().unwrap().unwrap_err();
    let first = f.downcast_ref::<FirstError>().unwrap();
    assert_eq!(first.index, 1);
    assert_eq!(first.failure.as_error().to_string(), "b failed");
    // Consumed on the caller's behalf: b keeps the failure, marked handled.
    assert!(b.take_result().unwrap().is_err());
    a.callback(1).unwrap();
    assert_eq!(a.result().unwrap().unwrap(), 1); // late members keep their result
}

/// TW test_defer.py DeferredListTests.testDeferredListWithAlreadyFiredDeferreds + fireOnOneCallback
#[test]
fn fire_on_one_callback() {
    let (a, b) = (Deferred::<u8>::new(), succeed(9));
    let list = DeferredList::new(vec![a.clone(), b]).fire_on_one_callback(true).into_deferred();
    match list.take_result().unwrap().unwrap() {
        ListResult::One { index, value } => assert_eq!((index, value), (1, 9)),
        ListResult::All(_) => panic!(),
    }
}

/// TW test_defer.py DeferredListTests.test_cancelDeferredList
#[test]
fn cancelling_list_cancels_pending_members() {
    let (a, b) = (Deferred::<u8>::new(), succeed(3));
    let list = DeferredList::new(vec![a.clone(), b]).into_deferred();
    let a2 = Deferred::<u8>::new();
    let list2 = DeferredList::new(vec![a2.clone()]).consume_errors(true).into_deferred();
    drop(list2.clone());
    list2.cancel();
    assert!(all(&list2)[0].as_ref().unwrap_err().check::<CancelledError>());
    list.cancel();
    let r = all(&list);
    assert!(r[0].as_ref().unwrap_err().check::<CancelledError>());
    assert_eq!(*r[1].as_ref().unwrap(), 3);
    let _ = a.take_result();
}

/// TW test_defer.py GatherResultsTests.test_cancelGatherResults (+ Synapse unwrapFirstError)
#[test]
fn cancelling_gather_wraps_cancel_in_first_error() {
    let (a, b) = (Deferred::<u8>::new(), Deferred::<u8>::new());
    let g = gather_results(vec![a.clone(), b.clone()], true);
    g.cancel();
    let f = g.take_result().unwrap().unwrap_err();
    let first = f.downcast_ref::<FirstError>().unwrap();
    assert!(first.failure.check::<CancelledError>());
    assert!(a.is_called() && b.is_called());
    let unwrapped = unwrap_first_error::<()>(f).unwrap_err();
    assert!(unwrapped.check::<CancelledError>());
}

/// TW test_defer.py GatherResultsTests.test_gatherResults
#[test]
fn gather_values_in_order() {
    let (a, b) = (Deferred::<u8>::new(), Deferred::<u8>::new());
    let g = gather_results(vec![a.clone(), b.clone()], false);
    b.callback(2).unwrap();
    a.callback(1).unwrap();
    assert_eq!(g.take_result().unwrap().unwrap(), [1, 2]);
}

/// TW test_defer.py RaceTests.test_success
#[test]
fn race_first_success_wins_others_cancelled() {
    let ds: Vec<Deferred<u8>> = (0..3).map(|_| Deferred::new()).collect();
    let r = race(ds.clone());
    ds[1].callback(7).unwrap();
    assert_eq!(r.take_result().unwrap().unwrap(), (1, 7));
    assert!(ds[0].is_called() && ds[2].is_called());
    // The losers' CancelledErrors are consumed on the caller's behalf: kept, but never
    // reported as unhandled.
    let ((), errors) = crate::support::logs::errors_during(|| drop(ds));
    assert!(errors.is_empty(), "{errors:?}");
}

/// TW test_defer.py RaceTests.test_failure
#[test]
fn race_all_fail_gives_failure_group() {
    let ds: Vec<Deferred<u8>> = (0..2).map(|_| Deferred::new()).collect();
    let r = race(ds.clone());
    ds[0].errback(Failure::msg("a")).unwrap();
    ds[1].errback(Failure::msg("b")).unwrap();
    let f = r.take_result().unwrap().unwrap_err();
    assert_eq!(f.downcast_ref::<FailureGroup>().unwrap().failures.len(), 2);
}

/// TW test_defer.py RaceTests.test_cancel
#[test]
fn cancelling_race_cancels_all() {
    let ds: Vec<Deferred<u8>> = (0..2).map(|_| Deferred::new()).collect();
    let r = race(ds.clone());
    r.cancel();
    let f = r.take_result().unwrap().unwrap_err();
    let g = f.downcast_ref::<FailureGroup>().unwrap();
    assert!(g.failures.iter().all(|f| f.check::<CancelledError>()));
}

// ---------------------------------------------------------------------------------------
// A combinator owns the members handed to it until it settles
// ---------------------------------------------------------------------------------------

/// A member that nobody else holds, whose canceller fires it with `value` (Twisted's
/// `fakeCallbackCanceller`).
fn fires_on_cancel(value: &'static str) -> Deferred<&'static str> {
    Deferred::with_canceller(move |d| d.callback(value).unwrap())
}

/// TW test_defer.py DeferredListTests.test_cancelDeferredListCallback, with the members
/// handed over: the list's cancel still reaches them, and the value a canceller supplies
/// is in the result.
#[test]
fn cancelling_a_list_reaches_members_it_was_handed() {
    let list = DeferredList::new(vec![fires_on_cancel("Callback Result"), Deferred::new()]).into_deferred();
    list.cancel();
    let r = all(&list);
    assert_eq!(*r[0].as_ref().unwrap(), "Callback Result");
    assert!(r[1].as_ref().unwrap_err().check::<CancelledError>());
}

/// TW test_defer.py GatherResultsTests.test_cancelGatherResultsWithAllDeferredsCallback,
/// with the members handed over.
#[test]
fn cancelling_gather_reaches_members_it_was_handed() {
    let g = gather_results(vec![fires_on_cancel("one"), fires_on_cancel("two")], false);
    g.cancel();
    assert_eq!(g.take_result().unwrap().unwrap(), ["one", "two"]);
}

/// TW test_defer.py RaceTests.test_cancel, with the members handed over: every member's
/// canceller runs and the race fails with a `FailureGroup`, not a bare `CancelledError`.
#[test]
fn cancelling_a_race_reaches_members_it_was_handed() {
    let cancelled = std::rc::Rc::new(std::cell::Cell::new(0));
    let member =
        |c: std::rc::Rc<std::cell::Cell<u32>>| Deferred::<u8>::with_canceller(move |_| c.set(c.get() + 1));
    let r = race(vec![member(cancelled.clone()), member(cancelled.clone())]);
    r.cancel();
    assert_eq!(cancelled.get(), 2);
    let f = r.take_result().unwrap().unwrap_err();
    let group = f.downcast_ref::<FailureGroup>().unwrap_or_else(|| panic!("not a FailureGroup: {f}"));
    assert!(group.failures.iter().all(|f| f.check::<CancelledError>()));
}

/// A race whose member's canceller supplies a value wins with that value.
#[test]
fn race_member_whose_canceller_fires_a_value_wins_the_cancelled_race() {
    let r = race(vec![Deferred::new(), fires_on_cancel("late but here")]);
    r.cancel();
    assert_eq!(r.take_result().unwrap().unwrap(), (1, "late but here"));
}

// ---------------------------------------------------------------------------------------
// consume_errors: consumed on the caller's behalf, so never reported
// ---------------------------------------------------------------------------------------

/// Runs `build` on a failing member with an errback added after the combinator; returns
/// what that errback saw and the errors logged once everything is dropped.
fn later_errback_and_logs(
    build: impl FnOnce(Deferred<u8>) -> Box<dyn std::any::Any>,
) -> (String, Vec<String>) {
    let (seen, errors) = crate::support::logs::errors_during(|| {
        let member: Deferred<u8> = Deferred::new();
        let combined = build(member.clone());
        member.errback(Failure::msg("member failed")).unwrap();
        let seen = std::rc::Rc::new(std::cell::RefCell::new(String::new()));
        let s = seen.clone();
        member.add_errback(move |f: Failure| -> Result<u8, Failure> {
            *s.borrow_mut() = f.to_string();
            Err(f)
        });
        drop((member, combined));
        seen.take()
    });
    (seen, errors)
}

/// TW test_defer.py GatherResultsTests.test_gatherResultsWithConsumeErrors: the member's
/// failure is consumed (Twisted turns it into `None`; weft, with no value to give, hands
/// later errbacks the failure itself, marked handled) and only the gathered failure is
/// the caller's to handle.
#[test]
fn gather_with_consume_errors_hands_later_errbacks_the_failure_and_reports_nothing() {
    let (seen, errors) = later_errback_and_logs(|m| {
        let all = gather_results(vec![succeed(1), m], true);
        all.add_errback(|f: Failure| -> Result<Vec<u8>, Failure> {
            assert!(f.check::<FirstError>());
            Ok(Vec::new())
        });
        Box::new(all)
    });
    assert!(seen.starts_with("member failed"), "later errback saw: {seen}");
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn list_with_consume_errors_hands_later_errbacks_the_failure_and_reports_nothing() {
    let (seen, errors) =
        later_errback_and_logs(|m| Box::new(DeferredList::new(vec![m]).consume_errors(true).into_deferred()));
    assert!(seen.starts_with("member failed"), "later errback saw: {seen}");
    assert!(errors.is_empty(), "{errors:?}");
}

/// Without consume_errors the member keeps its failure, as in Twisted, and reports it.
#[test]
fn list_without_consume_errors_leaves_the_failure_to_the_member() {
    let (seen, errors) = later_errback_and_logs(|m| Box::new(DeferredList::new(vec![m]).into_deferred()));
    assert!(seen.starts_with("member failed"), "later errback saw: {seen}");
    assert_eq!(errors.len(), 1, "{errors:?}");
}
