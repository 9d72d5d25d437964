//! GetHealthStatus (checklist 1-3) and health when the token is absent.

use crate::common::*;
use serde_json::json;

/// Checklist 1.
#[test]
fn health_reports_fleet_vendors_and_an_active_token() {
    let mut h = Harness::start();
    let r = h.xks.post(
        "/health",
        &json!({"requestMetadata":{"kmsRequestId":"r1","kmsOperation":"KmsHealthCheck"}}),
    );
    let v = assert_ok(&r);
    let fleet = v["xksProxyFleetSize"]
        .as_u64()
        .expect("integer xksProxyFleetSize");
    assert!(fleet >= 1, "{v}");
    for field in ["xksProxyVendor", "xksProxyModel", "ekmVendor"] {
        let s = v[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} missing: {v}"));
        assert!(!s.is_empty(), "{field} empty: {v}");
    }
    let details = v["ekmFleetDetails"].as_array().expect("ekmFleetDetails array");
    assert!((1..=10).contains(&details.len()), "{v}");
    for d in details {
        assert!(d["id"].as_str().is_some_and(|s| !s.is_empty()), "{d}");
        assert!(d["model"].as_str().is_some_and(|s| !s.is_empty()), "{d}");
        let status = d["healthStatus"].as_str().expect("healthStatus");
        assert!(["ACTIVE", "DEGRADED", "UNAVAILABLE"].contains(&status), "{d}");
    }
    assert_eq!(
        details[0]["healthStatus"], "ACTIVE",
        "a healthy token must be ACTIVE: {v}"
    );
}

/// Checklist 2: unknown kmsOperation values must never be rejected.
#[test]
fn health_accepts_every_kms_operation_including_unknown_ones() {
    let mut h = Harness::start();
    for op in [
        "CreateCustomKeyStore",
        "ConnectCustomKeyStore",
        "UpdateCustomKeyStore",
        "KmsHealthCheck",
        "FutureOp",
    ] {
        let r = h.xks.post("/health", &health_body("r-op", op));
        assert_ok(&r);
    }
    // Unknown fields, in requestMetadata and at the top level, are ignored.
    let body = json!({
        "requestMetadata": {"kmsRequestId": "r-x", "kmsOperation": "KmsHealthCheck", "futureField": [1]},
        "futureTopLevel": {"a": "b"}
    });
    assert_ok(&h.xks.post("/health", &body));
}

/// Checklist 3 (test-client expectation), plus malformed JSON and mistyped fields.
#[test]
fn health_with_empty_incomplete_or_malformed_body_is_validation_exception() {
    let mut h = Harness::start();
    for body in [
        "{}",
        r#"{"requestMetadata":{}}"#,
        r#"{"requestMetadata":{"kmsRequestId":"r1"}}"#,
        r#"{"requestMetadata":{"kmsOperation":"KmsHealthCheck"}}"#,
        r#"{"requestMetadata":{"kmsRequestId":7,"kmsOperation":"KmsHealthCheck"}}"#,
        r#"{"requestMetadata":"r1"}"#,
        "not json",
        "",
    ] {
        let r = h.xks.post_bytes("/health", body.as_bytes());
        assert_error(&r, 400, "ValidationException");
    }
}

#[test]
fn health_reports_the_configured_fleet_size() {
    let mut h = Harness::start_with(
        |cfg, _| {
            section(cfg, "server").insert("fleet_size".into(), toml::Value::Integer(3));
        },
        &[],
    );
    let v = assert_ok(&h.xks.health());
    assert_eq!(v["xksProxyFleetSize"], json!(3), "{v}");
}

/// The daemon starts without its token, reports it UNAVAILABLE (never ACTIVE) and answers
/// crypto requests with InternalException.
#[test]
fn absent_token_is_reported_unavailable_and_encrypt_is_internal_exception() {
    let mut h = Harness::start_with(
        |cfg, _| {
            entry(cfg, "tokens", 0).insert("token_label".into(), "no-such-token".into());
        },
        &[],
    );
    let v = assert_ok(&h.xks.health());
    let details = v["ekmFleetDetails"].as_array().expect("ekmFleetDetails");
    assert!(!details.is_empty(), "{v}");
    for d in details {
        assert_eq!(d["healthStatus"], "UNAVAILABLE", "{v}");
    }
    let r = h
        .xks
        .encrypt(KEY_AES, &encrypt_body(b"Hello World!", None, false));
    assert_error(&r, 500, "InternalException");
    // Still UNAVAILABLE on a second look (no ACTIVE from a stale cache).
    let v = assert_ok(&h.xks.health());
    assert_eq!(v["ekmFleetDetails"][0]["healthStatus"], "UNAVAILABLE", "{v}");
}
