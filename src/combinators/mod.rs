//! Combinators over many Deferreds: [`DeferredList`], [`gather_results`], [`race`], and
//! the errors they report ([`FirstError`], [`FailureGroup`]).
//!
//! Each combinator's own Deferred holds its members only weakly (through its canceller),
//! and each member's chain holds the combinator's state, so the responders keep the whole
//! thing alive, as in Twisted, and nothing forms a reference cycle.
//!
//! # Cancellation
//!
//! Cancelling the combined Deferred cancels every member that has no result yet; every
//! `CancelledError` produced carries the id of that one cancel.

mod gather;
mod list;
mod race;

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
