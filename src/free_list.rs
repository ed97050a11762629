//! Per-thread free lists of reference-counted blocks, one list per type: a Deferred
//! (`deferred/mod.rs`) and a scheduled call (`reactor/timers.rs`) whose last reference
//! goes is emptied and kept here, and the next one of its type made on the thread reuses
//! it instead of going through the allocator.
//!
//! Why: made in bulk and dropped in bulk (a fan-out, a gather, a deep chain, a burst of
//! timers or requests), those blocks overflow glibc's small per-thread cache and go
//! through its general path, which costs several hundred instructions per block and
//! cache misses besides (callgrind: 350 of the 1,050 instructions of a nested level at
//! 10,000 levels were `malloc` and `free`); and glibc gives the top of its heap back to
//! the system after a bulk free and faults it in again for the next burst, which
//! doubled the timer rows' cost past 10,000 timers.
//!
//! How, without `unsafe`: the block is never handed back to the allocator, so it never
//! has to be reinterpreted. A list keeps the `Rc` itself, emptied, as the only reference
//! to it (no other strong one, and no weak one: nothing can reach it but the list), and
//! hands it back to be refilled by the same type. The owners decide what "emptied"
//! means and when a block may be kept (see `Inner::recycle` and `timers::reuse_if_last`).
//!
//! A block of a sized type (a Deferred) is kept as an `Rc<dyn Any>`, so keeping it needs
//! no type check (the list is found by its `TypeId`); taking it back checks its type
//! (`Rc::downcast`). Keeping it in a `Vec<Rc<X>>` reached through `downcast_mut` cost a
//! check at both ends, and the one in the drop path cost a fan-out about 10 ns per
//! observer (`peer_bench fanout`, 45 -> 35 ns at 10,000 observers). A block of an
//! unsized type (a scheduled call, `Rc<Call<dyn ...>>`) cannot be an `Rc<dyn Any>`: its
//! list is a `Vec<Rc<X>>` behind a `Box<dyn Any>`.
//!
//! The thread also keeps emptied vectors ([`give_buffer`], [`take_buffer`]): a timer
//! wheel's slot that grew to thousands of entries in a burst, once emptied, is kept, and
//! the next slot (of any wheel on the thread) about to grow that large takes it instead
//! of growing by reallocation; a combinator's list of members and of their results, made
//! for thousands of members and let go of when it fires, serves the next one. Only
//! vectors of 128 KiB (smaller ones glibc serves from its bins) to a quarter of the
//! bound below (4 MiB; 32 MiB under a watch), at most half of it in all, and a vector
//! goes only to one that needs at least a quarter of it (a larger kept one makes
//! smaller ones go when they are at that half).
//!
//! Bound: at most [`BUDGET`] bytes per thread (16 MiB), all types together; past it a
//! block is freed as before. A reactor running on the thread gives back what stays
//! unused: once a turn it watches the lists ([`Decay`]), and when the least they held
//! over a second exceeded [`KEEP`] (256 KiB), it frees the excess, so a burst that comes
//! back within the second keeps its memory and one that does not gives it back.
//! While such a watch exists on the thread (a reactor, or a test `Clock`, which watches
//! at each `advance`), the bound is [`WATCHED_BUDGET`] (128 MiB, a million scheduled
//! calls): what the watch does not free within a second is only what a burst that
//! came back within that second used again. When the thread's last watch goes, the
//! limit goes back to `BUDGET` and the next block given back frees the excess (not the
//! drop itself: a test or a bench's round that makes its next `Clock` at once finds
//! the blocks the last one left). Past 16 MiB, blocks from glibc cost a
//! million timers a quarter of their time (`malloc_consolidate`, `_int_malloc`,
//! `_int_free` and the page faults of the heap's top, trimmed after each burst).
//! [`trim_free_lists`] frees them all at once (after a burst, on a thread with no
//! reactor, say); a thread's lists are freed when the thread ends.

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::mem;
use std::rc::Rc;
use std::time::Duration;

/// How many bytes of free blocks a thread keeps, all types together: 16 MiB, some
/// 130,000 Deferreds of a word-sized value.
pub(crate) const BUDGET: usize = 16 << 20;

