//! The canceller chain: `cancel()` travels from the invoker (who holds the end of the
//! chain) back to the responder (who made the Deferred).
//!
//! Each canceller is tagged with its *position*: the number of links that had been added
//! when it was registered. A canceller is live while the result has not reached that
//! position, that is while the callbacks of its layer have not started; once they have,
//! the layer is running and cancelling it means cancelling whatever it now waits on.
//!
//! `cancel()`:
//! 1. does nothing if the Deferred has a result, or is running a callback (the result has
//!    arrived and is never lost to a cancel);
//! 2. runs the live layer cancellers, newest first, dropping the dead ones;
//! 3. passes the cancel on, as a missing callback passes a result on: to the Deferred this
//!    one waits on if a callback returned one, otherwise to the creator's canceller (the
//!    walk down waiting Deferreds cannot go round a ring: `wait_on` refuses to make one,
//!    and a walk that comes back to a Deferred it passed fails that one instead);
//! 4. if the Deferred still has no result, fails it with `CancelledError` and remembers to
//!    ignore the responder's first late `callback`/`errback` (whose result goes to the
//!    lost-result hook, see `lost.rs`);
//! 5. returns a [`CancelOutcome`] read off the last Deferred it reached (see `outcome.rs`).
//!
//! Every `CancelledError` that one `cancel()` produces, on this Deferred or on any the
//! cancel reaches, carries that call's [`CancelId`]: a thread-local holds it while
//! cancellers run, so a canceller that cancels something else continues the same
//! cancellation.

use std::cell::Cell;
use std::mem;
use std::panic::Location;
use std::rc::Rc;

use smallvec::SmallVec;

use super::lost::{Lost, LostHook};
use super::outcome::{self, CancelFire, CancelOutcome, CancelStep, TraceLog};
use super::own::{Erased, Sources};
use super::{is_debugging, Deferred, Next, Slot};
use crate::failure::{CancelId, CancelledError, Failure};
use crate::logcontext::Captured;

/// The creator's canceller (Twisted's `Deferred(canceller)`), given as a closure
/// ([`Deferred::with_canceller`]) and run in the log context current when it was given.
pub(super) type Canceller<T> = Box<dyn FnOnce(&Deferred<T>)>;
pub(super) type LayerCanceller = Box<dyn FnOnce(&CancelledError)>;

/// What few Deferreds need, boxed and allocated on first use: the cancellers and cancel
/// bookkeeping (this file), a failure handled on the caller's behalf, and where the
/// Deferred was first fired (recorded while debugging).
pub(super) struct Cold<T: 'static> {
    /// Where the Deferred was first fired, if [`super::set_debugging`] was on then.
    pub(super) fired_at: Option<&'static Location<'static>>,
    /// The failure weft consumed on the caller's behalf (`Consuming`); the Deferred
    /// does not report it as unhandled if it is dropped holding it.
    pub(super) handled: Option<Failure>,
    /// The creator's canceller (Twisted's `Deferred(canceller)`); dropped once fired.
    pub(super) canceller: Option<Canceller<T>>,
    /// How many links were dropped from the front of the link list since this part was
    /// allocated (see `Core::base`).
    pub(super) base: u32,
    /// Layer cancellers with their positions, in the order added (positions ascend).
    layers: Vec<(u32, LayerCanceller)>,
    /// The Deferreds this one was built on (`then`, combinators, a task's awaited
    /// Deferred), held until it fires (see `own.rs`). Without a creator's canceller, a
    /// cancel cancels them.
    pub(super) sources: Sources,
    /// Set when `cancel()` made this Deferred fail: ignore the first late fire.
    pub(super) suppress_already_called: bool,
    /// The id of the cancellation that started with `cancel()` on this very Deferred.
    started_here: Option<CancelId>,
    /// How the Deferred was fired while a cancel ran its cancellers (for the outcome).
    cancel_fire: CancelFire,
    /// The lost-result hook and debugging records, allocated when first needed (a
    /// Deferred without them pays one word, and `Cold` stays small enough to be built
    /// in place).
    pub(super) extra: Option<Box<Extra<T>>>,
}

