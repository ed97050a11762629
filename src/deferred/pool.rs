//! A per-thread free list of Deferreds, one list per value type, so that a program that
//! makes and drops many Deferreds at once reuses their memory instead of going through
//! the allocator each time.
//!
//! Why: a Deferred is one heap block (its `Rc`). Made in bulk and dropped in bulk (a
//! fan-out, a gather, a deep chain, a burst of requests), those blocks overflow glibc's
//! small per-thread cache and go through its general path, which costs several hundred
//! instructions per block and cache misses besides (callgrind: 350 of the 1,050
//! instructions of a nested level at 10,000 levels were `malloc` and `free`).
//!
//! How, without `unsafe`: the memory is never handed back to the allocator, so it never
//! has to be reinterpreted. When the last strong reference to a Deferred goes and it is
//! a public handle or a [`DeferredRef`](super::DeferredRef), and no weak reference is
//! left (none can then upgrade to a Deferred that became another), the Deferred is
//! emptied as its `Drop` would empty it (its links, cold part and result dropped, an
//! unhandled failure reported) and its `Rc` is kept here. [`Deferred::new`] takes one
//! back and resets it. Deferreds freed another way (their last reference a waiting
//! link or a combinator's hold) are freed as before.
//!
//! Bound: at most [`BUDGET`] bytes of free Deferreds per thread (16 MiB), all value
//! types together; past it a Deferred is freed as before. A reactor running on the
//! thread gives back what its Deferreds left unused: once a turn it watches the list
//! ([`Decay`]), and when the least the list held over a second exceeded [`KEEP`]
//! (256 KiB), it frees the excess, so a burst that comes back within the second keeps its
//! memory and one that does not gives it back. [`trim_deferred_pool`] frees them all at
//! once (after a burst, on a thread with no reactor, say); a thread's lists are freed
//! when the thread ends.
//!
//! [`Deferred::new`]: super::Deferred::new

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::mem;
use std::rc::Rc;
use std::time::Duration;

use super::Inner;

/// How many bytes of free Deferreds a thread keeps, all value types together: 16 MiB,
/// some 130,000 Deferreds of a word-sized value.
pub(super) const BUDGET: usize = 16 << 20;

/// How many bytes of free Deferreds a reactor leaves however long they go unused:
/// 256 KiB, some 2,000 Deferreds of a word-sized value.
pub(crate) const KEEP: usize = 256 << 10;

/// How long free Deferreds may stay unused before a reactor frees them (short in unit
/// tests).
const IDLE_AFTER: Duration = if cfg!(test) { Duration::from_millis(20) } else { Duration::from_secs(1) };

/// A thread's free list of one value type: the emptied Deferreds, and how to free some
/// of them without knowing the type.
struct List {
    id: TypeId,
    /// A `Vec<Rc<Inner<T>>>`: each the only reference to its Deferred.
    kept: Box<dyn Any>,
    /// Frees free Deferreds from `kept` until about the bytes asked for are freed;
    /// returns the bytes freed.
    release: fn(&mut dyn Any, usize) -> usize,
}

thread_local! {
    /// Bytes held in `LISTS` (no destructor: readable to the end of the thread).
    static HELD: Cell<usize> = const { Cell::new(0) };
    /// The least `HELD` has been since a reactor's [`Decay`] began to watch.
    static LOW: Cell<usize> = const { Cell::new(0) };
    /// The free lists, one per value type.
    static LISTS: RefCell<Vec<List>> = const { RefCell::new(Vec::new()) };
}

/// What one free Deferred of type `T` holds: its `Rc`'s block (the two counts and the
/// Deferred).
const fn cost<T: 'static>() -> usize {
    mem::size_of::<Inner<T>>() + 2 * mem::size_of::<usize>()
}

/// Runs `f` on the thread's free list for `Inner<T>`, making the list if `create`;
/// `None` if there is none, or the thread is ending.
#[inline(always)]
fn with_list<T: 'static, R>(create: bool, f: impl FnOnce(&mut Vec<Rc<Inner<T>>>) -> R) -> Option<R> {
    LISTS
        .try_with(|lists| {
            let mut lists = lists.try_borrow_mut().ok()?;
            let id = TypeId::of::<Inner<T>>();
            let i = match lists.iter().position(|l| l.id == id) {
                Some(i) => i,
                None if create => {
                    let kept = Box::new(Vec::<Rc<Inner<T>>>::new());
                    lists.push(List { id, kept, release: release::<T> });
                    lists.len() - 1
                }
                None => return None,
            };
            lists[i].kept.downcast_mut::<Vec<Rc<Inner<T>>>>().map(f)
        })
        .ok()
        .flatten()
}

