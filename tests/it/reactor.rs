//! The reactor through its public API: timers under the `Clock`, then the real loop on
//! 127.0.0.1. Every real-loop test is bounded by a reactor timer that stops the loop
//! and fails the test.

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use weft::reactor::{
    defer_later, Address, ConnectionDone, DatagramProtocol, LoopingCall, Phase, Protocol, PushProducer,
    Reactor, Transport, UdpTransport,
};
use weft::{CancelledError, Clock, Deferred, Failure, PanicError, ReactorTime};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Runs `reactor` until stopped, failing the test if `limit` passes first.
#[track_caller]
fn run_bounded(reactor: &Reactor, limit: Duration) {
    let timed_out = Rc::new(Cell::new(false));
    let (t, h) = (timed_out.clone(), reactor.handle());
    let guard = reactor.call_later(limit, move || {
        t.set(true);
        h.stop();
    });
    reactor.run();
    let _ = guard.cancel();
    assert!(!timed_out.get(), "the reactor test did not finish within {limit:?}");
}

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

// ---- the real loop ----

#[test]
fn reactor_runs_timers_soon_calls_and_survives_panics() {
    let reactor = Reactor::new().unwrap();
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    reactor.call_when_running(move || l.borrow_mut().push("running"));
    reactor.call_soon(|| panic!("a callback panics"));
    let l = log.clone();
    reactor.call_later(ms(20), move || l.borrow_mut().push("t20"));
    let l = log.clone();
    reactor.call_later(ms(5), move || l.borrow_mut().push("t5"));
    let (l, h) = (log.clone(), reactor.handle());
    reactor.call_later(ms(30), move || {
        l.borrow_mut().push("stop");
        h.stop();
    });
    run_bounded(&reactor, secs(5));
    assert_eq!(*log.borrow(), ["running", "t5", "t20", "stop"]);
}

#[test]
fn iterate_and_time_until_next_for_embedding() {
    use std::os::fd::AsRawFd;
    let reactor = Reactor::new().unwrap();
    assert!(reactor.as_raw_fd() >= 0);
    assert_eq!(reactor.time_until_next(), None);
    let fired = Rc::new(Cell::new(false));
    let f = fired.clone();
    reactor.call_later(ms(10), move || f.set(true));
    let wait = reactor.time_until_next().unwrap();
    assert!(wait <= ms(10));
    let start = Instant::now();
    while !fired.get() && start.elapsed() < secs(5) {
        reactor.iterate(reactor.time_until_next()).unwrap();
    }
    assert!(fired.get());
    reactor.call_soon(|| {});
    assert_eq!(reactor.time_until_next(), Some(Duration::ZERO));
}

#[test]
fn stop_waits_for_pending_shutdown_triggers_in_phase_order() {
    let reactor = Reactor::new().unwrap();
    reactor.set_shutdown_timeout(ms(300));
    let log = Rc::new(RefCell::new(Vec::new()));
    let (l, h) = (log.clone(), reactor.handle());
    reactor.add_shutdown_trigger(Phase::Before, move || {
        let d = Deferred::new();
        let (d2, l) = (d.clone(), l.clone());
        h.call_later(ms(20), move || {
            l.borrow_mut().push("before done");
            d2.callback(()).unwrap();
        });
        d
    });
    let l = log.clone();
    reactor.add_shutdown_trigger(Phase::During, move || {
        l.borrow_mut().push("during");
        Deferred::new() // never fires: bounded by the shutdown timeout
    });
    let l = log.clone();
    reactor.add_shutdown_trigger(Phase::After, move || l.borrow_mut().push("after"));
    let h = reactor.handle();
    reactor.call_soon(move || h.stop());
    let start = Instant::now();
    run_bounded(&reactor, secs(5));
    assert_eq!(*log.borrow(), ["before done", "during", "after"]);
    let took = start.elapsed();
    assert!(took >= ms(300) && took < secs(3), "shutdown took {took:?}");
}

