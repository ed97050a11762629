//! Handshakes that fail: a certificate that does not verify, a peer that sends garbage
//! or closes mid-handshake, one that never answers (the handshake timeout), a cancelled
//! `connect_tls`. Each ends with a clear error in `connection_lost` (and in
//! `connect_tls`'s Deferred), and every protocol is dropped.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::Arc;

use weft::reactor::tls::rustls::{self, ClientConnection};
use weft::reactor::tls::{TlsClientOptions, TlsError};
use weft::reactor::{Address, ConnectionAborted, Reactor};
use weft::{CancelledError, Deferred, Failure};

use super::rustls_peers::{echo_server, Thread};
use super::support::{turn_until, Certs, Mode, Peer, Seen};
use crate::support::{ms, secs};

/// Connects a weft client with `tls` to `addr`; runs until the Deferred and the
/// protocol have both finished; returns the Deferred's failure.
#[track_caller]
fn failing_connect(
    reactor: &Reactor,
    addr: SocketAddr,
    tls: &TlsClientOptions,
    until: impl Fn() -> bool + 'static,
) -> (Failure, Seen) {
    let seen = Seen::default();
    let s = seen.clone();
    let d = reactor.connect_tls(addr, move |_: &Address| Peer::new(Mode::Collect, &s), tls, secs(10));
    let (d2, s) = (d.clone(), seen.clone());
    turn_until(reactor, secs(20), move || d2.result().is_some() && s.lost_count() == 1 && until());
    (d.result().unwrap().map(drop).unwrap_err(), seen)
}

#[track_caller]
fn tls_error(f: &Failure) -> &TlsError {
    f.downcast_ref::<TlsError>().unwrap_or_else(|| panic!("not a TlsError: {f}"))
}

