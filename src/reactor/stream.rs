//! Stream connections: [`Transport`], the connection `Conn` behind it, and
//! `connect_tcp` / `connect_unix` on [`ReactorHandle`].
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
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use smallvec::SmallVec;
use socket2::{Domain, SockAddr, Socket, Type};

use super::poll::{Readiness, SourceKey};
use super::protocol::{
    Address, ConnectTimeoutError, ConnectionAborted, ConnectionDone, Factory, Protocol, PushProducer,
};
use super::{catching, Closing, ReactorHandle, Source, WeakReactorHandle, READ_SIZE};
use crate::logcontext::{Captured, LoggingContext};
use crate::{Deferred, Failure};

/// The application's handle on a connection (Twisted's `ITransport`). Cheap to clone.
///
/// # Flow control
///
/// Writes never block and are never dropped: what the socket does not take at once is
/// buffered. The buffer is bounded by default: past its high-water mark (64 KiB) a
/// registered [`PushProducer`] is paused, or, with none, the transport stops reading
/// from the connection until the buffer drained to the low-water mark (16 KiB), so a
/// peer that sends and never reads is held back by TCP flow control instead of growing
/// the buffer. See [`set_write_buffer_limits`](Self::set_write_buffer_limits).
///
/// Dropping a `Transport` does not close the connection: call
/// [`lose_connection`](Self::lose_connection) or [`abort_connection`](Self::abort_connection).
#[derive(Clone)]
pub struct Transport {
    conn: Rc<Conn>,
}

/// The default high-water mark: past this many buffered bytes, a registered producer is
/// paused, or reading stops if there is none.
pub(super) const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// The default low-water mark: once the buffer drains to this, the producer is resumed
/// or reading goes on.
pub(super) const DEFAULT_LOW_WATER: usize = 16 * 1024;
/// A drained write buffer whose allocation grew past four times this is shrunk to it.
const BUFFER_KEEP: usize = 64 * 1024;
/// How many reads one readiness event may do before yielding to other sources.
const MAX_READS_PER_EVENT: usize = 16;

impl ReactorHandle {
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
        let conn = match Conn::register(self, into_stream(socket), Captured::capture(), WriteLimits::DEFAULT)
        {
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
        let target = d.to_ref();
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
        self.conn.write_parts(&[data]);
    }

    /// Writes each of `parts` in order (Twisted's `writeSequence`), with one system call
    /// (`writev`) when nothing is buffered.
    pub fn write_sequence(&self, parts: &[&[u8]]) {
        self.conn.write_parts(parts);
    }

    /// Closes the connection once the write buffer has drained (Twisted's
    /// `loseConnection`); `connection_lost` gets [`ConnectionDone`]. From now on no more
    /// data is read (nor handed to the protocol) and writes are ignored.
    pub fn lose_connection(&self) {
        self.conn.disconnecting.set(true);
        self.conn.schedule_check();
    }

    /// As [`lose_connection`](Self::lose_connection), but `connection_lost` gets
    /// `reason` instead of [`ConnectionDone`]: for a protocol that gives up on its peer
    /// (a line too long, a malformed request) after sending what it has to say. The
    /// first reason given wins; an error that ends the connection first (a reset) wins
    /// over it.
    pub fn lose_connection_with(&self, reason: impl Into<Failure>) {
        let c = &self.conn;
        if c.closed.get() {
            return;
        }
        c.lose_reason.borrow_mut().get_or_insert_with(|| reason.into());
        self.lose_connection();
    }

    /// Closes the connection now, dropping buffered data (Twisted's `abortConnection`);
    /// `connection_lost` gets [`ConnectionAborted`] from the call-soon queue.
    pub fn abort_connection(&self) {
        self.abort_connection_with(ConnectionAborted);
    }

    /// As [`abort_connection`](Self::abort_connection), but `connection_lost` gets
    /// `reason`.
    pub fn abort_connection_with(&self, reason: impl Into<Failure>) {
        let c = &self.conn;
        if c.closed.get() {
            return;
        }
        c.write_buf.borrow_mut().clear();
        c.write_pos.set(0);
        c.disconnecting.set(true);
        c.error.borrow_mut().get_or_insert_with(|| reason.into());
        c.schedule_check();
    }

