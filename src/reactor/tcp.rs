//! Stream connections: [`Protocol`], [`Factory`], [`Transport`], [`PushProducer`], and
//! `listen_tcp` / `connect_tcp` / `listen_unix` / `connect_unix` on
//! [`ReactorHandle`].
//!
//! A connection (`Conn`) is registered once, edge-triggered, for both readable and
//! writable readiness, and never re-registered: pausing reading just stops reading (the
//! kernel buffer and TCP flow control hold the rest), and writable events are ignored
//! while nothing is buffered. Readable readiness reads up to 64 KiB at a time into the
//! reactor's shared buffer and hands it to `Protocol::data_received`. `Transport::write`
//! writes straight to the socket when nothing is buffered, and buffers the rest, which
//! is flushed on writable readiness.
//!
//! Transport methods never call the protocol: closing is recorded and carried out from
//! the call-soon queue, so `connection_lost` never runs inside another protocol method.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use super::poll::{Readiness, SourceKey};
use super::{guarded, DelayedCall, ReactorHandle, Source, WeakReactorHandle, READ_SIZE};
use crate::logcontext::Captured;
use crate::{Deferred, Failure};

/// The application side of a stream connection (Twisted's `Protocol`). Methods are called
/// on the reactor thread, one at a time, never re-entrantly.
pub trait Protocol: 'static {
    /// The connection is up; keep `transport` to write and close.
    fn connection_made(&mut self, transport: Transport) {
        let _ = transport;
    }

    /// Bytes arrived (at most 64 KiB at a time).
    fn data_received(&mut self, data: &[u8]);

    /// The peer closed its write side (end of file). Return `true` to keep the
    /// connection half-open and go on writing (Twisted's `IHalfCloseableProtocol`);
    /// the default `false` closes the connection once the write buffer drains.
    fn read_connection_lost(&mut self) -> bool {
        false
    }

    /// The connection is closed. `reason` holds [`ConnectionDone`] for a clean close,
    /// [`ConnectionAborted`] after `abort_connection`, or the `std::io::Error` that
    /// ended it. Called exactly once per `connection_made`.
    fn connection_lost(&mut self, reason: Failure) {
        let _ = reason;
    }
}

/// Makes a [`Protocol`] for each new connection (Twisted's `Factory.buildProtocol`).
/// Any `FnMut(&Address) -> P` is a factory.
pub trait Factory: 'static {
    /// The protocol type this factory makes.
    type Protocol: Protocol;

    /// A protocol for a connection with the peer at `peer`.
    fn build_protocol(&mut self, peer: &Address) -> Self::Protocol;
}

impl<F, P> Factory for F
where
    F: FnMut(&Address) -> P + 'static,
    P: Protocol,
{
    type Protocol = P;

    fn build_protocol(&mut self, peer: &Address) -> P {
        self(peer)
    }
}

/// Something that writes to a transport on its own schedule and can be told to stop
/// and go on (Twisted's `IPushProducer`). Register it with
/// [`Transport::register_producer`]: the transport pauses it when its write buffer
/// passes the high-water mark and resumes it once the buffer drained.
pub trait PushProducer {
    /// Stop writing for now.
    fn pause_producing(&self);
    /// Writing may go on.
    fn resume_producing(&self);
    /// The connection closed: stop for good.
    fn stop_producing(&self) {}
}

/// A connection's or listener's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A TCP (or UDP) address.
    Tcp(SocketAddr),
    /// A Unix domain socket path; `None` for an unnamed socket.
    Unix(Option<PathBuf>),
}

/// The application's handle on a connection (Twisted's `ITransport`). Cheap to clone.
///
/// Dropping a `Transport` does not close the connection: call
/// [`lose_connection`](Self::lose_connection) or [`abort_connection`](Self::abort_connection).
#[derive(Clone)]
pub struct Transport {
    conn: Rc<Conn>,
}

