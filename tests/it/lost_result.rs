//! The lost-result guard: a responder's late `callback`/`errback` on a cancelled
//! Deferred hands its value to `on_lost_result` or the thread's hook (by default a
//! warning) instead of dropping it; and the queues and locks never hand an item to a
//! cancelled waiter.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use weft::{
    reset_lost_result_hook, set_lost_result_hook, CancelledError, Deferred, DeferredQueue, DeferredSemaphore,
    Failure, Linearizer, LostResult, Permit, ReadWriteLock, RwGuard,
};

use crate::support::{debugging, logs, Rng};

#[test]
fn late_callback_after_cancel_goes_to_the_deferreds_hook() {
    let back: Rc<RefCell<Vec<Result<String, Failure>>>> = Rc::default();
    let b = back.clone();
    let d: Deferred<String> = Deferred::new();
    d.on_lost_result(move |r| b.borrow_mut().push(r));
    d.cancel();
    d.callback("connection".into()).unwrap(); // the first late fire is not an error
    let got = back.borrow_mut().drain(..).collect::<Vec<_>>();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].as_ref().unwrap(), "connection");
    // A second late fire is an error as before, and hands its value back.
    assert_eq!(d.callback("again".into()).unwrap_err().into_inner(), "again");
    assert!(back.borrow().is_empty());
    assert!(d.take_result().unwrap().unwrap_err().check::<CancelledError>());
}

#[test]
fn late_errback_after_cancel_goes_to_the_hook_as_a_failure() {
    let back: Rc<RefCell<Option<Result<u8, Failure>>>> = Rc::default();
    let b = back.clone();
    let d: Deferred<u8> = Deferred::new();
    d.on_lost_result(move |r| *b.borrow_mut() = Some(r));
    d.cancel();
    d.errback(Failure::msg("row fetch failed")).unwrap();
    let f = back.borrow_mut().take().unwrap().unwrap_err();
    assert!(f.to_string().starts_with("row fetch failed"), "{f}");
    let _ = d.take_result();
}

#[test]
fn without_a_hook_a_late_result_is_logged_at_warn() {
    logs::capture();
    let d: Deferred<u32> = Deferred::new();
    let created = line!() - 1;
    d.cancel();
    d.callback(7).unwrap();
    let fired = line!() - 1;
    let warnings: Vec<String> =
        logs::records().into_iter().filter(|(l, _)| *l == log::Level::Warn).map(|(_, m)| m).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert!(w.contains("a value of type u32"), "{w}");
    assert!(w.contains(&format!("lost_result.rs:{created}")), "names where the Deferred was made: {w}");
    assert!(w.contains(&format!("lost_result.rs:{fired}")), "names the late callback: {w}");
    let _ = d.take_result();
}

#[test]
fn thread_hook_can_take_the_value_back_and_reset_restores_the_warning() {
    let pool: Rc<RefCell<Vec<u32>>> = Rc::default();
    let cancelled_at = Rc::new(Cell::new(None));
    let (p, c) = (pool.clone(), cancelled_at.clone());
    set_lost_result_hook(move |lost: LostResult| {
        c.set(lost.cancel().map(|c| c.location().line()));
        match lost.downcast::<u32>() {
            Ok(conn) => p.borrow_mut().push(conn),
            Err(other) => panic!("unexpected {other}"),
        }
    });
    let d: Deferred<u32> = Deferred::new();
    {
        // While debugging, the hook also learns which cancel it was.
        let _on = debugging(true);
        d.cancel();
    }
    let cancel_line = line!() - 2;
    d.callback(11).unwrap();
    assert_eq!(*pool.borrow(), [11]);
    assert_eq!(cancelled_at.get(), Some(cancel_line));
    reset_lost_result_hook();
    logs::capture();
    let d: Deferred<u32> = Deferred::new();
    d.cancel();
    d.callback(12).unwrap();
    assert_eq!(*pool.borrow(), [11]);
    assert!(logs::records().iter().any(|(l, m)| *l == log::Level::Warn && m.contains("lost result")));
}

