//! Ports of Synapse's ConcurrentlyExecuteTest, AwakenableSleeperTests and
//! GatherCoroutineTests (tests/util/test_async_helpers.py).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use weft::async_helpers::{concurrently_execute, gather_optional, AwakenableSleeper};
use weft::future::ensure_deferred;
use weft::logcontext::{current_context, LoggingContext, PreserveLoggingContext};
use weft::{CancelledError, Clock, Deferred, Failure, FirstError};

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// The test's `callback(v)`: counts starts, records the item, and waits on a fresh
/// Deferred that the test fires.
struct Runner {
    started: Cell<u32>,
    processed: RefCell<Vec<u32>>,
    waiters: RefCell<Vec<Deferred<u32>>>,
}

fn runner() -> Rc<Runner> {
    Rc::new(Runner {
        started: Cell::new(0),
        processed: RefCell::new(Vec::new()),
        waiters: RefCell::new(Vec::new()),
    })
}

fn run_all(r: &Rc<Runner>, items: Vec<u32>, limit: usize) -> Deferred<()> {
    let r = r.clone();
    concurrently_execute(
        move |v: u32| {
            r.started.set(r.started.get() + 1);
            r.processed.borrow_mut().push(v);
            let d = Deferred::new();
            r.waiters.borrow_mut().push(d.clone());
            d
        },
        items,
        limit,
    )
}

/// SY test_async_helpers.py ConcurrentlyExecuteTest.test_limits_runners
#[test]
fn concurrently_execute_limits_runners() {
    let r = runner();
    let d2 = run_all(&r, vec![1, 2, 3, 4, 5], 3);
    assert_eq!(r.started.get(), 3);
    assert_eq!(r.waiters.borrow().len(), 3);
    let one = r.waiters.borrow_mut().pop().unwrap();
    one.callback(0).unwrap();
    assert_eq!(r.started.get(), 4);
    assert_eq!(r.waiters.borrow().len(), 3);
    assert!(!d2.is_called());
    loop {
        let next = r.waiters.borrow_mut().pop();
        let Some(w) = next else { break };
        w.callback(0).unwrap();
    }
    assert_eq!(r.started.get(), 5);
    let mut processed = r.processed.borrow().clone();
    processed.sort();
    assert_eq!(processed, [1, 2, 3, 4, 5]);
    d2.take_result().unwrap().unwrap();
}

#[derive(Debug)]
pub(crate) struct TestException;

impl std::fmt::Display for TestException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bah")
    }
}

impl std::error::Error for TestException {}

/// SY test_async_helpers.py ConcurrentlyExecuteTest.test_preserves_stacktraces, in
/// weft's terms: the callback's own error reaches the caller, not wrapped in a
/// FirstError, and it names where it was made.
#[test]
fn concurrently_execute_fails_with_the_callbacks_own_error() {
    let d1: Deferred<u32> = Deferred::new();
    let d = d1.clone();
    let all = concurrently_execute(
        move |_v: u32| {
            let d = d.clone();
            async move {
                d.await?;
                Err::<(), _>(Failure::new(TestException))
            }
        },
        vec![1],
        2,
    );
    d1.callback(0).unwrap();
    let f = all.take_result().unwrap().unwrap_err();
    assert!(f.check::<TestException>() && !f.check::<FirstError>(), "{f}");
    assert_eq!(f.location().file(), file!());
}

/// Cancelling stops the calls in progress and starts no more; a zero limit is an error,
/// not a silent no-op; no items finish at once.
#[test]
fn concurrently_execute_cancel_and_edge_cases() {
    let r = runner();
    let all = run_all(&r, (1..=10).collect(), 2);
    all.cancel();
    assert!(r.waiters.borrow().iter().all(Deferred::is_called), "the calls in progress were cancelled");
    assert_eq!(r.started.get(), 2, "no further item started");
    assert!(all.take_result().unwrap().unwrap_err().check::<CancelledError>());
    for w in r.waiters.borrow().iter() {
        let _ = w.take_result();
    }

    assert!(run_all(&runner(), vec![1], 0).take_result().unwrap().is_err());
    assert!(run_all(&runner(), vec![], 3).take_result().unwrap().is_ok());
}

/// SY test_async_helpers.py AwakenableSleeperTests.test_sleep and test_explicit_wake
#[test]
fn awakenable_sleeper_sleeps_or_is_woken() {
    let clock = Clock::new();
    let sleeper = AwakenableSleeper::new(clock.clone());
    let d = ensure_deferred({
        let s = sleeper.sleep("name", ms(1000));
        async move { s.await }
    });
    clock.pump(&[Duration::ZERO]);
    assert!(!d.is_called());
    clock.advance(ms(500));
    assert!(!d.is_called());
    clock.advance(ms(600));
    assert!(d.is_called());

    let d = sleeper.sleep("name", ms(1000));
    clock.advance(ms(500));
    assert!(!d.is_called());
    sleeper.wake(&"name");
    assert!(d.is_called());
    clock.advance(ms(600));
    assert_eq!(clock.pending_calls(), 0);
}

