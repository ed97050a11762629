//! `DeferredSemaphore`, `DeferredLock` and their `Permit`.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;

use super::Waiters;
use crate::deferred::DeferredRef;
use crate::{CallbackResult, Deferred, Failure};

/// A semaphore whose waiters are Deferreds (Twisted's `DeferredSemaphore`).
///
/// [`acquire`](Self::acquire) fires with a [`Permit`] when one of the `limit` tokens is
/// free; dropping the permit releases the token to the next waiter, in FIFO order.
///
/// ```
/// use weft::DeferredSemaphore;
///
/// let sem = DeferredSemaphore::new(1);
/// let first = sem.acquire().take_result().unwrap().unwrap();
/// let second = sem.acquire();
/// assert!(!second.is_called());
/// drop(first); // hands the token on
/// assert!(second.is_called());
/// ```
///
/// # Cancellation
///
/// Cancelling a waiting `acquire` removes it from the queue. A cancel after the permit
/// was handed over changes nothing: the permit is in the result, and dropping it
/// releases the token.
#[derive(Clone)]
pub struct DeferredSemaphore {
    inner: Rc<SemInner>,
}

pub(super) struct SemInner {
    limit: usize,
    tokens: Cell<usize>,
    waiters: RefCell<Waiters<DeferredRef<Permit>>>,
    /// Called when the last token comes back with nobody waiting (Linearizer cleanup).
    pub(super) on_idle: RefCell<Option<Box<dyn Fn()>>>,
}

/// One token of a [`DeferredSemaphore`] (or the hold on a [`DeferredLock`] or a
/// [`Linearizer`](super::Linearizer) key).
///
/// # Drop
///
/// Dropping the permit releases the token: the next waiter, if any, gets it at once.
#[must_use = "dropping a Permit releases it at once"]
pub struct Permit {
    sem: Option<Rc<SemInner>>,
}

impl DeferredSemaphore {
    /// A semaphore with `limit` tokens.
    ///
    /// # Panics
    ///
    /// If `limit` is zero.
    #[track_caller]
    pub fn new(limit: usize) -> DeferredSemaphore {
        assert!(limit > 0, "a semaphore needs at least one token");
        DeferredSemaphore {
            inner: Rc::new(SemInner {
                limit,
                tokens: Cell::new(limit),
                waiters: RefCell::new(Waiters::new()),
                on_idle: RefCell::new(None),
            }),
        }
    }

    /// A Deferred that fires with a [`Permit`] once a token is free (at once if one is).
    #[must_use = "the permit is released when the result is dropped"]
    pub fn acquire(&self) -> Deferred<Permit> {
        self.inner.acquire()
    }

    /// Acquires, runs `f`, and releases when the Deferred `f` returns has a result
    /// (Twisted's `DeferredSemaphore.run`).
    pub fn run<T, F, R>(&self, f: F) -> Deferred<T>
    where
        T: 'static,
        F: FnOnce() -> R + 'static,
        R: CallbackResult<T>,
    {
        run_with(self.acquire(), f)
    }

    /// Free tokens.
    pub fn tokens(&self) -> usize {
        self.inner.tokens.get()
    }

    /// The number of tokens it was made with.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Waiters still queued.
    pub fn waiting(&self) -> usize {
        self.inner.waiters.borrow().len()
    }

    pub(super) fn inner(&self) -> &Rc<SemInner> {
        &self.inner
    }
}

impl SemInner {
    fn acquire(self: &Rc<Self>) -> Deferred<Permit> {
        if self.tokens.get() > 0 && self.waiters.borrow().is_empty() {
            self.tokens.set(self.tokens.get() - 1);
            return crate::succeed(Permit { sem: Some(self.clone()) });
        }
        let weak = Rc::downgrade(self);
        let id = self.waiters.borrow_mut().reserve();
        let d = Deferred::with_canceller(move |_| {
            if let Some(sem) = weak.upgrade() {
                let removed = sem.waiters.borrow_mut().remove(id);
                drop(removed);
                sem.check_idle();
            }
        });
        self.waiters.borrow_mut().insert(id, d.to_ref());
        d
    }

