//! SigV4 authentication (checklist 27-30) and per-keystore credentials and regions.

use crate::common::*;
use std::time::{Duration, SystemTime};

fn health_json() -> Vec<u8> {
    health_body("r-auth", "KmsHealthCheck").to_string().into_bytes()
}

/// Checklist 27: an unknown access key id is 401, never 400.
#[test]
fn unknown_access_key_id_is_authentication_failed() {
    let mut h = Harness::start();
    let mut signer = h.fx.signer();
    signer.access_key_id = format!("Invalid{}", h.fx.access_key_id);
    let r = h
        .xks
        .client
        .post_signed(&signer, &format!("{BASE}/health"), &health_json());
    assert_error(&r, 401, "AuthenticationFailedException");
    // Also for a key operation, and for an id that is not even well-formed.
    signer.access_key_id = "x".into();
    let body = encrypt_body(b"x", None, false).to_string();
    let path = format!("{BASE}/keys/{KEY_AES}/encrypt");
    let r = h.xks.client.post_signed(&signer, &path, body.as_bytes());
    assert_error(&r, 401, "AuthenticationFailedException");
}

/// Checklist 27: the right id with a wrong secret.
#[test]
fn wrong_secret_is_authentication_failed() {
    let mut h = Harness::start();
    let mut signer = h.fx.signer();
    signer.secret = format!("{}x", h.fx.secret);
    let r = h
        .xks
        .client
        .post_signed(&signer, &format!("{BASE}/health"), &health_json());
    assert_error(&r, 401, "AuthenticationFailedException");
}

/// Checklist 28: more than 5 minutes of skew either way is refused.
#[test]
fn x_amz_date_six_minutes_in_the_past_or_future_is_authentication_failed() {
    let mut h = Harness::start();
    let now = SystemTime::now();
    for t in [now - Duration::from_secs(360), now + Duration::from_secs(360)] {
        let mut signer = h.fx.signer();
        signer.time = Some(t);
        let r = h
            .xks
            .client
            .post_signed(&signer, &format!("{BASE}/health"), &health_json());
        assert_error(&r, 401, "AuthenticationFailedException");
    }
}

/// Checklist 28: 4 minutes of skew either way is accepted.
#[test]
fn x_amz_date_four_minutes_off_is_accepted() {
    let mut h = Harness::start();
    let now = SystemTime::now();
    for t in [now - Duration::from_secs(240), now + Duration::from_secs(240)] {
        let mut signer = h.fx.signer();
        signer.time = Some(t);
        let r = h
            .xks
            .client
            .post_signed(&signer, &format!("{BASE}/health"), &health_json());
        assert_ok(&r);
    }
}

/// Checklist 29: one byte of the body changed after signing.
#[test]
fn body_changed_after_signing_is_authentication_failed() {
    let mut h = Harness::start();
    let path = format!("{BASE}/keys/{KEY_AES}/encrypt");
    let body = encrypt_body(b"Hello World!", None, false)
        .to_string()
        .into_bytes();
    let headers = h
        .xks
        .signer
        .headers("POST", &h.xks.client.authority, &path, &body);
    let mut tampered = body.clone();
    let i = tampered
        .iter()
        .position(|&b| b == b'S')
        .expect("an S in the Base64");
    tampered[i] = b'T';
    let r = h.xks.client.send("POST", &path, &headers, &tampered);
    assert_error(&r, 401, "AuthenticationFailedException");
    // The untampered body with the same signature is accepted.
    let r = h.xks.client.send("POST", &path, &headers, &body);
    assert_ok(&r);
}

/// Checklist 29: the credential scope names service `kms` instead of `kms-xks-proxy`.
#[test]
fn credential_scope_with_service_kms_is_authentication_failed() {
    let mut h = Harness::start();
    let mut signer = h.fx.signer();
    signer.service = "kms".into();
    let r = h
        .xks
        .client
        .post_signed(&signer, &format!("{BASE}/health"), &health_json());
    assert_error(&r, 401, "AuthenticationFailedException");
}

