//! Kill switch state for the two scopes the proxy owns (whole proxy, one keystore): an
//! in-memory flag that flips first, and a state file written atomically (temp file, fsync,
//! rename, fsync of the directory) before the command returns, so an engaged switch survives
//! restarts and crashes. The key scope lives on the token itself (see [`crate::hsm::marks`]),
//! where every instance sharing the token sees it.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// How many engage/release events `status` keeps.
const HISTORY_KEPT: usize = 100;

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

/// One entry of the audit history kept in the state file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// `engage` or `release`.
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
    /// Most recent events, oldest first.
    pub history: Vec<Event>,
}

/// The live kill switch of one daemon.
pub struct KillSwitch {
    proxy: Arc<AtomicBool>,
    keystores: RwLock<HashSet<String>>,
    file: PathBuf,
    state: Mutex<PersistedState>,
}

impl KillSwitch {
    /// Loads the state file (absent = nothing engaged). A file that cannot be parsed is an
    /// error: starting released because the state was unreadable would defeat the switch.
    pub fn load(file: &Path) -> Result<KillSwitch, String> {
        let state = read_state(file)?;
        Ok(KillSwitch {
            proxy: Arc::new(AtomicBool::new(state.proxy.is_some())),
            keystores: RwLock::new(state.keystores.keys().cloned().collect()),
            file: file.to_owned(),
            state: Mutex::new(state),
        })
    }

    /// The whole-proxy flag, shared with the token layer so workers refuse jobs at once.
    pub fn proxy_flag(&self) -> Arc<AtomicBool> {
        self.proxy.clone()
    }

    /// Is the whole proxy engaged?
    pub fn proxy_engaged(&self) -> bool {
        self.proxy.load(Ordering::SeqCst)
    }

    /// Is this keystore prefix engaged?
    pub fn keystore_engaged(&self, prefix: &str) -> bool {
        self.keystores
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(prefix)
    }

    /// Engages the whole proxy: flag first, then the durable write.
    pub fn engage_proxy(&self, by: Engagement) -> Result<(), String> {
        self.proxy.store(true, Ordering::SeqCst);
        self.persist(|s| {
            s.proxy = Some(by.clone());
            push(s, "engage", "proxy", by);
        })
    }

    /// Releases the whole proxy in the state file. The caller clears the flag (with
    /// [`KillSwitch::clear_proxy_flag`]) once the tokens are reconnected.
    pub fn release_proxy(&self, by: Engagement) -> Result<(), String> {
        self.persist(|s| {
            s.proxy = None;
            push(s, "release", "proxy", by);
        })
    }

    /// Lets requests through again after a release.
    pub fn clear_proxy_flag(&self) {
        self.proxy.store(false, Ordering::SeqCst);
    }

    /// Engages one keystore: flag first, then the durable write.
    pub fn engage_keystore(&self, prefix: &str, by: Engagement) -> Result<(), String> {
        self.keystores
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(prefix.to_owned());
        self.persist(|s| {
            s.keystores.insert(prefix.to_owned(), by.clone());
            push(s, "engage", &format!("keystore:{prefix}"), by);
        })
    }

    /// Releases one keystore: durable write first, then the flag.
    pub fn release_keystore(&self, prefix: &str, by: Engagement) -> Result<(), String> {
        self.persist(|s| {
            s.keystores.remove(prefix);
            push(s, "release", &format!("keystore:{prefix}"), by);
        })?;
        self.keystores
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(prefix);
        Ok(())
    }

    /// Records a key-scope event (the key state itself lives on the token).
    pub fn record_key_event(&self, action: &str, key_id: &str, by: Engagement) -> Result<(), String> {
        self.persist(|s| push(s, action, &format!("key:{key_id}"), by))
    }

