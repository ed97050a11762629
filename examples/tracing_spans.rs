//! Run: `cargo run --example tracing_spans --features tracing`
//!
//! Two requests whose steps interleave on one thread (a test `Clock` stands in for the
//! reactor's timers), printed by `tracing-subscriber`'s fmt layer: every event, weft's
//! own and a "library"'s that only knows `tracing`, is shown inside the span of the log
//! context it ran in (`logcontext{request=GET-1}`), with no span passed around by hand.

use std::time::Duration;

use tracing::info;
use weft::logcontext::LoggingContext;
use weft::{Clock, Deferred};

/// A library that knows nothing of weft: it logs with `tracing` only.
fn fetch_row(table: &str) -> &'static str {
    info!(table, "query");
    "row"
}

/// A request: a "query" after `ms` milliseconds, then the reply.
fn handle(clock: &Clock, path: &'static str, ms: u64) -> Deferred<u16> {
    info!(path, "received");
    let d: Deferred<&'static str> = Deferred::new();
    let fire = d.clone();
    clock.call_later(Duration::from_millis(ms), move || fire.callback(fetch_row("users")).unwrap());
    d.map(|row| {
        info!(row, "replying");
        200u16
    })
}

fn main() {
    tracing_subscriber::fmt().with_target(false).without_time().init();
    let clock = Clock::new();
    let mut replies = Vec::new();
    for (name, path, ms) in [("GET-1", "/a", 20), ("GET-2", "/b", 10)] {
        // Synapse's `with LoggingContext(name):` — its span is entered while it is current.
        let _scope = LoggingContext::new(name).enter();
        replies.push(handle(&clock, path, ms));
    }
    info!("both requests started; the clock runs");
    clock.advance(Duration::from_millis(10));
    clock.advance(Duration::from_millis(10));
    for reply in replies {
        assert_eq!(reply.take_result().unwrap().unwrap(), 200);
    }
}
