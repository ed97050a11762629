//! The reference model: the Deferred state machine written as plainly as possible
//! (Deferreds in a `Vec`, indices for handles, recursion for nested loops), as the
//! semantics are specified in `src/deferred/mod.rs` and `ARCHITECTURE.md`: Twisted's
//! `_runCallbacks` order, with weft's documented differences (typed results, the canceller
//! chain, wait-cycle detection, the first late fire after a cancel ignored).

use super::ops::{Action, CancellerKind, Event, LayerKind, Op, Outcome, Seen, Shape};

type Fail = super::ops::Fail<usize>;

type Res = Result<u32, Fail>;

#[derive(Clone, Debug)]
enum Slot {
    Pending,
    Waiting(usize),
    Ready(Res),
    Running,
    Consumed,
}

#[derive(Clone, Debug)]
enum Link {
    Call { uid: usize, shape: Shape, first: Action, second: Action },
    Continue(usize),
    Chain(usize),
}

#[derive(Debug)]
struct D {
    slot: Slot,
    /// Links in the order added; a link that ran is `None`. Positions are absolute.
    links: Vec<Option<Link>>,
    head: usize,
    paused: u32,
    running: bool,
    canceller: Option<CancellerKind>,
    /// Layer cancellers: (position, uid, kind).
    layers: Vec<(usize, usize, LayerKind)>,
    suppress: bool,
}

/// The model of a world of Deferreds.
pub(crate) struct Model {
    ds: Vec<D>,
    pub(crate) trace: Vec<Event<usize>>,
    /// The cancellation under way (its id), while an outermost `cancel()` runs.
    current_cancel: Option<usize>,
    next_id: usize,
    /// Bounds a walk that would otherwise never end (a model or weft bug).
    fuel: u32,
}

impl Model {
    pub(crate) fn new() -> Model {
        Model { ds: Vec::new(), trace: Vec::new(), current_cancel: None, next_id: 0, fuel: 100_000 }
    }

    pub(crate) fn len(&self) -> usize {
        self.ds.len()
    }

    /// Applies one operation; what it returned, if anything.
    pub(crate) fn apply(&mut self, uid: usize, op: &Op) -> Option<Outcome> {
        match *op {
            Op::New(canceller) => {
                self.ds.push(D {
                    slot: Slot::Pending,
                    links: Vec::new(),
                    head: 0,
                    paused: 0,
                    running: false,
                    canceller,
                    layers: Vec::new(),
                    suppress: false,
                });
                None
            }
            Op::Add { d, shape, first, second } => {
                self.push(d, Link::Call { uid, shape, first, second });
                None
            }
            Op::Layer { d, kind } => {
                let x = &mut self.ds[d];
                let finished = matches!(x.slot, Slot::Ready(_) | Slot::Consumed)
                    && !x.running
                    && x.head == x.links.len();
                if !finished {
                    let position = x.links.len();
                    x.layers.push((position, uid, kind));
                }
                None
            }
            Op::Chain { from, to } => {
                self.push(from, Link::Chain(to));
                None
            }
            Op::Callback { d, value } => Some(self.fire(d, Ok(value)).into()),
            Op::Errback { d, code } => Some(self.fire(d, Err(Fail::Code(code))).into()),
            Op::Pause { d } => {
                self.ds[d].paused += 1;
                None
            }
            Op::Unpause { d } => Some(self.unpause(d)),
            Op::Cancel { d } => {
                self.cancel(d);
                None
            }
        }
    }

    /// Unpauses `d` once; `Outcome::NotPaused` if it was not paused.
    pub(crate) fn unpause(&mut self, d: usize) -> Outcome {
        if self.ds[d].paused == 0 {
            return Outcome::NotPaused;
        }
        self.ds[d].paused -= 1;
        self.kick(d);
        Outcome::Ok
    }

    /// What the public API shows of `d`.
    pub(crate) fn seen(&self, d: usize) -> Seen<usize> {
        let x = &self.ds[d];
        let has_result = matches!(x.slot, Slot::Ready(_)) && x.paused == 0 && x.head == x.links.len();
        Seen {
            called: !matches!(x.slot, Slot::Pending),
            paused: x.paused > 0 || matches!(x.slot, Slot::Waiting(_)),
            result: match &x.slot {
                Slot::Ready(r) if has_result => Some(r.clone()),
                _ => None,
            },
        }
    }

