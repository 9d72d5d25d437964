//! Typed configuration (TOML), parsed and validated before any port is bound or any secret is
//! read. Every validation message starts with the path of the offending field
//! (`keystores[0].uri_prefix: ...`), and the process exits 64 (EX_USAGE) on a bad config.

pub mod budget;
mod profile;
mod rules;

use crate::secret::SecretSource;
pub use profile::{IvSource, PinFormat, Profile};
pub use rules::group_id;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Exit status for an invalid configuration (sysexits EX_USAGE).
pub const EXIT_BAD_CONFIG: i32 = crate::exit::Exit::BadConfig as i32;
/// The spec's floor for plaintext and ciphertext sizes.
pub const SPEC_MIN_PLAINTEXT: usize = 4300;
/// The spec's floor for AAD size.
pub const SPEC_MIN_AAD: usize = 8192;

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

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The active trail file (created 0600; its directory 0700 if missing).
    pub file: PathBuf,
    /// `every-record`, `interval` (default) or `never`.
    #[serde(default)]
    pub fsync: AuditFsync,
    /// Period of `fsync = "interval"`: what an OS crash can lose at most.
    #[serde(default = "default_fsync_ms")]
    pub fsync_interval_ms: u64,
    /// Rotate (rename, and chain into a new file) once the file exceeds this size.
    pub rotate_at_bytes: Option<u64>,
    /// Publish a checkpoint (`seq`, `hash`) to the journal/syslog after this many records.
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_every_records: u64,
    /// ... and at most this long after a record was written (bounds what an undetected
    /// rewrite of the tail can cover on a quiet proxy).
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_interval_ms: u64,
    /// Also send each checkpoint as a syslog datagram to this socket (usually `/dev/log`).
    pub checkpoint_syslog: Option<PathBuf>,
}

fn default_checkpoint_records() -> u64 {
    1000
}

fn default_checkpoint_ms() -> u64 {
    60_000
}

/// When audit records reach the disk.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AuditFsync {
    /// fsync after every record (safest, slowest).
    EveryRecord,
    /// fsync every `fsync_interval_ms`.
    #[default]
    Interval,
    /// Leave it to the OS.
    Never,
}

fn default_fsync_ms() -> u64 {
    1000
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address serving `GET /metrics` over plain HTTP; loopback unless explicitly allowed.
    pub listen: SocketAddr,
    /// Permit a non-loopback metrics address (metrics reveal key ids and traffic patterns).
    #[serde(default)]
    pub allow_non_loopback: bool,
}

/// `[state]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory for durable state (created 0700 if missing); holds `kill-switch.json`.
    pub directory: PathBuf,
}

