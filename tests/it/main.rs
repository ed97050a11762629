//! weft's integration tests: one binary, one module per area, each testing behaviour
//! through the public API only (unit tests of internals live beside the code).

mod cancellation;
mod combinators;
mod deferred_callbacks;
mod deferred_cancel;
mod deferred_canceller_chain;
mod deferred_chaining;
mod deferred_cycles;
mod deferred_deep;
mod deferred_diagnostics;
mod deferred_drop;
mod deferred_model;
mod deferred_pause;
mod deferred_reentrancy;
mod logcontext;
mod observable;
mod reactor;
mod support;
mod sync;
mod task;
mod tcp;
mod time;
mod udp;
