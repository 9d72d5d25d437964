//! `[logging]`, `[audit]` and `[metrics]`: where the daemon reports what it does.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

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

fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_log_level() -> String {
    "info".into()
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
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
