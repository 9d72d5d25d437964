//! Connections of the control plane's own, never installed for serving: a logged-in one for
//! the token writes and reads needed while the serving connection is down on purpose or absent,
//! and a public one (no login) for the token's public objects. Each leaves the module as it
//! found it.

use super::super::{classify, HsmError};
use super::module::ModuleUse;
use super::{find_slot, logged_in, Connection, Connector};
use cryptoki::session::Session;
use std::time::{Duration, Instant};

/// Retries of a temporary connection whose token looks unavailable.
const TEMPORARY_RETRIES: u32 = 4;

impl Connector {
    /// Runs `f` on a logged-in session of a connection of its own, never installed for
    /// serving: for the few token writes and reads the control plane needs while the serving
    /// connection is down on purpose (the proxy kill switch) or absent (an offline command).
    /// Closing its sessions ends its login; the module is finalized afterwards only when no
    /// other connection of this process uses it.
    pub(in crate::hsm) fn with_temporary_session<T>(
        &self,
        rw: bool,
        f: impl FnOnce(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        self.with_temporary_session_within(rw, Duration::ZERO, f)
    }

    /// `with_temporary_session` that keeps retrying a token that looks unavailable for at
    /// least `patience` (besides the quick retries).
    pub(in crate::hsm) fn with_temporary_session_within<T>(
        &self,
        rw: bool,
        patience: Duration,
        f: impl FnOnce(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        // A token can look absent for a moment (an HSM group failing over, a device being
        // re-enumerated): a few quick retries, and more within `patience`. A refused PIN is
        // never retried.
        let started = Instant::now();
        let mut attempt = 0;
        let conn = loop {
            match self.open_connection() {
                Err(HsmError::Unavailable(reason))
                    if attempt < TEMPORARY_RETRIES || started.elapsed() < patience =>
                {
                    tracing::debug!(token = %self.name, reason = %reason, "temporary connection: retrying");
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(50 * u64::from(attempt.min(4))));
                }
                other => break other?,
            }
        };
        let Connection {
            pkcs11,
            slot,
            login,
            _module_use: module_use,
        } = conn;
        let out = {
            let _call = self.enter();
            let session = if rw {
                pkcs11.open_rw_session(slot)
            } else {
                pkcs11.open_ro_session(slot)
            }
            .map_err(classify);
            let out = session.and_then(|s| {
                if !logged_in(&s)? {
                    return Err(HsmError::Unavailable(
                        "the session is not logged in; private objects unreadable".into(),
                    ));
                }
                f(&s)
            });
            drop(login);
            out
        };
        drop(module_use);
        self.release_module(pkcs11);
        out
    }

    /// Runs `f` on a read-only session of a connection of its own that does not log in, for
    /// the token's public objects (see `fleet_epoch`); the module is left as found.
    pub(in crate::hsm) fn with_public_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let pkcs11 = self.load_module()?;
        let module_use = ModuleUse::new(&self.module_file);
        let out = {
            let _call = self.enter();
            find_slot(&pkcs11, &self.label)
                .and_then(|slot| pkcs11.open_ro_session(slot).map_err(classify))
                .and_then(|s| f(&s))
        };
        drop(module_use);
        self.release_module(pkcs11);
        out
    }
}
