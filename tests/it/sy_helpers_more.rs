//! More ports of Synapse's tests: `test_async_helpers.py` (the cancellation wrappers,
//! `timeout_deferred` and log contexts, `concurrently_execute`), `test_linearizer.py`
//! and `test_rwlock.py`, beside those in `cancellation.rs`, `async_helpers.rs` and
//! `sync.rs`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use weft::async_helpers::concurrently_execute;
use weft::future::ensure_deferred;
use weft::logcontext::{current_request_id, LoggingContext, PreserveLoggingContext};
use weft::{
    delay_cancellation, stop_cancellation, timeout_deferred, CancelledError, Clock, Deferred, Failure,
    Linearizer, ReadWriteLock, TimeoutError,
};

use crate::async_helpers::TestException;
use crate::support::{failure_result_of, logs, secs};
use crate::sync::start_task;

/// SY test_async_helpers.py CancellationWrapperTests.test_failure (both wrappers): the
/// wrapper gets the failure, and the original's failure is consumed (nothing reported).
#[test]
fn the_cancellation_wrappers_pass_a_failure_on() {
    for delay in [false, true] {
        let ((), errors) = logs::errors_during(|| {
            let deferred: Deferred<String> = Deferred::new();
            let wrapper = if delay { delay_cancellation(&deferred) } else { stop_cancellation(&deferred) };
            deferred.errback(Failure::msg("abc")).unwrap();
            assert!(wrapper.is_called());
            assert_eq!(wrapper.take_result().unwrap().unwrap_err().as_error().to_string(), "abc");
            drop(deferred);
        });
        assert!(errors.is_empty(), "delay: {delay}: {errors:?}");
    }
}

/// SY test_async_helpers.py DelayCancellationTests.test_coroutine_cancellation: the
/// cancel does not reach the task; the `CancelledError` comes once the task has finished,
/// and the task's own failure is consumed.
#[test]
fn delay_cancellation_of_a_task_waits_for_it() {
    let blocking: Deferred<()> = Deferred::new();
    let completion: Deferred<()> = Deferred::new();
    let ((), errors) = logs::errors_during(|| {
        let (b, c) = (blocking.clone(), completion.clone());
        let task: Deferred<()> = ensure_deferred(async move {
            b.await?;
            c.callback(()).unwrap();
            Err(Failure::msg("abc"))
        });
        let wrapper = delay_cancellation(&task);
        drop(task);
        wrapper.cancel();
        assert!(!wrapper.has_result());
        assert!(!blocking.is_called(), "the cancel went too deep");
        assert!(!completion.is_called());
        blocking.callback(()).unwrap();
        assert!(completion.is_called());
        failure_result_of::<CancelledError, _>(&wrapper);
    });
    assert!(errors.is_empty(), "{errors:?}");
}

/// SY test_async_helpers.py DelayCancellationTests.test_suppresses_second_cancellation
#[test]
fn delay_cancellation_suppresses_a_second_cancel() {
    let deferred: Deferred<String> = Deferred::new();
    let wrapper = delay_cancellation(&deferred);
    wrapper.cancel();
    wrapper.cancel();
    assert!(!wrapper.has_result());
    assert!(!deferred.is_called(), "the original was cancelled");
    let ((), errors) = logs::errors_during(|| {
        deferred.errback(Failure::msg("abc")).unwrap();
        failure_result_of::<CancelledError, _>(&wrapper);
        drop(deferred);
    });
    assert!(errors.is_empty(), "the original's failure was consumed: {errors:?}");
}

/// SY test_async_helpers.py DelayCancellationTests.test_propagates_cancelled_error: a
/// `CancelledError` of the original reaches the wrapper as it is.
#[test]
fn delay_cancellation_passes_the_originals_cancelled_error_on() {
    let elsewhere: Deferred<String> = Deferred::new();
    elsewhere.cancel();
    let cancelled = elsewhere.take_result().unwrap().unwrap_err();
    let deferred: Deferred<String> = Deferred::new();
    let wrapper = delay_cancellation(&deferred);
    deferred.errback(cancelled.clone()).unwrap();
    assert!(wrapper.is_called());
    assert!(Failure::ptr_eq(&wrapper.take_result().unwrap().unwrap_err(), &cancelled));
}

