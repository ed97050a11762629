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

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};
use std::time::Duration;

use super::parse::{parse_head, BodyReader, Framing, HeadParse, ParsedHead};
use super::request::{Head, Request};
use super::response::{self, push_decimal, push_hex, BodyRepr, Response};
use super::router::{Lookup, ReplyRepr};
use super::server::{HttpTransport, SiteShared};
use super::stream::{BodyWriter, StreamFraming};
use crate::deferred::Next;
use crate::logcontext::{LoggingContext, PreserveLoggingContext};
use crate::reactor::{Address, DelayedCall, PushProducer, ReactorTime};
use crate::{CancelledError, Deferred, Failure, TimeoutError};

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
    /// When body bytes last arrived.
    body_since: Cell<Duration>,
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
    Refuse(u16, &'static str),
}

/// One request from the moment it starts to its access-log line.
pub(crate) struct Exchange {
    head: Option<Rc<Head>>,
    ctx: LoggingContext,
    /// Reactor time when the request started (for the timeout and the wall time).
    started_at: Duration,
    site: Rc<SiteShared>,
    cancellable: bool,
    head_only: bool,
    keep_alive: Cell<bool>,
    deferred: RefCell<Option<Deferred<Response>>>,
    handler_done: Cell<bool>,
    response_done: Cell<bool>,
    pub(crate) client_gone: Cell<bool>,
    timed_out: Cell<bool>,
    shutdown_cancel: Cell<bool>,
    cancelled: Cell<bool>,
    streaming: Cell<bool>,
    status: Cell<u16>,
    bytes: Cell<u64>,
    logged: Cell<bool>,
    access_log: bool,
    peer: Address,
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
            body_since: Cell::new(now),
            now: Cell::new(now),
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
                    }
                    match parse_head(&buf[pos..], &limits) {
                        HeadParse::Partial => break,
                        HeadParse::Error(r) => {
                            reader = Reader::Stopped;
                            self.enqueue(Queued::Refuse(r.status, r.reason));
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
                        reader = Reader::Stopped;
                        self.enqueue(Queued::Refuse(r.status, r.reason));
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
                self.enqueue(Queued::Refuse(status, reason));
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

    // ---- running a request ----

    fn dispatch(&self, q: Queued) {
        match q {
            Queued::Refuse(status, reason) => {
                let ex = self.exchange(None, false, false);
                ex.keep_alive.set(false);
                *self.current.borrow_mut() = Some(ex.clone());
                ex.handler_done.set(true);
                self.respond(&ex, Response::error(status, reason));
            }
            Queued::Request(p, body) => self.start_request(p, body),
        }
    }

    fn exchange(&self, head: Option<Rc<Head>>, cancellable: bool, head_only: bool) -> Rc<Exchange> {
        let n = NEXT_REQUEST.with(|c| {
            let n = c.get();
            c.set(n + 1);
            n
        });
        let name = request_name(head.as_ref().map_or("-", |h| h.method.as_str()), n);
        Rc::new(Exchange {
            head,
            ctx: LoggingContext::new(name),
            started_at: self.now.get(),
            site: self.site.clone(),
            cancellable,
            head_only,
            keep_alive: Cell::new(true),
            deferred: RefCell::new(None),
            handler_done: Cell::new(false),
            response_done: Cell::new(false),
            client_gone: Cell::new(false),
            timed_out: Cell::new(false),
            shutdown_cancel: Cell::new(false),
            cancelled: Cell::new(false),
            streaming: Cell::new(false),
            status: Cell::new(0),
            bytes: Cell::new(0),
            logged: Cell::new(false),
            access_log: self.site.config.access_log,
            peer: self.peer.clone(),
        })
    }

    fn start_request(&self, p: ParsedHead, body: Vec<u8>) {
        let head = p.head;
        let head_only = head.method == super::Method::Head;
        let lookup = if head.method == super::Method::Options && head.target() == "*" {
            None
        } else {
            Some(self.site.router.lookup(&head))
        };
        let (handler, params, lookup) = match lookup {
            Some(Lookup::Found { handler, params }) => (Some(handler), params, None),
            None => (None, Default::default(), None),
            other => (None, Default::default(), other),
        };
        let cancellable = handler.as_ref().is_some_and(|h| h.is_cancellable());
        let ex = self.exchange(Some(head.clone()), cancellable, head_only);
        ex.keep_alive.set(p.keep_alive);
        *self.current.borrow_mut() = Some(ex.clone());
        let Some(handler) = handler else {
            ex.handler_done.set(true);
            let response = match &lookup {
                None => Response::new(200).header("Allow", "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"),
                Some(Lookup::MethodNotAllowed(allow)) => {
                    Response::error(405, "").header("Allow", allow.clone())
                }
                Some(other) => {
                    let (status, reason) = refusal(other);
                    Response::error(status, reason)
                }
            };
            self.respond(&ex, response);
            return;
        };
        let request = Request { head, body, params, context: ex.ctx.clone(), peer: self.peer.clone() };
        let reply = {
            let _ctx = PreserveLoggingContext::new(ex.ctx.clone());
            catch_unwind(AssertUnwindSafe(|| handler.call(request)))
        };
        match reply {
            Ok(super::Reply(ReplyRepr::Ready(response))) => {
                ex.handler_done.set(true);
                self.respond(&ex, response);
            }
            Ok(super::Reply(ReplyRepr::Later(d))) => {
                *ex.deferred.borrow_mut() = Some(d.clone());
                let (weak, ex2) = (self.me.clone(), ex.clone());
                // The server's own step runs in the connection's context: writing the
                // response, closing and starting the next request are not the request's
                // work, and may happen after its context has finished.
                let _ctx = PreserveLoggingContext::new(self.ctx.clone());
                d.add_both(move |r: Result<Response, Failure>| -> Next<Response> {
                    handler_done(&weak, &ex2, r);
                    Next::Consumed
                });
                if !ex.handler_done.get() {
                    self.arm_timer();
                }
            }
            Err(panic) => {
                let failure = Failure::from_panic(panic);
                ex.ctx_log_error(&format!("request handler panicked: {failure}"));
                ex.handler_done.set(true);
                self.respond(&ex, Response::error(500, ""));
            }
        }
    }

    /// Writes `response` for `ex`, the current exchange.
    fn respond(&self, ex: &Rc<Exchange>, response: Response) {
        let status = response.status;
        let version11 = ex.head.as_ref().map_or(true, |h| h.version == super::Version::Http11);
        let shutting_down_last = self.shutting_down.get() && self.queue.borrow().is_empty();
        let mut close =
            !ex.keep_alive.get() || response.wants_close() || self.closing.get() || shutting_down_last;
        let no_body = status < 200 || status == 204 || status == 304;
        let Response { headers, body, .. } = response;
        let response_head =
            Response { status, headers, body: super::Body(BodyRepr::Bytes(Default::default())) };
        let (framing, stream) = match body.0 {
            _ if no_body => (response::Framing::NoBody, None),
            BodyRepr::Bytes(b) => (response::Framing::Length(b.len() as u64), Some(Ok(b))),
            BodyRepr::Stream(f) => {
                let declared = response_head
                    .header_value("content-length")
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                match declared {
                    Some(n) => (response::Framing::Length(n), Some(Err((f, StreamFraming::Length, n)))),
                    None if version11 => {
                        (response::Framing::Chunked, Some(Err((f, StreamFraming::Chunked, 0))))
                    }
                    None => {
                        close = true;
                        (response::Framing::UntilClose, Some(Err((f, StreamFraming::UntilClose, 0))))
                    }
                }
            }
        };
        let connection = if close {
            Some("close")
        } else if !version11 {
            Some("keep-alive")
        } else {
            None
        };
        ex.status.set(status);
        ex.keep_alive.set(!close);
        if close {
            self.closing.set(true);
        }
        {
            let mut out = self.out.borrow_mut();
            let date = self.site.date_line(self.now.get());
            response::write_head(&mut out, &response_head, framing, connection, &date);
            if let (Some(Ok(bytes)), false) = (&stream, ex.head_only) {
                out.extend_from_slice(bytes);
                ex.bytes.set(bytes.len() as u64);
            }
        }
        match stream {
            Some(Err((produce, sf, length))) if !ex.head_only => {
                ex.streaming.set(true);
                self.flush_out();
                let writer = BodyWriter::new(self.me.clone(), ex.clone(), sf, length);
                let _ctx = PreserveLoggingContext::new(ex.ctx.clone());
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| produce(writer))) {
                    let failure = Failure::from_panic(panic);
                    ex.ctx_log_error(&format!("response body producer panicked: {failure}"));
                }
            }
            _ => {
                if !self.batching.get() {
                    self.flush_out();
                }
                self.end_response(ex);
            }
        }
    }

    /// The response of `ex` is written: log it, then go on to the next request or close.
    fn end_response(&self, ex: &Rc<Exchange>) {
        ex.response_done.set(true);
        let was_current = {
            let mut cur = self.current.borrow_mut();
            let same = cur.as_ref().is_some_and(|c| Rc::ptr_eq(c, ex));
            if same {
                *cur = None;
            }
            same
        };
        ex.try_finish();
        if !was_current {
            return;
        }
        if !ex.keep_alive.get() {
            self.close_now_gracefully();
        } else {
            self.advance();
        }
    }

    /// Stops reading and closes once the written responses have drained.
    fn close_now_gracefully(&self) {
        self.closing.set(true);
        self.stop_reading();
        let queued = std::mem::take(&mut *self.queue.borrow_mut());
        drop(queued);
        // Whatever was gathered goes out first: a closing transport takes no writes.
        self.flush_out();
        if let Some(t) = self.transport() {
            let _ctx = PreserveLoggingContext::new(self.ctx.clone());
            t.lose_connection();
        }
    }

    // ---- streamed bodies (called by BodyWriter) ----

    pub(crate) fn stream_write(&self, ex: &Rc<Exchange>, data: &[u8], chunked: bool) {
        if self.lost.get() || !self.is_current(ex) {
            return;
        }
        {
            let mut out = self.out.borrow_mut();
            if chunked {
                push_hex(&mut out, data.len() as u64);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(data);
            }
        }
        ex.bytes.set(ex.bytes.get() + data.len() as u64);
        self.flush_out();
    }

    pub(crate) fn stream_finish(&self, ex: &Rc<Exchange>, framing: StreamFraming, short: bool) {
        self.tick();
        if self.lost.get() || !self.is_current(ex) {
            return;
        }
        if let Some(t) = self.transport() {
            t.unregister_producer();
        }
        if short {
            log::error!(target: "weft::web", "streamed body shorter than its Content-Length: closing the connection");
            ex.keep_alive.set(false);
            self.abort();
            return;
        }
        match framing {
            StreamFraming::Chunked => self.write(b"0\r\n\r\n"),
            StreamFraming::UntilClose => ex.keep_alive.set(false),
            StreamFraming::Length => {}
        }
        self.end_response(ex);
    }

    pub(crate) fn stream_register_producer(&self, ex: &Rc<Exchange>, producer: Rc<dyn PushProducer>) {
        if !self.lost.get() && self.is_current(ex) {
            if let Some(t) = self.transport() {
                t.register_producer(producer);
            }
        } else {
            producer.stop_producing();
        }
    }

    pub(crate) fn stream_unregister_producer(&self, ex: &Rc<Exchange>) {
        if !self.lost.get() && self.is_current(ex) {
            if let Some(t) = self.transport() {
                t.unregister_producer();
            }
        }
    }

    pub(crate) fn stream_abandoned(&self, ex: &Rc<Exchange>) {
        if self.lost.get() || !self.is_current(ex) {
            return;
        }
        log::error!(target: "weft::web", "a streamed response body was dropped unfinished: aborting the connection");
        ex.keep_alive.set(false);
        self.abort();
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

    // ---- timers ----

    /// When the connection's timer must next look at it.
    fn deadline(&self) -> Option<Duration> {
        if self.lost.get() {
            return None;
        }
        let config = &self.site.config;
        if let Some(ex) = self.current.borrow().as_ref() {
            return match config.request_timeout {
                Some(t) if !ex.handler_done.get() => Some(ex.started_at + t),
                _ => None,
            };
        }
        match &*self.reader.borrow() {
            Reader::Body(_) => Some(self.body_since.get() + config.header_timeout),
            Reader::Head => match self.head_since.get() {
                Some(t) => Some(t + config.header_timeout),
                None if self.queue.borrow().is_empty() => Some(self.idle_since.get() + config.idle_timeout),
                None => None,
            },
            Reader::AwaitTurn(_) | Reader::Stopped => None,
        }
    }

    /// Makes sure the timer fires no later than the deadline (it may fire earlier and
    /// look again: moving a deadline later costs nothing).
    fn arm_timer(&self) {
        let Some(deadline) = self.deadline() else { return };
        let active = self.timer.borrow().as_ref().is_some_and(DelayedCall::is_active);
        if active && self.timer_at.get() <= deadline {
            return;
        }
        let Some(reactor) = self.site.reactor() else { return };
        let delay = deadline.saturating_sub(reactor.now());
        self.timer_at.set(deadline);
        let old = self.timer.borrow_mut().take();
        if let Some(old) = old {
            let _ = old.cancel();
        }
        let weak = self.me.clone();
        let _ctx = PreserveLoggingContext::new(self.ctx.clone());
        let call = reactor.call_later(delay, move || {
            if let Some(ch) = weak.upgrade() {
                ch.on_timer();
            }
        });
        *self.timer.borrow_mut() = Some(call);
    }

    fn on_timer(&self) {
        let _ = self.timer.borrow_mut().take();
        self.timer_at.set(Duration::MAX);
        let Some(deadline) = self.deadline() else { return };
        let now = self.tick();
        if now < deadline {
            self.arm_timer();
            return;
        }
        let current = self.current.borrow().clone();
        if let Some(ex) = current {
            self.request_timed_out(&ex);
        } else if matches!(*self.reader.borrow(), Reader::Head) && self.head_since.get().is_none() {
            log::debug!(target: "weft::web", "closing an idle connection from {:?}", self.peer);
            self.close_now_gracefully();
        } else {
            self.stop_reading();
            self.inbuf.borrow_mut().clear();
            self.enqueue(Queued::Refuse(408, "the request was not received in time"));
        }
        self.arm_timer();
    }

    /// The handler of `ex` ran past the request timeout: cancel it if it may be, and
    /// answer 504 (or close, if the response has begun).
    fn request_timed_out(&self, ex: &Rc<Exchange>) {
        ex.timed_out.set(true);
        if ex.cancellable && !ex.handler_done.get() {
            let d = ex.deferred.borrow().clone();
            if let Some(d) = d {
                ex.cancelled.set(true);
                d.cancel();
            }
        }
        if !self.is_current(ex) {
            return;
        }
        if ex.streaming.get() {
            ex.keep_alive.set(false);
            self.abort();
            return;
        }
        self.respond(ex, Response::error(504, "the request took too long"));
    }

    // ---- shutdown ----

    /// Stops reading new requests; closes once the ones already read are answered.
    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.set(true);
        if self.lost.get() {
            return;
        }
        self.stop_reading();
        self.inbuf.borrow_mut().clear();
        self.close_when_idle();
    }

    fn close_when_idle(&self) {
        let idle = self.current.borrow().is_none() && self.queue.borrow().is_empty();
        if idle {
            self.close_now_gracefully();
        }
    }

    /// The grace period is over: cancel a cancellable handler (answering 503), and
    /// abort whatever is still going.
    pub(crate) fn force_shutdown(&self) {
        if self.lost.get() {
            return;
        }
        let current = self.current.borrow().clone();
        if let Some(ex) = current {
            if ex.cancellable && !ex.handler_done.get() {
                let d = ex.deferred.borrow().clone();
                if let Some(d) = d {
                    ex.shutdown_cancel.set(true);
                    ex.cancelled.set(true);
                    d.cancel();
                }
            }
        }
        if self.lost.get() {
            return;
        }
        let busy = self.current.borrow().is_some() || !self.queue.borrow().is_empty();
        if busy {
            self.abort();
        } else {
            self.close_now_gracefully();
        }
    }
}