    /// Half-closes: shuts the write side down once the buffer drained (Twisted's
    /// `loseWriteConnection`); reading goes on.
    pub fn lose_write_connection(&self) {
        self.conn.write_shut_requested.set(true);
        self.conn.schedule_check();
    }

    /// Stops reading from the connection (Twisted's `pauseProducing`): the kernel's
    /// buffer, then TCP flow control, hold what the peer sends.
    #[doc(alias = "pause_reading")]
    pub fn pause_producing(&self) {
        self.conn.read_paused.set(true);
    }

    /// Starts reading again (Twisted's `resumeProducing`), from the call-soon queue,
    /// where the protocol's [`reading_resumed`](Protocol::reading_resumed) runs first.
    #[doc(alias = "resume_reading")]
    pub fn resume_producing(&self) {
        if self.conn.read_paused.replace(false) {
            let Some(reactor) = self.conn.reactor.upgrade() else { return };
            if self.conn.resuming.replace(true) {
                return;
            }
            let conn = self.conn.clone();
            reactor.call_soon_in(&self.conn.ctx, move || {
                conn.resuming.set(false);
                if !conn.read_paused.get() {
                    conn.with_protocol("reading_resumed", |p| p.reading_resumed());
                }
                conn.read();
                conn.check();
            });
        }
    }

    /// True between [`pause_producing`](Self::pause_producing) and
    /// [`resume_producing`](Self::resume_producing). (Reading also stops while the
    /// write buffer is above its high-water mark; that does not show here.)
    pub fn is_reading_paused(&self) -> bool {
        self.conn.read_paused.get()
    }

    /// True once [`lose_connection`](Self::lose_connection) or
    /// [`abort_connection`](Self::abort_connection) was called, or the peer's end of
    /// file will close the connection (Twisted's `transport.disconnecting`): a protocol
    /// handling a batch of input stops there.
    pub fn is_disconnecting(&self) -> bool {
        self.conn.disconnecting.get() || self.conn.closed.get()
    }

    /// The log context the connection's events run in: the one current when
    /// `listen_*` or `connect_*` was called (for a [`MemoryTransport`](super::MemoryTransport), when it was made).
    /// A server that runs each request in its own context makes it a child of this one.
    pub fn log_context(&self) -> LoggingContext {
        self.conn.ctx.to_context()
    }

    /// Registers a push producer (Twisted's `registerProducer(p, streaming=True)`): it is
    /// paused when the write buffer passes the high-water mark (64 KiB by default) and
    /// resumed when it drained to the low-water mark (16 KiB); see
    /// [`set_write_buffer_limits`](Self::set_write_buffer_limits). While a producer is
    /// registered, the transport does not stop reading for a full buffer.
    ///
    /// # Log context
    ///
    /// The producer's methods run in the log context current here, as any callback does.
    pub fn register_producer(&self, producer: Rc<dyn PushProducer>) {
        let old = self.conn.producer.borrow_mut().replace(Registered { producer, ctx: Captured::capture() });
        drop(old);
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
        self.conn.stream.borrow().as_ref().map(Stream::host).unwrap_or(Address::Unix(None))
    }

    /// How many bytes are buffered, waiting for the socket.
    #[doc(alias = "get_write_buffer_size")]
    #[doc(alias = "buffered_len")]
    pub fn buffered(&self) -> usize {
        self.conn.buffered()
    }

