//! The connection budget: who gets one of the `max_connections` slots.
//!
//! A connection is *unproven* from accept until it carries a request whose SigV4 signature
//! verified (or presents a client certificate that passed mTLS); then it is *proven*. Unproven
//! connections share at most `max_unproven_connections` slots, so proven ones (KMS) always keep
//! the rest. A newcomer is never turned away because of unproven connections: when their share
//! (or the whole budget) is full, the oldest unproven connection is evicted to admit it. Only
//! when every slot is held by proven connections is a newcomer refused. Without this, anyone
//! who can complete a TCP handshake could hold the proxy full and lock KMS out.
//!
//! Optional per-source caps keep one address from owning the unproven share or more than a
//! fixed number of slots (refused). A source at its unproven cap gets its own oldest unproven
//! connection evicted for a newcomer only when that one is at least [`PER_SOURCE_MIN_AGE`] old
//! (the first-request deadline's default: a connection that old has sent a request and still
//! not proven itself); otherwise the newcomer is refused before any TLS work (and held by the
//! server's tarpit). Evicting younger ones would let a client that reconnects as fast as it can
//! turn the cap into a churn of full TLS handshakes (measured: ~20,000 reconnects/s and 15,000
//! handshakes in 25 s on two cores, starving every other source's handshakes).

use crate::config::ServerConfig;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long an unproven connection is safe from eviction by a newcomer of its own source.
/// A source whose unproven connections are all younger opens them faster than
/// `max_unproven_per_source` per this interval: that is a flood, not a client.
pub const PER_SOURCE_MIN_AGE: Duration = Duration::from_secs(5);

/// The budget's limits, from `[server]`.
#[derive(Debug, Clone)]
pub struct BudgetLimits {
    /// All connections at once.
    pub max_connections: usize,
    /// Unproven connections at once (at most `max_connections`).
    pub max_unproven: usize,
    /// Unproven connections per source address; 0 = no cap.
    pub max_unproven_per_source: usize,
    /// Connections per source address, proven or not; 0 = no cap.
    pub max_per_source: usize,
    /// Apply the per-source caps to loopback sources too (tests, local load generators).
    pub per_source_on_loopback: bool,
}

impl From<&ServerConfig> for BudgetLimits {
    fn from(s: &ServerConfig) -> Self {
        BudgetLimits {
            max_connections: s.max_connections,
            max_unproven: s.unproven_share(),
            max_unproven_per_source: s.max_unproven_per_source,
            max_per_source: s.max_connections_per_source,
            per_source_on_loopback: s.per_source_limits_on_loopback,
        }
    }
}

/// Why a newcomer was refused (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot is held by a proven connection.
    AllProven,
    /// The source already holds `max_connections_per_source` connections.
    PerSource,
    /// The source holds `max_unproven_per_source` unproven connections, all younger than
    /// [`PER_SOURCE_MIN_AGE`].
    PerSourceUnproven,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::AllProven => "all_proven",
            Refusal::PerSource => "per_source",
            Refusal::PerSourceUnproven => "per_source_unproven",
        }
    }
}

/// Counters the metrics read at scrape time.
#[derive(Debug, Default)]
pub struct BudgetStats {
    /// Unproven connections evicted to admit a newcomer (global share full).
    pub evicted_share: AtomicU64,
    /// Unproven connections evicted because their source reached its unproven cap.
    pub evicted_per_source: AtomicU64,
    /// Unproven connections closed because no request arrived in time.
    pub first_request_timeouts: AtomicU64,
    /// Connections closed because a response made no write progress in time.
    pub write_timeouts: AtomicU64,
    /// Unproven connections closed after too many requests without a verified signature.
    pub unproven_request_limit: AtomicU64,
    /// Newcomers refused: every slot proven.
    pub refused_all_proven: AtomicU64,
    /// Newcomers refused: per-source cap.
    pub refused_per_source: AtomicU64,
    /// Newcomers refused: per-source unproven cap, none of the source's old enough to evict.
    pub refused_per_source_unproven: AtomicU64,
}

/// A point-in-time view for the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct BudgetSample {
    /// Proven connections open.
    pub proven: usize,
    /// Unproven connections open.
    pub unproven: usize,
}

struct Entry {
    source: IpAddr,
    since: Instant,
    /// Dropping or firing it closes the connection's task.
    evict: oneshot::Sender<()>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    proven: usize,
    /// Unproven connections by id; ids grow with accept time, so the first is the oldest.
    unproven: BTreeMap<u64, Entry>,
    /// Unproven ids per source (only for sources the per-source caps apply to).
    unproven_by_source: HashMap<IpAddr, BTreeSet<u64>>,
    /// Open connections per source (only when `max_per_source` is on).
    by_source: HashMap<IpAddr, usize>,
}

/// The shared budget; one per server.
pub struct Budget {
    limits: BudgetLimits,
    state: Mutex<State>,
    /// Eviction and refusal counters.
    pub stats: Arc<BudgetStats>,
}

/// A connection's hold on its slot: released on drop. The request handler marks it proven
/// through a [`Proof`].
pub struct Slot {
    budget: Arc<Budget>,
    id: u64,
    source: IpAddr,
    proof: Proof,
    /// Resolves `Ok` when the budget evicts this connection.
    pub evicted: oneshot::Receiver<()>,
}

/// Per-connection flag set once a request on it verified (cheap to check and to clone into
/// each request's extensions).
#[derive(Clone)]
pub struct Proof(Arc<ProofInner>);

struct ProofInner {
    proven: AtomicBool,
    /// A request head arrived while unproven (ends the first-request deadline).
    requested: AtomicBool,
    /// Set under the budget's lock when the connection took a proven slot (an evicted
    /// connection that proves itself afterwards never does).
    promoted: AtomicBool,
    slot_id: u64,
    budget: Arc<Budget>,
}

