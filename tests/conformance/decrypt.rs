//! Decrypt (checklist 13-17, 19, 26): every alteration is InvalidCiphertextException, every
//! malformed input ValidationException.

use crate::common::*;
use serde_json::json;

const AAD: &[u8] = b"project=nile,department=marketing";
const OTHER_AAD_B64: &str = "cHJvamVjdD1ibHVlLGRlcGFydG1lbnQ9ZmluYW5jZQ==";

/// Checklist 13.
#[test]
fn decrypt_without_the_aad_used_at_encrypt_is_invalid_ciphertext() {
    let mut h = Harness::start();
    let s = h.xks.encrypt_ok(KEY_AES, b"Hello World!", Some(AAD));
    let r = h.xks.decrypt(KEY_AES, &s.decrypt_body(None));
    assert_error(&r, 400, "InvalidCiphertextException");
}

/// Checklist 14.
#[test]
fn decrypt_with_wrong_aad_is_invalid_ciphertext() {
    let mut h = Harness::start();
    let s = h.xks.encrypt_ok(KEY_AES, b"Hello World!", Some(AAD));
    let r = h
        .xks
        .decrypt(KEY_AES, &s.decrypt_body(Some(&unb64(OTHER_AAD_B64))));
    assert_error(&r, 400, "InvalidCiphertextException");
    // AAD added where there was none.
    let s = h.xks.encrypt_ok(KEY_AES, b"Hello World!", None);
    let r = h.xks.decrypt(KEY_AES, &s.decrypt_body(Some(AAD)));
    assert_error(&r, 400, "InvalidCiphertextException");
}

/// Checklist 15: one flipped bit in the ciphertext, the IV or the tag.
#[test]
fn decrypt_with_a_flipped_bit_in_ciphertext_iv_or_tag_is_invalid_ciphertext() {
    let mut h = Harness::start();
    let s = h.xks.encrypt_ok(KEY_AES, b"Hello World!", Some(AAD));
    for (what, bit) in [
        ("ciphertext", 0),
        ("ciphertext", 95),
        ("iv", 7),
        ("tag", 127),
        ("tag", 0),
    ] {
        let mut t = s.clone();
        let buf = match what {
            "ciphertext" => &mut t.ciphertext,
            "iv" => &mut t.iv,
            _ => &mut t.tag,
        };
        buf[bit / 8] ^= 1 << (bit % 8);
        let r = h.xks.decrypt(KEY_AES, &t.decrypt_body(Some(AAD)));
        assert_error(&r, 400, "InvalidCiphertextException");
    }
    // The untouched original still decrypts on the same connection.
    let r = h.xks.decrypt(KEY_AES, &s.decrypt_body(Some(AAD)));
    assert_eq!(assert_ok(&r)["plaintext"], b64(b"Hello World!"));
}

/// A 16-byte IV is a valid length; with the wrong value it fails authentication, not validation.
#[test]
fn decrypt_with_a_16_byte_iv_is_checked_by_gcm_not_refused_as_invalid() {
    let mut h = Harness::start();
    let mut s = h.xks.encrypt_ok(KEY_AES, b"Hello World!", None);
    s.iv.extend_from_slice(&[0, 0, 0, 1]);
    assert_eq!(s.iv.len(), 16);
    let r = h.xks.decrypt(KEY_AES, &s.decrypt_body(None));
    assert_error(&r, 400, "InvalidCiphertextException");
}

/// Checklist 16: metadata altered, omitted, or never returned by Encrypt.
#[test]
fn decrypt_with_altered_omitted_or_foreign_metadata_is_invalid_ciphertext() {
    let mut h = Harness::start();
    let s = h.xks.encrypt_ok(KEY_AES, b"Hello World!", Some(AAD));
    let md = s.metadata.clone().expect("this proxy emits ciphertextMetadata");
    assert!(!md.is_empty() && md.len() <= 20, "{md:?}");
    let mut variants: Vec<Option<Vec<u8>>> = Vec::new();
    for i in 0..md.len() {
        let mut m = md.clone();
        m[i] ^= 0x01;
        variants.push(Some(m));
    }
    variants.push(None); // omitted
    variants.push(Some(b"key_version=1".to_vec())); // foreign
    variants.push(Some(vec![0; 20])); // foreign, maximal length
    let mut longer = md.clone();
    longer.push(0);
    variants.push(Some(longer));
    variants.push(Some(md[..md.len() - 1].to_vec()));
    for m in variants {
        let mut t = s.clone();
        t.metadata = m.clone();
        let r = h.xks.decrypt(KEY_AES, &t.decrypt_body(Some(AAD)));
        assert_error(&r, 400, "InvalidCiphertextException");
    }
    // Present but empty is "omitted" too.
    let mut body = s.decrypt_body(Some(AAD));
    body["ciphertextMetadata"] = json!("");
    assert_error(&h.xks.decrypt(KEY_AES, &body), 400, "InvalidCiphertextException");
}

