//! Typed configuration (TOML), parsed and validated before any port is bound or any secret is
//! read. Every validation message starts with the path of the offending field
//! (`keystores[0].uri_prefix: ...`), and the process exits 64 (EX_USAGE) on a bad config.

pub mod budget;
mod control;
mod error;
mod keystores;
mod limits;
mod load;
mod profile;
mod rules;
mod server;
mod sinks;
mod tokens;

pub use control::{AdminConfig, StateConfig};
pub use error::{ConfigError, GroupError, Reason};
pub use keystores::{CredentialConfig, KeystoreConfig, RateLimit};
pub use limits::{Limits, SPEC_MIN_AAD, SPEC_MIN_PLAINTEXT};
pub use profile::{IvSource, PinFormat, Profile};
pub use rules::group_id;
use serde::Deserialize;
pub use server::{ServerConfig, TlsConfig, DEFAULT_DRAIN_DELAY_MS, DEFAULT_DRAIN_GRACE_MS, MAX_DRAIN_MS};
pub use sinks::{AuditConfig, AuditFsync, LogFormat, LoggingConfig, MetricsConfig};
pub use tokens::TokenConfig;

/// Exit status for an invalid configuration (sysexits EX_USAGE).
pub const EXIT_BAD_CONFIG: i32 = crate::exit::Exit::BadConfig as i32;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners and protocol switches.
    pub server: ServerConfig,
    /// Server certificate; required unless `server.allow_plain_http` is set.
    pub tls: Option<TlsConfig>,
    /// Log format and level.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Size limits.
    #[serde(default)]
    pub limits: Limits,
    /// PKCS#11 tokens, referenced by name from keystores.
    pub tokens: Vec<TokenConfig>,
    /// Logical keystores, one per URI prefix.
    pub keystores: Vec<KeystoreConfig>,
    /// Durable state (kill switch).
    pub state: StateConfig,
    /// Local admin socket for the `kill-switch` and `keys` commands.
    pub admin: Option<AdminConfig>,
    /// Prometheus metrics listener.
    pub metrics: Option<MetricsConfig>,
    /// Secondary authorization rules (absent: every authenticated request is allowed).
    pub policy: Option<crate::authz::Policy>,
    /// Tamper-evident audit trail.
    pub audit: Option<AuditConfig>,
}

impl Config {
    /// Checks every rule that does not need the token; the message names the bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        rules::validate(self)
    }

    /// The token a keystore refers to (validated to exist).
    pub fn token(&self, name: &str) -> Option<&TokenConfig> {
        self.tokens.iter().find(|t| t.name == name)
    }
}
