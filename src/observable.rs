//! [`ObservableDeferred`]: one source Deferred, any number of independent observers
//! (Synapse's `ObservableDeferred`).
//!
//! # Ownership
//!
//! The `ObservableDeferred` holds the source and an `Rc` to the shared state; the source's
//! chain holds the state too, through the one link that records the outcome. The state
//! owns the observers still waiting, in a `Slab`, as forward references (they fire an
//! observer and cannot cancel it, see `deferred/own.rs`): a source nobody can fire is
//! freed with the state and the observers nobody holds. Each observer's first step (a
//! `Collect` link on the one `Detach` object, which holds only a `Weak` to the state)
//! removes its slab entry when the observer gets an outcome, so cancelling an observer
//! (which fails it at once: it has no canceller) removes that one entry and nothing
//! else. The outcome is stored once; each observer gets a clone of the value (`T:
//! Clone`, cheap for `Rc`/`Arc` payloads) or of the [`Failure`] (an `Rc`).

use std::cell::RefCell;
use std::fmt;
use std::rc::{Rc, Weak};

use slab::Slab;

use crate::deferred::{Collect, Consuming, DeferredRef, Next};
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
    /// Every observer's first step (one object for all of them).
    detach: Rc<dyn Collect<T>>,
}

struct State<T: 'static> {
    /// The source's outcome, once it has one; set before any observer is told.
    outcome: RefCell<Option<Result<T, Failure>>>,
    /// Observers waiting for the outcome.
    observers: RefCell<Slab<DeferredRef<T>>>,
}

impl<T: Clone + 'static> ObservableDeferred<T> {
    /// Starts observing `source`. See the type's docs for `consume_errors`.
    pub fn new(source: Deferred<T>, consume_errors: bool) -> ObservableDeferred<T> {
        let state = Rc::new(State { outcome: RefCell::new(None), observers: RefCell::new(Slab::new()) });
        let st = state.clone();
        source.add_both_consuming(move |r: Result<T, Failure>| -> Consuming<T> {
            *st.outcome.borrow_mut() = Some(r.clone());
            // The state is set first; then the observers are told from a taken list, so
            // an observer's callback may observe or cancel freely.
            let observers = std::mem::take(&mut *st.observers.borrow_mut());
            for (_, d) in observers {
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
        let detach = Rc::new(Detach(Rc::downgrade(&state)));
        ObservableDeferred { source, state, detach }
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
        let mut observers = self.state.observers.borrow_mut();
        let entry = observers.vacant_entry();
        let key = entry.key();
        let d = Deferred::new();
        // The source is never cancelled: a cancel stops at the observer.
        d.mark_shield();
        // Its first step removes the entry once it has an outcome (see `Detach`).
        d.add_collect(self.detach.clone(), key);
        entry.insert(d.to_ref());
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

    /// How many observers are still waiting.
    pub fn observer_count(&self) -> usize {
        self.state.observers.borrow().len()
    }

    /// The source Deferred.
    pub fn source(&self) -> &Deferred<T> {
        &self.source
    }
}

/// Every observer's first step: once the observer has an outcome (the source's, or a
/// cancel's), its entry leaves the list, so a cancelled observer is not told the source's
/// outcome. Holds the state weakly: the observers hold it, and the state holds them.
struct Detach<T: 'static>(Weak<State<T>>);

impl<T: 'static> Collect<T> for Detach<T> {
    fn collect(&self, key: usize, result: Result<T, Failure>) -> Consuming<T> {
        if let Some(state) = self.0.upgrade() {
            // The source's fan-out took the whole list first: then there is nothing here.
            let removed = state.observers.borrow_mut().try_remove(key);
            drop(removed);
        }
        Ok(Next::Ready(result))
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
