//! weft's side of the side-by-side comparison in `benches/compare/` (Twisted, tokio and
//! weft on the same scenarios; `benches/compare/run.sh` runs all three and writes the
//! report and plots to `benches/results/`).
//!
//!   cargo build --release --example peer_bench
//!   target/release/examples/peer_bench chain 100000        # one JSON line on stdout
//!   target/release/examples/peer_bench echo-server 47303   # until SIGTERM
//!
//! Subcommands: `chain|chain-nested|fanout|cancel-chain|gather|timers|timers-cancel|
//! reactor-timers N` measure one scenario at size N; `echo-server PORT` serves TCP echo on
//! 127.0.0.1 (and `http-server PORT` HTTP/1.1, once `weft::web` provides it).
//! `floor-chain-nested|floor-cancel-chain|floor-fanout|floor-gather N` measure the same scenarios on a minimal model
//! of the protocol (`benches/compare/floor_model.rs`): the floor under weft's rows.
//!
//! Each measurement prints one JSON line, the schema every peer in `benches/compare/`
//! shares: `{"impl","bench","n","unit","results":[{"variant","ns_per_op","min_ns_per_op",
//! "reps","phases"}],"meta"}`. `ns_per_op` is the median repetition of the whole
//! scenario (from nothing to a checked result) divided by N, after one warm-up
//! repetition. Knobs: `BENCH_BUDGET_S` (1.0 s of repetitions per variant),
//! `BENCH_MIN_REPS` (5; 3 when one repetition is slow), `BENCH_MAX_REPS` (101).
//!
//! Built with `--features count-allocs`, a counting global allocator (`stats_alloc`) is
//! installed and each result also has `allocs_per_op` (allocations plus reallocations
//! of one extra, untimed repetition, divided by N) and `alloc_bytes_per_op`. The counter
//! slows every allocation down, so the timed numbers come from a build without it.
//! The harness is `benches/compare/harness.rs`, shared with the tokio peer.

use std::time::{Duration, Instant};

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde_json::{json, Value};
use weft::{gather_results, CancelledError, Deferred, Failure, ObservableDeferred};

#[path = "../benches/compare/harness.rs"]
mod harness;

#[path = "../benches/compare/floor_model.rs"]
mod floor_model;
use harness::{rep, Budget, Rep};

/// Measures one variant with the shared harness (warm-up, timed repetitions, and one
/// counted repetition with `count-allocs`).
fn run_variant(variant: &'static str, n: usize, mut one: impl FnMut(usize) -> Rep) -> Value {
    let budget = Budget::from_env();
    let mut reps = budget.start(&one(n));
    while reps.want_more() {
        reps.push(one(n));
    }
    let (_, counted) = harness::count_allocs(|| one(n));
    reps.summary(variant, n, counted)
}

/// Prints the JSON line of one benchmark.
fn emit(bench: &str, n: usize, unit: &str, results: Vec<Value>) {
    let meta = json!({ "weft": env!("CARGO_PKG_VERSION") });
    println!("{}", harness::line("weft", bench, n, unit, results, meta));
}

// ---------------------------------------------------------------------------
// scenarios
// ---------------------------------------------------------------------------

/// chain N — unit "callback". t0; d = Deferred::new(); N x add_callback(|x| x + 1);
/// t1 ("build"); d.callback(0); t2 ("fire"); assert result == N.
fn chain(n: usize) -> Rep {
    let t0 = Instant::now();
    let d = Deferred::<u64>::new();
    for _ in 0..n {
        d.add_callback(|x| x + 1);
    }
    let t1 = Instant::now();
    d.callback(0).unwrap();
    let t2 = Instant::now();
    assert_eq!(d.take_result().unwrap().unwrap(), n as u64);
    rep(t0, &[("build", t1), ("fire", t2)])
}

