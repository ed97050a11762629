//! Unit tests that look inside the reactor: when the alarm (the `timerfd`) is armed.

use std::os::fd::AsFd;
use std::time::Duration;

use super::Reactor;

fn armed(reactor: &Reactor) -> Option<Duration> {
    reactor.handle.inner.timers.alarm().expect("a reactor has an alarm").armed()
}

/// `call_later` stays cheap: the `timerfd` is armed (a system call) only when the
/// earliest deadline moves earlier; a later timer or a cancel leaves it alone.
#[test]
fn the_alarm_is_armed_only_when_the_earliest_deadline_moves_earlier() {
    let reactor = Reactor::new().unwrap();
    let _lent = reactor.as_fd();
    assert_eq!(armed(&reactor), None);
    let ten = reactor.call_later(Duration::from_secs(10), || {});
    let at_ten = armed(&reactor).expect("armed for the first timer");
    for s in 11..100 {
        reactor.call_later(Duration::from_secs(s), || {});
    }
    assert_eq!(armed(&reactor), Some(at_ten), "later timers do not re-arm");
    ten.cancel().unwrap();
    assert_eq!(armed(&reactor), Some(at_ten), "a cancel leaves the alarm early");
    let five = reactor.call_later(Duration::from_secs(5), || {});
    let at_five = armed(&reactor).unwrap();
    assert!(at_five < at_ten, "an earlier timer re-arms");
    five.delay(Duration::from_secs(1)).unwrap();
    assert_eq!(armed(&reactor), Some(at_five), "a delay leaves the alarm early");
    five.reset(Duration::from_secs(1)).unwrap();
    assert!(armed(&reactor).unwrap() < at_five, "a reset to earlier re-arms");
    // Queued calls: armed for "now" once, however many.
    reactor.call_soon(|| {});
    assert_eq!(armed(&reactor), Some(Duration::ZERO));
    reactor.call_soon(|| {});
    assert_eq!(armed(&reactor), Some(Duration::ZERO));
}

/// Inside a driver's turn, deadlines are the driver's business: nothing is armed until
/// `iterate` returns, and then once, for the earliest.
#[test]
fn timers_set_during_iterate_arm_the_alarm_once_when_it_returns() {
    let reactor = Reactor::new().unwrap();
    let _lent = reactor.as_fd();
    let h = reactor.handle();
    let seen = std::rc::Rc::new(std::cell::Cell::new(None));
    let s = seen.clone();
    reactor.call_when_running(move || {
        for ms in (50..150).rev() {
            h.call_later(Duration::from_millis(ms), || {});
        }
        s.set(Some(h.inner.timers.alarm().unwrap().armed()));
    });
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    let before = seen.get().expect("the callback ran");
    let after = armed(&reactor).unwrap();
    assert_eq!(before, None, "nothing armed inside the turn");
    let earliest = reactor.handle.inner.timers.next_deadline().unwrap();
    assert_eq!(after, earliest, "armed once, for the earliest, when iterate returned");
}

/// Until the descriptor is lent out nobody can wait on it, so the alarm stays off (a
/// reactor driven by `run` alone makes no `timerfd` system call); lending it brings the
/// alarm in line with what is already scheduled.
#[test]
fn the_alarm_is_off_until_the_descriptor_is_lent() {
    let reactor = Reactor::new().unwrap();
    reactor.call_later(Duration::from_secs(10), || {});
    reactor.call_soon(|| {});
    assert_eq!(armed(&reactor), None);
    let _lent = reactor.as_fd();
    assert_eq!(armed(&reactor), Some(Duration::ZERO), "armed at once for the queued call");
}
