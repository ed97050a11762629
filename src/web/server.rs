//! The server side: [`Site`] (Twisted's `Site`: the router, the settings, the open
//! connections), [`ServerConfig`], the per-connection [`HttpChannel`] protocol, and the
//! [`HttpTransport`] it writes to.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::Duration;

use slab::Slab;

use super::channel::Channel;
use super::parse::Limits;
use super::response::DateLine;
use super::router::Router;
use crate::logcontext::PreserveLoggingContext;
use crate::reactor::{
    Address, DelayedCall, Factory, ListeningPort, Phase, Protocol, PushProducer, ReactorHandle, ReactorTime,
    Transport, WeakReactorHandle,
};
use crate::{Deferred, Failure};

/// The server's limits and timeouts. Start from `ServerConfig::default()` and change
/// what you need.
///
/// ```
/// use std::time::Duration;
/// use weft::web::{Router, ServerConfig, Site};
///
/// let reactor = weft::Reactor::new().unwrap();
/// let mut config = ServerConfig::default();
/// config.request_timeout = Some(Duration::from_secs(30));
/// config.max_body = 1 << 20;
/// let site = Site::with_config(&reactor, Router::new(), config);
/// assert_eq!(site.config().max_body, 1 << 20);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// A request head (or a body that stops arriving) must be complete within this
    /// time of its first byte (of its last byte, for a body), else `408` and close:
    /// slowloris protection. A new connection must also send its first byte within
    /// this time (else it is closed silently), the idle timeout applying only after its
    /// first request. Default 30 s.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed. Default 60 s.
    pub idle_timeout: Duration,
    /// A handler that has not answered within this time of its request's start is
    /// cancelled if it is cancellable, and the client gets `504` (or the connection
    /// closes if the response had begun). Default: none.
    pub request_timeout: Option<Duration>,
    /// The largest request head (request line and header fields) in bytes; more is
    /// `431`. Default 32 KiB. At most 100 header fields are accepted either way.
    pub max_head_bytes: usize,
    /// The longest request-target in bytes; longer is `414`. Default 8 KiB.
    pub max_request_line: usize,
    /// The largest request body in bytes; larger is `413`. Default 8 MiB.
    pub max_body: u64,
    /// How many complete requests may wait behind the one being answered (pipelining);
    /// past that, the server stops reading from the connection until they are answered.
    /// Default 32.
    pub max_pipelined: usize,
    /// How long a graceful shutdown (the reactor's stop, or [`Site::shutdown`] as
    /// called by it) lets in-flight requests run before cancelling and closing.
    /// Default 10 s.
    pub shutdown_grace: Duration,
    /// What the end of a client's input (it shut its write side: a half-close) means
    /// while requests are still being answered. `false` (the default, as Twisted and
    /// hyper): the client has gone; the connection closes and a cancellable handler is
    /// cancelled. `true`: the requests already read are answered (the last response
    /// says `Connection: close`), then the connection closes; an unfinished request is
    /// dropped. Either way a response already written is not cut, and an idle
    /// connection closes at once.
    pub half_close: bool,
    /// Log one line per request at `info` level with target `weft::web::access`
    /// (Synapse's "Processed request" line). Default true.
    pub access_log: bool,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            request_timeout: None,
            max_head_bytes: 32 * 1024,
            max_request_line: 8 * 1024,
            max_body: 8 * 1024 * 1024,
            max_pipelined: 32,
            shutdown_grace: Duration::from_secs(10),
            half_close: false,
            access_log: true,
        }
    }
}

/// What the server needs of a byte stream: Twisted's `ITransport` plus producer
/// registration. Implemented for the reactor's [`Transport`]; another stream (TLS, a
/// test double) implements it and drives an [`HttpChannel`] through
/// [`HttpChannel::attach`], [`HttpChannel::receive`] and [`HttpChannel::lost`].
pub trait HttpTransport {
    /// Writes bytes (buffered if the peer is slow).
    fn write(&self, data: &[u8]);
    /// Closes once the buffered bytes are written.
    fn lose_connection(&self);
    /// Shuts the write side once the buffered bytes are written, and goes on reading
    /// (Twisted's `loseWriteConnection`); the connection closes when the peer closes
    /// too. By default, closes as [`lose_connection`](Self::lose_connection) does.
    fn lose_write_connection(&self) {
        self.lose_connection();
    }
    /// Closes now, dropping buffered bytes.
    fn abort_connection(&self);
    /// Stops delivering received bytes.
    fn pause_producing(&self);
    /// Delivers received bytes again.
    fn resume_producing(&self);
    /// Pauses `producer` while the write buffer is full, resumes it when drained.
    fn register_producer(&self, producer: Rc<dyn PushProducer>);
    /// Removes the producer.
    fn unregister_producer(&self);
}

