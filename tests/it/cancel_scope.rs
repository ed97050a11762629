//! Cancel scopes: Trio's cancel-scope semantics tests that apply to Deferreds and
//! `ensure_deferred` tasks, each naming the test it ports with a `/// TRIO file test`
//! line, then weft's own (ownership, Deferred chains, shields on chains).
//!
//! Trio's checkpoints become awaits on Deferreds the test fires or leaves pending, its
//! `with` blocks become `scope.run(async { .. })`, and time is the deterministic `Clock`.
//! Not ported: `test_timeouts_raise_value_error` (a `Duration` cannot be negative or
//! NaN), the misnesting and re-entry errors (a scope here is not a `with` block and may
//! run any number of tasks), and the parts of `test_basic_timeout` that check a deadline
//! passing after the block exited (a weft scope stays usable after its work ends, so its
//! deadline still counts).

use std::cell::Cell;
use std::future::IntoFuture;
use std::rc::Rc;

use weft::future::ensure_deferred;
use weft::scope::fail_after;
use weft::{succeed, CancelScope, CancelledError, Clock, Deferred, Failure, ReactorTime, TimeoutError};

use crate::support::{
    assert_no_result, cancelled, count_drop_of_step, failure_result_of, secs, success_result_of, DropCount,
    Trace,
};

/// `n` Deferreds for a task to await one after another (Trio's checkpoints).
fn gates(n: usize) -> Vec<Deferred<()>> {
    (0..n).map(|_| Deferred::new()).collect()
}

