//! GetKeyMetadata (checklist 5-9) and which keys a keystore serves (allow-list, pattern).

use crate::common::*;
use serde_json::json;

/// Checklist 5.
#[test]
fn metadata_of_encrypt_decrypt_key_is_aes256_with_both_usages_and_enabled() {
    let mut h = Harness::start();
    let v = assert_ok(&h.xks.metadata(KEY_AES));
    assert_eq!(v["keySpec"], "AES_256", "{v}");
    let usage = v["keyUsage"].as_array().expect("keyUsage array");
    assert!(usage.len() <= 10, "{v}");
    assert!(
        usage.contains(&json!("ENCRYPT")) && usage.contains(&json!("DECRYPT")),
        "{v}"
    );
    assert_eq!(v["keyStatus"], "ENABLED", "{v}");
}

/// Exact GetKeyMetadata values for each of the fixture's four keys.
#[test]
fn metadata_reports_the_exact_usages_of_each_fixture_key() {
    let mut h = Harness::start();
    let expected = [
        (KEY_AES, json!(["ENCRYPT", "DECRYPT"])),
        (KEY_ENCRYPT_ONLY, json!(["ENCRYPT"])),
        (KEY_DECRYPT_ONLY, json!(["DECRYPT"])),
        (KEY_NO_USAGE, json!([])),
    ];
    for (key, usage) in expected {
        let v = assert_ok(&h.xks.metadata(key));
        assert_eq!(
            v,
            json!({"keySpec": "AES_256", "keyUsage": usage, "keyStatus": "ENABLED"}),
            "{key}"
        );
    }
}

/// Checklist 6: DescribeKey, the pre-1.0.3 fields and unknown fields are all tolerated.
#[test]
fn metadata_tolerates_describe_key_legacy_fields_and_unknown_fields() {
    let mut h = Harness::start();
    let body = json!({
        "requestMetadata": {
            "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
            "kmsOperation": "DescribeKey",
            "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
            "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/b3537ef1-d8dc-4780-9f5a-55776cbb2f7f",
            "kmsViaService": "ebs",
            "awsSourceVpc": "vpc-0123456789abcdef0",
            "awsSourceVpce": "vpce-0123456789abcdef0",
            "futureField": {"nested": [1, 2, 3]}
        },
        "futureTopLevel": true
    });
    let v = assert_ok(&h.xks.post(&format!("/keys/{KEY_AES}/metadata"), &body));
    assert_eq!(v["keySpec"], "AES_256");
}

/// Checklist 7.
#[test]
fn metadata_of_unknown_key_is_key_not_found() {
    let mut h = Harness::start();
    let r = h.xks.metadata("non_existing_key");
    assert_error(&r, 404, "KeyNotFoundException");
}

/// Checklist 8, plus other malformed bodies.
#[test]
fn metadata_with_empty_or_malformed_body_is_validation_exception() {
    let mut h = Harness::start();
    let path = format!("/keys/{KEY_AES}/metadata");
    for body in [
        "{}",
        r#"{"requestMetadata":{}}"#,
        r#"{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"CreateKey"}}"#,
        r#"{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"CreateKey","awsPrincipalArn":5}}"#,
        "[]",
        "{",
    ] {
        let r = h.xks.post_bytes(&path, body.as_bytes());
        assert_error(&r, 400, "ValidationException");
    }
}

/// Checklist 9: request ids are opaque, principals need not be ARNs, ARNs may be 2048 chars.
#[test]
fn opaque_request_id_service_principal_and_2048_char_arn_are_accepted() {
    let mut h = Harness::start();
    let long_arn = format!("arn:aws:kms:us-east-1:123456789012:key/{}", "k".repeat(2048 - 39));
    assert_eq!(long_arn.len(), 2048);
    let md = json!({
        "awsPrincipalArn": "AWS Internal",
        "kmsKeyArn": long_arn,
        "kmsOperation": "CreateKey",
        "kmsRequestId": "not-a-uuid",
    });
    let v = assert_ok(&h.xks.post(
        &format!("/keys/{KEY_AES}/metadata"),
        &json!({"requestMetadata": md}),
    ));
    assert_eq!(v["keyStatus"], "ENABLED");
    let mut body = encrypt_body(b"Hello World!", None, false);
    body["requestMetadata"] = md.clone();
    body["requestMetadata"]["kmsOperation"] = json!("GenerateDataKey");
    body["requestMetadata"]["awsPrincipalArn"] = json!("ec2.amazonaws.com");
    assert_ok(&h.xks.encrypt(KEY_AES, &body));
}

/// A key on the token but outside the keystore's allow-list is answered exactly like a key
/// that does not exist, for every operation.
#[test]
fn key_outside_the_allow_list_is_key_not_found() {
    let mut h = Harness::start_with(
        |cfg, _| {
            entry(cfg, "keystores", 0).insert("allowed_keys".into(), toml_strings(&[KEY_AES]));
        },
        &[],
    );
    assert_ok(&h.xks.metadata(KEY_AES));
    let sealed = h.xks.encrypt_ok(KEY_AES, b"allow-list", None);
    assert_error(&h.xks.metadata(KEY_ENCRYPT_ONLY), 404, "KeyNotFoundException");
    let r = h.xks.encrypt(KEY_ENCRYPT_ONLY, &encrypt_body(b"x", None, false));
    assert_error(&r, 404, "KeyNotFoundException");
    let r = h.xks.decrypt(KEY_DECRYPT_ONLY, &sealed.decrypt_body(None));
    assert_error(&r, 404, "KeyNotFoundException");
}

/// `key_pattern` selects keys by glob; a key the pattern admits but the token lacks is
/// KeyNotFoundException too.
#[test]
fn key_pattern_serves_matching_token_keys_and_missing_ones_are_key_not_found() {
    let mut h = Harness::start_with(
        |cfg, _| {
            let ks = entry(cfg, "keystores", 0);
            ks.insert("allowed_keys".into(), toml_strings(&[]));
            ks.insert("key_pattern".into(), "quickstart-*".into());
        },
        &[],
    );
    assert_ok(&h.xks.metadata(KEY_AES));
    assert_ok(&h.xks.metadata(KEY_NO_USAGE));
    assert_error(&h.xks.metadata("quickstart-ghost"), 404, "KeyNotFoundException");
    assert_error(&h.xks.metadata("other-key"), 404, "KeyNotFoundException");
    let r = h
        .xks
        .encrypt("quickstart-ghost", &encrypt_body(b"x", None, false));
    assert_error(&r, 404, "KeyNotFoundException");
}
