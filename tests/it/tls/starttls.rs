//! `Transport::start_tls` after a plaintext exchange (a STARTTLS-style line protocol),
//! with weft on both ends and with rustls's blocking client, and what `start_tls`
//! refuses.

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::mpsc;

use weft::reactor::tls::rustls::{ClientConnection, StreamOwned};
use weft::reactor::tls::{TlsClientOptions, TlsServerOptions, TlsSetupError};
use weft::reactor::{Address, MemoryTransport, Protocol, Reactor, Transport};

use super::rustls_peers::Thread;
use super::support::{turn_until, Certs};
use crate::support::{localhost, secs};

/// Splits input into lines (without the `\n`).
#[derive(Default)]
struct Lines(Vec<u8>);

impl Lines {
    fn feed(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for piece in data.split_inclusive(|&b| b == b'\n') {
            self.0.extend_from_slice(piece);
            if piece.ends_with(b"\n") {
                self.0.pop();
                out.push(std::mem::take(&mut self.0));
            }
        }
        out
    }
}

/// Plaintext until "STARTTLS": answers with a banner line of `banner` bytes and "GO",
/// then starts TLS; over TLS, answers each line with "secure: " and the line.
struct Server {
    tls: TlsServerOptions,
    banner: usize,
    transport: Option<Transport>,
    lines: Lines,
    /// Bytes still unsent when `start_tls` ran (they go out in the clear first).
    unsent_at_start: Rc<Cell<usize>>,
    /// Told once `start_tls` ran.
    started: mpsc::Sender<()>,
    log: Rc<RefCell<Vec<String>>>,
}

impl Protocol for Server {
    fn connection_made(&mut self, t: Transport) {
        self.transport = Some(t);
    }

    fn data_received(&mut self, data: &[u8]) {
        let t = self.transport.clone().unwrap();
        for line in self.lines.feed(data) {
            if line == b"STARTTLS" {
                assert!(!t.is_tls());
                t.write_sequence(&[&vec![b'x'; self.banner], b"\nGO\n"]);
                self.unsent_at_start.set(t.buffered());
                t.start_tls(&self.tls).unwrap();
                assert_eq!(t.start_tls(&self.tls), Err(TlsSetupError::AlreadyTls));
                let _ = self.started.send(());
            } else {
                self.log.borrow_mut().push(format!("server got {}", String::from_utf8_lossy(&line)));
                t.write_sequence(&[b"secure: ", &line, b"\n"]);
            }
        }
    }
}

/// Sends "STARTTLS", checks the banner, starts TLS on "GO", then sends "ping" and
/// closes on the answer.
struct Client {
    tls: TlsClientOptions,
    transport: Option<Transport>,
    lines: Lines,
    log: Rc<RefCell<Vec<String>>>,
}

impl Protocol for Client {
    fn connection_made(&mut self, t: Transport) {
        t.write(b"STARTTLS\n");
        self.transport = Some(t);
    }

    fn data_received(&mut self, data: &[u8]) {
        let t = self.transport.clone().unwrap();
        for line in self.lines.feed(data) {
            if line.first() == Some(&b'x') {
                assert!(line == vec![b'x'; SMALL_BANNER], "the banner came through in the clear, intact");
                self.log.borrow_mut().push("banner".into());
            } else if line == b"GO" {
                t.start_tls(&self.tls).unwrap();
                // Written during the handshake: sent once it is done.
                t.write(b"ping\n");
                let log = self.log.clone();
                let transport = t.clone();
                t.when_handshake_done().add_callback(move |()| {
                    let alpn = transport.tls_version().is_some();
                    log.borrow_mut().push(format!("client handshake done, version known: {alpn}"));
                });
            } else {
                let line = String::from_utf8_lossy(&line);
                self.log.borrow_mut().push(format!("client got {line} (tls: {})", t.is_tls()));
                t.lose_connection();
            }
        }
    }
}

/// The banner the weft server sends its weft client before "GO".
const SMALL_BANNER: usize = 64 * 1024;

/// What the test learns of the server's `start_tls`: how much was unsent then, and a
/// message once it ran.
struct Started {
    unsent: Rc<Cell<usize>>,
    signal: mpsc::Receiver<()>,
}

/// A STARTTLS server on `reactor` whose banner is `banner` bytes; returns its address,
/// the unsent count at `start_tls`, and the log.
fn starttls_server(
    reactor: &Reactor,
    certs: &Certs,
    banner: usize,
) -> (SocketAddr, Started, Rc<RefCell<Vec<String>>>) {
    let log = Rc::new(RefCell::new(Vec::new()));
    let (tx, started) = mpsc::channel();
    let unsent = Rc::new(Cell::new(0));
    let (tls, l, u) = (certs.server(), log.clone(), unsent.clone());
    let port = reactor
        .listen_tcp(
            localhost(),
            move |_: &Address| Server {
                tls: tls.clone(),
                banner,
                transport: None,
                lines: Lines::default(),
                unsent_at_start: u.clone(),
                started: tx.clone(),
                log: l.clone(),
            },
            false,
        )
        .unwrap();
    (SocketAddr::from(([127, 0, 0, 1], port.port().unwrap())), Started { unsent, signal: started }, log)
}

