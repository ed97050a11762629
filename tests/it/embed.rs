//! Embedding (issue 13): a host's own loop waits on the reactor's descriptor and calls
//! `iterate`. Each test names the trap it guards; the host here is a few lines of epoll
//! (through `rustix`), waiting level- or edge-triggered, with a generous limit on every
//! wait so that a host that would hang fails instead. The example hosts
//! (`examples/embed_*.rs`) are run in `embed_epoll.rs` and `embed_tokio.rs`.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::time::Timespec;
use weft::reactor::{DatagramProtocol, IterateStatus, Phase, Reactor};
use weft::Deferred;

use crate::support::{graceful, localhost, ms, secs};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Level,
    Edge,
}

/// The smallest host: an epoll set holding only the reactor's descriptor.
struct Waiter {
    epoll: OwnedFd,
    events: Vec<epoll::Event>,
}

impl Waiter {
    fn new(reactor: &Reactor, trigger: Trigger) -> Waiter {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        let flags = match trigger {
            Trigger::Level => epoll::EventFlags::IN,
            Trigger::Edge => epoll::EventFlags::IN | epoll::EventFlags::ET,
        };
        epoll::add(&epoll, reactor.as_fd(), epoll::EventData::new_u64(1), flags).unwrap();
        Waiter { epoll, events: Vec::with_capacity(4) }
    }

    /// Waits at most `limit` for the descriptor; true if it became readable.
    fn wait(&mut self, limit: Duration) -> bool {
        let limit = Timespec::try_from(limit).unwrap();
        self.events.clear();
        match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut self.events), Some(&limit)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => !self.events.is_empty(),
            Err(e) => panic!("epoll_wait: {e}"),
        }
    }

    /// Waits on the descriptor (no timeout of the host's own, bar the test's limit) and
    /// iterates until `done`; fails the test if the descriptor stays quiet for `limit`.
    #[track_caller]
    fn drive_until(&mut self, reactor: &Reactor, limit: Duration, mut done: impl FnMut() -> bool) {
        while !done() {
            assert!(self.wait(limit), "the descriptor stayed quiet for {limit:?}");
            reactor.iterate(Some(Duration::ZERO)).unwrap();
        }
    }
}

// ---- trap 1: edge-triggered hosts stalled with events left in the queue ----

/// Counts datagrams.
struct Count(Rc<Cell<usize>>);

impl DatagramProtocol for Count {
    fn datagram_received(&mut self, _data: &[u8], _from: SocketAddr) {
        self.0.set(self.0.get() + 1);
    }
}

/// What the host does when the descriptor is readable.
#[derive(Clone, Copy, Debug)]
enum OnWake {
    /// One `iterate`, whatever it says.
    IterateOnce,
    /// `iterate` again while it says `Pending`.
    IterateWhilePending,
}

/// `ports` UDP ports each get one datagram at the same time (`ports` readiness events in
/// the reactor's queue at once); the host must see all of them.
#[track_caller]
fn check_simultaneous_events(ports: usize, trigger: Trigger, on_wake: OnWake) {
    let reactor = Reactor::new().unwrap();
    let count = Rc::new(Cell::new(0));
    let addrs: Vec<SocketAddr> = (0..ports)
        .map(|_| reactor.listen_udp(localhost(), Count(count.clone())).unwrap().get_host().unwrap())
        .collect();
    let mut waiter = Waiter::new(&reactor, trigger);
    let sender = UdpSocket::bind(localhost()).unwrap();
    for a in &addrs {
        sender.send_to(b"x", a).unwrap();
    }
    let mut wakes = 0;
    while count.get() < ports {
        if !waiter.wait(secs(5)) {
            break;
        }
        wakes += 1;
        let mut status = reactor.iterate(Some(Duration::ZERO)).unwrap();
        while matches!(on_wake, OnWake::IterateWhilePending) && status == IterateStatus::Pending {
            status = reactor.iterate(Some(Duration::ZERO)).unwrap();
        }
    }
    assert_eq!(count.get(), ports, "{trigger:?}-triggered host, {on_wake:?}: stalled after {wakes} wake-ups");
}