    /// A token came back: hand it to the first waiter that takes it, or keep it.
    fn release(self: &Rc<Self>) {
        let mut permit = Permit { sem: Some(self.clone()) };
        loop {
            let next = self.waiters.borrow_mut().pop_front();
            match next {
                // `offer`, not `callback`: a waiter that has a result already (cancelled)
                // never swallows the permit.
                Some(d) => match d.offer(permit) {
                    Ok(()) => return,
                    Err(p) => permit = p,
                },
                None => {
                    permit.sem = None;
                    self.tokens.set(self.tokens.get() + 1);
                    debug_assert!(self.tokens.get() <= self.limit);
                    self.check_idle();
                    return;
                }
            }
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.tokens.get() == self.limit && self.waiters.borrow().is_empty()
    }

    fn check_idle(&self) {
        if self.is_idle() {
            let hook = self.on_idle.borrow_mut().take();
            if let Some(hook) = hook {
                hook();
            }
        }
    }
}

impl Permit {
    /// Releases the token now (the same as dropping the permit).
    pub fn release(self) {}
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(sem) = self.sem.take() {
            sem.release();
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Permit")
    }
}

impl fmt::Debug for DeferredSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferredSemaphore")
            .field("tokens", &self.tokens())
            .field("limit", &self.limit())
            .field("waiting", &self.waiting())
            .finish()
    }
}

/// A mutual-exclusion lock whose waiters are Deferreds (Twisted's `DeferredLock`): a
/// [`DeferredSemaphore`] with one token.
///
/// ```
/// use weft::DeferredLock;
///
/// let lock = DeferredLock::new();
/// let held = lock.acquire().take_result().unwrap().unwrap();
/// assert!(lock.locked());
/// let next = lock.acquire();
/// next.cancel(); // gives up waiting
/// drop(held);
/// assert!(!lock.locked());
/// # let _ = next.take_result();
/// ```
///
/// # Cancellation
///
/// As for [`DeferredSemaphore`].
#[derive(Clone, Debug)]
pub struct DeferredLock {
    sem: DeferredSemaphore,
}

impl DeferredLock {
    /// An unlocked lock.
    pub fn new() -> DeferredLock {
        DeferredLock { sem: DeferredSemaphore::new(1) }
    }

    /// A Deferred that fires with the lock's [`Permit`] once it is free.
    #[must_use = "the lock is released when the result is dropped"]
    pub fn acquire(&self) -> Deferred<Permit> {
        self.sem.acquire()
    }

    /// Acquires, runs `f`, and releases when its Deferred has a result.
    pub fn run<T, F, R>(&self, f: F) -> Deferred<T>
    where
        T: 'static,
        F: FnOnce() -> R + 'static,
        R: CallbackResult<T>,
    {
        self.sem.run(f)
    }

    /// True while someone holds the lock.
    pub fn locked(&self) -> bool {
        self.sem.tokens() == 0
    }

    /// Waiters still queued.
    pub fn waiting(&self) -> usize {
        self.sem.waiting()
    }
}

impl Default for DeferredLock {
    fn default() -> Self {
        DeferredLock::new()
    }
}

/// Runs `f` once `acquired` fires with a permit, and drops the permit when `f`'s
/// Deferred has a result.
pub(super) fn run_with<T, F, R>(acquired: Deferred<Permit>, f: F) -> Deferred<T>
where
    T: 'static,
    F: FnOnce() -> R + 'static,
    R: CallbackResult<T>,
{
    acquired.then(move |p: Result<Permit, Failure>| -> Deferred<T> {
        let permit = match p {
            Ok(p) => p,
            Err(e) => return crate::fail(e),
        };
        let d = crate::maybe_deferred(f);
        d.add_both(move |r: Result<T, Failure>| {
            drop(permit);
            r
        });
        d
    })
}
