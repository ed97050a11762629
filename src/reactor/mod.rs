//! Time and (later) the event loop.
//!
//! The reactor itself is built in a later issue; today this module holds what both it
//! and tests need: the [`ReactorTime`] trait, the deterministic [`Clock`], and
//! [`DelayedCall`] with the timer heap behind it.

mod clock;
mod timers;

pub use clock::{Clock, ReactorTime};
pub use timers::{DelayedCall, DelayedCallError};
