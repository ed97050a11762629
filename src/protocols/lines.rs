//! [`LineReceiver`]: a stream cut into lines, with a raw mode (Twisted's
//! `basic.LineReceiver`).

use std::fmt;
use std::rc::Rc;

use crate::reactor::{Protocol, Transport};
use crate::Failure;

/// What an application implements to speak a line protocol; wrap it in a
/// [`LineReceiver`] to get a [`Protocol`].
///
/// Every method gets the [`Lines`] state, which sends lines and switches modes. Methods
/// are called one at a time, on the reactor thread.
pub trait LineProtocol: 'static {
    /// The connection is up; a greeting may be sent, the delimiter or mode chosen.
    fn connection_made(&mut self, lines: &mut Lines) {
        let _ = lines;
    }

    /// A whole line arrived, without its delimiter.
    fn line_received(&mut self, line: &[u8], lines: &mut Lines);

    /// Bytes arrived in raw mode (after [`Lines::set_raw_mode`]): everything received
    /// and not yet parsed, at least one byte. To go back to lines, call
    /// [`Lines::set_line_mode`], handing back the bytes this method did not consume
    /// with [`Lines::set_line_mode_with`].
    ///
    /// The default closes the connection with an error saying that raw data was not
    /// expected: a protocol that switches to raw mode implements this.
    fn raw_data_received(&mut self, data: &[u8], lines: &mut Lines) {
        let what = format!("raw data ({} bytes) for a LineProtocol without raw_data_received", data.len());
        lines.transport().abort_connection_with(Failure::msg(what));
    }

    /// A line longer than the maximum arrived (or so many bytes without a delimiter
    /// that it must be). `data` is everything buffered from the start of that line on
    /// (Twisted's `lineLengthExceeded`): the buffer is empty afterwards.
    ///
    /// The default sends what is already written, then closes the connection with a
    /// [`LineTooLongError`], which `connection_lost` gets. A protocol that tolerates
    /// long lines may instead skip or re-parse part of `data` with
    /// [`Lines::set_line_mode_with`].
    fn line_length_exceeded(&mut self, data: &[u8], lines: &mut Lines) {
        let error = LineTooLongError { length: data.len(), max_length: lines.max_length() };
        lines.transport().lose_connection_with(error);
    }

    /// The connection closed with bytes received but not parsed: an unterminated last
    /// line, or lines left after the protocol closed the connection or paused. Called
    /// just before [`connection_lost`](Self::connection_lost); does nothing by default
    /// (Twisted drops them).
    fn unparsed_at_close(&mut self, data: &[u8]) {
        let _ = data;
    }

    /// The connection is closed; as [`Protocol::connection_lost`].
    fn connection_lost(&mut self, reason: Failure) {
        let _ = reason;
    }
}

/// A [`Protocol`] that cuts the stream into lines for a [`LineProtocol`] (Twisted's
/// `basic.LineReceiver`): `\r\n`-delimited by default, at most 16,384 bytes a line.
///
/// Input is delivered in order however it was split into reads: a line split over many
/// reads is delivered once whole; many lines in one read are delivered one by one. After
/// each line the receiver stops if the protocol paused reading
/// ([`Lines::pause_producing`]; the rest is delivered when reading resumes) or closed
/// the connection (the rest goes to [`LineProtocol::unparsed_at_close`]).
///
/// # Examples
///
/// ```
/// use weft::protocols::{LineProtocol, LineReceiver, Lines};
/// use weft::reactor::{MemoryTransport, Protocol};
///
/// struct Echo;
/// impl LineProtocol for Echo {
///     fn line_received(&mut self, line: &[u8], lines: &mut Lines) {
///         lines.send_line(line);
///     }
/// }
///
/// let fake = MemoryTransport::new();
/// let mut receiver = LineReceiver::new(Echo).with_delimiter(b"\n");
/// receiver.connection_made(fake.transport());
/// receiver.data_received(b"one\ntw");
/// receiver.data_received(b"o\n");
/// assert_eq!(fake.value(), b"one\ntwo\n");
/// ```
pub struct LineReceiver<P> {
    protocol: P,
    delimiter: Rc<[u8]>,
    max_length: usize,
    lines: Option<Lines>,
    /// The line being delivered, copied out of the buffer so that the protocol may
    /// change the buffer (`clear_line_buffer`, `set_line_mode_with`) meanwhile.
    scratch: Vec<u8>,
}

/// The line receiver's state, as its [`LineProtocol`] sees it: the transport, the
/// delimiter, the mode, and the bytes not parsed yet.
pub struct Lines {
    transport: Transport,
    delimiter: Rc<[u8]>,
    max_length: usize,
    line_mode: bool,
    /// Received bytes; those before `pos` are handled.
    buf: Vec<u8>,
    pos: usize,
    /// Where to go on searching for the delimiter: `buf[pos..scanned]` holds none.
    scanned: usize,
}