/// A client that trusts only the web's public roots refuses the test CA's certificate
/// (unknown issuer); the server hears the client's alert. Both get a `TlsError`.
#[test]
fn an_untrusted_ca_fails_verification_on_the_client() {
    let certs = Certs::new();
    let (reactor, server_seen, addr) = echo_server(&certs.server());
    let web_pki_only = TlsClientOptions::new("localhost").unwrap();
    let ss = server_seen.clone();
    let (failure, client_seen) = failing_connect(&reactor, addr, &web_pki_only, move || ss.lost_count() == 1);
    let err = tls_error(&failure);
    assert!(err.is_certificate_error(), "{err}");
    assert!(matches!(
        err,
        TlsError::Rustls(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
    ));
    assert_eq!(tls_error(&client_seen.reason()), err, "connection_lost got the same error");
    assert!(matches!(tls_error(&server_seen.reason()), TlsError::Rustls(rustls::Error::AlertReceived(_))));
    drop(reactor);
    assert_eq!((client_seen.dropped.get(), server_seen.dropped.get()), (1, 1));
}

/// A certificate for `localhost` is refused for another name, even from a trusted CA.
#[test]
fn a_certificate_for_another_name_fails_verification() {
    let certs = Certs::new();
    let (reactor, _server_seen, addr) = echo_server(&certs.server());
    let (failure, seen) = failing_connect(&reactor, addr, &certs.client("weft.example"), || true);
    let err = tls_error(&failure);
    assert!(err.is_certificate_error(), "{err}");
    assert!(
        matches!(
            err,
            TlsError::Rustls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{err:?}"
    );
    drop(reactor);
    assert_eq!(seen.dropped.get(), 1);
}

/// What a server's protocol got when a raw client did `client` to it.
fn server_reason_after(
    client: impl FnOnce(TcpStream) + Send + 'static,
    timeout_ms: Option<u64>,
) -> (Seen, Vec<u8>) {
    let certs = Certs::new();
    let mut tls = certs.server();
    if let Some(t) = timeout_ms {
        tls = tls.with_handshake_timeout(ms(t));
    }
    let (reactor, seen, addr) = echo_server(&tls);
    let peer = Thread::spawn(move || {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(secs(20))).unwrap();
        client(sock.try_clone().unwrap());
        // What the server sent back before it closed (an alert, or nothing).
        let mut back = Vec::new();
        let _ = (&sock).read_to_end(&mut back);
        back
    });
    let (s, done) = (seen.clone(), peer.done());
    turn_until(&reactor, secs(20), move || done() && s.lost_count() == 1);
    let back = peer.join();
    drop(reactor);
    assert_eq!(seen.dropped.get(), seen.made.get(), "every protocol was dropped");
    (seen, back)
}

/// A plaintext HTTP request to a TLS server: rustls refuses it, the protocol's
/// `connection_lost` says so, and the connection is closed (the client reads an end of
/// file after at most an alert).
#[test]
fn garbage_instead_of_a_client_hello_is_a_clear_error() {
    let (seen, back) = server_reason_after(
        |mut sock| sock.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap(),
        None,
    );
    let reason = seen.reason();
    assert!(matches!(tls_error(&reason), TlsError::Rustls(_)), "{reason}");
    assert!(back.len() <= 7, "at most one alert record came back: {back:?}");
}

/// The first bytes of a real ClientHello, then the client closes: the server's
/// protocol gets `ClosedDuringHandshake`.
#[test]
fn a_peer_that_closes_mid_handshake_is_a_clear_error() {
    let mut hello = Vec::new();
    let config = Certs::new().rustls_client();
    let mut client = ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    client.write_tls(&mut hello).unwrap();
    let (seen, _) = server_reason_after(
        move |mut sock| {
            sock.write_all(&hello[..hello.len() / 2]).unwrap();
            sock.shutdown(std::net::Shutdown::Write).unwrap();
        },
        None,
    );
    assert_eq!(tls_error(&seen.reason()), &TlsError::ClosedDuringHandshake);
}

/// A client that connects and sends nothing: the server's handshake timer (50 ms here)
/// aborts the connection with `HandshakeTimeout`.
#[test]
fn a_silent_client_hits_the_servers_handshake_timeout() {
    let (seen, back) = server_reason_after(
        |sock| {
            // Wait for the server to give up (it closes; the read sees the end).
            let _ = (&sock).read(&mut [0; 16]);
        },
        Some(50),
    );
    assert_eq!(tls_error(&seen.reason()), &TlsError::HandshakeTimeout(ms(50)));
    assert!(back.is_empty());
}

/// A server that accepts TCP and never speaks TLS: `connect_tls` fails with the
/// client's `HandshakeTimeout`, and the protocol gets the same.
#[test]
fn a_silent_server_hits_the_clients_handshake_timeout() {
    let certs = Certs::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reactor = Reactor::new().unwrap();
    let tls = certs.client("localhost").with_handshake_timeout(ms(50));
    let (failure, seen) = failing_connect(&reactor, addr, &tls, || true);
    assert_eq!(tls_error(&failure), &TlsError::HandshakeTimeout(ms(50)));
    assert_eq!(tls_error(&seen.reason()), &TlsError::HandshakeTimeout(ms(50)));
    drop(reactor);
    assert_eq!(seen.dropped.get(), 1);
    drop(listener);
}

/// A `connect_tls` to a listener that accepts TCP (in the kernel's backlog) and never
/// speaks: returns once the protocol's `connection_made` ran, with the handshake
/// running.
fn handshaking_client() -> (Reactor, Seen, Deferred<Rc<RefCell<Peer>>>, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let reactor = Reactor::new().unwrap();
    let seen = Seen::default();
    let s = seen.clone();
    let tls = Certs::new().client("localhost");
    let d = reactor.connect_tls(
        listener.local_addr().unwrap(),
        move |_: &Address| Peer::new(Mode::Collect, &s),
        &tls,
        secs(10),
    );
    let s = seen.clone();
    turn_until(&reactor, secs(20), move || s.made.get() == 1);
    (reactor, seen, d, listener)
}

/// Cancelling `connect_tls` during the handshake aborts the connection: the Deferred
/// fails with `CancelledError`, the protocol gets `ConnectionAborted` and is dropped.
#[test]
fn cancelling_connect_tls_during_the_handshake_aborts_the_connection() {
    let (reactor, seen, d, listener) = handshaking_client();
    assert!(d.result().is_none(), "still handshaking");
    d.cancel();
    let s = seen.clone();
    turn_until(&reactor, secs(20), move || s.lost_count() == 1);
    assert!(d.result().unwrap().map(drop).unwrap_err().is::<CancelledError>());
    assert!(seen.reason().is::<ConnectionAborted>(), "{}", seen.reason());
    drop(reactor);
    assert_eq!(seen.dropped.get(), 1);
    drop(listener);
}

/// Dropping the reactor during a handshake: the waiting `when_handshake_done` Deferred
/// fails with `TlsError::Closed` (never left unfired), and nothing is leaked.
#[test]
fn dropping_the_reactor_mid_handshake_fails_the_waiters() {
    let (reactor, seen, d, listener) = handshaking_client();
    let waiter = seen.transport().when_handshake_done();
    seen.transport.borrow_mut().take();
    drop(reactor);
    let failure = waiter.result().unwrap().unwrap_err();
    assert_eq!(tls_error(&failure), &TlsError::Closed);
    assert!(d.result().unwrap().is_err());
    assert_eq!(seen.dropped.get(), 1);
    drop(listener);
}

/// Options that cannot work are refused up front, with what was wrong.
#[test]
fn bad_names_and_pem_are_setup_errors() {
    use weft::reactor::tls::{TlsServerOptions, TlsSetupError};
    assert_eq!(
        TlsClientOptions::new("not a name").unwrap_err(),
        TlsSetupError::InvalidServerName("not a name".into())
    );
    assert!(matches!(TlsServerOptions::from_pem(b"", b""), Err(TlsSetupError::Pem(_))));
    let certs = Certs::new();
    // The CA's certificate with the server's key: rustls sees they do not match.
    let mismatch = TlsServerOptions::from_pem(certs.ca_pem.as_bytes(), certs.key_pem.as_bytes());
    assert!(matches!(mismatch, Err(TlsSetupError::Rustls(_))), "{mismatch:?}");
    let _: Arc<rustls::ServerConfig> = certs.server().config().clone();
}