/// Awaits `gate` in a task and records in `trace` whether a cancel came out of it.
async fn checkpoint(gate: Deferred<()>, trace: &Trace) -> Result<(), Failure> {
    match gate.await {
        Ok(()) => trace.push("ok"),
        Err(f) if f.check::<CancelledError>() => {
            trace.push("cancelled");
            return Err(f);
        }
        Err(f) => return Err(f),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Trio's cancel-scope tests
// ---------------------------------------------------------------------------------------

/// TRIO test_run.py test_cancel_scope_nesting (two scopes triggering at once: the outer
/// one catches)
#[test]
fn of_two_cancelled_nested_scopes_the_outer_one_catches() {
    let scope1 = CancelScope::new();
    let scope2 = scope1.child();
    let scope3 = scope2.child();
    let never: Deferred<()> = Deferred::new();
    let (s2, s3) = (scope2.clone(), scope3.clone());
    let out = scope1.run(async move {
        let s2c = s2.clone();
        s2.run(async move {
            s3.cancel();
            s2c.cancel();
            s3.run(async move { never.await }).await
        })
        .await
    });
    // scope2 caught it: its run gave None, and the tasks around it finished normally.
    assert_eq!(success_result_of(&out), Some(None));
    assert!(scope3.cancel_called() && !scope3.cancelled_caught());
    assert!(scope2.cancel_called() && scope2.cancelled_caught());
    assert!(!scope1.cancel_called() && !scope1.cancelled_caught());
}

/// TRIO test_run.py test_cancel_scope_nesting (shielding: a cancelled outer scope cancels
/// every checkpoint until the inner scope is shielded; then only its own cancel counts)
#[test]
fn an_outer_cancel_is_level_triggered_until_a_shield_goes_up() {
    let scope1 = CancelScope::new();
    let scope2 = scope1.child();
    let trace = Trace::new();
    let g = gates(4);
    let (s1, s2, t, gs) = (scope1.clone(), scope2.clone(), trace.clone(), g.clone());
    let out = scope2.run(async move {
        s1.cancel();
        assert!(checkpoint(gs[0].clone(), &t).await.is_err());
        assert!(checkpoint(gs[1].clone(), &t).await.is_err());
        s2.set_shield(true);
        checkpoint(gs[2].clone(), &t).await?;
        s2.cancel();
        assert!(checkpoint(gs[3].clone(), &t).await.is_err());
        Ok(())
    });
    assert_eq!(trace.take(), ["cancelled", "cancelled"]);
    assert_no_result(&out); // shielded: waits for its gate
    g[2].callback(()).unwrap();
    assert_eq!(trace.take(), ["ok", "cancelled"]);
    // The task handled its cancels and finished: nothing reached a scope's end.
    assert_eq!(success_result_of(&out), Some(()));
    assert!(!scope2.cancelled_caught() && !scope1.cancelled_caught());
}

/// TRIO test_run.py test_cancel_scope_nesting (a cancel pending when the work ends
/// without a checkpoint is not delivered)
#[test]
fn work_that_finished_keeps_its_result_in_a_cancelled_scope() {
    let scope = CancelScope::new();
    scope.cancel();
    let out = scope.wrap(succeed(5));
    assert_eq!(success_result_of(&out), Some(5));
    assert!(!scope.cancelled_caught());
}

/// TRIO test_run.py test_cancel_shield_abort
#[test]
fn removing_a_shield_inside_a_cancelled_scope_cancels_the_work() {
    let outer = CancelScope::new();
    let inner = outer.child();
    outer.cancel();
    inner.set_shield(true);
    let trace = Trace::new();
    let gate: Deferred<()> = Deferred::new();
    let (t, g) = (trace.clone(), gate.clone());
    let out = inner.run(async move {
        t.push("sleeping");
        checkpoint(g, &t).await
    });
    assert_eq!(trace.take(), ["sleeping"]);
    inner.set_shield(false);
    assert_eq!(trace.take(), ["cancelled"]);
    // The outer scope's cancel ended it: the outer scope catches, not the inner one.
    assert!(!cancelled(&failure_result_of::<CancelledError, _>(&out)).cancelled_by(&out));
    assert!(!inner.cancelled_caught());
}

/// TRIO test_run.py test_unshield_while_cancel_propagating (there: raising the shield
/// while the cancel propagates; the outer scope still catches it)
#[test]
fn raising_a_shield_while_the_cancel_propagates_leaves_it_to_the_outer_scope() {
    let outer = CancelScope::new();
    let inner = outer.child();
    let gate: Deferred<()> = Deferred::new();
    let (i, g) = (inner.clone(), gate.clone());
    let out = outer.run(async move {
        let i2 = i.clone();
        i.run(async move {
            let r = g.await;
            i2.set_shield(true); // a `finally:` block
            r
        })
        .await?;
        Ok(())
    });
    outer.cancel();
    assert_eq!(success_result_of(&out), None);
    assert!(outer.cancelled_caught());
    assert!(!inner.cancelled_caught());
}

/// TRIO test_run.py test_cancel_unbound (cancel before entry, cancel after entry)
#[test]
fn a_scope_cancelled_before_or_after_its_work_joins_catches_the_cancel() {
    for before in [true, false] {
        let scope = CancelScope::new();
        if before {
            scope.cancel();
        }
        let never: Deferred<()> = Deferred::new();
        let out = scope.run(async move { never.await });
        if !before {
            assert_no_result(&out);
            scope.cancel();
        }
        assert_eq!(success_result_of(&out), None, "cancelled before: {before}");
        assert!(scope.cancel_called() && scope.cancelled_caught());
        assert_eq!(scope.pending(), 0);
    }
}

/// TRIO test_run.py test_cancel_unbound (shield before entry)
#[test]
fn a_scope_shielded_before_its_work_joins_protects_it_until_unshielded() {
    let outer = CancelScope::new();
    let scope = outer.child();
    scope.set_shield(true);
    outer.cancel();
    let trace = Trace::new();
    let g = gates(2);
    let (t, gs) = (trace.clone(), g.clone());
    let out = scope.run(async move {
        checkpoint(gs[0].clone(), &t).await?;
        checkpoint(gs[1].clone(), &t).await
    });
    g[0].callback(()).unwrap();
    assert_eq!(trace.take(), ["ok"]);
    scope.set_shield(false);
    assert_eq!(trace.take(), ["cancelled"]);
    failure_result_of::<CancelledError, _>(&out); // the outer scope's to catch
}

/// TRIO test_run.py test_cancel_unbound (a deadline moved into the past cancels at once,
/// and a cancel is never undone)
#[test]
fn a_deadline_moved_into_the_past_cancels_and_is_never_undone() {
    let clock = Clock::new();
    let scope = CancelScope::move_on_at(clock.now() + secs(1), &clock);
    assert!(!scope.cancel_called());
    scope.set_deadline(Some(clock.now()), &clock);
    assert!(scope.cancel_called());
    scope.set_deadline(Some(clock.now() + secs(1)), &clock);
    assert!(scope.cancel_called());
    clock.advance(secs(2));
    assert!(scope.cancel_called());
}

/// TRIO test_run.py test_basic_timeout (the deadline passes while the work waits)
#[test]
fn a_deadline_that_passes_cancels_and_the_scope_catches_it() {
    let clock = Clock::new();
    let scope = CancelScope::new();
    assert_eq!(scope.deadline(), None);
    scope.set_deadline(Some(clock.now() + secs(1)), &clock);
    assert_eq!(scope.deadline(), Some(secs(1)));
    let never: Deferred<()> = Deferred::new();
    let out = scope.run(async move { never.await });
    clock.advance(secs(2));
    assert_eq!(success_result_of(&out), None);
    assert!(scope.cancel_called() && scope.cancelled_caught());
}

/// TRIO test_run.py test_basic_timeout (changing the deadline after entering)
#[test]
fn a_deadline_changed_after_the_work_started_applies() {
    let clock = Clock::new();
    let start = clock.now();
    let scope = CancelScope::new();
    let trace = Trace::new();
    let g = gates(4);
    let (t, gs) = (trace.clone(), g.clone());
    let out = scope.run(async move {
        checkpoint(gs[0].clone(), &t).await?;
        let _ = checkpoint(gs[1].clone(), &t).await;
        let _ = checkpoint(gs[2].clone(), &t).await;
        Ok(())
    });
    scope.set_deadline(Some(start + secs(10)), &clock);
    g[0].callback(()).unwrap();
    clock.advance(secs(5));
    assert_eq!(trace.take(), ["ok"]);
    // Moved to a time already past: the next checkpoints are cancelled, each of them.
    scope.set_deadline(Some(start + secs(1)), &clock);
    assert_eq!(trace.take(), ["cancelled", "cancelled"]);
    assert_eq!(success_result_of(&out), Some(()));
    assert_eq!(clock.pending_calls(), 0);
}

/// TRIO test_timeouts.py test_move_on_after
#[test]
fn move_on_after_gives_none_at_the_deadline() {
    let clock = Clock::new();
    let scope = CancelScope::move_on_after(secs(3), &clock);
    let slow: Deferred<u8> = Deferred::new();
    let out = scope.wrap(slow.clone());
    clock.advance(secs(2));
    assert_no_result(&out);
    clock.advance(secs(1));
    assert_eq!(success_result_of(&out), None);
    assert!(scope.cancelled_caught());
    // The cancel reached the work itself, not just its wrapper.
    assert!(slow.is_called());
}

/// TRIO test_timeouts.py test_fail
#[test]
fn fail_after_fails_with_timeout_error_only_if_too_slow() {
    let clock = Clock::new();
    let never: Deferred<u8> = Deferred::new();
    let out = fail_after(secs(1), &clock, async move { never.await });
    clock.advance(secs(1));
    let f = failure_result_of::<TimeoutError, _>(&out);
    assert_eq!(f.downcast_ref::<TimeoutError>().unwrap().timeout, secs(1));

    let quick: Deferred<u8> = Deferred::new();
    let q = quick.clone();
    let out = fail_after(secs(100), &clock, async move { q.await });
    quick.callback(9).unwrap();
    assert_eq!(success_result_of(&out), 9);
    assert_eq!(clock.pending_calls(), 0, "the finished scope's timer is gone");
}

/// TRIO test_timeouts.py test_fail_after_fails_even_if_shielded
#[test]
fn a_shielded_scope_still_meets_its_own_deadline() {
    let clock = Clock::new();
    let outer = CancelScope::new();
    let scope = outer.child();
    scope.set_timeout(secs(1), &clock);
    scope.set_shield(true);
    let never: Deferred<()> = Deferred::new();
    let out = scope.run(async move { never.await });
    outer.cancel();
    assert_no_result(&out); // protected from the outer cancel
    clock.advance(secs(1));
    assert_eq!(success_result_of(&out), None);
    assert!(scope.cancelled_caught());
}

// ---------------------------------------------------------------------------------------
// Nesting and deadlines
// ---------------------------------------------------------------------------------------

#[test]
fn an_inner_deadline_never_outlives_the_outer_one() {
    let clock = Clock::new();
    let outer = CancelScope::move_on_after(secs(5), &clock);
    let inner = outer.child();
    inner.set_timeout(secs(60), &clock);
    assert_eq!(inner.effective_deadline(), Some(secs(5)));
    let slow: Deferred<u8> = Deferred::new();
    let out = inner.wrap(slow);
    clock.advance(secs(5));
    // The outer deadline ended it; the inner scope passes it on.
    failure_result_of::<CancelledError, _>(&out);
    assert!(inner.is_cancelled() && !inner.cancel_called() && !inner.cancelled_caught());
    // A shielded scope sees only its own deadline.
    let shielded = outer.child();
    shielded.set_shield(true);
    shielded.set_timeout(secs(60), &clock);
    assert_eq!(shielded.effective_deadline(), Some(secs(65)));
}

#[test]
fn a_scope_made_inside_a_run_task_is_nested_in_that_scope() {
    let outer = CancelScope::new();
    assert!(CancelScope::current().is_none());
    let trace = Trace::new();
    let gate: Deferred<()> = Deferred::new();
    let (t, g) = (trace.clone(), gate.clone());
    let out = outer.run(async move {
        assert!(CancelScope::current().is_some());
        let inner = CancelScope::new();
        let r = inner.run(async move { checkpoint(g, &t).await }).await;
        assert!(!inner.cancelled_caught());
        r
    });
    outer.cancel();
    assert_eq!(trace.take(), ["cancelled"]);
    assert_eq!(success_result_of(&out), None);
    assert!(outer.cancelled_caught());
    assert!(CancelScope::current().is_none());
}

// ---------------------------------------------------------------------------------------
// Deferred chains
// ---------------------------------------------------------------------------------------

#[test]
fn one_scope_cancel_is_one_cancellation_started_by_no_deferred() {
    let scope = CancelScope::new();
    let (a, b): (Deferred<u8>, Deferred<u8>) = (Deferred::new(), Deferred::new());
    scope.add(&a).add(&b);
    assert_eq!(scope.pending(), 2);
    scope.cancel();
    let ea = cancelled(&failure_result_of::<CancelledError, _>(&a));
    let eb = cancelled(&failure_result_of::<CancelledError, _>(&b));
    assert_eq!(ea.id(), eb.id());
    assert!(!ea.cancelled_by(&a) && !eb.cancelled_by(&b));
    assert!(scope.cancelled_caught());
    assert_eq!(scope.pending(), 0);
}

#[test]
fn one_cancel_ends_every_task_and_deferred_in_the_scope() {
    let scope = CancelScope::new();
    let gates = gates(3);
    let tasks: Vec<_> = gates.iter().map(|g| scope.run(g.clone().into_future())).collect();
    let plain: Deferred<()> = Deferred::new();
    let wrapped = scope.wrap(plain.clone());
    assert_eq!(scope.pending(), 4);
    scope.cancel();
    for t in &tasks {
        assert_eq!(success_result_of(t), None);
    }
    assert_eq!(success_result_of(&wrapped), None);
    assert!(gates.iter().all(Deferred::is_called) && plain.is_called());
    assert_eq!(scope.pending(), 0);
}

#[test]
fn a_direct_cancel_of_the_wrapped_deferred_is_not_the_scopes() {
    let scope = CancelScope::new();
    let work: Deferred<u8> = Deferred::new();
    let out = scope.wrap(work.clone());
    out.cancel();
    assert!(cancelled(&failure_result_of::<CancelledError, _>(&out)).cancelled_by(&out));
    assert!(work.is_called());
    assert!(!scope.cancel_called() && !scope.cancelled_caught());
}

#[test]
fn a_shield_holds_back_a_cancel_coming_down_a_deferred_chain() {
    // The outer task awaits a shielded scope's work: its cancel waits for the work, the
    // work's value reaches the task, and the task's next await is cancelled.
    let outer = CancelScope::new();
    let shielded = outer.child();
    shielded.set_shield(true);
    let (work, after): (Deferred<u8>, Deferred<u8>) = (Deferred::new(), Deferred::new());
    let got = Rc::new(Cell::new(None));
    let (s, w, a, g) = (shielded.clone(), work.clone(), after.clone(), got.clone());
    let out = outer.run(async move {
        g.set(s.wrap(w).await?);
        a.await
    });
    outer.cancel();
    assert!(!work.is_called(), "the shielded work was not cancelled");
    work.callback(7).unwrap();
    assert_eq!(got.get(), Some(7), "the work's value was not lost");
    assert!(after.is_called(), "the next await was cancelled");
    assert_eq!(success_result_of(&out), None);
    assert!(outer.cancelled_caught() && !shielded.cancelled_caught());
}

// ---------------------------------------------------------------------------------------
// Ownership: a scope keeps nothing alive, and an abandoned one frees everything
// ---------------------------------------------------------------------------------------

#[test]
fn a_scope_lets_go_of_work_that_settled_or_was_dropped() {
    let scope = CancelScope::new();
    let d: Deferred<u8> = Deferred::new();
    let step_freed = count_drop_of_step(&d);
    scope.add(&d);
    d.callback(1).unwrap();
    assert_eq!(scope.pending(), 0);
    // A registered Deferred nobody can fire is freed with the scope still alive.
    let orphan: Deferred<u8> = Deferred::new();
    let orphan_freed = count_drop_of_step(&orphan);
    scope.add(&orphan);
    drop((d, orphan));
    assert_eq!((step_freed.get(), orphan_freed.get()), (1, 1));
    scope.cancel(); // finds nothing alive to cancel
}

#[test]
fn pending_work_keeps_its_scope_and_deadline_alive() {
    let clock = Clock::new();
    let work: Deferred<u8> = Deferred::new();
    let out = {
        let scope = CancelScope::move_on_after(secs(1), &clock);
        scope.wrap(work.clone())
    };
    clock.advance(secs(1));
    assert_eq!(success_result_of(&out), None);
    assert!(work.is_called());
}

#[test]
fn an_abandoned_scope_frees_its_work_task_and_timer() {
    let clock = Clock::new();
    let freed = Rc::new(Cell::new(0));
    let plain_freed;
    {
        let scope = CancelScope::move_on_after(secs(5), &clock);
        let inner = scope.child();
        inner.set_timeout(secs(9), &clock);
        let never: Deferred<u8> = Deferred::new();
        let token = DropCount(freed.clone());
        let _out = inner.run(async move {
            let _keep = token;
            never.await
        });
        let plain: Deferred<u8> = Deferred::new();
        plain_freed = count_drop_of_step(&plain);
        let _wrapped = scope.wrap(plain);
    }
    assert_eq!((freed.get(), plain_freed.get()), (1, 1));
    assert_eq!(weft::future::pending_tasks(), 0);
    assert_eq!(clock.pending_calls(), 0, "the scopes' timers went with them");
}

#[test]
fn a_task_started_in_a_scope_is_freed_when_the_scope_cancels_it() {
    let scope = CancelScope::new();
    let freed = Rc::new(Cell::new(0));
    let token = DropCount(freed.clone());
    let never: Deferred<u8> = Deferred::new();
    let out = scope.run(async move {
        let _keep = token;
        never.await
    });
    let plain = ensure_deferred(async { Ok::<_, Failure>(1u8) });
    assert_eq!(success_result_of(&plain), 1);
    scope.cancel();
    assert_eq!(success_result_of(&out), None);
    assert_eq!(freed.get(), 1);
    assert_eq!(scope.pending(), 0);
}

// ---------------------------------------------------------------------------------------
// Time: the real reactor, and where a deadline's cancel says it started
// ---------------------------------------------------------------------------------------

#[test]
fn a_deadline_on_the_real_reactor_ends_the_work() {
    let reactor = weft::Reactor::new().unwrap();
    let scope = CancelScope::move_on_after(crate::support::ms(10), &reactor.handle());
    let never: Deferred<u8> = Deferred::new();
    let out = scope.run(async move { never.await });
    let o = out.clone();
    crate::support::run_until(&reactor, secs(10), move || o.is_called());
    assert_eq!(success_result_of(&out), None);
    assert!(scope.cancelled_caught());
}

#[test]
fn a_deadlines_cancel_names_the_line_that_set_it() {
    let clock = Clock::new();
    let scope = CancelScope::new();
    let line = line!() + 1;
    scope.set_timeout(secs(1), &clock);
    let d: Deferred<u8> = Deferred::new();
    scope.add(&d);
    clock.advance(secs(1));
    let err = cancelled(&failure_result_of::<CancelledError, _>(&d));
    assert_eq!((err.location().file(), err.location().line()), (file!(), line));
}
