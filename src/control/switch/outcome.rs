//! What the switch's transitions hand back: an engage's durability, a release's pending second
//! half, why a release did not happen, and the engage count a release is checked against.

use crate::control::state_file::StateFileError;

/// The outcome of an engage: in force at once; durable if the state file was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engaged {
    /// `None` when the state file holds the engage; otherwise why it does not (yet).
    pub not_durable: Option<String>,
}

/// A whole-proxy release that has been written but whose gate is still closed.
#[derive(Debug)]
#[must_use = "finish the release with Switch::finish_proxy_release"]
pub struct PendingRelease {
    pub(super) epoch: u64,
    pub(super) scope: &'static str,
}

/// Why a release did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// An engage of the same scope happened after the release started; it stays in force.
    #[error("an engage of the same scope arrived while the release was in progress; it stays ENGAGED")]
    Superseded,
    /// The released state could not be written; nothing changed.
    #[error("{0}; nothing was released")]
    Write(#[from] StateFileError),
}

/// A scope's engage count when a release started.
#[derive(Debug, Clone, Copy)]
pub struct Epoch(pub(super) u64);
