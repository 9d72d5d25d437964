//! Direct token access used before (or without) a running daemon: loading a module,
//! initialising a SoftHSM2 token for the quickstart, and a logged-in user session for the
//! offline key commands.

use super::connection::{find_slot, log_in_user};
use super::lifecycle::KeyAdmin;
use super::HsmError;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use secrecy::SecretString;
use std::path::{Path, PathBuf};

/// Where Debian/Ubuntu (and a few other layouts) install SoftHSM2's PKCS#11 module.
pub const SOFTHSM_MODULE_PATHS: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
];

/// The SoftHSM2 module: `XKS_BRIDGE_SOFTHSM_MODULE` if set, else the first known path present.
pub fn find_softhsm_module() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("XKS_BRIDGE_SOFTHSM_MODULE") {
        return Some(PathBuf::from(p));
    }
    SOFTHSM_MODULE_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A loaded, initialised PKCS#11 module.
pub struct Module(Pkcs11);

/// Loads and initialises a module (OS locking allowed; an already-initialised module is fine).
pub fn load(module: &Path) -> Result<Module, HsmError> {
    let p = Pkcs11::new(module)
        .map_err(|e| HsmError::Unavailable(format!("cannot load {}: {e}", module.display())))?;
    match p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(Module(p)),
        Err(e) => Err(HsmError::Unavailable(format!("C_Initialize: {e}"))),
    }
}

fn failed(what: &str) -> impl Fn(CkError) -> HsmError + '_ {
    move |e| HsmError::Unavailable(format!("{what}: {e}"))
}

impl Module {
    /// Initialises a fresh token labelled `label` in SoftHSM2's free slot and sets the user PIN.
    pub fn init_softhsm_token(&self, label: &str, so_pin: &str, user_pin: &str) -> Result<(), HsmError> {
        let p = &self.0;
        let slots = p.get_all_slots().map_err(failed("C_GetSlotList"))?;
        let free = slots
            .into_iter()
            .find(|s| {
                p.get_token_info(*s)
                    .map(|i| !i.token_initialized())
                    .unwrap_or(false)
            })
            .ok_or_else(|| HsmError::Unavailable("no uninitialised slot available".into()))?;
        let so = AuthPin::from(so_pin);
        p.init_token(free, &so, label).map_err(failed("C_InitToken"))?;
        // SoftHSM2 moves the new token to a new slot id: find it again by label.
        let session = self.open_rw(label)?;
        session
            .login(UserType::So, Some(&so))
            .map_err(|e| super::classify::login_error(label, e))?;
        session
            .init_pin(&AuthPin::from(user_pin))
            .map_err(failed("C_InitPIN"))?;
        session.logout().map_err(failed("C_Logout"))?;
        Ok(())
    }

    fn open_rw(&self, label: &str) -> Result<Session, HsmError> {
        let slot = find_slot(&self.0, label)?;
        self.0.open_rw_session(slot).map_err(failed("C_OpenSession"))
    }

    /// Opens a read-write session on the token labelled `label` and logs the user in. A
    /// refused PIN is [`HsmError::LoginRefused`].
    pub fn open_user_session(&self, label: &str, pin: &SecretString) -> Result<UserSession, HsmError> {
        let session = self.open_rw(label)?;
        log_in_user(&session, label, pin)?;
        Ok(UserSession { session })
    }

    pub(super) fn pkcs11(&self) -> &Pkcs11 {
        &self.0
    }

    /// `C_Finalize` (best effort: the process is about to stop using the module).
    pub fn finalize(self) {
        let _ = self.0.finalize();
    }
}

/// A logged-in read-write user session outside the daemon.
pub struct UserSession {
    session: Session,
}

impl UserSession {
    /// Key administration on this session. No daemon runs, so there is no cache or in-memory
    /// key state to keep in step.
    pub fn key_admin(&self) -> KeyAdmin<'_> {
        KeyAdmin::new(&self.session, None)
    }

    /// The session itself, for the doctor's probes.
    pub(super) fn session(&self) -> &Session {
        &self.session
    }
}

impl Drop for UserSession {
    fn drop(&mut self) {
        let _ = self.session.logout();
    }
}