/// A line protocol that starts in plaintext and upgrades, weft on both ends: the banner
/// arrives in the clear, the client starts TLS on "GO" and writes during the handshake,
/// and the conversation goes on encrypted.
#[test]
fn start_tls_after_a_plaintext_exchange() {
    let certs = Certs::new();
    let reactor = Reactor::new().unwrap();
    let (addr, _started, log) = starttls_server(&reactor, &certs, SMALL_BANNER);
    let (tls, l) = (certs.client("localhost"), log.clone());
    let d = reactor.connect_tcp(
        addr,
        move |_: &Address| Client {
            tls: tls.clone(),
            transport: None,
            lines: Lines::default(),
            log: l.clone(),
        },
        secs(10),
    );
    let l = log.clone();
    turn_until(&reactor, secs(30), move || l.borrow().iter().any(|m| m.starts_with("client got")));
    assert_eq!(
        *log.borrow(),
        [
            "banner",
            "client handshake done, version known: true",
            "server got ping",
            "client got secure: ping (tls: true)"
        ]
    );
    assert!(d.result().unwrap().is_ok());
}

/// The server's plaintext is still buffered when it calls `start_tls` (a 6 MiB banner,
/// more than the socket buffers hold, to a client with a 16 KiB receive buffer that
/// reads nothing until then): it goes out in the clear, intact, before the first TLS
/// record, and rustls's blocking client then handshakes on the same socket.
#[test]
fn plaintext_buffered_at_start_tls_goes_out_in_the_clear_first() {
    const BANNER: usize = 6 << 20;
    let certs = Certs::new();
    let reactor = Reactor::new().unwrap();
    let (addr, Started { unsent, signal }, log) = starttls_server(&reactor, &certs, BANNER);
    let config = certs.rustls_client();
    let client = Thread::spawn(move || {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(16 * 1024).unwrap();
        sock.connect(&addr.into()).unwrap();
        let mut sock: TcpStream = sock.into();
        sock.set_read_timeout(Some(secs(20))).unwrap();
        sock.write_all(b"STARTTLS\n").unwrap();
        signal.recv_timeout(secs(20)).expect("the server started TLS");
        let mut clear = BufReader::new(sock.try_clone().unwrap());
        let (mut banner, mut go) = (Vec::new(), Vec::new());
        clear.read_until(b'\n', &mut banner).unwrap();
        clear.read_until(b'\n', &mut go).unwrap();
        assert!(clear.buffer().is_empty(), "nothing but the server's clear lines before our ClientHello");
        let conn = ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
        let mut tls = StreamOwned::new(conn, sock);
        tls.write_all(b"ping\n").unwrap();
        let mut answer = [0; 13];
        tls.read_exact(&mut answer).unwrap();
        banner.pop();
        (banner == vec![b'x'; BANNER], go, answer)
    });
    let done = client.done();
    turn_until(&reactor, secs(30), done);
    let (banner_intact, go, answer) = client.join();
    assert!(unsent.get() > 0, "the clear bytes were still buffered at start_tls");
    assert!(banner_intact);
    assert_eq!(go, b"GO\n");
    assert_eq!(&answer, b"secure: ping\n");
    assert_eq!(*log.borrow(), ["server got ping"]);
}

/// `start_tls` refuses a transport it cannot work on, and TLS questions to a plain
/// transport get plain answers.
#[test]
fn start_tls_refuses_what_it_cannot_upgrade() {
    let certs = Certs::new();
    let memory = MemoryTransport::new();
    assert_eq!(memory.transport().start_tls(&certs.server()), Err(TlsSetupError::NotConnected));
    let t = memory.transport();
    assert!(!t.is_tls());
    assert_eq!(t.negotiated_protocol(), None);
    let not_tls = t.when_handshake_done().result().unwrap().unwrap_err();
    assert_eq!(not_tls.downcast_ref::<TlsSetupError>(), Some(&TlsSetupError::NotTls));

    let reactor = Reactor::new().unwrap();
    let transport = Rc::new(RefCell::new(None));
    let tr = transport.clone();
    struct Keep(Rc<RefCell<Option<Transport>>>);
    impl Protocol for Keep {
        fn connection_made(&mut self, t: Transport) {
            *self.0.borrow_mut() = Some(t);
        }
        fn data_received(&mut self, _: &[u8]) {}
    }
    let port = reactor.listen_tcp(localhost(), move |_: &Address| Keep(tr.clone()), false).unwrap();
    let _client = std::net::TcpStream::connect(("127.0.0.1", port.port().unwrap())).unwrap();
    let tr = transport.clone();
    turn_until(&reactor, secs(20), move || tr.borrow().is_some());
    let t = transport.borrow_mut().take().unwrap();
    t.lose_connection();
    assert_eq!(t.start_tls(&certs.client("localhost")), Err(TlsSetupError::NotConnected));
}
