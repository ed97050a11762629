//! weft brings Twisted's programming model to Rust: a callback-chain [`Deferred`] whose
//! cancellation runs a chain of per-layer cancellers from the invoker back to the
//! responder, on a single thread.
//!
//! weft is not a multi-threaded runtime and not a `Future` executor first: a `Deferred`
//! is a value you add callbacks to and fire, as in Twisted, and everything runs
//! on the thread that owns it.
//!
//! # How to use it
//!
//! ```
//! use std::{cell::RefCell, rc::Rc};
//! use weft::{CancelledError, Deferred, Failure};
//!
//! // A responder makes a Deferred, with a canceller that stops its work.
//! let log = Rc::new(RefCell::new(Vec::new()));
//! let l = log.clone();
//! let fetch: Deferred<String> = Deferred::with_canceller(move |_| l.borrow_mut().push("fetch stopped"));
//!
//! // A layer above adds its callbacks, and its own canceller for what it holds.
//! let l = log.clone();
//! fetch
//!     .add_canceller(move |_| l.borrow_mut().push("parser freed"))
//!     .add_callback(|body| body.to_uppercase());
//!
//! // The invoker adds an errback that handles a cancel and nothing else.
//! fetch.add_errback(|f: Failure| -> Result<String, Failure> {
//!     f.trap::<CancelledError>()?;
//!     Ok("cancelled".to_string())
//! });
//!
//! // Cancelling runs the layers' cancellers newest first, then the creator's.
//! fetch.cancel();
//! assert_eq!(*log.borrow(), ["parser freed", "fetch stopped"]);
//! assert_eq!(fetch.result().unwrap().unwrap(), "cancelled");
//! ```
//!
//! # Log contexts
//!
//! Every callback, canceller and scheduled call runs in the log context that was current
//! when it was registered ([`logcontext`]), so log lines ([`logcontext::ContextLogger`])
//! and CPU are attributed to the request they belong to, as in Matrix Synapse, without
//! Synapse's manual rules.
//!
//! # Implementation
//!
//! A `Deferred` is an `Rc` handle to a `RefCell` holding the result and the links of
//! the chain. The callback loop never holds that borrow while user code runs, so any
//! callback may re-enter any Deferred. Callback loops and drops nest at most a fixed
//! depth on the stack; deeper ones are queued on a thread-local trampoline, so chains of
//! any length and nesting run in constant stack. See `ARCHITECTURE.md`.
//!
//! # Porting from Twisted
//!
//! | Twisted | weft |
//! |---|---|
//! | `Deferred(canceller)` | [`Deferred::with_canceller`] |
//! | `addCallback`, `addErrback`, `addCallbacks`, `addBoth` | [`Deferred::add_callback`], [`Deferred::add_errback`], [`Deferred::add_callbacks`], [`Deferred::add_both`] |
//! | (new) per-layer canceller | [`Deferred::add_canceller`], [`Deferred::add_callbacks_with_canceller`] |
//! | `callback`, `errback`, `cancel` | [`Deferred::callback`], [`Deferred::errback`], [`Deferred::cancel`] |
//! | `pause`, `unpause`, `chainDeferred` | [`Deferred::pause`], [`Deferred::unpause`], [`Deferred::chain_deferred`] |
//! | `.called`, `.paused` | [`Deferred::is_called`], [`Deferred::is_paused`] |
//! | `Deferred.setDebugging`, `getDebugging` | [`set_debugging`], [`is_debugging`] (records where each Deferred is first fired; creation sites are always recorded) |
//! | `succeed`, `fail`, `maybeDeferred` | [`succeed`], [`fail`], [`maybe_deferred`] |
//! | `Failure`, `.check`, `.trap` | [`Failure`], [`Failure::check`], [`Failure::trap`] |
//! | `CancelledError`, `AlreadyCalledError` | [`CancelledError`], [`AlreadyCalledError`] |
//! | a callback changing the result's type | [`Deferred::then`], [`Deferred::map`] |
//! | a callback returning a Deferred that waits on the running one: hangs, `cancel` overflows | fails with [`WaitCycleError`] |
//! | `chainDeferred` into a fired target: `AlreadyCalledError` in the source chain | the same, holding the undelivered result ([`AlreadyCalledError::value`]) |
//! | `d.chainDeferred(d)`, a→b→a: reference cycles the garbage collector frees | the closing step holds its target weakly, so nothing leaks; fired, the same `AlreadyCalledError` |
//! | a callback returning a Deferred that is mid-run takes its intermediate result | waits for that Deferred's chain as it stands (the value was moved into its running callback) |
//! | a step added to a Deferred from the chain it handed its result to runs at once | the same |
//! | a paused chainee stops the rest of the chain that handed it the result | only the paused Deferred waits |
//! | a paused Deferred dropped holding a failure: silent | reported as unhandled |
//! | `consumeErrors` leaves `None` in the member | the member keeps the failure, marked handled (never reported); later steps get it |
//! | Synapse `LoggingContext`, `PreserveLoggingContext`, `run_in_background` | [`logcontext`] (see its porting table) |
//! | `twisted.web` `Site`, Synapse's servlets and `@cancellable` | [`web::Site`], [`web::Router`], [`future::cancellable`] |
//! | Synapse `ResponseCache` | [`ResponseCache`] |
//! | `basic.LineReceiver`, `Int32StringReceiver`, `NetstringReceiver` | [`protocols::LineReceiver`], [`protocols::IntNStringReceiver`], [`protocols::NetstringReceiver`] |
//! | `listenSSL`, `connectSSL`, `transport.startTLS`, `TLSMemoryBIOFactory`, `negotiatedProtocol` (feature `tls`) | `ReactorHandle::listen_tls`, `ReactorHandle::connect_tls`, `Transport::start_tls`, `reactor::tls::TlsFactory`, `Transport::negotiated_protocol`; options in `reactor::tls` |
//! | `adoptStreamPort`, `proto_helpers.StringTransport` | [`ReactorHandle::adopt_stream_port`], [`reactor::MemoryTransport`] |
//! | `ensureDeferred`, `inlineCallbacks` | [`future::ensure_deferred`] over `async` blocks; a task cancelled while it awaits a non-Deferred future is aborted there (tokio's rule), or use [`future::interruptible`] |
//! | `task.LoopingCall`, `.withCount`, `.reset`, `.interval = x` | [`reactor::LoopingCall`], [`LoopingCall::with_count`](reactor::LoopingCall::with_count), [`reset`](reactor::LoopingCall::reset), [`set_interval`](reactor::LoopingCall::set_interval); `start`'s Deferred fires with `()`, not the loop |
//! | `task.Clock`, `.getDelayedCalls()`, `task.deferLater` | [`Clock`], [`Clock::get_delayed_calls`] (also [`ReactorHandle::get_delayed_calls`]), [`reactor::defer_later`] |
//! | `d.addTimeout(t, clock, onTimeoutCancel)` | [`add_timeout`]`(&d, t, &clock)`, [`add_timeout_with`] |
//! | Trio's `CancelScope`, `move_on_after`, `fail_after` (cancel a set of Deferreds and tasks by hand or by deadline, with shields) | [`CancelScope`], [`scope::fail_after`] |
//! | `DeferredLock`, `DeferredSemaphore` | [`DeferredLock`], [`DeferredSemaphore`] (the lock is a [`Permit`] value, released on drop) |
//! | `DeferredQueue(size, backlog)`, `QueueOverflow`, `QueueUnderflow` | [`DeferredQueue::new`]; `put` waits for room, [`DeferredQueue::try_put`] fails with [`sync::QueueOverflow`]; `get` past the backlog fails with [`sync::QueueUnderflow`] |
//! | `task.react` | [`reactor::react`] (returns the result instead of exiting) |
//! | `threadable.isInIOThread` | [`ThreadHandle::is_in_io_thread`](reactor::ThreadHandle::is_in_io_thread) |
//! | `threads.blockingCallFromThread` | [`ThreadHandle::blocking_call_from_thread`](reactor::ThreadHandle::blocking_call_from_thread) |
//! | `threads.deferToThread` | [`ReactorHandle::defer_to_thread`], [`ReactorHandle::defer_to_thread_with_token`] (errors and a cancellation token) |
//! | Synapse `synapse.util.async_helpers` | [`async_helpers`] (see its table) |
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![doc(test(attr(deny(warnings))))]