impl HttpTransport for Transport {
    fn write(&self, data: &[u8]) {
        Transport::write(self, data);
    }
    fn lose_connection(&self) {
        Transport::lose_connection(self);
    }
    fn lose_write_connection(&self) {
        Transport::lose_write_connection(self);
    }
    fn abort_connection(&self) {
        Transport::abort_connection(self);
    }
    fn pause_producing(&self) {
        Transport::pause_producing(self);
    }
    fn resume_producing(&self) {
        Transport::resume_producing(self);
    }
    fn register_producer(&self, producer: Rc<dyn PushProducer>) {
        Transport::register_producer(self, producer);
    }
    fn unregister_producer(&self) {
        Transport::unregister_producer(self);
    }
}

/// An HTTP/1.1 server: a [`Router`], a [`ServerConfig`], and the connections it serves
/// (Twisted's `Site`). Cheap to clone; every clone is the same site.
///
/// [`listen_tcp`](Self::listen_tcp) serves it on a port; a `Site` is also a
/// [`Factory`], so `reactor.listen_tcp(addr, site.clone(), false)` or `listen_unix`
/// work too (without the automatic drain on shutdown).
///
/// ```
/// use weft::web::{Request, Response, Router, Site};
/// use weft::Reactor;
///
/// let reactor = Reactor::new().unwrap();
/// let router = Router::new().get("/hello", |_req: Request| Response::text("hello, world\n"));
/// let site = Site::new(&reactor, router);
/// let port = site.listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
/// assert!(port.port().unwrap() > 0);
/// ```
///
/// # Graceful shutdown
///
/// [`shutdown`](Self::shutdown) stops accepting, answers the requests already read
/// (the last response on each connection says `Connection: close`), closes idle
/// connections, and after the grace period cancels the cancellable handlers still
/// running (their clients get `503`) and closes the rest. `listen_tcp` registers it as
/// a [`Phase::Before`] shutdown trigger, so stopping the reactor (SIGTERM with
/// [`Reactor::stop_on_signals`](crate::Reactor::stop_on_signals)) drains the site.
#[derive(Clone)]
pub struct Site {
    shared: Rc<SiteShared>,
}

pub(crate) struct SiteShared {
    pub(crate) router: Router,
    pub(crate) config: ServerConfig,
    pub(crate) limits: Limits,
    reactor: WeakReactorHandle,
    channels: RefCell<Slab<Weak<Channel>>>,
    ports: RefCell<Vec<ListeningPort>>,
    shutdown: RefCell<Option<Shutdown>>,
    trigger_added: Cell<bool>,
    date: RefCell<DateLine>,
}

struct Shutdown {
    waiters: Vec<Deferred<()>>,
    timer: Option<DelayedCall>,
}

impl Site {
    /// A site serving `router` with the default [`ServerConfig`].
    pub fn new(reactor: &ReactorHandle, router: Router) -> Site {
        Site::with_config(reactor, router, ServerConfig::default())
    }

    /// A site serving `router` with `config`.
    pub fn with_config(reactor: &ReactorHandle, router: Router, config: ServerConfig) -> Site {
        let limits = Limits {
            max_head: config.max_head_bytes.max(64),
            max_request_line: config.max_request_line.max(16),
            max_body: config.max_body,
        };
        Site {
            shared: Rc::new(SiteShared {
                router,
                config,
                limits,
                reactor: reactor.downgrade(),
                channels: RefCell::new(Slab::new()),
                ports: RefCell::new(Vec::new()),
                shutdown: RefCell::new(None),
                trigger_added: Cell::new(false),
                date: RefCell::new(DateLine::new()),
            }),
        }
    }

