//! Who owns what in a graph of Deferreds: a graph that nobody outside can fire or cancel
//! any more is freed, whatever its shape and however far it got, and one that someone
//! can still cancel keeps what that cancel must reach (issue 8, §1 bugs 1 and 3).
//!
//! Liveness is seen through drop counters: every Deferred of a graph gets a callback
//! (or a canceller) holding a token, and the graph is freed once every token is dropped.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use weft::{
    add_timeout, gather_results, race, timeout_deferred, CancelledError, Clock, Deferred, DeferredList,
    Failure, FailureGroup, ListResult, ObservableDeferred, TimeoutError,
};

use crate::support::{failure_result_of, success_result_of, GenericError};

/// Hands out tokens and counts how many were dropped.
#[derive(Clone, Default)]
struct Drops {
    made: Rc<Cell<usize>>,
    dropped: Rc<Cell<usize>>,
}

/// Counts one drop in its [`Drops`].
struct Token(Rc<Cell<usize>>);

impl Drop for Token {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

impl Drops {
    fn token(&self) -> Token {
        self.made.set(self.made.get() + 1);
        Token(self.dropped.clone())
    }

    /// Adds a pass-through callback holding a token to `d`, and returns `d`.
    fn track<T: 'static>(&self, d: Deferred<T>) -> Deferred<T> {
        let token = self.token();
        d.add_callback(move |x| {
            let _token = &token;
            x
        });
        d
    }

    /// A Deferred whose canceller holds a token (and counts its runs in `ran`).
    fn with_canceller<T: 'static>(&self, ran: &Rc<Cell<u32>>) -> Deferred<T> {
        let (token, ran) = (self.token(), ran.clone());
        Deferred::with_canceller(move |_| {
            let _token = &token;
            ran.set(ran.get() + 1);
        })
    }

    #[track_caller]
    fn assert_all_freed(&self) {
        assert!(self.made.get() > 0);
        assert_eq!(self.dropped.get(), self.made.get(), "tokens dropped of those made");
    }

    #[track_caller]
    fn assert_none_freed(&self) {
        assert_eq!(self.dropped.get(), 0, "tokens dropped");
    }
}

// ---------------------------------------------------------------------------------------
// Graphs dropped before they settle are freed
// ---------------------------------------------------------------------------------------

#[test]
fn then_and_map_chains_over_an_unfired_source_are_freed() {
    for with_canceller in [false, true] {
        let drops = Drops::default();
        let ran = Rc::new(Cell::new(0));
        let source: Deferred<u64> =
            if with_canceller { drops.with_canceller(&ran) } else { drops.track(Deferred::new()) };
        let then = drops.track(source.clone().then::<String, _, _>(|r| r.map(|x| x.to_string())));
        let mapped = drops.track(then.map(|s| s.len()).map(|n| n + 1));
        drop(source);
        drops.assert_none_freed();
        drop(mapped);
        drops.assert_all_freed();
        assert_eq!(ran.get(), 0, "a dropped graph is freed, not cancelled");
    }
}

#[test]
fn map_over_then_is_freed_whichever_handle_goes_last() {
    for source_last in [false, true] {
        let drops = Drops::default();
        let source = drops.track(Deferred::<u64>::new());
        let mapped = drops.track(source.clone().then::<u64, _, _>(|r| r).map(|x| x + 1));
        if source_last {
            drop(mapped);
            drops.assert_none_freed();
            drop(source);
        } else {
            drop(source);
            drops.assert_none_freed();
            drop(mapped);
        }
        drops.assert_all_freed();
    }
}

#[test]
fn a_long_then_chain_dropped_unfired_is_freed_in_bounded_stack() {
    let drops = Drops::default();
    let source = drops.track(Deferred::<u64>::new());
    let mut out = source.clone().map(|x| x + 1);
    // Far past the trampoline's depth: an unbounded cascade of drops would overflow.
    for _ in 0..20_000 {
        out = out.map(|x| x + 1);
    }
    let out = drops.track(out);
    drop(source);
    drop(out);
    drops.assert_all_freed();
}