/// How many bytes of free blocks a thread keeps, all types together, while a [`Decay`]
/// watches its lists: 128 MiB, a million scheduled calls of a small callback.
pub(crate) const WATCHED_BUDGET: usize = 128 << 20;

/// How many bytes of free blocks a reactor leaves however long they go unused: 256 KiB,
/// some 2,000 Deferreds of a word-sized value.
pub(crate) const KEEP: usize = 256 << 10;

/// How long free blocks may stay unused before a reactor frees them (short in unit
/// tests).
const IDLE_AFTER: Duration = if cfg!(test) { Duration::from_millis(20) } else { Duration::from_secs(1) };

/// A thread's free list of one type, or its kept vectors of one element type.
struct List {
    /// The type the blocks are kept for (the owner's choice of key), or `Vec<E>` for
    /// vectors of `E`.
    id: TypeId,
    /// The blocks or vectors, each the only reference to its memory.
    kept: Kept,
}

/// What one [`List`] keeps.
enum Kept {
    /// Blocks of a sized type, each an `Rc<X>` (see the module docs).
    Sized(Vec<Rc<dyn Any>>),
    /// Blocks of an unsized type `X`: a `Vec<Rc<X>>`.
    Unsized(Typed),
    /// Empty vectors of element type `E` (see [`give_buffer`]): a `Vec<Vec<E>>`.
    Buffers(Typed),
}

/// A list of a type named only where it is made, and what frees from it.
struct Typed {
    kept: Box<dyn Any>,
    /// Frees until about this many bytes are freed (or all are); returns how many it
    /// freed.
    release: fn(&mut dyn Any, usize) -> usize,
}

impl Kept {
    /// Frees until about `want` bytes are freed (or all are); returns how many it freed.
    fn release(&mut self, want: usize) -> usize {
        match self {
            Kept::Sized(blocks) => release_last(blocks, want, |b| cost_of_val(&**b)),
            Kept::Unsized(t) | Kept::Buffers(t) => (t.release)(&mut *t.kept, want),
        }
    }
}

/// Frees the last of `kept` until `want` bytes are freed (or all are); returns how many
/// it freed. Emptied blocks and empty vectors own nothing: dropping them runs no user
/// code.
fn release_last<B>(kept: &mut Vec<B>, want: usize, bytes: impl Fn(&B) -> usize) -> usize {
    let mut freed = 0;
    while freed < want {
        let Some(b) = kept.pop() else { break };
        freed += bytes(&b);
    }
    if kept.is_empty() {
        *kept = Vec::new();
    }
    freed
}

thread_local! {
    /// Bytes held in `LISTS` (no destructor: readable to the end of the thread).
    static HELD: Cell<usize> = const { Cell::new(0) };
    /// Bytes of `HELD` in kept vectors.
    static BUFFERED: Cell<usize> = const { Cell::new(0) };
    /// The least `HELD` has been since a [`Decay`] began to watch.
    static LOW: Cell<usize> = const { Cell::new(0) };
    /// How many [`Decay`]s exist on the thread (no destructor: readable to the end of
    /// the thread).
    static WATCHES: Cell<usize> = const { Cell::new(0) };
    /// The most `HELD` may reach: [`BUDGET`], or [`WATCHED_BUDGET`] while `WATCHES` is
    /// not zero. Kept apart from `WATCHES` (set where it changes) for [`has_room`], on
    /// every last drop: one load there, where deciding from the count cost about three
    /// instructions more per block given back (callgrind).
    static LIMIT: Cell<usize> = const { Cell::new(BUDGET) };
    /// The free lists, one per type, and the kept vectors, one list per element type.
    static LISTS: RefCell<Vec<List>> = const { RefCell::new(Vec::new()) };
}

/// The smallest vector kept (in bytes): smaller ones come from glibc's bins, cheaply,
/// and the copy into a kept one costs more than growing them (128 KiB is also where
/// glibc starts to map blocks of their own).
const BUFFER_MIN: usize = 128 << 10;

