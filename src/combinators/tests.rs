//! Ownership tests that look at liveness through weak handles: a combinator owns its
//! members until it settles, then lets go of every one of them.

use std::cell::Cell;
use std::rc::Rc;

use crate::deferred::WeakDeferred;
use crate::{gather_results, race, CancelledError, Deferred, DeferredList, Failure, ListResult};

/// A value that counts its drops.
#[derive(Debug)]
struct Tracked(Rc<Cell<u32>>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// How many of `weak` still point at a live Deferred.
fn alive<T>(weak: &[WeakDeferred<T>]) -> usize {
    weak.iter().filter(|w| w.upgrade().is_some()).count()
}

/// `n` members with a canceller (so a combinator owns them), and weak handles to them.
fn members<T>(n: usize) -> (Vec<Deferred<T>>, Vec<WeakDeferred<T>>) {
    let ds: Vec<Deferred<T>> = (0..n).map(|_| Deferred::with_canceller(|_| ())).collect();
    let weak = ds.iter().map(Deferred::downgrade).collect();
    (ds, weak)
}

#[test]
fn settled_list_frees_every_member_and_value() {
    let drops = Rc::new(Cell::new(0));
    let (ds, weak) = members::<Tracked>(3);
    let list = DeferredList::new(ds.clone()).into_deferred();
    let weak_list = list.downgrade();
    for d in &ds {
        d.callback(Tracked(drops.clone())).unwrap();
    }
    drop(ds);
    // The list still has a handle, but it has fired: it holds no member.
    assert_eq!(alive(&weak), 0);
    match list.take_result().unwrap().unwrap() {
        ListResult::All(values) => assert_eq!(values.len(), 3),
        ListResult::One { .. } => unreachable!(),
    }
    assert_eq!(drops.get(), 3);
    drop(list);
    assert!(weak_list.upgrade().is_none());
}

#[test]
fn cancelled_list_frees_every_member() {
    let (ds, weak) = members::<u8>(3);
    let list = DeferredList::new(ds).consume_errors(true).into_deferred();
    assert_eq!(alive(&weak), 3, "the list owns the members handed to it");
    list.cancel();
    assert_eq!(alive(&weak), 0);
    let weak_list = list.downgrade();
    drop(list);
    assert!(weak_list.upgrade().is_none());
}

#[test]
fn gather_that_fails_early_frees_its_members_once_they_fire() {
    let (ds, weak) = members::<u8>(2);
    let all = gather_results(ds.clone(), true);
    ds[0].errback(Failure::msg("first")).unwrap();
    assert!(all.take_result().unwrap().is_err());
    // The gather fired; the second member is still held by its responder only.
    assert_eq!(alive(&weak), 2);
    let second = ds[1].clone();
    drop(ds);
    assert_eq!(alive(&weak), 1);
    second.callback(2).unwrap();
    drop(second);
    assert_eq!(alive(&weak), 0);
    let weak_all = all.downgrade();
    drop(all);
    assert!(weak_all.upgrade().is_none());
}

#[test]
fn settled_race_frees_the_winner_and_the_cancelled_losers() {
    let drops = Rc::new(Cell::new(0));
    let (ds, weak) = members::<Tracked>(3);
    let r = race(ds.clone());
    ds[1].callback(Tracked(drops.clone())).unwrap();
    drop(ds);
    assert_eq!(alive(&weak), 0);
    let (index, value) = r.take_result().unwrap().unwrap();
    assert_eq!(index, 1);
    drop(value);
    assert_eq!(drops.get(), 1);
    let weak_race = r.downgrade();
    drop(r);
    assert!(weak_race.upgrade().is_none());
}

#[test]
fn a_list_nobody_holds_is_freed_with_the_members_only_it_held() {
    let (ds, weak) = members::<u8>(2);
    let weak_list = DeferredList::new(ds).into_deferred().downgrade();
    // Nobody can fire the members or cancel the list any more: all of it is garbage.
    assert_eq!(alive(&weak), 0);
    assert!(weak_list.upgrade().is_none());
}

#[test]
fn a_list_held_by_the_caller_keeps_its_members_until_cancelled() {
    let (ds, weak) = members::<u8>(2);
    let list = DeferredList::new(ds).into_deferred();
    assert_eq!(alive(&weak), 2, "a cancel of the list must reach them");
    list.cancel();
    assert_eq!(alive(&weak), 0, "settled, the list lets go of them");
    match list.take_result().unwrap().unwrap() {
        ListResult::All(r) => assert!(r.iter().all(|r| r.as_ref().unwrap_err().check::<CancelledError>())),
        ListResult::One { .. } => unreachable!(),
    }
}

#[test]
fn a_member_freed_after_the_list_lost_its_handles_counts_as_cancelled() {
    let kept: Deferred<u8> = Deferred::new();
    let dropped: Deferred<u8> = Deferred::new();
    let weak_dropped = dropped.downgrade();
    let weak_list = DeferredList::new(vec![kept.clone(), dropped]).into_deferred().downgrade();
    // The list has no handle left: it let go of its members, and the one nobody else
    // held is freed. `kept`'s chain still holds the list.
    assert!(weak_dropped.upgrade().is_none());
    // A weak upgrade (as a timer holding the list weakly would do) cancels it.
    let list = weak_list.upgrade().expect("kept's chain holds the list");
    list.cancel();
    match list.take_result().unwrap().unwrap() {
        ListResult::All(r) => {
            assert!(r.iter().all(|r| r.as_ref().unwrap_err().check::<CancelledError>()));
            let ids: Vec<_> = r
                .iter()
                .map(|r| r.as_ref().unwrap_err().downcast_ref::<CancelledError>().unwrap().id())
                .collect();
            assert_eq!(ids[0], ids[1], "one cancel, one id");
        }
        ListResult::One { .. } => unreachable!(),
    }
    let _ = kept.take_result();
}

/// Members that have a result when the list is made hand it over once every member has
/// its link, in member order; the pending ones are held (a cancel reaches them), and a
/// member given twice gives its value to the first of its two places.
#[test]
fn a_list_made_of_fired_and_pending_members_joins_them_all() {
    let (pending, weak) = members::<u8>(1);
    let twice = crate::succeed(7u8);
    let list = DeferredList::new(vec![crate::succeed(1), pending[0].clone(), twice.clone(), twice])
        .consume_errors(true)
        .into_deferred();
    drop(pending);
    assert_eq!(alive(&weak), 1, "the list holds the member still pending");
    assert!(!list.is_called());
    list.cancel();
    assert_eq!(alive(&weak), 0);
    match list.take_result().unwrap().unwrap() {
        ListResult::All(r) => {
            assert_eq!(*r[0].as_ref().unwrap(), 1);
            assert!(r[1].as_ref().unwrap_err().check::<CancelledError>());
            assert_eq!(*r[2].as_ref().unwrap(), 7);
            assert!(r[3].as_ref().unwrap_err().check::<crate::ResultConsumedError>());
        }
        ListResult::One { .. } => unreachable!(),
    }

    // The first member to have failed, among several that failed before the list was
    // made, is the one reported; the others keep their failures.
    let (a, b) = (crate::fail::<u8>(Failure::msg("a")), crate::fail::<u8>(Failure::msg("b")));
    let pending: Deferred<u8> = Deferred::new();
    let all = gather_results(vec![pending.clone(), a, b.clone()], false);
    let first = all.take_result().unwrap().unwrap_err();
    assert_eq!(first.downcast_ref::<crate::FirstError>().unwrap().index, 1);
    assert!(b.take_result().unwrap().unwrap_err().to_string().starts_with("b "));
    pending.callback(0).unwrap();
}

/// Cancelling a gather cancels every member, also those after the first cancel failed
/// the gather; the first one's `CancelledError` comes back in a `FirstError`.
#[test]
fn a_cancelled_gather_cancels_every_member_and_reports_the_first() {
    let done = crate::succeed(0u8);
    let (a, b): (Deferred<u8>, Deferred<u8>) = (Deferred::new(), Deferred::new());
    let all = gather_results(vec![done, a.clone(), b.clone()], true);
    all.cancel();
    let f = all.take_result().unwrap().unwrap_err();
    let first = f.downcast_ref::<crate::FirstError>().unwrap();
    assert_eq!(first.index, 1);
    assert!(first.failure.check::<CancelledError>());
    for member in [a, b] {
        assert!(member.take_result().unwrap().unwrap_err().check::<CancelledError>());
    }
}

/// A gather that lost its handles and is cancelled through a weak upgrade counts a
/// member freed unfired as cancelled, but not one that gave its value before it went.
#[test]
fn a_member_that_gave_its_value_and_went_is_not_counted_as_cancelled() {
    let given: Deferred<u8> = Deferred::new();
    let kept: Deferred<u8> = Deferred::new();
    let weak_all = gather_results(vec![given.clone(), kept.clone()], true).downgrade();
    given.callback(1).unwrap();
    drop(given);
    let all = weak_all.upgrade().expect("kept's chain holds the gather");
    all.cancel();
    let f = all.take_result().unwrap().unwrap_err();
    assert_eq!(f.downcast_ref::<crate::FirstError>().unwrap().index, 1);
    assert!(kept.take_result().unwrap().unwrap_err().check::<CancelledError>());
}

/// A gather of thousands of members keeps its list of members and its list of values
/// for the next one on the thread, which makes neither anew; the values are unchanged.
#[test]
fn a_large_gather_keeps_its_vectors_for_the_next() {
    use crate::free_list::buffered;
    crate::trim_free_lists();
    let n = 20_000;
    let run = |before_firing: &dyn Fn()| {
        let ds: Vec<Deferred<u32>> = (0..n).map(|_| Deferred::new()).collect();
        let all = gather_results(ds.clone(), false);
        before_firing();
        for (i, d) in ds.iter().enumerate().rev() {
            d.callback(i as u32).unwrap();
        }
        let values = all.take_result().unwrap().unwrap();
        assert!(values.iter().enumerate().all(|(i, &v)| v == i as u32));
    };
    run(&|| assert_eq!(buffered(), 0));
    let kept = buffered();
    // The values' vector, and the members' (an entry is at least a fat pointer).
    let least = n * (std::mem::size_of::<Option<u32>>() + 16);
    assert!(kept >= least, "{kept} bytes kept, at least {least} expected");
    run(&|| assert_eq!(buffered(), 0, "the second gather took both"));
    assert_eq!(buffered(), kept);
    crate::trim_free_lists();
}
