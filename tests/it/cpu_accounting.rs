//! What `ContextStats::cpu_time` measures with each `CpuClock`: the time a context was
//! current (the time-stamp counter at each switch), settled against the thread's CPU
//! clock by default, so a callback that blocks is not charged its sleep, and CPU goes to
//! the context that used it even when several share a reactor turn.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use weft::logcontext::{set_cpu_clock, CpuClock, LoggingContext, PreserveLoggingContext};
use weft::Reactor;

use crate::support::{ms, run_until, secs};

/// Spins until this thread has used `cpu` of CPU time.
fn burn(cpu: Duration) {
    let start = cpu_time::ThreadTime::now();
    let mut x = 1u64;
    while start.elapsed() < cpu {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.rotate_left(5) ^ i).wrapping_mul(0x2545_f491_4f6c_dd1d);
        }
    }
}

/// Runs `f` on a fresh thread (its own clock setting and settlement history).
fn on_a_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::spawn(f).join().expect("the test thread panicked")
}

/// CPU the thread used before any context was entered (here a 60 ms burn) is not
/// charged to the first context settled: it blocked, so it is charged next to nothing.
/// (It was charged up to the burn when the first settlement counted from the thread's
/// start, as when the time-stamp counter's calibration ran on that thread.)
#[test]
fn cpu_used_before_the_first_context_is_not_charged_to_it() {
    let charged = on_a_thread(|| {
        burn(ms(60));
        let ctx = LoggingContext::new("after a burn");
        {
            let _s = ctx.enter();
            std::thread::sleep(ms(60));
        }
        ctx.stats().cpu_time
    });
    assert!(charged < ms(30), "charged {charged:?} for a 60 ms sleep after a 60 ms burn");
}

/// Many short contexts, each settled as it finishes (as a server's requests are): those
/// that block are charged little of the time they were current, and those that burn CPU
/// are charged most of it, though the thread's CPU clock is read only once per
/// millisecond of their time (here every other context), not once per context. The
/// work between them counts too (the thread's clock sees it), which valgrind makes
/// dear: the sleepers are held to what the thread used.
#[test]
fn short_contexts_are_charged_what_they_used_over_each_window() {
    let each = Duration::from_micros(900);
    let (slept, sleeping_cpu, burned, burn_wall) = on_a_thread(move || {
        // Made first, so that little else runs between them.
        let sleepers: Vec<_> = (0..20).map(|i| LoggingContext::new(format!("sleeper {i}"))).collect();
        let burners: Vec<_> = (0..20).map(|i| LoggingContext::new(format!("burner {i}"))).collect();
        let (mut slept, cpu) = (Duration::ZERO, cpu_time::ThreadTime::now());
        for ctx in &sleepers {
            {
                let _s = ctx.enter();
                std::thread::sleep(each);
            }
            slept += ctx.stats().cpu_time;
        }
        let sleeping_cpu = cpu.elapsed();
        let (mut burned, started) = (Duration::ZERO, Instant::now());
        for ctx in &burners {
            {
                let _s = ctx.enter();
                burn(each);
            }
            burned += ctx.stats().cpu_time;
        }
        (slept, sleeping_cpu, burned, started.elapsed())
    });
    // At most what the thread used (natively a fraction of a millisecond; more under
    // valgrind), plus one window charged at the first scale.
    assert!(
        slept <= sleeping_cpu + ms(1) + Duration::from_micros(500) && slept < ms(18),
        "20 sleeps of 900 µs charged {slept:?}; the thread used {sleeping_cpu:?}"
    );
    assert!(
        burned >= ms(12) && burned <= burn_wall,
        "20 burns of 900 µs charged {burned:?} in {burn_wall:?}"
    );
}

/// A callback that blocks (here in `sleep`) is charged the CPU it used, not the time it
/// slept, by the default clock; the monotonic clock charges the time it was current.
#[test]
fn a_blocking_callback_is_charged_its_cpu_not_its_sleep() {
    let thread = on_a_thread(|| {
        let ctx = LoggingContext::new("sleepy");
        {
            let _s = ctx.enter();
            std::thread::sleep(ms(60));
        }
        ctx.stats().cpu_time
    });
    assert!(thread < ms(30), "charged {thread:?} for a 60 ms sleep");
    let monotonic = on_a_thread(|| {
        set_cpu_clock(CpuClock::Monotonic);
        let ctx = LoggingContext::new("sleepy");
        {
            let _s = ctx.enter();
            std::thread::sleep(ms(60));
        }
        ctx.stats().cpu_time
    });
    assert!(monotonic >= ms(60), "the monotonic clock charges the time current: {monotonic:?}");
    let off = on_a_thread(|| {
        set_cpu_clock(CpuClock::Off);
        let ctx = LoggingContext::new("sleepy");
        {
            let _s = ctx.enter();
            burn(ms(5));
        }
        ctx.stats().cpu_time
    });
    assert_eq!(off, Duration::ZERO);
}

