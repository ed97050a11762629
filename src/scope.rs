//! Cancel scopes (Trio's `CancelScope`) for Deferred chains and `ensure_deferred` tasks.
//!
//! A Deferred's cancel travels down *one* chain, from whoever holds its end to whoever
//! made it. A cancel scope cancels a *set* of pieces of work at once, by a deadline or
//! by hand, and then tells whether that cancel is what ended them: Trio's answer to
//! "was this cancel mine or my child's?". Work joins a scope three ways:
//!
//! - [`CancelScope::run`]`(future)`: runs the future as an [`ensure_deferred`] task in
//!   the scope, and gives a `Deferred<Option<T>>`: `Some(value)`, or `None` if this
//!   scope's cancel (or deadline) ended the task (Trio's `with move_on_after(..):`).
//! - [`CancelScope::wrap`]`(d)`: the same for a plain Deferred.
//! - [`CancelScope::add`]`(&d)`: registers `d` in place: the scope cancels it, and its
//!   chain is left as it is (a cancel stays a `CancelledError` on it).
//!
//! # The rules (Trio's)
//!
//! - [`cancel`](CancelScope::cancel) cancels every piece of work registered in the scope
//!   and in its nested scopes, except those behind a [shield](CancelScope::set_shield);
//!   work registered later in a cancelled scope is cancelled at once. A cancel is never
//!   undone.
//! - A [deadline](CancelScope::set_deadline) is a cancel at a time on a [`ReactorTime`]
//!   (the reactor, or the test [`Clock`](crate::Clock)); it may be moved, dropped or set
//!   in the past (which cancels at once) while the work runs.
//! - A nested scope ([`child`](CancelScope::child), or [`CancelScope::new`] inside a
//!   scope's `run`) is cancelled whenever its parent is, unless shielded: its effective
//!   deadline is never later than its parent's.
//! - A shielded scope's work is not cancelled by the scopes around it, neither through
//!   the scope tree nor down a Deferred chain (a cancel reaching the Deferred that
//!   `run` or `wrap` returned is held back until the work ends). Turning the shield off
//!   inside a cancelled parent cancels the work then.
//! - Within a task run in a cancelled scope, cancellation is level-triggered, as in
//!   Trio: every time the task suspends while the scope is cancelled, what it awaits is
//!   cancelled, so a task that handles one `CancelledError` gets another at its next
//!   `await`, until it ends.
//! - When work ends with the `CancelledError` of a scope's cancel, the *outermost*
//!   cancelled scope it can see catches it ([`cancelled_caught`](CancelScope::cancelled_caught)):
//!   an inner scope cancelled together with its parent passes the failure on; a
//!   shielded scope sees no further than itself.
//!
//! # Ownership
//!
//! A scope holds its work weakly, so it keeps nothing alive: work that settles leaves the
//! scope at once, and work nobody else holds is freed as usual. The work holds its scope
//! (strongly, through the link that unregisters it), so a scope with pending work, and
//! its deadline, last until the work ends even if every handle to the scope was dropped.
//! A nested scope holds its parent; a parent holds its children weakly; the deadline's
//! timer holds the scope weakly and is cancelled when the scope is freed.
//!
//! [`ensure_deferred`]: crate::future::ensure_deferred

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::cancellation::TimeoutError;
use crate::deferred::{current_cancellation, new_cancellation, DeferredRef, Next, WeakDeferred};
use crate::future::ensure_deferred;
use crate::{CancelId, CancelledError, Deferred, DelayedCall, Failure, ReactorTime};