/// Issue 13 trap 1: one `iterate` used to handle at most 1,024 events and return `()`;
/// an edge-triggered host (tokio's `AsyncFd` waits that way) then stalled for good with
/// the other 76 in the queue and no new edge coming.
#[test]
fn an_edge_triggered_host_handles_1100_simultaneous_events() {
    check_simultaneous_events(1100, Trigger::Edge, OnWake::IterateWhilePending);
    check_simultaneous_events(1100, Trigger::Edge, OnWake::IterateOnce);
}

#[test]
fn a_level_triggered_host_handles_1100_simultaneous_events() {
    check_simultaneous_events(1100, Trigger::Level, OnWake::IterateOnce);
}

/// More events than one turn takes (4 × 1,024): the turn leaves the rest, says
/// `Pending`, and gives an edge-triggered host a fresh edge, so even a host that ignores
/// the status gets them all.
#[test]
fn events_beyond_one_turn_are_reported_and_wake_an_edge_triggered_host_again() {
    check_simultaneous_events(4200, Trigger::Edge, OnWake::IterateOnce);
}

// ---- trap 2: deadlines set from host code did not wake the host ----

/// Issue 13 trap 2: a `call_later` made from host code (outside weft's callbacks) made
/// nothing readable, so a host blocked on the descriptor slept through it (951 ms late,
/// bounded only by the host's own cap). Now a `timerfd` in the reactor's queue follows
/// the earliest deadline: a timer set, moved earlier, or a call queued or a stop asked
/// for from host code all wake the host.
#[test]
fn host_code_scheduling_work_makes_the_descriptor_readable() {
    let reactor = Reactor::new().unwrap();
    let mut waiter = Waiter::new(&reactor, Trigger::Edge);
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    assert!(!waiter.wait(Duration::ZERO), "nothing to do yet");

    let fired = Rc::new(Cell::new(None));
    let f = fired.clone();
    let set = Instant::now();
    reactor.call_later(ms(30), move || f.set(Some(Instant::now())));
    waiter.drive_until(&reactor, secs(10), || fired.get().is_some());
    assert!(fired.get().unwrap() >= set + ms(30), "never early");

    // A later timer, then one moved earlier than it: the earlier deadline wakes the host.
    let (late, early) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(false)));
    let l = late.clone();
    reactor.call_later(secs(3600), move || l.set(true));
    let e = early.clone();
    let moved = reactor.call_later(secs(7200), move || e.set(true));
    moved.reset(ms(20)).unwrap();
    waiter.drive_until(&reactor, secs(10), || early.get());
    assert!(!late.get());

    // A queued call and a stop, from host code.
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    reactor.call_soon(move || r.set(true));
    waiter.drive_until(&reactor, secs(10), || ran.get());
    reactor.stop();
    waiter.drive_until(&reactor, secs(10), || reactor.is_stopped());
}

/// Timers set inside weft's callbacks during an `iterate` wake the host too (the alarm is
/// brought in line when `iterate` returns).
#[test]
fn a_timer_set_in_a_callback_wakes_the_host_after_iterate_returns() {
    let reactor = Reactor::new().unwrap();
    let mut waiter = Waiter::new(&reactor, Trigger::Level);
    let fired = Rc::new(Cell::new(false));
    let (f, h) = (fired.clone(), reactor.handle());
    reactor.call_soon(move || {
        h.call_later(ms(20), move || f.set(true));
    });
    waiter.drive_until(&reactor, secs(10), || fired.get());
}

// ---- trap 3: start, stop and shutdown existed only inside run() ----

/// Issue 13 trap 3: `call_when_running` never fired under `iterate`.
#[test]
fn the_first_iterate_starts_the_reactor() {
    let reactor = Reactor::new().unwrap();
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    reactor.call_when_running(move || r.set(true));
    assert!(!reactor.is_running());
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    assert!(reactor.is_running() && ran.get());
}

/// `start()` queues the `call_when_running` calls and makes the descriptor readable.
#[test]
fn start_wakes_the_host_for_call_when_running() {
    let reactor = Reactor::new().unwrap();
    let mut waiter = Waiter::new(&reactor, Trigger::Edge);
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    reactor.call_when_running(move || r.set(true));
    reactor.start();
    assert!(reactor.is_running() && !ran.get());
    waiter.drive_until(&reactor, secs(10), || ran.get());
}

