//! Stream transports on 127.0.0.1, the rules around the protocol: the log context weft's
//! own work runs in, what a panicking protocol does to its connection. Each test is
//! bounded by a reactor timer that stops the loop and fails the test.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use weft::logcontext::{current_request_id, LoggingContext, PreserveLoggingContext};
use weft::reactor::{Address, ConnectionDone, ListenOptions, Protocol, Reactor, ReactorHandle, Transport};
use weft::{Failure, PanicError};

use crate::support::{localhost, logs, run_bounded, secs};

/// What the server does with its transport from inside a request context that finishes
/// right after.
#[derive(Clone, Copy, Debug)]
enum InRequest {
    LoseConnection,
    AbortConnection,
    LoseWriteConnection,
    PauseThenResume,
    /// Write to a peer that is gone (a Unix socket whose peer closed: `EPIPE`).
    FailingWrite,
}

/// Each close of a server connection: its reason and the log context it ran in.
type Closes = Rc<RefCell<Vec<(Failure, Option<String>)>>>;

/// Acts on its transport in a request context "GET-1" that finishes at once, as a request
/// handler that closes its connection does.
struct Handler {
    action: InRequest,
    transport: Option<Transport>,
    lost: Closes,
    stop: ReactorHandle,
}

impl Handler {
    fn act(&mut self) {
        let t = self.transport.clone().unwrap();
        let request = LoggingContext::new("GET-1");
        let _in_request = request.enter();
        match self.action {
            InRequest::LoseConnection => t.lose_connection(),
            InRequest::AbortConnection => t.abort_connection(),
            InRequest::LoseWriteConnection => t.lose_write_connection(),
            InRequest::PauseThenResume => {
                t.pause_producing();
                t.resume_producing();
            }
            InRequest::FailingWrite => t.write(b"too late"),
        }
    }
}

impl Protocol for Handler {
    fn connection_made(&mut self, transport: Transport) {
        self.transport = Some(transport);
    }
    fn data_received(&mut self, _data: &[u8]) {
        if !matches!(self.action, InRequest::FailingWrite) {
            self.act();
        }
        if matches!(self.action, InRequest::PauseThenResume) {
            self.transport.as_ref().unwrap().lose_connection();
        }
    }
    fn read_connection_lost(&mut self) -> bool {
        if matches!(self.action, InRequest::FailingWrite) {
            self.act();
            return true;
        }
        false
    }
    fn connection_lost(&mut self, reason: Failure) {
        self.lost.borrow_mut().push((reason, current_request_id()));
        self.stop.stop();
    }
}

/// Sends "go" and, with `close`, closes its end at once.
struct Go {
    close: bool,
}

impl Protocol for Go {
    fn connection_made(&mut self, transport: Transport) {
        transport.write(b"go");
        if self.close {
            transport.lose_connection();
        }
    }
    fn data_received(&mut self, _data: &[u8]) {}
}

