//! `DeferredQueue`: a bounded queue whose `get` and `put` wait with Deferreds.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::error::Error;
use std::fmt;
use std::rc::Rc;

use super::Waiters;
use crate::deferred::DeferredRef;
use crate::Deferred;

/// A FIFO queue whose [`get`](Self::get) waits for an item and whose
/// [`put`](Self::put) waits for room (Twisted's `DeferredQueue(size, backlog)`, with
/// backpressure on `put` instead of `QueueOverflow`; [`try_put`](Self::try_put) is
/// Twisted's `put`). A `backlog` limits how many `get`s may wait at once (see
/// [`new`](Self::new)).
///
/// ```
/// use weft::DeferredQueue;
///
/// let q = DeferredQueue::bounded(1);
/// let got = q.get();
/// q.put("a").take_result().unwrap().unwrap(); // handed straight to the getter
/// assert_eq!(got.take_result().unwrap().unwrap(), "a");
/// q.put("b").take_result().unwrap().unwrap(); // room for one
/// let blocked = q.put("c");
/// assert!(!blocked.is_called());
/// assert_eq!(q.get().take_result().unwrap().unwrap(), "b");
/// assert!(blocked.is_called()); // "c" went in as "b" came out
/// ```
///
/// # Cancellation
///
/// Cancelling a waiting `get` removes it: no item is ever handed to it. Cancelling a
/// waiting `put` removes it and drops its item. An item handed to a getter is in the
/// getter's result, which a later cancel never takes away.
pub struct DeferredQueue<T: 'static> {
    inner: Rc<QueueInner<T>>,
}

struct QueueInner<T: 'static> {
    size: Option<usize>,
    backlog: Option<usize>,
    items: RefCell<VecDeque<T>>,
    getters: RefCell<Waiters<DeferredRef<T>>>,
    putters: RefCell<Waiters<(T, DeferredRef<()>)>>,
}

/// [`DeferredQueue::try_put`] found the queue full; the item is handed back.
pub struct QueueOverflow<T>(pub T);

impl<T> fmt::Debug for QueueOverflow<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QueueOverflow")
    }
}

impl<T> fmt::Display for QueueOverflow<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("queue is full")
    }
}

impl<T> Error for QueueOverflow<T> {}

/// [`DeferredQueue::get`] found as many getters waiting as the queue's backlog allows
/// (Twisted's `QueueUnderflow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueUnderflow;

impl fmt::Display for QueueUnderflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("too many getters are waiting on the queue")
    }
}

impl Error for QueueUnderflow {}

