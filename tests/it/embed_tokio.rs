//! The tokio host of `examples/embed_tokio.rs` (`current_thread` + `AsyncFd`, which
//! waits edge-triggered), run in-process (issue 13): the same checks as for the epoll
//! host in `embed_epoll.rs`, whose docs say how the timing figures are asserted.

use std::cell::Cell;
use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::runtime::Runtime;
use tokio::task::LocalSet;
use weft::reactor::{Address, DatagramProtocol, Reactor};
use weft::Deferred;

use crate::support::{
    check_timer_lateness, check_wake_latency, in_child, least_idle_cpu, localhost, ms, open_fds,
    post_while_asleep, run_delay, run_in_child, secs, this_thread, watchdog, Lateness,
};

#[allow(dead_code, clippy::duplicate_mod)] // The example's `main` is not used here; both examples load `common/echo.rs`.
#[path = "../../examples/embed_tokio.rs"]
mod example;

use example::{drive, greet_clients, serve_echo, GREETING};

/// A wait this long means the host missed a wake-up: the test fails.
const QUIET: Duration = Duration::from_secs(10);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Runs weft's driver (the example's `drive`) beside `test` on one tokio thread; `test`
/// ends by stopping weft, and the driver returns once the shutdown has finished.
fn host<'a>(rt: &Runtime, reactor: &'a Reactor, test: impl Future<Output = ()> + 'a) {
    LocalSet::new().block_on(rt, async {
        let (driven, ()) = tokio::join!(tokio::time::timeout(secs(60), drive(reactor)), test);
        driven.expect("the driver returned once weft stopped").unwrap();
    });
    assert!(reactor.is_stopped());
}

/// Waits for `d` (fired by weft) with the `QUIET` limit.
async fn within_quiet<T: 'static>(d: Deferred<T>) -> T {
    match tokio::time::timeout(QUIET, d).await {
        Ok(r) => r.unwrap(),
        Err(_) => panic!("the host missed a wake-up: quiet for {QUIET:?}"),
    }
}

#[test]
fn the_tokio_host_serves_weft_beside_its_own_server_and_stops_cleanly() {
    let (rt, reactor) = (runtime(), Reactor::new().unwrap());
    let Address::Tcp(echo) = serve_echo(&reactor, localhost()).unwrap().local_addr() else { unreachable!() };
    host(&rt, &reactor, async {
        let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
        let own = listener.local_addr().unwrap();
        let server = tokio::task::spawn_local(greet_clients(listener));
        let mut e = tokio::net::TcpStream::connect(echo).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut e, b"ping").await.unwrap();
        let mut pong = [0u8; 4];
        tokio::time::timeout(QUIET, e.read_exact(&mut pong)).await.unwrap().unwrap();
        assert_eq!(&pong, b"ping");
        let mut greeting = Vec::new();
        let mut g = tokio::net::TcpStream::connect(own).await.unwrap();
        tokio::time::timeout(QUIET, g.read_to_end(&mut greeting)).await.unwrap().unwrap();
        assert_eq!(greeting, GREETING);
        // Stop from a tokio task: the open echo connection is closed by the shutdown.
        reactor.stop();
        let mut rest = Vec::new();
        tokio::time::timeout(QUIET, e.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert!(rest.is_empty());
        server.abort();
    });
}

/// Idle CPU over 2 s (CPU time of the runtime's thread), as for the epoll host (the
/// least of up to three periods: see `least_idle_cpu`).
#[test]
fn the_idle_tokio_host_uses_no_cpu() {
    let cpu = least_idle_cpu(ms(5), || {
        let (rt, reactor) = (runtime(), Reactor::new().unwrap());
        let _echo = serve_echo(&reactor, localhost()).unwrap();
        let (_watchdog, watching) = watchdog(&reactor, secs(30));
        let (cpu, wall) = (cpu_time::ThreadTime::now(), Instant::now());
        host(&rt, &reactor, async {
            let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
            let server = tokio::task::spawn_local(greet_clients(listener));
            let (stopped, s) = (Deferred::<()>::new(), reactor.handle());
            let st = stopped.clone();
            reactor.call_later(secs(2), move || {
                s.stop();
                st.callback(()).unwrap();
            });
            stopped.await.unwrap();
            server.abort();
        });
        let (cpu, wall) = (cpu.elapsed(), wall.elapsed());
        drop(watching);
        eprintln!("tokio host: idle CPU {cpu:?} over {wall:?}");
        assert!(wall >= secs(2) && wall < secs(30), "stopped by its timer, not the watchdog: {wall:?}");
        cpu
    });
    assert!(cpu < ms(5), "idle CPU {cpu:?}");
}

