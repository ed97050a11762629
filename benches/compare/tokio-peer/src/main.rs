//! tokio's side of weft's side-by-side comparison: the same scenarios as weft's
//! `examples/peer_bench.rs` and `../twisted_peer.py`, written as a tokio user would, on
//! a `current_thread` runtime with a `LocalSet` (one thread, like a Twisted reactor).
//!
//!   tokio-peer <bench> N        one JSON line (schema and protocol: ../harness.rs)
//!   tokio-peer echo-server PORT TCP echo on 127.0.0.1:PORT until killed
//!   tokio-peer http-server PORT hyper 1.x HTTP/1.1 on 127.0.0.1:PORT until killed
//!
//! Every benchmark has several variants; the first is the primary one, the closest
//! analog of the Deferred scenario, and the others show what else a tokio user might
//! write. `benches/README.md` says what each variant does.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::{self, FutureExt, LocalBoxFuture};
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};
use tokio::runtime::{Builder, Runtime};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::{self, JoinHandle, LocalSet};
use tokio::time::{sleep, Sleep};

#[path = "../../harness.rs"]
mod harness;
use harness::{rep, Budget, Rep};

mod http;

// ---------------------------------------------------------------------------
// running a variant
// ---------------------------------------------------------------------------

/// Which runtime a variant runs on.
#[derive(Clone, Copy)]
enum Clock {
    /// IO and time drivers, real time: a reactor's setting.
    Real,
    /// Time driver only, real time.
    RealTimeOnly,
    /// Time driver only, paused clock that jumps to the next timer when idle: the analog
    /// of weft's `Clock` and Twisted's `task.Clock`.
    Paused,
}

impl Clock {
    fn runtime(self) -> Runtime {
        let mut b = Builder::new_current_thread();
        match self {
            Clock::Real => b.enable_all(),
            Clock::RealTimeOnly => b.enable_time(),
            Clock::Paused => b.enable_time().start_paused(true),
        };
        b.build().expect("a current_thread runtime")
    }

    fn describe(self) -> &'static str {
        match self {
            Clock::Real => "current_thread + LocalSet, IO and time drivers, real clock",
            Clock::RealTimeOnly => "current_thread + LocalSet, time driver, real clock",
            Clock::Paused => "current_thread + LocalSet, time driver, paused clock (auto-advance)",
        }
    }
}

/// Measures one variant on a fresh runtime (shared by its repetitions); each
/// repetition is one `block_on` of `one(n)`.
fn measure<F, Fut>(clock: Clock, variant: &str, n: usize, one: F) -> Value
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Rep>,
{
    let rt = clock.runtime();
    let local = LocalSet::new();
    let budget = Budget::from_env();
    let mut reps = budget.start(&local.block_on(&rt, one(n)));
    while reps.want_more() {
        reps.push(local.block_on(&rt, one(n)));
    }
    let (_, counted) = harness::count_allocs(|| local.block_on(&rt, one(n)));
    let mut out = reps.summary(variant, n, counted);
    out["runtime"] = json!(clock.describe());
    out
}

fn emit(bench: &str, n: usize, unit: &str, results: Vec<Value>) {
    let meta = json!({ "tokio_peer": env!("CARGO_PKG_VERSION") });
    println!("{}", harness::line("tokio", bench, n, unit, results, meta));
}

// ---------------------------------------------------------------------------
// helpers for the scenarios
// ---------------------------------------------------------------------------

/// Counts tasks that reached a point; the scenario yields until all have, so every
/// task is parked on what it awaits (the state of a Deferred chain once its callbacks
/// are added) before the timed event.
#[derive(Clone, Default)]
struct Roll(Rc<Cell<usize>>);

impl Roll {
    fn here(&self) {
        self.0.set(self.0.get() + 1);
    }

    fn count(&self) -> usize {
        self.0.get()
    }

    async fn wait_for(&self, n: usize) {
        while self.count() < n {
            task::yield_now().await;
        }
    }
}

/// Completes once `hit` was called `target` times.
struct Tally {
    hits: Cell<usize>,
    target: usize,
    done: Cell<Option<oneshot::Sender<()>>>,
}

impl Tally {
    fn new(target: usize) -> (Rc<Tally>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Rc::new(Tally { hits: Cell::new(0), target, done: Cell::new(Some(tx)) }), rx)
    }

    fn hit(&self) {
        self.hits.set(self.hits.get() + 1);
        if self.hits.get() == self.target {
            if let Some(tx) = self.done.take() {
                let _ = tx.send(());
            }
        }
    }
}