    /// Serves the site on a TCP port (backlog 1024, `TCP_NODELAY`), and drains it when
    /// the reactor stops (see "Graceful shutdown").
    ///
    /// # Errors
    ///
    /// The OS error from binding or listening; `NotConnected` if the reactor is gone.
    pub fn listen_tcp(&self, addr: SocketAddr) -> io::Result<ListeningPort> {
        self.listen_with(|reactor| reactor.listen_tcp(addr, self.clone(), false))
    }

    /// Serves the site over HTTPS on a TCP port (feature `tls`): as
    /// [`listen_tcp`](Self::listen_tcp), with TLS on every connection, the server's
    /// certificate and key from `tls`. ALPN offers only `http/1.1` (whatever `tls` set),
    /// so a client that would speak HTTP/2 falls back to HTTP/1.1.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use weft::reactor::tls::TlsServerOptions;
    /// use weft::web::{Request, Response, Router, Site};
    /// use weft::Reactor;
    ///
    /// # let made = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    /// # let (cert_pem, key_pem) = (made.cert.pem(), made.signing_key.serialize_pem());
    /// let tls = TlsServerOptions::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
    /// let reactor = Reactor::new()?;
    /// let router = Router::new().get("/hello", |_req: Request| Response::text("hello, world\n"));
    /// let site = Site::new(&reactor, router);
    /// let port = site.listen_tls("127.0.0.1:0".parse()?, &tls)?;
    /// assert!(port.port().unwrap() > 0);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`listen_tcp`](Self::listen_tcp).
    #[cfg(feature = "tls")]
    pub fn listen_tls(
        &self,
        addr: SocketAddr,
        tls: &crate::reactor::tls::TlsServerOptions,
    ) -> io::Result<ListeningPort> {
        let tls = tls.clone().with_alpn(["http/1.1"]);
        self.listen_with(|reactor| reactor.listen_tls(addr, self.clone(), &tls, false))
    }

    /// Runs `listen` and keeps its port, to drain on shutdown.
    fn listen_with(
        &self,
        listen: impl FnOnce(&ReactorHandle) -> io::Result<ListeningPort>,
    ) -> io::Result<ListeningPort> {
        let reactor = self.shared.reactor().ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        let port = listen(&reactor)?;
        self.shared.ports.borrow_mut().push(port.clone());
        if !self.shared.trigger_added.replace(true) {
            let site = self.clone();
            let grace = self.shared.config.shutdown_grace;
            let _sentinel = PreserveLoggingContext::sentinel();
            reactor.add_shutdown_trigger(Phase::Before, move || site.shutdown(grace));
        }
        Ok(port)
    }

    /// A protocol for one connection from `peer`, for a transport other than the
    /// reactor's (see [`HttpTransport`]); `listen_*` call it through [`Factory`].
    pub fn build_channel(&self, peer: &Address) -> HttpChannel {
        let channel = Channel::new(self.shared.clone(), peer.clone());
        let key = self.shared.channels.borrow_mut().insert(Rc::downgrade(&channel));
        channel.key.set(Some(key));
        if self.shared.shutdown.borrow().is_some() {
            channel.begin_shutdown();
        }
        HttpChannel { channel }
    }

    /// Drains the site: stops accepting, lets the requests already read finish for up
    /// to `grace`, then cancels the cancellable handlers still running and closes every
    /// connection. The Deferred fires when every connection has closed. Calling it again
    /// returns another Deferred for the same drain.
    #[must_use = "the Deferred fires when every connection has closed"]
    pub fn shutdown(&self, grace: Duration) -> Deferred<()> {
        let _sentinel = PreserveLoggingContext::sentinel();
        let d = Deferred::new();
        {
            let mut shutdown = self.shared.shutdown.borrow_mut();
            if let Some(s) = shutdown.as_mut() {
                s.waiters.push(d.clone());
                drop(shutdown);
                self.shared.check_drained();
                return d;
            }
            *shutdown = Some(Shutdown { waiters: vec![d.clone()], timer: None });
        }
        let ports = std::mem::take(&mut *self.shared.ports.borrow_mut());
        for p in ports {
            p.stop_listening();
        }
        for ch in self.shared.live_channels() {
            ch.begin_shutdown();
        }
        if let Some(reactor) = self.shared.reactor() {
            let shared = Rc::downgrade(&self.shared);
            let timer = reactor.call_later(grace, move || {
                if let Some(shared) = shared.upgrade() {
                    log::info!(target: "weft::web", "shutdown grace period over: closing {} connection(s)", shared.live_channels().len());
                    for ch in shared.live_channels() {
                        ch.force_shutdown();
                    }
                }
            });
            if let Some(s) = self.shared.shutdown.borrow_mut().as_mut() {
                s.timer = Some(timer);
            }
        }
        self.shared.check_drained();
        d
    }

