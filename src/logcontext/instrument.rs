//! Log contexts for futures that another executor polls (tokio, async-std, a host's own
//! loop): [`InContextExt::in_context`], like `tracing`'s `Instrument`.
//!
//! weft swaps the context in around every callback *it* runs, but a task polled by
//! another executor is not weft's to wrap: a context entered inside an `async` block and
//! held across an `.await` stays current while the executor goes on to poll other tasks,
//! and their work is charged to it. [`InContext`] makes the context current for each
//! poll of the future it wraps (and for its drop), and restores what was current before
//! when the poll returns, panics included. Between polls, the wrapped future's context is
//! never current.
//!
//! It sits beside the context core and names no `Deferred` and no reactor.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::context::{current_context, LoggingContext, PreserveLoggingContext};

pin_project! {
    /// A future that runs in a log context: see [`InContextExt::in_context`].
    ///
    /// Dropping it drops the inner future in the context too. It does not finish the
    /// context; the context finishes when its last handle is dropped (or on
    /// [`LoggingContext::finish`]). Polling it again after it completed panics, as
    /// `Future` allows.
    #[must_use = "futures do nothing unless polled"]
    pub struct InContext<F> {
        ctx: LoggingContext,
        // `None` once the future completed (it is dropped then, in the context).
        #[pin]
        inner: Option<F>,
    }

    impl<F> PinnedDrop for InContext<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.inner.is_some() {
                let _in_context = PreserveLoggingContext::new(this.ctx.clone());
                this.inner.set(None);
            }
        }
    }
}

/// Runs futures in a log context whoever polls them; implemented for every `Future`.
///
/// # Examples
///
/// Two requests' futures interleaved on one thread (here by a hand-written executor; a
/// tokio `current_thread` runtime does the same): each sees its own context at every
/// poll, and nothing leaks out between polls.
///
/// ```
/// use std::future::Future;
/// use std::pin::pin;
/// use std::task::{Context, Poll, Waker};
/// use weft::logcontext::{current_request_id, InContextExt, LoggingContext};
///
/// async fn handler(name: &'static str) {
///     for _ in 0..3 {
///         assert_eq!(current_request_id().as_deref(), Some(name));
///         yield_now().await; // another task runs meanwhile
///     }
/// }
///
/// let mut a = pin!(handler("GET-1").in_context(LoggingContext::new("GET-1")));
/// let mut b = pin!(handler("GET-2").in_context(LoggingContext::new("GET-2")));
/// let mut cx = Context::from_waker(Waker::noop());
/// while a.as_mut().poll(&mut cx).is_pending() | b.as_mut().poll(&mut cx).is_pending() {
///     assert_eq!(current_request_id(), None); // the executor is in no context
/// }
/// # async fn yield_now() {
/// #     let mut yielded = false;
/// #     std::future::poll_fn(|_| if std::mem::replace(&mut yielded, true) { Poll::Ready(()) } else { Poll::Pending }).await
/// # }
/// ```
pub trait InContextExt: Future + Sized {
    /// Wraps the future so that `ctx` is the current log context during each of its
    /// polls (and its drop), and the context current before is back when a poll returns.
    ///
    /// # Log context
    ///
    /// Weft work started inside the future captures `ctx` as usual: a `Deferred`
    /// callback added there runs in `ctx` whoever fires it, a `call_later` made there
    /// runs in `ctx`. CPU time spent in the polls is charged to `ctx`.
    fn in_context(self, ctx: LoggingContext) -> InContext<Self> {
        InContext { ctx, inner: Some(self) }
    }

    /// As [`in_context`](Self::in_context) with the context current now (tracing's
    /// `in_current_span`): for a task spawned from a request's code that should stay in
    /// the request's context.
    fn in_current_context(self) -> InContext<Self> {
        self.in_context(current_context())
    }
}

impl<F: Future> InContextExt for F {}

impl<F> InContext<F> {
    /// The context the future runs in.
    pub fn context(&self) -> &LoggingContext {
        &self.ctx
    }
}

impl<F: Future> Future for InContext<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let _in_context = PreserveLoggingContext::new(this.ctx.clone());
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            panic!("`InContext` polled after it completed");
        };
        let out = inner.poll(cx);
        if out.is_ready() {
            this.inner.set(None);
        }
        out
    }
}

impl<F> fmt::Debug for InContext<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InContext").field("ctx", &self.ctx).field("done", &self.inner.is_none()).finish()
    }
}
