//! One configured PKCS#11 token, assembled from its parts: the connection (`connection.rs`),
//! the key-handle cache (`cache.rs`), the key state (`keystate.rs`) and health (`health.rs`).
//! This file holds what needs more than one of them: connecting (the marks are read before
//! the first request), the key-scope kill switch, lifecycle sessions and the checks a worker
//! makes before each PKCS#11 call.

use super::beacon;
use super::cache::KeyCache;
use super::connection::{logged_in, Connector, CountedSession};
use super::fleet::{self, FleetMarks, FleetSnapshot};
use super::fleet_epoch::{self, FleetEpoch};
use super::key_objects::find_key;
use super::keystate::{KeyState, MarkOutcome};
use super::lifecycle::KeyAdmin;
use super::profile::{quirks, Quirks};
use super::rotation::Rotations;
use super::version_table::{self, VersionTable};
use super::versions;
use super::{marks, Gate, HsmError};
use crate::config::{IvSource, TokenConfig};
use cryptoki::session::Session;
use secrecy::SecretString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// How long the removal of a fleet mark on a connection of its own retries a token that looks
/// unavailable (see `Token::remove_fleet_mark`).
const RELEASE_PATIENCE: Duration = Duration::from_secs(3);

/// Attributes of a secret key, as GetKeyMetadata reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// `AES_256`, `AES_128`, ... ([`super::KeySpec`]'s spelling).
    pub key_spec: String,
    /// Upper-case usages in a fixed order (ENCRYPT, DECRYPT, WRAP, UNWRAP, SIGN, VERIFY, DERIVE).
    pub usages: Vec<&'static str>,
}

/// A configured token and its connection state.
pub struct Token {
    /// Name from the config.
    pub name: String,
    /// The IV mode in force (`iv_source`, else the profile's).
    pub(super) iv_source: IvSource,
    /// The vendor's quirks (which `C_Decrypt` codes are a bad tag).
    pub(super) quirks: &'static Quirks,
    pub(super) conn: Connector,
    pub(super) cache: KeyCache,
    keys: KeyState,
    /// Fleet marks as last read on the current connection (`None` before the first read).
    fleet: RwLock<Option<FleetSnapshot>>,
    /// Every key's versions, as last read from the token.
    pub(super) versions: VersionTable,
    /// Reservations of encryptions and the rotator's queue.
    pub(super) rotations: Rotations,
    /// This instance's id in counter labels (set by the daemon from its state directory).
    instance: OnceLock<String>,
    /// The health check's self-test could not make its session key (said once, see `health`).
    pub(super) self_test_skipped: std::sync::atomic::AtomicBool,
}

impl Token {
    /// A token in the "not yet connected" state; `killed` is the whole-proxy kill switch flag.
    pub fn new(cfg: &TokenConfig, pin: SecretString, killed: Arc<AtomicBool>) -> Token {
        Token {
            name: cfg.name.clone(),
            iv_source: cfg.effective_iv_source(),
            quirks: quirks(cfg.profile),
            conn: Connector::new(cfg, pin, killed),
            cache: KeyCache::default(),
            keys: KeyState::default(),
            fleet: RwLock::new(None),
            versions: VersionTable::default(),
            rotations: Rotations::default(),
            instance: OnceLock::new(),
            self_test_skipped: Default::default(),
        }
    }

    /// Is the whole-proxy kill switch engaged?
    pub fn killed(&self) -> bool {
        self.conn.killed()
    }

