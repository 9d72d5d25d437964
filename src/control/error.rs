//! Errors of the control plane. Operators read them in admin replies, in the CLI's output and in
//! the start-up log, and tests and docs match them, so each `Display` reads exactly as the
//! plain string it replaced; that is also why a message repeats its `source` instead of leaving
//! it to the error chain.

use crate::config::{ConfigError, GroupError};
use crate::hsm::HsmError;
use std::path::PathBuf;

/// Why an admin command (engage, release, key lifecycle) was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A keystore scope names a prefix the running configuration does not have.
    #[error("no keystore has the URI prefix {prefix:?} (known: {known:?})")]
    UnknownPrefix {
        /// The prefix asked for.
        prefix: String,
        /// The prefixes configured.
        known: Vec<String>,
    },
    /// `--token` names no configured token.
    #[error("no token named {0:?}")]
    UnknownToken(String),
    /// A key command without `--token` where more than one token is configured.
    #[error("several tokens are configured; name one with --token")]
    TokenNotNamed,
    /// `--fleet` with a key scope.
    #[error(
        "--fleet applies to the proxy and keystore scopes; a key disable already reaches every \
         instance sharing the token"
    )]
    FleetKeyScope,
    /// The token holds no key with this id.
    #[error("no key with id {0:?} on the token")]
    NoSuchKey(String),
    /// The token holds several keys with this id.
    #[error("{count} keys carry the id {id:?}; resolve the duplicate on the token")]
    DuplicateKey {
        /// The id.
        id: String,
        /// How many keys carry it.
        count: usize,
    },
    /// An offline command could not connect the token first.
    #[error("token {token}: {source}")]
    Connect {
        /// The token's configured name.
        token: String,
        /// What connecting said.
        source: HsmError,
    },
    /// The token refused or failed the key operation.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// The blocking task running the key operation panicked or was cancelled.
    #[error("key task failed: {0}")]
    KeyTask(#[source] tokio::task::JoinError),
}

impl ControlError {
    /// The operator's wording of a key command's failure: a missing or duplicated key is
    /// named by the id asked for, which the token's own error does not know.
    pub fn for_key(id: Option<&str>, e: HsmError) -> Self {
        match (e, id) {
            (HsmError::KeyNotFound, Some(id)) => ControlError::NoSuchKey(id.to_owned()),
            (HsmError::AmbiguousKey(count), Some(id)) => ControlError::DuplicateKey {
                id: id.to_owned(),
                count,
            },
            (e, _) => ControlError::Hsm(e),
        }
    }
}

/// Why a reload was refused; the running configuration keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The daemon has no config file path to read again.
    #[error("this daemon was started without a config file to reload")]
    NoConfigFile,
    /// The file cannot be read or breaks a rule.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A setting that is fixed at start changed.
    #[error(
        "logging, tokens, state, admin, audit, metrics or connection settings changed: these \
         need a restart"
    )]
    NeedsRestart,
    /// The new keystores, policy or TLS could not be built; carries the message a start with
    /// this file would print (the builder is shared with start-up, which owns that wording).
    #[error("{0}")]
    Rebuild(String),
}

/// Why the admin socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Something other than a socket is at the path; it is never removed.
    #[error("admin.socket: {} exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// The socket a previous holder of the lock left could not be removed.
    #[error("admin.socket: {0}")]
    RemoveStale(#[source] std::io::Error),
    /// `admin.group` does not resolve.
    #[error("admin.group: {0}")]
    Group(#[source] GroupError),
    /// Binding the path.
    #[error("admin.socket: cannot bind {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Making the listener non-blocking for the async runtime.
    #[error("admin.socket: {0}")]
    Nonblocking(#[source] std::io::Error),
    /// Setting the socket file's mode.
    #[error("admin.socket: {0}")]
    Mode(#[source] std::io::Error),
    /// Handing the socket file to `admin.group`.
    #[error("admin.socket: chown: {0}")]
    Chown(#[source] std::io::Error),
    /// Building the admin API's own runtime.
    #[error("admin.socket: cannot start its runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// Starting the admin API's thread.
    #[error("admin.socket: cannot start its thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Why a directory the daemon keeps state, the audit trail or the admin socket in is not
/// trusted. `what` is the config field that names it.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// The directory cannot be examined.
    #[error("{what}: {}: {source}", dir.display())]
    Unreadable {
        /// The config field.
        what: &'static str,
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The path is not a directory.
    #[error("{what}: {} is not a directory", dir.display())]
    NotADirectory {
        /// The config field.
        what: &'static str,
        /// The path.
        dir: PathBuf,
    },
    /// Another user (not root) owns it.
    #[error(
        "{what}: {} is owned by uid {owner}, not by the daemon's uid {uid}; refusing to trust it",
        dir.display()
    )]
    ForeignOwner {
        /// The config field.
        what: &'static str,
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// The daemon's uid.
        uid: u32,
    },
    /// Its group or others may write to it.
    #[error(
        "{what}: {} is writable by its group or by others (mode {mode:o}); make it 0700 (or \
         0711/0750 for the admin socket's directory)",
        dir.display()
    )]
    Writable {
        /// The config field.
        what: &'static str,
        /// The directory.
        dir: PathBuf,
        /// Its permission bits (`0o7777` of the mode).
        mode: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages split over source lines must still read as the one-line texts the docs
    /// and operators' scripts match.
    #[test]
    fn long_messages_read_as_one_line() {
        assert_eq!(
            ControlError::FleetKeyScope.to_string(),
            "--fleet applies to the proxy and keystore scopes; a key disable already reaches every instance sharing the token"
        );
        assert_eq!(
            ReloadError::NeedsRestart.to_string(),
            "logging, tokens, state, admin, audit, metrics or connection settings changed: these need a restart"
        );
        let writable = DirError::Writable {
            what: "state.directory",
            dir: "/var/lib/xks".into(),
            mode: 0o1777,
        };
        assert_eq!(
            writable.to_string(),
            "state.directory: /var/lib/xks is writable by its group or by others (mode 1777); make it 0700 (or 0711/0750 for the admin socket's directory)"
        );
        let known = ControlError::UnknownPrefix {
            prefix: "/b".into(),
            known: vec!["/a".into()],
        };
        assert_eq!(
            known.to_string(),
            r#"no keystore has the URI prefix "/b" (known: ["/a"])"#
        );
    }
}
