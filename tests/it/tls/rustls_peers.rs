//! weft's TLS against rustls's blocking client and server (`StreamOwned` over a
//! `std::net::TcpStream`, on a thread), and against itself: handshakes, echo both
//! ways, ALPN, close_notify.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use weft::reactor::tls::rustls::{self, ClientConnection, ServerConnection, StreamOwned};
use weft::reactor::tls::{TlsError, TlsServerOptions};
use weft::reactor::{Address, ConnectionDone, Reactor};

use super::support::{pattern, turn_until, Certs, Mode, Peer, Seen};
use crate::support::{localhost, secs};

/// A blocking peer on its own thread; `done` turns true when it has finished.
pub(crate) struct Thread<R> {
    done: Arc<AtomicBool>,
    handle: JoinHandle<R>,
}

impl<R: Send + 'static> Thread<R> {
    pub(crate) fn spawn(f: impl FnOnce() -> R + Send + 'static) -> Thread<R> {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let handle = std::thread::spawn(move || {
            let r = f();
            d.store(true, Ordering::SeqCst);
            r
        });
        Thread { done, handle }
    }

    pub(crate) fn done(&self) -> impl Fn() -> bool + 'static {
        let d = self.done.clone();
        move || d.load(Ordering::SeqCst)
    }

    pub(crate) fn join(self) -> R {
        self.handle.join().expect("the peer thread panicked")
    }
}

/// A rustls client over a blocking socket to `addr`, for `localhost`.
pub(crate) fn rustls_client(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> StreamOwned<ClientConnection, TcpStream> {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(secs(20))).unwrap();
    let conn = ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    StreamOwned::new(conn, sock)
}

fn addr_of(port: &weft::reactor::ListeningPort) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()))
}

/// A weft echo server speaking TLS with `tls`; returns the reactor, what its protocols
/// saw, and its address.
pub(crate) fn echo_server(tls: &TlsServerOptions) -> (Reactor, Seen, SocketAddr) {
    let reactor = Reactor::new().unwrap();
    let (seen, addr) = tls_server(&reactor, tls, |seen| Peer::new(Mode::Echo, seen));
    (reactor, seen, addr)
}

/// A weft TLS server whose protocols `make` makes; returns what they saw, and its
/// address.
pub(crate) fn tls_server(
    reactor: &Reactor,
    tls: &TlsServerOptions,
    make: impl Fn(&Seen) -> Peer + 'static,
) -> (Seen, SocketAddr) {
    let seen = Seen::default();
    let s = seen.clone();
    let port = reactor.listen_tls(localhost(), move |_: &Address| make(&s), tls, false).unwrap();
    (seen, addr_of(&port))
}

/// A rustls client sends 100 KB through a weft echo server, reads it back, and closes
/// with close_notify; the server sees the end of file, answers with its own
/// close_notify (the client's read ends cleanly, not with `UnexpectedEof`), and its
/// protocol ends with `ConnectionDone` and is dropped.
#[test]
fn a_rustls_client_echoes_through_a_weft_server_and_both_close_cleanly() {
    let certs = Certs::new();
    let (reactor, seen, addr) = echo_server(&certs.server());
    let config = certs.rustls_client();
    let client = Thread::spawn(move || {
        let mut tls = rustls_client(addr, config);
        let sent = pattern(100_000);
        tls.write_all(&sent).unwrap();
        let mut back = vec![0; sent.len()];
        tls.read_exact(&mut back).unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        // The server answers our close_notify with its own, then closes: a clean end.
        let mut rest = Vec::new();
        let end = tls.read_to_end(&mut rest).map(|_| rest.len());
        (back == sent, end.map_err(|e| e.kind()), tls.conn.protocol_version())
    });
    let s = seen.clone();
    let done = client.done();
    turn_until(&reactor, secs(20), move || done() && s.lost_count() == 1);
    let (echoed, end, version) = client.join();
    assert!(echoed, "the echo came back intact");
    assert_eq!(end, Ok(0), "the server closed with close_notify");
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert!(seen.eof.get(), "the client's close_notify was the server's end of file");
    assert!(seen.reason().is::<ConnectionDone>(), "{}", seen.reason());
    assert_eq!(seen.dropped.get(), seen.made.get());
}

