//! `gather_results` and `unwrap_first_error`.

use std::cell::Cell;
use std::rc::Rc;

use super::{cancel_members, join_members, member_goes_on_with, member_keeps, Deliver, FirstError, Slots};
use crate::deferred::{Consuming, DeferredRef, Next};
use crate::{Deferred, Failure};

/// Waits for every Deferred in `members` and fires with their values in order, or fails
/// with a [`FirstError`] naming the first member to fail (Twisted's `gatherResults`).
///
/// With `consume_errors`, member failures are consumed on the caller's behalf: never
/// reported as unhandled by the members (see
/// [`DeferredList::consume_errors`](crate::DeferredList::consume_errors)).
///
/// ```
/// use weft::{gather_results, succeed, Deferred, FirstError, Failure};
///
/// let all = gather_results(vec![succeed(1), succeed(2)], false);
/// assert_eq!(all.take_result().unwrap().unwrap(), [1, 2]);
///
/// let bad: Deferred<i32> = Deferred::new();
/// let some = gather_results(vec![succeed(1), bad.clone()], true);
/// bad.errback(Failure::msg("no")).unwrap();
/// let f = some.take_result().unwrap().unwrap_err();
/// assert_eq!(f.downcast_ref::<FirstError>().unwrap().index, 1);
/// ```
///
/// # Cancellation
///
/// Cancelling the result cancels every member without a result; the first member's
/// `CancelledError` comes back wrapped in a `FirstError` (unwrap it with
/// [`unwrap_first_error`]). The result holds the members until it settles (or has no
/// handle left), as a [`DeferredList`](crate::DeferredList) does.
#[must_use = "the gathered Deferred carries the values"]
#[track_caller]
pub fn gather_results<T: 'static>(members: Vec<Deferred<T>>, consume_errors: bool) -> Deferred<Vec<T>> {
    let n = members.len();
    let state = Rc::new(GatherState { values: Slots::new(n), remaining: Cell::new(n), consume_errors });
    let st = state.clone();
    let out = Deferred::with_canceller(move |out: &Deferred<Vec<T>>| {
        // The gather's sources are its members, in order (added below).
        cancel_members(out, &*st, &st.values);
    });
    if n == 0 {
        let _ = out.callback(Vec::new());
        return out;
    }
    join_members(&out, members, state);
    out
}

/// What the members' chains of a [`gather_results`] share. Twisted's `gatherResults`
/// is a `DeferredList` with `fireOnOneErrback` and a callback that takes the values out
/// of its list of outcomes; here each value goes straight to its place, so there is no
/// list of outcomes to make, walk and copy again, and no second Deferred.
struct GatherState<T: 'static> {
    values: Slots<T>,
    remaining: Cell<usize>,
    consume_errors: bool,
}

impl<T: 'static> Deliver<T, Vec<T>> for GatherState<T> {
    /// Member `index`'s outcome reaches the gather: a value goes to its place, and the
    /// last one fires `out` with them all; the first failure fails `out` with a
    /// [`FirstError`]. Returns what the member's own chain goes on with, as for a
    /// member of a `DeferredList`.
    fn deliver(&self, out: &DeferredRef<Vec<T>>, index: usize, r: Result<T, Failure>) -> Consuming<T> {
        if out.is_called() {
            return member_keeps(r, self.consume_errors);
        }
        match r {
            Ok(value) => {
                self.values.fill(index, value);
                let remaining = self.remaining.get() - 1;
                self.remaining.set(remaining);
                if remaining == 0 {
                    let _ = out.callback(self.values.take_filled());
                }
                Ok(Next::Consumed)
            }
            Err(f) => {
                let _ = out.errback(FirstError { failure: f.clone(), index });
                member_goes_on_with(f, self.consume_errors)
            }
        }
    }
}

/// An errback that replaces a [`FirstError`] with the failure it wraps (Synapse's
/// `unwrapFirstError`); any other failure passes through.
///
/// ```
/// use weft::{gather_results, unwrap_first_error, CancelledError, Deferred};
///
/// let member: Deferred<u8> = Deferred::new();
/// let all = gather_results(vec![member], true);
/// all.add_errback(unwrap_first_error);
/// all.cancel();
/// assert!(all.take_result().unwrap().unwrap_err().check::<CancelledError>());
/// ```
pub fn unwrap_first_error<T>(failure: Failure) -> Result<T, Failure> {
    match failure.downcast_ref::<FirstError>() {
        Some(first) => Err(first.failure.clone()),
        None => Err(failure),
    }
}
