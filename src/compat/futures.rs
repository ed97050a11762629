//! `futures` interop (feature `futures`): [`QueueStream`] and [`QueueSink`] (a
//! [`DeferredQueue`] as a `Stream` and a `Sink`), [`DataStream`] (a connection's incoming
//! bytes as a `Stream`, with backpressure), and how the `futures` combinators meet weft's
//! futures.
//!
//! The traits are those of `futures-core` and `futures-sink`, which the `futures` crate
//! re-exports, so `futures::StreamExt`/`SinkExt` (`next`, `send`, `forward`, `map`,
//! `buffered`...) work on these types.
//!
//! ```
//! use futures::{SinkExt, StreamExt};
//! use weft::{ensure_deferred, DeferredQueue};
//!
//! let queue = DeferredQueue::bounded(2);
//! let (mut sink, stream) = (queue.sink(), queue.stream());
//! let consumer = ensure_deferred(async move {
//!     Ok(stream.take(3).collect::<Vec<u32>>().await)
//! });
//! let producer = ensure_deferred(async move {
//!     for n in 1..=3 {
//!         sink.send(n).await.unwrap(); // waits while the queue is full
//!     }
//!     Ok(())
//! });
//! assert!(producer.take_result().unwrap().is_ok());
//! assert_eq!(consumer.take_result().unwrap().unwrap(), [1, 2, 3]);
//! ```
//!
//! # Combinators on weft's futures
//!
//! An awaited [`Deferred`] is a [`DeferredFuture`](crate::DeferredFuture)
//! (`IntoFuture::into_future(d)`; with `StreamExt` in scope, `d.into_future()` names
//! `StreamExt::into_future` instead and does not compile):
//! `Unpin`, so `futures::future::select`, `join`, `try_join`, `select_all`,
//! `FuturesUnordered` and `futures::select!` (after `.fuse()`) take it as they are; any
//! `futures` combinator works inside [`ensure_deferred`](crate::ensure_deferred), on
//! the reactor thread. Two differences from weft's own combinators:
//!
//! - the loser of `futures::future::select` is dropped or handed back, not cancelled
//!   (dropping a `DeferredFuture` does not cancel its Deferred): use
//!   [`race`](crate::race), which cancels the losers, when they hold resources;
//! - a weft task cancelled while it awaits a combinator (which is not a Deferred) is
//!   aborted there, as the [`future`](crate::future) module explains, unless the
//!   combinator is wrapped in [`interruptible`](crate::future::interruptible).
//!
//! ```
//! use std::future::IntoFuture;
//! use futures::future::{select, Either};
//! use weft::{ensure_deferred, Deferred};
//!
//! let (fast, slow): (Deferred<&str>, Deferred<&str>) = (Deferred::new(), Deferred::new());
//! let (f, s) = (fast.clone(), slow.clone());
//! let first = ensure_deferred(async move {
//!     match select(f.into_future(), s.into_future()).await {
//!         Either::Left((r, _slow)) => r,
//!         Either::Right((r, _fast)) => r,
//!     }
//! });
//! fast.callback("fast").unwrap();
//! assert_eq!(first.take_result().unwrap().unwrap(), "fast");
//! ```

use std::cell::RefCell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_core::{FusedStream, Stream};
use futures_sink::Sink;

use crate::reactor::{ConnectionDone, Protocol, Transport};
use crate::{Deferred, DeferredQueue, Failure};

/// A [`DeferredQueue`] as a `Stream` of its items, made by
/// [`DeferredQueue::stream`]. Each poll with nothing in hand takes a
/// [`get`](DeferredQueue::get); the item it brings is kept until the stream is polled
/// again, so dropping a `next()` future (a `select!` branch that lost) loses nothing.
///
/// The stream never ends by itself (a `DeferredQueue` has no "closed"): bound it with
/// `take`, `take_until`, or an item that means "done". If its `get` fails (the queue's
/// backlog of waiting getters is full: [`QueueUnderflow`](crate::sync::QueueUnderflow)),
/// the stream ends and [`failure`](Self::failure) says why.
///
/// # Drop
///
/// Dropping the stream cancels its waiting `get`; an item that already reached it and
/// was not yielded goes back to the front of the queue (or to the next waiting getter).
pub struct QueueStream<T: 'static> {
    queue: DeferredQueue<T>,
    pending: Option<PendingGet<T>>,
    failure: Option<Failure>,
}

/// A [`DeferredQueue`] as a `Sink`, made by [`DeferredQueue::sink`]: `start_send` puts
/// the item (at once if there is room or a getter waits, else as a waiting
/// [`put`](DeferredQueue::put)), and `poll_ready`/`poll_flush` wait until that put was
/// accepted, so at most one item waits for room per sink: backpressure as
/// `DeferredQueue::put` gives it. It never fails (`Error = Infallible`).
///
/// # Drop
///
/// Dropping the sink leaves a waiting put in the queue: its item goes in when there is
/// room.
pub struct QueueSink<T: 'static> {
    queue: DeferredQueue<T>,
    pending: Option<(Deferred<()>, Rc<Waiting<()>>)>,
}

