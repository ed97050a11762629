//! `race`: the first success wins, the rest are cancelled.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::{join_members, Deliver, FailureGroup};
use crate::deferred::{current_cancellation, Consuming, DeferredRef, Next, WeakDeferred};
use crate::{Deferred, Failure};

/// Fires with `(index, value)` of the first member to succeed and cancels the others
/// (Twisted's `race`). If every member fails, fails with a [`FailureGroup`].
///
/// Failures of members that come after the race is decided (those cancelled because
/// another won, for instance) are consumed on the caller's behalf: never reported as
/// unhandled by the members (later steps on a member still get them).
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
/// their `CancelledError`s (or, if a member's canceller supplies a value, that member
/// wins).
///
/// # Ownership
///
/// Each member's chain owns the race's Deferred until its outcome arrives. The race holds
/// its members until it settles, so they are cancelled with it even if nobody else holds
/// them (Twisted's `race([Deferred(canceller), ...])`). Once the race's Deferred has no
/// handle left it lets go of them, so a race whose members nobody can fire is freed with
/// them.
#[must_use = "the race's Deferred carries the winner"]
#[track_caller]
pub fn race<T: 'static>(members: Vec<Deferred<T>>) -> Deferred<(usize, T)> {
    let n = members.len();
    let state = Rc::new(RaceState {
        members: members.iter().map(Deferred::downgrade).collect(),
        failures: RefCell::new(vec![None; n]),
        remaining: Cell::new(n),
        won: Cell::new(false),
    });
    let st = state.clone();
    let out: Deferred<(usize, T)> = Deferred::with_canceller(move |out: &Deferred<(usize, T)>| {
        st.cancel_all(None, Some(&out.to_ref()));
    });
    if n == 0 {
        let _ = out.errback(FailureGroup { failures: Vec::new() });
        return out;
    }
    join_members(&out, members, state);
    out
}

/// What the members' chains and the race's canceller share.
struct RaceState<T: 'static> {
    /// The members, reached weakly: the race's Deferred holds them (see the ownership
    /// rules above).
    members: Vec<WeakDeferred<T>>,
    failures: RefCell<Vec<Option<Failure>>>,
    remaining: Cell<usize>,
    won: Cell<bool>,
}

impl<T: 'static> Deliver<T, (usize, T)> for RaceState<T> {
    /// Member `index`'s outcome reaches the race. Returns what the member's own chain
    /// goes on with.
    fn deliver(&self, out: &DeferredRef<(usize, T)>, index: usize, r: Result<T, Failure>) -> Consuming<T> {
        if self.won.get() || out.is_called() {
            return match r {
                Ok(v) => Ok(Next::Ready(Ok(v))),
                Err(f) => Err(f),
            };
        }
        self.remaining.set(self.remaining.get() - 1);
        match r {
            Ok(v) => {
                self.won.set(true);
                self.cancel_all(Some(index), None);
                let _ = out.callback((index, v));
            }
            Err(f) => {
                self.failures.borrow_mut()[index] = Some(f);
                if self.remaining.get() == 0 {
                    let all = std::mem::take(&mut *self.failures.borrow_mut());
                    let failures = all.into_iter().map(|f| f.expect("every member failed")).collect();
                    let _ = out.errback(FailureGroup { failures });
                }
            }
        }
        Ok(Next::Consumed)
    }
}

impl<T: 'static> RaceState<T> {
    /// Cancels every member but `except`: the race has been won or is being cancelled
    /// (`out`). While the race is cancelled, a member freed unfired counts as cancelled.
    fn cancel_all(&self, except: Option<usize>, out: Option<&DeferredRef<(usize, T)>>) {
        // Held here for the whole loop, so that none is let go of before its turn.
        let members: Vec<Option<Deferred<T>>> = self.members.iter().map(WeakDeferred::upgrade).collect();
        for (index, member) in members.into_iter().enumerate() {
            if Some(index) == except {
                continue;
            }
            match (member, out) {
                (Some(d), _) => {
                    d.cancel();
                }
                (None, Some(out)) if !self.won.get() && self.failures.borrow()[index].is_none() => {
                    if let Some(cancelled) = current_cancellation() {
                        let _ = self.deliver(out, index, Err(Failure::new(cancelled)));
                    }
                }
                (None, _) => {}
            }
        }
    }
}