#[test]
fn combinators_with_one_member_fired_and_the_rest_abandoned_are_freed() {
    type Build = fn(Vec<Deferred<u64>>, &Drops);
    let shapes: [(&str, Build); 3] = [
        ("gather_results", |ms, drops| drop(drops.track(gather_results(ms, true)))),
        ("DeferredList", |ms, drops| drop(drops.track(DeferredList::new(ms).into_deferred()))),
        ("race", |ms, drops| drop(drops.track(race(ms)))),
    ];
    for (name, build) in shapes {
        let drops = Drops::default();
        let members: Vec<Deferred<u64>> = (0..3).map(|_| drops.track(Deferred::new())).collect();
        build(members.clone(), &drops);
        // A failure keeps a race pending; the others take a value.
        if name == "race" {
            members[0].errback(GenericError("lost")).unwrap();
        } else {
            members[0].callback(1).unwrap();
        }
        drop(members);
        drops.assert_all_freed();
    }
}

#[test]
fn a_combinator_and_the_members_only_it_holds_are_freed_unrun() {
    let drops = Drops::default();
    let ran = Rc::new(Cell::new(0));
    let members = |n| (0..n).map(|_| drops.with_canceller::<u64>(&ran)).collect::<Vec<_>>();
    drop(drops.track(race(members(2))));
    drop(drops.track(gather_results(members(2), false)));
    drop(drops.track(DeferredList::new(members(2)).fire_on_one_callback(true).into_deferred()));
    drops.assert_all_freed();
    assert_eq!(ran.get(), 0, "nobody cancelled them");
}

#[test]
fn an_outer_deferred_waiting_on_a_combinator_is_freed() {
    let drops = Drops::default();
    let ran = Rc::new(Cell::new(0));
    let outer = Deferred::<Vec<u64>>::new();
    let members: Vec<Deferred<u64>> = (0..2).map(|_| drops.with_canceller(&ran)).collect();
    outer.add_callback(move |_| gather_results(members, true));
    let outer = drops.track(outer);
    outer.callback(Vec::new()).unwrap();
    assert!(outer.is_paused(), "waits on the gather");
    drops.assert_none_freed();
    drop(outer);
    drops.assert_all_freed();
    assert_eq!(ran.get(), 0);
}

#[test]
fn timeout_deferred_over_an_abandoned_source_is_freed() {
    let clock = Clock::new();
    let drops = Drops::default();
    let ran = Rc::new(Cell::new(0));
    let source: Deferred<u64> = drops.with_canceller(&ran);
    let timed = drops.track(timeout_deferred(&source, Duration::from_secs(5), &clock));
    drop((source, timed));
    drops.assert_all_freed();
    // The timer holds neither; when it goes off it finds nothing to do.
    clock.advance(Duration::from_secs(5));
    assert_eq!(ran.get(), 0);
}

/// Bug 3: pairs and rings of `chain_deferred`.
#[test]
fn chain_deferred_pairs_and_rings_are_freed() {
    let drops = Drops::default();
    let (a, b, c) =
        (drops.track(Deferred::<u64>::new()), drops.track(Deferred::new()), drops.track(Deferred::new()));
    a.chain_deferred(&b);
    b.chain_deferred(&c);
    let (d, e) = (drops.track(Deferred::<u64>::new()), drops.track(Deferred::new()));
    d.chain_deferred(&e);
    e.chain_deferred(&d);
    let f = drops.track(Deferred::<u64>::new());
    f.chain_deferred(&f);
    drop((a, b, c, d, e, f));
    drops.assert_all_freed();
}

/// A chain that waits on the Deferred its own pending `chain_deferred` step feeds: the
/// continuation closes a ring of forward references, so it holds the waiting Deferred
/// weakly. Found by the leak gate running the model-based test.
#[test]
fn a_chain_waiting_on_the_target_of_its_own_chain_step_is_freed() {
    let drops = Drops::default();
    let (a, b) = (Deferred::<u64>::new(), drops.track(Deferred::<u64>::new()));
    let b2 = b.clone();
    a.add_callback(move |_| b2);
    a.chain_deferred(&b);
    let a = drops.track(a);
    a.callback(0).unwrap();
    assert!(a.is_paused(), "a waits on b");
    drop((a, b));
    drops.assert_all_freed();

    // Fired from outside, the ring behaves as in Twisted: b's result comes back to `a`,
    // whose step then finds b already fired.
    let (a, b) = (Deferred::<u64>::new(), Deferred::<u64>::new());
    let b2 = b.clone();
    a.add_callback(move |_| b2);
    a.chain_deferred(&b);
    a.callback(0).unwrap();
    b.callback(5).unwrap();
    assert!(
        failure_result_of::<weft::AlreadyCalledError<u64>, _>(&a).check::<weft::AlreadyCalledError<u64>>()
    );
}

