//! One HTTP/1.1 connection on the server side (Twisted's `HTTPChannel`): reads requests,
//! runs them one at a time in order, writes their responses, and watches the
//! connection's timers.
//!
//! # States
//!
//! The reader ([`Reader`]) is in one of:
//! - `Head`: reading a request head (the 408 timer runs from its first byte);
//! - `Body`: reading a body by `Content-Length` or chunked (408 if it stalls);
//! - `AwaitTurn`: an `Expect: 100-continue` head whose `100 Continue` must wait until
//!   the responses before it are written, so parsing stops there;
//! - `Stopped`: no more requests will be read (a rejected request, `Connection: close`,
//!   a graceful shutdown); input is discarded.
//!
//! Complete requests wait in `queue` (at most `max_pipelined`; past that, reading
//! pauses). At most one [`Exchange`] is `current`: its handler runs, then its response
//! is written; only then does the next request start. A request's log context is
//! created when it starts and finished when both its handler has completed and its
//! response has been written or abandoned ([`Exchange::try_finish`]), so a handler that
//! outlives its client never runs in a finished context.
//!
//! No `RefCell` borrow is held while a handler, a callback or a producer runs: state is
//! taken out, used, and put back.
//!
//! This file reads requests; `respond.rs` runs them and writes their responses (whole or
//! streamed); `timers.rs` keeps the connection's one timer and the graceful shutdown;
//! `exchange.rs` is one request's bookkeeping and its access-log line.

mod exchange;
mod respond;
mod timers;

pub(crate) use exchange::Exchange;
use respond::refusal;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::time::Duration;

use super::parse::{is_head_request, parse_head, BodyReader, Framing, HeadParse, ParsedHead};
use super::request::Method;
use super::router::Lookup;
use super::server::{HttpTransport, SiteShared};
use crate::logcontext::{LoggingContext, PreserveLoggingContext};
use crate::reactor::{Address, DelayedCall};
use crate::Failure;

/// How long (at most; no longer than the header timeout) a closing connection keeps
/// reading and dropping what the client still sends before it is aborted; see
/// `close_now_gracefully`.
const LINGER: Duration = Duration::from_secs(2);

thread_local! {
    /// Numbers requests on this thread, for context names like `GET-17`.
    static NEXT_REQUEST: Cell<u64> = const { Cell::new(0) };
}

pub(crate) struct Channel {
    site: Rc<SiteShared>,
    me: Weak<Channel>,
    /// This connection's entry in the site's registry.
    pub(crate) key: Cell<Option<usize>>,
    transport: RefCell<Option<Rc<dyn HttpTransport>>>,
    peer: Address,
    /// The context current when the connection was made: the connection's own work
    /// (timers, closing) runs in it, never in a request's.
    ctx: LoggingContext,
    inbuf: RefCell<Vec<u8>>,
    reader: RefCell<Reader>,
    /// No more requests will be read (the reader is or will be `Stopped`); set from
    /// outside the parse loop too, which checks it when it ends.
    stopped: Cell<bool>,
    queue: RefCell<VecDeque<Queued>>,
    read_paused: Cell<bool>,
    in_feed: Cell<bool>,
    advancing: Cell<bool>,
    current: RefCell<Option<Rc<Exchange>>>,
    out: RefCell<Vec<u8>>,
    batching: Cell<bool>,
    lost: Cell<bool>,
    /// No more requests: close once the current response is written.
    closing: Cell<bool>,
    shutting_down: Cell<bool>,
    timer: RefCell<Option<DelayedCall>>,
    timer_at: Cell<Duration>,
    /// When the connection last became idle (no request, nothing buffered).
    idle_since: Cell<Duration>,
    /// When the first byte of the head being read arrived.
    head_since: Cell<Option<Duration>>,
    /// Some byte of a request has arrived on this connection: until then, it is given
    /// the header timeout rather than the idle timeout to start.
    spoken: Cell<bool>,
    /// When body bytes last arrived.
    body_since: Cell<Duration>,
    /// A request was refused: the client may still be sending its body.
    refused: Cell<bool>,
    /// The last request said it was the last (`Connection: close`, or HTTP/1.0 without
    /// keep-alive).
    client_closes: Cell<bool>,
    /// The client shut its write side and the connection stays half-open to answer
    /// the requests already read ([`ServerConfig::half_close`](crate::web::ServerConfig)).
    read_eof: Cell<bool>,
    /// Closing with only the write side shut, reading and dropping input until then.
    linger_until: Cell<Option<Duration>>,
    /// The reactor's time, read once per event (a read, a handler's completion, a
    /// timer) and used by everything that event does.
    now: Cell<Duration>,
}