/// A listening socket; see [`ReactorHandle::listen_tcp`].
///
/// Dropping the handle does not stop listening: call
/// [`stop_listening`](Self::stop_listening).
#[derive(Clone)]
pub struct ListeningPort {
    listener: Rc<Listener>,
}

/// The connection was closed cleanly (Twisted's `ConnectionDone`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionDone;

impl fmt::Display for ConnectionDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection was closed cleanly")
    }
}

impl std::error::Error for ConnectionDone {}

/// The connection was closed with `abort_connection` (Twisted's `ConnectionAborted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionAborted;

impl fmt::Display for ConnectionAborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection was aborted")
    }
}

impl std::error::Error for ConnectionAborted {}

/// `connect_tcp` gave up waiting for the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectTimeoutError;

impl fmt::Display for ConnectTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection attempt timed out")
    }
}

impl std::error::Error for ConnectTimeoutError {}

/// Past this many buffered bytes a registered producer is paused.
const HIGH_WATER: usize = 64 * 1024;
/// How many reads one readiness event may do before yielding to other sources.
const MAX_READS_PER_EVENT: usize = 16;
/// How many connections one readiness event may accept before yielding.
const MAX_ACCEPTS_PER_EVENT: usize = 128;
/// How long a listener waits after running out of descriptors before accepting again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

impl ReactorHandle {
    /// Listens for TCP connections on `addr` with a backlog of 1024, making a protocol
    /// with `factory` for each (Twisted's `listenTCP`). Accepted sockets get
    /// `TCP_NODELAY`. With `reuse_port`, sets `SO_REUSEPORT` so several processes or
    /// reactors can share the port.
    ///
    /// If accepting fails for lack of descriptors (`EMFILE`, `ENFILE`) or memory, the
    /// listener stops accepting for 100 ms, then tries again.
    ///
    /// # Errors
    ///
    /// The OS error from creating, binding or registering the socket.
    pub fn listen_tcp<F: Factory>(
        &self,
        addr: SocketAddr,
        factory: F,
        reuse_port: bool,
    ) -> io::Result<ListeningPort> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(socket2::Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        self.listen(ListenSocket::Tcp(socket.into()), factory)
    }

    /// Listens on a Unix domain stream socket at `path` (which must not exist), with the
    /// same protocols and transports as TCP.
    ///
    /// # Errors
    ///
    /// The OS error from creating, binding or registering the socket.
    pub fn listen_unix<F: Factory>(&self, path: &Path, factory: F) -> io::Result<ListeningPort> {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.bind(&SockAddr::unix(path)?)?;
        socket.listen(1024)?;
        let std: UnixListener = socket.into();
        self.listen(ListenSocket::Unix(std), factory)
    }

    /// Connects to `addr` (Twisted's `connectTCP`). The Deferred fires with the protocol
    /// `factory` made once the connection is up (after its `connection_made` ran), or
    /// fails with the `std::io::Error` (e.g. connection refused) or
    /// [`ConnectTimeoutError`] after `timeout`.
    ///
    /// # Cancellation
    ///
    /// Cancelling before the connection is up closes the socket.
    #[must_use = "the Deferred carries the connected protocol or the failure"]
    pub fn connect_tcp<F: Factory>(
        &self,
        addr: SocketAddr,
        factory: F,
        timeout: Duration,
    ) -> Deferred<Rc<RefCell<F::Protocol>>> {
        let socket = match Socket::new(Domain::for_address(addr), Type::STREAM, Some(socket2::Protocol::TCP))
        {
            Ok(s) => s,
            Err(e) => return crate::fail(e),
        };
        if let Err(e) = socket.set_nonblocking(true).and_then(|()| socket.set_tcp_nodelay(true)) {
            return crate::fail(e);
        }
        self.connect(socket, &addr.into(), factory, timeout, |s| Stream::Tcp(s.into()))
    }

