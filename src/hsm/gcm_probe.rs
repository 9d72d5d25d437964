//! One AES-256-GCM round trip on a scratch session key, in the IV mode a token is configured
//! for, and the names of the return codes it meets: what `xks-bridge doctor` runs for every IV
//! mode, and what GetHealthStatus runs in the configured one (its deep check), so that both
//! prove the path a real Encrypt and Decrypt take rather than only that the token answers.
//! The scratch key is a session object: nothing is left on the token.

use super::profile::ckr_name;
use crate::config::IvSource;
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde::Serialize;

/// How one probe on the scratch key went.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", tag = "outcome", content = "detail")]
pub enum Probe {
    /// It worked end to end (encrypt, then decrypt to the same plaintext).
    Works,
    /// The token did it but not as the proxy needs (detail says how).
    Wrong(String),
    /// A call failed: `CKR_` code and function.
    Refused(String),
    /// Not run (detail says why).
    NotRun(String),
}

/// `CKR_GENERAL_ERROR from C_Decrypt`, from a cryptoki error.
pub(super) fn code(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => format!("{} from C_{f:?}", ckr_name(*rv)),
        other => other.to_string(),
    }
}

const TAG_BITS: u64 = 128;
const PROBE_AAD: &[u8] = b"xks-bridge GCM probe";

/// An AES-256 session key labelled `label` (never on the token: `CKA_TOKEN=false`), sensitive
/// and not extractable; the caller destroys it (it dies with its session anyway).
pub(super) fn scratch_key(s: &Session, label: &[u8]) -> Result<ObjectHandle, CkError> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Label(label.to_vec()),
    ];
    s.generate_key(&Mechanism::AesKeyGen, &template)
}

fn gcm_encrypt(s: &Session, key: ObjectHandle, iv: &mut [u8], pt: &[u8]) -> Result<Vec<u8>, CkError> {
    let params = GcmParams::new(iv, PROBE_AAD, TAG_BITS.into())?;
    s.encrypt(&Mechanism::AesGcm(params), key, pt)
}

pub(super) fn gcm_decrypt(s: &Session, key: ObjectHandle, iv: &[u8], ct: &[u8]) -> Result<Vec<u8>, CkError> {
    let mut iv = iv.to_vec();
    let params = GcmParams::new(&mut iv, PROBE_AAD, TAG_BITS.into())?;
    s.decrypt(&Mechanism::AesGcm(params), key, ct)
}

/// Encrypts `pt` the way `mode` does: (IV, ciphertext and tag), or how the token answered.
/// The mechanism modes pass a zero IV (or none); a token that simply uses it does not
/// generate IVs, and the scratch key is discarded, so that one encryption is harmless.
pub(super) fn encrypt_as(
    s: &Session,
    key: ObjectHandle,
    mode: IvSource,
    pt: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), Probe> {
    let refused = |e: CkError| Probe::Refused(code(&e));
    let sealed_len = pt.len() + 16;
    let (iv, ct) = match mode {
        IvSource::TokenRandom | IvSource::Mechanism => {
            let mut iv = [0u8; 12];
            if mode == IvSource::TokenRandom {
                s.generate_random_slice(&mut iv).map_err(refused)?;
            }
            let ct = gcm_encrypt(s, key, &mut iv, pt).map_err(refused)?;
            (iv.to_vec(), ct)
        }
        IvSource::MechanismAfterTag => {
            let mut out = gcm_encrypt(s, key, &mut [], pt).map_err(refused)?;
            match out.len().checked_sub(sealed_len) {
                Some(12 | 16) => (out.split_off(sealed_len), out),
                Some(0) => return Err(Probe::Wrong("the token returned no IV after the tag".into())),
                _ => return Err(Probe::Wrong(format!(
                    "{} bytes returned for {} bytes of plaintext: not ciphertext, tag and a 12- or 16-byte IV",
                    out.len(),
                    pt.len()
                ))),
            }
        }
    };
    if iv.iter().all(|b| *b == 0) {
        return Err(Probe::Wrong(
            "the token used the IV it was given and wrote none back".into(),
        ));
    }
    if ct.len() != sealed_len {
        return Err(Probe::Wrong(format!(
            "ciphertext of {} bytes for {} bytes of plaintext",
            ct.len(),
            pt.len()
        )));
    }
    Ok((iv, ct))
}

/// Encrypts under `mode`, then decrypts to the same plaintext.
pub(super) fn iv_probe(s: &Session, key: ObjectHandle, mode: IvSource) -> Probe {
    let pt = b"xks-bridge: GCM round trip";
    match encrypt_as(s, key, mode, pt) {
        Ok((iv, ct)) => match gcm_decrypt(s, key, &iv, &ct) {
            Ok(back) if back == pt => Probe::Works,
            Ok(_) => Probe::Wrong("decryption returned a different plaintext".into()),
            Err(e) => Probe::Refused(code(&e)),
        },
        Err(p) => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;
    use cryptoki::error::RvError;

    #[test]
    fn a_refusal_names_the_code_and_the_function_as_the_standard_spells_them() {
        let e = CkError::Pkcs11(RvError::GeneralError, Function::Decrypt);
        assert_eq!(code(&e), "CKR_GENERAL_ERROR from C_Decrypt");
        let e = CkError::Pkcs11(RvError::MechanismInvalid, Function::EncryptInit);
        assert_eq!(code(&e), "CKR_MECHANISM_INVALID from C_EncryptInit");
    }
}
