//! Combinators over many Deferreds: [`DeferredList`], [`gather_results`], [`race`], and
//! the errors they report ([`FirstError`], [`FailureGroup`]).
//!
//! # Ownership
//!
//! Each member's chain owns the combinator's state and Deferred until that member's
//! outcome has reached it, so callbacks added to a combinator whose handle is dropped
//! still run when the members fire, as in Twisted (fire and forget). The combinator's
//! Deferred holds every member until it fires, so members handed over and never
//! referred to again are still cancelled with it (Twisted's `DeferredList` keeps its
//! list). Once the combinator's Deferred has no handle left, nobody can cancel it, so it
//! lets go of its members: a combinator whose members nobody can fire either is freed
//! with them, fired or not (where Twisted waits for its garbage collector).
//!
//! # Cancellation
//!
//! Cancelling the combined Deferred cancels every member that has no result yet; every
//! `CancelledError` produced carries the id of that one cancel.

mod gather;
mod list;
mod race;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::error::Error;
use std::fmt;
use std::rc::Rc;

use crate::deferred::{current_cancellation, Collect, Consuming, DeferredRef, Next};
use crate::free_list;
use crate::{Deferred, Failure};

pub use gather::{gather_results, unwrap_first_error};
pub use list::{DeferredList, ListResult};
pub use race::race;

/// The first member of a list or gather to fail: its index and its failure (Twisted's
/// `defer.FirstError`).
#[derive(Clone, Debug)]
pub struct FirstError {
    /// The failure of that member.
    pub failure: Failure,
    /// The index of the member, in the order the members were given.
    pub index: usize,
}

impl fmt::Display for FirstError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "member {} failed", self.index)
    }
}

impl Error for FirstError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.failure.as_error())
    }
}

/// Every member of a [`race`] failed: their failures, in member order (Twisted's
/// `FailureGroup`).
#[derive(Clone, Debug)]
pub struct FailureGroup {
    /// One failure per member.
    pub failures: Vec<Failure>,
}

impl fmt::Display for FailureGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "all {} members failed", self.failures.len())
    }
}

impl Error for FailureGroup {}

/// A combinator's shared state, as its members' steps see it.
trait Deliver<T: 'static, O: 'static>: 'static {
    /// Member `index`'s outcome reaches the combinator, whose Deferred is `out`. Returns
    /// what the member's own chain goes on with.
    fn deliver(&self, out: &DeferredRef<O>, index: usize, r: Result<T, Failure>) -> Consuming<T>;
}

/// The step each member of a combinator runs: one object for every member, so no
/// closure is boxed per member.
struct MemberStep<S, O: 'static> {
    state: Rc<S>,
    out: DeferredRef<O>,
}

impl<T: 'static, O: 'static, S: Deliver<T, O>> Collect<T> for MemberStep<S, O> {
    fn collect(&self, index: usize, result: Result<T, Failure>) -> Consuming<T> {
        self.state.deliver(&self.out, index, result)
    }
}

/// What the chain of a member that failed with `f` goes on with once the failure reached
/// a list or a gather: the failure, consumed on the caller's behalf if `consume_errors`
/// says so.
fn member_goes_on_with<T>(f: Failure, consume_errors: bool) -> Consuming<T> {
    if consume_errors {
        Err(f)
    } else {
        Ok(Next::Ready(Err(f)))
    }
}

/// What the chain of a member goes on with when its outcome `r` reaches a list or a
/// gather that already fired: the outcome itself (the member keeps it).
fn member_keeps<T>(r: Result<T, Failure>, consume_errors: bool) -> Consuming<T> {
    match r {
        Err(f) => member_goes_on_with(f, consume_errors),
        r => Ok(Next::Ready(r)),
    }
}

/// What a list or a gather keeps of each member: one slot per member, in member order,
/// filled when the member delivers (a list's outcomes, a gather's values). The vector is
/// one the thread kept, if it has one of the size, and goes back to the thread's kept
/// vectors when the values are taken out (see `free_list.rs`).
struct Slots<U: 'static>(RefCell<Vec<Option<U>>>);

impl<U: 'static> Slots<U> {
    /// `n` empty slots.
    fn new(n: usize) -> Slots<U> {
        let mut slots = free_list::take_buffer(n).unwrap_or_default();
        slots.reserve_exact(n);
        slots.resize_with(n, || None);
        Slots(RefCell::new(slots))
    }

    /// Fills slot `index`.
    fn fill(&self, index: usize, value: U) {
        self.0.borrow_mut()[index] = Some(value);
    }

    /// True if member `index` has delivered.
    fn is_filled(&self, index: usize) -> bool {
        self.0.borrow()[index].is_some()
    }

    /// Moves the values out, every slot filled by now, into a vector of their own, and
    /// gives the slots' vector to the thread's kept vectors for the next combinator of
    /// its size.
    fn take_filled(&self) -> Vec<U> {
        let mut slots = std::mem::take(&mut *self.0.borrow_mut());
        let all = slots.drain(..).map(|v| v.expect("every member has delivered")).collect();
        free_list::give_buffer(slots);
        all
    }
}

/// The canceller of a list or a gather: cancels every member `out` still holds, in
/// order (one that already has a result ignores it), upgrading them all first: `out`
/// may fire, and let go of them, after the first cancel, and the rest are still to be
/// cancelled, as in Twisted. A member freed unfired (possible only once `out` lost its
/// handles) can never fire: while `out` has no result, it is delivered to `state` as
/// cancelled, unless it delivered before it went (its slot in `slots` is filled).
fn cancel_members<T: 'static, O: 'static, U: 'static, S: Deliver<T, O>>(
    out: &Deferred<O>,
    state: &S,
    slots: &Slots<U>,
) {
    for (index, member) in out.sources().into_iter().enumerate() {
        match member {
            Some(d) => d.cancel(),
            None if !out.is_called() && !slots.is_filled(index) => {
                if let Some(cancelled) = current_cancellation() {
                    let _ = state.deliver(&out.to_ref(), index, Err(Failure::new(cancelled)));
                }
            }
            None => {}
        }
    }
}

/// Gives each of `members` a step that hands its outcome to `state`, and makes `out`
/// hold the members until it fires, so that its canceller reaches them (one pass over
/// the members: [`Deferred::join`]).
fn join_members<T: 'static, O: 'static, S: Deliver<T, O>>(
    out: &Deferred<O>,
    members: Vec<Deferred<T>>,
    state: Rc<S>,
) {
    let step: Rc<dyn Collect<T>> = Rc::new(MemberStep { state, out: out.to_ref() });
    out.join(members, step);
}