/// Checklist 29: no Authorization header (and no X-Amz-Date header).
#[test]
fn missing_authorization_or_date_header_is_authentication_failed() {
    let mut h = Harness::start();
    let path = format!("{BASE}/health");
    let body = health_json();
    let signed = h
        .xks
        .signer
        .headers("POST", &h.xks.client.authority, &path, &body);
    for drop in ["authorization", "x-amz-date"] {
        let headers: Vec<_> = signed.iter().filter(|(k, _)| k != drop).cloned().collect();
        let r = h.xks.client.send("POST", &path, &headers, &body);
        assert_error(&r, 401, "AuthenticationFailedException");
    }
    let ct = vec![("content-type".to_owned(), "application/json".to_owned())];
    let r = h.xks.client.send("POST", &path, &ct, &body);
    assert_error(&r, 401, "AuthenticationFailedException");
}

/// A repeated `Authorization` or `X-Amz-Date` is refused even when one copy is correctly
/// signed: which copy counts must not depend on which hop reads it.
#[test]
fn repeated_authorization_or_date_header_is_authentication_failed() {
    let mut h = Harness::start();
    let path = format!("{BASE}/health");
    let body = health_json();
    let signed = h
        .xks
        .signer
        .headers("POST", &h.xks.client.authority, &path, &body);
    let value = |name: &str| signed.iter().find(|(k, _)| k == name).unwrap().1.clone();
    let garbage = "AWS4-HMAC-SHA256 Credential=x/20200101/us-east-1/kms-xks-proxy/aws4_request, \
                   SignedHeaders=host;x-amz-date, Signature=00";
    let cases = [
        ("authorization", value("authorization")),
        ("authorization", garbage.to_owned()),
        ("x-amz-date", value("x-amz-date")),
    ];
    for (name, extra) in cases {
        let mut headers = signed.clone();
        headers.push((name.to_owned(), extra.clone()));
        let r = h.xks.client.send("POST", &path, &headers, &body);
        assert_error(&r, 401, "AuthenticationFailedException");
    }
    // The same request with each header once is accepted.
    let r = h.xks.client.send("POST", &path, &signed, &body);
    assert_ok(&r);
}

