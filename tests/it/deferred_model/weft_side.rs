//! The weft side of the model test: the operations run on real `Deferred`s, in a world
//! the callbacks see (weakly), and everything the API shows recorded as the comparison
//! names it.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use weft::{
    AlreadyCalledError, CancelId, CancelledError, ChainedToSelfError, Deferred, Failure, ResultConsumedError,
    WaitCycleError,
};

use super::ops::{Action, CancellerKind, Event, Fail, LayerKind, Op, Outcome, Seen, Shape};
use super::{normalise, valid, Transcript};
use crate::support::{logs, GenericError};

/// The world the weft side's closures see; they hold it weakly.
#[derive(Default)]
struct World {
    ds: RefCell<Vec<Deferred<u32>>>,
    /// The line each Deferred was created on (see `create`).
    lines: RefCell<Vec<u32>>,
    events: RefCell<Vec<Event<CancelId>>>,
}

impl World {
    fn get(&self, d: usize) -> Option<Deferred<u32>> {
        self.ds.borrow().get(d).cloned()
    }

    fn record(&self, e: Event<CancelId>) {
        self.events.borrow_mut().push(e);
    }
}

/// Runs `ops` on weft: what the API showed. What is left is taken, so that no failure is
/// reported when the world goes.
pub(super) fn run_weft(ops: &[Op]) -> Transcript {
    let (transcript, world) = play(ops, true);
    for d in world.ds.borrow().iter() {
        let _ = d.take_result();
    }
    transcript
}

/// Runs `ops` on weft (and the final unpauses if `unpause`), then drops every Deferred:
/// what the API showed, and the Deferreds that reported an unhandled error ("Unhandled
/// error in Deferred created at ...") by index, sorted (`None` for a report naming no
/// Deferred of the sequence).
pub(super) fn run_weft_dropping(ops: &[Op], unpause: bool) -> (Transcript, Vec<Option<usize>>) {
    logs::capture();
    let (transcript, world) = play(ops, unpause);
    let lines = world.lines.take();
    drop(world);
    let mut reports: Vec<Option<usize>> = logs::records()
        .iter()
        .filter(|(level, _)| *level == log::Level::Error)
        .filter_map(|(_, m)| m.split_once("Unhandled error in Deferred created at ").map(|(_, at)| at))
        .map(|at| {
            let mut parts = at.split(':');
            let (file, line) = (parts.next(), parts.next().and_then(|l| l.parse::<u32>().ok()));
            let here = file == Some(file!());
            lines.iter().position(|l| here && Some(*l) == line)
        })
        .collect();
    reports.sort_by_key(|r| (r.is_none(), *r));
    (transcript, reports)
}

/// Runs `ops` on a new world, then the final unpauses if `unpause` (the last view is taken
/// either way); what the API showed, and the world.
fn play(ops: &[Op], unpause: bool) -> (Transcript, Rc<World>) {
    let world = Rc::new(World::default());
    let mut outcomes = Vec::new();
    let mut seen = Vec::new();
    for (uid, op) in ops.iter().enumerate() {
        let n = world.ds.borrow().len();
        outcomes.push(if valid(op, n) { apply_weft(&world, uid, op) } else { None });
        seen.push(seen_all(&world));
    }
    let ds = world.ds.borrow().clone();
    for d in &ds {
        while unpause && d.unpause().is_ok() {}
    }
    seen.push(seen_all(&world));
    drop(ds);
    let events = std::mem::take(&mut *world.events.borrow_mut());
    (normalise(&events, outcomes, &seen), world)
}