    /// Sets the write buffer's high- and low-water marks (asyncio's
    /// `set_write_buffer_limits`); they take effect at once. When more than `high` bytes
    /// are buffered, a registered [`PushProducer`] is paused; with no producer, the
    /// transport stops reading from the connection, so a peer that sends and never reads
    /// cannot make an echoing protocol buffer without limit. Once the buffer drains to
    /// `low` bytes or fewer, the producer is resumed, or reading goes on.
    ///
    /// The defaults are 64 KiB and 16 KiB; [`ListeningPort::set_write_buffer_limits`]
    /// sets them for every connection a listener accepts. `high = usize::MAX` turns the
    /// limit off (the buffer then grows as long as the protocol writes). Nothing written
    /// is ever dropped: a single write larger than `high` is buffered whole.
    ///
    /// [`ListeningPort::set_write_buffer_limits`]: super::ListeningPort::set_write_buffer_limits
    ///
    /// # Errors
    ///
    /// [`WriteBufferLimitsError`] if `low > high`; the limits are then unchanged.
    pub fn set_write_buffer_limits(&self, high: usize, low: usize) -> Result<(), WriteBufferLimitsError> {
        self.conn.limits.set(WriteLimits::new(high, low)?);
        self.conn.above_high_water();
        self.conn.below_low_water();
        Ok(())
    }

    /// The write buffer's `(high, low)` water marks; see
    /// [`set_write_buffer_limits`](Self::set_write_buffer_limits).
    pub fn write_buffer_limits(&self) -> (usize, usize) {
        let l = self.conn.limits.get();
        (l.high, l.low)
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

/// [`Transport::set_write_buffer_limits`] was given a low-water mark above the
/// high-water mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteBufferLimitsError {
    /// The high-water mark asked for.
    pub high: usize,
    /// The low-water mark asked for.
    pub low: usize,
}

impl fmt::Display for WriteBufferLimitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "write buffer low-water mark {} is above the high-water mark {}", self.low, self.high)
    }
}

impl std::error::Error for WriteBufferLimitsError {}

/// A transport's write buffer water marks, `low <= high`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WriteLimits {
    high: usize,
    low: usize,
}

impl WriteLimits {
    pub(super) const DEFAULT: WriteLimits = WriteLimits { high: DEFAULT_HIGH_WATER, low: DEFAULT_LOW_WATER };

    pub(super) fn new(high: usize, low: usize) -> Result<WriteLimits, WriteBufferLimitsError> {
        if low > high {
            return Err(WriteBufferLimitsError { high, low });
        }
        Ok(WriteLimits { high, low })
    }
}

pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A TLS session over a TCP or Unix stream (`start_tls`): reads and writes are
    /// plaintext, the socket carries TLS records (see `reactor/tls/`).
    #[cfg(feature = "tls")]
    Tls(Box<super::tls::TlsStream>),
}

impl Stream {
    pub(super) fn fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.socket().fd(),
        }
    }

    pub(super) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.read(buf),
        }
    }

    pub(super) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.write(buf),
        }
    }

    pub(super) fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write_vectored(bufs),
            Stream::Unix(s) => (&*s).write_vectored(bufs),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.write_vectored(bufs),
        }
    }

    pub(super) fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.socket().shutdown_write(),
        }
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.socket().take_error(),
        }
    }

    fn connected(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.peer_addr().map(drop),
            Stream::Unix(s) => s.peer_addr().map(drop),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.socket().connected(),
        }
    }

    fn peer(&self) -> Address {
        match self {
            Stream::Tcp(s) => s.peer_addr().map(Address::Tcp).unwrap_or(Address::Unix(None)),
            Stream::Unix(s) => {
                Address::Unix(s.peer_addr().ok().and_then(|a| a.as_pathname().map(Into::into)))
            }
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.socket().peer(),
        }
    }

    fn host(&self) -> Address {
        match self {
            Stream::Tcp(s) => s.local_addr().map(Address::Tcp).unwrap_or(Address::Unix(None)),
            Stream::Unix(s) => {
                Address::Unix(s.local_addr().ok().and_then(|a| a.as_pathname().map(Into::into)))
            }
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.socket().host(),
        }
    }

    /// Input the stream holds that the socket no longer signals (a TLS layer's decrypted
    /// bytes, or its end of stream, behind a short read): read again without an edge.
    fn input_pending(&self) -> bool {
        match self {
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.input_pending(),
            _ => false,
        }
    }

    /// Before the write side is shut or the socket closed: a TLS layer sends its
    /// `close_notify` and its last records, and says `false` while some are still unsent.
    fn ready_to_close(&self) -> io::Result<bool> {
        match self {
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.ready_to_close(),
            _ => Ok(true),
        }
    }
}