/// The rarest part of a Deferred: its lost-result hook and what debugging records.
pub(super) struct Extra<T: 'static> {
    /// What a late fire after the cancel brings goes here (see `lost.rs`).
    pub(super) on_lost: Option<LostHook<T>>,
    /// The id and place of the cancel that failed this Deferred, for the lost-result
    /// report; recorded when this part exists (debugging, or a hook was set).
    cancelled_with: Option<(CancelId, &'static Location<'static>)>,
    /// While debugging: the id of the last cancel that passed through this Deferred (0:
    /// none), so that an errback here recovering from it can be reported.
    pub(super) passed: u64,
}

impl<T: 'static> Cold<T> {
    pub(super) fn new() -> Self {
        Cold {
            fired_at: None,
            handled: None,
            canceller: None,
            base: 0,
            layers: Vec::new(),
            sources: Sources::default(),
            suppress_already_called: false,
            started_here: None,
            cancel_fire: CancelFire::Off,
            extra: None,
        }
    }

    /// The rarest part, allocated on first use.
    pub(super) fn extra_mut(&mut self) -> &mut Extra<T> {
        self.extra.get_or_insert_with(|| Box::new(Extra { on_lost: None, cancelled_with: None, passed: 0 }))
    }

    /// What firing (with `next`) makes useless: the creator's canceller and the
    /// sources; for the caller to drop outside its borrow. Notes how the Deferred was
    /// fired if a cancel is running its cancellers.
    pub(super) fn take_on_fire(&mut self, next: &Next<T>) -> (Option<Canceller<T>>, Sources) {
        if self.cancel_fire == CancelFire::Watching {
            self.cancel_fire = CancelFire::of(next, CURRENT.with(Cell::get).map(|(id, _)| id));
        }
        (self.canceller.take(), mem::take(&mut self.sources))
    }

    /// Removes the layer cancellers whose callbacks have started; returns them so the
    /// caller drops them after releasing its borrow.
    pub(super) fn take_dead_layers(&mut self, consumed: u32) -> Vec<(u32, LayerCanceller)> {
        let live = self.layers.partition_point(|(pos, _)| *pos < consumed);
        if live == 0 {
            return Vec::new();
        }
        let rest = self.layers.split_off(live);
        mem::replace(&mut self.layers, rest)
    }
}

thread_local! {
    /// The cancellation under way on this thread, while cancellers run.
    static CURRENT: Cell<Option<(CancelId, &'static Location<'static>)>> = const { Cell::new(None) };
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
}

/// Restores the thread's current cancellation (and, if it was replaced, its path) on
/// every exit.
struct CurrentGuard(Option<(CancelId, &'static Location<'static>)>, Option<Option<TraceLog>>);

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let previous = self.0;
        CURRENT.with(|c| c.set(previous));
        if let Some(trace) = self.1.take() {
            outcome::restore_trace(trace);
        }
    }
}

enum Target<T: 'static> {
    Creator,
    Inner(Option<Rc<super::Inner<T>>>),
}

/// Kept beside the Deferred's cancel, so that `failure.rs` names no `Deferred`.
impl CancelledError {
    /// True if this cancellation was started by calling `cancel()` on `d` itself, rather
    /// than on something that `d` waited on, or on an unrelated deferred.
    pub fn cancelled_by<T: 'static>(&self, d: &Deferred<T>) -> bool {
        d.cancel_started_here() == Some(self.id)
    }
}

