//! Bounded stack everywhere, proved: each graph of issue 10 (a long `chain_deferred`
//! chain, a chain of `ObservableDeferred` fan-outs, a queue of lock waiters that each
//! release in their callback, nested `ensure_deferred` awaits, and nested cancel
//! scopes) is built 100,000 deep, then fired, cancelled, or dropped unfired, on a
//! thread with a 256 KiB stack.
//!
//! No overflow was found: weft already trampolines each of these (see "Bounded stack"
//! in ARCHITECTURE.md). Raising `run::MAX_DEPTH` to `u32::MAX` (no trampoline) makes
//! every test here but the scope ones overflow, so the tests do detect a recursion.
//!
//! A recursion anywhere (a callback loop, a cancel walk, a wake, a drop of an `Rc`
//! chain) would overflow that stack long before 100,000 levels; the thread would abort
//! the whole test binary, so a green run is the proof. Each test also checks the final
//! outcome, and the drop tests count what was freed.

use std::cell::Cell;
use std::rc::Rc;

use weft::future::{ensure_deferred, pending_tasks};
use weft::{CancelScope, CancelledError, Deferred, DeferredLock, ObservableDeferred};

use crate::support::{cancelled, count_drop_of_step, debugging, failure_result_of, success_result_of};

/// How deep each graph goes.
const DEEP: usize = 100_000;