/// Calls `Tally::hit` when dropped: the innermost layer's "canceller".
struct OnDrop(Rc<Tally>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.hit();
    }
}

/// Aborts the task when dropped, so cancelling a task cancels the task it awaits.
struct AbortGuard<T>(JoinHandle<T>);

impl<T> Drop for AbortGuard<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------
// chain: one value through N steps
// ---------------------------------------------------------------------------

/// N `.map(+1)` adaptors, each boxed (added at run time, as callbacks are), awaited once.
async fn chain_ready_map_boxed(n: usize) -> Rep {
    let t0 = Instant::now();
    let mut fut: LocalBoxFuture<'static, u64> = Box::pin(future::ready(0));
    for _ in 0..n {
        fut = Box::pin(fut.map(|x| x + 1));
    }
    let t1 = Instant::now();
    let out = fut.await;
    let t2 = Instant::now();
    assert_eq!(out, n as u64);
    rep(t0, &[("build", t1), ("fire", t2)])
}

/// N tasks in a row, each waiting on a oneshot from the one before and sending x+1 on.
async fn chain_oneshot_tasks(n: usize) -> Rep {
    let t0 = Instant::now();
    let roll = Roll::default();
    let (head, mut rx) = oneshot::channel::<u64>();
    for _ in 0..n {
        let (tx, next) = oneshot::channel::<u64>();
        let input = std::mem::replace(&mut rx, next);
        let roll = roll.clone();
        task::spawn_local(async move {
            roll.here();
            let x = input.await.expect("sender kept");
            let _ = tx.send(x + 1);
        });
    }
    roll.wait_for(n).await;
    let t1 = Instant::now();
    head.send(0).expect("receiver kept");
    let out = rx.await.expect("last task sends");
    let t2 = Instant::now();
    assert_eq!(out, n as u64);
    rep(t0, &[("build", t1), ("fire", t2)])
}

// ---------------------------------------------------------------------------
// chain-nested: N levels, each waiting on the next; the innermost fires
// ---------------------------------------------------------------------------

/// N boxed `async` blocks, each awaiting the next; the innermost awaits a oneshot.
/// Polled once (all suspended), then the oneshot fires and the outermost completes.
async fn nested_async_boxed(n: usize) -> Rep {
    let t0 = Instant::now();
    let (tx, rx) = oneshot::channel::<u64>();
    let mut fut: LocalBoxFuture<'static, u64> = Box::pin(async move { rx.await.expect("sent") });
    for _ in 1..n {
        let inner = fut;
        // A level of the async call stack is its own `async` block, however little it does.
        #[allow(clippy::redundant_async_block)]
        let level = async move { inner.await };
        fut = Box::pin(level);
    }
    assert!(futures::poll!(fut.as_mut()).is_pending());
    let t1 = Instant::now();
    tx.send(7).expect("receiver kept");
    let out = fut.await;
    let t2 = Instant::now();
    assert_eq!(out, 7);
    rep(t0, &[("build", t1), ("fire", t2)])
}

/// N tasks, each awaiting the next one's `JoinHandle`; the innermost awaits a oneshot.
async fn nested_join_handle_tasks(n: usize) -> Rep {
    let t0 = Instant::now();
    let roll = Roll::default();
    let (tx, rx) = oneshot::channel::<u64>();
    let r = roll.clone();
    let mut handle: JoinHandle<u64> = task::spawn_local(async move {
        r.here();
        rx.await.expect("sent")
    });
    for _ in 1..n {
        let (r, inner) = (roll.clone(), handle);
        handle = task::spawn_local(async move {
            r.here();
            inner.await.expect("inner task completes")
        });
    }
    roll.wait_for(n).await;
    let t1 = Instant::now();
    tx.send(7).expect("receiver kept");
    let out = handle.await.expect("outer task completes");
    let t2 = Instant::now();
    assert_eq!(out, 7);
    rep(t0, &[("build", t1), ("fire", t2)])
}

// ---------------------------------------------------------------------------
// fanout: one result, N observers
// ---------------------------------------------------------------------------

