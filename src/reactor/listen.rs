//! Listening sockets: [`ListeningPort`], the `Listener` behind it with its `EMFILE`
//! back-off, and `listen_tcp` / `listen_unix` on [`ReactorHandle`].

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use super::poll::{Readiness, SourceKey};
use super::protocol::{Address, ConnectionAborted, Factory, Protocol};
use super::stream::{Conn, Stream, WriteBufferLimitsError, WriteLimits};
use super::{guarded, Closing, DelayedCall, ReactorHandle, Source, WeakReactorHandle};
use crate::logcontext::Captured;
use crate::Failure;

/// A listening socket; see [`ReactorHandle::listen_tcp`].
///
/// Dropping the handle does not stop listening: call
/// [`stop_listening`](Self::stop_listening).
#[derive(Clone)]
pub struct ListeningPort {
    listener: Rc<Listener>,
}

/// How [`ReactorHandle::listen_tcp`] sets its socket up. A builder, so that a call site
/// says what it asks for:
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// use weft::reactor::{Address, ListenOptions, Protocol, Reactor};
/// # struct Quiet;
/// # impl Protocol for Quiet { fn data_received(&mut self, _: &[u8]) {} }
/// let reactor = Reactor::new()?;
/// let addr = "127.0.0.1:0".parse().unwrap();
/// let options = ListenOptions::new().reuse_port(true).backlog(4096);
/// let port = reactor.listen_tcp(addr, |_: &Address| Quiet, options)?;
/// # port.stop_listening();
/// # Ok(())
/// # }
/// ```
///
/// A `bool` converts into options with [`reuse_port`](Self::reuse_port) set to it: the
/// older call form `listen_tcp(addr, factory, false)` still compiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenOptions {
    reuse_port: bool,
    backlog: u32,
}

impl ListenOptions {
    /// The defaults: no `SO_REUSEPORT`, a backlog of 1024.
    pub const fn new() -> ListenOptions {
        ListenOptions { reuse_port: false, backlog: 1024 }
    }

    /// Sets `SO_REUSEPORT`, so that several processes or reactors can listen on the same
    /// port and the kernel spreads connections between them.
    #[must_use = "the options are returned, not changed in place"]
    pub const fn reuse_port(mut self, on: bool) -> ListenOptions {
        self.reuse_port = on;
        self
    }

    /// The length of the queue of connections the kernel completes before they are
    /// accepted (capped by `net.core.somaxconn`).
    #[must_use = "the options are returned, not changed in place"]
    pub const fn backlog(mut self, backlog: u32) -> ListenOptions {
        self.backlog = backlog;
        self
    }
}

impl Default for ListenOptions {
    fn default() -> ListenOptions {
        ListenOptions::new()
    }
}

impl From<bool> for ListenOptions {
    /// The older form of `listen_tcp`'s third argument: `reuse_port`.
    fn from(reuse_port: bool) -> ListenOptions {
        ListenOptions::new().reuse_port(reuse_port)
    }
}

/// How many connections one readiness event may accept before yielding.
const MAX_ACCEPTS_PER_EVENT: usize = 128;
/// How long a listener waits after running out of descriptors before accepting again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

