//! A tour of what a Deferred chain does, step by step, ending with a cancellation that
//! runs through the layers of a chain from the invoker back to the responder.
//!
//!   cargo run --release --example deferred_tour

use std::cell::RefCell;
use std::rc::Rc;

use weft::{CancelledError, Deferred, Failure};

fn main() {
    println!("1. Callbacks run in order, each getting what the previous one returned");
    let d: Deferred<i32> = Deferred::new();
    d.add_callback(|x| {
        println!("   callback 1 got {x}, returns {}", x + 1);
        x + 1
    })
    .add_callback(|x| {
        println!("   callback 2 got {x}, returns {}", x * 10);
        x * 10
    });
    println!("   firing with 1");
    d.callback(1).unwrap();
    println!("   result: {:?}\n", d.result().unwrap().unwrap());

    println!("2. A failing callback jumps to the next errback, which can recover");
    let d: Deferred<i32> = Deferred::new();
    d.add_callback(|x| -> Result<i32, Failure> {
        println!("   callback got {x} and fails");
        Err(Failure::msg("no odd numbers"))
    })
    .add_callback(|x| {
        println!("   (skipped: a failure passes callbacks by) {x}");
        x
    })
    .add_errback(|f: Failure| {
        println!("   errback got: {f}");
        println!("   errback recovers with 0");
        0
    });
    d.callback(3).unwrap();
    println!("   result: {:?}\n", d.result().unwrap().unwrap());

    println!("3. A callback may return another Deferred: the chain waits for it");
    let inner: Deferred<i32> = Deferred::new();
    let outer: Deferred<i32> = Deferred::new();
    let i = inner.clone();
    outer.add_callback(move |x| {
        println!("   outer callback got {x}, returns an unfired Deferred");
        i
    });
    outer.add_callback(|x| {
        println!("   outer resumes with {x}");
        x
    });
    outer.callback(1).unwrap();
    println!("   outer is paused: {}", outer.is_paused());
    println!("   firing the inner Deferred with 42");
    inner.callback(42).unwrap();
    println!("   outer result: {:?}\n", outer.result().unwrap().unwrap());

    println!("4. Cancelling runs the canceller chain from the invoker back to the responder");
    let log = Rc::new(RefCell::new(Vec::<String>::new()));
    let say = |log: &Rc<RefCell<Vec<String>>>, s: &str| {
        println!("   {s}");
        log.borrow_mut().push(s.to_string());
    };
    // The responder: a "download" that knows how to abort itself.
    let l = log.clone();
    let download: Deferred<String> =
        Deferred::with_canceller(move |_| say(&l, "responder: download aborted"));
    // Layer 1, a parser, holds a buffer while it waits.
    let l = log.clone();
    download
        .add_canceller(move |_| say(&l, "layer 1 (parser): buffer freed"))
        .add_callback(|body| body.trim().to_string());
    // Layer 2, a cache, holds a pending cache slot.
    let l = log.clone();
    download.add_canceller(move |_| say(&l, "layer 2 (cache): slot released")).add_callback(|body| body);
    // The invoker: handles a cancel, lets anything else through.
    let l = log.clone();
    download.add_errback(move |f: Failure| -> Result<String, Failure> {
        let c = f.trap::<CancelledError>()?;
        let cancelled = c.downcast_ref::<CancelledError>().expect("trapped");
        say(&l, &format!("invoker: got {cancelled}"));
        Ok(String::new())
    });
    println!("   the invoker cancels:");
    download.cancel();
    println!("   a late answer from the responder is ignored once: {:?}", download.callback("late".into()));
    assert_eq!(
        log.borrow()[..3],
        ["layer 2 (cache): slot released", "layer 1 (parser): buffer freed", "responder: download aborted"]
    );
    println!();

    println!("5. A cancel of a chain waiting on another Deferred reaches that Deferred");
    let l = log.clone();
    let query: Deferred<u32> = Deferred::with_canceller(move |_| say(&l, "database query cancelled"));
    let request: Deferred<u32> = Deferred::new();
    let q = query.clone();
    request.add_callback(move |_| q);
    request.callback(0).unwrap();
    let (r, q) = (request.clone(), query.clone());
    request.add_errback(move |f: Failure| -> Result<u32, Failure> {
        let err = f.downcast_ref::<CancelledError>().expect("a cancel");
        println!("   request sees: {err}");
        println!("   started by cancel() on the request? {}", err.cancelled_by(&r));
        println!("   started by cancel() on the query?   {}", err.cancelled_by(&q));
        Ok(0)
    });
    request.cancel();
    assert_eq!(request.result().unwrap().unwrap(), 0);
}