/// N tasks each awaiting a clone of one `Shared` oneshot receiver and adding to a sum.
async fn fanout_shared_tasks(n: usize) -> Rep {
    let t0 = Instant::now();
    let (roll, sum) = (Roll::default(), Rc::new(Cell::new(0u64)));
    let (tally, all_done) = Tally::new(n);
    let (tx, rx) = oneshot::channel::<u64>();
    let shared = rx.shared();
    for _ in 0..n {
        let (rx, roll, sum, tally) = (shared.clone(), roll.clone(), sum.clone(), tally.clone());
        task::spawn_local(async move {
            roll.here();
            let v = rx.await.expect("sent");
            sum.set(sum.get() + v);
            tally.hit();
        });
    }
    roll.wait_for(n).await;
    let t1 = Instant::now();
    tx.send(1).expect("receivers kept");
    all_done.await.expect("every observer ran");
    let t2 = Instant::now();
    assert_eq!(sum.get(), n as u64);
    rep(t0, &[("observe", t1), ("fire", t2)])
}

/// The N `Shared` clones in one `FuturesUnordered` inside this task: no task per
/// observer, the closest to observers being plain callbacks.
async fn fanout_shared_unordered(n: usize) -> Rep {
    let t0 = Instant::now();
    let (tx, rx) = oneshot::channel::<u64>();
    let shared = rx.shared();
    let mut observers: FuturesUnordered<_> = (0..n).map(|_| shared.clone()).collect();
    assert!(futures::poll!(observers.next()).is_pending());
    let t1 = Instant::now();
    tx.send(1).expect("receivers kept");
    let mut sum = 0u64;
    while let Some(v) = observers.next().await {
        sum += v.expect("sent");
    }
    let t2 = Instant::now();
    assert_eq!(sum, n as u64);
    rep(t0, &[("observe", t1), ("fire", t2)])
}

/// N tasks waiting for a change on one `watch` channel.
async fn fanout_watch_tasks(n: usize) -> Rep {
    let t0 = Instant::now();
    let (roll, sum) = (Roll::default(), Rc::new(Cell::new(0u64)));
    let (tally, all_done) = Tally::new(n);
    let (tx, rx) = watch::channel(0u64);
    for _ in 0..n {
        let (mut rx, roll, sum, tally) = (rx.clone(), roll.clone(), sum.clone(), tally.clone());
        task::spawn_local(async move {
            roll.here();
            rx.changed().await.expect("sender kept");
            sum.set(sum.get() + *rx.borrow_and_update());
            tally.hit();
        });
    }
    roll.wait_for(n).await;
    let t1 = Instant::now();
    tx.send(1).expect("receivers kept");
    all_done.await.expect("every observer ran");
    let t2 = Instant::now();
    assert_eq!(sum.get(), n as u64);
    drop(rx);
    rep(t0, &[("observe", t1), ("fire", t2)])
}

/// N tasks each receiving from one `broadcast` channel of capacity 1.
async fn fanout_broadcast_tasks(n: usize) -> Rep {
    let t0 = Instant::now();
    let (roll, sum) = (Roll::default(), Rc::new(Cell::new(0u64)));
    let (tally, all_done) = Tally::new(n);
    let (tx, _keep_open) = broadcast::channel::<u64>(1);
    for _ in 0..n {
        let (mut rx, roll, sum, tally) = (tx.subscribe(), roll.clone(), sum.clone(), tally.clone());
        task::spawn_local(async move {
            roll.here();
            let v = rx.recv().await.expect("sent");
            sum.set(sum.get() + v);
            tally.hit();
        });
    }
    roll.wait_for(n).await;
    let t1 = Instant::now();
    tx.send(1).expect("receivers kept");
    all_done.await.expect("every observer ran");
    let t2 = Instant::now();
    assert_eq!(sum.get(), n as u64);
    rep(t0, &[("observe", t1), ("fire", t2)])
}

// ---------------------------------------------------------------------------
// cancel-chain: N layers over an innermost "canceller"; cancel from the outside
// ---------------------------------------------------------------------------

