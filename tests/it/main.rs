//! weft's integration tests: one binary, one module per area, each testing behaviour
//! through the public API only (unit tests of internals live beside the code).

mod cancellation;
mod combinators;
mod deferred;
mod leaks;
mod logcontext;
mod observable;
mod reactor;
mod response_cache;
mod support;
mod sync;
mod task;
mod tcp;
mod time;
mod udp;
mod web_cancel;
mod web_client;
mod web_rfc;
mod web_server;
