//! One PKCS#11 token: loading the module, finding the slot by token label, logging in once,
//! caching key handles by label, and the crypto calls a worker makes on its own session.
//!
//! Login is a property of the application on the token, not of one session: the token keeps a
//! dedicated "login session" open so the login survives workers dropping their sessions.

use super::{classify, HsmError, Sealed};
use crate::config::{IvSource, TokenConfig};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use zeroize::Zeroizing;

const TAG_LEN: usize = 16;

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

struct Connection {
    pkcs11: Pkcs11,
    slot: Slot,
    _login: Mutex<Session>,
}

enum State {
    Connected(Connection),
    Unavailable(String),
}

/// A configured token and its connection state.
pub struct Token {
    /// Name from the config.
    pub name: String,
    module: PathBuf,
    label: String,
    iv_source: IvSource,
    pin: SecretString,
    state: RwLock<State>,
    ident: RwLock<(String, String)>,
    keys: RwLock<HashMap<String, ObjectHandle>>,
    generation: AtomicU64,
}

impl Token {
    /// A token in the "not yet connected" state.
    pub fn new(cfg: &TokenConfig, pin: SecretString) -> Token {
        Token {
            name: cfg.name.clone(),
            module: cfg.module.clone(),
            label: cfg.token_label.clone(),
            iv_source: cfg.iv_source,
            pin,
            state: RwLock::new(State::Unavailable("not connected yet".into())),
            ident: RwLock::new(("unknown".into(), "unknown".into())),
            keys: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// Loads and initialises the module, finds the token by label and logs in. A wrong or locked
    /// PIN is reported as such; callers must not retry it in a loop (HSMs lock PINs).
    pub fn connect(&self) -> Result<(), HsmError> {
        let conn = self.open_connection();
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

    /// Reconnects in the background whenever the token is unavailable, with exponential
    /// backoff (0.5 s to 30 s). A refused PIN stops the retries: every attempt would count
    /// against the HSM's PIN retry counter. Restart or reload after fixing the PIN.
    pub fn supervise(self: std::sync::Arc<Self>) {
        let name = format!("hsm-{}-supervisor", self.name);
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let mut backoff = std::time::Duration::from_millis(500);
            loop {
                std::thread::sleep(if self.is_connected() { std::time::Duration::from_millis(500) } else { backoff });
                if self.is_connected() {
                    backoff = std::time::Duration::from_millis(500);
                    continue;
                }
                match self.connect() {
                    Ok(()) => tracing::info!(token = %self.name, "token reconnected"),
                    Err(HsmError::LoginRefused(msg)) => {
                        tracing::error!(token = %self.name, "{msg}; not retrying to avoid locking the PIN");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(token = %self.name, error = %e, retry_in_ms = backoff.as_millis() as u64, "token still unavailable");
                        backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start token supervisor thread");
        }
    }

    fn open_connection(&self) -> Result<Connection, HsmError> {
        let unavailable = |what: &str, e: CkError| HsmError::Unavailable(format!("{what}: {e}"));
        let pkcs11 = Pkcs11::new(&self.module)
            .map_err(|e| unavailable(&format!("cannot load {}", self.module.display()), e))?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(unavailable("C_Initialize", e)),
        }
        let slot = self.find_slot(&pkcs11)?;
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
        Ok(Connection {
            pkcs11,
            slot,
            _login: Mutex::new(session),
        })
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

    /// Current connection generation; a worker's session from an older one is discarded.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Opens a new session for a worker on the current connection.
    pub(super) fn open_session(&self) -> Result<(u64, Session), HsmError> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        match &*state {
            State::Connected(c) => {
                let s = c.pkcs11.open_ro_session(c.slot).map_err(classify)?;
                Ok((self.generation(), s))
            }
            State::Unavailable(reason) => Err(HsmError::Unavailable(reason.clone())),
        }
    }

    /// Records a device-class failure: the token is unavailable until reconnected.
    pub(super) fn mark_failed(&self, err: &HsmError) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if matches!(*state, State::Connected(_)) {
            tracing::error!(token = %self.name, error = %err, "token failed; reconnecting");
            *state = State::Unavailable(err.to_string());
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Is the token connected and logged in?
    pub fn is_connected(&self) -> bool {
        matches!(
            *self.state.read().unwrap_or_else(|p| p.into_inner()),
            State::Connected(_)
        )
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
            return Ok(self.health_without_probe(TokenStatus::Unavailable, "session is not logged in"));
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

    fn handle(&self, session: &Session, label: &str) -> Result<ObjectHandle, HsmError> {
        if let Some(h) = self.keys.read().unwrap_or_else(|p| p.into_inner()).get(label) {
            return Ok(*h);
        }
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let found = session.find_objects(&template).map_err(classify)?;
        match found.as_slice() {
            [h] => {
                self.keys
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(label.to_owned(), *h);
                Ok(*h)
            }
            [] => Err(HsmError::KeyNotFound),
            many => {
                tracing::error!(token = %self.name, key_id = label, count = many.len(), "duplicate key labels on token");
                Err(HsmError::AmbiguousKey(many.len()))
            }
        }
    }

    /// Runs `f` with the key's handle, re-finding it once if the cached handle went stale.
    fn with_key<T>(
        &self,
        session: &Session,
        label: &str,
        f: impl Fn(ObjectHandle) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let h = self.handle(session, label)?;
        match f(h) {
            Err(e) if e.stale_handle() => {
                self.keys.write().unwrap_or_else(|p| p.into_inner()).remove(label);
                f(self.handle(session, label)?)
            }
            other => other,
        }
    }

    pub(super) fn encrypt(
        &self,
        s: &Session,
        label: &str,
        aad: &[u8],
        pt: &[u8],
    ) -> Result<Sealed, HsmError> {
        self.with_key(s, label, |key| {
            let mut iv = [0u8; 12];
            if self.iv_source == IvSource::TokenRandom {
                s.generate_random_slice(&mut iv).map_err(classify)?;
            }
            let params = GcmParams::new(&mut iv, aad, (TAG_LEN as u64 * 8).into())
                .map_err(|e| HsmError::Internal(e.to_string()))?;
            let out = s.encrypt(&Mechanism::AesGcm(params), key, pt).map_err(classify)?;
            if out.len() != pt.len() + TAG_LEN {
                return Err(HsmError::Internal(
                    "token returned an unexpected ciphertext length".into(),
                ));
            }
            if iv == [0u8; 12] {
                // Either the HSM did not write back an IV or the RNG returned zeros: never use it.
                return Err(HsmError::Internal(
                    "token produced an all-zero IV; check iv_source".into(),
                ));
            }
            Ok(Sealed {
                iv,
                ciphertext_and_tag: out,
            })
        })
    }

    pub(super) fn decrypt(
        &self,
        s: &Session,
        label: &str,
        iv: &[u8],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.with_key(s, label, |key| {
            let mut iv = iv.to_vec();
            let params = GcmParams::new(&mut iv, aad, (TAG_LEN as u64 * 8).into())
                .map_err(|e| HsmError::Internal(e.to_string()))?;
            s.decrypt(&Mechanism::AesGcm(params), key, ct)
                .map(Zeroizing::new)
                .map_err(classify)
        })
    }

    pub(super) fn key_info(&self, s: &Session, label: &str) -> Result<KeyInfo, HsmError> {
        use AttributeType as A;
        let wanted = [
            A::KeyType,
            A::ValueLen,
            A::Encrypt,
            A::Decrypt,
            A::Wrap,
            A::Unwrap,
            A::Sign,
            A::Verify,
            A::Derive,
        ];
        let attrs = self.with_key(s, label, |key| s.get_attributes(key, &wanted).map_err(classify))?;
        let (mut key_type, mut len, mut usages) = (None, 0u64, Vec::new());
        for a in attrs {
            match a {
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::ValueLen(l) => len = l.into(),
                Attribute::Encrypt(true) => usages.push("ENCRYPT"),
                Attribute::Decrypt(true) => usages.push("DECRYPT"),
                Attribute::Wrap(true) => usages.push("WRAP"),
                Attribute::Unwrap(true) => usages.push("UNWRAP"),
                Attribute::Sign(true) => usages.push("SIGN"),
                Attribute::Verify(true) => usages.push("VERIFY"),
                Attribute::Derive(true) => usages.push("DERIVE"),
                _ => {}
            }
        }
        let key_spec = match key_type {
            Some(t) if t == KeyType::AES => format!("AES_{}", len * 8),
            Some(t) if t == KeyType::GENERIC_SECRET => format!("HMAC_{}", len * 8),
            Some(t) => format!("UNSUPPORTED_{}", t.to_string().trim_start_matches("CKK_")),
            None => "UNKNOWN".to_owned(),
        };
        Ok(KeyInfo { key_spec, usages })
    }
}
