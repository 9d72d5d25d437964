//! Per-key reservations of encryptions: the block of each (key, version) an Encrypt draws from,
//! and its refills on the token (the only token writes of the Encrypt path).
//!
//! The fast path of an Encrypt is one atomic decrement of the local reservation. When half of
//! the block is left, the refiller thread (`super::prefetch`) reserves the next block on the
//! token (a read-write session of its own) with [`budget::reserve`]; a worker refills itself
//! only when the reservation runs dry first. The reservation's lock is taken only by those
//! threads, never by the async runtime.

use super::super::budget::{self, Grant, VersionBudget};
use super::super::token::Token;
use super::super::version_counters;
use super::super::versions;
use super::super::HsmError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pause between writing a counter and reading every counter again (see `refill`).
const VERIFY_DELAY: Duration = Duration::from_millis(20);

/// One instance's reservation of encryptions under one version.
#[derive(Default)]
pub(super) struct Reservation {
    left: AtomicU64,
    /// At or below this many left, the next block is reserved in the background.
    low_water: AtomicU64,
    /// A background reservation is queued or running.
    pub(super) prefetching: std::sync::atomic::AtomicBool,
    pub(super) refill: Mutex<Refill>,
}

#[derive(Default, Clone, Copy)]
pub(super) struct Refill {
    /// What this instance's counter on the token holds.
    own: u64,
    last_block: u64,
    granted_at: Option<Instant>,
    /// The reservation left right after the last grant (what has been used since is the
    /// rate the next block is sized by).
    left_after_grant: u64,
    /// The fleet's sum at the last refill, and the budget it was measured against.
    pub(super) total: u64,
    pub(super) max: u64,
}

impl Token {
    /// Has the refiller thread reserve a first block for the current version of `id` when
    /// this instance holds none and none is on its way. GetKeyMetadata calls it for a key that
    /// may encrypt: KMS asks for a key's metadata when the key is created in KMS, before any
    /// Encrypt, and without it the first Encrypt of a key served only through `key_pattern`
    /// reserves on the token under its own deadline, which a slow token takes it past (SoftHSM2
    /// with 1,000 keys: about 150 ms, and `DependencyTimeoutException`). Does not block.
    pub fn reserve_ahead(&self, id: &str, budget: &VersionBudget) {
        if !budget.counting || self.killed() {
            return;
        }
        let n = self.versions.current(id);
        let r = self.rotations.get(id, n);
        if r.left.load(Ordering::SeqCst) == 0 {
            self.refill_in_background(&r, id, n, budget);
        }
    }

    /// Queues a background reservation of the next block of `r` for the refiller, unless one
    /// is queued or running already; a full queue leaves it to a later call.
    fn refill_in_background(&self, r: &Reservation, id: &str, n: u32, budget: &VersionBudget) {
        if r.prefetching.swap(true, Ordering::SeqCst) {
            return;
        }
        let queued = self
            .rotations
            .refills
            .0
            .try_send((id.to_owned(), n, *budget, false));
        if queued.is_err() {
            r.prefetching.store(false, Ordering::SeqCst);
        }
    }

    /// Takes one encryption of version `n` of `id`: an atomic decrement while the local
    /// reservation lasts. Below half of the last block, the refiller thread reserves the
    /// next block in the background; only when the reservation runs dry before that (a burst,
    /// or the first encryption) does the worker refill on the token itself. Called by a worker
    /// right before `C_Encrypt`.
    pub(in crate::hsm) fn take_encryption(
        &self,
        id: &str,
        n: u32,
        budget: &VersionBudget,
    ) -> Result<(), HsmError> {
        if !budget.counting {
            return Ok(());
        }
        let r = self.rotations.get(id, n);
        if let Ok(before) = r
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        {
            if before <= r.low_water.load(Ordering::Relaxed) {
                self.refill_in_background(&r, id, n, budget);
            }
            return Ok(());
        }
        match self.refill(&r, id, n, budget, true)? {
            Some(_) => Ok(()),
            None => self.exhausted(id, n),
        }
    }

    /// Reserves the next block of `r` on the token (under its lock). With `take`, one
    /// encryption of it is taken for the caller. `None`: the budget is used up.
    pub(super) fn refill(
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
                        let (counts, own) = version_counters::counters_and_own(s, id, n, Some(me))?;
                        *own_objects.borrow_mut() = Some(own);
                        Ok(counts)
                    },
                    |v| version_counters::write_counter(s, &counter, v, own_objects.borrow_mut().take()),
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
}
