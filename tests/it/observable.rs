//! Ports of Synapse's `ObservableDeferredTest`.

use weft::logcontext::LoggingContext;
use weft::{CancelledError, Deferred, Failure, ObservableDeferred};

use crate::support::{assert_no_result, logs};

/// SY test_async_helpers.py ObservableDeferredTest.test_succeed
#[test]
fn observers_get_the_value_and_source_keeps_it() {
    let origin: Deferred<u32> = Deferred::new();
    let obs = ObservableDeferred::new(origin.clone(), false);
    let (a, b) = (obs.observe(), obs.observe());
    assert!(!a.is_called() && !b.is_called());
    origin.callback(123).unwrap();
    assert_eq!(a.result().unwrap().unwrap(), 123);
    assert_eq!(b.result().unwrap().unwrap(), 123);
    assert_eq!(origin.result().unwrap().unwrap(), 123); // unchanged
    assert_eq!(obs.observe().result().unwrap().unwrap(), 123); // late observer
    assert!(obs.has_succeeded());
}

/// SY test_async_helpers.py ObservableDeferredTest.test_failure
#[test]
fn observers_get_the_failure_shared() {
    let origin: Deferred<u32> = Deferred::new();
    let obs = ObservableDeferred::new(origin.clone(), false);
    let a = obs.observe();
    origin.errback(Failure::msg("boom")).unwrap();
    let fa = a.take_result().unwrap().unwrap_err();
    let fo = origin.take_result().unwrap().unwrap_err();
    assert!(Failure::ptr_eq(&fa, &fo)); // one failure, shared
    let late = obs.observe().take_result().unwrap().unwrap_err();
    assert!(Failure::ptr_eq(&late, &fo));
}

/// SY test_async_helpers.py ObservableDeferredTest.test_cancellation
#[test]
fn cancelling_one_observer_leaves_source_and_others() {
    let origin: Deferred<u32> = Deferred::new();
    let obs = ObservableDeferred::new(origin.clone(), true);
    let (a, b, c) = (obs.observe(), obs.observe(), obs.observe());
    b.cancel();
    assert!(b.take_result().unwrap().unwrap_err().check::<CancelledError>());
    assert!(!origin.is_called());
    assert_eq!(obs.observer_count(), 2);
    origin.callback(1).unwrap();
    assert_eq!(a.result().unwrap().unwrap(), 1);
    assert_eq!(c.result().unwrap().unwrap(), 1);
}

/// SY test_async_helpers.py ObservableDeferredTest.test_failure (consumeErrors=True):
/// the source's failure is consumed on the caller's behalf. Synapse turns it into
/// `None`; a typed chain has no value to give, so later steps on the source get the
/// failure itself, marked handled, and it is never reported as unhandled.
#[test]
fn consume_errors_consumes_the_source_failure() {
    let (later, errors) = logs::errors_during(|| {
        let origin: Deferred<u32> = Deferred::new();
        let obs = ObservableDeferred::new(origin.clone(), true);
        let a = obs.observe();
        origin.errback(Failure::msg("x")).unwrap();
        assert!(a.take_result().unwrap().is_err());
        let later = std::rc::Rc::new(std::cell::RefCell::new(None));
        let l = later.clone();
        origin.add_errback(move |f: Failure| -> Result<u32, Failure> {
            *l.borrow_mut() = Some(f.to_string());
            Err(f)
        });
        drop((origin, obs));
        later.take()
    });
    assert!(later.unwrap().starts_with('x'), "later errbacks see the failure, not a ResultConsumedError");
    assert!(errors.is_empty(), "{errors:?}");
}

/// The case: an `ObservableDeferred` with `consume_errors` whose source is run
/// in a log context (`LoggingContext::run` adds its own step after the observer's) must
/// not report "already moved elsewhere" when the source fails; an observer that does not
/// handle the failure is still reported, once.
#[test]
fn consume_errors_inside_logging_context_run_reports_only_the_unhandled_observer() {
    let ((), errors) = logs::errors_during(|| {
        let origin: Deferred<u32> = Deferred::new();
        let (o, keep) = (origin.clone(), std::rc::Rc::new(std::cell::RefCell::new(None)));
        let k = keep.clone();
        let source: Deferred<u32> = LoggingContext::new("request").run(move || {
            let obs = ObservableDeferred::new(o.clone(), true);
            *k.borrow_mut() = Some((obs.observe(), obs.observe()));
            o
        });
        origin.errback(Failure::msg("source failed")).unwrap();
        let (handled, unhandled) = keep.take().unwrap();
        handled.add_errback(|_| 0);
        drop((origin, source, handled, unhandled));
    });
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("source failed"), "{errors:?}");
    assert!(!errors[0].contains("moved elsewhere"), "{errors:?}");
}