/// A [`List`]'s `release` for `Inner<T>`.
fn release<T: 'static>(kept: &mut dyn Any, want: usize) -> usize {
    let Some(kept) = kept.downcast_mut::<Vec<Rc<Inner<T>>>>() else { return 0 };
    let n = want.div_ceil(cost::<T>()).min(kept.len());
    // Emptied Deferreds own nothing: dropping them runs no user code.
    kept.truncate(kept.len() - n);
    if kept.is_empty() {
        *kept = Vec::new();
    }
    n * cost::<T>()
}

/// A free Deferred of type `T` (emptied, the only reference to it), if the thread
/// keeps one.
#[inline]
pub(super) fn take<T: 'static>() -> Option<Rc<Inner<T>>> {
    if HELD.get() == 0 {
        return None;
    }
    let inner = with_list(false, Vec::pop).flatten()?;
    let held = HELD.get() - cost::<T>();
    HELD.set(held);
    if held < LOW.get() {
        LOW.set(held);
    }
    Some(inner)
}

/// True if the thread would keep one more free Deferred of type `T`.
#[inline]
pub(super) fn has_room<T: 'static>() -> bool {
    HELD.get() + cost::<T>() <= BUDGET
}

/// Keeps a clone of `inner` (emptied; with the clone gone, its only strong reference,
/// and no weak one) for a later [`take`]. Does nothing if the thread is ending.
#[inline]
pub(super) fn give<T: 'static>(inner: &Rc<Inner<T>>) {
    debug_assert!(Rc::weak_count(inner) == 0, "a Deferred with a weak reference is not reused");
    if with_list(true, |list: &mut Vec<Rc<Inner<T>>>| list.push(inner.clone())).is_some() {
        HELD.set(HELD.get() + cost::<T>());
    }
}

/// Frees the Deferreds this thread keeps for reuse.
///
/// When the last handle to a Deferred is dropped, weft keeps its memory, up to 16 MiB per
/// thread, and the next [`Deferred::new`](crate::Deferred::new) on the thread reuses it:
/// making and dropping Deferreds in bulk then skips the allocator. A reactor running on
/// the thread frees what stays unused for a second, beyond 256 KiB. Call this to give it
/// all back at once (on a thread with no reactor, say); otherwise it is freed when the
/// thread ends.
///
/// ```
/// let ds: Vec<weft::Deferred<u32>> = (0..100).map(|_| weft::Deferred::new()).collect();
/// drop(ds); // kept for reuse
/// weft::trim_deferred_pool(); // freed
/// ```
pub fn trim_deferred_pool() {
    let lists = LISTS.try_with(|lists| lists.try_borrow_mut().map(|mut l| mem::take(&mut *l)).ok());
    if let Ok(Some(lists)) = lists {
        HELD.set(0);
        LOW.set(0);
        // Emptied Deferreds own nothing: dropping them runs no user code.
        drop(lists);
    }
}

/// A reactor's watch over its thread's free lists: gives back what stayed unused.
#[derive(Debug, Default)]
pub(crate) struct Decay {
    /// When the watch began (while the lists hold more than [`KEEP`]).
    since: Cell<Option<Duration>>,
}

impl Decay {
    /// Called once a turn, with the reactor's time (read only while the lists hold more
    /// than [`KEEP`]): once [`IDLE_AFTER`] has passed since the watch began, frees what
    /// the lists held all that time beyond `KEEP` (the least they held, less `KEEP`).
    pub(crate) fn release_idle(&self, now: impl FnOnce() -> Duration) {
        match self.since.get() {
            None => {
                if HELD.get() > KEEP {
                    self.since.set(Some(now()));
                    LOW.set(HELD.get());
                }
            }
            Some(since) => {
                if now().saturating_sub(since) < IDLE_AFTER {
                    return;
                }
                self.since.set(None);
                release_bytes(LOW.get().saturating_sub(KEEP));
            }
        }
    }
}

/// Frees about `want` bytes of free Deferreds (at least that much, if held).
fn release_bytes(mut want: usize) {
    if want == 0 {
        return;
    }
    let _ = LISTS.try_with(|lists| {
        let Ok(mut lists) = lists.try_borrow_mut() else { return };
        for list in lists.iter_mut() {
            let freed = (list.release)(&mut *list.kept, want);
            HELD.set(HELD.get().saturating_sub(freed));
            want = want.saturating_sub(freed);
            if want == 0 {
                break;
            }
        }
    });
    LOW.set(LOW.get().min(HELD.get()));
}

/// Bytes of free Deferreds this thread keeps (for tests).
#[cfg(test)]
pub(super) fn held() -> usize {
    HELD.get()
}
