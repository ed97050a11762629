//! `DeferredList`: wait for many Deferreds of one type.

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;

use super::{cancel_members, join_members, member_goes_on_with, member_keeps, Deliver, FirstError, Slots};
use crate::deferred::{Consuming, DeferredRef, Next};
use crate::{Deferred, Failure};

/// Collects the outcomes of several Deferreds (Twisted's `DeferredList`).
///
/// Build it with [`new`](Self::new), set options, then call
/// [`into_deferred`](Self::into_deferred). By default the list fires once every member
/// has an outcome, with [`ListResult::All`].
///
/// - `fire_on_one_callback`: fire with [`ListResult::One`] as soon as a member succeeds.
/// - `fire_on_one_errback`: fail with a [`FirstError`] as soon as a member fails.
/// - `consume_errors`: a member's failure is consumed on the caller's behalf: it is
///   never reported as unhandled by the member. Twisted turns it into `None` in the
///   member's chain; a typed chain has no value to give, so steps added to the member
///   afterwards get the failure itself (marked handled). Without it the member keeps
///   its failure, as in Twisted, and reports it if nothing handles it.
///
/// A member's value is moved into the list: steps added to that member afterwards get a
/// `ResultConsumedError`. Members that fire after the list has fired keep their results.
///
/// ```
/// use weft::{Deferred, DeferredList, ListResult};
///
/// let (a, b) = (Deferred::<u8>::new(), Deferred::<u8>::new());
/// let list = DeferredList::new(vec![a.clone(), b.clone()]).into_deferred();
/// b.callback(2).unwrap();
/// a.callback(1).unwrap();
/// match list.take_result().unwrap().unwrap() {
///     ListResult::All(results) => {
///         let values: Vec<u8> = results.into_iter().map(|r| r.unwrap()).collect();
///         assert_eq!(values, [1, 2]);
///     }
///     ListResult::One { .. } => unreachable!(),
/// }
/// ```
///
/// # Cancellation
///
/// Cancelling the list's Deferred cancels every member without a result.
pub struct DeferredList<T: 'static> {
    members: Vec<Deferred<T>>,
    fire_on_one_callback: bool,
    fire_on_one_errback: bool,
    consume_errors: bool,
}

/// What a [`DeferredList`] fires with.
#[derive(Debug)]
pub enum ListResult<T> {
    /// Every member's outcome, in member order.
    All(Vec<Result<T, Failure>>),
    /// With `fire_on_one_callback`: the first member to succeed, and its value.
    One {
        /// The member's index.
        index: usize,
        /// Its value.
        value: T,
    },
}

/// What the members' chains share: the outcomes so far and the options.
struct ListState<T: 'static> {
    results: Slots<Result<T, Failure>>,
    remaining: Cell<usize>,
    fire_on_one_callback: bool,
    fire_on_one_errback: bool,
    consume_errors: bool,
}

impl<T: 'static> DeferredList<T> {
    /// A list over `members`, with every option off.
    pub fn new(members: Vec<Deferred<T>>) -> DeferredList<T> {
        DeferredList {
            members,
            fire_on_one_callback: false,
            fire_on_one_errback: false,
            consume_errors: false,
        }
    }

    /// Fire as soon as one member succeeds.
    pub fn fire_on_one_callback(mut self, on: bool) -> Self {
        self.fire_on_one_callback = on;
        self
    }

    /// Fail as soon as one member fails.
    pub fn fire_on_one_errback(mut self, on: bool) -> Self {
        self.fire_on_one_errback = on;
        self
    }

    /// Consume member failures on the caller's behalf (see the type's docs).
    pub fn consume_errors(mut self, on: bool) -> Self {
        self.consume_errors = on;
        self
    }

    /// Starts waiting; returns the list's Deferred.
    ///
    /// # Ownership
    ///
    /// Each member's chain owns the list's Deferred until that member's outcome reaches
    /// it, so callbacks added to the list run even if no handle to it is kept. The list
    /// holds its members until it fires, so cancelling it reaches them even if nobody
    /// else holds them. Once the list's Deferred has no handle left it lets go of them,
    /// so a list whose members nobody can fire is freed with them (see the
    /// [module docs](crate::combinators)).
    #[must_use = "the list's Deferred carries the outcomes"]
    #[track_caller]
    pub fn into_deferred(self) -> Deferred<ListResult<T>> {
        let n = self.members.len();
        // A vector the thread kept, if it has one of the size (see `free_list.rs`).
        let state = Rc::new(ListState {
            results: Slots::new(n),
            remaining: Cell::new(n),
            fire_on_one_callback: self.fire_on_one_callback,
            fire_on_one_errback: self.fire_on_one_errback,
            consume_errors: self.consume_errors,
        });
        let st = state.clone();
        let out = Deferred::with_canceller(move |out: &Deferred<ListResult<T>>| {
            // The list's sources are its members, in order (added below).
            cancel_members(out, &*st, &st.results);
        });
        if n == 0 && !self.fire_on_one_callback {
            let _ = out.callback(ListResult::All(Vec::new()));
            return out;
        }
        join_members(&out, self.members, state);
        out
    }
}

impl<T: 'static> Deliver<T, ListResult<T>> for ListState<T> {
    /// Member `index`'s outcome reaches the list: records it and fires `out` when the
    /// options say so. Returns what the member's own chain goes on with.
    fn deliver(&self, out: &DeferredRef<ListResult<T>>, index: usize, r: Result<T, Failure>) -> Consuming<T> {
        if out.is_called() {
            return member_keeps(r, self.consume_errors);
        }
        self.remaining.set(self.remaining.get() - 1);
        // What the member goes on with is built at the end, from the failure alone: a
        // `Consuming<T>` held across the calls below would be kept in memory for the
        // unwinding path and copied out with a store-forwarding stall (`perf annotate`:
        // a third of this function's time in the `gather` benchmark).
        let (stored, failed) = match r {
            Ok(value) if self.fire_on_one_callback => {
                self.results.fill(index, Err(Failure::msg("moved to ListResult::One")));
                let _ = out.callback(ListResult::One { index, value });
                return Ok(Next::Consumed);
            }
            Ok(v) => (Ok(v), None),
            Err(f) => {
                let back = f.clone();
                if self.fire_on_one_errback {
                    self.results.fill(index, Err(f.clone()));
                    let _ = out.errback(FirstError { failure: f, index });
                    return member_goes_on_with(back, self.consume_errors);
                }
                (Err(f), Some(back))
            }
        };
        self.results.fill(index, stored);
        if self.remaining.get() == 0 {
            let _ = out.callback(ListResult::All(self.results.take_filled()));
        }
        match failed {
            None => Ok(Next::Consumed),
            Some(f) => member_goes_on_with(f, self.consume_errors),
        }
    }
}

impl<T: 'static> fmt::Debug for DeferredList<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferredList")
            .field("members", &self.members.len())
            .field("fire_on_one_callback", &self.fire_on_one_callback)
            .field("fire_on_one_errback", &self.fire_on_one_errback)
            .field("consume_errors", &self.consume_errors)
            .finish()
    }
}
