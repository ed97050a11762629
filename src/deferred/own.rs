//! Ownership: who keeps a Deferred alive, and who can still cancel it.
//!
//! Two kinds of reference point at a Deferred:
//!
//! - *Forward* references fire it: a source's link holding `then`'s output or a
//!   combinator's Deferred, a continuation link holding the Deferred that waits, a
//!   `chain_deferred` step, an observer list, a task's target Deferred. They are strong,
//!   so a chain whose handles were all dropped still runs when its source fires (fire and
//!   forget), and they are not counted: [`DeferredRef`].
//! - *Cancel handles* can cancel it: every public [`Deferred`] handle, a waiting
//!   Deferred's hold on the one it waits on (`Slot::Waiting`), and a Deferred's hold on its
//!   sources ([`Source::Held`]: `then`/`map`, the combinators, `timeout_deferred`, a task
//!   suspended on it). Each Deferred counts them (`Inner::handles`).
//!
//! A cancel handle held by a Deferred points against the forward references, so the two
//! make cycles (`then`'s output holds its source, whose link holds the output). The rule
//! that frees them: when a pending (or waiting) Deferred's count drops to zero, nobody
//! can cancel it any more, so it gives up the cancel handles it holds
//! ([`Inner::unclaimed`]): its held sources and the Deferred it waits on become weak
//! references. That may drop another count to zero, and so on down the graph; the drops
//! go through [`run::drop_bounded`], so the cascade runs in bounded stack. So a graph
//! that nobody outside holds has no strong cycle left and is freed, and one that someone
//! can still fire (a forward reference from outside) stays alive and runs when fired.
//!
//! A Deferred never takes back what it gave up: a handle made later (a timer's weak
//! upgrade) can still cancel it, and the cancel reaches whatever is still alive.

use std::mem;
use std::panic::Location;
use std::rc::{Rc, Weak};

use smallvec::SmallVec;

use super::{run, Collect, Deferred, Inner, Link, Next, Slot};
use crate::failure::{AlreadyCalledError, Failure};
use crate::free_list;

/// A Deferred of any type, as a Deferred built on it holds it.
pub(super) trait Erased {
    /// Takes one more cancel handle.
    fn retain(&self);
    /// Gives back one cancel handle (see [`Inner::release_handle`]).
    fn release_handle(&self, last: bool);
    /// How many cancel handles it has.
    fn handles(&self) -> u32;
    /// Cancels it, as part of the cancellation under way.
    fn cancel_source(self: Rc<Self>);
    /// The caller's reference to it, the last strong one, is going: keeps it for reuse
    /// if no weak one is left and the thread's free list has room (`self` is a clone of
    /// that reference).
    fn reuse(self: Rc<Self>);
}

impl<T: 'static> Erased for Inner<T> {
    fn retain(&self) {
        Inner::retain(self)
    }

    fn release_handle(&self, last: bool) {
        Inner::release_handle(self, last)
    }

    fn handles(&self) -> u32 {
        self.handles.get()
    }

    fn cancel_source(self: Rc<Self>) {
        Deferred::from_inner(self).cancel_at(Location::caller());
    }

    fn reuse(self: Rc<Self>) {
        self.reuse_if_unreached();
    }
}

/// A counted strong reference to a Deferred of any type: one of its cancel handles.
pub(super) struct Counted(Rc<dyn Erased>);

impl Drop for Counted {
    /// Gives back this cancel handle; the last reference of all keeps the Deferred for
    /// reuse if it may (see `free_list.rs`).
    fn drop(&mut self) {
        let last = Rc::strong_count(&self.0) == 1;
        self.0.release_handle(last);
        if last {
            Rc::clone(&self.0).reuse();
        }
    }
}

/// A counted strong reference to a Deferred of a known type, held by crate code (a
/// waiting slot): one of its cancel handles. It is the handle a callback returned, kept
/// as it is (the count does not move).
pub(super) struct Claim<T: 'static>(Deferred<T>);

impl<T: 'static> Claim<T> {
    /// Turns a handle into a claim (the count stays the same).
    #[inline]
    pub(super) fn from_handle(d: Deferred<T>) -> Claim<T> {
        Claim(d)
    }

    /// The Deferred claimed.
    pub(super) fn inner(&self) -> &Rc<Inner<T>> {
        &self.0.inner
    }
}

/// A source, as the Deferred built on it holds it until it fires.
pub(super) enum Source {
    /// A cancel handle: a cancel reaches it even if nobody else holds it.
    Held(Counted),
    /// Given up (the Deferred built on it has no cancel handle left).
    Released(Weak<dyn Erased>),
}