/// The handler of `ex` has completed with `r`.
fn handler_done(channel: &Weak<Channel>, ex: &Rc<Exchange>, r: Result<Response, Failure>) {
    ex.handler_done.set(true);
    let _ = ex.deferred.borrow_mut().take();
    let channel = channel.upgrade();
    if let Some(c) = &channel {
        c.tick();
    }
    let live = channel.as_ref().filter(|c| !c.lost.get() && c.is_current(ex));
    match (live, r) {
        (Some(ch), _) if ex.timed_out.get() => {
            let _ = ch;
        }
        (Some(ch), Ok(response)) => ch.respond(ex, response),
        (Some(ch), Err(f)) => {
            let response = if f.check::<CancelledError>() && ex.shutdown_cancel.get() {
                Response::error(503, "the server is shutting down").header("Connection", "close")
            } else if f.check::<TimeoutError>() {
                Response::error(504, "")
            } else {
                ex.ctx_log_error(&format!("request handler failed: {f}"));
                Response::error(500, "")
            };
            ch.respond(ex, response);
        }
        (None, Ok(response)) => {
            if ex.status.get() == 0 {
                ex.status.set(response.status);
            }
        }
        (None, Err(f)) => {
            if !f.check::<CancelledError>() && !ex.timed_out.get() {
                ex.ctx_log_debug(&format!("request handler failed after its client went away: {f}"));
            }
            if ex.status.get() == 0 && ex.cancelled.get() {
                ex.status.set(499);
            }
        }
    }
    ex.try_finish();
}

