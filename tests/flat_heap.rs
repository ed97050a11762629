//! A long-running process stays flat: making and dropping reactors (with ports, timers
//! and queued calls), connections (closed by either side) and Deferred graphs of every
//! shape in the crate (settled, cancelled, or dropped before they settle), over and
//! over, leaves the heap where it started. The bytes and blocks in use are counted by a
//! counting global allocator (`stats_alloc`), not read from RSS, so one block kept by
//! accident shows.
//!
//! This binary has no test harness (`harness = false`): the allocator counts every
//! allocation in the process, so the checks run one after another on the main thread
//! with nothing else allocating. Each check runs its work once to warm up (thread-locals,
//! queues and slabs reach their working size), takes the bytes in use as the baseline,
//! then runs the work `n` times, sampling the heap after every twentieth of it; every
//! sample must equal the baseline exactly.
//!
//! `cargo test --test flat_heap` runs the quick sizes (a few seconds); `-- --ignored` the
//! full ones (10,000 reactors, 100,000 connections, 1,000,000 Deferred graphs), which
//! take about 25 s in release mode, most of it the connections:
//! `cargo test --release --test flat_heap -- --ignored`.

use std::alloc::System;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use weft::logcontext::{run_in_background, LoggingContext};
use weft::reactor::{Address, DatagramProtocol, ListeningPort, Protocol, Reactor, UdpTransport};
use weft::{
    add_timeout, delay_cancellation, ensure_deferred, gather_results, race, stop_cancellation,
    timeout_deferred, CancelScope, CancelledError, Clock, Deferred, DeferredList, DeferredLock,
    DeferredQueue, DeferredSemaphore, Failure, Linearizer, ListResult, ObservableDeferred, ReactorTime,
    ReadWriteLock, StringError, TimeoutError,
};

/// The integration tests' helpers: `localhost`, `run_bounded` and the `Closer` protocol.
#[allow(dead_code)]
#[path = "it/support.rs"]
mod support;