/// A set of work cancelled together, by hand or by a deadline (Trio's `CancelScope`).
///
/// Cloning gives another handle to the same scope. Dropping the last handle neither
/// cancels the work nor lets it go: pending work keeps its scope (and its deadline)
/// alive until it ends, and an abandoned scope with no pending work is freed with its
/// timer. See the [module docs](crate::scope) for the rules.
///
/// # Examples
///
/// A deadline on a request, the way `with trio.move_on_after(5):` reads:
///
/// ```
/// use std::time::Duration;
/// use weft::{CancelScope, Clock, Deferred};
///
/// let clock = Clock::new();
/// let reply: Deferred<String> = Deferred::new(); // a backend that never answers
/// let scope = CancelScope::move_on_after(Duration::from_secs(5), &clock);
/// let r = reply.clone();
/// let outcome = scope.run(async move { r.await });
///
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(outcome.take_result().unwrap().unwrap(), None); // moved on
/// assert!(scope.cancelled_caught()); // because of this scope's deadline
/// ```
///
/// Nesting and shields: an outer cancel reaches everything inside, except behind a
/// shield:
///
/// ```
/// use weft::{CancelScope, CancelledError, Deferred};
///
/// let outer = CancelScope::new();
/// let (inner, shielded) = (outer.child(), outer.child());
/// shielded.set_shield(true);
/// let (a, b): (Deferred<u8>, Deferred<u8>) = (Deferred::new(), Deferred::new());
/// inner.add(&a);
/// shielded.add(&b);
/// outer.cancel();
/// assert!(a.take_result().unwrap().unwrap_err().check::<CancelledError>());
/// assert!(!b.is_called()); // protected
/// ```
///
/// # Cancellation
///
/// The scope's cancel is one cancellation: every `CancelledError` it produces carries
/// the same [`CancelId`], and names the line that called [`cancel`](Self::cancel) (or
/// set the deadline). A cancel of the Deferred returned by [`run`](Self::run) or
/// [`wrap`](Self::wrap) that did not come from a scope is passed to the work (unless
/// the scope is shielded), and its `CancelledError` is not caught: it comes out as a
/// failure, as it would without the scope.
#[derive(Clone)]
pub struct CancelScope {
    inner: Rc<Scope>,
}

/// How to cancel one piece of registered work.
type CancelWork = Box<dyn Fn(&CancelledError)>;

/// One piece of registered work.
struct Entry {
    cancel: CancelWork,
    /// Its cancel is on the stack.
    running: Cell<bool>,
    /// A cancel was asked for while one was running: run it again when that returns.
    again: Cell<bool>,
}

impl Entry {
    /// Cancels the work with `err`. A cancel asked for while one is running (a task
    /// that the cancel resumed suspends again in its cancelled scope) runs when that one
    /// returns, in a loop: a Deferred whose canceller is running must not be cancelled
    /// again from inside it.
    fn cancel(&self, err: &CancelledError) {
        if self.running.replace(true) {
            self.again.set(true);
            return;
        }
        let _done = Reset(&self.running);
        loop {
            (self.cancel)(err);
            if !self.again.replace(false) {
                break;
            }
        }
    }
}

/// Clears a flag on every exit.
struct Reset<'a>(&'a Cell<bool>);

impl Drop for Reset<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

struct Scope {
    /// The scope this one is nested in.
    parent: Option<Rc<Scope>>,
    /// The scopes nested in this one (pruned of dead ones as it grows).
    children: RefCell<Vec<Weak<Scope>>>,
    shield: Cell<bool>,
    deadline: Cell<Option<Duration>>,
    timer: RefCell<Option<DelayedCall>>,
    /// This scope's own cancellation, once `cancel()` was called or the deadline passed.
    cancelled: RefCell<Option<CancelledError>>,
    /// Cancellations of scopes nested in this one that this one is to catch (it was
    /// the outermost cancelled scope when their work ended in an inner scope).
    adopted: RefCell<Vec<CancelId>>,
    caught: Cell<bool>,
    /// The work registered and not yet settled, by a never-reused key.
    work: RefCell<BTreeMap<u64, Rc<Entry>>>,
    next_key: Cell<u64>,
}

thread_local! {
    /// The scope whose `run` task is being polled now.
    static CURRENT: RefCell<Option<Rc<Scope>>> = const { RefCell::new(None) };
}

impl CancelScope {
    /// A scope with no deadline, not shielded (Trio's `CancelScope()`). Made inside a
    /// task that a scope [`run`](Self::run)s, it is nested in that scope, as a Trio
    /// scope opened inside another is; elsewhere it stands alone.
    pub fn new() -> CancelScope {
        CancelScope::nested_in(current_scope())
    }

