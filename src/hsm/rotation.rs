//! Asking for rotations and reporting use: the rotation requests made when a version nears its
//! budget or its age (served by the rotator thread, `super::rotator`, which also runs `keys
//! rotate`), the per-token state the reservations and the refiller share with them, and the
//! metrics on both. Counting is in `reservations`, reserving ahead of need in `prefetch`.
//!
//! Rotation never runs on a worker: a request is queued to the token's rotator thread, which
//! settles the next version with [`budget::settle`](super::budget::settle).

mod prefetch;
mod reservations;

use super::budget::VersionBudget;
use super::marks;
use super::token::Token;
use super::HsmError;
use cryptoki::session::Session;
use reservations::Reservation;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a candidate waits for concurrent candidates to become visible before the winner
/// is chosen. It bounds how long a creator may stall between its check and its write.
pub const SETTLE: Duration = Duration::from_secs(1);
/// A failed automatic rotation is retried at most this often.
const RETRY_FAILED: Duration = Duration::from_secs(5);

/// What the metrics report for one key's current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionUse {
    /// External key id.
    pub key_id: String,
    /// Current version.
    pub version: u32,
    /// Encryptions reserved fleet-wide for it, as of this instance's last refill.
    pub counted: u64,
    /// Budget left (per the keystore's budget last used).
    pub remaining: u64,
}

/// A key's automatic rotation.
#[derive(Debug, Clone)]
enum Rotation {
    InFlight,
    Failed { at: Instant },
}

/// Both ends of a bounded queue to one of the token's background threads.
type Channel<T> = (crossbeam_channel::Sender<T>, crossbeam_channel::Receiver<T>);

/// The reservations of one token and its rotator's queue.
pub(super) struct Rotations {
    reservations: std::sync::RwLock<HashMap<String, HashMap<u32, Arc<Reservation>>>>,
    state: Mutex<HashMap<String, Rotation>>,
    /// Keys to rotate, with the version each request wants replaced.
    pub(super) queue: Channel<(String, u32)>,
    /// Reservations to make ahead of need; `true`: a start-up prefetch, made only if the
    /// key is on the token and can encrypt.
    refills: Channel<(String, u32, VersionBudget, bool)>,
    /// Counter of automatic rotations that could not create a version (exported as a metric).
    pub(super) failures: AtomicU64,
    /// Creation time of each key's version 1 from its creation record, read once per key
    /// (`None`: the key has none, e.g. it was made outside xks-bridge).
    v1_created: Mutex<HashMap<String, Option<u64>>>,
    /// When a refused counter write was last logged (each Encrypt retries it: one line per
    /// interval, not one per request).
    counter_refusal_log: Mutex<crate::clock::Throttle>,
    /// When an exhausted version that no rotation could replace was last logged (KMS retries
    /// every refused Encrypt: one line per interval, not one per request).
    exhausted_log: Mutex<crate::clock::Throttle>,
    /// Start-up prefetches queued and not yet handled by the refiller.
    prefetches_pending: (Mutex<usize>, std::sync::Condvar),
}

impl Default for Rotations {
    fn default() -> Self {
        Rotations {
            reservations: Default::default(),
            state: Default::default(),
            queue: crossbeam_channel::bounded(1024),
            refills: crossbeam_channel::bounded(1024),
            failures: AtomicU64::new(0),
            v1_created: Default::default(),
            counter_refusal_log: Mutex::new(crate::clock::Throttle::new(Duration::from_secs(10))),
            exhausted_log: Mutex::new(crate::clock::Throttle::new(Duration::from_secs(10))),
            prefetches_pending: Default::default(),
        }
    }
}

impl Rotations {
    fn get(&self, id: &str, n: u32) -> Arc<Reservation> {
        if let Some(r) = self
            .reservations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .and_then(|m| m.get(&n))
        {
            return r.clone();
        }
        let mut w = self.reservations.write().unwrap_or_else(|p| p.into_inner());
        w.entry(id.to_owned()).or_default().entry(n).or_default().clone()
    }

    fn rotating(&self, id: &str) -> bool {
        matches!(
            self.state.lock().unwrap_or_else(|p| p.into_inner()).get(id),
            Some(Rotation::InFlight)
        )
    }

    /// Queues an automatic rotation of `id` away from version `n` unless one is in flight or
    /// failed recently.
    fn request(&self, id: &str, n: u32) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.get(id) {
            Some(Rotation::InFlight) => return,
            Some(Rotation::Failed { at }) if at.elapsed() < RETRY_FAILED => return,
            _ => {}
        }
        if self.queue.0.try_send((id.to_owned(), n)).is_ok() {
            st.insert(id.to_owned(), Rotation::InFlight);
        }
    }

    pub(super) fn finished(&self, id: &str, ok: bool) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            st.remove(id);
        } else {
            st.insert(id.to_owned(), Rotation::Failed { at: Instant::now() });
        }
    }
}