use support::{localhost, Closer, Ends};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes and blocks in use now, less the Deferreds kept for reuse (a bounded free
/// list, emptied first: see `weft::trim_free_lists`).
fn in_use() -> (usize, usize) {
    weft::trim_free_lists();
    let s = GLOBAL.stats();
    (s.bytes_allocated - s.bytes_deallocated, s.allocations - s.deallocations)
}

/// What one check saw.
struct Flat {
    baseline: (usize, usize),
    samples: Vec<(usize, usize)>,
    elapsed: Duration,
}

/// Runs `one(i)` for `i` in `0..n` after one warm-up call, sampling the heap after every
/// twentieth of the runs (`settle` runs before each sample, to finish work in flight).
fn measure(n: usize, mut one: impl FnMut(usize), mut settle: impl FnMut()) -> Flat {
    let step = (n / 20).max(1);
    let mut samples = Vec::with_capacity(n / step + 1);
    one(0);
    settle();
    let baseline = in_use();
    let start = Instant::now();
    for i in 0..n {
        one(i);
        if (i + 1) % step == 0 || i + 1 == n {
            settle();
            samples.push(in_use());
        }
    }
    Flat { baseline, samples, elapsed: start.elapsed() }
}

// ---- reactors ----

/// Keeps its transport, as a protocol that sends does.
struct UdpKeeper(Option<UdpTransport>);

impl DatagramProtocol for UdpKeeper {
    fn start_protocol(&mut self, transport: UdpTransport) {
        self.0 = Some(transport);
    }
    fn datagram_received(&mut self, _data: &[u8], _from: SocketAddr) {}
}

/// Does nothing.
struct Quiet;

impl Protocol for Quiet {
    fn data_received(&mut self, _data: &[u8]) {}
}

/// Makes a reactor with a UDP port that keeps its transport, a TCP listener whose
/// factory keeps its port, and a timer, a queued call and a when-running call that each
/// hold a handle on it; turns it once; stops the ports on even runs (odd runs leave
/// them to the reactor's drop); drops it.
fn one_reactor(i: usize) {
    let reactor = Reactor::new().unwrap();
    let udp = reactor.listen_udp(localhost(), UdpKeeper(None)).unwrap();
    let slot: Rc<RefCell<Option<ListeningPort>>> = Rc::default();
    let s = slot.clone();
    let tcp = reactor
        .listen_tcp(
            localhost(),
            move |_: &Address| {
                let _ = &s;
                Quiet
            },
            false,
        )
        .unwrap();
    *slot.borrow_mut() = Some(tcp);
    let ran = Rc::new(Cell::new(0));
    let (h, r) = (reactor.handle(), ran.clone());
    let _timer = reactor.call_later(Duration::from_secs(3600), move || drop(h));
    let (h, r2) = (reactor.handle(), ran.clone());
    reactor.call_soon(move || {
        r2.set(r2.get() + 1);
        drop(h);
    });
    let h = reactor.handle();
    reactor.call_when_running(move || drop(h));
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    assert_eq!(r.get(), 1);
    if i % 2 == 0 {
        udp.stop_listening();
        slot.borrow().as_ref().unwrap().stop_listening();
        reactor.iterate(Some(Duration::ZERO)).unwrap();
    }
}

fn reactors(n: usize) -> Flat {
    measure(n, one_reactor, || {})
}

// ---- connections ----

/// Opens connection `i` to `addr` and closes it, the server closing even ones and the
/// client odd ones, then turns the reactor until both ends were lost. The reactor is
/// never stopped: a stop closes the listener too.
fn one_connection(reactor: &Reactor, addr: SocketAddr, ends: &Ends, server_closes: &Cell<bool>, i: usize) {
    server_closes.set(i % 2 == 0);
    ends.stop_at.set(usize::MAX);
    let target = ends.lost.get() + 2;
    let (e, h) = (ends.clone(), reactor.handle());
    let d = reactor.connect_tcp(
        addr,
        move |_: &Address| Closer::new(&h, i % 2 == 1, &e, Box::new(())),
        Duration::from_secs(10),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while ends.lost.get() < target {
        if let Some(Err(f)) = d.result().map(|r| r.map(|_| ())) {
            panic!("connection {i}: connect failed: {f}");
        }
        assert!(Instant::now() < deadline, "connection {i}: both ends not lost within 30 s");
        reactor.iterate(Some(Duration::from_millis(100))).unwrap();
    }
    drop(d);
}

fn connections(n: usize) -> Flat {
    let reactor = Reactor::new().unwrap();
    let ends = Ends::default();
    let server_closes = Rc::new(Cell::new(false));
    let (e, c, h) = (ends.clone(), server_closes.clone(), reactor.handle());
    let port = reactor
        .listen_tcp(localhost(), move |_: &Address| Closer::new(&h, c.get(), &e, Box::new(())), false)
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let flat = measure(
        n,
        |i| one_connection(&reactor, addr, &ends, &server_closes, i),
        || {
            // Finish what the last turn queued (the closed connections' last calls).
            while reactor.time_until_next() == Some(Duration::ZERO) {
                reactor.iterate(Some(Duration::ZERO)).unwrap();
            }
        },
    );
    port.stop_listening();
    flat
}

// ---- Deferred graphs ----

type Shape = fn(u64);

/// Every shape of Deferred graph in the crate, each built, fired (or cancelled) to the
/// end, checked and dropped.
const SHAPES: &[(&str, Shape)] = &[
    ("chain with an errback", chain),
    ("nested waits", nested_waits),
    ("then/map", then_map),
    ("chain_deferred", chain_deferred),
    ("cancel through cancellers", cancel_layers),
    ("gather_results", gather),
    ("DeferredList with a failure", deferred_list),
    ("race", race_two),
    ("ObservableDeferred", observable),
    ("DeferredLock", lock),
    ("DeferredSemaphore", semaphore),
    ("DeferredQueue", queue),
    ("ReadWriteLock", rwlock),
    ("Linearizer", linearizer),
    ("ensure_deferred", task),
    ("ensure_deferred cancelled", task_cancelled),
    ("timeout_deferred", timeouts),
    ("stop/delay_cancellation", shields),
    ("LoggingContext::run", logcontext),
    ("CancelScope", cancel_scope),
    ("graphs dropped before they settle", abandoned),
];

/// Graphs dropped before they settle: a caller that gave up, a responder that never
/// answers. Nothing may keep them alive once the last handle is gone.
fn abandoned(i: u64) {
    // Chains and nested waits.
    let (outer, inner) = (Deferred::<u64>::new(), Deferred::<u64>::new());
    let n = inner.clone();
    outer.add_callback(move |_| n);
    outer.callback(i).unwrap();
    let t = Deferred::<u64>::new();
    let _m = t.clone().then::<String, _, _>(|r| r.map(|x| x.to_string())).map(|s| s.len());
    let (a, b) = (Deferred::<u64>::new(), Deferred::<u64>::new());
    a.chain_deferred(&b);
    b.chain_deferred(&Deferred::new());
    let c: Deferred<u64> = Deferred::with_canceller(|_| {});
    c.add_callback(|x| x + 1).add_canceller(|_| {});
    // Combinators with one member fired.
    let members: Vec<Deferred<u64>> = (0..3).map(|_| Deferred::new()).collect();
    let _g = gather_results(members.clone(), true);
    let _l = DeferredList::new(members.clone()).into_deferred();
    let _r = race(members.clone());
    members[0].callback(i).unwrap();
    // An observable with observers waiting.
    let source: Deferred<u64> = Deferred::new();
    let obs = ObservableDeferred::new(source.clone(), true);
    let _o = (obs.observe(), obs.observe());
    // Locks and queues with waiters.
    let lock = DeferredLock::new();
    let _w = (lock.acquire(), lock.acquire());
    let q: DeferredQueue<u64> = DeferredQueue::bounded(1);
    let _q = (q.get(), q.get());
    let q2: DeferredQueue<u64> = DeferredQueue::bounded(1);
    let _p = (q2.put(1), q2.put(2));
    let rw: ReadWriteLock<u64> = ReadWriteLock::new();
    let _rw = (rw.read(i), rw.write(i));
    let lin: Linearizer<u64> = Linearizer::new(1);
    let _lin = (lin.queue(i), lin.queue(i));
    // Shields and a request context waiting on work.
    let work: Deferred<u64> = Deferred::new();
    let _s = (stop_cancellation(&work), delay_cancellation(&work));
    let ctx = LoggingContext::new("abandoned");
    let w2: Deferred<u64> = Deferred::new();
    let w3 = w2.clone();
    let _c = ctx.run::<u64, _, _>(move || w3);
    // Members only a combinator holds, and an outer Deferred waiting on it.
    let outer: Deferred<Vec<u64>> = Deferred::new();
    let held: Vec<Deferred<u64>> = (0..2).map(|_| Deferred::with_canceller(|_| {})).collect();
    outer.add_callback(move |_| gather_results(held, true));
    outer.callback(Vec::new()).unwrap();
    let _r2 = race(vec![Deferred::<u64>::with_canceller(|_| {}), Deferred::new()]);
    // A timeout over a source nobody else holds.
    CLOCK.with(|clock| {
        let _t = timeout_deferred(&Deferred::<u64>::with_canceller(|_| {}), Duration::from_secs(1), clock);
    });
    // A task suspended on a Deferred nobody can fire, and one on a Deferred that then
    // is dropped mid-way through its awaits.
    let input: Deferred<u64> = Deferred::new();
    let inp = input.clone();
    let _task = ensure_deferred(async move { Ok::<_, Failure>(inp.await? + 1) });
    let (first, second) = (Deferred::<u64>::new(), Deferred::<u64>::new());
    let (f, s) = (first.clone(), second.clone());
    let _task2 = ensure_deferred(async move { Ok::<_, Failure>(f.await? + s.await?) });
    first.callback(i).unwrap();
}

#[track_caller]
fn value<T: std::fmt::Debug>(d: &Deferred<T>) -> T {
    d.take_result().expect("fired").expect("succeeded")
}

#[track_caller]
fn failure<T: std::fmt::Debug>(d: &Deferred<T>) -> Failure {
    d.take_result().expect("fired").expect_err("failed")
}

fn chain(i: u64) {
    let d: Deferred<u64> = Deferred::new();
    d.add_callback(|x| x + 1)
        .add_callback(|x| -> Result<u64, Failure> { Err(Failure::new(StringError(format!("bad {x}")))) })
        .add_callback(|_| -> u64 { unreachable!() })
        .add_errback(|f| -> Result<u64, Failure> { Ok(f.to_string().len() as u64) });
    d.callback(i).unwrap();
    assert!(value(&d) >= 5);
}

fn nested_waits(i: u64) {
    let (outer, middle, inner) = (Deferred::<u64>::new(), Deferred::<u64>::new(), Deferred::<u64>::new());
    let (m, n) = (middle.clone(), inner.clone());
    middle.add_callback(move |x| {
        n.add_callback(move |y| x + y);
        n
    });
    outer.add_callback(move |_| m);
    outer.callback(0).unwrap();
    middle.callback(i).unwrap();
    inner.callback(1).unwrap();
    assert_eq!(value(&outer), i + 1);
}

fn then_map(i: u64) {
    let d: Deferred<u64> = Deferred::new();
    let out = d.clone().then::<String, _, _>(|r| r.map(|x| x.to_string())).map(|s| s.len());
    d.callback(i).unwrap();
    assert_eq!(value(&out), i.to_string().len());
}

fn chain_deferred(i: u64) {
    let (a, b) = (Deferred::<u64>::new(), Deferred::<u64>::new());
    a.chain_deferred(&b);
    a.callback(i).unwrap();
    assert_eq!(value(&b), i);
}

fn cancel_layers(_: u64) {
    let cancelled = Rc::new(Cell::new(0));
    let c = cancelled.clone();
    let d: Deferred<u64> = Deferred::with_canceller(move |_| c.set(c.get() + 1));
    let c = cancelled.clone();
    d.add_callback(|x| x + 1).add_canceller(move |_| c.set(c.get() + 1));
    d.cancel();
    assert!(failure(&d).check::<CancelledError>());
    assert_eq!(cancelled.get(), 2);
}

fn gather(i: u64) {
    let members: Vec<Deferred<u64>> = (0..3).map(|_| Deferred::new()).collect();
    let all = gather_results(members.clone(), true);
    for (k, m) in members.iter().enumerate() {
        m.callback(i + k as u64).unwrap();
    }
    assert_eq!(value(&all), [i, i + 1, i + 2]);
}

fn deferred_list(i: u64) {
    let members: Vec<Deferred<u64>> = (0..3).map(|_| Deferred::new()).collect();
    let list = DeferredList::new(members.clone()).consume_errors(true).into_deferred();
    members[0].callback(i).unwrap();
    members[1].errback(Failure::new(StringError("no".into()))).unwrap();
    members[2].callback(i).unwrap();
    match value(&list) {
        ListResult::All(results) => assert!(results[1].is_err() && results[2].is_ok()),
        _ => panic!("a plain DeferredList fires with all results"),
    }
}

fn race_two(i: u64) {
    let (a, b) = (Deferred::<u64>::new(), Deferred::<u64>::new());
    let first = race(vec![a.clone(), b.clone()]);
    b.callback(i).unwrap();
    assert_eq!(value(&first), (1, i));
    assert!(a.is_called(), "the loser is cancelled (its failure consumed by the race)");
}

fn observable(i: u64) {
    let source: Deferred<u64> = Deferred::new();
    let obs = ObservableDeferred::new(source.clone(), true);
    let (o1, o2) = (obs.observe(), obs.observe());
    o2.cancel();
    source.callback(i).unwrap();
    assert_eq!(value(&o1), i);
    assert!(failure(&o2).check::<CancelledError>());
    assert_eq!(value(&obs.observe()), i);
}

fn lock(_: u64) {
    let lock = DeferredLock::new();
    let (first, second, third) = (lock.acquire(), lock.acquire(), lock.acquire());
    third.cancel();
    assert!(failure(&third).check::<CancelledError>());
    let permit = value(&first);
    assert!(!second.is_called());
    drop(permit);
    drop(value(&second));
    assert!(!lock.locked());
}

fn semaphore(i: u64) {
    let sem = DeferredSemaphore::new(2);
    let held = value(&sem.acquire());
    let ran = sem.run(move || i);
    let waiting = sem.run::<u64, _, _>(Deferred::new);
    assert_eq!(value(&ran), i);
    waiting.cancel();
    assert!(failure(&waiting).check::<CancelledError>());
    drop(held);
}

fn queue(i: u64) {
    let q: DeferredQueue<u64> = DeferredQueue::unbounded();
    let (got, cancelled) = (q.get(), q.get());
    cancelled.cancel();
    value(&q.put(i));
    assert_eq!(value(&got), i);
    value(&q.put(i + 1));
    assert_eq!(value(&q.get()), i + 1);
    assert!(failure(&cancelled).check::<CancelledError>());
}

fn rwlock(i: u64) {
    let rw: ReadWriteLock<u64> = ReadWriteLock::new();
    let (r1, r2, w) = (rw.read(i), rw.read(i), rw.write(i));
    let (g1, g2) = (value(&r1), value(&r2));
    assert!(!w.is_called());
    drop((g1, g2));
    drop(value(&w));
    assert!(!rw.is_locked(&i));
}

fn linearizer(i: u64) {
    let lin: Linearizer<u64> = Linearizer::new(1);
    let (a, b) = (lin.queue(i), lin.queue(i));
    let ran = lin.run(i, move || i);
    let permit = value(&a);
    assert!(!b.is_called());
    drop(permit);
    drop(value(&b));
    assert_eq!(value(&ran), i);
}

fn task(i: u64) {
    let input: Deferred<u64> = Deferred::new();
    let inp = input.clone();
    let out = ensure_deferred(async move {
        let x = inp.await?;
        let y = weft::succeed(1u64).await?;
        Ok::<_, Failure>(x + y)
    });
    input.callback(i).unwrap();
    assert_eq!(value(&out), i + 1);
}

fn task_cancelled(_: u64) {
    let input: Deferred<u64> = Deferred::new();
    let inp = input.clone();
    let out = ensure_deferred(async move { inp.await });
    out.cancel();
    assert!(failure(&out).check::<CancelledError>());
    assert!(input.is_called(), "the awaited Deferred is cancelled (its failure went to the task)");
}

thread_local! {
    static CLOCK: Clock = Clock::new();
}

fn timeouts(i: u64) {
    CLOCK.with(|clock| {
        let slow: Deferred<u64> = Deferred::new();
        let timed = timeout_deferred(&slow, Duration::from_secs(1), clock);
        let fast: Deferred<u64> = Deferred::new();
        add_timeout(&fast, Duration::from_secs(1), clock);
        fast.callback(i).unwrap();
        clock.advance(Duration::from_secs(2));
        assert!(failure(&timed).check::<TimeoutError>());
        assert_eq!(value(&fast), i);
        let later = weft::reactor::defer_later(clock, Duration::from_secs(1), move || i);
        clock.advance(Duration::from_secs(1));
        assert_eq!(value(&later), i);
        assert_eq!(clock.pending_calls(), 0);
        let _ = clock.now();
    });
}

fn shields(i: u64) {
    let shared: Deferred<u64> = Deferred::new();
    let shielded = stop_cancellation(&shared);
    shielded.cancel();
    assert!(failure(&shielded).check::<CancelledError>());
    assert!(!shared.is_called(), "stop_cancellation does not cancel the shared Deferred");
    shared.callback(i).unwrap();
    let work: Deferred<u64> = Deferred::new();
    let delayed = delay_cancellation(&work);
    delayed.cancel();
    assert!(delayed.is_paused(), "delay_cancellation holds the CancelledError back");
    work.callback(i).unwrap();
    assert!(failure(&delayed).check::<CancelledError>());
    assert_eq!(value(&work), i);
}

fn logcontext(i: u64) {
    let reply: Deferred<u64> = Deferred::new();
    let r = reply.clone();
    let ctx = LoggingContext::new("request");
    let request = ctx.clone().run::<u64, _, _>(move || {
        let background = run_in_background::<u64, _, _>(|| weft::succeed(1u64));
        r.add_callback(move |x| {
            drop(background);
            x
        });
        r
    });
    reply.callback(i).unwrap();
    assert!(ctx.is_finished());
    assert_eq!(value(&request), i);
}

fn cancel_scope(i: u64) {
    CLOCK.with(|clock| {
        // A deadline that ends a task, a nested scope's Deferred cancelled with it.
        let scope = CancelScope::move_on_after(Duration::from_secs(1), clock);
        let inner = scope.child();
        let (never, plain): (Deferred<u64>, Deferred<u64>) = (Deferred::new(), Deferred::new());
        let out = scope.run(async move { never.await });
        inner.add(&plain);
        clock.advance(Duration::from_secs(1));
        assert_eq!(value(&out), None);
        assert!(failure(&plain).check::<CancelledError>());
        // Work that finishes in time, and a shielded scope's.
        let shielded = scope.child();
        shielded.set_shield(true);
        let quick: Deferred<u64> = Deferred::new();
        let wrapped = shielded.wrap(quick.clone());
        quick.callback(i).unwrap();
        assert_eq!(value(&wrapped), Some(i));
        // Abandoned: a scope with a deadline and work nobody will fire.
        {
            let gone = CancelScope::move_on_after(Duration::from_secs(5), clock);
            let _w = gone.wrap(Deferred::<u64>::new());
            let _r = gone.child().run(async move { Deferred::<u64>::new().await });
        }
        assert_eq!(clock.pending_calls(), 0, "the abandoned scope's timer went with it");
    });
}

/// Heap blocks allocated while `work` runs (freed or not).
fn allocations_during(work: impl FnOnce()) -> usize {
    let before = GLOBAL.stats().allocations;
    work();
    GLOBAL.stats().allocations - before
}

/// Issue 15's allocation targets, counted: a pending Deferred with one callback is one
/// block whether the callback captures nothing or one word (a `Deferred`, an `Rc`): the
/// closure is kept inline in its link; a larger closure is one block more. A nested
/// level (a Deferred whose callback returns the next, waiting one) is one block. Each of
/// those is counted with no Deferred kept for reuse; one made after another was dropped
/// reuses it: no block. Returns what differed from those counts.
/// Leaves no `Deferred<u64>` kept for reuse but the list that would keep one (so that
/// dropping one allocates nothing): the next `Deferred::new` allocates. Returns the one
/// it took from the list.
fn nothing_kept() -> Deferred<u64> {
    weft::trim_free_lists();
    drop(Deferred::<u64>::new());
    Deferred::new()
}

fn allocation_counts() -> Vec<String> {
    let mut wrong = Vec::new();
    let mut expect = |what: &str, want: usize, got: usize| {
        if got != want {
            wrong.push(format!("{what}: {got} allocations, expected {want}"));
        }
    };
    // Warm up the thread-locals a first fire touches.
    drop(weft::succeed(0u64).add_callback(|x| x + 1).clone());
    // A Deferred with a callback capturing nothing, fired.
    let plain = || {
        let d = Deferred::<u64>::new();
        d.add_callback(|x| x + 1);
        d.callback(1).unwrap();
        assert_eq!(value(&d), 2);
    };
    let _held = nothing_kept();
    let got = allocations_during(plain);
    expect("a Deferred with a callback capturing nothing", 1, got);
    let shared = Rc::new(Cell::new(0u64));
    let _held = nothing_kept();
    let got = allocations_during(|| {
        let d = Deferred::<u64>::new();
        let s = shared.clone();
        d.add_callback(move |x| {
            s.set(x);
            x
        });
        d.callback(3).unwrap();
    });
    expect("a Deferred with a callback capturing one Rc", 1, got);
    assert_eq!(shared.get(), 3);
    let _held = nothing_kept();
    let got = allocations_during(|| {
        let d = Deferred::<u64>::new();
        let (a, b, c) = (shared.clone(), shared.clone(), 5u64);
        d.add_callback(move |x| {
            a.set(x + c);
            b.get()
        });
        d.callback(1).unwrap();
    });
    expect("a Deferred with a callback capturing three words", 2, got);
    drop(Deferred::<u64>::new());
    let got = allocations_during(plain);
    expect("a Deferred made after one was dropped (reused)", 0, got);
    weft::trim_free_lists();
    let levels = 1_000;
    let ds: Vec<Deferred<u64>> = (0..levels).map(|_| Deferred::new()).collect();
    let got = allocations_during(|| {
        for i in (0..levels - 1).rev() {
            let next = ds[i + 1].clone();
            ds[i].add_callback(move |_| next);
            ds[i].callback(0).unwrap();
        }
        ds[levels - 1].callback(7).unwrap();
    });
    assert_eq!(value(&ds[0]), 7);
    expect("1,000 nested levels (the Deferreds made before)", 0, got);
    wrong
}

fn deferreds(n: usize) -> Flat {
    measure(
        n / SHAPES.len(),
        |i| {
            for (_, shape) in SHAPES {
                shape(i as u64);
            }
        },
        || {},
    )
}

// ---- the runner ----

struct Check {
    name: &'static str,
    quick: usize,
    full: usize,
    unit: &'static str,
    run: fn(usize) -> Flat,
}

const CHECKS: &[Check] = &[
    Check { name: "reactors", quick: 2_000, full: 10_000, unit: "reactors", run: reactors },
    Check { name: "connections", quick: 1_000, full: 100_000, unit: "connections", run: connections },
    Check { name: "deferreds", quick: 40_000, full: 1_000_000, unit: "graphs", run: deferreds },
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("allocations: test");
        for c in CHECKS {
            println!("{}: test", c.name);
        }
        return;
    }
    let full = args.iter().any(|a| a == "--ignored" || a == "--include-ignored");
    // libtest's options that take a value: the value is not a filter.
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--skip" => skips.extend(it.next()),
            "--test-threads" | "--format" | "--color" | "--logfile" | "-Z" => drop(it.next()),
            a if a.starts_with('-') => {}
            _ => filters.push(a),
        }
    }

    let mut failed = Vec::new();
    let mut ran = 0;
    let wanted = filters.is_empty() || filters.iter().any(|f| "allocations".contains(f.as_str()));
    if wanted && !skips.iter().any(|s| "allocations".contains(s.as_str())) {
        ran += 1;
        let wrong = allocation_counts();
        println!("test allocations ... {}", if wrong.is_empty() { "ok" } else { "FAILED" });
        for w in &wrong {
            println!("  {w}");
        }
        if !wrong.is_empty() {
            failed.push("allocations");
        }
    }
    for c in CHECKS {
        let wanted = filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str()));
        if !wanted || skips.iter().any(|s| c.name.contains(s.as_str())) {
            continue;
        }
        ran += 1;
        let n = if full { c.full } else { c.quick };
        let flat = (c.run)(n);
        let ok = flat.samples.iter().all(|s| *s == flat.baseline);
        let max = flat.samples.iter().map(|s| s.0).max().unwrap_or(0);
        let last = flat.samples.last().copied().unwrap_or_default();
        println!(
            "test {} ... {} ({n} {} in {:.1?}; in use: {} bytes / {} blocks at the start, {} / {} at the end, \
             at most {} bytes at the {} samples)",
            c.name,
            if ok { "ok" } else { "FAILED" },
            c.unit,
            flat.elapsed,
            flat.baseline.0,
            flat.baseline.1,
            last.0,
            last.1,
            max,
            flat.samples.len(),
        );
        if !ok {
            println!("  samples (bytes, blocks) after each twentieth: {:?}", flat.samples);
            failed.push(c.name);
        }
    }
    println!();
    println!(
        "test result: {}. {} passed; {} failed; 0 ignored; 0 measured; {} filtered out",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran - failed.len(),
        failed.len(),
        CHECKS.len() + 1 - ran
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}
