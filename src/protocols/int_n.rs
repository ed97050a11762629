//! [`IntNStringReceiver`]: strings framed by a big-endian length prefix (Twisted's
//! `Int8StringReceiver`, `Int16StringReceiver`, `Int32StringReceiver`).

use std::fmt;

use super::strings::sealed::Deframe;
use super::strings::{Framer, Inbox, StringProtocol, StringReceiver, StringSender, StringTooLongError, Wire};

/// The width of an [`IntNStringReceiver`]'s length prefix, an unsigned big-endian
/// integer (network byte order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    /// One byte: strings of up to 255 bytes (Twisted's `Int8StringReceiver`).
    Int8,
    /// Two bytes: up to 65,535 (Twisted's `Int16StringReceiver`).
    Int16,
    /// Four bytes: up to 4 GiB - 1 (Twisted's `Int32StringReceiver`).
    Int32,
}

/// A length prefix above the receiver's maximum arrived; see
/// [`StringProtocol::length_limit_exceeded`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LengthLimitExceededError {
    /// The length the prefix announced.
    pub length: usize,
    /// The receiver's maximum string length.
    pub max_length: usize,
}

impl fmt::Display for LengthLimitExceededError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "string of {} bytes announced, above the maximum of {}", self.length, self.max_length)
    }
}

impl std::error::Error for LengthLimitExceededError {}

/// A [`Protocol`](crate::reactor::Protocol) that cuts the stream into length-prefixed strings for a
/// [`StringProtocol`] (Twisted's `IntNStringReceiver`): each string is preceded by its
/// length as a 1-, 2- or 4-byte big-endian integer ([`Prefix`]). Strings of more than
/// 99,999 bytes are refused by default (Twisted's `MAX_LENGTH`); see
/// [`StringReceiver`] for what it shares with [`NetstringReceiver`](super::NetstringReceiver).
///
/// # Examples
///
/// ```
/// use weft::protocols::{IntNStringReceiver, Prefix, StringProtocol, StringSender};
/// use weft::reactor::{MemoryTransport, Protocol};
///
/// struct Upper;
/// impl StringProtocol for Upper {
///     fn string_received(&mut self, s: &[u8], strings: &StringSender) {
///         strings.send_string(&s.to_ascii_uppercase()).unwrap();
///     }
/// }
///
/// let fake = MemoryTransport::new();
/// let mut receiver = IntNStringReceiver::new(Prefix::Int16, Upper);
/// receiver.connection_made(fake.transport());
/// receiver.data_received(b"\x00\x02h");
/// receiver.data_received(b"i");
/// assert_eq!(fake.value(), b"\x00\x02HI");
/// ```
#[doc(alias = "Int32StringReceiver")]
#[doc(alias = "Int16StringReceiver")]
#[doc(alias = "Int8StringReceiver")]
pub type IntNStringReceiver<P> = StringReceiver<IntN, P>;

/// The [`Framer`] of an [`IntNStringReceiver`]: a big-endian length prefix.
#[derive(Debug)]
pub struct IntN {
    prefix: Prefix,
    /// Bytes of an over-long string still to skip (after `length_limit_exceeded` left
    /// the connection open).
    skip: usize,
}

/// The length prefix of one string, ready to send.
pub(super) struct Header {
    bytes: [u8; 4],
    width: usize,
}

impl Header {
    pub(super) fn as_slice(&self) -> &[u8] {
        &self.bytes[4 - self.width..]
    }
}

impl Prefix {
    /// How many bytes the prefix takes.
    pub const fn width(self) -> usize {
        match self {
            Prefix::Int8 => 1,
            Prefix::Int16 => 2,
            Prefix::Int32 => 4,
        }
    }

    /// The longest string the prefix can announce.
    pub const fn max_string(self) -> usize {
        match self {
            Prefix::Int8 => u8::MAX as usize,
            Prefix::Int16 => u16::MAX as usize,
            Prefix::Int32 => u32::MAX as usize,
        }
    }

    pub(super) fn encode(self, length: usize) -> Result<Header, StringTooLongError> {
        if length > self.max_string() {
            return Err(StringTooLongError { length, max_length: self.max_string() });
        }
        Ok(Header { bytes: (length as u32).to_be_bytes(), width: self.width() })
    }

    fn decode(self, bytes: &[u8]) -> usize {
        bytes[..self.width()].iter().fold(0, |n, &b| (n << 8) | b as usize)
    }
}

impl<P: StringProtocol> StringReceiver<IntN, P> {
    /// A receiver for `protocol`, with `prefix`-wide length prefixes and strings of at
    /// most 99,999 bytes.
    pub fn new(prefix: Prefix, protocol: P) -> IntNStringReceiver<P> {
        StringReceiver::with_framer(IntN { prefix, skip: 0 }, protocol)
    }
}

impl Framer for IntN {}

impl Deframe for IntN {
    fn wire(&self) -> Wire {
        Wire::Prefix(self.prefix)
    }

    fn deliver<P: StringProtocol>(
        &mut self,
        protocol: &mut P,
        sender: &StringSender,
        inbox: &mut Inbox,
        max_length: usize,
    ) {
        let width = self.prefix.width();
        loop {
            if self.skip > 0 {
                let n = self.skip.min(inbox.unparsed().len());
                inbox.pos += n;
                self.skip -= n;
                if self.skip > 0 {
                    break;
                }
            }
            let available = inbox.unparsed();
            if available.len() < width || !sender.may_deliver() {
                break;
            }
            let length = self.prefix.decode(available);
            if length > max_length {
                protocol.length_limit_exceeded(length, sender);
                if sender.transport().is_disconnecting() {
                    break;
                }
                inbox.pos += width;
                self.skip = length;
                continue;
            }
            if available.len() - width < length {
                break;
            }
            let start = inbox.pos + width;
            inbox.pos = start + length;
            protocol.string_received(&inbox.buf[start..start + length], sender);
        }
    }
}
