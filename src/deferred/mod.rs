//! `Deferred<T>`: a result that arrives later, with Twisted's callback, errback and
//! canceller chains.
//!
//! # How it is built
//!
//! A `Deferred<T>` is an `Rc` handle to one [`Inner`]: a `RefCell<Core>` holding the
//! current result (the [`Slot`]), the list of links (callback/errback pairs and
//! continuations) and a few counters. Links are `FnOnce` closures (kept inline when they
//! capture at most one word, see `inline_call.rs`) in a `SmallVec` with room for one
//! inline, so a pending Deferred with one such callback lives in a single allocation.
//!
//! The callback loop (`run_loop`) never holds the borrow while user code runs: it takes
//! the next link and the result out, releases the borrow, calls the link, then stores
//! what the link returned. So a callback may add callbacks to, fire, pause, unpause or
//! cancel any Deferred, the one running it included.
//!
//! Cancellers live beside the links, each tagged with its position in the chain (see
//! `cancel.rs`).

mod cancel;
mod lost;
mod outcome;
mod own;
mod run;

pub(crate) use cancel::{current_cancellation, new_cancellation};
pub use lost::{reset_lost_result_hook, set_lost_result_hook, LostResult};
pub(crate) use outcome::{report_task_swallowed, TraceLog};
pub use outcome::{CancelOutcome, CancelStep};
pub(crate) use own::{AnyDeferred, DeferredRef, WeakAnyDeferred, WeakDeferred};

#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell, RefMut};
use std::fmt;
use std::mem::{self, ManuallyDrop};
use std::panic::Location;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, Ordering};

use smallvec::SmallVec;

use crate::failure::{
    AlreadyCalledError, At, ChainedToSelfError, Failure, NotPausedError, ResultConsumedError, WaitCycleError,
};
use crate::free_list;
use crate::inline_call::CallOnce;
use crate::logcontext::{Captured, Switcher};

/// A single-threaded handle to a result that arrives later (Twisted's `Deferred`).
///
/// Callbacks added with [`add_callback`](Self::add_callback),
/// [`add_errback`](Self::add_errback), [`add_callbacks`](Self::add_callbacks) and
/// [`add_both`](Self::add_both) run in the order they were added, once the Deferred is
/// fired with [`callback`](Self::callback) or [`errback`](Self::errback). Each receives
/// what the previous step produced: a value goes to the next callback, a [`Failure`] to
/// the next errback. An errback can recover by returning a value; a callback can fail by
/// returning `Err(failure)` (or by panicking: the panic becomes a Failure). A callback
/// may also return another `Deferred<T>`: the chain then waits for it and goes on with
/// its outcome. Returning the Deferred the callback runs on fails the chain with
/// [`ChainedToSelfError`](crate::ChainedToSelfError), and returning one that waits on it
/// through others (a ring) with [`WaitCycleError`](crate::WaitCycleError), where Twisted
/// would wait for ever. Callbacks added after the Deferred fired run at once.
///
/// The value type stays `T` along one Deferred; [`then`](Self::then) and
/// [`map`](Self::map) continue the chain in a new `Deferred<U>` linked to this one, so
/// cancelling the new one cancels this one.
///
/// A `Deferred` is a cheap handle: `clone()` gives another handle to the same Deferred.
/// It is not `Send`: it lives on the thread (normally the reactor's) that made it.
///
/// ```compile_fail
/// fn needs_send<S: Send>(_: S) {}
/// needs_send(weft::Deferred::<i32>::new());
/// ```
///
/// # Examples
///
/// ```
/// use weft::{Deferred, Failure};
///
/// let d: Deferred<i32> = Deferred::new();
/// d.add_callback(|x| x * 2)                     // 21 -> 42
///  .add_callback(|x| -> Result<i32, Failure> {  // a callback can fail
///      if x > 40 { Err(Failure::msg("too big")) } else { Ok(x) }
///  })
///  .add_errback(|_failure| 0);                  // and an errback can recover
/// d.callback(21).unwrap();
/// assert_eq!(d.result().unwrap().unwrap(), 0);
/// ```
///
/// # Cancellation
///
/// [`cancel`](Self::cancel) runs the canceller chain from the invoker's end back to the
/// responder's: first the cancellers of the layers added with
/// [`add_canceller`](Self::add_canceller) or
/// [`add_callbacks_with_canceller`](Self::add_callbacks_with_canceller) whose callbacks
/// have not run yet, newest first, then either the Deferred this one waits on (which is
/// cancelled in turn) or the creator's canceller given to
/// [`with_canceller`](Self::with_canceller). If the Deferred still has no result after
/// that, it fails with [`CancelledError`](crate::CancelledError). A result that has
/// already arrived is never lost to a cancel.
///
/// # Drop
///
/// Dropping the last handle drops the callbacks that have not run (the thread keeps the
/// Deferred's memory for the next [`new`](Self::new), up to a bound: see
/// [`trim_free_lists`](crate::trim_free_lists)). A Deferred dropped
/// while it holds a Failure that no errback handled logs it once with `log::error!`
/// ("Unhandled error in Deferred"), as Twisted does at garbage collection, except a
/// [`ResultConsumedError`] and a failure a combinator or helper consumed on the caller's
/// behalf (`consume_errors`). Unlike Twisted, a paused Deferred holding a failure
/// reports it too: nothing handled it, and nothing ever will.
///
/// # Differences from Twisted
///
/// Below the trampoline's depth (see `ARCHITECTURE.md`), callbacks run in Twisted's
/// order, re-entrant cases included: a step added to a Deferred from inside the chain
/// it handed its result to runs at once. The differences:
///
/// - A callback returning a Deferred that is in the middle of running its own callbacks
///   (it fired this one from inside a callback): Twisted takes that Deferred's current
///   intermediate result at once. Here that value has been moved into the running
///   callback and cannot be shared, so the chain waits for the other Deferred's chain as
///   it stands and takes the result there.
/// - A Deferred waiting on another that is paused when the result is handed over: in
///   Twisted the pause also stops the rest of the other Deferred's chain; here only the
///   paused Deferred waits.
/// - Returning a Deferred that waits on the running one fails with
///   [`WaitCycleError`](crate::WaitCycleError) instead of hanging.
/// - Values are typed: where Twisted leaves `None` behind a moved result, later steps get
///   a [`ResultConsumedError`] (or, after `consume_errors`, the consumed failure).
/// - A paused Deferred dropped holding a failure reports it (see Drop).
#[must_use = "a Deferred does nothing unless callbacks are added to it or it is fired"]
pub struct Deferred<T: 'static> {
    inner: Rc<Inner<T>>,
}

/// Whether Deferreds record where they are first fired (see [`set_debugging`]).
static DEBUGGING: AtomicBool = AtomicBool::new(false);

/// Turns debugging of Deferreds on or off, for the whole process (Twisted's
/// `Deferred.setDebugging`).
///
/// While it is on, every Deferred fired records where (one more small allocation per
/// fire), so that an [`AlreadyCalledError`] names where the Deferred was created, where
/// it was first fired and where the second fire came from. Off, which is the default,
/// it costs one relaxed atomic load per fire; an `AlreadyCalledError` then knows only the
/// second fire's place ([`AlreadyCalledError::fired_again_at`]). Deferreds created at any
/// time are covered: what matters is whether it was on when the first fire happened.
///
/// ```
/// use weft::{set_debugging, Deferred};
///
/// set_debugging(true);
/// let d: Deferred<u8> = Deferred::new();
/// d.callback(1).unwrap();
/// let err = d.callback(2).unwrap_err();
/// assert!(err.first_fired_at().is_some() && err.fired_again_at().is_some());
/// println!("{err}"); // deferred already called (created at ..., first fired at ...; fired again at ...)
/// set_debugging(false);
/// ```
pub fn set_debugging(on: bool) {
    DEBUGGING.store(on, Ordering::Relaxed);
}

/// True if [`set_debugging`] turned debugging on (Twisted's `Deferred.getDebugging`).
#[inline]
pub fn is_debugging() -> bool {
    DEBUGGING.load(Ordering::Relaxed)
}

/// What a callback or errback may return: a value `T`, a `Result<T, Failure>`, or a
/// `Deferred<T>` for the chain to wait on.
///
/// This trait is sealed: weft implements it for those three types only, and for a
/// [`CancelOutcome`] on a `Deferred<()>` (dropped: the chain goes on with `()`).
pub trait CallbackResult<T: 'static>: sealed::Sealed<T> {
    #[doc(hidden)]
    fn into_next(self) -> Next<T>;
}

mod sealed {
    pub trait Sealed<T> {}
}

