//! Debug-mode reports (`set_debugging`): an errback that swallows its invoker's cancel
//! (the chain then succeeds), and a callback that leaks a log context, each named by
//! file:line. Off, nothing is reported.

use weft::future::ensure_deferred;
use weft::logcontext::{current_request_id, set_current_context, LoggingContext};
use weft::{race, CancelledError, Deferred, Failure};

use crate::support::{debugging, logs};

/// This thread's warnings since `logs::capture()`.
fn warnings() -> Vec<String> {
    logs::records().into_iter().filter(|(l, _)| *l == log::Level::Warn).map(|(_, m)| m).collect()
}

/// A request that waits on `inner`, with a catch-all errback added at the returned line.
fn catch_all_request(inner: &Deferred<u8>) -> (Deferred<u8>, u32) {
    let request: Deferred<u8> = Deferred::new();
    let i = inner.clone();
    request.add_callback(move |_| i);
    request.add_errback(|_any: Failure| 0u8);
    let line = line!() - 1;
    request.callback(0).unwrap();
    (request, line)
}

#[test]
fn swallowed_cancel_names_the_errback_and_the_cancel() {
    let _on = debugging(true);
    logs::capture();
    let (request, errback_line) = catch_all_request(&Deferred::new());
    request.cancel();
    let cancel_line = line!() - 1;
    assert_eq!(request.take_result().unwrap().unwrap(), 0);
    let w = warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains(&format!("errback added at tests/it/cancel_reports.rs:{errback_line}")),
        "{}",
        w[0]
    );
    assert!(w[0].contains(&format!("cancel_reports.rs:{cancel_line}")), "{}", w[0]);
}

#[test]
fn nothing_is_reported_without_debugging() {
    let _off = debugging(false);
    logs::capture();
    let (request, _) = catch_all_request(&Deferred::new());
    request.cancel();
    assert_eq!(request.take_result().unwrap().unwrap(), 0);
    assert!(warnings().is_empty(), "{:?}", warnings());
}

/// An errback that lets the `CancelledError` through (Synapse's "Good" pattern) is fine.
#[test]
fn an_errback_that_lets_the_cancel_through_is_not_reported() {
    let _on = debugging(true);
    logs::capture();
    let request: Deferred<u8> = Deferred::new();
    request.add_errback(|f: Failure| -> Result<u8, Failure> {
        if f.check::<CancelledError>() {
            return Err(f);
        }
        Ok(0)
    });
    request.cancel();
    assert!(request.take_result().unwrap().is_err());
    assert!(warnings().is_empty(), "{:?}", warnings());
}

/// A child cancelled by someone else is the request's own business to recover from.
#[test]
fn recovering_from_someone_elses_cancel_is_not_reported() {
    let _on = debugging(true);
    logs::capture();
    let child: Deferred<u8> = Deferred::new();
    let (request, _) = catch_all_request(&child);
    child.cancel(); // not the request's invoker
    assert_eq!(request.take_result().unwrap().unwrap(), 0);
    assert!(warnings().is_empty(), "{:?}", warnings());
}

/// If a later step fails again, the chain did not succeed: nothing to report.
#[test]
fn a_chain_that_fails_after_the_recovery_is_not_reported() {
    let _on = debugging(true);
    logs::capture();
    let request: Deferred<u8> = Deferred::new();
    request.add_errback(|_any: Failure| 0u8);
    request.add_callback(|_| -> Result<u8, Failure> { Err(Failure::msg("later")) });
    request.cancel();
    assert!(request.take_result().unwrap().is_err());
    assert!(warnings().is_empty(), "{:?}", warnings());
}

/// A `FailureGroup` (a cancelled race) hides the cancel too; the report sees through it.
#[test]
fn swallowed_cancel_inside_a_failure_group_is_reported() {
    let _on = debugging(true);
    logs::capture();
    let r = race(vec![Deferred::<u8>::new(), Deferred::new()]);
    r.add_errback(|_group: Failure| (0usize, 0u8));
    let errback_line = line!() - 1;
    r.cancel();
    assert_eq!(r.take_result().unwrap().unwrap(), (0, 0));
    let w = warnings();
    assert!(w.iter().any(|m| m.contains(&format!("cancel_reports.rs:{errback_line}"))), "{w:?}");
}

/// A callback that makes a context current and returns without restoring it leaks it
/// into whatever runs next; the report names the callback.
#[test]
fn context_leaked_by_a_callback_is_reported_with_its_line() {
    let _on = debugging(true);
    logs::capture();
    let d: Deferred<u8> = Deferred::new();
    d.add_callback(|x| {
        let _previous = set_current_context(LoggingContext::new("leaky"));
        x
    });
    let callback_line = line!() - 4;
    d.callback(1).unwrap();
    assert_eq!(current_request_id().as_deref(), Some("leaky"), "the callback leaked its context");
    set_current_context(LoggingContext::sentinel());
    let w = warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("'leaky'") && w[0].contains(&format!("cancel_reports.rs:{callback_line}")),
        "{}",
        w[0]
    );
}

/// Synapse's `try: await ... except Exception:` in `async` code: a task that catches its
/// own cancel and finishes with a value is reported, naming where it was started and
/// where the cancel came from.
#[test]
fn task_swallowing_its_cancel_is_reported() {
    let _on = debugging(true);
    logs::capture();
    let awaited: Deferred<u8> = Deferred::new();
    let a = awaited.clone();
    let task = ensure_deferred(async move { Ok::<u8, Failure>(a.await.unwrap_or(0)) });
    let spawn_line = line!() - 1;
    task.cancel();
    let cancel_line = line!() - 1;
    assert_eq!(task.take_result().unwrap().unwrap(), 0);
    let w = warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains(&format!("task started at tests/it/cancel_reports.rs:{spawn_line}")), "{}", w[0]);
    assert!(w[0].contains(&format!("cancel_reports.rs:{cancel_line}")), "{}", w[0]);
}

/// A task that lets its cancel through, or recovers from a cancel of something it awaits
/// that someone else started, is not reported.
#[test]
fn task_letting_its_cancel_through_or_recovering_from_a_foreign_one_is_not_reported() {
    let _on = debugging(true);
    logs::capture();
    let awaited: Deferred<u8> = Deferred::new();
    let a = awaited.clone();
    let task = ensure_deferred(async move { a.await });
    task.cancel();
    assert!(task.take_result().unwrap().is_err());

    let awaited: Deferred<u8> = Deferred::new();
    let a = awaited.clone();
    let task = ensure_deferred(async move { Ok::<u8, Failure>(a.await.unwrap_or(0)) });
    awaited.cancel(); // not the task's invoker
    assert_eq!(task.take_result().unwrap().unwrap(), 0);
    assert!(warnings().is_empty(), "{:?}", warnings());
}