pub mod async_helpers;
pub mod cache;
pub mod cancellation;
pub mod combinators;
pub mod compat;
mod deferred;
mod failure;
mod free_list;
pub mod future;
mod inline_call;
pub mod logcontext;
mod observable;
mod panics;
/// The porting guide (`PORTING.md` at the repository root), compiled here so that its
/// examples run as tests.
#[doc = include_str!("../PORTING.md")]
pub mod porting {}
pub mod protocols;
pub mod reactor;
pub mod scope;
pub mod sync;
pub mod web;

pub use deferred::{fail, is_debugging, maybe_deferred, set_debugging, succeed, CallbackResult, Deferred};
pub use deferred::{reset_lost_result_hook, set_lost_result_hook, CancelOutcome, CancelStep, LostResult};
pub use failure::{
    AlreadyCalledError, CancelId, CancelledError, ChainedToSelfError, Failure, NotPausedError, PanicError,
    ResultConsumedError, StringError, WaitCycleError,
};
pub use free_list::trim_free_lists;
pub use reactor::{Clock, DelayedCall, DelayedCallError, Reactor, ReactorHandle, ReactorTime};

pub use cache::ResponseCache;
pub use cancellation::{
    add_timeout, add_timeout_with, delay_cancellation, reverse_shield, stop_cancellation, timeout_deferred,
    TimeoutError,
};
pub use combinators::{
    gather_results, race, unwrap_first_error, DeferredList, FailureGroup, FirstError, ListResult,
};
pub use future::{ensure_deferred, DeferredFuture};
pub use observable::ObservableDeferred;
pub use scope::CancelScope;
pub use sync::{DeferredLock, DeferredQueue, DeferredSemaphore, Linearizer, Permit, ReadWriteLock, RwGuard};

/// The old name of [`future`], kept so that code written against it compiles.
#[doc(hidden)]
pub use future as task;
