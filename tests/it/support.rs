//! Helpers shared by the test modules.

use std::cell::{Cell, RefCell};
use std::error::Error;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use weft::{CancelledError, Deferred, Failure, Reactor};

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

/// Runs `reactor` until `done()` holds, failing the test if `limit` passes first. For
/// tests that wait for several things to happen (a reply and the server's
/// `connection_lost`, a pool result and a socket event): stopping on the condition the
/// test checks, never on one of the events, keeps it independent of scheduling.
/// `done` is checked every millisecond of reactor time (a cheap `LoopingCall`).
#[track_caller]
pub(crate) fn run_until(reactor: &Reactor, limit: Duration, done: impl Fn() -> bool + 'static) {
    let h = reactor.handle();
    let check = weft::reactor::LoopingCall::new(reactor.handle(), move || {
        if done() {
            h.stop();
        }
    });
    let _stopped = check.start(Duration::from_millis(1), false);
    run_bounded(reactor, limit);
    check.stop();
}

thread_local! {
    /// The handle of the reactor this test thread runs, for `call_from_thread` calls
    /// (they must be `Send`, so they cannot carry it; they run on this thread).
    static HOME: RefCell<Option<weft::ReactorHandle>> = const { RefCell::new(None) };
}

/// A reactor whose handle the `call_from_thread` calls of this thread reach with [`home`].
pub(crate) fn home_reactor() -> Reactor {
    let reactor = Reactor::new().unwrap();
    HOME.with(|h| *h.borrow_mut() = Some(reactor.handle()));
    reactor
}

/// The handle [`home_reactor`] left for this thread.
#[track_caller]
pub(crate) fn home() -> weft::ReactorHandle {
    HOME.with(|h| h.borrow().clone().expect("home_reactor() was called on this thread"))
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
            // A record made while the thread's locals are being destroyed (weft may log
            // from a drop then: with debugging on, a leaked context) is not kept: `with`
            // would panic there, and a panic in a thread-local's destructor aborts.
            let _ = RECORDS.try_with(|r| r.borrow_mut().push((record.level(), record.args().to_string())));
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

/// A small seeded generator (xorshift64*) for tests that try many random cases: the
/// same seed gives the same cases, and a failing seed is printed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `data` cut at random points into pieces of 1 to `max_piece` bytes.
    pub(crate) fn split<'a>(&mut self, data: &'a [u8], max_piece: usize) -> Vec<&'a [u8]> {
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let n = (1 + self.below(max_piece)).min(data.len() - at);
            pieces.push(&data[at..at + n]);
            at += n;
        }
        pieces
    }
}

/// Fails with the first record where `got` and `expected` differ (instead of printing
/// both whole), naming the case.
#[track_caller]
pub(crate) fn assert_same_records(got: &[Vec<u8>], expected: &[Vec<u8>], case: &str) {
    if let Some(i) = (0..got.len().max(expected.len())).find(|&i| got.get(i) != expected.get(i)) {
        let show = |r: Option<&Vec<u8>>| r.map(|r| String::from_utf8_lossy(r).into_owned());
        panic!(
            "{case}: record {i} differs: got {:?}, expected {:?} ({} records, {} expected)",
            show(got.get(i)),
            show(expected.get(i)),
            got.len(),
            expected.len()
        );
    }
}

/// Stops the reactor from another thread after `limit` unless the returned sender is
/// dropped first (then the thread ends at once).
pub(crate) fn watchdog(
    reactor: &Reactor,
    limit: Duration,
) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Sender<()>) {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let stop = reactor.thread_handle();
    let t = std::thread::spawn(move || {
        if rx.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            let _ = stop.stop();
        }
    });
    (t, tx)
}

/// Tests that raise SIGINT/SIGTERM hold this lock: every reactor with `stop_on_signals`
/// hears every such signal, so two such tests at once would stop each other.
pub(crate) static SIGNALS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`SIGNALS`], whatever a panicking holder left.
pub(crate) fn signals_lock() -> std::sync::MutexGuard<'static, ()> {
    SIGNALS.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many descriptors this process has open (`/proc/self/fd`, the one `read_dir`
/// opens included, the same at every call).
pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count()
}

const CHILD_ENV: &str = "WEFT_IT_CHILD";

/// Runs the `#[ignore]`d test `name` alone in a child process of this test binary and
/// fails if it fails: for tests that need the process to themselves (counting its open
/// descriptors, say), which the other tests' threads would disturb.
#[track_caller]
pub(crate) fn run_in_child(name: &str) {
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args([name, "--exact", "--ignored", "--test-threads=1", "--nocapture"])
        .env(CHILD_ENV, name)
        .output()
        .expect("start the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child test {name} failed:\n{stdout}\n{stderr}"
    );
    eprint!("{stderr}");
}

