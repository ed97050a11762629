//! One integration test binary; one module per area.

mod cancellation;
mod combinators;
mod observable;
mod sync;
mod task;
