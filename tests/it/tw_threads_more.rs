//! Twisted's thread tests ported to weft's `defer_to_thread`, `call_from_thread` and
//! pool: `test_threads.py` (ReactorThreadsTests, DeferredResultTests,
//! DeferToThreadPoolTests), `internet/test/test_threads.py` (ThreadTestsBuilder), and
//! `test_threadpool.py` where it maps onto the reactor's pool (its size, threads and busy
//! counts come from `ReactorHandle::metrics`).
//!
//! `blockingCallFromThread` is `ThreadHandle::blocking_call_from_thread`. Not ported:
//! `callMultipleInThread`, a caller-supplied thread pool (weft has neither; weft's
//! `isInIOThread` is `ThreadHandle::is_in_io_thread`, tested in `threads.rs`), the startup subprocess test, and `ThreadPool`'s own attributes, pickling
//! and log-context tracker (the pool is not public).
//!
//! Every wait is bounded (the reactor by a guard timer, channels by `recv_timeout`), and
//! nothing depends on how threads are scheduled.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use weft::reactor::{BlockingCallError, CancelToken, Reactor};
use weft::{CallbackResult, Deferred, Failure};

use crate::support::{
    failure_result_of, home, home_reactor, ms, run_bounded, run_until, secs, success_result_of, GenericError,
};

/// Runs `reactor` until `d` has a result (bounded), and returns `d`.
#[track_caller]
fn run_until_fired<T: 'static>(reactor: &Reactor, d: Deferred<T>) -> Deferred<T> {
    let fired = d.clone();
    run_until(reactor, secs(30), move || fired.has_result());
    d
}

// ---- the pool ----

/// TW test_threads.py ReactorThreadsTests.test_suggestThreadPoolSize and
/// internet/test/test_threads.py ThreadTestsBuilder.test_suggestThreadPoolSize: the
/// pool's maximum size follows what was asked for.
#[test]
fn the_pool_size_can_be_set() {
    let reactor = Reactor::new().unwrap();
    for size in [34, 4, 17] {
        reactor.set_thread_pool_size(size);
        assert_eq!(reactor.metrics().thread_pool.max_threads, size);
    }
}

/// TW internet/test/test_threads.py ThreadTestsBuilder.test_getThreadPool and
/// test_stopThreadPool: the pool runs while the reactor runs and is stopped, its
/// threads gone, before `run()` returns.
#[test]
fn the_pool_is_stopped_before_run_returns() {
    let reactor = Reactor::new().unwrap();
    let seen = Rc::new(Cell::new(None));
    let (s, h) = (seen.clone(), reactor.handle());
    let job: Deferred<()> = reactor.defer_to_thread(|| ());
    job.add_callback(move |()| {
        s.set(Some(h.metrics().thread_pool.threads));
        h.stop();
    });
    run_bounded(&reactor, secs(30));
    assert!(seen.get().is_some_and(|n| n > 0), "the pool ran the job: {:?}", seen.get());
    assert_eq!(reactor.metrics().thread_pool.threads, 0);
}

/// TW test_threads.py ReactorThreadsTests.test_callInThread: work handed to the pool
/// runs on another thread than the reactor's.
#[test]
fn pool_work_runs_off_the_reactor_thread() {
    let reactor = Reactor::new().unwrap();
    let d: Deferred<ThreadId> = reactor.defer_to_thread(|| std::thread::current().id());
    let ran_on = success_result_of(&run_until_fired(&reactor, d));
    assert_ne!(ran_on, std::thread::current().id());
}

/// TW test_threads.py DeferredResultTests.test_deferredResult and
/// DeferToThreadPoolTests.test_deferredResult: the Deferred fires with what the
/// function returned (the arguments are the closure's captures).
#[test]
fn defer_to_thread_fires_with_the_result() {
    let reactor = Reactor::new().unwrap();
    let (x, y) = (3, 4);
    let d: Deferred<i32> = reactor.defer_to_thread(move || x + y);
    assert_eq!(success_result_of(&run_until_fired(&reactor, d)), 7);
}

/// TW test_threads.py DeferredResultTests.test_deferredFailure and
/// DeferToThreadPoolTests.test_deferredFailure: a function that fails fails the
/// Deferred with its error.
#[test]
fn defer_to_thread_fails_with_the_functions_error() {
    let reactor = Reactor::new().unwrap();
    let d: Deferred<()> =
        reactor.defer_to_thread_with_token(|_: &CancelToken| Err(GenericError("new error")));
    let f = failure_result_of::<GenericError, _>(&run_until_fired(&reactor, d));
    assert_eq!(f.downcast_ref::<GenericError>(), Some(&GenericError("new error")));
}

