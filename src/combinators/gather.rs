//! `gather_results` and `unwrap_first_error`.

use super::{DeferredList, FirstError, ListResult};
use crate::{Deferred, Failure};

/// Waits for every Deferred in `members` and fires with their values in order, or fails
/// with a [`FirstError`] naming the first member to fail (Twisted's `gatherResults`).
///
/// With `consume_errors`, member failures are consumed on the caller's behalf: never
/// reported as unhandled by the members (see [`DeferredList`]'s `consume_errors`).
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
/// handle left), as a [`DeferredList`] does.
#[must_use = "the gathered Deferred carries the values"]
#[track_caller]
pub fn gather_results<T: 'static>(members: Vec<Deferred<T>>, consume_errors: bool) -> Deferred<Vec<T>> {
    DeferredList::new(members).fire_on_one_errback(true).consume_errors(consume_errors).into_deferred().map(
        |r| -> Result<Vec<T>, Failure> {
            match r {
                ListResult::All(results) => results.into_iter().collect(),
                ListResult::One { .. } => unreachable!("fire_on_one_callback is off"),
            }
        },
    )
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
