//! State-machine tests of the Deferred internals; behaviour through the public API is
//! tested in `tests/it/deferred_*.rs`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use super::*;
use crate::CancelledError;

#[test]
fn million_callbacks_run_in_order_without_recursion() {
    let d = Deferred::new();
    for _ in 0..1_000_000 {
        d.add_callback(|x: u64| x + 1);
    }
    d.callback(0).unwrap();
    assert_eq!(d.result().unwrap().unwrap(), 1_000_000);
}

#[test]
fn nested_chain_of_100_000_fires_and_drops_without_overflow() {
    let n = 100_000;
    let ds: Vec<Deferred<u32>> = (0..n).map(|_| Deferred::new()).collect();
    for i in (0..n - 1).rev() {
        let next = ds[i + 1].clone();
        ds[i].add_callback(move |_| next);
        ds[i].callback(0).unwrap();
        assert!(ds[i].is_paused());
    }
    ds[n - 1].callback(7).unwrap();
    assert_eq!(ds[0].result().unwrap().unwrap(), 7);
    assert!(!ds[0].is_paused());
    drop(ds);
}

#[test]
fn unfired_nested_chain_drops_without_overflow() {
    let n = 100_000;
    let drops = Rc::new(Cell::new(0));
    struct Count(Rc<Cell<u32>>);
    impl Drop for Count {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }
    let ds: Vec<Deferred<u32>> = (0..n).map(|_| Deferred::new()).collect();
    for i in (0..n - 1).rev() {
        let next = ds[i + 1].clone();
        let guard = Count(drops.clone());
        ds[i].add_callback(move |_| next);
        ds[i].add_callback(move |x| {
            let _keep = &guard;
            x
        });
        ds[i].callback(0).unwrap();
    }
    drop(ds);
    assert_eq!(drops.get(), n as u32 - 1);
}

#[test]
fn map_chain_of_100_000_types_fires_without_overflow() {
    let first = Deferred::<u64>::new();
    let mut d = first.clone().map(|x| x + 1);
    for _ in 0..100_000 {
        d = d.map(|x| x + 1);
    }
    first.callback(0).unwrap();
    assert_eq!(d.result().unwrap().unwrap(), 100_001);
}

#[test]
fn cancel_reaches_the_inner_deferred_and_back() {
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    let inner: Deferred<i32> = Deferred::with_canceller(move |_| r.set(true));
    let outer = Deferred::new();
    let i2 = inner.clone();
    outer.add_callback(move |_: i32| i2);
    outer.callback(1).unwrap();
    assert!(outer.is_paused());
    outer.cancel();
    assert!(ran.get());
    let f = outer.take_result().unwrap().unwrap_err();
    let c = f.downcast_ref::<CancelledError>().unwrap();
    assert!(c.cancelled_by(&outer));
    assert!(!c.cancelled_by(&inner));
}

#[test]
fn pending_deferred_with_one_callback_is_one_small_allocation() {
    let size = std::mem::size_of::<Inner<u64>>() + 2 * std::mem::size_of::<usize>();
    assert!(size < 128, "Rc<Inner<u64>> is {size} bytes");
    let d = RefCell::new(Deferred::<u64>::new());
    d.borrow().add_callback(|x| x + 1);
    assert!(!d.borrow().inner.core.borrow().links.spilled());
}

#[test]
fn paused_deferred_has_no_result_to_read_or_take() {
    let d = succeed(3);
    d.pause();
    assert!(!d.has_result());
    assert!(d.result().is_none());
    assert!(d.take_result().is_none());
    d.unpause().unwrap();
    assert!(d.has_result());
    assert_eq!(d.take_result().unwrap().unwrap(), 3);
}

