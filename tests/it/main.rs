//! weft's integration tests: one binary, one module per area, each testing behaviour
//! through the public API only (unit tests of internals live beside the code).

mod async_helpers;
mod cancellation;
mod combinators;
mod cpu_accounting;
mod deferred;
mod embed;
mod embed_context;
mod embed_epoll;
mod embed_tokio;
mod flow_control;
mod future;
mod leaks;
mod line_receiver;
mod listen;
mod logcontext;
mod memory_transport;
mod observable;
mod per_core;
mod protocols_tcp;
mod reactor;
mod string_receivers;
mod support;
mod sync;
mod tcp;
mod threads;
mod time;
mod transport;
mod udp;