/// An I/O error as the reason a connection ends; a TLS error the TLS layer carried in
/// it comes out as itself, so `connection_lost` can `downcast_ref::<TlsError>()`.
fn io_failure(e: io::Error) -> Failure {
    #[cfg(feature = "tls")]
    let e = match super::tls::TlsError::from_io(e) {
        Ok(tls) => return Failure::new(tls),
        Err(e) => e,
    };
    Failure::new(e)
}

type OnConnect = Box<dyn FnOnce(&Rc<Conn>, Result<(), Failure>)>;

/// A registered producer and the log context its methods run in (the one current when it
/// was registered).
#[derive(Clone)]
struct Registered {
    producer: Rc<dyn PushProducer>,
    ctx: Captured,
}

/// One stream connection; see the module docs. Flags are `Cell`s and each buffer its
/// own `RefCell`, none borrowed while user code runs.
pub(crate) struct Conn {
    reactor: WeakReactorHandle,
    key: Cell<Option<SourceKey>>,
    stream: RefCell<Option<Stream>>,
    write_buf: RefCell<Vec<u8>>,
    write_pos: Cell<usize>,
    protocol: RefCell<Option<Rc<RefCell<dyn Protocol>>>>,
    producer: RefCell<Option<Registered>>,
    on_connect: RefCell<Option<OnConnect>>,
    error: RefCell<Option<Failure>>,
    /// What `connection_lost` gets for a clean close asked for with `lose_connection_with`.
    lose_reason: RefCell<Option<Failure>>,
    /// Reading paused by the application (`pause_producing`).
    read_paused: Cell<bool>,
    /// `resume_producing` queued the call to `reading_resumed`; nothing is read before.
    resuming: Cell<bool>,
    /// Reading paused because the write buffer passed the high-water mark with no
    /// producer registered; cleared at the low-water mark.
    throttled: Cell<bool>,
    limits: Cell<WriteLimits>,
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
    pub(super) fn register(
        reactor: &ReactorHandle,
        stream: Stream,
        ctx: Captured,
        limits: WriteLimits,
    ) -> io::Result<Rc<Conn>> {
        let fd = stream.fd();
        let conn = Rc::new(Conn::new(reactor.downgrade(), Some(stream), ctx, limits));
        let key = reactor.register(fd, conn.clone(), true, true)?;
        conn.key.set(Some(key));
        Ok(conn)
    }

    /// A connection with no socket and no reactor, for [`MemoryTransport`]: writes stay
    /// in the buffer, closing only records the wish.
    ///
    /// [`MemoryTransport`]: super::MemoryTransport
    pub(super) fn detached(ctx: Captured) -> Rc<Conn> {
        let no_reactor = WeakReactorHandle { inner: std::rc::Weak::new() };
        Rc::new(Conn::new(no_reactor, None, ctx, WriteLimits::DEFAULT))
    }

    fn new(reactor: WeakReactorHandle, stream: Option<Stream>, ctx: Captured, limits: WriteLimits) -> Conn {
        Conn {
            reactor,
            key: Cell::new(None),
            stream: RefCell::new(stream),
            write_buf: RefCell::new(Vec::new()),
            write_pos: Cell::new(0),
            protocol: RefCell::new(None),
            producer: RefCell::new(None),
            on_connect: RefCell::new(None),
            error: RefCell::new(None),
            lose_reason: RefCell::new(None),
            read_paused: Cell::new(false),
            resuming: Cell::new(false),
            throttled: Cell::new(false),
            limits: Cell::new(limits),
            read_closed: Cell::new(false),
            eof_pending: Cell::new(false),
            disconnecting: Cell::new(false),
            write_shut_requested: Cell::new(false),
            write_shut: Cell::new(false),
            producer_paused: Cell::new(false),
            check_scheduled: Cell::new(false),
            closed: Cell::new(false),
            ctx,
        }
    }