    /// A scope nested in this one: cancelled whenever this one is, unless shielded.
    pub fn child(&self) -> CancelScope {
        CancelScope::nested_in(Some(self.inner.clone()))
    }

    /// A new scope (nested as [`new`](Self::new) is) whose deadline is `delay` from now
    /// on `time` (Trio's `move_on_after`).
    #[track_caller]
    pub fn move_on_after(delay: Duration, time: &dyn ReactorTime) -> CancelScope {
        let scope = CancelScope::new();
        scope.set_timeout(delay, time);
        scope
    }

    /// A new scope (nested as [`new`](Self::new) is) with the deadline `deadline` on
    /// `time`, a time as [`ReactorTime::now`] gives it (Trio's `move_on_at`).
    #[track_caller]
    pub fn move_on_at(deadline: Duration, time: &dyn ReactorTime) -> CancelScope {
        let scope = CancelScope::new();
        scope.set_deadline(Some(deadline), time);
        scope
    }

    /// The scope a task run by [`run`](Self::run) is in, while that task is being
    /// polled; `None` elsewhere.
    pub fn current() -> Option<CancelScope> {
        current_scope().map(|inner| CancelScope { inner })
    }

    /// Cancels every piece of work in this scope and in the scopes nested in it (except
    /// behind a shield), now and whenever more is registered (Trio's `cancel()`). Does
    /// nothing if the scope was already cancelled.
    #[track_caller]
    pub fn cancel(&self) {
        self.inner.cancel_at(Location::caller());
    }

    /// True once [`cancel`](Self::cancel) was called or the deadline passed (Trio's
    /// `cancel_called`); a cancel of an outer scope does not set it.
    pub fn cancel_called(&self) -> bool {
        self.inner.cancelled.borrow().is_some()
    }

    /// True if work of this scope ended with a cancel that this scope caught: its own,
    /// or an inner scope's while this one was cancelled too (Trio's `cancelled_caught`).
    /// The Deferreds [`run`](Self::run) and [`wrap`](Self::wrap) returned then hold
    /// `None`. A cancel caught by an outer scope does not set it.
    pub fn cancelled_caught(&self) -> bool {
        self.inner.caught.get()
    }

    /// True if the scope is cancelled, by its own cancel or by an outer scope's that
    /// reaches it.
    pub fn is_cancelled(&self) -> bool {
        self.inner.effective_cancel().is_some()
    }

    /// True if the scope is shielded.
    pub fn shield(&self) -> bool {
        self.inner.shield.get()
    }

    /// Shields the scope's work from the cancels of the scopes around it, or removes the
    /// shield (Trio's `shield = ...`). Removing it while an outer scope is cancelled
    /// cancels the work at once.
    pub fn set_shield(&self, shield: bool) {
        let was = self.inner.effective_cancel().is_some();
        self.inner.shield.set(shield);
        if !was {
            if let Some(err) = self.inner.effective_cancel() {
                self.inner.propagate(&err);
            }
        }
    }

    /// The scope's own deadline, a time as [`ReactorTime::now`] gives it.
    pub fn deadline(&self) -> Option<Duration> {
        self.inner.deadline.get()
    }