#[test]
fn call_from_thread_from_4_threads_keeps_each_threads_order() {
    let reactor = Reactor::new().unwrap();
    let seen: Rc<RefCell<Vec<Vec<u32>>>> = Rc::new(RefCell::new(vec![Vec::new(); 4]));
    let (tx, rx) = mpsc::channel::<(usize, u32)>();
    let mut threads = Vec::new();
    for t in 0..4usize {
        let handle = reactor.thread_handle();
        let tx = tx.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..1000u32 {
                let tx = tx.clone();
                handle.call_from_thread(move || tx.send((t, i)).unwrap()).unwrap();
            }
        }));
    }
    drop(tx);
    // Collect on the reactor thread after each wake-up; stop after 4000 calls.
    let (s, h) = (seen.clone(), reactor.handle());
    let rx = Rc::new(rx);
    let lc = LoopingCall::new(reactor.handle(), move || {
        while let Ok((t, i)) = rx.try_recv() {
            s.borrow_mut()[t].push(i);
        }
        if s.borrow().iter().map(Vec::len).sum::<usize>() == 4000 {
            h.stop();
        }
    });
    let _done = lc.start(ms(1), true);
    run_bounded(&reactor, secs(10));
    for t in threads {
        t.join().unwrap();
    }
    for per_thread in seen.borrow().iter() {
        assert_eq!(*per_thread, (0..1000).collect::<Vec<_>>());
    }
}

#[test]
fn defer_to_thread_results_panics_and_cancel_before_start() {
    let reactor = Reactor::new().unwrap();
    reactor.set_thread_pool_size(1);
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let blocked: Deferred<u32> = reactor.defer_to_thread(move || {
        release_rx.recv().unwrap();
        41
    });
    let second_ran = Arc::new(AtomicBool::new(false));
    let s = second_ran.clone();
    let second: Deferred<u32> = reactor.defer_to_thread(move || {
        s.store(true, Ordering::SeqCst);
        1
    });
    let panics: Deferred<u32> = reactor.defer_to_thread(|| panic!("in a pool thread"));
    second.cancel();
    release_tx.send(()).unwrap();
    let results = Rc::new(RefCell::new(Vec::new()));
    let (r, h) = (results.clone(), reactor.handle());
    let p2 = panics.clone();
    blocked.add_callback(move |v| {
        r.borrow_mut().push(v + 1);
        let h = h.clone();
        p2.add_both(move |res| {
            assert!(res.unwrap_err().check::<PanicError>());
            h.stop();
            0u32
        });
        v
    });
    run_bounded(&reactor, secs(5));
    assert_eq!(*results.borrow(), [42]);
    assert!(!second_ran.load(Ordering::SeqCst));
    assert!(second.take_result().unwrap().unwrap_err().check::<CancelledError>());
}

/// Echoes what it receives; records how the connection ended.
struct Echo {
    transport: Option<Transport>,
    lost: Rc<RefCell<Vec<Failure>>>,
}

impl Protocol for Echo {
    fn connection_made(&mut self, transport: Transport) {
        self.transport = Some(transport);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.transport.as_ref().unwrap().write(data);
    }
    fn connection_lost(&mut self, reason: Failure) {
        self.lost.borrow_mut().push(reason);
    }
}

fn echo_factory(lost: &Rc<RefCell<Vec<Failure>>>) -> impl FnMut(&Address) -> Echo {
    let lost = lost.clone();
    move |_: &Address| Echo { transport: None, lost: lost.clone() }
}

/// Sends `message` on connect, collects the reply, closes after `expect` bytes, and
/// calls `done` with what it got.
struct Client {
    message: Vec<u8>,
    expect: usize,
    got: Vec<u8>,
    transport: Option<Transport>,
    done: Option<Box<dyn FnOnce(Vec<u8>)>>,
}

impl Protocol for Client {
    fn connection_made(&mut self, transport: Transport) {
        transport.write(&self.message);
        self.transport = Some(transport);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.got.extend_from_slice(data);
        if self.got.len() >= self.expect {
            self.transport.as_ref().unwrap().lose_connection();
        }
    }
    fn connection_lost(&mut self, _reason: Failure) {
        if let Some(done) = self.done.take() {
            done(std::mem::take(&mut self.got));
        }
    }
}

