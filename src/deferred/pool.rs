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
//! Bound: at most [`BUDGET`] bytes of free Deferreds per thread, all value types
//! together; past it a Deferred is freed as before. [`trim_deferred_pool`] frees them
//! all (after a burst, say); a thread's list is freed when the thread ends.
//!
//! [`Deferred::new`]: super::Deferred::new

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::mem;
use std::rc::Rc;

use super::Inner;

/// How many bytes of free Deferreds a thread keeps, all value types together: 2 MiB,
/// some 16,000 Deferreds of a word-sized value.
pub(super) const BUDGET: usize = 2 << 20;

thread_local! {
    /// Bytes held in `LISTS` (no destructor: readable to the end of the thread).
    static HELD: Cell<usize> = const { Cell::new(0) };
    /// The free lists: for each value type, a `Vec<Rc<Inner<T>>>` of emptied Deferreds,
    /// each the only reference to its Deferred.
    static LISTS: RefCell<Vec<(TypeId, Box<dyn Any>)>> = const { RefCell::new(Vec::new()) };
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
            let i = match lists.iter().position(|(t, _)| *t == id) {
                Some(i) => i,
                None if create => {
                    lists.push((id, Box::new(Vec::<Rc<Inner<T>>>::new())));
                    lists.len() - 1
                }
                None => return None,
            };
            lists[i].1.downcast_mut::<Vec<Rc<Inner<T>>>>().map(f)
        })
        .ok()
        .flatten()
}

/// A free Deferred of type `T` (emptied, the only reference to it), if the thread
/// keeps one.
#[inline]
pub(super) fn take<T: 'static>() -> Option<Rc<Inner<T>>> {
    if HELD.get() == 0 {
        return None;
    }
    let inner = with_list(false, Vec::pop).flatten()?;
    HELD.set(HELD.get() - cost::<T>());
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
/// When the last handle to a Deferred is dropped, weft keeps its memory, up to 2 MiB per
/// thread, and the next [`Deferred::new`](crate::Deferred::new) on the thread reuses it:
/// making and dropping Deferreds in bulk then skips the allocator. Call this after a
/// burst to give that memory back at once; otherwise it is freed when the thread ends.
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
        // Emptied Deferreds own nothing: dropping them runs no user code.
        drop(lists);
    }
}

/// Bytes of free Deferreds this thread keeps (for tests).
#[cfg(test)]
pub(super) fn held() -> usize {
    HELD.get()
}