    /// The earliest deadline among this scope and the scopes around it that can cancel
    /// it (up to the first shielded one): when it will be cancelled at the latest.
    pub fn effective_deadline(&self) -> Option<Duration> {
        let mut earliest = None;
        let mut scope = Some(&self.inner);
        while let Some(s) = scope {
            earliest = match (earliest, s.deadline.get()) {
                (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
                (a, b) => a.or(b),
            };
            scope = if s.shield.get() { None } else { s.parent.as_ref() };
        }
        earliest
    }

    /// Sets (or with `None` removes) the scope's deadline on `time`, a time as
    /// [`ReactorTime::now`] gives it (Trio's `deadline = ...`). A deadline already
    /// passed cancels the scope at once; a scope already cancelled stays cancelled. The
    /// deadline's `CancelledError` names the line that called this.
    #[track_caller]
    pub fn set_deadline(&self, deadline: Option<Duration>, time: &dyn ReactorTime) {
        let location = Location::caller();
        let old = self.inner.timer.borrow_mut().take();
        if let Some(old) = old {
            let _ = old.cancel();
        }
        self.inner.deadline.set(deadline);
        let Some(at) = deadline else { return };
        if self.cancel_called() {
            return;
        }
        let now = time.now();
        if at <= now {
            self.inner.cancel_at(location);
            return;
        }
        let scope = Rc::downgrade(&self.inner);
        let call = time.call_later(
            at - now,
            Box::new(move || {
                if let Some(scope) = scope.upgrade() {
                    scope.cancel_at(location);
                }
            }),
        );
        *self.inner.timer.borrow_mut() = Some(call);
    }

    /// Sets the deadline `delay` from now on `time` (Trio's `relative_deadline`, counted
    /// from now).
    #[track_caller]
    pub fn set_timeout(&self, delay: Duration, time: &dyn ReactorTime) {
        self.set_deadline(Some(time.now().saturating_add(delay)), time);
    }

    /// Registers `d` in the scope: the scope's cancel cancels it (at once if the scope
    /// is cancelled already). `d`'s chain is unchanged: a cancel reaches it as a
    /// `CancelledError`. The scope lets go of `d` when its result reaches this point
    /// of its chain, and records whether it was this scope's cancel that ended it
    /// ([`cancelled_caught`](Self::cancelled_caught)).
    ///
    /// ```
    /// use weft::{CancelScope, CancelledError, Deferred};
    ///
    /// let scope = CancelScope::new();
    /// scope.cancel(); // cancelled before the work joins
    /// let d: Deferred<u8> = Deferred::new();
    /// scope.add(&d);
    /// assert!(d.take_result().unwrap().unwrap_err().check::<CancelledError>());
    /// assert!(scope.cancelled_caught());
    /// ```
    pub fn add<T: 'static>(&self, d: &Deferred<T>) -> &Self {
        let key = self.inner.register(cancel_weakly(d));
        let scope = self.inner.clone();
        d.add_both(move |r: Result<T, Failure>| -> Result<T, Failure> {
            scope.settle(key, r.as_ref().err());
            r
        });
        self.inner.cancel_if_cancelled(key);
        self
    }

    /// Registers `d` in the scope and returns a Deferred for its outcome: `Some(value)`,
    /// `None` if this scope's cancel ended it, or its failure. `d`'s result is moved to
    /// the new Deferred. Cancelling the new Deferred cancels `d`, unless the scope is
    /// shielded: then the cancel waits, and the new Deferred gets `d`'s outcome.
    ///
    /// ```
    /// use weft::{CancelScope, Deferred};
    ///
    /// let scope = CancelScope::new();
    /// let slow: Deferred<u8> = Deferred::new();
    /// let out = scope.wrap(slow);
    /// scope.cancel();
    /// assert_eq!(out.take_result().unwrap().unwrap(), None);
    /// ```
    #[must_use = "the wrapped Deferred is the one to wait on"]
    pub fn wrap<T: 'static>(&self, d: Deferred<T>) -> Deferred<Option<T>> {
        let key = self.inner.register(cancel_weakly(&d));
        let out = scoped_output(&self.inner, key, &d);
        self.inner.cancel_if_cancelled(key);
        out
    }

    /// Runs `future` as an [`ensure_deferred`] task in
    /// the scope (Trio's `with scope: ...` around an `await`): `Some(value)` when it
    /// finishes, `None` if this scope's cancel ended it, or its failure. While the task
    /// is polled, [`CancelScope::new`] makes scopes nested in this one.
    ///
    /// A cancel of the scope reaches what the task awaits (its `CancelledError` comes out
    /// of the `await`); if the task handles it and awaits again while the scope is still
    /// cancelled, that is cancelled too, until the task ends.
    ///
    /// ```
    /// use weft::{CancelScope, Deferred, Failure};
    ///
    /// let scope = CancelScope::new();
    /// let input: Deferred<u32> = Deferred::new();
    /// let i = input.clone();
    /// let out = scope.run(async move { Ok::<_, Failure>(i.await? + 1) });
    /// input.callback(41).unwrap();
    /// assert_eq!(out.take_result().unwrap().unwrap(), Some(42));
    /// assert!(!scope.cancelled_caught());
    /// ```
    #[must_use = "the task's Deferred is the one to wait on"]
    pub fn run<T, F>(&self, future: F) -> Deferred<Option<T>>
    where
        T: 'static,
        F: Future<Output = Result<T, Failure>> + 'static,
    {
        let key = Rc::new(Cell::new(None));
        let task = ensure_deferred(InScope {
            scope: self.inner.clone(),
            key: key.clone(),
            future: Box::pin(future),
        });
        let k = self.inner.register(cancel_weakly(&task));
        key.set(Some(k));
        let out = scoped_output(&self.inner, k, &task);
        self.inner.cancel_if_cancelled(k);
        out
    }

    /// How many pieces of work are registered and not yet settled.
    pub fn pending(&self) -> usize {
        self.inner.work.borrow().len()
    }

    fn nested_in(parent: Option<Rc<Scope>>) -> CancelScope {
        let inner = Rc::new(Scope {
            parent,
            children: RefCell::new(Vec::new()),
            shield: Cell::new(false),
            deadline: Cell::new(None),
            timer: RefCell::new(None),
            cancelled: RefCell::new(None),
            adopted: RefCell::new(Vec::new()),
            caught: Cell::new(false),
            work: RefCell::new(BTreeMap::new()),
            next_key: Cell::new(0),
        });
        if let Some(parent) = &inner.parent {
            let mut children = parent.children.borrow_mut();
            if children.len() >= 16 && children.len().is_power_of_two() {
                children.retain(|c| c.strong_count() > 0);
            }
            children.push(Rc::downgrade(&inner));
        }
        CancelScope { inner }
    }
}

