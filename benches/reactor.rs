//! Reactor benchmarks (a regression guard, not the side-by-side comparison: that is
//! `examples/peer_bench.rs` with `shared/peers/run_peers.sh`).
//!
//! - `timers/schedule_fire.(100000)`: 100,000 `call_later`s on the `Clock`, then one
//!   `advance` fires them all.
//! - `timers/schedule_cancel.(100000)`: 100,000 `call_later`s, then cancel each.
//! - `timers/reactor_call_later0.(100000)`: 100,000 `call_later(0)` on the real loop, run
//!   until the last fired.
//! - `timers_by_size/schedule_fire.(N)`: as `schedule_fire` at 1,000, 100,000 and
//!   1,000,000 timers, per timer (`Throughput::Elements`): issue 15's "flat to a million"
//!   (at most 80 ns per timer at every size).
//! - `threads/call_from_thread.(10000)`: another thread queues 10,000 calls; the reactor
//!   runs until it has run them all.
//! - `echo/round_trips.(1000)`: 1,000 sequential 64-byte round trips over loopback, client
//!   and server on the same reactor.

use std::cell::Cell;
use std::hint::black_box;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use weft::reactor::{Address, ListenOptions, Protocol, Reactor, Transport};
use weft::{Clock, DelayedCall};

const N: u64 = 100_000;

fn timers(c: &mut Criterion) {
    let mut g = c.benchmark_group("timers");
    g.bench_function(format!("schedule_fire.({N})"), |b| {
        b.iter(|| {
            let clock = Clock::new();
            let count = Rc::new(Cell::new(0u64));
            for i in 0..N {
                let c = count.clone();
                clock.call_later(Duration::from_millis(i + 1), move || c.set(c.get() + 1));
            }
            clock.advance(Duration::from_secs(N));
            assert_eq!(count.get(), N);
        })
    });
    g.bench_function(format!("schedule_cancel.({N})"), |b| {
        b.iter(|| {
            let clock = Clock::new();
            let calls: Vec<DelayedCall> = (0..N)
                .map(|i| clock.call_later(Duration::from_secs(3600) + Duration::from_millis(i), || {}))
                .collect();
            for c in &calls {
                c.cancel().unwrap();
            }
            black_box(calls);
        })
    });
    let reactor = Reactor::new().unwrap();
    g.bench_function(format!("reactor_call_later0.({N})"), |b| {
        b.iter(|| {
            let count = Rc::new(Cell::new(0u64));
            for _ in 0..N {
                let c = count.clone();
                reactor.call_later(Duration::ZERO, move || c.set(c.get() + 1));
            }
            while count.get() < N {
                reactor.iterate(Some(Duration::from_millis(10))).unwrap();
            }
        })
    });
    g.finish();
}

fn timers_by_size(c: &mut Criterion) {
    let mut g = c.benchmark_group("timers_by_size");
    for n in [1_000u64, 100_000, 1_000_000] {
        g.throughput(criterion::Throughput::Elements(n));
        if n >= 1_000_000 {
            g.sample_size(10);
        }
        g.bench_function(format!("schedule_fire.({n})"), |b| {
            b.iter(|| {
                let clock = Clock::new();
                let count = Rc::new(Cell::new(0u64));
                for i in 0..n {
                    let c = count.clone();
                    clock.call_later(Duration::from_millis(i + 1), move || c.set(c.get() + 1));
                }
                clock.advance(Duration::from_millis(n + 1));
                assert_eq!(count.get(), n);
            })
        });
    }
    g.finish();
}

fn threads(c: &mut Criterion) {
    const M: u64 = 10_000;
    let mut g = c.benchmark_group("threads");
    let reactor = Reactor::new().unwrap();
    g.bench_function(format!("call_from_thread.({M})"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
                let handle = reactor.thread_handle();
                let cnt = count.clone();
                let start = Instant::now();
                let t = std::thread::spawn(move || {
                    for _ in 0..M {
                        let c = cnt.clone();
                        handle
                            .call_from_thread(move || {
                                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            })
                            .unwrap();
                    }
                });
                while count.load(std::sync::atomic::Ordering::Relaxed) < M {
                    reactor.iterate(Some(Duration::from_millis(10))).unwrap();
                }
                total += start.elapsed();
                t.join().unwrap();
            }
            total
        })
    });
    g.finish();
}

struct Echo(Option<Transport>);

impl Protocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.0.as_ref().unwrap().write(data);
    }
}

/// Sends 64 bytes whenever the previous 64 came back, `left` times.
struct Pinger {
    t: Option<Transport>,
    left: Rc<Cell<u64>>,
    pending: usize,
}

impl Protocol for Pinger {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.pending -= data.len();
        if self.pending == 0 {
            self.left.set(self.left.get() - 1);
            if self.left.get() > 0 {
                self.t.as_ref().unwrap().write(&[1u8; 64]);
                self.pending = 64;
            }
        }
    }
}

fn echo(c: &mut Criterion) {
    const R: u64 = 1000;
    let mut g = c.benchmark_group("echo");
    let reactor = Reactor::new().unwrap();
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), |_: &Address| Echo(None), ListenOptions::new())
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let left = Rc::new(Cell::new(0));
    let l = left.clone();
    let d = reactor.connect_tcp(
        addr,
        move |_: &Address| Pinger { t: None, left: l.clone(), pending: 0 },
        Duration::from_secs(5),
    );
    while !d.is_called() {
        reactor.iterate(Some(Duration::from_millis(10))).unwrap();
    }
    let pinger = d.take_result().unwrap().unwrap();
    g.bench_function(format!("round_trips.({R})"), |b| {
        b.iter(|| {
            left.set(R);
            {
                let mut p = pinger.borrow_mut();
                p.pending = 64;
                p.t.as_ref().unwrap().write(&[1u8; 64]);
            }
            // Not `run` and `stop`: a stop closes every connection.
            while left.get() > 0 {
                reactor.iterate(Some(Duration::from_millis(10))).unwrap();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, timers, timers_by_size, threads, echo);
criterion_main!(benches);