enum Reader {
    Head,
    Body(Box<(ParsedHead, BodyReader)>),
    AwaitTurn(ParsedHead),
    Stopped,
}

enum Queued {
    Request(ParsedHead, Vec<u8>),
    /// A refusal's status and reason, and whether the request was a HEAD (its answer
    /// then has no body either).
    Refuse(u16, &'static str, bool),
}

impl Channel {
    pub(crate) fn new(site: Rc<SiteShared>, peer: Address) -> Rc<Channel> {
        let now = site.now();
        Rc::new_cyclic(|me| Channel {
            site,
            me: me.clone(),
            key: Cell::new(None),
            transport: RefCell::new(None),
            peer,
            ctx: crate::logcontext::current_context(),
            inbuf: RefCell::new(Vec::new()),
            reader: RefCell::new(Reader::Head),
            stopped: Cell::new(false),
            queue: RefCell::new(VecDeque::new()),
            read_paused: Cell::new(false),
            in_feed: Cell::new(false),
            advancing: Cell::new(false),
            current: RefCell::new(None),
            out: RefCell::new(Vec::new()),
            batching: Cell::new(false),
            lost: Cell::new(false),
            closing: Cell::new(false),
            shutting_down: Cell::new(false),
            timer: RefCell::new(None),
            timer_at: Cell::new(Duration::MAX),
            idle_since: Cell::new(now),
            head_since: Cell::new(None),
            spoken: Cell::new(false),
            body_since: Cell::new(now),
            now: Cell::new(now),
            refused: Cell::new(false),
            client_closes: Cell::new(false),
            linger_until: Cell::new(None),
            read_eof: Cell::new(false),
        })
    }

    /// Reads the reactor's time for the event being handled.
    fn tick(&self) -> Duration {
        let now = self.site.now();
        self.now.set(now);
        now
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.get()
    }

    fn transport(&self) -> Option<Rc<dyn HttpTransport>> {
        self.transport.borrow().clone()
    }

    // ---- connection events ----

    pub(crate) fn connection_made(&self, transport: Rc<dyn HttpTransport>) {
        *self.transport.borrow_mut() = Some(transport);
        if self.shutting_down.get() {
            self.close_when_idle();
        }
        self.arm_timer();
    }

    pub(crate) fn data_received(&self, data: &[u8]) {
        if self.lost.get() {
            return;
        }
        let now = self.tick();
        if matches!(*self.reader.borrow(), Reader::Body(_)) {
            self.body_since.set(now);
        }
        self.feed(data, now);
        self.arm_timer();
    }

    /// The client shut its write side. Returns true to keep the connection half-open
    /// and answer the requests already read (with `half_close` set and some pending);
    /// false to let it close.
    pub(crate) fn read_eof(&self) -> bool {
        if self.lost.get() || !self.site.config.half_close {
            return false;
        }
        self.tick();
        // Whatever is not a whole request by now never will be.
        self.stop_reading();
        self.inbuf.borrow_mut().clear();
        let busy = self.current.borrow().is_some() || !self.queue.borrow().is_empty();
        if busy {
            self.read_eof.set(true);
        }
        busy
    }

