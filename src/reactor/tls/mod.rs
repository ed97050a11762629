//! TLS over rustls (feature `tls`): [`ReactorHandle::listen_tls`],
//! [`ReactorHandle::connect_tls`], and [`Transport::start_tls`] on a connection that is
//! already up (Twisted's `startTLS`, for STARTTLS-style protocols).
//!
//! A [`Protocol`] sees plaintext through the same [`Transport`] as over TCP:
//! `data_received`, `write`, `lose_connection`, producers and the write buffer's water
//! marks work as they do there. rustls's non-blocking API is driven from the reactor's
//! readiness events, on the reactor thread: no thread is started.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use weft::reactor::tls::{TlsClientOptions, TlsServerOptions};
//! use weft::reactor::{Address, Protocol, Reactor, Transport};
//!
//! /// Echoes what it gets.
//! struct Echo(Option<Transport>);
//! impl Protocol for Echo {
//!     fn connection_made(&mut self, t: Transport) { self.0 = Some(t) }
//!     fn data_received(&mut self, data: &[u8]) { self.0.as_ref().unwrap().write(data) }
//! }
//!
//! /// Sends a line, prints the answer, stops the reactor.
//! struct Hello(Option<Transport>, weft::ReactorHandle);
//! impl Protocol for Hello {
//!     fn connection_made(&mut self, t: Transport) {
//!         t.write(b"hello over TLS\n"); // sent once the handshake is done
//!         self.0 = Some(t);
//!     }
//!     fn data_received(&mut self, data: &[u8]) {
//!         assert_eq!(data, b"hello over TLS\n");
//!         self.0.as_ref().unwrap().lose_connection(); // sends close_notify
//!         self.1.stop();
//!     }
//! }
//!
//! // A certificate for "localhost" (a real server loads its own with `from_pem`).
//! let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
//! let server = TlsServerOptions::from_pem(cert.cert.pem().as_bytes(), cert.signing_key.serialize_pem().as_bytes())?;
//! // The client trusts that certificate and checks it is valid for "localhost".
//! let client = TlsClientOptions::new("localhost")?.with_root_certificates_pem(cert.cert.pem().as_bytes())?;
//!
//! let reactor = Reactor::new()?;
//! let port = reactor.listen_tls("127.0.0.1:0".parse()?, |_: &Address| Echo(None), &server, false)?;
//! let addr = format!("127.0.0.1:{}", port.port().unwrap()).parse()?;
//! let h = reactor.handle();
//! let connected = reactor.connect_tls(addr, move |_: &Address| Hello(None, h.clone()), &client, Duration::from_secs(5));
//! # let h = reactor.handle();
//! # let _guard = reactor.call_later(Duration::from_secs(20), move || h.stop());
//! reactor.run();
//! assert!(connected.result().unwrap().is_ok());
//! # Ok(())
//! # }
//! ```
//!
//! # The connection's life
//!
//! `connection_made` is called when the TCP connection is up, before the handshake, as
//! Twisted does: what the protocol writes meanwhile is sent once the handshake is done
//! (nothing is lost), and [`Transport::when_handshake_done`] says when that is. The
//! handshake runs whether or not the protocol reads, so a protocol that pauses, fills
//! its write buffer or calls `lose_connection` in `connection_made` still gets it
//! finished (and its data sent) before the close.
//!
//! A handshake that fails ends the connection: `connection_lost` gets a [`TlsError`]
//! (a certificate that does not verify, a peer that sends something that is not TLS or
//! closes mid-handshake, [`TlsError::HandshakeTimeout`] after the options' handshake
//! timeout, 10 s by default). [`connect_tls`](ReactorHandle::connect_tls)'s Deferred
//! fires only after the handshake, and fails with the same error.
//!
//! Closing: `lose_connection` sends the buffered data, then a TLS `close_notify`, then
//! closes; `lose_write_connection` sends `close_notify` and shuts the TCP write side
//! (TLS 1.3 half-close); the peer's `close_notify` is the end of file
//! (`read_connection_lost`). A peer that closes the TCP connection without
//! `close_notify` after the handshake ends it with [`TlsError::UnexpectedEof`], after
//! the data that did arrive. `abort_connection` closes at once, with no `close_notify`.
//!
//! # Crypto and trust
//!
//! rustls with its `ring` provider (it builds with a C compiler, no cmake). A client
//! verifies the server's certificate and name by default, against Mozilla's root list
//! (`webpki-roots`); [`TlsClientOptions`] says how to trust something else. Any rustls
//! `ServerConfig` or `ClientConfig` can be used as is ([`TlsServerOptions::new`],
//! [`TlsClientOptions::with_config`]); the [`rustls`] crate is re-exported here to build
//! them with the same version.