/// [`CancelScope::run`] with a deadline `delay` from now, failing with
/// [`TimeoutError`] if the deadline ends the task (Trio's `fail_after`).
///
/// ```
/// use std::time::Duration;
/// use weft::{scope::fail_after, Clock, Deferred, TimeoutError};
///
/// let clock = Clock::new();
/// let never: Deferred<u8> = Deferred::new();
/// let out = fail_after(Duration::from_secs(1), &clock, async move { never.await });
/// clock.advance(Duration::from_secs(1));
/// assert!(out.take_result().unwrap().unwrap_err().check::<TimeoutError>());
/// ```
#[track_caller]
#[must_use = "the task's Deferred is the one to wait on"]
pub fn fail_after<T, F>(delay: Duration, time: &dyn ReactorTime, future: F) -> Deferred<T>
where
    T: 'static,
    F: Future<Output = Result<T, Failure>> + 'static,
{
    let location = Location::caller();
    let scope = CancelScope::move_on_after(delay, time);
    scope.run(future).map(move |r: Option<T>| match r {
        Some(value) => Ok(value),
        None => Err(Failure::from_boxed_at(Box::new(TimeoutError { timeout: delay }), location)),
    })
}

impl Default for CancelScope {
    fn default() -> Self {
        CancelScope::new()
    }
}

impl fmt::Debug for CancelScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelScope")
            .field("cancel_called", &self.cancel_called())
            .field("cancelled_caught", &self.cancelled_caught())
            .field("shield", &self.shield())
            .field("deadline", &self.deadline())
            .field("pending", &self.pending())
            .field("nested", &self.inner.parent.is_some())
            .finish()
    }
}

impl Scope {
    /// This scope's cancellation if it has one, else the nearest outer one that reaches
    /// it (none past a shield).
    fn effective_cancel(&self) -> Option<CancelledError> {
        let mut scope = Some(self);
        while let Some(s) = scope {
            if let Some(err) = s.cancelled.borrow().as_ref() {
                return Some(err.clone());
            }
            scope = if s.shield.get() { None } else { s.parent.as_deref() };
        }
        None
    }

    fn cancel_at(self: &Rc<Self>, location: &'static Location<'static>) {
        if self.cancelled.borrow().is_some() {
            return;
        }
        let err = new_cancellation(location);
        *self.cancelled.borrow_mut() = Some(err.clone());
        let timer = self.timer.borrow_mut().take();
        if let Some(timer) = timer {
            let _ = timer.cancel();
        }
        self.propagate(&err);
    }

