//! Combinators over many Deferreds: [`DeferredList`], [`gather_results`], [`race`], and
//! the errors they report ([`FirstError`], [`FailureGroup`]).
//!
//! # Ownership
//!
//! Each member's chain owns the combinator's state and Deferred until that member's
//! outcome has reached it, so callbacks added to a combinator whose handle is dropped
//! still run when the members fire, as in Twisted. The combinator's Deferred owns the
//! members that have a canceller (or wait on another Deferred) until it fires, so such
//! members handed over and never referred to again are still cancelled with it; the two
//! keep each other alive meanwhile, so a combinator whose cancellable members never fire
//! and that is never cancelled stays alive with them (a cycle Twisted's garbage
//! collector would collect and `Rc` cannot): fire or cancel what you start. A member
//! with no canceller is reached weakly: once nobody else holds it, it can never fire,
//! so it is freed, and it counts as cancelled if the combinator is cancelled.
//!
//! # Cancellation
//!
//! Cancelling the combined Deferred cancels every member that has no result yet; every
//! `CancelledError` produced carries the id of that one cancel.

mod gather;
mod list;
mod race;

#[cfg(test)]
mod tests;

use std::error::Error;
use std::fmt;

use crate::Failure;

pub use gather::{gather_results, unwrap_first_error};
pub use list::{DeferredList, ListResult};
pub use race::race;

/// The first member of a list or gather to fail: its index and its failure (Twisted's
/// `defer.FirstError`).
#[derive(Clone, Debug)]
pub struct FirstError {
    /// The failure of that member.
    pub failure: Failure,
    /// The index of the member, in the order the members were given.
    pub index: usize,
}

impl fmt::Display for FirstError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "member {} failed", self.index)
    }
}

impl Error for FirstError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.failure.as_error())
    }
}

/// Every member of a [`race`] failed: their failures, in member order (Twisted's
/// `FailureGroup`).
#[derive(Clone, Debug)]
pub struct FailureGroup {
    /// One failure per member.
    pub failures: Vec<Failure>,
}

impl fmt::Display for FailureGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "all {} members failed", self.failures.len())
    }
}

impl Error for FailureGroup {}
