//! What the string receivers share: [`StringProtocol`], [`StringSender`], and
//! [`StringReceiver`], the `Protocol` both framings ([`IntN`](super::IntN) and
//! [`Netstring`](super::Netstring)) run in.

use std::fmt;

use super::int_n::Prefix;
use crate::reactor::{Protocol, Transport};
use crate::Failure;

/// What an application implements to exchange whole strings (byte strings) framed by
/// an [`IntNStringReceiver`](super::IntNStringReceiver) or a
/// [`NetstringReceiver`](super::NetstringReceiver), which make it a
/// [`Protocol`](crate::reactor::Protocol).
pub trait StringProtocol: 'static {
    /// The connection is up.
    fn connection_made(&mut self, strings: &StringSender) {
        let _ = strings;
    }

    /// A whole string arrived, framing removed (Twisted's `stringReceived`).
    fn string_received(&mut self, string: &[u8], strings: &StringSender);

    /// A length prefix above the receiver's maximum arrived
    /// ([`IntNStringReceiver`](super::IntNStringReceiver) only; Twisted's
    /// `lengthLimitExceeded`). The default sends what is already written, then closes
    /// the connection with a [`LengthLimitExceededError`](super::LengthLimitExceededError),
    /// which `connection_lost` gets. If this method leaves the connection open, the
    /// receiver skips that string's bytes as they arrive, without buffering them, and
    /// goes on with the next.
    fn length_limit_exceeded(&mut self, length: usize, strings: &StringSender) {
        let error = super::LengthLimitExceededError { length, max_length: strings.max_length() };
        strings.transport().lose_connection_with(error);
    }

    /// The connection closed with bytes received but not delivered: an incomplete last
    /// string (framing included), or strings left after the protocol closed the
    /// connection or paused. Called just before
    /// [`connection_lost`](Self::connection_lost); does nothing by default.
    fn unparsed_at_close(&mut self, data: &[u8]) {
        let _ = data;
    }

    /// The connection is closed; as
    /// [`Protocol::connection_lost`](crate::reactor::Protocol::connection_lost).
    fn connection_lost(&mut self, reason: Failure) {
        let _ = reason;
    }
}

/// Sends framed strings on a connection (Twisted's `sendString`); a cheap clone, for
/// code outside the protocol's methods too.
#[derive(Clone)]
pub struct StringSender {
    transport: Transport,
    wire: Wire,
    max_length: usize,
}

/// How a string is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Prefix(Prefix),
    Netstring,
}

/// A [`Protocol`] that cuts the stream into strings for a [`StringProtocol`], framed
/// as `F` says. Made as an [`IntNStringReceiver`](super::IntNStringReceiver) (a length
/// prefix) or a [`NetstringReceiver`](super::NetstringReceiver); strings of more than
/// 99,999 bytes are refused by default (Twisted's `MAX_LENGTH`).
///
/// Strings are delivered whole and in order however the bytes were split into reads.
/// After each string the receiver stops if the protocol paused reading
/// ([`StringSender::pause_producing`]; the rest is delivered when reading resumes) or
/// closed the connection. What is left unparsed when the connection closes goes to
/// [`StringProtocol::unparsed_at_close`].
pub struct StringReceiver<F, P> {
    protocol: P,
    framer: F,
    max_length: usize,
    sender: Option<StringSender>,
    inbox: Inbox,
}

/// How a [`StringReceiver`] frames strings: [`IntN`](super::IntN) or
/// [`Netstring`](super::Netstring). Sealed: weft's two framings are the only ones.
pub trait Framer: sealed::Deframe + 'static {}

pub(super) mod sealed {
    use super::{Inbox, StringProtocol, StringSender, Wire};

    /// The parsing a framing does; see [`Framer`](super::Framer).
    pub trait Deframe {
        /// How the sender frames strings.
        fn wire(&self) -> Wire;
        /// Delivers the whole strings in `inbox` (from `inbox.pos`), advancing `pos`
        /// past them; stops when the sender says no more may be delivered.
        fn deliver<P: StringProtocol>(
            &mut self,
            protocol: &mut P,
            sender: &StringSender,
            inbox: &mut Inbox,
            max_length: usize,
        );
    }
}

/// Twisted's `IntNStringReceiver.MAX_LENGTH` and `NetstringReceiver.MAX_LENGTH`.
const DEFAULT_MAX_STRING: usize = 99_999;

