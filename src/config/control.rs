//! `[state]` and `[admin]`: where the control plane keeps its durable state and its socket.

use serde::Deserialize;
use std::path::PathBuf;

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