/// The largest vector kept (in bytes): a quarter of the limit, 4 MiB (32 MiB under a
/// watch: a million timers' wheel slots of 262,144 entries and their cascades, which
/// glibc would map, fault in and unmap again each burst; with the 4 MiB cap a million
/// timers cost 82.6 ns each against 73.0, `peer_bench timers`).
fn buffer_max() -> usize {
    LIMIT.get() / 4
}

/// The most all kept vectors may hold together (in bytes), half the limit: the rest
/// stays for the blocks of the free lists.
fn buffers_max() -> usize {
    LIMIT.get() / 2
}

/// What an `Rc<X>` of a sized `X` holds: its block (the two counts and the value).
pub(crate) const fn cost_of<X>() -> usize {
    mem::size_of::<X>() + 2 * mem::size_of::<usize>()
}

/// [`cost_of`] for the value `x` (of a type that may be unsized).
pub(crate) fn cost_of_val<X: ?Sized>(x: &X) -> usize {
    mem::size_of_val(x) + 2 * mem::size_of::<usize>()
}

/// What a kept vector of `E` holds, in bytes.
fn bytes_of<E>(v: &Vec<E>) -> usize {
    v.capacity() * mem::size_of::<E>()
}

/// Runs `f` on the thread's list for `id`, making it with `make` if there is none and
/// `make` is given; `None` if there is none, or the thread is ending.
#[inline(always)]
fn with_list<R>(id: TypeId, make: Option<fn() -> Kept>, f: impl FnOnce(&mut Kept) -> R) -> Option<R> {
    LISTS
        .try_with(|lists| {
            let mut lists = lists.try_borrow_mut().ok()?;
            let i = match lists.iter().position(|l| l.id == id) {
                Some(i) => i,
                None => {
                    lists.push(List { id, kept: make?() });
                    lists.len() - 1
                }
            };
            Some(f(&mut lists[i].kept))
        })
        .ok()
        .flatten()
}

/// An empty list of blocks of the sized type (see [`Kept`]).
fn sized_list() -> Kept {
    Kept::Sized(Vec::new())
}

/// An empty list of blocks of the unsized type `X` (see [`Kept`]).
fn unsized_list<X: ?Sized + 'static>() -> Kept {
    fn release<X: ?Sized + 'static>(kept: &mut dyn Any, want: usize) -> usize {
        let Some(kept) = kept.downcast_mut::<Vec<Rc<X>>>() else { return 0 };
        release_last(kept, want, |b| cost_of_val(&**b))
    }
    Kept::Unsized(Typed { kept: Box::new(Vec::<Rc<X>>::new()), release: release::<X> })
}

/// An empty list of vectors of `E` (see [`Kept`]).
fn buffer_list<E: 'static>() -> Kept {
    /// Frees the largest first.
    fn release<E: 'static>(kept: &mut dyn Any, want: usize) -> usize {
        let Some(kept) = kept.downcast_mut::<Vec<Vec<E>>>() else { return 0 };
        kept.sort_unstable_by_key(Vec::capacity);
        release_last(kept, want, bytes_of)
    }
    Kept::Buffers(Typed { kept: Box::new(Vec::<Vec<E>>::new()), release: release::<E> })
}

/// A free block kept for `id` (emptied, the only reference to it), if the thread keeps
/// one; `cost` is what it holds.
#[inline]
pub(crate) fn take<X: ?Sized + 'static>(id: TypeId, cost: usize) -> Option<Rc<X>> {
    take_from(id, cost, |kept| match kept {
        Kept::Unsized(t) => t.kept.downcast_mut::<Vec<Rc<X>>>()?.pop(),
        _ => None,
    })
}

/// What `pick` takes from the thread's list for `id`, counted as `cost` bytes taken.
#[inline(always)]
fn take_from<B>(id: TypeId, cost: usize, pick: impl FnOnce(&mut Kept) -> Option<B>) -> Option<B> {
    if HELD.get() == 0 {
        return None;
    }
    let block = with_list(id, None, pick).flatten()?;
    taken(cost);
    Some(block)
}

