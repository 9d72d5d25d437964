//! Encrypt (checklist 10-12, 18, 20-25) and its size limits.

use crate::common::*;
use serde_json::json;
use sha2::{Digest, Sha256};

const AAD_B64: &str = "cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n";

/// Checklist 10.
#[test]
fn encrypt_hello_world_returns_12_byte_ciphertext_iv_and_16_byte_tag_without_cdiv() {
    let mut h = Harness::start();
    let body = json!({
        "requestMetadata": key_op_metadata("r-enc", "Encrypt"),
        "plaintext": "SGVsbG8gV29ybGQh",
        "encryptionAlgorithm": "AES_GCM",
    });
    let r = h.xks.encrypt(KEY_AES, &body);
    let v = assert_ok(&r);
    assert_eq!(r.b64_field("ciphertext").len(), 12, "{v}");
    let iv = r.b64_field("initializationVector").len();
    assert!(iv == 12 || iv == 16, "{v}");
    assert_eq!(r.b64_field("authenticationTag").len(), 16, "{v}");
    assert!(v.get("ciphertextDataIntegrityValue").is_none(), "{v}");
    if v.get("ciphertextMetadata").is_some() {
        assert!(r.b64_field("ciphertextMetadata").len() <= 20, "{v}");
    }
    assert_ne!(
        r.b64_field("ciphertext"),
        b"Hello World!",
        "ciphertext equals plaintext"
    );
    // Optional fields are left out rather than sent as null.
    for (k, val) in v.as_object().expect("JSON object") {
        assert!(val.is_string(), "{k} is not a string: {v}");
    }
}

/// Checklist 11.
#[test]
fn identical_encrypts_give_different_ivs_and_ciphertexts_that_both_decrypt() {
    let mut h = Harness::start();
    let a = h.xks.encrypt_ok(KEY_AES, b"Hello World!", None);
    let b = h.xks.encrypt_ok(KEY_AES, b"Hello World!", None);
    assert_ne!(a.iv, b.iv);
    assert_ne!(a.ciphertext, b.ciphertext);
    for s in [a, b] {
        let r = h.xks.decrypt(KEY_AES, &s.decrypt_body(None));
        assert_ok(&r);
        assert_eq!(r.b64_field("plaintext"), b"Hello World!");
    }
}

/// Checklist 12.
#[test]
fn round_trip_with_aad_returns_the_original_plaintext_byte_for_byte() {
    let mut h = Harness::start();
    let aad = unb64(AAD_B64);
    let plaintext: Vec<u8> = (0..=255u8).collect();
    let s = h.xks.encrypt_ok(KEY_AES, &plaintext, Some(&aad));
    assert_eq!(s.ciphertext.len(), plaintext.len());
    let r = h.xks.decrypt(KEY_AES, &s.decrypt_body(Some(&aad)));
    let v = assert_ok(&r);
    assert_eq!(r.b64_field("plaintext"), plaintext);
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(1),
        "plaintext is the only field: {v}"
    );
}

/// Digest section 5: an empty plaintext is accepted (AES-GCM handles it) and round-trips.
#[test]
fn empty_plaintext_round_trips() {
    let mut h = Harness::start();
    let s = h.xks.encrypt_ok(KEY_AES, b"", Some(b"aad"));
    assert!(s.ciphertext.is_empty());
    assert_eq!(s.tag.len(), 16);
    let r = h.xks.decrypt(KEY_AES, &s.decrypt_body(Some(b"aad")));
    assert_eq!(assert_ok(&r)["plaintext"], "");
    let r = h.xks.decrypt(KEY_AES, &s.decrypt_body(None));
    assert_error(&r, 400, "InvalidCiphertextException");
}

/// Digest section 7: an absent AAD and a present-but-empty AAD frame identically.
#[test]
fn empty_aad_is_equivalent_to_absent_aad() {
    let mut h = Harness::start();
    let s = h.xks.encrypt_ok(KEY_AES, b"empty-aad", Some(b""));
    let r = h.xks.decrypt(KEY_AES, &s.decrypt_body(None));
    assert_eq!(assert_ok(&r)["plaintext"], b64(b"empty-aad"));
    let s = h.xks.encrypt_ok(KEY_AES, b"no-aad", None);
    let r = h.xks.decrypt(KEY_AES, &s.decrypt_body(Some(b"")));
    assert_eq!(assert_ok(&r)["plaintext"], b64(b"no-aad"));
}

/// Checklist 18: 4097 bytes is within the spec's floor and must not be refused.
#[test]
fn encrypt_of_4097_bytes_succeeds() {
    let mut h = Harness::start();
    let plaintext = vec![0x41; 4097];
    let s = h.xks.encrypt_ok(KEY_AES, &plaintext, None);
    assert_eq!(s.ciphertext.len(), 4097);
}