/// N tasks, each awaiting the next through an abort-on-drop guard; the innermost holds
/// a drop guard. Aborting the outermost drops it, which aborts the next, and so on:
/// the downward half of a Deferred cancel (nothing travels back up).
async fn cancel_abort_cascade(n: usize) -> Rep {
    let t0 = Instant::now();
    let roll = Roll::default();
    let (tally, cancelled) = Tally::new(1);
    let (r, guard) = (roll.clone(), OnDrop(tally.clone()));
    let mut handle: JoinHandle<u64> = task::spawn_local(async move {
        let _canceller = guard;
        r.here();
        future::pending::<u64>().await
    });
    for _ in 1..n {
        let (r, mut inner) = (roll.clone(), AbortGuard(handle));
        handle = task::spawn_local(async move {
            r.here();
            (&mut inner.0).await.expect("not cancelled from inside")
        });
    }
    roll.wait_for(n).await;
    let t1 = Instant::now();
    handle.abort();
    let outer = handle.await;
    cancelled.await.expect("the innermost guard ran");
    let t2 = Instant::now();
    assert!(outer.expect_err("aborted").is_cancelled());
    assert_eq!(tally.hits.get(), 1);
    rep(t0, &[("build", t1), ("cancel", t2)])
}

/// N nested boxed `async` blocks polled once, then dropped: the idiomatic Rust
/// cancel, a recursive drop down to the innermost guard.
async fn cancel_nested_drop(n: usize) -> Rep {
    let t0 = Instant::now();
    let (tally, _unused) = Tally::new(1);
    let guard = OnDrop(tally.clone());
    let (tx, rx) = oneshot::channel::<u64>();
    let mut fut: LocalBoxFuture<'static, u64> = Box::pin(async move {
        let _canceller = guard;
        rx.await.expect("sent")
    });
    for _ in 1..n {
        let inner = fut;
        // A level of the async call stack is its own `async` block, however little it does.
        #[allow(clippy::redundant_async_block)]
        let level = async move { inner.await };
        fut = Box::pin(level);
    }
    assert!(futures::poll!(fut.as_mut()).is_pending());
    let t1 = Instant::now();
    drop(fut);
    let t2 = Instant::now();
    assert_eq!(tally.hits.get(), 1);
    drop(tx);
    rep(t0, &[("build", t1), ("cancel", t2)])
}

/// N tasks awaiting each other's `JoinHandle`; abort the innermost and let the error
/// travel up to the outermost: the upward half of a Deferred cancel.
async fn cancel_abort_innermost_error_up(n: usize) -> Rep {
    let t0 = Instant::now();
    let roll = Roll::default();
    let r = roll.clone();
    let innermost: JoinHandle<u64> = task::spawn_local(async move {
        r.here();
        future::pending::<u64>().await
    });
    let abort = innermost.abort_handle();
    let r = roll.clone();
    let mut handle: JoinHandle<Result<u64, ()>> = task::spawn_local(async move {
        r.here();
        innermost.await.map_err(drop)
    });
    for _ in 2..n {
        let (r, inner) = (roll.clone(), handle);
        handle = task::spawn_local(async move {
            r.here();
            inner.await.unwrap_or(Err(()))
        });
    }
    roll.wait_for(n).await;
    let t1 = Instant::now();
    abort.abort();
    let out = handle.await.expect("outer task completes");
    let t2 = Instant::now();
    assert!(out.is_err());
    rep(t0, &[("build", t1), ("cancel", t2)])
}

// ---------------------------------------------------------------------------
// gather: wait for N results
// ---------------------------------------------------------------------------

/// `join_all` over N oneshot receivers, polled once, then every sender fires.
async fn gather_join_all(n: usize) -> Rep {
    let t0 = Instant::now();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| oneshot::channel::<usize>()).unzip();
    let t1 = Instant::now();
    let mut all = Box::pin(future::join_all(receivers));
    assert!(futures::poll!(all.as_mut()).is_pending());
    let t2 = Instant::now();
    for (i, tx) in senders.into_iter().enumerate() {
        tx.send(i).expect("receiver kept");
    }
    let out = all.await;
    let t3 = Instant::now();
    assert_eq!(out.len(), n);
    assert_eq!(out[n - 1], Ok(n - 1));
    rep(t0, &[("create", t1), ("gather", t2), ("fire", t3)])
}

/// The same inside `task::unconstrained`: tokio's cooperative budget (128 polls) makes
/// the primary re-poll every pending member after each budget round (quadratic in N).
async fn gather_join_all_unconstrained(n: usize) -> Rep {
    task::unconstrained(gather_join_all(n)).await
}

// ---------------------------------------------------------------------------
// timers
// ---------------------------------------------------------------------------

fn millis(i: usize) -> Duration {
    Duration::from_millis(i as u64 + 1)
}

