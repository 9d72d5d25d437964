//! The kill switch's durable form: what is engaged, by whom, and recent history, in one JSON
//! file written atomically (a uniquely named temp file created with `O_EXCL`, fsync, rename,
//! fsync of the directory) so a restart or a crash sees either the old or the new content.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// How many engage/release events the file keeps.
pub const HISTORY_KEPT: usize = 100;

/// Who engaged or released, when and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Engagement {
    /// Free text from the operator.
    pub reason: String,
    /// Peer uid on the admin socket; `None` for a signal.
    pub by_uid: Option<u32>,
    /// How the action arrived: `admin-socket`, `signal SIGUSR1`, `offline`.
    pub via: String,
    /// RFC 3339 UTC time.
    pub at: String,
}

/// One entry of the history kept in the state file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// `engage`, `release` or a key lifecycle action.
    pub action: String,
    /// `proxy`, `keystore:<prefix>` or `key:<id>`.
    pub scope: String,
    /// Who, when, why.
    #[serde(flatten)]
    pub by: Engagement,
}

/// The persisted state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    /// Whole-proxy switch, if engaged.
    pub proxy: Option<Engagement>,
    /// Engaged keystores by URI prefix.
    pub keystores: BTreeMap<String, Engagement>,
    /// Keys this instance refuses on its own, by token name then key id: engaged at key scope
    /// while the token refused the disabled-key mark. Kept here so the refusal survives
    /// restarts and reconnects until an operator releases the key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub local_key_denies: BTreeMap<String, BTreeMap<String, Engagement>>,
    /// Fleet-wide engagements this instance honours (seen as token marks, or made through
    /// it). Kept apart from the local ones: a fleet release never lifts a local engage, and a
    /// local release never lifts a fleet engage.
    #[serde(default, skip_serializing_if = "FleetState::is_empty")]
    pub fleet: FleetState,
    /// Most recent events, oldest first.
    pub history: Vec<Event>,
}

/// The fleet-wide engagements an instance honours.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FleetState {
    /// Whole-proxy fleet engage, if any.
    #[serde(default)]
    pub proxy: Option<Engagement>,
    /// Fleet-engaged keystores by URI prefix.
    #[serde(default)]
    pub keystores: BTreeMap<String, Engagement>,
    /// Labels (`proxy`, `keystore:<prefix>`) of the scopes above that were engaged through
    /// this instance while no token took the fleet mark: they hold on this instance only, and
    /// no token read (a mark that is not there) may release them; only a `release --fleet` on
    /// this instance does.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub unmarked: std::collections::BTreeSet<String>,
}

impl FleetState {
    /// Nothing engaged fleet-wide.
    pub fn is_empty(&self) -> bool {
        self.proxy.is_none() && self.keystores.is_empty()
    }
}

impl PersistedState {
    /// Appends an event, keeping the last [`HISTORY_KEPT`].
    pub fn push(&mut self, action: &str, scope: &str, by: Engagement) {
        self.history.push(Event {
            action: action.to_owned(),
            scope: scope.to_owned(),
            by,
        });
        let excess = self.history.len().saturating_sub(HISTORY_KEPT);
        self.history.drain(..excess);
    }
}

/// Why the state file could not be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StateFileError {
    /// The file exists but is not a state file; starting released would defeat the switch.
    #[error("kill switch state {file} is unreadable ({detail}); refusing to guess")]
    Corrupt {
        /// The file.
        file: String,
        /// Parser message.
        detail: String,
    },
    /// Reading or writing failed.
    #[error("cannot {action} kill switch state {file}: {detail}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        file: String,
        /// OS message.
        detail: String,
    },
}

/// Reads a state file; a missing file is the released state.
pub fn read_state(file: &Path) -> Result<PersistedState, StateFileError> {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateFileError::Corrupt {
            file: file.display().to_string(),
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PersistedState::default()),
        Err(e) => Err(StateFileError::Io {
            action: "read",
            file: file.display().to_string(),
            detail: e.to_string(),
        }),
    }
}

/// Writes a state file atomically and durably: the new content is on disk when this returns.
/// The temp file has a unique random name and is created exclusively (never through a symlink
/// an attacker planted), with mode 0600.
pub fn write_state(file: &Path, state: &PersistedState) -> Result<(), StateFileError> {
    let err = |e: std::io::Error| StateFileError::Io {
        action: "write",
        file: file.display().to_string(),
        detail: e.to_string(),
    };
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| err(std::io::Error::other(e)))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".state-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(&bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(file).map_err(|e| err(e.error))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_state_file_is_refused_not_treated_as_released() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ks.json");
        std::fs::write(&f, b"{\"proxy\": {\"reas").unwrap();
        let err = read_state(&f).expect_err("a corrupt state file must be refused");
        assert!(err.to_string().contains("refusing to guess"), "{err}");
    }

    #[test]
    fn the_write_does_not_follow_a_planted_symlink_at_a_predictable_temp_name() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        // The old fixed temp name: a symlink there must not redirect the write.
        std::os::unix::fs::symlink(&victim, dir.path().join(".ks.json.tmp")).unwrap();
        let f = dir.path().join("ks.json");
        write_state(&f, &PersistedState::default()).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(read_state(&f).unwrap(), PersistedState::default());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn history_is_bounded() {
        let mut s = PersistedState::default();
        let by = Engagement {
            reason: "x".into(),
            by_uid: None,
            via: "test".into(),
            at: String::new(),
        };
        for i in 0..(HISTORY_KEPT + 5) {
            s.push("engage", &format!("key:k{i}"), by.clone());
        }
        assert_eq!(s.history.len(), HISTORY_KEPT);
        assert_eq!(
            s.history.last().unwrap().scope,
            format!("key:k{}", HISTORY_KEPT + 4)
        );
    }
}
