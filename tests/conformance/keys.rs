//! Keys that are not what an external key must be (digest sections 1, 6.1, 12): other key
//! types and sizes, ambiguous labels, and keys deleted or replaced while the daemon serves.

use crate::common::*;
use cryptoki::object::KeyType;
use serde_json::json;

const AES128: &str = "extra-aes128";
const HMAC: &str = "extra-hmac";
const DUP: &str = "extra-dup";

/// A fixture whose token also holds `extra` keys, all allow-listed, served by a daemon.
fn harness_with_extra_keys(extra: &[(&str, KeyType, u64)]) -> Harness {
    let labels: Vec<String> = extra.iter().map(|(l, _, _)| l.to_string()).collect();
    let extra: Vec<(String, KeyType, u64)> = extra.iter().map(|(l, t, n)| (l.to_string(), *t, *n)).collect();
    Harness::start_with(
        move |cfg, fx| {
            with_token_session(fx, |s| {
                for (label, key_type, len) in &extra {
                    generate_secret_key(s, label, *key_type, *len);
                }
            });
            let mut allowed: Vec<&str> = vec![KEY_AES, KEY_ENCRYPT_ONLY, KEY_DECRYPT_ONLY, KEY_NO_USAGE];
            allowed.extend(labels.iter().map(String::as_str));
            entry(cfg, "keystores", 0).insert("allowed_keys".into(), toml_strings(&allowed));
        },
        &[],
    )
}

/// A key that is not AES is reported as such and refused for Encrypt and Decrypt.
#[test]
fn non_aes_key_is_not_reported_as_aes_256_and_is_invalid_key_usage() {
    token_test(|| {
        let mut h = harness_with_extra_keys(&[(HMAC, KeyType::GENERIC_SECRET, 32)]);
        let v = assert_ok(&h.xks.metadata(HMAC));
        assert_ne!(v["keySpec"], "AES_256", "{v}");
        let r = h.xks.encrypt(HMAC, &encrypt_body(b"Hello World!", None, false));
        assert_error(&r, 400, "InvalidKeyUsageException");
        let s = h.xks.encrypt_ok(KEY_AES, b"Hello World!", None);
        let r = h.xks.decrypt(HMAC, &s.decrypt_body(None));
        assert_error(&r, 400, "InvalidKeyUsageException");
    });
}

/// XKS v1 is AES-256 only: an AES-128 key is reported as not AES_256 and must not be used
/// for Encrypt or Decrypt (InvalidKeyUsageException: wrong key type).
#[test]
fn aes_128_key_is_reported_as_such_and_refused_for_encrypt_and_decrypt() {
    token_test(|| {
        let mut h = harness_with_extra_keys(&[(AES128, KeyType::AES, 16)]);
        let v = assert_ok(&h.xks.metadata(AES128));
        assert_ne!(v["keySpec"], "AES_256", "{v}");
        let r = h.xks.encrypt(AES128, &encrypt_body(b"Hello World!", None, false));
        assert_error(&r, 400, "InvalidKeyUsageException");
        let s = h.xks.encrypt_ok(KEY_AES, b"Hello World!", None);
        let r = h.xks.decrypt(AES128, &s.decrypt_body(None));
        assert_error(&r, 400, "InvalidKeyUsageException");
    });
}

/// An external key id must map to exactly one key: two keys sharing a label are never
/// guessed between.
#[test]
fn label_shared_by_two_keys_is_internal_exception() {
    token_test(|| {
        let mut h = harness_with_extra_keys(&[(DUP, KeyType::AES, 32), (DUP, KeyType::AES, 32)]);
        assert_error(&h.xks.metadata(DUP), 500, "InternalException");
        let r = h.xks.encrypt(DUP, &encrypt_body(b"Hello World!", None, false));
        assert_error(&r, 500, "InternalException");
    });
}

/// Digest section 12: deleting the external key is answered KeyNotFoundException, even after
/// the daemon has used (and cached) it; a new key under the same label is picked up and
/// cannot decrypt the old key's ciphertext.
#[test]
fn key_deleted_from_the_token_while_serving_is_key_not_found_and_a_replacement_is_used() {
    token_test(|| {
        let mut h = Harness::start();
        let old = h.xks.encrypt_ok(KEY_AES, b"before deletion", None);
        assert_ok(&h.xks.metadata(KEY_AES));

        with_token_session(&h.fx, |s| {
            let keys = find_keys(s, KEY_AES);
            assert_eq!(keys.len(), 1);
            s.destroy_object(keys[0]).expect("C_DestroyObject");
        });
        assert_error(&h.xks.metadata(KEY_AES), 404, "KeyNotFoundException");
        let r = h
            .xks
            .encrypt(KEY_AES, &encrypt_body(b"after deletion", None, false));
        assert_error(&r, 404, "KeyNotFoundException");
        assert_error(
            &h.xks.decrypt(KEY_AES, &old.decrypt_body(None)),
            404,
            "KeyNotFoundException",
        );

        with_token_session(&h.fx, |s| {
            generate_secret_key(s, KEY_AES, KeyType::AES, 32);
        });
        let v = assert_ok(&h.xks.metadata(KEY_AES));
        assert_eq!(v["keySpec"], json!("AES_256"));
        let new = h.xks.encrypt_ok(KEY_AES, b"after replacement", None);
        let r = h.xks.decrypt(KEY_AES, &new.decrypt_body(None));
        assert_eq!(assert_ok(&r)["plaintext"], b64(b"after replacement"));
        let r = h.xks.decrypt(KEY_AES, &old.decrypt_body(None));
        assert_error(&r, 400, "InvalidCiphertextException");
    });
}
