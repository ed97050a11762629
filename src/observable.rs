//! [`ObservableDeferred`]: one source Deferred, any number of independent observers
//! (Synapse's `ObservableDeferred`).
//!
//! # Ownership
//!
//! The `ObservableDeferred` holds the source and an `Rc` to the shared state; the source's
//! chain holds the state too, through the one link that records the outcome. The state
//! owns the observers still waiting, in a list in the order they observed (the order
//! they are told, as Synapse walks its list), as forward references (they fire an
//! observer and cannot cancel it, see `deferred/own.rs`): a source nobody can fire is
//! freed with the state and the observers nobody holds. An observer that gets an
//! outcome before the source's (a cancel, which fails it at once: it has no canceller)
//! stays in the list until the next sweep: `observe` sweeps out every entry that has an
//! outcome once the list has doubled since the last sweep (keeping the others' order),
//! so the list holds at most about twice the observers still waiting and the sweeps
//! cost O(1) amortized per observer. An observer therefore carries no step of its own (no link, no allocation
//! for one); the fan-out skips the entries that have an outcome. The outcome is stored
//! once; each observer gets a clone of the value (`T: Clone`, cheap for `Rc`/`Arc`
//! payloads) or of the [`Failure`] (an `Rc`).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;

use crate::deferred::{Consuming, DeferredRef, Next};
use crate::{Deferred, Failure};

/// Shares the outcome of one source Deferred with many observers, each of which gets its
/// own new Deferred from [`observe`](Self::observe).
///
/// - Cancelling an observer fails that observer with `CancelledError` and detaches it;
///   the source and the other observers are not affected.
/// - Observers added after the source fired get the outcome at once.
/// - The source's own chain gets its result back unchanged. With `consume_errors`, a
///   failure is consumed there on the caller's behalf: the source never reports it as
///   unhandled (Synapse turns it into `None`; a typed chain has no value to give, so
///   steps added to the source later get the failure itself). Each observer is a
///   Deferred of its own and reports a failure nobody handled, as in Twisted.
///
/// # Examples
///
/// ```
/// use weft::{Deferred, ObservableDeferred};
///
/// let source: Deferred<u32> = Deferred::new();
/// let shared = ObservableDeferred::new(source.clone(), false);
/// let a = shared.observe();
/// let b = shared.observe();
/// a.cancel(); // only `a` is cancelled
/// source.callback(7).unwrap();
/// assert_eq!(b.result().unwrap().unwrap(), 7);
/// assert_eq!(shared.observe().result().unwrap().unwrap(), 7); // late observers too
/// # let _ = a.take_result();
/// ```
///
/// # Drop
///
/// Dropping the `ObservableDeferred` does not cancel the source or the observers: they
/// still fire when the source does.
pub struct ObservableDeferred<T: Clone + 'static> {
    source: Deferred<T>,
    state: Rc<State<T>>,
}

struct State<T: 'static> {
    /// The source's outcome, once it has one; set before any observer is told.
    outcome: RefCell<Option<Result<T, Failure>>>,
    /// Observers waiting for the outcome, in the order they observed, and (until the
    /// next sweep) observers that got one of their own, by a cancel.
    observers: RefCell<Vec<DeferredRef<T>>>,
    /// The list's length at which `observe` sweeps next.
    sweep_at: Cell<usize>,
}

/// The smallest list length at which `observe` sweeps.
const FIRST_SWEEP: usize = 64;

impl<T: 'static> State<T> {
    /// Removes the observers that have an outcome, keeping the others' order; the next
    /// sweep comes once the list has doubled. They are dropped after the borrow ends, since dropping one may run
    /// user code (its unrun steps) that observes again.
    fn sweep(&self) {
        let mut done = Vec::new();
        {
            let mut observers = self.observers.borrow_mut();
            observers.retain(|d| {
                let keep = !d.is_called();
                if !keep {
                    done.push(d.clone());
                }
                keep
            });
            self.sweep_at.set((observers.len() * 2).max(FIRST_SWEEP));
        }
        drop(done);
    }
}