/// True in the child process [`run_in_child`] started for the test `name`; the test
/// returns at once otherwise (it is `#[ignore]`d, and only meaningful alone).
pub(crate) fn in_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == name)
}

/// The calling thread, as `/proc/thread-self` names it (`PID/task/TID`), for
/// [`wait_until_asleep`] on another thread.
pub(crate) fn this_thread() -> String {
    let path = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    path.to_string_lossy().into_owned()
}

/// Waits (by looking, not sleeping) until `thread` ([`this_thread`]) is blocked in the
/// kernel, as a host is in `epoll_wait` when idle: so a wake-up measured next is a real
/// one. Fails the test after 10 s.
#[track_caller]
pub(crate) fn wait_until_asleep(thread: &str) {
    let start = std::time::Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{thread}/stat")).expect("the thread's stat");
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        if state == Some('S') {
            return;
        }
        assert!(start.elapsed() < secs(10), "{thread} never went to sleep");
        std::thread::yield_now();
    }
}

/// The smallest, median and largest of some timings, for the figures the embedding
/// tests report (`cargo test -- --nocapture` shows them).
fn spread(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    samples.sort();
    (samples[0], samples[samples.len() / 2], samples[samples.len() - 1])
}

/// How long this thread has waited, runnable, for a CPU since it started (the kernel's
/// `run_delay`, the second field of `/proc/thread-self/schedstat`); zero where the kernel
/// does not say. The part of a wake-up's lateness that belongs to the scheduler, not to
/// the code that asked for the wake-up.
pub(crate) fn run_delay() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// One timer's lateness as a host saw it, and how long of it the host's thread waited
/// for a CPU ([`run_delay`] over the sample).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lateness {
    pub(crate) late: Duration,
    pub(crate) queued: Duration,
}

impl Lateness {
    /// The lateness the host and weft caused: what remains once the time the thread
    /// waited for a CPU is taken off.
    fn own(&self) -> Duration {
        self.late.saturating_sub(self.queued)
    }
}

/// Reports a host's timer lateness and checks it: the best sample within 2 ms of the
/// deadline, none later than 250 ms, once the time the thread waited for a CPU is taken
/// off each (see `embed_epoll::host_timer_lateness` for why).
#[track_caller]
pub(crate) fn check_timer_lateness(host: &str, samples: &[Lateness]) {
    let (best, median, worst) = spread(&mut samples.iter().map(|s| s.late).collect::<Vec<_>>());
    let (own_best, own_median, own_worst) =
        spread(&mut samples.iter().map(Lateness::own).collect::<Vec<_>>());
    eprintln!(
        "{host} host: timer lateness best {best:?}, median {median:?}, worst {worst:?}; \
         without the waits for a CPU best {own_best:?}, median {own_median:?}, worst {own_worst:?}"
    );
    assert!(own_best < ms(2), "best lateness {own_best:?} without the waits for a CPU: {samples:?}");
    assert!(own_worst < ms(250), "worst lateness {own_worst:?} without the waits for a CPU: {samples:?}");
}

/// The least of up to three figures `idle` measures (a host's CPU time over one idle
/// period each), stopping at the first under `bound`. On this VM a thread's CPU clock
/// also counts time its vCPU was taken away while the thread ran, and a loaded suite now
/// and then puts milliseconds of that into one period (5.8 ms once, in CI, where the
/// figure is 0.4-1.1 ms); a host that does not block in its wait spends every period on
/// the CPU, so the least still tells it.
pub(crate) fn least_idle_cpu(bound: Duration, mut idle: impl FnMut() -> Duration) -> Duration {
    let mut least = Duration::MAX;
    for _ in 0..3 {
        least = least.min(idle());
        if least < bound {
            break;
        }
    }
    least
}

/// From another thread, posts `n` calls to `reactor` with `call_from_thread`, each once
/// `host_thread` sleeps (in its wait), each handing `deliver` the time from its post to
/// its run on the reactor: the wake latency.
pub(crate) fn post_while_asleep(
    reactor: &Reactor,
    host_thread: String,
    n: usize,
    deliver: impl Fn(Duration) + Clone + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let to_reactor = reactor.thread_handle();
    std::thread::spawn(move || {
        for _ in 0..n {
            wait_until_asleep(&host_thread);
            let (sent, deliver) = (std::time::Instant::now(), deliver.clone());
            to_reactor.call_from_thread(move || deliver(sent.elapsed())).unwrap();
        }
    })
}

