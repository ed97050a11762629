//! Cancellation provenance: with `set_debugging` on, a cancel records its path (each
//! Deferred it entered, each canceller it ran with where it was added, where it
//! stopped), readable from `CancelledError::trace()` and printed by `{:#?}`. Off, nothing
//! is recorded.

use std::cell::RefCell;
use std::panic::Location;
use std::rc::Rc;

use weft::{gather_results, stop_cancellation, CancelOutcome, CancelStep, CancelledError, Deferred, Failure};

use crate::support::debugging;

/// The `CancelledError` a Deferred failed with.
#[track_caller]
fn cancelled_error<T: std::fmt::Debug>(d: &Deferred<T>) -> CancelledError {
    let f = d.take_result().expect("a result").expect_err("a failure");
    f.downcast_ref::<CancelledError>().expect("a CancelledError").clone()
}

/// The line of a step's location.
fn line(step: &CancelStep) -> u32 {
    match step {
        CancelStep::Entered(at)
        | CancelStep::Layer(at)
        | CancelStep::Canceller(at)
        | CancelStep::Stopped(_, at) => at.line(),
    }
}

/// A place in this file, for comparing with recorded locations.
#[track_caller]
fn here() -> u32 {
    Location::caller().line()
}

#[test]
fn without_debugging_nothing_is_recorded() {
    let _off = debugging(false);
    let d: Deferred<u8> = Deferred::with_canceller(|_| ());
    d.add_canceller(|_| ()).add_callback(|x| x);
    d.cancel();
    let err = cancelled_error(&d);
    assert!(err.trace().is_empty());
    assert!(!format!("{err:#?}").contains("trace"));
}

#[test]
fn trace_names_each_canceller_where_it_was_added_and_where_the_cancel_stopped() {
    let _on = debugging(true);
    let created = here() + 1;
    let d: Deferred<u8> = Deferred::with_canceller(|_| ());
    let inner_layer = here() + 1;
    d.add_canceller(|_| ()).add_callback(|x| x);
    let outer_layer = here() + 1;
    d.add_callbacks_with_canceller(|x| x, |f: Failure| Err::<u8, _>(f), |_| ());
    assert_eq!(d.cancel(), CancelOutcome::Cancelled);
    let trace = cancelled_error(&d).trace();
    assert!(
        matches!(
            trace[..],
            [
                CancelStep::Entered(_),
                CancelStep::Layer(_),
                CancelStep::Layer(_),
                CancelStep::Canceller(_),
                CancelStep::Stopped(CancelOutcome::Cancelled, _)
            ]
        ),
        "{trace:?}"
    );
    let lines: Vec<u32> = trace.iter().map(line).collect();
    assert_eq!(lines, [created, outer_layer, inner_layer, created, created]);
}

#[test]
fn trace_follows_the_cancel_into_the_deferred_the_chain_waits_on() {
    let _on = debugging(true);
    let outer_at = here() + 1;
    let outer: Deferred<u8> = Deferred::new();
    let inner_at = here() + 1;
    let inner: Deferred<u8> = Deferred::new();
    let i = inner.clone();
    outer.add_callback(move |_| i);
    outer.callback(0).unwrap();
    outer.cancel();
    let trace = cancelled_error(&outer).trace();
    assert_eq!(
        trace.iter().map(|s| (std::mem::discriminant(s), line(s))).collect::<Vec<_>>(),
        [
            (std::mem::discriminant(&CancelStep::Entered(Location::caller())), outer_at),
            (std::mem::discriminant(&CancelStep::Entered(Location::caller())), inner_at),
            (
                std::mem::discriminant(&CancelStep::Stopped(CancelOutcome::Cancelled, Location::caller())),
                inner_at
            ),
        ]
    );
}

#[test]
fn trace_shows_a_cancel_stopped_at_a_shield() {
    let _on = debugging(true);
    let work: Deferred<u8> = Deferred::new();
    let mine = stop_cancellation(&work);
    assert_eq!(mine.cancel(), CancelOutcome::Shielded);
    let trace = cancelled_error(&mine).trace();
    assert!(matches!(trace.last(), Some(CancelStep::Stopped(CancelOutcome::Shielded, _))), "{trace:?}");
}

/// A cancel that a canceller answered with a value makes no `CancelledError` for the
/// invoker; a layer canceller on the way sees the whole path, which grows as it goes.
#[test]
fn trace_shows_a_canceller_that_answered_with_a_value() {
    let _on = debugging(true);
    let seen: Rc<RefCell<Option<CancelledError>>> = Rc::default();
    let s = seen.clone();
    let inner: Deferred<u8> = Deferred::with_canceller(|d| d.callback(1).unwrap());
    let outer: Deferred<u8> = Deferred::new();
    let i = inner.clone();
    outer.add_callback(move |_| i);
    outer.add_canceller(move |e| *s.borrow_mut() = Some(e.clone())).add_callback(|x| x);
    outer.callback(0).unwrap();
    assert_eq!(outer.cancel(), CancelOutcome::FiredByCanceller);
    let trace = seen.borrow().as_ref().expect("the layer canceller ran").trace();
    assert!(
        matches!(trace.last(), Some(CancelStep::Stopped(CancelOutcome::FiredByCanceller, _))),
        "{trace:?}"
    );
    assert!(trace.iter().any(|s| matches!(s, CancelStep::Canceller(_))));
}

/// Every error of one cancel shares the record: a member's error shows the gather.
#[test]
fn errors_of_one_cancel_share_one_trace_through_a_combinator() {
    let _on = debugging(true);
    let a: Deferred<u8> = Deferred::new();
    let b: Deferred<u8> = Deferred::new();
    let (a2, b2) = (a.clone(), b.clone());
    let all = gather_results(vec![a2, b2], true);
    all.cancel();
    let member = cancelled_error(&a).trace();
    let entered = member.iter().filter(|s| matches!(s, CancelStep::Entered(_))).count();
    assert!(entered >= 3, "the gather and both members: {member:?}");
    assert_eq!(member, cancelled_error(&b).trace());
    let _ = all.take_result();
}

#[test]
fn pretty_debug_prints_the_trace_with_locations() {
    let _on = debugging(true);
    let d: Deferred<u8> = Deferred::new();
    let layer = here() + 1;
    d.add_canceller(|_| ()).add_callback(|x| x);
    d.cancel();
    let text = format!("{:#?}", cancelled_error(&d));
    assert!(
        text.contains(&format!("ran layer canceller added at tests/it/cancel_provenance.rs:{layer}")),
        "{text}"
    );
    assert!(text.contains("stopped (Cancelled)"), "{text}");
}
