//! Fan-out and combinator costs: an ObservableDeferred fanning out to 10, 1,000 and
//! 100,000 observers; gather_results over 1,000 Deferreds; awaiting a fired Deferred
//! from async code; one Linearizer acquire + release. Regression guard for issue 5.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use weft::{gather_results, task::ensure_deferred, Deferred, Failure, Linearizer, ObservableDeferred};

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    for n in [10usize, 1_000, 100_000] {
        g.bench_function(format!("observe_and_fire.({n} observers)"), |b| {
            b.iter(|| {
                let src: Deferred<u64> = Deferred::new();
                let obs = ObservableDeferred::new(src.clone(), false);
                let ds: Vec<_> = (0..n).map(|_| obs.observe()).collect();
                src.callback(7).unwrap();
                black_box(ds)
            })
        });
    }
    g.finish();
}

fn gather(c: &mut Criterion) {
    c.bench_function("gather_results.(1000 members)", |b| {
        b.iter(|| {
            let ds: Vec<Deferred<u64>> = (0..1_000).map(|_| Deferred::new()).collect();
            let all = gather_results(ds.clone(), false);
            for (i, d) in ds.iter().enumerate() {
                d.callback(i as u64).unwrap();
            }
            black_box(all.take_result())
        })
    });
}

fn await_fired(c: &mut Criterion) {
    c.bench_function("await_fired_deferred", |b| {
        b.iter(|| {
            let out = ensure_deferred(async { Ok::<_, Failure>(weft::succeed(black_box(1u64)).await? + 1) });
            black_box(out.take_result())
        })
    });
}

fn linearizer(c: &mut Criterion) {
    let lin: Linearizer<u32> = Linearizer::new(1);
    c.bench_function("linearizer_acquire_release", |b| {
        b.iter(|| {
            let p = lin.queue(black_box(1)).take_result();
            drop(black_box(p))
        })
    });
}

criterion_group!(benches, fanout, gather, await_fired, linearizer);
criterion_main!(benches);
