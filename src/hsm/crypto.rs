//! The crypto calls a worker makes on its own session: AES-256-GCM encrypt/decrypt and key
//! attributes for GetKeyMetadata. Keys come from the handle cache (re-found once on a stale
//! handle); every crypto call is preceded by [`Token::admit`].

use super::budget::VersionBudget;
use super::cache::{CachedKey, KeyRef};
use super::classify::classify_for;
use super::key_objects::{usages, USAGE_ATTRIBUTES};
use super::token::{KeyInfo, Token};
use super::version_table::VersionState;
use super::versions;
use super::{classify, Gate, HsmError, Sealed};
use crate::config::IvSource;
use cryptoki::error::RvError;
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
            // Luna's mode passes no IV at all (length 0): the HSM then returns the IV it made
            // after the tag instead of writing it into the parameters.
            let mut no_iv = [0u8; 0];
            let iv_param: &mut [u8] = if self.iv_source == IvSource::MechanismAfterTag {
                &mut no_iv
            } else {
                &mut iv
            };
            let params = GcmParams::new(iv_param, aad, (TAG_LEN as u64 * 8).into())
                .map_err(|e| HsmError::Internal(e.to_string()))?;
            self.admit_key(on, key, key_id, gate)?;
            // Counted before the call: a failure after this point over-counts, never under.
            self.take_encryption(key_id, version, budget)?;
            self.admit_key(on, key, key_id, gate)?;
            let out = s
                .encrypt(&Mechanism::AesGcm(params), key.handle, pt)
                .map_err(classify)
                .inspect_err(|e| {
                    if let HsmError::Device {
                        rv: RvError::MechanismParamInvalid | RvError::MechanismInvalid,
                        ..
                    } = e
                    {
                        self.log_iv_mismatch(e);
                    }
                })?;
            seal(self.iv_source, iv, out, pt.len()).inspect_err(|e| self.log_iv_mismatch(e))
        })
    }

    /// Every request fails the same way until the config changes: say why, once per request.
    fn log_iv_mismatch(&self, e: &HsmError) {
        tracing::error!(
            token = %self.name,
            profile = self.quirks.profile.name(),
            iv_source = self.iv_source.name(),
            error = %e,
            "the token does not encrypt as this IV mode expects; check the profile and iv_source (xks-bridge doctor)"
        );
    }

    /// A forged ciphertext on a token with the wrong profile looks exactly like this: say so.
    fn log_foreign_bad_tag(&self, rv: RvError) {
        tracing::warn!(
            token = %self.name,
            profile = self.quirks.profile.name(),
            code = %super::profile::ckr_name(rv),
            "C_Decrypt failed with a code other profiles count as a bad tag; if forged ciphertexts \
             get InternalException, check the profile (xks-bridge doctor)"
        );
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
                    .map_err(|e| {
                        let e = classify_for(self.quirks, e);
                        if let HsmError::Device { rv, function } = &e {
                            if classify::is_bad_tag_elsewhere(*rv, function) {
                                self.log_foreign_bad_tag(*rv);
                            }
                        }
                        e
                    })
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

/// Checks what `C_Encrypt` returned against the IV mode and splits off the IV: a token that
/// behaves otherwise than the mode expects (no IV written back, no IV after the tag, a
/// different length) fails here, before any ciphertext leaves the proxy.
fn seal(mode: IvSource, iv: [u8; 12], mut out: Vec<u8>, pt_len: usize) -> Result<Sealed, HsmError> {
    let sealed_len = pt_len + TAG_LEN;
    let iv = match mode {
        IvSource::TokenRandom | IvSource::Mechanism if out.len() == sealed_len => iv.to_vec(),
        IvSource::MechanismAfterTag if matches!(out.len().checked_sub(sealed_len), Some(12 | 16)) => {
            out.split_off(sealed_len)
        }
        _ => {
            return Err(HsmError::Internal(format!(
                "token returned {} bytes for {pt_len} bytes of plaintext, which iv_source {:?} does \
                 not expect; check the token's profile and iv_source (xks-bridge doctor)",
                out.len(),
                mode.name()
            )))
        }
    };
    if iv.iter().all(|b| *b == 0) {
        // Either the HSM did not write back an IV or the RNG returned zeros: never use it.
        return Err(HsmError::Internal(format!(
            "token produced an all-zero IV under iv_source {:?}; check the token's profile and iv_source",
            mode.name()
        )));
    }
    Ok(Sealed {
        iv,
        ciphertext_and_tag: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_iv_after_the_tag_is_split_off_in_both_lengths() {
        for n in [12usize, 16] {
            let mut out = vec![7u8; 5 + TAG_LEN];
            out.extend(std::iter::repeat_n(9u8, n));
            let s = seal(IvSource::MechanismAfterTag, [0; 12], out, 5).expect("sealed");
            assert_eq!(s.iv, vec![9u8; n]);
            assert_eq!(s.ciphertext_and_tag, vec![7u8; 5 + TAG_LEN]);
        }
    }

    #[test]
    fn a_token_that_does_not_behave_as_its_iv_mode_says_is_refused() {
        // Luna's mode on a token that appends nothing (plain SoftHSM2).
        assert!(seal(IvSource::MechanismAfterTag, [0; 12], vec![1; 5 + TAG_LEN], 5).is_err());
        // An odd number of bytes after the tag.
        assert!(seal(IvSource::MechanismAfterTag, [0; 12], vec![1; 5 + TAG_LEN + 8], 5).is_err());
        // The zero IV was not overwritten.
        assert!(seal(IvSource::Mechanism, [0; 12], vec![1; 5 + TAG_LEN], 5).is_err());
        // Extra bytes where none are expected.
        assert!(seal(IvSource::TokenRandom, [3; 12], vec![1; 5 + TAG_LEN + 12], 5).is_err());
        // An all-zero IV after the tag.
        let mut out = vec![1u8; 5 + TAG_LEN];
        out.extend([0u8; 12]);
        assert!(seal(IvSource::MechanismAfterTag, [0; 12], out, 5).is_err());
        let ok = seal(IvSource::Mechanism, [3; 12], vec![1; 5 + TAG_LEN], 5).expect("sealed");
        assert_eq!(ok.iv, vec![3u8; 12]);
    }
}
