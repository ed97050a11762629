//! Twisted's `internet/test/test_core.py` (SystemEventTestsBuilder: the reactor's life,
//! `callWhenRunning`, `stop`, the shutdown event, `iterate`) ported to weft's `Reactor`.
//!
//! Where weft differs on purpose, the tests assert weft's documented behaviour and say
//! where it is documented: `stop()` before the start or after the end is not an error,
//! and a stopped reactor may run again. Not ported: "startup" triggers, `crash`, and
//! running a reactor from inside its own loop (weft has no startup event and no `crash`,
//! and callbacks hold a `ReactorHandle`, which cannot `run`).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use weft::reactor::{DatagramProtocol, IterateStatus, Phase, Reactor};

use crate::support::{localhost, logs, run_bounded, secs, Trace};

/// TW test_core.py SystemEventTestsBuilder.test_stopWhenNotStarted: Twisted raises; in
/// weft a `stop()` before the start is kept and honoured once the reactor starts, after
/// its `call_when_running` calls (documented on `ReactorHandle::stop`).
#[test]
fn stop_before_the_start_stops_it_once_started() {
    let reactor = Reactor::new().unwrap();
    let events = Trace::new();
    reactor.stop();
    assert!(reactor.stop_requested() && !reactor.is_running());
    let e = events.clone();
    reactor.call_when_running(move || e.push("running"));
    reactor.add_shutdown_trigger(Phase::After, {
        let e = events.clone();
        move || e.push("stopped")
    });
    run_bounded(&reactor, secs(10));
    assert_eq!(events.take(), ["running", "stopped"]);
}

/// TW test_core.py SystemEventTestsBuilder.test_stopWhenAlreadyStopped: Twisted raises;
/// in weft a `stop()` after the reactor stopped does nothing (documented on
/// `ReactorHandle::stop`): nothing is left pending for a later run.
#[test]
fn stop_after_the_reactor_stopped_does_nothing() {
    let reactor = Reactor::new().unwrap();
    let h = reactor.handle();
    reactor.call_when_running(move || h.stop());
    run_bounded(&reactor, secs(10));
    reactor.stop();
    assert!(reactor.is_stopped());
    assert!(!reactor.stop_requested());
}

/// TW test_core.py SystemEventTestsBuilder.test_callWhenRunningOrder.
#[test]
fn call_when_running_calls_run_in_order() {
    let reactor = Reactor::new().unwrap();
    let events = Trace::new();
    for what in ["first", "second"] {
        let e = events.clone();
        reactor.call_when_running(move || e.push(what));
    }
    let h = reactor.handle();
    reactor.call_when_running(move || h.stop());
    run_bounded(&reactor, secs(10));
    assert_eq!(events.take(), ["first", "second"]);
}

/// TW test_core.py SystemEventTestsBuilder.test_runningForStartupEvents, for what weft
/// has (no startup triggers): the reactor is not running before `run`, and is running
/// when the `call_when_running` calls run.
#[test]
fn the_reactor_is_running_when_call_when_running_calls_run() {
    let reactor = Reactor::new().unwrap();
    let seen = Rc::new(Cell::new(None));
    let (s, h) = (seen.clone(), reactor.handle());
    reactor.call_when_running(move || {
        s.set(Some(h.is_running()));
        h.stop();
    });
    assert!(!reactor.is_running());
    assert_eq!(seen.get(), None);
    run_bounded(&reactor, secs(10));
    assert_eq!(seen.get(), Some(true));
    assert!(!reactor.is_running());
}

/// TW test_core.py SystemEventTestsBuilder.test_shutdownFiresTriggersAsynchronously:
/// `stop()` does not run the "before" triggers itself; they run after the call that
/// stopped the reactor returned.
#[test]
fn stop_runs_no_trigger_itself() {
    let reactor = Reactor::new().unwrap();
    let events = Trace::new();
    let e = events.clone();
    reactor.add_shutdown_trigger(Phase::Before, move || e.push("before shutdown"));
    let (e, h) = (events.clone(), reactor.handle());
    reactor.call_when_running(move || {
        h.stop();
        e.push("stopped");
    });
    assert_eq!(events.len(), 0);
    run_bounded(&reactor, secs(10));
    assert_eq!(events.take(), ["stopped", "before shutdown"]);
}

/// A UDP protocol whose `stop_protocol` panics, or records that it ran.
struct Ending {
    panics: bool,
    stopped: Rc<Cell<bool>>,
}

impl DatagramProtocol for Ending {
    fn datagram_received(&mut self, _data: &[u8], _from: SocketAddr) {}

    fn stop_protocol(&mut self) {
        if self.panics {
            panic!("simulated connectionLost error");
        }
        self.stopped.set(true);
    }
}

/// TW test_core.py SystemEventTestsBuilder.test_shutdownDisconnectsCleanly: a socket
/// whose protocol panics as the shutdown closes it does not keep the others from being
/// told; the panic is logged. (UDP ports: their `stop_protocol` is the `connection_lost`
/// of a socket with no connection.)
#[test]
fn a_panicking_protocol_at_shutdown_does_not_stop_the_others_closing() {
    logs::capture();
    let reactor = Reactor::new().unwrap();
    let stopped = Rc::new(Cell::new(false));
    for panics in [true, false] {
        reactor.listen_udp(localhost(), Ending { panics, stopped: stopped.clone() }).unwrap();
    }
    let h = reactor.handle();
    reactor.call_when_running(move || h.stop());
    run_bounded(&reactor, secs(10));
    assert!(stopped.get());
    let logged =
        logs::records().into_iter().filter(|(_, m)| m.contains("simulated connectionLost error")).count();
    assert_eq!(logged, 1);
}

/// TW test_core.py SystemEventTestsBuilder.test_iterate: `iterate` with a zero timeout
/// does not block (here: not until a timer 5 s away, which stays pending).
#[test]
fn iterate_with_a_zero_timeout_does_not_block() {
    let reactor = Reactor::new().unwrap();
    let later = reactor.call_later(secs(5), || ());
    assert_eq!(reactor.iterate(Some(Duration::ZERO)).unwrap(), IterateStatus::Idle);
    assert!(later.is_active(), "iterate returned before the timer");
    later.cancel().unwrap();
}

/// TW test_core.py SystemEventTestsBuilder.test_runAfterStop: Twisted raises
/// `ReactorNotRestartable`; a weft reactor may be run again after `run` returns, and
/// shutdown triggers run once per registration (documented on `Reactor::run`).
#[test]
fn a_stopped_reactor_runs_again() {
    let reactor = Reactor::new().unwrap();
    let events = Rc::new(RefCell::new(Vec::new()));
    for round in ["first", "second"] {
        let (e, h) = (events.clone(), reactor.handle());
        reactor.call_when_running(move || {
            e.borrow_mut().push(format!("{round} run"));
            h.stop();
        });
        let e = events.clone();
        reactor.add_shutdown_trigger(Phase::After, move || e.borrow_mut().push(format!("{round} stop")));
        run_bounded(&reactor, secs(10));
    }
    assert_eq!(*events.borrow(), ["first run", "first stop", "second run", "second stop"]);
}