    /// Connects to the Unix domain stream socket at `path`; as
    /// [`connect_tcp`](Self::connect_tcp).
    #[must_use = "the Deferred carries the connected protocol or the failure"]
    pub fn connect_unix<F: Factory>(
        &self,
        path: &Path,
        factory: F,
        timeout: Duration,
    ) -> Deferred<Rc<RefCell<F::Protocol>>> {
        let addr = match SockAddr::unix(path) {
            Ok(a) => a,
            Err(e) => return crate::fail(e),
        };
        let socket = match Socket::new(Domain::UNIX, Type::STREAM, None) {
            Ok(s) => s,
            Err(e) => return crate::fail(e),
        };
        if let Err(e) = socket.set_nonblocking(true) {
            return crate::fail(e);
        }
        self.connect(socket, &addr, factory, timeout, |s| Stream::Unix(s.into()))
    }

    fn listen<F: Factory>(&self, socket: ListenSocket, mut factory: F) -> io::Result<ListeningPort> {
        let listener = Rc::new(Listener {
            reactor: self.downgrade(),
            key: Cell::new(None),
            socket: RefCell::new(Some(socket)),
            factory: RefCell::new(Some(Box::new(move |a: &Address| {
                Rc::new(RefCell::new(factory.build_protocol(a))) as Rc<RefCell<dyn Protocol>>
            }))),
            backing_off: Cell::new(false),
            ctx: Captured::capture(),
        });
        let fd = listener.fd().expect("just made");
        let key = self.register(fd, listener.clone(), true, false)?;
        listener.key.set(Some(key));
        Ok(ListeningPort { listener })
    }

    fn connect<F: Factory>(
        &self,
        socket: Socket,
        addr: &SockAddr,
        mut factory: F,
        timeout: Duration,
        into_stream: impl FnOnce(Socket) -> Stream,
    ) -> Deferred<Rc<RefCell<F::Protocol>>> {
        match socket.connect(addr) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return crate::fail(e),
        }
        let conn = match Conn::register(self, into_stream(socket), Captured::capture()) {
            Ok(c) => c,
            Err(e) => return crate::fail(e),
        };
        let weak = Rc::downgrade(&conn);
        let d: Deferred<Rc<RefCell<F::Protocol>>> = Deferred::with_canceller(move |_| {
            if let Some(conn) = weak.upgrade() {
                conn.fail_connect(None);
            }
        });
        let weak = Rc::downgrade(&conn);
        let timer = self.call_later(timeout, move || {
            if let Some(conn) = weak.upgrade() {
                conn.fail_connect(Some(Failure::new(ConnectTimeoutError)));
            }
        });
        let target = d.clone();
        *conn.on_connect.borrow_mut() = Some(Box::new(move |conn: &Rc<Conn>, r: Result<(), Failure>| {
            let _ = timer.cancel();
            match r {
                Ok(()) => {
                    let peer = conn.peer();
                    let p = Rc::new(RefCell::new(factory.build_protocol(&peer)));
                    conn.start(p.clone());
                    if target.callback(p).is_err() {
                        log::debug!(target: "weft::reactor", "connect: Deferred already called");
                    }
                }
                Err(f) => {
                    let _ = target.errback(f);
                }
            }
        }));
        d
    }
}

impl Transport {
    /// Writes `data`: straight to the socket if nothing is buffered, the rest buffered
    /// and flushed as the socket allows. Ignored once the connection is closing.
    pub fn write(&self, data: &[u8]) {
        self.conn.write(data);
    }

    /// Writes each of `parts` in order (Twisted's `writeSequence`).
    pub fn write_sequence(&self, parts: &[&[u8]]) {
        for p in parts {
            self.conn.write(p);
        }
    }

    /// Closes the connection once the write buffer has drained (Twisted's
    /// `loseConnection`); `connection_lost` gets [`ConnectionDone`].
    pub fn lose_connection(&self) {
        self.conn.disconnecting.set(true);
        self.conn.schedule_check();
    }

