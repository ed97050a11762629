//! Per-context accounting: what a context has used ([`ContextStats`]), the clock that
//! charges time to contexts ([`CpuClock`]), and the settlement that turns those charges
//! into thread CPU time.
//!
//! # How CPU time is charged (the default, [`CpuClock::Thread`])
//!
//! Reading the thread's CPU clock is a system call (about 1 µs on a virtual machine), too
//! dear for every switch: a server interleaving requests switches on nearly every
//! callback. So a switch reads the CPU's time-stamp counter instead (through `quanta`,
//! 5 to 40 ns depending on the machine, no system call; the monotonic clock where there
//! is no usable counter) and
//! charges the ticks since the previous read to the context being left, as *pending*
//! time; the first charge after a settlement also puts the context on the thread's list
//! of contexts to settle.
//!
//! Where the counter is slow and switches dense, that read is most of a switch's cost
//! (on an Intel VM it made a switch 50 ns instead of 12). So when a read finds the
//! stretches since the previous one [`DENSE`] (under a microsecond each on average), the
//! next comes after twice as many switches, up to eight; the switches in between count
//! the stretch each ends (on the context, and the context once on the thread's window
//! list), and the read shares the window's ticks equally among its stretches. A window
//! that was not dense brings back a read at every switch; so does the end of each
//! reactor turn, so that no window spans the wait for events. A settlement, a context
//! finishing and a read of a running context's stats close the open window first.
//!
//! A *settlement* reads the thread's CPU clock (once a millisecond of pending time has
//! gone by since the last read; see `context::window_scale`) and turns every listed context's
//! pending time into CPU time: if the thread used less CPU since the previous settlement
//! than the time pending (it was preempted, or a callback blocked in a system call), each
//! context's pending time is scaled down by that ratio; otherwise it is charged as it is.
//! Settlements happen at the end of each reactor turn in which a context was charged,
//! when a context finishes, and when a context's stats are read (so what `stats()`
//! reports never goes down).
//!
//! So `cpu_time` is never more than the time the context was current (under dense
//! switching: than its share of the windows it ran in), and over each
//! window between two reads the total charged to contexts is the CPU the thread used
//! while they were current, as far as the time pending at the read can absorb what the
//! window's earlier settlements charged by the previous ratio (the thread CPU clock also
//! counts the sentinel's work between them, which can only raise the ratio). Time is
//! shared among the contexts of one settlement by how long each was current.

use std::sync::OnceLock;
use std::time::Duration;

/// What a context has used: thread CPU time and callbacks run in it, and counters the
/// application bumps (Synapse's `ContextResourceUsage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextStats {
    /// CPU time spent while this context was current, as the [`CpuClock`] measures it:
    /// by default the time it was current, read from the CPU's time-stamp counter at each
    /// switch (every few where switches are dense) and settled against the thread's CPU
    /// clock once per reactor turn (see [CPU time](crate::logcontext#cpu-time)): never
    /// more than the time it was current (under dense switching, than its share of the
    /// windows it ran in), scaled down when the thread was preempted or blocked meanwhile.
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

/// How time is charged to contexts; see [`set_cpu_clock`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuClock {
    /// Thread CPU time, estimated: the time-stamp counter at each switch, or every few
    /// switches where they come under a microsecond apart (the window's time shared
    /// equally among its stretches), settled at the end of each reactor turn in which a
    /// context ran, when a context finishes and when its stats are read, against the
    /// thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`, one system call, read at most once
    /// per millisecond of settled time). The default.
    #[default]
    Thread,
    /// As [`Thread`](Self::Thread), but the counter is read at every switch, however
    /// dense: each stretch is timed on its own and charged to its context alone, so a
    /// slow callback among many short ones is never shared with its neighbours, at one
    /// counter read per switch (5 to 40 ns by machine).
    ThreadPerSwitch,
    /// The time-stamp counter alone, read at every switch: wall time while the context
    /// was current, exact per stretch, which is CPU time as long as callbacks do not
    /// block and the thread is not preempted; no system call at all.
    Monotonic,
    /// No clock: `cpu_time` stays zero and switches read no clock.
    Off,
}

