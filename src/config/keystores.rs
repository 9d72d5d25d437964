//! `[[keystores]]`: one logical keystore (URI prefix), its SigV4 credentials, the keys it
//! serves, its quota and the version budget of its keys.

use super::{budget, rules, Reason};
use crate::secret::SecretSource;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[[keystores]]`: one logical keystore (URI prefix) with its credentials and keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeystoreConfig {
    /// Path prefix before `/kms/xks/v1`, e.g. `/tenant-a`; empty for none.
    pub uri_prefix: String,
    /// Name of the token holding this keystore's keys.
    pub token: String,
    /// SigV4 credentials accepted (two or more during a rotation).
    pub credentials: Vec<CredentialConfig>,
    /// Exact external key ids (token labels) served by this keystore.
    #[serde(default)]
    pub allowed_keys: Vec<String>,
    /// Glob over labels served by this keystore, e.g. `xks-*`.
    pub key_pattern: Option<String>,
    /// If set, the only SigV4 regions accepted in the credential scope.
    #[serde(default)]
    pub allowed_regions: Vec<String>,
    /// Request quota for this keystore; above it: 429 ThrottlingException.
    pub rate_limit: Option<RateLimit>,
    /// Encryptions one key version may make, fleet-wide, before a new version replaces it
    /// (default 2^31, half the NIST SP 800-38D bound for random 96-bit IVs; at most 2^32).
    #[serde(default = "default_max_encryptions")]
    pub max_encryptions_per_version: u64,
    /// If set, a version older than this many days is replaced at its next use.
    pub rotate_after_days: Option<u32>,
    /// Count encryptions on the token (default). Off only for a token whose login cannot
    /// create private data objects: then nothing enforces the budget or `rotate_after_days`.
    #[serde(default = "default_true")]
    pub count_encryptions: bool,
    /// Per-key overrides of the version budget, by external key id
    /// (`[keystores.key_budgets."hot-key"]`); a key inherits what its entry does not set.
    #[serde(default)]
    pub key_budgets: BTreeMap<String, KeyBudgetConfig>,
}

/// `[keystores.key_budgets."KEY_ID"]`: one key's own version budget.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyBudgetConfig {
    /// Replaces the keystore's `max_encryptions_per_version` for this key.
    pub max_encryptions_per_version: Option<u64>,
    /// Replaces the keystore's `rotate_after_days` for this key.
    pub rotate_after_days: Option<u32>,
}

fn default_true() -> bool {
    true
}

fn default_max_encryptions() -> u64 {
    budget::DEFAULT_MAX_ENCRYPTIONS
}

impl KeystoreConfig {
    /// The version budget of this keystore's keys (those without a `key_budgets` entry).
    pub fn version_budget(&self) -> budget::VersionBudget {
        budget::VersionBudget {
            max_encryptions: self.max_encryptions_per_version,
            rotate_after: self.rotate_after_days.map(days),
            counting: self.count_encryptions,
        }
    }

    /// The version budget of `key_id`: its `key_budgets` entry over the keystore's.
    pub fn version_budget_of(&self, key_id: &str) -> budget::VersionBudget {
        let base = self.version_budget();
        match self.key_budgets.get(key_id) {
            None => base,
            Some(o) => budget::VersionBudget {
                max_encryptions: o.max_encryptions_per_version.unwrap_or(base.max_encryptions),
                rotate_after: o.rotate_after_days.map(days).or(base.rotate_after),
                counting: base.counting,
            },
        }
    }

    /// The budgets of every key: the keystore's, and each key's own.
    pub fn key_budgets(&self) -> budget::KeyBudgets {
        budget::KeyBudgets::new(
            self.version_budget(),
            self.key_budgets
                .keys()
                .map(|id| (id.clone(), self.version_budget_of(id))),
        )
    }
}

fn days(d: u32) -> std::time::Duration {
    std::time::Duration::from_secs(u64::from(d) * 86_400)
}

impl KeystoreConfig {
    /// The URI path KMS is configured with: `<prefix>/kms/xks/v1`.
    pub fn api_base(&self) -> String {
        format!("{}/kms/xks/v1", self.uri_prefix)
    }
}

/// A token bucket: `requests_per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate.
    pub requests_per_second: f64,
    /// Bucket size (defaults to one second's worth).
    pub burst: Option<f64>,
}

/// One SigV4 credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// 20-30 characters of `A-Z2-7`.
    pub access_key_id: String,
    /// The secret access key's source.
    pub secret: SecretSource,
}

impl CredentialConfig {
    /// Reads the secret access key and checks it has the spec's shape. The secret lives outside
    /// the config file, so this runs where it is read (start, reload, `check-config`), not at
    /// parse time. Errors never contain the value.
    pub fn load_secret(&self) -> Result<secrecy::SecretString, Reason> {
        let secret = self.secret.load()?;
        rules::check_sigv4_secret(secrecy::ExposeSecret::expose_secret(&secret))?;
        Ok(secret)
    }
}