#[test]
fn an_observable_over_an_abandoned_source_is_freed() {
    let drops = Drops::default();
    let source = drops.track(Deferred::<u64>::new());
    let shared = ObservableDeferred::new(source, true);
    let observers = (drops.track(shared.observe()), drops.track(shared.observe()));
    drop(shared);
    // Nobody can fire the source any more: it is freed, with what fans out from it.
    assert_eq!(drops.dropped.get(), 1);
    drop(observers);
    drops.assert_all_freed();
}

#[test]
fn an_outer_waiting_on_a_then_chain_over_a_dropped_source_is_freed() {
    let drops = Drops::default();
    let outer = Deferred::<u64>::new();
    let source = drops.track(Deferred::<u64>::new());
    let mapped = drops.track(source.clone().map(|x| x * 2));
    outer.add_callback(move |_| mapped);
    let outer = drops.track(outer);
    outer.callback(0).unwrap();
    drop(source);
    drops.assert_none_freed();
    drop(outer);
    drops.assert_all_freed();
}

// ---------------------------------------------------------------------------------------
// A cancel still reaches what only the cancelled Deferred holds
// ---------------------------------------------------------------------------------------

/// Twisted's idiom `race([Deferred(canceller), ...])`, with the race held by the caller.
#[test]
fn cancelling_a_held_race_runs_the_cancellers_of_the_members_it_alone_holds() {
    let drops = Drops::default();
    let ran = Rc::new(Cell::new(0));
    let r = race((0..3).map(|_| drops.with_canceller::<u64>(&ran)).collect());
    drops.assert_none_freed();
    r.cancel();
    assert_eq!(ran.get(), 3);
    let f = failure_result_of::<FailureGroup, _>(&r);
    assert_eq!(f.downcast_ref::<FailureGroup>().unwrap().failures.len(), 3);
    drop(r);
    drops.assert_all_freed();
}

/// An outer Deferred held by the caller waits on a combinator whose members only the
/// combinator holds: its cancel travels all the way to the members' cancellers.
#[test]
fn cancelling_an_outer_deferred_reaches_the_members_of_the_combinator_it_waits_on() {
    let drops = Drops::default();
    let ran = Rc::new(Cell::new(0));
    let outer = Deferred::<Vec<u64>>::new();
    let members: Vec<Deferred<u64>> = (0..2).map(|_| drops.with_canceller(&ran)).collect();
    outer.add_callback(move |_| gather_results(members, true));
    outer.callback(Vec::new()).unwrap();
    outer.cancel();
    assert_eq!(ran.get(), 2);
    assert!(failure_result_of::<weft::FirstError, _>(&outer).check::<weft::FirstError>());
    drop(outer);
    drops.assert_all_freed();
}

/// As Twisted's `cancel` does `self.result.cancel()`: a waiting Deferred reaches the one
/// it waits on even if nobody else holds that one, and that one's canceller may supply
/// a value.
#[test]
fn a_waiting_deferred_cancels_the_deferred_it_alone_holds() {
    let outer = Deferred::<&str>::new();
    outer.add_callback(|_| {
        Deferred::with_canceller(|d: &Deferred<&str>| d.callback("from the canceller").unwrap())
    });
    outer.callback("").unwrap();
    outer.cancel();
    assert_eq!(success_result_of(&outer), "from the canceller");
}

#[test]
fn a_handle_dropped_half_way_leaves_the_others_able_to_cancel() {
    let drops = Drops::default();
    let ran = Rc::new(Cell::new(0));
    let source: Deferred<u64> = drops.with_canceller(&ran);
    let mapped = drops.track(source.map(|x| x + 1));
    let (kept, dropped) = (mapped.clone(), mapped);
    drop(dropped);
    drops.assert_none_freed();
    kept.cancel();
    assert_eq!(ran.get(), 1);
    failure_result_of::<CancelledError, _>(&kept);
    drop(kept);
    drops.assert_all_freed();
}

