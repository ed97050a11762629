//! `defer_to_thread` as Synapse's `defer_to_threadpool`: the pool thread runs in the
//! caller's log context and its CPU is charged to it, a job's error reaches the errback
//! chain, and a job gets a cancellation token.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use weft::logcontext::{current_context, current_request_id, LoggingContext};
use weft::reactor::{CancelToken, Reactor};
use weft::{CancelledError, Deferred, Failure};

use crate::support::{logs, run_until, secs};

/// Some CPU work that the optimiser cannot remove.
fn burn_cpu() -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..2_000_000u64 {
        x = std::hint::black_box(x.rotate_left(5) ^ i).wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    x
}

/// What the job saw on the pool thread.
#[derive(Debug)]
struct Seen {
    request_id: Option<String>,
    log_lines: Vec<String>,
    cpu_so_far: Duration,
}

/// SY synapse/logging/context.py `defer_to_threadpool`: the job runs in the caller's
/// log context (by name), its log records carry the request id, and the thread CPU it
/// used and the database transaction it recorded are charged to the caller's context
/// on the reactor thread. Before, the job ran in no context and nothing was charged.
#[test]
fn the_pool_thread_runs_in_the_callers_context_and_charges_it() {
    let reactor = Reactor::new().unwrap();
    let request = LoggingContext::new("GET-9");
    let got: Rc<RefCell<Option<Seen>>> = Rc::new(RefCell::new(None));
    let seen_in_callback = Rc::new(RefCell::new(None));
    {
        let _in_request = request.enter();
        let (g, s) = (got.clone(), seen_in_callback.clone());
        let _delivered: Deferred<()> = reactor
            .defer_to_thread(|| {
                logs::capture();
                log::info!("reading from the database");
                let _ = burn_cpu();
                let ctx = current_context();
                ctx.add_database_transaction(Duration::from_millis(5));
                Seen {
                    request_id: current_request_id(),
                    log_lines: logs::records().into_iter().map(|(_, m)| m).collect(),
                    cpu_so_far: ctx.stats().cpu_time,
                }
            })
            .map(move |seen| {
                *s.borrow_mut() = current_request_id();
                *g.borrow_mut() = Some(seen);
            });
    }
    let g = got.clone();
    run_until(&reactor, secs(10), move || g.borrow().is_some());
    let seen = got.borrow_mut().take().unwrap();
    assert_eq!(seen.request_id.as_deref(), Some("GET-9"));
    assert_eq!(seen.log_lines, ["[GET-9] reading from the database"]);
    assert_eq!(
        seen_in_callback.borrow().as_deref(),
        Some("GET-9"),
        "the callback runs in the caller's context"
    );
    let stats = request.stats();
    assert!(seen.cpu_so_far > Duration::ZERO);
    assert!(stats.cpu_time >= seen.cpu_so_far, "{stats:?} vs {:?} measured in the job", seen.cpu_so_far);
    assert_eq!(stats.db_txn_count, 1);
    assert_eq!(stats.db_txn_duration, Duration::from_millis(5));
}

/// A job's error reaches the errback chain as a Failure holding that error, naming the
/// line that deferred the job; a job deferred from no context runs in none.
#[test]
fn a_jobs_error_reaches_the_errback_chain() {
    let reactor = Reactor::new().unwrap();
    let d: Deferred<u8> = reactor.defer_to_thread_with_token(|_: &CancelToken| {
        assert_eq!(current_request_id(), None);
        Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "disk says no"))
    });
    let line = line!() - 4;
    let boxed: Deferred<u8> = reactor.defer_to_thread_with_token(|_: &CancelToken| Err("plain message"));
    let got = Rc::new(RefCell::new(Vec::new()));
    for d in [&d, &boxed] {
        let g = got.clone();
        d.add_errback(move |f: Failure| -> Result<u8, Failure> {
            g.borrow_mut().push(f);
            Ok(0)
        });
    }
    let g = got.clone();
    run_until(&reactor, secs(10), move || g.borrow().len() == 2);
    let got = got.borrow();
    let io = got.iter().find_map(|f| f.downcast_ref::<std::io::Error>()).expect("the io::Error itself");
    assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
    let f = got.iter().find(|f| f.is::<std::io::Error>()).unwrap();
    assert_eq!((f.location().file(), f.location().line()), (file!(), line));
    assert!(got.iter().any(|f| f.to_string().starts_with("plain message")), "{got:?}");
}