/// chain-nested N — unit "level". t0; create N deferreds ds[0..N]; for i in
/// (0..N-1).rev(): ds[i].add_callback(move |_| return ds[i+1] (chain onto it));
/// ds[i].callback(()) — ds[i] is now paused waiting on ds[i+1]; t1 ("build");
/// ds[N-1].callback(7); t2 ("fire"); assert ds[0]'s result == 7.
fn chain_nested(n: usize) -> Rep {
    let t0 = Instant::now();
    let ds: Vec<Deferred<u64>> = (0..n).map(|_| Deferred::new()).collect();
    for i in (0..n - 1).rev() {
        let next = ds[i + 1].clone();
        ds[i].add_callback(move |_| next);
        ds[i].callback(0).unwrap();
    }
    let t1 = Instant::now();
    ds[n - 1].callback(7).unwrap();
    let t2 = Instant::now();
    assert_eq!(ds[0].take_result().unwrap().unwrap(), 7);
    rep(t0, &[("build", t1), ("fire", t2)])
}

/// floor-chain-nested N — chain-nested on the minimal model of the protocol
/// (`benches/compare/floor_model.rs`), callbacks stored inline: the floor under weft's
/// row, measured the same way. Not a peer: `run_peers.sh` does not run it.
fn floor_chain_nested(n: usize) -> Rep {
    let t0 = Instant::now();
    let ds = floor_model::nested_chain(n);
    let t1 = Instant::now();
    ds[n - 1].callback(Ok(7));
    let t2 = Instant::now();
    assert_eq!(ds[0].result(), Some(Ok(7)));
    rep(t0, &[("build", t1), ("fire", t2)])
}

/// floor-cancel-chain N — cancel-chain on the minimal model, as `floor-chain-nested`.
fn floor_cancel_chain(n: usize) -> Rep {
    let t0 = Instant::now();
    let (ds, ran) = floor_model::cancel_chain(n);
    let t1 = Instant::now();
    ds[0].cancel();
    let t2 = Instant::now();
    assert_eq!(ran.get(), 1);
    assert_eq!(ds[0].result(), Some(Err(())));
    rep(t0, &[("build", t1), ("cancel", t2)])
}

/// floor-fanout N — fanout on the minimal model, as `floor-chain-nested`: N observers
/// (a Deferred with one callback each, kept in a list, the caller's handle dropped), then
/// each fired with 1 in turn.
fn floor_fanout(n: usize) -> Rep {
    use floor_model::{Sum, D};
    let t0 = Instant::now();
    let sum = Rc::new(Cell::new(0u64));
    let mut observers: Vec<D<Sum>> = Vec::new();
    for _ in 0..n {
        let d = D::new();
        d.add_callback(Sum(sum.clone()));
        observers.push(d.clone());
    }
    let t1 = Instant::now();
    for d in std::mem::take(&mut observers) {
        d.callback(Ok(1));
    }
    let t2 = Instant::now();
    assert_eq!(sum.get(), n as u64);
    rep(t0, &[("observe", t1), ("fire", t2)])
}

/// floor-gather N — gather on the minimal model, as `floor-chain-nested`: N Deferreds,
/// gathered (a link each to a shared state), then each fired.
fn floor_gather(n: usize) -> Rep {
    use floor_model::{Gather, Member, D};
    let t0 = Instant::now();
    let ds: Vec<D<Member>> = (0..n).map(|_| D::new()).collect();
    let t1 = Instant::now();
    let state = Gather::new(ds.clone());
    let t2 = Instant::now();
    for (i, d) in ds.iter().enumerate() {
        d.callback(Ok(i as u64));
    }
    let t3 = Instant::now();
    let values = state.values.borrow_mut().take().expect("gathered");
    assert_eq!(values.len(), n);
    assert_eq!(values[n - 1], n as u64 - 1);
    rep(t0, &[("create", t1), ("gather", t2), ("fire", t3)])
}

