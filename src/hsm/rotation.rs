//! Counting on the token and asking for rotations: the per-(key, version) reservations an
//! Encrypt draws from, their refills (the only token writes of the Encrypt path), and the
//! rotation requests made when a version nears its budget or its age (served by the rotator
//! thread, `super::rotator`, which also runs `keys rotate`).
//!
//! The fast path of an Encrypt is one atomic decrement of the local reservation. When
//! half of the block is left, the refiller thread reserves the next block on the token (a
//! read-write session of its own) with [`budget::reserve`]; a worker refills itself only when
//! the reservation runs dry first. The reservation's lock is taken only by those threads,
//! never by the async runtime. Rotation never runs on a worker: a request is queued to
//! the token's rotator thread, which settles the next version with [`budget::settle`].

use super::budget::{self, Grant, VersionBudget};
use super::key_objects::{find_key, VersionUsages};
use super::marks;
use super::token::Token;
use super::versions::{self};
use super::HsmError;
use cryptoki::session::Session;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a candidate waits for concurrent candidates to become visible before the winner
/// is chosen. It bounds how long a creator may stall between its check and its write.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Pause between writing a counter and reading every counter again (see `refill`).
const VERIFY_DELAY: Duration = Duration::from_millis(20);
/// A failed automatic rotation is retried at most this often.
const RETRY_FAILED: Duration = Duration::from_secs(5);

/// One instance's reservation of encryptions under one version.
#[derive(Default)]
pub(super) struct Reservation {
    left: AtomicU64,
    /// At or below this many left, the next block is reserved in the background.
    low_water: AtomicU64,
    /// A background reservation is queued or running.
    prefetching: std::sync::atomic::AtomicBool,
    refill: Mutex<Refill>,
}