    /// Loads and initialises the module, finds the token by label and logs in. A refused PIN
    /// is [`HsmError::LoginRefused`]; callers must not retry it in a loop (HSMs lock PINs).
    pub fn connect(&self) -> Result<(), HsmError> {
        let conn = self.conn.open_connection().and_then(|c| {
            // The disabled-key marks are read before the first request can be served: a key
            // disabled while this instance was down must not serve even briefly. A token
            // whose marks cannot be read (or that hides them: not logged in) is not served at
            // all (fail closed). The lifecycle lock keeps a local disable/enable from running
            // between the read and the install.
            // The fleet marks are read with them for the same reason, and the key versions: a
            // version retired or created while this instance was down is in force from the
            // first request.
            let _lifecycle = self.keys.lock_lifecycle();
            let read_started = Instant::now();
            let (marks, fleet_marks, versions) = Connector::with_login(&c, |s| {
                let _call = self.conn.enter();
                if !logged_in(s)? {
                    return Err(HsmError::Unavailable(
                        "the login session is not logged in; disabled-key marks unreadable".into(),
                    ));
                }
                Ok((marks::disabled_set(s)?, fleet::read(s)?, versions::read_all(s)?))
            })
            .map_err(|e| {
                HsmError::Unavailable(format!("cannot read disabled-key marks or key versions: {e}"))
            })?;
            self.keys.install_marks(marks);
            self.install_fleet(FleetSnapshot {
                marks: fleet_marks,
                read_started,
            });
            self.versions.install(None, versions);
            Ok(c)
        });
        self.cache.clear();
        self.conn.install(conn)?;
        // Best effort: without a beacon the polls search the token every time.
        let _call = self.conn.enter();
        if let Ok(s) = self.conn.open(true) {
            if let Err(e) = beacon::ensure(s.session()) {
                tracing::debug!(token = %self.name, error = %e, "no change beacon on the token");
            }
        }
        Ok(())
    }

    /// Sets the id this instance writes its encryption counters under (once; later calls are
    /// ignored). See docs/key-versions.md.
    pub fn set_instance_id(&self, id: String) {
        let _ = self.instance.set(id);
    }

    pub(super) fn instance_id(&self) -> Result<&str, HsmError> {
        self.instance
            .get()
            .map(String::as_str)
            .ok_or_else(|| HsmError::Internal("no instance id: encryption counters cannot be written".into()))
    }

    /// The version of `key_id` Encrypt uses now (1 for keys that were never rotated).
    pub fn current_version(&self, key_id: &str) -> u32 {
        self.versions.current(key_id)
    }

    /// Reads every key's versions on `s` and installs them now (after a local change).
    pub(super) fn refresh_versions_now(&self, s: &Session) {
        match versions::read_all(s) {
            Ok(all) => {
                self.versions.install(None, all);
            }
            Err(e) => {
                tracing::warn!(token = %self.name, error = %e, "cannot read key versions after a change; the next poll will")
            }
        }
    }

    /// The poll's half of the versions: installs a read unless a local change overlapped it.
    pub(super) fn install_polled_versions(
        &self,
        seen: u64,
        all: std::collections::HashMap<String, version_table::KeyVersions>,
    ) {
        self.versions.install(Some(seen), all);
    }

    /// Change counter of the version table, read before a poll reads the token.
    pub(super) fn version_changes(&self) -> u64 {
        self.versions.change_count()
    }

    /// Current connection generation; a session from an older one is discarded.
    pub fn generation(&self) -> u64 {
        self.conn.generation()
    }