    pub(crate) fn connection_lost(&self, reason: &Failure) {
        if self.lost.replace(true) {
            return;
        }
        let timer = self.timer.borrow_mut().take();
        if let Some(t) = timer {
            let _ = t.cancel();
        }
        self.stop_reading();
        let queued = std::mem::take(&mut *self.queue.borrow_mut());
        drop(queued);
        let current = self.current.borrow_mut().take();
        if let Some(ex) = current {
            ex.client_gone.set(true);
            if !ex.handler_done.get() {
                let d = ex.deferred.borrow().clone();
                match d {
                    Some(d) if ex.cancellable => {
                        log::debug!(target: "weft::web", "client went away ({reason}): cancelling {}", ex.ctx.name());
                        ex.cancelled.set(true);
                        d.cancel();
                    }
                    _ => {
                        log::debug!(target: "weft::web", "client went away ({reason}): {} runs on, its response will be dropped", ex.ctx.name());
                    }
                }
            } else {
                ex.response_done.set(true);
            }
            ex.try_finish();
        }
        let _ = self.transport.borrow_mut().take();
        self.site.unregister(self);
    }

    // ---- reading ----

    /// Parses what it can of the buffered input and `data`; keeps the rest.
    fn feed(&self, data: &[u8], now: Duration) {
        if self.stopped.get() {
            return;
        }
        let outer = !self.batching.replace(true);
        let mut buf = std::mem::take(&mut *self.inbuf.borrow_mut());
        if buf.is_empty() {
            let used = self.process(data, now);
            buf.extend_from_slice(&data[used..]);
        } else {
            buf.extend_from_slice(data);
            let used = self.process(&buf, now);
            buf.drain(..used);
        }
        if self.stopped.get() {
            buf.clear();
        }
        *self.inbuf.borrow_mut() = buf;
        if outer {
            self.batching.set(false);
            self.flush_out();
        }
    }

    /// Reads requests from `buf`, queueing (and starting) each; returns the bytes used.
    fn process(&self, buf: &[u8], now: Duration) -> usize {
        let was_in_feed = self.in_feed.replace(true);
        let limits = self.site.limits;
        let mut pos = 0;
        let mut reader = std::mem::replace(&mut *self.reader.borrow_mut(), Reader::Stopped);
        loop {
            if self.lost.get() {
                reader = Reader::Stopped;
            }
            if self.queue.borrow().len() >= self.site.config.max_pipelined {
                self.pause_reading();
                break;
            }
            match reader {
                Reader::Stopped => break,
                Reader::AwaitTurn(p) => {
                    if self.current.borrow().is_some() || !self.queue.borrow().is_empty() {
                        reader = Reader::AwaitTurn(p);
                        break;
                    }
                    reader = self.start_body(p);
                }
                Reader::Head => {
                    if pos == buf.len() {
                        break;
                    }
                    if self.head_since.get().is_none() {
                        self.head_since.set(Some(now));
                        self.spoken.set(true);
                    }
                    match parse_head(&buf[pos..], &limits) {
                        HeadParse::Partial => break,
                        HeadParse::Error(r) => {
                            reader = Reader::Stopped;
                            self.enqueue(Queued::Refuse(r.status, r.reason, is_head_request(&buf[pos..])));
                        }
                        HeadParse::Complete(p) => {
                            pos += p.consumed;
                            self.head_since.set(None);
                            if p.expect_continue {
                                reader = Reader::AwaitTurn(p);
                            } else if p.framing == Framing::None {
                                self.enqueue(Queued::Request(p, Vec::new()));
                            } else {
                                self.body_since.set(now);
                                let body = BodyReader::new(p.framing, &limits);
                                reader = Reader::Body(Box::new((p, body)));
                            }
                        }
                    }
                }
                Reader::Body(mut b) => match b.1.feed(&buf[pos..]) {
                    Ok(used) => {
                        pos += used;
                        if b.1.is_done() {
                            let (p, body) = *b;
                            self.enqueue(Queued::Request(p, body.into_body()));
                            reader = Reader::Head;
                        } else {
                            reader = Reader::Body(b);
                            break;
                        }
                    }
                    Err(r) => {
                        let head_only = b.0.head.method == Method::Head;
                        reader = Reader::Stopped;
                        self.enqueue(Queued::Refuse(r.status, r.reason, head_only));
                    }
                },
            }
        }
        if self.stopped.get() {
            // Stopped meanwhile (a response asked to close, or a shutdown began).
            reader = Reader::Stopped;
        } else if matches!(reader, Reader::Stopped) {
            self.stopped.set(true);
        }
        *self.reader.borrow_mut() = reader;
        self.in_feed.set(was_in_feed);
        pos
    }

