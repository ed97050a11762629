//! Large transfers over TLS: a producer is paused at the transport's high-water mark
//! and resumed as the peer reads, the buffer stays bounded, and every byte arrives in
//! order.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::mpsc;

use weft::reactor::tls::rustls::{ClientConnection, StreamOwned};
use weft::reactor::{Address, ConnectionDone, Protocol, PushProducer, Reactor, Transport};
use weft::Failure;

use super::rustls_peers::{rustls_client, Thread};
use super::support::{pattern, turn_until, Certs, Mode, Peer, Seen};
use crate::support::{localhost, secs};

const TOTAL: usize = 8 << 20;
const CHUNK: usize = 16 * 1024;
const HIGH: usize = 64 * 1024;

/// Writes `TOTAL` bytes of `pattern` in `CHUNK`s while not paused, then closes.
struct Pump {
    transport: Transport,
    data: Rc<Vec<u8>>,
    sent: Cell<usize>,
    paused: Cell<bool>,
    pauses: Rc<Cell<usize>>,
    max_buffered: Rc<Cell<usize>>,
    first_pause: mpsc::Sender<()>,
}

impl Pump {
    fn pump(&self) {
        while !self.paused.get() && self.sent.get() < self.data.len() {
            let at = self.sent.get();
            let end = (at + CHUNK).min(self.data.len());
            self.transport.write(&self.data[at..end]);
            self.sent.set(end);
            self.max_buffered.set(self.max_buffered.get().max(self.transport.buffered()));
        }
        if self.sent.get() == self.data.len() {
            self.transport.unregister_producer();
            self.transport.lose_connection();
        }
    }
}

impl PushProducer for Pump {
    fn pause_producing(&self) {
        self.paused.set(true);
        self.pauses.set(self.pauses.get() + 1);
        let _ = self.first_pause.send(());
    }

    fn resume_producing(&self) {
        self.paused.set(false);
        self.pump();
    }
}

/// Starts a `Pump` once the handshake is done.
struct Sender {
    pauses: Rc<Cell<usize>>,
    max_buffered: Rc<Cell<usize>>,
    lost: Rc<Cell<Option<bool>>>,
    first_pause: mpsc::Sender<()>,
}

impl Protocol for Sender {
    fn connection_made(&mut self, transport: Transport) {
        let pump = Rc::new(Pump {
            transport: transport.clone(),
            data: Rc::new(pattern(TOTAL)),
            sent: Cell::new(0),
            paused: Cell::new(false),
            pauses: self.pauses.clone(),
            max_buffered: self.max_buffered.clone(),
            first_pause: self.first_pause.clone(),
        });
        transport.register_producer(pump.clone());
        pump.pump();
    }

    fn data_received(&mut self, _data: &[u8]) {}

    fn connection_lost(&mut self, reason: Failure) {
        self.lost.set(Some(reason.is::<ConnectionDone>()));
    }
}

/// A client with a small receive buffer that reads nothing until the server's producer
/// has been paused: 8 MiB cannot fit in the socket buffers, so the producer is paused at
/// the high-water mark, the write buffer stays within one chunk of it, and once the
/// client reads, the producer is resumed until everything arrived, in order, followed by
/// close_notify.
#[test]
fn a_producer_is_paused_at_the_high_water_mark_and_everything_arrives() {
    let certs = Certs::new();
    let reactor = Reactor::new().unwrap();
    let (pauses, max_buffered, lost) =
        (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)), Rc::new(Cell::new(None)));
    let (tx, first_pause) = mpsc::channel();
    let (p, m, l) = (pauses.clone(), max_buffered.clone(), lost.clone());
    let port = reactor
        .listen_tls(
            localhost(),
            move |_: &Address| Sender {
                pauses: p.clone(),
                max_buffered: m.clone(),
                lost: l.clone(),
                first_pause: tx.clone(),
            },
            &certs.server(),
            false,
        )
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let config = certs.rustls_client();
    let client = Thread::spawn(move || {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(16 * 1024).unwrap();
        sock.connect(&addr.into()).unwrap();
        let sock: TcpStream = sock.into();
        sock.set_read_timeout(Some(secs(20))).unwrap();
        let conn = ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
        let mut tls = StreamOwned::new(conn, sock);
        tls.flush().unwrap(); // the ClientHello
        first_pause.recv_timeout(secs(20)).expect("the producer was paused");
        let mut got = Vec::with_capacity(TOTAL);
        let end = tls.read_to_end(&mut got).map_err(|e| e.kind());
        (got == pattern(TOTAL), got.len(), end)
    });
    let (l, done) = (lost.clone(), client.done());
    turn_until(&reactor, secs(60), move || done() && l.get().is_some());
    let (intact, len, end) = client.join();
    assert!(intact, "got {len} of {TOTAL} bytes, or out of order");
    assert!(end.is_ok(), "ended with close_notify: {end:?}");
    assert_eq!(lost.get(), Some(true), "the server's connection ended with ConnectionDone");
    assert!(pauses.get() >= 1);
    assert!(max_buffered.get() <= HIGH + CHUNK, "buffered {} bytes", max_buffered.get());
}

/// 1 MiB from a rustls client reach a weft protocol whole and in order, and the
/// client's close_notify is the protocol's end of file.
#[test]
fn a_large_upload_arrives_whole() {
    const UP: usize = 1 << 20;
    let certs = Certs::new();
    let reactor = Reactor::new().unwrap();
    let seen = Seen::default();
    let s = seen.clone();
    let port = reactor
        .listen_tls(localhost(), move |_: &Address| Peer::new(Mode::Collect, &s), &certs.server(), false)
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let config = certs.rustls_client();
    let client = Thread::spawn(move || {
        let mut tls = rustls_client(addr, config);
        tls.write_all(&pattern(UP)).unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).map_err(|e| e.kind())
    });
    let (s, done) = (seen.clone(), client.done());
    turn_until(&reactor, secs(60), move || done() && s.lost_count() == 1);
    assert!(client.join().is_ok());
    assert!(*seen.data.borrow() == pattern(UP), "got {} bytes", seen.data.borrow().len());
    assert!(seen.eof.get());
    assert!(seen.reason().is::<ConnectionDone>());
}
