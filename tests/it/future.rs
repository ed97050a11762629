//! async/await over Deferreds, and the cancellation test helper.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use weft::future::{
    check_cancellation_at_each_await, ensure_deferred, is_cancelling, is_own_cancellation, pending_tasks,
};
use weft::{CancelledError, Clock, Deferred, DeferredLock, Failure, ObservableDeferred};

/// A `step` for `check_cancellation_at_each_await`: moves the clock on by half a second
/// while calls are pending.
fn step_clock(clock: &Clock) -> impl FnMut() -> bool {
    let clock = clock.clone();
    move || {
        if clock.pending_calls() == 0 {
            return false;
        }
        clock.advance(Duration::from_millis(500));
        true
    }
}

fn sleep(clock: &Clock, secs: u64) -> Deferred<()> {
    let d: Deferred<()> = Deferred::new();
    let d2 = d.clone();
    let call = clock.call_later(
        Duration::from_secs(secs),
        Box::new(move || {
            let _ = d2.callback(());
        }),
    );
    d.add_canceller(move |_| {
        let _ = call.cancel();
    });
    d
}

#[test]
fn await_fired_and_pending() {
    let out = ensure_deferred(async { Ok::<_, Failure>(weft::succeed(2).await? * 3) });
    assert_eq!(out.take_result().unwrap().unwrap(), 6);
    let d: Deferred<u8> = Deferred::new();
    let d2 = d.clone();
    let out = ensure_deferred(async move { d2.await });
    assert_eq!(pending_tasks(), 1);
    d.callback(1).unwrap();
    assert_eq!(out.take_result().unwrap().unwrap(), 1);
    assert_eq!(pending_tasks(), 0);
}

/// Synapse's mechanics: the cancel reaches the awaited Deferred, the CancelledError comes
/// out of the await, and the task may clean up (even awaiting) before it returns.
#[test]
fn cancel_reaches_awaited_and_task_cleans_up() {
    let clock = Clock::new();
    let log = Rc::new(RefCell::new(Vec::new()));
    let (c, l) = (clock.clone(), log.clone());
    let out: Deferred<&str> = ensure_deferred(async move {
        match sleep(&c, 10).await {
            Ok(()) => Ok("slept"),
            Err(f) => {
                assert!(f.check::<CancelledError>());
                assert!(is_cancelling() && is_own_cancellation(&f));
                l.borrow_mut().push("cleanup started");
                sleep(&c, 1).await?; // cleanup that takes time
                l.borrow_mut().push("cleanup done");
                Err(f)
            }
        }
    });
    out.cancel();
    assert_eq!(*log.borrow(), ["cleanup started"]);
    assert!(!out.has_result(), "the task is not cut off");
    clock.advance(Duration::from_secs(1));
    assert_eq!(*log.borrow(), ["cleanup started", "cleanup done"]);
    let f = out.take_result().unwrap().unwrap_err();
    let c = f.downcast_ref::<CancelledError>().unwrap();
    assert!(c.cancelled_by(&out));
    assert_eq!(pending_tasks(), 0);
}

/// The asyncio seed's question: my own cancel vs. someone else cancelling what I await.
#[test]
fn tell_own_cancel_from_foreign_cancel() {
    let shared: Deferred<()> = Deferred::new();
    let s = shared.clone();
    let out = ensure_deferred(async move {
        match s.await {
            Err(f) if is_own_cancellation(&f) => Err(f),
            Err(_) => Ok(!is_cancelling()),
            Ok(()) => Ok(false),
        }
    });
    shared.cancel();
    assert!(out.take_result().unwrap().unwrap());
}

/// The asyncio seed's lost-data case: the awaited result arrives, then the task is
/// cancelled before it resumes. The result is not discarded.
#[test]
fn cancel_after_result_before_resume_keeps_result() {
    let data: Deferred<&str> = Deferred::new();
    let (d, trigger) = (data.clone(), Rc::new(Cell::new(None::<Deferred<&str>>)));
    let t = trigger.clone();
    // The task fires its own awaited Deferred from inside a poll (so its wake is only
    // recorded), and its own Deferred is cancelled in that same turn.
    let gate: Deferred<()> = Deferred::new();
    let g = gate.clone();
    let out: Deferred<&str> = ensure_deferred(async move {
        g.await?;
        let me = t.take().unwrap();
        d.callback("data").unwrap(); // result produced...
        me.cancel(); // ...cancel arrives before the task resumed
        let got = d.await?;
        assert!(is_cancelling());
        Ok(got)
    });
    trigger.set(Some(out.clone()));
    gate.callback(()).unwrap();
    assert_eq!(out.take_result().unwrap().unwrap(), "data");
}

