//! This instance's copy of every key's versions, kept in memory: what each version's state is
//! and which version is current. The token side (reading it into this copy) is
//! `super::versions`; nothing here calls PKCS#11.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// One version as this instance knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionState {
    /// Nonces of committed candidates, the one to encrypt with first (empty: not committed).
    pub committed: Vec<Vec<u8>>,
    /// A retirement mark exists.
    pub retired: bool,
    /// Creation time of the committed candidate (RFC 3339).
    pub created: Option<String>,
    /// Same, in milliseconds since the Unix epoch (automatic rotation by age).
    pub created_ms: Option<u64>,
}

/// The versions of one key (version 1 appears only when it carries a mark).
pub type KeyVersions = BTreeMap<u32, VersionState>;

/// The current version: the highest committed, non-retired version; 1 when there is none.
pub fn current(v: Option<&KeyVersions>) -> u32 {
    v.and_then(|m| {
        m.iter()
            .rev()
            .find(|(n, s)| (**n == 1 || !s.committed.is_empty()) && !s.retired)
            .map(|(n, _)| *n)
    })
    .unwrap_or(1)
}

/// This instance's copy of every key's versions, refreshed by the poll and after each local
/// change. A poll that read the token while a local change was made is discarded (the change
/// counter moved), so it cannot briefly undo a rotation or a retirement made here.
#[derive(Default)]
pub(super) struct VersionTable {
    keys: RwLock<HashMap<String, KeyVersions>>,
    changes: AtomicU64,
}

impl VersionTable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, KeyVersions>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn current(&self, id: &str) -> u32 {
        current(self.read().get(id))
    }

    pub(super) fn get(&self, id: &str, n: u32) -> Option<VersionState> {
        self.read().get(id).and_then(|m| m.get(&n)).cloned()
    }

    pub(super) fn change_count(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Installs a full read; `seen` is the change count read before it (`None`: installed
    /// unconditionally, e.g. a read made right after a local change).
    pub(super) fn install(&self, seen: Option<u64>, all: HashMap<String, KeyVersions>) -> bool {
        let mut k = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if seen.is_some_and(|s| s != self.changes.load(Ordering::SeqCst)) {
            return false;
        }
        if seen.is_none() {
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
        *k = all;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_version_is_the_highest_committed_and_not_retired() {
        let st = |c: bool, r: bool| VersionState {
            committed: if c { vec![vec![1]] } else { vec![] },
            retired: r,
            ..VersionState::default()
        };
        assert_eq!(current(None), 1);
        let mut m = KeyVersions::new();
        m.insert(2, st(true, false));
        m.insert(3, st(false, false));
        assert_eq!(current(Some(&m)), 2, "an uncommitted candidate is never current");
        m.insert(4, st(true, true));
        assert_eq!(current(Some(&m)), 2, "a retired version is never current");
        m.insert(5, st(true, false));
        assert_eq!(current(Some(&m)), 5);
        m.insert(1, st(false, true));
        assert_eq!(current(Some(&m)), 5);
    }
}