/// Checklist 18 and 19: 4300-byte plaintext with 8192-byte AAD, and the round trip.
#[test]
fn plaintext_of_4300_bytes_with_8192_byte_aad_round_trips() {
    let mut h = Harness::start();
    let plaintext: Vec<u8> = (0..4300u32).map(|i| (i * 7 % 251) as u8).collect();
    let aad: Vec<u8> = (0..8192u32).map(|i| (i * 13 % 256) as u8).collect();
    let s = h.xks.encrypt_ok(KEY_AES, &plaintext, Some(&aad));
    assert_eq!(s.ciphertext.len(), 4300);
    let r = h.xks.decrypt(KEY_AES, &s.decrypt_body(Some(&aad)));
    assert_ok(&r);
    let out = r.b64_field("plaintext");
    assert_eq!(out.len(), s.ciphertext.len());
    assert_eq!(out, plaintext);
}

/// Checklist 20 with the default maximum (4300).
#[test]
fn plaintext_of_4301_bytes_is_unsupported_operation_with_the_default_maximum() {
    let mut h = Harness::start();
    let r = h.xks.encrypt(KEY_AES, &encrypt_body(&[1u8; 4301], None, false));
    assert_error(&r, 501, "UnsupportedOperationException");
}

/// Checklist 20 with a configured maximum above the spec floor.
#[test]
fn configured_plaintext_maximum_is_honoured_exactly() {
    let mut h = Harness::start_with(
        |cfg, _| {
            section(cfg, "limits").insert("max_plaintext_bytes".into(), toml::Value::Integer(5000));
        },
        &[],
    );
    let s = h.xks.encrypt_ok(KEY_AES, &[2u8; 5000], None);
    assert_eq!(s.ciphertext.len(), 5000);
    let r = h.xks.decrypt(KEY_AES, &s.decrypt_body(None));
    assert_ok(&r);
    let r = h.xks.encrypt(KEY_AES, &encrypt_body(&[2u8; 5001], None, false));
    assert_error(&r, 501, "UnsupportedOperationException");
}

#[test]
fn aad_above_the_maximum_is_unsupported_operation() {
    let mut h = Harness::start();
    let r = h
        .xks
        .encrypt(KEY_AES, &encrypt_body(b"x", Some(&[3u8; 8193]), false));
    assert_error(&r, 501, "UnsupportedOperationException");
}

/// Checklist 21: the CDIV equals Base64(SHA-256(AAD || metadata || IV || ciphertext || tag)),
/// recomputed here with `sha2`, with and without AAD.
#[test]
fn cdiv_equals_sha256_over_aad_metadata_iv_ciphertext_and_tag() {
    let mut h = Harness::start();
    for aad in [Some(unb64(AAD_B64)), None] {
        let r = h
            .xks
            .encrypt(KEY_AES, &encrypt_body(b"Hello World!", aad.as_deref(), true));
        assert_ok(&r);
        let s = Sealed::from_response(&r);
        let cdiv = s.cdiv.clone().expect("ciphertextDataIntegrityValue present");
        let mut hash = Sha256::new();
        hash.update(aad.as_deref().unwrap_or_default());
        hash.update(s.metadata.as_deref().unwrap_or_default());
        hash.update(&s.iv);
        hash.update(&s.ciphertext);
        hash.update(&s.tag);
        assert_eq!(
            cdiv,
            hash.finalize().to_vec(),
            "CDIV mismatch (aad: {})",
            aad.is_some()
        );
        // And the output decrypts.
        let d = h.xks.decrypt(KEY_AES, &s.decrypt_body(aad.as_deref()));
        assert_eq!(d.b64_field("plaintext"), b"Hello World!");
    }
}

/// Checklist 22.
#[test]
fn encrypt_only_key_refuses_cdiv_and_decrypt_but_encrypts_without_cdiv() {
    let mut h = Harness::start();
    let r = h
        .xks
        .encrypt(KEY_ENCRYPT_ONLY, &encrypt_body(b"Hello World!", None, true));
    assert_error(&r, 400, "InvalidKeyUsageException");
    let s = h.xks.encrypt_ok(KEY_ENCRYPT_ONLY, b"Hello World!", None);
    let r = h.xks.decrypt(KEY_ENCRYPT_ONLY, &s.decrypt_body(None));
    assert_error(&r, 400, "InvalidKeyUsageException");
}