impl StateConfig {
    /// The kill switch state file.
    pub fn kill_switch_file(&self) -> PathBuf {
        self.directory.join("kill-switch.json")
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Unix socket path. Its directory must not be writable by untrusted users.
    pub socket: PathBuf,
    /// Group whose members may use the socket (mode 0660); without it, mode 0600 and only the
    /// daemon's own user (and root) may.
    pub group: Option<String>,
}

/// `server.drain_delay_ms` when unset: a load balancer checking every second and marking an
/// instance down after two failures has taken it out with room to spare.
pub const DEFAULT_DRAIN_DELAY_MS: u64 = 5_000;
/// `server.drain_grace_ms` when unset.
pub const DEFAULT_DRAIN_GRACE_MS: u64 = 10_000;
/// Upper bound of `server.drain_delay_ms` and `server.drain_grace_ms`: a stop that takes longer
/// than this is a hang to the service manager.
pub const MAX_DRAIN_MS: u64 = 300_000;

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses to listen on; port 0 picks an ephemeral port (printed at start).
    pub listen: Vec<SocketAddr>,
    /// Serve plain HTTP instead of TLS. Only for use behind a TLS-terminating load balancer.
    #[serde(default)]
    pub allow_plain_http: bool,
    /// Reported as `xksProxyFleetSize`: how many proxy instances serve this endpoint.
    #[serde(default = "one")]
    pub fleet_size: u32,
    /// Connections served at once; further connections are closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time allowed for a TLS handshake.
    #[serde(default = "default_handshake_ms")]
    pub tls_handshake_timeout_ms: u64,
    /// Time allowed to receive a request's headers; it also closes idle keep-alive
    /// connections (hyper starts the timer when it waits for the next request).
    #[serde(default = "default_header_ms")]
    pub header_read_timeout_ms: u64,
    /// Time allowed to receive a request's body once its head has arrived; a stalled body
    /// would otherwise hold a connection slot before any authentication happens.
    #[serde(default = "default_body_ms")]
    pub body_read_timeout_ms: u64,
    /// Largest request head (request line + headers) accepted.
    #[serde(default = "default_max_header")]
    pub max_header_bytes: usize,
    /// Slots unproven connections (no verified request yet) may share; the rest stay free
    /// for proven ones. Default: a quarter of `max_connections` (at least 1).
    #[serde(default)]
    pub max_unproven_connections: Option<usize>,
    /// Time from accept within which an unproven connection must finish its TLS handshake and
    /// send its first request head; otherwise it is closed (an idle newcomer holds a slot for
    /// this long at most, not for `header_read_timeout_ms`).
    #[serde(default = "default_first_request_ms")]
    pub first_request_timeout_ms: u64,
    /// Requests answered on an unproven connection before it is closed; 0 = no limit (the
    /// default: unauthenticated answers are cheap, and an unproven connection stays evictable).
    #[serde(default)]
    pub max_requests_before_proof: u32,
    /// A response that makes no write progress for this long closes its connection (a client
    /// that never reads would otherwise hold it for ever).
    #[serde(default = "default_write_ms")]
    pub write_timeout_ms: u64,
    /// Unproven connections one source address may hold; a newcomer beyond it evicts that
    /// source's oldest unproven connection. 0 = no cap.
    #[serde(default = "default_unproven_per_source")]
    pub max_unproven_per_source: usize,
    /// Connections (proven or not) one source address may hold; newcomers beyond it are
    /// refused. 0 = no cap (a load balancer may present all of KMS as one address).
    #[serde(default)]
    pub max_connections_per_source: usize,
    /// Apply the per-source caps to loopback sources too (off: local tools and tests).
    #[serde(default)]
    pub per_source_limits_on_loopback: bool,
    /// TCP keepalive idle time in seconds (probes every third of it, three of them), so the
    /// slot of a peer that vanished is freed.
    #[serde(default = "default_keepalive_secs")]
    pub tcp_keepalive_secs: u64,
    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before the kernel drops
    /// the connection.
    #[serde(default = "default_user_timeout_ms")]
    pub tcp_user_timeout_ms: u64,
    /// Allow running as root (uid 0). Refused by default: the daemon needs no privilege.
    #[serde(default)]
    pub allow_root: bool,
    /// On SIGTERM, SIGINT or `xks-bridge drain`: how long `/ping` answers 503 while everything
    /// else is still served, before the listeners close. It must outlast the load balancer's
    /// health checks marking the instance down (checks x interval), or new connections would
    /// still arrive when the listeners close.
    #[serde(default = "default_drain_delay_ms")]
    pub drain_delay_ms: u64,
    /// Once the listeners are closed, how long open connections get to finish their requests
    /// before the process exits anyway.
    #[serde(default = "default_drain_grace_ms")]
    pub drain_grace_ms: u64,
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// PEM bundle of CAs for client certificates; setting it turns on mutual TLS: a client
    /// without a certificate chaining to one of these is refused during the handshake.
    pub client_ca: Option<PathBuf>,
    /// With mTLS: accepted client names, each matched exactly against the certificate's
    /// subject CN and its DNS SANs (KMS presents `cks.kms.<region>.amazonaws.com`). Required
    /// when `client_ca` is set.
    #[serde(default)]
    pub client_names: Vec<String>,
}

/// `[logging]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `xks_bridge=debug`; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest plaintext (Encrypt) or ciphertext (Decrypt) accepted; above it: 501.
    #[serde(default = "default_max_plaintext")]
    pub max_plaintext_bytes: usize,
    /// Largest AAD accepted; above it: 501.
    #[serde(default = "default_max_aad")]
    pub max_aad_bytes: usize,
    /// Hard cap on a request body, enforced before it is hashed or parsed.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

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

    /// Reads the PIN and checks it has the profile's shape. Like [`CredentialConfig::load_secret`]
    /// this runs where the secret is read (start, `check-config`, `doctor`, offline commands),
    /// not at parse time; errors never contain the value.
    pub fn load_pin(&self) -> Result<secrecy::SecretString, String> {
        let pin = self.pin.load()?;
        self.profile
            .check_pin(secrecy::ExposeSecret::expose_secret(&pin))?;
        Ok(pin)
    }
}

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
}