fn apply_weft(world: &Rc<World>, uid: usize, op: &Op) -> Option<Outcome> {
    let w = Rc::downgrade(world);
    match *op {
        Op::New(canceller) => {
            let index = world.ds.borrow().len();
            let canceller = canceller.map(|kind| -> Canceller {
                Box::new(move |d: &Deferred<u32>| {
                    if let Some(world) = w.upgrade() {
                        world.record(Event::Canceller { d: index });
                    }
                    let _ = match kind {
                        CancellerKind::Silent => Ok(()),
                        CancellerKind::FiresValue(v) => d.callback(v).map_err(drop),
                        CancellerKind::FiresFailure(code) => {
                            d.errback(GenericError(code_name(code))).map_err(drop)
                        }
                    };
                })
            });
            let (d, line) = create(index, canceller);
            world.ds.borrow_mut().push(d);
            world.lines.borrow_mut().push(line);
            None
        }
        Op::Add { d, shape, first, second } => {
            let d = world.get(d).unwrap();
            add_link(&d, &w, uid, shape, first, second);
            None
        }
        Op::Layer { d, kind } => {
            let target = d;
            let d = world.get(d).unwrap();
            d.add_canceller(move |e: &CancelledError| {
                let Some(world) = w.upgrade() else { return };
                world.record(Event::Layer { uid, cancel: e.id() });
                if let LayerKind::FireSelf(v) = kind {
                    let ok = world.get(target).unwrap().callback(v).is_ok();
                    world.record(Event::Fired { uid, target, ok });
                }
            });
            None
        }
        Op::Chain { from, to } => {
            let (from, to) = (world.get(from).unwrap(), world.get(to).unwrap());
            from.chain_deferred(&to);
            None
        }
        Op::Callback { d, value } => Some(outcome(world.get(d).unwrap().callback(value).is_ok())),
        Op::Errback { d, code } => {
            Some(outcome(world.get(d).unwrap().errback(GenericError(code_name(code))).is_ok()))
        }
        Op::Pause { d } => {
            world.get(d).unwrap().pause();
            None
        }
        Op::Unpause { d } => {
            Some(if world.get(d).unwrap().unpause().is_ok() { Outcome::Ok } else { Outcome::NotPaused })
        }
        Op::Cancel { d } => {
            world.get(d).unwrap().cancel();
            None
        }
    }
}

type Canceller = Box<dyn FnOnce(&Deferred<u32>)>;

/// Deferred `index`, and the line it was created on: each index has lines of its own, so
/// that the "Unhandled error in Deferred created at" report names it.
fn create(index: usize, canceller: Option<Canceller>) -> (Deferred<u32>, u32) {
    match (index, canceller) {
        (0, None) => (Deferred::new(), line!()),
        (0, Some(c)) => (Deferred::with_canceller(c), line!()),
        (1, None) => (Deferred::new(), line!()),
        (1, Some(c)) => (Deferred::with_canceller(c), line!()),
        (2, None) => (Deferred::new(), line!()),
        (2, Some(c)) => (Deferred::with_canceller(c), line!()),
        (_, None) => (Deferred::new(), line!()),
        (_, Some(c)) => (Deferred::with_canceller(c), line!()),
    }
}

/// Adds one call link of `shape` to `d`; closures returning a Deferred for `Return`
/// actions, a `Result` for the others.
fn add_link(d: &Deferred<u32>, w: &Weak<World>, uid: usize, shape: Shape, first: Action, second: Action) {
    let (w1, w2) = (w.clone(), w.clone());
    let waits = |a: Action| matches!(a, Action::Return(_));
    match (shape, waits(first), waits(second)) {
        (Shape::Callback, false, _) => d.add_callback(move |v| value(&w1, uid, first, Ok(v))),
        (Shape::Callback, true, _) => d.add_callback(move |v| wait(&w1, uid, first, Ok(v))),
        (Shape::Errback, false, _) => d.add_errback(move |f| value(&w1, uid, first, Err(f))),
        (Shape::Errback, true, _) => d.add_errback(move |f| wait(&w1, uid, first, Err(f))),
        (Shape::Both, false, _) => d.add_both(move |r| value(&w1, uid, first, r)),
        (Shape::Both, true, _) => d.add_both(move |r| wait(&w1, uid, first, r)),
        (Shape::Callbacks, false, false) => {
            d.add_callbacks(move |v| value(&w1, uid, first, Ok(v)), move |f| value(&w2, uid, second, Err(f)))
        }
        (Shape::Callbacks, true, false) => {
            d.add_callbacks(move |v| wait(&w1, uid, first, Ok(v)), move |f| value(&w2, uid, second, Err(f)))
        }
        (Shape::Callbacks, false, true) => {
            d.add_callbacks(move |v| value(&w1, uid, first, Ok(v)), move |f| wait(&w2, uid, second, Err(f)))
        }
        (Shape::Callbacks, true, true) => {
            d.add_callbacks(move |v| wait(&w1, uid, first, Ok(v)), move |f| wait(&w2, uid, second, Err(f)))
        }
    };
}