/// Checklist 17: metadata moved into the AAD does not authenticate (length framing).
#[test]
fn metadata_moved_into_the_aad_is_invalid_ciphertext() {
    let mut h = Harness::start();
    let s = h.xks.encrypt_ok(KEY_AES, b"Hello World!", None);
    let md = s.metadata.clone().expect("this proxy emits ciphertextMetadata");
    let mut t = s.clone();
    t.metadata = None;
    let r = h.xks.decrypt(KEY_AES, &t.decrypt_body(Some(&md)));
    assert_error(&r, 400, "InvalidCiphertextException");
}

/// Checklist 26: a 15-byte tag, a 13-byte IV, 21 bytes of metadata (and other bad lengths).
#[test]
fn decrypt_with_bad_tag_iv_or_metadata_length_is_validation_exception() {
    let mut h = Harness::start();
    let s = h.xks.encrypt_ok(KEY_AES, b"Hello World!", Some(AAD));
    let mut cases: Vec<Sealed> = Vec::new();
    let mut t = s.clone();
    t.tag.truncate(15);
    cases.push(t);
    let mut t = s.clone();
    t.tag.push(0);
    cases.push(t);
    let mut t = s.clone();
    t.iv.push(0);
    assert_eq!(t.iv.len(), 13);
    cases.push(t);
    let mut t = s.clone();
    t.iv.truncate(11);
    cases.push(t);
    let mut t = s.clone();
    t.metadata = Some(vec![1; 21]);
    cases.push(t);
    for t in cases {
        let r = h.xks.decrypt(KEY_AES, &t.decrypt_body(Some(AAD)));
        assert_error(&r, 400, "ValidationException");
    }
}

#[test]
fn decrypt_with_missing_fields_bad_base64_or_unknown_algorithm_is_validation_exception() {
    let mut h = Harness::start();
    let s = h.xks.encrypt_ok(KEY_AES, b"Hello World!", None);
    let base = s.decrypt_body(None);
    let mut cases = Vec::new();
    for field in [
        "ciphertext",
        "initializationVector",
        "authenticationTag",
        "encryptionAlgorithm",
        "requestMetadata",
    ] {
        let mut b = base.clone();
        b.as_object_mut().unwrap().remove(field);
        cases.push(b);
    }
    for (field, value) in [
        ("encryptionAlgorithm", json!("AES_CBC")),
        ("ciphertext", json!("not-base64_")),
        ("initializationVector", json!(12)),
        ("authenticationTag", json!(null)),
        ("ciphertextMetadata", json!("AQAAAAE")),
    ] {
        let mut b = base.clone();
        b[field] = value;
        cases.push(b);
    }
    for body in cases {
        let r = h.xks.decrypt(KEY_AES, &body);
        assert_error(&r, 400, "ValidationException");
    }
}

#[test]
fn decrypt_of_ciphertext_above_the_maximum_is_unsupported_operation() {
    let mut h = Harness::start();
    let mut s = h.xks.encrypt_ok(KEY_AES, &[9u8; 4300], None);
    s.ciphertext.push(0);
    let r = h.xks.decrypt(KEY_AES, &s.decrypt_body(None));
    assert_error(&r, 501, "UnsupportedOperationException");
}

#[test]
fn decrypt_with_another_key_is_invalid_ciphertext() {
    let mut h = Harness::start();
    let s = h.xks.encrypt_ok(KEY_AES, b"Hello World!", None);
    let r = h.xks.decrypt(KEY_DECRYPT_ONLY, &s.decrypt_body(None));
    assert_error(&r, 400, "InvalidCiphertextException");
    let r = h.xks.decrypt("non_existing_key", &s.decrypt_body(None));
    assert_error(&r, 404, "KeyNotFoundException");
}
