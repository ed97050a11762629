//! UDP: [`ReactorHandle::listen_udp`], [`DatagramProtocol`] and [`UdpTransport`].
//!
//! A UDP port is registered once, edge-triggered, for readable readiness; each event
//! receives datagrams until the socket would block (at most 64 per event, then the rest
//! on the next turn) and hands each to `DatagramProtocol::datagram_received`.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use super::poll::{Readiness, SourceKey};
use super::{guarded, Closing, ReactorHandle, Source, WeakReactorHandle, READ_SIZE};
use crate::logcontext::Captured;

/// The application side of a UDP port (Twisted's `DatagramProtocol`).
pub trait DatagramProtocol: 'static {
    /// The port is listening; keep `transport` to send.
    fn start_protocol(&mut self, transport: UdpTransport) {
        let _ = transport;
    }

    /// A datagram arrived from `from`.
    fn datagram_received(&mut self, data: &[u8], from: SocketAddr);

    /// The port stopped listening.
    fn stop_protocol(&mut self) {}
}

/// A handle on a UDP port: send datagrams, stop listening. Cheap to clone.
///
/// Dropping it does not close the port: call [`stop_listening`](Self::stop_listening).
#[derive(Clone)]
pub struct UdpTransport {
    port: Rc<UdpPort>,
}

/// How many datagrams one readiness event may receive before yielding.
const MAX_DATAGRAMS_PER_EVENT: usize = 64;

impl ReactorHandle {
    /// Binds a UDP socket to `addr` and delivers its datagrams to `protocol` (Twisted's
    /// `listenUDP`). Returns the transport also given to `start_protocol`.
    ///
    /// # Errors
    ///
    /// The OS error from binding or registering the socket.
    pub fn listen_udp<P: DatagramProtocol>(&self, addr: SocketAddr, protocol: P) -> io::Result<UdpTransport> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        let fd = socket.as_raw_fd();
        let protocol: Rc<RefCell<dyn DatagramProtocol>> = Rc::new(RefCell::new(protocol));
        let port = Rc::new(UdpPort {
            reactor: self.downgrade(),
            key: Cell::new(None),
            socket: RefCell::new(Some(socket)),
            protocol: RefCell::new(Some(protocol.clone())),
            ctx: Captured::capture(),
        });
        let key = self.register(fd, port.clone(), true, false)?;
        port.key.set(Some(key));
        let transport = UdpTransport { port: port.clone() };
        let t = transport.clone();
        guarded("start_protocol", || protocol.borrow_mut().start_protocol(t));
        Ok(transport)
    }
}

impl UdpTransport {
    /// Sends `data` to `to` at once.
    ///
    /// # Errors
    ///
    /// The OS error, `WouldBlock` included (the datagram was not sent), or `NotConnected`
    /// after [`stop_listening`](Self::stop_listening).
    pub fn write(&self, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        match &*self.port.socket.borrow() {
            Some(s) => s.send_to(data, to),
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }

    /// The local address.
    ///
    /// # Errors
    ///
    /// `NotConnected` after [`stop_listening`](Self::stop_listening).
    pub fn get_host(&self) -> io::Result<SocketAddr> {
        match &*self.port.socket.borrow() {
            Some(s) => s.local_addr(),
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }

    /// Closes the socket; the protocol's `stop_protocol` runs from the call-soon queue,
    /// after which the port lets go of the protocol (so a protocol that keeps its
    /// transport does not keep itself alive).
    pub fn stop_listening(&self) {
        let socket = self.port.socket.borrow_mut().take();
        let Some(socket) = socket else { return };
        let protocol = self.port.protocol.borrow_mut().take();
        if let (Some(key), Some(reactor)) = (self.port.key.get(), self.port.reactor.upgrade()) {
            reactor.deregister(key, socket.as_raw_fd());
            if let Some(protocol) = protocol {
                reactor.call_soon(move || protocol.borrow_mut().stop_protocol());
            }
        }
    }
}

impl fmt::Debug for UdpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpTransport").field("host", &self.get_host().ok()).finish()
    }
}

struct UdpPort {
    reactor: WeakReactorHandle,
    key: Cell<Option<SourceKey>>,
    socket: RefCell<Option<UdpSocket>>,
    /// Taken when the port stops or the reactor is dropped: the protocol usually keeps
    /// a `UdpTransport`, which keeps this port, so holding it longer would be a cycle.
    protocol: RefCell<Option<Rc<RefCell<dyn DatagramProtocol>>>>,
    /// The log context current when `listen_udp` was called; the protocol runs in it.
    ctx: Captured,
}

impl UdpPort {
    fn receive(self: &Rc<Self>) {
        let Some(reactor) = self.reactor.upgrade() else { return };
        for _ in 0..MAX_DATAGRAMS_PER_EVENT {
            let more = reactor.with_read_buf(|buf| {
                let r = match &*self.socket.borrow() {
                    Some(s) => s.recv_from(&mut buf[..READ_SIZE]),
                    None => return false,
                };
                match r {
                    Ok((n, from)) => {
                        let Some(protocol) = self.protocol.borrow().clone() else { return false };
                        match protocol.try_borrow_mut() {
                            Ok(mut p) => {
                                self.ctx.run(|| {
                                    guarded("datagram_received", || p.datagram_received(&buf[..n], from))
                                });
                            }
                            Err(_) => {
                                log::error!(target: "weft::reactor", "datagram_received: protocol busy")
                            }
                        }
                        true
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
                    Err(e) => {
                        // ICMP errors (e.g. port unreachable) surface here; the port goes on.
                        log::debug!(target: "weft::reactor", "recv_from: {e}");
                        true
                    }
                }
            });
            if !more {
                return;
            }
        }
        let me = self.clone();
        reactor.call_soon(move || me.receive());
    }
}

impl Source for UdpPort {
    fn ready(self: Rc<Self>, _r: Readiness) {
        self.receive();
    }

    fn close_now(&self) {
        let s = self.socket.borrow_mut().take();
        drop(s);
        let p = self.protocol.borrow_mut().take();
        drop(p);
    }

    fn rekey(&self, key: SourceKey) {
        self.key.set(Some(key));
    }

    fn shut_down(self: Rc<Self>, _how: Closing) {
        UdpTransport { port: self }.stop_listening();
    }
}
