//! [`Exchange`]: one request from its start to its access-log line, and when its log
//! context may finish.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use crate::logcontext::{LoggingContext, PreserveLoggingContext};
use crate::reactor::Address;
use crate::web::request::Head;
use crate::web::response::Response;
use crate::web::server::SiteShared;
use crate::Deferred;

/// One request from the moment it starts to its access-log line.
pub(crate) struct Exchange {
    pub(super) head: Option<Rc<Head>>,
    pub(super) ctx: LoggingContext,
    /// Reactor time when the request started (for the timeout and the wall time).
    pub(super) started_at: Duration,
    pub(super) site: Rc<SiteShared>,
    pub(super) cancellable: bool,
    pub(super) head_only: bool,
    pub(super) keep_alive: Cell<bool>,
    pub(super) deferred: RefCell<Option<Deferred<Response>>>,
    pub(super) handler_done: Cell<bool>,
    pub(super) response_done: Cell<bool>,
    pub(super) client_gone: Cell<bool>,
    pub(super) timed_out: Cell<bool>,
    pub(super) shutdown_cancel: Cell<bool>,
    pub(super) cancelled: Cell<bool>,
    pub(super) streaming: Cell<bool>,
    pub(super) status: Cell<u16>,
    pub(super) bytes: Cell<u64>,
    pub(super) logged: Cell<bool>,
    pub(super) access_log: bool,
    pub(super) peer: Address,
}

impl Exchange {
    /// True once the client has gone.
    pub(crate) fn client_gone(&self) -> bool {
        self.client_gone.get()
    }

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

    pub(super) fn ctx_log_error(&self, message: &str) {
        let _ctx = PreserveLoggingContext::new(self.ctx.clone());
        log::error!(target: "weft::web", "{message}");
    }

    pub(super) fn ctx_log_debug(&self, message: &str) {
        let _ctx = PreserveLoggingContext::new(self.ctx.clone());
        log::debug!(target: "weft::web", "{message}");
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
