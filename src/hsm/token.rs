//! One configured PKCS#11 token, assembled from its parts: the connection (`connection.rs`),
//! the key-handle cache (`cache.rs`), the key state (`keystate.rs`) and health (`health.rs`).
//! This file holds the token itself and what needs more than one of its parts: the admin
//! sessions every change of polled state goes through and the checks a worker makes before
//! each PKCS#11 call. Connecting and disconnecting are in `connect` (the marks are read before
//! the first request), the key-scope kill switch and key administration in `key_scope`, the
//! fleet-wide kill switch in `fleet_marks`, and the key versions in `key_versions`.

mod connect;
mod fleet_marks;
mod key_scope;
mod key_versions;

use super::beacon;
use super::cache::KeyCache;
use super::connection::Connector;
use super::fleet::FleetSnapshot;
use super::keystate::KeyState;
use super::profile::{quirks, Quirks};
use super::rotation::Rotations;
use super::version_table::VersionTable;
use super::{Gate, HsmError};
use crate::config::{IvSource, TokenConfig};
use cryptoki::session::Session;
use secrecy::SecretString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

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

    pub(super) fn token() -> Token {
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
}
