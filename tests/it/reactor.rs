//! The real loop on 127.0.0.1: timers, call-soon, shutdown triggers, threads, log
//! contexts through the loop, signals. Every real-loop test is bounded by a reactor
//! timer that stops the loop and fails the test.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use weft::reactor::{
    Address, ConnectionAborted, ListenOptions, LoopingCall, Phase, Protocol, Reactor, Transport,
};
use weft::{CancelledError, Deferred, Failure, PanicError};

use crate::support::{graceful, localhost, ms, run_bounded, run_until, secs};

// ---- the real loop ----

#[test]
fn reactor_runs_timers_soon_calls_and_survives_panics() {
    let reactor = Reactor::new().unwrap();
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    reactor.call_when_running(move || l.borrow_mut().push("running"));
    reactor.call_soon(|| panic!("a callback panics"));
    let l = log.clone();
    reactor.call_later(ms(20), move || l.borrow_mut().push("t20"));
    let l = log.clone();
    reactor.call_later(ms(5), move || l.borrow_mut().push("t5"));
    let (l, h) = (log.clone(), reactor.handle());
    reactor.call_later(ms(30), move || {
        l.borrow_mut().push("stop");
        h.stop();
    });
    run_bounded(&reactor, secs(5));
    assert_eq!(*log.borrow(), ["running", "t5", "t20", "stop"]);
}

/// `call_when_running` calls run before any timer, even one already due when the loop
/// starts (Twisted fires its startup event before the loop's first `runUntilCurrent`);
/// before, a timer due at the first turn ran first, so a slow start reordered them.
#[test]
fn call_when_running_runs_before_a_timer_already_due_at_start() {
    let reactor = Reactor::new().unwrap();
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    reactor.call_later(Duration::ZERO, move || l.borrow_mut().push("timer"));
    let l = log.clone();
    reactor.call_when_running(move || l.borrow_mut().push("running"));
    let (l, h) = (log.clone(), reactor.handle());
    reactor.call_later(ms(1), move || {
        l.borrow_mut().push("stop");
        h.stop();
    });
    run_bounded(&reactor, secs(5));
    assert_eq!(*log.borrow(), ["running", "timer", "stop"]);
}

#[test]
fn iterate_and_time_until_next_for_embedding() {
    use std::os::fd::AsRawFd;
    let reactor = Reactor::new().unwrap();
    assert!(reactor.as_raw_fd() >= 0);
    assert_eq!(reactor.time_until_next(), None);
    let fired = Rc::new(Cell::new(false));
    let f = fired.clone();
    reactor.call_later(ms(10), move || f.set(true));
    let wait = reactor.time_until_next().unwrap();
    assert!(wait <= ms(10));
    let start = Instant::now();
    while !fired.get() && start.elapsed() < secs(5) {
        reactor.iterate(reactor.time_until_next()).unwrap();
    }
    assert!(fired.get());
    reactor.call_soon(|| {});
    assert_eq!(reactor.time_until_next(), Some(Duration::ZERO));
}

#[test]
fn stop_waits_for_pending_shutdown_triggers_in_phase_order() {
    let reactor = Reactor::new().unwrap();
    reactor.set_shutdown_timeout(ms(300));
    let log = Rc::new(RefCell::new(Vec::new()));
    let (l, h) = (log.clone(), reactor.handle());
    reactor.add_shutdown_trigger(Phase::Before, move || {
        let d = Deferred::new();
        let (d2, l) = (d.clone(), l.clone());
        h.call_later(ms(20), move || {
            l.borrow_mut().push("before done");
            d2.callback(()).unwrap();
        });
        d
    });
    let l = log.clone();
    reactor.add_shutdown_trigger(Phase::During, move || {
        l.borrow_mut().push("during");
        Deferred::new() // never fires: bounded by the shutdown timeout
    });
    let l = log.clone();
    reactor.add_shutdown_trigger(Phase::After, move || l.borrow_mut().push("after"));
    let h = reactor.handle();
    reactor.call_soon(move || h.stop());
    let start = Instant::now();
    run_bounded(&reactor, secs(5));
    assert_eq!(*log.borrow(), ["before done", "during", "after"]);
    let took = start.elapsed();
    assert!(took >= ms(300) && took < secs(3), "shutdown took {took:?}");
}