/// A stream's `get`, and where its result goes.
type PendingGet<T> = (Deferred<T>, Rc<Waiting<Result<T, Failure>>>);

/// A result a stream or sink waits for, and the task to wake when it comes.
struct Waiting<R> {
    result: RefCell<Option<R>>,
    waker: RefCell<Option<Waker>>,
}

impl<R> Waiting<R> {
    fn new() -> Rc<Waiting<R>> {
        Rc::new(Waiting { result: RefCell::new(None), waker: RefCell::new(None) })
    }

    fn set(&self, r: R) {
        *self.result.borrow_mut() = Some(r);
        let waker = self.waker.borrow_mut().take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T: 'static> QueueStream<T> {
    pub(crate) fn new(queue: DeferredQueue<T>) -> QueueStream<T> {
        QueueStream { queue, pending: None, failure: None }
    }

    /// Why the stream ended, if a `get` failed.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }
}

impl<T: 'static> Stream for QueueStream<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        if this.failure.is_some() {
            return Poll::Ready(None);
        }
        let (_, waiting) = this.pending.get_or_insert_with(|| {
            let d = this.queue.get();
            let waiting = Waiting::new();
            let w = waiting.clone();
            let _ = d.clone().then(move |r| w.set(r));
            (d, waiting)
        });
        let result = waiting.result.borrow_mut().take();
        match result {
            None => {
                *waiting.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
            Some(r) => {
                this.pending = None;
                match r {
                    Ok(item) => Poll::Ready(Some(item)),
                    Err(failure) => {
                        this.failure = Some(failure);
                        Poll::Ready(None)
                    }
                }
            }
        }
    }
}

impl<T: 'static> FusedStream for QueueStream<T> {
    fn is_terminated(&self) -> bool {
        self.failure.is_some()
    }
}

impl<T: 'static> Drop for QueueStream<T> {
    fn drop(&mut self) {
        let Some((d, waiting)) = self.pending.take() else { return };
        d.cancel();
        let result = waiting.result.borrow_mut().take();
        if let Some(Ok(item)) = result {
            self.queue.give_back(item);
        }
    }
}

impl<T: 'static> QueueSink<T> {
    pub(crate) fn new(queue: DeferredQueue<T>) -> QueueSink<T> {
        QueueSink { queue, pending: None }
    }

    /// Ready once the last item sent was accepted by the queue.
    fn poll_accepted(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        let Some((_, waiting)) = &self.pending else { return Poll::Ready(Ok(())) };
        if waiting.result.borrow().is_some() {
            self.pending = None;
            return Poll::Ready(Ok(()));
        }
        *waiting.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T: 'static> Sink<T> for QueueSink<T> {
    type Error = Infallible;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.get_mut().poll_accepted(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), Infallible> {
        let this = self.get_mut();
        if let Err(overflow) = this.queue.try_put(item) {
            let d = this.queue.put(overflow.0);
            let waiting = Waiting::new();
            let w = waiting.clone();
            // The put is never cancelled (the sink holds it), so it can only succeed.
            let _ = d.clone().then(move |_| w.set(()));
            this.pending = Some((d, waiting));
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.get_mut().poll_accepted(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.get_mut().poll_accepted(cx)
    }
}

impl<T: 'static> fmt::Debug for QueueStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueStream").field("waiting", &self.pending.is_some()).finish()
    }
}

impl<T: 'static> fmt::Debug for QueueSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueSink").field("waiting", &self.pending.is_some()).finish()
    }
}

/// How many bytes a [`DataStream`] holds before it pauses reading, by default (64 KiB).
pub const DEFAULT_HIGH_WATER: usize = 64 * 1024;

/// A connection's incoming bytes as a `Stream` of chunks (`Vec<u8>`, as `data_received`
/// got them), fed by its [`DataStreamProtocol`]; see [`data_stream`].
///
/// Items are `Ok(chunk)`; the stream ends after a clean close (`ConnectionDone`), and
/// yields one `Err` with the reason first if the connection ended otherwise (reset,
/// aborted, a protocol panic).
///
/// # Backpressure
///
/// Once the chunks not yet taken reach the high-water mark, the connection stops reading
/// ([`Transport::pause_producing`]); once the consumer has taken them down to half of it,
/// reading resumes. A slow consumer therefore holds at most the mark plus one read
/// (64 KiB) in memory, and the peer is slowed down by TCP's own flow control.
///
/// # Drop
///
/// Dropping the stream closes the connection once what was written is sent
/// ([`Transport::lose_connection`]): nobody would read what comes next.
pub struct DataStream {
    shared: Rc<RefCell<Incoming>>,
}

