//! weft's integration tests: one binary, one module per area, each testing behaviour
//! through the public API only (unit tests of internals live beside the code).

mod async_helpers;
mod bounded_stack;
mod cancel_outcome;
mod cancel_provenance;
mod cancel_reports;
mod cancel_scope;
mod cancellation;
mod combinators;
mod cpu_accounting;
mod daemon_mix;
mod deferred_callbacks;
mod deferred_cancel;
mod deferred_canceller_chain;
mod deferred_chaining;
mod deferred_cycles;
mod deferred_deep;
mod deferred_diagnostics;
mod deferred_drop;
mod deferred_model;
mod deferred_ownership;
mod deferred_pause;
mod deferred_reentrancy;
mod embed;
mod embed_context;
mod embed_epoll;
mod embed_tokio;
mod flow_control;
mod future;
mod future_ownership;
#[cfg(feature = "futures")]
mod futures_interop;
mod leaks;
mod line_receiver;
mod listen;
mod logcontext;
mod lost_result;
mod memory_transport;
mod metrics;
mod observable;
mod per_core;
mod protocols_tcp;
mod reactor;
mod response_cache;
mod seed_pitfalls;
mod string_receivers;
mod support;
mod sy_helpers_more;
mod sy_logcontext_more;
mod sync;
mod tcp;
mod threads;
mod time;
#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "tokio")]
mod tokio_bridge;
#[cfg(feature = "tracing")]
mod tracing_spans;
mod transport;
mod tw_add_timeout;
mod tw_core_more;
mod tw_defer_more;
mod tw_futures;
mod tw_internet_more;
mod tw_react;
mod tw_task_more;
mod tw_threads_more;
mod udp;
mod web_cancel;
mod web_client;
mod web_rfc;
mod web_rfc_more;
mod web_server;
