//! Time through the public API: timers, `LoopingCall` and `defer_later` under the
//! deterministic `Clock`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use weft::reactor::{defer_later, LoopingCall};
use weft::{CancelledError, Clock, Deferred, PanicError, ReactorTime};

use crate::support::secs;

// ---- timers under the Clock ----

#[test]
fn clock_timers_fire_in_order_fifo_among_ties() {
    let clock = Clock::new();
    let order = Rc::new(RefCell::new(Vec::new()));
    for (name, delay) in [("c", 3), ("a1", 1), ("b", 2), ("a2", 1)] {
        let o = order.clone();
        clock.call_later(secs(delay), move || o.borrow_mut().push(name));
    }
    clock.advance(secs(1));
    assert_eq!(*order.borrow(), ["a1", "a2"]);
    clock.advance(secs(5));
    assert_eq!(*order.borrow(), ["a1", "a2", "b", "c"]);
}

#[test]
fn clock_cancel_and_reset() {
    let clock = Clock::new();
    let hits = Rc::new(RefCell::new(Vec::new()));
    let h = hits.clone();
    let a = clock.call_later(secs(5), move || h.borrow_mut().push("a"));
    let h = hits.clone();
    let b = clock.call_later(secs(5), move || h.borrow_mut().push("b"));
    a.cancel().unwrap();
    b.reset(secs(10)).unwrap();
    clock.advance(secs(9));
    assert!(hits.borrow().is_empty());
    clock.advance(secs(1));
    assert_eq!(*hits.borrow(), ["b"]);
    assert_eq!(clock.pending_calls(), 0);
}

#[test]
fn looping_call_runs_on_the_interval_grid_and_stops() {
    let clock = Clock::new();
    let times = Rc::new(RefCell::new(Vec::new()));
    let (t, c) = (times.clone(), clock.clone());
    let lc = LoopingCall::new(clock.clone(), move || t.borrow_mut().push(c.now()));
    let done = lc.start(secs(2), false);
    clock.advance(secs(2));
    clock.advance(secs(5)); // late: the slot at 4 s runs at 7 s, the one at 6 s is skipped
    clock.advance(secs(1));
    assert_eq!(*times.borrow(), [secs(2), secs(7), secs(8)]);
    assert!(!done.is_called());
    lc.stop();
    assert!(done.result().unwrap().is_ok());
    clock.advance(secs(100));
    assert_eq!(times.borrow().len(), 3);
    assert_eq!(clock.pending_calls(), 0);
}

#[test]
fn looping_call_panic_fails_its_deferred() {
    let clock = Clock::new();
    let n = Rc::new(Cell::new(0));
    let n2 = n.clone();
    let lc = LoopingCall::new(clock.clone(), move || {
        n2.set(n2.get() + 1);
        if n2.get() == 2 {
            panic!("second call fails");
        }
    });
    let done = lc.start(secs(1), true);
    clock.pump(&[secs(1), secs(1), secs(1)]);
    assert_eq!(n.get(), 2);
    assert!(!lc.is_running());
    assert!(done.take_result().unwrap().unwrap_err().check::<PanicError>());
}

#[test]
fn defer_later_fires_and_cancel_cancels_the_timer() {
    let clock = Clock::new();
    let d: Deferred<u32> = defer_later(&clock, secs(3), || 7);
    clock.advance(secs(3));
    assert_eq!(d.result().unwrap().unwrap(), 7);

    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    let d: Deferred<()> = defer_later(&clock, secs(3), move || r.set(true));
    assert_eq!(clock.pending_calls(), 1);
    d.cancel();
    assert_eq!(clock.pending_calls(), 0);
    clock.advance(secs(10));
    assert!(!ran.get());
    assert!(d.take_result().unwrap().unwrap_err().check::<CancelledError>());
}