/// A rustls server on a thread; it answers one line in upper case, then reads until
/// the client closes, and says whether the close was clean (close_notify).
fn rustls_upper_server(config: Arc<rustls::ServerConfig>) -> (SocketAddr, Thread<(Vec<u8>, bool)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(secs(20))).unwrap();
        let conn = ServerConnection::new(config).unwrap();
        let mut tls = BufReader::new(StreamOwned::new(conn, sock));
        let mut line = Vec::new();
        tls.read_until(b'\n', &mut line).unwrap();
        let alpn = tls.get_ref().conn.alpn_protocol().map(<[u8]>::to_vec).unwrap_or_default();
        tls.get_mut().write_all(&line.to_ascii_uppercase()).unwrap();
        let mut rest = Vec::new();
        let clean = tls.read_to_end(&mut rest).is_ok();
        (alpn, clean)
    });
    (addr, server)
}

/// `connect_tls` to a rustls server: the Deferred fires after the handshake with the
/// protocol, ALPN agrees on the client's only offer, the greeting written in
/// `connection_made` (before the handshake) arrives, and `lose_connection` ends with a
/// close_notify the server sees as a clean close.
#[test]
fn a_weft_client_talks_to_a_rustls_server_with_alpn() {
    let certs = Certs::new();
    let server_tls = certs.server().with_alpn(["h2", "http/1.1"]);
    let (addr, server) = rustls_upper_server(server_tls.config().clone());
    let reactor = Reactor::new().unwrap();
    let seen = Seen::default();
    let s = seen.clone();
    let client_tls = certs.client("localhost").with_alpn(["http/1.1"]);
    let d = reactor.connect_tls(
        addr,
        move |_: &Address| Peer::new(Mode::Collect, &s).greeting(b"hello\n", false),
        &client_tls,
        secs(10),
    );
    let s = seen.clone();
    turn_until(&reactor, secs(20), move || s.data.borrow().as_slice() == b"HELLO\n");
    assert!(d.result().expect("fired").is_ok());
    let t = seen.transport();
    assert_eq!(t.negotiated_protocol().as_deref(), Some(&b"http/1.1"[..]));
    assert!(t.is_tls());
    assert!(t.peer_certificates().is_some_and(|chain| !chain.is_empty()));
    t.lose_connection();
    let (s, done) = (seen.clone(), server.done());
    turn_until(&reactor, secs(20), move || done() && s.lost_count() == 1);
    let (alpn, clean) = server.join();
    assert_eq!(alpn, b"http/1.1");
    assert!(clean, "the server saw close_notify before the end of the connection");
    assert!(seen.reason().is::<ConnectionDone>(), "{}", seen.reason());
    drop(d); // it holds the protocol
    assert_eq!(seen.dropped.get(), 1);
}

/// weft to weft: the server's ALPN preference wins among what the client offers, and
/// both ends read the same choice; with nothing in common the handshake fails on both
/// ends with a `TlsError` (the server's `NoApplicationProtocol`, the client hears the
/// alert).
#[test]
fn alpn_picks_the_servers_preference_and_fails_without_a_common_protocol() {
    let certs = Certs::new();
    let (reactor, server_seen, addr) = echo_server(&certs.server().with_alpn(["h2", "http/1.1"]));
    let client_seen = Seen::default();
    let s = client_seen.clone();
    let both = certs.client("localhost").with_alpn(["http/1.1", "h2"]);
    let d = reactor.connect_tls(addr, move |_: &Address| Peer::new(Mode::Collect, &s), &both, secs(10));
    let d2 = d.clone();
    turn_until(&reactor, secs(20), move || d2.result().is_some());
    assert!(d.result().unwrap().is_ok());
    assert_eq!(client_seen.transport().negotiated_protocol().as_deref(), Some(&b"h2"[..]));
    let server_side = server_seen.transport();
    assert_eq!(server_side.negotiated_protocol().as_deref(), Some(&b"h2"[..]));

    let refused_seen = Seen::default();
    let s = refused_seen.clone();
    let none = certs.client("localhost").with_alpn(["spdy/1"]);
    let d = reactor.connect_tls(addr, move |_: &Address| Peer::new(Mode::Collect, &s), &none, secs(10));
    let (d2, ss) = (d.clone(), server_seen.clone());
    turn_until(&reactor, secs(20), move || d2.result().is_some() && ss.lost_count() == 1);
    let failure = d.result().unwrap().map(drop).unwrap_err();
    assert!(matches!(failure.downcast_ref::<TlsError>(), Some(TlsError::Rustls(_))), "{failure}");
    let server_reason = server_seen.reason();
    assert_eq!(
        server_reason.downcast_ref::<TlsError>(),
        Some(&TlsError::Rustls(rustls::Error::NoApplicationProtocol)),
        "{server_reason}"
    );
    assert!(refused_seen.reason().is::<TlsError>());
    drop(reactor);
    assert_eq!(refused_seen.dropped.get(), 1);
}