/// The status and text for a request no route takes.
fn refusal(lookup: &Lookup) -> (u16, &'static str) {
    match lookup {
        Lookup::Found { .. } => (500, ""),
        Lookup::NotFound => (404, "no such resource"),
        Lookup::MethodNotAllowed(_) => (405, ""),
        Lookup::NotImplemented => (501, "method not implemented"),
        Lookup::BadPath => (400, "invalid percent-encoding in the path"),
    }
}

/// `"{method}-{n}"` without a formatting pass, allocated at its exact size.
fn request_name(method: &str, n: u64) -> String {
    let digits = n.checked_ilog10().unwrap_or(0) as usize + 1;
    let mut name = Vec::with_capacity(method.len() + 1 + digits);
    name.extend_from_slice(method.as_bytes());
    name.push(b'-');
    push_decimal(&mut name, n);
    String::from_utf8(name).unwrap_or_default()
}

impl Exchange {
    /// Logs the access line and finishes the request's context once the handler has
    /// completed and the response is written (or will never be).
    pub(crate) fn try_finish(&self) {
        let done = self.handler_done.get() && (self.response_done.get() || self.client_gone.get());
        if !done || self.logged.replace(true) {
            return;
        }
        if self.access_log && log::log_enabled!(target: "weft::web::access", log::Level::Info) {
            self.log_access();
        }
        self.ctx.finish();
    }

