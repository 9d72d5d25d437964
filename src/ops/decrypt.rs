//! Decrypt: validates IV/tag/metadata sizes, rebuilds the framed AAD with the metadata it was
//! given, and lets GCM inside the token decide whether anything was altered.

use super::{b64, b64_capped, encode, require_aes_gcm, require_key_op_fields, RequestContext};
use crate::aead;
use crate::config::Limits;
use crate::error::Error;
use crate::hsm::HsmError;
use crate::keystore::Keystore;
use crate::xks::Operation;
use crate::xks::{self, DecryptRequest, DecryptResponse};
use zeroize::Zeroizing;

/// A Decrypt request that passed validation: the decoded inputs for the token.
pub struct ValidDecrypt {
    /// The ciphertext without its tag (at most `limits.max_plaintext_bytes`).
    pub ciphertext: Vec<u8>,
    /// The IV: 12 or 16 bytes.
    pub iv: Vec<u8>,
    /// The GCM tag: 16 bytes.
    pub tag: Vec<u8>,
    /// The caller's AAD bytes (at most `limits.max_aad_bytes`; empty when absent).
    pub aad: Vec<u8>,
    /// The ciphertext metadata (at most 20 bytes; empty when absent).
    pub metadata: Vec<u8>,
}

/// Parses and validates a Decrypt body: every check before the key lookup and the token call.
/// Side-effect free apart from filling `ctx`; [`handle`] runs exactly this (and the fuzz targets
/// call it directly).
pub fn validate(body: &[u8], limits: &Limits, ctx: &mut RequestContext) -> Result<ValidDecrypt, Error> {
    let req: DecryptRequest = xks::parse(body).map_err(|e| Error::Validation(e.to_string()))?;
    ctx.record(&req.request_metadata);
    require_key_op_fields(&req.request_metadata, true)?;
    require_aes_gcm(&req.encryption_algorithm)?;
    let ciphertext = b64_capped("ciphertext", &req.ciphertext, limits.max_plaintext_bytes)?;
    let iv = b64("initializationVector", &req.initialization_vector)?;
    if iv.len() != 12 && iv.len() != 16 {
        return Err(Error::Validation(
            "initializationVector must decode to 12 or 16 bytes".into(),
        ));
    }
    let tag = b64("authenticationTag", &req.authentication_tag)?;
    if tag.len() != 16 {
        return Err(Error::Validation(
            "authenticationTag must decode to 16 bytes".into(),
        ));
    }
    let aad = match &req.additional_authenticated_data {
        Some(a) => b64_capped("additionalAuthenticatedData", a, limits.max_aad_bytes)?,
        None => Vec::new(),
    };
    let metadata = match &req.ciphertext_metadata {
        Some(m) => b64("ciphertextMetadata", m)?,
        None => Vec::new(),
    };
    if metadata.len() > 20 {
        return Err(Error::Validation(
            "ciphertextMetadata must decode to at most 20 bytes".into(),
        ));
    }
    Ok(ValidDecrypt {
        ciphertext,
        iv,
        tag,
        aad,
        metadata,
    })
}

/// Handles one Decrypt request.
pub async fn handle(
    ks: &Keystore,
    key_id: &str,
    body: &[u8],
    limits: &Limits,
    ctx: &mut RequestContext,
) -> Result<Vec<u8>, Error> {
    let ValidDecrypt {
        mut ciphertext,
        iv,
        tag,
        aad,
        metadata,
    } = validate(body, limits, ctx)?;
    ks.check_key(key_id)?;
    ks.authorize(Operation::Decrypt, key_id, ctx)?;
    ks.check_enabled(key_id)?;
    // The metadata names the key version. Metadata of a format this proxy never wrote cannot
    // authenticate (the framed AAD makes GCM reject it too), so it never reaches the token;
    // absent metadata can only have been made by version 1 (and then fails GCM anyway, since
    // this proxy always emits metadata).
    let version = if metadata.is_empty() {
        1
    } else {
        aead::decode_metadata(&metadata).ok_or(HsmError::InvalidCiphertext)?
    };
    let gcm_aad =
        aead::gcm_aad(&aad, &metadata).ok_or_else(|| Error::Internal("AAD too long to frame".into()))?;
    ciphertext.extend_from_slice(&tag);
    let plaintext = ks
        .hsm
        .decrypt(key_id, version, iv, gcm_aad, ciphertext, Some(ks.gate.flag()))
        .await?;
    let resp = DecryptResponse {
        plaintext: Zeroizing::new(encode(&plaintext)),
    };
    serde_json::to_vec(&resp).map_err(|e| Error::Internal(e.to_string()))
}