#[test]
fn cancel_reaches_the_innermost_of_100_000_nested_deferreds_without_overflow() {
    let n = 100_000;
    let reached = Rc::new(Cell::new(false));
    let r = reached.clone();
    let mut ds: Vec<Deferred<u32>> = (0..n - 1).map(|_| Deferred::new()).collect();
    ds.push(Deferred::with_canceller(move |_| r.set(true)));
    for i in 0..n - 1 {
        let next = ds[i + 1].clone();
        ds[i].add_callback(move |_| next);
    }
    // Outermost first: each fire leaves one more Deferred waiting on the next.
    for d in &ds[..n - 1] {
        d.callback(0).unwrap();
        assert!(d.is_paused());
    }
    ds[0].cancel();
    assert!(reached.get());
    assert!(ds[0].take_result().unwrap().unwrap_err().check::<CancelledError>());
}

/// Counts its drops.
struct Tracked(Rc<Cell<u32>>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

#[test]
fn fired_chain_deferred_pair_frees_both() {
    let drops = Rc::new(Cell::new(0));
    let (a, b) = (Deferred::<Tracked>::new(), Deferred::<Tracked>::new());
    a.chain_deferred(&b);
    let (weak_a, weak_b) = (a.downgrade(), b.downgrade());
    a.callback(Tracked(drops.clone())).unwrap();
    drop((a, b));
    assert!(weak_a.upgrade().is_none() && weak_b.upgrade().is_none());
    assert_eq!(drops.get(), 1);
}

#[test]
fn settled_then_pair_frees_both_and_an_unsettled_one_until_cancelled() {
    let source = Deferred::<u32>::new();
    let mapped = source.clone().map(|x| x + 1);
    let (weak_source, weak_mapped) = (source.downgrade(), mapped.downgrade());
    source.callback(1).unwrap();
    drop(source);
    assert!(weak_source.upgrade().is_none(), "a fired mapped Deferred lets go of its source");
    assert_eq!(mapped.take_result().unwrap().unwrap(), 2);
    drop(mapped);
    assert!(weak_mapped.upgrade().is_none());

    // Unsettled and held by the caller, the mapped Deferred holds its source, so a
    // cancel reaches it; settled, it lets go.
    let source = Deferred::<u32>::new();
    let weak_source = source.downgrade();
    let mapped = source.map(|x| x + 1);
    let weak_mapped = mapped.downgrade();
    assert!(weak_source.upgrade().is_some(), "the mapped Deferred holds its source");
    mapped.cancel();
    assert!(weak_source.upgrade().is_none(), "cancelled, it lets go of its source");
    assert!(mapped.take_result().unwrap().unwrap_err().check::<CancelledError>());
    drop(mapped);
    assert!(weak_mapped.upgrade().is_none());
}

#[test]
fn an_unsettled_then_pair_nobody_holds_is_freed() {
    let drops = Rc::new(Cell::new(0));
    let source = Deferred::<u32>::with_canceller(|_| ());
    let (weak_source, d) = (source.downgrade(), drops.clone());
    let tracked = Tracked(drops.clone());
    let weak_mapped = source
        .map(move |x| {
            let _keep = &tracked;
            x + 1
        })
        .downgrade();
    assert!(weak_source.upgrade().is_none() && weak_mapped.upgrade().is_none());
    assert_eq!(d.get(), 1, "the callback and what it captured were dropped unrun");
}

#[test]
fn a_waiting_deferred_holds_what_it_waits_on_while_it_has_a_handle() {
    let cancelled = Rc::new(Cell::new(false));
    let c = cancelled.clone();
    let outer = Deferred::<u32>::new();
    outer.add_callback(move |_| Deferred::<u32>::with_canceller(move |_| c.set(true)));
    outer.callback(0).unwrap();
    let weak_inner = match &outer.inner.core.borrow().slot {
        Slot::Waiting(claim) => Rc::downgrade(claim.inner()),
        _ => panic!("outer waits"),
    };
    // Nobody else holds the inner Deferred, yet a cancel of the outer reaches its
    // canceller (Twisted's `result.cancel()`).
    outer.cancel();
    assert!(cancelled.get());
    assert!(outer.take_result().unwrap().unwrap_err().check::<CancelledError>());
    assert!(weak_inner.upgrade().is_none());

    // Dropped while it waits, the outer Deferred lets go and both are freed.
    let outer = Deferred::<u32>::new();
    outer.add_callback(|_| Deferred::<u32>::with_canceller(|_| ()));
    outer.callback(0).unwrap();
    let weak_outer = outer.downgrade();
    drop(outer);
    assert!(weak_outer.upgrade().is_none());
}

/// `wait_on` refuses to make a ring of waiting Deferreds; if one existed anyway, a cancel
/// walk must still end. Build the ring by hand and cancel into it.
#[test]
fn cancel_walk_into_a_ring_of_waiting_deferreds_ends() {
    let n = 3;
    let ds: Vec<Deferred<u32>> = (0..n).map(|_| Deferred::new()).collect();
    for i in 0..n {
        let (me, next) = (&ds[i], &ds[(i + 1) % n]);
        me.inner.core.borrow_mut().slot = Slot::WaitingWeakly(Rc::downgrade(&next.inner));
        next.inner.core.borrow_mut().links.push_link(Link::Continue(me.inner.clone()));
    }
    let outer = Deferred::<u32>::new();
    let d0 = ds[0].clone();
    outer.add_callback(move |_| d0);
    outer.callback(0).unwrap();
    outer.cancel();
    // The ring member where the walk noticed the loop failed with the CancelledError,
    // which went round the ring; `d0` handed it to the ring before its continuation to
    // `outer`, which therefore gets a ResultConsumedError. What matters: it ended.
    let f = outer.take_result().unwrap().unwrap_err();
    assert!(f.check::<CancelledError>() || f.check::<ResultConsumedError>(), "{f}");
    for d in &ds {
        assert!(d.is_called() && !d.is_paused());
    }
}

#[test]
fn links_left_are_all_dropped_even_if_one_panics_in_its_drop() {
    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("boom in drop");
        }
    }
    struct Counted(Rc<Cell<u32>>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }
    let drops = Rc::new(Cell::new(0));
    let d = Deferred::<u64>::new();
    let (a, c) = (Counted(drops.clone()), Counted(drops.clone()));
    d.add_callback(move |x| {
        let _keep = &a;
        x
    });
    let bomb = Bomb;
    d.add_callback(move |x| {
        let _keep = &bomb;
        x
    });
    d.add_callback(move |x| {
        let _keep = &c;
        x
    });
    assert!(d.inner.core.borrow().links.spilled());
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(d)));
    assert!(dropped.is_err(), "the bomb's panic comes out of the drop");
    assert_eq!(drops.get(), 2, "the links after the one that panicked are dropped too");
}