    /// Closes the connection now, dropping buffered data (Twisted's `abortConnection`);
    /// `connection_lost` gets [`ConnectionAborted`] from the call-soon queue.
    pub fn abort_connection(&self) {
        let c = &self.conn;
        if c.closed.get() {
            return;
        }
        c.write_buf.borrow_mut().clear();
        c.write_pos.set(0);
        c.disconnecting.set(true);
        c.error.borrow_mut().get_or_insert_with(|| Failure::new(ConnectionAborted));
        c.schedule_check();
    }

    /// Half-closes: shuts the write side down once the buffer drained (Twisted's
    /// `loseWriteConnection`); reading goes on.
    pub fn lose_write_connection(&self) {
        self.conn.write_shut_requested.set(true);
        self.conn.schedule_check();
    }

    /// Stops reading from the connection (Twisted's `pauseProducing`).
    pub fn pause_producing(&self) {
        self.conn.read_paused.set(true);
    }

    /// Starts reading again (Twisted's `resumeProducing`).
    pub fn resume_producing(&self) {
        if self.conn.read_paused.replace(false) {
            let conn = self.conn.clone();
            if let Some(r) = self.conn.reactor.upgrade() {
                r.call_soon(move || {
                    conn.read();
                    conn.check();
                });
            }
        }
    }

    /// Registers a push producer (Twisted's `registerProducer(p, streaming=True)`): it is
    /// paused while more than 64 KiB are buffered and resumed when the buffer drained.
    pub fn register_producer(&self, producer: Rc<dyn PushProducer>) {
        *self.conn.producer.borrow_mut() = Some(producer);
    }

    /// Removes the producer.
    pub fn unregister_producer(&self) {
        let p = self.conn.producer.borrow_mut().take();
        drop(p);
        self.conn.producer_paused.set(false);
    }

    /// The peer's address.
    pub fn get_peer(&self) -> Address {
        self.conn.peer()
    }

    /// This end's address.
    pub fn get_host(&self) -> Address {
        let io = self.conn.stream.borrow();
        match &*io {
            Some(Stream::Tcp(s)) => s.local_addr().map(Address::Tcp).unwrap_or(Address::Unix(None)),
            Some(Stream::Unix(s)) => {
                Address::Unix(s.local_addr().ok().and_then(|a| a.as_pathname().map(Into::into)))
            }
            None => Address::Unix(None),
        }
    }

    /// How many bytes are buffered, waiting for the socket.
    pub fn buffered(&self) -> usize {
        self.conn.write_buf.borrow().len() - self.conn.write_pos.get()
    }

    /// True once the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.conn.closed.get()
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("buffered", &self.buffered())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl ListeningPort {
    /// The address the listener is bound to (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> Address {
        match &*self.listener.socket.borrow() {
            Some(ListenSocket::Tcp(l)) => l.local_addr().map(Address::Tcp).unwrap_or(Address::Unix(None)),
            Some(ListenSocket::Unix(l)) => {
                Address::Unix(l.local_addr().ok().and_then(|a| a.as_pathname().map(Into::into)))
            }
            None => Address::Unix(None),
        }
    }

    /// The TCP port, for a TCP listener.
    pub fn port(&self) -> Option<u16> {
        match self.local_addr() {
            Address::Tcp(a) => Some(a.port()),
            Address::Unix(_) => None,
        }
    }

    /// Stops accepting and closes the listening socket. Open connections stay open.
    pub fn stop_listening(&self) {
        self.listener.close();
    }
}

impl fmt::Debug for ListeningPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListeningPort").field("addr", &self.local_addr()).finish()
    }
}

// ---- connections ----

pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
        }
    }

    fn connected(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.peer_addr().map(drop),
            Stream::Unix(s) => s.peer_addr().map(drop),
        }
    }

    fn peer(&self) -> Address {
        match self {
            Stream::Tcp(s) => s.peer_addr().map(Address::Tcp).unwrap_or(Address::Unix(None)),
            Stream::Unix(s) => {
                Address::Unix(s.peer_addr().ok().and_then(|a| a.as_pathname().map(Into::into)))
            }
        }
    }
}

type OnConnect = Box<dyn FnOnce(&Rc<Conn>, Result<(), Failure>)>;