impl Proof {
    /// Has this connection carried a verified request?
    pub fn is_proven(&self) -> bool {
        self.0.proven.load(Ordering::Relaxed)
    }

    /// Records that a request head arrived.
    pub fn mark_request(&self) {
        self.0.requested.store(true, Ordering::Relaxed);
    }

    /// Has a request head arrived, or is the connection proven?
    pub fn has_requested(&self) -> bool {
        self.0.requested.load(Ordering::Relaxed) || self.is_proven()
    }

    /// Marks the connection proven; the first call moves it out of the evictable set.
    pub fn prove(&self) {
        if !self.0.proven.swap(true, Ordering::AcqRel) {
            self.0.budget.promote(&self.0);
        }
    }
}

impl Budget {
    /// A budget with `limits`.
    pub fn new(limits: BudgetLimits) -> Arc<Budget> {
        Arc::new(Budget {
            limits,
            state: Mutex::new(State::default()),
            stats: Arc::new(BudgetStats::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn capped(&self, source: IpAddr) -> bool {
        self.limits.per_source_on_loopback || !source.is_loopback()
    }

    /// Admits a connection from `source`, evicting the oldest unproven connection(s) if that
    /// is what it takes, or refuses it.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Slot, Refusal> {
        let source = source.to_canonical();
        let capped = self.capped(source);
        let mut st = self.lock();
        if capped && self.limits.max_per_source > 0 {
            let n = st.by_source.get(&source).copied().unwrap_or(0);
            if n >= self.limits.max_per_source {
                self.stats.refused_per_source.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::PerSource);
            }
        }
        if capped && self.limits.max_unproven_per_source > 0 {
            let own = st.unproven_by_source.get(&source).map_or(0, |s| s.len());
            if own >= self.limits.max_unproven_per_source {
                let oldest = st
                    .unproven_by_source
                    .get(&source)
                    .and_then(|s| s.first().copied());
                if let Some(id) = oldest {
                    let old_enough = st
                        .unproven
                        .get(&id)
                        .is_some_and(|e| e.since.elapsed() >= PER_SOURCE_MIN_AGE);
                    if !old_enough {
                        self.stats
                            .refused_per_source_unproven
                            .fetch_add(1, Ordering::Relaxed);
                        return Err(Refusal::PerSourceUnproven);
                    }
                    Self::evict(&mut st, id);
                    self.stats.evicted_per_source.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        while st.unproven.len() >= self.limits.max_unproven
            || st.proven + st.unproven.len() >= self.limits.max_connections
        {
            let Some(id) = st.unproven.keys().next().copied() else {
                self.stats.refused_all_proven.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::AllProven);
            };
            Self::evict(&mut st, id);
            self.stats.evicted_share.fetch_add(1, Ordering::Relaxed);
        }
        let id = st.next_id;
        st.next_id += 1;
        let (tx, rx) = oneshot::channel();
        st.unproven.insert(
            id,
            Entry {
                source,
                since: Instant::now(),
                evict: tx,
            },
        );
        if capped && self.limits.max_unproven_per_source > 0 {
            st.unproven_by_source.entry(source).or_default().insert(id);
        }
        if capped && self.limits.max_per_source > 0 {
            *st.by_source.entry(source).or_default() += 1;
        }
        drop(st);
        let proof = Proof(Arc::new(ProofInner {
            proven: AtomicBool::new(false),
            requested: AtomicBool::new(false),
            promoted: AtomicBool::new(false),
            slot_id: id,
            budget: self.clone(),
        }));
        Ok(Slot {
            budget: self.clone(),
            id,
            source,
            proof,
            evicted: rx,
        })
    }

    /// Removes unproven `id` and tells its task to close. Its slot counts as free at once: the
    /// task only has to drop a socket.
    fn evict(st: &mut State, id: u64) {
        if let Some(e) = st.unproven.remove(&id) {
            Self::forget_source(st, e.source, id);
            let _ = e.evict.send(());
        }
    }

    fn forget_source(st: &mut State, source: IpAddr, id: u64) {
        if let Some(set) = st.unproven_by_source.get_mut(&source) {
            set.remove(&id);
            if set.is_empty() {
                st.unproven_by_source.remove(&source);
            }
        }
    }

    fn promote(&self, p: &ProofInner) {
        let mut st = self.lock();
        // Already evicted: its task is closing; it must not take a proven slot.
        if let Some(e) = st.unproven.remove(&p.slot_id) {
            Self::forget_source(&mut st, e.source, p.slot_id);
            st.proven += 1;
            p.promoted.store(true, Ordering::Relaxed);
        }
    }

    fn release(&self, id: u64, source: IpAddr, proof: &ProofInner) {
        let mut st = self.lock();
        if let Some(e) = st.unproven.remove(&id) {
            Self::forget_source(&mut st, e.source, id);
        } else if proof.promoted.load(Ordering::Relaxed) {
            st.proven -= 1;
        }
        if let Some(n) = st.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                st.by_source.remove(&source);
            }
        }
    }

    /// Connections open by state.
    pub fn sample(&self) -> BudgetSample {
        let st = self.lock();
        BudgetSample {
            proven: st.proven,
            unproven: st.unproven.len(),
        }
    }
}

impl Slot {
    /// The flag the request handler sets.
    pub fn proof(&self) -> &Proof {
        &self.proof
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // `promoted` is only written under the lock `release` takes, so the proven count is
        // decremented exactly for connections that incremented it.
        self.budget.release(self.id, self.source, &self.proof.0);
    }
}
