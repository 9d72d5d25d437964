//! The crypto calls a worker makes on its own session: AES-256-GCM encrypt/decrypt and key
//! attributes for GetKeyMetadata. Keys come from the handle cache (re-found once on a stale
//! handle); every crypto call is preceded by [`Token::admit`].

use super::cache::CachedKey;
use super::lifecycle::{usages, USAGE_ATTRIBUTES};
use super::token::{KeyInfo, Token};
use super::{classify, Gate, HsmError, Sealed};
use crate::config::IvSource;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::session::Session;
use zeroize::Zeroizing;

const TAG_LEN: usize = 16;

/// A worker's session and the connection generation it belongs to.
pub(super) struct On<'s> {
    pub(super) session: &'s Session,
    pub(super) generation: u64,
}

impl Token {
    /// Runs `f` with the key, finding it again once if its handle went stale (on the token,
    /// or by a lifecycle change since it was cached); refuses keys that are not AES-256 when
    /// `aes256` is set.
    fn with_key<T>(
        &self,
        s: &Session,
        label: &str,
        aes256: bool,
        f: impl Fn(&CachedKey) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let mut attempt = 0;
        loop {
            let key = self.cache.lookup(s, label)?;
            if aes256 && !key.spec.is_aes256() {
                return Err(HsmError::KeyUsage("the key is not an AES-256 key".into()));
            }
            match f(&key) {
                Err(e) if e.stale_handle() && attempt == 0 => {
                    self.cache.evict(label);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// [`Token::admit`], and the key's handle must still be current.
    fn admit_key(
        &self,
        on: &On<'_>,
        key: &CachedKey,
        label: &str,
        gate: Option<&Gate>,
    ) -> Result<(), HsmError> {
        self.admit(on.generation, label, gate)?;
        if !self.cache.is_current(key) {
            return Err(HsmError::StaleHandle);
        }
        Ok(())
    }

    pub(super) fn encrypt(
        &self,
        on: &On<'_>,
        label: &str,
        gate: Option<&Gate>,
        aad: &[u8],
        pt: &[u8],
    ) -> Result<Sealed, HsmError> {
        let s = on.session;
        self.with_key(s, label, true, |key| {
            let mut iv = [0u8; 12];
            if self.iv_source == IvSource::TokenRandom {
                self.admit_key(on, key, label, gate)?;
                s.generate_random_slice(&mut iv).map_err(classify)?;
            }
            let params = GcmParams::new(&mut iv, aad, (TAG_LEN as u64 * 8).into())
                .map_err(|e| HsmError::Internal(e.to_string()))?;
            self.admit_key(on, key, label, gate)?;
            let out = s
                .encrypt(&Mechanism::AesGcm(params), key.handle, pt)
                .map_err(classify)?;
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
        on: &On<'_>,
        label: &str,
        gate: Option<&Gate>,
        iv: &[u8],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let s = on.session;
        self.with_key(s, label, true, |key| {
            let mut iv = iv.to_vec();
            let params = GcmParams::new(&mut iv, aad, (TAG_LEN as u64 * 8).into())
                .map_err(|e| HsmError::Internal(e.to_string()))?;
            self.admit_key(on, key, label, gate)?;
            s.decrypt(&Mechanism::AesGcm(params), key.handle, ct)
                .map(Zeroizing::new)
                .map_err(classify)
        })
    }

    pub(super) fn key_info(&self, s: &Session, label: &str) -> Result<KeyInfo, HsmError> {
        let (spec, attrs) = self.with_key(s, label, false, |key| {
            let attrs = s
                .get_attributes(key.handle, &USAGE_ATTRIBUTES)
                .map_err(classify)?;
            Ok((key.spec.clone(), attrs))
        })?;
        Ok(KeyInfo {
            key_spec: spec.to_string(),
            usages: usages(&attrs),
        })
    }
}
