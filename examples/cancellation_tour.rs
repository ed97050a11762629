//! A tour of weft's cancellation features on one request, a `GET /room` whose handler
//! fetches a row from a database pool: what a cancel did, the path it took, a row that
//! arrives just after the cancel, an errback that swallows the cancel, cancel scopes and
//! bounded stack. One function per feature; each prints what happens.
//!
//!   cargo run --example cancellation_tour

use std::cell::RefCell;
use std::rc::Rc;

use weft::logcontext::ContextLogger;
use weft::{
    set_debugging, set_lost_result_hook, stop_cancellation, CancelOutcome, CancelledError, Deferred, Failure,
    LostResult,
};

fn main() {
    ContextLogger::new(Stderr).install(log::LevelFilter::Warn).expect("no other logger");
    typed_outcome();
    provenance();
    lost_result();
    swallowed_cancel();
}

/// The database's answer to a query: a Deferred whose canceller stops the query.
fn fetch_row(query: &'static str) -> Deferred<String> {
    Deferred::with_canceller(move |_| println!("   db: query {query:?} stopped"))
}

/// The handler: waits on the row, with a layer canceller of its own.
fn get_room(row: &Deferred<String>) -> Deferred<String> {
    let request: Deferred<String> = Deferred::new();
    let r = row.clone();
    request.add_callback(move |_| r);
    request
        .add_canceller(|_| println!("   handler: giving up the room lookup"))
        .add_callback(|row| format!("200 {row}"));
    request.callback(String::new()).unwrap();
    request
}

/// 1. `cancel()` says what it did, so the invoker need not guess.
fn typed_outcome() {
    println!("1. A typed cancel outcome");
    let request = get_room(&fetch_row("SELECT room"));
    println!("   client disconnects: cancel() -> {:?}", request.cancel());

    let answered = Deferred::<String>::new();
    answered.callback("row".into()).unwrap();
    println!("   a finished request: cancel() -> {:?}", answered.cancel());

    let shared = fetch_row("SELECT members");
    let mine = stop_cancellation(&shared);
    println!("   a shielded wait: cancel() -> {:?} (the shared query goes on)", mine.cancel());
    assert_eq!(mine.cancel(), CancelOutcome::AlreadyFired, "a second cancel comes too late");
    for d in [request, answered, mine] {
        let _ = d.take_result();
    }
    println!();
}

/// 2. In debug mode, the `CancelledError` carries the path the cancel took.
fn provenance() {
    println!("2. Cancellation provenance (set_debugging(true))");
    set_debugging(true);
    let request = get_room(&fetch_row("SELECT room"));
    request.cancel();
    set_debugging(false);
    let failure = request.take_result().unwrap().unwrap_err();
    let cancel = failure.downcast_ref::<CancelledError>().unwrap();
    for step in cancel.trace() {
        println!("   {step:?}");
    }
    println!();
}

/// 3. A row that arrives just after the cancel goes to a hook, not into the void.
fn lost_result() {
    println!("3. The lost-result guard");
    let pool = Rc::new(RefCell::new(Vec::new()));
    let row = fetch_row("SELECT room");
    let p = pool.clone();
    row.on_lost_result(move |late| {
        if let Ok(row) = late {
            println!("   row {row:?} came after the cancel: back to the pool");
            p.borrow_mut().push(row);
        }
    });
    let request = get_room(&row);
    request.cancel();
    row.callback("room 1".into()).unwrap(); // the database answers just too late
    assert_eq!(pool.borrow().len(), 1);

    // Without a hook of its own, the thread's hook gets it (by default a warning).
    let p = pool.clone();
    set_lost_result_hook(move |lost: LostResult| {
        println!("   thread hook: {lost}");
        if let Ok(row) = lost.downcast::<String>() {
            p.borrow_mut().push(row);
        }
    });
    let row = fetch_row("SELECT topic");
    row.cancel();
    row.callback("topic".into()).unwrap();
    weft::reset_lost_result_hook();
    println!("   rows returned to the pool: {:?}\n", pool.borrow());
    let _ = (request.take_result(), row.take_result());
}

/// 5. In debug mode, an errback that swallows the invoker's cancel is named.
fn swallowed_cancel() {
    println!("5. The swallowed-cancel report (set_debugging(true)); watch the warning");
    set_debugging(true);
    let request = get_room(&fetch_row("SELECT room"));
    request.add_errback(|_any: Failure| "500 something went wrong".to_owned()); // `except Exception:`
    request.cancel();
    set_debugging(false);
    println!(
        "   the request answered {:?} although it was cancelled\n",
        request.take_result().unwrap().unwrap()
    );
}

/// A tiny logger writing to stderr; `ContextLogger` puts the request id in front.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        eprintln!("   {} {}", record.level(), record.args());
    }

    fn flush(&self) {}
}