mod error;
mod options;
mod session;

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

pub use error::{TlsError, TlsSetupError};
pub use options::{TlsClientOptions, TlsOptions, TlsServerOptions, DEFAULT_HANDSHAKE_TIMEOUT};
pub use rustls;

use session::Step;
pub(crate) use session::TlsStream;

use super::stream::{Conn, Stream};
use super::{Address, Factory, ListenOptions, ListeningPort, Protocol, ReactorHandle, Transport};
use crate::{Deferred, Failure};

impl ReactorHandle {
    /// Listens for TCP connections on `addr` and speaks TLS on each, as the server, with
    /// `tls` (Twisted's `listenSSL`); otherwise as [`listen_tcp`](Self::listen_tcp).
    /// The protocols `factory` makes see plaintext. See the [module docs](crate::reactor::tls).
    ///
    /// For a Unix socket or a socket the process already has, wrap the factory in a
    /// [`TlsFactory`] and use `listen_unix` or `adopt_stream_port`.
    ///
    /// # Errors
    ///
    /// As [`listen_tcp`](Self::listen_tcp).
    pub fn listen_tls<F: Factory>(
        &self,
        addr: SocketAddr,
        factory: F,
        tls: &TlsServerOptions,
        options: impl Into<ListenOptions>,
    ) -> io::Result<ListeningPort> {
        self.listen_tcp(addr, TlsFactory::server(factory, tls), options)
    }

    /// Connects to `addr` and speaks TLS as the client, with `tls` (Twisted's
    /// `connectSSL`): the server's certificate must be valid for `tls`'s server name.
    /// The Deferred fires with the protocol `factory` made once the handshake is done (its
    /// `connection_made` ran when the TCP connection came up), or fails: with the
    /// `std::io::Error` or [`ConnectTimeoutError`](super::ConnectTimeoutError) of the
    /// TCP connection (after `timeout`), or with the [`TlsError`] the handshake failed
    /// with (which the protocol's `connection_lost` gets too).
    ///
    /// # Cancellation
    ///
    /// Cancelling before the TCP connection is up closes the socket; during the handshake,
    /// aborts the connection (`connection_lost` gets
    /// [`ConnectionAborted`](super::ConnectionAborted)).
    #[must_use = "the Deferred carries the connected protocol or the failure"]
    pub fn connect_tls<F: Factory>(
        &self,
        addr: SocketAddr,
        factory: F,
        tls: &TlsClientOptions,
        timeout: Duration,
    ) -> Deferred<Rc<RefCell<F::Protocol>>> {
        self.connect_tcp(addr, TlsFactory::client(factory, tls), timeout).map(|wrapper| {
            let (inner, transport) = {
                let w = wrapper.borrow();
                (w.inner.clone(), w.transport.clone())
            };
            let Some(transport) = transport else {
                return crate::fail(TlsSetupError::NotConnected);
            };
            let handshake = transport.when_handshake_done();
            // A cancel while the handshake runs ends the connection.
            let weak = Rc::downgrade(transport.conn());
            let done = Deferred::with_canceller(move |_| {
                if let Some(conn) = weak.upgrade() {
                    conn.transport().abort_connection();
                }
            });
            handshake.chain_deferred(&done);
            done.map(move |()| inner)
        })
    }
}