/// A chain nobody holds can still be cancelled by a timer holding it weakly, and the
/// cancel reaches a source its responder keeps.
#[test]
fn a_timeout_on_a_dropped_chain_still_cancels_its_live_source() {
    let clock = Clock::new();
    let ran = Rc::new(Cell::new(0));
    let r = ran.clone();
    let source: Deferred<u64> = Deferred::with_canceller(move |_| r.set(r.get() + 1));
    let seen = Rc::new(RefCell::new(None));
    let mapped = source.clone().map(|x| x + 1);
    add_timeout(&mapped, Duration::from_secs(1), &clock);
    let s = seen.clone();
    mapped.add_both(move |r: Result<u64, Failure>| {
        *s.borrow_mut() = Some(r.map_err(|f| f.check::<TimeoutError>()));
        0
    });
    drop(mapped);
    clock.advance(Duration::from_secs(1));
    assert_eq!(ran.get(), 1, "the source's canceller ran");
    assert_eq!(*seen.borrow(), Some(Err(true)));
    let _ = source.take_result();
}

/// A list nobody holds, cancelled later by a timer: a member that was freed unfired
/// meanwhile (the list had let go of it) counts as cancelled, and the live one is
/// cancelled, so the list still fires with both outcomes in member order.
#[test]
fn a_timed_out_list_counts_a_member_freed_unfired_as_cancelled() {
    let (clock, drops) = (Clock::new(), Drops::default());
    let (abandoned, kept): (Deferred<u64>, Deferred<u64>) = (drops.track(Deferred::new()), Deferred::new());
    let list = DeferredList::new(vec![abandoned.clone(), kept.clone()]).into_deferred();
    add_timeout(&list, Duration::from_secs(1), &clock);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    list.add_callback(move |r: ListResult<u64>| {
        if let ListResult::All(outcomes) = &r {
            s.borrow_mut()
                .extend(outcomes.iter().map(|o| o.as_ref().is_err_and(|f| f.check::<CancelledError>())));
        }
        r
    });
    drop((list, abandoned));
    drops.assert_all_freed();
    clock.advance(Duration::from_secs(1));
    assert_eq!(*seen.borrow(), [true, true]);
    failure_result_of::<CancelledError, _>(&kept);
}

// ---------------------------------------------------------------------------------------
// Fire and forget still works
// ---------------------------------------------------------------------------------------

#[test]
fn a_dropped_gather_still_runs_its_callbacks_when_the_members_fire() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let members: Vec<Deferred<u64>> = (0..3).map(|_| Deferred::new()).collect();
    let s = seen.clone();
    gather_results(members.clone(), true).add_callback(move |v: Vec<u64>| {
        s.borrow_mut().extend(v.iter().copied());
        v
    });
    for (i, m) in members.iter().enumerate() {
        m.callback(i as u64).unwrap();
    }
    assert_eq!(*seen.borrow(), [0, 1, 2]);
}

#[test]
fn dropped_then_and_map_chains_and_waiters_still_run_when_their_sources_fire() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let sources: Vec<Deferred<u64>> = (0..3).map(|_| Deferred::with_canceller(|_| ())).collect();
    let s = seen.clone();
    sources[0].clone().then::<u64, _, _>(|r| r).map(|x| x + 1).add_callback(move |x| {
        s.borrow_mut().push(x);
        x
    });
    let (outer, s, src) = (Deferred::<u64>::new(), seen.clone(), sources[1].clone());
    outer.add_callback(move |_| src.map(|x| x * 10)).add_callback(move |x| {
        s.borrow_mut().push(x);
        x
    });
    outer.callback(0).unwrap();
    drop(outer);
    let s = seen.clone();
    DeferredList::new(vec![sources[2].clone()]).into_deferred().add_callback(move |r| {
        if let ListResult::All(v) = &r {
            s.borrow_mut().push(v.len() as u64);
        }
        r
    });
    for (i, source) in sources.iter().enumerate() {
        source.callback(i as u64 + 4).unwrap();
    }
    assert_eq!(*seen.borrow(), [5, 50, 1]);
}