/// Counts `bytes` taken from the lists.
#[inline]
fn taken(bytes: usize) {
    let held = HELD.get() - bytes;
    HELD.set(held);
    if held < LOW.get() {
        LOW.set(held);
    }
}

/// [`take`] for a sized type kept under its own `TypeId`.
#[inline]
pub(crate) fn take_sized<X: 'static>() -> Option<Rc<X>> {
    take_from(TypeId::of::<X>(), cost_of::<X>(), |kept| match kept {
        // Kept under `X`'s `TypeId`, so of type `X`.
        Kept::Sized(blocks) => blocks.pop()?.downcast::<X>().ok(),
        _ => None,
    })
}

/// [`give`] for a sized type kept under its own `TypeId`, with no type check (see the
/// module docs).
#[inline]
pub(crate) fn give_sized<X: 'static>(block: &Rc<X>) {
    debug_assert!(Rc::weak_count(block) == 0, "a block with a weak reference is not reused");
    let kept = with_list(TypeId::of::<X>(), Some(sized_list), |kept| match kept {
        Kept::Sized(blocks) => blocks.push(block.clone()),
        _ => debug_assert!(false, "a sized type's list holds sized blocks"),
    });
    if kept.is_some() {
        HELD.set(HELD.get() + cost_of::<X>());
    }
}

/// True if the thread would keep one more block of `cost` bytes.
#[inline]
pub(crate) fn has_room(cost: usize) -> bool {
    if HELD.get() + cost <= LIMIT.get() {
        return true;
    }
    shed();
    false
}

/// Frees what the lists hold beyond their limit: what they kept under a watch that has
/// since gone (see [`Decay`]'s `drop`).
#[cold]
fn shed() {
    release_bytes(HELD.get().saturating_sub(LIMIT.get()));
}

/// Keeps a clone of `block` (emptied; with the clone gone, its only strong reference,
/// and no weak one) for a later [`take`] of `id`. Does nothing if the thread is ending.
#[inline]
pub(crate) fn give<X: ?Sized + 'static>(id: TypeId, cost: usize, block: &Rc<X>) {
    debug_assert!(Rc::weak_count(block) == 0, "a block with a weak reference is not reused");
    let kept = with_list(id, Some(unsized_list::<X>), |kept| match kept {
        Kept::Unsized(t) => t.kept.downcast_mut::<Vec<Rc<X>>>().map(|list| list.push(block.clone())),
        _ => None,
    });
    if kept.flatten().is_some() {
        HELD.set(HELD.get() + cost);
    }
}

/// Keeps `v`'s memory (it must be empty: a vector with elements is simply dropped) for a
/// later [`take_buffer`] of its element type, within the thread's budget: a vector that
/// fills up in bulk (a timer wheel's slot in a burst, say) then takes it rather than
/// growing by reallocation into memory that glibc gave back, and faulting it in again.
pub(crate) fn give_buffer<E: 'static>(v: Vec<E>) {
    let bytes = bytes_of(&v);
    if !v.is_empty() || !(BUFFER_MIN..=buffer_max()).contains(&bytes) || !has_room(bytes) {
        return;
    }
    with_list(TypeId::of::<Vec<E>>(), Some(buffer_list::<E>), |kept| {
        let Kept::Buffers(t) = kept else { return };
        let Some(kept) = t.kept.downcast_mut::<Vec<Vec<E>>>() else { return };
        // Full: smaller kept vectors of this type make way for a larger one.
        while BUFFERED.get() + bytes > buffers_max() {
            let Some(smallest) = (0..kept.len()).min_by_key(|&j| kept[j].capacity()) else { return };
            if kept[smallest].capacity() >= v.capacity() {
                return;
            }
            // Empty vectors: dropping them runs no user code.
            buffered_taken(bytes_of(&kept.swap_remove(smallest)));
        }
        kept.push(v);
        HELD.set(HELD.get() + bytes);
        BUFFERED.set(BUFFERED.get() + bytes);
    });
}

