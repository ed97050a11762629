//! [`MemoryTransport`]: a transport with no socket, for testing protocols.

use std::fmt;
use std::rc::Rc;

use super::stream::Conn;
use super::{PushProducer, Transport};
use crate::logcontext::Captured;
use crate::Failure;

/// A transport with no socket and no reactor, for testing a [`Protocol`] by calling its
/// methods directly (Twisted's `StringTransport`): what the protocol writes is kept
/// here, and closing only records the wish.
///
/// ```
/// use weft::reactor::{MemoryTransport, Protocol, Transport};
///
/// struct Shout(Option<Transport>);
/// impl Protocol for Shout {
///     fn connection_made(&mut self, t: Transport) { self.0 = Some(t) }
///     fn data_received(&mut self, data: &[u8]) {
///         let t = self.0.as_ref().unwrap();
///         t.write(&data.to_ascii_uppercase());
///         t.lose_connection();
///     }
/// }
///
/// let fake = MemoryTransport::new();
/// let mut p = Shout(None);
/// p.connection_made(fake.transport());
/// p.data_received(b"hi");
/// assert_eq!(fake.value(), b"HI");
/// assert!(fake.is_disconnecting());
/// // Finish the way the reactor would:
/// p.connection_lost(fake.close_reason().unwrap());
/// ```
///
/// The [`Transport`] behaves as a connected one whose peer reads nothing until
/// [`take`](Self::take) is called: writes are buffered (past the high-water mark a
/// registered producer is paused; `take` resumes it), `lose_connection` and
/// `abort_connection` set [`close_reason`](Self::close_reason), `pause_producing` shows
/// in [`Transport::is_reading_paused`]. Its addresses are `Address::Unix(None)`, and its
/// log context is the one current when it was made. Nothing calls the protocol: the
/// test calls `connection_made`, `data_received`, `reading_resumed` and
/// `connection_lost` itself.
///
/// [`Protocol`]: super::Protocol
#[doc(alias = "StringTransport")]
pub struct MemoryTransport {
    conn: Rc<Conn>,
}

impl MemoryTransport {
    /// A new open transport, with nothing written.
    pub fn new() -> MemoryTransport {
        MemoryTransport { conn: Conn::detached(Captured::capture()) }
    }

    /// The handle to give the protocol (`connection_made`); every call gives a handle
    /// to the same transport.
    pub fn transport(&self) -> Transport {
        self.conn.transport()
    }

    /// What was written and not yet taken (Twisted's `StringTransport.value()`).
    pub fn value(&self) -> Vec<u8> {
        self.conn.unsent()
    }

    /// Takes what was written, as a peer reading it: the transport's buffer is empty
    /// afterwards, and a producer paused for a full buffer is resumed.
    pub fn take(&self) -> Vec<u8> {
        self.conn.take_unsent()
    }

    /// True once the protocol asked to close (`lose_connection`, `abort_connection`,
    /// or their `_with` forms).
    pub fn is_disconnecting(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// What the protocol's `connection_lost` would get if the connection closed now:
    /// `ConnectionDone`, `ConnectionAborted`, or the reason given to
    /// `lose_connection_with`/`abort_connection_with`; `None` while nobody asked.
    pub fn close_reason(&self) -> Option<Failure> {
        self.conn.close_reason()
    }

    /// True once the protocol asked for `lose_write_connection`.
    pub fn is_write_shut(&self) -> bool {
        self.conn.write_shut_requested()
    }

    /// The producer registered with `register_producer`, if any.
    pub fn producer(&self) -> Option<Rc<dyn PushProducer>> {
        self.conn.producer()
    }
}

impl Default for MemoryTransport {
    fn default() -> MemoryTransport {
        MemoryTransport::new()
    }
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("value", &String::from_utf8_lossy(&self.value()))
            .field("close_reason", &self.close_reason().map(|r| r.to_string()))
            .finish()
    }
}
