//! `DeferredList`: wait for many Deferreds of one type.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use super::FirstError;
use crate::deferred::{Next, WeakDeferred};
use crate::{Deferred, Failure};

/// Collects the outcomes of several Deferreds (Twisted's `DeferredList`).
///
/// Build it with [`new`](Self::new), set options, then call
/// [`into_deferred`](Self::into_deferred). By default the list fires once every member
/// has an outcome, with [`ListResult::All`].
///
/// - `fire_on_one_callback`: fire with [`ListResult::One`] as soon as a member succeeds.
/// - `fire_on_one_errback`: fail with a [`FirstError`] as soon as a member fails.
/// - `consume_errors`: a member's failure is consumed in its own chain (not reported as
///   unhandled there); otherwise the member keeps its failure, as in Twisted.
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

struct ListState<T: 'static> {
    results: RefCell<Vec<Option<Result<T, Failure>>>>,
    remaining: std::cell::Cell<usize>,
    out: RefCell<Option<Deferred<ListResult<T>>>>,
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

    /// Consume member failures in the members' own chains.
    pub fn consume_errors(mut self, on: bool) -> Self {
        self.consume_errors = on;
        self
    }

    /// Starts waiting; returns the list's Deferred.
    #[must_use = "the list's Deferred carries the outcomes"]
    pub fn into_deferred(self) -> Deferred<ListResult<T>> {
        let n = self.members.len();
        let weak: Vec<WeakDeferred<T>> = self.members.iter().map(Deferred::downgrade).collect();
        let state = Rc::new(ListState {
            results: RefCell::new((0..n).map(|_| None).collect()),
            remaining: std::cell::Cell::new(n),
            out: RefCell::new(None),
        });
        let st = Rc::downgrade(&state);
        let out = Deferred::with_canceller(move |_| {
            for (i, w) in weak.iter().enumerate() {
                let done =
                    st.upgrade().map_or(true, |s| s.results.borrow().get(i).map_or(true, Option::is_some));
                if done {
                    continue;
                }
                if let Some(d) = w.upgrade() {
                    d.cancel();
                }
            }
        });
        if n == 0 && !self.fire_on_one_callback {
            let _ = out.callback(ListResult::All(Vec::new()));
            return out;
        }
        *state.out.borrow_mut() = Some(out.clone());
        let (on_cb, on_eb, consume) =
            (self.fire_on_one_callback, self.fire_on_one_errback, self.consume_errors);
        for (index, member) in self.members.iter().enumerate() {
            let st = state.clone();
            member.add_both(move |r: Result<T, Failure>| -> Next<T> {
                let out = st.out.borrow().clone();
                let Some(out) = out.filter(|o| !o.is_called()) else {
                    // The list already fired: the member keeps its result.
                    return match r {
                        Err(_) if consume => Next::Consumed,
                        r => Next::Ready(r),
                    };
                };
                st.remaining.set(st.remaining.get() - 1);
                let (stored, back) = match r {
                    Ok(v) if on_cb => {
                        st.results.borrow_mut()[index] = Some(Err(Failure::msg("moved to ListResult::One")));
                        *st.out.borrow_mut() = None;
                        let _ = out.callback(ListResult::One { index, value: v });
                        return Next::Consumed;
                    }
                    Ok(v) => (Ok(v), Next::Consumed),
                    Err(f) => {
                        let back = if consume { Next::Consumed } else { Next::Ready(Err(f.clone())) };
                        if on_eb {
                            st.results.borrow_mut()[index] = Some(Err(f.clone()));
                            *st.out.borrow_mut() = None;
                            let _ = out.errback(FirstError { failure: f, index });
                            return back;
                        }
                        (Err(f), back)
                    }
                };
                st.results.borrow_mut()[index] = Some(stored);
                if st.remaining.get() == 0 {
                    *st.out.borrow_mut() = None;
                    let all = std::mem::take(&mut *st.results.borrow_mut());
                    let all = all.into_iter().map(|r| r.expect("every member has a result")).collect();
                    let _ = out.callback(ListResult::All(all));
                }
                back
            });
        }
        out
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