#[test]
fn panic_in_task_becomes_failure() {
    let out: Deferred<u8> = ensure_deferred(async { panic!("oops") });
    assert!(out.take_result().unwrap().unwrap_err().check::<weft::PanicError>());
    assert_eq!(pending_tasks(), 0);
}

/// Synapse's `make_request_with_cancellation_test` applied to a handler that takes a
/// lock and waits on shared work.
#[test]
fn handler_cancelled_at_each_await_point() {
    let clock = Clock::new();
    let lock = DeferredLock::new();
    let shared_src: Deferred<u32> = Deferred::new();
    let shared = Rc::new(ObservableDeferred::new(shared_src.clone(), false));
    {
        let s = shared_src.clone();
        clock.call_later(
            Duration::from_secs(3),
            Box::new(move || {
                let _ = s.callback(7);
            }),
        );
    }
    let handler = {
        let (clock, lock, shared) = (clock.clone(), lock.clone(), shared.clone());
        move || {
            let (clock, lock, shared) = (clock.clone(), lock.clone(), shared.clone());
            weft::future::cancellable(ensure_deferred(async move {
                let _permit = lock.acquire().await?;
                sleep(&clock, 1).await?;
                let v = shared.observe().await?;
                sleep(&clock, 1).await?;
                Ok::<_, Failure>(v)
            }))
            .0
        }
    };
    let report = check_cancellation_at_each_await(handler, step_clock(&clock), |_, d| {
        assert!(!lock.locked(), "no one holds the lock");
        assert_eq!(lock.waiting(), 0, "no waiter stuck");
        assert!(!shared.has_called() || shared.has_succeeded(), "shared work not cancelled");
        let _ = d.take_result();
    });
    assert!(report.await_points >= 2, "{report:?}");
}

/// SY test_utils cancellation helper, with the handler running in its own request log
/// context: wherever it is cancelled, its context finishes and none leaks into the
/// caller's (the helper checks the caller's context is current after every run).
#[test]
fn handler_in_a_request_context_leaks_no_context_when_cancelled() {
    use weft::logcontext::{current_request_id, LoggingContext};
    let clock = Clock::new();
    let contexts: Rc<RefCell<Vec<LoggingContext>>> = Rc::new(RefCell::new(Vec::new()));
    let seen: Rc<RefCell<Vec<Option<String>>>> = Rc::new(RefCell::new(Vec::new()));
    let handler = {
        let (clock, contexts, seen) = (clock.clone(), contexts.clone(), seen.clone());
        move || {
            let ctx = LoggingContext::new("request");
            contexts.borrow_mut().push(ctx.clone());
            let (clock, seen) = (clock.clone(), seen.clone());
            ctx.run::<(), _, _>(move || {
                ensure_deferred(async move {
                    sleep(&clock, 1).await?;
                    seen.borrow_mut().push(current_request_id());
                    sleep(&clock, 1).await?;
                    seen.borrow_mut().push(current_request_id());
                    Ok::<_, Failure>(())
                })
            })
        }
    };
    let report = check_cancellation_at_each_await(handler, step_clock(&clock), |_, d| {
        let _ = d.take_result();
    });
    assert_eq!(report.await_points, 2, "{report:?}");
    assert_eq!(current_request_id(), None);
    // The uncancelled run and every cancelled one finished their request context.
    assert_eq!(contexts.borrow().len(), 3);
    assert!(contexts.borrow().iter().all(LoggingContext::is_finished));
    // Code after each await ran in the request's context.
    assert!(!seen.borrow().is_empty());
    assert!(seen.borrow().iter().all(|c| c.as_deref() == Some("request")), "{:?}", seen.borrow());
}

