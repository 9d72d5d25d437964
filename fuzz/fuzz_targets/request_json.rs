//! `request_json`: one request body through the body validation of all four XKS operations
//! (`ops::{health,metadata,encrypt,decrypt}::validate`, which the real handlers run before the
//! key lookup and the token call), under the default limits and under tight ones.
//!
//! Invariants:
//! - nothing panics;
//! - every error is a spec error name that validation may produce (`ValidationException` 400 or
//!   `UnsupportedOperationException` 501), and its wire message is non-empty printable ASCII
//!   of fewer than 512 characters;
//! - no error message echoes any 10-character piece of a string, or a long number, taken
//!   from the body (callers may put secrets anywhere);
//! - the audit context is filled exactly when the body parsed (`kmsRequestId` recorded);
//! - an independent oracle (spec rules written out again, decoding with the `base64` crate
//!   directly) agrees on accept/reject and on the error name, and accepted values decode to
//!   exactly what the oracle decoded, within the limits; canonical Base64 round-trips.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use xks_bridge::config::Limits;
use xks_bridge::error::Error;
use xks_bridge::ops::{decrypt, encrypt, health, metadata, RequestContext};
use xks_bridge::xks::{self, DecryptRequest, EncryptRequest, ErrorName, MetadataOnly};

fuzz_target!(|data: &[u8]| {
    let tight = Limits {
        max_plaintext_bytes: 16,
        max_aad_bytes: 8,
        max_body_bytes: 1024,
    };
    let secrets = body_values(data);
    for limits in [Limits::default(), tight] {
        check_health(data, &secrets);
        check_metadata(data, &secrets);
        check_encrypt(data, &limits, &secrets);
        check_decrypt(data, &limits, &secrets);
    }
});

/// Checks what every validation error must satisfy, whatever the operation.
fn check_error(e: &Error, secrets: &[String]) -> ErrorName {
    let name = e.name();
    assert!(
        matches!(name, ErrorName::Validation | ErrorName::UnsupportedOperation),
        "body validation produced {name:?}: {e:?}"
    );
    assert_eq!(e.status(), name.status());
    assert!(matches!(e.status(), 400 | 501));
    let msg = e.wire_message();
    assert!(!msg.is_empty(), "empty message for {e:?}");
    assert!(msg.len() < 512, "message of {} bytes", msg.len());
    assert!(
        msg.bytes().all(|b| (0x20..=0x7e).contains(&b)),
        "non-printable message {msg:?}"
    );
    // A fragment the message would contain anyway (a field name it reports as missing, a
    // phrase of the validation text) is not an echo, even if the body happens to hold it.
    let own = own_vocabulary(&msg);
    for s in secrets {
        assert!(
            !msg.contains(s.as_str()) || own.contains(s.as_str()),
            "message {msg:?} echoes the body value {s:?}"
        );
    }
    name
}

/// The parts of `msg` that come from the proxy, not from the body: everything outside quoted
/// literals that names a field in backticks or is a fixed phrase of the message.
fn own_vocabulary(msg: &str) -> String {
    const FIELDS: &[&str] = &[
        "requestMetadata", "kmsRequestId", "kmsOperation", "awsPrincipalArn", "kmsKeyArn",
        "kmsViaService", "awsSourceVpc", "awsSourceVpce", "plaintext", "encryptionAlgorithm",
        "additionalAuthenticatedData", "ciphertextDataIntegrityValueAlgorithm", "ciphertext",
        "initializationVector", "authenticationTag", "ciphertextMetadata",
    ];
    let mut own = String::new();
    for f in FIELDS {
        let quoted = format!("`{f}`");
        if msg.contains(&quoted) {
            own.push_str(&quoted);
            own.push('\n');
        }
    }
    own
}

fn check_ctx(ctx: &RequestContext, parsed_request_id: Option<String>) {
    assert_eq!(
        ctx.kms_request_id, parsed_request_id,
        "audit context must be filled exactly when the body parsed"
    );
}

fn check_health(data: &[u8], secrets: &[String]) {
    let mut ctx = RequestContext::default();
    let got = health::validate(data, &mut ctx);
    let parsed = xks::parse::<MetadataOnly>(data).ok();
    check_ctx(
        &ctx,
        parsed
            .as_ref()
            .map(|p| p.request_metadata.kms_request_id.to_string()),
    );
    match got {
        Ok(()) => assert!(parsed.is_some()),
        Err(e) => {
            assert_eq!(check_error(&e, secrets), ErrorName::Validation);
            assert!(parsed.is_none(), "health rejected a parsable body: {e:?}");
        }
    }
}

