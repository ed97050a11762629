//! The floor under a nested level and a cancelled layer: weft beside the minimal model
//! of the same protocol (`benches/compare/floor_model.rs`, which says what it keeps and
//! what it leaves out), in the same run, on `peer_bench`'s `chain-nested` and
//! `cancel-chain` scenarios at 1,000 (each iteration drops what it made, too).

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft::{CancelledError, Deferred, Failure};

#[path = "compare/floor_model.rs"]
mod model;

use model::{Boxed, Inline, Next, D};

fn floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("nested_floor");
    let n = 1000usize;
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::from_parameter(format!("weft, depth {n}")), |b| {
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
            let ds: Vec<D<Inline>> = (0..n).map(|_| D::new()).collect();
            for i in (0..n - 1).rev() {
                ds[i].add_callback(Inline(|next, _| Next::Wait(next), ds[i + 1].clone()));
                ds[i].callback(Ok(0));
            }
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

    let mut g = c.benchmark_group("cancel_floor");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::from_parameter(format!("weft, {n} layers")), |b| {
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
            let f: Failure = ds[0].take_result().unwrap().unwrap_err();
            assert!(f.check::<CancelledError>() && ran.get() == 1);
        })
    });
    g.bench_function(BenchmarkId::from_parameter(format!("model, inline call, {n} layers")), |b| {
        b.iter(|| {
            let ran = Rc::new(Cell::new(0u32));
            let inner = D::<Inline>::with_canceller(ran.clone());
            let ds: Vec<D<Inline>> = (0..n).map(|_| D::new()).collect();
            for i in (0..n).rev() {
                let next = if i + 1 < n { ds[i + 1].clone() } else { inner.clone() };
                ds[i].add_callback(Inline(|next, _| Next::Wait(next), next));
                ds[i].callback(Ok(0));
            }
            ds[0].cancel();
            assert!(ds[0].result() == Some(Err(())) && ran.get() == 1);
        })
    });
    g.finish();
}

criterion_group!(benches, floor);
criterion_main!(benches);
