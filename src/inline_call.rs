//! `CallOnce<A, R>`: a type-erased `FnOnce(A) -> R` that keeps a small closure inline
//! instead of in its own heap block. The only `unsafe` code in weft lives here.
//!
//! Why: every callback a Deferred holds was a `Box<dyn FnOnce>`, one allocation (and one
//! free) per step whose closure captures anything at all. The usual closures capture one
//! or two words (a `Deferred`, an `Rc`, a counter), and a nested chain
//! (`d.add_callback(move |_| other)`) paid that allocation on every level beside the
//! Deferred's own. With the closure inline, a pending Deferred and its first step are one
//! allocation (see `benches/results/round2-2026-11-28.md` for the measured gain).
//!
//! How: a `CallOnce` is [`WORDS`] words of storage and a pointer to a static table of two
//! functions made for the closure's type `F` when the `CallOnce` is made: one moves `F`
//! out of the storage and calls it, one drops it in place. A closure that fits the storage
//! (size at most `WORDS` words, alignment at most a word's) is written into it; a larger
//! one is boxed, and the storage holds the `Box<F>` (a thin pointer), with a table that
//! knows so. Either way a call is one indirect call, as with a `Box<dyn FnOnce>`.
//!
//! # Invariants
//!
//! 1. `storage` holds a live value of the type `table` was made for (`F`, or `Box<F>`),
//!    written by [`CallOnce::new`], from then until the value is consumed by `call` or
//!    dropped by `Drop`, and exactly one of those two happens: `call` copies the storage
//!    and the table's `call` out and forgets `self` before it calls, so `Drop` never sees
//!    a moved value, and the value moved out is dropped (by the closure's own body, also
//!    when it panics) at most once.
//! 2. The table's functions are only ever given the `storage` of the `CallOnce` they
//!    were made with: `call` a bitwise copy of it (a `MaybeUninit` keeps every byte,
//!    pointers' provenance included) after which the `CallOnce` is forgotten, `drop` a
//!    pointer to it. The storage is aligned to a word and at least `size_of::<F>()` (or
//!    `size_of::<Box<F>>()`) bytes, checked when the table is chosen.
//! 3. Moving a `CallOnce` moves the value in its storage bit for bit, which is always
//!    sound in Rust (no value may rely on its address unless pinned, and a closure is
//!    never pinned here).
//! 4. `F: 'static`, so nothing the closure borrows can end while the `CallOnce` lives;
//!    and a `CallOnce` is neither `Send` nor `Sync` (`_local`), whatever `F` is, as a
//!    `Box<dyn FnOnce>` without those bounds is not.
//!
//! Checked by the tests below under Miri (`cargo +nightly miri test --lib inline_call`,
//! run by `.ci/run` where a nightly toolchain with Miri is installed) and under
//! valgrind's memcheck in the leak gate (`.ci/leakcheck`), which runs every unit test.
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::mem::{self, MaybeUninit};
use std::ptr;

/// How many machine words a closure may take to be kept inline.
pub(crate) const WORDS: usize = 1;

/// The inline storage: one word, aligned to a word. A `MaybeUninit` of a scalar (not of
/// an array) keeps a `CallOnce` a pair of scalars for the compiler, moved in registers;
/// as an aggregate it was copied through memory, which stalls store forwarding
/// (measured: 3.5 ns per callback in the `chain` benchmark).
type Storage = MaybeUninit<usize>;
const _: () = assert!(mem::size_of::<Storage>() == WORDS * mem::size_of::<usize>());

/// What a `CallOnce` knows of its closure's type.
struct Table<A, R> {
    /// Moves the value out of the storage and calls it.
    call: unsafe fn(Storage, A) -> R,
    /// Drops the value in the storage.
    drop: unsafe fn(*mut Storage),
}

/// A type-erased `FnOnce(A) -> R + 'static`, inline when small (see the module's doc).
pub(crate) struct CallOnce<A: 'static, R: 'static> {
    storage: Storage,
    table: &'static Table<A, R>,
    /// Neither `Send` nor `Sync` (invariant 4).
    _local: PhantomData<*mut ()>,
}