/// SY test_async_helpers.py TimeoutDeferredTest.test_logcontext_is_preserved_on_cancellation:
/// the timeout cancels the task, and the errbacks (of the task and of the timing-out
/// Deferred) run in the context that added them. Difference: Synapse's rules leave the
/// sentinel current after calling the `inlineCallbacks` function; weft restores the
/// caller's context when a task suspends (src/future/mod.rs, `ensure_deferred`: "the
/// caller's context is current again when this returns"), so "one" stays current.
#[test]
fn timeout_deferred_keeps_log_contexts_on_cancellation() {
    let clock = Clock::new();
    let was_cancelled = Rc::new(Cell::new(false));
    let seen = Rc::new(RefCell::new(Vec::new()));
    let one = LoggingContext::new("one");
    let _in_one = one.enter();
    let w = was_cancelled.clone();
    let original: Deferred<()> = ensure_deferred(async move {
        let non_completing: Deferred<()> = Deferred::new();
        let _sentinel = PreserveLoggingContext::sentinel();
        match non_completing.await {
            Err(f) if f.check::<CancelledError>() => {
                w.set(true);
                Err(f)
            }
            other => other,
        }
    });
    let errback = |name: &'static str| {
        let s = seen.clone();
        move |f: Failure| {
            s.borrow_mut().push((name, current_request_id()));
            Err::<(), _>(f)
        }
    };
    original.add_errback(errback("orig"));
    let timing_out = timeout_deferred(&original, secs(1), &clock);
    assert!(!timing_out.is_called());
    assert_eq!(current_request_id().as_deref(), Some("one"));
    timing_out.add_errback(errback("timingout"));
    clock.pump(&[secs(1)]);
    assert!(was_cancelled.get(), "the non-completing Deferred was not cancelled");
    failure_result_of::<TimeoutError, _>(&timing_out);
    let one_id = Some("one".to_string());
    assert_eq!(*seen.borrow(), [("orig", one_id.clone()), ("timingout", one_id)]);
    assert_eq!(current_request_id().as_deref(), Some("one"));
}

/// SY test_async_helpers.py ConcurrentlyExecuteTest.test_preserves_stacktraces_on_preformed_failure:
/// a Failure the callback made beforehand reaches the caller as it is (the same Failure,
/// with the location it was made at).
#[test]
fn concurrently_execute_passes_a_preformed_failure_on() {
    let d1: Deferred<u32> = Deferred::new();
    let f = Failure::new(TestException);
    let (d, pre) = (d1.clone(), f.clone());
    let all = concurrently_execute(
        move |_v: u32| {
            let (d, pre) = (d.clone(), pre.clone());
            async move {
                d.await?;
                weft::fail::<()>(pre).await
            }
        },
        vec![1],
        2,
    );
    d1.callback(0).unwrap();
    let got = all.take_result().unwrap().unwrap_err();
    assert!(Failure::ptr_eq(&got, &f), "{got}");
    assert_eq!(got.location(), f.location());
}

/// SY test_linearizer.py LinearizerTestCase.test_cancellation_during_sleep: a task
/// cancelled just after it was handed the key lets the next one in. (Synapse sleeps
/// after acquiring to bound its stack; weft's trampoline needs no sleep, so the cancel
/// reaches the task while it holds the key.)
#[test]
fn linearizer_cancel_just_after_acquiring() {
    let lin = Linearizer::new(1);
    let (d1, acquired1, unblock1) = start_task(&lin, "key");
    assert!(acquired1.is_called());
    let (d2, acquired2, _unblock2) = start_task(&lin, "key");
    assert!(!acquired2.is_called());
    let (d3, acquired3, unblock3) = start_task(&lin, "key");
    assert!(!acquired3.is_called());
    unblock1.callback(()).unwrap();
    assert!(d1.take_result().unwrap().is_ok());
    d2.cancel();
    failure_result_of::<CancelledError, _>(&d2);
    assert!(acquired3.is_called(), "the third task did not get the key after the second was cancelled");
    unblock3.callback(()).unwrap();
    assert!(d3.take_result().unwrap().is_ok());
}

/// SY test_rwlock.py `_start_reader_or_writer`: a task that takes the lock, says so,
/// waits to be unblocked, releases and returns `ret`. Returns the task, the "acquired"
/// Deferred and the unblocking one.
fn start_rw(
    lock: &ReadWriteLock<&'static str>,
    write: bool,
    ret: &'static str,
) -> (Deferred<&'static str>, Deferred<()>, Deferred<()>) {
    let (acquired, unblock) = (Deferred::new(), Deferred::new());
    let (l, a, u) = (lock.clone(), acquired.clone(), unblock.clone());
    let task = ensure_deferred(async move {
        let _guard = if write { l.write("key").await? } else { l.read("key").await? };
        a.callback(()).unwrap();
        u.await?;
        Ok(ret)
    });
    (task, acquired, unblock)
}

/// SY test_rwlock.py `_start_nonblocking_reader` / `_start_nonblocking_writer`.
fn start_rw_nonblocking(
    lock: &ReadWriteLock<&'static str>,
    write: bool,
    ret: &'static str,
) -> Deferred<&'static str> {
    let (task, _, unblock) = start_rw(lock, write, ret);
    unblock.callback(()).unwrap();
    task
}