/// The smallest kept empty vector of element type `E` with room for at least `room`
/// elements and no more than four times that, if the thread keeps one (see
/// [`give_buffer`]).
pub(crate) fn take_buffer<E: 'static>(room: usize) -> Option<Vec<E>> {
    if (4 * room).saturating_mul(mem::size_of::<E>()) < BUFFER_MIN || HELD.get() == 0 {
        return None;
    }
    let v = with_list(TypeId::of::<Vec<E>>(), None, |kept| {
        let Kept::Buffers(t) = kept else { return None };
        let kept = t.kept.downcast_mut::<Vec<Vec<E>>>()?;
        // Among equals, the one kept last: the most likely still in cache.
        let fits = (0..kept.len()).rev().filter(|&j| (room..=4 * room).contains(&kept[j].capacity()));
        let best = fits.min_by_key(|&j| kept[j].capacity())?;
        Some(kept.swap_remove(best))
    })
    .flatten()?;
    buffered_taken(bytes_of(&v));
    Some(v)
}

/// Counts `bytes` of kept vectors taken (or freed) from the lists.
fn buffered_taken(bytes: usize) {
    taken(bytes);
    BUFFERED.set(BUFFERED.get() - bytes);
}

/// Frees the Deferreds and scheduled calls this thread keeps for reuse.
///
/// When the last handle to a Deferred is dropped, or a call scheduled with `call_later`
/// has run or been cancelled and its last handle is dropped, weft keeps its memory, up to
/// 16 MiB per thread (128 MiB while a reactor or a [`Clock`](crate::Clock) exists on
/// it), and the next [`Deferred::new`](crate::Deferred::new) (or call
/// scheduled) of the same type on the thread reuses it: making and dropping them in bulk
/// then skips the allocator. A reactor running on the thread frees what stays unused for
/// a second, beyond 256 KiB. Call this to give it all back at once (on a thread with no
/// reactor, say); otherwise it is freed when the thread ends.
///
/// ```
/// let ds: Vec<weft::Deferred<u32>> = (0..100).map(|_| weft::Deferred::new()).collect();
/// drop(ds); // kept for reuse
/// weft::trim_free_lists(); // freed
/// ```
pub fn trim_free_lists() {
    let lists = LISTS.try_with(|lists| lists.try_borrow_mut().map(|mut l| mem::take(&mut *l)).ok());
    if let Ok(Some(lists)) = lists {
        HELD.set(0);
        BUFFERED.set(0);
        LOW.set(0);
        // Emptied blocks and empty vectors own nothing: dropping them runs no user code.
        drop(lists);
    }
}

/// A reactor's (or a `Clock`'s) watch over its thread's free lists: gives back what
/// stayed unused. While one exists on the thread, the lists may hold up to
/// [`WATCHED_BUDGET`].
#[derive(Debug)]
pub(crate) struct Decay {
    /// When the watch began (while the lists hold more than [`KEEP`]).
    since: Cell<Option<Duration>>,
}

impl Drop for Decay {
    /// With the thread's last watch gone, the limit is [`BUDGET`] again; the next block
    /// given back frees the excess (see [`has_room`]), so a reactor or a `Clock` made
    /// again at once (a test or a bench's next round) finds the blocks the last one left.
    fn drop(&mut self) {
        WATCHES.set(WATCHES.get() - 1);
        if WATCHES.get() == 0 {
            LIMIT.set(BUDGET);
        }
    }
}

impl Decay {
    /// A watch on this thread's lists; from now until it (and every other) is dropped,
    /// they may hold up to [`WATCHED_BUDGET`].
    pub(crate) fn new() -> Decay {
        WATCHES.set(WATCHES.get() + 1);
        LIMIT.set(WATCHED_BUDGET);
        Decay { since: Cell::new(None) }
    }