/// Checklist 23.
#[test]
fn decrypt_only_and_no_usage_keys_refuse_encrypt_with_or_without_aad_and_cdiv() {
    let mut h = Harness::start();
    for key in [KEY_DECRYPT_ONLY, KEY_NO_USAGE] {
        for (aad, cdiv) in [
            (None, false),
            (Some(&b"aad"[..]), false),
            (None, true),
            (Some(&b"aad"[..]), true),
        ] {
            let r = h.xks.encrypt(key, &encrypt_body(b"Hello World!", aad, cdiv));
            assert_error(&r, 400, "InvalidKeyUsageException");
        }
    }
    // And the no-usage key cannot decrypt either.
    let s = h.xks.encrypt_ok(KEY_AES, b"Hello World!", None);
    let r = h.xks.decrypt(KEY_NO_USAGE, &s.decrypt_body(None));
    assert_error(&r, 400, "InvalidKeyUsageException");
}

/// Checklist 24.
#[test]
fn encrypt_missing_plaintext_or_with_unknown_algorithms_is_validation_exception() {
    let mut h = Harness::start();
    let base = encrypt_body(b"Hello World!", None, false);
    let mut cases = Vec::new();
    let mut b = base.clone();
    b.as_object_mut().unwrap().remove("plaintext");
    cases.push(b);
    let mut b = base.clone();
    b.as_object_mut().unwrap().remove("encryptionAlgorithm");
    cases.push(b);
    let mut b = base.clone();
    b["encryptionAlgorithm"] = json!("AES_CBC");
    cases.push(b);
    let mut b = base.clone();
    b["ciphertextDataIntegrityValueAlgorithm"] = json!("SHA_512");
    cases.push(b);
    let mut b = base.clone();
    b["plaintext"] = json!(12);
    cases.push(b);
    let mut b = base.clone();
    b.as_object_mut().unwrap().remove("requestMetadata");
    cases.push(b);
    let mut b = base.clone();
    b["requestMetadata"].as_object_mut().unwrap().remove("kmsKeyArn");
    cases.push(b);
    for body in cases {
        let r = h.xks.encrypt(KEY_AES, &body);
        assert_error(&r, 400, "ValidationException");
    }
}

/// Checklist 25: only canonical, padded, standard-alphabet Base64 is accepted.
#[test]
fn non_standard_base64_is_validation_exception() {
    let mut h = Harness::start();
    for (field, value) in [
        ("plaintext", "SGVsbG8-V29ybGQh"),
        ("plaintext", "SGVsbG8_V29ybGQh"),
        ("plaintext", "SGVsbA"),
        ("plaintext", "SGVs bG8="),
        ("plaintext", "SGVsbG8gV29ybGQh\n"),
        ("plaintext", "!!!!"),
        ("additionalAuthenticatedData", "cHJvamVjdD1uaWxl-_"),
    ] {
        let mut body = encrypt_body(b"Hello World!", None, false);
        body[field] = json!(value);
        let r = h.xks.encrypt(KEY_AES, &body);
        assert_error(&r, 400, "ValidationException");
    }
}

/// Validation happens before the key lookup (digest section 9 precedence).
#[test]
fn malformed_encrypt_on_unknown_key_is_validation_exception() {
    let mut h = Harness::start();
    let mut body = encrypt_body(b"x", None, false);
    body["plaintext"] = json!("not base64!");
    let r = h.xks.encrypt("non_existing_key", &body);
    assert_error(&r, 400, "ValidationException");
    let r = h
        .xks
        .encrypt("non_existing_key", &encrypt_body(b"x", None, false));
    assert_error(&r, 404, "KeyNotFoundException");
}

/// JSON string escapes are decoded before Base64 (`\/` is a legal escape of `/`, `\u0041` of
/// `A`): the same bytes come back.
#[test]
fn json_escaped_base64_is_decoded_like_plain_json() {
    let mut h = Harness::start();
    let plaintext = [0xffu8, 0xff, 0xff, 0x03, 0xe0, 0x00];
    let encoded = b64(&plaintext);
    assert!(encoded.contains('/') && encoded.contains('A'), "{encoded}");
    let escaped = encoded.replace('/', "\\/").replacen('A', "\\u0041", 1);
    let body = encrypt_body(&plaintext, None, false)
        .to_string()
        .replace(&format!("\"{encoded}\""), &format!("\"{escaped}\""));
    assert!(body.contains("\\/") && body.contains("\\u0041"), "{body}");
    let r = h
        .xks
        .post_bytes(&format!("/keys/{KEY_AES}/encrypt"), body.as_bytes());
    assert_ok(&r);
    let s = Sealed::from_response(&r);
    let r = h.xks.decrypt(KEY_AES, &s.decrypt_body(None));
    assert_eq!(r.b64_field("plaintext"), plaintext);
}
