//! The tokio bridge (feature `tokio`): `compat::tokio::spawn` runs a `Send` future on a
//! tokio runtime and fires a Deferred on the reactor thread; cancelling aborts the task;
//! `into_send_future` hands a Deferred to tokio code, and dropping that future cancels it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;

use weft::compat::tokio::{
    spawn, spawn_fallible, use_runtime, IntoSendFuture, NoReactorError, RuntimeShutdownError,
};
use weft::logcontext::{current_request_id, LoggingContext};
use weft::{CancelledError, Deferred, Failure, PanicError, Reactor};

use crate::support::{in_child, run_in_child, run_until, secs};

/// Sends the name of the thread it is dropped on.
struct DropGuard(mpsc::Sender<String>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        let name = std::thread::current().name().unwrap_or("unnamed").to_string();
        let _ = self.0.send(name);
    }
}

/// Spawns a future that never finishes and holds a [`DropGuard`]; returns once it runs,
/// with the receiver that hears where it was dropped.
fn spawn_pending_with_guard() -> (Deferred<()>, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let (started_tx, started_rx) = mpsc::channel();
    let d = spawn(async move {
        let _guard = DropGuard(tx);
        started_tx.send(()).unwrap();
        std::future::pending::<()>().await;
    });
    started_rx.recv_timeout(secs(30)).expect("the future started");
    (d, rx)
}

/// Runs `reactor` until `d` has a result, and takes it.
#[track_caller]
fn outcome<T: 'static>(reactor: &Reactor, d: Deferred<T>) -> Result<T, Failure> {
    let got = Rc::new(RefCell::new(None));
    let g = got.clone();
    let _done = d.then(move |r| {
        *g.borrow_mut() = Some(r);
    });
    let g = got.clone();
    run_until(reactor, secs(30), move || g.borrow().is_some());
    let r = got.borrow_mut().take().unwrap();
    r
}

#[test]
fn a_spawned_future_fires_its_deferred_on_the_reactor_thread_in_the_callers_context() {
    let reactor = Reactor::new().unwrap();
    let reactor_thread = std::thread::current().id();
    let seen = Rc::new(RefCell::new(None));
    let d = {
        let _in = LoggingContext::new("GET-1").enter();
        let s = seen.clone();
        let d = spawn(async {
            // tokio's own timers work here: this runs on the tokio runtime.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            std::thread::current().name().unwrap_or("unnamed").to_string()
        });
        d.add_callback(move |worker| {
            *s.borrow_mut() = Some((current_request_id(), std::thread::current().id()));
            worker
        });
        d
    };
    let worker = outcome(&reactor, d).unwrap();
    assert_eq!(worker, "weft-tokio");
    assert_eq!(*seen.borrow(), Some((Some("GET-1".to_string()), reactor_thread)));
    assert_eq!(current_request_id(), None);
}

#[test]
fn cancelling_the_deferred_aborts_the_task_and_runs_its_drop_guard_on_the_runtime() {
    let reactor = Reactor::new().unwrap();
    let (d, rx) = spawn_pending_with_guard();
    d.cancel();
    let failure = d.take_result().unwrap().unwrap_err();
    assert!(failure.check::<CancelledError>());
    let dropped_on = rx.recv_timeout(secs(30)).expect("the future was dropped");
    assert_eq!(dropped_on, "weft-tokio");
    drop(reactor);
}

#[test]
fn a_panic_in_the_future_becomes_a_panic_error() {
    let reactor = Reactor::new().unwrap();
    let d: Deferred<u8> = spawn(async { panic!("boom in tokio") });
    let failure = outcome(&reactor, d).unwrap_err();
    assert!(failure.check::<PanicError>(), "{failure}");
    assert!(failure.to_string().contains("boom in tokio"));
}