fn check_metadata(data: &[u8], secrets: &[String]) {
    let mut ctx = RequestContext::default();
    let got = metadata::validate(data, &mut ctx);
    let parsed = xks::parse::<MetadataOnly>(data).ok();
    check_ctx(
        &ctx,
        parsed
            .as_ref()
            .map(|p| p.request_metadata.kms_request_id.to_string()),
    );
    let want = parsed
        .as_ref()
        .is_some_and(|p| p.request_metadata.aws_principal_arn.is_some());
    match got {
        Ok(()) => assert!(want, "metadata accepted a body without awsPrincipalArn"),
        Err(e) => {
            assert_eq!(check_error(&e, secrets), ErrorName::Validation);
            assert!(!want, "metadata rejected a valid body: {e:?}");
        }
    }
}

/// The oracle's view of one capped Base64 field.
enum Field {
    Ok(Vec<u8>),
    Invalid,
    TooLarge,
    /// Not canonical Base64 and so long that even its shortest decoding would exceed the cap:
    /// 400 and 501 are both acceptable answers.
    InvalidAndTooLong,
}

fn capped(value: &str, max: usize) -> Field {
    match STANDARD.decode(value) {
        Ok(b) if b.len() <= max => {
            assert_eq!(STANDARD.encode(&b), value, "accepted Base64 must be canonical");
            Field::Ok(b)
        }
        Ok(_) => Field::TooLarge,
        Err(_) if value.len() / 4 * 3 > max + 2 => Field::InvalidAndTooLong,
        Err(_) => Field::Invalid,
    }
}

/// What the oracle expects of one step: go on with a value, or one of these error names.
type Step<T> = Result<T, &'static [ErrorName]>;

const VALIDATION: &[ErrorName] = &[ErrorName::Validation];
const TOO_LARGE: &[ErrorName] = &[ErrorName::UnsupportedOperation];
const EITHER: &[ErrorName] = &[ErrorName::Validation, ErrorName::UnsupportedOperation];

fn step(f: Field) -> Step<Vec<u8>> {
    match f {
        Field::Ok(b) => Ok(b),
        Field::Invalid => Err(VALIDATION),
        Field::TooLarge => Err(TOO_LARGE),
        Field::InvalidAndTooLong => Err(EITHER),
    }
}

fn plain(value: &str) -> Step<Vec<u8>> {
    STANDARD.decode(value).map_err(|_| VALIDATION)
}

fn expect_encrypt(data: &[u8], limits: &Limits) -> Step<encrypt::ValidEncrypt> {
    let req: EncryptRequest = xks::parse(data).map_err(|_| VALIDATION)?;
    let md = &req.request_metadata;
    if md.aws_principal_arn.is_none() || md.kms_key_arn.is_none() || req.encryption_algorithm != "AES_GCM" {
        return Err(VALIDATION);
    }
    let with_cdiv = match req.ciphertext_data_integrity_value_algorithm.as_deref() {
        None => false,
        Some("SHA_256") => true,
        Some(_) => return Err(VALIDATION),
    };
    let plaintext = step(capped(&req.plaintext, limits.max_plaintext_bytes))?;
    let aad = match &req.additional_authenticated_data {
        Some(a) => step(capped(a, limits.max_aad_bytes))?,
        None => Vec::new(),
    };
    Ok(encrypt::ValidEncrypt {
        plaintext: plaintext.into(),
        aad,
        with_cdiv,
    })
}

fn check_encrypt(data: &[u8], limits: &Limits, secrets: &[String]) {
    let mut ctx = RequestContext::default();
    let got = encrypt::validate(data, limits, &mut ctx);
    let parsed = xks::parse::<EncryptRequest>(data).ok();
    check_ctx(
        &ctx,
        parsed
            .as_ref()
            .map(|p| p.request_metadata.kms_request_id.to_string()),
    );
    match (got, expect_encrypt(data, limits)) {
        (Ok(v), Ok(w)) => {
            assert_eq!(*v.plaintext, *w.plaintext);
            assert_eq!(v.aad, w.aad);
            assert_eq!(v.with_cdiv, w.with_cdiv);
            assert!(v.plaintext.len() <= limits.max_plaintext_bytes);
            assert!(v.aad.len() <= limits.max_aad_bytes);
        }
        (Err(e), Err(names)) => {
            let name = check_error(&e, secrets);
            assert!(names.contains(&name), "encrypt: {e:?}, oracle expects {names:?}");
        }
        (Ok(_), Err(names)) => panic!("encrypt accepted a body the oracle rejects with {names:?}"),
        (Err(e), Ok(_)) => panic!("encrypt rejected a body the oracle accepts: {e:?}"),
    }
}

