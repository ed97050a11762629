//! Nothing the reactor was handed outlives its use: drop counters on the structures whose
//! reference cycles are broken by closing (UDP ports, connections, listeners) or by
//! dropping the reactor. Modelled on async-task's `tests/cancel.rs` (`DROP_F`) and
//! calloop's check that every registered source is dropped with the loop.
//!
//! Each test keeps the cycle a user would write (a protocol keeps its transport and a
//! reactor handle, a factory keeps its port) and checks the drop happens while the
//! reactor is still alive, so it is the close that frees it, not the reactor's drop.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use weft::reactor::{
    Address, DatagramProtocol, ListeningPort, LoopingCall, Phase, Protocol, Reactor, UdpTransport,
};
use weft::ReactorHandle;

use crate::support::{localhost, run_bounded, secs, Closer, Ends};

/// Counts the tokens it handed out and how many of them were dropped.
#[derive(Clone, Default)]
struct Drops {
    made: Rc<Cell<usize>>,
    dropped: Rc<Cell<usize>>,
}

/// Counts one drop in its [`Drops`] when dropped.
struct Token(Rc<Cell<usize>>);

impl Drops {
    fn token(&self) -> Token {
        self.made.set(self.made.get() + 1);
        Token(self.dropped.clone())
    }

    fn made(&self) -> usize {
        self.made.get()
    }