    /// Cancels the work of this scope and of every scope nested in it that is not
    /// shielded, with `err`. A loop over an explicit stack, so any depth of nesting runs
    /// in constant stack; no borrow is held while a cancel runs.
    fn propagate(self: &Rc<Self>, err: &CancelledError) {
        let mut stack = vec![self.clone()];
        while let Some(scope) = stack.pop() {
            let work: Vec<Rc<Entry>> = scope.work.borrow().values().cloned().collect();
            for entry in work {
                entry.cancel(err);
            }
            let children = scope.children.borrow().iter().filter_map(Weak::upgrade).collect::<Vec<_>>();
            stack.extend(children.into_iter().filter(|c| !c.shield.get()));
        }
    }

    fn register(&self, cancel: CancelWork) -> u64 {
        let key = self.next_key.get();
        self.next_key.set(key + 1);
        let entry = Entry { cancel, running: Cell::new(false), again: Cell::new(false) };
        self.work.borrow_mut().insert(key, Rc::new(entry));
        key
    }

    /// Cancels the work `key` if the scope is cancelled (and the work still pending).
    fn cancel_if_cancelled(&self, key: u64) {
        if let Some(err) = self.effective_cancel() {
            self.cancel_work(key, &err);
        }
    }

    /// Cancels the work `key` with `err`, if it is still pending.
    fn cancel_work(&self, key: u64, err: &CancelledError) {
        let entry = self.work.borrow().get(&key).cloned();
        if let Some(entry) = entry {
            entry.cancel(err);
        }
    }

    /// The work `key` settled, failing with `failure` if it failed: unregisters it, and
    /// returns true if this scope catches that failure (see [`Scope::catches`]).
    fn settle(self: &Rc<Self>, key: u64, failure: Option<&Failure>) -> bool {
        let entry = self.work.borrow_mut().remove(&key);
        drop(entry);
        match failure.and_then(|f| f.downcast_ref::<CancelledError>()) {
            Some(c) => self.catches(c.id()),
            None => false,
        }
    }

    /// Trio's rule: a cancel that ends work in this scope is caught by the outermost
    /// cancelled scope the work can see (going out from this scope while the next one out
    /// is cancelled and this one is not shielded), if the cancel is one of theirs. True
    /// if that is this scope; if it is an outer one, that one adopts the cancel, to catch
    /// it when the failure reaches its own work.
    fn catches(&self, id: CancelId) -> bool {
        // The scopes the work can see, out to the first shielded one (in one walk, and
        // whether each is cancelled, from the outermost in, so the test is linear in the
        // depth of nesting).
        let mut chain = Vec::new();
        let mut scope = Some(self);
        while let Some(s) = scope {
            chain.push(s);
            scope = if s.shield.get() { None } else { s.parent.as_deref() };
        }
        let mut cancelled = vec![false; chain.len()];
        let mut outer = false;
        for (i, s) in chain.iter().enumerate().rev() {
            outer = s.cancelled.borrow().is_some() || (outer && !s.shield.get());
            cancelled[i] = outer;
        }
        if !cancelled[0] {
            return false;
        }
        let mut catcher = 0;
        while catcher + 1 < chain.len() && cancelled[catcher + 1] {
            catcher += 1;
        }
        if !chain[..=catcher].iter().any(|s| s.owns(id)) {
            return false;
        }
        if catcher == 0 {
            self.caught.set(true);
            true
        } else {
            chain[catcher].adopted.borrow_mut().push(id);
            false
        }
    }

    fn owns(&self, id: CancelId) -> bool {
        self.cancelled.borrow().as_ref().is_some_and(|c| c.id() == id) || self.adopted.borrow().contains(&id)
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.get_mut().take() {
            let _ = timer.cancel();
        }
        // A long chain of nested scopes is let go of in a loop, not by recursion.
        let mut parent = self.parent.take();
        while let Some(p) = parent {
            parent = match Rc::try_unwrap(p) {
                Ok(mut scope) => scope.parent.take(),
                Err(_) => None,
            };
        }
    }
}