/// Reports a host's wake latency; checks only that it woke in time at all.
#[track_caller]
pub(crate) fn check_wake_latency(host: &str, samples: &mut [Duration]) {
    let (best, median, worst) = spread(samples);
    eprintln!("{host} host: wake latency best {best:?}, median {median:?}, worst {worst:?}");
    assert!(worst < secs(5));
}

/// The graceful-stop scenario (issue 9 §1.2), shared by the `run()`, `iterate()` and
/// SIGTERM tests: a TCP server and a client connected to it on the same reactor, a UDP
/// port, and three shutdown triggers, each noting what happens in `log`. The "before"
/// trigger drains: the server writes `bye` and the phase waits until the client got it.
pub(crate) mod graceful {
    use std::cell::RefCell;
    use std::net::SocketAddr;
    use std::rc::Rc;

    use weft::reactor::{Address, DatagramProtocol, Phase, Protocol, Reactor, Transport};
    use weft::{Deferred, Failure};

    use super::localhost;

    pub(crate) type Log = Rc<RefCell<Vec<String>>>;

    pub(crate) struct Scenario {
        pub(crate) log: Log,
        /// Fires once the client is connected and the server has its connection.
        pub(crate) connected: Deferred<()>,
        /// The server's listening address.
        pub(crate) server: SocketAddr,
    }

    struct Server {
        log: Log,
        transport: Rc<RefCell<Option<Transport>>>,
        connected: Deferred<()>,
    }

    impl Protocol for Server {
        fn connection_made(&mut self, transport: Transport) {
            *self.transport.borrow_mut() = Some(transport);
            let _ = self.connected.callback(());
        }
        fn data_received(&mut self, _data: &[u8]) {}
        fn connection_lost(&mut self, reason: Failure) {
            self.log.borrow_mut().push(format!("server lost: {reason}"));
        }
    }

    struct Client {
        log: Log,
        got_bye: Deferred<()>,
    }

    impl Protocol for Client {
        fn data_received(&mut self, data: &[u8]) {
            if data.windows(3).any(|w| w == b"bye") {
                self.log.borrow_mut().push("client got bye".into());
                let _ = self.got_bye.callback(());
            }
        }
        fn connection_lost(&mut self, reason: Failure) {
            self.log.borrow_mut().push(format!("client lost: {reason}"));
        }
    }

    struct Udp(Log);

    impl DatagramProtocol for Udp {
        fn datagram_received(&mut self, _data: &[u8], _from: SocketAddr) {}
        fn stop_protocol(&mut self) {
            self.0.borrow_mut().push("udp stopped".into());
        }
    }

    pub(crate) fn setup(reactor: &Reactor) -> Scenario {
        let log: Log = Rc::new(RefCell::new(Vec::new()));
        let server_transport = Rc::new(RefCell::new(None::<Transport>));
        let (server_up, got_bye) = (Deferred::<()>::new(), Deferred::<()>::new());
        let (l, t, up) = (log.clone(), server_transport.clone(), server_up.clone());
        let port = reactor
            .listen_tcp(
                localhost(),
                move |_: &Address| Server { log: l.clone(), transport: t.clone(), connected: up.clone() },
                false,
            )
            .unwrap();
        let Address::Tcp(server) = port.local_addr() else { unreachable!() };
        let (l, g) = (log.clone(), got_bye.clone());
        let client_up = reactor
            .connect_tcp(
                server,
                move |_: &Address| Client { log: l.clone(), got_bye: g.clone() },
                super::secs(5),
            )
            .map(|_| ());
        let connected = weft::gather_results(vec![server_up, client_up], false).map(|_| ());
        reactor.listen_udp(localhost(), Udp(log.clone())).unwrap();

        let l = log.clone();
        reactor.add_shutdown_trigger(Phase::Before, move || {
            l.borrow_mut().push("before".into());
            server_transport.borrow().as_ref().expect("the server is connected").write(b"bye");
            got_bye
        });
        let l = log.clone();
        reactor.add_shutdown_trigger(Phase::During, move || l.borrow_mut().push("during".into()));
        let l = log.clone();
        reactor.add_shutdown_trigger(Phase::After, move || l.borrow_mut().push("after".into()));
        Scenario { log, connected, server }
    }