fn default_true() -> bool {
    true
}

fn default_max_encryptions() -> u64 {
    budget::DEFAULT_MAX_ENCRYPTIONS
}

impl KeystoreConfig {
    /// The version budget of this keystore's keys.
    pub fn version_budget(&self) -> budget::VersionBudget {
        budget::VersionBudget {
            max_encryptions: self.max_encryptions_per_version,
            rotate_after: self
                .rotate_after_days
                .map(|d| std::time::Duration::from_secs(u64::from(d) * 86_400)),
            counting: self.count_encryptions,
        }
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
    pub fn load_secret(&self) -> Result<secrecy::SecretString, String> {
        let secret = self.secret.load()?;
        rules::check_sigv4_secret(secrecy::ExposeSecret::expose_secret(&secret))?;
        Ok(secret)
    }
}

fn one() -> u32 {
    1
}
fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_log_level() -> String {
    "info".into()
}
fn default_max_plaintext() -> usize {
    SPEC_MIN_PLAINTEXT
}
fn default_max_aad() -> usize {
    SPEC_MIN_AAD
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_max_connections() -> usize {
    4096
}
fn default_handshake_ms() -> u64 {
    10_000
}
fn default_header_ms() -> u64 {
    60_000
}
fn default_body_ms() -> u64 {
    5_000
}
fn default_max_header() -> usize {
    16 * 1024
}
fn default_first_request_ms() -> u64 {
    5_000
}
fn default_write_ms() -> u64 {
    10_000
}
fn default_drain_delay_ms() -> u64 {
    DEFAULT_DRAIN_DELAY_MS
}
fn default_drain_grace_ms() -> u64 {
    DEFAULT_DRAIN_GRACE_MS
}
fn default_unproven_per_source() -> usize {
    256
}
fn default_keepalive_secs() -> u64 {
    60
}
fn default_user_timeout_ms() -> u64 {
    30_000
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

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_plaintext_bytes: default_max_plaintext(),
            max_aad_bytes: default_max_aad(),
            max_body_bytes: default_max_body(),
        }
    }
}

impl ServerConfig {
    /// Slots unproven connections share: `max_unproven_connections` or its default.
    pub fn unproven_share(&self) -> usize {
        self.max_unproven_connections
            .unwrap_or((self.max_connections / 4).max(1))
    }
}

impl KeystoreConfig {
    /// The URI path KMS is configured with: `<prefix>/kms/xks/v1`.
    pub fn api_base(&self) -> String {
        format!("{}/kms/xks/v1", self.uri_prefix)
    }
}

impl Config {
    /// Reads, parses and validates a config file; relative paths are made relative to it.
    pub fn load(path: &Path) -> Result<Config, String> {
        let cfg = Self::load_unchecked(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a config file without the checks that need the daemon's files (TLS
    /// keys, secrets): operator commands only need the admin socket and state locations, and
    /// an operator in the admin group need not be able to read the daemon's private files.
    pub fn load_unchecked(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        // `--config config.toml` has an empty parent: relative paths are then relative to ".".
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.state.directory);
        if let Some(a) = &mut self.audit {
            fix(&mut a.file);
        }
        if let Some(a) = &mut self.admin {
            fix(&mut a.socket);
        }
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.certificate);
            fix(&mut tls.private_key);
            if let Some(ca) = &mut tls.client_ca {
                fix(ca);
            }
        }
        for t in &mut self.tokens {
            t.pin.resolve(base);
        }
        for k in &mut self.keystores {
            for c in &mut k.credentials {
                c.secret.resolve(base);
            }
        }
    }

    /// Checks every rule that does not need the token; the message names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        rules::validate(self)
    }

    /// The token a keystore refers to (validated to exist).
    pub fn token(&self, name: &str) -> Option<&TokenConfig> {
        self.tokens.iter().find(|t| t.name == name)
    }
}
