//! `[[tokens]]`: one PKCS#11 token, its module, PIN, worker pool and vendor profile.

use super::{IvSource, Profile, Reason};
use crate::secret::SecretSource;
use serde::Deserialize;
use std::path::PathBuf;

/// `[[tokens]]`: one PKCS#11 token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name referenced by keystores and reported as the EKM id in health responses.
    pub name: String,
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// Environment variables the module reads at load time (e.g. `SOFTHSM2_CONF`,
    /// `ChrystokiConfigurationPath`), set before the module is loaded.
    #[serde(default)]
    pub module_env: std::collections::BTreeMap<String, String>,
    /// `CKA_LABEL` of the token (never "the first slot": slot order is not stable).
    pub token_label: String,
    /// Where the user PIN comes from.
    pub pin: SecretSource,
    /// Worker threads, each owning one logged-in session.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Jobs that may wait for a worker; beyond that requests get ThrottlingException.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// Deadline for one HSM job (queue wait included); beyond it: DependencyTimeoutException.
    #[serde(default = "default_timeout_ms")]
    pub request_timeout_ms: u64,
    /// The HSM vendor: its IV mode, tag-failure codes and PIN format (docs/hsm-profiles.md).
    #[serde(default)]
    pub profile: Profile,
    /// Who makes the GCM IV; absent: the profile's mode.
    #[serde(default)]
    pub iv_source: Option<IvSource>,
}

impl TokenConfig {
    /// The IV mode in force: `iv_source` if set, else the profile's.
    pub fn effective_iv_source(&self) -> IvSource {
        self.iv_source.unwrap_or(self.profile.default_iv_source())
    }

    /// Reads the PIN and checks it has the profile's shape. Like
    /// [`CredentialConfig::load_secret`](super::CredentialConfig::load_secret)
    /// this runs where the secret is read (start, `check-config`, `doctor`, offline commands),
    /// not at parse time; errors never contain the value.
    pub fn load_pin(&self) -> Result<secrecy::SecretString, Reason> {
        let pin = self.pin.load()?;
        self.profile
            .check_pin(secrecy::ExposeSecret::expose_secret(&pin))?;
        Ok(pin)
    }
}

fn default_workers() -> usize {
    2
}
fn default_queue_depth() -> usize {
    1024
}
fn default_timeout_ms() -> u64 {
    150
}
