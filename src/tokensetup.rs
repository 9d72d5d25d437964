//! Direct token administration used before (or without) a running daemon: initialising a
//! SoftHSM2 token for the quickstart, and generating AES-256 keys *inside* the token with the
//! attributes an external key must have (sensitive, never extractable, private, persistent).

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
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

/// Loads and initialises a module (OS locking allowed; an already-initialised module is fine).
pub fn load(module: &Path) -> Result<Pkcs11, String> {
    let p = Pkcs11::new(module).map_err(|e| format!("cannot load {}: {e}", module.display()))?;
    match p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(p),
        Err(e) => Err(format!("C_Initialize: {e}")),
    }
}

/// Initialises a fresh token labelled `label` in SoftHSM2's free slot and sets the user PIN.
pub fn init_softhsm_token(p: &Pkcs11, label: &str, so_pin: &str, user_pin: &str) -> Result<(), String> {
    let slots = p.get_all_slots().map_err(|e| format!("C_GetSlotList: {e}"))?;
    let free = slots
        .into_iter()
        .find(|s| {
            p.get_token_info(*s)
                .map(|i| !i.token_initialized())
                .unwrap_or(false)
        })
        .ok_or("no uninitialised slot available")?;
    let so = AuthPin::from(so_pin);
    p.init_token(free, &so, label)
        .map_err(|e| format!("C_InitToken: {e}"))?;
    // SoftHSM2 moves the new token to a new slot id: find it again by label.
    let session = open_user_session_raw(p, label)?;
    session
        .login(UserType::So, Some(&so))
        .map_err(|e| format!("C_Login(SO): {e}"))?;
    session
        .init_pin(&AuthPin::from(user_pin))
        .map_err(|e| format!("C_InitPIN: {e}"))?;
    session.logout().map_err(|e| format!("C_Logout: {e}"))?;
    Ok(())
}

fn open_user_session_raw(p: &Pkcs11, label: &str) -> Result<Session, String> {
    let slot = p
        .get_slots_with_token()
        .map_err(|e| format!("C_GetSlotList: {e}"))?
        .into_iter()
        .find(|s| {
            p.get_token_info(*s)
                .map(|i| i.label().trim() == label)
                .unwrap_or(false)
        })
        .ok_or_else(|| format!("no token labelled {label:?}"))?;
    p.open_rw_session(slot).map_err(|e| format!("C_OpenSession: {e}"))
}

/// Opens a read-write session on the token labelled `label` and logs the user in.
pub fn open_user_session(p: &Pkcs11, label: &str, pin: &str) -> Result<Session, String> {
    let s = open_user_session_raw(p, label)?;
    match s.login(UserType::User, Some(&AuthPin::from(pin))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(s),
        Err(CkError::Pkcs11(rv @ (RvError::PinIncorrect | RvError::PinLocked), _)) => {
            Err(format!("login refused ({rv:?}): check the PIN"))
        }
        Err(e) => Err(format!("C_Login: {e}")),
    }
}