#[test]
fn tcp_echo_round_trip() {
    let reactor = Reactor::new().unwrap();
    let lost = Rc::new(RefCell::new(Vec::new()));
    let port = reactor.listen_tcp(localhost(), echo_factory(&lost), false).unwrap();
    let addr = match port.local_addr() {
        Address::Tcp(a) => a,
        other => panic!("{other:?}"),
    };
    let reply = Rc::new(RefCell::new(Vec::new()));
    let (r, h) = (reply.clone(), reactor.handle());
    let message: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let m = message.clone();
    let d = reactor.connect_tcp(
        addr,
        move |_: &Address| {
            let (r, h) = (r.clone(), h.clone());
            Client {
                message: m.clone(),
                expect: m.len(),
                got: Vec::new(),
                transport: None,
                done: Some(Box::new(move |got| {
                    *r.borrow_mut() = got;
                    let h2 = h.clone();
                    h.call_later(ms(20), move || h2.stop());
                })),
            }
        },
        secs(5),
    );
    d.add_callback(move |p| {
        let peer = p.borrow().transport.as_ref().unwrap().get_peer();
        assert_eq!(peer, Address::Tcp(addr));
        p
    });
    run_bounded(&reactor, secs(10));
    assert!(*reply.borrow() == message, "echo differs ({} bytes back)", reply.borrow().len());
    assert_eq!(lost.borrow().len(), 1);
    assert!(lost.borrow()[0].check::<ConnectionDone>(), "{}", lost.borrow()[0]);
}

#[test]
fn tcp_500_concurrent_connections() {
    let reactor = Reactor::new().unwrap();
    let lost = Rc::new(RefCell::new(Vec::new()));
    let port = reactor.listen_tcp(localhost(), echo_factory(&lost), false).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let finished = Rc::new(Cell::new(0));
    for i in 0..500u32 {
        let (f, h) = (finished.clone(), reactor.handle());
        let msg = format!("hello {i}").into_bytes();
        let d = reactor.connect_tcp(
            addr,
            move |_: &Address| {
                let (f, h, msg) = (f.clone(), h.clone(), msg.clone());
                let expected = msg.clone();
                Client {
                    expect: msg.len(),
                    message: msg,
                    got: Vec::new(),
                    transport: None,
                    done: Some(Box::new(move |got| {
                        assert_eq!(got, expected);
                        f.set(f.get() + 1);
                        if f.get() == 500 {
                            h.stop();
                        }
                    })),
                }
            },
            secs(5),
        );
        d.add_errback(|f: Failure| -> Result<_, Failure> { panic!("connect failed: {f}") });
    }
    run_bounded(&reactor, secs(20));
    assert_eq!(finished.get(), 500);
}

#[test]
fn tcp_connect_refused_is_a_failure() {
    let reactor = Reactor::new().unwrap();
    let addr = {
        let l = std::net::TcpListener::bind(localhost()).unwrap();
        l.local_addr().unwrap()
    };
    let got = Rc::new(RefCell::new(None));
    let (g, h) = (got.clone(), reactor.handle());
    let lost = Rc::new(RefCell::new(Vec::new()));
    let d = reactor.connect_tcp(addr, echo_factory(&lost), secs(5));
    d.add_both(move |r| {
        *g.borrow_mut() = Some(r.map(|_| ()));
        h.stop();
        Err::<Rc<RefCell<Echo>>, _>(Failure::msg("handled"))
    });
    d.add_errback(|_| -> Result<Rc<RefCell<Echo>>, Failure> { Err(Failure::msg("consumed")) });
    run_bounded(&reactor, secs(5));
    let r = got.borrow_mut().take().unwrap();
    let f = r.unwrap_err();
    assert_eq!(f.downcast_ref::<std::io::Error>().unwrap().kind(), std::io::ErrorKind::ConnectionRefused);
    let _ = d.take_result();
}

#[test]
fn tcp_peer_reset_reaches_connection_lost_as_an_io_error() {
    let reactor = Reactor::new().unwrap();
    let lost = Rc::new(RefCell::new(Vec::new()));
    let port = reactor.listen_tcp(localhost(), echo_factory(&lost), false).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    // A blocking client that resets the connection (SO_LINGER 0) once the server is up.
    let stream = TcpStream::connect(addr).unwrap();
    let h = reactor.handle();
    let stream = RefCell::new(Some(stream));
    reactor.call_later(ms(20), move || {
        socket2::SockRef::from(stream.borrow().as_ref().unwrap()).set_linger(Some(Duration::ZERO)).unwrap();
        drop(stream.borrow_mut().take());
    });
    let l = lost.clone();
    let lc = LoopingCall::new(reactor.handle(), move || {
        if !l.borrow().is_empty() {
            h.stop();
        }
    });
    let _done = lc.start(ms(5), false);
    run_bounded(&reactor, secs(5));
    let lost = lost.borrow();
    assert_eq!(lost.len(), 1);
    let e = lost[0].downcast_ref::<std::io::Error>().expect("an io::Error");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
}

/// Reads everything, and on end of file answers with its reverse, then closes.
struct Reverser {
    transport: Option<Transport>,
    got: Vec<u8>,
}