/// CPU burned in a context is charged in full, and never more than the time the context
/// was current; reading the stats while it runs never shows more than the final total.
#[test]
fn cpu_burned_in_a_context_is_charged_and_bounded_by_its_wall_time() {
    let (running, total, wall) = on_a_thread(|| {
        let ctx = LoggingContext::new("busy");
        let started = Instant::now();
        let running = {
            let _s = ctx.enter();
            burn(ms(10));
            let running = ctx.stats().cpu_time;
            burn(ms(10));
            running
        };
        let wall = started.elapsed();
        (running, ctx.stats().cpu_time, wall)
    });
    assert!(running >= ms(10), "{running:?} after burning 10 ms");
    assert!(total >= ms(20) && total >= running, "{total:?} after burning 20 ms ({running:?} midway)");
    assert!(total <= wall, "{total:?} charged in {wall:?}");
}

/// Two requests share reactor turns, one burning CPU in its callbacks and one doing
/// nothing: the CPU goes to the one that used it (time is shared by how long each was
/// current, not by how many callbacks each ran).
#[test]
fn contexts_sharing_a_turn_are_charged_what_each_used() {
    let reactor = Reactor::new().unwrap();
    let heavy = LoggingContext::new("heavy");
    let light = LoggingContext::new("light");
    let ran = Rc::new(RefCell::new(0));
    for _ in 0..3 {
        for (ctx, cost) in [(&heavy, ms(8)), (&light, Duration::ZERO)] {
            let _in = PreserveLoggingContext::new(ctx.clone());
            let r = ran.clone();
            reactor.call_later(Duration::ZERO, move || {
                burn(cost);
                *r.borrow_mut() += 1;
            });
        }
    }
    let r = ran.clone();
    run_until(&reactor, secs(30), move || *r.borrow() == 6);
    let (heavy, light) = (heavy.stats(), light.stats());
    assert_eq!((heavy.callbacks, light.callbacks), (3, 3));
    assert!(heavy.cpu_time >= ms(18), "heavy: {heavy:?}");
    assert!(light.cpu_time * 4 < heavy.cpu_time, "light: {light:?}, heavy: {heavy:?}");
}

/// Many requests whose callbacks interleave densely in one turn (the default clock then
/// reads the time-stamp counter every few switches and shares each window's time among
/// its callbacks), then one that burns 8 ms: the contexts together are charged no more
/// than the time they were current (adding the callbacks, then the turn) and at least
/// the burn; the heavy one at least the eighth of its burn that its window can share
/// away.
#[test]
fn dense_callbacks_share_windows_and_a_heavy_one_keeps_its_share() {
    let reactor = Reactor::new().unwrap();
    let lights: Vec<_> = (0..8).map(|i| LoggingContext::new(format!("light {i}"))).collect();
    let heavy = LoggingContext::new("heavy");
    let started = Instant::now();
    let d = weft::Deferred::<u64>::new();
    for round in 0..200 {
        for light in &lights {
            let _in = PreserveLoggingContext::new(light.clone());
            d.add_callback(|x| std::hint::black_box(x + 1));
        }
        if round == 150 {
            let _in = PreserveLoggingContext::new(heavy.clone());
            d.add_callback(|x| {
                burn(ms(8));
                x
            });
        }
    }
    let turn = Rc::new(RefCell::new(None));
    let (t, fire) = (turn.clone(), d.clone());
    reactor.call_later(Duration::ZERO, move || {
        fire.callback(0).unwrap();
        *t.borrow_mut() = Some(started.elapsed());
    });
    let t = turn.clone();
    run_until(&reactor, secs(30), move || t.borrow().is_some());
    assert_eq!(d.take_result().unwrap().unwrap(), 1600);
    let took = turn.borrow().unwrap();
    let light: Duration = lights.iter().map(|l| l.stats().cpu_time).sum();
    let heavy = heavy.stats().cpu_time;
    assert!(lights.iter().all(|l| l.stats().callbacks == 200));
    // An eighth of the burn at least, and the burn together, less what a settlement
    // scales off a thread that was preempted (a quarter, as the tests above allow).
    assert!(heavy >= ms(8) / 8 * 3 / 4, "heavy: {heavy:?}");
    assert!(light + heavy <= took, "charged {light:?} + {heavy:?} over {took:?}");
    assert!(light + heavy >= ms(8) * 3 / 4, "charged {light:?} + {heavy:?} for an 8 ms burn");
}