/// Sends lines on a connection: a cheap clone, for code outside the protocol's methods
/// (a timer, another connection). Keeps the delimiter it was made with.
#[derive(Clone)]
pub struct LineSender {
    transport: Transport,
    delimiter: Rc<[u8]>,
}

/// A line longer than the receiver's maximum arrived; see
/// [`LineProtocol::line_length_exceeded`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineTooLongError {
    /// How many bytes were buffered from the start of the long line on.
    pub length: usize,
    /// The receiver's maximum line length.
    pub max_length: usize,
}

impl fmt::Display for LineTooLongError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line too long: {} bytes with no delimiter within the maximum of {}",
            self.length, self.max_length
        )
    }
}

impl std::error::Error for LineTooLongError {}

/// Twisted's `LineReceiver.MAX_LENGTH`.
const DEFAULT_MAX_LINE: usize = 16_384;

impl<P: LineProtocol> LineReceiver<P> {
    /// A receiver for `protocol`, with the delimiter `\r\n` and lines of at most 16,384
    /// bytes.
    pub fn new(protocol: P) -> LineReceiver<P> {
        LineReceiver {
            protocol,
            delimiter: Rc::from(&b"\r\n"[..]),
            max_length: DEFAULT_MAX_LINE,
            lines: None,
            scratch: Vec::new(),
        }
    }

    /// Uses `delimiter` to end lines (Twisted's `delimiter` attribute).
    ///
    /// # Panics
    ///
    /// If `delimiter` is empty.
    #[track_caller]
    #[must_use = "the receiver is returned, not changed in place"]
    pub fn with_delimiter(mut self, delimiter: &[u8]) -> LineReceiver<P> {
        assert!(!delimiter.is_empty(), "a line delimiter cannot be empty");
        self.delimiter = Rc::from(delimiter);
        self
    }

    /// Accepts lines of at most `max_length` bytes, delimiter not counted (Twisted's
    /// `MAX_LENGTH`).
    #[must_use = "the receiver is returned, not changed in place"]
    pub fn with_max_length(mut self, max_length: usize) -> LineReceiver<P> {
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

    /// Parses what is buffered, delivering lines or raw data until the buffer is used
    /// up, reading is paused, or the connection is closing. A loop, not recursion, so
    /// any number of mode switches runs in constant stack.
    fn deliver(&mut self) {
        let LineReceiver { protocol, lines, scratch, .. } = self;
        let Some(lines) = lines.as_mut() else { return };
        while lines.pos < lines.buf.len()
            && !lines.transport.is_reading_paused()
            && !lines.transport.is_disconnecting()
        {
            if !lines.line_mode {
                let mut data = std::mem::take(&mut lines.buf);
                let start = std::mem::replace(&mut lines.pos, 0);
                lines.scanned = 0;
                protocol.raw_data_received(&data[start..], lines);
                if lines.buf.is_empty() {
                    // Nothing handed back: keep the allocation.
                    data.clear();
                    lines.buf = data;
                }
                continue;
            }
            let dlen = lines.delimiter.len();
            let from = lines.scanned.saturating_sub(dlen - 1).max(lines.pos);
            match find(&lines.buf[from..], &lines.delimiter) {
                Some(i) => {
                    let end = from + i;
                    if end - lines.pos > lines.max_length {
                        let data = lines.clear_line_buffer();
                        protocol.line_length_exceeded(&data, lines);
                        continue;
                    }
                    scratch.clear();
                    scratch.extend_from_slice(&lines.buf[lines.pos..end]);
                    lines.pos = end + dlen;
                    lines.scanned = lines.pos;
                    protocol.line_received(scratch, lines);
                }
                None => {
                    lines.scanned = lines.buf.len();
                    // Past `max_length + len(delimiter)` bytes, no delimiter can end the
                    // line in time (Twisted's test_notQuiteMaximumLineLengthUnfinished).
                    if lines.buf.len() - lines.pos >= lines.max_length + dlen {
                        let data = lines.clear_line_buffer();
                        protocol.line_length_exceeded(&data, lines);
                        continue;
                    }
                    break;
                }
            }
        }
        lines.compact();
    }
}

impl<P: LineProtocol> Protocol for LineReceiver<P> {
    fn connection_made(&mut self, transport: Transport) {
        let mut lines = Lines {
            transport,
            delimiter: self.delimiter.clone(),
            max_length: self.max_length,
            line_mode: true,
            buf: Vec::new(),
            pos: 0,
            scanned: 0,
        };
        self.protocol.connection_made(&mut lines);
        self.lines = Some(lines);
        // `connection_made` may have handed bytes back with `set_line_mode_with`.
        self.deliver();
    }

    /// # Panics
    ///
    /// If called before `connection_made` (the reactor never does).
    #[track_caller]
    fn data_received(&mut self, data: &[u8]) {
        let lines = self.lines.as_mut().expect("LineReceiver: data_received before connection_made");
        lines.buf.extend_from_slice(data);
        self.deliver();
    }

    fn reading_resumed(&mut self) {
        self.deliver();
    }