/// TW test_threads.py DeferredResultTests.test_deferredFailureAfterSuccess: a job that
/// succeeds, then a callback that hands the chain a second job that fails: the chain
/// ends with the second job's failure.
#[test]
fn a_failing_job_after_a_successful_one_fails_the_chain() {
    let reactor = Reactor::new().unwrap();
    let h = reactor.handle();
    let d: Deferred<()> = reactor.defer_to_thread(|| ());
    d.add_callback(move |()| {
        h.defer_to_thread_with_token(|_: &CancelToken| {
            let zero = std::hint::black_box(0);
            1u32.checked_div(zero).map(drop).ok_or(GenericError("division by zero"))
        })
    });
    failure_result_of::<GenericError, _>(&run_until_fired(&reactor, d));
}

// ---- call_from_thread ----

/// TW test_threads.py ReactorThreadsTests.test_callFromThread: a call queued from the
/// reactor thread and one queued from a pool thread both run.
#[test]
fn calls_from_the_reactor_thread_and_from_a_pool_thread_both_run() {
    let reactor = Reactor::new().unwrap();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let th = reactor.thread_handle();
    let (r, th2) = (ran.clone(), th.clone());
    let _job: Deferred<()> = reactor.defer_to_thread(move || {
        th2.call_from_thread(move || r.lock().unwrap().push("from the pool")).unwrap();
    });
    let r = ran.clone();
    th.call_from_thread(move || r.lock().unwrap().push("from the reactor thread")).unwrap();
    let r = ran.clone();
    run_until(&reactor, secs(30), move || r.lock().unwrap().len() == 2);
    let mut ran = ran.lock().unwrap().clone();
    ran.sort_unstable();
    assert_eq!(ran, ["from the pool", "from the reactor thread"]);
}

/// TW test_threads.py ReactorThreadsTests.test_wakerOverflow: a hundred thousand calls
/// queued from another thread are all accepted, and all run.
#[test]
fn a_hundred_thousand_calls_from_a_thread_all_run() {
    const CALLS: usize = 100_000;
    let reactor = Reactor::new().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let (r, th) = (ran.clone(), reactor.thread_handle());
    let refused: Deferred<usize> = reactor.defer_to_thread(move || {
        (0..CALLS)
            .filter(|_| {
                let r = r.clone();
                th.call_from_thread(move || {
                    r.fetch_add(1, Ordering::Relaxed);
                })
                .is_err()
            })
            .count()
    });
    let r = ran.clone();
    run_until(&reactor, secs(60), move || r.load(Ordering::Relaxed) == CALLS);
    assert_eq!(success_result_of(&refused), 0);
    assert_eq!(ran.load(Ordering::Relaxed), CALLS);
}

/// TW internet/test/test_threads.py ThreadTestsBuilder.test_callFromThread: a call
/// queued from a pool thread runs on the reactor's thread.
#[test]
fn a_call_from_a_pool_thread_runs_on_the_reactor_thread() {
    let reactor = Reactor::new().unwrap();
    let ran_on = Arc::new(Mutex::new(None));
    let (r, th) = (ran_on.clone(), reactor.thread_handle());
    let h = reactor.handle();
    reactor.call_later(Duration::ZERO, move || {
        let _job: Deferred<()> = h.defer_to_thread(move || {
            let stop = th.clone();
            th.call_from_thread(move || {
                *r.lock().unwrap() = Some(std::thread::current().id());
                let _ = stop.stop();
            })
            .unwrap();
        });
    });
    run_bounded(&reactor, secs(30));
    assert_eq!(*ran_on.lock().unwrap(), Some(std::thread::current().id()));
}

/// TW internet/test/test_threads.py ThreadTestsBuilder.test_delayedCallFromThread: a
/// call queued with `call_from_thread` from a timer on the reactor thread runs on the
/// next turn: the reactor does not sleep until some later timer (here the 60 s guard).
#[test]
fn a_call_from_thread_queued_by_a_timer_runs_at_once() {
    let reactor = Reactor::new().unwrap();
    let th = reactor.thread_handle();
    reactor.call_later(Duration::ZERO, move || {
        let stop = th.clone();
        th.call_from_thread(move || stop.stop().unwrap()).unwrap();
    });
    run_bounded(&reactor, secs(60));
}

// ---- blockingCallFromThread ----

/// What a thread outside the reactor gets back: the value, or the failure's text.
type Blocking<T> = Result<T, BlockingCallError>;

/// Runs `f` with `blocking_call_from_thread` from a pool thread, the reactor running
/// meanwhile, and returns what that thread got.
fn blocking_call_from_a_pool_thread<T, F, R>(f: F) -> Blocking<T>
where
    T: Send + std::fmt::Debug + 'static,
    F: FnOnce() -> R + Send + 'static,
    R: CallbackResult<T>,
{
    let reactor = home_reactor();
    let th = reactor.thread_handle();
    let d: Deferred<Blocking<T>> = reactor.defer_to_thread(move || th.blocking_call_from_thread(f));
    success_result_of(&run_until_fired(&reactor, d))
}