impl Transport {
    /// Starts TLS on this connection (Twisted's `startTLS`): from now on the protocol
    /// reads and writes plaintext, and the socket carries TLS. This end is the server
    /// with [`TlsServerOptions`], the client with [`TlsClientOptions`]. What was written
    /// before and not sent yet goes out in the clear first. The handshake starts at once;
    /// [`when_handshake_done`](Self::when_handshake_done) says when it finished, and a
    /// failed one ends the connection with a [`TlsError`].
    ///
    /// For a STARTTLS-style protocol: the server calls it after sending its "go ahead"
    /// line, the client after reading it. Bytes the peer sent after its request and before
    /// the handshake (which a well-behaved peer does not send) were already handed to
    /// `data_received` as plaintext.
    ///
    /// # Errors
    ///
    /// [`TlsSetupError::AlreadyTls`] if the transport already speaks TLS,
    /// [`TlsSetupError::NotConnected`] if it is closed or closing, or has no socket, and
    /// [`TlsSetupError::Rustls`] if rustls cannot start a session with the options.
    pub fn start_tls(&self, options: &impl TlsOptions) -> Result<(), TlsSetupError> {
        let conn = self.conn();
        if self.is_disconnecting() {
            return Err(TlsSetupError::NotConnected);
        }
        let Some(reactor) = conn.reactor() else { return Err(TlsSetupError::NotConnected) };
        match conn.with_stream(|s| matches!(s, Stream::Tls(_))) {
            None => return Err(TlsSetupError::NotConnected),
            Some(true) => return Err(TlsSetupError::AlreadyTls),
            Some(false) => {}
        }
        let session = options.session()?;
        let clear = conn.take_unsent();
        conn.wrap_stream(|plain| Stream::Tls(Box::new(TlsStream::new(plain, session, clear))));

        let timeout = options.timeout();
        let (weak, ctx) = (Rc::downgrade(conn), conn.ctx().clone());
        let timer = reactor.call_later(timeout, move || {
            if let Some(conn) = weak.upgrade() {
                ctx.run(|| timed_out(&conn, timeout));
            }
        });
        with_tls(conn, |t| t.set_timer(timer));
        // The peer's first flight may already be waiting, its edge gone: drive once now.
        let c = conn.clone();
        reactor.call_soon_in(conn.ctx(), move || ready(&c));
        Ok(())
    }

    /// True once [`start_tls`](Self::start_tls) (or `listen_tls`/`connect_tls`) put TLS
    /// on this connection.
    #[doc(alias = "is_secure")]
    pub fn is_tls(&self) -> bool {
        with_tls(self.conn(), |_| ()).is_some()
    }

    /// A Deferred that fires when the TLS handshake has finished (at once if it has), or
    /// fails with the [`TlsError`] it failed with ([`TlsError::Closed`] if the connection
    /// closed first). Cancelling it detaches only this caller: the handshake goes on.
    ///
    /// # Errors
    ///
    /// The Deferred fails with [`TlsSetupError::NotTls`] on a transport that does not
    /// speak TLS.
    #[must_use = "the Deferred says when the handshake finished"]
    pub fn when_handshake_done(&self) -> Deferred<()> {
        with_tls(self.conn(), TlsStream::when_done).unwrap_or_else(|| crate::fail(TlsSetupError::NotTls))
    }

    /// The application protocol ALPN chose (`b"h2"`, `b"http/1.1"`, ...), once the
    /// handshake has finished (Twisted's `negotiatedProtocol`); `None` before, without
    /// TLS, or if none was agreed.
    #[doc(alias = "alpn_protocol")]
    pub fn negotiated_protocol(&self) -> Option<Vec<u8>> {
        with_tls(self.conn(), |t| t.with_session(|s| s.alpn_protocol().map(<[u8]>::to_vec))).flatten()
    }

    /// The TLS version in use, once the handshake has finished.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        with_tls(self.conn(), |t| t.with_session(|s| s.protocol_version())).flatten()
    }

    /// The certificate chain the peer presented (its own first), once the handshake has
    /// finished; `None` without TLS, or from a client that presented none.
    pub fn peer_certificates(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        with_tls(self.conn(), |t| t.with_session(|s| s.peer_certificates().map(<[_]>::to_vec))).flatten()
    }
}

/// A [`Factory`] whose protocols speak TLS (Twisted's `TLSMemoryBIOFactory`): each
/// connection starts TLS before its protocol's `connection_made`. `listen_tls` and
/// `connect_tls` use it over TCP; with `listen_unix`, `adopt_stream_port` or
/// `connect_unix` it puts TLS on those.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use weft::reactor::tls::{TlsFactory, TlsServerOptions};
/// use weft::reactor::{Address, Protocol, Reactor};
/// # struct Quiet;
/// # impl Protocol for Quiet { fn data_received(&mut self, _: &[u8]) {} }
/// # let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
/// # let tls = TlsServerOptions::from_pem(cert.cert.pem().as_bytes(), cert.signing_key.serialize_pem().as_bytes())?;
/// let reactor = Reactor::new()?;
/// let inherited = std::net::TcpListener::bind("127.0.0.1:0")?;
/// reactor.adopt_stream_port(inherited, TlsFactory::server(|_: &Address| Quiet, &tls))?;
/// # Ok(())
/// # }
/// ```
pub struct TlsFactory<F> {
    factory: F,
    side: Side,
}

