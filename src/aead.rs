//! Pure functions of the XKS AES-GCM envelope: the length-framed AAD fed to the token, the
//! ciphertext metadata this proxy emits, and the ciphertext data integrity value (CDIV).
//! Nothing here touches the token, so every rule is unit-tested against the spec's vectors.

use sha2::{Digest, Sha256};

/// Format byte of the ciphertext metadata this proxy emits. A future change of the AAD
/// construction or key-versioning scheme gets a new format byte, so that old ciphertexts stay
/// decryptable under their original rule.
pub const METADATA_FORMAT_V1: u8 = 0x01;

/// Key version of a key that was never rotated: its original key object (see
/// docs/key-versions.md).
pub const FIRST_KEY_VERSION: u32 = 1;

/// Size in bytes of the metadata this proxy emits: format byte + big-endian u32 key version.
pub const METADATA_LEN: usize = 5;

/// Builds the ciphertext metadata returned by Encrypt: `format (1) || key_version (u32 BE)`;
/// Decrypt uses the key version it names.
/// It is authenticated because [`gcm_aad`] binds it into the GCM AAD.
pub fn encode_metadata(key_version: u32) -> [u8; METADATA_LEN] {
    let v = key_version.to_be_bytes();
    [METADATA_FORMAT_V1, v[0], v[1], v[2], v[3]]
}

/// Parses metadata emitted by [`encode_metadata`]; `None` for anything this proxy never produced
/// (absent, wrong length, unknown format). Such metadata is answered as invalid ciphertext:
/// whatever it is, GCM authentication could not succeed with it.
pub fn decode_metadata(metadata: &[u8]) -> Option<u32> {
    match metadata {
        [METADATA_FORMAT_V1, a, b, c, d] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// The AAD handed to the token (spec section "AAD"):
/// `u16_be(len(aad)) || aad || u8(len(metadata)) || metadata`.
///
/// The length framing stops an attacker from moving bytes between the caller's AAD and the
/// metadata. Callers must have bounded `aad` to 65535 bytes and `metadata` to 255 bytes (the wire
/// limits are 8192-ish and 20); longer inputs are a programming error and are refused.
pub fn gcm_aad(aad: &[u8], metadata: &[u8]) -> Option<Vec<u8>> {
    let aad_len = u16::try_from(aad.len()).ok()?;
    let md_len = u8::try_from(metadata.len()).ok()?;
    let mut out = Vec::with_capacity(3 + aad.len() + metadata.len());
    out.extend_from_slice(&aad_len.to_be_bytes());
    out.extend_from_slice(aad);
    out.push(md_len);
    out.extend_from_slice(metadata);
    Some(out)
}

/// Ciphertext data integrity value: `SHA-256(aad || metadata || iv || ciphertext || tag)`,
/// deliberately without length framing (it detects accidental corruption, not attacks).
pub fn integrity_value(aad: &[u8], metadata: &[u8], iv: &[u8], ciphertext: &[u8], tag: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [aad, metadata, iv, ciphertext, tag] {
        h.update(part);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::{engine::general_purpose::STANDARD, Engine};

    const AAD: &[u8] = b"project=nile,department=marketing";
    const MD: &[u8] = b"key_version=1";

    fn spec_parts() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        (
            hex::decode("1ccae5470f39700254779031").unwrap(),
            hex::decode("821c642b5b71783367deaf18").unwrap(),
            hex::decode("bc1c4dda7707d6812447c5955e99b261").unwrap(),
        )
    }

    #[test]
    fn gcm_aad_matches_the_spec_worked_example() {
        let framed = gcm_aad(AAD, MD).unwrap();
        let expected = "0021".to_owned() + &hex::encode(AAD) + "0d" + &hex::encode(MD);
        assert_eq!(hex::encode(&framed), expected);
        assert_eq!(framed.len(), 49);
    }

    #[test]
    fn gcm_aad_without_aad_or_metadata_is_three_zero_bytes() {
        assert_eq!(gcm_aad(b"", b"").unwrap(), vec![0, 0, 0]);
    }

    #[test]
    fn gcm_aad_distinguishes_aad_from_metadata() {
        // Encrypt with no AAD and metadata M must not equal decrypt with AAD = M, no metadata.
        assert_ne!(gcm_aad(b"", MD), gcm_aad(MD, b""));
    }

    #[test]
    fn gcm_aad_refuses_lengths_the_framing_cannot_express() {
        assert!(gcm_aad(&vec![0; 65536], b"").is_none());
        assert!(gcm_aad(b"", &[0; 256]).is_none());
        assert!(gcm_aad(&vec![0; 65535], &[0; 255]).is_some());
    }

    #[test]
    fn integrity_value_matches_the_spec_vector() {
        let (iv, ct, tag) = spec_parts();
        let v = integrity_value(AAD, MD, &iv, &ct, &tag);
        assert_eq!(STANDARD.encode(v), "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc=");
    }

    #[test]
    fn integrity_value_treats_missing_parts_as_empty() {
        let (iv, ct, tag) = spec_parts();
        let no_md = integrity_value(AAD, b"", &iv, &ct, &tag);
        assert_eq!(
            STANDARD.encode(no_md),
            "sfzVyqMSmPSlnuu/M6CwNFYXimXz2W4PMyBUSdQSdik="
        );
        let bare = integrity_value(b"", b"", &iv, &ct, &tag);
        assert_eq!(
            STANDARD.encode(bare),
            "PnRjBnS2gFgyL7kyBENKntOEPdD6yboMwXYlFVgoQ9M="
        );
    }

    #[test]
    fn metadata_round_trips_and_rejects_foreign_bytes() {
        let md = encode_metadata(FIRST_KEY_VERSION);
        assert_eq!(md, [1, 0, 0, 0, 1]);
        assert_eq!(decode_metadata(&md), Some(1));
        assert_eq!(decode_metadata(b""), None);
        assert_eq!(decode_metadata(&[2, 0, 0, 0, 1]), None);
        assert_eq!(decode_metadata(&[1, 0, 0, 1]), None);
        assert!(md.len() <= 20, "KMS rejects metadata above 20 bytes");
    }
}