/// One stream connection; see the module docs. Flags are `Cell`s and each buffer its
/// own `RefCell`, none borrowed while user code runs.
pub(crate) struct Conn {
    reactor: WeakReactorHandle,
    key: Cell<Option<SourceKey>>,
    stream: RefCell<Option<Stream>>,
    write_buf: RefCell<Vec<u8>>,
    write_pos: Cell<usize>,
    protocol: RefCell<Option<Rc<RefCell<dyn Protocol>>>>,
    producer: RefCell<Option<Rc<dyn PushProducer>>>,
    on_connect: RefCell<Option<OnConnect>>,
    error: RefCell<Option<Failure>>,
    read_paused: Cell<bool>,
    read_closed: Cell<bool>,
    /// The OS reported the peer's end of file or an error: read past short reads until
    /// the read returns 0 or fails, since no further edge will come.
    eof_pending: Cell<bool>,
    disconnecting: Cell<bool>,
    write_shut_requested: Cell<bool>,
    write_shut: Cell<bool>,
    producer_paused: Cell<bool>,
    check_scheduled: Cell<bool>,
    closed: Cell<bool>,
    /// The log context the protocol's events run in: the one current when `listen_*` or
    /// `connect_*` was called.
    ctx: Captured,
}

impl Conn {
    /// Runs a protocol callback in the connection's log context, catching a panic.
    fn in_context<R>(&self, what: &str, f: impl FnOnce() -> R) -> Option<R> {
        self.ctx.run(|| guarded(what, f))
    }

    fn register(reactor: &ReactorHandle, stream: Stream, ctx: Captured) -> io::Result<Rc<Conn>> {
        let fd = stream.fd();
        let conn = Rc::new(Conn {
            reactor: reactor.downgrade(),
            key: Cell::new(None),
            stream: RefCell::new(Some(stream)),
            write_buf: RefCell::new(Vec::new()),
            write_pos: Cell::new(0),
            protocol: RefCell::new(None),
            producer: RefCell::new(None),
            on_connect: RefCell::new(None),
            error: RefCell::new(None),
            read_paused: Cell::new(false),
            read_closed: Cell::new(false),
            eof_pending: Cell::new(false),
            disconnecting: Cell::new(false),
            write_shut_requested: Cell::new(false),
            write_shut: Cell::new(false),
            producer_paused: Cell::new(false),
            check_scheduled: Cell::new(false),
            closed: Cell::new(false),
            ctx,
        });
        let key = reactor.register(fd, conn.clone(), true, true)?;
        conn.key.set(Some(key));
        Ok(conn)
    }

    fn peer(&self) -> Address {
        self.stream.borrow().as_ref().map(Stream::peer).unwrap_or(Address::Unix(None))
    }

    /// Sets the protocol and calls its `connection_made`.
    fn start(self: &Rc<Self>, protocol: Rc<RefCell<dyn Protocol>>) {
        *self.protocol.borrow_mut() = Some(protocol.clone());
        let transport = Transport { conn: self.clone() };
        self.in_context("connection_made", || protocol.borrow_mut().connection_made(transport));
        self.check();
    }

    fn with_protocol(&self, what: &str, f: impl FnOnce(&mut dyn Protocol)) {
        let p = self.protocol.borrow().clone();
        if let Some(p) = p {
            match p.try_borrow_mut() {
                Ok(mut p) => {
                    self.in_context(what, || f(&mut *p));
                }
                Err(_) => {
                    log::error!(target: "weft::reactor", "{what}: protocol is borrowed elsewhere; skipped")
                }
            }
        }
    }