/// A Deferred dropped by its last handle is kept for reuse (see `free_list.rs`): what it held
/// is dropped at once, and `new` hands it back as new (not fired, no links, not paused,
/// not a shield, one cancel handle, made where `new` was called).
#[test]
fn a_dropped_deferred_comes_back_from_new_as_new() {
    crate::trim_free_lists();
    let d = Deferred::<u64>::new();
    let ran = Rc::new(Cell::new(0));
    let r = ran.clone();
    d.add_callback(move |x| {
        r.set(r.get() + 1);
        x
    });
    d.pause();
    d.mark_shield();
    d.callback(1).unwrap();
    let first = Rc::as_ptr(&d.inner);
    drop(d);
    assert_eq!((ran.get(), Rc::strong_count(&ran)), (0, 1), "the unrun callback was dropped");
    assert!(free_list::held() > 0);
    let (again, here) = (Deferred::<u64>::new(), Location::caller());
    assert_eq!(Rc::as_ptr(&again.inner), first, "the memory is reused");
    assert_eq!(free_list::held(), 0);
    assert!(!again.is_called() && !again.is_paused() && !again.has_result());
    assert_eq!(again.inner.handles.get(), 1);
    {
        let core = again.inner.core.borrow();
        assert!(core.links.is_empty() && !core.links.spilled() && core.cold.is_none());
        assert_eq!((core.head, core.flags), (0, 0));
        assert_eq!((core.created_at.file(), core.created_at.line()), (here.file(), here.line()));
    }
    // Not a shield any more: a cancel fails it.
    again.cancel();
    assert!(again.take_result().unwrap().unwrap_err().check::<CancelledError>());
    let fresh = Deferred::<u64>::new();
    fresh.add_callback(|x| x * 2);
    fresh.callback(21).unwrap();
    assert_eq!(fresh.result().unwrap().unwrap(), 42);
}

