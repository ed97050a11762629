//! The measurement harness shared by the Rust peers of the comparison: weft's
//! `examples/peer_bench.rs` and `benches/compare/tokio-peer` both include this file
//! (`#[path] mod harness;`), so both measure the same way; `twisted_peer.py` follows the
//! same protocol in Python.
//!
//! Protocol of one variant: one warm-up repetition (discarded), then timed repetitions
//! until the time budget is spent, at least `BENCH_MIN_REPS` (3 when the warm-up shows
//! that many would take over twice the budget) and at most `BENCH_MAX_REPS`; then, when
//! the binary counts allocations (feature `count-allocs`), one more repetition under the
//! counter. A repetition is the whole scenario, from nothing to a checked result.
//!
//! The result is one JSON object: `variant`, `ns_per_op` (median repetition ÷ N),
//! `min_ns_per_op` (fastest ÷ N), `reps`, `phases` (median of each phase ÷ N; informative
//! only, where work happens differs between implementations), and with the counter
//! `allocs_per_op` (allocations plus reallocations ÷ N) and `alloc_bytes_per_op`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The most phases a scenario splits its repetition into.
const MAX_PHASES: usize = 4;

/// One timed repetition: its total and its phases, in nanoseconds. Fixed-size, so
/// recording it allocates nothing and a counted repetition counts the scenario only.
pub struct Rep {
    total: u64,
    phases: [(&'static str, u64); MAX_PHASES],
    len: usize,
}

/// A repetition that started at `t0`; `marks` are the ends of its consecutive phases.
pub fn rep(t0: Instant, marks: &[(&'static str, Instant)]) -> Rep {
    assert!(marks.len() <= MAX_PHASES, "at most {MAX_PHASES} phases");
    let mut r = Rep { total: 0, phases: [("", 0); MAX_PHASES], len: marks.len() };
    let mut start = t0;
    for (slot, &(name, end)) in r.phases.iter_mut().zip(marks) {
        *slot = (name, nanos(end - start));
        start = end;
    }
    r.total = nanos(start - t0);
    r
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// How many repetitions to run, and for how long: `BENCH_BUDGET_S` (default 1.0),
/// `BENCH_MIN_REPS` (5), `BENCH_MAX_REPS` (101).
pub struct Budget {
    time: Duration,
    min_reps: usize,
    max_reps: usize,
}

impl Budget {
    pub fn from_env() -> Budget {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
        Budget {
            time: Duration::from_secs_f64(var("BENCH_BUDGET_S").unwrap_or(1.0).clamp(0.0, 3600.0)),
            min_reps: var("BENCH_MIN_REPS").map_or(5, |v| v.max(1.0) as usize),
            max_reps: var("BENCH_MAX_REPS").map_or(101, |v| v.max(1.0) as usize),
        }
    }

    /// The time budget in seconds, for the JSON line's `meta`.
    pub fn seconds(&self) -> f64 {
        self.time.as_secs_f64()
    }

    /// Starts the timed repetitions, given the warm-up repetition.
    pub fn start(&self, warm_up: &Rep) -> Reps<'_> {
        let slow = warm_up.total as f64 * self.min_reps as f64 > 2.0 * self.time.as_nanos() as f64;
        let required = if slow { self.min_reps.min(3) } else { self.min_reps };
        Reps {
            budget: self,
            required,
            start: Instant::now(),
            done: Vec::with_capacity(self.max_reps.max(required)),
        }
    }
}

/// The timed repetitions of one variant, as they are collected.
pub struct Reps<'a> {
    budget: &'a Budget,
    required: usize,
    start: Instant,
    done: Vec<Rep>,
}

impl Reps<'_> {
    /// Whether another repetition should run.
    pub fn want_more(&self) -> bool {
        let n = self.done.len();
        n < self.required || (n < self.budget.max_reps && self.start.elapsed() < self.budget.time)
    }

    pub fn push(&mut self, r: Rep) {
        self.done.push(r);
    }

    /// The result object for `variant` at size `n`; `counted` is what [`count_allocs`]
    /// measured for one more repetition (None without the counter).
    pub fn summary(self, variant: &str, n: usize, counted: Option<Allocs>) -> Value {
        let reps = self.done;
        let mut totals: Vec<u64> = reps.iter().map(|r| r.total).collect();
        let fastest = totals.iter().copied().min().expect("at least one repetition");
        let mut phases = serde_json::Map::new();
        for i in 0..reps[0].len {
            let mut v: Vec<u64> = reps.iter().map(|r| r.phases[i].1).collect();
            phases.insert(reps[0].phases[i].0.to_owned(), json!(per_op(median(&mut v), n, 2)));
        }
        let mut out = json!({
            "variant": variant,
            "ns_per_op": per_op(median(&mut totals), n, 2),
            "min_ns_per_op": per_op(fastest as f64, n, 2),
            "reps": reps.len(),
            "phases": phases,
        });
        if let Some(a) = counted {
            out["allocs_per_op"] = json!(per_op(a.events as f64, n, 3));
            out["alloc_bytes_per_op"] = json!(per_op(a.bytes as f64, n, 1));
        }
        out
    }
}

/// Median of `v` (sorted in place); `v` must not be empty.
fn median(v: &mut [u64]) -> f64 {
    v.sort_unstable();
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid] as f64
    } else {
        (v[mid - 1] as f64 + v[mid] as f64) / 2.0
    }
}

/// `x / n` rounded to `digits` decimals.
fn per_op(x: f64, n: usize, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x / n as f64 * scale).round() / scale
}

/// What one counted run asked of the allocator.
#[cfg_attr(not(feature = "count-allocs"), allow(dead_code))]
pub struct Allocs {
    /// Allocations plus reallocations.
    events: u64,
    /// Bytes requested by them.
    bytes: u64,
}

#[cfg(feature = "count-allocs")]
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// Which allocator this binary runs with, for the JSON line's `meta`.
pub const ALLOCATOR: &str =
    if cfg!(feature = "count-allocs") { "system, counted (stats_alloc)" } else { "system" };

/// Runs `f`; with the counter (feature `count-allocs`), also returns what it allocated
/// (on every thread: the peers run one thread while measuring).
pub fn count_allocs<R>(f: impl FnOnce() -> R) -> (R, Option<Allocs>) {
    #[cfg(feature = "count-allocs")]
    {
        let region = stats_alloc::Region::new(GLOBAL);
        let out = f();
        let s = region.change();
        let grown = usize::try_from(s.bytes_reallocated).unwrap_or(0);
        let allocs = Allocs {
            events: (s.allocations + s.reallocations) as u64,
            bytes: (s.bytes_allocated + grown) as u64,
        };
        (out, Some(allocs))
    }
    #[cfg(not(feature = "count-allocs"))]
    {
        (f(), None)
    }
}

/// The JSON line of one benchmark: `impl`, `bench`, `n`, `unit`, the variants' results
/// (the first is the primary, closest analog of the Twisted scenario) and `meta`.
pub fn line(
    implementation: &str,
    bench: &str,
    n: usize,
    unit: &str,
    results: Vec<Value>,
    meta: Value,
) -> Value {
    let mut meta = meta;
    meta["profile"] = json!(if cfg!(debug_assertions) { "debug" } else { "release" });
    meta["allocator"] = json!(ALLOCATOR);
    meta["budget_s"] = json!(Budget::from_env().seconds());
    json!({"impl": implementation, "bench": bench, "n": n, "unit": unit, "results": results, "meta": meta})
}