impl Protocol for Reverser {
    fn connection_made(&mut self, transport: Transport) {
        self.transport = Some(transport);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.got.extend_from_slice(data);
    }
    fn read_connection_lost(&mut self) -> bool {
        let t = self.transport.as_ref().unwrap();
        self.got.reverse();
        t.write(&self.got);
        t.lose_connection();
        true
    }
}

/// Writes a message, half-closes, collects the answer.
struct HalfCloser {
    got: Rc<RefCell<Vec<u8>>>,
    done: Option<Box<dyn FnOnce()>>,
}

impl Protocol for HalfCloser {
    fn connection_made(&mut self, transport: Transport) {
        transport.write(b"hello");
        transport.write_sequence(&[b", ", b"world"]);
        transport.lose_write_connection();
    }
    fn data_received(&mut self, data: &[u8]) {
        self.got.borrow_mut().extend_from_slice(data);
    }
    fn connection_lost(&mut self, reason: Failure) {
        assert!(reason.check::<ConnectionDone>(), "{reason}");
        (self.done.take().unwrap())();
    }
}

#[test]
fn tcp_half_close_lets_the_server_answer_after_eof() {
    let reactor = Reactor::new().unwrap();
    let port = reactor
        .listen_tcp(localhost(), |_: &Address| Reverser { transport: None, got: Vec::new() }, false)
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let got = Rc::new(RefCell::new(Vec::new()));
    let (g, h) = (got.clone(), reactor.handle());
    let _d = reactor.connect_tcp(
        addr,
        move |_: &Address| {
            let h = h.clone();
            HalfCloser { got: g.clone(), done: Some(Box::new(move || h.stop())) }
        },
        secs(5),
    );
    run_bounded(&reactor, secs(5));
    assert_eq!(&*got.borrow(), b"dlrow ,olleh");
}

/// Writes `total` bytes as fast as the transport lets it, pausing when told.
struct Firehose {
    transport: Transport,
    reactor: weft::ReactorHandle,
    paused: Cell<bool>,
    sent: Cell<usize>,
    total: usize,
    max_buffered: Rc<Cell<usize>>,
}

impl Firehose {
    fn pump(self: &Rc<Self>) {
        let chunk = [7u8; 16 * 1024];
        while !self.paused.get() && self.sent.get() < self.total {
            self.transport.write(&chunk);
            self.sent.set(self.sent.get() + chunk.len());
            self.max_buffered.set(self.max_buffered.get().max(self.transport.buffered()));
        }
        if self.sent.get() >= self.total {
            self.transport.unregister_producer();
            self.transport.lose_connection();
        }
    }
}

struct HoseProducer(Rc<Firehose>);

impl PushProducer for HoseProducer {
    fn pause_producing(&self) {
        self.0.paused.set(true);
    }
    fn resume_producing(&self) {
        self.0.paused.set(false);
        let me = self.0.clone();
        self.0.reactor.call_soon(move || me.pump());
    }
}

struct FirehoseServer {
    reactor: weft::ReactorHandle,
    max_buffered: Rc<Cell<usize>>,
}

impl Protocol for FirehoseServer {
    fn connection_made(&mut self, transport: Transport) {
        let hose = Rc::new(Firehose {
            transport: transport.clone(),
            reactor: self.reactor.clone(),
            paused: Cell::new(false),
            sent: Cell::new(0),
            total: 8 << 20,
            max_buffered: self.max_buffered.clone(),
        });
        transport.register_producer(Rc::new(HoseProducer(hose.clone())));
        hose.pump();
    }
    fn data_received(&mut self, _data: &[u8]) {}
}

/// Reads 128 KiB, then pauses reading for a millisecond.
struct SlowReader {
    transport: Option<Transport>,
    reactor: weft::ReactorHandle,
    since_pause: usize,
    total: Rc<Cell<usize>>,
}

impl Protocol for SlowReader {
    fn connection_made(&mut self, transport: Transport) {
        self.transport = Some(transport);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.total.set(self.total.get() + data.len());
        self.since_pause += data.len();
        if self.since_pause >= 128 * 1024 {
            self.since_pause = 0;
            let t = self.transport.clone().unwrap();
            t.pause_producing();
            self.reactor.call_later(ms(1), move || t.resume_producing());
        }
    }
    fn connection_lost(&mut self, _reason: Failure) {
        self.reactor.stop();
    }
}