impl<T: 'static> Deferred<T> {
    /// A new Deferred whose creator knows how to stop the work behind it (Twisted's
    /// `Deferred(canceller)`).
    ///
    /// `canceller` runs when the Deferred is cancelled before it has a result, after the
    /// cancellers of any layers added since. It may fire the Deferred (with a value or a
    /// more specific failure); if it does not, the Deferred fails with
    /// [`CancelledError`]. It is dropped, unrun, once the Deferred fires.
    ///
    /// ```
    /// use std::{cell::Cell, rc::Rc};
    /// use weft::{Deferred, CancelledError};
    ///
    /// let stopped = Rc::new(Cell::new(false));
    /// let s = stopped.clone();
    /// let d: Deferred<String> = Deferred::with_canceller(move |_d| s.set(true));
    /// d.cancel();
    /// assert!(stopped.get());
    /// assert!(d.take_result().unwrap().unwrap_err().check::<CancelledError>());
    /// ```
    #[track_caller]
    pub fn with_canceller<F>(canceller: F) -> Deferred<T>
    where
        F: FnOnce(&Deferred<T>) + 'static,
    {
        let d = Deferred::new();
        let mut state = Box::new(Cold::new());
        // The canceller runs in the log context current now, like a callback.
        let captured = Captured::capture();
        state.canceller = Some(Box::new(move |d: &Deferred<T>| captured.run(|| canceller(d))));
        d.inner.core.borrow_mut().cold = Some(state);
        d
    }

    /// Registers a canceller for the layer whose callbacks are added next: it runs on
    /// [`cancel`](Self::cancel) if the result has not reached this point of the chain
    /// yet, before the cancellers of earlier layers and of the creator. It gets the
    /// [`CancelledError`] describing the cancellation, and is meant to free what this
    /// layer holds; the cancel then goes on towards the responder.
    ///
    /// ```
    /// use std::{cell::RefCell, rc::Rc};
    /// let order = Rc::new(RefCell::new(Vec::new()));
    /// let (o1, o2, o3) = (order.clone(), order.clone(), order.clone());
    /// let d: weft::Deferred<u32> = weft::Deferred::with_canceller(move |_| o1.borrow_mut().push("creator"));
    /// d.add_canceller(move |_| o2.borrow_mut().push("inner layer")).add_callback(|x| x);
    /// d.add_canceller(move |_| o3.borrow_mut().push("outer layer")).add_callback(|x| x);
    /// d.cancel();
    /// assert_eq!(*order.borrow(), ["outer layer", "inner layer", "creator"]);
    /// # let _ = d.take_result();
    /// ```
    ///
    /// While [`set_debugging`](crate::set_debugging) is on, the canceller remembers where
    /// it was added, for the cancel's [`trace`](CancelledError::trace).
    #[track_caller]
    pub fn add_canceller<F>(&self, canceller: F) -> &Self
    where
        F: FnOnce(&CancelledError) + 'static,
    {
        let mut core = self.inner.core.borrow_mut();
        let position = core.end();
        let finished = matches!(core.slot, Slot::Ready(_) | Slot::Consumed)
            && !core.running()
            && !core.has_links_to_run();
        if finished {
            // The result is here and nothing will run before the layer's callbacks: the
            // layer can never be cancelled.
            return self;
        }
        // The canceller runs in the log context current now, like a callback.
        let captured = Captured::capture();
        let layer: LayerCanceller = if is_debugging() {
            let at = Location::caller();
            Box::new(move |e: &CancelledError| {
                outcome::record(CancelStep::Layer(at));
                captured.run(|| canceller(e))
            })
        } else {
            Box::new(move |e: &CancelledError| captured.run(|| canceller(e)))
        };
        core.cold_mut().layers.push((position, layer));
        self
    }

    /// [`add_callbacks`](Self::add_callbacks) with a canceller for this layer (see
    /// [`add_canceller`](Self::add_canceller)).
    #[track_caller]
    pub fn add_callbacks_with_canceller<F, G, R, S, C>(&self, callback: F, errback: G, canceller: C) -> &Self
    where
        F: FnOnce(T) -> R + 'static,
        G: FnOnce(Failure) -> S + 'static,
        R: super::CallbackResult<T>,
        S: super::CallbackResult<T>,
        C: FnOnce(&CancelledError) + 'static,
    {
        self.add_canceller(canceller).add_callbacks(callback, errback)
    }

    /// Cancels the Deferred: runs the canceller chain from the invoker's end back to the
    /// responder's, then fails the Deferred with [`CancelledError`] if it still has no
    /// result. Does nothing if the result has already arrived.
    ///
    /// If the chain waits for a Deferred that a callback returned, that Deferred is
    /// cancelled (after the cancellers of the layers still waiting here), and its
    /// failure comes back down this chain as usual.
    ///
    /// Returns what happened (see [`CancelOutcome`]): whether the cancel stopped the work,
    /// came too late, was answered by a canceller with a result, stopped at a shield, or
    /// will be delivered later. Ignoring it is fine.
    ///
    /// While [`set_debugging`](crate::set_debugging) is on, the cancel records its path
    /// in its `CancelledError` ([`CancelledError::trace`]).
    ///
    /// ```
    /// use weft::{CancelOutcome, Deferred};
    ///
    /// let d: Deferred<u8> = Deferred::with_canceller(|d| { let _ = d.callback(0); });
    /// assert_eq!(d.cancel(), CancelOutcome::FiredByCanceller); // a default answer
    /// assert_eq!(d.take_result().unwrap().unwrap(), 0);
    /// ```
    #[track_caller]
    pub fn cancel(&self) -> CancelOutcome {
        self.cancel_at(Location::caller())
    }

    /// [`cancel`](Self::cancel), naming `location` as where a new cancellation started
    /// (helpers that cancel on their caller's behalf, such as a timeout, name the
    /// caller's line).
    pub(crate) fn cancel_at(&self, location: &'static Location<'static>) -> CancelOutcome {
        let (err, _guard) = match CURRENT.with(Cell::get) {
            Some((id, location)) => (CancelledError { id, location, trace: outcome::current_trace() }, None),
            None => {
                let id = CancelId(NEXT_ID.with(|n| {
                    let id = n.get();
                    n.set(id + 1);
                    id
                }));
                {
                    let mut core = self.inner.core.borrow_mut();
                    if !core.is_cancellable() {
                        return CancelOutcome::AlreadyFired;
                    }
                    core.cold_mut().started_here = Some(id);
                }
                let trace = outcome::new_trace();
                let previous = CURRENT.with(|c| c.replace(Some((id, location))));
                let previous_trace = trace.as_ref().map(|t| outcome::replace_trace(Some(t.clone())));
                (CancelledError { id, location, trace }, Some(CurrentGuard(previous, previous_trace)))
            }
        };
        // Past a fixed nesting depth the cancel is queued, and runs before the outermost
        // `cancel()` returns (while `CURRENT` still holds this cancellation's id).
        let this = self.clone();
        super::run::cancel_bounded(move || this.cancel_with(err)).unwrap_or(CancelOutcome::Delayed)
    }

    /// Cancels as part of the cancellation `err`, as a canceller running now would: for
    /// work that received a cancel while it was busy and passes it on afterwards (an
    /// `ensure_deferred` task cancelled during its own poll).
    pub(crate) fn cancel_as(&self, err: &CancelledError) -> CancelOutcome {
        let previous_trace = err.trace.as_ref().map(|t| outcome::replace_trace(Some(t.clone())));
        let _guard = CurrentGuard(CURRENT.with(|c| c.replace(Some((err.id, err.location)))), previous_trace);
        self.cancel_at(err.location)
    }

    fn cancel_with(&self, err: CancelledError) -> CancelOutcome {
        // Going down a chain of Deferreds that wait on one another is a loop, not
        // recursion: a cancel reaches the innermost one at any depth in constant stack.
        let mut current = self.clone();
        let mut walk = Walk::new();
        loop {
            let inner = match current.cancel_step(&err) {
                Ok(inner) => inner,
                Err(outcome) => return outcome,
            };
            if walk.revisits(&inner) {
                // A ring of waiting Deferreds (which `wait_on` refuses to make): the walk
                // would go round for ever. Fail this one, as if what it waits on were
                // gone; its failure then comes back round the ring.
                outcome::record(CancelStep::Stopped(
                    CancelOutcome::Cancelled,
                    inner.inner.core.borrow().created_at,
                ));
                inner.inner.resume(Err(Failure::new_at(err.clone(), err.location)));
                return CancelOutcome::Cancelled;
            }
            current = inner;
        }
    }

    /// Cancels this Deferred's own layers, then either its creator's canceller or, if it
    /// waits on another Deferred, returns that one for the caller to cancel next;
    /// otherwise returns the outcome.
    fn cancel_step(&self, err: &CancelledError) -> Result<Deferred<T>, CancelOutcome> {
        let (target, layers, dead, created_at) = {
            let mut core = self.inner.core.borrow_mut();
            let created_at = core.created_at;
            let target = match &core.slot {
                Slot::Pending => Target::Creator,
                Slot::Waiting(d) => Target::Inner(Some(d.inner().clone())),
                Slot::WaitingWeakly(w) => Target::Inner(w.upgrade()),
                _ => {
                    outcome::record(CancelStep::Stopped(CancelOutcome::AlreadyFired, created_at));
                    return Err(CancelOutcome::AlreadyFired);
                }
            };
            if is_debugging() {
                outcome::record(CancelStep::Entered(created_at));
                core.cold_mut().extra_mut().passed = err.id.0;
            }
            let consumed = core.consumed();
            if matches!(target, Target::Creator) {
                // Watch how the Deferred gets fired while its cancellers run.
                core.cold_mut().cancel_fire = CancelFire::Watching;
            }
            match core.cold.as_mut() {
                Some(c) => {
                    let dead = c.take_dead_layers(consumed);
                    (target, mem::take(&mut c.layers), dead, created_at)
                }
                None => (target, Vec::new(), Vec::new(), created_at),
            }
        };
        // Most Deferreds have no layer cancellers: lists that never held one own nothing,
        // so the calls to their drop glue (a tenth of a cancel's cost per layer) are skipped.
        forget_if_unused(dead);
        if layers.capacity() == 0 {
            forget_if_unused(layers);
        } else {
            for (_, layer) in layers.into_iter().rev() {
                crate::panics::guarded(module_path!(), "a layer canceller", || layer(err));
            }
        }
        let outcome = match target {
            Target::Creator => self.cancel_creator(err),
            Target::Inner(Some(inner)) => return Ok(Deferred::from_inner(inner)),
            Target::Inner(None) => {
                // What we waited on is gone and can never fire: fail here instead.
                self.inner.resume(Err(Failure::new_at(err.clone(), err.location)));
                CancelOutcome::Cancelled
            }
        };
        outcome::record(CancelStep::Stopped(outcome, created_at));
        Err(outcome)
    }

    /// The end of a cancel's walk, at a Deferred that has no result and waits on no
    /// other: runs the creator's canceller (or cancels the sources), then fails the
    /// Deferred if it still has no result.
    fn cancel_creator(&self, err: &CancelledError) -> CancelOutcome {
        let (canceller, sources) = {
            let mut core = self.inner.core.borrow_mut();
            if core.is_called() {
                return core.cancel_outcome();
            }
            match core.cold.as_mut() {
                Some(c) => match c.canceller.take() {
                    Some(canceller) => (Some(canceller), SmallVec::new()),
                    None => (None, c.sources.iter().filter_map(|s| s.upgrade()).collect()),
                },
                None => (None, SmallVec::<[Rc<dyn Erased>; 1]>::new()),
            }
        };
        if let Some(canceller) = canceller {
            // The creator's canceller was given where the Deferred was made: its place in
            // the debug-mode trace is the Deferred's `created_at`, for every kind of canceller.
            if is_debugging() {
                outcome::record(CancelStep::Canceller(self.inner.core.borrow().created_at));
            }
            crate::panics::guarded(module_path!(), "a canceller", || canceller(self));
        }
        // With no canceller of its own, a Deferred built on others (`then`,
        // `timeout_deferred`) cancels them; their failures come back through
        // their links.
        for source in sources {
            source.cancel_source();
        }
        let mut core = self.inner.core.borrow_mut();
        if core.is_called() {
            return core.cancel_outcome();
        }
        // Read before the fire: a callback it runs may pause this Deferred.
        let outcome = core.failed_by_cancel();
        let cold = core.cold_mut();
        cold.cancel_fire = CancelFire::Off;
        cold.suppress_already_called = true;
        if let Some(extra) = cold.extra.as_mut() {
            extra.cancelled_with = Some((err.id, err.location));
        }
        drop(core);
        let _ = self.fire_at(Next::Ready(Err(Failure::new_at(err.clone(), err.location))), err.location);
        outcome
    }

    /// Makes this Deferred a shield: a cancel that reaches it stops there (its outcome is
    /// [`CancelOutcome::Shielded`]). For `stop_cancellation` and observers, whose
    /// cancellers never touch the work behind them.
    pub(crate) fn mark_shield(&self) {
        self.inner.core.borrow_mut().set_shield();
    }

    /// The id of the cancellation started by `cancel()` on this Deferred, if any.
    pub(crate) fn cancel_started_here(&self) -> Option<CancelId> {
        self.inner.core.borrow().cold.as_ref().and_then(|c| c.started_here)
    }
}

