//! The crypto calls a worker makes on its own session: AES-256-GCM encrypt/decrypt and key
//! attributes for GetKeyMetadata. Keys come from the handle cache (re-found once on a stale
//! handle); every crypto call is preceded by [`Token::admit`].

use super::budget::VersionBudget;
use super::cache::{CachedKey, KeyRef};
use super::lifecycle::{usages, USAGE_ATTRIBUTES};
use super::token::{KeyInfo, Token};
use super::versions::{self, VersionState};
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
        target: &KeyRef,
        aes256: bool,
        f: impl Fn(&CachedKey) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let mut attempt = 0;
        loop {
            let key = self.cache.lookup(s, target)?;
            if aes256 && !key.spec.is_aes256() {
                return Err(HsmError::KeyUsage("the key is not an AES-256 key".into()));
            }
            match f(&key) {
                Err(e) if e.stale_handle() && attempt == 0 => {
                    self.cache.evict(target.cache_key());
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// [`Token::admit`] for the key id (the key-scope kill switch covers every version), and
    /// the key's handle must still be current.
    fn admit_key(
        &self,
        on: &On<'_>,
        key: &CachedKey,
        key_id: &str,
        gate: Option<&Gate>,
    ) -> Result<(), HsmError> {
        self.admit(on.generation, key_id, gate)?;
        if !self.cache.is_current(key) {
            return Err(HsmError::StaleHandle);
        }
        Ok(())
    }

    /// The key object Encrypt uses for version `n` of `id`: it must be committed and not
    /// retired.
    fn encrypt_target(&self, id: &str, n: u32) -> Result<KeyRef, HsmError> {
        let st = self.versions.get(id, n);
        if st.as_ref().is_some_and(|v| v.retired) {
            return Err(HsmError::VersionRetired(n));
        }
        if n == 1 {
            return Ok(KeyRef::new(id.to_owned(), None));
        }
        match st.and_then(|v| v.committed.first().cloned()) {
            Some(nonce) => Ok(KeyRef::new(versions::label(id, n), Some(nonce))),
            None => Err(HsmError::UnknownVersion(n)),
        }
    }

    /// The key objects Decrypt may try for version `n` of `id`, committed winner first. A
    /// version this instance has not polled yet (created through another instance within the
    /// last half second) is read from the token.
    fn decrypt_targets(&self, s: &Session, id: &str, n: u32) -> Result<Vec<KeyRef>, HsmError> {
        if n == 0 {
            return Err(HsmError::UnknownVersion(0));
        }
        let st = match self.versions.get(id, n) {
            Some(v) => v,
            None if n == 1 => VersionState::default(),
            None => VersionState {
                committed: versions::commits(s, id, n)?,
                retired: versions::is_retired(s, id, n)?,
                ..VersionState::default()
            },
        };
        if st.retired {
            // A destroyed version stays retired on the token (so its number and count remain
            // visible); its ciphertext names key material that no longer exists.
            let destroyed = n >= 2
                && st.committed.iter().all(|nonce| {
                    let target = KeyRef::new(versions::label(id, n), Some(nonce.clone()));
                    matches!(self.cache.lookup(s, &target), Err(HsmError::KeyNotFound))
                });
            return Err(if destroyed {
                HsmError::UnknownVersion(n)
            } else {
                HsmError::VersionRetired(n)
            });
        }
        if n == 1 {
            return Ok(vec![KeyRef::new(id.to_owned(), None)]);
        }
        if st.committed.is_empty() {
            return Err(HsmError::UnknownVersion(n));
        }
        Ok(st
            .committed
            .into_iter()
            .map(|nonce| KeyRef::new(versions::label(id, n), Some(nonce)))
            .collect())
    }

    pub(super) fn encrypt(
        &self,
        on: &On<'_>,
        (key_id, version): (&str, u32),
        budget: &VersionBudget,
        gate: Option<&Gate>,
        aad: &[u8],
        pt: &[u8],
    ) -> Result<Sealed, HsmError> {
        let s = on.session;
        let target = self.encrypt_target(key_id, version)?;
        self.with_key(s, &target, true, |key| {
            let mut iv = [0u8; 12];
            if self.iv_source == IvSource::TokenRandom {
                self.admit_key(on, key, key_id, gate)?;
                s.generate_random_slice(&mut iv).map_err(classify)?;
            }
            let params = GcmParams::new(&mut iv, aad, (TAG_LEN as u64 * 8).into())
                .map_err(|e| HsmError::Internal(e.to_string()))?;
            self.admit_key(on, key, key_id, gate)?;
            // Counted before the call: a failure after this point over-counts, never under.
            self.take_encryption(key_id, version, budget)?;
            self.admit_key(on, key, key_id, gate)?;
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
        (key_id, version): (&str, u32),
        gate: Option<&Gate>,
        iv: &[u8],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let s = on.session;
        let targets = self.decrypt_targets(s, key_id, version)?;
        let mut last = HsmError::UnknownVersion(version);
        for target in &targets {
            let plain = self.with_key(s, target, true, |key| {
                let mut iv = iv.to_vec();
                let params = GcmParams::new(&mut iv, aad, (TAG_LEN as u64 * 8).into())
                    .map_err(|e| HsmError::Internal(e.to_string()))?;
                self.admit_key(on, key, key_id, gate)?;
                s.decrypt(&Mechanism::AesGcm(params), key.handle, ct)
                    .map(Zeroizing::new)
                    .map_err(classify)
            });
            match plain {
                Ok(p) => return Ok(p),
                // A destroyed version: its number is known, its key object gone.
                Err(HsmError::KeyNotFound) if version >= 2 => last = HsmError::UnknownVersion(version),
                Err(e @ HsmError::InvalidCiphertext) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    pub(super) fn key_info(&self, s: &Session, label: &str) -> Result<KeyInfo, HsmError> {
        let target = KeyRef::new(label.to_owned(), None);
        let (spec, attrs) = self.with_key(s, &target, false, |key| {
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