    /// Called once a turn (a `Clock`: once an `advance`), with the real time (read only
    /// while the lists hold more than [`KEEP`]): once [`IDLE_AFTER`] has passed since the
    /// watch began, frees what the lists held all that time beyond `KEEP` (the least they
    /// held, less `KEEP`).
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

/// Frees about `want` bytes of free blocks (at least that much, if held).
fn release_bytes(mut want: usize) {
    if want == 0 {
        return;
    }
    let _ = LISTS.try_with(|lists| {
        let Ok(mut lists) = lists.try_borrow_mut() else { return };
        for list in lists.iter_mut() {
            let freed = list.kept.release(want);
            HELD.set(HELD.get().saturating_sub(freed));
            if let Kept::Buffers(_) = list.kept {
                BUFFERED.set(BUFFERED.get().saturating_sub(freed));
            }
            want = want.saturating_sub(freed);
            if want == 0 {
                break;
            }
        }
    });
    LOW.set(LOW.get().min(HELD.get()));
}

/// Bytes of free blocks this thread keeps (for tests).
#[cfg(test)]
pub(crate) fn held() -> usize {
    HELD.get()
}

/// Bytes of kept vectors this thread holds (for tests).
#[cfg(test)]
pub(crate) fn buffered() -> usize {
    BUFFERED.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty vector of `n` words.
    fn words(n: usize) -> Vec<u64> {
        Vec::with_capacity(n)
    }

    /// A vector of 8-byte words is kept only in its size range, empty, and goes to one
    /// that needs room for `room` words only if it has that room and no more than four
    /// times that.
    #[test]
    fn a_kept_vector_goes_to_the_next_that_would_grow_into_its_size() {
        trim_free_lists();
        let n = BUFFER_MIN / 8; // the least kept, in words
        give_buffer(words(n / 2)); // too small to keep
        give_buffer(vec![1u64; n]); // not empty
        give_buffer(words(buffer_max() / 8 + 1)); // too large
        assert_eq!((held(), buffered()), (0, 0));
        give_buffer(words(n));
        let bytes = n * 8;
        assert_eq!((held(), buffered()), (bytes, bytes));
        assert!(take_buffer::<u32>(n / 2).is_none(), "kept for its element type only");
        assert!(take_buffer::<u64>(n / 8).is_none(), "more than four times what it needs");
        assert!(take_buffer::<u64>(n + 1).is_none(), "no room for one more");
        let v = take_buffer::<u64>(n / 2 + 1).expect("fits");
        assert!(v.is_empty() && v.capacity() >= n);
        assert_eq!((held(), buffered()), (0, 0));
        // The smallest that fits, and among equals the one kept last.
        let (a, b, c) = (words(4 * n), words(2 * n), words(2 * n));
        let c_at = c.as_ptr();
        give_buffer(a);
        give_buffer(b);
        give_buffer(c);
        assert_eq!(take_buffer::<u64>(n + 1).map(|v| v.as_ptr()), Some(c_at));
        trim_free_lists();
        assert_eq!((held(), buffered()), (0, 0));
        drop(v);
    }

    /// Kept vectors hold at most half the budget; past it smaller ones make way for a
    /// larger one; a reactor's decay frees them with the rest.
    #[test]
    fn kept_vectors_stay_within_their_share_and_decay() {
        trim_free_lists();
        let each = buffer_max() / 8; // a quarter of the budget, in words
        for _ in 0..3 {
            give_buffer(words(each));
        }
        assert_eq!(buffered(), buffers_max(), "two of three kept");
        give_buffer(words(BUFFER_MIN / 8));
        assert_eq!(buffered(), buffers_max(), "no room for a smaller one");
        trim_free_lists();
        for _ in 0..buffers_max() / BUFFER_MIN {
            give_buffer(words(BUFFER_MIN / 8));
        }
        assert_eq!(buffered(), buffers_max());
        give_buffer(words(BUFFER_MIN / 4));
        assert_eq!(buffered(), buffers_max(), "two smaller ones made way for a larger one");
        let larger = take_buffer::<u64>(BUFFER_MIN / 8 + 1).expect("the larger one is kept");
        assert_eq!(larger.capacity(), BUFFER_MIN / 4);
        assert_eq!(buffered(), buffers_max() - 2 * BUFFER_MIN);
        // A reactor's watch: unused for the idle time, all but `KEEP` goes.
        let decay = Decay::new();
        decay.release_idle(|| Duration::ZERO);
        decay.release_idle(|| IDLE_AFTER);
        assert!(held() <= KEEP && held() == buffered(), "{} bytes left", held());
        trim_free_lists();
        assert_eq!((held(), buffered()), (0, 0));
    }
}