#[test]
fn a_result_that_came_before_the_cancel_is_never_handed_to_the_hook() {
    let called = Rc::new(Cell::new(false));
    let c = called.clone();
    let d: Deferred<u8> = Deferred::new();
    d.on_lost_result(move |_| c.set(true));
    d.callback(1).unwrap();
    d.cancel();
    assert!(!called.get());
    assert_eq!(d.take_result().unwrap().unwrap(), 1);
}

/// Random gets, puts and cancels against a bounded queue, round after round: every item
/// put is received exactly once, still queued, or belongs to a put that was cancelled
/// before the queue took it. Nothing reaches the lost-result warning.
#[test]
fn random_cancels_against_a_queue_lose_no_item() {
    logs::capture();
    for seed in 1..=200u64 {
        let mut rng = Rng::new(seed);
        let q: DeferredQueue<u32> = DeferredQueue::bounded(2);
        let mut getters: Vec<Deferred<u32>> = Vec::new();
        let mut putters: Vec<(u32, Deferred<()>)> = Vec::new();
        let mut next_item = 0u32;
        let mut received: HashMap<u32, u32> = HashMap::new();
        let mut withdrawn: Vec<u32> = Vec::new();
        for _ in 0..60 {
            match rng.below(5) {
                0 | 1 => {
                    putters.push((next_item, q.put(next_item)));
                    next_item += 1;
                }
                2 => getters.push(q.get()),
                3 if !getters.is_empty() => {
                    let g = getters.swap_remove(rng.below(getters.len()));
                    g.cancel();
                    getters.push(g);
                }
                _ if !putters.is_empty() => {
                    let i = rng.below(putters.len());
                    putters[i].1.cancel();
                }
                _ => {}
            }
        }
        for g in getters {
            match g.take_result() {
                Some(Ok(item)) => *received.entry(item).or_default() += 1,
                Some(Err(f)) => assert!(f.check::<CancelledError>(), "seed {seed}: {f}"),
                None => {}
            }
        }
        for (item, p) in putters {
            if let Some(Err(f)) = p.take_result() {
                assert!(f.check::<CancelledError>(), "seed {seed}: {f}");
                withdrawn.push(item);
            }
        }
        while !q.is_empty() {
            let item = q.get().take_result().unwrap().unwrap();
            *received.entry(item).or_default() += 1;
        }
        // Puts still waiting for room hand their items over as the queue drains.
        while q.waiting_putters() > 0 {
            let item = q.get().take_result().unwrap().unwrap();
            *received.entry(item).or_default() += 1;
        }
        for item in 0..next_item {
            let times = received.get(&item).copied().unwrap_or(0);
            let gone = withdrawn.contains(&item);
            assert!(
                (times == 1 && !gone) || (times == 0 && gone),
                "seed {seed}: item {item} received {times} times, put cancelled: {gone}"
            );
        }
    }
    let warnings = logs::records().into_iter().filter(|(l, _)| *l >= log::Level::Warn).count();
    assert_eq!(warnings, 0);
}

/// Random acquires, releases and cancels against a semaphore: no permit is lost into a
/// cancelled waiter, so every token is back at the end.
#[test]
fn random_cancels_against_a_semaphore_lose_no_permit() {
    for seed in 1..=100u64 {
        let mut rng = Rng::new(seed);
        let sem = DeferredSemaphore::new(2);
        let mut waiting = Vec::new();
        let mut held = Vec::new();
        for _ in 0..40 {
            match rng.below(3) {
                0 => waiting.push(sem.acquire()),
                1 if !held.is_empty() => drop(held.swap_remove(rng.below(held.len()))),
                _ if !waiting.is_empty() => {
                    let i = rng.below(waiting.len());
                    waiting[i].cancel();
                }
                _ => {}
            }
            waiting.retain(|d: &Deferred<_>| match d.take_result() {
                Some(Ok(permit)) => {
                    held.push(permit);
                    false
                }
                Some(Err(_)) => false,
                None => true,
            });
        }
        for d in &waiting {
            d.cancel();
        }
        drop(waiting);
        drop(held);
        assert_eq!(sem.tokens(), 2, "seed {seed}");
    }
}

