//! Run: `cargo run --example logcontext_tour`
//!
//! Two requests whose steps interleave on one thread (a test `Clock` stands in for the
//! reactor's timers); every log line carries the id of the request it belongs to, and
//! each request logs a summary of what it used when it finishes.

use std::time::Duration;

use log::info;
use weft::logcontext::{ContextLogger, LoggingContext};
use weft::{Clock, Deferred};

/// A tiny logger writing to stderr; `ContextLogger` puts the request id in front.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        eprintln!("{:<5} {}", record.level(), record.args());
    }
    fn flush(&self) {}
}

/// A Deferred that the clock fires after `ms` milliseconds (a stand-in for I/O).
fn sleep(clock: &Clock, ms: u64) -> Deferred<()> {
    let d = Deferred::new();
    let fire = d.clone();
    clock.call_later(Duration::from_millis(ms), move || fire.callback(()).unwrap());
    d
}

/// A request handler: two "database queries", then a reply. Nothing here mentions the
/// log context: each callback runs in the context current when it was added.
fn handle(clock: &Clock, path: &'static str, first_ms: u64, second_ms: u64) -> Deferred<u16> {
    info!("received {path}");
    let c = clock.clone();
    let queries: Deferred<()> = sleep(clock, first_ms).map(move |_| {
        info!("first query done, starting the second");
        weft::logcontext::current_context().add_database_transaction(Duration::from_millis(first_ms));
        sleep(&c, second_ms)
    });
    queries.map(move |_| {
        weft::logcontext::current_context().add_database_transaction(Duration::from_millis(second_ms));
        info!("second query done");
        200u16
    })
}

fn main() {
    ContextLogger::new(Stderr).install(log::LevelFilter::Info).expect("no other logger");
    let clock = Clock::new();

    let mut requests = Vec::new();
    for (id, path, first, second) in [("GET-1", "/rooms", 10, 30), ("GET-2", "/sync", 20, 5)] {
        let ctx = LoggingContext::new(id);
        ctx.on_finish(|name, stats| {
            // Runs in whatever context finished it; name the request explicitly.
            eprintln!(
                "      {name} finished: {} callbacks, {} db txns ({:?}), {:?} CPU",
                stats.callbacks, stats.db_txn_count, stats.db_txn_duration, stats.cpu_time
            );
        });
        let c = clock.clone();
        let done: Deferred<u16> = ctx.run(move || handle(&c, path, first, second));
        done.add_callback(|code| {
            info!("replied {code}"); // added in the sentinel: logged without a request
            code
        });
        requests.push(done);
    }

    info!("reactor idle, advancing time");
    for _ in 0..4 {
        clock.advance(Duration::from_millis(10));
    }
    for r in requests {
        assert_eq!(r.result().unwrap().unwrap(), 200);
    }
}
