//! The benchmark's raw-token ceiling: one logged-in token, one key found by label, and bare
//! AES-256-GCM calls on sessions of the caller's threads, with no queue, cache or kill-switch
//! checks in the way. An Encrypt here is what the proxy does for one (`C_GenerateRandom` for
//! the IV, then `C_Encrypt`). Measuring and reporting stay with the benchmark.

use super::connection::{find_slot, log_in_user};
use super::key_objects::find_key;
use super::{setup, HsmError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use secrecy::SecretString;
use std::path::Path;

const TAG_BITS: u64 = 128;

/// Why one raw call failed; the text is the benchmark's error name (`C_Encrypt:GeneralError`).
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// A PKCS#11 function returned an error.
    #[error("C_{function}:{rv}")]
    Call {
        /// The function, without `C_`.
        function: String,
        /// The return value's name.
        rv: String,
    },
    /// The token returned a ciphertext of the wrong length.
    #[error("WrongCiphertextLength")]
    WrongCiphertextLength,
    /// A failure outside PKCS#11 return values.
    #[error("Pkcs11:{0}")]
    Other(String),
}

impl From<cryptoki::error::Error> for RawError {
    fn from(e: cryptoki::error::Error) -> RawError {
        match e {
            cryptoki::error::Error::Pkcs11(rv, f) => RawError::Call {
                function: format!("{f:?}"),
                rv: format!("{rv:?}"),
            },
            other => RawError::Other(other.to_string()),
        }
    }
}

/// The logged-in token and the key under test. Login belongs to the application, not to a
/// session: the login session keeps it alive while threads open their own sessions.
pub struct RawToken {
    module: setup::Module,
    slot: Slot,
    key: ObjectHandle,
    /// Only held (threads share the token, and a session is not `Sync`).
    login: std::sync::Mutex<Session>,
}

/// Loads the module, logs in to the token labelled `token_label` and finds the secret key
/// labelled `key_label`.
pub fn open(
    module: &Path,
    token_label: &str,
    pin: &SecretString,
    key_label: &str,
) -> Result<RawToken, HsmError> {
    let module = setup::load(module)?;
    let slot = find_slot(module.pkcs11(), token_label)?;
    let login = module
        .pkcs11()
        .open_ro_session(slot)
        .map_err(|e| HsmError::Unavailable(format!("C_OpenSession: {e}")))?;
    log_in_user(&login, token_label, pin)?;
    let key = find_key(&login, key_label)?;
    Ok(RawToken {
        module,
        slot,
        key,
        login: std::sync::Mutex::new(login),
    })
}

impl RawToken {
    /// A new read-only session for one thread.
    pub fn session(&self) -> Result<RawSession<'_>, RawError> {
        Ok(RawSession {
            session: self.module.pkcs11().open_ro_session(self.slot)?,
            key: self.key,
            _token: std::marker::PhantomData,
        })
    }

    /// Logs out and finalizes the module.
    pub fn close(self) {
        let login = self.login.into_inner().unwrap_or_else(|p| p.into_inner());
        let _ = login.logout();
        drop(login);
        self.module.finalize();
    }
}

/// One thread's session on the raw token.
pub struct RawSession<'t> {
    session: Session,
    key: ObjectHandle,
    _token: std::marker::PhantomData<&'t RawToken>,
}

impl RawSession<'_> {
    /// A fresh token-random IV, then AES-256-GCM: (IV, ciphertext || tag).
    pub fn encrypt(&self, aad: &[u8], pt: &[u8]) -> Result<([u8; 12], Vec<u8>), RawError> {
        let mut iv = [0u8; 12];
        self.session.generate_random_slice(&mut iv)?;
        let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())?;
        let out = self.session.encrypt(&Mechanism::AesGcm(params), self.key, pt)?;
        if out.len() != pt.len() + 16 {
            return Err(RawError::WrongCiphertextLength);
        }
        Ok((iv, out))
    }

    /// AES-256-GCM decryption of `ciphertext_and_tag`.
    pub fn decrypt(&self, iv: &[u8; 12], aad: &[u8], ciphertext_and_tag: &[u8]) -> Result<Vec<u8>, RawError> {
        let mut iv = *iv;
        let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())?;
        Ok(self
            .session
            .decrypt(&Mechanism::AesGcm(params), self.key, ciphertext_and_tag)?)
    }
}
