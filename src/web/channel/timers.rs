//! The connection's one timer (header, body, idle and request deadlines) and the
//! graceful shutdown.

use std::rc::Rc;
use std::time::Duration;

use super::exchange::Exchange;
use super::{Channel, Queued, Reader};
use crate::logcontext::PreserveLoggingContext;
use crate::reactor::{DelayedCall, ReactorTime};
use crate::web::parse::is_head_request;
use crate::web::response::Response;
use crate::web::Method;

impl Channel {
    // ---- timers ----

    /// When the connection's timer must next look at it.
    pub(super) fn deadline(&self) -> Option<Duration> {
        if self.lost.get() {
            return None;
        }
        if let Some(until) = self.linger_until.get() {
            return Some(until);
        }
        let config = &self.site.config;
        if let Some(ex) = self.current.borrow().as_ref() {
            return match config.request_timeout {
                // A streamed body still being written counts as the request running.
                Some(t) if !ex.handler_done.get() || ex.streaming.get() => Some(ex.started_at + t),
                _ => None,
            };
        }
        match &*self.reader.borrow() {
            Reader::Body(_) => Some(self.body_since.get() + config.header_timeout),
            Reader::Head => match self.head_since.get() {
                Some(t) => Some(t + config.header_timeout),
                // A new connection that has sent nothing yet gets the header timeout (as
                // nginx's client_header_timeout), so connections opened and left silent
                // do not each hold a slot for the whole idle timeout.
                None if self.queue.borrow().is_empty() => {
                    let idle = if self.spoken.get() {
                        config.idle_timeout
                    } else {
                        config.idle_timeout.min(config.header_timeout)
                    };
                    Some(self.idle_since.get() + idle)
                }
                None => None,
            },
            Reader::AwaitTurn(_) | Reader::Stopped => None,
        }
    }

    /// Makes sure the timer fires no later than the deadline (it may fire earlier and
    /// look again: moving a deadline later costs nothing).
    pub(super) fn arm_timer(&self) {
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

    pub(super) fn on_timer(&self) {
        let _ = self.timer.borrow_mut().take();
        self.timer_at.set(Duration::MAX);
        let Some(deadline) = self.deadline() else { return };
        let now = self.tick();
        if now < deadline {
            self.arm_timer();
            return;
        }
        let current = self.current.borrow().clone();
        if self.linger_until.get().is_some() {
            log::debug!(target: "weft::web", "a closing client from {:?} did not close: aborting", self.peer);
            self.abort();
        } else if let Some(ex) = current {
            self.request_timed_out(&ex);
        } else if matches!(*self.reader.borrow(), Reader::Head) && self.head_since.get().is_none() {
            log::debug!(target: "weft::web", "closing an idle connection from {:?}", self.peer);
            self.close_idle();
        } else {
            let head_only = match &*self.reader.borrow() {
                Reader::Body(b) => b.0.head.method == Method::Head,
                _ => is_head_request(&self.inbuf.borrow()),
            };
            self.stop_reading();
            self.inbuf.borrow_mut().clear();
            self.enqueue(Queued::Refuse(408, "the request was not received in time", head_only));
        }
        self.arm_timer();
    }

    /// The handler of `ex` ran past the request timeout: cancel it if it may be, and
    /// answer 504 (or close, if the response has begun).
    pub(super) fn request_timed_out(&self, ex: &Rc<Exchange>) {
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

    pub(super) fn close_when_idle(&self) {
        let idle = self.current.borrow().is_none() && self.queue.borrow().is_empty();
        if idle {
            self.close_idle();
        }
    }

    /// Closes a connection with no request in progress: nothing is owed to the client,
    /// so no lingering (a keep-alive client's pool sees the end when it looks).
    fn close_idle(&self) {
        self.closing.set(true);
        self.stop_reading();
        self.flush_out();
        if let Some(t) = self.transport() {
            let _ctx = PreserveLoggingContext::new(self.ctx.clone());
            t.lose_connection();
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
            self.close_idle();
        }
    }
}