    fn push(&mut self, d: usize, link: Link) {
        self.ds[d].links.push(Some(link));
        self.kick(d);
    }

    fn can_run(&self, d: usize) -> bool {
        let x = &self.ds[d];
        matches!(x.slot, Slot::Ready(_) | Slot::Consumed)
            && !x.running
            && x.paused == 0
            && x.head < x.links.len()
    }

    fn kick(&mut self, d: usize) {
        if self.can_run(d) {
            self.ds[d].running = true;
            self.run_loop(d);
        }
    }

    fn is_called(&self, d: usize) -> bool {
        !matches!(self.ds[d].slot, Slot::Pending)
    }

    fn fire(&mut self, d: usize, r: Res) -> Result<(), ()> {
        if self.is_called(d) {
            if std::mem::take(&mut self.ds[d].suppress) {
                return Ok(());
            }
            return Err(());
        }
        self.ds[d].canceller = None;
        self.ds[d].slot = Slot::Ready(r);
        self.kick(d);
        Ok(())
    }

    fn run_loop(&mut self, d: usize) {
        let mut held: Option<Res> = match std::mem::replace(&mut self.ds[d].slot, Slot::Running) {
            Slot::Ready(r) => Some(r),
            Slot::Consumed => None,
            other => panic!("model: run_loop on {other:?}"),
        };
        loop {
            self.burn();
            let x = &mut self.ds[d];
            if x.paused > 0 || x.head == x.links.len() {
                x.slot = match held {
                    Some(r) => Slot::Ready(r),
                    None => Slot::Consumed,
                };
                x.running = false;
                return;
            }
            let link = x.links[x.head].take().expect("a link runs once");
            x.head += 1;
            let input = held.take().unwrap_or(Err(Fail::Consumed));
            match link {
                Link::Call { uid, shape, first, second } => match self.call(uid, shape, first, second, input)
                {
                    Next::Ready(r) => held = Some(r),
                    Next::Wait(j) => match self.wait_on(d, j) {
                        Some(r) => held = Some(r),
                        None => {
                            self.ds[d].running = false;
                            return;
                        }
                    },
                },
                Link::Continue(outer) => {
                    // The hand-over: this loop lets go first.
                    self.ds[d].slot = Slot::Consumed;
                    self.ds[d].running = false;
                    self.resume(outer, input);
                    if !self.can_run(d) {
                        return;
                    }
                    self.ds[d].running = true;
                    self.ds[d].slot = Slot::Running;
                    held = None;
                }
                Link::Chain(target) => {
                    held = match self.fire(target, input.clone()) {
                        Ok(()) => None,
                        Err(()) => Some(Err(match input {
                            Ok(v) => Fail::AlreadyValue(v),
                            Err(f) => Fail::AlreadyFailure(Box::new(f)),
                        })),
                    };
                }
            }
        }
    }

    /// Runs a call link's user function (or passes the input by); records what ran.
    fn call(&mut self, uid: usize, shape: Shape, first: Action, second: Action, input: Res) -> Next {
        let action = match (shape, &input) {
            (Shape::Callback, Ok(_)) | (Shape::Both, _) | (Shape::Callbacks, Ok(_)) => first,
            (Shape::Errback, Err(_)) => first,
            (Shape::Callbacks, Err(_)) => second,
            (Shape::Callback, Err(_)) | (Shape::Errback, Ok(_)) => return Next::Ready(input),
        };
        self.trace.push(Event::Ran { uid, input: input.clone() });
        match action {
            Action::Pass => Next::Ready(input),
            Action::Add(k) => Next::Ready(Ok(match input {
                Ok(v) => v.wrapping_add(k),
                Err(_) => k,
            })),
            Action::Fail(code) => Next::Ready(Err(Fail::Code(code))),
            Action::Return(j) if j < self.ds.len() => Next::Wait(j),
            Action::Fire(j, v) if j < self.ds.len() => {
                let ok = self.fire(j, Ok(v)).is_ok();
                self.trace.push(Event::Fired { uid, target: j, ok });
                Next::Ready(input)
            }
            Action::Cancel(j) if j < self.ds.len() => {
                self.cancel(j);
                Next::Ready(input)
            }
            Action::Return(_) | Action::Fire(..) | Action::Cancel(_) => Next::Ready(input),
        }
    }