/// A thread that ends with tasks still pending drops them during its thread-local
/// teardown: a task waiting on a never-fired Deferred, one holding a lock permit that
/// another task waits for (so the drop hands the permit on and fires callbacks), one
/// holding a read-write guard, and one holding a log-context scope across its await.
/// None of those drops may touch a destroyed thread-local or panic: before the fix the
/// whole test process aborted ("thread local panicked on drop").
#[test]
fn a_thread_ending_with_pending_tasks_permits_and_scopes_does_not_abort() {
    use weft::logcontext::LoggingContext;
    use weft::ReadWriteLock;
    let joined = std::thread::spawn(|| {
        let never: Deferred<()> = Deferred::new();
        let lock = DeferredLock::new();
        let rw: ReadWriteLock<u8> = ReadWriteLock::new();
        for i in 0..3 {
            let (never, lock, rw) = (never.clone(), lock.clone(), rw.clone());
            let _task = ensure_deferred(async move {
                let _permit = lock.acquire().await?;
                let _guard = rw.write(1).await?;
                let _scope = LoggingContext::new(format!("task-{i}")).enter();
                never.clone().await?;
                Ok::<_, Failure>(())
            });
        }
        assert_eq!(pending_tasks(), 3);
        // Also a permit and a scope owned by the thread's own locals.
        let _held = lock.acquire();
        let _outer = LoggingContext::new("thread").enter();
    })
    .join();
    assert!(joined.is_ok(), "the thread ended cleanly");
}

/// The same at the other end of the teardown: a thread-local of the user's, first used
/// before weft's own (so destroyed after them), holds a permit whose release runs a
/// waiter's callbacks in a log context, deep enough to need the trampoline, after
/// weft's task table, trampoline queues and current-context cell are gone.
#[test]
fn values_dropped_after_wefts_thread_locals_are_gone_do_not_abort() {
    use std::any::Any;
    use weft::logcontext::LoggingContext;
    thread_local! {
        static KEEP: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
    }
    let joined = std::thread::spawn(|| {
        KEEP.with(|_| {}); // registered first: destroyed last
        let lock = DeferredLock::new();
        let permit = lock.acquire().take_result().unwrap().unwrap();
        let waiter = lock.acquire();
        {
            let _scope = LoggingContext::new("late").enter();
            let mut d = waiter.clone().map(|_permit| 0u32);
            for _ in 0..100 {
                d = d.map(|n| n + 1);
            }
            let tail: Deferred<()> = Deferred::new();
            let t = tail.clone();
            let _task = ensure_deferred(async move { t.await });
            KEEP.with(|k| k.borrow_mut().push(Box::new((d, tail))));
        }
        KEEP.with(|k| k.borrow_mut().push(Box::new(permit)));
    })
    .join();
    assert!(joined.is_ok(), "the thread ended cleanly");
}

// ---- the task's log context ----

/// SY test_async_helpers.py DelayCancellationTests.test_preserves_logcontext, written
/// literally: a scope held across an await inside a task does not leak to the caller of
/// `ensure_deferred`, and is current again when the task resumes with the cancel.
#[test]
fn delay_cancellation_preserves_logcontext() {
    use weft::delay_cancellation;
    use weft::logcontext::{current_context, LoggingContext};
    let blocking_d: Deferred<()> = Deferred::new();
    let b = blocking_d.clone();
    let inner = async move { b.await };
    let outer = async move {
        let c = LoggingContext::new("c");
        let _scope = c.enter();
        match delay_cancellation(&ensure_deferred(inner)).await {
            Ok(()) => panic!("`CancelledError` was not raised"),
            Err(f) => {
                assert!(f.check::<CancelledError>());
                assert!(LoggingContext::ptr_eq(&c, &current_context()), "resumed in {:?}", current_context());
            }
        }
        Ok::<_, Failure>(())
    };
    let d = ensure_deferred(outer);
    assert!(current_context().is_sentinel(), "{:?} leaked out of the task", current_context());
    d.cancel();
    blocking_d.callback(()).unwrap();
    d.take_result().unwrap().unwrap();
    assert!(current_context().is_sentinel());
}