#[track_caller]
fn check_no_late_context_use(action: InRequest) {
    logs::capture();
    let reactor = Reactor::new().unwrap();
    let lost = Rc::new(RefCell::new(Vec::new()));
    let server = LoggingContext::new("server");
    let (l, h) = (lost.clone(), reactor.handle());
    let factory = move |_: &Address| Handler { action, transport: None, lost: l.clone(), stop: h.clone() };
    let close = matches!(action, InRequest::FailingWrite);
    let dir;
    let _connecting = if close {
        dir = std::env::temp_dir().join(format!("weft-ctx-{}-{action:?}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let _port = {
            let _in_server = PreserveLoggingContext::new(server.clone());
            reactor.listen_unix(&path, factory).unwrap()
        };
        reactor.connect_unix(&path, move |_: &Address| Go { close }, secs(5))
    } else {
        dir = std::env::temp_dir();
        let port = {
            let _in_server = PreserveLoggingContext::new(server.clone());
            reactor.listen_tcp(localhost(), factory, ListenOptions::new()).unwrap()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
        reactor.connect_tcp(addr, move |_: &Address| Go { close }, secs(5))
    };
    run_bounded(&reactor, secs(10));
    if close {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let lost = lost.borrow();
    assert_eq!(lost.len(), 1, "{action:?}: the server connection closed once");
    assert_eq!(
        lost[0].1.as_deref(),
        Some("server"),
        "{action:?}: connection_lost runs in the listener's context"
    );
    let late: Vec<_> = logs::records()
        .into_iter()
        .filter(|(level, m)| *level == log::Level::Warn && m.contains("used after it finished"))
        .collect();
    assert!(late.is_empty(), "{action:?}: transport work ran in the finished request context: {late:?}");
}

/// A request handler that closes (or half-closes, aborts, pauses and resumes) its connection
/// from its own log context, which then finishes: the transport's follow-up work runs in
/// the connection's context, so no "used after it finished" warning names the request.
#[test]
fn transport_work_asked_for_in_a_request_context_runs_in_the_connections_context() {
    for action in [
        InRequest::LoseConnection,
        InRequest::AbortConnection,
        InRequest::LoseWriteConnection,
        InRequest::PauseThenResume,
        InRequest::FailingWrite,
    ] {
        check_no_late_context_use(action);
    }
}
/// Echoes, except that "boom" in the data makes `data_received` panic (and
/// `connection_made` panics if asked).
struct Fragile {
    transport: Option<Transport>,
    panic_on_connect: bool,
    lost: Rc<RefCell<Vec<Failure>>>,
    stop_after: usize,
    stop: ReactorHandle,
}

impl Protocol for Fragile {
    fn connection_made(&mut self, transport: Transport) {
        self.transport = Some(transport);
        assert!(!self.panic_on_connect, "boom in connection_made");
    }
    fn data_received(&mut self, data: &[u8]) {
        assert!(!data.windows(4).any(|w| w == b"boom"), "boom in data_received");
        self.transport.as_ref().unwrap().write(data);
    }
    fn connection_lost(&mut self, reason: Failure) {
        self.lost.borrow_mut().push(reason);
        if self.lost.borrow().len() == self.stop_after {
            self.stop.stop();
        }
    }
}

fn fragile_server(
    reactor: &Reactor,
    panic_on_connect: bool,
    stop_after: usize,
) -> (SocketAddr, Rc<RefCell<Vec<Failure>>>) {
    let lost = Rc::new(RefCell::new(Vec::new()));
    let (l, h) = (lost.clone(), reactor.handle());
    let port = reactor
        .listen_tcp(
            localhost(),
            move |_: &Address| Fragile {
                transport: None,
                panic_on_connect,
                lost: l.clone(),
                stop_after,
                stop: h.clone(),
            },
            ListenOptions::new(),
        )
        .unwrap();
    (SocketAddr::from(([127, 0, 0, 1], port.port().unwrap())), lost)
}

/// Says "hello"; once echoed, runs `then` (which starts the "boom" client); says " again"
/// when told to (by the "boom" client's close), and closes once that is echoed too.
struct Healthy {
    transport: Option<Transport>,
    got: Rc<RefCell<Vec<u8>>>,
    then: Option<Box<dyn FnOnce(Transport)>>,
}

impl Protocol for Healthy {
    fn connection_made(&mut self, transport: Transport) {
        transport.write(b"hello");
        self.transport = Some(transport);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.got.borrow_mut().extend_from_slice(data);
        let t = self.transport.clone().unwrap();
        if &*self.got.borrow() == b"hello" {
            (self.then.take().unwrap())(t);
        } else if &*self.got.borrow() == b"hello again" {
            t.lose_connection();
        }
    }
}

/// Sends "a boom" and, once its connection is gone, has the healthy client go on.
struct Boom {
    healthy: Transport,
}

impl Protocol for Boom {
    fn connection_made(&mut self, transport: Transport) {
        transport.write(b"a boom");
    }
    fn data_received(&mut self, _data: &[u8]) {}
    fn connection_lost(&mut self, _reason: Failure) {
        self.healthy.write(b" again");
    }
}

/// A panic in `data_received` aborts that connection, and its `connection_lost` gets the
/// `PanicError`, as Twisted drops a connection whose `dataReceived` raises; another
/// connection of the same listener, open all along, goes on being served.
#[test]
fn a_panic_in_data_received_aborts_that_connection_only() {
    let reactor = Reactor::new().unwrap();
    let (addr, lost) = fragile_server(&reactor, false, 2);
    let got = Rc::new(RefCell::new(Vec::new()));
    let (g, r) = (got.clone(), reactor.handle());
    let _healthy = reactor.connect_tcp(
        addr,
        move |_: &Address| {
            let r = r.clone();
            Healthy {
                transport: None,
                got: g.clone(),
                then: Some(Box::new(move |healthy: Transport| {
                    let _boom =
                        r.connect_tcp(addr, move |_: &Address| Boom { healthy: healthy.clone() }, secs(5));
                })),
            }
        },
        secs(5),
    );
    run_bounded(&reactor, secs(10));
    let lost = lost.borrow();
    assert_eq!(lost.len(), 2, "{lost:?}");
    let panic =
        lost[0].downcast_ref::<PanicError>().unwrap_or_else(|| panic!("not a PanicError: {}", lost[0]));
    assert!(panic.to_string().contains("boom in data_received"), "{panic}");
    assert!(lost[1].check::<ConnectionDone>(), "the healthy connection closed cleanly: {}", lost[1]);
    assert_eq!(&*got.borrow(), b"hello again");
}

/// A panic in `connection_made` aborts the connection the same way.
#[test]
fn a_panic_in_connection_made_aborts_the_connection() {
    let reactor = Reactor::new().unwrap();
    let (addr, lost) = fragile_server(&reactor, true, 1);
    let _client = reactor.connect_tcp(addr, |_: &Address| Go { close: false }, secs(5));
    run_bounded(&reactor, secs(10));
    let lost = lost.borrow();
    assert_eq!(lost.len(), 1);
    let panic =
        lost[0].downcast_ref::<PanicError>().unwrap_or_else(|| panic!("not a PanicError: {}", lost[0]));
    assert!(panic.to_string().contains("boom in connection_made"), "{panic}");
}
