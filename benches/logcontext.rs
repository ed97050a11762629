//! Cost of log contexts on the callback path: a 1,000-callback chain whose callbacks are
//! added inside one context and fired from another, against the same chain with no
//! context at all. Regression guard for the "under 3 ns added per callback" target.
//!
//! Also the worst case, where every callback's context differs from the previous one's,
//! so each callback is a real switch, with each `CpuClock`: the default charges the
//! time-stamp counter's ticks (read every few switches here, where switches are dense)
//! and settles against the thread CPU clock per reactor turn (issue 15 target: at most
//! 30 ns per switch), `ThreadPerSwitch` and `Monotonic` read the counter at every
//! switch, `Off` reads no clock. `paired_switches` prints the paired medians.
//!
//! With the `tracing` feature every real switch also exits and enters the contexts'
//! `tracing` spans: `paired_switch` prints the cost per switch (the alternating chain, CPU
//! clock off, against the chain with no context), to compare a build with the feature and
//! one without; with the feature it also prints the cost with a `tracing-subscriber`
//! registry installed (spans recorded) against none.
//!
//! Run: `cargo bench --bench logcontext -- --warm-up-time 1 --measurement-time 3`
//! (`--features tracing` for the span cost; `-- paired` for the paired figures only).

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use weft::logcontext::{set_cpu_clock, CpuClock, LoggingContext, PreserveLoggingContext};
use weft::Deferred;

const N: u64 = 1_000;

/// Adds `N` callbacks in `adder`'s context (alternating with `other` if `alternate`),
/// then fires the chain in `firer`'s context.
fn chain(adder: &LoggingContext, other: &LoggingContext, firer: &LoggingContext, alternate: bool) -> u64 {
    let d: Deferred<u64> = Deferred::new();
    {
        let _add = PreserveLoggingContext::new(adder.clone());
        for i in 0..N {
            if alternate && i % 2 == 1 {
                let _o = PreserveLoggingContext::new(other.clone());
                d.add_callback(|x| x + 1);
            } else {
                d.add_callback(|x| x + 1);
            }
        }
    }
    let _fire = PreserveLoggingContext::new(firer.clone());
    d.callback(black_box(0)).unwrap();
    d.take_result().unwrap().unwrap()
}

fn bench(c: &mut Criterion) {
    let sentinel = LoggingContext::sentinel();
    let a = LoggingContext::new("request-a");
    let b = LoggingContext::new("request-b");
    let mut g = c.benchmark_group(format!("logcontext_chain.({N} callbacks)"));
    g.bench_function("no_context", |bench| bench.iter(|| chain(&sentinel, &sentinel, &sentinel, false)));
    g.bench_function("added_in_a_fired_from_b", |bench| bench.iter(|| chain(&a, &a, &b, false)));
    for (clock, name) in [
        (CpuClock::Thread, "thread"),
        (CpuClock::ThreadPerSwitch, "per switch"),
        (CpuClock::Monotonic, "monotonic"),
        (CpuClock::Off, "off"),
    ] {
        set_cpu_clock(clock);
        if clock != CpuClock::Thread {
            let id = format!("added_in_a_fired_from_b.(clock {name})");
            g.bench_function(id, |bench| bench.iter(|| chain(&a, &a, &b, false)));
        }
        let id = format!("alternating_a_b.(clock {name})");
        g.bench_function(id, |bench| bench.iter(|| chain(&a, &b, &sentinel, true)));
    }
    set_cpu_clock(CpuClock::Thread);
    g.finish();
}

/// The same comparison, paired: each round times a batch without contexts and a batch
/// with, back to back, so the drift of a shared machine cancels out; prints the median
/// of the per-round differences.
fn paired(_c: &mut Criterion) {
    let sentinel = LoggingContext::sentinel();
    let a = LoggingContext::new("request-a");
    let b = LoggingContext::new("request-b");
    let batch = 50;
    let time = |adder: &LoggingContext, firer: &LoggingContext| {
        let start = Instant::now();
        for _ in 0..batch {
            black_box(chain(adder, adder, firer, false));
        }
        start.elapsed().as_nanos() as f64 / (batch as f64 * N as f64)
    };
    for clock in [CpuClock::Thread, CpuClock::Monotonic, CpuClock::Off] {
        set_cpu_clock(clock);
        let mut diffs: Vec<f64> = (0..400)
            .map(|round| {
                // Alternate which goes first, so neither always runs on a warm cache.
                if round % 2 == 0 {
                    let base = time(&sentinel, &sentinel);
                    time(&a, &b) - base
                } else {
                    let with = time(&a, &b);
                    with - time(&sentinel, &sentinel)
                }
            })
            .collect();
        diffs.sort_by(|x, y| x.total_cmp(y));
        println!(
            "paired overhead (clock {clock:?}): {:.2} ns per callback (median of {} rounds)",
            diffs[diffs.len() / 2],
            diffs.len()
        );
    }
    set_cpu_clock(CpuClock::Thread);
}