    fn write(self: &Rc<Self>, data: &[u8]) {
        if self.closed.get() || self.disconnecting.get() || self.write_shut_requested.get() || data.is_empty()
        {
            return;
        }
        let mut written = 0;
        if self.write_pos.get() == self.write_buf.borrow().len() && self.on_connect.borrow().is_none() {
            let guard = self.stream.borrow();
            let Some(stream) = guard.as_ref() else { return };
            while written < data.len() {
                match stream.write(&data[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.error.borrow_mut().get_or_insert_with(|| Failure::new(e));
                        drop(guard);
                        self.schedule_check();
                        return;
                    }
                }
            }
        }
        if written < data.len() {
            let len = {
                let mut buf = self.write_buf.borrow_mut();
                if self.write_pos.get() == buf.len() {
                    buf.clear();
                    self.write_pos.set(0);
                }
                buf.extend_from_slice(&data[written..]);
                buf.len() - self.write_pos.get()
            };
            if len > HIGH_WATER && !self.producer_paused.get() {
                let p = self.producer.borrow().clone();
                if let Some(p) = p {
                    self.producer_paused.set(true);
                    self.in_context("pause_producing", || p.pause_producing());
                }
            }
        }
    }

    /// Writes out as much of the buffer as the socket takes.
    fn flush(&self) {
        let drained = {
            let stream = self.stream.borrow();
            let Some(stream) = stream.as_ref() else { return };
            let mut buf = self.write_buf.borrow_mut();
            let mut pos = self.write_pos.get();
            while pos < buf.len() {
                match stream.write(&buf[pos..]) {
                    Ok(n) => pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.error.borrow_mut().get_or_insert_with(|| Failure::new(e));
                        break;
                    }
                }
            }
            if pos == buf.len() {
                buf.clear();
                if buf.capacity() > 4 * HIGH_WATER {
                    buf.shrink_to(HIGH_WATER);
                }
                pos = 0;
            }
            self.write_pos.set(pos);
            pos == 0
        };
        if drained && self.producer_paused.replace(false) {
            let p = self.producer.borrow().clone();
            if let Some(p) = p {
                self.in_context("resume_producing", || p.resume_producing());
            }
        }
    }

    /// Reads while data comes, handing it to the protocol.
    fn read(self: &Rc<Self>) {
        let Some(reactor) = self.reactor.upgrade() else { return };
        for _ in 0..MAX_READS_PER_EVENT {
            if self.read_paused.get()
                || self.read_closed.get()
                || self.closed.get()
                || self.error.borrow().is_some()
            {
                return;
            }
            let more = reactor.with_read_buf(|buf| {
                let r = match self.stream.borrow().as_ref() {
                    Some(s) => s.read(&mut buf[..READ_SIZE]),
                    None => return false,
                };
                match r {
                    Ok(0) => {
                        self.read_closed.set(true);
                        let mut keep_open = false;
                        self.with_protocol("read_connection_lost", |p| keep_open = p.read_connection_lost());
                        if !keep_open {
                            self.disconnecting.set(true);
                        }
                        false
                    }
                    Ok(n) => {
                        self.with_protocol("data_received", |p| p.data_received(&buf[..n]));
                        // A short read emptied the kernel buffer: the next data brings a new
                        // edge, but an end of file already reported does not.
                        n == READ_SIZE || self.eof_pending.get()
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
                    Err(e) => {
                        self.error.borrow_mut().get_or_insert_with(|| Failure::new(e));
                        false
                    }
                }
            });
            if !more {
                return;
            }
        }
        // Still more to read: yield to other sources, go on next turn.
        let conn = self.clone();
        reactor.call_soon(move || {
            conn.read();
            conn.check();
        });
    }

    /// Carries out what was requested: close on error, after draining, half-close.
    fn check(self: &Rc<Self>) {
        if self.closed.get() || self.on_connect.borrow().is_some() {
            return;
        }
        let err = self.error.borrow_mut().take();
        if let Some(f) = err {
            self.close(f);
            return;
        }
        let drained = self.write_pos.get() == self.write_buf.borrow().len();
        if !drained {
            return;
        }
        if self.disconnecting.get() {
            self.close(Failure::new(ConnectionDone));
        } else if self.write_shut_requested.get() && !self.write_shut.get() {
            self.write_shut.set(true);
            let r = self.stream.borrow().as_ref().map(Stream::shutdown_write);
            if let Some(Err(e)) = r {
                self.close(Failure::new(e));
            } else if self.read_closed.get() {
                self.close(Failure::new(ConnectionDone));
            }
        } else if self.write_shut.get() && self.read_closed.get() {
            self.close(Failure::new(ConnectionDone));
        }
    }

    /// Deregisters and closes the socket, then tells the producer and the protocol.
    fn close(self: &Rc<Self>, reason: Failure) {
        if self.closed.replace(true) {
            return;
        }
        let stream = self.stream.borrow_mut().take();
        if let (Some(stream), Some(key), Some(reactor)) = (&stream, self.key.get(), self.reactor.upgrade()) {
            reactor.deregister(key, stream.fd());
        }
        drop(stream);
        self.write_buf.borrow_mut().clear();
        self.write_pos.set(0);
        let producer = self.producer.borrow_mut().take();
        if let Some(p) = producer {
            self.in_context("stop_producing", || p.stop_producing());
        }
        self.with_protocol("connection_lost", |p| p.connection_lost(reason));
        let protocol = self.protocol.borrow_mut().take();
        drop(protocol);
    }

    /// Ends a pending connection attempt: `failure` goes to the Deferred (`None`: it was
    /// cancelled and already failed).
    fn fail_connect(self: &Rc<Self>, failure: Option<Failure>) {
        let Some(on_connect) = self.on_connect.borrow_mut().take() else { return };
        self.closed.set(true);
        let stream = self.stream.borrow_mut().take();
        if let (Some(stream), Some(key), Some(reactor)) = (&stream, self.key.get(), self.reactor.upgrade()) {
            reactor.deregister(key, stream.fd());
        }
        drop(stream);
        match failure {
            Some(f) => on_connect(self, Err(f)),
            None => drop(on_connect),
        }
    }

    /// Checks whether a pending connect finished.
    fn poll_connect(self: &Rc<Self>) {
        let state = {
            let stream = self.stream.borrow();
            let Some(s) = stream.as_ref() else { return };
            match s.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => match s.connected() {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                    Err(e) => Err(e),
                },
            }
        };
        match state {
            Ok(false) => {}
            Ok(true) => {
                let cb = self.on_connect.borrow_mut().take();
                if let Some(cb) = cb {
                    cb(self, Ok(()));
                }
            }
            Err(e) => self.fail_connect(Some(Failure::new(e))),
        }
    }
}

