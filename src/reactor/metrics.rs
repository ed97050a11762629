//! Reactor metrics: what each turn of the loop did, counted as it runs
//! ([`Recorder`], a few `Cell`s in the reactor), read as a plain struct with
//! [`ReactorHandle::metrics`](super::ReactorHandle::metrics), and written in Prometheus's
//! text format with [`ReactorMetrics::to_prometheus`].
//!
//! # Cost
//!
//! Per turn, not per callback: two clock reads (when the wait returns and when the turn
//! ends), a peek at the earliest timer, four histogram updates (a short linear search of
//! at most 13 bounds each) and a few counter adds. The per-callback paths are not
//! touched, except a local count of the timers a turn runs. Gauges (timers pending,
//! connections, the thread pool) and the per-context totals are read only when
//! `metrics()` is called.

use std::cell::Cell;
use std::fmt::{self, Write};
use std::time::{Duration, Instant};

use crate::logcontext::{context_totals, ContextTotals};

/// A snapshot of a reactor's metrics; see [`ReactorHandle::metrics`](super::ReactorHandle::metrics).
///
/// Histograms and counters count from the reactor's creation; gauges are read at the
/// snapshot.
#[derive(Clone, Debug)]
pub struct ReactorMetrics {
    /// Turns of the loop run (Twisted's reactor ticks).
    pub turns: u64,
    /// Time each turn spent working: from the return of its wait for I/O to its end
    /// (I/O handlers, timers, queued calls, a shutdown step), in seconds. Exported as
    /// Synapse's `python_twisted_reactor_tick_time`, with its buckets.
    pub tick_time: Histogram,
    /// Calls each turn ran besides I/O: due timers, `call_soon` calls and calls from
    /// other threads (Synapse's `python_twisted_reactor_pending_calls`, with its buckets).
    pub pending_calls: Histogram,
    /// Ready sources (I/O events: connections, listeners, the waker) each turn dispatched.
    pub ready_sources: Histogram,
    /// Loop lag: how late the earliest due timer of a turn ran after its deadline, in
    /// seconds, for each turn that ran timers.
    pub timer_lateness: Histogram,
    /// Callbacks run in all: timers, queued calls, calls from other threads, and I/O
    /// events dispatched.
    pub callbacks: u64,
    /// The last turn's figures.
    pub last_turn: TurnMetrics,
    /// Time since the last turn ended (`None` before the first): a frozen loop shows as a
    /// growing value (Synapse's `python_twisted_reactor_last_seen`).
    pub since_last_turn: Option<Duration>,
    /// Timers scheduled and not yet run or cancelled.
    pub pending_timers: usize,
    /// Open stream connections (TCP and Unix).
    pub open_connections: usize,
    /// Registered sources: connections, listening ports and UDP ports.
    pub sources: usize,
    /// The thread pool behind `defer_to_thread`.
    pub thread_pool: ThreadPoolMetrics,
    /// The totals of finished log contexts of this thread, by metrics name
    /// ([`LoggingContext::set_metrics_name`](crate::logcontext::LoggingContext::set_metrics_name)).
    pub contexts: Vec<ContextTotals>,
}

/// What one turn did; see [`ReactorMetrics::last_turn`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnMetrics {
    /// How long it worked (from the return of its wait to its end).
    pub duration: Duration,
    /// Timers, queued calls and calls from other threads it ran.
    pub calls: u64,
    /// I/O events it dispatched.
    pub ready_sources: u64,
}

/// The state of the reactor's thread pool; see [`ReactorMetrics::thread_pool`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadPoolMetrics {
    /// Jobs waiting for a thread.
    pub queued: usize,
    /// Threads running a job.
    pub busy: usize,
    /// Threads started.
    pub threads: usize,
    /// The most threads the pool may start.
    pub max_threads: usize,
}

/// A histogram with fixed buckets, as Prometheus keeps them.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more than `bounds`, the last for
    /// values above every bound.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    /// Observations made.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the observed values.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// The buckets as Prometheus writes them: each upper bound (`f64::INFINITY` last) with
    /// the number of observations at most that bound.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let bounds = self.bounds.iter().copied().chain(std::iter::once(f64::INFINITY));
        bounds.zip(self.counts.iter().scan(0, |total, n| {
            *total += n;
            Some(*total)
        }))
    }
}

/// Synapse's buckets for `python_twisted_reactor_tick_time` (seconds), also used for the
/// timer lateness.
const TIME_BOUNDS: [f64; 12] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];
/// Synapse's buckets for `python_twisted_reactor_pending_calls`, also used for ready sources.
const COUNT_BOUNDS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// The counters a reactor keeps as it turns.
pub(crate) struct Recorder {
    turns: Cell<u64>,
    callbacks: Cell<u64>,
    /// Calls from other threads run since the last turn ended.
    thread_calls: Cell<u64>,
    last_turn: Cell<TurnMetrics>,
    last_end: Cell<Option<Instant>>,
    tick_time: Cells<13>,
    pending_calls: Cells<11>,
    ready_sources: Cells<11>,
    timer_lateness: Cells<13>,
}