/// A task runs in the context current at `ensure_deferred`, resumes in whatever it left
/// current when it suspended (here a scope held across an await of a future that is not
/// a Deferred), and whoever wakes it or fires what it awaits keeps their own context.
/// Before, the scope leaked to the caller of `ensure_deferred`, and the task resumed in
/// the waker's context and left its own behind there.
#[test]
fn each_poll_runs_in_the_tasks_context_and_restores_the_callers() {
    use weft::logcontext::{current_request_id, LoggingContext};
    let manual = Manual::default();
    let gate: Deferred<()> = Deferred::new();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let task = {
        let _request = LoggingContext::new("request").enter();
        let (m, g, s) = (manual.clone(), gate.clone(), seen.clone());
        let task = ensure_deferred(async move {
            s.borrow_mut().push(current_request_id());
            {
                let _db = LoggingContext::new("db").enter();
                m.wait().await;
                s.borrow_mut().push(current_request_id());
            }
            s.borrow_mut().push(current_request_id());
            g.await?;
            s.borrow_mut().push(current_request_id());
            Ok::<_, Failure>(())
        });
        assert_eq!(current_request_id().as_deref(), Some("request"), "nothing leaked to the caller");
        task
    };
    assert_eq!(current_request_id(), None);
    {
        let _waking = LoggingContext::new("waker").enter();
        manual.set(1);
        manual.wake();
        assert_eq!(current_request_id().as_deref(), Some("waker"));
        gate.callback(()).unwrap();
        assert_eq!(current_request_id().as_deref(), Some("waker"));
    }
    task.take_result().unwrap().unwrap();
    let seen: Vec<_> = seen.borrow().iter().map(|c| c.clone().unwrap_or_default()).collect();
    assert_eq!(seen, ["request", "db", "request", "request"]);
}

// ---- cancelling a task, whatever it awaits ----

/// A future that is not a Deferred and that the test completes by hand.
#[derive(Clone, Default)]
struct Manual(Rc<ManualState>);

#[derive(Default)]
struct ManualState {
    value: Cell<Option<u32>>,
    waker: RefCell<Option<std::task::Waker>>,
    dropped: Cell<u32>,
}

struct ManualFuture(Manual);

