//! The plain epoll host of `examples/embed_epoll.rs`, run in-process (issue 13): it
//! serves weft's echo beside its own server, idles at no CPU, wakes for a timer set from
//! its own code and for another thread's call, takes 1,100 simultaneous events whether
//! it waits level- or edge-triggered, and leaves no descriptor open after a shutdown
//! driven through `iterate`. Timing figures are printed (`-- --nocapture`); see
//! `host_timer_lateness` for how they are asserted on a loaded machine.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use weft::reactor::{Address, DatagramProtocol, Reactor, ThreadHandle};

use crate::support::{
    check_timer_lateness, check_wake_latency, in_child, least_idle_cpu, localhost, ms, open_fds,
    post_while_asleep, run_delay, run_in_child, secs, this_thread, watchdog, Lateness,
};

#[allow(dead_code, clippy::duplicate_mod)] // The example's `main` is not used here; both examples load `common/echo.rs`.
#[path = "../../examples/embed_epoll.rs"]
mod example;

use example::{serve_echo, Host, Trigger, GREETING};

/// A host that waits this long without a wake-up has missed one: the test fails.
const QUIET: Duration = Duration::from_secs(10);

fn tcp_addr(a: Address) -> SocketAddr {
    match a {
        Address::Tcp(a) => a,
        other => panic!("not TCP: {other:?}"),
    }
}

/// Turns the host (waiting with no timeout of its own, bar the test's `QUIET` limit)
/// until `done`.
#[track_caller]
fn turn_until(host: &mut Host<'_>, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(host.turn(Some(QUIET)).unwrap(), "the host missed a wake-up: quiet for {QUIET:?}");
    }
}

/// Talks to both servers from another thread (blocking sockets), keeps one echo
/// connection open, and reports what it got (waking the host through weft).
fn clients(
    echo: SocketAddr,
    own: SocketAddr,
    out: mpsc::Sender<(Vec<u8>, Vec<u8>, TcpStream)>,
    wake: ThreadHandle,
) {
    let mut e = TcpStream::connect(echo).unwrap();
    e.write_all(b"ping").unwrap();
    let mut pong = [0u8; 4];
    e.read_exact(&mut pong).unwrap();
    let mut greeting = Vec::new();
    TcpStream::connect(own).unwrap().read_to_end(&mut greeting).unwrap();
    out.send((pong.to_vec(), greeting, e)).unwrap();
    wake.call_from_thread(|| {}).unwrap();
}

#[track_caller]
fn check_serves_both_and_stops_cleanly(trigger: Trigger) {
    let reactor = Reactor::new().unwrap();
    let echo = tcp_addr(serve_echo(&reactor, localhost()).unwrap().local_addr());
    let mut host = Host::new(&reactor, localhost(), trigger).unwrap();
    let own = host.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let wake = reactor.thread_handle();
    let talker = std::thread::spawn(move || clients(echo, own, tx, wake));
    let mut got = None;
    turn_until(&mut host, || {
        got = got.take().or_else(|| rx.try_recv().ok());
        got.is_some()
    });
    let (pong, greeting, mut open) = got.unwrap();
    assert_eq!((pong.as_slice(), greeting.as_slice()), (&b"ping"[..], GREETING));
    // Stop from host code; the host drives the shutdown, which closes the open echo
    // connection (its peer reads end of file).
    reactor.stop();
    host.run().unwrap();
    assert!(reactor.is_stopped());
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    talker.join().unwrap();
}

#[test]
fn the_epoll_host_serves_weft_beside_its_own_server_and_stops_cleanly() {
    check_serves_both_and_stops_cleanly(Trigger::Level);
    check_serves_both_and_stops_cleanly(Trigger::Edge);
}

/// Idle CPU: with both servers listening and nothing to do for 2 s, the host thread
/// uses (CPU time, not wall time) under 5 ms, shutdown included (the least of up to
/// three such periods: see `least_idle_cpu`), waking at most three times in each. The
/// 2 s are real: a weft timer set from host code stops the reactor, bounded by a
/// watchdog thread.
#[test]
fn the_idle_epoll_host_uses_no_cpu() {
    let cpu = least_idle_cpu(ms(5), || {
        let reactor = Reactor::new().unwrap();
        let _echo = serve_echo(&reactor, localhost()).unwrap();
        let mut host = Host::new(&reactor, localhost(), Trigger::Level).unwrap();
        let (_watchdog, watching) = watchdog(&reactor, secs(30));
        // The clocks start before the timer is set: a thread preempted between the two
        // would otherwise start its wall clock late and see the timer fire "early".
        let (cpu, wall) = (cpu_time::ThreadTime::now(), Instant::now());
        let h = reactor.handle();
        reactor.call_later(secs(2), move || h.stop());
        host.run().unwrap();
        let (cpu, wall) = (cpu.elapsed(), wall.elapsed());
        drop(watching);
        eprintln!("epoll host: idle CPU {cpu:?} over {wall:?} ({} wake-ups)", host.stats.wakeups);
        assert!(wall >= secs(2) && wall < secs(30), "stopped by its timer, not the watchdog: {wall:?}");
        assert!(host.stats.wakeups <= 3, "{:?}", host.stats);
        cpu
    });
    assert!(cpu < ms(5), "idle CPU {cpu:?}");
}