/// Timer lateness: a `call_later(20 ms)` made from a tokio task, ten times; asserted as
/// for the epoll host (`embed_epoll::host_timer_lateness`).
#[test]
fn tokio_host_timer_lateness() {
    let (rt, reactor) = (runtime(), Reactor::new().unwrap());
    let mut late = Vec::new();
    host(&rt, &reactor, async {
        for _ in 0..10 {
            let fired = Deferred::<(Instant, Duration)>::new();
            let f = fired.clone();
            let (due, queued) = (Instant::now() + ms(20), run_delay());
            reactor.call_later(ms(20), move || f.callback((Instant::now(), run_delay())).unwrap());
            let (at, queued_at) = within_quiet(fired).await;
            late.push(Lateness {
                late: at.saturating_duration_since(due),
                queued: queued_at.saturating_sub(queued),
            });
        }
        reactor.stop();
    });
    check_timer_lateness("tokio", &late);
}

/// Wake latency: another thread's `call_from_thread` reaches weft while tokio sleeps.
#[test]
fn tokio_host_wake_latency_from_another_thread() {
    let (rt, reactor) = (runtime(), Reactor::new().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let poster = post_while_asleep(&reactor, this_thread(), 10, move |d| tx.send(d).unwrap());
    let mut samples = Vec::new();
    host(&rt, &reactor, async {
        while samples.len() < 10 {
            let sample = tokio::time::timeout(QUIET, rx.recv()).await;
            samples.push(sample.expect("the host missed a wake-up").expect("the poster sends ten"));
        }
        reactor.stop();
    });
    poster.join().unwrap();
    check_wake_latency("tokio", &mut samples);
}

struct Count(Rc<Cell<usize>>, usize, Deferred<()>);

impl DatagramProtocol for Count {
    fn datagram_received(&mut self, _data: &[u8], _from: SocketAddr) {
        self.0.set(self.0.get() + 1);
        if self.0.get() == self.1 {
            self.2.callback(()).unwrap();
        }
    }
}

/// 1,100 simultaneous events under tokio's edge-triggered `AsyncFd` (where the
/// `readable().await; iterate(0); clear_ready()` host used to stall with 76 left).
#[test]
fn the_tokio_host_handles_1100_simultaneous_events() {
    let (rt, reactor) = (runtime(), Reactor::new().unwrap());
    let (count, all) = (Rc::new(Cell::new(0)), Deferred::<()>::new());
    let ports: Vec<SocketAddr> = (0..1100)
        .map(|_| {
            reactor
                .listen_udp(localhost(), Count(count.clone(), 1100, all.clone()))
                .unwrap()
                .get_host()
                .unwrap()
        })
        .collect();
    host(&rt, &reactor, async {
        tokio::task::yield_now().await; // the driver now waits on the descriptor
        let sender = UdpSocket::bind(localhost()).unwrap();
        for p in &ports {
            sender.send_to(b"x", p).unwrap();
        }
        within_quiet(all).await;
        reactor.stop();
    });
    assert_eq!(count.get(), 1100);
}

/// As for the epoll host: a shutdown driven through `iterate` from tokio leaves no
/// descriptor open (counted alone, in a child process).
#[test]
fn a_shutdown_driven_from_tokio_leaves_no_descriptor_open() {
    run_in_child("embed_tokio::child_tokio_shutdown_leaves_no_descriptor_open");
}

/// Serves a few connections through weft's echo and tokio's own server, then stops.
fn serve_some_and_stop(rt: &Runtime, reactor: &Reactor) {
    let Address::Tcp(echo) = serve_echo(reactor, localhost()).unwrap().local_addr() else { unreachable!() };
    host(rt, reactor, async {
        let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
        let own = listener.local_addr().unwrap();
        let server = tokio::task::spawn_local(greet_clients(listener));
        let mut clients = Vec::new();
        for _ in 0..3 {
            let mut c = tokio::net::TcpStream::connect(echo).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut c, b"x").await.unwrap();
            clients.push(c);
        }
        for c in &mut clients {
            tokio::time::timeout(QUIET, c.read_exact(&mut [0u8; 1])).await.expect("an echo").unwrap();
        }
        let mut g = tokio::net::TcpStream::connect(own).await.unwrap();
        g.read_to_end(&mut Vec::new()).await.unwrap();
        reactor.stop();
        server.abort();
    });
}

#[test]
#[ignore = "run alone in a child process by a_shutdown_driven_from_tokio_leaves_no_descriptor_open"]
fn child_tokio_shutdown_leaves_no_descriptor_open() {
    if !in_child("embed_tokio::child_tokio_shutdown_leaves_no_descriptor_open") {
        return;
    }
    let rt = runtime();
    serve_some_and_stop(&rt, &Reactor::new().unwrap()); // tokio's lazily made descriptors
    let baseline = open_fds();
    {
        let reactor = Reactor::new().unwrap();
        let own = open_fds() - baseline;
        serve_some_and_stop(&rt, &reactor);
        assert_eq!(open_fds(), baseline + own, "only the reactor's own descriptors are left");
    }
    assert_eq!(open_fds(), baseline, "and none once it is dropped");
}
