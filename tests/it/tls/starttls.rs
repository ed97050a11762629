//! `Transport::start_tls` after a plaintext exchange (a STARTTLS-style line protocol),
//! weft on both ends, and what `start_tls` refuses.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;

use weft::reactor::tls::{TlsClientOptions, TlsServerOptions, TlsSetupError};
use weft::reactor::{Address, MemoryTransport, Protocol, Reactor, Transport};

use super::support::{pattern, turn_until, Certs};
use crate::support::{localhost, secs};

const BANNER: usize = 4 << 20;

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

/// Plaintext until "STARTTLS": answers with a 4 MiB banner line and "GO", then starts
/// TLS; over TLS, answers each line with "secure: " and the line.
struct Server {
    tls: TlsServerOptions,
    transport: Option<Transport>,
    lines: Lines,
    /// Bytes still unsent when `start_tls` ran (they go out in the clear first).
    unsent_at_start: Rc<Cell<usize>>,
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
                let mut banner = pattern(BANNER);
                banner.iter_mut().filter(|b| **b == b'\n').for_each(|b| *b = b' ');
                t.write_sequence(&[&banner, b"\nGO\n"]);
                self.unsent_at_start.set(t.buffered());
                t.start_tls(&self.tls).unwrap();
                assert_eq!(t.start_tls(&self.tls), Err(TlsSetupError::AlreadyTls));
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
            if line.len() == BANNER {
                let mut banner = pattern(BANNER);
                banner.iter_mut().filter(|b| **b == b'\n').for_each(|b| *b = b' ');
                assert!(line == banner, "the banner came through in the clear, intact");
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

/// A line protocol that starts in plaintext and upgrades: what the server wrote before
/// `start_tls` (4 MiB, still buffered when it switched) arrives in the clear and intact,
/// the handshake follows, and the conversation goes on encrypted.
#[test]
fn start_tls_after_a_plaintext_exchange() {
    let certs = Certs::new();
    let reactor = Reactor::new().unwrap();
    let log = Rc::new(RefCell::new(Vec::new()));
    let unsent = Rc::new(Cell::new(0));
    let (tls, l, u) = (certs.server(), log.clone(), unsent.clone());
    let port = reactor
        .listen_tcp(
            localhost(),
            move |_: &Address| Server {
                tls: tls.clone(),
                transport: None,
                lines: Lines::default(),
                unsent_at_start: u.clone(),
                log: l.clone(),
            },
            false,
        )
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
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
    assert!(unsent.get() > 0, "the clear bytes were still buffered at start_tls");
    assert!(d.result().unwrap().is_ok());
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