    /// The "before" trigger drained first; then every connection and the UDP port were
    /// closed, each protocol told once, before the "after" phase; the listening socket is
    /// closed.
    #[track_caller]
    pub(crate) fn check(s: &Scenario) {
        let log = s.log.borrow();
        let at = |what: &str| {
            let found: Vec<usize> = (0..log.len()).filter(|&i| log[i].starts_with(what)).collect();
            assert_eq!(found.len(), 1, "expected one {what:?} in {log:?}");
            found[0]
        };
        let (before, bye, after) = (at("before"), at("client got bye"), at("after"));
        assert!(before < bye, "{log:?}");
        for lost in
            ["server lost: connection was closed cleanly", "client lost: connection was closed cleanly"]
        {
            let i = at(lost);
            assert!(bye < i && i < after, "{lost:?} out of order in {log:?}");
        }
        let (during, udp) = (at("during"), at("udp stopped"));
        assert!(bye < during && during < after && udp < after, "{log:?}");
        assert_eq!(log.len(), 7, "{log:?}");
        let refused = std::net::TcpStream::connect(s.server).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}

// ---------------------------------------------------------------------------------------
// Deferred helpers (Twisted trial's `successResultOf` and friends)
// ---------------------------------------------------------------------------------------

/// The error most tests fail with (Twisted's `GenericError`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GenericError(pub(crate) &'static str);

impl fmt::Display for GenericError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "generic error: {}", self.0)
    }
}

impl Error for GenericError {}

/// A shared, ordered record of what ran.
#[derive(Clone, Default)]
pub(crate) struct Trace(Rc<RefCell<Vec<String>>>);

impl Trace {
    pub(crate) fn new() -> Trace {
        Trace::default()
    }

    pub(crate) fn push(&self, event: impl Into<String>) {
        self.0.borrow_mut().push(event.into());
    }

    pub(crate) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.borrow_mut())
    }

    pub(crate) fn len(&self) -> usize {
        self.0.borrow().len()
    }
}

/// Counts how many times it is dropped, to prove captured values are freed.
pub(crate) struct DropCount(pub(crate) Rc<Cell<u32>>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// The finished value of `d`, taken out (Twisted's `successResultOf`).
#[track_caller]
pub(crate) fn success_result_of<T: fmt::Debug>(d: &Deferred<T>) -> T {
    match d.take_result() {
        Some(Ok(v)) => v,
        Some(Err(f)) => panic!("expected a value, got failure {f}"),
        None => panic!("expected a result, deferred has none: {d:?}"),
    }
}

/// The finished failure of `d`, taken out and checked to hold an `E` (Twisted's
/// `failureResultOf`).
#[track_caller]
pub(crate) fn failure_result_of<E: Error + 'static, T: fmt::Debug>(d: &Deferred<T>) -> Failure {
    match d.take_result() {
        Some(Err(f)) => {
            assert!(f.check::<E>(), "expected a {} failure, got {f}", std::any::type_name::<E>());
            f
        }
        Some(Ok(v)) => panic!("expected a failure, got value {v:?}"),
        None => panic!("expected a result, deferred has none: {d:?}"),
    }
}

/// The `CancelledError` inside a failure.
#[track_caller]
pub(crate) fn cancelled(f: &Failure) -> CancelledError {
    f.downcast_ref::<CancelledError>().unwrap_or_else(|| panic!("not a CancelledError: {f}")).clone()
}

/// `d` has no result yet (Twisted's `assertNoResult`).
#[track_caller]
pub(crate) fn assert_no_result<T>(d: &Deferred<T>) {
    assert!(!d.has_result(), "expected no result: {d:?}");
}

/// A canceller that records `name` in `trace`.
pub(crate) fn record(trace: &Trace, name: &'static str) -> impl FnOnce(&CancelledError) + 'static {
    let t = trace.clone();
    move |_| t.push(name)
}

/// Adds to `d` a step that passes its result on and owns a drop counter; returns the
/// counter, which reads 1 once the step is freed (run, or dropped with the chain).
pub(crate) fn count_drop_of_step<T: 'static>(d: &Deferred<T>) -> Rc<Cell<u32>> {
    let freed = Rc::new(Cell::new(0));
    let token = DropCount(freed.clone());
    d.add_both(move |r: Result<T, Failure>| {
        let _keep = &token;
        r
    });
    freed
}

/// Serialises the tests that turn weft's process-wide `set_debugging` on (or depend on it
/// being off); dropping the guard turns it off again.
pub(crate) struct Debugging(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

static DEBUGGING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the debugging switch for this test, set to `on`.
pub(crate) fn debugging(on: bool) -> Debugging {
    let guard = DEBUGGING.lock().unwrap_or_else(|e| e.into_inner());
    weft::set_debugging(on);
    Debugging(guard)
}

impl Drop for Debugging {
    fn drop(&mut self) {
        weft::set_debugging(false);
    }
}