/// How the scope cancels `d`: through a weak handle, so that it keeps nothing alive.
fn cancel_weakly<T: 'static>(d: &Deferred<T>) -> CancelWork {
    let weak = d.downgrade();
    Box::new(move |err: &CancelledError| {
        if let Some(d) = weak.upgrade() {
            d.cancel_as(err);
        }
    })
}

/// The slot of the Deferred that `wrap`/`run` deliver to (a forward reference); a
/// cancel held back by a shield moves it to a fresh Deferred.
type Target<T> = RefCell<Option<DeferredRef<Option<T>>>>;

/// The Deferred that `wrap`/`run` return for the work `work` (registered as `key`):
/// it gets the work's outcome, `None` for a failure this scope catches.
fn scoped_output<T: 'static>(scope: &Rc<Scope>, key: u64, work: &Deferred<T>) -> Deferred<Option<T>> {
    let target: Rc<Target<T>> = Rc::new(RefCell::new(None));
    let weak_work = Rc::new(work.downgrade());
    let out = guarded(Rc::downgrade(scope), key, weak_work, Rc::downgrade(&target));
    // The output holds the work while someone can cancel it, as `then` holds its source.
    out.add_source(work.clone());
    *target.borrow_mut() = Some(out.to_ref());
    let scope = scope.clone();
    work.add_both(move |r: Result<T, Failure>| -> Next<T> {
        let caught = scope.settle(key, r.as_ref().err());
        let r = match r {
            Ok(value) => Ok(Some(value)),
            Err(_) if caught => Ok(None),
            Err(f) => Err(f),
        };
        let out = target.borrow_mut().take();
        if let Some(out) = out {
            let _ = out.fire(Next::Ready(r));
        }
        Next::Consumed
    });
    out
}

/// A Deferred whose cancel cancels the work, or, while the scope is shielded, is held
/// back: the Deferred then waits for a fresh one of the same kind, which the work's
/// outcome fires.
fn guarded<T: 'static>(
    scope: Weak<Scope>,
    key: u64,
    work: Rc<WeakDeferred<T>>,
    target: Weak<Target<T>>,
) -> Deferred<Option<T>> {
    Deferred::with_canceller(move |me: &Deferred<Option<T>>| {
        let Some(s) = scope.upgrade() else { return };
        if !s.shield.get() {
            // Continues the cancellation under way, through the work's entry (see
            // `Entry::cancel`); the work has left the scope only once it settled.
            if let Some(err) = current_cancellation() {
                s.cancel_work(key, &err);
            }
            return;
        }
        let Some(target) = target.upgrade() else { return };
        let next = guarded(scope.clone(), key, work.clone(), Rc::downgrade(&target));
        if let Some(work) = work.upgrade() {
            next.add_source(work);
        }
        *target.borrow_mut() = Some(next.to_ref());
        let _ = me.fire(Next::Wait(next));
    })
}

/// A `run` task's future: polled with its scope as the current one, and cancelled again
/// each time it suspends while its scope is cancelled (Trio's level-triggered
/// cancellation).
struct InScope<F> {
    scope: Rc<Scope>,
    /// The task's registration in the scope, set once `ensure_deferred` has returned.
    key: Rc<Cell<Option<u64>>>,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for InScope<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let polled = {
            let _current = Enter::new(this.scope.clone());
            this.future.as_mut().poll(cx)
        };
        if polled.is_pending() {
            if let Some(key) = this.key.get() {
                // Delivered to what the task awaits now, when this poll returns.
                this.scope.cancel_if_cancelled(key);
            }
        }
        polled
    }
}

/// Makes a scope the current one; restores the previous one on every exit.
struct Enter(Option<Rc<Scope>>);

impl Enter {
    fn new(scope: Rc<Scope>) -> Enter {
        Enter(CURRENT.try_with(|c| c.replace(Some(scope))).ok().flatten())
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        let previous = self.0.take();
        let _ = CURRENT.try_with(|c| c.replace(previous));
    }
}

fn current_scope() -> Option<Rc<Scope>> {
    CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
}