    /// The bytes written and not yet sent (for a detached connection: all of them,
    /// less what [`take_unsent`](Self::take_unsent) took).
    pub(super) fn unsent(&self) -> Vec<u8> {
        self.write_buf.borrow()[self.write_pos.get()..].to_vec()
    }

    /// Takes the unsent bytes out, as a peer reading them would: a producer paused for
    /// a full buffer is resumed.
    pub(super) fn take_unsent(self: &Rc<Self>) -> Vec<u8> {
        let mut taken = std::mem::take(&mut *self.write_buf.borrow_mut());
        taken.drain(..self.write_pos.replace(0));
        self.below_low_water();
        taken
    }

    /// What `connection_lost` would get if the connection closed now as asked: `None`
    /// while nobody asked.
    pub(super) fn close_reason(&self) -> Option<Failure> {
        if let Some(e) = self.error.borrow().as_ref() {
            return Some(e.clone());
        }
        if !self.disconnecting.get() {
            return None;
        }
        let reason = self.lose_reason.borrow().clone();
        Some(reason.unwrap_or_else(|| Failure::new(ConnectionDone)))
    }

    pub(super) fn write_shut_requested(&self) -> bool {
        self.write_shut_requested.get()
    }

    pub(super) fn producer(&self) -> Option<Rc<dyn PushProducer>> {
        self.producer.borrow().as_ref().map(|r| r.producer.clone())
    }

    pub(super) fn transport(self: &Rc<Self>) -> Transport {
        Transport { conn: self.clone() }
    }

    fn peer(&self) -> Address {
        self.stream.borrow().as_ref().map(Stream::peer).unwrap_or(Address::Unix(None))
    }

    /// Sets the protocol and calls its `connection_made`.
    pub(super) fn start(self: &Rc<Self>, protocol: Rc<RefCell<dyn Protocol>>) {
        *self.protocol.borrow_mut() = Some(protocol.clone());
        let transport = Transport { conn: self.clone() };
        self.with_protocol("connection_made", |p| p.connection_made(transport));
        self.check();
    }

    /// Runs a protocol method in the connection's log context. A panic in it aborts the
    /// connection, and the `PanicError` is the reason `connection_lost` gets, as Twisted
    /// drops a connection whose `dataReceived` raises.
    fn with_protocol(&self, what: &str, f: impl FnOnce(&mut dyn Protocol)) {
        let Some(protocol) = self.protocol.borrow().clone() else { return };
        let Ok(mut p) = protocol.try_borrow_mut() else {
            log::error!(target: "weft::reactor", "{what}: protocol is borrowed elsewhere; skipped");
            return;
        };
        if let Err(failure) = self.ctx.run(|| catching(|| f(&mut *p))) {
            self.panicked(what, failure);
        }
    }

    /// Calls the registered producer, if any, in its log context; a panic aborts the
    /// connection as a protocol's does.
    fn with_producer(self: &Rc<Self>, what: &str, f: impl FnOnce(&dyn PushProducer)) {
        let Some(p) = self.producer.borrow().clone() else { return };
        if let Err(failure) = p.ctx.run(|| catching(|| f(&*p.producer))) {
            self.panicked(what, failure);
            self.schedule_check();
        }
    }

    /// Logs a panic in user code and, unless the connection is already closed, makes it
    /// the error that closes the connection (`check` carries it out).
    fn panicked(&self, what: &str, failure: Failure) {
        log::error!(target: "weft::reactor", "panic in {what}: {failure}; aborting the connection");
        if !self.closed.get() {
            self.error.borrow_mut().get_or_insert(failure);
        }
    }

    fn buffered(&self) -> usize {
        self.write_buf.borrow().len() - self.write_pos.get()
    }

    fn input_pending(&self) -> bool {
        self.stream.borrow().as_ref().is_some_and(Stream::input_pending)
    }

    /// See `Stream::ready_to_close`.
    fn ready_to_close(&self) -> Result<bool, Failure> {
        let r = self.stream.borrow().as_ref().map_or(Ok(true), Stream::ready_to_close);
        r.map_err(io_failure)
    }

