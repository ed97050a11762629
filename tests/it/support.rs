//! Helpers shared by the test modules.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use weft::Reactor;

pub(crate) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub(crate) fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

pub(crate) fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Runs `reactor` until stopped, failing the test if `limit` passes first.
#[track_caller]
pub(crate) fn run_bounded(reactor: &Reactor, limit: Duration) {
    let timed_out = Rc::new(Cell::new(false));
    let (t, h) = (timed_out.clone(), reactor.handle());
    let guard = reactor.call_later(limit, move || {
        t.set(true);
        h.stop();
    });
    reactor.run();
    let _ = guard.cancel();
    assert!(!timed_out.get(), "the reactor test did not finish within {limit:?}");
}

/// One capturing logger for the whole test binary (`log` allows one per process).
///
/// It sits behind weft's `ContextLogger`, so each record carries the request id of the
/// log context it was made in, and keeps records per thread: tests run on their own
/// threads and each sees only its own records.
pub(crate) mod logs {
    use std::cell::RefCell;
    use std::sync::Once;

    use weft::logcontext::ContextLogger;

    struct Capture;

    thread_local! {
        static RECORDS: RefCell<Vec<(log::Level, String)>> = const { RefCell::new(Vec::new()) };
    }

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }

        fn log(&self, record: &log::Record<'_>) {
            RECORDS.with(|r| r.borrow_mut().push((record.level(), record.args().to_string())));
        }

        fn flush(&self) {}
    }

    /// Installs the logger (once per binary) and empties this thread's records.
    pub(crate) fn capture() {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| ContextLogger::new(Capture).install(log::LevelFilter::Trace).unwrap());
        RECORDS.with(|r| r.borrow_mut().clear());
    }

    /// This thread's records since the last `capture()`.
    pub(crate) fn records() -> Vec<(log::Level, String)> {
        RECORDS.with(|r| r.borrow().clone())
    }

    /// Runs `f` and returns the messages logged at error level on this thread meanwhile.
    pub(crate) fn errors_during<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
        capture();
        let out = f();
        let errors = RECORDS.with(|r| {
            r.borrow_mut()
                .drain(..)
                .filter(|(level, _)| *level == log::Level::Error)
                .map(|(_, m)| m)
                .collect()
        });
        (out, errors)
    }
}

/// Serves `site` on 127.0.0.1, runs `client` (given the address) on its own thread, and
/// drives the reactor on this thread until the client is done (bounded by `limit`);
/// returns what the client returned. Blocking clients (curl, ureq, raw sockets) never
/// share a thread with the server they talk to.
#[track_caller]
pub(crate) fn with_http_server<R: Send + 'static>(
    reactor: &Reactor,
    site: &weft::web::Site,
    limit: Duration,
    client: impl FnOnce(SocketAddr) -> R + Send + 'static,
) -> R {
    let port = site.listen_tcp(localhost()).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let stop = reactor.thread_handle();
    let thread = std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| client(addr)));
        let _ = stop.stop();
        r
    });
    run_bounded(reactor, limit);
    port.stop_listening();
    match thread.join().unwrap() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A protocol that keeps its transport and a reactor handle (the cycle a real protocol
/// makes), closes at once if told to, counts lost connections in `ends.lost` and stops
/// the reactor when the count reaches `ends.stop_at`. Whatever is in `owned` lives as
/// long as the protocol (a drop counter, say).
pub(crate) struct Closer {
    close_on_connect: bool,
    ends: Ends,
    reactor: weft::ReactorHandle,
    transport: Option<weft::reactor::Transport>,
    _owned: Box<dyn std::any::Any>,
}

/// What the protocols of a test share with it: see [`Closer`].
#[derive(Clone, Default)]
pub(crate) struct Ends {
    pub(crate) lost: Rc<Cell<usize>>,
    pub(crate) stop_at: Rc<Cell<usize>>,
}

impl Closer {
    pub(crate) fn new(
        reactor: &weft::ReactorHandle,
        close_on_connect: bool,
        ends: &Ends,
        owned: Box<dyn std::any::Any>,
    ) -> Closer {
        Closer {
            close_on_connect,
            ends: ends.clone(),
            reactor: reactor.clone(),
            transport: None,
            _owned: owned,
        }
    }
}

impl weft::reactor::Protocol for Closer {
    fn connection_made(&mut self, transport: weft::reactor::Transport) {
        if self.close_on_connect {
            transport.lose_connection();
        }
        self.transport = Some(transport);
    }
    fn data_received(&mut self, _data: &[u8]) {}
    fn connection_lost(&mut self, _reason: weft::Failure) {
        self.ends.lost.set(self.ends.lost.get() + 1);
        if self.ends.lost.get() == self.ends.stop_at.get() {
            self.reactor.stop();
        }
    }
}