/// A Deferred a weak reference still reaches is freed, not reused: the weak reference
/// must never upgrade to a Deferred made since.
#[test]
fn a_deferred_still_weakly_reached_is_not_reused() {
    crate::trim_free_lists();
    let d = Deferred::<u64>::new();
    let weak = d.downgrade();
    drop(d);
    assert_eq!(free_list::held(), 0);
    let other = Deferred::<u64>::new();
    assert!(weak.upgrade().is_none());
    drop(weak);
    drop(other);
    assert!(free_list::held() > 0, "with no weak reference left it is kept");
    crate::trim_free_lists();
}

/// The last reference being a forward reference (an observer's, `then`'s) keeps it too.
#[test]
fn a_deferred_whose_last_reference_is_a_forward_one_is_kept() {
    crate::trim_free_lists();
    let d = Deferred::<u64>::new();
    let forward = d.to_ref();
    drop(d);
    assert_eq!(free_list::held(), 0);
    drop(forward);
    assert!(free_list::held() > 0);
    crate::trim_free_lists();
}

/// A thread keeps at most `BUDGET` bytes of Deferreds; `trim_free_lists` frees them.
#[test]
fn the_free_list_keeps_at_most_its_budget_and_trims() {
    crate::trim_free_lists();
    let n = free_list::BUDGET / ONE + 10;
    let ds: Vec<Deferred<u64>> = (0..n).map(|_| Deferred::new()).collect();
    drop(ds);
    assert!(
        free_list::held() <= free_list::BUDGET && free_list::held() + ONE > free_list::BUDGET,
        "{}",
        free_list::held()
    );
    crate::trim_free_lists();
    assert_eq!(free_list::held(), 0);
}

/// While a watch exists on the thread (a reactor's, a `Clock`'s), the lists keep up to
/// `WATCHED_BUDGET`; once the last watch goes, the next block given back frees what is
/// beyond `BUDGET`, and a watch made before that finds everything still kept.
#[test]
fn a_watched_thread_keeps_more_and_sheds_it_once_unwatched() {
    crate::trim_free_lists();
    let n = free_list::BUDGET / ONE + 1000;
    let clock = crate::Clock::new();
    burst(n);
    assert_eq!(free_list::held(), n * ONE, "all kept while a clock watches");
    drop(clock);
    assert_eq!(free_list::held(), n * ONE, "the drop itself frees nothing");
    let again = free_list::Decay::new();
    burst(n);
    assert_eq!(free_list::held(), n * ONE, "a watch made at once finds them all");
    drop(again);
    burst(1);
    assert!(free_list::held() <= free_list::BUDGET, "{}", free_list::held());
    assert!(free_list::held() + ONE > free_list::BUDGET, "only the excess is freed");
    // Two watches: the limit stays up until both are gone.
    let (a, b) = (free_list::Decay::new(), free_list::Decay::new());
    drop(a);
    burst(n);
    assert_eq!(free_list::held(), n * ONE);
    drop(b);
    crate::trim_free_lists();
}

/// What one kept `Deferred<u64>` holds.
const ONE: usize = std::mem::size_of::<Inner<u64>>() + 2 * std::mem::size_of::<usize>();

/// Makes `n` Deferreds and drops them (they are kept).
fn burst(n: usize) {
    let ds: Vec<Deferred<u64>> = (0..n).map(|_| Deferred::new()).collect();
    drop(ds);
}