/// What a link hands to the next one. Public only because [`CallbackResult`] names it;
/// it cannot be named from outside the crate.
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub enum Next<T: 'static> {
    /// A result for the next link.
    Ready(Result<T, crate::Failure>),
    /// Wait for this Deferred and go on with its outcome.
    Wait(Deferred<T>),
    /// The result was moved somewhere else (`then`, `chain_deferred`).
    Consumed,
}

/// What a step added with [`Deferred::add_both_consuming`] returns: `Ok(next)` to go on
/// with `next`, or `Err(failure)` to go on with a failure that weft consumed on the
/// caller's behalf (a combinator's or `ObservableDeferred`'s `consume_errors`,
/// `delay_cancellation`): later steps get it as usual, but the Deferred does not report
/// it as unhandled.
pub(crate) type Consuming<T> = Result<Next<T>, Failure>;

impl<T: 'static> sealed::Sealed<T> for T {}
impl<T: 'static> CallbackResult<T> for T {
    #[inline]
    fn into_next(self) -> Next<T> {
        Next::Ready(Ok(self))
    }
}

impl<T: 'static> sealed::Sealed<T> for Result<T, Failure> {}
impl<T: 'static> CallbackResult<T> for Result<T, Failure> {
    #[inline]
    fn into_next(self) -> Next<T> {
        Next::Ready(self)
    }
}

impl<T: 'static> sealed::Sealed<T> for Deferred<T> {}
impl<T: 'static> CallbackResult<T> for Deferred<T> {
    #[inline]
    fn into_next(self) -> Next<T> {
        Next::Wait(self)
    }
}

/// A callback on a `Deferred<()>` may end with a [`cancel()`](Deferred::cancel) of
/// another Deferred (Twisted's `d.addCallback(lambda _: other.cancel())`): its
/// [`CancelOutcome`] is dropped and the chain goes on with `()`.
impl sealed::Sealed<()> for CancelOutcome {}
impl CallbackResult<()> for CancelOutcome {
    #[inline]
    fn into_next(self) -> Next<()> {
        Next::Ready(Ok(()))
    }
}

impl<T: 'static> sealed::Sealed<T> for Next<T> {}
impl<T: 'static> CallbackResult<T> for Next<T> {
    #[inline]
    fn into_next(self) -> Next<T> {
        self
    }
}

/// A step's function, inline when its closure is small (see `inline_call.rs`).
type Call<T> = CallOnce<Result<T, Failure>, Next<T>>;

/// One step of the chain.
enum Link<T: 'static> {
    /// A callback/errback pair (either may be a pass-through), with the log context
    /// that was current when it was added (it runs in that context) and where it was
    /// added (for diagnostics).
    Call(Call<T>, Captured, &'static Location<'static>),
    /// The outer Deferred waiting on this one: hand it the result and resume it.
    /// Holding it strongly keeps a fire-and-forget outer chain alive while it waits.
    Continue(Rc<Inner<T>>),
    /// The same, held weakly because the outer Deferred reaches this one through strong
    /// links already (its own pending `chain_deferred` step feeds this one, say): the
    /// continuation closes a ring, which would otherwise be a reference cycle. If the
    /// outer Deferred is gone, the result stays here.
    ContinueWeakly(Weak<Inner<T>>),
    /// `chain_deferred`: fire the target with the result; where `chain_deferred` was
    /// called.
    Chain(ChainTarget<T>, &'static Location<'static>),
    /// A combinator's step on one of its members: hand the outcome to the collector as
    /// member `index`. It runs no user code itself, so it keeps no log context.
    Collect(Rc<dyn Collect<T>>, usize),
}

/// Where a combinator's member step hands the member's outcome (a `DeferredList`'s
/// state): one object shared by every member, so no closure is boxed per member.
pub(crate) trait Collect<T: 'static> {
    /// Member `index`'s outcome; returns what the member's chain goes on with (an
    /// `Err` is a failure consumed on the caller's behalf, see [`Consuming`]).
    fn collect(&self, index: usize, result: Result<T, Failure>) -> Consuming<T>;
}

/// How a `chain_deferred` step holds its target.
enum ChainTarget<T: 'static> {
    /// Strongly, so a target nobody else holds still gets the result.
    Owned(Rc<Inner<T>>),
    /// Weakly: the target reaches this Deferred through strong links already (the step
    /// closes a ring, or chains a Deferred to itself), so holding it would make a
    /// reference cycle.
    Reached(Weak<Inner<T>>),
}

/// Where the result is. One state at a time; comments say what cannot coexist with it.
enum Slot<T: 'static> {
    /// Not fired. No link has run.
    Pending,
    /// Fired, and a callback returned a Deferred that has no result yet: the chain waits
    /// for it, holding it as one of its cancel handles (see `own.rs`), so that a cancel
    /// of this one reaches it, as Twisted's `result.cancel()` does. That Deferred holds
    /// this one through its continuation link: the cycle is broken when this one is
    /// resumed, or loses its last cancel handle and becomes `WaitingWeakly`.
    Waiting(own::Claim<T>),
    /// Waiting as above, after this Deferred lost its last cancel handle (or it had none
    /// when it began to wait): nothing can cancel through it, so it reaches the other
    /// Deferred weakly.
    WaitingWeakly(Weak<Inner<T>>),
    /// The current result, for the next link (or for whoever reads it).
    Ready(Result<T, Failure>),
    /// A link is running with the result taken out.
    Running,
    /// The result was moved elsewhere; links still to run get a `ResultConsumedError`.
    Consumed,
}

impl<T: 'static> Slot<T> {
    /// True while the chain waits on another Deferred.
    fn is_waiting(&self) -> bool {
        matches!(self, Slot::Waiting(_) | Slot::WaitingWeakly(_))
    }

    /// The Deferred the chain waits on, weakly, if it waits.
    fn waited(&self) -> Option<Weak<Inner<T>>> {
        match self {
            Slot::Waiting(d) => Some(Rc::downgrade(d.inner())),
            Slot::WaitingWeakly(w) => Some(w.clone()),
            _ => None,
        }
    }
}

/// A Deferred's block. The field order is fixed (`repr(C)`, here and in [`Core`]) so
/// that what a pass over many Deferreds touches, the cancel-handle count, the borrow
/// flag, the slot, `head`, `flags` and the creation site, lies in the 64 bytes after
/// the reference counts, the links after them: glibc hands these 120-byte blocks out at
/// 48 mod 64, so those 64 bytes are one cache line, and making a Deferred from the free
/// list touches one line where it touched two (see `ARCHITECTURE.md`, costs).
#[repr(C)]
pub(crate) struct Inner<T: 'static> {
    /// How many cancel handles the Deferred has: public `Deferred` handles, a waiting
    /// Deferred's `Slot::Waiting`, and sources held by a Deferred built on this one (see
    /// `own.rs`). At zero nobody can cancel it any more, and a pending one lets go of what
    /// it holds only to be able to cancel it.
    handles: Cell<u32>,
    /// The state. `Inner`'s `Drop` takes out everything in it that owns anything (the
    /// slot's value, the links, the cold part); what is left owns nothing, so it is not
    /// dropped (`ManuallyDrop`), which saves calls to drop glue on every Deferred freed.
    core: ManuallyDrop<RefCell<Core<T>>>,
}

/// A Deferred's state (see [`Inner`] for the field order).
#[repr(C)]
struct Core<T: 'static> {
    slot: Slot<T>,
    /// Index in `links` of the next link to run.
    head: u32,
    /// Bit 0 ([`RUNNING`]): a callback loop is on the stack (or queued) for this
    /// Deferred. Bit 1 ([`SHIELD`]): a cancel stops here (`stop_cancellation`, an
    /// observer). The rest: `pause()` calls not yet matched by `unpause()` (in units of
    /// [`PAUSE`]). One word for all keeps a Deferred within its size budget, and lets
    /// `can_run` test running and paused at once ([`BUSY`]).
    flags: u32,
    /// The rarely used part (cancellers, diagnostics), allocated only when used.
    cold: Option<Box<cancel::Cold<T>>>,
    /// Where the Deferred was created (the caller of `new`, `succeed`, `then`, a
    /// combinator, ...), for diagnostics.
    created_at: &'static Location<'static>,
    /// Links in the order added. `links[..head]` have run (their entries are `None`).
    links: Links<T>,
}

/// A link as the list holds it: an entry with no drop glue of its own (the list drops
/// what is left in it, see [`Links`]).
///
/// Why: a value with drop glue pushed onto a vector must be in memory while the vector
/// may grow, for the unwinding path to drop it; so the compiler built every link on the
/// stack with 8-byte stores and copied it into the list with 16-byte loads, a
/// store-forwarding stall on every link added (`perf annotate`: a third of the `chain`
/// benchmark's time). Without drop glue the link's parts are stored straight into place.
type Entry<T> = ManuallyDrop<Option<Link<T>>>;

