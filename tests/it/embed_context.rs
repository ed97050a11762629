//! Log contexts in tasks another executor polls (issue 13 trap 6): `in_context` under a
//! tokio `current_thread` runtime, two requests' tasks interleaved.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tokio::task::{spawn_local, yield_now, LocalSet};
use weft::logcontext::{current_request_id, InContextExt, LoggingContext};
use weft::reactor::Reactor;
use weft::Deferred;

use crate::support::ms;

type Seen = Rc<RefCell<Vec<(&'static str, Option<String>)>>>;

fn note(seen: &Seen, what: &'static str) {
    seen.borrow_mut().push((what, current_request_id()));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A request's handler: yields to the other task at each step.
async fn handler(name: &'static str, seen: Seen) {
    for _ in 0..5 {
        note(&seen, name);
        yield_now().await;
    }
}

/// Issue 13 trap 6: a context entered in a tokio task and held across `.await` leaked
/// into the other tasks the runtime polled meanwhile. With `in_context`, each task sees
/// its own context at every poll, and the runtime (here the main task, polled between
/// them) sees none.
#[test]
fn each_tokio_task_runs_in_its_own_context_and_none_leaks_between_polls() {
    let seen: Seen = Rc::new(RefCell::new(Vec::new()));
    LocalSet::new().block_on(&runtime(), async {
        let a = spawn_local(handler("A", seen.clone()).in_context(LoggingContext::new("req-A")));
        let b = spawn_local(handler("B", seen.clone()).in_context(LoggingContext::new("req-B")));
        while !(a.is_finished() && b.is_finished()) {
            note(&seen, "executor");
            yield_now().await;
        }
    });
    let seen = seen.borrow();
    let of = |who: &str| seen.iter().filter(|(w, _)| *w == who).map(|(_, c)| c.clone()).collect::<Vec<_>>();
    assert_eq!(of("A"), vec![Some("req-A".to_string()); 5]);
    assert_eq!(of("B"), vec![Some("req-B".to_string()); 5]);
    assert!(of("executor").iter().all(Option::is_none), "{seen:?}");
    let order: String =
        seen.iter().filter(|(w, _)| *w != "executor").map(|(w, _)| w.chars().next().unwrap()).collect();
    assert!(order.find('B') < order.rfind('A'), "the tasks really interleaved: {order}");
    assert_eq!(current_request_id(), None);
}

/// weft work started inside a wrapped task captures its context: a Deferred callback
/// added in task A runs in `req-A` though task B fires it, and a reactor timer set in
/// task A runs in `req-A` too.
#[test]
fn weft_work_started_in_a_wrapped_task_keeps_the_tasks_context() {
    let seen: Seen = Rc::new(RefCell::new(Vec::new()));
    let reactor = Reactor::new().unwrap();
    let d: Deferred<u32> = Deferred::new();
    let fired = Rc::new(Cell::new(false));
    LocalSet::new().block_on(&runtime(), async {
        let (s, d2, h, f) = (seen.clone(), d.clone(), reactor.handle(), fired.clone());
        let a = spawn_local(
            async move {
                let s2 = s.clone();
                d2.add_callback(move |n| {
                    note(&s2, "callback");
                    n
                });
                let s3 = s.clone();
                h.call_later(ms(1), move || {
                    note(&s3, "timer");
                    f.set(true);
                });
                let n = d2.await.unwrap();
                note(&s, "after await");
                n
            }
            .in_context(LoggingContext::new("req-A")),
        );
        let d3 = d.clone();
        let b = spawn_local(
            async move {
                yield_now().await;
                d3.callback(7).unwrap();
            }
            .in_context(LoggingContext::new("req-B")),
        );
        b.await.unwrap();
        assert_eq!(a.await.unwrap(), 7);
    });
    let start = std::time::Instant::now();
    while !fired.get() && start.elapsed() < std::time::Duration::from_secs(10) {
        reactor.iterate(Some(ms(10))).unwrap();
    }
    let seen = seen.borrow();
    for what in ["callback", "timer", "after await"] {
        let ctx = seen.iter().find(|(w, _)| *w == what).map(|(_, c)| c.clone());
        assert_eq!(ctx, Some(Some("req-A".to_string())), "{what}: {seen:?}");
    }
}

/// The future is dropped in its context too (a destructor may log), whether it finished
/// or was dropped unfinished; and its polls' CPU time is charged to the context.
#[test]
fn a_wrapped_future_is_dropped_in_its_context_and_charged_for_its_polls() {
    struct OnDrop(Rc<RefCell<Vec<Option<String>>>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.borrow_mut().push(current_request_id());
        }
    }
    let drops = Rc::new(RefCell::new(Vec::new()));
    let ctx = LoggingContext::new("req-C");
    LocalSet::new().block_on(&runtime(), async {
        let guard = OnDrop(drops.clone());
        let done = async move {
            let _guard = guard;
            let mut x = 0u64;
            for i in 0..200_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            x
        }
        .in_context(ctx.clone());
        done.await;
        let guard = OnDrop(drops.clone());
        let never = async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        }
        .in_context(ctx.clone());
        let handle = spawn_local(never);
        yield_now().await;
        handle.abort();
        let _ = handle.await;
    });
    assert_eq!(*drops.borrow(), vec![Some("req-C".to_string()); 2]);
    assert!(ctx.stats().cpu_time > std::time::Duration::ZERO, "{:?}", ctx.stats());
    assert_eq!(current_request_id(), None);
}