#[test]
fn call_from_thread_from_4_threads_keeps_each_threads_order() {
    let reactor = Reactor::new().unwrap();
    let seen: Rc<RefCell<Vec<Vec<u32>>>> = Rc::new(RefCell::new(vec![Vec::new(); 4]));
    let (tx, rx) = mpsc::channel::<(usize, u32)>();
    let mut threads = Vec::new();
    for t in 0..4usize {
        let handle = reactor.thread_handle();
        let tx = tx.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..1000u32 {
                let tx = tx.clone();
                handle.call_from_thread(move || tx.send((t, i)).unwrap()).unwrap();
            }
        }));
    }
    drop(tx);
    // Collect on the reactor thread after each wake-up; stop after 4000 calls.
    let (s, h) = (seen.clone(), reactor.handle());
    let rx = Rc::new(rx);
    let lc = LoopingCall::new(reactor.handle(), move || {
        while let Ok((t, i)) = rx.try_recv() {
            s.borrow_mut()[t].push(i);
        }
        if s.borrow().iter().map(Vec::len).sum::<usize>() == 4000 {
            h.stop();
        }
    });
    let _done = lc.start(ms(1), true);
    run_bounded(&reactor, secs(10));
    for t in threads {
        t.join().unwrap();
    }
    for per_thread in seen.borrow().iter() {
        assert_eq!(*per_thread, (0..1000).collect::<Vec<_>>());
    }
}

#[test]
fn defer_to_thread_results_panics_and_cancel_before_start() {
    let reactor = Reactor::new().unwrap();
    reactor.set_thread_pool_size(1);
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let blocked: Deferred<u32> = reactor.defer_to_thread(move || {
        release_rx.recv().unwrap();
        41
    });
    let second_ran = Arc::new(AtomicBool::new(false));
    let s = second_ran.clone();
    let second: Deferred<u32> = reactor.defer_to_thread(move || {
        s.store(true, Ordering::SeqCst);
        1
    });
    let panics: Deferred<u32> = reactor.defer_to_thread(|| panic!("in a pool thread"));
    second.cancel();
    release_tx.send(()).unwrap();
    let results = Rc::new(RefCell::new(Vec::new()));
    let (r, h) = (results.clone(), reactor.handle());
    let p2 = panics.clone();
    blocked.add_callback(move |v| {
        r.borrow_mut().push(v + 1);
        let h = h.clone();
        p2.add_both(move |res| {
            assert!(res.unwrap_err().check::<PanicError>());
            h.stop();
            0u32
        });
        v
    });
    run_bounded(&reactor, secs(5));
    assert_eq!(*results.borrow(), [42]);
    assert!(!second_ran.load(Ordering::SeqCst));
    assert!(second.take_result().unwrap().unwrap_err().check::<CancelledError>());
}

// ---- log contexts through the real loop ----