/// fanout N — unit "observer". t0; src = Deferred; obs = ObservableDeferred(src);
/// N x obs.observe().add_callback(|x| sum += x); t1 ("observe"); src.callback(1);
/// t2 ("fire"); assert sum == N.
fn fanout(n: usize) -> Rep {
    let t0 = Instant::now();
    let src = Deferred::<u64>::new();
    let obs = ObservableDeferred::new(src.clone(), false);
    let sum = Rc::new(Cell::new(0u64));
    for _ in 0..n {
        let s = sum.clone();
        let _ = obs.observe().add_callback(move |x| {
            s.set(s.get() + x);
            x
        });
    }
    let t1 = Instant::now();
    src.callback(1).unwrap();
    let t2 = Instant::now();
    assert_eq!(sum.get(), n as u64);
    rep(t0, &[("observe", t1), ("fire", t2)])
}

/// cancel-chain N — unit "layer". t0; inner = Deferred with a canceller that
/// counts; N layers built as in chain-nested (layer N-1 returns inner); t1
/// ("build"); outer.cancel(); outer gets an errback that traps CancelledError;
/// t2 ("cancel"); assert canceller ran once and the outer saw CancelledError.
fn cancel_chain(n: usize) -> Rep {
    let t0 = Instant::now();
    let ran = Rc::new(Cell::new(0u32));
    let r = ran.clone();
    let inner = Deferred::<u64>::with_canceller(move |_| r.set(r.get() + 1));
    let ds: Vec<Deferred<u64>> = (0..n).map(|_| Deferred::new()).collect();
    for i in (0..n).rev() {
        let next = if i + 1 < n { ds[i + 1].clone() } else { inner.clone() };
        ds[i].add_callback(move |_| next);
        ds[i].callback(0).unwrap();
    }
    let t1 = Instant::now();
    let saw_cancel = Rc::new(Cell::new(false));
    let s = saw_cancel.clone();
    ds[0].cancel();
    ds[0].add_errback(move |f: Failure| -> Result<u64, Failure> {
        f.trap::<CancelledError>()?;
        s.set(true);
        Ok(0)
    });
    let t2 = Instant::now();
    assert_eq!(ran.get(), 1);
    assert!(saw_cancel.get());
    rep(t0, &[("build", t1), ("cancel", t2)])
}

/// gather N — unit "member". t0; N unfired deferreds; t1 ("create");
/// g = gather_results(ds) + a callback storing the Vec; t2 ("gather");
/// ds[i].callback(i) for all i; t3 ("fire"); assert len N and last == N-1.
fn gather(n: usize) -> Rep {
    let t0 = Instant::now();
    let ds: Vec<Deferred<usize>> = (0..n).map(|_| Deferred::new()).collect();
    let t1 = Instant::now();
    let out = Rc::new(RefCell::new(Vec::new()));
    let o = out.clone();
    gather_results(ds.clone(), false).add_callback(move |v| {
        *o.borrow_mut() = v;
        Vec::new()
    });
    let t2 = Instant::now();
    for (i, d) in ds.iter().enumerate() {
        d.callback(i).unwrap();
    }
    let t3 = Instant::now();
    assert_eq!(out.borrow().len(), n);
    assert_eq!(out.borrow()[n - 1], n - 1);
    rep(t0, &[("create", t1), ("gather", t2), ("fire", t3)])
}

/// timers N — unit "timer". Virtual clock (the crate's task.Clock analog).
/// t0; clock; for i: call_later((i+1) ms, count += 1); t1 ("schedule");
/// advance past the last deadline (firing all); t2 ("fire"); assert count == N.
fn timers(n: usize) -> Rep {
    let t0 = Instant::now();
    let clock = weft::Clock::new();
    let count = Rc::new(Cell::new(0usize));
    for i in 0..n {
        let c = count.clone();
        clock.call_later(Duration::from_millis(i as u64 + 1), move || c.set(c.get() + 1));
    }
    let t1 = Instant::now();
    clock.advance(Duration::from_millis(n as u64 + 1));
    let t2 = Instant::now();
    assert_eq!(count.get(), n);
    rep(t0, &[("schedule", t1), ("fire", t2)])
}