/// The failure's text in a `BlockingCallError::Failed`.
#[track_caller]
fn failed_text<T: std::fmt::Debug>(got: &Blocking<T>) -> &str {
    match got {
        Err(BlockingCallError::Failed(text)) => text,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// TW test_threads.py ReactorThreadsTests.test_blockingCallFromThread: a Deferred that
/// has fired already.
#[test]
fn blocking_call_gets_a_fired_deferreds_value() {
    assert_eq!(blocking_call_from_a_pool_thread(|| weft::succeed("foo")), Ok("foo"));
}

/// TW test_threads.py ReactorThreadsTests.test_asyncBlockingCallFromThread: a Deferred
/// that fires later, from a reactor timer.
#[test]
fn blocking_call_waits_for_a_later_value() {
    let got = blocking_call_from_a_pool_thread(|| {
        let d = Deferred::new();
        let target = d.clone();
        home().call_later(ms(100), move || target.callback("egg"));
        d
    });
    assert_eq!(got, Ok("egg"));
}

/// TW test_threads.py ReactorThreadsTests.test_errorBlockingCallFromThread: a Deferred
/// that has failed already.
#[test]
fn blocking_call_gets_a_failed_deferreds_error() {
    let got: Blocking<u8> =
        blocking_call_from_a_pool_thread(|| weft::fail(Failure::new(GenericError("bar"))));
    assert!(failed_text(&got).starts_with("generic error: bar"), "{got:?}");
}

/// TW test_threads.py ReactorThreadsTests.test_asyncErrorBlockingCallFromThread: a
/// Deferred that fails later.
#[test]
fn blocking_call_waits_for_a_later_error() {
    let got: Blocking<u8> = blocking_call_from_a_pool_thread(|| {
        let d = Deferred::new();
        let target = d.clone();
        home().call_later(ms(100), move || target.errback(Failure::new(GenericError("spam"))));
        d
    });
    assert!(failed_text(&got).starts_with("generic error: spam"), "{got:?}");
}

/// A panic in the call comes back as a failure; the reactor goes on.
#[test]
fn blocking_call_reports_a_panic_as_a_failure() {
    let got: Blocking<u8> = blocking_call_from_a_pool_thread(|| -> u8 { panic!("boom in the call") });
    assert!(failed_text(&got).contains("boom in the call"), "{got:?}");
}

/// On the reactor's own thread the call would wait for itself: an error at once, and
/// `f` does not run.
#[test]
fn blocking_call_on_the_reactor_thread_is_refused() {
    let reactor = weft::Reactor::new().unwrap();
    let ran = Arc::new(Mutex::new(false));
    let r = ran.clone();
    let got = reactor.thread_handle().blocking_call_from_thread(move || *r.lock().unwrap() = true);
    assert_eq!(got, Err(BlockingCallError::OnReactorThread));
    assert!(!*ran.lock().unwrap());
}

/// A reactor dropped with the call still queued (or its Deferred pending) does not
/// leave the caller waiting forever.
#[test]
fn blocking_call_to_a_reactor_dropped_meanwhile_is_dropped() {
    let reactor = weft::Reactor::new().unwrap();
    let th = reactor.thread_handle();
    let (queued_tx, queued) = mpsc::channel();
    let caller = std::thread::spawn(move || {
        queued_tx.send(()).unwrap();
        th.blocking_call_from_thread::<u8, _, _>(Deferred::<u8>::new)
    });
    queued.recv_timeout(secs(10)).unwrap();
    // Run the queued call (which returns a Deferred nobody fires) if it arrived, then
    // drop the reactor: either way the caller hears of it.
    let _ = reactor.iterate(Some(Duration::ZERO));
    drop(reactor);
    assert_eq!(caller.join().unwrap(), Err(BlockingCallError::Dropped));
}

// ---- the pool (test_threadpool.py) ----

/// A gate pool jobs wait at until it opens (each wait bounded by 30 s).
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    /// Waits until the gate opens; false if 30 s passed first.
    fn wait(&self) -> bool {
        let (open, cv) = &*self.0;
        let guard = cv.wait_timeout_while(open.lock().unwrap(), secs(30), |open| !*open).unwrap();
        *guard.0
    }
}

/// TW test_threadpool.py ThreadPoolTests.test_start, MemoryBackedTests.test_workBeforeStarting
/// and test_tooMuchWorkBeforeStarting: the pool starts no thread before there is work,
/// then one per job waiting for a thread, up to its maximum.
#[test]
fn the_pool_starts_a_thread_per_waiting_job_up_to_its_maximum() {
    for (jobs, threads) in [(5, 5), (50, 10)] {
        let reactor = Reactor::new().unwrap();
        reactor.set_thread_pool_size(10);
        assert_eq!(reactor.metrics().thread_pool.threads, 0);
        let gate = Gate::default();
        let done: Vec<Deferred<bool>> = (0..jobs)
            .map(|_| {
                let g = gate.clone();
                reactor.defer_to_thread(move || g.wait())
            })
            .collect();
        assert_eq!(reactor.metrics().thread_pool.threads, threads, "{jobs} jobs");
        gate.open();
        let all = done.clone();
        run_until(&reactor, secs(30), move || all.iter().all(Deferred::has_result));
        assert!(done.iter().all(|d| success_result_of(d)));
    }
}

/// TW test_threadpool.py ThreadPoolTests.test_existingWork: work handed over before the
/// reactor runs is done, and its Deferred fires once the reactor runs.
#[test]
fn work_handed_over_before_the_reactor_runs_is_done() {
    let reactor = Reactor::new().unwrap();
    let d: Deferred<&str> = reactor.defer_to_thread(|| "done");
    assert!(!d.has_result());
    assert_eq!(success_result_of(&run_until_fired(&reactor, d)), "done");
}

/// TW test_threadpool.py ThreadPoolTests.test_threadCreationArguments and
/// test_threadCreationArgumentsCallInThreadWithCallback: once a job is done, neither
/// the pool nor its thread keeps what the job captured or returned.
#[test]
fn a_finished_job_keeps_nothing_it_was_given() {
    let reactor = Reactor::new().unwrap();
    let unique = Arc::new("argument");
    let given = unique.clone();
    let result: Deferred<Arc<&str>> = reactor.defer_to_thread(move || {
        assert_eq!(*given, "argument");
        Arc::new("result")
    });
    let result = success_result_of(&run_until_fired(&reactor, result));
    assert_eq!(Arc::strong_count(&unique), 1, "the job's captures were dropped");
    assert_eq!(Arc::strong_count(&result), 1, "the result is only the caller's");
}

/// TW test_threadpool.py ThreadPoolTests.test_callbackThread: Twisted calls `onResult`
/// on the pool thread that ran the function; weft runs the function on a pool thread and
/// the Deferred's callbacks on the reactor thread (documented on
/// `ReactorHandle::defer_to_thread`: it "fires the returned Deferred, on the reactor
/// thread"; a `Deferred` is not `Send`).
#[test]
fn the_callbacks_of_a_job_run_on_the_reactor_thread() {
    let reactor = Reactor::new().unwrap();
    let d: Deferred<ThreadId> = reactor.defer_to_thread(|| std::thread::current().id());
    let seen: Deferred<(ThreadId, ThreadId)> = d.map(|job| (job, std::thread::current().id()));
    let (job, callback) = success_result_of(&run_until_fired(&reactor, seen));
    assert_ne!(job, callback);
    assert_eq!(callback, std::thread::current().id());
}

/// TW test_threadpool.py ThreadPoolTests.test_workerStateTransition: a thread is busy
/// while it runs a job and idle once it finished.
#[test]
fn a_pool_thread_is_busy_during_a_job_and_idle_after() {
    let reactor = Reactor::new().unwrap();
    let gate = Gate::default();
    let (started_tx, started) = mpsc::channel();
    let g = gate.clone();
    let d: Deferred<bool> = reactor.defer_to_thread(move || {
        started_tx.send(()).unwrap();
        g.wait()
    });
    started.recv_timeout(secs(30)).expect("the job started");
    let pool = reactor.metrics().thread_pool;
    assert_eq!((pool.threads, pool.busy), (1, 1));
    gate.open();
    let (h, idle) = (reactor.handle(), Rc::new(Cell::new(None)));
    let i = idle.clone();
    run_until(&reactor, secs(30), move || {
        let pool = h.metrics().thread_pool;
        i.set(Some(pool.threads));
        pool.busy == 0
    });
    assert!(success_result_of(&d));
    assert_eq!(idle.get(), Some(1), "the thread stayed, idle, until the reactor stopped");
}

/// TW test_threadpool.py RaceConditionTests.test_synchronization: with room in the pool,
/// a job that releases three jobs blocked waiting for it runs at once, and they finish.
#[test]
fn a_job_can_release_jobs_blocked_on_it() {
    let reactor = Reactor::new().unwrap();
    reactor.set_thread_pool_size(10);
    let gate = Gate::default();
    let waiters: Vec<Deferred<bool>> = (0..3)
        .map(|_| {
            let g = gate.clone();
            reactor.defer_to_thread(move || g.wait())
        })
        .collect();
    let g = gate.clone();
    let _opener: Deferred<()> = reactor.defer_to_thread(move || g.open());
    let all = waiters.clone();
    run_until(&reactor, secs(30), move || all.iter().all(Deferred::has_result));
    assert!(waiters.iter().all(|d| success_result_of(d)), "a waiter timed out: the opener did not run");
}
