//! Synapse's `synapse.util.async_helpers`, for porters: [`concurrently_execute`],
//! [`AwakenableSleeper`] and [`gather_optional`] (Synapse's
//! `gather_optional_coroutines`) live here; the rest of that module is elsewhere in weft,
//! as the table says.
//!
//! These helpers compose Deferreds, tasks and timers, so they sit above `sync`,
//! `combinators`, `future` and the reactor's time interface, and none of those depend on
//! them. They keep Synapse's module name so that a porter finds them under it.
//!
//! | Synapse `async_helpers` | weft |
//! |---|---|
//! | `ObservableDeferred` | [`ObservableDeferred`](crate::ObservableDeferred) |
//! | `Linearizer`, `ReadWriteLock` | [`Linearizer`](crate::Linearizer) (`is_queued` as Synapse's: someone waits; `is_held` added), [`ReadWriteLock`](crate::ReadWriteLock); the lock is a guard value, released on drop |
//! | `timeout_deferred`, `stop_cancellation`, `delay_cancellation` | [`crate::cancellation`] |
//! | `yieldable_gather_results(f, items)` | [`gather_results`]`(items.map(f), true)` then [`unwrap_first_error`] |
//! | `concurrently_execute(func, args, limit)` | [`concurrently_execute`] (a zero limit fails instead of doing nothing) |
//! | `concurrently_execute(..., delay_cancellation=True)` | [`delay_cancellation`](crate::delay_cancellation)`(&concurrently_execute(..))` |
//! | `AwakenableSleeper` | [`AwakenableSleeper`] |
//! | `gather_optional_coroutines(*coros)` | [`gather_optional`] over `Option<Deferred<_>>` (wrap a coroutine-like future in [`ensure_deferred`]) |

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::future::IntoFuture;
use std::hash::Hash;
use std::rc::Rc;
use std::time::Duration;

use crate::future::ensure_deferred;
use crate::reactor::DelayedCall;
use crate::{gather_results, unwrap_first_error, Deferred, Failure, ReactorTime};

/// Calls `func` on every item of `args`, at most `limit` calls running at once, and
/// fires with `()` once every call has finished (Synapse's `concurrently_execute`).
/// `func` returns anything that can be awaited for a `Result`: a `Deferred<T>`, or an
/// `async` block. The values are discarded.
///
/// `min(limit, number of items)` workers are started, each taking the next item as soon
/// as its previous call finished, so a call that completes at once does not hold up the
/// others and the stack never grows with the number of items. Each call runs in the log
/// context current now.
///
/// ```
/// use std::{cell::RefCell, rc::Rc};
/// use weft::{async_helpers::concurrently_execute, Deferred};
///
/// let pending: Rc<RefCell<Vec<Deferred<()>>>> = Rc::default();
/// let p = pending.clone();
/// let all = concurrently_execute(
///     move |_item: u32| {
///         let d = Deferred::new();
///         p.borrow_mut().push(d.clone());
///         d
///     },
///     1..=5,
///     2,
/// );
/// assert_eq!(pending.borrow().len(), 2); // two at a time
/// loop {
///     let next = pending.borrow_mut().pop();
///     let Some(d) = next else { break };
///     d.callback(()).unwrap(); // each one finished starts the next
/// }
/// assert!(all.take_result().unwrap().is_ok());
/// ```
///
/// # Errors
///
/// The Deferred fails with the first failure of a call (not wrapped in a
/// [`FirstError`](crate::FirstError)); as in Synapse, the other workers go on to the end
/// of the items. It fails at once if `limit` is zero.
///
/// # Cancellation
///
/// Cancelling the returned Deferred cancels every call in progress (each worker's
/// current Deferred); no further item is started. To let the calls finish and deliver
/// the `CancelledError` afterwards (Synapse's `delay_cancellation=True`), wrap the result
/// in [`delay_cancellation`](crate::delay_cancellation).
#[must_use = "the Deferred tells when every call has finished"]
pub fn concurrently_execute<A, I, F, Fut, T>(func: F, args: I, limit: usize) -> Deferred<()>
where
    A: 'static,
    I: IntoIterator<Item = A>,
    I::IntoIter: 'static,
    F: Fn(A) -> Fut + 'static,
    Fut: IntoFuture<Output = Result<T, Failure>> + 'static,
    T: 'static,
{
    if limit == 0 {
        return crate::fail(Failure::msg("concurrently_execute needs a limit of at least 1"));
    }
    let items = Rc::new(RefCell::new(args.into_iter()));
    let func = Rc::new(func);
    let mut workers = Vec::new();
    while workers.len() < limit {
        let first = items.borrow_mut().next();
        let Some(first) = first else { break };
        let (items, func) = (items.clone(), func.clone());
        workers.push(ensure_deferred(async move {
            let mut item = first;
            loop {
                func(item).await?;
                let next = items.borrow_mut().next();
                match next {
                    Some(next) => item = next,
                    None => return Ok::<_, Failure>(()),
                }
            }
        }));
    }
    gather_results(workers, true).then(|r| r.map(drop).or_else(unwrap_first_error))
}