impl Token {
    /// The version's budget is used up: a rotation is requested, and the caller gets a
    /// throttle (a new version is settling) or, when none can be made, a refusal.
    fn exhausted(&self, id: &str, n: u32) -> Result<(), HsmError> {
        if self.versions.current(id) != n {
            return Err(HsmError::VersionExhausted {
                version: n,
                rotating: true,
            });
        }
        self.rotations.request(id, n);
        let rotating = self.rotations.rotating(id);
        let due = (!rotating)
            .then(|| {
                self.rotations
                    .exhausted_log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .due()
            })
            .flatten();
        if let Some(held_back) = due {
            tracing::error!(token = %self.name, key_id = id, version = n, refused_since_last_line = held_back, "ENCRYPTION BUDGET EXHAUSTED and no new key version could be created: Encrypt under this key is refused until a version is created (keys rotate) or the budget raised");
        }
        Err(HsmError::VersionExhausted { version: n, rotating })
    }

    fn maybe_rotate(&self, id: &str, n: u32, total: u64, budget: &VersionBudget) {
        if self.versions.current(id) != n {
            return;
        }
        let by_count = total >= budget.rotate_at();
        let by_age = budget.rotate_after.is_some_and(|age| {
            self.version_created_ms(id, n)
                .is_some_and(|c| now_ms().saturating_sub(c) >= age.as_millis() as u64)
        });
        if by_count || by_age {
            self.rotations.request(id, n);
        }
    }

    /// When version `n` of `id` was created. Versions from 2 on carry it in their record;
    /// version 1 is the key itself, whose time is in its creation record if xks-bridge made or
    /// imported it. A key without one is never rotated by age until its first rotation (said
    /// once in the log): PKCS#11 has no creation time to fall back on.
    fn version_created_ms(&self, id: &str, n: u32) -> Option<u64> {
        if let Some(ms) = self.versions.get(id, n).and_then(|v| v.created_ms) {
            return Some(ms);
        }
        if n != 1 {
            return None;
        }
        let mut known = self
            .rotations
            .v1_created
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(ms) = known.get(id) {
            return *ms;
        }
        // A failed read is not remembered: the next reservation tries again.
        let ms = self.with_rw_session(|s| marks::created_ms(s, id)).ok()?;
        if ms.is_none() {
            tracing::warn!(token = %self.name, key_id = id, "rotate_after_days: version 1 of this key has no creation record (it was made outside xks-bridge), so its age is unknown and it is not rotated by age; `keys rotate` once starts the clock");
        }
        known.insert(id.to_owned(), ms);
        ms
    }

    /// The current version of every key with a reservation, with its use (metrics).
    pub fn version_use(&self) -> Vec<VersionUse> {
        let res = self
            .rotations
            .reservations
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (id, by_version) in res.iter() {
            let v = self.versions.current(id);
            let refill = |r: &Arc<Reservation>| *r.refill.lock().unwrap_or_else(|p| p.into_inner());
            let st = by_version.get(&v).map(refill).unwrap_or_default();
            // A version not refilled yet here still has the budget its predecessor had.
            let max = by_version.values().map(|r| refill(r).max).max().unwrap_or(0);
            out.push(VersionUse {
                key_id: id.clone(),
                version: v,
                counted: st.total,
                remaining: max.saturating_sub(st.total),
            });
        }
        out.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        out
    }

    /// Automatic rotations that could not create a version since start.
    pub fn rotation_failures(&self) -> u64 {
        self.rotations.failures.load(Ordering::Relaxed)
    }

    /// Runs `f` on a new read-write session of the connection, without the lifecycle lock.
    pub(super) fn with_rw_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let _call = self.conn.enter();
        let s = self.conn.open(true)?;
        f(s.session())
    }
}

/// Starts the rotator and refiller threads of `token` (the daemon only; offline commands
/// never encrypt).
pub fn spawn(token: Arc<Token>) {
    let name = format!("hsm-{}-rotator", token.name);
    let t = token.clone();
    if let Err(e) = std::thread::Builder::new().name(name).spawn(move || t.rotator()) {
        tracing::error!(error = %e, "cannot start the key rotator thread");
    }
    let name = format!("hsm-{}-refiller", token.name);
    if let Err(e) = std::thread::Builder::new()
        .name(name)
        .spawn(move || token.refiller())
    {
        tracing::error!(error = %e, "cannot start the reservation refiller thread");
    }
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
