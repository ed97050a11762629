//! Reactor metrics: what each turn did, the gauges read at a snapshot, per-context
//! totals, and the Prometheus text with Synapse's names.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use weft::logcontext::{run_as_background_process, LoggingContext};
use weft::reactor::{Address, ListenOptions, Protocol, Transport};
use weft::Reactor;

use crate::support::{localhost, ms, run_until, secs};

/// Keeps the CPU busy for `d` (not a sleep: it makes a turn or a timer late on purpose;
/// the assertions only use it as a lower bound).
fn busy_for(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

#[test]
fn a_turn_counts_its_timers_queued_calls_and_calls_from_other_threads() {
    let reactor = Reactor::new().unwrap();
    reactor.iterate(Some(Duration::ZERO)).unwrap(); // the start: when-running calls
    let before = reactor.metrics();
    for _ in 0..2 {
        reactor.call_later(Duration::ZERO, || {});
    }
    for _ in 0..3 {
        reactor.call_soon(|| {});
    }
    let to_reactor = reactor.thread_handle();
    std::thread::spawn(move || to_reactor.call_from_thread(|| {}).unwrap()).join().unwrap();
    reactor.call_later(secs(3600), || {});
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    let m = reactor.metrics();
    assert_eq!(m.turns, before.turns + 1);
    assert_eq!(m.last_turn.calls, 6, "2 timers, 3 queued calls, 1 call from a thread");
    assert!(m.last_turn.ready_sources >= 1, "the waker's event");
    assert_eq!(m.pending_calls.count(), before.pending_calls.count() + 1);
    assert_eq!(m.pending_calls.sum() - before.pending_calls.sum(), 6.0);
    assert_eq!(m.callbacks - before.callbacks, 6 + m.last_turn.ready_sources);
    assert_eq!(m.pending_timers, 1);
    assert!(m.since_last_turn.is_some());
}

#[test]
fn tick_time_covers_the_work_of_a_turn_and_lateness_how_late_a_timer_ran() {
    let reactor = Reactor::new().unwrap();
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    reactor.call_soon(|| busy_for(ms(20)));
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    let m = reactor.metrics();
    assert!(m.last_turn.duration >= ms(20), "{:?}", m.last_turn);
    assert!(m.tick_time.sum() >= 0.020);
    assert_eq!(m.timer_lateness.count(), 0, "no timer ran yet");

    reactor.call_later(ms(1), || {});
    busy_for(ms(30)); // the loop is blocked past the timer's deadline
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    let m = reactor.metrics();
    assert_eq!(m.timer_lateness.count(), 1);
    assert!(m.timer_lateness.sum() >= 0.029, "late by {} s", m.timer_lateness.sum());
    let under_a_millisecond = m.timer_lateness.buckets().next().unwrap();
    assert_eq!(under_a_millisecond, (0.001, 0));
}

struct Quiet;

impl Protocol for Quiet {
    fn data_received(&mut self, _: &[u8]) {}
}

/// Counts its connections, to close them.
struct Counted(Rc<Cell<usize>>, Rc<std::cell::RefCell<Vec<Transport>>>);

impl Protocol for Counted {
    fn connection_made(&mut self, t: Transport) {
        self.0.set(self.0.get() + 1);
        self.1.borrow_mut().push(t);
    }
    fn data_received(&mut self, _: &[u8]) {}
}

#[test]
fn open_connections_and_sources_are_counted_at_the_snapshot() {
    let reactor = Reactor::new().unwrap();
    let made = Rc::new(Cell::new(0));
    let transports = Rc::new(std::cell::RefCell::new(Vec::new()));
    let (m2, t2, t3) = (made.clone(), transports.clone(), transports.clone());
    let port = reactor
        .listen_tcp(localhost(), move |_: &Address| Counted(m2.clone(), t2.clone()), ListenOptions::default())
        .unwrap();
    let Address::Tcp(addr) = port.local_addr() else { unreachable!() };
    let _client = reactor.connect_tcp(addr, |_: &Address| Quiet, secs(10));
    // Snapshots taken while the reactor runs (stopping it closes every source).
    let (m, h, snap) = (made.clone(), reactor.handle(), Rc::new(std::cell::RefCell::new(None)));
    let s = snap.clone();
    run_until(&reactor, secs(30), move || {
        if m.get() == 1 && s.borrow().is_none() {
            *s.borrow_mut() = Some(h.metrics());
            for t in t3.borrow().iter() {
                t.abort_connection();
            }
        }
        let closed = h.metrics();
        s.borrow().is_some() && closed.open_connections == 0 && closed.sources == 1
    });
    let snap = snap.borrow_mut().take().unwrap();
    assert_eq!((snap.open_connections, snap.sources), (2, 3), "client, server side and the listener");
    // The turns that accepted and closed the connections are counted once they end (the
    // snapshot above may be taken inside the very turn that accepted).
    assert!(reactor.metrics().ready_sources.sum() >= 1.0);
}

#[test]
fn the_thread_pool_shows_its_busy_threads_and_queued_jobs() {
    let reactor = Reactor::new().unwrap();
    reactor.set_thread_pool_size(1);
    assert_eq!(reactor.metrics().thread_pool.max_threads, 1);
    let (release, wait) = mpsc::channel::<()>();
    let (started_tx, started) = mpsc::channel::<()>();
    let first = reactor.defer_to_thread(move || {
        started_tx.send(()).unwrap();
        wait.recv_timeout(Duration::from_secs(30)).unwrap();
    });
    started.recv_timeout(secs(30)).expect("the job started");
    let second = reactor.defer_to_thread(|| ());
    let pool = reactor.metrics().thread_pool;
    assert_eq!((pool.threads, pool.busy, pool.queued), (1, 1, 1));
    release.send(()).unwrap();
    let (f, s) = (first.clone(), second.clone());
    run_until(&reactor, secs(30), move || f.is_called() && s.is_called());
    let h = reactor.handle();
    run_until(&reactor, secs(30), move || h.metrics().thread_pool.busy == 0);
    assert_eq!(reactor.metrics().thread_pool.queued, 0);
}

#[test]
fn finished_contexts_with_a_metrics_name_are_summed_by_name() {
    let reactor = Reactor::new().unwrap();
    for n in 0..3 {
        let ctx = LoggingContext::new(format!("GET-{n}"));
        ctx.set_metrics_name("metrics_test_servlet");
        ctx.add_database_transaction(ms(2));
        ctx.finish();
    }
    let unnamed = LoggingContext::new("GET-x");
    unnamed.finish();
    let done = run_as_background_process("metrics_test_job", || 1);
    assert_eq!(done.result().unwrap().unwrap(), Some(1));
    let m = reactor.metrics();
    let servlet = m.contexts.iter().find(|c| c.name == "metrics_test_servlet").unwrap();
    assert_eq!((servlet.finished, servlet.stats.db_txn_count), (3, 3));
    assert_eq!(servlet.stats.db_txn_duration, ms(6));
    let job = m.contexts.iter().find(|c| c.name == "metrics_test_job").unwrap();
    assert_eq!(job.finished, 1);
    assert!(job.stats.callbacks >= 1);
    assert!(!m.contexts.iter().any(|c| c.name.starts_with("GET")));
}

#[test]
fn the_prometheus_text_uses_synapses_names_and_cumulative_buckets() {
    let reactor = Reactor::new().unwrap();
    let ctx = LoggingContext::new("r");
    ctx.set_metrics_name("quote\"d\\name");
    ctx.finish();
    for _ in 0..3 {
        reactor.call_soon(|| {});
        reactor.iterate(Some(Duration::ZERO)).unwrap();
    }
    let text = reactor.metrics().to_prometheus();
    for line in [
        "# TYPE python_twisted_reactor_tick_time histogram",
        "python_twisted_reactor_tick_time_bucket{le=\"+Inf\"} 3",
        "python_twisted_reactor_tick_time_count 3",
        "# TYPE python_twisted_reactor_pending_calls histogram",
        "python_twisted_reactor_pending_calls_bucket{le=\"1\"} 3",
        "python_twisted_reactor_pending_calls_bucket{le=\"1000\"} 3",
        "# TYPE python_twisted_reactor_last_seen gauge",
        "weft_reactor_turns_total 3",
        "synapse_threadpool_max_threads{name=\"weft\"} 4",
        "weft_context_finished_total{name=\"quote\\\"d\\\\name\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    // Every sample line is `name{labels} number`, and every bucket series grows.
    let mut last: Option<(String, f64)> = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        if let Some(name) = series.split_once("_bucket{").map(|(n, _)| n.to_string()) {
            if let Some((prev, v)) = &last {
                assert!(*prev != name || value >= *v, "buckets not cumulative at {line}");
            }
            last = Some((name, value));
        }
    }
}

#[test]
fn the_http_server_serves_the_metrics_at_slash_metrics() {
    use weft::web::{client::Client, Request, Response, Router, Site};
    let reactor = Reactor::new().unwrap();
    let h = reactor.handle();
    let router = Router::new().get("/metrics", move |_req: Request| {
        Response::text(h.metrics().to_prometheus()).header("content-type", "text/plain; version=0.0.4")
    });
    let port = Site::new(&reactor, router).listen_tcp(localhost()).unwrap();
    let Address::Tcp(addr) = port.local_addr() else { unreachable!() };
    let got = Rc::new(std::cell::RefCell::new(None));
    let g = got.clone();
    let _ = Client::new(&reactor.handle()).get(&format!("http://{addr}/metrics")).then(move |r| {
        *g.borrow_mut() =
            Some(r.map(|resp| (resp.status(), resp.body_text().unwrap_or_default().to_string())));
    });
    let g = got.clone();
    run_until(&reactor, secs(30), move || g.borrow().is_some());
    let (status, body) = got.borrow_mut().take().unwrap().unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE python_twisted_reactor_tick_time histogram"), "{body}");
    assert!(body.contains("weft_reactor_open_connections 2"), "the client's and the server's: {body}");
}
