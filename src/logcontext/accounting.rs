//! Per-context accounting: what a context has used ([`ContextStats`]) and the clock that
//! charges time at each switch ([`CpuClock`]).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What a context has used: thread CPU time and callbacks run in it, and counters the
/// application bumps (Synapse's `ContextResourceUsage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextStats {
    /// Thread CPU time spent while this context was current.
    pub cpu_time: Duration,
    /// Callbacks, cancellers and scheduled calls run in this context.
    pub callbacks: u64,
    /// Database transactions run (Synapse's `db_txn_count`).
    pub db_txn_count: u64,
    /// Time spent in database transactions (`db_txn_duration_sec`).
    pub db_txn_duration: Duration,
    /// Time spent waiting for a database connection (`db_sched_duration_sec`).
    pub db_sched_duration: Duration,
    /// Events fetched from the database (`evt_db_fetch_count`).
    pub evt_db_fetch_count: u64,
}

impl ContextStats {
    /// Adds `other` to `self`, field by field.
    pub fn add(&mut self, other: &ContextStats) {
        self.cpu_time += other.cpu_time;
        self.callbacks += other.callbacks;
        self.db_txn_count += other.db_txn_count;
        self.db_txn_duration += other.db_txn_duration;
        self.db_sched_duration += other.db_sched_duration;
        self.evt_db_fetch_count += other.evt_db_fetch_count;
    }
}

/// Which clock charges time to contexts at each switch; see [`set_cpu_clock`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuClock {
    /// The thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`): exact CPU time, a system call
    /// per switch. The default.
    #[default]
    Thread,
    /// The monotonic clock (`Instant`): wall time while the context was current, which is
    /// CPU time as long as callbacks do not block; no system call.
    Monotonic,
    /// No clock: `cpu_time` stays zero and switches read no clock.
    Off,
}

/// Chooses the clock that charges time to contexts at switches on this thread
/// ([`CpuClock::Thread`] by default).
pub fn set_cpu_clock(clock: CpuClock) {
    super::context::set_clock(clock)
}

impl CpuClock {
    /// The clock's reading, or `None` when off.
    pub(super) fn now(self) -> Option<Duration> {
        static START: OnceLock<Instant> = OnceLock::new();
        match self {
            CpuClock::Thread => {
                Some(cpu_time::ThreadTime::try_now().map(|t| t.as_duration()).unwrap_or_default())
            }
            CpuClock::Monotonic => Some(START.get_or_init(Instant::now).elapsed()),
            CpuClock::Off => None,
        }
    }
}

/// The totals of the finished log contexts of one metrics name (see
/// [`LoggingContext::set_metrics_name`](super::LoggingContext::set_metrics_name)), as
/// [`context_totals`] reports them: Synapse's per-servlet and per-background-process
/// resource metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContextTotals {
    /// The metrics name.
    pub name: String,
    /// How many contexts of this name finished.
    pub finished: u64,
    /// Their totals, summed (children included, as each context's own totals are).
    pub stats: ContextStats,
}

thread_local! {
    /// This thread's totals by metrics name.
    static TOTALS: std::cell::RefCell<std::collections::BTreeMap<std::rc::Rc<str>, (u64, ContextStats)>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
}

/// The totals of the finished contexts of this thread that had a metrics name, by name
/// (sorted). The reactor's [`metrics`](crate::ReactorHandle::metrics) includes them.
///
/// ```
/// use weft::logcontext::{context_totals, LoggingContext};
///
/// for _ in 0..2 {
///     let ctx = LoggingContext::new("GET-n");
///     ctx.set_metrics_name("docs_get");
///     ctx.add_database_transaction(std::time::Duration::from_millis(3));
///     ctx.finish();
/// }
/// let totals = context_totals();
/// let docs = totals.iter().find(|t| t.name == "docs_get").unwrap();
/// assert_eq!((docs.finished, docs.stats.db_txn_count), (2, 2));
/// ```
pub fn context_totals() -> Vec<ContextTotals> {
    TOTALS
        .try_with(|t| {
            t.borrow()
                .iter()
                .map(|(name, (finished, stats))| ContextTotals {
                    name: name.to_string(),
                    finished: *finished,
                    stats: *stats,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Adds a finished context's totals under its metrics name.
pub(super) fn record_totals(name: std::rc::Rc<str>, stats: &ContextStats) {
    let _ = TOTALS.try_with(|t| {
        let mut t = t.borrow_mut();
        let entry = t.entry(name).or_default();
        entry.0 += 1;
        entry.1.add(stats);
    });
}