    fn connection_lost(&mut self, reason: Failure) {
        if let Some(lines) = self.lines.as_mut() {
            if lines.pos < lines.buf.len() {
                let rest = lines.clear_line_buffer();
                self.protocol.unparsed_at_close(&rest);
            }
        }
        self.protocol.connection_lost(reason);
    }
}

impl<P: fmt::Debug> fmt::Debug for LineReceiver<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineReceiver").field("protocol", &self.protocol).field("lines", &self.lines).finish()
    }
}

impl Lines {
    /// The connection's transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Sends `line` and the delimiter, in one write (Twisted's `sendLine`). The line
    /// is sent as it is: a delimiter inside it ends a line early at the peer.
    pub fn send_line(&self, line: &[u8]) {
        self.transport.write_sequence(&[line, &self.delimiter]);
    }

    /// A handle that sends lines from outside the protocol's methods.
    pub fn sender(&self) -> LineSender {
        LineSender { transport: self.transport.clone(), delimiter: self.delimiter.clone() }
    }

    /// From now on, received bytes go to [`LineProtocol::raw_data_received`] instead
    /// of being cut into lines; the bytes after the current line are the first raw
    /// data (Twisted's `setRawMode`).
    pub fn set_raw_mode(&mut self) {
        self.line_mode = false;
    }

    /// From now on, received bytes are cut into lines again (Twisted's `setLineMode`).
    pub fn set_line_mode(&mut self) {
        self.line_mode = true;
    }

    /// As [`set_line_mode`](Self::set_line_mode), and parses `extra` as received
    /// input: the bytes a [`raw_data_received`](LineProtocol::raw_data_received) did
    /// not consume (Twisted's `setLineMode(extra)`). They are parsed before anything
    /// received later, and after anything still buffered.
    pub fn set_line_mode_with(&mut self, extra: &[u8]) {
        self.line_mode = true;
        self.buf.extend_from_slice(extra);
    }

    /// True in line mode, false in raw mode.
    pub fn is_line_mode(&self) -> bool {
        self.line_mode
    }

    /// Removes and returns everything received and not yet parsed (Twisted's
    /// `clearLineBuffer`); called from `line_received`, that is what followed the line.
    pub fn clear_line_buffer(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.buf);
        rest.drain(..std::mem::replace(&mut self.pos, 0));
        self.scanned = 0;
        rest
    }

    /// The delimiter lines end with.
    pub fn delimiter(&self) -> &[u8] {
        &self.delimiter
    }

    /// Changes the delimiter for the lines parsed and sent from now on ([`LineSender`]s
    /// already made keep theirs).
    ///
    /// # Panics
    ///
    /// If `delimiter` is empty.
    #[track_caller]
    pub fn set_delimiter(&mut self, delimiter: &[u8]) {
        assert!(!delimiter.is_empty(), "a line delimiter cannot be empty");
        self.delimiter = Rc::from(delimiter);
        self.scanned = self.pos;
    }

    /// The longest line accepted, delimiter not counted.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Changes the longest line accepted.
    pub fn set_max_length(&mut self, max_length: usize) {
        self.max_length = max_length;
    }

    /// Stops delivering lines and reading from the connection; lines already received
    /// wait. [`Transport::resume_producing`] (on this transport, from anywhere) delivers
    /// them, then reads again (Twisted's `LineReceiver.pauseProducing`).
    pub fn pause_producing(&self) {
        self.transport.pause_producing();
    }

    /// Drops the handled prefix of the buffer.
    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.scanned -= self.pos.min(self.scanned);
            self.pos = 0;
        }
    }
}

impl fmt::Debug for Lines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lines")
            .field("delimiter", &String::from_utf8_lossy(&self.delimiter))
            .field("max_length", &self.max_length)
            .field("line_mode", &self.line_mode)
            .field("buffered", &(self.buf.len() - self.pos))
            .finish()
    }
}

impl LineSender {
    /// Sends `line` and the delimiter; as [`Lines::send_line`].
    pub fn send_line(&self, line: &[u8]) {
        self.transport.write_sequence(&[line, &self.delimiter]);
    }

    /// The connection's transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }
}

impl fmt::Debug for LineSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineSender").field("delimiter", &String::from_utf8_lossy(&self.delimiter)).finish()
    }
}

/// The position of the first `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = hay[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if hay.len() - at < needle.len() {
            return None;
        }
        if &hay[at + 1..at + needle.len()] == rest {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::find;

    #[test]
    fn find_finds_the_first_whole_needle() {
        assert_eq!(find(b"abc\r\n", b"\r\n"), Some(3));
        assert_eq!(find(b"a\rb\r\n", b"\r\n"), Some(3));
        assert_eq!(find(b"abc\r", b"\r\n"), None);
        assert_eq!(find(b"\n", b"\n"), Some(0));
        assert_eq!(find(b"", b"\n"), None);
        assert_eq!(find(b"xxENDxEND", b"END"), Some(2));
    }
}