/// timers-cancel N — unit "timer". t0; N call_later(3600 s + i ms) handles;
/// (let them reach the timer queue, as one reactor turn would); t1 ("schedule");
/// cancel all N (and whatever purge the queue needs); t2 ("cancel"); assert the
/// queue is empty and nothing fired.
fn timers_cancel(n: usize) -> Rep {
    let t0 = Instant::now();
    let clock = weft::Clock::new();
    let fired = Rc::new(Cell::new(0usize));
    let calls: Vec<weft::DelayedCall> = (0..n)
        .map(|i| {
            let f = fired.clone();
            clock.call_later(Duration::from_secs(3600) + Duration::from_millis(i as u64), move || {
                f.set(f.get() + 1)
            })
        })
        .collect();
    let t1 = Instant::now();
    for c in &calls {
        c.cancel().unwrap();
    }
    let t2 = Instant::now();
    assert_eq!(clock.pending_calls(), 0);
    assert_eq!(fired.get(), 0);
    drop(calls);
    rep(t0, &[("schedule", t1), ("cancel", t2)])
}

/// reactor-timers N — unit "timer". The real (mio) reactor. t0; N call_later(0, f)
/// where f counts and stops the reactor at N; t1 ("schedule"); run the reactor
/// until it stops; t2 ("run").
fn reactor_timers(n: usize) -> Rep {
    thread_local! {
        // One reactor for all repetitions, as Twisted's run back to back in one run().
        static REACTOR: weft::Reactor = weft::Reactor::new().expect("reactor");
    }
    REACTOR.with(|reactor| {
        let t0 = Instant::now();
        let count = Rc::new(Cell::new(0usize));
        for _ in 0..n {
            let (c, h) = (count.clone(), reactor.handle());
            reactor.call_later(Duration::ZERO, move || {
                c.set(c.get() + 1);
                if c.get() == n {
                    h.stop();
                }
            });
        }
        let t1 = Instant::now();
        reactor.run();
        let t2 = Instant::now();
        assert_eq!(count.get(), n);
        rep(t0, &[("schedule", t1), ("run", t2)])
    })
}

/// echo-server PORT: the crate's reactor with listen_tcp on 127.0.0.1:PORT,
/// listen backlog 1024, TCP_NODELAY on each accepted socket, a Protocol whose
/// data_received writes the bytes straight back (read up to 64 KiB at a time),
/// running until SIGTERM (default action is fine). Print one line to stderr.
fn echo_server(port: u16) {
    use weft::reactor::{Address, ListenOptions, Protocol, Transport};
    struct Echo(Option<Transport>);
    impl Protocol for Echo {
        fn connection_made(&mut self, t: Transport) {
            self.0 = Some(t);
        }
        fn data_received(&mut self, data: &[u8]) {
            if let Some(t) = &self.0 {
                t.write(data);
            }
        }
    }
    let reactor = weft::Reactor::new().expect("reactor");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    reactor.listen_tcp(addr, |_: &Address| Echo(None), ListenOptions::new()).expect("listen");
    eprintln!("weft echo server on {addr}");
    reactor.run();
}

