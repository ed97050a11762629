//! What a protocol can ask of its transport beyond writing (a reason for the close, the
//! connection's log context, a hook when reading resumes), and `MemoryTransport`, the
//! socket-less transport for testing protocols. The socket tests run on 127.0.0.1,
//! bounded by a reactor timer.

use std::cell::RefCell;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;

use weft::logcontext::{LoggingContext, PreserveLoggingContext};
use weft::reactor::{
    Address, ConnectionAborted, ConnectionDone, ListenOptions, MemoryTransport, Protocol, PushProducer,
    Reactor, ReactorHandle, Transport,
};
use weft::{Failure, StringError};

use crate::support::{localhost, run_bounded, secs};

/// How the server ends the connection, and what it saw.
#[derive(Clone, Copy, Debug)]
enum End {
    LoseWith,
    AbortWith,
}

struct Ender {
    end: End,
    seen: Rc<RefCell<Vec<String>>>,
    done: Rc<dyn Fn()>,
}

impl Protocol for Ender {
    fn connection_made(&mut self, transport: Transport) {
        self.seen.borrow_mut().push(format!("context {}", transport.log_context().name()));
        transport.write(b"bye");
        assert!(!transport.is_disconnecting());
        match self.end {
            End::LoseWith => transport.lose_connection_with(StringError("line too long".into())),
            End::AbortWith => transport.abort_connection_with(StringError("malformed".into())),
        }
        assert!(transport.is_disconnecting());
        // A second reason does not replace the first.
        transport.lose_connection_with(StringError("second".into()));
    }
    fn data_received(&mut self, _data: &[u8]) {}
    fn connection_lost(&mut self, reason: Failure) {
        let why = reason.downcast_ref::<StringError>().map_or_else(|| reason.to_string(), |e| e.0.clone());
        self.seen.borrow_mut().push(format!("lost {why}"));
        (self.done)();
    }
}

/// Reads what the server sends until the connection closes.
struct Reader(Rc<RefCell<Vec<u8>>>, Rc<dyn Fn()>);

impl Protocol for Reader {
    fn data_received(&mut self, data: &[u8]) {
        self.0.borrow_mut().extend_from_slice(data);
    }
    fn connection_lost(&mut self, _reason: Failure) {
        (self.1)();
    }
}

/// A call that stops the reactor the second time it is made (once both ends are lost).
fn stop_when_both_lost(reactor: &Reactor) -> Rc<dyn Fn()> {
    let (left, h) = (std::cell::Cell::new(2), reactor.handle());
    Rc::new(move || {
        left.set(left.get() - 1);
        if left.get() == 0 {
            h.stop();
        }
    })
}

/// `lose_connection_with` sends what was written, then closes with the reason given;
/// `abort_connection_with` closes with its reason; `log_context` names the listener's
/// context.
#[test]
fn a_protocol_closes_with_its_own_reason_and_knows_its_log_context() {
    for (end, expect_lost) in [(End::LoseWith, "lost line too long"), (End::AbortWith, "lost malformed")] {
        let reactor = Reactor::new().unwrap();
        let seen = Rc::new(RefCell::new(Vec::new()));
        let done = stop_when_both_lost(&reactor);
        let (s, d) = (seen.clone(), done.clone());
        let listener_ctx = LoggingContext::new("listener");
        let port = {
            let _in = PreserveLoggingContext::new(listener_ctx.clone());
            reactor
                .listen_tcp(
                    localhost(),
                    move |_: &Address| Ender { end, seen: s.clone(), done: d.clone() },
                    ListenOptions::new(),
                )
                .unwrap()
        };
        let got = Rc::new(RefCell::new(Vec::new()));
        let g = got.clone();
        let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
        let _client = reactor.connect_tcp(addr, move |_: &Address| Reader(g.clone(), done.clone()), secs(5));
        run_bounded(&reactor, secs(10));
        assert_eq!(*seen.borrow(), ["context listener".to_string(), expect_lost.to_string()], "{end:?}");
        if matches!(end, End::LoseWith) {
            // The server wrote the bytes straight to the socket before closing; the client
            // read them before it saw the end of the connection.
            assert_eq!(&*got.borrow(), b"bye");
        }
    }
}

/// Pauses after the first chunk and, while paused, has the client send a second; then
/// resumes from the call-soon queue. Records the order of events.
struct Pauser {
    transport: Option<Transport>,
    events: Rc<RefCell<Vec<&'static str>>>,
    client: Rc<RefCell<Option<TcpStream>>>,
    reactor: ReactorHandle,
}