/// Issue 13 trap 3: a host could not see a stop nor run the shutdown without blocking in
/// `run()`. Now it sees `is_stopping`, and its `iterate` calls run the phases, waiting
/// for a "before" trigger's Deferred, until `is_stopped`.
#[test]
fn a_host_drives_the_shutdown_through_iterate() {
    let reactor = Reactor::new().unwrap();
    let mut waiter = Waiter::new(&reactor, Trigger::Edge);
    let log = Rc::new(RefCell::new(Vec::new()));
    let (l, h) = (log.clone(), reactor.handle());
    reactor.add_shutdown_trigger(Phase::Before, move || {
        let (d, l) = (Deferred::new(), l.clone());
        let d2 = d.clone();
        h.call_later(ms(20), move || {
            l.borrow_mut().push("before done");
            d2.callback(()).unwrap();
        });
        d
    });
    let l = log.clone();
    reactor.add_shutdown_trigger(Phase::During, move || l.borrow_mut().push("during"));
    let l = log.clone();
    reactor.add_shutdown_trigger(Phase::After, move || l.borrow_mut().push("after"));
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    assert!(!reactor.stop_requested() && !reactor.is_stopping());

    reactor.stop();
    assert!(reactor.stop_requested() && reactor.is_stopping() && reactor.is_running());
    let mut statuses = Vec::new();
    while !reactor.is_stopped() {
        assert!(waiter.wait(secs(10)), "the shutdown stalled");
        statuses.push(reactor.iterate(Some(Duration::ZERO)).unwrap());
    }
    assert_eq!(*log.borrow(), ["before done", "during", "after"]);
    assert_eq!(statuses.last(), Some(&IterateStatus::Stopped));
    assert!(!reactor.is_running() && !reactor.is_stopping() && !reactor.stop_requested());
}

/// A "before" trigger that turns the loop itself (a nested `iterate`, as a host's own
/// code might) neither starts the next phase early nor makes the shutdown forget the
/// Deferred it returns.
#[test]
fn a_trigger_that_iterates_the_loop_does_not_cut_its_phase_short() {
    let reactor = Rc::new(Reactor::new().unwrap());
    let log = Rc::new(RefCell::new(Vec::new()));
    let (l, weak) = (log.clone(), Rc::downgrade(&reactor));
    reactor.add_shutdown_trigger(Phase::Before, move || {
        let reactor = weak.upgrade().unwrap();
        reactor.iterate(Some(Duration::ZERO)).unwrap();
        l.borrow_mut().push("before ran");
        let (d, l) = (Deferred::new(), l.clone());
        let d2 = d.clone();
        reactor.call_later(ms(20), move || {
            l.borrow_mut().push("before done");
            d2.callback(()).unwrap();
        });
        d
    });
    let l = log.clone();
    reactor.add_shutdown_trigger(Phase::During, move || l.borrow_mut().push("during"));
    reactor.stop();
    let start = Instant::now();
    while reactor.iterate(Some(ms(100))).unwrap() != IterateStatus::Stopped {
        assert!(start.elapsed() < secs(10), "the shutdown stalled");
    }
    assert_eq!(*log.borrow(), ["before ran", "before done", "during"]);
}

/// The same graceful stop as under `run()` (issue 9 §1.2): the "before" trigger drains,
/// then every connection and port is closed with its protocol told, through `iterate`.
#[test]
fn a_host_driven_stop_closes_every_connection_as_run_does() {
    let reactor = Reactor::new().unwrap();
    let mut waiter = Waiter::new(&reactor, Trigger::Edge);
    let scenario = graceful::setup(&reactor);
    let connected = Rc::new(Cell::new(false));
    let c = connected.clone();
    scenario.connected.add_callback(move |()| c.set(true));
    waiter.drive_until(&reactor, secs(10), || connected.get());
    reactor.stop();
    waiter.drive_until(&reactor, secs(10), || reactor.is_stopped());
    graceful::check(&scenario);
}

