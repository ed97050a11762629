//! Twisted's `test_task.py` ReactTests ported to `weft::reactor::react`: it runs a new
//! reactor until what `main` returned has a result and returns that result (where
//! Twisted exits with status 0 or 1). Not ported: `test_arguments` (a Rust closure
//! captures what it needs), `test_defaultReactor` (there is no global reactor) and
//! `test_exitWithDefinedCode` (no `SystemExit`: the caller maps the result to a status).

use std::cell::Cell;
use std::rc::Rc;

use weft::reactor::{react, Phase};
use weft::{Deferred, Failure};

use crate::support::{ms, GenericError};

/// TW test_task.py ReactTests.test_runsUntilAsyncCallback: the reactor runs until the
/// Deferred fires later, then stops; its value comes back.
#[test]
fn react_runs_until_a_later_callback() {
    let stopped = Rc::new(Cell::new(false));
    let s = stopped.clone();
    let got = react(move |reactor| {
        reactor.add_shutdown_trigger(Phase::During, move || s.set(true));
        let d = Deferred::new();
        let target = d.clone();
        reactor.call_later(ms(1), move || target.callback("done"));
        d
    });
    assert_eq!(got.unwrap(), Some("done"));
    assert!(stopped.get(), "the reactor went through its shutdown");
}

/// TW test_task.py ReactTests.test_runsUntilSyncCallback: a Deferred that has fired
/// already stops the reactor on its first turn.
#[test]
fn react_returns_at_once_after_a_callback_already_made() {
    let turns = Rc::new(Cell::new(0));
    let t = turns.clone();
    let got = react(move |reactor| {
        reactor.call_when_running(move || t.set(t.get() + 1));
        weft::succeed(7)
    });
    assert_eq!(got.unwrap(), Some(7));
    assert_eq!(turns.get(), 1, "the reactor did start");
}

/// TW test_task.py ReactTests.test_runsUntilAsyncErrback: a Deferred that fails later
/// stops the reactor and its failure comes back.
#[test]
fn react_runs_until_a_later_errback_and_reports_it() {
    let got: Result<Option<u8>, Failure> = react(|reactor| {
        let d = Deferred::new();
        let target = d.clone();
        reactor.call_later(ms(1), move || target.errback(Failure::new(GenericError("bang"))));
        d
    });
    assert!(got.unwrap_err().check::<GenericError>());
}

/// TW test_task.py ReactTests.test_runsUntilSyncErrback: a Deferred that has failed
/// already.
#[test]
fn react_returns_at_once_after_an_errback_already_made() {
    let got: Result<Option<u8>, Failure> = react(|_reactor| weft::fail(GenericError("bang")));
    assert!(got.unwrap_err().check::<GenericError>());
}

/// TW test_task.py ReactTests.test_singleStopCallback and test_singleStopErrback: the
/// Deferred fires during a shutdown something else started; react does not stop the
/// reactor a second time, and the result still comes back.
#[test]
fn react_after_a_stop_from_elsewhere_does_not_stop_again() {
    for fail in [false, true] {
        let got: Result<Option<u8>, Failure> = react(move |reactor| {
            let d = Deferred::new();
            let target = d.clone();
            reactor.add_shutdown_trigger(Phase::Before, move || {
                if fail {
                    target.errback(GenericError("late")).unwrap();
                } else {
                    target.callback(3).unwrap();
                }
            });
            let h = reactor.handle();
            reactor.call_when_running(move || h.stop());
            d
        });
        match got {
            Ok(v) => assert_eq!((fail, v), (false, Some(3))),
            Err(f) => assert!(fail && f.check::<GenericError>()),
        }
    }
}

/// TW test_task.py ReactTests.test_synchronousStop: the reactor is stopped just before
/// the Deferred fires, in the same turn.
#[test]
fn react_with_a_stop_just_before_the_callback() {
    let got = react(|reactor| {
        let d = Deferred::new();
        let (target, h) = (d.clone(), reactor.handle());
        reactor.call_when_running(move || {
            h.stop();
            target.callback(5).unwrap();
        });
        d
    });
    assert_eq!(got.unwrap(), Some(5));
}

/// TW test_task.py ReactTests.test_asynchronousStop: the reactor is stopped and the
/// Deferred never fires: nothing to return (Twisted exits with status 0).
#[test]
fn react_with_a_stop_and_no_result_returns_none() {
    let got: Result<Option<u8>, Failure> = react(|reactor| {
        let h = reactor.handle();
        reactor.call_when_running(move || h.stop());
        Deferred::<u8>::new()
    });
    assert_eq!(got.unwrap(), None);
}

/// A panic in `main` comes back as its failure.
#[test]
fn react_reports_a_panic_in_main() {
    let got: Result<Option<u8>, Failure> = react(|_reactor| -> u8 { panic!("main broke") });
    assert!(got.unwrap_err().to_string().contains("main broke"));
}