impl Protocol for Pauser {
    fn connection_made(&mut self, transport: Transport) {
        self.transport = Some(transport);
    }
    fn data_received(&mut self, _data: &[u8]) {
        self.events.borrow_mut().push("data");
        let t = self.transport.clone().unwrap();
        if self.events.borrow().len() == 1 {
            t.pause_producing();
            assert!(t.is_reading_paused());
            self.client.borrow_mut().as_mut().unwrap().write_all(b"second").unwrap();
            self.reactor.call_soon(move || t.resume_producing());
        } else {
            self.reactor.stop();
        }
    }
    fn reading_resumed(&mut self) {
        self.events.borrow_mut().push("resumed");
        assert!(!self.transport.as_ref().unwrap().is_reading_paused());
    }
}

/// `reading_resumed` runs after `resume_producing`, before the data that waited.
#[test]
fn reading_resumed_runs_before_the_data_that_waited() {
    let reactor = Reactor::new().unwrap();
    let events = Rc::new(RefCell::new(Vec::new()));
    let client = Rc::new(RefCell::new(None));
    let (e, c, h) = (events.clone(), client.clone(), reactor.handle());
    let port = reactor
        .listen_tcp(
            localhost(),
            move |_: &Address| Pauser {
                transport: None,
                events: e.clone(),
                client: c.clone(),
                reactor: h.clone(),
            },
            ListenOptions::new(),
        )
        .unwrap();
    let mut stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()))).unwrap();
    stream.write_all(b"first").unwrap();
    *client.borrow_mut() = Some(stream);
    run_bounded(&reactor, secs(10));
    assert_eq!(*events.borrow(), ["data", "resumed", "data"]);
}

/// Records what a producer is told.
#[derive(Default)]
struct Recorder(RefCell<Vec<&'static str>>);

impl PushProducer for Recorder {
    fn pause_producing(&self) {
        self.0.borrow_mut().push("pause");
    }
    fn resume_producing(&self) {
        self.0.borrow_mut().push("resume");
    }
}

/// A `MemoryTransport` keeps what is written, lets a test take it as a peer would
/// (resuming a producer paused for a full buffer), and records how the protocol asked
/// to close. TW proto_helpers.StringTransport: value(), disconnecting.
#[test]
fn a_memory_transport_records_writes_backpressure_and_the_close() {
    let fake = MemoryTransport::new();
    let t = fake.transport();
    t.write(b"hello, ");
    t.write_sequence(&[b"wor", b"ld"]);
    assert_eq!(fake.value(), b"hello, world");
    assert_eq!(t.buffered(), 12);
    assert_eq!(fake.take(), b"hello, world");
    assert!(fake.value().is_empty());

    let producer = Rc::new(Recorder::default());
    t.register_producer(producer.clone());
    assert!(fake.producer().is_some());
    t.set_write_buffer_limits(8, 2).unwrap();
    t.write(b"0123456789");
    assert_eq!(*producer.0.borrow(), ["pause"]);
    assert_eq!(fake.take(), b"0123456789");
    assert_eq!(*producer.0.borrow(), ["pause", "resume"]);

    assert!(!fake.is_disconnecting() && fake.close_reason().is_none());
    t.write(b"last words");
    t.lose_connection();
    t.write(b"ignored once closing");
    assert!(fake.is_disconnecting() && t.is_disconnecting());
    assert!(fake.close_reason().unwrap().check::<ConnectionDone>());
    assert_eq!(fake.value(), b"last words", "lose_connection keeps what is buffered");

    let fake = MemoryTransport::new();
    fake.transport().write(b"dropped");
    fake.transport().abort_connection();
    assert!(fake.close_reason().unwrap().check::<ConnectionAborted>());
    assert!(fake.value().is_empty(), "abort_connection drops what is buffered");

    let fake = MemoryTransport::new();
    fake.transport().lose_write_connection();
    assert!(fake.is_write_shut() && !fake.is_disconnecting());
    fake.transport().lose_connection_with(StringError("done here".into()));
    let reason = fake.close_reason().unwrap();
    assert_eq!(reason.downcast_ref::<StringError>().map(|e| e.0.as_str()), Some("done here"));
}

/// A `MemoryTransport` made inside a log context reports it as the connection's.
#[test]
fn a_memory_transport_has_the_log_context_it_was_made_in() {
    let ctx = LoggingContext::new("made-here");
    let fake = {
        let _in = PreserveLoggingContext::new(ctx.clone());
        MemoryTransport::new()
    };
    assert!(LoggingContext::ptr_eq(&fake.transport().log_context(), &ctx));
    assert!(MemoryTransport::default().transport().log_context().is_sentinel());
}