/// Sleepers that can be woken early by name (Synapse's `AwakenableSleeper`):
/// [`sleep`](Self::sleep) fires after a delay, or as soon as [`wake`](Self::wake) is
/// called with its name, whichever comes first. Cheap to clone.
///
/// ```
/// use std::time::Duration;
/// use weft::{async_helpers::AwakenableSleeper, Clock};
///
/// let clock = Clock::new();
/// let sleeper = AwakenableSleeper::new(clock.clone());
/// let d = sleeper.sleep("room", Duration::from_secs(1));
/// assert!(!d.is_called());
/// sleeper.wake(&"room");
/// assert!(d.is_called());
/// assert_eq!(clock.pending_calls(), 0); // the timer went with it
/// ```
///
/// # Cancellation
///
/// Cancelling a sleep removes it and its timer; other sleepers on the same name stay.
pub struct AwakenableSleeper<K: Eq + Hash + Clone + 'static> {
    inner: Rc<SleeperInner<K>>,
}

struct SleeperInner<K> {
    time: Rc<dyn ReactorTime>,
    /// The sleepers of each name, by a never-reused id.
    sleepers: RefCell<HashMap<K, HashMap<u64, Sleeper>>>,
    next_id: Cell<u64>,
}

/// One sleep: its Deferred and its timer.
struct Sleeper {
    d: Deferred<()>,
    timer: Option<DelayedCall>,
}

impl<K: Eq + Hash + Clone + 'static> AwakenableSleeper<K> {
    /// Sleepers whose delays run on `time` (a [`Clock`](crate::Clock) or a reactor
    /// handle).
    pub fn new(time: impl ReactorTime + 'static) -> AwakenableSleeper<K> {
        AwakenableSleeper {
            inner: Rc::new(SleeperInner {
                time: Rc::new(time),
                sleepers: RefCell::new(HashMap::new()),
                next_id: Cell::new(0),
            }),
        }
    }

    /// A Deferred that fires with `()` after `delay`, or when [`wake`](Self::wake) is
    /// called with `name`, whichever comes first.
    #[must_use = "the Deferred fires when the sleep ends"]
    pub fn sleep(&self, name: K, delay: Duration) -> Deferred<()> {
        let id = self.inner.next_id.get();
        self.inner.next_id.set(id + 1);
        let weak = Rc::downgrade(&self.inner);
        let n = name.clone();
        let d = Deferred::with_canceller(move |_| {
            if let Some(inner) = weak.upgrade() {
                drop(inner.remove(&n, id));
            }
        });
        let weak = Rc::downgrade(&self.inner);
        let n = name.clone();
        let timer = self.inner.time.call_later(
            delay,
            Box::new(move || {
                let sleeper = weak.upgrade().and_then(|inner| inner.remove(&n, id));
                if let Some(s) = sleeper {
                    let _ = s.d.callback(());
                }
            }),
        );
        let sleeper = Sleeper { d: d.clone(), timer: Some(timer) };
        self.inner.sleepers.borrow_mut().entry(name).or_default().insert(id, sleeper);
        d
    }

    /// Wakes every sleeper on `name` now; their timers are cancelled.
    pub fn wake(&self, name: &K) {
        let woken = self.inner.sleepers.borrow_mut().remove(name);
        for (_, mut s) in woken.into_iter().flatten() {
            if let Some(t) = s.timer.take() {
                let _ = t.cancel();
            }
            let _ = s.d.callback(());
        }
    }

    /// How many sleeps on `name` are pending.
    pub fn sleeping(&self, name: &K) -> usize {
        self.inner.sleepers.borrow().get(name).map_or(0, HashMap::len)
    }
}

impl<K: Eq + Hash> SleeperInner<K> {
    /// Takes sleep `id` off `name` (dropping the name when it was the last), and stops
    /// its timer.
    fn remove(&self, name: &K, id: u64) -> Option<Sleeper> {
        let mut sleeper = {
            let mut sleepers = self.sleepers.borrow_mut();
            let of_name = sleepers.get_mut(name)?;
            let s = of_name.remove(&id);
            if of_name.is_empty() {
                sleepers.remove(name);
            }
            s?
        };
        if let Some(t) = sleeper.timer.take() {
            let _ = t.cancel();
        }
        Some(sleeper)
    }
}