    /// A copy of the persisted state.
    pub fn snapshot(&self) -> PersistedState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies `change` to the state as stored (not only to this process's copy), so an
    /// offline change made while the daemon runs without an admin socket is kept, then adopts
    /// the file's engaged scopes. An unreadable file keeps this process's view.
    fn persist(&self, change: impl FnOnce(&mut PersistedState)) -> Result<(), String> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = read_state(&self.file).unwrap_or_else(|_| state.clone());
        change(&mut next);
        write_state(&self.file, &next)?;
        if next.proxy.is_some() {
            self.proxy.store(true, Ordering::SeqCst);
        }
        *self.keystores.write().unwrap_or_else(|p| p.into_inner()) = next.keystores.keys().cloned().collect();
        *state = next;
        Ok(())
    }
}

fn push(s: &mut PersistedState, action: &str, scope: &str, by: Engagement) {
    s.history.push(Event {
        action: action.to_owned(),
        scope: scope.to_owned(),
        by,
    });
    let excess = s.history.len().saturating_sub(HISTORY_KEPT);
    s.history.drain(..excess);
}

/// Reads a state file; a missing file is the released state.
pub fn read_state(file: &Path) -> Result<PersistedState, String> {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "kill switch state {} is unreadable ({e}); refusing to guess",
                file.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PersistedState::default()),
        Err(e) => Err(format!("cannot read kill switch state {}: {e}", file.display())),
    }
}

/// Writes a state file atomically and durably: a reader (or a restart after a crash) sees
/// either the old or the new content, never a torn file, and the new content is on disk when
/// this returns.
pub fn write_state(file: &Path, state: &PersistedState) -> Result<(), String> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        file.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("cannot write kill switch state {}: {e}", file.display()))
}

/// Current UTC time in RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(reason: &str) -> Engagement {
        Engagement {
            reason: reason.into(),
            by_uid: Some(1000),
            via: "test".into(),
            at: now_rfc3339(),
        }
    }

    #[test]
    fn engaged_state_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ks.json");
        let ks = KillSwitch::load(&f).unwrap();
        assert!(!ks.proxy_engaged());
        ks.engage_proxy(by("incident 42")).unwrap();
        ks.engage_keystore("/tenant-a", by("tenant offboarded")).unwrap();
        let again = KillSwitch::load(&f).unwrap();
        assert!(again.proxy_engaged());
        assert!(again.keystore_engaged("/tenant-a"));
        assert!(!again.keystore_engaged("/tenant-b"));
        assert_eq!(again.snapshot().proxy.unwrap().reason, "incident 42");
        again.release_proxy(by("resolved")).unwrap();
        again.clear_proxy_flag();
        again.release_keystore("/tenant-a", by("back")).unwrap();
        let third = KillSwitch::load(&f).unwrap();
        assert!(!third.proxy_engaged() && !third.keystore_engaged("/tenant-a"));
        assert_eq!(third.snapshot().history.len(), 4);
    }

    #[test]
    fn a_corrupt_state_file_is_refused_not_treated_as_released() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ks.json");
        std::fs::write(&f, b"{\"proxy\": {\"reas").unwrap();
        let err = KillSwitch::load(&f)
            .err()
            .expect("a corrupt state file must be refused");
        assert!(err.contains("refusing to guess"));
    }

    #[test]
    fn engage_flips_the_flag_even_if_the_write_fails() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KillSwitch::load(&dir.path().join("missing-dir/ks.json")).unwrap();
        assert!(ks.engage_proxy(by("x")).is_err());
        assert!(
            ks.proxy_engaged(),
            "the in-memory switch must hold even when persisting fails"
        );
    }

    #[test]
    fn history_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KillSwitch::load(&dir.path().join("ks.json")).unwrap();
        for i in 0..(HISTORY_KEPT + 5) {
            ks.record_key_event("engage", &format!("k{i}"), by("x")).unwrap();
        }
        let h = ks.snapshot().history;
        assert_eq!(h.len(), HISTORY_KEPT);
        assert_eq!(h.last().unwrap().scope, format!("key:k{}", HISTORY_KEPT + 4));
    }
}