/// Drops `list`, skipping the call to its drop glue if it never allocated (it then owns
/// nothing).
#[inline]
fn forget_if_unused(list: Vec<(u32, LayerCanceller)>) {
    if list.capacity() == 0 {
        mem::forget(list);
    } else {
        drop(list);
    }
}

/// Brent's cycle finding over a cancel walk, so that it can never go round a ring: the
/// walk keeps one Deferred it passed, replaced at steps 1, 2, 4, 8, ...; in a ring of
/// length λ it meets the kept one again within a few times λ steps. It costs a compare
/// and a count per step, and a handle clone per doubling; nothing is hashed or allocated.
struct Walk<T: 'static> {
    kept: Option<Deferred<T>>,
    since: u32,
    power: u32,
}

impl<T: 'static> Walk<T> {
    fn new() -> Self {
        Walk { kept: None, since: 0, power: 1 }
    }

    /// Records a step to `d`; true if `d` is the Deferred kept from before (the walk has
    /// come round).
    fn revisits(&mut self, d: &Deferred<T>) -> bool {
        if self.kept.as_ref().is_some_and(|k| Deferred::ptr_eq(k, d)) {
            return true;
        }
        self.since += 1;
        if self.since == self.power {
            self.kept = Some(d.clone());
            self.since = 0;
            self.power = self.power.saturating_mul(2);
        }
        false
    }
}

