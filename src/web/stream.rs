//! Streamed response bodies: the [`BodyWriter`] a [`Response::stream`] producer writes
//! through, with the transport's back-pressure.
//!
//! [`Response::stream`]: super::Response::stream

use std::cell::Cell;
use std::fmt;
use std::rc::{Rc, Weak};

use super::channel::{Channel, Exchange};
use crate::reactor::PushProducer;

/// Writes a streamed response body (Twisted's `request.write` / `request.finish`).
///
/// Register a [`PushProducer`] with [`register_producer`](Self::register_producer) to be
/// paused while the connection's write buffer is full and resumed when it drains; a
/// producer that writes only when resumed keeps memory bounded however slow the client
/// reads. Writes after the client has gone are dropped ([`is_closed`](Self::is_closed)
/// says so, and the producer's `stop_producing` is called).
///
/// # Drop
///
/// Dropping every clone of the writer without calling [`finish`](Self::finish) aborts
/// the connection: the client cannot be told the body is complete.
#[derive(Clone)]
pub struct BodyWriter {
    state: Rc<StreamState>,
}

pub(crate) struct StreamState {
    channel: Weak<Channel>,
    exchange: Rc<Exchange>,
    framing: StreamFraming,
    /// Bytes still allowed for a length-delimited body.
    remaining: Cell<u64>,
    finished: Cell<bool>,
}

/// How a streamed body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamFraming {
    Chunked,
    Length,
    UntilClose,
}

impl BodyWriter {
    pub(crate) fn new(
        channel: Weak<Channel>,
        exchange: Rc<Exchange>,
        framing: StreamFraming,
        length: u64,
    ) -> BodyWriter {
        BodyWriter {
            state: Rc::new(StreamState {
                channel,
                exchange,
                framing,
                remaining: Cell::new(length),
                finished: Cell::new(false),
            }),
        }
    }

    /// Writes `data` as the next part of the body. Ignored once finished or after the
    /// client has gone. On a length-delimited body, bytes past the declared length are
    /// dropped and logged.
    pub fn write(&self, data: &[u8]) {
        let s = &self.state;
        if data.is_empty() || s.finished.get() || self.is_closed() {
            return;
        }
        let Some(ch) = s.channel.upgrade() else { return };
        let data = if s.framing == StreamFraming::Length {
            let allowed = s.remaining.get().min(data.len() as u64) as usize;
            if allowed < data.len() {
                log::error!(target: "weft::web", "streamed body longer than its Content-Length; extra bytes dropped");
            }
            s.remaining.set(s.remaining.get() - allowed as u64);
            &data[..allowed]
        } else {
            data
        };
        ch.stream_write(&s.exchange, data, s.framing == StreamFraming::Chunked);
    }

    /// Ends the body; the connection goes on to the next request (or closes, for a
    /// body delimited by the connection's close). Calling it again does nothing.
    pub fn finish(&self) {
        let s = &self.state;
        if s.finished.replace(true) {
            return;
        }
        if let Some(ch) = s.channel.upgrade() {
            let short = s.framing == StreamFraming::Length && s.remaining.get() > 0;
            ch.stream_finish(&s.exchange, s.framing, short);
        }
    }

    /// Registers `producer`: it is paused while the connection's write buffer is over
    /// its high-water mark and resumed once it drained (Twisted's
    /// `registerProducer(producer, True)`); `stop_producing` is called if the client
    /// goes away.
    pub fn register_producer(&self, producer: Rc<dyn PushProducer>) {
        if let Some(ch) = self.state.channel.upgrade() {
            ch.stream_register_producer(&self.state.exchange, producer);
        }
    }

    /// Removes the producer.
    pub fn unregister_producer(&self) {
        if let Some(ch) = self.state.channel.upgrade() {
            ch.stream_unregister_producer(&self.state.exchange);
        }
    }

    /// True once the client has gone (or the response was abandoned): stop producing.
    pub fn is_closed(&self) -> bool {
        let ex = &self.state.exchange;
        ex.client_gone() || self.state.channel.upgrade().is_none_or_lost()
    }
}

/// `Option<Rc<Channel>>`: gone, or lost.
trait GoneOrLost {
    fn is_none_or_lost(&self) -> bool;
}

impl GoneOrLost for Option<Rc<Channel>> {
    fn is_none_or_lost(&self) -> bool {
        self.as_ref().map_or(true, |c| c.is_lost())
    }
}

impl Drop for StreamState {
    fn drop(&mut self) {
        if !self.finished.get() {
            if let Some(ch) = self.channel.upgrade() {
                ch.stream_abandoned(&self.exchange);
            }
        }
    }
}

impl fmt::Debug for BodyWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyWriter")
            .field("finished", &self.state.finished.get())
            .field("closed", &self.is_closed())
            .finish()
    }
}
