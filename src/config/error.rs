//! What a bad configuration is reported as. The text of each error is what the operator reads
//! (and what `check-config`, the reload log line and the docs quote), so `Display` keeps the
//! `<field path>: <reason>` shape; the parts stay separate so a caller can add the outer path
//! (`tokens[0].`) without re-parsing a message.

use crate::authz::PolicyError;
use crate::secret::SecretError;
use std::path::PathBuf;

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// What the read said.
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape (unknown field, wrong type, ...).
    #[error("{}: {source}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, which names the line and column.
        source: toml::de::Error,
    },
    /// A field breaks a rule.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the offending field (`keystores[0].key_budgets."K".rotate_after_days`).
        field: String,
        /// What is wrong with it.
        reason: Reason,
    },
    /// The `[policy]` section breaks a rule; the error names its own field.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl ConfigError {
    /// A rule broken by `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<Reason>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error seen from an enclosing table: `within("tokens[0]")` turns `pin: ...`
    /// into `tokens[0].pin: ...`.
    pub fn within(self, outer: impl std::fmt::Display) -> Self {
        match self {
            ConfigError::Invalid { field, reason } => ConfigError::Invalid {
                field: format!("{outer}.{field}"),
                reason,
            },
            other => other,
        }
    }
}

/// What is wrong with one field.
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    /// A rule of this crate's own (a range, a required companion field, a duplicate ...).
    #[error("{0}")]
    Rule(String),
    /// The secret source is misnamed, or reading it failed.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The admin group cannot be resolved.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// A glob does not parse.
    #[error(transparent)]
    Pattern(#[from] glob::PatternError),
}

impl From<String> for Reason {
    fn from(message: String) -> Self {
        Reason::Rule(message)
    }
}

impl From<&str> for Reason {
    fn from(message: &str) -> Self {
        Reason::Rule(message.to_owned())
    }
}

/// A group name the group database (NSS) does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The database answered: no such group.
    #[error("no group named {0:?}")]
    Unknown(String),
    /// The database could not be asked (an NSS backend failed).
    #[error("cannot look up group {name:?}: {source}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// What the lookup said.
        source: nix::errno::Errno,
    },
}