    /// Writes `parts` in order: straight to the socket (one `writev`) if nothing is
    /// buffered, the rest into the buffer.
    fn write_parts(self: &Rc<Self>, parts: &[&[u8]]) {
        if self.closed.get() || self.disconnecting.get() || self.write_shut_requested.get() {
            return;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total == 0 {
            return;
        }
        let mut written = 0;
        // With no socket (a `MemoryTransport`), everything goes to the buffer.
        let guard = self.stream.borrow();
        if let (Some(stream), 0, true) = (guard.as_ref(), self.buffered(), self.on_connect.borrow().is_none())
        {
            while written < total {
                let r = match parts {
                    [one] => stream.write(&one[written..]),
                    _ => stream.write_vectored(&remaining(parts, written)),
                };
                match r {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.error.borrow_mut().get_or_insert_with(|| io_failure(e));
                        drop(guard);
                        self.schedule_check();
                        return;
                    }
                }
            }
        }
        drop(guard);
        if written < total {
            {
                let mut buf = self.write_buf.borrow_mut();
                // Drop the bytes already sent once they are half the buffer, so a buffer
                // that never quite drains does not grow.
                let pos = self.write_pos.get();
                if pos > 0 && pos >= buf.len() / 2 {
                    buf.drain(..pos);
                    self.write_pos.set(0);
                }
                for part in remaining(parts, written) {
                    buf.extend_from_slice(&part);
                }
            }
            self.above_high_water();
        }
    }

    /// Past the high-water mark: pauses the producer, or with none stops reading.
    fn above_high_water(self: &Rc<Self>) {
        if self.buffered() <= self.limits.get().high {
            return;
        }
        if self.producer.borrow().is_some() {
            if !self.producer_paused.replace(true) {
                self.with_producer("pause_producing", |p| p.pause_producing());
            }
        } else {
            self.throttled.set(true);
        }
    }

    /// At or under the low-water mark: resumes the producer, and reading.
    fn below_low_water(self: &Rc<Self>) {
        if self.buffered() > self.limits.get().low {
            return;
        }
        if self.producer_paused.replace(false) {
            self.with_producer("resume_producing", |p| p.resume_producing());
        }
        if self.throttled.replace(false) {
            self.schedule_read();
        }
    }

    /// Writes out as much of the buffer as the socket takes.
    fn flush(self: &Rc<Self>) {
        {
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
                        self.error.borrow_mut().get_or_insert_with(|| io_failure(e));
                        break;
                    }
                }
            }
            if pos == buf.len() {
                buf.clear();
                if buf.capacity() > 4 * BUFFER_KEEP {
                    buf.shrink_to(BUFFER_KEEP);
                }
                pos = 0;
            }
            self.write_pos.set(pos);
        }
        self.below_low_water();
    }

    /// Reads while data comes, handing it to the protocol.
    fn read(self: &Rc<Self>) {
        let Some(reactor) = self.reactor.upgrade() else { return };
        for _ in 0..MAX_READS_PER_EVENT {
            if self.read_paused.get()
                || self.resuming.get()
                || self.throttled.get()
                || self.disconnecting.get()
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
                        n == READ_SIZE || self.eof_pending.get() || self.input_pending()
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
                    Err(e) => {
                        self.error.borrow_mut().get_or_insert_with(|| io_failure(e));
                        false
                    }
                }
            });
            if !more {
                return;
            }
        }
        // Still more to read: yield to other sources, go on next turn.
        self.schedule_read();
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
        if self.disconnecting.get() || self.write_shut_requested.get() && !self.write_shut.get() {
            match self.ready_to_close() {
                Ok(true) => {}
                Ok(false) => return,
                Err(f) => return self.close(f),
            }
        }
        if self.disconnecting.get() {
            let reason = self.lose_reason.borrow_mut().take();
            self.close(reason.unwrap_or_else(|| Failure::new(ConnectionDone)));
        } else if self.write_shut_requested.get() && !self.write_shut.get() {
            self.write_shut.set(true);
            let r = self.stream.borrow().as_ref().map(Stream::shutdown_write);
            if let Some(Err(e)) = r {
                self.close(io_failure(e));
            } else if self.read_closed.get() {
                self.close(Failure::new(ConnectionDone));
            }
        } else if self.write_shut.get() && self.read_closed.get() {
            self.close(Failure::new(ConnectionDone));
        }
    }

    /// Deregisters and closes the socket, then tells the producer and the protocol.
    pub(super) fn close(self: &Rc<Self>, reason: Failure) {
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
        self.with_producer("stop_producing", |p| p.stop_producing());
        let producer = self.producer.borrow_mut().take();
        drop(producer);
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
    /// Reads (and then checks) from the call-soon queue, in the connection's context.
    pub(super) fn schedule_read(self: &Rc<Self>) {
        let Some(reactor) = self.reactor.upgrade() else { return };
        let conn = self.clone();
        reactor.call_soon_in(&self.ctx, move || {
            conn.read();
            conn.check();
        });
    }

    /// Runs `flush` and `check` from the call-soon queue (once however often asked).
    pub(super) fn schedule_check(self: &Rc<Self>) {
        if self.check_scheduled.replace(true) || self.closed.get() {
            return;
        }
        let Some(reactor) = self.reactor.upgrade() else { return };
        let conn = self.clone();
        reactor.call_soon_in(&self.ctx, move || {
            conn.check_scheduled.set(false);
            conn.flush();
            conn.check();
        });
    }
}

