//! Which keys of one token are refused: `marks`, the disabled-key marks last read from the
//! token, and `local`, keys this process refuses on its own (a disable whose token write was
//! refused, or a list the control layer reinstalls from its state file at start). A key is
//! refused when it is in either set.
//!
//! Local changes flip memory first, then write the token, so the refusal takes effect before
//! the (slow) token write. The background poll and `connect` replace only `marks`, never
//! `local`. Every local change bumps a change counter under the write lock; a poll that read
//! the token while the counter moved discards its result and tries again at the next tick, so
//! a poll can never undo a concurrent disable or enable. Local changes are serialized with each
//! other and with `connect`'s read by a lifecycle lock that only blocking threads ever take.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

/// Where a disable took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkOutcome {
    /// The mark is on the token: every instance sharing it refuses the key, across restarts.
    OnToken,
    /// The token refused the mark; only this process refuses the key. The control layer must
    /// persist it (and reinstall it with [`super::Token::deny_locally`] at start).
    LocalOnly {
        /// The token's answer.
        reason: String,
    },
}

#[derive(Default)]
struct Sets {
    marks: HashSet<String>,
    local: HashSet<String>,
}

#[derive(Default)]
pub(super) struct KeyState {
    sets: RwLock<Sets>,
    changes: AtomicU64,
    lifecycle: Mutex<()>,
}

impl KeyState {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Sets> {
        self.sets.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Sets> {
        self.sets.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Held across "flip memory, write the token, settle memory", and across connect's read
    /// and install of the marks.
    pub(super) fn lock_lifecycle(&self) -> MutexGuard<'_, ()> {
        self.lifecycle.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn is_refused(&self, id: &str) -> bool {
        let s = self.read();
        s.marks.contains(id) || s.local.contains(id)
    }

    pub(super) fn refused_keys(&self) -> Vec<String> {
        let s = self.read();
        let mut v: Vec<String> = s.marks.union(&s.local).cloned().collect();
        v.sort();
        v
    }

    pub(super) fn local_denies(&self) -> Vec<String> {
        let mut v: Vec<String> = self.read().local.iter().cloned().collect();
        v.sort();
        v
    }

    /// Adds `id` to `local`; true when it was not there yet.
    pub(super) fn deny_locally(&self, id: &str) -> bool {
        let mut s = self.write();
        self.changes.fetch_add(1, Ordering::SeqCst);
        s.local.insert(id.to_owned())
    }

    pub(super) fn lift_local(&self, id: &str) {
        let mut s = self.write();
        self.changes.fetch_add(1, Ordering::SeqCst);
        s.local.remove(id);
    }

    /// The token now carries the mark: `id` moves from `local` to `marks`.
    pub(super) fn marked_on_token(&self, id: &str) {
        let mut s = self.write();
        self.changes.fetch_add(1, Ordering::SeqCst);
        s.marks.insert(id.to_owned());
        s.local.remove(id);
    }

    /// The token no longer carries a mark and this process no longer refuses `id`.
    pub(super) fn forget(&self, id: &str) {
        let mut s = self.write();
        self.changes.fetch_add(1, Ordering::SeqCst);
        s.marks.remove(id);
        s.local.remove(id);
    }

    /// Read before a poll reads the token.
    pub(super) fn change_count(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Installs marks read while the lifecycle lock was held (connect): no local change to the
    /// marks can have overlapped the read.
    pub(super) fn install_marks(&self, marks: HashSet<String>) {
        let mut s = self.write();
        // A poll that read the previous connection's marks must not install them over these.
        self.changes.fetch_add(1, Ordering::SeqCst);
        s.marks = marks;
    }

    /// Installs marks read from the token, unless a local change happened since `seen` (then
    /// `None`: the read may predate that change's token write). `Some(true)` when the set
    /// differs from the previous one.
    pub(super) fn install_polled(&self, seen: u64, marks: HashSet<String>) -> Option<bool> {
        let mut s = self.write();
        if self.changes.load(Ordering::SeqCst) != seen {
            return None;
        }
        let changed = s.marks != marks;
        s.marks = marks;
        Some(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_that_overlapped_a_local_change_is_discarded() {
        let k = KeyState::default();
        let seen = k.change_count();
        k.deny_locally("a");
        assert_eq!(k.install_polled(seen, HashSet::new()), None);
        assert!(k.is_refused("a"));
        let seen = k.change_count();
        assert_eq!(
            k.install_polled(seen, HashSet::from(["b".to_owned()])),
            Some(true)
        );
        // Marks replace marks only: the local refusal survives.
        assert!(k.is_refused("a") && k.is_refused("b"));
        assert_eq!(k.refused_keys(), ["a", "b"]);
        assert_eq!(k.local_denies(), ["a"]);
        k.marked_on_token("a");
        assert!(k.local_denies().is_empty() && k.is_refused("a"));
        k.forget("a");
        assert!(!k.is_refused("a"));
    }

    /// A disabler (flip memory, write the "token", settle) races a poller (read the counter,
    /// copy the "token" after a random delay, install) for many rounds: once a disable has
    /// flipped memory, the key is refused at every instant until the matching enable.
    #[test]
    fn racing_polls_never_undo_a_disable() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        use std::time::Duration;

        let state = Arc::new(KeyState::default());
        let token = Arc::new(Mutex::new(HashSet::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (state, token, stop) = (state.clone(), token.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seed = 0x2545_f491_4f6c_dd1du64;
                while !stop.load(Ordering::SeqCst) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let seen = state.change_count();
                    let read = token.lock().unwrap().clone();
                    std::thread::sleep(Duration::from_micros(seed % 300));
                    state.install_polled(seen, read);
                }
            })
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            state.deny_locally("k");
            assert!(state.is_refused("k"));
            std::thread::sleep(Duration::from_micros(seed % 200));
            token.lock().unwrap().insert("k".into());
            assert!(state.is_refused("k"));
            state.marked_on_token("k");
            for _ in 0..(seed % 5) {
                assert!(state.is_refused("k"));
                std::thread::sleep(Duration::from_micros(50));
            }
            assert!(state.is_refused("k"));
            token.lock().unwrap().remove("k");
            state.forget("k");
        }
        stop.store(true, Ordering::SeqCst);
        poller.join().unwrap();
    }
}