impl Conn {
    /// Runs `flush` and `check` from the call-soon queue (once however often asked).
    fn schedule_check(self: &Rc<Self>) {
        if self.check_scheduled.replace(true) || self.closed.get() {
            return;
        }
        let Some(reactor) = self.reactor.upgrade() else { return };
        let conn = self.clone();
        reactor.call_soon(move || {
            conn.check_scheduled.set(false);
            conn.flush();
            conn.check();
        });
    }
}

impl Source for Conn {
    fn ready(self: Rc<Self>, r: Readiness) {
        if self.closed.get() {
            return;
        }
        if self.on_connect.borrow().is_some() {
            if r.writable || r.error || r.read_closed {
                self.poll_connect();
            }
            if self.on_connect.borrow().is_some() || self.closed.get() {
                return;
            }
        }
        if r.read_closed || r.error {
            self.eof_pending.set(true);
        }
        if r.writable || r.error {
            self.flush();
        }
        if r.readable || r.read_closed || r.error {
            self.read();
        }
        self.check();
    }

    fn close_now(&self) {
        self.closed.set(true);
        let stream = self.stream.borrow_mut().take();
        drop(stream);
        let p = self.protocol.borrow_mut().take();
        drop(p);
        let p = self.producer.borrow_mut().take();
        drop(p);
        let c = self.on_connect.borrow_mut().take();
        drop(c);
    }
}

// ---- listeners ----

enum ListenSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

type ProtocolMaker = Box<dyn FnMut(&Address) -> Rc<RefCell<dyn Protocol>>>;

