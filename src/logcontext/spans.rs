//! The `tracing` side of log contexts (feature `tracing`): each [`LoggingContext`] owns a
//! `tracing` span, opened when the context is made and closed when its last handle goes,
//! and the switch (`context::switch`, the one place every context change goes through)
//! exits the span of the context it leaves and enters the span of the one it makes
//! current. Nothing else calls into `tracing`, so the cost is paid on real switches only;
//! the callback loop's "same context, no switch" path is untouched.
//!
//! The span is named `logcontext`, at level INFO, target `weft::logcontext`, with one
//! field, `request` (the context's name). Its parent is the parent context's span, or
//! none: a context with no parent is a root span, whatever span is entered when it is
//! made, as a request is the root of its trace.
//!
//! [`LoggingContext`]: super::LoggingContext

use tracing::Span;

/// The span of a new context named `name` whose parent context has `parent` as span.
pub(super) fn open(name: &str, parent: Option<&Span>) -> Span {
    tracing::info_span!(
        target: "weft::logcontext",
        parent: parent.and_then(Span::id),
        "logcontext",
        request = %name,
    )
}

/// The thread moves from the context whose span is `left` to the one whose span is
/// `entered` (`None`: the sentinel, which has no span).
#[inline]
pub(super) fn switch(left: Option<&Span>, entered: Option<&Span>) {
    if let Some(span) = left {
        span.with_subscriber(|(id, dispatch)| dispatch.exit(id));
    }
    if let Some(span) = entered {
        span.with_subscriber(|(id, dispatch)| dispatch.enter(id));
    }
}

/// Runs `f` with the dispatcher that records `span` as the thread's default, so that spans
/// and events made by `f` on another thread reach the subscriber of the request they
/// serve (a subscriber set with `tracing::subscriber::with_default` is the default on
/// one thread only).
pub(super) fn with_dispatch_of<R>(span: &Span, f: impl FnOnce() -> R) -> R {
    match span.with_subscriber(|(_, dispatch)| dispatch.clone()) {
        Some(dispatch) => tracing::dispatcher::with_default(&dispatch, f),
        None => f(),
    }
}