/// The links of a Deferred: a `SmallVec` of [`Entry`]s (room for one inline) that drops
/// the links still in it when it is dropped.
struct Links<T: 'static>(SmallVec<[Entry<T>; 1]>);

impl<T: 'static> Links<T> {
    /// Adds `link` at the end, as an entry (no drop glue, see [`Entry`]).
    #[inline(always)]
    fn push_link(&mut self, link: Link<T>) {
        self.0.push(ManuallyDrop::new(Some(link)));
    }
}

impl<T: 'static> Default for Links<T> {
    fn default() -> Self {
        Links(SmallVec::new())
    }
}

impl<T: 'static> std::ops::Deref for Links<T> {
    type Target = SmallVec<[Entry<T>; 1]>;

    #[inline]
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<T: 'static> std::ops::DerefMut for Links<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<T: 'static> Drop for Links<T> {
    fn drop(&mut self) {
        /// Drops the entries left if dropping one panics, as a slice's drop does.
        struct Rest<'a, T: 'static>(smallvec::Drain<'a, [Entry<T>; 1]>);
        impl<T: 'static> Drop for Rest<'_, T> {
            fn drop(&mut self) {
                for entry in self.0.by_ref() {
                    drop(ManuallyDrop::into_inner(entry));
                }
            }
        }
        let mut rest = Rest(self.0.drain(..));
        for entry in rest.0.by_ref() {
            drop(ManuallyDrop::into_inner(entry));
        }
    }
}

/// `Core::flags`: a callback loop is on the stack (or queued).
const RUNNING: u32 = 1;
/// `Core::flags`: a shield (see [`Deferred::mark_shield`]).
const SHIELD: u32 = 2;
/// `Core::flags`: one pause.
const PAUSE: u32 = 4;
/// `Core::flags`: the bits that keep a loop from starting (running, paused).
const BUSY: u32 = !SHIELD;

impl<T: 'static> Core<T> {
    fn is_called(&self) -> bool {
        !matches!(self.slot, Slot::Pending)
    }

    fn running(&self) -> bool {
        self.flags & RUNNING != 0
    }

    fn set_running(&mut self, on: bool) {
        self.flags = (self.flags & !RUNNING) | u32::from(on);
    }

    /// How many pauses are not yet undone.
    fn paused(&self) -> u32 {
        self.flags / PAUSE
    }

    /// True if a cancel stops here (see [`Deferred::mark_shield`]).
    fn is_shield(&self) -> bool {
        self.flags & SHIELD != 0
    }

    /// Makes it a shield (see [`Deferred::mark_shield`]).
    fn set_shield(&mut self) {
        self.flags |= SHIELD;
    }

    /// True if no loop runs and the chain is not paused.
    fn is_idle(&self) -> bool {
        self.flags & BUSY == 0
    }

    /// How many links were dropped from the front of `links` when it was emptied
    /// (counted only once the cold part exists, since only its layer cancellers are
    /// tagged with positions); with `head` it gives absolute positions.
    fn base(&self) -> u32 {
        self.cold.as_ref().map_or(0, |c| c.base)
    }

    /// Absolute position of the next link to run.
    fn consumed(&self) -> u32 {
        self.base() + self.head
    }

    /// Absolute position the next added link will have.
    fn end(&self) -> u32 {
        self.base() + self.links.len() as u32
    }

    fn has_links_to_run(&self) -> bool {
        (self.head as usize) < self.links.len()
    }

    /// When the loop stops: if every link ran, empty the list (a spilled one goes back to
    /// inline storage, so the next link added costs no allocation), and take the layer
    /// cancellers whose callbacks have started, for the caller to drop outside the borrow.
    ///
    /// The common case (no cold part, the list inline) is a few instructions here; the
    /// rest is out of line.
    #[inline]
    fn compact(&mut self) -> Option<Vec<(u32, cancel::LayerCanceller)>> {
        if self.cold.is_none() && !self.links.spilled() {
            if !self.has_links_to_run() {
                debug_assert!(self.links.iter().all(|link| link.is_none()), "a link that ran is gone");
                // Entries have no drop glue: clearing only resets the length.
                self.links.clear();
                self.head = 0;
            }
            return None;
        }
        self.compact_slow()
    }

    /// [`compact`](Self::compact) with a cold part or a spilled list.
    #[cold]
    #[inline(never)]
    fn compact_slow(&mut self) -> Option<Vec<(u32, cancel::LayerCanceller)>> {
        if !self.has_links_to_run() && !self.links.is_empty() {
            if let Some(c) = self.cold.as_mut() {
                c.base += self.links.len() as u32;
            }
            self.head = 0;
            debug_assert!(self.links.iter().all(|link| link.is_none()), "a link that ran is gone");
            // A spilled list goes back to inline storage (its entries have no drop glue).
            self.links.0 = SmallVec::new();
        }
        let cancel = self.cold.as_mut()?;
        let consumed = cancel.base + self.head;
        Some(cancel.take_dead_layers(consumed))
    }

    /// True if the chain has finished with a result: it is `Ready`, no link is left to
    /// run, and it is not paused (a paused chain may still get links that must run on
    /// that result first).
    fn has_final_result(&self) -> bool {
        matches!(self.slot, Slot::Ready(_)) && self.paused() == 0 && !self.has_links_to_run()
    }

    /// The cold part, allocated on first use.
    fn cold_mut(&mut self) -> &mut cancel::Cold<T> {
        self.cold.get_or_insert_with(|| Box::new(cancel::Cold::new()))
    }

    /// True if `f`, the failure this Deferred ends with, is to be reported when it is
    /// dropped: not a `ResultConsumedError` (the result it stands for went somewhere that
    /// handles it), and not a failure weft consumed on the caller's behalf here.
    fn is_unhandled(&self, f: &Failure) -> bool {
        if f.check::<ResultConsumedError>() {
            return false;
        }
        let handled = self.cold.as_ref().and_then(|c| c.handled.as_ref());
        !handled.is_some_and(|h| Failure::ptr_eq(h, f))
    }

    /// For a loop that let go of the Deferred: if it may go on, marks it running again
    /// and takes the result for it.
    fn take_back(&mut self) -> Option<Held<T>> {
        if !self.can_run() {
            return None;
        }
        self.set_running(true);
        match mem::replace(&mut self.slot, Slot::Running) {
            Slot::Ready(r) => Some(Held::Result(r)),
            Slot::Consumed => Some(Held::Consumed),
            _ => unreachable!("can_run checked the slot"),
        }
    }

    /// True if a Deferred waits on this one (a continuation link is still to run).
    fn has_waiter(&self) -> bool {
        self.links[self.head as usize..]
            .iter()
            .any(|l| matches!(&**l, Some(Link::Continue(_) | Link::ContinueWeakly(_))))
    }

    /// True if a fire with a result in hand may run the callback loop at once: no loop
    /// of its own, not paused, links to run, and the trampoline's depth allows.
    #[inline]
    fn may_start_now(&self) -> bool {
        self.is_idle() && self.has_links_to_run() && run::may_run_now()
    }

    /// True if a step still to run holds another Deferred strongly (a continuation or a
    /// `chain_deferred` step): only then can this one reach another through strong links.
    fn has_forward_links(&self) -> bool {
        self.links[self.head as usize..]
            .iter()
            .any(|l| matches!(&**l, Some(Link::Continue(_) | Link::Chain(ChainTarget::Owned(_), _))))
    }

    /// Replaces a slot that holds nothing to drop (`Pending`, `Running`, `Consumed`)
    /// without calling the drop glue of `Slot` (a call, which assigning would make).
    #[inline]
    fn set_slot(&mut self, slot: Slot<T>) {
        let old = mem::replace(&mut self.slot, slot);
        debug_assert!(matches!(old, Slot::Pending | Slot::Running | Slot::Consumed), "set_slot over a value");
        mem::forget(old);
    }

    /// True if a callback loop should start now.
    #[inline]
    fn can_run(&self) -> bool {
        // Not running and not paused: no flag set.
        matches!(self.slot, Slot::Ready(_) | Slot::Consumed) && self.is_idle() && self.has_links_to_run()
    }
}