/// A histogram's counts in `Cell`s: one per bound plus one above them, and the sum.
struct Cells<const N: usize> {
    counts: [Cell<u64>; N],
    sum: Cell<f64>,
}

impl<const N: usize> Cells<N> {
    fn new() -> Cells<N> {
        Cells { counts: std::array::from_fn(|_| Cell::new(0)), sum: Cell::new(0.0) }
    }

    #[inline]
    fn observe(&self, bounds: &[f64], value: f64) {
        let i = bounds.iter().position(|b| value <= *b).unwrap_or(bounds.len());
        self.counts[i].set(self.counts[i].get() + 1);
        self.sum.set(self.sum.get() + value);
    }

    fn snapshot(&self, bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: self.counts.iter().map(Cell::get).collect(), sum: self.sum.get() }
    }
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            turns: Cell::new(0),
            callbacks: Cell::new(0),
            thread_calls: Cell::new(0),
            last_turn: Cell::new(TurnMetrics::default()),
            last_end: Cell::new(None),
            tick_time: Cells::new(),
            pending_calls: Cells::new(),
            ready_sources: Cells::new(),
            timer_lateness: Cells::new(),
        }
    }

    /// Calls from other threads ran (the waker's event).
    #[inline]
    pub(crate) fn thread_calls(&self, n: usize) {
        self.thread_calls.set(self.thread_calls.get() + n as u64);
    }

    /// A turn ended: it woke at `woke`, dispatched `ready` events, ran `calls` timers and
    /// queued calls, and its earliest due timer ran `late` after its deadline.
    #[inline]
    pub(crate) fn end_turn(&self, woke: Instant, ready: usize, calls: usize, late: Option<Duration>) {
        let end = Instant::now();
        let duration = end.saturating_duration_since(woke);
        let calls = calls as u64 + self.thread_calls.replace(0);
        let ready = ready as u64;
        self.turns.set(self.turns.get() + 1);
        self.callbacks.set(self.callbacks.get() + calls + ready);
        self.last_turn.set(TurnMetrics { duration, calls, ready_sources: ready });
        self.last_end.set(Some(end));
        self.tick_time.observe(&TIME_BOUNDS, duration.as_secs_f64());
        self.pending_calls.observe(&COUNT_BOUNDS, calls as f64);
        self.ready_sources.observe(&COUNT_BOUNDS, ready as f64);
        if let Some(late) = late {
            self.timer_lateness.observe(&TIME_BOUNDS, late.as_secs_f64());
        }
    }

    /// The counters, with the gauges the reactor reads at the snapshot.
    pub(crate) fn snapshot(&self, gauges: Gauges) -> ReactorMetrics {
        ReactorMetrics {
            turns: self.turns.get(),
            tick_time: self.tick_time.snapshot(&TIME_BOUNDS),
            pending_calls: self.pending_calls.snapshot(&COUNT_BOUNDS),
            ready_sources: self.ready_sources.snapshot(&COUNT_BOUNDS),
            timer_lateness: self.timer_lateness.snapshot(&TIME_BOUNDS),
            callbacks: self.callbacks.get(),
            last_turn: self.last_turn.get(),
            since_last_turn: self.last_end.get().map(|end| end.elapsed()),
            pending_timers: gauges.pending_timers,
            open_connections: gauges.open_connections,
            sources: gauges.sources,
            thread_pool: gauges.thread_pool,
            contexts: context_totals(),
        }
    }
}

/// What the reactor reads for a snapshot.
pub(crate) struct Gauges {
    pub(crate) pending_timers: usize,
    pub(crate) open_connections: usize,
    pub(crate) sources: usize,
    pub(crate) thread_pool: ThreadPoolMetrics,
}