/// The tables for one closure type `F` (associated consts, so `&` of one is `'static`).
struct Tables<F, A, R>(PhantomData<fn(F, A) -> R>);

impl<F: FnOnce(A) -> R + 'static, A: 'static, R: 'static> Tables<F, A, R> {
    /// True if `F` fits the inline storage.
    const INLINE: bool = mem::size_of::<F>() <= mem::size_of::<Storage>()
        && mem::align_of::<F>() <= mem::align_of::<Storage>();

    const INLINE_TABLE: Table<A, R> = Table { call: Self::call_inline, drop: Self::drop_inline };

    const BOXED_TABLE: Table<A, R> = Table { call: Self::call_boxed, drop: Self::drop_boxed };

    /// # Safety
    /// `storage` holds a live `F` (invariants 1, 2), moved in here (by value, so that it
    /// travels in a register).
    unsafe fn call_inline(storage: Storage, arg: A) -> R {
        // SAFETY: the caller guarantees a live, aligned `F` there, and never reads it
        // again.
        let f = unsafe { ptr::read(storage.as_ptr().cast::<F>()) };
        f(arg)
    }

    /// # Safety
    /// `storage` holds a live `F` (invariants 1, 2); it is dropped here.
    unsafe fn drop_inline(storage: *mut Storage) {
        // SAFETY: as for `call_inline`.
        unsafe { ptr::drop_in_place(storage.cast::<F>()) }
    }

    /// # Safety
    /// `storage` holds a live `Box<F>` (invariants 1, 2), moved in here.
    unsafe fn call_boxed(storage: Storage, arg: A) -> R {
        // SAFETY: as for `call_inline`, with `Box<F>` for `F`.
        let f = unsafe { ptr::read(storage.as_ptr().cast::<Box<F>>()) };
        f(arg)
    }

    /// # Safety
    /// `storage` holds a live `Box<F>` (invariants 1, 2); it is dropped here.
    unsafe fn drop_boxed(storage: *mut Storage) {
        // SAFETY: as for `call_boxed`.
        unsafe { ptr::drop_in_place(storage.cast::<Box<F>>()) }
    }
}

impl<A: 'static, R: 'static> CallOnce<A, R> {
    /// Wraps `f`: inline if it fits [`WORDS`] words, boxed otherwise.
    #[inline]
    pub(crate) fn new<F: FnOnce(A) -> R + 'static>(f: F) -> CallOnce<A, R> {
        let mut storage = Storage::uninit();
        let table = if Tables::<F, A, R>::INLINE {
            // SAFETY: `INLINE` checked that `F` fits the storage in size and alignment.
            unsafe { ptr::write(storage.as_mut_ptr().cast::<F>(), f) };
            &Tables::<F, A, R>::INLINE_TABLE
        } else {
            const { assert!(mem::size_of::<Box<()>>() <= mem::size_of::<Storage>()) };
            // SAFETY: a `Box<F>` of a sized `F` is one word, word-aligned (asserted
            // above for the size).
            unsafe { ptr::write(storage.as_mut_ptr().cast::<Box<F>>(), Box::new(f)) };
            &Tables::<F, A, R>::BOXED_TABLE
        };
        CallOnce { storage, table, _local: PhantomData }
    }

    /// Calls the closure, consuming it.
    #[inline(always)]
    pub(crate) fn call(self, arg: A) -> R {
        let (storage, call) = (self.storage, self.table.call);
        // `Drop` must not run on a value that is moved out (invariant 1).
        mem::forget(self);
        // SAFETY: the storage holds the live value `table` was made for; it moves into
        // the call, and `self` is gone without its `Drop`.
        unsafe { call(storage, arg) }
    }
}