/// http-server PORT: weft's own HTTP/1.1 server (`weft::web`) on 127.0.0.1:PORT with
/// backlog 1024, TCP_NODELAY, keep-alive and pipelining, until SIGTERM. `GET /hello`:
/// 200, `hello, world\n`, `Content-Type: text/plain`, `Content-Length: 13`; `GET
/// /sleep/<ms>` (0..=60000): the same after `ms` on a reactor timer; anything else 404
/// (a known path with another method: 405). No access log.
///
/// Each request runs in its own log context, charged CPU time by weft's default clock
/// (the time-stamp counter, settled against the thread's CPU clock).
/// `WEFT_CONTEXT_CLOCK=per-switch`, `monotonic` or `off` measures the same server with
/// another clock (`weft::logcontext::set_cpu_clock`).
fn http_server(port: u16) {
    use weft::logcontext::{set_cpu_clock, CpuClock};
    use weft::web::{Request, Response, Router, ServerConfig, Site};
    match std::env::var("WEFT_CONTEXT_CLOCK").as_deref() {
        Ok("per-switch") => set_cpu_clock(CpuClock::ThreadPerSwitch),
        Ok("monotonic") => set_cpu_clock(CpuClock::Monotonic),
        Ok("off") => set_cpu_clock(CpuClock::Off),
        _ => {}
    }
    fn hello() -> Response {
        Response::new(200).header("Content-Type", "text/plain").body("hello, world\n")
    }
    let reactor = weft::Reactor::new().expect("reactor");
    let time = reactor.handle();
    let router = Router::new().get("/hello", |_req: Request| hello()).get(
        "/sleep/{ms}",
        move |req: Request| match req
            .param("ms")
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|ms| *ms <= 60_000)
        {
            Some(ms) => weft::reactor::defer_later(&time, Duration::from_millis(ms), hello),
            None => weft::succeed(Response::error(404, "")),
        },
    );
    let mut config = ServerConfig::default();
    config.access_log = false;
    let site = Site::with_config(&reactor, router, config);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    site.listen_tcp(addr).expect("listen");
    reactor.stop_on_signals().expect("signals");
    eprintln!("weft http server on {addr}");
    reactor.run();
}

// ---------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: peer_bench <chain|chain-nested|fanout|cancel-chain|gather|timers|timers-cancel|reactor-timers|floor-chain-nested|floor-cancel-chain|floor-fanout|floor-gather> N | echo-server PORT | http-server PORT");
        std::process::exit(2)
    };
    let cmd = args.first().map(String::as_str).unwrap_or_else(|| usage());
    let arg: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| usage());
    let v = |name: &'static str, f: fn(usize) -> Rep| run_variant(name, arg, f);
    match cmd {
        "chain" => emit("chain", arg, "callback", vec![v("deferred", chain)]),
        "chain-nested" => emit("chain-nested", arg, "level", vec![v("deferred", chain_nested)]),
        "fanout" => emit("fanout", arg, "observer", vec![v("observable_deferred", fanout)]),
        "cancel-chain" => emit("cancel-chain", arg, "layer", vec![v("deferred", cancel_chain)]),
        "floor-chain-nested" => {
            emit("floor-chain-nested", arg, "level", vec![v("model_inline", floor_chain_nested)])
        }
        "floor-fanout" => emit("floor-fanout", arg, "observer", vec![v("model_inline", floor_fanout)]),
        "floor-gather" => emit("floor-gather", arg, "member", vec![v("model_inline", floor_gather)]),
        "floor-cancel-chain" => {
            emit("floor-cancel-chain", arg, "layer", vec![v("model_inline", floor_cancel_chain)])
        }
        "gather" => emit("gather", arg, "member", vec![v("gather_results", gather)]),
        "timers" => emit("timers", arg, "timer", vec![v("virtual_clock", timers)]),
        "timers-cancel" => emit("timers-cancel", arg, "timer", vec![v("virtual_clock", timers_cancel)]),
        "reactor-timers" => emit("reactor-timers", arg, "timer", vec![v("mio_reactor", reactor_timers)]),
        "echo-server" => echo_server(u16::try_from(arg).unwrap_or_else(|_| usage())),
        "http-server" => http_server(u16::try_from(arg).unwrap_or_else(|_| usage())),
        _ => usage(),
    }
    // If a benchmark has deep recursion (nested chains), run it on a thread with a
    // big stack as tokio-peer does; Twisted's chaining is iterative, so a crate
    // that matches it should not need that.
}