#[derive(Clone, Debug)]
enum Side {
    Server(TlsServerOptions),
    Client(TlsClientOptions),
}

impl<F: Factory> TlsFactory<F> {
    /// Protocols from `factory`, with this end the TLS server.
    pub fn server(factory: F, tls: &TlsServerOptions) -> TlsFactory<F> {
        TlsFactory { factory, side: Side::Server(tls.clone()) }
    }

    /// Protocols from `factory`, with this end the TLS client.
    pub fn client(factory: F, tls: &TlsClientOptions) -> TlsFactory<F> {
        TlsFactory { factory, side: Side::Client(tls.clone()) }
    }
}

impl<F: Factory> Factory for TlsFactory<F> {
    type Protocol = TlsProtocol<F::Protocol>;

    fn build_protocol(&mut self, peer: &Address) -> TlsProtocol<F::Protocol> {
        TlsProtocol {
            inner: Rc::new(RefCell::new(self.factory.build_protocol(peer))),
            side: self.side.clone(),
            transport: None,
        }
    }
}

impl<F> fmt::Debug for TlsFactory<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFactory").field("side", &self.side).finish_non_exhaustive()
    }
}

/// The protocol a [`TlsFactory`] makes: starts TLS when the connection is made, then
/// hands every event to the protocol it wraps.
pub struct TlsProtocol<P> {
    inner: Rc<RefCell<P>>,
    side: Side,
    transport: Option<Transport>,
}

impl<P> fmt::Debug for TlsProtocol<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsProtocol").field("transport", &self.transport).finish_non_exhaustive()
    }
}

impl<P> TlsProtocol<P> {
    /// The wrapped protocol.
    pub fn inner(&self) -> &Rc<RefCell<P>> {
        &self.inner
    }
}

impl<P: Protocol> Protocol for TlsProtocol<P> {
    fn connection_made(&mut self, transport: Transport) {
        let started = match &self.side {
            Side::Server(tls) => transport.start_tls(tls),
            Side::Client(tls) => transport.start_tls(tls),
        };
        if let Err(e) = started {
            transport.abort_connection_with(e);
        }
        self.transport = Some(transport.clone());
        self.inner.borrow_mut().connection_made(transport);
    }

    fn data_received(&mut self, data: &[u8]) {
        self.inner.borrow_mut().data_received(data);
    }

    fn read_connection_lost(&mut self) -> bool {
        self.inner.borrow_mut().read_connection_lost()
    }

    fn reading_resumed(&mut self) {
        self.inner.borrow_mut().reading_resumed();
    }

    fn connection_lost(&mut self, reason: Failure) {
        self.transport = None;
        self.inner.borrow_mut().connection_lost(reason);
    }
}

/// Runs `f` on the connection's TLS layer, if it has one.
fn with_tls<R>(conn: &Conn, f: impl FnOnce(&TlsStream) -> R) -> Option<R> {
    conn.with_stream(|s| match s {
        Stream::Tls(t) => Some(f(t)),
        _ => None,
    })
    .flatten()
}

/// The connection hook (`Conn::ready`, and once after `start_tls`): drives the
/// handshake and sends what rustls has queued, then acts on the outcome outside the
/// stream's borrow.
pub(super) fn ready(conn: &Rc<Conn>) {
    match with_tls(conn, TlsStream::drive) {
        None | Some(Step::Quiet) => {}
        Some(Step::Completed(waiters)) => {
            for w in waiters {
                let _ = w.callback(());
            }
            // What the protocol wrote during the handshake, and what arrived behind it.
            conn.schedule_check();
            conn.schedule_read();
        }
        Some(Step::Failed(failure, waiters)) => fail(conn, failure, waiters),
    }
}

/// The handshake timer went off.
fn timed_out(conn: &Rc<Conn>, after: Duration) {
    let end = with_tls(conn, |t| t.end_handshake(Err(Failure::new(TlsError::HandshakeTimeout(after)))));
    if let Some(Step::Failed(failure, waiters)) = end {
        fail(conn, failure, waiters);
    }
}

/// Ends the connection with `failure` (the protocol's `connection_lost` gets it), and
/// fails the handshake's waiters with it.
fn fail(conn: &Rc<Conn>, failure: Failure, waiters: Vec<Deferred<()>>) {
    log::debug!(target: "weft::reactor", "TLS: {failure}");
    conn.transport().abort_connection_with(failure.clone());
    for w in waiters {
        let _ = w.errback(failure.clone());
    }
}