/// SY test_async_helpers.py AwakenableSleeperTests.test_multiple_sleepers_timeout and
/// test_multiple_sleepers_wake
#[test]
fn awakenable_sleeper_with_several_sleepers() {
    let clock = Clock::new();
    let sleeper = AwakenableSleeper::new(clock.clone());
    let d1 = sleeper.sleep("name", ms(1000));
    clock.advance(ms(600));
    assert!(!d1.is_called());
    let d2 = sleeper.sleep("name", ms(1000));
    clock.advance(ms(600));
    assert!(d1.is_called() && !d2.is_called());
    clock.advance(ms(600));
    assert!(d2.is_called());

    let d1 = sleeper.sleep("name", ms(1000));
    clock.advance(ms(500));
    let d2 = sleeper.sleep("name", ms(1000));
    clock.advance(ms(300));
    assert!(!d1.is_called() && !d2.is_called());
    sleeper.wake(&"name");
    assert!(d1.is_called() && d2.is_called());
    assert_eq!(sleeper.sleeping(&"name"), 0);
}

/// Cancelling one sleep removes it and its timer; the others on the name stay.
#[test]
fn awakenable_sleeper_cancel_removes_only_that_sleep() {
    let clock = Clock::new();
    let sleeper = AwakenableSleeper::new(clock.clone());
    let d1 = sleeper.sleep("name", ms(1000));
    let d2 = sleeper.sleep("name", ms(1000));
    d1.cancel();
    assert!(d1.take_result().unwrap().unwrap_err().check::<CancelledError>());
    assert_eq!(sleeper.sleeping(&"name"), 1);
    assert_eq!(clock.pending_calls(), 1);
    sleeper.wake(&"name");
    assert!(d2.is_called());
    assert_eq!(clock.pending_calls(), 0);
}

/// SY test_async_helpers.py GatherCoroutineTests.make_coroutine: a task that waits on a
/// Deferred in the sentinel context.
fn make_coroutine<T: 'static>() -> (Deferred<T>, Deferred<T>) {
    let d = Deferred::new();
    let inner = d.clone();
    let task = ensure_deferred(async move {
        let _sentinel = PreserveLoggingContext::sentinel();
        inner.await
    });
    (task, d)
}

/// SY test_async_helpers.py GatherCoroutineTests.test_single, test_multiple_resolve and
/// test_multiple_fail, with weft's log-context rule: the caller's context stays current
/// throughout (Synapse's drops to the sentinel while waiting).
#[test]
fn gather_optional_single_multiple_and_failing() {
    let test_ctx = LoggingContext::new("test_ctx");
    let _scope = test_ctx.enter();
    let in_test_ctx = || LoggingContext::ptr_eq(&current_context(), &test_ctx);

    let (coroutine, deferred) = make_coroutine::<()>();
    let gather = gather_optional((Some(coroutine),));
    let gathered = ensure_deferred(async move { gather.await });
    assert!(!gathered.is_called() && in_test_ctx());
    deferred.callback(()).unwrap();
    assert_eq!(gathered.take_result().unwrap().unwrap(), (Some(()),));
    assert!(in_test_ctx());

    let (coroutine1, deferred1) = make_coroutine::<u32>();
    let (coroutine2, deferred2) = make_coroutine::<&str>();
    let gathered = gather_optional((Some(coroutine1), Some(coroutine2)));
    deferred2.callback("test").unwrap();
    assert!(!gathered.is_called() && in_test_ctx());
    deferred1.callback(1).unwrap();
    assert_eq!(gathered.take_result().unwrap().unwrap(), (Some(1), Some("test")));

    let (coroutine1, _deferred1) = make_coroutine::<u32>();
    let (coroutine2, deferred2) = make_coroutine::<&str>();
    let gathered = gather_optional((Some(coroutine1), Some(coroutine2), None::<Deferred<u8>>));
    deferred2.errback(Failure::new(TestException)).unwrap();
    let f = gathered.take_result().expect("fails at once").unwrap_err();
    assert!(f.check::<TestException>(), "{f}");
    assert!(in_test_ctx());

    let all: Deferred<Vec<Option<u8>>> = gather_optional(vec![None, Some(weft::succeed(3)), None]);
    assert_eq!(all.take_result().unwrap().unwrap(), [None, Some(3), None]);
}
