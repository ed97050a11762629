//! Ports of Twisted's `DeferredFutureAdapterTests` (a Deferred awaited from another
//! executor, and another executor's future run as a Deferred) and of
//! `CoroutineContextVarsTests.test_contextvarsWithAsyncAwait`, with weft's log context
//! in the place of Python's context variables (test_defer.py).

use std::cell::{Cell, RefCell};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use weft::future::ensure_deferred;
use weft::logcontext::{current_request_id, set_current_context, LoggingContext};
use weft::{CancelledError, Clock, Deferred, Failure, ResultConsumedError};

use crate::support::secs;

/// A waker that counts its wakes: the "other executor".
struct Counting(AtomicUsize);

impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<Counting>, Waker) {
    let c = Arc::new(Counting(AtomicUsize::new(0)));
    (c.clone(), Waker::from(c))
}

/// TW test_defer.py DeferredFutureAdapterTests.test_asFuture: a Deferred awaited by
/// another executor's poll is pending, wakes that executor when it fires, and then
/// gives its value; the result has moved out of the Deferred (Twisted leaves `None`).
#[test]
fn a_deferred_awaited_by_another_executor() {
    let d: Deferred<u32> = Deferred::new();
    let mut fut = Box::pin(d.clone().into_future());
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    d.callback(13).unwrap();
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the executor was woken");
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(v)) => assert_eq!(v, 13),
        other => panic!("expected the value, got {other:?}"),
    }
    let after = Rc::new(Cell::new(false));
    let a = after.clone();
    d.add_both(move |r: Result<u32, Failure>| {
        a.set(r.unwrap_err().check::<ResultConsumedError>());
        0
    });
    assert!(after.get(), "steps added after the await get ResultConsumedError");
}

/// TW test_defer.py DeferredFutureAdapterTests.test_asFutureFailure
#[test]
fn a_failed_deferred_awaited_by_another_executor() {
    let d: Deferred<u32> = Deferred::new();
    let mut fut = Box::pin(d.clone().into_future());
    let (_, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    d.errback(Failure::msg("division by zero")).unwrap();
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Err(f)) => assert_eq!(f.as_error().to_string(), "division by zero"),
        other => panic!("expected the failure, got {other:?}"),
    }
}

/// TW test_defer.py DeferredFutureAdapterTests.test_asFutureCancelFuture. Deliberate
/// difference: cancelling Twisted's asyncio Future cancels the Deferred; a Rust future
/// has no cancel but drop, and dropping the future that awaits a Deferred does not
/// cancel it (src/future/awaiting.rs, `DeferredFuture`, "# Drop": "Dropping the future
/// does not cancel the Deferred; its result, when it comes, is dropped"). The Deferred
/// stays cancellable by whoever holds it.
#[test]
fn dropping_the_awaiting_future_does_not_cancel_the_deferred() {
    let called = Rc::new(Cell::new(false));
    let c = called.clone();
    let d: Deferred<()> = Deferred::with_canceller(move |_| c.set(true));
    let mut fut = Box::pin(d.clone().into_future());
    let (_, waker) = counting_waker();
    assert!(fut.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
    drop(fut);
    assert!(!called.get() && !d.is_called());
    d.cancel();
    assert!(called.get());
}

type ForeignState = Rc<RefCell<(Option<Result<u32, Failure>>, Option<Waker>)>>;

/// A future of another executor: pending until `complete` gives it a result, which
/// wakes whoever polled it. Sets `dropped` when dropped.
struct Foreign {
    state: ForeignState,
    dropped: Rc<Cell<bool>>,
}

impl Future for Foreign {
    type Output = Result<u32, Failure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.state.borrow_mut();
        match state.0.take() {
            Some(r) => Poll::Ready(r),
            None => {
                state.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        self.dropped.set(true);
    }
}

fn foreign() -> (Foreign, ForeignState, Rc<Cell<bool>>) {
    let state = Rc::new(RefCell::new((None, None)));
    let dropped = Rc::new(Cell::new(false));
    (Foreign { state: state.clone(), dropped: dropped.clone() }, state, dropped)
}

fn complete(state: &ForeignState, r: Result<u32, Failure>) {
    let waker = {
        let mut s = state.borrow_mut();
        s.0 = Some(r);
        s.1.take()
    };
    waker.expect("the future was polled").wake();
}

/// TW test_defer.py DeferredFutureAdapterTests.test_fromFuture (and a failing future, as
/// test_fromFutureFutureCancelled has a cancelled one): the Deferred fires when the
/// other executor's future completes.
#[test]
fn another_executors_future_as_a_deferred() {
    let (fut, state, _) = foreign();
    let d = ensure_deferred(fut);
    assert!(!d.is_called());
    complete(&state, Ok(7));
    assert_eq!(d.take_result().unwrap().unwrap(), 7);

    let (fut, state, _) = foreign();
    let d = ensure_deferred(fut);
    complete(&state, Err(Failure::msg("the future failed")));
    assert_eq!(d.take_result().unwrap().unwrap_err().as_error().to_string(), "the future failed");
}

/// TW test_defer.py DeferredFutureAdapterTests.test_fromFutureDeferredCancelled:
/// cancelling the Deferred cancels (drops) the future it runs, and fails with
/// `CancelledError`.
#[test]
fn cancelling_the_deferred_drops_the_other_executors_future() {
    let (fut, _state, dropped) = foreign();
    let d = ensure_deferred(fut);
    assert!(!dropped.get());
    d.cancel();
    assert!(dropped.get(), "the future was not cancelled");
    assert!(d.take_result().unwrap().unwrap_err().check::<CancelledError>());
}

/// TW test_defer.py CoroutineContextVarsTests.test_contextvarsWithAsyncAwait, with the
/// log context for the context variable: a task runs in the context it was started in,
/// and gets it back after every await, even when the awaited Deferred's callbacks switch
/// the context and do not switch it back (with or without a failure).
#[test]
fn a_task_keeps_its_context_across_deferreds_that_switch_it() {
    let clock = Clock::new();
    let switching = |name: &'static str, fails: bool| {
        let d: Deferred<bool> = Deferred::new();
        d.add_callback(move |v| {
            // A misbehaving callback: switches and never restores.
            std::mem::forget(set_current_context(LoggingContext::new(name)));
            if fails {
                Err(Failure::msg("division by zero"))
            } else {
                Ok(v)
            }
        });
        d
    };
    let (mutating, mutating_fails) = (switching("three", false), switching("four", true));
    let (m, mf, c) = (mutating.clone(), mutating_fails.clone(), clock.clone());
    let task = {
        let _two = LoggingContext::new("two").enter();
        ensure_deferred(async move {
            assert_eq!(current_request_id().as_deref(), Some("two"));
            weft::succeed(1).await?;
            assert_eq!(current_request_id().as_deref(), Some("two"));
            let fire = m.clone();
            c.call_later(secs(1), move || fire.callback(true).unwrap());
            m.await?;
            assert_eq!(current_request_id().as_deref(), Some("two"));
            let fire = mf.clone();
            c.call_later(secs(1), move || fire.callback(true).unwrap());
            assert!(mf.await.is_err(), "should have failed");
            assert_eq!(current_request_id().as_deref(), Some("two"));
            Ok(true)
        })
    };
    assert_eq!(current_request_id(), None);
    clock.advance(secs(1));
    clock.advance(secs(1));
    assert!(task.take_result().unwrap().unwrap());
    assert_eq!(current_request_id(), None, "the misbehaving callbacks leaked their context");
}
