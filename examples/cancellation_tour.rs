//! A tour of weft's cancellation, beyond Twisted, Synapse, asyncio and Trio (issue 10):
//! one feature per function, each on the same kind of request (a page whose handler
//! waits on a database row or a slow backend). Each prints what happens and asserts it:
//!
//! 1. typed cancel outcomes: `cancel()` says whether it stopped the work or came too late;
//! 2. provenance: in debug mode a `CancelledError` tells the path the cancel took;
//! 3. the lost-result guard: a value that arrives after a cancel is handed to a hook;
//! 4. cancel scopes ([`cancel_scope`]): Trio's deadlines, shields and "was it my cancel?";
//! 5. the swallowed-cancel report: in debug mode an errback that eats a cancel is named;
//! 6. bounded stack ([`bounded_stack`]): 100,000-deep graphs fired and cancelled on a
//!    256 KiB stack.
//!
//!   cargo run --release --example cancellation_tour

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use weft::logcontext::ContextLogger;
use weft::{
    set_debugging, set_lost_result_hook, stop_cancellation, CancelOutcome, CancelScope, CancelledError,
    Clock, Deferred, Failure, LostResult, ObservableDeferred,
};

fn main() {
    ContextLogger::new(Stderr).install(log::LevelFilter::Warn).expect("no other logger");
    typed_outcome();
    provenance();
    lost_result();
    cancel_scope();
    swallowed_cancel();
    bounded_stack();
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

/// Cancel scopes: the request gets a five-second budget (Trio's `move_on_after`); the
/// backend is cancelled when it runs out, the audit record behind a shield is not, and
/// the scope says it was its own deadline that ended the request.
fn cancel_scope() {
    println!("4. Cancel scopes: a deadline for the whole request, a shield for what must finish");
    let clock = Clock::new();
    let log = Rc::new(RefCell::new(Vec::new()));
    let backend: Deferred<String> = Deferred::new(); // answers too late
    let audit_write: Deferred<()> = Deferred::new(); // the audit store, slow too

    let request = CancelScope::move_on_after(Duration::from_secs(5), &clock);
    let (b, a, l) = (backend.clone(), audit_write.clone(), log.clone());
    let page = request.run(async move {
        // Nested in the request's scope (made inside its task), and shielded: the
        // request's deadline does not cut the audit record short.
        let audit = CancelScope::new();
        audit.set_shield(true);
        let written = audit.run(async move { a.await });
        let profile = b.await; // the deadline's CancelledError comes out here...
        l.borrow_mut().push(format!("backend: {}", if profile.is_ok() { "answered" } else { "cancelled" }));
        written.await?; // ...after which the audit record is still awaited
        l.borrow_mut().push("audit record written".to_string());
        profile
    });
    println!("   t=0: request started, deadline at {:?}", request.deadline().unwrap());

    clock.advance(Duration::from_secs(5));
    println!("   t=5: the deadline passed: {:?}", log.borrow());
    assert!(request.cancel_called());
    assert!(backend.is_called(), "the backend's Deferred was cancelled");
    assert!(!audit_write.is_called(), "the shielded audit write was not");
    assert!(!page.is_called(), "the request waits for the audit record");

    audit_write.callback(()).unwrap();
    println!("   t=5: the audit store answered: {:?}", log.borrow());
    // The task let the backend's CancelledError out, so the request's scope caught its
    // own cancel: the page is `None` ("moved on"), not a failure to handle.
    let outcome = page.take_result().unwrap().unwrap();
    println!(
        "   the request's outcome: {outcome:?}; the scope caught its own cancel: {}",
        request.cancelled_caught()
    );
    assert_eq!(outcome, None);
    assert!(request.cancelled_caught());
    assert_eq!(*log.borrow(), ["backend: cancelled", "audit record written"]);
    assert_eq!(clock.pending_calls(), 0);

    // A cancel from elsewhere (the client went away) is not the scope's to catch: it
    // stays a CancelledError for the caller.
    let other = CancelScope::move_on_after(Duration::from_secs(5), &clock);
    let page = other.wrap(Deferred::<String>::new());
    page.cancel();
    let f = page.take_result().unwrap().unwrap_err();
    println!("   a client disconnect instead: {f} (caught by the scope: {})\n", other.cancelled_caught());
    assert!(f.check::<CancelledError>() && !other.cancelled_caught());
}

/// Bounded stack: the profile, once fetched, goes down a 100,000-step `chain_deferred`
/// chain and through 100,000 `ObservableDeferred`s each observing the previous one (the
/// requests waiting for the same profile), fired and then cancelled, on a thread with a
/// 256 KiB stack: nothing recurses, so nothing overflows.
fn bounded_stack() {
    const DEEP: usize = 100_000;
    println!("6. Bounded stack: {DEEP}-deep graphs on a 256 KiB stack");
    let thread = std::thread::Builder::new().stack_size(256 * 1024).spawn(|| {
        // A chain_deferred chain, fired from its first Deferred.
        let steps: Vec<Deferred<u64>> = (0..DEEP).map(|_| Deferred::new()).collect();
        for pair in steps.windows(2) {
            pair[0].add_callback(|x| x + 1).chain_deferred(&pair[1]);
        }
        steps[0].callback(0).unwrap();
        let last = steps[DEEP - 1].take_result().unwrap().unwrap();
        println!("   chain_deferred chain fired: the last step got {last}");
        assert_eq!(last, DEEP as u64 - 1);

        // Fan-outs, each observing the previous one (consuming its failure, so none is
        // left unhandled), cancelled at the source.
        let source: Deferred<String> = Deferred::new();
        let mut fan_out = ObservableDeferred::new(source.clone(), true);
        for _ in 1..DEEP {
            fan_out = ObservableDeferred::new(fan_out.observe(), true);
        }
        let waiter = fan_out.observe();
        source.cancel();
        let f = waiter.take_result().unwrap().unwrap_err();
        let err = f.downcast_ref::<CancelledError>().expect("a CancelledError");
        println!("   fan-out chain cancelled at its source: the last waiter got \"{f}\"");
        assert!(err.cancelled_by(&source));

        // Dropping a graph nobody can fire any more frees it in one cascade.
        drop((steps, fan_out, waiter, source));
        println!("   and both graphs were dropped");
    });
    thread.expect("spawn").join().expect("no overflow");
    println!();
}