/// SIGTERM with `stop_on_signals` under a host: the host sees the stop through the
/// descriptor and drives the same graceful shutdown.
#[test]
fn sigterm_under_a_host_closes_every_connection() {
    let _signals = crate::support::signals_lock();
    let reactor = Reactor::new().unwrap();
    reactor.stop_on_signals().unwrap();
    let mut waiter = Waiter::new(&reactor, Trigger::Level);
    let scenario = graceful::setup(&reactor);
    scenario.connected.add_callback(|()| {
        signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
    });
    waiter.drive_until(&reactor, secs(10), || reactor.is_stopped());
    graceful::check(&scenario);
}

/// Issue 13 trap 3: after `stop()` every `iterate(timeout)` returned at once, a busy loop
/// for a host that blocks in it. Once stopped, `iterate` waits for its timeout when
/// nothing is due (and still runs what is).
#[test]
fn iterate_after_the_shutdown_waits_for_its_timeout() {
    let reactor = Reactor::new().unwrap();
    reactor.stop();
    while reactor.iterate(Some(secs(1))).unwrap() != IterateStatus::Stopped {}
    let start = Instant::now();
    for _ in 0..3 {
        assert_eq!(reactor.iterate(Some(ms(40))).unwrap(), IterateStatus::Stopped);
    }
    assert!(start.elapsed() >= ms(120), "iterate returned early: {:?}", start.elapsed());
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    reactor.call_later(ms(1), move || r.set(true));
    let start = Instant::now();
    while !ran.get() && start.elapsed() < secs(10) {
        reactor.iterate(Some(secs(1))).unwrap();
    }
    assert!(ran.get(), "a stopped reactor still runs its timers when iterated");
}

/// A `stop()` before the reactor started is kept: it stops right after starting, once
/// the `call_when_running` calls ran.
#[test]
fn a_stop_before_the_start_stops_right_after_it() {
    let reactor = Reactor::new().unwrap();
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    reactor.call_when_running(move || r.set(true));
    reactor.stop();
    assert!(reactor.stop_requested() && !reactor.is_running());
    reactor.run();
    assert!(ran.get() && reactor.is_stopped());
}

// ---- trap 4: timeout rounding ----

/// Issue 13 trap 4: a host converting `time_until_next()` with `as_millis()` slept 0 ms
/// for the last fraction of a millisecond, again and again (about 2,700 wake-ups per
/// timer). It is now rounded up to whole milliseconds, so such a host wakes once or
/// twice; `next_deadline` gives the exact `Instant`.
#[test]
fn time_until_next_rounds_up_so_a_millisecond_host_does_not_spin() {
    let reactor = Reactor::new().unwrap();
    assert_eq!(reactor.time_until_next(), None);
    assert_eq!(reactor.next_deadline(), None);
    let fired = Rc::new(Cell::new(false));
    let f = fired.clone();
    let before = Instant::now();
    reactor.call_later(Duration::from_micros(10_500), move || f.set(true));
    let after = Instant::now();
    let deadline = reactor.next_deadline().unwrap();
    assert!(deadline >= before + Duration::from_micros(10_500));
    assert!(deadline <= after + Duration::from_micros(10_500));
    let wait = reactor.time_until_next().unwrap();
    assert_eq!(wait.subsec_nanos() % 1_000_000, 0, "{wait:?} is whole milliseconds");
    assert!(wait >= deadline.saturating_duration_since(Instant::now()));

    // A host that sleeps `as_millis()` (poll(2) on nothing, as on its own idle sockets).
    let mut wakes = 0;
    while !fired.get() {
        let millis = reactor.time_until_next().map_or(1000, |t| t.as_millis() as i64);
        let timeout = Timespec { tv_sec: millis / 1000, tv_nsec: (millis % 1000) * 1_000_000 };
        rustix::event::poll(&mut [], Some(&timeout)).unwrap();
        reactor.iterate(Some(Duration::ZERO)).unwrap();
        wakes += 1;
        assert!(wakes < 100, "the host spins");
    }
    assert!(wakes <= 3, "{wakes} wake-ups for one timer");

    reactor.call_soon(|| {});
    assert_eq!(reactor.time_until_next(), Some(Duration::ZERO));
    assert!(reactor.next_deadline().unwrap() <= Instant::now());
}
