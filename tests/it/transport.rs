//! Stream transports on 127.0.0.1, the rules around the protocol: the log context weft's
//! own work runs in, what a panicking protocol does to its connection. Each test is
//! bounded by a reactor timer that stops the loop and fails the test.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use weft::logcontext::{current_request_id, LoggingContext, PreserveLoggingContext};
use weft::reactor::{Address, Protocol, Reactor, ReactorHandle, Transport};
use weft::Failure;

use crate::support::{localhost, logs, run_bounded, secs};

/// What the server does with its transport from inside a request context that finishes
/// right after.
#[derive(Clone, Copy, Debug)]
enum InRequest {
    LoseConnection,
    AbortConnection,
    LoseWriteConnection,
    PauseThenResume,
    /// Write to a peer that is gone (a Unix socket whose peer closed: `EPIPE`).
    FailingWrite,
}

/// Each close of a server connection: its reason and the log context it ran in.
type Closes = Rc<RefCell<Vec<(Failure, Option<String>)>>>;

/// Acts on its transport in a request context "GET-1" that finishes at once, as a request
/// handler that closes its connection does.
struct Handler {
    action: InRequest,
    transport: Option<Transport>,
    lost: Closes,
    stop: ReactorHandle,
}

impl Handler {
    fn act(&mut self) {
        let t = self.transport.clone().unwrap();
        let request = LoggingContext::new("GET-1");
        let _in_request = request.enter();
        match self.action {
            InRequest::LoseConnection => t.lose_connection(),
            InRequest::AbortConnection => t.abort_connection(),
            InRequest::LoseWriteConnection => t.lose_write_connection(),
            InRequest::PauseThenResume => {
                t.pause_producing();
                t.resume_producing();
            }
            InRequest::FailingWrite => t.write(b"too late"),
        }
    }
}

impl Protocol for Handler {
    fn connection_made(&mut self, transport: Transport) {
        self.transport = Some(transport);
    }
    fn data_received(&mut self, _data: &[u8]) {
        if !matches!(self.action, InRequest::FailingWrite) {
            self.act();
        }
        if matches!(self.action, InRequest::PauseThenResume) {
            self.transport.as_ref().unwrap().lose_connection();
        }
    }
    fn read_connection_lost(&mut self) -> bool {
        if matches!(self.action, InRequest::FailingWrite) {
            self.act();
            return true;
        }
        false
    }
    fn connection_lost(&mut self, reason: Failure) {
        self.lost.borrow_mut().push((reason, current_request_id()));
        self.stop.stop();
    }
}

/// Sends "go" and, with `close`, closes its end at once.
struct Go {
    close: bool,
}

impl Protocol for Go {
    fn connection_made(&mut self, transport: Transport) {
        transport.write(b"go");
        if self.close {
            transport.lose_connection();
        }
    }
    fn data_received(&mut self, _data: &[u8]) {}
}

#[track_caller]
fn check_no_late_context_use(action: InRequest) {
    logs::capture();
    let reactor = Reactor::new().unwrap();
    let lost = Rc::new(RefCell::new(Vec::new()));
    let server = LoggingContext::new("server");
    let (l, h) = (lost.clone(), reactor.handle());
    let factory = move |_: &Address| Handler { action, transport: None, lost: l.clone(), stop: h.clone() };
    let close = matches!(action, InRequest::FailingWrite);
    let dir;
    let _connecting = if close {
        dir = std::env::temp_dir().join(format!("weft-ctx-{}-{action:?}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let _port = {
            let _in_server = PreserveLoggingContext::new(server.clone());
            reactor.listen_unix(&path, factory).unwrap()
        };
        reactor.connect_unix(&path, move |_: &Address| Go { close }, secs(5))
    } else {
        dir = std::env::temp_dir();
        let port = {
            let _in_server = PreserveLoggingContext::new(server.clone());
            reactor.listen_tcp(localhost(), factory, false).unwrap()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
        reactor.connect_tcp(addr, move |_: &Address| Go { close }, secs(5))
    };
    run_bounded(&reactor, secs(10));
    if close {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let lost = lost.borrow();
    assert_eq!(lost.len(), 1, "{action:?}: the server connection closed once");
    assert_eq!(
        lost[0].1.as_deref(),
        Some("server"),
        "{action:?}: connection_lost runs in the listener's context"
    );
    let late: Vec<_> = logs::records()
        .into_iter()
        .filter(|(level, m)| *level == log::Level::Warn && m.contains("used after it finished"))
        .collect();
    assert!(late.is_empty(), "{action:?}: transport work ran in the finished request context: {late:?}");
}

/// A request handler that closes (or half-closes, aborts, pauses and resumes) its connection
/// from its own log context, which then finishes: the transport's follow-up work runs in
/// the connection's context, so no "used after it finished" warning names the request.
#[test]
fn transport_work_asked_for_in_a_request_context_runs_in_the_connections_context() {
    for action in [
        InRequest::LoseConnection,
        InRequest::AbortConnection,
        InRequest::LoseWriteConnection,
        InRequest::PauseThenResume,
        InRequest::FailingWrite,
    ] {
        check_no_late_context_use(action);
    }
}