impl<K: Eq + Hash + Clone + 'static> Clone for AwakenableSleeper<K> {
    /// Another handle to the same sleepers.
    fn clone(&self) -> Self {
        AwakenableSleeper { inner: self.inner.clone() }
    }
}

impl<K: Eq + Hash + Clone + 'static> fmt::Debug for AwakenableSleeper<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwakenableSleeper").field("names", &self.inner.sleepers.borrow().len()).finish()
    }
}

/// Gathers Deferreds some of which may be missing (Synapse's
/// `gather_optional_coroutines`): a tuple of up to six `Option<Deferred<_>>` of any
/// types, or a `Vec<Option<Deferred<T>>>`. Fires with the values in the same shape, a
/// `None` where a member was `None`, once every present member has fired.
///
/// ```
/// use weft::{async_helpers::gather_optional, Deferred};
///
/// let count: Deferred<u32> = Deferred::new();
/// let name: Deferred<&str> = Deferred::new();
/// let all = gather_optional((Some(count.clone()), None::<Deferred<bool>>, Some(name.clone())));
/// name.callback("test").unwrap();
/// assert!(!all.is_called());
/// count.callback(1).unwrap();
/// assert_eq!(all.take_result().unwrap().unwrap(), (Some(1), None, Some("test")));
/// ```
///
/// # Errors
///
/// Fails at once with the first member's failure (not wrapped in a
/// [`FirstError`](crate::FirstError)); the other members' failures are consumed.
///
/// # Cancellation
///
/// Cancelling the result cancels every member that has not fired.
#[must_use = "the gathered Deferred carries the values"]
pub fn gather_optional<G: GatherOptional>(members: G) -> Deferred<G::Output> {
    members.gather()
}

/// What [`gather_optional`] takes: tuples (up to six) of `Option<Deferred<_>>`, and
/// `Vec<Option<Deferred<T>>>`. Sealed.
pub trait GatherOptional: sealed::Sealed {
    /// The gathered values: the same shape, with `Option<T>` for each member.
    type Output: 'static;

    #[doc(hidden)]
    fn gather(self) -> Deferred<Self::Output>;
}

mod sealed {
    pub trait Sealed {}
}

/// Turns `member` into a `Deferred<()>` that stores its value in the returned slot.
fn into_slot<T: 'static>(member: Option<Deferred<T>>) -> (Option<Deferred<()>>, Rc<RefCell<Option<T>>>) {
    let slot = Rc::new(RefCell::new(None));
    let s = slot.clone();
    let unit = member.map(|d| d.then(move |r: Result<T, Failure>| r.map(|v| *s.borrow_mut() = Some(v))));
    (unit, slot)
}

/// Gathers the present members, then builds the output from the slots.
fn gather_slots<O: 'static>(
    units: Vec<Option<Deferred<()>>>,
    build: impl FnOnce() -> O + 'static,
) -> Deferred<O> {
    let present: Vec<Deferred<()>> = units.into_iter().flatten().collect();
    gather_results(present, true).then(move |r: Result<Vec<()>, Failure>| match r {
        Ok(_) => Ok(build()),
        Err(f) => unwrap_first_error(f),
    })
}

impl<T: 'static> sealed::Sealed for Vec<Option<Deferred<T>>> {}

impl<T: 'static> GatherOptional for Vec<Option<Deferred<T>>> {
    type Output = Vec<Option<T>>;

    fn gather(self) -> Deferred<Vec<Option<T>>> {
        let (units, slots): (Vec<_>, Vec<_>) = self.into_iter().map(into_slot).unzip();
        gather_slots(units, move || slots.iter().map(|s| s.borrow_mut().take()).collect())
    }
}

macro_rules! gather_tuple {
    ($($t:ident $m:ident $s:ident),+) => {
        impl<$($t: 'static),+> sealed::Sealed for ($(Option<Deferred<$t>>,)+) {}

        impl<$($t: 'static),+> GatherOptional for ($(Option<Deferred<$t>>,)+) {
            type Output = ($(Option<$t>,)+);

            fn gather(self) -> Deferred<Self::Output> {
                let ($($m,)+) = self;
                $(let ($m, $s) = into_slot($m);)+
                gather_slots(vec![$($m),+], move || ($($s.borrow_mut().take(),)+))
            }
        }
    };
}

gather_tuple!(A a sa);
gather_tuple!(A a sa, B b sb);
gather_tuple!(A a sa, B b sb, C c sc);
gather_tuple!(A a sa, B b sb, C c sc, D d sd);
gather_tuple!(A a sa, B b sb, C c sc, D d sd, E e se);
gather_tuple!(A a sa, B b sb, C c sc, D d sd, E e se, F f sf);