    fn dropped(&self) -> usize {
        self.dropped.get()
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

const AN_HOUR: Duration = Duration::from_secs(3600);

// ---- UDP ----

/// Keeps its transport (the usual cycle: port, protocol, transport, port).
struct UdpKeeper {
    transport: Option<UdpTransport>,
    stopped: Rc<Cell<bool>>,
    _token: Token,
}

impl DatagramProtocol for UdpKeeper {
    fn start_protocol(&mut self, transport: UdpTransport) {
        self.transport = Some(transport);
    }
    fn datagram_received(&mut self, _data: &[u8], _from: SocketAddr) {}
    fn stop_protocol(&mut self) {
        self.stopped.set(true);
    }
}

#[test]
fn a_stopped_udp_port_frees_its_protocol_and_the_transport_it_keeps() {
    let reactor = Reactor::new().unwrap();
    let drops = Drops::default();
    let stopped = Rc::new(Cell::new(false));
    let keeper = UdpKeeper { transport: None, stopped: stopped.clone(), _token: drops.token() };
    let port = reactor.listen_udp(localhost(), keeper).unwrap();
    port.stop_listening();
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    assert!(stopped.get(), "stop_protocol runs from the call-soon queue");
    drop(port);
    assert_eq!(drops.dropped(), 1, "the protocol, and the port through its transport, are freed");
}

// ---- TCP connections ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

/// Opens one connection, lets `closer` close it, and checks both protocols are freed
/// while the reactor lives.
#[track_caller]
fn check_connection_closed_by(closer: Side) {
    let reactor = Reactor::new().unwrap();
    let drops = Drops::default();
    let ends = Ends::default();
    ends.stop_at.set(2);
    let closer_for = move |side: Side, drops: &Drops, ends: &Ends, reactor: &ReactorHandle| {
        Closer::new(reactor, side == closer, ends, Box::new(drops.token()))
    };
    let (dr, e, h) = (drops.clone(), ends.clone(), reactor.handle());
    let port = reactor
        .listen_tcp(localhost(), move |_: &Address| closer_for(Side::Server, &dr, &e, &h), false)
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let (dr, e, h) = (drops.clone(), ends.clone(), reactor.handle());
    let d = reactor.connect_tcp(addr, move |_: &Address| closer_for(Side::Client, &dr, &e, &h), secs(5));
    run_bounded(&reactor, secs(10));
    assert_eq!(ends.lost.get(), 2);
    drop(d);
    assert_eq!(drops.made(), 2);
    assert_eq!(drops.dropped(), 2, "both protocols (and their transports) are freed once closed");
    port.stop_listening();
}

#[test]
fn a_connection_closed_by_the_client_frees_both_protocols() {
    check_connection_closed_by(Side::Client);
}

#[test]
fn a_connection_closed_by_the_server_frees_both_protocols() {
    check_connection_closed_by(Side::Server);
}

// ---- listeners ----

/// Does nothing; for listeners whose protocols do not matter.
struct Quiet;

impl Protocol for Quiet {
    fn data_received(&mut self, _data: &[u8]) {}
}

#[test]
fn a_stopped_listener_frees_its_factory_even_when_the_factory_keeps_the_port() {
    let reactor = Reactor::new().unwrap();
    let drops = Drops::default();
    let slot: Rc<RefCell<Option<ListeningPort>>> = Rc::default();
    let (s, token) = (slot.clone(), drops.token());
    let port = reactor
        .listen_tcp(
            localhost(),
            move |_: &Address| {
                let _ = (&s, &token);
                Quiet
            },
            false,
        )
        .unwrap();
    *slot.borrow_mut() = Some(port.clone());
    drop(slot);
    port.stop_listening();
    assert_eq!(drops.dropped(), 1, "stop_listening drops the factory, and the port it kept");
}

#[test]
fn a_factory_that_stops_its_own_listener_is_dropped_once_it_returns() {
    let reactor = Reactor::new().unwrap();
    let drops = Drops::default();
    let slot: Rc<RefCell<Option<ListeningPort>>> = Rc::default();
    let (s, token, h, calls) = (slot.clone(), drops.token(), reactor.handle(), Rc::new(Cell::new(0)));
    let c = calls.clone();
    let port = reactor
        .listen_tcp(
            localhost(),
            move |_: &Address| {
                let _ = &token;
                c.set(c.get() + 1);
                s.borrow().as_ref().unwrap().stop_listening();
                h.stop();
                Quiet
            },
            false,
        )
        .unwrap();
    *slot.borrow_mut() = Some(port.clone());
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let _client = std::net::TcpStream::connect(addr).unwrap();
    run_bounded(&reactor, secs(10));
    assert_eq!(calls.get(), 1);
    drop((port, slot));
    assert_eq!(drops.dropped(), 1, "the factory is dropped after the call that stopped its listener");
}

// ---- the reactor ----

/// Schedules another timer, holding the reactor, from its own drop.
struct Rescheduler {
    reactor: ReactorHandle,
    drops: Drops,
    _token: Token,
}

impl Drop for Rescheduler {
    fn drop(&mut self) {
        let (h, token) = (self.reactor.clone(), self.drops.token());
        let _ = self.reactor.call_later(AN_HOUR, move || drop((h, token)));
    }
}

#[test]
fn a_dropped_reactor_frees_its_connections_ports_timers_and_queued_calls() {
    let reactor = Reactor::new().unwrap();
    let drops = Drops::default();
    // An open connection whose two protocols keep their transports and the reactor; the
    // loop stops once both are connected.
    let made = Rc::new(Cell::new(0));
    let opener = |drops: &Drops, made: &Rc<Cell<usize>>, h: &ReactorHandle| {
        let (made, h) = (made.clone(), h.clone());
        made.set(made.get() + 1);
        if made.get() == 2 {
            h.stop();
        }
        Closer::new(&h, false, &Ends::default(), Box::new(drops.token()))
    };
    let (dr, m, h, token) = (drops.clone(), made.clone(), reactor.handle(), drops.token());
    let port = reactor
        .listen_tcp(
            localhost(),
            move |_: &Address| {
                let _ = &token;
                opener(&dr, &m, &h)
            },
            false,
        )
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let (dr, m, h) = (drops.clone(), made.clone(), reactor.handle());
    let d = reactor.connect_tcp(addr, move |_: &Address| opener(&dr, &m, &h), secs(5));
    run_bounded(&reactor, secs(10));
    assert_eq!(made.get(), 2);
    drop(d);
    // A UDP port keeping its transport, and everything the reactor queues, each holding
    // the reactor.
    let keeper = UdpKeeper { transport: None, stopped: Rc::default(), _token: drops.token() };
    reactor.listen_udp(localhost(), keeper).unwrap();
    let held = |drops: &Drops| (reactor.handle(), drops.token());
    let x = held(&drops);
    let _ = reactor.call_later(AN_HOUR, move || drop(x));
    let x = held(&drops);
    reactor.call_soon(move || drop(x));
    let x = held(&drops);
    reactor.call_when_running(move || drop(x));
    let x = held(&drops);
    reactor.add_shutdown_trigger(Phase::Before, move || drop(x));
    let x = held(&drops);
    let looping = LoopingCall::new(reactor.handle(), move || {
        let _ = &x;
    });
    let done = looping.start(AN_HOUR, false);
    let r = Rescheduler { reactor: reactor.handle(), drops: drops.clone(), _token: drops.token() };
    let _ = reactor.call_later(AN_HOUR, move || drop(r));
    drop((looping, done, port));

    let weak = reactor.downgrade();
    drop(reactor);
    assert!(weak.upgrade().is_none(), "nothing keeps the reactor's state alive");
    // The factory, two connection protocols, a UDP protocol, five queued calls, the
    // rescheduler and the timer it scheduled as it was dropped.
    assert_eq!(drops.made(), 11);
    assert_eq!(drops.dropped(), drops.made());
}
