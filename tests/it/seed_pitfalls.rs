//! The cancellation pitfalls of the seeds (Synapse's "Cancellation" and "Log contexts"
//! docs, the asyncio cancellation Q&As), one test each, named after the pitfall: each
//! shows weft preventing it, or reporting it (a warning, an outcome, a trace) where it
//! cannot be prevented.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use weft::future::ensure_deferred;
use weft::logcontext::{LoggingContext, PreserveLoggingContext};
use weft::{
    delay_cancellation, gather_results, reverse_shield, CancelOutcome, CancelledError, Deferred,
    DeferredQueue, Failure, ObservableDeferred,
};

use crate::support::{debugging, failure_result_of, logs, success_result_of};

/// This thread's warnings since `logs::capture()`.
fn warnings() -> Vec<String> {
    logs::records().into_iter().filter(|(l, _)| *l == log::Level::Warn).map(|(_, m)| m).collect()
}

/// SY "Code that shares the same Deferred, which may be cancelled, between multiple
/// requests": one waiter's cancel must not fail the others. An observer is a shield:
/// the cancel stops there and says so.
#[test]
fn a_shared_deferred_cancelled_by_one_waiter() {
    let room: Deferred<&str> = Deferred::new();
    let shared = ObservableDeferred::new(room.clone(), false);
    let request_1 = shared.observe();
    let request_2 = shared.observe();
    assert_eq!(request_1.cancel(), CancelOutcome::Shielded);
    failure_result_of::<CancelledError, _>(&request_1);
    assert!(!room.is_called(), "the shared work was not cancelled");
    room.callback("joined").unwrap();
    assert_eq!(success_result_of(&request_2), "joined");
}

/// SY "try-except blocks which swallow CancelledErrors" (`except Exception:`): reported
/// in debug mode, naming the errback and where the cancel started.
#[test]
fn cancelled_error_swallowed_by_a_catch_all_errback() {
    let _on = debugging(true);
    logs::capture();
    let request: Deferred<u32> = Deferred::new();
    request.add_errback(|_any: Failure| 0u32); // "except Exception: return default"
    let errback_line = line!() - 1;
    request.cancel();
    let cancel_line = line!() - 1;
    assert_eq!(success_result_of(&request), 0);
    let w = warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains(&format!("seed_pitfalls.rs:{errback_line}")), "names the errback: {}", w[0]);
    assert!(w[0].contains(&format!("seed_pitfalls.rs:{cancel_line}")), "names the cancel: {}", w[0]);
}

/// SY "`FirstError(CancelledError)` gets swallowed here": the report sees through the
/// `FirstError`, and the invoker's outcome is still `Cancelled`.
#[test]
fn a_first_error_hiding_a_cancel() {
    let _on = debugging(true);
    logs::capture();
    let all = gather_results(vec![Deferred::<u8>::new(), Deferred::new()], true);
    let work = all.map(|v| v.len());
    work.add_errback(|_hidden: Failure| 0usize);
    let errback_line = line!() - 1;
    assert_eq!(work.cancel(), CancelOutcome::Cancelled);
    assert_eq!(success_result_of(&work), 0);
    let w = warnings();
    assert!(
        w.iter().any(|m| m.contains(&format!("seed_pitfalls.rs:{errback_line}")) && m.contains("swallowed")),
        "{w:?}"
    );
}

/// SY "Uncancelled processing ... uses a logging context from cancellable code": the
/// background work outlives the request's context. weft warns, naming the callback that
/// ran in the finished context; waiting for the work with `delay_cancellation` before the
/// request ends is the fix, and then nothing is reported.
#[test]
fn background_work_using_a_finished_log_context() {
    logs::capture();
    let work: Deferred<()> = Deferred::new();
    {
        let _request = LoggingContext::new("request-1").enter();
        work.add_callback(|_| log::info!("done!"));
    } // the request is cancelled and its context finishes, while the work goes on
    let callback_line = line!() - 2;
    work.callback(()).unwrap();
    let w = warnings();
    assert!(
        w.iter()
            .any(|m| m.contains("'request-1'") && m.contains(&format!("seed_pitfalls.rs:{callback_line}"))),
        "{w:?}"
    );

    logs::capture();
    let work: Deferred<()> = Deferred::new();
    let request = LoggingContext::new("request-2");
    let waiter = {
        let _in_request = PreserveLoggingContext::new(request.clone());
        work.add_callback(|_| log::info!("done!"));
        delay_cancellation(&work)
    };
    assert_eq!(waiter.cancel(), CancelOutcome::Delayed, "the cancel waits for the work");
    work.callback(()).unwrap();
    failure_result_of::<CancelledError, _>(&waiter);
    request.finish(); // only now does the request end
    assert!(warnings().is_empty(), "{:?}", warnings());
}