    /// Opens a new read-only session (workers, pollers); the caller holds a call guard.
    pub(crate) fn open_session(&self) -> Result<CountedSession<'_>, HsmError> {
        self.conn.open(false)
    }

    /// Sessions currently held by workers, pollers and admin commands.
    pub fn open_sessions(&self) -> usize {
        self.conn.open_sessions()
    }

    /// Kill switch, step 1: no new session can be opened and every holder of one drops it at
    /// its next look (workers look before every call and at least every
    /// [`super::IDLE_CHECK`]).
    pub fn begin_disconnect(&self) {
        self.conn.begin_disconnect()
    }

    /// Kill switch, step 2: waits (bounded) for every session to close and every PKCS#11 call
    /// to return, then logs out, closes the login session and finalizes the module. Returns how
    /// many sessions were still open when the wait ended (0 when all closed in time).
    pub fn finish_disconnect(&self, wait: Duration) -> usize {
        let left = self.conn.finish_disconnect(wait);
        self.cache.clear();
        left
    }

    /// Records a device-class failure (or a lost login): the token is unavailable until the
    /// supervisor reconnects it.
    pub(super) fn mark_failed(&self, err: &HsmError) {
        self.conn.mark_failed(err)
    }

    /// Before a reconnect: retires the connection parked by `mark_failed`.
    pub(super) fn retire_failed(&self, wait: Duration) {
        self.conn.retire_failed(wait)
    }

    /// Is the token connected and logged in?
    pub fn is_connected(&self) -> bool {
        self.conn.is_connected()
    }

    // ---- fleet marks (fleet-wide kill switch) ----

    /// The fleet marks last read on the current connection; `None` while the token is not
    /// connected (then nothing is known about them).
    pub fn fleet_snapshot(&self) -> Option<FleetSnapshot> {
        if !self.is_connected() {
            return None;
        }
        self.fleet.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn install_fleet(&self, snapshot: FleetSnapshot) {
        *self.fleet.write().unwrap_or_else(|p| p.into_inner()) = Some(snapshot);
    }

    /// Writes the fleet mark of `scope` (a no-op when one exists). Blocking.
    pub fn write_fleet_mark(&self, scope: &str, record: &[u8]) -> Result<(), HsmError> {
        self.with_write_session(|s| {
            fleet::put(s, scope, record)?;
            fleet_epoch::bump(s);
            Ok(())
        })
    }

    /// Removes the fleet mark of `scope`; true when there was one. Blocking.
    ///
    /// On a connection of its own, a token that looks unavailable is tried again for up to
    /// 3 s (an HSM group failing over, a device being re-enumerated): a release may wait; an
    /// engage (the mark's write) keeps the quick retries only, so that it is in force on this
    /// instance without delay. The fleet epoch is replaced only when a mark was removed.
    pub fn remove_fleet_mark(&self, scope: &str) -> Result<bool, HsmError> {
        self.with_write_session_within(RELEASE_PATIENCE, |s| {
            let removed = fleet::remove(s, scope)?;
            if removed {
                fleet_epoch::bump(s);
            }
            Ok(removed)
        })
    }

    /// Reads the fleet marks on a connection of its own: logs in, reads, logs out and leaves
    /// the module as it found it. This is the check an instance disconnected by a fleet engage
    /// makes to learn of the release. The fleet epoch is read first (empty when unreadable),
    /// so that a mark changed after this read changes the epoch seen next. Blocking.
    pub fn probe_fleet_marks(&self) -> Result<(FleetMarks, FleetEpoch), HsmError> {
        self.conn.with_temporary_session(false, |s| {
            let epoch = fleet_epoch::read(s).unwrap_or_default();
            Ok((fleet::read(s)?, epoch))
        })
    }

    /// Reads the fleet epoch without logging in (see [`fleet_epoch`]): the cheap check that
    /// tells a disconnected instance whether [`Token::probe_fleet_marks`] is needed. Blocking.
    pub fn probe_fleet_epoch(&self) -> Result<FleetEpoch, HsmError> {
        self.conn.with_public_session(fleet_epoch::read)
    }

    /// A read-write session for a fleet mark: the serving connection when there is one,
    /// otherwise a connection of its own (the proxy kill switch has disconnected the token,
    /// or this is an offline command).
    fn with_write_session<T>(&self, f: impl FnOnce(&Session) -> Result<T, HsmError>) -> Result<T, HsmError> {
        self.with_write_session_within(Duration::ZERO, f)
    }

    /// `with_write_session` whose connection of its own retries a token that looks
    /// unavailable for up to `patience`.
    fn with_write_session_within<T>(
        &self,
        patience: Duration,
        f: impl FnOnce(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        if self.is_connected() && !self.killed() {
            self.with_admin_session(f)
        } else {
            self.conn.with_temporary_session_within(true, patience, |s| {
                let out = f(s);
                beacon::bump(s);
                out
            })
        }
    }

    // ---- key state (key-scope kill switch) ----

    /// Is this key refused (a disabled mark on the token, or refused by this process)?
    pub fn is_refused(&self, key_id: &str) -> bool {
        self.keys.is_refused(key_id)
    }

    /// Every refused key, sorted: the token's marks and this process's own refusals.
    pub fn refused_keys(&self) -> Vec<String> {
        self.keys.refused_keys()
    }

    /// Keys this process refuses without a mark on the token (for the control layer's state
    /// file).
    pub fn local_denies(&self) -> Vec<String> {
        self.keys.local_denies()
    }

    /// Refuses `key_id` in this process only, without touching the token (the control layer
    /// reinstalls its persisted list with this at start).
    pub fn deny_locally(&self, key_id: &str) {
        self.keys.deny_locally(key_id);
    }

    /// Lifts this process's own refusal of `key_id`; a mark on the token still refuses it.
    pub fn lift_local(&self, key_id: &str) {
        self.keys.lift_local(key_id);
    }

    /// Disables a key (the key-scope kill switch). The refusal takes effect in memory before
    /// the token is written; then the mark is written with `record` (who/when/why, JSON) as its
    /// value. A token that refuses the write (or cannot be reached) leaves the key refused by
    /// this process alone: [`MarkOutcome::LocalOnly`]. A key the token does not hold is
    /// [`HsmError::KeyNotFound`], and is not left refused. Blocking: call it off the async
    /// runtime.
    pub fn disable_key(&self, key_id: &str, record: &str) -> Result<MarkOutcome, HsmError> {
        let _lifecycle = self.keys.lock_lifecycle();
        let added = self.keys.deny_locally(key_id);
        let written = self.with_admin_session(|s| {
            match find_key(s, key_id) {
                Ok(_) | Err(HsmError::AmbiguousKey(_)) => {}
                Err(e) => return Err(e),
            }
            Ok(marks::put_mark(s, key_id, record))
        });
        match written {
            Ok(Ok(())) => {
                self.keys.marked_on_token(key_id);
                Ok(MarkOutcome::OnToken)
            }
            Err(HsmError::KeyNotFound) => {
                if added {
                    self.keys.lift_local(key_id);
                }
                Err(HsmError::KeyNotFound)
            }
            Ok(Err(e)) | Err(e) => {
                tracing::error!(token = %self.name, key_id, error = %e, "disabled-key mark not written; the key is refused by this process only");
                Ok(MarkOutcome::LocalOnly {
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Enables a key: removes its marks from the token, then lifts every refusal of it. A
    /// token that cannot remove the mark leaves the key refused (the error says why).
    pub fn enable_key(&self, key_id: &str) -> Result<(), HsmError> {
        let _lifecycle = self.keys.lock_lifecycle();
        let refused = self.keys.is_refused(key_id);
        self.with_admin_session(|s| {
            match find_key(s, key_id) {
                Ok(_) | Err(HsmError::AmbiguousKey(_)) => {}
                // A refused id whose key is gone may still be lifted.
                Err(HsmError::KeyNotFound) if refused => {}
                Err(e) => return Err(e),
            }
            marks::remove_marks(s, key_id)
        })?;
        self.keys.forget(key_id);
        Ok(())
    }

    /// Runs `f` with key administration on a new read-write session of the connection.
    /// Blocking: call it off the async runtime.
    pub fn key_admin<T>(&self, f: impl FnOnce(&KeyAdmin<'_>) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let _lifecycle = self.keys.lock_lifecycle();
        self.with_admin_session(|s| f(&KeyAdmin::new(s, Some(self))))
    }

    /// Every change of polled state (marks, lifecycle, version administration) goes through
    /// here or announces itself: the beacon is replaced afterwards, whatever `f` returned (a
    /// failed operation may have written part of its change).
    fn with_admin_session<T>(&self, f: impl FnOnce(&Session) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let _call = self.conn.enter();
        let s = self.conn.open(true)?;
        let out = f(s.session());
        beacon::bump(s.session());
        out
    }

    /// `key_id`'s object is destroyed and cached handles invalidated: its refusal has nothing
    /// left to protect (a new key created under the id later starts enabled).
    pub(super) fn forget_destroyed(&self, key_id: &str) {
        self.keys.forget(key_id);
    }

    /// A lifecycle change: cached handles must be checked again before use.
    pub(super) fn keys_changed(&self) {
        self.cache.invalidate();
    }

    /// The poll's half of the key state: installs marks read on a logged-in session unless a
    /// local change overlapped the read; a changed set invalidates the handle cache (another
    /// instance may be destroying or replacing a key).
    pub(super) fn install_polled_marks(&self, seen: u64, marks: std::collections::HashSet<String>) -> bool {
        match self.keys.install_polled(seen, marks) {
            Some(changed) => {
                if changed {
                    self.cache.invalidate();
                }
                true
            }
            None => false,
        }
    }

    /// Change counter of the key state, read before a poll reads the token.
    pub(super) fn key_state_changes(&self) -> u64 {
        self.keys.change_count()
    }

    /// The checks made immediately before each PKCS#11 crypto call of a job: the whole-proxy
    /// kill switch, the session's generation, the key's refusal and the caller's gate.
    pub(super) fn admit(&self, generation: u64, key_id: &str, gate: Option<&Gate>) -> Result<(), HsmError> {
        if self.killed() {
            return Err(HsmError::Disconnected);
        }
        if generation != self.generation() {
            return Err(HsmError::Unavailable("the connection was replaced".into()));
        }
        if self.keys.is_refused(key_id) {
            return Err(HsmError::KeyDisabled);
        }
        if gate.is_some_and(|g| g.load(Ordering::SeqCst)) {
            return Err(HsmError::GateClosed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        let cfg: TokenConfig = toml::from_str(
            r#"
            name = "t"
            module = "/nonexistent/module.so"
            token_label = "t"
            pin = { file = "/nonexistent/pin" }
            "#,
        )
        .expect("token config");
        Token::new(&cfg, SecretString::from("0000"), Arc::new(AtomicBool::new(false)))
    }

    /// The checks a worker makes before each call: a refused key, a closed caller gate, a
    /// replaced connection and the proxy kill switch each stop the call.
    #[test]
    fn admission_checks_refusal_gate_generation_and_kill_switch() {
        let t = token();
        let g = t.generation();
        assert!(t.admit(g, "k", None).is_ok());
        let gate: Gate = Arc::new(AtomicBool::new(false));
        assert!(t.admit(g, "k", Some(&gate)).is_ok());
        gate.store(true, Ordering::SeqCst);
        assert!(matches!(t.admit(g, "k", Some(&gate)), Err(HsmError::GateClosed)));
        t.deny_locally("k");
        assert!(matches!(t.admit(g, "k", None), Err(HsmError::KeyDisabled)));
        assert_eq!(t.local_denies(), ["k"]);
        assert_eq!(t.refused_keys(), ["k"]);
        t.lift_local("k");
        assert!(t.admit(g, "k", None).is_ok());
        t.begin_disconnect();
        assert!(
            t.admit(g, "k", None).is_err(),
            "a session of the old generation is refused"
        );
    }

    /// A disable on a token that cannot be reached still refuses the key, in this process.
    #[test]
    fn disable_without_a_token_connection_is_local_only() {
        let t = token();
        let outcome = t.disable_key("k", "{}").expect("refused locally");
        assert!(matches!(outcome, MarkOutcome::LocalOnly { .. }), "{outcome:?}");
        assert!(t.is_refused("k"));
        assert_eq!(t.local_denies(), ["k"]);
    }
}