/// Median of per-round differences (ns per callback) between `with` and `base`, each
/// timing a batch; rounds alternate which goes first.
fn paired_median(rounds: usize, mut base: impl FnMut() -> f64, mut with: impl FnMut() -> f64) -> f64 {
    let mut diffs: Vec<f64> = (0..rounds)
        .map(|round| {
            if round % 2 == 0 {
                let b = base();
                with() - b
            } else {
                let w = with();
                w - base()
            }
        })
        .collect();
    diffs.sort_by(|x, y| x.total_cmp(y));
    diffs[diffs.len() / 2]
}

/// ns per callback of `batch` alternating chains (every callback a real switch).
fn time_chains(a: &LoggingContext, b: &LoggingContext, alternate: bool) -> f64 {
    let batch = 50;
    let sentinel = LoggingContext::sentinel();
    let start = Instant::now();
    for _ in 0..batch {
        black_box(chain(a, b, &sentinel, alternate));
    }
    start.elapsed().as_nanos() as f64 / (batch as f64 * N as f64)
}

/// The cost of a real switch in this build (with or without the `tracing` feature):
/// an alternating chain against the same chain with no context, CPU clock off.
fn paired_switch(_c: &mut Criterion) {
    set_cpu_clock(CpuClock::Off);
    let sentinel = LoggingContext::sentinel();
    let a = LoggingContext::new("request-a");
    let b = LoggingContext::new("request-b");
    let feature = if cfg!(feature = "tracing") { "on" } else { "off" };
    let cost = paired_median(400, || time_chains(&sentinel, &sentinel, false), || time_chains(&a, &b, true));
    println!(
        "paired switch (feature tracing {feature}, no subscriber): {cost:.2} ns per callback over no context"
    );
    #[cfg(feature = "tracing")]
    {
        use tracing_subscriber::layer::SubscriberExt;
        // Contexts made under the subscriber have recorded spans; the same switches.
        let subscriber = tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::INFO);
        let dispatch = tracing::Dispatch::new(subscriber);
        let (ra, rb) = tracing::dispatcher::with_default(&dispatch, || {
            (LoggingContext::new("request-a"), LoggingContext::new("request-b"))
        });
        let cost = paired_median(
            400,
            || time_chains(&a, &b, true),
            || tracing::dispatcher::with_default(&dispatch, || time_chains(&ra, &rb, true)),
        );
        println!("paired switch (feature tracing on, registry subscriber): {cost:.2} ns per callback over no subscriber");
    }
    set_cpu_clock(CpuClock::Thread);
}

/// The worst case, paired: each round times a batch of the alternating chain (every
/// callback a switch) and a batch without contexts, back to back; prints, per clock, the
/// median time per callback of the alternating chain and the median of the per-round
/// differences.
fn paired_switches(_c: &mut Criterion) {
    let sentinel = LoggingContext::sentinel();
    let a = LoggingContext::new("request-a");
    let b = LoggingContext::new("request-b");
    let batch = 50;
    let time = |alternate: bool| {
        let (adder, other) = if alternate { (&a, &b) } else { (&sentinel, &sentinel) };
        let start = Instant::now();
        for _ in 0..batch {
            black_box(chain(adder, other, &sentinel, alternate));
        }
        start.elapsed().as_nanos() as f64 / (batch as f64 * N as f64)
    };
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    for clock in [CpuClock::Thread, CpuClock::ThreadPerSwitch, CpuClock::Monotonic, CpuClock::Off] {
        set_cpu_clock(clock);
        let (mut alternating, mut diffs) = (Vec::new(), Vec::new());
        for round in 0..400 {
            let (with, base) = if round % 2 == 0 {
                let base = time(false);
                (time(true), base)
            } else {
                let with = time(true);
                (with, time(false))
            };
            alternating.push(with);
            diffs.push(with - base);
        }
        println!(
            "alternating contexts (clock {clock:?}): {:.2} ns per callback, {:.2} ns over no context \
             (medians of {} paired rounds)",
            median(&mut alternating),
            median(&mut diffs),
            diffs.len()
        );
    }
    set_cpu_clock(CpuClock::Thread);
}

criterion_group!(benches, bench, paired, paired_switch, paired_switches);
criterion_main!(benches);