/// asyncio "the wrapping coroutine was cancelled after the coroutine finished, meaning
/// that data is forever lost": a result that races a cancel goes to the lost-result
/// hook (or a warning), and a result that won the race stays (`AlreadyFired`).
#[test]
fn a_result_lost_when_a_cancel_races_it() {
    let fetched: Deferred<String> = Deferred::new();
    let returned = Rc::new(RefCell::new(None));
    let r = returned.clone();
    fetched.on_lost_result(move |row| *r.borrow_mut() = row.ok());
    assert_eq!(fetched.cancel(), CancelOutcome::Cancelled);
    fetched.callback("row 1".to_owned()).unwrap(); // the responder answers just too late
    assert_eq!(returned.borrow().as_deref(), Some("row 1"), "the value is handed back, not dropped");

    let won: Deferred<String> = Deferred::new();
    won.callback("row 2".to_owned()).unwrap();
    assert_eq!(won.cancel(), CancelOutcome::AlreadyFired);
    assert_eq!(success_result_of(&won), "row 2");
}

/// asyncio's queue: a getter woken with an item, then cancelled before it runs, loses
/// the item. In weft the woken getter holds the item; its cancel says `AlreadyFired`, and
/// a cancelled getter is never handed an item (it goes to the next, or stays queued).
#[test]
fn a_woken_queue_waiter_cancelled_and_the_wake_up_lost() {
    let q: DeferredQueue<u32> = DeferredQueue::unbounded();
    let woken = q.get();
    let cancelled_first = q.get();
    let next = q.get();
    assert_eq!(cancelled_first.cancel(), CancelOutcome::Cancelled);
    q.try_put(1).unwrap();
    q.try_put(2).unwrap();
    assert_eq!(woken.cancel(), CancelOutcome::AlreadyFired, "the wake-up came first");
    assert_eq!(success_result_of(&woken), 1);
    assert_eq!(success_result_of(&next), 2, "the cancelled getter was skipped");

    // The same through a task: the task awaiting the getter is cancelled after the
    // wake-up; the item is still delivered to it.
    let g = q.get();
    let task = ensure_deferred(async move { g.await });
    q.try_put(3).unwrap();
    assert_eq!(task.cancel(), CancelOutcome::AlreadyFired);
    assert_eq!(success_result_of(&task), 3);
    assert!(q.is_empty());
}

/// asyncio "How to tell whether the CancelledError is from my own cancel or my child's":
/// `cancelled_by` answers it, `reverse_shield` turns a child's foreign cancel into an
/// ordinary failure, and in debug mode the trace shows the path.
#[test]
fn was_this_cancel_mine_or_my_childs() {
    let _on = debugging(true);
    let child: Deferred<u8> = Deferred::new();
    let seen_by_parent = Rc::new(Cell::new(None));
    let s = seen_by_parent.clone();
    let parent = reverse_shield(child.clone(), |_foreign| Failure::msg("child cancelled by someone else"));
    let p = parent.clone();
    parent.add_errback(move |f: Failure| -> Result<u8, Failure> {
        s.set(Some(f.downcast_ref::<CancelledError>().is_some_and(|c| c.cancelled_by(&p))));
        Err(f)
    });
    child.cancel(); // not mine
    assert_eq!(seen_by_parent.get(), Some(false));
    let f = parent.take_result().unwrap().unwrap_err();
    assert!(!f.check::<CancelledError>(), "a child's cancel is not my CancelledError: {f}");

    let child: Deferred<u8> = Deferred::new();
    let parent = reverse_shield(child.clone(), |_foreign| Failure::msg("child cancelled by someone else"));
    let mine = Rc::new(Cell::new(false));
    let (m, p) = (mine.clone(), parent.clone());
    parent.add_errback(move |f: Failure| -> Result<u8, Failure> {
        m.set(f.downcast_ref::<CancelledError>().is_some_and(|c| c.cancelled_by(&p)));
        Err(f)
    });
    parent.cancel(); // mine
    assert!(mine.get());
    let err = failure_result_of::<CancelledError, _>(&parent);
    let trace = err.downcast_ref::<CancelledError>().unwrap().trace();
    assert!(trace.len() >= 2, "the path from me into my child: {trace:?}");
}