/// N tasks each sleeping (i+1) ms on the paused clock, which jumps from deadline to
/// deadline; done when the last has woken.
async fn timers_sleep_tasks(n: usize) -> Rep {
    let t0 = Instant::now();
    let (tally, all_done) = Tally::new(n);
    for i in 0..n {
        let tally = tally.clone();
        task::spawn_local(async move {
            sleep(millis(i)).await;
            tally.hit();
        });
    }
    let t1 = Instant::now();
    all_done.await.expect("every timer fired");
    let t2 = Instant::now();
    rep(t0, &[("schedule", t1), ("fire", t2)])
}

/// N `Sleep`s in one `FuturesUnordered`, on the paused clock.
async fn timers_sleep_unordered(n: usize) -> Rep {
    let t0 = Instant::now();
    let mut timers: FuturesUnordered<Sleep> = (0..n).map(|i| sleep(millis(i))).collect();
    let t1 = Instant::now();
    let mut fired = 0;
    while timers.next().await.is_some() {
        fired += 1;
    }
    let t2 = Instant::now();
    assert_eq!(fired, n);
    rep(t0, &[("schedule", t1), ("fire", t2)])
}

const AN_HOUR: Duration = Duration::from_secs(3600);

/// N tasks each sleeping an hour (+ i ms), all registered in the timer wheel, then all
/// aborted; done when every task has been dropped.
async fn timers_cancel_abort_tasks(n: usize) -> Rep {
    let t0 = Instant::now();
    let roll = Roll::default();
    let (tally, all_dropped) = Tally::new(n);
    let tasks: Vec<JoinHandle<()>> = (0..n)
        .map(|i| {
            let (roll, dropped) = (roll.clone(), OnDrop(tally.clone()));
            task::spawn_local(async move {
                let _dropped = dropped;
                let timer = sleep(AN_HOUR + millis(i));
                roll.here();
                timer.await;
                unreachable!("a cancelled timer fired");
            })
        })
        .collect();
    roll.wait_for(n).await;
    let t1 = Instant::now();
    for t in &tasks {
        t.abort();
    }
    all_dropped.await.expect("every task dropped");
    let t2 = Instant::now();
    rep(t0, &[("schedule", t1), ("cancel", t2)])
}

/// N boxed `Sleep`s an hour away, polled once (registered), then dropped.
async fn timers_cancel_drop(n: usize) -> Rep {
    let t0 = Instant::now();
    let mut timers: Vec<Pin<Box<Sleep>>> = (0..n).map(|i| Box::pin(sleep(AN_HOUR + millis(i)))).collect();
    future::poll_fn(|cx| {
        for t in timers.iter_mut() {
            assert!(t.as_mut().poll(cx).is_pending());
        }
        std::task::Poll::Ready(())
    })
    .await;
    let t1 = Instant::now();
    drop(timers);
    let t2 = Instant::now();
    rep(t0, &[("schedule", t1), ("cancel", t2)])
}

/// N tasks each sleeping zero on the real clock (tokio rounds up to its 1 ms tick).
async fn reactor_sleep_zero_tasks(n: usize) -> Rep {
    let t0 = Instant::now();
    let (tally, all_done) = Tally::new(n);
    for _ in 0..n {
        let tally = tally.clone();
        task::spawn_local(async move {
            sleep(Duration::ZERO).await;
            tally.hit();
        });
    }
    let t1 = Instant::now();
    all_done.await.expect("every timer fired");
    let t2 = Instant::now();
    rep(t0, &[("schedule", t1), ("run", t2)])
}

/// N tasks that just run: "call soon" without a timer.
async fn reactor_spawn_only(n: usize) -> Rep {
    let t0 = Instant::now();
    let (tally, all_done) = Tally::new(n);
    for _ in 0..n {
        let tally = tally.clone();
        task::spawn_local(async move { tally.hit() });
    }
    let t1 = Instant::now();
    all_done.await.expect("every task ran");
    let t2 = Instant::now();
    rep(t0, &[("schedule", t1), ("run", t2)])
}

// ---------------------------------------------------------------------------
// the benchmarks
// ---------------------------------------------------------------------------