impl<T: Clone + 'static> ObservableDeferred<T> {
    /// Starts observing `source`. See the type's docs for `consume_errors`.
    pub fn new(source: Deferred<T>, consume_errors: bool) -> ObservableDeferred<T> {
        let state = Rc::new(State {
            outcome: RefCell::new(None),
            observers: RefCell::new(Vec::new()),
            sweep_at: Cell::new(FIRST_SWEEP),
        });
        let st = state.clone();
        source.add_both_consuming(move |r: Result<T, Failure>| -> Consuming<T> {
            *st.outcome.borrow_mut() = Some(r.clone());
            // The state is set first; then the observers are told from a taken list, so
            // an observer's callback may observe or cancel freely.
            let observers = std::mem::take(&mut *st.observers.borrow_mut());
            for d in observers {
                // One cancelled meanwhile (by an earlier observer's callback, or while
                // paused) is not told, as a Twisted Deferred cancelled without a canceller
                // ignores its late result.
                if !d.is_called() {
                    let _ = d.fire(Next::Ready(r.clone()));
                }
            }
            match r {
                Err(f) if consume_errors => Err(f),
                r => Ok(Next::Ready(r)),
            }
        });
        ObservableDeferred { source, state }
    }

    /// A new Deferred that fires with the source's outcome (at once if it has one).
    ///
    /// # Cancellation
    ///
    /// Cancelling the returned Deferred detaches it; the source is never cancelled.
    #[must_use = "observe returns a new Deferred for the outcome"]
    #[track_caller]
    pub fn observe(&self) -> Deferred<T> {
        if let Some(r) = self.state.outcome.borrow().as_ref() {
            return match r {
                Ok(v) => crate::succeed(v.clone()),
                Err(f) => crate::fail(f.clone()),
            };
        }
        if self.state.observers.borrow().len() >= self.state.sweep_at.get() {
            self.state.sweep();
        }
        let d = Deferred::new();
        // The source is never cancelled: a cancel stops at the observer.
        d.mark_shield();
        self.state.observers.borrow_mut().push(d.to_ref());
        d
    }

    /// True once the source has produced its outcome.
    pub fn has_called(&self) -> bool {
        self.state.outcome.borrow().is_some()
    }

    /// True once the source has produced a value.
    pub fn has_succeeded(&self) -> bool {
        matches!(*self.state.outcome.borrow(), Some(Ok(_)))
    }

    /// A clone of the outcome, if there is one.
    pub fn get_result(&self) -> Option<Result<T, Failure>> {
        self.state.outcome.borrow().clone()
    }

    /// How many observers are still waiting (a cancelled one is not).
    pub fn observer_count(&self) -> usize {
        self.state.sweep();
        self.state.observers.borrow().len()
    }

    /// The source Deferred.
    pub fn source(&self) -> &Deferred<T> {
        &self.source
    }
}

impl<T: Clone + 'static> fmt::Debug for ObservableDeferred<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservableDeferred")
            .field("called", &self.has_called())
            .field("observers", &self.observer_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Observers cancelled and dropped one after another (a cache entry whose requests
    /// all went away) do not pile up while the source waits: the list stays within about
    /// twice the observers still waiting.
    #[test]
    fn cancelled_observers_are_swept_and_the_list_stays_bounded() {
        let source: Deferred<u32> = Deferred::new();
        let shared = ObservableDeferred::new(source.clone(), false);
        let waiting: Vec<Deferred<u32>> = (0..10).map(|_| shared.observe()).collect();
        let mut most = 0;
        for _ in 0..10_000 {
            let d = shared.observe();
            d.cancel();
            let _ = d.take_result();
            most = most.max(shared.state.observers.borrow().len());
        }
        assert!(most <= 2 * FIRST_SWEEP, "the list grew to {most}");
        assert_eq!(shared.observer_count(), 10);
        source.callback(3).unwrap();
        assert!(waiting.iter().all(|d| d.result().unwrap().unwrap() == 3));
    }

    /// A swept observer's unrun steps are dropped outside the list's borrow, so a step
    /// whose drop observes again does not find the list borrowed.
    #[test]
    fn a_swept_observers_steps_may_observe_when_dropped() {
        struct ObserveOnDrop(Rc<ObservableDeferred<u32>>, Rc<Cell<bool>>);
        impl Drop for ObserveOnDrop {
            fn drop(&mut self) {
                let _ = self.0.observe();
                self.1.set(true);
            }
        }
        let source: Deferred<u32> = Deferred::new();
        let shared = Rc::new(ObservableDeferred::new(source.clone(), false));
        let dropped = Rc::new(Cell::new(false));
        {
            let d = shared.observe();
            d.pause();
            d.cancel();
            let guard = ObserveOnDrop(shared.clone(), dropped.clone());
            d.add_callback(move |x| {
                let _keep = &guard;
                x
            });
        }
        assert!(!dropped.get(), "the paused observer is still in the list");
        assert_eq!(shared.observer_count(), 1, "the one observed while dropping");
        assert!(dropped.get());
        source.callback(1).unwrap();
    }
}