/// Runs `test` on a fresh thread with a 256 KiB stack, and fails if it panicked.
///
/// It holds weft's process-wide debugging switch off meanwhile: the 256 KiB are sized for
/// the default mode, and with debugging on (turned on by another test running at the
/// same time) each of the nested levels the trampoline allows costs more stack, so
/// `lock_waiters_cancelled` overflowed and aborted the whole test binary (2 of 4 runs
/// with `--test-threads=8`).
#[track_caller]
fn on_small_stack(test: impl FnOnce() + Send + 'static) {
    let _off = debugging(false);
    let thread = std::thread::Builder::new()
        .name("bounded-stack".into())
        .stack_size(256 * 1024)
        .spawn(test)
        .expect("spawn a small-stack thread");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

// ---------------------------------------------------------------------------------------
// chain_deferred: d[0] -> d[1] -> ... -> d[DEEP - 1]
// ---------------------------------------------------------------------------------------

/// `DEEP` Deferreds, each chained to the next; the handles of all of them.
fn chained() -> Vec<Deferred<u64>> {
    let ds: Vec<Deferred<u64>> = (0..DEEP).map(|_| Deferred::new()).collect();
    for pair in ds.windows(2) {
        // Each step adds one on the way, so the last value proves every step ran.
        pair[0].add_callback(|x| x + 1).chain_deferred(&pair[1]);
    }
    ds
}

#[test]
fn chain_deferred_chain_fired() {
    on_small_stack(|| {
        let ds = chained();
        ds[0].callback(0).unwrap();
        assert_eq!(success_result_of(&ds[DEEP - 1]), DEEP as u64 - 1);
        assert!(ds.iter().all(Deferred::is_called));
    });
}

#[test]
fn chain_deferred_chain_cancelled() {
    on_small_stack(|| {
        let ds = chained();
        ds[0].cancel();
        // The cancel's failure travels down every step to the last target.
        let err = cancelled(&failure_result_of::<CancelledError, _>(&ds[DEEP - 1]));
        assert!(err.cancelled_by(&ds[0]));
        assert!(ds.iter().all(Deferred::is_called));
    });
}

#[test]
fn chain_deferred_chain_dropped_unfired() {
    on_small_stack(|| {
        let ds = chained();
        let freed = count_drop_of_step(&ds[DEEP - 1]);
        // The first Deferred owns the whole chain through its steps: dropping its handle
        // last frees 100,000 Deferreds in one cascade.
        let mut ds = ds;
        let first = ds.remove(0);
        drop(ds);
        assert_eq!(freed.get(), 0, "the chain is still reachable from its first Deferred");
        drop(first);
        assert_eq!(freed.get(), 1);
    });
}

// ---------------------------------------------------------------------------------------
// ObservableDeferred: each one observes the one before
// ---------------------------------------------------------------------------------------

/// The source and `DEEP` fan-outs, each made from an observer of the previous one.
fn fan_outs() -> (Deferred<u64>, Vec<ObservableDeferred<u64>>) {
    let source = Deferred::new();
    let mut all = vec![ObservableDeferred::new(source.clone(), false)];
    for _ in 1..DEEP {
        let next = ObservableDeferred::new(all.last().unwrap().observe(), false);
        all.push(next);
    }
    (source, all)
}

#[test]
fn chain_of_fan_outs_fired() {
    on_small_stack(|| {
        let (source, all) = fan_outs();
        let last = all[DEEP - 1].observe();
        source.callback(7).unwrap();
        assert_eq!(success_result_of(&last), 7);
        assert!(all.iter().all(|o| o.get_result().is_some_and(|r| r.is_ok_and(|v| v == 7))));
    });
}

#[test]
fn chain_of_fan_outs_cancelled() {
    on_small_stack(|| {
        let (source, all) = fan_outs();
        let last = all[DEEP - 1].observe();
        // An observer's cancel detaches it alone, as in Synapse.
        last.cancel();
        assert!(cancelled(&failure_result_of::<CancelledError, _>(&last)).cancelled_by(&last));
        assert!(!source.is_called());
        // The source's cancel reaches every fan-out below it.
        source.cancel();
        for o in &all {
            let failure = o.get_result().expect("every fan-out has the outcome").unwrap_err();
            assert!(cancelled(&failure).cancelled_by(&source));
        }
    });
}

#[test]
fn chain_of_fan_outs_dropped_unfired() {
    on_small_stack(|| {
        let (source, all) = fan_outs();
        let freed = count_drop_of_step(&all[DEEP - 1].observe());
        drop(all);
        assert_eq!(freed.get(), 0, "the source can still fire the whole fan-out");
        drop(source);
        assert_eq!(freed.get(), 1);
    });
}

// ---------------------------------------------------------------------------------------
// DeferredLock: DEEP waiters, each releasing in its callback
// ---------------------------------------------------------------------------------------

/// A held lock with `DEEP` waiters; each waiter counts itself in `ran` and releases.
fn queued_waiters(ran: &Rc<Cell<usize>>) -> (DeferredLock, weft::Permit, Vec<Deferred<()>>) {
    let lock = DeferredLock::new();
    let held = success_result_of(&lock.acquire());
    let waiters = (0..DEEP)
        .map(|_| {
            let ran = ran.clone();
            let d = lock.acquire();
            d.clone().map(move |permit| {
                ran.set(ran.get() + 1);
                permit.release();
            })
        })
        .collect();
    (lock, held, waiters)
}

#[test]
fn lock_waiters_releasing_in_their_callbacks_fired() {
    on_small_stack(|| {
        let ran = Rc::new(Cell::new(0));
        let (lock, held, waiters) = queued_waiters(&ran);
        assert_eq!(lock.waiting(), DEEP);
        held.release();
        assert_eq!(ran.get(), DEEP);
        assert!(waiters.iter().all(|w| w.result().is_some_and(|r| r.is_ok())));
        assert!(!lock.locked());
        assert_eq!(lock.waiting(), 0);
    });
}

#[test]
fn lock_waiters_cancelled() {
    on_small_stack(|| {
        let ran = Rc::new(Cell::new(0));
        let (lock, held, waiters) = queued_waiters(&ran);
        // Each waiter's errback cancels the next one, so one cancel cascades through all
        // of them, each inside the callback loop of the one before.
        for pair in waiters.windows(2) {
            let next = pair[1].clone();
            pair[0].add_errback(move |f| {
                next.cancel();
                Err::<(), _>(f)
            });
        }
        waiters[0].cancel();
        assert_eq!(lock.waiting(), 0);
        held.release();
        assert_eq!(ran.get(), 0);
        assert!(!lock.locked(), "no cancelled waiter kept a permit");
        for w in &waiters {
            failure_result_of::<CancelledError, _>(w);
        }
    });
}

#[test]
fn lock_waiters_dropped_unfired() {
    on_small_stack(|| {
        let ran = Rc::new(Cell::new(0));
        let (lock, held, waiters) = queued_waiters(&ran);
        let freed = count_drop_of_step(&waiters[DEEP - 1]);
        // A lock cannot drop its waiters unfired while a permit exists: dropping every
        // handle and then the permit hands the lock down all 100,000 waiters in one
        // cascade, and frees them.
        drop(waiters);
        drop(held);
        assert_eq!(ran.get(), DEEP);
        assert_eq!(freed.get(), 1);
        // And the lock dropped with waiters still queued frees them.
        let (lock2, held2, waiters2) = queued_waiters(&ran);
        let freed = count_drop_of_step(&waiters2[DEEP - 1]);
        drop(waiters2);
        drop(lock2);
        assert_eq!(freed.get(), 0, "the permit holder can still wake the waiters");
        drop(held2);
        assert_eq!(freed.get(), 1);
        assert!(!lock.locked());
    });
}

// ---------------------------------------------------------------------------------------
// ensure_deferred: task i awaits task i - 1
// ---------------------------------------------------------------------------------------

/// A leaf Deferred and `DEEP` tasks, each awaiting the one before; the outermost task's
/// Deferred.
fn nested_tasks() -> (Deferred<u64>, Deferred<u64>) {
    let leaf: Deferred<u64> = Deferred::new();
    let mut outer = leaf.clone();
    for _ in 0..DEEP {
        let inner = outer;
        outer = ensure_deferred(async move { Ok(inner.await? + 1) });
    }
    (leaf, outer)
}

#[test]
fn nested_ensure_deferred_awaits_fired() {
    on_small_stack(|| {
        let (leaf, outer) = nested_tasks();
        assert_eq!(pending_tasks(), DEEP);
        leaf.callback(0).unwrap();
        assert_eq!(success_result_of(&outer), DEEP as u64);
        assert_eq!(pending_tasks(), 0);
    });
}

#[test]
fn nested_ensure_deferred_awaits_cancelled() {
    on_small_stack(|| {
        let (leaf, outer) = nested_tasks();
        outer.cancel();
        // The cancel went down all the awaits to the leaf, and its failure came back up
        // out of every `await`.
        let err = cancelled(&failure_result_of::<CancelledError, _>(&outer));
        assert!(err.cancelled_by(&outer));
        assert!(leaf.is_called());
        assert_eq!(pending_tasks(), 0);
    });
}

#[test]
fn nested_ensure_deferred_awaits_dropped_unfired() {
    on_small_stack(|| {
        let (leaf, outer) = nested_tasks();
        let freed = count_drop_of_step(&outer);
        drop(outer);
        assert_eq!(freed.get(), 0, "the leaf can still resume every task");
        assert_eq!(pending_tasks(), DEEP);
        drop(leaf);
        assert_eq!(freed.get(), 1);
        assert_eq!(pending_tasks(), 0);
    });
}

// ---------------------------------------------------------------------------------------
// Cancel scopes: DEEP scopes, each nested in the one before
// ---------------------------------------------------------------------------------------

/// The outermost scope, and a Deferred registered in the innermost of `DEEP` nested
/// scopes (the handles of the scopes between are dropped: each holds its parent).
fn nested_scopes() -> (CancelScope, CancelScope, Deferred<u64>) {
    let outer = CancelScope::new();
    let mut innermost = outer.child();
    for _ in 1..DEEP {
        innermost = innermost.child();
    }
    let work = Deferred::new();
    innermost.add(&work);
    (outer, innermost, work)
}

#[test]
fn nested_cancel_scopes_cancelled() {
    on_small_stack(|| {
        let (outer, innermost, work) = nested_scopes();
        outer.cancel();
        failure_result_of::<CancelledError, _>(&work);
        assert!(innermost.is_cancelled());
        assert_eq!(innermost.pending(), 0);
        // Caught by the outermost cancelled scope only, which has no work of its own.
        assert!(!innermost.cancelled_caught() && !outer.cancelled_caught());
    });
}

#[test]
fn nested_cancel_scopes_fired_and_dropped() {
    on_small_stack(|| {
        let (outer, innermost, work) = nested_scopes();
        work.callback(3).unwrap();
        assert_eq!(innermost.pending(), 0);
        assert_eq!(success_result_of(&work), 3);
        // The innermost scope holds the whole chain of parents: dropping it last frees
        // 100,000 scopes.
        drop(outer);
        drop(innermost);
        let (outer, innermost, work) = nested_scopes();
        let freed = count_drop_of_step(&work);
        drop((outer, innermost, work));
        assert_eq!(freed.get(), 1);
    });
}
