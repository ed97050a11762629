//! What an application implements and what it is told: [`Protocol`], [`Factory`],
//! [`PushProducer`], [`Address`], and the reasons a connection ends.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::Transport;
use crate::Failure;

/// The application side of a stream connection (Twisted's `Protocol`). Methods are called
/// on the reactor thread, one at a time, never re-entrantly.
///
/// # Panics
///
/// A panic in a method (`connection_made`, `data_received`, `read_connection_lost`) is
/// logged and aborts that connection: buffered output is dropped and `connection_lost`
/// gets the [`PanicError`](crate::PanicError), as Twisted drops a connection whose
/// `dataReceived` raises. Other connections are not affected. A panic in
/// `connection_lost` itself is logged.
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

    /// Reading resumes after [`Transport::pause_producing`]: called from the call-soon
    /// queue after [`Transport::resume_producing`], before anything new is read. A
    /// protocol that stopped handling input it already holds when it paused (a line
    /// receiver with lines left in its buffer) handles it now. Does nothing by default.
    fn reading_resumed(&mut self) {}

    /// The connection is closed. `reason` holds [`ConnectionDone`] for a clean close,
    /// [`ConnectionAborted`] after `abort_connection`, the reason given to
    /// [`Transport::lose_connection_with`] or [`Transport::abort_connection_with`], the
    /// [`PanicError`](crate::PanicError) of a protocol method that panicked, or the
    /// `std::io::Error` that ended it. Called exactly once per `connection_made`.
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
