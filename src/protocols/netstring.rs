//! [`NetstringReceiver`]: strings framed as netstrings, `<length>:<bytes>,` (Twisted's
//! `basic.NetstringReceiver`; <http://cr.yp.to/proto/netstrings.txt>).

use std::fmt;

use super::strings::sealed::Deframe;
use super::strings::{Framer, Inbox, StringProtocol, StringReceiver, StringSender, Wire};

/// The input is not a valid netstring (Twisted's `NetstringParseError`); the connection
/// is closed with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetstringParseError {
    /// The netstring does not start with a length: decimal digits, with no leading
    /// zero, followed by `:`.
    MissingLength,
    /// The length is above the receiver's maximum.
    TooLong {
        /// The receiver's maximum string length.
        max_length: usize,
    },
    /// The bytes the length announced are not followed by `,`.
    MissingComma,
}

impl fmt::Display for NetstringParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetstringParseError::MissingLength => {
                f.write_str("invalid netstring: it does not start with a length and a colon")
            }
            NetstringParseError::TooLong { max_length } => {
                write!(f, "invalid netstring: longer than the maximum of {max_length} bytes")
            }
            NetstringParseError::MissingComma => f.write_str("invalid netstring: not terminated by a comma"),
        }
    }
}

impl std::error::Error for NetstringParseError {}

/// A [`Protocol`](crate::reactor::Protocol) that cuts the stream into netstrings for a [`StringProtocol`]
/// (Twisted's `NetstringReceiver`). Strings of more than 99,999 bytes are refused by
/// default (Twisted's `MAX_LENGTH`); see [`StringReceiver`] for what it shares with
/// [`IntNStringReceiver`](super::IntNStringReceiver).
///
/// Invalid input (see [`NetstringParseError`]) closes the connection with that error,
/// after what is already written was sent; nothing more is delivered, and the bytes
/// from the start of the bad netstring on go to
/// [`StringProtocol::unparsed_at_close`].
///
/// # Examples
///
/// ```
/// use weft::protocols::{NetstringReceiver, StringProtocol, StringSender};
/// use weft::reactor::{MemoryTransport, Protocol};
///
/// struct Reverse;
/// impl StringProtocol for Reverse {
///     fn string_received(&mut self, s: &[u8], strings: &StringSender) {
///         let reversed: Vec<u8> = s.iter().rev().copied().collect();
///         strings.send_string(&reversed).unwrap();
///     }
/// }
///
/// let fake = MemoryTransport::new();
/// let mut receiver = NetstringReceiver::new(Reverse);
/// receiver.connection_made(fake.transport());
/// receiver.data_received(b"5:hel");
/// receiver.data_received(b"lo,");
/// assert_eq!(fake.value(), b"5:olleh,");
/// ```
pub type NetstringReceiver<P> = StringReceiver<Netstring, P>;

/// The [`Framer`] of a [`NetstringReceiver`]: `<length>:<bytes>,`.
#[derive(Debug)]
pub struct Netstring {
    state: State,
    broken: bool,
}

/// Where the parser is in the netstring starting at `inbox.pos`.
#[derive(Clone, Copy, Debug)]
enum State {
    /// Reading the length: `digits` digits read so far, making `value`.
    Length { value: usize, digits: usize },
    /// The length was read; the payload starts `offset` bytes after `inbox.pos`.
    Payload { length: usize, offset: usize },
}

const START: State = State::Length { value: 0, digits: 0 };

/// Writes `length` and `:` at the start of `out`; returns how many bytes.
pub(super) fn encode_length(length: usize, out: &mut [u8; 24]) -> usize {
    let mut digits = [0u8; 20];
    let mut n = 0;
    let mut rest = length;
    loop {
        digits[n] = b'0' + (rest % 10) as u8;
        n += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for (i, d) in digits[..n].iter().rev().enumerate() {
        out[i] = *d;
    }
    out[n] = b':';
    n + 1
}

impl<P: StringProtocol> StringReceiver<Netstring, P> {
    /// A receiver for `protocol`, with strings of at most 99,999 bytes.
    pub fn new(protocol: P) -> NetstringReceiver<P> {
        StringReceiver::with_framer(Netstring { state: START, broken: false }, protocol)
    }
}

impl Framer for Netstring {}

impl Deframe for Netstring {
    fn wire(&self) -> Wire {
        Wire::Netstring
    }

    fn deliver<P: StringProtocol>(
        &mut self,
        protocol: &mut P,
        sender: &StringSender,
        inbox: &mut Inbox,
        max_length: usize,
    ) {
        let Netstring { state, broken } = self;
        while !*broken && sender.may_deliver() {
            match *state {
                State::Length { value, digits } => {
                    let Some(&byte) = inbox.unparsed().get(digits) else { break };
                    *state = match byte {
                        b'0'..=b'9' if digits > 0 && value == 0 => {
                            fail(sender, broken, NetstringParseError::MissingLength);
                            break;
                        }
                        b'0'..=b'9' => {
                            let value =
                                value.checked_mul(10).and_then(|v| v.checked_add((byte - b'0') as usize));
                            match value {
                                Some(value) if value <= max_length => {
                                    State::Length { value, digits: digits + 1 }
                                }
                                _ => {
                                    let error = NetstringParseError::TooLong { max_length };
                                    fail(sender, broken, error);
                                    break;
                                }
                            }
                        }
                        b':' if digits > 0 => State::Payload { length: value, offset: digits + 1 },
                        _ => {
                            fail(sender, broken, NetstringParseError::MissingLength);
                            break;
                        }
                    };
                }
                State::Payload { length, offset } => {
                    let whole = offset + length + 1;
                    if inbox.unparsed().len() < whole {
                        break;
                    }
                    let start = inbox.pos + offset;
                    if inbox.buf[start + length] != b',' {
                        fail(sender, broken, NetstringParseError::MissingComma);
                        break;
                    }
                    inbox.pos += whole;
                    *state = START;
                    protocol.string_received(&inbox.buf[start..start + length], sender);
                }
            }
        }
    }
}

/// Closes the connection with `error`; nothing more is parsed.
fn fail(sender: &StringSender, broken: &mut bool, error: NetstringParseError) {
    *broken = true;
    sender.transport().lose_connection_with(error);
}