impl<T: 'static> Deferred<T> {
    /// A new Deferred with no result and no canceller.
    #[track_caller]
    pub fn new() -> Deferred<T> {
        // A Deferred kept for reuse (see `Inner::recycle`) owns nothing and has no other
        // reference: only its state is reset.
        if let Some(inner) = free_list::take_sized::<Inner<T>>() {
            {
                let mut core = inner.core.borrow_mut();
                debug_assert!(core.links.is_empty() && !core.links.spilled() && core.cold.is_none());
                core.set_slot(Slot::Pending);
                core.head = 0;
                core.flags = 0;
                core.created_at = Location::caller();
            }
            inner.handles.set(1);
            return Deferred { inner };
        }
        Deferred {
            inner: Rc::new(Inner {
                core: ManuallyDrop::new(RefCell::new(Core {
                    slot: Slot::Pending,
                    links: Links::default(),
                    head: 0,
                    flags: 0,
                    cold: None,
                    created_at: Location::caller(),
                })),
                handles: Cell::new(1),
            }),
        }
    }

    /// A new public handle (a cancel handle) to `inner`.
    fn from_inner(inner: Rc<Inner<T>>) -> Deferred<T> {
        inner.retain();
        Deferred { inner }
    }

    /// Adds a callback and an errback as one step: `callback` gets a value, `errback` a
    /// Failure; whichever runs, what it returns goes on to the next step.
    ///
    /// Returns `self` so that calls can be chained.
    #[track_caller]
    pub fn add_callbacks<F, G, R, S>(&self, callback: F, errback: G) -> &Self
    where
        F: FnOnce(T) -> R + 'static,
        G: FnOnce(Failure) -> S + 'static,
        R: CallbackResult<T>,
        S: CallbackResult<T>,
    {
        self.push_call(
            move |r: Result<T, Failure>| match r {
                Ok(v) => callback(v).into_next(),
                Err(f) => errback(f).into_next(),
            },
            Location::caller(),
        );
        self
    }

    /// Adds a callback; a Failure passes it by.
    ///
    /// ```
    /// let d = weft::succeed(1);
    /// d.add_callback(|x| x + 1);
    /// assert_eq!(d.result().unwrap().unwrap(), 2);
    /// ```
    #[track_caller]
    pub fn add_callback<F, R>(&self, callback: F) -> &Self
    where
        F: FnOnce(T) -> R + 'static,
        R: CallbackResult<T>,
    {
        self.push_call(
            move |r: Result<T, Failure>| match r {
                Ok(v) => callback(v).into_next(),
                Err(f) => Next::Ready(Err(f)),
            },
            Location::caller(),
        );
        self
    }

    /// Adds an errback; a value passes it by.
    #[track_caller]
    pub fn add_errback<G, S>(&self, errback: G) -> &Self
    where
        G: FnOnce(Failure) -> S + 'static,
        S: CallbackResult<T>,
    {
        self.push_call(
            move |r: Result<T, Failure>| match r {
                Ok(v) => Next::Ready(Ok(v)),
                Err(f) => errback(f).into_next(),
            },
            Location::caller(),
        );
        self
    }

    /// Adds one function that gets the outcome either way (Twisted's `addBoth`).
    #[track_caller]
    pub fn add_both<F, R>(&self, f: F) -> &Self
    where
        F: FnOnce(Result<T, Failure>) -> R + 'static,
        R: CallbackResult<T>,
    {
        self.push_call(move |r| f(r).into_next(), Location::caller());
        self
    }

    /// Crate-internal [`add_both`](Self::add_both) for a step that may consume a failure
    /// on the caller's behalf (see [`Consuming`]): the Deferred remembers that failure as
    /// handled and does not report it if dropped holding it.
    #[track_caller]
    pub(crate) fn add_both_consuming<F>(&self, f: F) -> &Self
    where
        F: FnOnce(Result<T, Failure>) -> Consuming<T> + 'static,
    {
        let me = self.downgrade();
        self.push_call(
            move |r| match f(r) {
                Ok(next) => next,
                Err(failure) => {
                    if let Some(me) = me.upgrade() {
                        me.inner.mark_handled(&failure);
                    }
                    Next::Ready(Err(failure))
                }
            },
            Location::caller(),
        );
        self
    }

    /// Adds a call link, capturing the current log context for it (the capture point of
    /// the log-context invariant, see `ARCHITECTURE.md`), with `at`, where it was added.
    #[inline]
    fn push_call<F>(&self, call: F, at: &'static Location<'static>)
    where
        F: FnOnce(Result<T, Failure>) -> Next<T> + 'static,
    {
        let (call, captured) = (CallOnce::new(call), Captured::capture());
        self.push(move || Link::Call(call, captured, at));
    }

    /// Adds the link `make` builds. It is built inside the borrow, right where it is
    /// pushed, so that its parts are stored straight into the list (see [`Entry`]).
    #[inline(always)]
    fn push(&self, make: impl FnOnce() -> Link<T>) {
        if self.inner.push_quietly(make) {
            self.inner.kick();
        }
    }

    /// Fires the Deferred with a value: its callbacks start to run.
    ///
    /// # Errors
    ///
    /// [`AlreadyCalledError`] holding `value` if the Deferred was already fired. One
    /// exception: after [`cancel`](Self::cancel) made it fail with `CancelledError`, the
    /// first late `callback` or `errback` from the responder is ignored and returns
    /// `Ok(())` (Twisted does this only when the Deferred has no canceller; weft does it
    /// whenever the cancel ended in `CancelledError`).
    #[track_caller]
    pub fn callback(&self, value: T) -> Result<(), AlreadyCalledError<T>> {
        self.inner.callback_at(value, Location::caller())
    }

    /// Fires the Deferred with a failure: its errbacks start to run.
    ///
    /// Takes a [`Failure`] or any `std::error::Error + 'static` (converted with
    /// `Failure::from`, which records the caller's location).
    ///
    /// # Errors
    ///
    /// [`AlreadyCalledError`] holding the failure if the Deferred was already fired
    /// (with the same exception after a cancel as [`callback`](Self::callback)).
    #[track_caller]
    pub fn errback(&self, failure: impl Into<Failure>) -> Result<(), AlreadyCalledError<Failure>> {
        self.inner.errback_at(failure.into(), Location::caller())
    }

    /// Fires with whatever a callback could return; hands `next` back if already fired.
    #[track_caller]
    pub(crate) fn fire(&self, next: Next<T>) -> Result<(), Next<T>> {
        self.fire_at(next, Location::caller())
    }

    /// [`fire`](Self::fire) from `at` (recorded as the first fire while debugging).
    pub(crate) fn fire_at(&self, next: Next<T>, at: &'static Location<'static>) -> Result<(), Next<T>> {
        self.inner.fire_at(next, at)
    }

    /// Pauses the chain: no further callback runs until [`unpause`](Self::unpause) is
    /// called as many times as `pause` was.
    ///
    /// A paused Deferred dropped while it holds a failure reports it as unhandled (see
    /// the type's Drop section; Twisted stays silent there).
    ///
    /// # Panics
    ///
    /// If the Deferred is already paused 2^30 - 1 times.
    pub fn pause(&self) {
        let mut core = self.inner.core.borrow_mut();
        core.flags = core.flags.checked_add(PAUSE).expect("a Deferred paused 2^30 times");
    }

    /// Undoes one [`pause`](Self::pause); the chain goes on when the last pause is undone.
    ///
    /// # Errors
    ///
    /// [`NotPausedError`] if the Deferred is not paused.
    pub fn unpause(&self) -> Result<(), NotPausedError> {
        if self.inner.unpause() {
            Ok(())
        } else {
            Err(NotPausedError)
        }
    }

    /// True once [`callback`](Self::callback) or [`errback`](Self::errback) was called
    /// (Twisted's `called`).
    pub fn is_called(&self) -> bool {
        self.inner.core.borrow().is_called()
    }

    /// True if the chain is held up: by [`pause`](Self::pause), or because it waits for a
    /// Deferred a callback returned (Twisted's `paused`).
    pub fn is_paused(&self) -> bool {
        let core = self.inner.core.borrow();
        core.paused() > 0 || core.slot.is_waiting()
    }

    /// True if the Deferred has a result that no link is waiting to process: it fired,
    /// every callback ran, and the chain is not paused or waiting.
    pub fn has_result(&self) -> bool {
        self.inner.core.borrow().has_final_result()
    }

    /// A copy of the current result, if the chain has finished with one (see
    /// [`has_result`](Self::has_result)). Reading it does not consume it, so a Failure
    /// read this way is still reported as unhandled when the Deferred is dropped;
    /// use [`take_result`](Self::take_result) to handle it.
    pub fn result(&self) -> Option<Result<T, Failure>>
    where
        T: Clone,
    {
        let core = self.inner.core.borrow();
        match &core.slot {
            Slot::Ready(r) if core.has_final_result() => Some(r.clone()),
            _ => None,
        }
    }

    /// Moves the finished result out (see [`has_result`](Self::has_result)); callbacks
    /// added afterwards get a [`ResultConsumedError`]. `None` if there is no result yet.
    pub fn take_result(&self) -> Option<Result<T, Failure>> {
        let mut core = self.inner.core.borrow_mut();
        if !core.has_final_result() {
            return None;
        }
        match mem::replace(&mut core.slot, Slot::Consumed) {
            Slot::Ready(r) => Some(r),
            _ => unreachable!("checked above"),
        }
    }

    /// Sends this Deferred's outcome on to `other` (Twisted's `chainDeferred`): when this
    /// one reaches this point of its chain, `other` is fired with the result, which is
    /// moved there. Cancelling `other` does not cancel this Deferred, as in Twisted.
    ///
    /// If `other` has already fired by then, this chain fails with
    /// [`AlreadyCalledError`] holding what could not be delivered (an
    /// `AlreadyCalledError<T>` for a value, `AlreadyCalledError<Failure>` for a failure;
    /// see [`AlreadyCalledError::value`]), as in Twisted, where `other.callback` raises
    /// inside this chain. The one exception is the first fire after `other` was
    /// cancelled, which is ignored (see [`callback`](Self::callback)).
    ///
    /// # Ownership and rings
    ///
    /// This Deferred's chain owns `other` until the step runs, so callbacks added to
    /// `other` run even if no handle to it is kept. If `other` already reaches this
    /// Deferred through such steps or through Deferreds waiting on one another (a ring:
    /// `d.chain_deferred(&d)`, or `a.chain_deferred(&b)` after `b.chain_deferred(&a)`),
    /// the step holds `other` weakly instead, so the ring is no reference cycle: once
    /// nothing outside holds them, its Deferreds are freed (and a failure one of them
    /// holds is reported as unhandled). Such a step whose target was freed leaves the
    /// result here. Fired, a ring behaves as in Twisted: `d.chain_deferred(&d)` fails
    /// `d`'s chain with `AlreadyCalledError`. The ring check looks at most 64 Deferreds
    /// deep; a ring longer than that made only of `chain_deferred` steps and waiting
    /// Deferreds keeps itself alive until it fires.
    #[track_caller]
    pub fn chain_deferred(&self, other: &Deferred<T>) -> &Self {
        let target = if reaches(&other.inner, &self.inner) {
            ChainTarget::Reached(Rc::downgrade(&other.inner))
        } else {
            ChainTarget::Owned(other.inner.clone())
        };
        let at = Location::caller();
        self.push(move || Link::Chain(target, at));
        self
    }

    /// Continues the chain in a new `Deferred<U>`: when this one reaches this point, `f`
    /// gets the outcome and what it returns fires the new Deferred. Cancelling the new
    /// Deferred cancels this one. The result is moved into `f`; steps added to this
    /// Deferred afterwards get a [`ResultConsumedError`].
    ///
    /// # Ownership
    ///
    /// This one's chain owns the new Deferred until this point is reached, so callbacks
    /// added to the new one run even if no handle to it is kept (fire and forget). The new
    /// Deferred holds this one until it fires, so cancelling it reaches this one (and its
    /// canceller) even if no other handle to this one is kept. Once the new Deferred has
    /// no handle left, nobody can cancel it, so it lets go of this one: if nobody can fire
    /// this one either, both are freed.
    ///
    /// ```
    /// let d = weft::Deferred::<u32>::new();
    /// // A closure returning a `Result` could mean `Deferred<Result<..>>` too: name the type.
    /// let s: weft::Deferred<String> = d.clone().then(|r| r.map(|n| format!("got {n}")));
    /// d.callback(7).unwrap();
    /// assert_eq!(s.result().unwrap().unwrap(), "got 7");
    /// ```
    #[track_caller]
    pub fn then<U, F, R>(self, f: F) -> Deferred<U>
    where
        U: 'static,
        F: FnOnce(Result<T, Failure>) -> R + 'static,
        R: CallbackResult<U>,
    {
        let out = Deferred::<U>::new();
        // A forward reference: it fires `out`, it cannot cancel it.
        let target = out.to_ref();
        let at = Location::caller();
        self.push_call(
            move |r| {
                let next = crate::panics::catching_at(at, || f(r).into_next())
                    .unwrap_or_else(|failure| Next::Ready(Err(failure)));
                if target.fire_at(next, at).is_err() {
                    log::debug!("then: the linked deferred was already called; result dropped");
                }
                Next::Consumed
            },
            at,
        );
        // `out` has no canceller of its own: a cancel of it cancels its sources.
        out.add_source(self);
        out
    }

    /// Like [`then`](Self::then) for the value only: a Failure passes straight to the
    /// new Deferred.
    ///
    /// ```
    /// let lengths = weft::succeed("four").map(str::len);
    /// assert_eq!(lengths.result().unwrap().unwrap(), 4);
    /// ```
    #[track_caller]
    pub fn map<U, F, R>(self, f: F) -> Deferred<U>
    where
        U: 'static,
        F: FnOnce(T) -> R + 'static,
        R: CallbackResult<U>,
    {
        self.then(move |r| match r {
            Ok(v) => f(v).into_next(),
            Err(e) => Next::Ready(Err(e)),
        })
    }

    /// True if both handles refer to the same Deferred.
    pub fn ptr_eq(a: &Deferred<T>, b: &Deferred<T>) -> bool {
        Rc::ptr_eq(&a.inner, &b.inner)
    }
}