    /// An `Expect: 100-continue` head whose turn has come: refuse it now if it has no
    /// handler (without reading its body, so the connection closes after), else send
    /// `100 Continue` and read the body.
    fn start_body(&self, p: ParsedHead) -> Reader {
        match self.site.router.lookup(&p.head) {
            Lookup::Found { .. } => {
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n");
                let limits = self.site.limits;
                self.body_since.set(self.now.get());
                let body = BodyReader::new(p.framing, &limits);
                Reader::Body(Box::new((p, body)))
            }
            other => {
                let (status, reason) = refusal(&other);
                self.enqueue(Queued::Refuse(status, reason, p.head.method == Method::Head));
                Reader::Stopped
            }
        }
    }

    fn enqueue(&self, q: Queued) {
        self.queue.borrow_mut().push_back(q);
        self.advance();
    }

    /// Starts queued requests while none is current.
    fn advance(&self) {
        if self.advancing.replace(true) {
            return;
        }
        loop {
            if self.lost.get() || self.current.borrow().is_some() {
                break;
            }
            let next = self.queue.borrow_mut().pop_front();
            match next {
                Some(q) => self.dispatch(q),
                None => break,
            }
        }
        self.advancing.set(false);
        if self.in_feed.get() || self.lost.get() || self.current.borrow().is_some() {
            return;
        }
        // Between requests, outside a read: go on with buffered input, then reading.
        let now = self.now.get();
        let resume = !self.inbuf.borrow().is_empty() || matches!(*self.reader.borrow(), Reader::AwaitTurn(_));
        if resume {
            self.feed(&[], now);
        }
        if self.lost.get() || self.current.borrow().is_some() {
            return;
        }
        if self.read_paused.get() && self.queue.borrow().len() < self.site.config.max_pipelined {
            self.read_paused.set(false);
            if let Some(t) = self.transport() {
                let _ctx = PreserveLoggingContext::new(self.ctx.clone());
                t.resume_producing();
            }
        }
        if self.inbuf.borrow().is_empty() {
            self.idle_since.set(now);
        }
        self.arm_timer();
    }

    /// No more requests will be read from this connection.
    fn stop_reading(&self) {
        self.stopped.set(true);
        let old = std::mem::replace(&mut *self.reader.borrow_mut(), Reader::Stopped);
        drop(old);
    }

    fn pause_reading(&self) {
        if !self.read_paused.replace(true) {
            if let Some(t) = self.transport() {
                t.pause_producing();
            }
        }
    }

    /// Closes the connection now, dropping what is buffered.
    fn abort(&self) {
        if let Some(t) = self.transport() {
            let _ctx = PreserveLoggingContext::new(self.ctx.clone());
            t.abort_connection();
        }
    }

    fn is_current(&self, ex: &Rc<Exchange>) -> bool {
        self.current.borrow().as_ref().is_some_and(|c| Rc::ptr_eq(c, ex))
    }

    // ---- writing ----

    fn write(&self, bytes: &[u8]) {
        self.out.borrow_mut().extend_from_slice(bytes);
        if !self.batching.get() {
            self.flush_out();
        }
    }

    /// Writes the gathered output to the transport in one write.
    fn flush_out(&self) {
        loop {
            let out = std::mem::take(&mut *self.out.borrow_mut());
            if out.is_empty() {
                *self.out.borrow_mut() = out;
                return;
            }
            if let Some(t) = self.transport() {
                t.write(&out);
            }
            let mut out = out;
            out.clear();
            let mut slot = self.out.borrow_mut();
            if slot.is_empty() {
                if out.capacity() > 1 << 20 {
                    out.shrink_to(64 * 1024);
                }
                *slot = out;
                return;
            }
            // A producer wrote while the transport ran it: send that too.
        }
    }
}