/// A signed header whose value changes in transit breaks the signature.
#[test]
fn changed_signed_header_is_authentication_failed() {
    let mut h = Harness::start();
    let path = format!("{BASE}/health");
    let body = health_json();
    let signed = h
        .xks
        .signer
        .headers("POST", &h.xks.client.authority, &path, &body);
    let headers: Vec<_> = signed
        .iter()
        .map(|(k, v)| match k.as_str() {
            "content-type" => (k.clone(), "application/json; charset=utf-8".to_owned()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let r = h.xks.client.send("POST", &path, &headers, &body);
    assert_error(&r, 401, "AuthenticationFailedException");
}

/// Checklist 30: what KMS signs (`host;x-amz-date`) and what curl signs
/// (`content-type;host;x-amz-date`) both verify, for every operation.
#[test]
fn kms_style_and_curl_style_signed_headers_both_verify() {
    let mut h = Harness::start();
    for sign_content_type in [false, true] {
        h.xks.signer.sign_content_type = sign_content_type;
        let path = format!("{BASE}/health");
        let headers = h
            .xks
            .signer
            .headers("POST", &h.xks.client.authority, &path, &health_json());
        let auth = &headers.iter().find(|(k, _)| k == "authorization").unwrap().1;
        let expected = if sign_content_type {
            "SignedHeaders=content-type;host;x-amz-date,"
        } else {
            "SignedHeaders=host;x-amz-date,"
        };
        assert!(auth.contains(expected), "{auth}");
        assert_ok(&h.xks.health());
        assert_ok(&h.xks.metadata(KEY_AES));
        let s = h.xks.encrypt_ok(KEY_AES, b"signed", Some(b"aad"));
        assert_ok(&h.xks.decrypt(KEY_AES, &s.decrypt_body(Some(b"aad"))));
    }
}

/// Digest 10.1: the verifier checks whatever `SignedHeaders` names, not a fixed list. An extra
/// signed header (`x-amz-content-sha256`) verifies, and changing its value breaks the signature.
#[test]
fn extra_signed_headers_are_verified_too() {
    let mut h = Harness::start();
    h.xks.signer.content_sha256 = true;
    let path = format!("{BASE}/health");
    let body = health_json();
    let headers = h
        .xks
        .signer
        .headers("POST", &h.xks.client.authority, &path, &body);
    let auth = &headers.iter().find(|(k, _)| k == "authorization").unwrap().1;
    assert!(auth.contains("x-amz-content-sha256"), "{auth}");
    assert_ok(&h.xks.client.send("POST", &path, &headers, &body));
    let altered: Vec<_> = headers
        .iter()
        .map(|(k, v)| match k.as_str() {
            "x-amz-content-sha256" => (k.clone(), "0".repeat(64)),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let r = h.xks.client.send("POST", &path, &altered, &body);
    assert_error(&r, 401, "AuthenticationFailedException");
}

/// Authentication comes before body validation and key lookup (digest section 9).
#[test]
fn unauthenticated_request_with_bad_body_or_unknown_key_is_authentication_failed() {
    let mut h = Harness::start();
    let mut signer = h.fx.signer();
    signer.secret = "wrong-secret-wrong-secret-wrong-secret-wrong".into();
    let r = h
        .xks
        .client
        .post_signed(&signer, &format!("{BASE}/health"), b"{}");
    assert_error(&r, 401, "AuthenticationFailedException");
    let path = format!("{BASE}/keys/non_existing_key/metadata");
    let r = h
        .xks
        .client
        .post_signed(&signer, &path, metadata_body("r").to_string().as_bytes());
    assert_error(&r, 401, "AuthenticationFailedException");
}

/// Without an allow-list the region in the credential scope is accepted as signed (digest 10.1).
#[test]
fn any_region_is_accepted_without_a_region_allow_list() {
    let mut h = Harness::start();
    for region in ["us-east-1", "eu-west-1", "ap-southeast-2"] {
        h.xks.signer.region = region.into();
        assert_ok(&h.xks.health());
    }
}

/// `allowed_regions` pins the SigV4 region of a keystore.
#[test]
fn region_outside_the_keystore_allow_list_is_authentication_failed() {
    let mut h = Harness::start_with(
        |cfg, _| {
            entry(cfg, "keystores", 0).insert("allowed_regions".into(), toml_strings(&["eu-west-1"]));
        },
        &[],
    );
    let r = h.xks.health();
    assert_error(&r, 401, "AuthenticationFailedException");
    h.xks.signer.region = "eu-west-1".into();
    assert_ok(&h.xks.health());
}

const TENANT_B_AKID: &str = "BBBBBBBBBBBBBBBBBBBBBBBB22";
const TENANT_B_SECRET: &str = "dGVuYW50LWItc2VjcmV0LWtleS0wMTIzNDU2Nzg5YWI=";

/// Adds a keystore at `prefix` with its own credential, serving only the fixture's AES key.
fn add_keystore(cfg: &mut toml::Table, fx: &Fixture, prefix: &str) {
    let secret_path = fx.write_secret("tenant-b-secret", TENANT_B_SECRET);
    let mut cred = toml::Table::new();
    cred.insert("access_key_id".into(), TENANT_B_AKID.into());
    let mut secret = toml::Table::new();
    secret.insert("file".into(), secret_path.display().to_string().into());
    cred.insert("secret".into(), secret.into());
    let mut ks = toml::Table::new();
    ks.insert("uri_prefix".into(), prefix.into());
    ks.insert("token".into(), "quickstart-softhsm".into());
    ks.insert("allowed_keys".into(), toml_strings(&[KEY_AES]));
    ks.insert("credentials".into(), toml::Value::Array(vec![cred.into()]));
    cfg["keystores"].as_array_mut().unwrap().push(ks.into());
}

/// Each prefix is its own keystore with its own credentials: neither keystore's credential
/// opens the other.
#[test]
fn second_keystore_accepts_only_its_own_credential() {
    let mut h = Harness::start_with(|cfg, fx| add_keystore(cfg, fx, "/tenant-b"), &[]);
    let b_signer = Signer::new(TENANT_B_AKID, TENANT_B_SECRET);
    let b_health = "/tenant-b/kms/xks/v1/health";
    let r = h.xks.client.post_signed(&b_signer, b_health, &health_json());
    assert_ok(&r);
    let r = h.xks.client.post_signed(&h.fx.signer(), b_health, &health_json());
    assert_error(&r, 401, "AuthenticationFailedException");
    let r = h
        .xks
        .client
        .post_signed(&b_signer, &format!("{BASE}/health"), &health_json());
    assert_error(&r, 401, "AuthenticationFailedException");
    // Keystore B serves only its allow-listed key.
    let md = metadata_body("r-b").to_string();
    let path = format!("/tenant-b/kms/xks/v1/keys/{KEY_AES}/metadata");
    assert_ok(&h.xks.client.post_signed(&b_signer, &path, md.as_bytes()));
    let path = format!("/tenant-b/kms/xks/v1/keys/{KEY_ENCRYPT_ONLY}/metadata");
    let r = h.xks.client.post_signed(&b_signer, &path, md.as_bytes());
    assert_error(&r, 404, "KeyNotFoundException");
    // The first keystore is unaffected.
    assert_ok(&h.xks.health());
}

/// Checklist 32 (first half; hot reload is not implemented yet): two credentials configured on
/// one prefix are both accepted, during a rotation.
#[test]
fn two_credentials_on_one_prefix_are_both_accepted() {
    let mut h = Harness::start_with(
        |cfg, fx| {
            let path = fx.write_secret("rotated-secret", TENANT_B_SECRET);
            let mut cred = toml::Table::new();
            cred.insert("access_key_id".into(), TENANT_B_AKID.into());
            let mut secret = toml::Table::new();
            secret.insert("file".into(), path.display().to_string().into());
            cred.insert("secret".into(), secret.into());
            entry(cfg, "keystores", 0)["credentials"]
                .as_array_mut()
                .unwrap()
                .push(cred.into());
        },
        &[],
    );
    assert_ok(&h.xks.health());
    h.xks.signer = Signer::new(TENANT_B_AKID, TENANT_B_SECRET);
    assert_ok(&h.xks.health());
    let s = h.xks.encrypt_ok(KEY_AES, b"rotation", None);
    h.xks.signer = h.fx.signer();
    assert_ok(&h.xks.decrypt(KEY_AES, &s.decrypt_body(None)));
    // Each id still needs its own secret.
    h.xks.signer = Signer::new(TENANT_B_AKID, &h.fx.secret);
    assert_error(&h.xks.health(), 401, "AuthenticationFailedException");
}

/// Prefixes are matched exactly (digest section 3): a keystore whose prefix contains another
/// keystore's whole API base must still receive its own requests.
#[test]
fn prefix_containing_another_keystores_api_base_routes_to_its_own_keystore() {
    let nested = "/quickstart/kms/xks/v1/nested";
    let mut h = Harness::start_with(|cfg, fx| add_keystore(cfg, fx, nested), &[]);
    let b_signer = Signer::new(TENANT_B_AKID, TENANT_B_SECRET);
    let path = format!("{nested}/kms/xks/v1/health");
    let r = h.xks.client.post_signed(&b_signer, &path, &health_json());
    assert_ok(&r);
    assert_ok(&h.xks.health());
}