/// The sources of one Deferred; `then`'s single source is stored inline. A combinator's
/// list of thousands is made in a vector the thread kept, and its vector kept again once
/// it is let go of (see `free_list::give_buffer`), so that a gather that comes back does
/// not fault fresh memory in for it each time.
#[derive(Default)]
pub(super) struct Sources(SmallVec<[Source; 1]>);

impl Sources {
    /// Room for `n` more sources.
    fn reserve_exact(&mut self, n: usize) {
        if self.0.is_empty() && !self.0.spilled() {
            if let Some(kept) = free_list::take_buffer(n) {
                self.0 = SmallVec::from_vec(kept);
                return;
            }
        }
        self.0.reserve_exact(n);
    }
}

impl std::ops::Deref for Sources {
    type Target = SmallVec<[Source; 1]>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Sources {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Sources {
    /// Drops the sources, then keeps a large list's vector for the next one.
    fn drop(&mut self) {
        if self.0.spilled() {
            let mut list = mem::take(&mut self.0).into_vec();
            list.clear();
            free_list::give_buffer(list);
        }
    }
}

impl Source {
    /// The source, if it is alive.
    pub(super) fn upgrade(&self) -> Option<Rc<dyn Erased>> {
        match self {
            Source::Held(c) => Some(c.0.clone()),
            Source::Released(w) => w.upgrade(),
        }
    }

    /// True if this is the Deferred at `ptr`.
    fn is(&self, ptr: *const ()) -> bool {
        match self {
            Source::Held(c) => std::ptr::eq(Rc::as_ptr(&c.0) as *const (), ptr),
            Source::Released(w) => std::ptr::eq(w.as_ptr() as *const (), ptr),
        }
    }

    /// Turns a held source into a released one. Its cancel handle is given back at once
    /// if it is neither the source's last handle nor its last reference (nothing runs
    /// then but two counts going down, so the caller's borrow may be held); otherwise it
    /// is returned, for the caller to drop outside its borrow. So a combinator whose
    /// members are still held elsewhere lets go of them in place, with no second list.
    pub(super) fn release(&mut self) -> Option<Counted> {
        let Source::Held(c) = self else { return None };
        let quiet = Rc::strong_count(&c.0) > 1 && c.0.handles() > 1;
        let weak = Rc::downgrade(&c.0);
        match mem::replace(self, Source::Released(weak)) {
            Source::Held(c) if quiet => {
                drop(c);
                None
            }
            Source::Held(c) => Some(c),
            Source::Released(_) => unreachable!("matched above"),
        }
    }
}

impl<T: 'static> Inner<T> {
    /// Takes one more cancel handle.
    #[inline]
    pub(super) fn retain(&self) {
        self.handles.set(self.handles.get() + 1);
    }

    /// Gives back one cancel handle; `last` if the caller holds the last strong
    /// reference (the Deferred is about to be freed, which lets go of everything anyway).
    #[inline]
    pub(super) fn release_handle(&self, last: bool) {
        let n = self.handles.get();
        debug_assert!(n > 0, "cancel handle count underflow");
        self.handles.set(n - 1);
        if n == 1 && !last {
            self.unclaimed();
        }
    }

    /// The last cancel handle is gone: if the Deferred has no result yet, it gives up the
    /// cancel handles it holds (its sources, the Deferred it waits on).
    ///
    /// Not cold: every pending Deferred whose caller drops its handle comes here (each
    /// observer in a fan-out, say), and most hold nothing, which is checked first.
    #[inline(never)]
    fn unclaimed(&self) {
        let Ok(mut core) = self.core.try_borrow_mut() else {
            debug_assert!(false, "a Deferred lost its last cancel handle while its state was borrowed");
            return;
        };
        let holds_sources = core.cold.as_ref().is_some_and(|c| !c.sources.is_empty());
        let waited = match &core.slot {
            Slot::Waiting(d) => {
                let weak = Rc::downgrade(d.inner());
                Some(mem::replace(&mut core.slot, Slot::WaitingWeakly(weak)))
            }
            Slot::Pending | Slot::WaitingWeakly(_) if holds_sources => None,
            // Fired, or holding nothing to give up.
            _ => return,
        };
        let held: SmallVec<[Counted; 1]> = match core.cold.as_mut() {
            Some(c) => c.sources.iter_mut().filter_map(Source::release).collect(),
            None => SmallVec::new(),
        };
        drop(core);
        if waited.is_some() || !held.is_empty() {
            run::drop_bounded((waited, held));
        }
    }

    /// Holds `sources` until this Deferred fires: as cancel handles if this one has a
    /// cancel handle itself, weakly otherwise. A fired Deferred does not hold them.
    fn add_sources(&self, sources: impl ExactSizeIterator<Item = Rc<dyn Erased>>) {
        let mut core = self.core.borrow_mut();
        if !matches!(core.slot, Slot::Pending) {
            return;
        }
        let held = self.handles.get() > 0;
        let list = &mut core.cold_mut().sources;
        list.reserve_exact(sources.len());
        list.extend(sources.map(|source| {
            if held {
                source.retain();
                Source::Held(Counted(source))
            } else {
                Source::Released(Rc::downgrade(&source))
            }
        }));
    }

    /// Stops holding the source at `ptr`, if this Deferred holds it.
    fn remove_source(&self, ptr: *const ()) {
        let removed = {
            let mut core = self.core.borrow_mut();
            let Some(cold) = core.cold.as_mut() else { return };
            match cold.sources.iter().position(|s| s.is(ptr)) {
                Some(i) => cold.sources.remove(i),
                None => return,
            }
        };
        // Outside the borrow: this may give back the source's last cancel handle.
        drop(removed);
    }
}

impl<T: 'static> Clone for Deferred<T> {
    /// Another handle to the same Deferred.
    #[inline]
    fn clone(&self) -> Self {
        self.inner.retain();
        Deferred { inner: self.inner.clone() }
    }
}

