//! What other components hand the metrics to read at scrape time: the layers that own these
//! values sit above the metrics, so they lend a probe (or shared counters) instead of being
//! called from here.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// The connection budget as metrics see it, sampled at scrape time.
#[derive(Debug, Clone, Default)]
pub struct ConnectionSample {
    /// Open connections by state (`proven`, `unproven`).
    pub open: Vec<(&'static str, u64)>,
    /// Unproven connections evicted to admit a newcomer, by reason.
    pub evictions: Vec<(&'static str, u64)>,
    /// Newcomers refused, by reason.
    pub refusals: Vec<(&'static str, u64)>,
    /// Connections closed by a budget deadline or limit, by reason.
    pub closes: Vec<(&'static str, u64)>,
}

/// Takes a [`ConnectionSample`] (the server provides it once it exists).
pub type ConnectionProbe = Arc<dyn Fn() -> ConnectionSample + Send + Sync>;

/// Counters other components increment (they own them; metrics only reads).
#[derive(Default)]
pub struct Counters {
    /// Successful reloads.
    pub reloads_ok: AtomicU64,
    /// Refused reloads.
    pub reloads_failed: AtomicU64,
}

/// Whether the server drains, read at scrape time (the server sits above the metrics).
pub type DrainProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// The kill switch as metrics see it, sampled at scrape time.
#[derive(Debug, Clone, Default)]
pub struct SwitchSample {
    /// `proxy`, `keystore:<prefix>`, `key:<id>` and whether each is engaged.
    pub engaged: Vec<(String, bool)>,
    /// Does the state file hold the state in force?
    pub durable: bool,
}

/// Takes a [`SwitchSample`] (the control plane provides it; metrics sit below it).
pub type SwitchProbe = Arc<dyn Fn() -> SwitchSample + Send + Sync>;