impl ReactorHandle {
    /// Listens for TCP connections on `addr`, making a protocol with `factory` for each
    /// (Twisted's `listenTCP`), with the socket set up as `options` say
    /// ([`ListenOptions`]: backlog 1024 and no `SO_REUSEPORT` by default). Accepted
    /// sockets get `TCP_NODELAY`.
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
        options: impl Into<ListenOptions>,
    ) -> io::Result<ListeningPort> {
        let options = options.into();
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(socket2::Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if options.reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(options.backlog.min(i32::MAX as u32) as i32)?;
        self.listen(ListenSocket::Tcp(socket.into()), factory)
    }

    /// Listens with a TCP socket the process already has, already bound and listening
    /// (a `std::net::TcpListener`); as [`adopt_stream_port`](Self::adopt_stream_port).
    ///
    /// # Errors
    ///
    /// As [`adopt_stream_port`](Self::adopt_stream_port).
    pub fn listen_tcp_from<F: Factory>(
        &self,
        listener: TcpListener,
        factory: F,
    ) -> io::Result<ListeningPort> {
        self.adopt_stream_port(listener, factory)
    }

    /// Serves connections on a listening stream socket the process already has
    /// (Twisted's `adoptStreamPort`): one inherited through systemd socket activation
    /// (file descriptor 3 onwards; `OwnedFd::from_raw_fd` in the caller, since taking
    /// ownership of a raw descriptor is the caller's promise), a `std::net::TcpListener`
    /// or `UnixListener`, or any `OwnedFd` of a TCP or Unix stream socket on which
    /// `listen` was called. The socket is made non-blocking and owned by the returned
    /// port from now on: [`stop_listening`](ListeningPort::stop_listening) closes it.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// use weft::reactor::{Address, Protocol, Reactor};
    /// # struct Quiet;
    /// # impl Protocol for Quiet { fn data_received(&mut self, _: &[u8]) {} }
    /// let reactor = Reactor::new()?;
    /// let inherited = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let port = reactor.adopt_stream_port(inherited, |_: &Address| Quiet)?;
    /// assert!(port.port().is_some());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the socket is not a stream socket, not listening, or neither
    /// TCP nor Unix; the OS error if it cannot be inspected or registered. The socket is
    /// closed in every case.
    pub fn adopt_stream_port<F: Factory>(
        &self,
        socket: impl Into<OwnedFd>,
        factory: F,
    ) -> io::Result<ListeningPort> {
        let socket = Socket::from(socket.into());
        let refuse =
            |why: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, format!("adopt_stream_port: {why}")));
        if socket.r#type()? != Type::STREAM {
            return refuse("not a stream socket");
        }
        if !socket.is_listener()? {
            return refuse("the socket is not listening (call listen on it first)");
        }
        let domain = socket.domain()?;
        socket.set_nonblocking(true)?;
        let listen_socket = match domain {
            Domain::IPV4 | Domain::IPV6 => ListenSocket::Tcp(socket.into()),
            Domain::UNIX => ListenSocket::Unix(socket.into()),
            other => return refuse(&format!("neither a TCP nor a Unix socket ({other:?})")),
        };
        self.listen(listen_socket, factory)
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

    fn listen<F: Factory>(&self, socket: ListenSocket, mut factory: F) -> io::Result<ListeningPort> {
        let listener = Rc::new(Listener {
            reactor: self.downgrade(),
            key: Cell::new(None),
            socket: RefCell::new(Some(socket)),
            factory: RefCell::new(Some(Box::new(move |a: &Address| {
                Rc::new(RefCell::new(factory.build_protocol(a))) as Rc<RefCell<dyn Protocol>>
            }))),
            backing_off: Cell::new(false),
            limits: Cell::new(WriteLimits::DEFAULT),
            ctx: Captured::capture(),
        });
        let fd = listener.fd().expect("just made");
        let key = self.register(fd, listener.clone(), true, false)?;
        listener.key.set(Some(key));
        Ok(ListeningPort { listener })
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

    /// Sets the write buffer limits of every connection accepted from now on (see
    /// [`Transport::set_write_buffer_limits`](super::Transport::set_write_buffer_limits),
    /// which changes one connection's); connections already open keep theirs.
    ///
    /// # Errors
    ///
    /// [`WriteBufferLimitsError`] if `low > high`; the limits are then unchanged.
    pub fn set_write_buffer_limits(&self, high: usize, low: usize) -> Result<(), WriteBufferLimitsError> {
        self.listener.limits.set(WriteLimits::new(high, low)?);
        Ok(())
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
    /// The write buffer limits each accepted connection starts with.
    limits: Cell<WriteLimits>,
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
                    let conn = match Conn::register(&reactor, stream, self.ctx.clone(), self.limits.get()) {
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

    fn rekey(&self, key: SourceKey) {
        self.key.set(Some(key));
    }

    fn shut_down(self: Rc<Self>, _how: Closing) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use super::super::{Protocol, Reactor, Transport, SOURCES_SHRINK_FLOOR};
    use super::{Address, ListenOptions};
    use crate::Failure;

    /// Echoes; counts open connections.
    struct Echo {
        transport: Option<Transport>,
        open: Rc<RefCell<usize>>,
    }

    impl Protocol for Echo {
        fn connection_made(&mut self, transport: Transport) {
            *self.open.borrow_mut() += 1;
            self.transport = Some(transport);
        }
        fn data_received(&mut self, data: &[u8]) {
            self.transport.as_ref().unwrap().write(data);
        }
        fn connection_lost(&mut self, _reason: Failure) {
            *self.open.borrow_mut() -= 1;
        }
    }

    /// Turns the loop until `done`, failing after 20 s.
    #[track_caller]
    fn turn_until(reactor: &Reactor, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "the condition did not hold within 20 s");
            reactor.iterate(Some(Duration::from_millis(10))).unwrap();
        }
    }

    /// After a spike of 300 connections, closing all but one gives the source table's
    /// memory back; the survivor, moved to a low slot, is still served, and still closes.
    #[test]
    fn the_connection_table_shrinks_after_a_spike_and_keeps_its_survivors() {
        let reactor = Reactor::new().unwrap();
        let open = Rc::new(RefCell::new(0));
        let o = open.clone();
        let port = reactor
            .listen_tcp(
                "127.0.0.1:0".parse().unwrap(),
                move |_: &Address| Echo { transport: None, open: o.clone() },
                ListenOptions::new(),
            )
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
        let mut clients: Vec<_> = (0..300).map(|_| TcpStream::connect(addr).unwrap()).collect();
        turn_until(&reactor, || *open.borrow() == 300);
        let peak = reactor.handle.inner.sources.borrow().capacity();
        assert!(peak > 300);
        let mut survivor = clients.remove(250);
        drop(clients);
        turn_until(&reactor, || *open.borrow() == 1);
        assert_eq!(reactor.handle.inner.sources.borrow().len(), 2, "the listener and the survivor");
        // The table shrinks once it has been sparse for a while (20 ms in unit tests).
        turn_until(&reactor, || reactor.handle.inner.sources.borrow().capacity() <= SOURCES_SHRINK_FLOOR);
        survivor.set_nonblocking(true).unwrap();
        survivor.write_all(b"still here").unwrap();
        let mut got = Vec::new();
        turn_until(&reactor, || {
            let mut buf = [0u8; 64];
            match survivor.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            got == b"still here"
        });
        drop(survivor);
        turn_until(&reactor, || *open.borrow() == 0);
        assert_eq!(reactor.handle.inner.sources.borrow().len(), 1, "the survivor was deregistered");
    }
}