/// Timer lateness: a `call_later(20 ms)` made from host code, ten times. The host waits
/// on the descriptor with no timeout of its own, so it wakes only because the timer is
/// due (before issue 13 it slept through it: the `QUIET` limit fails the test).
///
/// Asserted: the best of ten is within 2 ms of the deadline, and none later than 250 ms,
/// each once the time the host's thread waited for a CPU (the kernel's `run_delay`) is
/// taken off. Why two bounds: the lateness that belongs to weft (the timerfd's
/// precision, no millisecond rounding) shows in the best sample, while the loose bound
/// catches a host that does not wake. Why the waits for a CPU are taken off: on a 2-core
/// machine busy with other builds and tests, the woken thread waited 4 to 24 ms for a
/// CPU in every one of the ten samples (best 3.9 ms raw), which is the scheduler's
/// lateness, not weft's. The raw figures are printed beside the corrected ones.
#[test]
fn host_timer_lateness() {
    let reactor = Reactor::new().unwrap();
    let mut host = Host::new(&reactor, localhost(), Trigger::Edge).unwrap();
    let mut late = Vec::new();
    for _ in 0..10 {
        let fired = Rc::new(Cell::new(None));
        let f = fired.clone();
        let (due, queued) = (Instant::now() + ms(20), run_delay());
        reactor.call_later(ms(20), move || f.set(Some((Instant::now(), run_delay()))));
        turn_until(&mut host, || fired.get().is_some());
        let (at, queued_at) = fired.get().unwrap();
        late.push(Lateness {
            late: at.saturating_duration_since(due),
            queued: queued_at.saturating_sub(queued),
        });
    }
    check_timer_lateness("epoll", &late);
}

/// Wake latency: another thread's `call_from_thread` reaches the host while it sleeps
/// in `epoll_wait`. Ten samples; printed; asserted only loosely (it woke at all).
#[test]
fn host_wake_latency_from_another_thread() {
    let reactor = Reactor::new().unwrap();
    let mut host = Host::new(&reactor, localhost(), Trigger::Level).unwrap();
    let (tx, rx) = mpsc::channel::<Duration>();
    let poster = post_while_asleep(&reactor, this_thread(), 10, move |d| tx.send(d).unwrap());
    let mut samples = Vec::new();
    turn_until(&mut host, || {
        samples.extend(rx.try_iter());
        samples.len() == 10
    });
    poster.join().unwrap();
    check_wake_latency("epoll", &mut samples);
}

/// A client that says nothing.
struct Quiet;

impl weft::reactor::Protocol for Quiet {
    fn data_received(&mut self, _data: &[u8]) {}
}

struct Count(Rc<Cell<usize>>);

impl DatagramProtocol for Count {
    fn datagram_received(&mut self, _data: &[u8], _from: SocketAddr) {
        self.0.set(self.0.get() + 1);
    }
}

#[track_caller]
fn check_1100_events(trigger: Trigger) {
    let reactor = Reactor::new().unwrap();
    let mut host = Host::new(&reactor, localhost(), trigger).unwrap();
    let count = Rc::new(Cell::new(0));
    let ports: Vec<SocketAddr> = (0..1100)
        .map(|_| reactor.listen_udp(localhost(), Count(count.clone())).unwrap().get_host().unwrap())
        .collect();
    let sender = UdpSocket::bind(localhost()).unwrap();
    for p in &ports {
        sender.send_to(b"x", p).unwrap();
    }
    turn_until(&mut host, || count.get() == 1100);
}

#[test]
fn the_epoll_host_handles_1100_simultaneous_events_edge_or_level_triggered() {
    check_1100_events(Trigger::Edge);
    check_1100_events(Trigger::Level);
}

/// A shutdown driven through `iterate` closes every socket weft opened: with the host
/// gone, only the reactor's own descriptors are left, and none once it is dropped.
/// Counted in `/proc/self/fd`, so it runs alone in a child process.
#[test]
fn a_shutdown_through_iterate_leaves_no_descriptor_open() {
    run_in_child("embed_epoll::child_shutdown_leaves_no_descriptor_open");
}

#[test]
#[ignore = "run alone in a child process by a_shutdown_through_iterate_leaves_no_descriptor_open"]
fn child_shutdown_leaves_no_descriptor_open() {
    if !in_child("embed_epoll::child_shutdown_leaves_no_descriptor_open") {
        return;
    }
    let baseline = open_fds();
    {
        let reactor = Reactor::new().unwrap();
        let own = open_fds() - baseline;
        let echo = tcp_addr(serve_echo(&reactor, localhost()).unwrap().local_addr());
        let mut host = Host::new(&reactor, localhost(), Trigger::Edge).unwrap();
        // Three clients through weft's echo, and a client weft itself connects.
        let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(echo).unwrap()).collect();
        let connected = Rc::new(Cell::new(false));
        let c = connected.clone();
        reactor.connect_tcp(echo, |_: &Address| Quiet, secs(5)).add_callback(move |p| {
            c.set(true);
            p
        });
        for mut c in &clients {
            c.set_nonblocking(true).unwrap();
            c.write_all(b"x").unwrap();
        }
        let mut echoed = [false; 3];
        turn_until(&mut host, || {
            for (mut c, done) in clients.iter().zip(&mut echoed) {
                *done = *done || c.read(&mut [0u8; 1]).is_ok_and(|n| n == 1);
            }
            connected.get() && echoed.iter().all(|&e| e)
        });
        reactor.stop();
        host.run().unwrap();
        drop(clients);
        drop(host);
        assert_eq!(open_fds(), baseline + own, "only the reactor's own descriptors are left");
    }
    assert_eq!(open_fds(), baseline, "and none once it is dropped");
}
