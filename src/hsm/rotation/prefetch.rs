//! Reserving ahead of need: the refiller thread, which reserves encryption blocks off the
//! workers, and the start-up prefetch that has it reserve a first block for the keys likely to
//! be used before the daemon starts serving, so that the first Encrypts do not make their
//! reservations under their deadlines.

use super::super::budget::VersionBudget;
use super::super::key_objects::{find_key, VersionUsages};
use super::super::token::Token;
use super::super::version_counters;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

impl Token {
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
        let Ok(mut own) = self.with_rw_session(|s| version_counters::own_counts(s, me)) else {
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
    /// The refiller: reserves blocks ahead of need, off the workers.
    pub(super) fn refiller(&self) {
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