/// A result held by the callback loop between links (the slot says `Running` meanwhile).
enum Held<T: 'static> {
    Result(Result<T, Failure>),
    Consumed,
}

impl<T: 'static> Held<T> {
    fn into_slot(self) -> Slot<T> {
        match self {
            Held::Result(r) => Slot::Ready(r),
            Held::Consumed => Slot::Consumed,
        }
    }

    fn into_input(self) -> Result<T, Failure> {
        match self {
            Held::Result(r) => r,
            Held::Consumed => Err(Failure::new(ResultConsumedError)),
        }
    }
}

impl<T: 'static> Inner<T> {
    /// Fires the Deferred with whatever a callback could return, from `at` (recorded as
    /// the first fire while debugging); hands `next` back if it was already fired.
    fn fire_at(self: &Rc<Self>, next: Next<T>, at: &'static Location<'static>) -> Result<(), Next<T>> {
        let unused = {
            let mut core = self.core.borrow_mut();
            if core.is_called() {
                // The first late fire after a cancel is ignored, and what it brings goes
                // to the lost-result hook (see `lost.rs`).
                if let Some(lost) = core.take_suppressed() {
                    drop(core);
                    lost.deliver(next, at);
                    return Ok(());
                }
                return Err(next);
            }
            if is_debugging() {
                core.cold_mut().fired_at = Some(at);
            }
            core.set_slot(Slot::Running);
            // The creator's canceller and the sources held for a cancel are of no use once
            // there is a result; they are dropped at the end of this function, outside the
            // borrow.
            core.cold.as_mut().map(|c| c.take_on_fire(&next))
        };
        if let Some(held) = self.absorb(next, false) {
            self.start(held);
        }
        match unused {
            // Skip the call to the drop glue of what there is not.
            None => mem::forget(unused),
            Some(unused) => drop(unused),
        }
        Ok(())
    }

    /// `callback(value)` from `at`.
    fn callback_at(
        self: &Rc<Self>,
        value: T,
        at: &'static Location<'static>,
    ) -> Result<(), AlreadyCalledError<T>> {
        // The common case in one borrow: a plain Deferred (no cold part: no canceller,
        // no sources, nothing to record while not debugging), not fired, with links to
        // run and no loop of its own, fired where a loop may start (what `fire_at` and
        // `start` do, without writing the result to the slot and reading it back).
        let mut core = self.core.borrow_mut();
        if !core.is_called() && core.cold.is_none() && !is_debugging() && core.may_start_now() {
            core.set_slot(Slot::Running);
            core.set_running(true);
            drop(core);
            let me = self.clone();
            run::run_now(move || me.run_held(Held::Result(Ok(value))));
            return Ok(());
        }
        drop(core);
        self.fire_at(Next::Ready(Ok(value)), at).map_err(|next| match next {
            Next::Ready(Ok(v)) => self.already_called(v, at),
            _ => unreachable!("fire hands back what it was given"),
        })
    }

    /// `errback(failure)` from `at`.
    fn errback_at(
        self: &Rc<Self>,
        failure: Failure,
        at: &'static Location<'static>,
    ) -> Result<(), AlreadyCalledError<Failure>> {
        self.fire_at(Next::Ready(Err(failure)), at).map_err(|next| match next {
            Next::Ready(Err(f)) => self.already_called(f, at),
            _ => unreachable!("fire hands back what it was given"),
        })
    }

    /// The error for a fire from `again` of this already fired Deferred, with where it
    /// was created and first fired if that was recorded (while debugging).
    fn already_called<V>(&self, value: V, again: &'static Location<'static>) -> AlreadyCalledError<V> {
        let core = self.core.borrow();
        let first = core.cold.as_ref().and_then(|c| c.fired_at).map(|fired| (core.created_at, fired));
        AlreadyCalledError::at(value, first, again)
    }
}

