//! One token's connection: loading the module, finding the slot by token label, logging in
//! once, counting the sessions and the PKCS#11 calls in progress, and taking the connection out
//! of service (kill switch, device failure) up to `C_Finalize`.
//!
//! Login is a property of the application on the token, not of one session: the connection
//! keeps a dedicated "login session" open so the login survives workers dropping their sessions.
//!
//! Recovery from a device-class failure ([`HsmError::device_lost`], or a login the token
//! forgot): `mark_failed` takes the connection out of service and parks it; before
//! reconnecting, the supervisor calls `retire_failed`, which waits (bounded) for the workers to
//! close their sessions and leave their calls, closes the login session and `C_Finalize`s the
//! module, so that the next connect starts from a real `C_Initialize` and re-enumerates slots.
//! `C_Finalize` is process-wide, so the module is finalized only when no other token of this
//! process holds a connection through the same module file and no session of this token is
//! still open.
//!
//! Every PKCS#11 call made through a connection runs inside a [`CallGuard`]: `C_Finalize`
//! waits (bounded, logged when it must proceed) until no call is in progress. The guard is a
//! counter, not a lock, so holding it never blocks another thread and it nests freely.

use super::{classify, HsmError};
use crate::config::TokenConfig;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, SessionState};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Retries of a temporary connection whose token looks unavailable.
const TEMPORARY_RETRIES: u32 = 4;

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

/// A PKCS#11 call (or a run of them) in progress; `C_Finalize` waits for every guard to drop.
pub(crate) struct CallGuard<'c>(&'c AtomicUsize);

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A session handed out by the connection; dropping it closes the session (inside a call
/// guard) and only then updates the count the kill switch waits on.
pub(crate) struct CountedSession<'t> {
    /// Connection generation it belongs to.
    pub generation: u64,
    session: Option<Session>,
    conn: &'t Connector,
}

impl CountedSession<'_> {
    /// The PKCS#11 session.
    pub fn session(&self) -> &Session {
        // Only `drop` takes it out.
        self.session.as_ref().expect("session present until drop")
    }
}

impl Drop for CountedSession<'_> {
    fn drop(&mut self) {
        let _call = self.conn.enter();
        drop(self.session.take());
        self.conn.open_sessions.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The connection state of one configured token.
pub(super) struct Connector {
    pub(super) name: String,
    module: PathBuf,
    /// The module file with symlinks resolved: the key of [`MODULE_USERS`].
    module_file: PathBuf,
    pub(super) label: String,
    pin: SecretString,
    pub(super) state: RwLock<State>,
    /// Manufacturer and model, from the last successful `C_GetTokenInfo`.
    pub(super) ident: RwLock<(String, String)>,
    generation: AtomicU64,
    open_sessions: AtomicUsize,
    calls: AtomicUsize,
    killed: Arc<AtomicBool>,
    /// The connection taken out of service by `begin_disconnect` (finalized by
    /// `finish_disconnect`) or by `mark_failed` (retired by `retire_failed`), once its
    /// sessions are closed.
    parked: Mutex<Option<Connection>>,
}

impl Connector {
    pub(super) fn new(cfg: &TokenConfig, pin: SecretString, killed: Arc<AtomicBool>) -> Connector {
        Connector {
            name: cfg.name.clone(),
            module: cfg.module.clone(),
            module_file: std::fs::canonicalize(&cfg.module).unwrap_or_else(|_| cfg.module.clone()),
            label: cfg.token_label.clone(),
            pin,
            state: RwLock::new(State::Unavailable("not connected yet".into())),
            ident: RwLock::new(("unknown".into(), "unknown".into())),
            generation: AtomicU64::new(0),
            open_sessions: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            killed,
            parked: Mutex::new(None),
        }
    }

    pub(super) fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Marks the start of PKCS#11 work. Taken *before* the caller checks the kill switch and
    /// the generation, so a finalizer that changed them and then saw no call in progress
    /// cannot be overtaken by a call that checked too early.
    pub(super) fn enter(&self) -> CallGuard<'_> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        CallGuard(&self.calls)
    }

    /// Loads and initialises the module, finds the slot and logs in on a new login session.
    /// Loads and initialises the module (already initialised by another connection is fine).
    fn load_module(&self) -> Result<Pkcs11, HsmError> {
        let pkcs11 = Pkcs11::new(&self.module)
            .map_err(|e| HsmError::Unavailable(format!("cannot load {}: {e}", self.module.display())))?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(pkcs11),
            Err(e) => Err(HsmError::Unavailable(format!("C_Initialize: {e}"))),
        }
    }

    pub(super) fn open_connection(&self) -> Result<Connection, HsmError> {
        let pkcs11 = self.load_module()?;
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

    fn log_in(&self, pkcs11: &Pkcs11) -> Result<(Slot, Session), HsmError> {
        let unavailable = |what: &str, e: CkError| HsmError::Unavailable(format!("{what}: {e}"));
        let slot = find_slot(pkcs11, &self.label)?;
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
        log_in_user(&session, &self.label, &self.pin)?;
        Ok((slot, session))
    }

    /// Runs `f` on a logged-in session of a connection of its own, never installed for
    /// serving: for the few token writes and reads the control plane needs while the serving
    /// connection is down on purpose (the proxy kill switch) or absent (an offline command).
    /// Closing its sessions ends its login; the module is finalized afterwards only when no
    /// other connection of this process uses it.
    pub(super) fn with_temporary_session<T>(
        &self,
        rw: bool,
        f: impl FnOnce(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        self.with_temporary_session_within(rw, Duration::ZERO, f)
    }

    /// `with_temporary_session` that keeps retrying a token that looks unavailable for at
    /// least `patience` (besides the quick retries).
    pub(super) fn with_temporary_session_within<T>(
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
    pub(super) fn with_public_session<T>(
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

    /// Runs `f` on the login session of a connection not yet installed (connect reads the
    /// disabled-key marks there before the first request can be served).
    pub(super) fn with_login<T>(c: &Connection, f: impl FnOnce(&Session) -> T) -> T {
        f(&c.login.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Installs the outcome of a connection attempt; every older session becomes stale.
    pub(super) fn install(&self, conn: Result<Connection, HsmError>) -> Result<(), HsmError> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
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
    fn finalize(&self, pkcs11: Pkcs11, deadline: Instant) {
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
    fn release_module(&self, pkcs11: Pkcs11) {
        let others = ModuleUse::users(&self.module_file);
        let sessions = self.open_sessions();
        if others > 0 || sessions > 0 {
            tracing::info!(token = %self.name, other_tokens = others, open_sessions = sessions, "module left initialised");
            return;
        }
        self.finalize(pkcs11, Instant::now() + Duration::from_secs(1));
    }

    /// Current connection generation; a session from an older one is discarded.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Opens a new session on the current connection; the caller holds a [`CallGuard`].
    pub(super) fn open(&self, rw: bool) -> Result<CountedSession<'_>, HsmError> {
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
                    session: Some(session),
                    conn: self,
                })
            }
            State::Unavailable(reason) => Err(HsmError::Unavailable(reason.clone())),
            State::Disconnected => Err(HsmError::Disconnected),
        }
    }

    pub(super) fn open_sessions(&self) -> usize {
        self.open_sessions.load(Ordering::SeqCst)
    }

    pub(super) fn begin_disconnect(&self) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut *state, State::Disconnected);
        self.generation.fetch_add(1, Ordering::SeqCst);
        drop(state);
        if let State::Connected(c) = old {
            *self.parked.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
        }
    }

    pub(super) fn finish_disconnect(&self, wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        while self.open_sessions() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let left = self.open_sessions();
        if let Some(c) = self.parked.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let Connection { pkcs11, login, .. } = c;
            let login = login.into_inner().unwrap_or_else(|p| p.into_inner());
            {
                let _call = self.enter();
                let _ = login.logout();
                drop(login);
            }
            // Another token on the same module may have finalized it already.
            self.finalize(pkcs11, deadline.max(Instant::now() + Duration::from_millis(200)));
        }
        left
    }

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
        {
            let _call = self.enter();
            drop(login);
        }
        drop(module_use);
        self.release_module(pkcs11);
    }

    pub(super) fn is_connected(&self) -> bool {
        matches!(
            *self.state.read().unwrap_or_else(|p| p.into_inner()),
            State::Connected(_)
        )
    }
}