type Seen = Rc<RefCell<Vec<(&'static str, Option<String>)>>>;

fn note(seen: &Seen, what: &'static str) {
    seen.borrow_mut().push((what, weft::logcontext::current_request_id()));
}

struct CtxEcho {
    seen: Seen,
    transport: Option<Transport>,
}

impl Protocol for CtxEcho {
    fn connection_made(&mut self, transport: Transport) {
        note(&self.seen, "server connection_made");
        self.transport = Some(transport);
    }
    fn data_received(&mut self, data: &[u8]) {
        note(&self.seen, "server data_received");
        self.transport.as_ref().unwrap().write(data);
    }
}

struct CtxClient {
    seen: Seen,
    /// Frees the pool once the reply is in.
    release: mpsc::Sender<()>,
}

impl Protocol for CtxClient {
    fn connection_made(&mut self, transport: Transport) {
        note(&self.seen, "client connection_made");
        transport.write(b"ping");
    }
    fn data_received(&mut self, _data: &[u8]) {
        note(&self.seen, "client data_received");
        let _ = self.release.send(());
    }
}

/// Reactor callbacks run in the log context current when they were registered, the loop
/// itself in the sentinel, and nothing leaks out of `run()`.
#[test]
fn reactor_callbacks_run_in_the_context_they_were_registered_in() {
    use weft::logcontext::{current_request_id, LoggingContext};
    let reactor = Reactor::new().unwrap();
    let seen: Seen = Rc::new(RefCell::new(Vec::new()));
    let from_thread = Arc::new(std::sync::Mutex::new(Vec::new()));

    let server = LoggingContext::new("server");
    let port = {
        let _in_server = server.enter();
        let s = seen.clone();
        reactor
            .listen_tcp(
                localhost(),
                move |_: &Address| CtxEcho { seen: s.clone(), transport: None },
                ListenOptions::new(),
            )
            .unwrap()
    };
    let addr = match port.local_addr() {
        Address::Tcp(a) => a,
        other => panic!("{other:?}"),
    };

    let request = LoggingContext::new("req-1");
    {
        let _in_request = request.enter();
        let s = seen.clone();
        reactor.call_soon(move || note(&s, "call_soon"));
        let s = seen.clone();
        reactor.call_later(Duration::ZERO, move || note(&s, "call_later"));
        let s = seen.clone();
        // One pool thread, busy until the client has its reply, so the job below starts
        // only after that: the order in which stopping on the reply lost its result.
        reactor.set_thread_pool_size(1);
        let (release, released) = mpsc::channel::<()>();
        let _busy = reactor.defer_to_thread(move || released.recv_timeout(Duration::from_secs(5)).is_ok());
        reactor.defer_to_thread(|| 5u32).add_callback(move |v| {
            note(&s, "defer_to_thread result");
            v
        });
        let s = seen.clone();
        let _connected = reactor.connect_tcp(
            addr,
            move |_: &Address| CtxClient { seen: s.clone(), release: release.clone() },
            secs(5),
        );
        let s = seen.clone();
        reactor.add_shutdown_trigger(Phase::Before, move || note(&s, "shutdown trigger"));
    }
    let threads = reactor.thread_handle();
    let ft = from_thread.clone();
    std::thread::spawn(move || {
        let ft2 = ft.clone();
        threads.call_from_thread(move || ft2.lock().unwrap().push(current_request_id())).unwrap();
    })
    .join()
    .unwrap();

    // Stop once everything the test checks has happened (before, the client's reply
    // stopped the loop, and the pool's result was sometimes not delivered yet).
    let s = seen.clone();
    let all_ran = move || {
        let seen = s.borrow();
        ["call_soon", "call_later", "defer_to_thread result", "client data_received", "server data_received"]
            .iter()
            .all(|what| seen.iter().any(|(w, _)| w == what))
    };
    let ft = from_thread.clone();
    run_until(&reactor, secs(10), move || all_ran() && !ft.lock().unwrap().is_empty());
    assert_eq!(current_request_id(), None, "no context leaks out of run()");

    let seen = seen.borrow();
    let context_of = |what: &str| -> Option<String> {
        seen.iter()
            .find(|(w, _)| *w == what)
            .unwrap_or_else(|| panic!("{what} never ran: {seen:?}"))
            .1
            .clone()
    };
    assert_eq!(context_of("call_soon").as_deref(), Some("req-1"));
    assert_eq!(context_of("call_later").as_deref(), Some("req-1"));
    assert_eq!(context_of("defer_to_thread result").as_deref(), Some("req-1"));
    assert_eq!(context_of("client connection_made").as_deref(), Some("req-1"));
    assert_eq!(context_of("client data_received").as_deref(), Some("req-1"));
    assert_eq!(context_of("server connection_made").as_deref(), Some("server"));
    assert_eq!(context_of("server data_received").as_deref(), Some("server"));
    assert_eq!(context_of("shutdown trigger").as_deref(), Some("req-1"));
    // A thread cannot hand its (single-threaded) context over: calls from threads run in
    // the sentinel.
    assert_eq!(*from_thread.lock().unwrap(), vec![None]);
}

/// Off by default; once asked for, SIGTERM stops the reactor gracefully: the shutdown
/// phases run, every connection is closed with `connection_lost` after the "before"
/// trigger drained, and `run()` returns.
#[test]
fn sigterm_stops_the_reactor_gracefully_when_asked_for() {
    let _signals = crate::support::signals_lock();
    let reactor = Reactor::new().unwrap();
    reactor.stop_on_signals().unwrap();
    reactor.stop_on_signals().unwrap(); // a second call changes nothing
    let scenario = graceful::setup(&reactor);
    scenario.connected.add_callback(|()| {
        signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
    });
    run_bounded(&reactor, secs(10));
    graceful::check(&scenario);
}

// ---- a graceful stop disconnects (issue 9 §1.2) ----

/// `stop()` closes every socket in the "during" phase, after the "before" triggers
/// drained: both ends of a connection and a UDP port hear of it before the "after"
/// phase, and the listening socket is closed. (Before, `run()` returned with every
/// connection open and no `connection_lost`.)
/// As Twisted does with `disconnectAll`, its first "during" trigger.
#[test]
fn stop_closes_every_connection_after_the_before_triggers_drained() {
    let reactor = Reactor::new().unwrap();
    let scenario = graceful::setup(&reactor);
    let h = reactor.handle();
    scenario.connected.add_callback(move |()| h.stop());
    run_bounded(&reactor, secs(10));
    graceful::check(&scenario);
    assert!(reactor.is_stopped() && !reactor.is_running());
}

/// A connection that cannot drain (its peer never reads) holds the "during" phase only
/// up to the shutdown timeout; then it is aborted and its protocol hears
/// `ConnectionAborted`.
#[test]
fn a_connection_that_cannot_drain_is_aborted_at_the_shutdown_timeout() {
    struct Flood(Rc<RefCell<Vec<bool>>>);
    impl Protocol for Flood {
        fn connection_made(&mut self, transport: Transport) {
            // Far more than the socket buffers hold: most of it stays buffered.
            transport.write(&vec![0u8; 32 << 20]);
        }
        fn data_received(&mut self, _data: &[u8]) {}
        fn connection_lost(&mut self, reason: Failure) {
            self.0.borrow_mut().push(reason.check::<ConnectionAborted>());
        }
    }
    let reactor = Reactor::new().unwrap();
    reactor.set_shutdown_timeout(ms(200));
    let lost = Rc::new(RefCell::new(Vec::new()));
    let l = lost.clone();
    let port = reactor.listen_tcp(localhost(), move |_: &Address| Flood(l.clone()), false).unwrap();
    let Address::Tcp(addr) = port.local_addr() else { unreachable!() };
    let _silent_peer = std::net::TcpStream::connect(addr).unwrap();
    // The clock starts before the stop is scheduled, so a preemption in between cannot
    // shorten what it measures.
    let start = Instant::now();
    let h = reactor.handle();
    reactor.call_later(ms(50), move || h.stop());
    run_bounded(&reactor, secs(10));
    assert_eq!(*lost.borrow(), [true], "connection_lost ran once, with ConnectionAborted");
    assert!(start.elapsed() >= ms(200), "the drain was given the shutdown timeout");
}

/// A future woken from another thread (a channel fed by a worker, say): the wake reaches
/// the `ensure_deferred` task through the owning thread's reactor, and the task resumes
/// in its own log context.
#[test]
fn task_woken_from_another_thread_resumes_on_the_reactor() {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll, Waker};

    #[derive(Default)]
    struct Slot {
        value: Option<u32>,
        waker: Option<Waker>,
    }
    struct FromWorker(Arc<Mutex<Slot>>);
    impl Future for FromWorker {
        type Output = u32;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            let mut slot = self.0.lock().unwrap();
            match slot.value.take() {
                Some(v) => Poll::Ready(v),
                None => {
                    slot.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    let reactor = Reactor::new().unwrap();
    let slot = Arc::new(Mutex::new(Slot::default()));
    let reactor_thread = std::thread::current().id();
    let task = {
        // The task resumes in its own log context, not in the sentinel the wake-up from
        // the other thread runs in.
        let _request = weft::logcontext::LoggingContext::new("req-7").enter();
        weft::future::ensure_deferred({
            let slot = slot.clone();
            async move {
                let v = FromWorker(slot).await;
                let context = weft::logcontext::current_request_id();
                Ok::<_, Failure>((v, std::thread::current().id(), context))
            }
        })
    };
    let got = Rc::new(RefCell::new(None));
    let (g, h) = (got.clone(), reactor.handle());
    task.add_callback(move |r| {
        *g.borrow_mut() = Some(r.clone());
        h.stop();
        r
    });
    let worker = std::thread::spawn(move || {
        let waker = {
            let mut s = slot.lock().unwrap();
            s.value = Some(42);
            s.waker.take()
        };
        waker.expect("the task registered a waker").wake();
    });
    worker.join().unwrap();
    run_bounded(&reactor, secs(10));
    assert_eq!(*got.borrow(), Some((42, reactor_thread, Some("req-7".to_string()))));
}

/// The real reactor lists its pending timers too (Twisted's `getDelayedCalls`).
#[test]
fn reactor_lists_its_pending_delayed_calls() {
    let reactor = Reactor::new().unwrap();
    let later = reactor.call_later(secs(60), || ());
    let sooner = reactor.call_later(secs(30), || ());
    assert_eq!(reactor.get_delayed_calls(), [sooner.clone(), later]);
    sooner.cancel().unwrap();
    assert_eq!(reactor.get_delayed_calls().len(), 1);
}
