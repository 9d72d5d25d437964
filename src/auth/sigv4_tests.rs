use super::*;
use http::HeaderValue;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

/// Signature of one of AWS's published SigV4 test-suite requests (service `service`).
fn vector_signature(headers: &[(&str, &str)], body: &[u8]) -> String {
    let names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
    let signed = names.join(";");
    let creq = canonical_request("POST", "/", headers.iter().copied(), &signed, body);
    let sts = string_to_sign(
        "20150830T123600Z",
        "20150830/us-east-1/service/aws4_request",
        &creq,
    );
    let key = derive_signing_key_for(SECRET, "20150830", "us-east-1", "service");
    hex::encode(hmac(&key[..], sts.as_bytes()))
}

#[test]
fn matches_aws_test_suite_post_vanilla() {
    let sig = vector_signature(
        &[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ],
        b"",
    );
    assert_eq!(
        sig,
        "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
    );
}

#[test]
fn matches_aws_test_suite_post_header_key_sort() {
    let sig = vector_signature(
        &[
            ("host", "example.amazonaws.com"),
            ("my-header1", "value1"),
            ("x-amz-date", "20150830T123600Z"),
        ],
        b"",
    );
    assert_eq!(
        sig,
        "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"
    );
}

#[test]
fn matches_aws_test_suite_post_x_www_form_urlencoded_with_body() {
    let body = b"Param1=value1";
    let sig = vector_signature(
        &[
            ("content-length", "13"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("host", "example.amazonaws.com"),
            (
                "x-amz-content-sha256",
                "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
            ),
            ("x-amz-date", "20150830T123600Z"),
        ],
        body,
    );
    assert_eq!(
        sig,
        "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b"
    );
}

const XKS_AKID: &str = "ABCDEFGHIJKLMNOPQRST";
const PATH: &str = "/p/kms/xks/v1/health";
const BODY: &[u8] = br#"{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"KmsHealthCheck"}}"#;

fn set() -> CredentialSet {
    CredentialSet::new(
        vec![Credential::new(XKS_AKID.into(), SECRET.to_owned().into())],
        vec![],
    )
}

fn signed_headers(now: SystemTime, akid: &str, secret: &str) -> HeaderMap {
    let s = sign(
        PATH,
        "localhost",
        "application/json",
        BODY,
        akid,
        secret,
        "us-east-1",
        now,
    );
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("localhost"));
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("x-amz-date", HeaderValue::from_str(&s.amz_date).unwrap());
    h.insert("authorization", HeaderValue::from_str(&s.authorization).unwrap());
    h
}

#[test]
fn signed_request_verifies_and_names_its_key() {
    let now = SystemTime::now();
    let v = set()
        .verify("POST", PATH, &signed_headers(now, XKS_AKID, SECRET), BODY, now)
        .unwrap();
    assert_eq!(v.access_key_id, XKS_AKID);
    assert_eq!(v.region, "us-east-1");
}

#[test]
fn any_change_breaks_the_signature() {
    let now = SystemTime::now();
    let h = signed_headers(now, XKS_AKID, SECRET);
    let s = set();
    assert_eq!(
        s.verify("POST", PATH, &h, b"{}", now),
        Err(AuthError::SignatureMismatch)
    );
    assert_eq!(
        s.verify("POST", "/q/kms/xks/v1/health", &h, BODY, now),
        Err(AuthError::SignatureMismatch)
    );
    let mut h2 = h.clone();
    h2.insert("host", HeaderValue::from_static("evil"));
    assert_eq!(
        s.verify("POST", PATH, &h2, BODY, now),
        Err(AuthError::SignatureMismatch)
    );
    let wrong = signed_headers(now, XKS_AKID, "another-secret-another-secret-another-secret");
    assert_eq!(
        s.verify("POST", PATH, &wrong, BODY, now),
        Err(AuthError::SignatureMismatch)
    );
}

#[test]
fn clock_skew_beyond_five_minutes_is_refused_both_ways() {
    let now = SystemTime::now();
    let s = set();
    for offset in [-360i64, 360] {
        let t = if offset < 0 {
            now - Duration::from_secs(360)
        } else {
            now + Duration::from_secs(360)
        };
        assert_eq!(
            s.verify("POST", PATH, &signed_headers(t, XKS_AKID, SECRET), BODY, now),
            Err(AuthError::ClockSkew)
        );
    }
    let t = now - Duration::from_secs(240);
    assert!(s
        .verify("POST", PATH, &signed_headers(t, XKS_AKID, SECRET), BODY, now)
        .is_ok());
}