impl<T: 'static> Inner<T> {
    /// Turns what a link returned into the result for the next link, or `None` if the
    /// chain must now wait. The slot must be `Running`.
    ///
    /// A Deferred to wait on is handled here: if it already has a result the result is
    /// taken at once (Twisted steals it too); otherwise the other Deferred gets a
    /// continuation link that hands its result back here, and the slot becomes `Waiting`.
    /// Called by a callback loop (`in_loop`), the loop's stop is done here too, in the
    /// same borrow: the Deferred is no longer running, and its spent links are cleared.
    #[inline]
    fn absorb(self: &Rc<Self>, next: Next<T>, in_loop: bool) -> Option<Held<T>> {
        match next {
            Next::Ready(r) => Some(Held::Result(r)),
            Next::Consumed => Some(Held::Consumed),
            Next::Wait(d) => self.wait_on(d, in_loop),
        }
    }

    /// The `Next::Wait` case of [`absorb`](Self::absorb).
    #[inline(never)]
    fn wait_on(self: &Rc<Self>, d: Deferred<T>, in_loop: bool) -> Option<Held<T>> {
        if Rc::ptr_eq(&d.inner, self) {
            return Some(Held::Result(Err(Failure::new(ChainedToSelfError))));
        }
        let mut other = d.inner.core.borrow_mut();
        let idle = other.is_idle() && !other.has_links_to_run();
        match &other.slot {
            Slot::Ready(_) if idle => match mem::replace(&mut other.slot, Slot::Consumed) {
                Slot::Ready(r) => return Some(Held::Result(r)),
                _ => unreachable!("matched above"),
            },
            Slot::Consumed if idle => return Some(Held::Result(Err(Failure::new(ResultConsumedError)))),
            _ => {}
        }
        let mut core = self.core.borrow_mut();
        if other.slot.is_waiting() && core.has_waiter() {
            let next = other.slot.waited().expect("waiting");
            drop((core, other));
            if waits_on(next, self) {
                return Some(Held::Result(Err(Failure::new(WaitCycleError))));
            }
            other = d.inner.core.borrow_mut();
            core = self.core.borrow_mut();
        }
        let link = if core.has_forward_links() {
            // Only a Deferred with pending `chain_deferred` steps or waiters can reach
            // `d` through strong links, and close a ring with this continuation.
            drop((core, other));
            let ring = reaches(self, &d.inner);
            other = d.inner.core.borrow_mut();
            core = self.core.borrow_mut();
            if ring {
                Link::ContinueWeakly(Rc::downgrade(self))
            } else {
                Link::Continue(self.clone())
            }
        } else {
            Link::Continue(self.clone())
        };
        other.links.push_link(link);
        let run = other.can_run();
        drop(other);
        let kick = if run { Some(d.inner.clone()) } else { None };
        // This one holds `d` as a cancel handle while it has one itself (see `own.rs`);
        // with none, nobody can cancel through it, and a weak reference does.
        let (waiting, unheld) = if self.handles.get() > 0 {
            (Slot::Waiting(own::Claim::from_handle(d)), None)
        } else {
            (Slot::WaitingWeakly(Rc::downgrade(&d.inner)), Some(d))
        };
        // This one waits from now on, before any code runs: a slot says `Waiting(d)`
        // exactly while `d` holds its continuation, so that a ring closed by the loop
        // kicked below (its callback returning this one) is seen by the check above.
        core.set_slot(waiting);
        let Some(d) = kick else {
            Inner::stop_waiting(core, in_loop);
            drop(unheld);
            return None;
        };
        drop(core);
        drop(unheld);
        d.kick();
        // The other Deferred may have reached our continuation already and resumed us
        // (`resume` leaves the result in our slot); otherwise we wait.
        let mut core = self.core.borrow_mut();
        match mem::replace(&mut core.slot, Slot::Running) {
            Slot::Ready(r) => Some(Held::Result(r)),
            waiting @ (Slot::Waiting(_) | Slot::WaitingWeakly(_)) => {
                core.set_slot(waiting);
                Inner::stop_waiting(core, in_loop);
                None
            }
            other => {
                core.set_slot(other);
                unreachable!("only resume moves a waiting slot on")
            }
        }
    }

    /// The chain now waits (the slot says so, in `core`): a callback loop that got here
    /// (`in_loop`) stops in the same borrow, no longer running, its spent links cleared
    /// (dropped outside the borrow).
    #[inline]
    fn stop_waiting(mut core: RefMut<'_, Core<T>>, in_loop: bool) {
        if in_loop {
            core.set_running(false);
            let dead = core.compact();
            drop(core);
            drop(dead);
        }
    }

    /// Undoes one pause; false if the Deferred was not paused.
    fn unpause(self: &Rc<Self>) -> bool {
        let run = {
            let mut core = self.core.borrow_mut();
            if core.paused() == 0 {
                return false;
            }
            core.flags -= PAUSE;
            core.can_run()
        };
        if run {
            self.kick();
        }
        true
    }

    /// A fire gave the Deferred its result (the slot says `Running`): runs the callback
    /// loop with `held` at once if it may (no loop of its own, not paused, links to run,
    /// and the trampoline's depth allows), without writing the result to the slot and
    /// reading it back; otherwise stores it and kicks as usual.
    fn start(self: &Rc<Self>, held: Held<T>) {
        let mut core = self.core.borrow_mut();
        if core.may_start_now() {
            core.set_running(true);
            drop(core);
            let me = self.clone();
            run::run_now(move || me.run_held(held));
        } else {
            core.set_slot(held.into_slot());
            drop(core);
            self.kick();
        }
    }

    /// Adds the link `make` makes without running anything; true if the Deferred could
    /// run it now (the caller kicks it, outside its own borrows). The link is built
    /// inside the borrow, as [`Deferred::push`] says why.
    #[inline(always)]
    fn push_quietly(&self, make: impl FnOnce() -> Link<T>) -> bool {
        let mut core = self.core.borrow_mut();
        core.links.push_link(make());
        core.can_run()
    }

    /// Starts the callback loop if it can run and is not running already.
    fn kick(self: &Rc<Self>) {
        {
            let mut core = self.core.borrow_mut();
            if !core.can_run() {
                return;
            }
            core.set_running(true);
        }
        run::run(self.clone());
    }

    /// Called through a continuation link: the Deferred this one waited on has `result`.
    fn resume(self: &Rc<Self>, result: Result<T, Failure>) {
        let waited = {
            let mut core = self.core.borrow_mut();
            match core.slot {
                Slot::Waiting(_) | Slot::WaitingWeakly(_) | Slot::Running => {
                    mem::replace(&mut core.slot, Slot::Ready(result))
                }
                _ => {
                    // Cancelled while waiting on a Deferred that had been dropped, then
                    // the result came anyway; keep the first outcome.
                    drop(core);
                    log::debug!("resume: deferred no longer waiting; late result dropped");
                    return;
                }
            }
        };
        // The hold on the Deferred waited on goes, outside the borrow.
        drop(waited);
        self.kick();
    }
}

/// How many Deferreds [`reaches`] looks at before it gives up (and answers no).
const RING_CHECK_LIMIT: usize = 64;

/// True if `from` reaches `to` through the strong links of pending steps
/// (`chain_deferred` targets and waiting Deferreds), looking at most
/// [`RING_CHECK_LIMIT`] Deferreds deep.
fn reaches<T: 'static>(from: &Rc<Inner<T>>, to: &Rc<Inner<T>>) -> bool {
    let mut stack: SmallVec<[Rc<Inner<T>>; 4]> = SmallVec::new();
    stack.push(from.clone());
    let mut looked = 0;
    while let Some(d) = stack.pop() {
        if Rc::ptr_eq(&d, to) {
            return true;
        }
        looked += 1;
        if looked > RING_CHECK_LIMIT {
            return false;
        }
        let core = d.core.borrow();
        for link in core.links[core.head as usize..].iter().filter_map(|l| Option::as_ref(l)) {
            match link {
                Link::Continue(next) | Link::Chain(ChainTarget::Owned(next), _) => stack.push(next.clone()),
                Link::Call(..)
                | Link::Collect(..)
                | Link::ContinueWeakly(_)
                | Link::Chain(ChainTarget::Reached(_), _) => {}
            }
        }
    }
    false
}

/// True if following `Waiting` slots from the Deferred `next` reaches `target`.
///
/// Only a Deferred that has a waiter can close a cycle, and a running one is not
/// `Waiting` itself, so [`Inner::wait_on`] calls this only when the Deferred a callback
/// returned is waiting and the running one has a waiter: the walk costs one step per
/// Deferred in the returned one's wait chain, and common chains never take it.
fn waits_on<T: 'static>(mut next: Weak<Inner<T>>, target: &Rc<Inner<T>>) -> bool {
    loop {
        if std::ptr::eq(next.as_ptr(), Rc::as_ptr(target)) {
            return true;
        }
        let Some(inner) = next.upgrade() else { return false };
        let core = inner.core.borrow();
        match core.slot.waited() {
            Some(w) => next = w,
            None => return false,
        }
    }
}

