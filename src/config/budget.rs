//! The encryption budget of key versions, as configured per `[[keystores]]`
//! (`max_encryptions_per_version`, `rotate_after_days`). The token layer enforces it.

use std::collections::HashMap;
use std::time::Duration;

/// Default `max_encryptions_per_version`: half the NIST SP 800-38D bound for random 96-bit IVs.
pub const DEFAULT_MAX_ENCRYPTIONS: u64 = 1 << 31;
/// Largest accepted `max_encryptions_per_version`: the NIST bound itself.
pub const NIST_BOUND: u64 = 1 << 32;

/// The encryption budget of every version of a keystore's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionBudget {
    /// Encryptions one version may make, fleet-wide.
    pub max_encryptions: u64,
    /// Age after which a version is replaced, if set.
    pub rotate_after: Option<Duration>,
    /// Count encryptions at all (`count_encryptions`); off, neither the budget nor
    /// `rotate_after` applies.
    pub counting: bool,
}

impl Default for VersionBudget {
    fn default() -> Self {
        VersionBudget {
            max_encryptions: DEFAULT_MAX_ENCRYPTIONS,
            rotate_after: None,
            counting: true,
        }
    }
}

impl VersionBudget {
    /// Count at which rotation starts: 90 % of the budget, so the new version is committed
    /// (about a second of settling) while the old one still has room and Encrypt never stalls.
    pub fn rotate_at(&self) -> u64 {
        self.max_encryptions - self.max_encryptions / 10
    }
}

/// The budgets of a keystore's keys: one for all, and the keys with their own
/// (`key_budgets`). Looked up on every Encrypt: a keystore without overrides skips the map.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyBudgets {
    default: VersionBudget,
    own: HashMap<String, VersionBudget>,
}

impl KeyBudgets {
    /// `default` for every key but those in `own`.
    pub fn new(default: VersionBudget, own: impl IntoIterator<Item = (String, VersionBudget)>) -> KeyBudgets {
        KeyBudgets {
            default,
            own: own.into_iter().collect(),
        }
    }

    /// The budget of `key_id`.
    pub fn of(&self, key_id: &str) -> VersionBudget {
        if self.own.is_empty() {
            return self.default;
        }
        self.own.get(key_id).copied().unwrap_or(self.default)
    }
}
