//! Running a request: starting its handler in its own context, writing its response
//! (whole, or streamed through a `BodyWriter`), and going on to the next one.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use super::exchange::Exchange;
use super::{Channel, Queued, NEXT_REQUEST};
use crate::deferred::Next;
use crate::logcontext::{LoggingContext, PreserveLoggingContext};
use crate::reactor::PushProducer;
use crate::web::parse::ParsedHead;
use crate::web::request::{Head, Request};
use crate::web::response::{self, push_decimal, push_hex, BodyRepr, Response};
use crate::web::router::{Lookup, ReplyRepr};
use crate::web::stream::{BodyWriter, StreamFraming};
use crate::{CancelledError, Failure, TimeoutError};

impl Channel {
    // ---- running a request ----

    pub(super) fn dispatch(&self, q: Queued) {
        match q {
            Queued::Refuse(status, reason, head_only) => {
                self.refused.set(true);
                let ex = self.exchange(None, false, head_only);
                ex.keep_alive.set(false);
                *self.current.borrow_mut() = Some(ex.clone());
                ex.handler_done.set(true);
                self.respond(&ex, Response::error(status, reason));
            }
            Queued::Request(p, body) => self.start_request(p, body),
        }
    }

    pub(super) fn exchange(
        &self,
        head: Option<Rc<Head>>,
        cancellable: bool,
        head_only: bool,
    ) -> Rc<Exchange> {
        let n = NEXT_REQUEST.with(|c| {
            let n = c.get();
            c.set(n + 1);
            n
        });
        let name = request_name(head.as_ref().map_or("-", |h| h.method.as_str()), n);
        Rc::new(Exchange {
            head,
            ctx: LoggingContext::with_parent(name, &self.ctx),
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

    pub(super) fn start_request(&self, p: ParsedHead, body: Vec<u8>) {
        let head = p.head;
        let head_only = head.method == crate::web::Method::Head;
        let lookup = if head.method == crate::web::Method::Options && head.target() == "*" {
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
            let reply = crate::panics::catching(|| handler.call(request));
            if let Ok(crate::web::Reply(ReplyRepr::Later(d))) = &reply {
                // Added in the request's context, so that a handler's completion (a
                // timer, a pool result) runs on into writing the response without two
                // more switches (and clock readings); the server's own scheduling
                // (timers, closing) still switches to the connection's context.
                *ex.deferred.borrow_mut() = Some(d.clone());
                let (weak, ex2) = (self.me.clone(), ex.clone());
                d.add_both(move |r: Result<Response, Failure>| -> Next<Response> {
                    handler_done(&weak, &ex2, r);
                    Next::Consumed
                });
            }
            reply
        };
        match reply {
            Ok(crate::web::Reply(ReplyRepr::Ready(response))) => {
                ex.handler_done.set(true);
                self.respond(&ex, response);
            }
            Ok(crate::web::Reply(ReplyRepr::Later(_))) => {
                if !ex.handler_done.get() {
                    self.arm_timer();
                }
            }
            Err(failure) => {
                ex.ctx_log_error(&format!("request handler panicked: {failure}"));
                ex.handler_done.set(true);
                self.respond(&ex, Response::error(500, ""));
            }
        }
    }

    /// Writes `response` for `ex`, the current exchange.
    pub(super) fn respond(&self, ex: &Rc<Exchange>, response: Response) {
        let response = if response.status < 200 {
            // A 1xx is interim: sent as the answer, it would leave the client waiting
            // for a final response that never comes. As hyper does, answer 500 instead.
            ex.ctx_log_error(&format!(
                "request handler answered with the interim status {}: sending 500",
                response.status
            ));
            Response::error(500, "")
        } else {
            response
        };
        let status = response.status;
        let version11 = ex.head.as_ref().map_or(true, |h| h.version == crate::web::Version::Http11);
        let shutting_down_last =
            (self.shutting_down.get() || self.read_eof.get()) && self.queue.borrow().is_empty();
        let client_keeps_alive = ex.keep_alive.get();
        let mut close =
            !client_keeps_alive || response.wants_close() || self.closing.get() || shutting_down_last;
        let Response { headers, body, .. } = response;
        let response_head =
            Response { status, headers, body: crate::web::Body(BodyRepr::Bytes(Default::default())) };
        // Read only where it matters (304, HEAD, a stream), not for every response.
        let declared = || {
            response_head
                .header_value("content-length")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        // What a body the status or method forbids becomes (RFC 9110 §6.4.1, §8.6): 204
        // has no body and no Content-Length; 205 has none and says so with
        // `Content-Length: 0`; 304 and HEAD have none but keep a Content-Length the
        // handler declared (what a 200 or a GET would send; hyper keeps it too).
        let (framing, stream) = match body.0 {
            _ if status == 204 => (response::Framing::NoBody, None),
            _ if status == 205 => (response::Framing::Length(0), None),
            _ if status == 304 => {
                (declared().map_or(response::Framing::NoBody, response::Framing::Length), None)
            }
            BodyRepr::Bytes(b) => match (ex.head_only && b.is_empty()).then(declared).flatten() {
                Some(n) => (response::Framing::Length(n), None),
                None => (response::Framing::Length(b.len() as u64), Some(Ok(b))),
            },
            BodyRepr::Stream(f) => match declared() {
                Some(n) => (response::Framing::Length(n), Some(Err((f, StreamFraming::Length, n)))),
                None if version11 => (response::Framing::Chunked, Some(Err((f, StreamFraming::Chunked, 0)))),
                None => {
                    close = true;
                    (response::Framing::UntilClose, Some(Err((f, StreamFraming::UntilClose, 0))))
                }
            },
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
        self.client_closes.set(!client_keeps_alive);
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
                if let Err(failure) = crate::panics::catching(|| produce(writer)) {
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
    pub(super) fn end_response(&self, ex: &Rc<Exchange>) {
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
        // After the client's end of input (half_close) or once a graceful shutdown has
        // begun, the last request answered ends the connection, even if its head went
        // out (without `Connection: close`) before.
        let last = (self.read_eof.get() || self.shutting_down.get()) && self.queue.borrow().is_empty();
        if !ex.keep_alive.get() || last {
            self.close_now_gracefully();
        } else {
            self.advance();
        }
    }

    /// Stops reading and closes once the written responses have drained.
    ///
    /// Unless the client itself asked to close and sent nothing more, only the write side
    /// is shut, and what still arrives is read and dropped until the client closes, for
    /// at most [`LINGER`](super::LINGER): closing with unread input would make the kernel
    /// send a reset and drop the end of the response still queued (the "lingering
    /// close" of Apache and nginx).
    pub(super) fn close_now_gracefully(&self) {
        if self.closing.replace(true) && self.linger_until.get().is_some() {
            return;
        }
        let pending = self.refused.get()
            || self.in_feed.get()
            || !self.inbuf.borrow().is_empty()
            || !self.queue.borrow().is_empty()
            || !matches!(*self.reader.borrow(), super::Reader::Head | super::Reader::Stopped);
        // After the client's end of input nothing more can arrive: no need to linger.
        let unread = !self.read_eof.get() && (pending || !self.client_closes.get());
        self.stop_reading();
        let queued = std::mem::take(&mut *self.queue.borrow_mut());
        drop(queued);
        // Whatever was gathered goes out first: a closing transport takes no writes.
        self.flush_out();
        let Some(t) = self.transport() else { return };
        let _ctx = PreserveLoggingContext::new(self.ctx.clone());
        if unread {
            let linger = super::LINGER.min(self.site.config.header_timeout);
            self.linger_until.set(Some(self.now.get() + linger));
            if self.read_paused.replace(false) {
                t.resume_producing();
            }
            t.lose_write_connection();
            drop(_ctx);
            self.arm_timer();
        } else {
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
}

/// The handler of `ex` has completed with `r`.
pub(super) fn handler_done(channel: &Weak<Channel>, ex: &Rc<Exchange>, r: Result<Response, Failure>) {
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
pub(super) fn refusal(lookup: &Lookup) -> (u16, &'static str) {
    match lookup {
        Lookup::Found { .. } => (500, ""),
        Lookup::NotFound => (404, "no such resource"),
        Lookup::MethodNotAllowed(_) => (405, ""),
        Lookup::NotImplemented => (501, "method not implemented"),
        Lookup::BadPath => (400, "invalid percent-encoding in the path"),
    }
}

/// `"{method}-{n}"` without a formatting pass, allocated at its exact size.
pub(super) fn request_name(method: &str, n: u64) -> String {
    let digits = n.checked_ilog10().unwrap_or(0) as usize + 1;
    let mut name = Vec::with_capacity(method.len() + 1 + digits);
    name.extend_from_slice(method.as_bytes());
    name.push(b'-');
    push_decimal(&mut name, n);
    String::from_utf8(name).unwrap_or_default()
}
