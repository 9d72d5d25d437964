//! The module file's process-wide bookkeeping: loading and initialising it, counting the
//! connections that use it, and `C_Finalize`, which ends the module for every token of the
//! process and so waits for this token's calls and runs only for the module's last user.

use super::super::HsmError;
use super::Connector;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Connections (live or parked) per module file, process-wide: `C_Finalize` ends the module
/// for every token of the process, so a token finalizes it only when it is the last user.
pub(super) static MODULE_USERS: Mutex<BTreeMap<PathBuf, usize>> = Mutex::new(BTreeMap::new());

/// One connection's registration in [`MODULE_USERS`], removed on drop.
pub(super) struct ModuleUse(PathBuf);

impl ModuleUse {
    pub(super) fn new(module: &Path) -> ModuleUse {
        *MODULE_USERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(module.to_owned())
            .or_default() += 1;
        ModuleUse(module.to_owned())
    }

    fn users(module: &Path) -> usize {
        MODULE_USERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(module)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for ModuleUse {
    fn drop(&mut self) {
        let mut users = MODULE_USERS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = users.get_mut(&self.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                users.remove(&self.0);
            }
        }
    }
}

impl Connector {
    /// Loads and initialises the module (already initialised by another connection is fine).
    pub(super) fn load_module(&self) -> Result<Pkcs11, HsmError> {
        let pkcs11 = Pkcs11::new(&self.module)
            .map_err(|e| HsmError::Unavailable(format!("cannot load {}: {e}", self.module.display())))?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(pkcs11),
            Err(e) => Err(HsmError::Unavailable(format!("C_Initialize: {e}"))),
        }
    }

    /// Waits until no PKCS#11 call is in progress, at most until `deadline`; false when calls
    /// were still running then.
    fn wait_calls(&self, deadline: Instant) -> bool {
        while self.calls.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// `C_Finalize` once no call of this token is in progress (bounded by `deadline`).
    pub(super) fn finalize(&self, pkcs11: Pkcs11, deadline: Instant) {
        if !self.wait_calls(deadline) {
            tracing::error!(token = %self.name, calls = self.calls.load(Ordering::SeqCst), "PKCS#11 calls still in progress after the wait; finalizing the module anyway");
        }
        match pkcs11.finalize() {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {
                tracing::info!(token = %self.name, "module finalized for re-initialisation")
            }
            Err(e) => tracing::warn!(token = %self.name, error = %e, "C_Finalize failed"),
        }
    }

    /// `C_Finalize`s a module this token no longer uses, unless another token of the process
    /// is connected through it or a session of this token is still open (finalizing would pull
    /// them out from under their holders, and a late `C_CloseSession` could then close a new
    /// session that reused the handle number).
    pub(super) fn release_module(&self, pkcs11: Pkcs11) {
        let others = ModuleUse::users(&self.module_file);
        let sessions = self.open_sessions();
        if others > 0 || sessions > 0 {
            tracing::info!(token = %self.name, other_tokens = others, open_sessions = sessions, "module left initialised");
            return;
        }
        self.finalize(pkcs11, Instant::now() + Duration::from_secs(1));
    }
}