/// Runs a user function whose action is not `Return`.
fn value(w: &Weak<World>, uid: usize, action: Action, input: Result<u32, Failure>) -> Result<u32, Failure> {
    let world = w.upgrade().expect("the world outlives its Deferreds' callbacks");
    world.record(Event::Ran { uid, input: input.as_ref().copied().map_err(fail_of) });
    match action {
        Action::Pass | Action::Return(_) => input,
        Action::Add(k) => Ok(match input {
            Ok(v) => v.wrapping_add(k),
            Err(_) => k,
        }),
        Action::Fail(code) => Err(Failure::new(GenericError(code_name(code)))),
        Action::Fire(j, v) => {
            if let Some(target) = world.get(j) {
                let ok = target.callback(v).is_ok();
                world.record(Event::Fired { uid, target: j, ok });
            }
            input
        }
        Action::Cancel(j) => {
            if let Some(target) = world.get(j) {
                target.cancel();
            }
            input
        }
    }
}

/// Runs a user function whose action is `Return(j)`: Deferred j, or the input if there is
/// no such Deferred (as a fired Deferred, whose result is taken at once).
fn wait(w: &Weak<World>, uid: usize, action: Action, input: Result<u32, Failure>) -> Deferred<u32> {
    let world = w.upgrade().expect("the world outlives its Deferreds' callbacks");
    world.record(Event::Ran { uid, input: input.as_ref().copied().map_err(fail_of) });
    let Action::Return(j) = action else { unreachable!("only Return waits") };
    match (world.get(j), input) {
        (Some(d), _) => d,
        (None, Ok(v)) => weft::succeed(v),
        (None, Err(f)) => weft::fail(f),
    }
}

fn seen_all(world: &World) -> Vec<Seen<CancelId>> {
    world
        .ds
        .borrow()
        .iter()
        .map(|d| Seen {
            called: d.is_called(),
            paused: d.is_paused(),
            result: d.result().map(|r| r.map_err(|f| fail_of(&f))),
        })
        .collect()
}

/// A weft failure as the comparison names it.
fn fail_of(f: &Failure) -> Fail<CancelId> {
    if let Some(GenericError(name)) = f.downcast_ref::<GenericError>() {
        return Fail::Code(name.trim_start_matches("code ").parse().unwrap());
    }
    if let Some(c) = f.downcast_ref::<CancelledError>() {
        return Fail::Cancelled(c.id());
    }
    if let Some(a) = f.downcast_ref::<AlreadyCalledError<u32>>() {
        return Fail::AlreadyValue(*a.value());
    }
    if let Some(a) = f.downcast_ref::<AlreadyCalledError<Failure>>() {
        return Fail::AlreadyFailure(Box::new(fail_of(a.value())));
    }
    if f.check::<ResultConsumedError>() {
        return Fail::Consumed;
    }
    if f.check::<ChainedToSelfError>() {
        return Fail::ChainedToSelf;
    }
    if f.check::<WaitCycleError>() {
        return Fail::WaitCycle;
    }
    Fail::Other(f.to_string())
}

/// `GenericError` takes a `&'static str`: the few codes the generator uses.
fn code_name(code: u32) -> &'static str {
    ["code 0", "code 1", "code 2", "code 3"][code as usize]
}

fn outcome(ok: bool) -> Outcome {
    if ok {
        Outcome::Ok
    } else {
        Outcome::AlreadyCalled
    }
}