impl<T: 'static> run::Runnable for Inner<T> {
    /// The callback loop. A panicking callback unwinds out of `run_links` to here, and
    /// its panic becomes the Failure the next link gets: one `catch_unwind` per loop, not
    /// per callback.
    fn run_loop(self: Rc<Self>) {
        let held = {
            let mut core = self.core.borrow_mut();
            match mem::replace(&mut core.slot, Slot::Running) {
                Slot::Ready(r) => Held::Result(r),
                Slot::Consumed => Held::Consumed,
                other => {
                    // `kick` checked the slot; nothing can change it before we run.
                    core.set_slot(other);
                    core.set_running(false);
                    return;
                }
            }
        };
        self.run_held(held);
    }
}

impl<T: 'static> Inner<T> {
    /// The callback loop, with the result it starts from (the slot says `Running`, and
    /// the Deferred is marked running).
    fn run_held(self: Rc<Self>, mut held: Held<T>) {
        // Where the link running now was added: a panic there becomes a Failure created
        // at that place.
        let mut at: &'static Location<'static> = Location::caller();
        // Each call runs in the log context captured when it was added; the context
        // current now is restored when the loop returns, panics included.
        let mut logcontext = Switcher::new();
        // The Deferred whose links run now: a continuation may move the loop on to the
        // Deferred that waited (see `hand_over`).
        let mut current = self;
        loop {
            match crate::panics::caught(|| Inner::run_links(&mut current, held, &mut logcontext, &mut at)) {
                Ok(()) => return,
                Err(panic) => match current.after_panic(Failure::from_panic_at(panic, at)) {
                    Some(h) => held = h,
                    None => return,
                },
            }
        }
    }
}

impl<T: 'static> Inner<T> {
    /// A panic reached the loop. Normally a link panicked while the loop held the
    /// Deferred: its failure goes to the next link. If it came while the loop had let go
    /// of the Deferred (from weft's own code or a destructor during a hand-over), the
    /// failure takes the place of a result that moved on, and the loop goes on only if
    /// it may, as after a hand-over.
    #[cold]
    #[inline(never)]
    fn after_panic(&self, failure: Failure) -> Option<Held<T>> {
        let mut core = self.core.borrow_mut();
        if core.running() && matches!(core.slot, Slot::Running) {
            return Some(Held::Result(Err(failure)));
        }
        if matches!(core.slot, Slot::Consumed) {
            core.set_slot(Slot::Ready(Err(failure)));
        }
        core.take_back()
    }
}

impl<T: 'static> Inner<T> {
    /// Runs links until the chain finishes, pauses or waits, holding the result in a
    /// local between links, so each link costs one borrow: take the link (or stop),
    /// release, call. On return the slot and `running` are up to date.
    ///
    /// When the last link of `this` hands the result to a Deferred that waited on it,
    /// the loop goes on with that Deferred's links (`this` becomes it), as Twisted's
    /// `_runCallbacks` does with its chain of waiting Deferreds: the result goes straight
    /// into the next link, with no loop started and no slot written and read back.
    fn run_links(
        this: &mut Rc<Self>,
        mut held: Held<T>,
        logcontext: &mut Switcher,
        running_at: &mut &'static Location<'static>,
    ) {
        // While debugging: an errback here that recovered from its invoker's cancel (and
        // where it was added), reported if the loop stops with a value.
        let mut swallowed: Option<(&'static Location<'static>, crate::CancelledError)> = None;
        loop {
            let link = {
                let mut core = this.core.borrow_mut();
                let (head, paused) = (core.head as usize, core.paused());
                let next = match core.links.get_mut(head) {
                    Some(next) if paused == 0 => Option::take(next),
                    _ => {
                        if let Some((at, cancel)) = swallowed.take() {
                            if matches!(held, Held::Result(Ok(_))) {
                                outcome::report_swallowed(at, &cancel);
                            }
                        }
                        core.set_slot(held.into_slot());
                        core.set_running(false);
                        let dead = core.compact();
                        drop(core);
                        drop(dead);
                        return;
                    }
                };
                core.head += 1;
                next
            };
            // The arms are written out in full on purpose: sharing the `absorb` tail of
            // `Call` and `Collect`, or one arm for both continuations, lays the loop out
            // worse (callgrind: chain 375 -> 426-438 instructions per callback).
            match link {
                Some(Link::Call(f, captured, at)) => {
                    *running_at = at;
                    logcontext.enter(&captured, at);
                    let next = if is_debugging() {
                        this.run_debugged(f, held.into_input(), &captured, at, &mut swallowed)
                    } else {
                        f.call(held.into_input())
                    };
                    match this.absorb(next, true) {
                        Some(h) => held = h,
                        None => return,
                    }
                }
                Some(Link::Collect(collector, index)) => {
                    let next = match collector.collect(index, held.into_input()) {
                        Ok(next) => next,
                        Err(failure) => {
                            this.mark_handled(&failure);
                            Next::Ready(Err(failure))
                        }
                    };
                    match this.absorb(next, true) {
                        Some(h) => held = h,
                        None => return,
                    }
                }
                Some(Link::Continue(outer)) => match this.hand_over(&outer, held) {
                    HandOver::Stay(h) => held = h,
                    HandOver::Stop => return,
                    HandOver::Move(h) => {
                        // What this Deferred's errbacks recovered from is not the outer
                        // chain's concern (as when the outer chain ran a loop of its own).
                        swallowed = None;
                        *this = outer;
                        held = h;
                    }
                },
                Some(Link::ContinueWeakly(outer)) => {
                    // If the outer Deferred was freed, nobody can see its outcome: the
                    // result stays here.
                    if let Some(outer) = outer.upgrade() {
                        match this.hand_over(&outer, held) {
                            HandOver::Stay(h) => held = h,
                            HandOver::Stop => return,
                            HandOver::Move(h) => {
                                swallowed = None;
                                *this = outer;
                                held = h;
                            }
                        }
                    }
                }
                Some(Link::Chain(target, at)) => held = chain_to(target, held.into_input(), at),
                None => unreachable!("a link runs once"),
            }
        }
    }
}

impl<T: 'static> Inner<T> {
    /// Runs one callback while debugging: notes an errback recovering from a cancel that
    /// passed through this Deferred (in `swallowed`), and warns if the callback leaves a
    /// log context other than its own current.
    #[cold]
    #[inline(never)]
    fn run_debugged(
        &self,
        f: Call<T>,
        input: Result<T, Failure>,
        captured: &Captured,
        at: &'static Location<'static>,
        swallowed: &mut Option<(&'static Location<'static>, crate::CancelledError)>,
    ) -> Next<T> {
        let passed = self.core.borrow().cold.as_ref().and_then(|c| c.extra.as_ref()).map_or(0, |x| x.passed);
        let cancel = outcome::invoker_cancel(&input, passed);
        let next = f.call(input);
        match &next {
            Next::Ready(Ok(_)) => {
                if let Some(cancel) = cancel {
                    *swallowed = Some((at, cancel));
                }
            }
            Next::Ready(Err(_)) => *swallowed = None,
            Next::Wait(_) | Next::Consumed => {}
        }
        outcome::check_leak(captured, at);
        next
    }
}

impl<T: 'static> Inner<T> {
    /// A continuation link: hands the result to `outer`, which waited on this Deferred.
    /// As in Twisted, this loop lets go of this Deferred first (the result is gone, the
    /// slot says `Consumed`), so a step that `outer`'s chain adds here runs at once in a
    /// loop of its own rather than after `outer`'s chain. Says what the loop does next:
    /// go on here, stop, or (this was the last link, and `outer` waits, unpaused, with no
    /// loop of its own) move on to `outer`'s links with the result.
    fn hand_over(self: &Rc<Self>, outer: &Rc<Inner<T>>, held: Held<T>) -> HandOver<T> {
        let last = {
            let mut core = self.core.borrow_mut();
            core.set_slot(Slot::Consumed);
            core.set_running(false);
            !core.has_links_to_run()
        };
        if last {
            let dead = self.core.borrow_mut().compact();
            drop(dead);
            if let Some(waited) = outer.take_over() {
                // The hold on this Deferred goes, outside the borrow.
                drop(waited);
                // What `resume` would give it: a result consumed here is an error there.
                return HandOver::Move(Held::Result(held.into_input()));
            }
        }
        // User code runs only in the loops this starts, which catch their own panics;
        // anything else that unwinds from here is handled by `after_panic`.
        outer.resume(held.into_input());
        if last {
            // Whatever was added meanwhile was run by a loop of its own (every change
            // that lets a Deferred run starts its loop), so this loop has nothing left.
            return HandOver::Stop;
        }
        // Loops started meanwhile (for steps added here) may have moved the slot on: it
        // may hold a result, or wait on another Deferred. Take it from there.
        let mut core = self.core.borrow_mut();
        let held = core.take_back();
        if held.is_none() {
            let dead = core.compact();
            drop(core);
            drop(dead);
        }
        held.map_or(HandOver::Stop, HandOver::Stay)
    }

    /// For a loop handing this Deferred the result it waits for: if it waits, is not
    /// paused and has no loop of its own, marks it running for that loop and returns
    /// the slot that held what it waited on (for the caller to drop outside the borrow).
    fn take_over(&self) -> Option<Slot<T>> {
        let mut core = self.core.borrow_mut();
        if !core.slot.is_waiting() || !core.is_idle() {
            return None;
        }
        core.set_running(true);
        Some(mem::replace(&mut core.slot, Slot::Running))
    }
}

