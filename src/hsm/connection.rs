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
//!
//! This file holds the connection's types and the serving sessions; the module file's
//! bookkeeping and `C_Finalize` are in `module`, the slot lookup and login in `login`, the
//! state machine (install, disconnect, failure) in `state`, and the control plane's connections
//! of its own in `temporary`.

mod login;
mod module;
mod state;
mod temporary;

use super::{classify, HsmError};
use crate::config::TokenConfig;
use cryptoki::context::Pkcs11;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use module::ModuleUse;
use secrecy::SecretString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub(super) use login::{find_slot, log_in_user, logged_in};

pub(super) struct Connection {
    pub(super) pkcs11: Pkcs11,
    pub(super) slot: Slot,
    login: Mutex<Session>,
    _module_use: ModuleUse,
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
    /// The module file with symlinks resolved: the key of [`module::MODULE_USERS`].
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
    pub(super) fn open_connection(&self) -> Result<Connection, HsmError> {
        let pkcs11 = self.load_module()?;
        // A login is a PKCS#11 call like any other: a finalizer (the exit, a disconnect) waits
        // for it. SoftHSM2 rewrites its token file during `C_Login`, and a process that exits
        // in the middle of that write leaves the token empty for good.
        let logged_in = {
            let _call = self.enter();
            self.log_in(&pkcs11)
        };
        match logged_in {
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

    /// Runs `f` on the login session of a connection not yet installed (connect reads the
    /// disabled-key marks there before the first request can be served).
    pub(super) fn with_login<T>(c: &Connection, f: impl FnOnce(&Session) -> T) -> T {
        f(&c.login.lock().unwrap_or_else(|p| p.into_inner()))
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
}
