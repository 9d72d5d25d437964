//! The one place that turns a PKCS#11 failure into an [`HsmError`]. A GCM tag mismatch comes
//! back from `C_Decrypt` as a vendor's own code (SoftHSM2 `CKR_GENERAL_ERROR`, nShield
//! `CKR_FUNCTION_FAILED`, others `CKR_ENCRYPTED_DATA_INVALID`/`_LEN_RANGE`): which of them mean
//! "invalid ciphertext" is the token's profile's answer ([`Quirks::bad_tag`]); the generic
//! profile accepts all of them.

use super::profile::{quirks, Quirks};
use super::HsmError;
use crate::config::Profile;
use cryptoki::context::Function;
use cryptoki::error::{Error, RvError};

/// `C_Login` answers that mean "this PIN will not do": retrying them counts against the
/// token's retry counter, so every login site of the crate turns them into
/// [`HsmError::LoginRefused`] through [`login_error`].
fn refused_pin(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::PinIncorrect
            | RvError::PinInvalid
            | RvError::PinLenRange
            | RvError::PinExpired
            | RvError::PinLocked
    )
}

/// Classifies a failed `C_Login` on the token labelled `label`: a refused PIN is
/// [`HsmError::LoginRefused`], anything else [`HsmError::Unavailable`].
pub(crate) fn login_error(label: &str, err: Error) -> HsmError {
    match err {
        Error::Pkcs11(rv, _) if refused_pin(rv) => HsmError::LoginRefused(format!(
            "login to token {label:?} refused: {rv:?}; check the configured PIN"
        )),
        e => HsmError::Unavailable(format!("C_Login: {e}")),
    }
}

/// Classifies a cryptoki error as the generic profile does (for calls that are not a GCM
/// decryption the profile makes no difference).
pub fn classify(err: Error) -> HsmError {
    classify_for(quirks(Profile::Generic), err)
}

/// Classifies a cryptoki error from a token with the quirks `q`.
pub fn classify_for(q: &Quirks, err: Error) -> HsmError {
    match err {
        Error::Pkcs11(rv, function) => classify_rv(q, rv, function),
        other => HsmError::Internal(other.to_string()),
    }
}

/// A `C_Decrypt` failure the generic profile would have counted as a bad tag.
pub(crate) fn is_bad_tag_elsewhere(rv: RvError, function: &Function) -> bool {
    matches!(function, Function::Decrypt) && quirks(Profile::Generic).is_bad_tag(rv)
}

fn classify_rv(q: &Quirks, rv: RvError, function: Function) -> HsmError {
    use RvError::*;
    match (rv, function) {
        (rv, Function::Decrypt) if q.is_bad_tag(rv) => HsmError::InvalidCiphertext,
        (KeyFunctionNotPermitted, _) => HsmError::KeyUsage("key attributes forbid this operation".into()),
        (KeyTypeInconsistent, _) => HsmError::KeyUsage("key type is not AES".into()),
        (KeySizeRange, _) => HsmError::KeyUsage("key size not supported for AES-GCM".into()),
        (rv, function) => HsmError::Device { rv, function },
    }
}

impl HsmError {
    /// The session this error came from is gone and a fresh session may succeed.
    pub fn session_lost(&self) -> bool {
        matches!(
            self,
            HsmError::Device {
                rv: RvError::SessionHandleInvalid | RvError::SessionClosed | RvError::UserNotLoggedIn,
                ..
            }
        )
    }

    /// The cached key handle is stale (key deleted, re-imported, or token re-initialised).
    pub fn stale_handle(&self) -> bool {
        matches!(
            self,
            HsmError::StaleHandle
                | HsmError::Device {
                    rv: RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid,
                    ..
                }
        )
    }