impl<T: 'static> Drop for Deferred<T> {
    /// Gives back this handle's claim; the last handle to a pending Deferred that
    /// something else still holds lets go of what it holds only to cancel it (see the
    /// module docs). The last reference of all keeps the Deferred for reuse if it may
    /// (see `free_list.rs`).
    #[inline]
    fn drop(&mut self) {
        let last = Rc::strong_count(&self.inner) == 1;
        self.inner.release_handle(last);
        if last {
            self.inner.reuse_if_unreached();
        }
    }
}

impl<T: 'static> Deferred<T> {
    /// A forward reference to this Deferred: it keeps it alive and can fire it, but is
    /// no cancel handle.
    pub(crate) fn to_ref(&self) -> DeferredRef<T> {
        DeferredRef(self.inner.clone())
    }

    /// A weak handle to this Deferred.
    pub(crate) fn downgrade(&self) -> WeakDeferred<T> {
        WeakDeferred(Rc::downgrade(&self.inner))
    }

    /// Holds `source` until this Deferred fires, so that cancelling this one reaches it
    /// even if nobody else holds it (see the module docs). A Deferred with no canceller
    /// of its own cancels its sources when cancelled; one with a canceller leaves that to
    /// the canceller.
    pub(crate) fn add_source<S: 'static>(&self, source: Deferred<S>) {
        self.inner.add_sources(std::iter::once(source.inner.clone() as Rc<dyn Erased>));
    }

    /// Gives each of `members` a link handing its outcome to `step` (with its index) and
    /// holds them as this Deferred's sources, in order (a combinator's join). This
    /// Deferred is one the combinator just made: pending, with the maker's handle, so
    /// its holds are cancel handles. One pass over the members does both: each member's
    /// block is touched once, and each handle handed over becomes the hold (its count
    /// goes up and back down, never to zero, so nothing runs inside the borrow). A member
    /// that could run the link at once (it has a result) is kicked after the pass, in
    /// order, as its step may fire this Deferred.
    pub(crate) fn join<S: 'static>(&self, members: Vec<Deferred<S>>, step: Rc<dyn Collect<S>>) {
        let mut core = self.inner.core.borrow_mut();
        debug_assert!(
            matches!(core.slot, Slot::Pending) && self.inner.handles.get() > 0,
            "a combinator joins its members to the Deferred it just made"
        );
        let mut ready: SmallVec<[Deferred<S>; 1]> = SmallVec::new();
        let list = &mut core.cold_mut().sources;
        list.reserve_exact(members.len());
        let hold = |(index, handle): (usize, Deferred<S>)| {
            Source::Held(Counted(join_one(handle, index, &step, &mut ready)))
        };
        list.extend(members.into_iter().enumerate().map(hold));
        drop(core);
        for member in ready {
            member.inner.kick();
        }
    }

    /// The sources this Deferred holds, in the order they were added, each one if it is
    /// still alive (for a canceller that cancels them in order). Empty once it fired.
    pub(crate) fn sources(&self) -> Vec<Option<AnyDeferred>> {
        let core = self.inner.core.borrow();
        match core.cold.as_ref() {
            Some(c) => c.sources.iter().map(|s| s.upgrade().map(AnyDeferred)).collect(),
            None => Vec::new(),
        }
    }

    /// This Deferred, of any type, for crate code that holds it as a source without
    /// knowing its type (a task's target holding what the task awaits).
    pub(crate) fn erased(&self) -> AnyDeferred {
        AnyDeferred(self.inner.clone())
    }
}

