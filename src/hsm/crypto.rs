//! The crypto calls a worker makes on its own session: key handle lookup with a per-token
//! cache (no `C_FindObjects` per request; re-found once on a stale handle), AES-256-GCM
//! encrypt/decrypt, and key attributes for GetKeyMetadata.

use super::token::{KeyInfo, Token};
use super::{classify, HsmError, Sealed};
use crate::config::IvSource;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

const TAG_LEN: usize = 16;

impl Token {
    /// The key's handle and whether it is an AES-256 key, from the cache or one
    /// `C_FindObjects` (+ one `C_GetAttributeValue`) on a miss.
    fn handle(&self, session: &Session, label: &str) -> Result<(ObjectHandle, bool), HsmError> {
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
                let entry = (*h, self.is_aes256(session, *h, label)?);
                self.keys
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(label.to_owned(), entry);
                Ok(entry)
            }
            [] => Err(HsmError::KeyNotFound),
            many => {
                tracing::error!(token = %self.name, key_id = label, count = many.len(), "duplicate key labels on token");
                Err(HsmError::AmbiguousKey(many.len()))
            }
        }
    }

    /// XKS v1 serves AES-256 only; a token would happily run AES-128-GCM with a shorter key.
    fn is_aes256(&self, s: &Session, h: ObjectHandle, label: &str) -> Result<bool, HsmError> {
        let attrs = s
            .get_attributes(h, &[AttributeType::KeyType, AttributeType::ValueLen])
            .map_err(classify)?;
        let (mut aes, mut len) = (false, 0u64);
        for a in attrs {
            match a {
                Attribute::KeyType(t) => aes = t == KeyType::AES,
                Attribute::ValueLen(l) => len = l.into(),
                _ => {}
            }
        }
        if aes && len == 0 {
            len = crate::keyadmin::recorded_value_len(s, label).unwrap_or(0);
        }
        Ok(aes && len == 32)
    }

    /// Runs `f` with the key's handle, re-finding it once if the cached handle went stale.
    fn with_key<T>(
        &self,
        session: &Session,
        label: &str,
        f: impl Fn(ObjectHandle) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let (h, _) = self.handle(session, label)?;
        match f(h) {
            Err(e) if e.stale_handle() => {
                self.keys.write().unwrap_or_else(|p| p.into_inner()).remove(label);
                f(self.handle(session, label)?.0)
            }
            other => other,
        }
    }

    /// Like [`Token::with_key`], refusing keys that are not AES-256.
    fn with_aes256_key<T>(
        &self,
        session: &Session,
        label: &str,
        f: impl Fn(ObjectHandle) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        if !self.handle(session, label)?.1 {
            return Err(HsmError::KeyUsage("the key is not an AES-256 key".into()));
        }
        self.with_key(session, label, f)
    }

    pub(super) fn encrypt(
        &self,
        s: &Session,
        label: &str,
        aad: &[u8],
        pt: &[u8],
    ) -> Result<Sealed, HsmError> {
        self.with_aes256_key(s, label, |key| {
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
        self.with_aes256_key(s, label, |key| {
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
        if len == 0 && key_type == Some(KeyType::AES) {
            len = crate::keyadmin::recorded_value_len(s, label).unwrap_or(0);
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