#[test]
fn spawn_fallible_sends_an_err_down_the_errback_chain_with_the_callers_location() {
    let reactor = Reactor::new().unwrap();
    let line = line!() + 1;
    let d = spawn_fallible(async { Err::<u8, _>(std::io::Error::other("upstream down")) });
    let failure = outcome(&reactor, d).unwrap_err();
    assert_eq!(failure.downcast_ref::<std::io::Error>().unwrap().to_string(), "upstream down");
    assert_eq!(failure.location().line(), line);
}

#[test]
fn spawn_on_a_thread_without_a_reactor_fails_with_no_reactor_error() {
    let failed = std::thread::spawn(|| {
        let d = spawn(async { 1 });
        d.take_result().unwrap().unwrap_err().check::<NoReactorError>()
    });
    assert!(failed.join().unwrap());
}

#[test]
fn dropping_the_reactor_aborts_its_tasks() {
    let reactor = Reactor::new().unwrap();
    let (d, rx) = spawn_pending_with_guard();
    drop(reactor);
    assert_eq!(rx.recv_timeout(secs(30)).expect("the future was dropped"), "weft-tokio");
    assert!(!d.is_called(), "the Deferred is dropped unfired, as the reactor's timers are");
}

#[test]
fn a_deferred_awaited_by_a_tokio_task_as_a_send_future_gets_its_value() {
    let reactor = Reactor::new().unwrap();
    let source: Deferred<u32> = Deferred::new();
    let fut = source.clone().into_send_future();
    let d = spawn(async move { fut.await.map(|v| v + 1).map_err(|f| f.to_string()) });
    let s = source.clone();
    reactor.call_later(std::time::Duration::from_millis(1), move || s.callback(41).unwrap());
    assert_eq!(outcome(&reactor, d).unwrap(), Ok(42));
}

#[test]
fn a_failure_reaches_the_send_future_as_a_send_failure() {
    let reactor = Reactor::new().unwrap();
    let source: Deferred<u32> = Deferred::new();
    let fut = source.clone().into_send_future();
    let waiter = std::thread::spawn(move || futures::executor::block_on(fut));
    source.cancel();
    let failure = waiter.join().unwrap().unwrap_err();
    assert!(failure.is_cancelled());
    assert!(failure.message().contains("cancel"), "{failure}");
    drop(reactor);
}

#[test]
fn dropping_the_send_future_on_another_thread_cancels_the_deferred_on_the_reactor_thread() {
    let reactor = Reactor::new().unwrap();
    let cancelled_on = Rc::new(RefCell::new(None));
    let c = cancelled_on.clone();
    let source: Deferred<u32> =
        Deferred::with_canceller(move |_| *c.borrow_mut() = Some(std::thread::current().id()));
    let fut = source.clone().into_send_future();
    std::thread::spawn(move || drop(fut)).join().unwrap();
    let c = cancelled_on.clone();
    run_until(&reactor, secs(30), move || c.borrow().is_some());
    assert_eq!(*cancelled_on.borrow(), Some(std::thread::current().id()));
    // The CancelledError went down the chain, to the dropped future's slot.
    assert!(source.is_called());
}

#[test]
fn futures_of_a_runtime_that_shuts_down_fail_with_runtime_shutdown_error() {
    run_in_child("tokio_bridge::child_runtime_shutdown");
}

/// Alone in a process: `use_runtime` changes the runtime for the whole process.
#[test]
#[ignore = "run by futures_of_a_runtime_that_shuts_down_fail_with_runtime_shutdown_error"]
fn child_runtime_shutdown() {
    if !in_child("tokio_bridge::child_runtime_shutdown") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
    use_runtime(rt.handle().clone());
    let reactor = Reactor::new().unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let d = spawn(async move {
        started_tx.send(()).unwrap();
        std::future::pending::<()>().await;
    });
    started_rx.recv_timeout(secs(30)).expect("the future started");
    drop(rt);
    let failure = outcome(&reactor, d).unwrap_err();
    assert!(failure.check::<RuntimeShutdownError>(), "{failure}");
}
