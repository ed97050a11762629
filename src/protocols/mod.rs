//! Framing protocols over stream transports (Twisted's `twisted.protocols.basic`): the
//! byte stream cut into lines ([`LineReceiver`]), into length-prefixed strings
//! ([`IntNStringReceiver`]), or into netstrings ([`NetstringReceiver`]).
//!
//! Each receiver is a [`Protocol`](crate::reactor::Protocol) wrapping a small trait the
//! application implements: [`LineProtocol`] gets whole lines, [`StringProtocol`] whole
//! strings, however the bytes were split or coalesced by the network. Each takes a
//! maximum length, and input over it is refused with a clear error that closes the
//! connection (it reaches `connection_lost`); what is still buffered when the connection
//! closes is handed to the protocol (`unparsed_at_close`) rather than dropped silently.
//!
//! ```
//! use weft::protocols::{LineProtocol, LineReceiver, Lines};
//! use weft::reactor::{Address, ListenOptions, Reactor};
//!
//! /// Answers each line with its length.
//! struct Count;
//!
//! impl LineProtocol for Count {
//!     fn line_received(&mut self, line: &[u8], lines: &mut Lines) {
//!         lines.send_line(line.len().to_string().as_bytes());
//!     }
//! }
//!
//! # fn main() -> std::io::Result<()> {
//! let reactor = Reactor::new()?;
//! let addr = "127.0.0.1:0".parse().unwrap();
//! let port = reactor.listen_tcp(addr, |_: &Address| LineReceiver::new(Count), ListenOptions::new())?;
//! # port.stop_listening();
//! # Ok(())
//! # }
//! ```
//!
//! The receivers can be driven without sockets, by handing them a
//! [`MemoryTransport`](crate::reactor::MemoryTransport)'s transport and calling their
//! `Protocol` methods.

mod int_n;
mod lines;
mod netstring;
mod strings;

pub use int_n::{IntN, IntNStringReceiver, LengthLimitExceededError, Prefix};
pub use lines::{LineProtocol, LineReceiver, LineSender, LineTooLongError, Lines};
pub use netstring::{Netstring, NetstringParseError, NetstringReceiver};
pub use strings::{Framer, StringProtocol, StringReceiver, StringSender, StringTooLongError};