impl<T: 'static> super::Inner<T> {
    /// Fires the Deferred with `value` from `at` only if it has no result yet, without
    /// the first-late-fire leniency of a cancelled one: hands `value` back otherwise. For
    /// hand-offs (queues, locks) that must pass an item on to the next waiter rather than
    /// into a cancelled one.
    pub(super) fn offer_at(self: &Rc<Self>, value: T, at: &'static Location<'static>) -> Result<(), T> {
        if self.core.borrow().is_called() {
            return Err(value);
        }
        self.callback_at(value, at).map_err(|e| e.into_inner())
    }
}

impl<T: 'static> super::Core<T> {
    /// True if a cancel can still change anything: no result has arrived.
    fn is_cancellable(&self) -> bool {
        matches!(self.slot, Slot::Pending) || self.slot.is_waiting()
    }

    /// The outcome for a Deferred that got a result while a cancel ran its cancellers.
    fn cancel_outcome(&mut self) -> CancelOutcome {
        let still_waiting = self.slot.is_waiting();
        match mem::replace(&mut self.cold_mut().cancel_fire, CancelFire::Off) {
            CancelFire::Other => CancelOutcome::FiredByCanceller,
            CancelFire::Wait if still_waiting => CancelOutcome::Delayed,
            CancelFire::Wait => CancelOutcome::FiredByCanceller,
            CancelFire::ThisCancel | CancelFire::Off | CancelFire::Watching => self.failed_by_cancel(),
        }
    }

    /// The outcome of a cancel that failed this Deferred: it stopped at a shield, is
    /// held back by a pause, or cancelled the work.
    fn failed_by_cancel(&self) -> CancelOutcome {
        if self.is_shield() {
            CancelOutcome::Shielded
        } else if self.paused() > 0 {
            CancelOutcome::Delayed
        } else {
            CancelOutcome::Cancelled
        }
    }

    /// For a fire on a Deferred that already has a result: if it is the first late fire
    /// after a cancel, what is needed to hand its result to the lost-result hook.
    pub(super) fn take_suppressed(&mut self) -> Option<Lost<T>> {
        let created_at = self.created_at;
        let c = self.cold.as_mut()?;
        if !mem::take(&mut c.suppress_already_called) {
            return None;
        }
        let (hook, cancel) = match c.extra.as_mut() {
            Some(x) => (x.on_lost.take(), x.cancelled_with.take()),
            None => (None, None),
        };
        let cancel = cancel.map(|(id, location)| CancelledError { id, location, trace: None });
        Some(Lost { hook, cancel, created_at })
    }
}

/// The `CancelledError` of the cancellation under way on this thread, if a canceller is
/// running now; lets code outside this module continue the same cancellation.
pub(crate) fn current_cancellation() -> Option<CancelledError> {
    CURRENT.with(Cell::get).map(|(id, location)| CancelledError {
        id,
        location,
        trace: outcome::current_trace(),
    })
}

/// A new cancellation that starts at `location` without a `cancel()` of any one
/// Deferred (a cancel scope's cancel or deadline): its `CancelledError`, for
/// `cancel_as` on each Deferred it reaches.
pub(crate) fn new_cancellation(location: &'static Location<'static>) -> CancelledError {
    let id = CancelId(NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    }));
    CancelledError { id, location, trace: outcome::new_trace() }
}
