//! Assertions on XKS responses.

use crate::common::client::Resp;
use serde_json::{json, Value};

/// Asserts an XKS error: exact status, `application/json`, the exact `errorName`, and an
/// `errorMessage` (if any) of fewer than 512 printable ASCII characters.
#[track_caller]
pub fn assert_error(r: &Resp, status: u16, error_name: &str) {
    assert_eq!(
        r.status,
        status,
        "expected {status} {error_name}, got {}: {}",
        r.status,
        r.text()
    );
    assert_json_error_shape(r);
    let v = r.json();
    assert_eq!(v["errorName"], json!(error_name), "body: {v}");
}

/// Checks the shape every error response must have (checklist 33).
#[track_caller]
pub fn assert_json_error_shape(r: &Resp) {
    assert!(
        r.content_type().starts_with("application/json"),
        "error response Content-Type is {:?}, body {}",
        r.content_type(),
        r.text()
    );
    let v = r.json();
    assert!(
        v["errorName"].is_string(),
        "errorName missing or not a string: {v}"
    );
    if let Some(m) = v.get("errorMessage") {
        let m = m
            .as_str()
            .unwrap_or_else(|| panic!("errorMessage is not a string: {v}"));
        assert!(m.len() < 512, "errorMessage too long ({} chars)", m.len());
        assert!(
            m.bytes().all(|b| (0x20..=0x7e).contains(&b)),
            "errorMessage has non-printable characters: {m:?}"
        );
    }
}

/// Asserts a 200 with `Content-Type: application/json` and returns the JSON body.
#[track_caller]
pub fn assert_ok(r: &Resp) -> Value {
    assert_eq!(r.status, 200, "expected 200, got {}: {}", r.status, r.text());
    assert!(
        r.content_type().starts_with("application/json"),
        "Content-Type {:?}",
        r.content_type()
    );
    r.json()
}

/// Asserts 400 InvalidStateException (a disabled key or an engaged kill switch).
#[track_caller]
pub fn assert_invalid_state(r: &Resp) {
    assert_error(r, 400, "InvalidStateException");
}
