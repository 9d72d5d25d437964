//! One PKCS#11 token: loading the module, finding the slot by token label, logging in once,
//! counting the sessions handed to workers, and disconnecting completely for the kill switch
//! (every session closed, logout, `C_Finalize`). Crypto calls are in `crypto.rs`, background
//! reconnection and key-state polling in `supervisor.rs`.
//!
//! Login is a property of the application on the token, not of one session: the token keeps a
//! dedicated "login session" open so the login survives workers dropping their sessions.
//!
//! Recovery from a device-class failure ([`HsmError::device_lost`], or a login the token
//! forgot): `Token::mark_failed` takes the connection out of service and parks it; before
//! reconnecting, the supervisor calls `Token::retire_failed`, which waits (bounded) for the
//! workers to close their sessions, closes the login session and `C_Finalize`s the module, so
//! that the next [`Token::connect`] starts from a real `C_Initialize` and re-enumerates slots
//! (a module that reported a device error may otherwise keep its broken state, and many only
//! see a re-inserted token after re-initialisation). A failed connection attempt finalizes the
//! module it initialised for the same reason. `C_Finalize` is process-wide, so the module is
//! finalized only when no other token of this process holds a connection through the same
//! module file and no session of this token is still open; otherwise the module is left
//! initialised and only the slot lookup and login are redone.

use super::{classify, HsmError};
use crate::config::{IvSource, TokenConfig};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use secrecy::{ExposeSecret, SecretString};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Health of a token as reported to KMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    /// Serving normally.
    Active,
    /// Serving, but something needs attention (PIN retry counter low, queue full).
    Degraded,
    /// Cannot serve.
    Unavailable,
}

impl TokenStatus {
    /// The spec's string.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Active => "ACTIVE",
            TokenStatus::Degraded => "DEGRADED",
            TokenStatus::Unavailable => "UNAVAILABLE",
        }
    }
}

/// A health report for one token.
#[derive(Debug, Clone)]
pub struct TokenHealth {
    /// Token name from the config (the EKM id).
    pub name: String,
    /// Status.
    pub status: TokenStatus,
    /// Manufacturer id from the token.
    pub vendor: String,
    /// Model and versions from the token.
    pub model: String,
    /// Why the status is not ACTIVE (logged, not sent).
    pub detail: String,
}

/// Attributes of a secret key, as GetKeyMetadata reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// `AES_256`, `AES_128`, ...
    pub key_spec: String,
    /// Upper-case usages in a fixed order (ENCRYPT, DECRYPT, WRAP, UNWRAP, SIGN, VERIFY, DERIVE).
    pub usages: Vec<&'static str>,
}

pub(super) struct Connection {
    pub(super) pkcs11: Pkcs11,
    pub(super) slot: Slot,
    login: Mutex<Session>,
    _module_use: ModuleUse,
}

/// Connections (live or parked) per module file, process-wide: `C_Finalize` ends the module
/// for every token of the process, so a token finalizes it only when it is the last user.
static MODULE_USERS: Mutex<BTreeMap<PathBuf, usize>> = Mutex::new(BTreeMap::new());

/// One connection's registration in [`MODULE_USERS`], removed on drop.
struct ModuleUse(PathBuf);