impl<T: 'static> Inner<T> {
    /// Remembers `failure` as handled here (see [`Consuming`]).
    fn mark_handled(&self, failure: &Failure) {
        let previous = self.core.borrow_mut().cold_mut().handled.replace(failure.clone());
        drop(previous);
    }
}

/// What a callback loop does after a continuation link (see [`Inner::hand_over`]).
enum HandOver<T: 'static> {
    /// Go on with this Deferred's links, with this result.
    Stay(Held<T>),
    /// Stop: nothing left to run here, or another loop took over.
    Stop,
    /// Go on with the links of the Deferred that waited, with this result.
    Move(Held<T>),
}

/// A `chain_deferred` step (added at `at`): fires the target with `input`; what this
/// chain goes on with.
fn chain_to<T: 'static>(
    target: ChainTarget<T>,
    input: Result<T, Failure>,
    at: &'static Location<'static>,
) -> Held<T> {
    let target = match target {
        ChainTarget::Owned(t) => t,
        ChainTarget::Reached(w) => match w.upgrade() {
            Some(t) => t,
            // Freed: nobody can see the target's outcome, so the result stays here.
            None => return Held::Result(input),
        },
    };
    // A forward reference: no cancel handle is made for the fire.
    match target.fire_at(Next::Ready(input), at) {
        Ok(()) => Held::Consumed,
        Err(Next::Ready(Ok(v))) => Held::Result(Err(Failure::new_at(target.already_called(v, at), at))),
        Err(Next::Ready(Err(f))) => Held::Result(Err(Failure::new_at(target.already_called(f, at), at))),
        Err(_) => unreachable!("fire hands back what it was given"),
    }
}

impl<T: 'static> Drop for Inner<T> {
    fn drop(&mut self) {
        Inner::drop_parts(Inner::take_parts(self.core.get_mut()));
    }
}

/// What a Deferred owns, taken out of it to be dropped (see [`Inner::take_parts`]).
type Parts<T> = (Links<T>, Option<Box<cancel::Cold<T>>>, Slot<T>);

impl<T: 'static> Inner<T> {
    /// The last strong reference to this Deferred (`self`, or a clone of it held for
    /// the call) is going: if no weak one can reach it any more and the thread's free
    /// list has room, keeps it for reuse.
    #[inline]
    pub(super) fn reuse_if_unreached(self: &Rc<Self>) {
        if Rc::weak_count(self) == 0 && free_list::has_room(free_list::cost_of::<Inner<T>>()) {
            self.recycle();
        }
    }

    /// [`reuse_if_unreached`](Self::reuse_if_unreached) once it may: drops what the
    /// Deferred owns, as `Drop` would, and keeps it emptied for a later
    /// [`Deferred::new`] (see `free_list.rs`).
    #[inline(never)]
    fn recycle(self: &Rc<Self>) {
        // Borrowed (a drop from inside weft's own bookkeeping): freed as before.
        let Ok(mut core) = self.core.try_borrow_mut() else { return };
        let owns_nothing = core.links.is_empty()
            && !core.links.spilled()
            && core.cold.is_none()
            && match core.slot {
                Slot::Pending | Slot::Running | Slot::Consumed => true,
                Slot::Ready(Ok(_)) => !mem::needs_drop::<T>(),
                _ => false,
            };
        if owns_nothing {
            // The slot holds nothing to drop (checked above).
            mem::forget(mem::replace(&mut core.slot, Slot::Consumed));
            drop(core);
        } else {
            let parts = Inner::take_parts(&mut core);
            drop(core);
            Inner::drop_parts(parts);
        }
        free_list::give_sized(self);
    }

    /// Takes out of `core` everything that owns anything, reporting an unhandled
    /// failure; what is left owns nothing and is not dropped (see `Inner::core`).
    #[inline(always)]
    fn take_parts(core: &mut Core<T>) -> Parts<T> {
        if let Slot::Ready(Err(f)) = &core.slot {
            if core.is_unhandled(f) {
                log::error!("Unhandled error in Deferred created at {}: {f}", At(core.created_at));
            }
        }
        let links = mem::take(&mut core.links);
        let cold = core.cold.take();
        let slot = mem::replace(&mut core.slot, Slot::Consumed);
        (links, cold, slot)
    }

    /// Drops what [`take_parts`](Self::take_parts) took, skipping the calls to drop glue
    /// when there is nothing to drop.
    #[inline(always)]
    fn drop_parts((links, cold, slot): Parts<T>) {
        let holds_value = matches!(slot, Slot::Ready(Ok(_))) && mem::needs_drop::<T>();
        if !links.is_empty() || links.spilled() || cold.is_some() || holds_value {
            run::drop_bounded((links, cold, slot));
        } else if matches!(slot, Slot::Pending | Slot::Running | Slot::Consumed | Slot::Ready(Ok(_))) {
            // Nothing to drop (a value here needs no drop, checked above).
            mem::forget((links, slot));
        } else {
            mem::forget(links);
            drop(slot);
        }
    }
}

impl<T: 'static> Default for Deferred<T> {
    #[track_caller]
    fn default() -> Self {
        Deferred::new()
    }
}

impl<T: 'static> fmt::Debug for Deferred<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = match self.inner.core.try_borrow() {
            Ok(core) => core,
            Err(_) => return f.write_str("Deferred { <busy> }"),
        };
        let state = match &core.slot {
            Slot::Pending => "pending",
            Slot::Waiting(_) | Slot::WaitingWeakly(_) => "waiting",
            Slot::Ready(Ok(_)) => "ready(value)",
            Slot::Ready(Err(_)) => "ready(failure)",
            Slot::Running => "running",
            Slot::Consumed => "consumed",
        };
        f.debug_struct("Deferred")
            .field("created_at", &At(core.created_at))
            .field("state", &state)
            .field("links_to_run", &(core.links.len() - core.head as usize))
            .field("paused", &core.paused())
            .finish()
    }
}

/// A Deferred that already has `value` (Twisted's `succeed`).
#[track_caller]
pub fn succeed<T: 'static>(value: T) -> Deferred<T> {
    let d = Deferred::new();
    d.inner.core.borrow_mut().set_slot(Slot::Ready(Ok(value)));
    d
}

/// A Deferred that already has `failure` (Twisted's `fail`).
#[track_caller]
pub fn fail<T: 'static>(failure: impl Into<Failure>) -> Deferred<T> {
    let d = Deferred::new();
    d.inner.core.borrow_mut().set_slot(Slot::Ready(Err(failure.into())));
    d
}

/// Calls `f` and wraps what it returns in a Deferred (Twisted's `maybeDeferred`): a value
/// or `Ok` becomes a fired Deferred, an `Err` or a panic a failed one, and a Deferred is
/// returned as it is.
///
/// ```
/// let d: weft::Deferred<u8> = weft::maybe_deferred(|| -> Result<u8, weft::Failure> { Ok(3) });
/// assert_eq!(d.result().unwrap().unwrap(), 3);
/// let p: weft::Deferred<u8> = weft::maybe_deferred(|| -> u8 { panic!("boom") });
/// assert!(p.take_result().unwrap().unwrap_err().check::<weft::PanicError>());
/// ```
#[track_caller]
pub fn maybe_deferred<T, F, R>(f: F) -> Deferred<T>
where
    T: 'static,
    F: FnOnce() -> R,
    R: CallbackResult<T>,
{
    match crate::panics::catching(|| f().into_next()) {
        Ok(Next::Ready(r)) => {
            let d = Deferred::new();
            d.inner.core.borrow_mut().set_slot(Slot::Ready(r));
            d
        }
        Ok(Next::Wait(d)) => d,
        Ok(Next::Consumed) => fail(ResultConsumedError),
        Err(failure) => fail(failure),
    }
}