    /// The device or the module itself failed: the token must be reconnected.
    pub fn device_lost(&self) -> bool {
        matches!(
            self,
            HsmError::Device {
                rv: RvError::DeviceError
                    | RvError::DeviceRemoved
                    | RvError::TokenNotPresent
                    | RvError::DeviceMemory
                    | RvError::CryptokiNotInitialized,
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_rv_generic(rv: RvError, function: Function) -> HsmError {
        classify_rv(quirks(Profile::Generic), rv, function)
    }

    #[test]
    fn a_code_outside_the_profile_is_a_device_error_not_a_forged_ciphertext() {
        let nshield = quirks(Profile::Nshield);
        assert!(matches!(
            classify_for(nshield, Error::Pkcs11(RvError::FunctionFailed, Function::Decrypt)),
            HsmError::InvalidCiphertext
        ));
        assert!(matches!(
            classify_for(nshield, Error::Pkcs11(RvError::GeneralError, Function::Decrypt)),
            HsmError::Device {
                rv: RvError::GeneralError,
                function: Function::Decrypt
            }
        ));
        let softhsm = quirks(Profile::Softhsm);
        assert!(matches!(
            classify_for(softhsm, Error::Pkcs11(RvError::FunctionFailed, Function::Decrypt)),
            HsmError::Device { .. }
        ));
        assert!(matches!(
            classify_for(softhsm, Error::Pkcs11(RvError::GeneralError, Function::Decrypt)),
            HsmError::InvalidCiphertext
        ));
        for p in [Profile::Luna, Profile::Cloudhsm] {
            assert!(matches!(
                classify_for(
                    quirks(p),
                    Error::Pkcs11(RvError::EncryptedDataInvalid, Function::Decrypt)
                ),
                HsmError::InvalidCiphertext
            ));
            assert!(matches!(
                classify_for(quirks(p), Error::Pkcs11(RvError::GeneralError, Function::Decrypt)),
                HsmError::Device { .. }
            ));
        }
    }

    #[test]
    fn the_generic_profile_keeps_every_tag_failure_code_of_old() {
        for rv in [
            RvError::GeneralError,
            RvError::EncryptedDataInvalid,
            RvError::EncryptedDataLenRange,
            RvError::FunctionFailed,
        ] {
            assert!(matches!(
                classify(Error::Pkcs11(rv, Function::Decrypt)),
                HsmError::InvalidCiphertext
            ));
            assert!(matches!(
                classify(Error::Pkcs11(rv, Function::DecryptInit)),
                HsmError::Device { .. }
            ));
        }
    }

    #[test]
    fn softhsm_tag_failure_is_invalid_ciphertext_only_from_decrypt() {
        assert!(matches!(
            classify_rv_generic(RvError::GeneralError, Function::Decrypt),
            HsmError::InvalidCiphertext
        ));
        assert!(matches!(
            classify_rv_generic(RvError::GeneralError, Function::Encrypt),
            HsmError::Device { .. }
        ));
        assert!(matches!(
            classify_rv_generic(RvError::EncryptedDataInvalid, Function::Decrypt),
            HsmError::InvalidCiphertext
        ));
    }

    #[test]
    fn key_usage_refusals_are_key_usage_errors() {
        assert!(matches!(
            classify_rv_generic(RvError::KeyFunctionNotPermitted, Function::EncryptInit),
            HsmError::KeyUsage(_)
        ));
        assert!(matches!(
            classify_rv_generic(RvError::KeyTypeInconsistent, Function::DecryptInit),
            HsmError::KeyUsage(_)
        ));
    }

    #[test]
    fn every_pin_refusal_is_one_login_refused() {
        for rv in [
            RvError::PinIncorrect,
            RvError::PinLenRange,
            RvError::PinExpired,
            RvError::PinLocked,
            RvError::PinInvalid,
        ] {
            assert!(matches!(
                login_error("t", Error::Pkcs11(rv, Function::Login)),
                HsmError::LoginRefused(_)
            ));
        }
        assert!(matches!(
            login_error("t", Error::Pkcs11(RvError::DeviceError, Function::Login)),
            HsmError::Unavailable(_)
        ));
    }

    #[test]
    fn recovery_classes_are_recognised() {
        assert!(classify_rv_generic(RvError::SessionHandleInvalid, Function::Encrypt).session_lost());
        assert!(classify_rv_generic(RvError::DeviceRemoved, Function::Encrypt).device_lost());
        assert!(classify_rv_generic(RvError::ObjectHandleInvalid, Function::EncryptInit).stale_handle());
    }
}
