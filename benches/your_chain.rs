//! Template: benchmark your own callback chain or handler (the guide is `benches/README.md`).
//!
//! Copy this file, replace `handle_request` with your code, and run
//!
//!   cargo bench --bench your_chain                           # time per call (criterion)
//!   cargo bench --bench your_chain --features count-allocs   # + allocations per call
//!
//! It measures a typical handler: look a key up in a slow "store" (a Deferred fired by a
//! timer 2 ms later), turn the answer into a response in two callbacks, and give up after a
//! timeout. Time is weft's deterministic `Clock`, so `clock.advance` runs the timers at once:
//! the benchmark measures the CPU cost of the chain, not 2 ms of waiting.
//!
//! Allocations are counted by `stats_alloc`, a safe counting wrapper around the system
//! allocator installed as the global allocator. Its atomic counters make every allocation
//! a little slower, so here it is switched on only by the `count-allocs` feature; in your
//! own crate, add `stats_alloc` as a dev-dependency and keep or drop the `cfg` lines.
//! Criterion writes its HTML report (distributions, history) to `target/criterion/report/`.

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weft::reactor::defer_later;
use weft::{add_timeout, Clock, Deferred};

#[cfg(feature = "count-allocs")]
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

// ---------------------------------------------------------------------------
// Your code goes here.
// ---------------------------------------------------------------------------

/// The "store": answers `key * 10` after 2 ms on `clock`.
fn lookup(clock: &Clock, key: u64) -> Deferred<u64> {
    defer_later(clock, Duration::from_millis(2), move || key * 10)
}

/// The handler being measured: lookup, two steps, a 1 s timeout.
fn handle_request(clock: &Clock, key: u64) -> Deferred<u64> {
    let d = lookup(clock, key);
    d.add_callback(|v| v + 1).add_callback(|v| v * 2);
    add_timeout(&d, Duration::from_secs(1), clock);
    d
}

/// One whole request: start it, let the clock run its timers, check the answer.
fn one_request(clock: &Clock, key: u64) {
    let d = handle_request(clock, black_box(key));
    clock.advance(Duration::from_millis(2));
    assert_eq!(d.take_result().expect("fired").expect("no failure"), (key * 10 + 1) * 2);
}

// ---------------------------------------------------------------------------
// The measurements.
// ---------------------------------------------------------------------------

fn bench_handler(c: &mut Criterion) {
    let clock = Clock::new();
    print_allocations_per_call("handle_request", || one_request(&clock, 7));

    let mut g = c.benchmark_group("your_chain");
    g.throughput(Throughput::Elements(1));
    g.bench_function("handle_request", |b| b.iter(|| one_request(&clock, 7)));

    // A chain of 1,000 callbacks, for the cost per link.
    let n = 1000u64;
    g.throughput(Throughput::Elements(n));
    g.bench_function("chain of 1000 callbacks", |b| {
        b.iter(|| {
            let d = Deferred::<u64>::new();
            for _ in 0..n {
                d.add_callback(|x| x + 1);
            }
            d.callback(black_box(0)).expect("not fired yet");
            assert_eq!(d.take_result().expect("fired").expect("no failure"), n);
        })
    });
    g.finish();

    // A handler whose callbacks capture state, to see what a capture costs.
    let seen = Rc::new(Cell::new(0u64));
    print_allocations_per_call("capturing callback", || {
        let d = Deferred::<u64>::new();
        let s = seen.clone();
        d.add_callback(move |v| {
            s.set(v);
            v
        });
        d.callback(1).expect("not fired yet");
    });
}

/// Prints the allocations one call of `f` makes, averaged over 1,000 calls after a
/// warm-up call (with `--features count-allocs`; otherwise says how to get them).
fn print_allocations_per_call(name: &str, mut f: impl FnMut()) {
    #[cfg(feature = "count-allocs")]
    {
        const CALLS: u32 = 1000;
        f();
        let region = stats_alloc::Region::new(GLOBAL);
        for _ in 0..CALLS {
            f();
        }
        let s = region.change();
        let allocs = (s.allocations + s.reallocations) as f64 / f64::from(CALLS);
        let bytes = s.bytes_allocated as f64 / f64::from(CALLS);
        println!("{name}: {allocs:.2} allocations per call, {bytes:.0} bytes allocated per call");
    }
    #[cfg(not(feature = "count-allocs"))]
    {
        f();
        println!("{name}: allocations not counted (run with --features count-allocs)");
    }
}

criterion_group!(benches, bench_handler);
criterion_main!(benches);