/// A reactor's watch frees what stayed unused for `IDLE_AFTER`, beyond `KEEP`.
#[test]
fn unused_deferreds_beyond_what_a_reactor_keeps_are_freed() {
    crate::trim_free_lists();
    let ms = Duration::from_millis;
    let decay = free_list::Decay::new();
    burst(10 * free_list::KEEP / ONE);
    let all = free_list::held();
    assert!(all > 9 * free_list::KEEP);
    decay.release_idle(|| ms(0));
    decay.release_idle(|| ms(10));
    assert_eq!(free_list::held(), all, "not yet");
    decay.release_idle(|| ms(20));
    assert!(
        free_list::held() <= free_list::KEEP && free_list::held() + ONE > free_list::KEEP,
        "{}",
        free_list::held()
    );
    // Under `KEEP` the watch does not start again (and reads no time).
    decay.release_idle(|| unreachable!("no time needed"));
    crate::trim_free_lists();
}

/// A burst that comes back within `IDLE_AFTER` keeps its memory: what it drew on was
/// used, and only the part no burst touched is freed.
#[test]
fn a_burst_that_comes_back_keeps_its_deferreds() {
    crate::trim_free_lists();
    let ms = Duration::from_millis;
    let decay = free_list::Decay::new();
    let n = 10 * free_list::KEEP / ONE;
    burst(2 * n);
    let all = free_list::held();
    decay.release_idle(|| ms(0));
    burst(n);
    decay.release_idle(|| ms(20));
    // The burst of `n` took half the list and gave it back: the other half went unused.
    let kept = free_list::held();
    assert!(kept < all && kept + ONE > all - (all / 2 - free_list::KEEP), "{kept} of {all}");
    // The next round keeps what the burst uses.
    decay.release_idle(|| ms(20));
    burst(n);
    decay.release_idle(|| ms(40));
    assert_eq!(free_list::held(), kept);
    crate::trim_free_lists();
}

/// A thread that ends with Deferreds kept frees them (and its Deferreds dropped late,
/// from other thread-locals' destructors, are freed as before).
#[test]
fn a_thread_ends_with_deferreds_kept() {
    thread_local! {
        static LATE: RefCell<Option<Deferred<u64>>> = const { RefCell::new(None) };
    }
    std::thread::spawn(|| {
        drop(Deferred::<u64>::new());
        assert!(free_list::held() > 0);
        LATE.with(|l| *l.borrow_mut() = Some(Deferred::new()));
    })
    .join()
    .unwrap();
}

/// A source held by the Deferred built on it (a combinator's member, `then`'s source) is
/// kept for reuse when that hold is its last reference.
#[test]
fn a_deferred_whose_last_reference_is_a_source_hold_is_kept() {
    crate::trim_free_lists();
    let source = Deferred::<u64>::new();
    let built = Deferred::<u32>::new();
    built.add_source(source);
    assert_eq!(free_list::held(), 0);
    // Fired, the built one lets go of its sources.
    built.callback(1).unwrap();
    assert!(free_list::held() > 0);
    let _ = built.take_result();
    crate::trim_free_lists();
}

/// A Deferred that loses its last cancel handle gives back its hold on each source: at
/// once, in place, for a source held elsewhere too, and after its borrow for one whose
/// last handle it was, which then gives back its own holds in turn. Nothing is lost: the
/// sources still fire into it.
#[test]
fn an_unclaimed_deferred_gives_back_its_hold_on_each_source() {
    let shared: Deferred<u8> = Deferred::new();
    let upstream: Deferred<u8> = Deferred::new();
    let only = upstream.clone().map(|x| x);
    let list = crate::gather_results(vec![shared.clone(), only], false);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    list.add_callback(move |v| {
        *s.borrow_mut() = v.clone();
        v
    });
    assert_eq!((shared.inner.handles.get(), upstream.inner.handles.get()), (2, 2));
    drop(list);
    assert_eq!(shared.inner.handles.get(), 1, "the list's hold is given back");
    assert_eq!(upstream.inner.handles.get(), 1, "so is the hold of the member only the list held");
    upstream.callback(7).unwrap();
    shared.callback(1).unwrap();
    assert_eq!(*seen.borrow(), [1, 7]);
}