    fn wait_on(&mut self, d: usize, j: usize) -> Option<Res> {
        if j == d {
            return Some(Err(Fail::ChainedToSelf));
        }
        let o = &self.ds[j];
        let idle = !o.running && o.paused == 0 && o.head == o.links.len();
        match &o.slot {
            Slot::Ready(_) if idle => match std::mem::replace(&mut self.ds[j].slot, Slot::Consumed) {
                Slot::Ready(r) => return Some(r),
                _ => unreachable!(),
            },
            Slot::Consumed if idle => return Some(Err(Fail::Consumed)),
            Slot::Waiting(next) if self.has_waiter(d) && self.waits_on(*next, d) => {
                return Some(Err(Fail::WaitCycle));
            }
            _ => {}
        }
        self.ds[j].links.push(Some(Link::Continue(d)));
        // `d` waits from the moment `j` holds its continuation.
        self.ds[d].slot = Slot::Waiting(j);
        self.kick(j);
        match std::mem::replace(&mut self.ds[d].slot, Slot::Running) {
            Slot::Ready(r) => Some(r),
            Slot::Waiting(w) => {
                self.ds[d].slot = Slot::Waiting(w);
                None
            }
            other => panic!("model: waiting Deferred in {other:?}"),
        }
    }

    fn has_waiter(&self, d: usize) -> bool {
        let x = &self.ds[d];
        x.links[x.head..].iter().any(|l| matches!(l, Some(Link::Continue(_))))
    }

    fn waits_on(&self, mut next: usize, target: usize) -> bool {
        for _ in 0..=self.ds.len() {
            if next == target {
                return true;
            }
            match self.ds[next].slot {
                Slot::Waiting(w) => next = w,
                _ => return false,
            }
        }
        panic!("model: a ring of waiting Deferreds")
    }

    fn resume(&mut self, d: usize, r: Res) {
        if matches!(self.ds[d].slot, Slot::Waiting(_) | Slot::Running) {
            self.ds[d].slot = Slot::Ready(r);
            self.kick(d);
        }
    }

    pub(crate) fn cancel(&mut self, d: usize) {
        match self.current_cancel {
            Some(id) => self.cancel_with(d, id),
            None => {
                if !matches!(self.ds[d].slot, Slot::Pending | Slot::Waiting(_)) {
                    return;
                }
                let id = self.next_id;
                self.next_id += 1;
                self.current_cancel = Some(id);
                self.cancel_with(d, id);
                self.current_cancel = None;
            }
        }
    }

    fn cancel_with(&mut self, d: usize, id: usize) {
        let mut current = d;
        while let Some(next) = self.cancel_step(current, id) {
            self.burn();
            current = next;
        }
    }

    fn cancel_step(&mut self, d: usize, id: usize) -> Option<usize> {
        let target = match self.ds[d].slot {
            Slot::Pending => None,
            Slot::Waiting(j) => Some(j),
            _ => return None,
        };
        let consumed = self.ds[d].head;
        let layers: Vec<_> = std::mem::take(&mut self.ds[d].layers);
        for (position, uid, kind) in layers.into_iter().rev() {
            if position < consumed {
                continue; // dead: its callbacks have started
            }
            self.trace.push(Event::Layer { uid, cancel: id });
            if let LayerKind::FireSelf(v) = kind {
                let ok = self.fire(d, Ok(v)).is_ok();
                self.trace.push(Event::Fired { uid, target: d, ok });
            }
        }
        if let Some(j) = target {
            return Some(j);
        }
        if self.is_called(d) {
            return None;
        }
        if let Some(canceller) = self.ds[d].canceller.take() {
            self.trace.push(Event::Canceller { d });
            let _ = match canceller {
                CancellerKind::Silent => Ok(()),
                CancellerKind::FiresValue(v) => self.fire(d, Ok(v)),
                CancellerKind::FiresFailure(code) => self.fire(d, Err(Fail::Code(code))),
            };
        }
        if self.is_called(d) {
            return None;
        }
        self.ds[d].suppress = true;
        let _ = self.fire(d, Err(Fail::Cancelled(id)));
        None
    }

    fn burn(&mut self) {
        self.fuel = self.fuel.checked_sub(1).expect("model: out of fuel (a loop that never ends)");
    }
}

/// What a call link returns, in the model.
enum Next {
    Ready(Res),
    Wait(usize),
}

impl From<Result<(), ()>> for Outcome {
    fn from(r: Result<(), ()>) -> Outcome {
        match r {
            Ok(()) => Outcome::Ok,
            Err(()) => Outcome::AlreadyCalled,
        }
    }
}