/// A job that says when it started, spins until its token turns (bounded by a generous
/// deadline), and says whether it saw the token turn.
fn cooperative_job(reactor: &Reactor) -> (Deferred<()>, mpsc::Receiver<()>, mpsc::Receiver<bool>) {
    let (started_tx, started) = mpsc::channel();
    let (saw_tx, saw) = mpsc::channel();
    let d = reactor.defer_to_thread_with_token(move |token: &CancelToken| {
        started_tx.send(()).unwrap();
        let deadline = Instant::now() + secs(30);
        while !token.is_cancelled() && Instant::now() < deadline {
            std::thread::yield_now();
        }
        saw_tx.send(token.is_cancelled()).unwrap();
        Err("stopped early")
    });
    (d, started, saw)
}

/// A running job sees its token turn true when its Deferred is cancelled, and can stop
/// early; the Deferred has failed with `CancelledError` at once.
#[test]
fn a_running_job_sees_the_cancel_through_its_token() {
    let reactor = Reactor::new().unwrap();
    let (d, started, saw) = cooperative_job(&reactor);
    started.recv_timeout(secs(10)).expect("the job started");
    d.cancel();
    assert!(d.take_result().unwrap().unwrap_err().check::<CancelledError>());
    assert_eq!(saw.recv_timeout(secs(10)), Ok(true), "the job saw its token turn");
}

/// Stopping the pool (here by dropping the reactor) turns the tokens of running jobs,
/// so shutdown does not wait for a cooperative job to run to its end.
#[test]
fn stopping_the_pool_turns_the_running_jobs_tokens() {
    let reactor = Reactor::new().unwrap();
    let (_d, started, saw) = cooperative_job(&reactor);
    started.recv_timeout(secs(10)).expect("the job started");
    drop(reactor);
    assert_eq!(saw.try_recv(), Ok(true), "the job stopped because of its token, before the drop returned");
}

/// After a cancel, a job that stops as its token asked (with an error) is not reported:
/// it did what it was told. A job that still brings a value goes to the lost-result
/// guard, whose warning names the line that called `defer_to_thread` (not weft's).
/// One pool thread, so the jobs and their completions come in order, and a last job's
/// callback says when the earlier completions have been handled.
#[test]
fn after_a_cancel_a_stopped_job_is_quiet_and_a_late_value_is_reported_at_the_callers_line() {
    logs::capture();
    let reactor = Reactor::new().unwrap();
    reactor.set_thread_pool_size(1);
    let (stopped, started, saw) = cooperative_job(&reactor);
    started.recv_timeout(secs(10)).expect("the job started");
    stopped.cancel();
    assert_eq!(saw.recv_timeout(secs(10)), Ok(true));
    let (go_tx, go) = mpsc::channel::<()>();
    let (running_tx, running) = mpsc::channel::<()>();
    let late = reactor.defer_to_thread(move || {
        running_tx.send(()).unwrap();
        go.recv_timeout(secs(30)).unwrap();
        7u32
    });
    let line = line!() - 5;
    running.recv_timeout(secs(10)).expect("the second job started");
    late.cancel();
    go_tx.send(()).unwrap();
    let done = Rc::new(RefCell::new(false));
    let d = done.clone();
    reactor.defer_to_thread(|| ()).add_callback(move |()| *d.borrow_mut() = true);
    run_until(&reactor, secs(10), move || *done.borrow());
    let warnings: Vec<String> =
        logs::records().into_iter().filter(|(l, _)| *l <= log::Level::Warn).map(|(_, m)| m).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("lost result: a value of type u32"), "{}", warnings[0]);
    assert!(warnings[0].contains(&format!("created at tests/it/threads.rs:{line}:")), "{}", warnings[0]);
    let _ = (stopped.take_result(), late.take_result());
}

/// `is_in_io_thread` is true on the reactor's thread only (Twisted's `isInIOThread`).
#[test]
fn is_in_io_thread_only_on_the_reactors_thread() {
    let reactor = Reactor::new().unwrap();
    let handle = reactor.thread_handle();
    assert!(handle.is_in_io_thread());
    let elsewhere = std::thread::spawn(move || handle.is_in_io_thread()).join().unwrap();
    assert!(!elsewhere);
}