/// One member of [`Deferred::join`]: gives it its link and turns its handle into the
/// hold, returned. Not inlined on purpose: the hold comes back as a fat pointer in two
/// registers, and the `Source` made of it is written straight into the list; inlined,
/// the loop built each `Source` on the stack and copied it out in halves, a
/// store-forwarding stall per member (`perf annotate`: 7 ns per member at 100k).
#[inline(never)]
fn join_one<S: 'static>(
    handle: Deferred<S>,
    index: usize,
    step: &Rc<dyn Collect<S>>,
    ready: &mut SmallVec<[Deferred<S>; 1]>,
) -> Rc<dyn Erased> {
    if handle.inner.push_quietly(|| Link::Collect(step.clone(), index)) {
        ready.push(handle.clone());
    }
    let source = handle.inner.clone();
    source.retain();
    source
}

/// A forward reference to a Deferred (see the module docs): for crate code that fires a
/// Deferred later (a source's link, a combinator's member links, an observer list, a
/// task), keeping it alive without counting as a handle that could cancel it.
pub(crate) struct DeferredRef<T: 'static>(Rc<Inner<T>>);

impl<T: 'static> DeferredRef<T> {
    /// Fires it with whatever a callback could return; hands `next` back if it was
    /// already fired.
    #[track_caller]
    pub(crate) fn fire(&self, next: Next<T>) -> Result<(), Next<T>> {
        self.0.fire_at(next, Location::caller())
    }

    /// [`fire`](Self::fire) from `at`.
    pub(crate) fn fire_at(&self, next: Next<T>, at: &'static Location<'static>) -> Result<(), Next<T>> {
        self.0.fire_at(next, at)
    }

    /// [`Deferred::callback`] through a forward reference.
    #[track_caller]
    pub(crate) fn callback(&self, value: T) -> Result<(), AlreadyCalledError<T>> {
        self.0.callback_at(value, Location::caller())
    }

    /// Fires it with `value` only if it has no result yet; hands `value` back otherwise,
    /// even on the first fire after a cancel (see `Inner::offer_at`).
    #[track_caller]
    pub(crate) fn offer(&self, value: T) -> Result<(), T> {
        self.0.offer_at(value, Location::caller())
    }

    /// [`Deferred::errback`] through a forward reference.
    #[track_caller]
    pub(crate) fn errback(&self, failure: impl Into<Failure>) -> Result<(), AlreadyCalledError<Failure>> {
        self.0.errback_at(failure.into(), Location::caller())
    }

    /// True once it was fired.
    pub(crate) fn is_called(&self) -> bool {
        self.0.core.borrow().is_called()
    }

    /// Undoes one pause (see [`Deferred::unpause`]); false if it was not paused.
    pub(crate) fn unpause(&self) -> bool {
        self.0.unpause()
    }

    /// [`Deferred::add_source`] through a forward reference: held as a cancel handle
    /// only while this Deferred has cancel handles of its own.
    pub(crate) fn add_source(&self, source: &AnyDeferred) {
        self.0.add_sources(std::iter::once(source.0.clone()))
    }

    /// Stops holding `source`, if this Deferred holds it.
    pub(crate) fn remove_source(&self, source: &WeakAnyDeferred) {
        self.0.remove_source(source.0.as_ptr() as *const ())
    }
}

/// A Deferred of any type, not counted as a cancel handle (see [`Deferred::erased`]).
pub(crate) struct AnyDeferred(Rc<dyn Erased>);

impl AnyDeferred {
    /// Cancels it (as [`Deferred::cancel`] does).
    pub(crate) fn cancel(self) {
        self.0.cancel_source();
    }

    /// A weak reference to it, which tells it apart among a Deferred's sources.
    pub(crate) fn downgrade(&self) -> WeakAnyDeferred {
        WeakAnyDeferred(Rc::downgrade(&self.0))
    }
}

/// A weak [`AnyDeferred`].
pub(crate) struct WeakAnyDeferred(Weak<dyn Erased>);

impl<T: 'static> Drop for DeferredRef<T> {
    /// The last reference of all keeps the Deferred for reuse if it may (see `free_list.rs`).
    #[inline]
    fn drop(&mut self) {
        if Rc::strong_count(&self.0) == 1 {
            self.0.reuse_if_unreached();
        }
    }
}

impl<T: 'static> Clone for DeferredRef<T> {
    fn clone(&self) -> Self {
        DeferredRef(self.0.clone())
    }
}

/// A weak handle to a Deferred, for crate-internal back-references (a canceller reaching
/// the members of a list without keeping them alive).
pub(crate) struct WeakDeferred<T: 'static>(Weak<Inner<T>>);

impl<T: 'static> WeakDeferred<T> {
    /// The Deferred, if a strong reference to it still exists.
    pub(crate) fn upgrade(&self) -> Option<Deferred<T>> {
        self.0.upgrade().map(Deferred::from_inner)
    }
}
