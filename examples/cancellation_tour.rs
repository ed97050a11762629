//! A tour of weft's cancellation, beyond Twisted, Synapse, asyncio and Trio (issue 10),
//! on one request: a user's profile page, which asks a slow backend for the profile,
//! writes an audit record that must not be cut short, and fans the answer out to the
//! many requests waiting for the same profile. Each section shows one feature, prints
//! what happens, and asserts it:
//!
//! - typed cancel outcomes: `cancel()` says whether it stopped the work or came too late;
//! - provenance: a `CancelledError` tells the path the cancel took;
//! - the lost-result guard: a value that arrives after a cancel is handed to a hook;
//! - the swallowed-cancel report: an errback that eats a cancel is named;
//! - cancel scopes ([`cancel_scope`]): Trio's deadlines, shields and "was it my cancel?";
//! - bounded stack ([`bounded_stack`]): 100,000-deep graphs fired and cancelled on a
//!   256 KiB stack.
//!
//!   cargo run --release --example cancellation_tour

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use weft::{CancelScope, CancelledError, Clock, Deferred, ObservableDeferred};

fn main() {
    cancel_scope();
    bounded_stack();
}

/// Cancel scopes: the request gets a five-second budget (Trio's `move_on_after`); the
/// backend is cancelled when it runs out, the audit record behind a shield is not, and
/// the scope says it was its own deadline that ended the request.
fn cancel_scope() {
    println!("Cancel scopes: a deadline for the whole request, a shield for what must finish");
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
    println!("Bounded stack: {DEEP}-deep graphs on a 256 KiB stack");
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

        // Fan-outs, each observing the previous one, cancelled at the source.
        let source: Deferred<String> = Deferred::new();
        let mut fan_out = ObservableDeferred::new(source.clone(), false);
        for _ in 1..DEEP {
            fan_out = ObservableDeferred::new(fan_out.observe(), false);
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