impl ModuleUse {
    fn new(module: &Path) -> ModuleUse {
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

pub(super) enum State {
    Connected(Connection),
    Unavailable(String),
    /// Disconnected on purpose by the kill switch.
    Disconnected,
}

/// A session handed out by the token; dropping it closes the session and updates the count
/// the kill switch waits on.
pub struct CountedSession<'t> {
    /// Connection generation it belongs to.
    pub generation: u64,
    /// The PKCS#11 session.
    pub session: Session,
    count: &'t AtomicUsize,
}

impl Drop for CountedSession<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A configured token and its connection state.
pub struct Token {
    /// Name from the config.
    pub name: String,
    module: PathBuf,
    /// The module file with symlinks resolved: the key of [`MODULE_USERS`].
    module_file: PathBuf,
    label: String,
    pub(super) iv_source: IvSource,
    pin: SecretString,
    pub(super) state: RwLock<State>,
    ident: RwLock<(String, String)>,
    /// Key handle cache: label -> (handle, is an AES-256 key).
    pub(super) keys: RwLock<HashMap<String, (ObjectHandle, bool)>>,
    pub(super) disabled: RwLock<HashSet<String>>,
    /// Held by a local disable/enable across "flip in memory, then write the token", and by
    /// the poller across "read the token, then replace the set", so a poll never undoes a
    /// flip whose token write is still in progress.
    pub(super) disabled_sync: Mutex<()>,
    generation: AtomicU64,
    open_sessions: AtomicUsize,
    killed: Arc<AtomicBool>,
    /// The connection taken out of service by `begin_disconnect` (finalized by
    /// `finish_disconnect`) or by `mark_failed` (retired by `retire_failed`), once its
    /// sessions are closed.
    parked: Mutex<Option<Connection>>,
}

impl Token {
    /// A token in the "not yet connected" state; `killed` is the whole-proxy kill switch flag.
    pub fn new(cfg: &TokenConfig, pin: SecretString, killed: Arc<AtomicBool>) -> Token {
        Token {
            name: cfg.name.clone(),
            module: cfg.module.clone(),
            module_file: std::fs::canonicalize(&cfg.module).unwrap_or_else(|_| cfg.module.clone()),
            label: cfg.token_label.clone(),
            iv_source: cfg.iv_source,
            pin,
            state: RwLock::new(State::Unavailable("not connected yet".into())),
            ident: RwLock::new(("unknown".into(), "unknown".into())),
            keys: RwLock::new(HashMap::new()),
            disabled: RwLock::new(HashSet::new()),
            disabled_sync: Mutex::new(()),
            generation: AtomicU64::new(0),
            open_sessions: AtomicUsize::new(0),
            killed,
            parked: Mutex::new(None),
        }
    }

    /// Is the whole-proxy kill switch engaged?
    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Loads and initialises the module, finds the token by label and logs in. A wrong or locked
    /// PIN is [`HsmError::LoginRefused`]; callers must not retry it in a loop (HSMs lock PINs).
    pub fn connect(&self) -> Result<(), HsmError> {
        let conn = self.open_connection().and_then(|c| {
            // The disabled-key marks are read before the first request can be served: a key
            // disabled while this instance was down must not serve even briefly. A token
            // whose marks cannot be read is not served at all (fail closed).
            let login = c.login.lock().unwrap_or_else(|p| p.into_inner());
            let marks = crate::keyadmin::disabled_set(&login)
                .map_err(|e| HsmError::Unavailable(format!("cannot read disabled-key marks: {e}")))?;
            drop(login);
            let _sync = self.disabled_sync.lock().unwrap_or_else(|p| p.into_inner());
            *self.disabled.write().unwrap_or_else(|p| p.into_inner()) = marks;
            Ok(c)
        });
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.keys.write().unwrap_or_else(|p| p.into_inner()).clear();
        match conn {
            Ok(c) => {
                *state = State::Connected(c);
                Ok(())
            }
            Err(e) => {
                *state = State::Unavailable(e.to_string());
                Err(e)
            }
        }
    }

    fn open_connection(&self) -> Result<Connection, HsmError> {
        let pkcs11 = Pkcs11::new(&self.module)
            .map_err(|e| HsmError::Unavailable(format!("cannot load {}: {e}", self.module.display())))?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(HsmError::Unavailable(format!("C_Initialize: {e}"))),
        }
        match self.log_in(&pkcs11) {
            Ok((slot, session)) => Ok(Connection {
                pkcs11,
                slot,
                login: Mutex::new(session),
                _module_use: ModuleUse::new(&self.module_file),
            }),
            Err(e) => {
                // Its session (if any) is closed by now: leave the module as found on entry.
                self.release_module(pkcs11);
                Err(e)
            }
        }
    }