impl<F: Framer, P: StringProtocol> StringReceiver<F, P> {
    pub(super) fn with_framer(framer: F, protocol: P) -> StringReceiver<F, P> {
        StringReceiver {
            protocol,
            framer,
            max_length: DEFAULT_MAX_STRING,
            sender: None,
            inbox: Inbox::default(),
        }
    }

    /// Accepts strings of at most `max_length` bytes (Twisted's `MAX_LENGTH`).
    #[must_use = "the receiver is returned, not changed in place"]
    pub fn with_max_length(mut self, max_length: usize) -> StringReceiver<F, P> {
        self.max_length = max_length;
        self
    }

    /// The application's protocol.
    pub fn protocol(&self) -> &P {
        &self.protocol
    }

    /// The application's protocol, mutably.
    pub fn protocol_mut(&mut self) -> &mut P {
        &mut self.protocol
    }

    fn deliver(&mut self) {
        if let Some(sender) = &self.sender {
            self.framer.deliver(&mut self.protocol, sender, &mut self.inbox, self.max_length);
            self.inbox.compact();
        }
    }
}

impl<F: Framer, P: StringProtocol> Protocol for StringReceiver<F, P> {
    fn connection_made(&mut self, transport: Transport) {
        let sender = StringSender::new(transport, self.framer.wire(), self.max_length);
        self.protocol.connection_made(&sender);
        self.sender = Some(sender);
    }

    /// # Panics
    ///
    /// If called before `connection_made` (the reactor never does).
    #[track_caller]
    fn data_received(&mut self, data: &[u8]) {
        assert!(self.sender.is_some(), "a string receiver got data before connection_made");
        self.inbox.buf.extend_from_slice(data);
        self.deliver();
    }

    fn reading_resumed(&mut self) {
        self.deliver();
    }

    fn connection_lost(&mut self, reason: Failure) {
        if !self.inbox.unparsed().is_empty() {
            self.protocol.unparsed_at_close(self.inbox.unparsed());
        }
        self.protocol.connection_lost(reason);
    }
}

impl<F: fmt::Debug, P: fmt::Debug> fmt::Debug for StringReceiver<F, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StringReceiver")
            .field("protocol", &self.protocol)
            .field("framer", &self.framer)
            .field("max_length", &self.max_length)
            .field("buffered", &self.inbox.unparsed().len())
            .finish()
    }
}

/// [`StringSender::send_string`] was given a string longer than the length prefix can
/// say (Twisted's `StringTooLongError`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringTooLongError {
    /// The string's length.
    pub length: usize,
    /// The longest string the prefix can say.
    pub max_length: usize,
}

impl fmt::Display for StringTooLongError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "string of {} bytes is longer than the prefix allows ({} at most)",
            self.length, self.max_length
        )
    }
}

impl std::error::Error for StringTooLongError {}

impl StringSender {
    fn new(transport: Transport, wire: Wire, max_length: usize) -> StringSender {
        StringSender { transport, wire, max_length }
    }

    /// Sends `string` framed, in one write.
    ///
    /// # Errors
    ///
    /// [`StringTooLongError`] if the length prefix cannot say `string`'s length (255
    /// bytes for `Prefix::Int8`, 65,535 for `Int16`, 4 GiB - 1 for `Int32`); nothing is
    /// sent. A netstring can say any length.
    pub fn send_string(&self, string: &[u8]) -> Result<(), StringTooLongError> {
        match self.wire {
            Wire::Prefix(prefix) => {
                let header = prefix.encode(string.len())?;
                self.transport.write_sequence(&[header.as_slice(), string]);
            }
            Wire::Netstring => {
                let mut header = [0u8; 24];
                let n = super::netstring::encode_length(string.len(), &mut header);
                self.transport.write_sequence(&[&header[..n], string, b","]);
            }
        }
        Ok(())
    }

    /// The connection's transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The longest string the receiver accepts.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Stops delivering strings and reading from the connection; strings already
    /// received wait until [`Transport::resume_producing`].
    pub fn pause_producing(&self) {
        self.transport.pause_producing();
    }

    /// True while strings may be delivered: reading is not paused and the connection
    /// is not closing.
    pub(super) fn may_deliver(&self) -> bool {
        !self.transport.is_reading_paused() && !self.transport.is_disconnecting()
    }
}

impl fmt::Debug for StringSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StringSender")
            .field("wire", &self.wire)
            .field("max_length", &self.max_length)
            .finish()
    }
}

/// The receive buffer of a string receiver: received bytes, handled up to `pos`.
#[derive(Debug, Default)]
pub struct Inbox {
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
}

impl Inbox {
    pub(super) fn unparsed(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Drops the handled prefix.
    pub(super) fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}