impl CpuClock {
    /// Whether pending time is settled against the thread's CPU clock.
    pub(super) fn settles(self) -> bool {
        matches!(self, CpuClock::Thread | CpuClock::ThreadPerSwitch)
    }
}

/// Chooses how time is charged to contexts on this thread ([`CpuClock::Thread`] by
/// default). What was charged before is settled first.
pub fn set_cpu_clock(clock: CpuClock) {
    super::context::set_clock(clock)
}

/// Switches that come on average less than this apart are *dense*: the default clock
/// then reads the counter every few switches instead of at each (see
/// [CPU time](crate::logcontext#cpu-time)). A read costs 5 to 40 ns by machine, so above
/// this it is at most 4 % of the work it times.
pub(super) const DENSE: Duration = Duration::from_micros(1);

/// The time-stamp counter (`quanta`'s raw reading; the monotonic clock in nanoseconds
/// where the CPU has no usable counter), calibrated once per process, and [`DENSE`] in
/// its ticks.
fn counter() -> &'static (quanta::Clock, u64) {
    static COUNTER: OnceLock<(quanta::Clock, u64)> = OnceLock::new();
    COUNTER.get_or_init(|| {
        let clock = quanta::Clock::new();
        // `delta` is linear in ticks: scale a long span down to `DENSE`.
        const SPAN: u64 = 1 << 30;
        let span = clock.delta(0, SPAN).as_nanos().max(1);
        let dense = (u128::from(SPAN) * DENSE.as_nanos() / span).max(1);
        (clock, u64::try_from(dense).unwrap_or(u64::MAX))
    })
}

/// Ticks of the time-stamp counter now.
#[inline]
pub(super) fn ticks() -> u64 {
    counter().0.raw()
}

/// [`DENSE`] in ticks of the time-stamp counter.
#[inline]
pub(super) fn dense_ticks() -> u64 {
    counter().1
}

/// How long `ticks` ticks of the time-stamp counter last.
pub(super) fn ticks_to_duration(ticks: u64) -> Duration {
    counter().0.delta(0, ticks)
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`): one system call.
pub(super) fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec.try_into().unwrap_or(0), t.tv_nsec.try_into().unwrap_or(0))
}

/// The scale a settlement applies to pending time: the thread CPU used since the
/// previous settlement over the time pending, at most one.
#[derive(Clone, Copy, Debug)]
pub(super) struct Scale {
    cpu: Duration,
    pending: Duration,
}

impl Scale {
    /// Charges pending time as it is.
    pub(super) const ONE: Scale = Scale { cpu: Duration::ZERO, pending: Duration::ZERO };

    /// The scale for `pending` time charged to contexts while the thread used `cpu`.
    pub(super) fn new(cpu: Duration, pending: Duration) -> Scale {
        if cpu >= pending {
            Scale::ONE
        } else {
            Scale { cpu, pending }
        }
    }

    /// `time` scaled.
    pub(super) fn apply(self, time: Duration) -> Duration {
        if self.pending.is_zero() {
            return time;
        }
        let scaled = time.as_nanos() * self.cpu.as_nanos() / self.pending.as_nanos();
        Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Scale;

    #[test]
    fn a_settlement_scales_down_only() {
        let ms = Duration::from_millis;
        assert_eq!(Scale::new(ms(10), ms(5)).apply(ms(3)), ms(3), "more CPU than pending: as it is");
        assert_eq!(Scale::new(ms(5), ms(10)).apply(ms(4)), ms(2), "preempted half the time: halved");
        assert_eq!(Scale::new(Duration::ZERO, ms(10)).apply(ms(4)), Duration::ZERO);
        assert_eq!(Scale::ONE.apply(ms(7)), ms(7));
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