/// What the TLS layer (`reactor/tls/`) needs of a connection.
#[cfg(feature = "tls")]
impl Conn {
    /// Runs `f` on the stream; `None` once closed (or with no socket).
    pub(super) fn with_stream<R>(&self, f: impl FnOnce(&Stream) -> R) -> Option<R> {
        self.stream.borrow().as_ref().map(f)
    }

    /// Puts a layer over the stream (`start_tls`): `wrap` gets it and returns what
    /// replaces it (the descriptor stays the same, so the registration holds). False, and
    /// `wrap` not called, once closed (or with no socket).
    pub(super) fn wrap_stream(&self, wrap: impl FnOnce(Stream) -> Stream) -> bool {
        let mut stream = self.stream.borrow_mut();
        let Some(plain) = stream.take() else { return false };
        *stream = Some(wrap(plain));
        true
    }

    /// The log context the connection's events run in.
    pub(super) fn ctx(&self) -> &Captured {
        &self.ctx
    }

    pub(super) fn reactor(&self) -> Option<ReactorHandle> {
        self.reactor.upgrade()
    }
}

#[cfg(feature = "tls")]
impl Transport {
    pub(super) fn conn(&self) -> &Rc<Conn> {
        &self.conn
    }
}

impl Source for Conn {
    fn is_connection(&self) -> bool {
        true
    }

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
        #[cfg(feature = "tls")]
        super::tls::ready(&self);
        // Every event reports the socket writable (epoll reports all the interests that
        // hold): flush only if something is buffered.
        if (r.writable || r.error) && self.buffered() > 0 {
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

    fn rekey(&self, key: SourceKey) {
        self.key.set(Some(key));
    }

    fn shut_down(self: Rc<Self>, how: Closing) {
        if self.on_connect.borrow().is_some() {
            self.fail_connect(Some(Failure::new(ConnectionAborted)));
        } else if how == Closing::Graceful {
            Transport { conn: self }.lose_connection();
        } else {
            self.close(Failure::new(ConnectionAborted));
        }
    }
}

/// The bytes of `parts` from byte `offset` on, as slices for `writev`.
fn remaining<'a>(parts: &[&'a [u8]], mut offset: usize) -> SmallVec<[IoSlice<'a>; 4]> {
    let mut out = SmallVec::new();
    for part in parts {
        if offset >= part.len() {
            offset -= part.len();
            continue;
        }
        out.push(IoSlice::new(&part[offset..]));
        offset = 0;
    }
    out
}