impl<A: 'static, R: 'static> Drop for CallOnce<A, R> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the storage still holds its live value (`call` never lets `Drop` run).
        unsafe { (self.table.drop)(&mut self.storage) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::panic::{self, AssertUnwindSafe};
    use std::rc::Rc;

    /// Counts its drops.
    struct Counted(Rc<Cell<u32>>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    fn inline_of<F: FnOnce(u64) -> u64 + 'static>(_: &F) -> bool {
        Tables::<F, u64, u64>::INLINE
    }

    #[test]
    fn a_closure_capturing_nothing_is_inline_and_called() {
        let f = |x: u64| x + 1;
        assert!(inline_of(&f));
        assert_eq!(CallOnce::new(f).call(41), 42);
    }

    #[test]
    fn a_closure_of_one_word_is_inline_and_drops_what_it_captured_once() {
        let drops = Rc::new(Cell::new(0));
        let a = Counted(drops.clone());
        let f = move |x: u64| x + u64::from(a.0.get());
        assert!(inline_of(&f));
        let c = CallOnce::new(f);
        assert_eq!(drops.get(), 0);
        assert_eq!(c.call(1), 1);
        assert_eq!(drops.get(), 1);
    }

    #[test]
    fn a_closure_of_two_words_is_boxed_and_drops_what_it_captured_once() {
        let drops = Rc::new(Cell::new(0));
        let (a, b) = (Counted(drops.clone()), Counted(drops.clone()));
        let f = move |x: u64| {
            let _keep = (&a, &b);
            x + 1
        };
        assert_eq!(inline_of(&f), WORDS >= 2);
        let c = CallOnce::new(f);
        assert_eq!(drops.get(), 0);
        assert_eq!(c.call(1), 2);
        assert_eq!(drops.get(), 2);
    }

    #[test]
    fn a_large_closure_is_boxed_and_called() {
        let big = [7u64; 8];
        let f = move |x: u64| x + big.iter().sum::<u64>();
        assert!(!inline_of(&f));
        assert_eq!(CallOnce::new(f).call(1), 57);
    }

    #[test]
    fn an_over_aligned_closure_is_boxed() {
        #[repr(align(32))]
        struct Wide(u64);
        let w = Wide(5);
        let f = move |x: u64| {
            let w = &w;
            x + w.0
        };
        assert!(!inline_of(&f));
        assert_eq!(CallOnce::new(f).call(1), 6);
    }

    #[test]
    fn dropping_without_a_call_drops_the_closure_once_inline_or_boxed() {
        let drops = Rc::new(Cell::new(0));
        let small = Counted(drops.clone());
        drop(CallOnce::new(move |x: u64| x + u64::from(small.0.get())));
        assert_eq!(drops.get(), 1);
        let large = (Counted(drops.clone()), [0u64; 8]);
        let f = move |x: u64| {
            let large = &large;
            x + large.1[0]
        };
        assert!(!inline_of(&f));
        drop(CallOnce::new(f));
        assert_eq!(drops.get(), 2);
    }

    #[test]
    fn a_panicking_closure_drops_its_captures_once_inline_or_boxed() {
        let drops = Rc::new(Cell::new(0));
        let small = Counted(drops.clone());
        let c = CallOnce::new(move |_: u64| -> u64 {
            let _keep = &small;
            panic!("boom")
        });
        assert!(panic::catch_unwind(AssertUnwindSafe(|| c.call(0))).is_err());
        assert_eq!(drops.get(), 1);
        let large = (Counted(drops.clone()), [0u64; 8]);
        let c = CallOnce::new(move |_: u64| -> u64 {
            let _keep = &large;
            panic!("boom")
        });
        assert!(panic::catch_unwind(AssertUnwindSafe(|| c.call(0))).is_err());
        assert_eq!(drops.get(), 2);
    }

    #[test]
    fn a_moved_call_once_still_calls_its_closure() {
        let counter = Rc::new(Cell::new(0u32));
        let c2 = counter.clone();
        let c = CallOnce::new(move |x: u64| {
            c2.set(c2.get() + 1);
            x * 2
        });
        let mut moved = vec![c];
        moved.reserve(100);
        let c = moved.pop().unwrap();
        assert_eq!(c.call(21), 42);
        assert_eq!(counter.get(), 1);
        assert_eq!(Rc::strong_count(&counter), 1);
    }

    #[test]
    fn values_of_any_size_pass_through_argument_and_result() {
        let c: CallOnce<String, Vec<String>> = CallOnce::new(|s: String| vec![s.clone(), s]);
        assert_eq!(c.call("ab".to_owned()), vec!["ab".to_owned(), "ab".to_owned()]);
    }
}