/// Half-close over TLS: the client sends a request and its close_notify but keeps
/// reading; the server's protocol keeps the connection half-open, answers after the end
/// of file, and closes; the client gets the answer and a clean end.
#[test]
fn close_notify_is_a_half_close_the_server_can_answer_after() {
    let certs = Certs::new();
    let reactor = Reactor::new().unwrap();
    let (seen, addr) = tls_server(&reactor, &certs.server(), |seen| {
        let mut p = Peer::new(Mode::Collect, seen);
        p.half_open = true;
        p
    });
    let config = certs.rustls_client();
    let client = Thread::spawn(move || {
        let mut tls = rustls_client(addr, config);
        tls.write_all(b"question").unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        let mut answer = Vec::new();
        let end = tls.read_to_end(&mut answer).map_err(|e| e.kind());
        (answer, end)
    });
    let s = seen.clone();
    turn_until(&reactor, secs(20), move || s.eof.get());
    assert_eq!(seen.data.borrow().as_slice(), b"question");
    let t = seen.transport();
    t.write(b"answer after your end of file");
    t.lose_connection();
    let (s, done) = (seen.clone(), client.done());
    turn_until(&reactor, secs(20), move || done() && s.lost_count() == 1);
    let (answer, end) = client.join();
    assert_eq!(answer, b"answer after your end of file");
    assert!(end.is_ok(), "{end:?}");
    assert!(seen.reason().is::<ConnectionDone>());
}

/// A protocol that writes and calls `lose_connection` in `connection_made`, before the
/// handshake: the handshake still finishes, the bytes arrive, then close_notify.
#[test]
fn lose_connection_before_the_handshake_finishes_it_and_delivers_the_data() {
    let certs = Certs::new();
    let reactor = Reactor::new().unwrap();
    let (seen, addr) = tls_server(&reactor, &certs.server(), |seen| {
        Peer::new(Mode::Collect, seen).greeting(&pattern(200_000), true)
    });
    let config = certs.rustls_client();
    let client = Thread::spawn(move || {
        let mut tls = rustls_client(addr, config);
        let mut got = Vec::new();
        let end = tls.read_to_end(&mut got).map_err(|e| e.kind());
        (got, end)
    });
    let (s, done) = (seen.clone(), client.done());
    turn_until(&reactor, secs(20), move || done() && s.lost_count() == 1);
    let (got, end) = client.join();
    assert!(got == pattern(200_000), "got {} bytes", got.len());
    assert!(end.is_ok(), "close_notify, not a truncation: {end:?}");
    assert!(seen.reason().is::<ConnectionDone>());
}

/// `lose_write_connection` is TLS's half-close: weft's client sends its request, then
/// close_notify (and shuts the TCP write side); the rustls server reads to a clean end,
/// still answers, and closes; the client gets the answer and its protocol ends with
/// `ConnectionDone`.
#[test]
fn lose_write_connection_sends_close_notify_and_still_reads_the_answer() {
    let certs = Certs::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = certs.server().config().clone();
    let server = Thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(secs(20))).unwrap();
        let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), sock);
        let mut request = Vec::new();
        let end = tls.read_to_end(&mut request).map_err(|e| e.kind());
        tls.write_all(b"answer to ").unwrap();
        tls.write_all(&request).unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        end
    });
    let reactor = Reactor::new().unwrap();
    let seen = Seen::default();
    let s = seen.clone();
    let d = reactor.connect_tls(
        addr,
        move |_: &Address| Peer::new(Mode::Collect, &s).greeting(b"a request", false),
        &certs.client("localhost"),
        secs(10),
    );
    let s = seen.clone();
    turn_until(&reactor, secs(20), move || s.made.get() == 1);
    seen.transport().lose_write_connection();
    let (s, done) = (seen.clone(), server.done());
    turn_until(&reactor, secs(20), move || done() && s.lost_count() == 1);
    assert_eq!(server.join(), Ok(9), "the server read the request to a clean end (close_notify)");
    assert_eq!(seen.data.borrow().as_slice(), b"answer to a request");
    assert!(seen.eof.get());
    assert!(seen.reason().is::<ConnectionDone>(), "{}", seen.reason());
    drop(d);
}