#[test]
fn unknown_key_missing_header_and_wrong_service_are_refused() {
    let now = SystemTime::now();
    let s = set();
    let h = signed_headers(now, "INVALIDABCDEFGHIJKLMNOPQRST", SECRET);
    assert_eq!(
        s.verify("POST", PATH, &h, BODY, now),
        Err(AuthError::UnknownAccessKey)
    );
    let mut h = signed_headers(now, XKS_AKID, SECRET);
    h.remove("authorization");
    assert_eq!(
        s.verify("POST", PATH, &h, BODY, now),
        Err(AuthError::MissingHeader)
    );
    let mut h = signed_headers(now, XKS_AKID, SECRET);
    let auth = h["authorization"]
        .to_str()
        .unwrap()
        .replace("/kms-xks-proxy/", "/kms/");
    h.insert("authorization", HeaderValue::from_str(&auth).unwrap());
    assert_eq!(
        s.verify("POST", PATH, &h, BODY, now),
        Err(AuthError::WrongService)
    );
}

#[test]
fn repeated_authorization_or_date_is_refused_as_duplicate() {
    let now = SystemTime::now();
    for name in ["authorization", "x-amz-date"] {
        let mut h = signed_headers(now, XKS_AKID, SECRET);
        let copy = h[name].clone();
        h.append(name, copy);
        assert_eq!(
            set().verify("POST", PATH, &h, BODY, now),
            Err(AuthError::DuplicateHeader),
            "{name}"
        );
    }
}

#[test]
fn host_and_date_must_be_signed_and_lists_must_be_canonical() {
    let now = SystemTime::now();
    let s = set();
    for (from, to) in [
        ("content-type;host;x-amz-date", "content-type;x-amz-date"),
        ("content-type;host;x-amz-date", "host;content-type;x-amz-date"),
    ] {
        let mut h = signed_headers(now, XKS_AKID, SECRET);
        let auth = h["authorization"].to_str().unwrap().replace(from, to);
        h.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        assert!(s.verify("POST", PATH, &h, BODY, now).is_err());
    }
}

#[test]
fn region_allow_list_is_enforced_when_configured() {
    let now = SystemTime::now();
    let s = CredentialSet::new(
        vec![Credential::new(XKS_AKID.into(), SECRET.to_owned().into())],
        vec!["eu-west-1".into()],
    );
    assert_eq!(
        s.verify("POST", PATH, &signed_headers(now, XKS_AKID, SECRET), BODY, now),
        Err(AuthError::RegionNotAllowed)
    );
}

#[test]
fn malformed_authorization_headers_are_refused_without_panicking() {
    let now = SystemTime::now();
    let s = set();
    for bad in ["", "AWS4-HMAC-SHA256", "AWS4-HMAC-SHA256 Credential=a", "Basic abc",
        "AWS4-HMAC-SHA256 Credential=A/B/C/D/E/F, SignedHeaders=host;x-amz-date, Signature=00",
        "AWS4-HMAC-SHA256 Credential=ABCDEFGHIJKLMNOPQRST/20200101/r/kms-xks-proxy/aws4_request, SignedHeaders=host;x-amz-date, Signature=zz"] {
        let mut h = signed_headers(now, XKS_AKID, SECRET);
        h.insert("authorization", HeaderValue::from_str(bad).unwrap());
        assert!(s.verify("POST", PATH, &h, BODY, now).is_err(), "{bad}");
    }
}

/// Found by `fuzz/fuzz_targets/sigv4_header.rs`: `sign` used header values verbatim while
/// `verify` canonicalises them (trim, collapse runs of spaces), so a value with a run of
/// spaces signed by this crate failed its own verification.
#[test]
fn sign_canonicalises_header_values_like_verify() {
    let now = SystemTime::now();
    let (host, content_type) = ("xks.example.com:8443  a   b", "application/json;   charset=utf-8");
    let s = sign(PATH, host, content_type, BODY, XKS_AKID, SECRET, "us-east-1", now);
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static(host));
    h.insert("content-type", HeaderValue::from_static(content_type));
    h.insert("x-amz-date", HeaderValue::from_str(&s.amz_date).unwrap());
    h.insert("authorization", HeaderValue::from_str(&s.authorization).unwrap());
    let v = set()
        .verify("POST", PATH, &h, BODY, now)
        .expect("own signature verifies");
    assert_eq!(v.access_key_id, XKS_AKID);
}