/// The one slot whose token carries `label`; absent and duplicated labels are errors.
pub(super) fn find_slot(pkcs11: &Pkcs11, label: &str) -> Result<Slot, HsmError> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| HsmError::Unavailable(format!("C_GetSlotList: {e}")))?;
    let mut matching: Vec<Slot> = Vec::new();
    let mut others: Vec<String> = Vec::new();
    let mut unreadable: Vec<String> = Vec::new();
    for slot in slots {
        match pkcs11.get_token_info(slot) {
            Ok(i) if i.label().trim() == label => matching.push(slot),
            // A free slot (SoftHSM2 always shows one) is no candidate worth naming.
            Ok(i) if !i.token_initialized() => {}
            Ok(i) => others.push(format!("{:?}", i.label().trim())),
            Err(e) => unreadable.push(format!("slot {}: {e}", slot.id())),
        }
    }
    match matching.as_slice() {
        [slot] => Ok(*slot),
        // What the module does show, so that a typo and a lost token read differently
        // (SoftHSM2 drops a token whose `token.object` a killed process left empty).
        [] => Err(HsmError::Unavailable(format!(
            "no token labelled {label:?} is present ({}{})",
            if others.is_empty() {
                "the module shows no initialised token".to_owned()
            } else {
                format!("initialised tokens: {}", others.join(", "))
            },
            if unreadable.is_empty() {
                String::new()
            } else {
                format!(
                    "; tokens whose information could not be read: {}",
                    unreadable.join(", ")
                )
            },
        ))),
        _ => Err(HsmError::Unavailable(format!(
            "{} tokens are labelled {label:?}; labels must be unique",
            matching.len(),
        ))),
    }
}

/// Logs the user in on `session` (already logged in through another session is fine).
pub(super) fn log_in_user(session: &Session, label: &str, pin: &SecretString) -> Result<(), HsmError> {
    let pin = AuthPin::from(pin.expose_secret());
    match session.login(cryptoki::session::UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(super::classify::login_error(label, e)),
    }
}

/// Is `session` logged in as the user? A token that forgot the login (restarted, or logged out
/// by someone else) reports a public session, and hides every private object from it.
pub(super) fn logged_in(session: &Session) -> Result<bool, HsmError> {
    let info = session.get_session_info().map_err(classify)?;
    Ok(matches!(
        info.session_state(),
        SessionState::RoUser | SessionState::RwUser
    ))
}