impl Manual {
    fn wait(&self) -> ManualFuture {
        ManualFuture(self.clone())
    }
    fn set(&self, v: u32) {
        self.0.value.set(Some(v));
    }
    fn wake(&self) {
        let waker = self.0.waker.borrow_mut().take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl std::future::Future for ManualFuture {
    type Output = u32;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<u32> {
        match self.0 .0.value.take() {
            Some(v) => std::task::Poll::Ready(v),
            None => {
                *self.0 .0.waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
}

impl Drop for ManualFuture {
    fn drop(&mut self) {
        self.0 .0.dropped.set(self.0 .0.dropped.get() + 1);
    }
}

/// Before, the cancel did nothing and the task later succeeded with the foreign
/// future's output. Now the task is aborted at that await, as an aborted tokio task:
/// the future is dropped and the Deferred fails with the cancel's `CancelledError`.
#[test]
fn cancelling_a_task_awaiting_a_foreign_future_aborts_it_there() {
    let manual = Manual::default();
    let m = manual.clone();
    let after_await = Rc::new(Cell::new(false));
    let a = after_await.clone();
    let task = ensure_deferred(async move {
        let v = m.wait().await;
        a.set(true);
        Ok::<_, Failure>(v)
    });
    task.cancel();
    assert_eq!(manual.0.dropped.get(), 1, "the awaited future was dropped");
    assert_eq!(pending_tasks(), 0);
    let f = task.take_result().expect("failed at once").unwrap_err();
    assert!(f.downcast_ref::<CancelledError>().unwrap().cancelled_by(&task));
    manual.set(7);
    manual.wake();
    assert!(!after_await.get(), "the task never resumed");
}

/// `interruptible` makes a foreign future behave as a Deferred does under a cancel: the
/// `await` yields `CancelledError` and the task goes on (here, to clean up); a value
/// that is already there when the cancel comes is kept.
#[test]
fn interruptible_foreign_future_yields_cancelled_error_or_its_ready_value() {
    use weft::future::interruptible;
    let manual = Manual::default();
    let m = manual.clone();
    let task = ensure_deferred(async move {
        match interruptible(m.wait()).await {
            Ok(v) => Ok(v),
            Err(f) => {
                assert!(is_own_cancellation(&f));
                Ok(0)
            }
        }
    });
    task.cancel();
    assert_eq!(manual.0.dropped.get(), 1);
    assert_eq!(task.take_result().unwrap().unwrap(), 0);

    // The value arrived (no wake yet) before the cancel: the task gets it.
    let manual = Manual::default();
    let m = manual.clone();
    let task = ensure_deferred(async move {
        let v = interruptible(m.wait()).await?;
        Ok::<_, Failure>((v, is_cancelling()))
    });
    manual.set(9);
    task.cancel();
    assert_eq!(task.take_result().unwrap().unwrap(), (9, true));
}

/// A cancel that arrives while the task runs (here it cancels itself) is passed on when
/// its poll returns, to what it then awaits: a Deferred is cancelled with the same
/// cancel, so the task recognises it as its own. Before, that Deferred was never
/// cancelled and the task later succeeded with its value.
#[test]
fn a_cancel_during_the_tasks_own_poll_reaches_its_next_await() {
    let me: Rc<RefCell<Option<Deferred<u32>>>> = Rc::new(RefCell::new(None));
    let gate: Deferred<()> = Deferred::new();
    let next: Deferred<u32> = Deferred::new();
    let (m, g, n) = (me.clone(), gate.clone(), next.clone());
    let task = ensure_deferred(async move {
        g.await?;
        m.borrow().as_ref().unwrap().cancel(); // cancelled while running
        match n.await {
            Err(f) if is_own_cancellation(&f) => Err(f),
            other => other,
        }
    });
    *me.borrow_mut() = Some(task.clone());
    gate.callback(()).unwrap();
    assert!(next.is_called(), "the awaited Deferred was cancelled");
    let f = task.take_result().unwrap().unwrap_err();
    assert!(f.downcast_ref::<CancelledError>().unwrap().cancelled_by(&task));
    assert_eq!(pending_tasks(), 0);

    // The same, suspending on a foreign future: the task is aborted there.
    let manual = Manual::default();
    let (me, gate) = (Rc::new(RefCell::new(None::<Deferred<u32>>)), Deferred::<()>::new());
    let (m, g, mf) = (me.clone(), gate.clone(), manual.clone());
    let task = ensure_deferred(async move {
        g.await?;
        m.borrow().as_ref().unwrap().cancel();
        Ok::<_, Failure>(mf.wait().await)
    });
    *me.borrow_mut() = Some(task.clone());
    gate.callback(()).unwrap();
    assert_eq!(manual.0.dropped.get(), 1);
    assert!(task.take_result().unwrap().unwrap_err().check::<CancelledError>());
}

/// SY test_logcontext.py LoggingContextTestCase.test_sleep: a task holding its scope
/// across sleeps, and a competing task started by a timer in between with its own, each
/// see their own context after every await; the timer's callback starts in the
/// sentinel, and the caller is back in the sentinel at the end.
#[test]
fn competing_tasks_each_keep_their_context_across_sleeps() {
    use weft::logcontext::{current_request_id, LoggingContext};
    use weft::reactor::defer_later;
    let clock = Clock::new();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let competing_done = Rc::new(Cell::new(false));
    let (c, s, done) = (clock.clone(), seen.clone(), competing_done.clone());
    clock.call_later(Duration::ZERO, move || {
        let _task = ensure_deferred(async move {
            s.borrow_mut().push(("competing start", current_request_id()));
            {
                let _scope = LoggingContext::new("competing").enter();
                defer_later(&c, Duration::ZERO, || ()).await?;
                s.borrow_mut().push(("competing", current_request_id()));
                defer_later(&c, Duration::ZERO, || ()).await?;
                s.borrow_mut().push(("competing", current_request_id()));
            }
            s.borrow_mut().push(("competing end", current_request_id()));
            done.set(true);
            Ok::<_, Failure>(())
        });
    });
    let (c, s) = (clock.clone(), seen.clone());
    let main = ensure_deferred(async move {
        let _scope = LoggingContext::new("foo").enter();
        defer_later(&c, Duration::ZERO, || ()).await?;
        s.borrow_mut().push(("foo", current_request_id()));
        defer_later(&c, Duration::ZERO, || ()).await?;
        s.borrow_mut().push(("foo", current_request_id()));
        Ok::<_, Failure>(())
    });
    assert_eq!(current_request_id(), None);
    clock.advance(Duration::ZERO);
    main.take_result().unwrap().unwrap();
    assert!(competing_done.get());
    for (who, context) in seen.borrow().iter() {
        let expected = match *who {
            "foo" => Some("foo"),
            "competing" => Some("competing"),
            _ => None,
        };
        assert_eq!(context.as_deref(), expected, "{who}");
    }
    assert_eq!(seen.borrow().len(), 6);
    assert_eq!(current_request_id(), None);
}
