//! Who keeps an `ensure_deferred` task alive: a task suspended on a Deferred is held by
//! that Deferred's chain (and by the thread's task table only weakly), and the task's own
//! Deferred holds the awaited one while someone can cancel it. So a task that nobody can
//! resume or cancel any more is freed, as Python collects such a coroutine, and one that
//! someone can still cancel or resume is kept.

use std::cell::Cell;
use std::future::pending;
use std::rc::Rc;

use weft::future::{ensure_deferred, interruptible, pending_tasks};
use weft::{gather_results, CancelledError, Deferred, Failure};

use crate::support::success_result_of;

/// Counts its drops.
struct Token(Rc<Cell<u32>>);

impl Drop for Token {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// A task that holds `token` and awaits `input`, then adds one.
fn task_on(input: Deferred<u64>, token: Token) -> Deferred<u64> {
    ensure_deferred(async move {
        let _token = token;
        Ok::<_, Failure>(input.await? + 1)
    })
}

#[test]
fn a_task_nobody_can_resume_or_cancel_is_freed() {
    for drop_input_first in [true, false] {
        let dropped = Rc::new(Cell::new(0));
        let input = Deferred::<u64>::new();
        let out = task_on(input.clone(), Token(dropped.clone()));
        assert_eq!(pending_tasks(), 1);
        if drop_input_first {
            drop(input);
            assert_eq!(dropped.get(), 0, "the task's Deferred can still cancel it");
            drop(out);
        } else {
            drop(out);
            assert_eq!(dropped.get(), 0, "the input can still resume it");
            drop(input);
        }
        assert_eq!(dropped.get(), 1, "the task's future was dropped");
        assert_eq!(pending_tasks(), 0);
    }
}

#[test]
fn a_task_on_an_abandoned_deferred_still_sees_a_cancel_of_its_own_deferred() {
    let input = Deferred::<u64>::new();
    let inp = input.clone();
    let out = ensure_deferred(async move {
        match inp.await {
            Err(f) if f.check::<CancelledError>() => Ok(7),
            r => r,
        }
    });
    drop(input);
    out.cancel();
    assert_eq!(success_result_of(&out), 7, "the task cleaned up and returned");
    assert_eq!(pending_tasks(), 0);
}

#[test]
fn a_dropped_task_resumed_by_its_input_still_runs_to_the_end() {
    let seen = Rc::new(Cell::new(0));
    let input = Deferred::<u64>::new();
    let (s, inp) = (seen.clone(), input.clone());
    drop(ensure_deferred(async move {
        let x = inp.await?;
        s.set(x);
        Ok::<_, Failure>(x)
    }));
    input.callback(5).unwrap();
    assert_eq!(seen.get(), 5);
    assert_eq!(pending_tasks(), 0);
}

#[test]
fn a_task_whose_second_await_is_abandoned_is_freed() {
    let dropped = Rc::new(Cell::new(0));
    let (first, second) = (Deferred::<u64>::new(), Deferred::<u64>::new());
    let (f, s, token) = (first.clone(), second.clone(), Token(dropped.clone()));
    let out = ensure_deferred(async move {
        let _token = token;
        let x = f.await?;
        Ok::<_, Failure>(x + s.await?)
    });
    first.callback(1).unwrap();
    drop((first, second, out));
    assert_eq!(dropped.get(), 1);
    assert_eq!(pending_tasks(), 0);
}

#[test]
fn a_task_in_a_dropped_gather_over_abandoned_deferreds_is_freed() {
    let dropped = Rc::new(Cell::new(0));
    let tasks: Vec<Deferred<u64>> =
        (0..3).map(|_| task_on(Deferred::new(), Token(dropped.clone()))).collect();
    let all = gather_results(tasks, true);
    assert_eq!(dropped.get(), 0, "the gather can still cancel them");
    drop(all);
    assert_eq!(dropped.get(), 3);
    assert_eq!(pending_tasks(), 0);
}

/// A task suspended on a future that another thread may wake (through a clone of its
/// waker) stays in the table even when nobody holds its Deferred; so does one suspended
/// on something that holds no waker (it can still be cancelled, if its Deferred is held).
#[test]
fn a_task_awaiting_a_foreign_future_stays_in_the_table() {
    let dropped = Rc::new(Cell::new(0));
    let token = Token(dropped.clone());
    drop(ensure_deferred(async move {
        let _token = token;
        interruptible(pending::<()>()).await?;
        Ok::<_, Failure>(())
    }));
    let waiting = ensure_deferred(async move {
        pending::<()>().await;
        Ok::<_, Failure>(())
    });
    assert_eq!(dropped.get(), 0);
    assert_eq!(pending_tasks(), 2);
    // Cancelling aborts a task suspended on a foreign future (tokio's rule).
    waiting.cancel();
    assert_eq!(pending_tasks(), 1);
    // The other one is freed with the thread's task table.
}

/// A thread that ends with tasks pending frees them all, even those held only by the
/// Deferreds they await, when their own futures hold what would resume them (a lock
/// whose queue holds their waiters): a cycle only the thread's end breaks.
#[test]
fn a_thread_ending_frees_tasks_that_hold_what_would_resume_them() {
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let d = dropped.clone();
    std::thread::spawn(move || {
        let lock = weft::DeferredLock::new();
        let held = lock.acquire().take_result().unwrap().unwrap();
        let never: Deferred<()> = Deferred::new();
        // The first task keeps the lock and waits on `never`, which only the others'
        // futures hold; they wait in the lock's queue.
        let (n, c) = (never.clone(), OnDrop(d.clone()));
        drop(ensure_deferred(async move {
            let _count = c;
            let _permit = held;
            n.await
        }));
        for _ in 0..3 {
            let (lock, n, c) = (lock.clone(), never.clone(), OnDrop(d.clone()));
            drop(ensure_deferred(async move {
                let _count = c;
                let _permit = lock.acquire().await?;
                n.await
            }));
        }
        assert_eq!(pending_tasks(), 4);
        assert_eq!(d.load(std::sync::atomic::Ordering::SeqCst), 0);
    })
    .join()
    .unwrap();
    assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 4);
}

/// Counts its drop in a shared counter (the thread ends before the test reads it).
struct OnDrop(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}
