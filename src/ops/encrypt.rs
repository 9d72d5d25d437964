//! Encrypt: AES-256-GCM inside the token with the length-framed AAD, our ciphertext metadata,
//! and (on request) the ciphertext data integrity value computed *before* the verification
//! decrypt, as the spec's Appendix C orders.

use super::{b64_capped, encode, require_aes_gcm, require_key_op_fields, RequestContext};
use crate::aead;
use crate::config::Limits;
use crate::error::Error;
use crate::hsm::{HsmError, Sealed};
use crate::keystore::Keystore;
use crate::xks::Operation;
use crate::xks::{self, EncryptRequest, EncryptResponse};
use zeroize::Zeroizing;

const TAG_LEN: usize = 16;

/// An Encrypt request that passed validation: the decoded inputs for the token.
pub struct ValidEncrypt {
    /// The plaintext bytes (at most `limits.max_plaintext_bytes`).
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The caller's AAD bytes (at most `limits.max_aad_bytes`; empty when absent).
    pub aad: Vec<u8>,
    /// A ciphertext data integrity value (`SHA_256`) was requested.
    pub with_cdiv: bool,
}

/// Parses and validates an Encrypt body: every check before the key lookup and the token call.
/// Side-effect free apart from filling `ctx`; [`handle`] runs exactly this (and the fuzz targets
/// call it directly).
pub fn validate(body: &[u8], limits: &Limits, ctx: &mut RequestContext) -> Result<ValidEncrypt, Error> {
    let req: EncryptRequest = xks::parse(body).map_err(|e| Error::Validation(e.to_string()))?;
    ctx.record(&req.request_metadata);
    require_key_op_fields(&req.request_metadata, true)?;
    require_aes_gcm(&req.encryption_algorithm)?;
    let with_cdiv = match req.ciphertext_data_integrity_value_algorithm.as_deref() {
        None => false,
        Some("SHA_256") => true,
        Some(_) => {
            return Err(Error::Validation(
                "ciphertextDataIntegrityValueAlgorithm must be SHA_256".into(),
            ))
        }
    };
    let plaintext = Zeroizing::new(b64_capped(
        "plaintext",
        &req.plaintext,
        limits.max_plaintext_bytes,
    )?);
    let aad = match &req.additional_authenticated_data {
        Some(a) => b64_capped("additionalAuthenticatedData", a, limits.max_aad_bytes)?,
        None => Vec::new(),
    };
    Ok(ValidEncrypt {
        plaintext,
        aad,
        with_cdiv,
    })
}

/// Handles one Encrypt request.
pub async fn handle(
    ks: &Keystore,
    key_id: &str,
    body: &[u8],
    limits: &Limits,
    ctx: &mut RequestContext,
) -> Result<Vec<u8>, Error> {
    let ValidEncrypt {
        plaintext,
        aad,
        with_cdiv,
    } = validate(body, limits, ctx)?;
    ks.check_key(key_id)?;
    ks.authorize(Operation::Encrypt, key_id, ctx)?;
    ks.check_enabled(key_id)?;

    // One retry of the whole encrypt if the verification decrypt fails (spec Appendix C, step
    // 4), or if the version read here used up its budget while a newer one became current.
    let mut retried_version = false;
    let mut attempt = 0;
    while attempt < 2 {
        attempt += 1;
        // The version is read here, not in the worker, because it is part of the metadata and
        // so of the AAD the token authenticates.
        let version = ks.hsm.token().current_version(key_id);
        let metadata = aead::encode_metadata(version);
        let gcm_aad =
            aead::gcm_aad(&aad, &metadata).ok_or_else(|| Error::Internal("AAD too long to frame".into()))?;
        let sealed = ks
            .hsm
            .encrypt(
                key_id,
                version,
                ks.budgets.of(key_id),
                gcm_aad.clone(),
                plaintext.clone(),
                Some(ks.gate.flag()),
            )
            .await;
        let sealed = match sealed {
            Err(HsmError::VersionExhausted { .. })
                if !retried_version && ks.hsm.token().current_version(key_id) != version =>
            {
                retried_version = true;
                attempt -= 1;
                continue;
            }
            other => other?,
        };
        let (ct, tag) = split(&sealed)?;
        let cdiv = with_cdiv.then(|| aead::integrity_value(&aad, &metadata, &sealed.iv, ct, tag));
        if with_cdiv {
            let verified = ks
                .hsm
                .decrypt(
                    key_id,
                    version,
                    sealed.iv.to_vec(),
                    gcm_aad.clone(),
                    sealed.ciphertext_and_tag.clone(),
                    None,
                )
                .await;
            match verified {
                Ok(_) => {}
                Err(HsmError::InvalidCiphertext) => {
                    tracing::warn!(key_id, "verification decrypt failed after encrypt; retrying");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let resp = EncryptResponse {
            ciphertext: encode(ct),
            initialization_vector: encode(&sealed.iv),
            authentication_tag: encode(tag),
            ciphertext_metadata: encode(&metadata),
            ciphertext_data_integrity_value: cdiv.map(|v| encode(&v)),
        };
        return serde_json::to_vec(&resp).map_err(|e| Error::Internal(e.to_string()));
    }
    Err(Error::Internal("encrypt output failed verification twice".into()))
}

fn split(sealed: &Sealed) -> Result<(&[u8], &[u8]), Error> {
    let n = sealed.ciphertext_and_tag.len();
    if n < TAG_LEN {
        return Err(Error::Internal("token output shorter than a GCM tag".into()));
    }
    Ok(sealed.ciphertext_and_tag.split_at(n - TAG_LEN))
}
