//! Bridges to the rest of the Rust async ecosystem, each behind a cargo feature:
//!
//! - `tokio` (feature `tokio`): run a `Send` future on a shared tokio runtime and get
//!   its output as a [`Deferred`](crate::Deferred) on the reactor thread
//!   (`compat::tokio::spawn`); hand a Deferred to tokio code as a `Send` future
//!   (`compat::tokio::IntoSendFuture`).
//! - `futures` (feature `futures`): `Stream` and `Sink` for
//!   [`DeferredQueue`](crate::DeferredQueue), a `Stream` of a connection's bytes with
//!   backpressure, and which `futures` combinators work on weft's thread.
//!
//! (The modules of features that are off are not built, so they are named here without
//! links.)
//!
//! # Which futures run where
//!
//! weft's own futures (a [`Deferred`](crate::Deferred) awaited, [`DeferredFuture`](crate::DeferredFuture),
//! the tasks of [`ensure_deferred`](crate::ensure_deferred)) are `!Send` and run on the
//! reactor thread. Any future that needs no runtime of its own runs there too, `Send`
//! or not: `async` blocks, `futures` combinators (`select`, `join`, `StreamExt`),
//! channels (`futures::channel`, `tokio::sync`, `async-channel`): their wakers are
//! plain wakers, and weft's task wakers work from any thread. A future that needs a
//! specific runtime's reactor (tokio's `time::sleep`, `net::TcpStream`, any client built
//! on them: hyper, reqwest, sqlx, tonic) panics or never wakes outside that runtime:
//! run it on tokio with `compat::tokio::spawn` and await the Deferred. The weft equivalents of
//! those are [`defer_later`](crate::reactor::defer_later) and the reactor's transports.

#[cfg(feature = "futures")]
pub mod futures;
#[cfg(feature = "tokio")]
pub mod tokio;