#[test]
fn tcp_slow_reader_fast_writer_keeps_the_buffer_bounded() {
    let reactor = Reactor::new().unwrap();
    let max_buffered = Rc::new(Cell::new(0));
    let (m, h) = (max_buffered.clone(), reactor.handle());
    let port = reactor
        .listen_tcp(
            localhost(),
            move |_: &Address| FirehoseServer { reactor: h.clone(), max_buffered: m.clone() },
            false,
        )
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let total = Rc::new(Cell::new(0));
    let (t, h) = (total.clone(), reactor.handle());
    let _d = reactor.connect_tcp(
        addr,
        move |_: &Address| SlowReader {
            transport: None,
            reactor: h.clone(),
            since_pause: 0,
            total: t.clone(),
        },
        secs(5),
    );
    run_bounded(&reactor, secs(20));
    assert_eq!(total.get(), 8 << 20);
    assert!(max_buffered.get() < 256 * 1024, "write buffer grew to {} bytes", max_buffered.get());
}

#[test]
fn unix_socket_echo_round_trip() {
    let reactor = Reactor::new().unwrap();
    let dir = std::env::temp_dir().join(format!("weft-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    let _ = std::fs::remove_file(&path);
    let lost = Rc::new(RefCell::new(Vec::new()));
    let _port = reactor.listen_unix(&path, echo_factory(&lost)).unwrap();
    let reply = Rc::new(RefCell::new(Vec::new()));
    let (r, h) = (reply.clone(), reactor.handle());
    let _d = reactor.connect_unix(
        &path,
        move |_: &Address| {
            let (r, h) = (r.clone(), h.clone());
            Client {
                message: b"over a unix socket".to_vec(),
                expect: 18,
                got: Vec::new(),
                transport: None,
                done: Some(Box::new(move |got| {
                    *r.borrow_mut() = got;
                    h.stop();
                })),
            }
        },
        secs(5),
    );
    run_bounded(&reactor, secs(5));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(&*reply.borrow(), b"over a unix socket");
}

struct UdpEcho {
    transport: Option<UdpTransport>,
}

impl DatagramProtocol for UdpEcho {
    fn start_protocol(&mut self, transport: UdpTransport) {
        self.transport = Some(transport);
    }
    fn datagram_received(&mut self, data: &[u8], from: SocketAddr) {
        self.transport.as_ref().unwrap().write(data, from).unwrap();
    }
}

struct UdpAsk {
    got: Rc<RefCell<Vec<Vec<u8>>>>,
    reactor: weft::ReactorHandle,
}

impl DatagramProtocol for UdpAsk {
    fn datagram_received(&mut self, data: &[u8], _from: SocketAddr) {
        self.got.borrow_mut().push(data.to_vec());
        if self.got.borrow().len() == 3 {
            self.reactor.stop();
        }
    }
}

#[test]
fn udp_datagrams_round_trip() {
    let reactor = Reactor::new().unwrap();
    let server = reactor.listen_udp(localhost(), UdpEcho { transport: None }).unwrap();
    let server_addr = server.get_host().unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let client =
        reactor.listen_udp(localhost(), UdpAsk { got: got.clone(), reactor: reactor.handle() }).unwrap();
    for m in [&b"one"[..], b"two", b"three"] {
        client.write(m, server_addr).unwrap();
    }
    run_bounded(&reactor, secs(5));
    let mut got = got.borrow().clone();
    got.sort();
    assert_eq!(got, [b"one".to_vec(), b"three".to_vec(), b"two".to_vec()]);
    server.stop_listening();
}

/// The parent half: runs `emfile_child` in a child process whose descriptor limit is
/// lowered with `prlimit`.
#[test]
fn tcp_listener_survives_emfile_and_resumes() {
    let exe = std::env::current_exe().unwrap();
    let status = std::process::Command::new("prlimit")
        .arg("--nofile=256:256")
        .arg("--")
        .arg(exe)
        .args(["reactor::emfile_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("WEFT_EMFILE_CHILD", "1")
        .output();
    let out = match status {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipping: prlimit unavailable ({e})");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("EMFILE-CHILD-OK"), "child did not run:\n{text}");
}

fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// The child half (run only by the parent test): fill the descriptor table, connect a
/// client so that accepting fails with EMFILE, check the loop does not spin, free
/// descriptors and check the listener accepts.
#[test]
#[ignore = "run by tcp_listener_survives_emfile_and_resumes in a child process"]
fn emfile_child() {
    if std::env::var_os("WEFT_EMFILE_CHILD").is_none() {
        return;
    }
    let reactor = Reactor::new().unwrap();
    let made = Rc::new(Cell::new(0));
    let (m, h) = (made.clone(), reactor.handle());
    struct Count;
    impl Protocol for Count {
        fn data_received(&mut self, _: &[u8]) {}
    }
    let port = reactor
        .listen_tcp(
            localhost(),
            move |_: &Address| {
                m.set(m.get() + 1);
                h.stop();
                Count
            },
            false,
        )
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let ticks_at_start = cpu_ticks();
    let mut filler = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => filler.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(filler.len() < 100_000);
    }
    // Free a few descriptors for the client socket, then take back the rest, so that
    // the server's accept finds none.
    filler.truncate(filler.len() - 4);
    let client = TcpStream::connect(addr).unwrap();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        filler.push(f);
    }
    let filler = Rc::new(RefCell::new(filler));
    let f = filler.clone();
    // Assertions inside reactor callbacks would only be logged: record, check after.
    let at_400ms = Rc::new(Cell::new(None));
    let (m, a) = (made.clone(), at_400ms.clone());
    reactor.call_later(ms(400), move || {
        let keep = f.borrow().len().saturating_sub(10);
        f.borrow_mut().truncate(keep);
        a.set(Some((m.get(), cpu_ticks() - ticks_at_start)));
    });
    run_bounded(&reactor, secs(5));
    let (made_by_then, ticks) = at_400ms.get().expect("the 400 ms check ran");
    assert_eq!(made_by_then, 0, "accepted without a free descriptor?");
    assert!(ticks < 15, "the loop spun while out of descriptors: {ticks} ticks in 400 ms");
    println!("cpu ticks while out of descriptors: {ticks}");
    assert_eq!(made.get(), 1);
    drop(client);
    println!("EMFILE-CHILD-OK");
}

#[test]
fn blocking_client_sees_echo() {
    // The reactor serves while a plain blocking client on another thread talks to it.
    let reactor = Reactor::new().unwrap();
    let lost = Rc::new(RefCell::new(Vec::new()));
    let port = reactor.listen_tcp(localhost(), echo_factory(&lost), false).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let stop = reactor.thread_handle();
    let t = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(secs(5))).unwrap();
        for _ in 0..100 {
            s.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"ping");
        }
        stop.stop().unwrap();
    });
    run_bounded(&reactor, secs(10));
    t.join().unwrap();
}