/// SY test_rwlock.py ReadWriteLockTestCase.test_lock_handoff_to_nonblocking_writer
#[test]
fn rwlock_hands_off_to_a_writer_that_completes_at_once() {
    let lock = ReadWriteLock::new();
    let (d1, _, unblock) = start_rw(&lock, true, "write 1 completed");
    let d2 = start_rw_nonblocking(&lock, true, "write 2 completed");
    assert!(!d1.is_called() && !d2.is_called());
    unblock.callback(()).unwrap();
    assert!(d1.is_called() && d2.is_called());
    let d3 = start_rw_nonblocking(&lock, true, "write 3 completed");
    assert_eq!(d3.take_result().unwrap().unwrap(), "write 3 completed");
    assert!(!lock.is_locked(&"key"));
}

/// SY test_rwlock.py ReadWriteLockTestCase.test_cancellation_while_holding_read_lock
#[test]
fn rwlock_cancelling_a_reader_that_holds_the_lock_lets_the_writer_in() {
    let lock = ReadWriteLock::new();
    let (reader, _, _unblock) = start_rw(&lock, false, "read completed");
    let writer = start_rw_nonblocking(&lock, true, "write completed");
    assert!(!writer.is_called());
    reader.cancel();
    failure_result_of::<CancelledError, _>(&reader);
    assert!(writer.is_called(), "the writer is stuck waiting for a cancelled reader");
    assert_eq!(writer.take_result().unwrap().unwrap(), "write completed");
}

/// SY test_rwlock.py ReadWriteLockTestCase.test_cancellation_while_holding_write_lock
#[test]
fn rwlock_cancelling_a_writer_that_holds_the_lock_lets_the_reader_in() {
    let lock = ReadWriteLock::new();
    let (writer, _, _unblock) = start_rw(&lock, true, "write completed");
    let reader = start_rw_nonblocking(&lock, false, "read completed");
    assert!(!reader.is_called());
    writer.cancel();
    failure_result_of::<CancelledError, _>(&writer);
    assert!(reader.is_called(), "the reader is stuck waiting for a cancelled writer");
    assert_eq!(reader.take_result().unwrap().unwrap(), "read completed");
}

/// SY test_rwlock.py ReadWriteLockTestCase.test_cancellation_while_waiting_for_read_lock:
/// cancelling a waiting reader cancels neither writer, does not let the second writer
/// in before the first has finished, and does not keep it waiting for ever.
#[test]
fn rwlock_cancelling_a_waiting_reader() {
    let lock = ReadWriteLock::new();
    let (writer1, _, unblock_writer1) = start_rw(&lock, true, "write 1 completed");
    let reader = start_rw_nonblocking(&lock, false, "read completed");
    assert!(!reader.is_called());
    let writer2 = start_rw_nonblocking(&lock, true, "write 2 completed");
    assert!(!writer2.is_called());
    reader.cancel();
    failure_result_of::<CancelledError, _>(&reader);
    assert!(!writer1.is_called(), "the first writer was cancelled");
    assert!(!writer2.is_called(), "the second writer was cancelled or let in before the first finished");
    unblock_writer1.callback(()).unwrap();
    assert_eq!(writer1.take_result().unwrap().unwrap(), "write 1 completed");
    assert!(writer2.is_called(), "the second writer is stuck waiting for a cancelled reader");
    assert_eq!(writer2.take_result().unwrap().unwrap(), "write 2 completed");
}

/// SY test_rwlock.py ReadWriteLockTestCase.test_cancellation_while_waiting_for_write_lock,
/// with tasks as in the original. Difference: Synapse keeps a cancelled waiting writer
/// in the queue until its turn and fails it then; weft removes it at once (src/sync/rwlock.rs:
/// "Cancelling a waiting request removes it, and may let the requests behind it in"),
/// which keeps the order the test checks: the third writer still waits for the reader
/// and the first writer.
#[test]
fn rwlock_cancelling_a_waiting_writer_keeps_the_order() {
    let lock = ReadWriteLock::new();
    let (reader, _, unblock_reader) = start_rw(&lock, false, "read completed");
    let (writer1, _, unblock_writer1) = start_rw(&lock, true, "write 1 completed");
    let writer2 = start_rw_nonblocking(&lock, true, "write 2 completed");
    let writer3 = start_rw_nonblocking(&lock, true, "write 3 completed");
    assert!(!writer2.is_called() && !writer3.is_called());
    writer2.cancel();
    // weft: the cancelled writer leaves at once.
    failure_result_of::<CancelledError, _>(&writer2);
    assert!(!reader.is_called(), "the reader was cancelled");
    assert!(!writer1.is_called(), "the first writer was cancelled");
    assert!(!writer3.is_called(), "the third writer was cancelled or let in too early");
    unblock_reader.callback(()).unwrap();
    assert_eq!(reader.take_result().unwrap().unwrap(), "read completed");
    assert!(!writer3.is_called(), "the third writer was let in before the first writer finished");
    unblock_writer1.callback(()).unwrap();
    assert_eq!(writer1.take_result().unwrap().unwrap(), "write 1 completed");
    assert!(writer3.is_called(), "the third writer is stuck waiting for a cancelled writer");
    assert_eq!(writer3.take_result().unwrap().unwrap(), "write 3 completed");
}