#[derive(Default, Clone, Copy)]
struct Refill {
    /// What this instance's counter on the token holds.
    own: u64,
    last_block: u64,
    granted_at: Option<Instant>,
    /// The reservation left right after the last grant (what has been used since is the
    /// rate the next block is sized by).
    left_after_grant: u64,
    /// The fleet's sum at the last refill, and the budget it was measured against.
    total: u64,
    max: u64,
}

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
    /// Takes one encryption of version `n` of `id`: an atomic decrement while the local
    /// reservation lasts. Below half of the last block, the refiller thread reserves the
    /// next block in the background; only when the reservation runs dry before that (a burst,
    /// or the first encryption) does the worker refill on the token itself. Called by a worker
    /// right before `C_Encrypt`.
    pub(super) fn take_encryption(&self, id: &str, n: u32, budget: &VersionBudget) -> Result<(), HsmError> {
        if !budget.counting {
            return Ok(());
        }
        let r = self.rotations.get(id, n);
        if let Ok(before) = r
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        {
            if before <= r.low_water.load(Ordering::Relaxed) && !r.prefetching.swap(true, Ordering::SeqCst) {
                let queued = self
                    .rotations
                    .refills
                    .0
                    .try_send((id.to_owned(), n, *budget, false));
                if queued.is_err() {
                    r.prefetching.store(false, Ordering::SeqCst);
                }
            }
            return Ok(());
        }
        match self.refill(&r, id, n, budget, true)? {
            Some(_) => Ok(()),
            None => self.exhausted(id, n),
        }
    }

    /// Asks the refiller thread to reserve a first block for the current version of each of
    /// `keys` that is on the token with encrypt usage, so that the first Encrypt after a start
    /// does not make the reservation itself under its deadline (one token search: about 130 ms
    /// on SoftHSM2 with 1,000 keys, which is past the default 150 ms with the write and check).
    /// Does not block: the daemon calls it once per token after logging in.
    pub fn prefetch_reservations(&self, keys: &[(String, VersionBudget)]) {
        let (pending, _) = &self.rotations.prefetches_pending;
        for (id, budget) in keys.iter().filter(|(_, b)| b.counting) {
            let n = self.versions.current(id);
            let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
            if self
                .rotations
                .refills
                .0
                .try_send((id.clone(), n, *budget, true))
                .is_ok()
            {
                *pending += 1;
            }
        }
    }

    /// Keys whose current version this instance reserved encryptions under before (its own
    /// counter is on the token), the most reserved first, at most `limit`. After a restart
    /// these are the keys likely to be used again; on a slow token (SoftHSM2 with 1,000 keys)
    /// a first reservation made under a request's deadline takes it past that deadline, so the
    /// daemon reserves for them at start, as for `allowed_keys`. Empty when the token cannot be
    /// read (the keys then reserve at their first Encrypt, as before).
    pub fn previously_reserved(&self, limit: usize) -> Vec<String> {
        let Ok(me) = self.instance_id() else {
            return Vec::new();
        };
        let Ok(mut own) = self.with_rw_session(|s| versions::own_counts(s, me)) else {
            return Vec::new();
        };
        own.retain(|((id, n), _)| *n == self.versions.current(id));
        own.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        own.into_iter().take(limit).map(|((id, _), _)| id).collect()
    }

    /// Waits until the refiller has handled every start-up prefetch (made or skipped), at most
    /// `timeout`; false when some are still pending. The daemon starts serving after this, so
    /// that the first requests do not queue behind the reservations and time out (SoftHSM2
    /// with 1,000 keys: about 100 ms per reservation, while requests get 150 ms).
    pub fn wait_prefetched(&self, timeout: Duration) -> bool {
        let (pending, done) = &self.rotations.prefetches_pending;
        let guard = pending.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = done
            .wait_timeout_while(guard, timeout, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        *guard == 0
    }

    /// Whether `id` is on the token and may encrypt (a start-up prefetch is made only then).
    fn can_encrypt(&self, id: &str) -> bool {
        let encrypts = self.with_rw_session(|s| {
            let v1 = find_key(s, id)?;
            Ok(VersionUsages::of(s, v1)?.encrypt)
        });
        matches!(encrypts, Ok(true))
    }

    /// Reserves the next block of `r` on the token (under its lock). With `take`, one
    /// encryption of it is taken for the caller. `None`: the budget is used up.
    fn refill(
        &self,
        r: &Reservation,
        id: &str,
        n: u32,
        budget: &VersionBudget,
        take: bool,
    ) -> Result<Option<u64>, HsmError> {
        let mut st = r.refill.lock().unwrap_or_else(|p| p.into_inner());
        // Another thread may have refilled while this one waited for the lock.
        if take
            && r.left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                .is_ok()
        {
            return Ok(Some(0));
        }
        let left_now = r.left.load(Ordering::SeqCst);
        if !take && left_now > r.low_water.load(Ordering::Relaxed) {
            // A background request made stale by a refill since: nothing to do.
            return Ok(Some(0));
        }
        let me = self.instance_id()?;
        let consumed = st.left_after_grant.saturating_sub(left_now);
        let want = budget::next_block(st.last_block, consumed, st.granted_at.map(|t| t.elapsed()))
            .min(budget::block_cap(budget.max_encryptions));
        let want = if st.total >= budget.rotate_at() {
            // Past the rotation point: leave the rest to be shared while the new version settles.
            want.min(((budget.max_encryptions.saturating_sub(st.total)) / 2).max(1))
        } else {
            want
        };
        let counter = versions::counter_label(id, n, me);
        let mut reads = 0;
        // This instance's counter objects as the last read found them: the write after a read
        // needs no search of its own.
        let own_objects = std::cell::RefCell::new(None);
        let grant = self
            .with_rw_session(|s| {
                budget::reserve(
                    me,
                    st.own,
                    want,
                    budget.max_encryptions,
                    || {
                        reads += 1;
                        if reads > 1 {
                            // The check after the write: another process's write that completed
                            // before it must be visible to it. SoftHSM2's file store was seen to
                            // show another process's fresh object a moment late; the pause covers it.
                            std::thread::sleep(VERIFY_DELAY);
                        }
                        let (counts, own) = versions::counters_and_own(s, id, n, Some(me))?;
                        *own_objects.borrow_mut() = Some(own);
                        Ok(counts)
                    },
                    |v| versions::write_counter(s, &counter, v, own_objects.borrow_mut().take()),
                )
            })
            .map_err(|e| self.counter_refused(id, n, e))?;
        st.max = budget.max_encryptions;
        match grant {
            Grant::Granted { own, block, total } => {
                st.own = own;
                st.last_block = block;
                st.granted_at = Some(Instant::now());
                st.total = total;
                r.low_water.store(block / 2, Ordering::Relaxed);
                st.left_after_grant =
                    r.left.fetch_add(block - u64::from(take), Ordering::SeqCst) + block - u64::from(take);
                drop(st);
                self.maybe_rotate(id, n, total, budget);
                Ok(Some(block))
            }
            Grant::Exhausted { total, own } => {
                st.own = own;
                st.total = total;
                Ok(None)
            }
        }
    }

    /// A counter write the token refused becomes [`HsmError::CounterRefused`] (Encrypt is
    /// refused: fail closed), logged loudly but at most every ten seconds; failures of the
    /// connection itself stay what they are.
    fn counter_refused(&self, id: &str, n: u32, e: HsmError) -> HsmError {
        if e.device_lost() || e.session_lost() || !matches!(e, HsmError::Device { .. }) {
            return e;
        }
        let due = self
            .rotations
            .counter_refusal_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due();
        if let Some(held_back) = due {
            tracing::error!(token = %self.name, key_id = id, version = n, error = %e, refused_since_last_line = held_back, "ENCRYPTION COUNTER REFUSED by the token: Encrypt is refused so that the budget cannot be passed uncounted; let this login create private data objects, or set count_encryptions = false for the keystore (then nothing enforces the bound)");
        }
        HsmError::CounterRefused(e.to_string())
    }

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
        if !rotating {
            tracing::error!(token = %self.name, key_id = id, version = n, "ENCRYPTION BUDGET EXHAUSTED and no new key version could be created: Encrypt under this key is refused until a version is created (keys rotate) or the budget raised");
        }
        Err(HsmError::VersionExhausted { version: n, rotating })
    }

    /// The refiller: reserves blocks ahead of need, off the workers.
    fn refiller(&self) {
        let rx = self.rotations.refills.1.clone();
        while let Ok((id, n, budget, prefetch)) = rx.recv() {
            let _handled = prefetch.then(|| PrefetchHandled(&self.rotations.prefetches_pending));
            if prefetch && (self.killed() || !self.can_encrypt(&id)) {
                continue;
            }
            let r = self.rotations.get(&id, n);
            if !self.killed() {
                if let Err(e) = self.refill(&r, &id, n, &budget, false) {
                    tracing::warn!(token = %self.name, key_id = %id, version = n, error = %e, "background reservation failed; the next Encrypt reserves itself");
                }
            }
            r.prefetching.store(false, Ordering::SeqCst);
        }
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

/// Counts one start-up prefetch as handled when the refiller is done with it, however it ends.
struct PrefetchHandled<'a>(&'a (Mutex<usize>, std::sync::Condvar));

impl Drop for PrefetchHandled<'_> {
    fn drop(&mut self) {
        let (pending, done) = self.0;
        let mut n = pending.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        done.notify_all();
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