// ---- log contexts through the real loop ----

type Seen = Rc<RefCell<Vec<(&'static str, Option<String>)>>>;

fn note(seen: &Seen, what: &'static str) {
    seen.borrow_mut().push((what, weft::logcontext::current_request_id()));
}

struct CtxEcho {
    seen: Seen,
    transport: Option<Transport>,
}

impl Protocol for CtxEcho {
    fn connection_made(&mut self, transport: Transport) {
        note(&self.seen, "server connection_made");
        self.transport = Some(transport);
    }
    fn data_received(&mut self, data: &[u8]) {
        note(&self.seen, "server data_received");
        self.transport.as_ref().unwrap().write(data);
    }
}

struct CtxClient {
    seen: Seen,
    stop: weft::reactor::ReactorHandle,
}

impl Protocol for CtxClient {
    fn connection_made(&mut self, transport: Transport) {
        note(&self.seen, "client connection_made");
        transport.write(b"ping");
    }
    fn data_received(&mut self, _data: &[u8]) {
        note(&self.seen, "client data_received");
        self.stop.stop();
    }
}

/// Reactor callbacks run in the log context current when they were registered, the loop
/// itself in the sentinel, and nothing leaks out of `run()`.
#[test]
fn reactor_callbacks_run_in_the_context_they_were_registered_in() {
    use weft::logcontext::{current_request_id, LoggingContext};
    let reactor = Reactor::new().unwrap();
    let seen: Seen = Rc::new(RefCell::new(Vec::new()));
    let from_thread = Arc::new(std::sync::Mutex::new(Vec::new()));

    let server = LoggingContext::new("server");
    let port = {
        let _in_server = server.enter();
        let s = seen.clone();
        reactor
            .listen_tcp(localhost(), move |_: &Address| CtxEcho { seen: s.clone(), transport: None }, false)
            .unwrap()
    };
    let addr = match port.local_addr() {
        Address::Tcp(a) => a,
        other => panic!("{other:?}"),
    };

    let request = LoggingContext::new("req-1");
    {
        let _in_request = request.enter();
        let s = seen.clone();
        reactor.call_soon(move || note(&s, "call_soon"));
        let s = seen.clone();
        reactor.call_later(Duration::ZERO, move || note(&s, "call_later"));
        let s = seen.clone();
        reactor.defer_to_thread(|| 5u32).add_callback(move |v| {
            note(&s, "defer_to_thread result");
            v
        });
        let (s, h) = (seen.clone(), reactor.handle());
        let _connected = reactor.connect_tcp(
            addr,
            move |_: &Address| CtxClient { seen: s.clone(), stop: h.clone() },
            secs(5),
        );
        let s = seen.clone();
        reactor.add_shutdown_trigger(Phase::Before, move || note(&s, "shutdown trigger"));
    }
    let threads = reactor.thread_handle();
    let ft = from_thread.clone();
    std::thread::spawn(move || {
        let ft2 = ft.clone();
        threads.call_from_thread(move || ft2.lock().unwrap().push(current_request_id())).unwrap();
    })
    .join()
    .unwrap();

    run_bounded(&reactor, secs(10));
    assert_eq!(current_request_id(), None, "no context leaks out of run()");

    let seen = seen.borrow();
    let context_of = |what: &str| -> Option<String> {
        seen.iter()
            .find(|(w, _)| *w == what)
            .unwrap_or_else(|| panic!("{what} never ran: {seen:?}"))
            .1
            .clone()
    };
    assert_eq!(context_of("call_soon").as_deref(), Some("req-1"));
    assert_eq!(context_of("call_later").as_deref(), Some("req-1"));
    assert_eq!(context_of("defer_to_thread result").as_deref(), Some("req-1"));
    assert_eq!(context_of("client connection_made").as_deref(), Some("req-1"));
    assert_eq!(context_of("client data_received").as_deref(), Some("req-1"));
    assert_eq!(context_of("server connection_made").as_deref(), Some("server"));
    assert_eq!(context_of("server data_received").as_deref(), Some("server"));
    assert_eq!(context_of("shutdown trigger").as_deref(), Some("req-1"));
    // A thread cannot hand its (single-threaded) context over: calls from threads run in
    // the sentinel.
    assert_eq!(*from_thread.lock().unwrap(), vec![None]);
}

/// Off by default; once asked for, SIGTERM stops the reactor gracefully: the shutdown
/// triggers run and `run()` returns.
#[test]
fn sigterm_stops_the_reactor_gracefully_when_asked_for() {
    let reactor = Reactor::new().unwrap();
    reactor.stop_on_signals().unwrap();
    reactor.stop_on_signals().unwrap(); // a second call changes nothing
    let phases = Rc::new(RefCell::new(Vec::new()));
    let p = phases.clone();
    reactor.add_shutdown_trigger(Phase::Before, move || p.borrow_mut().push("before shutdown"));
    reactor.call_later(ms(1), || {
        signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
    });
    run_bounded(&reactor, secs(10));
    assert_eq!(*phases.borrow(), ["before shutdown"]);
}

/// A future woken from another thread (a channel fed by a worker, say): the wake reaches
/// the `ensure_deferred` task through the owning thread's reactor.
#[test]
fn task_woken_from_another_thread_resumes_on_the_reactor() {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll, Waker};

    #[derive(Default)]
    struct Slot {
        value: Option<u32>,
        waker: Option<Waker>,
    }
    struct FromWorker(Arc<Mutex<Slot>>);
    impl Future for FromWorker {
        type Output = u32;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            let mut slot = self.0.lock().unwrap();
            match slot.value.take() {
                Some(v) => Poll::Ready(v),
                None => {
                    slot.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    let reactor = Reactor::new().unwrap();
    let slot = Arc::new(Mutex::new(Slot::default()));
    let reactor_thread = std::thread::current().id();
    let task = weft::future::ensure_deferred({
        let slot = slot.clone();
        async move {
            let v = FromWorker(slot).await;
            Ok::<_, Failure>((v, std::thread::current().id()))
        }
    });
    let got = Rc::new(RefCell::new(None));
    let (g, h) = (got.clone(), reactor.handle());
    task.add_callback(move |r| {
        *g.borrow_mut() = Some(r);
        h.stop();
        r
    });
    let worker = std::thread::spawn(move || {
        let waker = {
            let mut s = slot.lock().unwrap();
            s.value = Some(42);
            s.waker.take()
        };
        waker.expect("the task registered a waker").wake();
    });
    worker.join().unwrap();
    run_bounded(&reactor, secs(10));
    assert_eq!(*got.borrow(), Some((42, reactor_thread)));
}

/// With `reuse_port` two listeners (two reactors, or two processes) share one port;
/// without it the second bind fails with a clear error.
#[test]
fn tcp_reuse_port_lets_two_listeners_share_a_port() {
    let lost = Rc::new(RefCell::new(Vec::new()));
    let a = Reactor::new().unwrap();
    let b = Reactor::new().unwrap();
    let first = a.listen_tcp(localhost(), echo_factory(&lost), true).unwrap();
    let addr = match first.local_addr() {
        Address::Tcp(a) => a,
        other => panic!("{other:?}"),
    };
    let second = b.listen_tcp(addr, echo_factory(&lost), true);
    assert!(second.is_ok(), "SO_REUSEPORT listener refused: {:?}", second.err());
    let err = match b.listen_tcp(addr, echo_factory(&lost), false) {
        Ok(_) => panic!("a plain bind on a used port must fail"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

struct HostReporter {
    hosts: Rc<RefCell<Vec<(Address, Address)>>>,
    stop: Option<weft::reactor::ReactorHandle>,
}

impl Protocol for HostReporter {
    fn connection_made(&mut self, transport: Transport) {
        self.hosts.borrow_mut().push((transport.get_host(), transport.get_peer()));
        if let Some(h) = &self.stop {
            if self.hosts.borrow().len() == 2 {
                h.stop();
            }
        }
    }
    fn data_received(&mut self, _data: &[u8]) {}
}

/// `get_host` and `get_peer` are each other's mirror on the two ends of a connection.
#[test]
fn tcp_get_host_and_get_peer_mirror_each_other() {
    let reactor = Reactor::new().unwrap();
    let hosts = Rc::new(RefCell::new(Vec::new()));
    let (hs, h) = (hosts.clone(), reactor.handle());
    let port = reactor
        .listen_tcp(
            localhost(),
            move |_: &Address| HostReporter { hosts: hs.clone(), stop: Some(h.clone()) },
            false,
        )
        .unwrap();
    let addr = match port.local_addr() {
        Address::Tcp(a) => a,
        other => panic!("{other:?}"),
    };
    let (hs, h) = (hosts.clone(), reactor.handle());
    let _client = reactor.connect_tcp(
        addr,
        move |_: &Address| HostReporter { hosts: hs.clone(), stop: Some(h.clone()) },
        secs(5),
    );
    run_bounded(&reactor, secs(10));
    let hosts = hosts.borrow();
    assert_eq!(hosts.len(), 2);
    let (h0, p0) = &hosts[0];
    let (h1, p1) = &hosts[1];
    assert_eq!(h0, p1);
    assert_eq!(h1, p0);
    assert!(
        hosts.iter().any(|(h, _)| *h == Address::Tcp(addr)),
        "the server end's host is the listening address"
    );
}

struct Silent;

impl Protocol for Silent {
    fn data_received(&mut self, _data: &[u8]) {}
}

/// A connect that gets no answer fails with `ConnectTimeoutError` after its timeout. On
/// loopback, "no answer" is a listener whose accept queue is full: Linux then drops the
/// SYN and the connect hangs.
#[test]
fn tcp_connect_timeout_is_a_failure() {
    use socket2::{Domain, Socket, Type};
    use weft::reactor::ConnectTimeoutError;
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.bind(&localhost().into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue (never accepted) until a plain connect stops getting through.
    let mut held = Vec::new();
    for _ in 0..16 {
        match TcpStream::connect_timeout(&addr, ms(200)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    let reactor = Reactor::new().unwrap();
    let outcome = Rc::new(RefCell::new(None));
    let (o, h) = (outcome.clone(), reactor.handle());
    let started = Instant::now();
    let _done: Deferred<()> = reactor.connect_tcp(addr, |_: &Address| Silent, ms(300)).then(move |r| {
        *o.borrow_mut() = Some(r.map(|_| ()));
        h.stop();
    });
    run_bounded(&reactor, secs(10));
    let failure = outcome.borrow_mut().take().expect("the connect finished").expect_err("it cannot connect");
    assert!(failure.check::<ConnectTimeoutError>(), "{failure}");
    assert!(started.elapsed() >= ms(300));
    drop(held);
}