fn expect_decrypt(data: &[u8], limits: &Limits) -> Step<decrypt::ValidDecrypt> {
    let req: DecryptRequest = xks::parse(data).map_err(|_| VALIDATION)?;
    let md = &req.request_metadata;
    if md.aws_principal_arn.is_none() || md.kms_key_arn.is_none() || req.encryption_algorithm != "AES_GCM" {
        return Err(VALIDATION);
    }
    let ciphertext = step(capped(&req.ciphertext, limits.max_plaintext_bytes))?;
    let iv = plain(&req.initialization_vector)?;
    if iv.len() != 12 && iv.len() != 16 {
        return Err(VALIDATION);
    }
    let tag = plain(&req.authentication_tag)?;
    if tag.len() != 16 {
        return Err(VALIDATION);
    }
    let aad = match &req.additional_authenticated_data {
        Some(a) => step(capped(a, limits.max_aad_bytes))?,
        None => Vec::new(),
    };
    let metadata = match &req.ciphertext_metadata {
        Some(m) => plain(m)?,
        None => Vec::new(),
    };
    if metadata.len() > 20 {
        return Err(VALIDATION);
    }
    Ok(decrypt::ValidDecrypt {
        ciphertext,
        iv,
        tag,
        aad,
        metadata,
    })
}

fn check_decrypt(data: &[u8], limits: &Limits, secrets: &[String]) {
    let mut ctx = RequestContext::default();
    let got = decrypt::validate(data, limits, &mut ctx);
    let parsed = xks::parse::<DecryptRequest>(data).ok();
    check_ctx(
        &ctx,
        parsed
            .as_ref()
            .map(|p| p.request_metadata.kms_request_id.to_string()),
    );
    match (got, expect_decrypt(data, limits)) {
        (Ok(v), Ok(w)) => {
            assert_eq!(v.ciphertext, w.ciphertext);
            assert_eq!(v.iv, w.iv);
            assert_eq!(v.tag, w.tag);
            assert_eq!(v.aad, w.aad);
            assert_eq!(v.metadata, w.metadata);
            assert!(v.ciphertext.len() <= limits.max_plaintext_bytes);
            assert!(v.aad.len() <= limits.max_aad_bytes);
        }
        (Err(e), Err(names)) => {
            let name = check_error(&e, secrets);
            assert!(names.contains(&name), "decrypt: {e:?}, oracle expects {names:?}");
        }
        (Ok(_), Err(names)) => panic!("decrypt accepted a body the oracle rejects with {names:?}"),
        (Err(e), Ok(_)) => panic!("decrypt rejected a body the oracle accepts: {e:?}"),
    }
}

/// Text that validation messages legitimately contain: field and type names from the wire
/// types and serde's own wording. A body value that happens to be a piece of it is not a leak.
const VOCABULARY: &str = "requestMetadata kmsRequestId kmsOperation awsPrincipalArn kmsKeyArn \
    kmsViaService awsSourceVpc awsSourceVpce plaintext encryptionAlgorithm \
    additionalAuthenticatedData ciphertextDataIntegrityValueAlgorithm ciphertext \
    initializationVector authenticationTag ciphertextMetadata RequestMetadata MetadataOnly \
    EncryptRequest DecryptRequest struct with 1 element with 2 elements with 3 elements \
    with 4 elements with 5 elements with 6 elements with 7 elements \
    invalid request body: invalid type: expected a borrowed string, expected a string \
    missing field duplicate field invalid length unknown field at line column \
    is not valid standard Base64 must be AES_GCM must be SHA_256 is required \
    exceeds this proxy's maximum of bytes must decode to 12 or 16 bytes at most 20 bytes \
    request body is not a valid JSON object integer floating point boolean sequence map \
    unit value null";

/// Pieces of body values that must never reach a message: every 10-character window of a
/// string value's printable runs (split at `"` and `\\`, which Debug-escaping changes), unless
/// it is part of [`VOCABULARY`], and numbers of 8 characters or more. Object keys are excluded:
/// they are field names, which messages may name.
fn body_values(data: &[u8]) -> Vec<String> {
    const W: usize = 10;
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => {
                for run in s.split(|c: char| !(' '..='~').contains(&c) || c == '"' || c == '\\') {
                    for i in 0..(run.len() + 1).saturating_sub(W) {
                        let w = &run[i..i + W];
                        if !VOCABULARY.contains(w) && !out.iter().any(|o| o == w) {
                            out.push(w.to_owned());
                        }
                    }
                }
            }
            Value::Number(n) => {
                let t = n.to_string();
                if t.len() >= 8 {
                    out.push(t);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            Value::Bool(_) | Value::Null => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        walk(&v, &mut out);
    }
    out
}