struct Listener {
    reactor: WeakReactorHandle,
    key: Cell<Option<SourceKey>>,
    socket: RefCell<Option<ListenSocket>>,
    /// Dropped when the listener closes: a factory may hold the `ListeningPort`, which
    /// holds the listener. Out of the cell while it runs, so it may stop the listener.
    factory: RefCell<Option<ProtocolMaker>>,
    backing_off: Cell<bool>,
    /// The log context current when `listen_*` was called: the factory and every
    /// accepted connection's protocol run in it.
    ctx: Captured,
}

impl Listener {
    fn fd(&self) -> Option<RawFd> {
        self.socket.borrow().as_ref().map(|s| match s {
            ListenSocket::Tcp(l) => l.as_raw_fd(),
            ListenSocket::Unix(l) => l.as_raw_fd(),
        })
    }

    fn accept_one(&self) -> io::Result<Option<(Stream, Address)>> {
        let socket = self.socket.borrow();
        match socket.as_ref() {
            None => Ok(None),
            Some(ListenSocket::Tcp(l)) => {
                let (s, a) = l.accept()?;
                s.set_nonblocking(true)?;
                s.set_nodelay(true)?;
                Ok(Some((Stream::Tcp(s), Address::Tcp(a))))
            }
            Some(ListenSocket::Unix(l)) => {
                let (s, a) = l.accept()?;
                s.set_nonblocking(true)?;
                Ok(Some((Stream::Unix(s), Address::Unix(a.as_pathname().map(Into::into)))))
            }
        }
    }

    fn accept(self: &Rc<Self>) {
        if self.backing_off.get() {
            return;
        }
        let Some(reactor) = self.reactor.upgrade() else { return };
        for _ in 0..MAX_ACCEPTS_PER_EVENT {
            match self.accept_one() {
                Ok(None) => return,
                Ok(Some((stream, peer))) => {
                    let conn = match Conn::register(&reactor, stream, self.ctx.clone()) {
                        Ok(c) => c,
                        Err(e) => {
                            log::error!(target: "weft::reactor", "registering an accepted connection failed: {e}");
                            continue;
                        }
                    };
                    let protocol = self.build_protocol(&peer);
                    match protocol {
                        Some(p) => conn.start(p),
                        None => conn.close(Failure::new(ConnectionAborted)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    let out_of_resources = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    if out_of_resources {
                        log::warn!(target: "weft::reactor", "accept: {e}; pausing accepts for {ACCEPT_RETRY:?}");
                    } else {
                        log::error!(target: "weft::reactor", "accept failed: {e}; retrying in {ACCEPT_RETRY:?}");
                    }
                    self.backing_off.set(true);
                    let me = self.clone();
                    let _: DelayedCall = reactor.call_later(ACCEPT_RETRY, move || {
                        me.backing_off.set(false);
                        me.accept();
                    });
                    return;
                }
            }
        }
        let me = self.clone();
        reactor.call_soon(move || me.accept());
    }

    /// Runs the factory in the listener's context, taken out of its cell meanwhile; it
    /// goes back only if the listener is still open.
    fn build_protocol(&self, peer: &Address) -> Option<Rc<RefCell<dyn Protocol>>> {
        let mut factory = self.factory.borrow_mut().take()?;
        let protocol = self.ctx.run(|| guarded("build_protocol", || factory(peer)));
        if self.socket.borrow().is_some() {
            *self.factory.borrow_mut() = Some(factory);
        } else {
            drop(factory);
        }
        protocol
    }

    fn close(&self) {
        let fd = self.fd();
        if let (Some(fd), Some(key), Some(reactor)) = (fd, self.key.get(), self.reactor.upgrade()) {
            reactor.deregister(key, fd);
        }
        self.close_now();
    }
}

impl Source for Listener {
    fn ready(self: Rc<Self>, _r: Readiness) {
        self.accept();
    }

    fn close_now(&self) {
        let s = self.socket.borrow_mut().take();
        drop(s);
        let f = self.factory.borrow_mut().take();
        drop(f);
    }
}
