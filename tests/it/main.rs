//! weft's integration tests: one binary, one module per area, each testing behaviour
//! through the public API only (unit tests of internals live beside the code).

mod async_helpers;
mod cancellation;
mod combinators;
mod deferred;
mod future;
mod logcontext;
mod observable;
mod reactor;
mod support;
mod sync;
mod tcp;
mod threads;
mod time;
mod udp;