impl ReactorMetrics {
    /// The metrics in Prometheus's text exposition format (version 0.0.4), to serve at
    /// `/metrics`. The reactor's tick time and pending calls use the names, types and
    /// buckets Synapse exports for Twisted (`python_twisted_reactor_tick_time`,
    /// `python_twisted_reactor_pending_calls`, `python_twisted_reactor_last_seen`), and the
    /// thread pool Synapse's `synapse_threadpool_*` with `name="weft"`, so existing
    /// dashboards work; the rest are `weft_*`. Per-context totals carry the metrics name
    /// as label `name`.
    ///
    /// ```
    /// use weft::Reactor;
    ///
    /// let reactor = Reactor::new().unwrap();
    /// reactor.iterate(Some(std::time::Duration::ZERO)).unwrap();
    /// let text = reactor.metrics().to_prometheus();
    /// assert!(text.contains("# TYPE python_twisted_reactor_tick_time histogram"));
    /// assert!(text.contains("python_twisted_reactor_tick_time_count 1"));
    /// ```
    pub fn to_prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.write_prometheus(&mut out).expect("writing to a String does not fail");
        out
    }

    /// [`to_prometheus`](Self::to_prometheus) into any `fmt::Write`.
    ///
    /// # Errors
    ///
    /// What `out` returns.
    pub fn write_prometheus(&self, out: &mut impl Write) -> fmt::Result {
        let histograms = [
            ("python_twisted_reactor_tick_time", "Tick time of the reactor (sec)", &self.tick_time),
            ("python_twisted_reactor_pending_calls", "Pending calls", &self.pending_calls),
            ("weft_reactor_ready_sources", "I/O events dispatched per turn", &self.ready_sources),
            (
                "weft_reactor_timer_lateness_seconds",
                "How late the earliest due timer of a turn ran (loop lag)",
                &self.timer_lateness,
            ),
        ];
        for (name, help, h) in histograms {
            writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram")?;
            for (le, n) in h.buckets() {
                let le = if le.is_infinite() { "+Inf".to_string() } else { le.to_string() };
                writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}")?;
            }
            writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum(), h.count())?;
        }
        let last_seen = self.since_last_turn.map_or(0.0, |d| d.as_secs_f64());
        let pool = &self.thread_pool;
        let plain: [(&str, &str, &str, String); 10] = [
            (
                "python_twisted_reactor_last_seen",
                "gauge",
                "Seconds since the reactor last ended a turn",
                last_seen.to_string(),
            ),
            ("weft_reactor_turns_total", "counter", "Turns of the loop", self.turns.to_string()),
            (
                "weft_reactor_callbacks_total",
                "counter",
                "Timers, queued calls, thread calls and I/O events run",
                self.callbacks.to_string(),
            ),
            ("weft_reactor_pending_timers", "gauge", "Timers scheduled", self.pending_timers.to_string()),
            (
                "weft_reactor_open_connections",
                "gauge",
                "Open stream connections",
                self.open_connections.to_string(),
            ),
            (
                "weft_reactor_sources",
                "gauge",
                "Registered connections, listeners and UDP ports",
                self.sources.to_string(),
            ),
            (
                "synapse_threadpool_total_threads",
                "gauge",
                "Total number of threads currently in the threadpool",
                format!("{{name=\"weft\"}} {}", pool.threads),
            ),
            (
                "synapse_threadpool_working_threads",
                "gauge",
                "Number of threads currently working in the threadpool",
                format!("{{name=\"weft\"}} {}", pool.busy),
            ),
            (
                "synapse_threadpool_max_threads",
                "gauge",
                "Maximum number of threads configured in the threadpool",
                format!("{{name=\"weft\"}} {}", pool.max_threads),
            ),
            (
                "weft_threadpool_queued_jobs",
                "gauge",
                "Jobs waiting for a pool thread",
                format!("{{name=\"weft\"}} {}", pool.queued),
            ),
        ];
        for (name, kind, help, value) in plain {
            let sep = if value.starts_with('{') { "" } else { " " };
            writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{sep}{value}")?;
        }
        let per_context: [(&str, &str, ContextValue); 7] = [
            ("weft_context_finished_total", "Log contexts finished", |c| c.finished.to_string()),
            ("weft_context_cpu_seconds_total", "CPU time used in the contexts", |c| {
                c.stats.cpu_time.as_secs_f64().to_string()
            }),
            ("weft_context_callbacks_total", "Callbacks run in the contexts", |c| {
                c.stats.callbacks.to_string()
            }),
            ("weft_context_db_txn_count_total", "Database transactions", |c| {
                c.stats.db_txn_count.to_string()
            }),
            ("weft_context_db_txn_duration_seconds_total", "Time in database transactions", |c| {
                c.stats.db_txn_duration.as_secs_f64().to_string()
            }),
            ("weft_context_db_sched_duration_seconds_total", "Time waiting for a database connection", |c| {
                c.stats.db_sched_duration.as_secs_f64().to_string()
            }),
            ("weft_context_evt_db_fetch_count_total", "Events fetched from the database", |c| {
                c.stats.evt_db_fetch_count.to_string()
            }),
        ];
        if !self.contexts.is_empty() {
            for (name, help, value) in per_context {
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter")?;
                for c in &self.contexts {
                    writeln!(out, "{name}{{name=\"{}\"}} {}", escape_label(&c.name), value(c))?;
                }
            }
        }
        Ok(())
    }
}

/// How a per-context metric is read from a context's totals.
type ContextValue = fn(&ContextTotals) -> String;

/// A label value as Prometheus's text format wants it: `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