/// Random reads, writes, releases and cancels against a read-write lock and a
/// linearizer: no guard or permit is lost into a cancelled waiter, so once every guard
/// is dropped and every waiter cancelled, the key is free.
#[test]
fn random_cancels_against_a_rwlock_and_a_linearizer_lose_no_guard() {
    for seed in 1..=100u64 {
        let mut rng = Rng::new(seed);
        let lock: ReadWriteLock<u8> = ReadWriteLock::new();
        let lin: Linearizer<u8> = Linearizer::new(2);
        let mut waiting: Vec<Deferred<RwGuard>> = Vec::new();
        let mut lin_waiting: Vec<Deferred<Permit>> = Vec::new();
        let mut held: Vec<RwGuard> = Vec::new();
        let mut lin_held: Vec<Permit> = Vec::new();
        for _ in 0..50 {
            match rng.below(6) {
                0 => waiting.push(lock.read(1)),
                1 => waiting.push(lock.write(1)),
                2 => lin_waiting.push(lin.queue(1)),
                3 if !held.is_empty() => drop(held.swap_remove(rng.below(held.len()))),
                3 if !lin_held.is_empty() => drop(lin_held.swap_remove(rng.below(lin_held.len()))),
                4 if !waiting.is_empty() => {
                    let i = rng.below(waiting.len());
                    waiting[i].cancel();
                }
                _ if !lin_waiting.is_empty() => {
                    let i = rng.below(lin_waiting.len());
                    lin_waiting[i].cancel();
                }
                _ => {}
            }
            take_granted(&mut waiting, &mut held);
            take_granted(&mut lin_waiting, &mut lin_held);
        }
        for d in &waiting {
            d.cancel();
        }
        for d in &lin_waiting {
            d.cancel();
        }
        take_granted(&mut waiting, &mut held);
        take_granted(&mut lin_waiting, &mut lin_held);
        assert!(waiting.is_empty() && lin_waiting.is_empty(), "seed {seed}: every waiter has an outcome");
        drop((held, lin_held));
        assert!(!lock.is_locked(&1), "seed {seed}: the lock is free");
        assert!(!lin.is_held(&1) && !lin.is_queued(&1), "seed {seed}: the linearizer is free");
    }
}

/// Moves each granted guard out of `waiting` into `held`, and drops the cancelled waiters.
fn take_granted<G: std::fmt::Debug>(waiting: &mut Vec<Deferred<G>>, held: &mut Vec<G>) {
    waiting.retain(|d| match d.take_result() {
        Some(Ok(g)) => {
            held.push(g);
            false
        }
        Some(Err(f)) => {
            assert!(f.check::<CancelledError>(), "{f}");
            false
        }
        None => true,
    });
}

/// A request sets a hook, is cancelled and ends; the late result arrives after: the hook
/// runs in the request's context (its name in the log lines) with no warning about work
/// in a finished context, since coming late is what the hook is for.
#[test]
fn a_hook_set_in_a_request_that_has_ended_runs_without_a_late_work_warning() {
    logs::capture();
    let request = weft::logcontext::LoggingContext::new("GET-7");
    let seen = Rc::new(RefCell::new(None));
    let d: Deferred<u32> = Deferred::new();
    {
        let _in = request.enter();
        let s = seen.clone();
        d.on_lost_result(move |r| {
            *s.borrow_mut() = Some((r.unwrap(), weft::logcontext::current_request_id()));
        });
        d.cancel();
    }
    request.finish();
    d.callback(3).unwrap();
    assert_eq!(*seen.borrow(), Some((3, Some("GET-7".to_string()))));
    let warnings: Vec<_> = logs::records().into_iter().filter(|(l, _)| *l <= log::Level::Warn).collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    let _ = d.take_result();
}
