//! `race`: the first success wins, the rest are cancelled.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::FailureGroup;
use crate::deferred::{Next, WeakDeferred};
use crate::{Deferred, Failure};

/// Fires with `(index, value)` of the first member to succeed and cancels the others
/// (Twisted's `race`). If every member fails, fails with a [`FailureGroup`].
///
/// Failures of members cancelled because another won are consumed.
///
/// ```
/// use weft::{race, Deferred};
///
/// let (slow, fast) = (Deferred::<&str>::new(), Deferred::<&str>::new());
/// let winner = race(vec![slow.clone(), fast.clone()]);
/// fast.callback("fast").unwrap();
/// assert_eq!(winner.take_result().unwrap().unwrap(), (1, "fast"));
/// assert!(slow.is_called()); // cancelled
/// ```
///
/// # Cancellation
///
/// Cancelling the race cancels every member; it then fails with a `FailureGroup` of
/// their `CancelledError`s.
#[must_use = "the race's Deferred carries the winner"]
pub fn race<T: 'static>(members: Vec<Deferred<T>>) -> Deferred<(usize, T)> {
    let n = members.len();
    let weak: Rc<Vec<WeakDeferred<T>>> = Rc::new(members.iter().map(Deferred::downgrade).collect());
    let w = weak.clone();
    let out: Deferred<(usize, T)> = Deferred::with_canceller(move |_| {
        for m in w.iter() {
            if let Some(d) = m.upgrade() {
                d.cancel();
            }
        }
    });
    if n == 0 {
        let _ = out.errback(FailureGroup { failures: Vec::new() });
        return out;
    }
    let failures: Rc<RefCell<Vec<Option<Failure>>>> = Rc::new(RefCell::new(vec![None; n]));
    let remaining = Rc::new(Cell::new(n));
    let won = Rc::new(Cell::new(false));
    for (index, member) in members.iter().enumerate() {
        let (out, failures, remaining, won, weak) =
            (out.clone(), failures.clone(), remaining.clone(), won.clone(), weak.clone());
        member.add_both(move |r: Result<T, Failure>| -> Next<T> {
            remaining.set(remaining.get() - 1);
            if won.get() {
                return match r {
                    Ok(v) => Next::Ready(Ok(v)),
                    Err(_) => Next::Consumed,
                };
            }
            match r {
                Ok(v) => {
                    won.set(true);
                    for (i, m) in weak.iter().enumerate() {
                        if i != index {
                            if let Some(d) = m.upgrade() {
                                d.cancel();
                            }
                        }
                    }
                    let _ = out.callback((index, v));
                }
                Err(f) => {
                    failures.borrow_mut()[index] = Some(f);
                    if remaining.get() == 0 {
                        let all = std::mem::take(&mut *failures.borrow_mut());
                        let failures = all.into_iter().map(|f| f.expect("every member failed")).collect();
                        let _ = out.errback(FailureGroup { failures });
                    }
                }
            }
            Next::Consumed
        });
    }
    out
}
