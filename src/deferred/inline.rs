//! `InlineFn`: a one-shot closure of at most one word, stored in place (no allocation),
//! in two words: its bytes and a pointer to a static table of two functions. This is
//! the only `unsafe` in the Deferred core; it exists because a `Box<dyn FnOnce>` of a
//! closure that captures one word (the next Deferred of a nested chain, an `Rc`) costs
//! an allocation, and the `smallbox` crate, which stores it safely, makes the link three
//! words instead of two, which pushes a pending Deferred past its 128-byte budget (see
//! `ARCHITECTURE.md`, "What a link and a Deferred cost").
//!
//! # Invariants
//!
//! 1. `InlineFn::new` stores a value only if its type `F` has a size and an alignment no
//!    larger than a `usize`'s, so `data` can hold it at offset 0, aligned.
//! 2. `data` holds a valid `F` from `new` until it is moved out, exactly once, by
//!    `table.call` (in `call`, which consumes the `InlineFn` and does not run its `Drop`)
//!    or by `table.drop` (in `Drop`); nothing else reads or writes `data`.
//! 3. `table` is the table made for that same `F` (both are set together in `new`, and
//!    neither field is ever changed afterwards).
//!
//! Moving an `InlineFn` moves `data` bytewise, which is a valid move of `F` (every Rust
//! value may be moved by copying its bytes). `F: 'static`, so the value holds no
//! borrow that could end while it is stored.
#![allow(unsafe_code)]

use std::mem::{self, ManuallyDrop, MaybeUninit};

/// A closure `FnOnce(A) -> R` stored in one word, with its call and drop functions.
pub(super) struct InlineFn<A: 'static, R: 'static> {
    /// The closure's bytes (invariants 1 and 2).
    data: MaybeUninit<usize>,
    /// How to call and drop the closure of the type stored (invariant 3).
    table: &'static Table<A, R>,
}

/// The functions for one closure type `F`, made in [`InlineFn::new`].
struct Table<A: 'static, R: 'static> {
    /// Moves the `F` out of the bytes and calls it.
    call: unsafe fn(MaybeUninit<usize>, A) -> R,
    /// Moves the `F` out of the bytes and drops it.
    drop: unsafe fn(MaybeUninit<usize>),
}

impl<A: 'static, R: 'static> InlineFn<A, R> {
    /// True if a closure of type `F` fits (invariant 1).
    pub(super) const fn fits<F>() -> bool {
        mem::size_of::<F>() <= mem::size_of::<usize>() && mem::align_of::<F>() <= mem::align_of::<usize>()
    }

    /// Stores `f`, or hands it back if it does not fit.
    #[inline]
    pub(super) fn new<F>(f: F) -> Result<Self, F>
    where
        F: FnOnce(A) -> R + 'static,
    {
        if !Self::fits::<F>() {
            return Err(f);
        }
        let mut data = MaybeUninit::<usize>::uninit();
        // SAFETY: `F` fits in `data`, size and alignment (checked above), and `data` is
        // ours: writing `f` there moves it in (invariants 1 and 2).
        unsafe { data.as_mut_ptr().cast::<F>().write(f) };
        let table = const { &Table { call: call_stored::<A, R, F>, drop: drop_stored::<F> } };
        Ok(InlineFn { data, table })
    }

    /// Calls the closure, consuming it.
    #[inline]
    pub(super) fn call(self, input: A) -> R {
        // `Drop` does not run: `table.call` moves the closure out of `data`.
        let this = ManuallyDrop::new(self);
        // SAFETY: `data` holds the `F` that `table` was made for (invariants 2 and 3), not
        // moved out yet; it is moved out here, once, since `this` is never used again
        // and is not dropped.
        unsafe { (this.table.call)(this.data, input) }
    }
}

impl<A: 'static, R: 'static> Drop for InlineFn<A, R> {
    fn drop(&mut self) {
        // SAFETY: as in `call`: an `InlineFn` that is dropped was never called, so
        // `data` still holds the `F` that `table` was made for; `self` is not used again.
        unsafe { (self.table.drop)(self.data) }
    }
}

/// Moves an `F` out of `data` and calls it with `input`.
///
/// # Safety
///
/// `data` holds a valid `F` at offset 0 that nothing else will move out or drop.
unsafe fn call_stored<A, R, F: FnOnce(A) -> R>(data: MaybeUninit<usize>, input: A) -> R {
    // SAFETY: the caller's contract.
    let f = unsafe { data.as_ptr().cast::<F>().read() };
    f(input)
}

/// Moves an `F` out of `data` and drops it.
///
/// # Safety
///
/// As [`call_stored`].
unsafe fn drop_stored<F>(data: MaybeUninit<usize>) {
    // SAFETY: the caller's contract.
    drop(unsafe { data.as_ptr().cast::<F>().read() });
}

#[cfg(test)]
mod tests {
    //! Run under valgrind memcheck as well as normally (`ARCHITECTURE.md`, "Checks"):
    //! each test would show a leak, a double free or a read of freed memory there if an
    //! invariant broke.

    use std::cell::Cell;
    use std::rc::Rc;

    use super::InlineFn;

    #[test]
    fn a_closure_of_one_word_is_called_once_with_what_it_holds() {
        let counter = Rc::new(Cell::new(0u32));
        let c = counter.clone();
        let f = InlineFn::new(move |n: u32| {
            c.set(c.get() + n);
            Rc::strong_count(&c)
        })
        .unwrap_or_else(|_| panic!("an Rc fits in a word"));
        assert_eq!(Rc::strong_count(&counter), 2);
        let moved = f; // a bytewise move keeps it valid
        assert_eq!(moved.call(5), 2);
        assert_eq!(counter.get(), 5);
        // Called: what it held was dropped once, with the closure.
        assert_eq!(Rc::strong_count(&counter), 1);
    }

    #[test]
    fn a_closure_never_called_is_dropped_once() {
        let held = Rc::new(());
        let h = held.clone();
        let f = InlineFn::new(move |()| drop(h)).unwrap_or_else(|_| panic!("fits"));
        assert_eq!(Rc::strong_count(&held), 2);
        drop(f);
        assert_eq!(Rc::strong_count(&held), 1);
    }

    #[test]
    fn a_panicking_closure_drops_what_it_held_once() {
        let held = Rc::new(());
        let h = held.clone();
        let f = InlineFn::new(move |()| -> () {
            let _h = h;
            panic!("boom")
        })
        .unwrap_or_else(|_| panic!("fits"));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.call(())));
        assert!(caught.is_err());
        assert_eq!(Rc::strong_count(&held), 1);
    }

    #[test]
    fn what_does_not_fit_is_handed_back() {
        let (a, b) = (1u64, 2u64);
        let f = move |()| a + b;
        let back = InlineFn::<(), u64>::new(f).err().expect("two words do not fit");
        assert_eq!(back(()), 3);
        let zero = InlineFn::<(), u8>::new(|()| 7).unwrap_or_else(|_| panic!("a zero-sized closure fits"));
        assert_eq!(zero.call(()), 7);
        let byte = 9u8;
        let small = InlineFn::<(), u8>::new(move |()| byte).unwrap_or_else(|_| panic!("a byte fits"));
        assert_eq!(small.call(()), 9);
    }
}