    /// Finds the slot, reads the token's identity and logs in on a new login session.
    fn log_in(&self, pkcs11: &Pkcs11) -> Result<(Slot, Session), HsmError> {
        let unavailable = |what: &str, e: CkError| HsmError::Unavailable(format!("{what}: {e}"));
        let slot = self.find_slot(pkcs11)?;
        let info = pkcs11
            .get_token_info(slot)
            .map_err(|e| unavailable("C_GetTokenInfo", e))?;
        let (hw, fw) = (info.hardware_version(), info.firmware_version());
        *self.ident.write().unwrap_or_else(|p| p.into_inner()) = (
            info.manufacturer_id().trim().to_owned(),
            format!("{} (hardware {hw}, firmware {fw})", info.model().trim()),
        );
        let session = pkcs11
            .open_ro_session(slot)
            .map_err(|e| unavailable("C_OpenSession", e))?;
        let pin = AuthPin::from(self.pin.expose_secret());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(
                rv @ (RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired),
                _,
            )) => {
                return Err(HsmError::LoginRefused(format!(
                    "login to token {:?} refused: {rv:?}; check the configured PIN",
                    self.label
                )))
            }
            Err(e) => return Err(unavailable("C_Login", e)),
        }
        Ok((slot, session))
    }

    /// `C_Finalize`s a module this token no longer uses, unless another token of the process
    /// is connected through it or a session of this token is still open (finalizing would pull
    /// them out from under their holders, and a late `C_CloseSession` could then close a new
    /// session that reused the handle number).
    fn release_module(&self, pkcs11: Pkcs11) {
        let others = ModuleUse::users(&self.module_file);
        let sessions = self.open_sessions();
        if others > 0 || sessions > 0 {
            tracing::info!(token = %self.name, other_tokens = others, open_sessions = sessions, "module left initialised");
            return;
        }
        match pkcs11.finalize() {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {
                tracing::info!(token = %self.name, "module finalized for re-initialisation")
            }
            Err(e) => tracing::warn!(token = %self.name, error = %e, "C_Finalize failed"),
        }
    }

    fn find_slot(&self, pkcs11: &Pkcs11) -> Result<Slot, HsmError> {
        let slots = pkcs11
            .get_slots_with_token()
            .map_err(|e| HsmError::Unavailable(format!("C_GetSlotList: {e}")))?;
        let matching: Vec<Slot> = slots
            .into_iter()
            .filter(|s| {
                pkcs11
                    .get_token_info(*s)
                    .map(|i| i.label().trim() == self.label)
                    .unwrap_or(false)
            })
            .collect();
        match matching.as_slice() {
            [slot] => Ok(*slot),
            [] => Err(HsmError::Unavailable(format!(
                "no token labelled {:?} is present",
                self.label
            ))),
            _ => Err(HsmError::Unavailable(format!(
                "{} tokens are labelled {:?}; labels must be unique",
                matching.len(),
                self.label
            ))),
        }
    }

    /// Current connection generation; a session from an older one is discarded.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Opens a new read-only session on the current connection (workers, pollers).
    pub fn open_session(&self) -> Result<CountedSession<'_>, HsmError> {
        self.open(false)
    }

    /// Opens a read-write session for key administration.
    pub fn admin_session(&self) -> Result<CountedSession<'_>, HsmError> {
        self.open(true)
    }

    fn open(&self, rw: bool) -> Result<CountedSession<'_>, HsmError> {
        if self.killed() {
            return Err(HsmError::Disconnected);
        }
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        match &*state {
            State::Connected(c) => {
                let s = if rw {
                    c.pkcs11.open_rw_session(c.slot)
                } else {
                    c.pkcs11.open_ro_session(c.slot)
                };
                let session = s.map_err(classify)?;
                self.open_sessions.fetch_add(1, Ordering::SeqCst);
                Ok(CountedSession {
                    generation: self.generation(),
                    session,
                    count: &self.open_sessions,
                })
            }
            State::Unavailable(reason) => Err(HsmError::Unavailable(reason.clone())),
            State::Disconnected => Err(HsmError::Disconnected),
        }
    }

    /// Sessions currently held by workers, pollers and admin commands.
    pub fn open_sessions(&self) -> usize {
        self.open_sessions.load(Ordering::SeqCst)
    }

    /// Kill switch, step 1: no new session can be opened and every holder of one drops it at
    /// its next look (workers look at least every [`super::IDLE_CHECK`]).
    pub fn begin_disconnect(&self) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut *state, State::Disconnected);
        self.generation.fetch_add(1, Ordering::SeqCst);
        drop(state);
        if let State::Connected(c) = old {
            *self.parked.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
        }
    }

    /// Kill switch, step 2: waits (bounded) for every session to close, then logs out, closes
    /// the login session and finalizes the module. Returns how many sessions were still open
    /// when the wait ended (0 when all closed in time).
    pub fn finish_disconnect(&self, wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        while self.open_sessions() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let left = self.open_sessions();
        self.keys.write().unwrap_or_else(|p| p.into_inner()).clear();
        if let Some(c) = self.parked.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let Connection { pkcs11, login, .. } = c;
            let login = login.into_inner().unwrap_or_else(|p| p.into_inner());
            let _ = login.logout();
            drop(login);
            // Another token on the same module may have finalized it already.
            match pkcs11.finalize() {
                Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {}
                Err(e) => tracing::warn!(token = %self.name, error = %e, "C_Finalize failed"),
            }
        }
        left
    }

    /// Records a device-class failure (or a lost login): the token is unavailable until the
    /// supervisor reconnects it; the failed connection is parked for `Token::retire_failed`.
    pub(super) fn mark_failed(&self, err: &HsmError) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if matches!(*state, State::Connected(_)) {
            tracing::error!(token = %self.name, error = %err, "token failed; reconnecting");
            let old = std::mem::replace(&mut *state, State::Unavailable(err.to_string()));
            self.generation.fetch_add(1, Ordering::SeqCst);
            drop(state);
            if let State::Connected(c) = old {
                *self.parked.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
            }
        }
    }

    /// Before a reconnect: retires the connection parked by `Token::mark_failed`. Waits up
    /// to `wait` for the workers to close their sessions (they look every
    /// [`super::IDLE_CHECK`], or when their current call returns), closes the login session
    /// and finalizes the module when nothing else uses it. Never touches a connection parked
    /// by the kill switch (that one is `finish_disconnect`'s).
    pub(super) fn retire_failed(&self, wait: Duration) {
        if self.killed()
            || !matches!(
                *self.state.read().unwrap_or_else(|p| p.into_inner()),
                State::Unavailable(_)
            )
        {
            return;
        }
        let Some(c) = self.parked.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let deadline = Instant::now() + wait;
        while self.open_sessions() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let Connection {
            pkcs11,
            login,
            _module_use: module_use,
            ..
        } = c;
        // Closing the last session also ends the login on the token; this connection stops
        // counting as a user of the module before the module is (perhaps) finalized.
        drop(login);
        drop(module_use);
        self.release_module(pkcs11);
    }

    /// Is the token connected and logged in?
    pub fn is_connected(&self) -> bool {
        matches!(
            *self.state.read().unwrap_or_else(|p| p.into_inner()),
            State::Connected(_)
        )
    }

    /// Is this key disabled (key-scope kill switch)? Reads the in-memory copy of the token's
    /// marks, refreshed by the supervisor every half second and updated at once by local
    /// admin commands.
    pub fn is_disabled(&self, key_id: &str) -> bool {
        self.disabled
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key_id)
    }

    /// Runs a local disable/enable: `f` flips the in-memory set (with [`Token::set_disabled`])
    /// and writes the token while the poller is held off.
    pub fn with_disabled_sync<T>(&self, f: impl FnOnce() -> T) -> T {
        let _guard = self.disabled_sync.lock().unwrap_or_else(|p| p.into_inner());
        f()
    }

    /// Updates the in-memory disabled set for one key (local admin commands, before the token
    /// write, so the switch takes effect first).
    pub fn set_disabled(&self, key_id: &str, disabled: bool) {
        let mut set = self.disabled.write().unwrap_or_else(|p| p.into_inner());
        if disabled {
            set.insert(key_id.to_owned());
        } else {
            set.remove(key_id);
        }
    }

    /// Keys currently known as disabled.
    pub fn disabled_keys(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .disabled
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// A health report built without a probe (for failures of the probe itself).
    pub fn health_without_probe(&self, status: TokenStatus, detail: &str) -> TokenHealth {
        let (vendor, model) = self.ident.read().unwrap_or_else(|p| p.into_inner()).clone();
        TokenHealth {
            name: self.name.clone(),
            status,
            vendor,
            model,
            detail: detail.to_owned(),
        }
    }

    /// Health probe run by a worker on its own logged-in session.
    pub(super) fn probe(&self, session: &Session) -> Result<TokenHealth, HsmError> {
        let info = session.get_session_info().map_err(classify)?;
        if !matches!(info.session_state(), SessionState::RoUser | SessionState::RwUser) {
            // The token forgot the login (restarted, or logged out by someone else): report it
            // as the token would have, so the worker handles it as a lost login.
            return Err(classify(CkError::Pkcs11(
                RvError::UserNotLoggedIn,
                cryptoki::context::Function::GetSessionInfo,
            )));
        }
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let State::Connected(c) = &*state else {
            return Ok(self.health_without_probe(TokenStatus::Unavailable, "not connected"));
        };
        let t = c.pkcs11.get_token_info(c.slot).map_err(classify)?;
        let (status, detail) = if t.user_pin_locked() || t.error_state() {
            (
                TokenStatus::Unavailable,
                "user PIN locked or token in error state",
            )
        } else if t.user_pin_count_low() || t.user_pin_final_try() {
            (TokenStatus::Degraded, "user PIN retry counter is low")
        } else {
            (TokenStatus::Active, "")
        };
        Ok(self.health_without_probe(status, detail))
    }
}
