//! Deferred core benchmarks (regression guards for the targets in the Deferred issue):
//! add+fire per callback on chains of 1, 10 and 1,000 callbacks (target: under 15 ns per
//! callback at 1,000), nested chaining of depth 1,000, and cancel through 100 layers of
//! cancellers (on one Deferred, and through 100 chained Deferreds).
//!
//! The nested and chained-cancel scenarios also run on the minimal model of the protocol
//! (`benches/compare/floor_model.rs`, which says what it keeps and what it leaves out), in
//! the same group: the floor under weft's figure on this machine.
//!
//! Before the criterion groups it prints the heap bytes of a pending Deferred with one
//! callback (target: under 128), measured as the resident-memory growth of one million
//! of them, allocator overhead included.

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft::{CancelledError, Deferred, Failure};

#[path = "compare/floor_model.rs"]
mod model;

use model::{Boxed, Next, D};

fn chain(c: &mut Criterion) {
    let mut g = c.benchmark_group("chain_add_fire");
    for n in [1u64, 10, 1000] {
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::from_parameter(format!("{n} callbacks")), &n, |b, &n| {
            b.iter(|| {
                let d = Deferred::<u64>::new();
                for _ in 0..n {
                    d.add_callback(|x| x + 1);
                }
                d.callback(black_box(0)).unwrap();
                assert_eq!(d.take_result().unwrap().unwrap(), n);
            })
        });
    }
    g.finish();
}

fn nested(c: &mut Criterion) {
    let mut g = c.benchmark_group("chain_nested");
    let n = 1000usize;
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::from_parameter(format!("depth {n}")), |b| {
        b.iter(|| {
            let ds: Vec<Deferred<u64>> = (0..n).map(|_| Deferred::new()).collect();
            for i in (0..n - 1).rev() {
                let next = ds[i + 1].clone();
                ds[i].add_callback(move |_| next);
                ds[i].callback(0).unwrap();
            }
            ds[n - 1].callback(black_box(7)).unwrap();
            assert_eq!(ds[0].take_result().unwrap().unwrap(), 7);
        })
    });
    g.bench_function(BenchmarkId::from_parameter(format!("model, inline call, depth {n}")), |b| {
        b.iter(|| {
            let ds = model::nested_chain(n);
            ds[n - 1].callback(Ok(black_box(7)));
            assert_eq!(ds[0].result(), Some(Ok(7)));
        })
    });
    g.bench_function(BenchmarkId::from_parameter(format!("model, boxed call, depth {n}")), |b| {
        b.iter(|| {
            let ds: Vec<D<Boxed>> = (0..n).map(|_| D::new()).collect();
            for i in (0..n - 1).rev() {
                let next = ds[i + 1].clone();
                ds[i].add_callback(Boxed(Box::new(move |_| Next::Wait(next))));
                ds[i].callback(Ok(0));
            }
            ds[n - 1].callback(Ok(black_box(7)));
            assert_eq!(ds[0].result(), Some(Ok(7)));
        })
    });
    g.finish();
}

fn cancel(c: &mut Criterion) {
    let mut g = c.benchmark_group("cancel");
    let n = 100usize;
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::from_parameter(format!("{n} layer cancellers on one deferred")), |b| {
        b.iter(|| {
            let count = Rc::new(Cell::new(0u32));
            let k = count.clone();
            let d = Deferred::<u64>::with_canceller(move |_| k.set(k.get() + 1));
            for _ in 0..n {
                let k = count.clone();
                d.add_canceller(move |_| k.set(k.get() + 1)).add_callback(|x| x + 1);
            }
            d.cancel();
            let f = d.take_result().unwrap().unwrap_err();
            assert!(f.check::<CancelledError>());
            assert_eq!(count.get(), n as u32 + 1);
        })
    });
    g.bench_function(BenchmarkId::from_parameter(format!("{n} chained deferreds")), |b| {
        b.iter(|| {
            let ran = Rc::new(Cell::new(0u32));
            let r = ran.clone();
            let inner = Deferred::<u64>::with_canceller(move |_| r.set(r.get() + 1));
            let ds: Vec<Deferred<u64>> = (0..n).map(|_| Deferred::new()).collect();
            for i in (0..n).rev() {
                let next = if i + 1 < n { ds[i + 1].clone() } else { inner.clone() };
                ds[i].add_callback(move |_| next);
                ds[i].callback(0).unwrap();
            }
            ds[0].cancel();
            ds[0].add_errback(|f: Failure| -> Result<u64, Failure> {
                f.trap::<CancelledError>()?;
                Ok(1)
            });
            assert_eq!(ds[0].take_result().unwrap().unwrap(), 1);
            assert_eq!(ran.get(), 1);
        })
    });
    g.bench_function(
        BenchmarkId::from_parameter(format!("model, inline call, {n} chained deferreds")),
        |b| {
            b.iter(|| {
                let (ds, ran) = model::cancel_chain(n);
                ds[0].cancel();
                assert!(ds[0].result() == Some(Err(())) && ran.get() == 1);
            })
        },
    );
    g.finish();
}

/// Resident memory of this process in bytes, from /proc (Linux); None elsewhere.
fn rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn heap_bytes_of_pending_deferred() {
    const N: usize = 1_000_000;
    let before = rss_bytes();
    let ds: Vec<Deferred<u64>> = (0..N)
        .map(|_| {
            let d = Deferred::new();
            d.add_callback(|x| x + 1);
            d
        })
        .collect();
    let after = rss_bytes();
    if let (Some(before), Some(after)) = (before, after) {
        let vec_bytes = N * std::mem::size_of::<Deferred<u64>>();
        let per = (after.saturating_sub(before).saturating_sub(vec_bytes)) as f64 / N as f64;
        println!("heap bytes of a pending Deferred<u64> with one callback: {per:.1} (RSS growth over {N}, allocator overhead included)");
    }
    black_box(&ds);
}

fn sizes(_c: &mut Criterion) {
    heap_bytes_of_pending_deferred();
}

criterion_group!(benches, sizes, chain, nested, cancel);
criterion_main!(benches);