fn bench(name: &str, n: usize) -> Option<()> {
    let (unit, results) = match name {
        "chain" => (
            "callback",
            vec![
                measure(Clock::Real, "ready_map_boxed", n, chain_ready_map_boxed),
                measure(Clock::Real, "oneshot_tasks", n, chain_oneshot_tasks),
            ],
        ),
        "chain-nested" => (
            "level",
            vec![
                measure(Clock::Real, "nested_async_boxed", n, nested_async_boxed),
                measure(Clock::Real, "join_handle_tasks", n, nested_join_handle_tasks),
            ],
        ),
        "fanout" => (
            "observer",
            vec![
                measure(Clock::Real, "shared_spawn_local", n, fanout_shared_tasks),
                measure(Clock::Real, "shared_futures_unordered", n, fanout_shared_unordered),
                measure(Clock::Real, "watch_spawn_local", n, fanout_watch_tasks),
                measure(Clock::Real, "broadcast_spawn_local", n, fanout_broadcast_tasks),
            ],
        ),
        "cancel-chain" => (
            "layer",
            vec![
                measure(Clock::Real, "abort_on_drop_cascade_tasks", n, cancel_abort_cascade),
                measure(Clock::Real, "nested_async_drop", n, cancel_nested_drop),
                measure(Clock::Real, "abort_innermost_error_up_tasks", n, cancel_abort_innermost_error_up),
            ],
        ),
        "gather" => (
            "member",
            vec![
                measure(Clock::Real, "join_all_oneshot", n, gather_join_all),
                measure(Clock::Real, "join_all_oneshot_unconstrained", n, gather_join_all_unconstrained),
            ],
        ),
        "timers" => (
            "timer",
            vec![
                measure(Clock::Paused, "sleep_spawn_local", n, timers_sleep_tasks),
                measure(Clock::Paused, "sleep_futures_unordered", n, timers_sleep_unordered),
            ],
        ),
        "timers-cancel" => (
            "timer",
            vec![
                measure(Clock::RealTimeOnly, "sleep_spawn_local_abort", n, timers_cancel_abort_tasks),
                measure(Clock::RealTimeOnly, "sleep_boxed_drop", n, timers_cancel_drop),
            ],
        ),
        "reactor-timers" => (
            "timer",
            vec![
                measure(Clock::Real, "sleep_zero_spawn_local", n, reactor_sleep_zero_tasks),
                measure(Clock::Real, "spawn_local_call_soon", n, reactor_spawn_only),
            ],
        ),
        _ => return None,
    };
    emit(name, n, unit, results);
    Some(())
}

const BENCHES: &str = "chain|chain-nested|fanout|cancel-chain|gather|timers|timers-cancel|reactor-timers";

fn usage() -> ! {
    eprintln!("usage: tokio-peer <{BENCHES}> N | echo-server PORT | http-server PORT");
    std::process::exit(2);
}

/// TCP echo: a task per connection reading up to 64 KiB and writing it back.
fn echo_server(port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = Clock::Real.runtime();
    let local = LocalSet::new();
    local.block_on(&rt, async move {
        let listener = listen(port).expect("listen");
        eprintln!("tokio echo server on 127.0.0.1:{port}, pid {}", std::process::id());
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { continue };
            let _ = sock.set_nodelay(true);
            task::spawn_local(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(got @ 1..) = sock.read(&mut buf).await {
                    if sock.write_all(&buf[..got]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// A listening socket on 127.0.0.1:`port` with a backlog of 1024, as every peer uses
/// (tokio's `TcpListener::bind` would use 128, too few for 1,000 connections at once).
fn listen(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    sock.listen(1024)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(cmd), Some(arg)) = (args.first(), args.get(1)) else { usage() };
    let Ok(arg) = arg.parse::<usize>() else { usage() };
    match cmd.as_str() {
        "echo-server" => echo_server(u16::try_from(arg).unwrap_or_else(|_| usage())),
        "http-server" => http::serve(u16::try_from(arg).unwrap_or_else(|_| usage())),
        name => {
            if arg < 2 {
                usage();
            }
            // Nested boxed futures are polled and dropped recursively, one stack frame
            // per level: run on a thread whose stack fits 10^6 levels (only the pages
            // touched are committed).
            let name = name.to_owned();
            let found = std::thread::Builder::new()
                .stack_size(4 << 30)
                .spawn(move || bench(&name, arg))
                .expect("a benchmark thread")
                .join()
                .expect("the benchmark panicked");
            if found.is_none() {
                usage();
            }
        }
    }
}