impl<T: 'static> DeferredQueue<T> {
    /// A queue without a size limit.
    pub fn unbounded() -> DeferredQueue<T> {
        DeferredQueue::new(None, None)
    }

    /// A queue holding at most `size` items; `put` waits beyond that. A size of 0 makes
    /// every `put` wait for a `get` (a rendezvous).
    pub fn bounded(size: usize) -> DeferredQueue<T> {
        DeferredQueue::new(Some(size), None)
    }

    /// Twisted's `DeferredQueue(size, backlog)`: at most `size` items queued (`None`: no
    /// limit), and at most `backlog` getters waiting for an item (`None`: no limit);
    /// a `get` beyond the backlog fails with [`QueueUnderflow`].
    ///
    /// ```
    /// use weft::{sync::QueueUnderflow, DeferredQueue};
    ///
    /// let q: DeferredQueue<u8> = DeferredQueue::new(None, Some(1));
    /// let waiting = q.get();
    /// assert!(q.get().take_result().unwrap().unwrap_err().check::<QueueUnderflow>());
    /// # drop(waiting);
    /// ```
    pub fn new(size: Option<usize>, backlog: Option<usize>) -> DeferredQueue<T> {
        DeferredQueue {
            inner: Rc::new(QueueInner {
                size,
                backlog,
                items: RefCell::new(VecDeque::new()),
                getters: RefCell::new(Waiters::new()),
                putters: RefCell::new(Waiters::new()),
            }),
        }
    }

    /// Puts `item`; the Deferred fires once the queue has taken it (at once if there is
    /// room or a getter waiting).
    #[must_use = "the Deferred says when the item was accepted"]
    pub fn put(&self, item: T) -> Deferred<()> {
        match self.try_put(item) {
            Ok(()) => crate::succeed(()),
            Err(QueueOverflow(item)) => {
                let weak = Rc::downgrade(&self.inner);
                let id = self.inner.putters.borrow_mut().reserve();
                let d = Deferred::with_canceller(move |_| {
                    if let Some(q) = weak.upgrade() {
                        let removed = q.putters.borrow_mut().remove(id);
                        drop(removed);
                    }
                });
                self.inner.putters.borrow_mut().insert(id, (item, d.to_ref()));
                d
            }
        }
    }

    /// Puts `item` if a getter waits or there is room.
    ///
    /// # Errors
    ///
    /// [`QueueOverflow`] with the item if the queue is full.
    pub fn try_put(&self, item: T) -> Result<(), QueueOverflow<T>> {
        let mut item = item;
        loop {
            let getter = self.inner.getters.borrow_mut().pop_front();
            match getter {
                // `offer`: a getter with a result already (cancelled) never takes the item.
                Some(g) => match g.offer(item) {
                    Ok(()) => return Ok(()),
                    Err(back) => item = back,
                },
                None => break,
            }
        }
        let mut items = self.inner.items.borrow_mut();
        let waiting_putters = !self.inner.putters.borrow().is_empty();
        if waiting_putters || self.inner.size.is_some_and(|s| items.len() >= s) {
            return Err(QueueOverflow(item));
        }
        items.push_back(item);
        Ok(())
    }

    /// A Deferred that fires with the next item (at once if one is queued).
    ///
    /// # Errors
    ///
    /// The Deferred fails at once with [`QueueUnderflow`] if no item is ready and as
    /// many getters wait as the backlog allows.
    #[must_use = "the Deferred carries the item; dropping it drops the item"]
    pub fn get(&self) -> Deferred<T> {
        let item = self.inner.items.borrow_mut().pop_front();
        let item = match item {
            Some(item) => {
                self.inner.admit_putter();
                Some(item)
            }
            None => {
                // A rendezvous queue (or one racing a put): take straight from a putter.
                let putter = self.inner.putters.borrow_mut().pop_front();
                putter.map(|(item, d)| {
                    let _ = d.callback(());
                    item
                })
            }
        };
        if let Some(item) = item {
            return crate::succeed(item);
        }
        if self.inner.backlog.is_some_and(|b| self.waiting_getters() >= b) {
            return crate::fail(QueueUnderflow);
        }
        let weak = Rc::downgrade(&self.inner);
        let id = self.inner.getters.borrow_mut().reserve();
        let d = Deferred::with_canceller(move |_| {
            if let Some(q) = weak.upgrade() {
                let removed = q.getters.borrow_mut().remove(id);
                drop(removed);
            }
        });
        self.inner.getters.borrow_mut().insert(id, d.to_ref());
        d
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.inner.items.borrow().len()
    }

    /// True if no item is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Getters waiting for an item.
    pub fn waiting_getters(&self) -> usize {
        self.inner.getters.borrow().len()
    }

    /// Puts waiting for room.
    pub fn waiting_putters(&self) -> usize {
        self.inner.putters.borrow().len()
    }

    /// The queue's items as a `futures` `Stream` (feature `futures`): each item is taken
    /// with a [`get`](Self::get) when the stream is polled. See
    /// [`QueueStream`](crate::compat::futures::QueueStream).
    #[cfg(feature = "futures")]
    pub fn stream(&self) -> crate::compat::futures::QueueStream<T> {
        crate::compat::futures::QueueStream::new(self.clone())
    }

    /// A `futures` `Sink` that puts items into the queue, waiting for room (feature
    /// `futures`). See [`QueueSink`](crate::compat::futures::QueueSink).
    #[cfg(feature = "futures")]
    pub fn sink(&self) -> crate::compat::futures::QueueSink<T> {
        crate::compat::futures::QueueSink::new(self.clone())
    }

    /// Puts back an item a getter took but could not hand on (a dropped stream): to the
    /// first waiting getter, or at the front of the queue, even past its size (the item
    /// had its room before).
    #[cfg(feature = "futures")]
    pub(crate) fn give_back(&self, item: T) {
        let mut item = item;
        loop {
            let getter = self.inner.getters.borrow_mut().pop_front();
            match getter {
                Some(g) => match g.offer(item) {
                    Ok(()) => return,
                    Err(back) => item = back,
                },
                None => break,
            }
        }
        self.inner.items.borrow_mut().push_front(item);
    }
}

impl<T: 'static> QueueInner<T> {
    /// An item left: move the first waiting put's item in, if there is room.
    fn admit_putter(&self) {
        let room = self.size.map_or(true, |s| self.items.borrow().len() < s);
        if !room {
            return;
        }
        let putter = self.putters.borrow_mut().pop_front();
        if let Some((item, d)) = putter {
            self.items.borrow_mut().push_back(item);
            let _ = d.callback(());
        }
    }
}

impl<T: 'static> Clone for DeferredQueue<T> {
    /// Another handle to the same queue.
    fn clone(&self) -> Self {
        DeferredQueue { inner: self.inner.clone() }
    }
}

impl<T: 'static> fmt::Debug for DeferredQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferredQueue")
            .field("len", &self.len())
            .field("waiting_getters", &self.waiting_getters())
            .field("waiting_putters", &self.waiting_putters())
            .finish()
    }
}