    fn log_access(&self) {
        let stats = self.ctx.stats();
        let wall = self.site.now().saturating_sub(self.started_at);
        let status = match self.status.get() {
            0 if self.cancelled.get() => 499,
            0 => 0,
            s => s,
        };
        let unsent = if self.client_gone.get() && !self.response_done.get()
            || self.client_gone.get() && status == 499
        {
            "!"
        } else {
            ""
        };
        let (method, target, version) = match &self.head {
            Some(h) => (h.method.as_str(), h.target(), h.version.as_str()),
            None => ("-", "-", "-"),
        };
        let peer = match &self.peer {
            Address::Tcp(a) => a.to_string(),
            Address::Unix(p) => p.as_ref().map_or("unix".to_string(), |p| p.display().to_string()),
        };
        let _ctx = PreserveLoggingContext::new(self.ctx.clone());
        log::info!(
            target: "weft::web::access",
            "{peer} - Processed request: {:.3}sec (cpu {:.3}sec) (db {:.3}sec/{:.3}sec/{}) {}B {}{} \"{} {} {}\"",
            secs(wall),
            secs(stats.cpu_time),
            secs(stats.db_sched_duration),
            secs(stats.db_txn_duration),
            stats.db_txn_count,
            self.bytes.get(),
            status,
            unsent,
            method,
            target,
            version,
        );
    }

    fn ctx_log_error(&self, message: &str) {
        let _ctx = PreserveLoggingContext::new(self.ctx.clone());
        log::error!(target: "weft::web", "{message}");
    }

    fn ctx_log_debug(&self, message: &str) {
        let _ctx = PreserveLoggingContext::new(self.ctx.clone());
        log::debug!(target: "weft::web", "{message}");
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