    /// How many connections are open.
    pub fn open_connections(&self) -> usize {
        self.shared.live_channels().len()
    }

    /// The site's settings.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }
}

impl Factory for Site {
    type Protocol = HttpChannel;

    fn build_protocol(&mut self, peer: &Address) -> HttpChannel {
        self.build_channel(peer)
    }
}

impl fmt::Debug for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Site")
            .field("router", &self.shared.router)
            .field("open_connections", &self.open_connections())
            .finish()
    }
}

impl SiteShared {
    pub(crate) fn reactor(&self) -> Option<ReactorHandle> {
        self.reactor.upgrade()
    }

    /// The reactor's time.
    pub(crate) fn now(&self) -> Duration {
        self.reactor().map_or(Duration::ZERO, |r| r.now())
    }

    /// The `Date` line for reactor time `now`.
    pub(crate) fn date_line(&self, now: Duration) -> [u8; 37] {
        self.date.borrow_mut().at(now)
    }

    fn live_channels(&self) -> Vec<Rc<Channel>> {
        self.channels.borrow().iter().filter_map(|(_, w)| w.upgrade()).collect()
    }

    /// Forgets a closed connection.
    pub(crate) fn unregister(&self, channel: &Channel) {
        if let Some(key) = channel.key.take() {
            let removed = self.channels.borrow_mut().try_remove(key);
            drop(removed);
        }
        self.check_drained();
    }

    /// Fires the shutdown's Deferreds once no connection is left.
    fn check_drained(&self) {
        if self.shutdown.borrow().is_none() {
            return;
        }
        self.channels.borrow_mut().retain(|_, w| w.strong_count() > 0);
        if !self.channels.borrow().is_empty() {
            return;
        }
        let (waiters, timer) = match self.shutdown.borrow_mut().as_mut() {
            Some(s) => (std::mem::take(&mut s.waiters), s.timer.take()),
            None => return,
        };
        if let Some(t) = timer {
            let _ = t.cancel();
        }
        for w in waiters {
            let _ = w.callback(());
        }
    }
}

/// The protocol of one HTTP connection (Twisted's `HTTPChannel`), made by a [`Site`].
///
/// On the reactor's own transports it is a [`Protocol`]; on any other byte stream, call
/// [`attach`](Self::attach), [`receive`](Self::receive) and [`lost`](Self::lost).
pub struct HttpChannel {
    channel: Rc<Channel>,
}

impl HttpChannel {
    /// The connection is up on `transport`.
    pub fn attach(&mut self, transport: impl HttpTransport + 'static) {
        self.channel.connection_made(Rc::new(transport));
    }

    /// Bytes arrived from the client.
    pub fn receive(&mut self, data: &[u8]) {
        self.channel.data_received(data);
    }

    /// The connection closed.
    pub fn lost(&mut self, reason: Failure) {
        self.channel.connection_lost(&reason);
    }
}

impl Protocol for HttpChannel {
    fn connection_made(&mut self, transport: Transport) {
        self.attach(transport);
    }

    fn data_received(&mut self, data: &[u8]) {
        self.receive(data);
    }

    fn read_connection_lost(&mut self) -> bool {
        self.channel.read_eof()
    }

    fn connection_lost(&mut self, reason: Failure) {
        self.lost(reason);
    }
}

impl fmt::Debug for HttpChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpChannel").field("lost", &self.channel.is_lost()).finish()
    }
}