/// The [`Protocol`] half of [`data_stream`]: give it to the reactor (return it from the
/// factory of `listen_tcp`, `connect_tcp`...).
pub struct DataStreamProtocol {
    shared: Rc<RefCell<Incoming>>,
}

struct Incoming {
    chunks: VecDeque<Vec<u8>>,
    buffered: usize,
    high_water: usize,
    transport: Option<Transport>,
    /// Reading was paused by this stream (and not by someone else).
    paused: bool,
    /// How the connection ended; `None` once an error was yielded.
    ended: Option<Option<Failure>>,
    waker: Option<Waker>,
}

/// A connection's incoming bytes as a [`DataStream`], and the [`DataStreamProtocol`] that
/// feeds it, with the default high-water mark ([`DEFAULT_HIGH_WATER`]).
///
/// ```
/// use futures::StreamExt;
/// use weft::compat::futures::data_stream;
/// use weft::reactor::{MemoryTransport, Protocol};
/// use weft::ensure_deferred;
///
/// let (mut protocol, mut stream) = data_stream();
/// let fake = MemoryTransport::new(); // a real connection: return `protocol` from a factory
/// protocol.connection_made(fake.transport());
/// let upper = ensure_deferred(async move {
///     let mut all = Vec::new();
///     while let Some(chunk) = stream.next().await {
///         all.extend(chunk?.to_ascii_uppercase());
///     }
///     Ok(all)
/// });
/// protocol.data_received(b"hello, ");
/// protocol.data_received(b"world");
/// protocol.connection_lost(weft::Failure::new(weft::reactor::ConnectionDone));
/// assert_eq!(upper.take_result().unwrap().unwrap(), b"HELLO, WORLD");
/// ```
pub fn data_stream() -> (DataStreamProtocol, DataStream) {
    data_stream_with_high_water(DEFAULT_HIGH_WATER)
}

/// [`data_stream`] with a high-water mark of `high_water` bytes (at least 1): reading
/// pauses once that many bytes wait for the consumer, and resumes at half of it.
pub fn data_stream_with_high_water(high_water: usize) -> (DataStreamProtocol, DataStream) {
    let shared = Rc::new(RefCell::new(Incoming {
        chunks: VecDeque::new(),
        buffered: 0,
        high_water: high_water.max(1),
        transport: None,
        paused: false,
        ended: None,
        waker: None,
    }));
    (DataStreamProtocol { shared: shared.clone() }, DataStream { shared })
}

impl DataStream {
    /// The connection's transport, to write to or close it; `None` until it is made.
    pub fn transport(&self) -> Option<Transport> {
        self.shared.borrow().transport.clone()
    }

    /// Bytes received and not yet taken.
    pub fn bytes_waiting(&self) -> usize {
        self.shared.borrow().buffered
    }
}

impl Stream for DataStream {
    type Item = Result<Vec<u8>, Failure>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut s = self.shared.borrow_mut();
        if let Some(chunk) = s.chunks.pop_front() {
            s.buffered -= chunk.len();
            if s.paused && s.buffered <= s.high_water / 2 {
                s.paused = false;
                let t = s.transport.clone();
                drop(s);
                if let Some(t) = t {
                    t.resume_producing();
                }
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        if let Some(reason) = s.ended.as_mut() {
            return Poll::Ready(reason.take().map(Err));
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl FusedStream for DataStream {
    fn is_terminated(&self) -> bool {
        let s = self.shared.borrow();
        s.chunks.is_empty() && matches!(s.ended, Some(None))
    }
}

impl Drop for DataStream {
    fn drop(&mut self) {
        let t = self.shared.borrow_mut().transport.take();
        if let Some(t) = t {
            t.lose_connection();
        }
    }
}

impl DataStreamProtocol {
    fn wake(&self) {
        let waker = self.shared.borrow_mut().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Protocol for DataStreamProtocol {
    fn connection_made(&mut self, transport: Transport) {
        self.shared.borrow_mut().transport = Some(transport);
        self.wake();
    }

    fn data_received(&mut self, data: &[u8]) {
        let pause = {
            let mut s = self.shared.borrow_mut();
            s.chunks.push_back(data.to_vec());
            s.buffered += data.len();
            let pause = !s.paused && s.buffered >= s.high_water;
            s.paused |= pause;
            pause.then(|| s.transport.clone()).flatten()
        };
        if let Some(t) = pause {
            t.pause_producing();
        }
        self.wake();
    }

    fn connection_lost(&mut self, reason: Failure) {
        {
            let mut s = self.shared.borrow_mut();
            s.transport = None;
            s.ended = Some((!reason.check::<ConnectionDone>()).then_some(reason));
        }
        self.wake();
    }
}

impl fmt::Debug for DataStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.shared.borrow();
        f.debug_struct("DataStream")
            .field("buffered", &s.buffered)
            .field("paused", &s.paused)
            .field("ended", &s.ended.is_some())
            .finish()
    }
}

impl fmt::Debug for DataStreamProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataStreamProtocol")
    }
}