#[test]
fn observer_callback_may_observe_and_cancel_reentrantly() {
    let origin: Deferred<u32> = Deferred::new();
    let obs = std::rc::Rc::new(ObservableDeferred::new(origin.clone(), false));
    let first = obs.observe();
    let victim = obs.observe();
    let (o, v) = (obs.clone(), victim.clone());
    first.add_callback(move |x| {
        v.cancel(); // not told yet: cancelled, and skipped by the fan-out
        assert_eq!(o.observe().result().unwrap().unwrap(), x);
        x
    });
    origin.callback(5).unwrap();
    assert!(victim.take_result().unwrap().unwrap_err().check::<CancelledError>());
    assert_eq!(first.result().unwrap().unwrap(), 5);
}

#[test]
fn hundred_thousand_observers() {
    let origin: Deferred<std::rc::Rc<str>> = Deferred::new();
    let obs = ObservableDeferred::new(origin.clone(), false);
    let ds: Vec<_> = (0..100_000).map(|_| obs.observe()).collect();
    for d in ds.iter().step_by(2) {
        d.cancel();
    }
    assert_eq!(obs.observer_count(), 50_000);
    origin.callback("v".into()).unwrap();
    assert!(ds.iter().skip(1).step_by(2).all(|d| &*d.result().unwrap().unwrap() == "v"));
    for d in ds.iter().step_by(2) {
        let _ = d.take_result();
    }
}

/// An observer cancelled while the source's outcome is handed out (by an earlier
/// observer's callback), or cancelled while paused, is not told the outcome: it keeps its
/// `CancelledError`, nothing reports a lost result (as a Twisted Deferred cancelled
/// without a canceller ignores its late result), and the others are told.
#[test]
fn an_observer_cancelled_during_the_fan_out_or_while_paused_is_not_told() {
    let lost = std::rc::Rc::new(std::cell::Cell::new(0));
    let l = lost.clone();
    weft::set_lost_result_hook(move |_| l.set(l.get() + 1));
    let origin: Deferred<u32> = Deferred::new();
    let obs = ObservableDeferred::new(origin.clone(), false);
    let (first, second, paused, last) = (obs.observe(), obs.observe(), obs.observe(), obs.observe());
    let s = second.clone();
    first.add_callback(move |v| {
        s.cancel();
        v
    });
    paused.pause();
    paused.cancel();
    origin.callback(5).unwrap();
    weft::reset_lost_result_hook();
    assert_eq!(lost.get(), 0, "no result reported lost");
    assert_eq!(first.result().unwrap().unwrap(), 5);
    assert_eq!(last.result().unwrap().unwrap(), 5);
    assert!(second.result().unwrap().unwrap_err().check::<CancelledError>());
    assert_no_result(&paused);
    paused.unpause().unwrap();
    assert!(paused.result().unwrap().unwrap_err().check::<CancelledError>());
    assert_eq!(obs.observer_count(), 0);
}

/// Cancelling an observer detaches it at once: the count drops, the source is untouched.
#[test]
fn a_cancelled_observer_leaves_the_list_at_once() {
    let origin: Deferred<u32> = Deferred::new();
    let obs = ObservableDeferred::new(origin.clone(), false);
    let (a, b) = (obs.observe(), obs.observe());
    a.cancel();
    assert_eq!(obs.observer_count(), 1);
    assert!(!origin.is_called());
    origin.callback(1).unwrap();
    assert_eq!(b.result().unwrap().unwrap(), 1);
    assert!(a.result().unwrap().unwrap_err().check::<CancelledError>());
}

/// Observers are told in the order they observed, as Synapse's list of observers is
/// walked, also after cancelled observers were swept out and new ones took their place
/// (the sweep runs once 64 entries are held).
#[test]
fn observers_are_told_in_the_order_they_observed_even_after_a_sweep() {
    let source = Deferred::<u32>::new();
    let shared = ObservableDeferred::new(source.clone(), false);
    let order = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let mut expected = Vec::new();
    let mut cancelled = Vec::new();
    for i in 0..200u32 {
        let d = shared.observe();
        let o = order.clone();
        d.add_callback(move |x| {
            o.borrow_mut().push(i);
            x
        });
        // Every other one of the first hundred is cancelled, leaving holes to refill.
        if i < 100 && i % 2 == 0 {
            d.cancel();
            cancelled.push(d);
        } else {
            expected.push(i);
        }
    }
    source.callback(1).unwrap();
    assert_eq!(*order.borrow(), expected);
    for d in cancelled {
        crate::support::failure_result_of::<CancelledError, _>(&d);
    }
}
