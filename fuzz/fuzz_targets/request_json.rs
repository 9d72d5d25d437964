//! `request_json`: one request body through the body validation of all four XKS operations
//! (`ops::{health,metadata,encrypt,decrypt}::validate`, which the real handlers run before the
//! key lookup and the token call), under the default limits and under tight ones.
//!
//! Invariants:
//! - nothing panics;
//! - every error is a spec error name that validation may produce (`ValidationException` 400 or
//!   `UnsupportedOperationException` 501), and its wire message is non-empty printable ASCII
//!   of fewer than 512 characters;
//! - every error message is one the proxy may send (`allowed_message`: fixed texts, schema
//!   field and type names, the configured limits, serde_json's structural wording with only
//!   digits free), so no message can carry text from the body (callers may put secrets
//!   anywhere), and the message belongs to the error name it is sent with;
//! - the audit context is filled exactly when the body parsed (`kmsRequestId` recorded);
//! - an independent oracle (spec rules written out again, decoding with the `base64` crate
//!   directly) agrees on accept/reject and on the error name, and accepted values decode to
//!   exactly what the oracle decoded, within the limits; canonical Base64 round-trips.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
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
    for limits in [Limits::default(), tight] {
        check_health(data, &limits);
        check_metadata(data, &limits);
        check_encrypt(data, &limits);
        check_decrypt(data, &limits);
    }
});

/// Checks what every validation error must satisfy, whatever the operation.
fn check_error(e: &Error, limits: &Limits) -> ErrorName {
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
    match allowed_message(&msg, limits) {
        Some(template) => assert_eq!(template, name, "message {msg:?} sent as {name:?}"),
        None => panic!("message {msg:?} is not one the proxy may send (it may echo the body)"),
    }
    name
}

/// Every field name of the wire types: the only names a message may put in backticks.
const FIELDS: &[&str] = &[
    "requestMetadata",
    "kmsRequestId",
    "kmsOperation",
    "awsPrincipalArn",
    "kmsKeyArn",
    "kmsViaService",
    "awsSourceVpc",
    "awsSourceVpce",
    "plaintext",
    "encryptionAlgorithm",
    "additionalAuthenticatedData",
    "ciphertextDataIntegrityValueAlgorithm",
    "ciphertext",
    "initializationVector",
    "authenticationTag",
    "ciphertextMetadata",
];

/// The wire types' Rust names, which serde's "expected struct ..." names.
const STRUCTS: &[&str] = &[
    "RequestMetadata",
    "MetadataOnly",
    "EncryptRequest",
    "DecryptRequest",
];

/// What serde_json reports it found instead of the expected type. Values come only as the
/// placeholder that `xks::strip_quoted` leaves in their place.
const UNEXPECTED: &[&str] = &[
    "string \"...\"",
    "integer `...`",
    "floating point `...`",
    "boolean `...`",
    "null",
    "sequence",
    "map",
];

/// Which error a validation message belongs to, if it is one the proxy may send; `None` for
/// anything else. The allow-list is the messages' whole grammar: fixed texts, field and type
/// names of the wire schema, the configured limits, and serde_json's structural wording, whose
/// only free parts are digits (line, column, element counts). Any text taken from the body
/// (a string, a number, a key that is not a field name) makes it fail, whatever the body holds;
/// searching the message for pieces of the body instead cannot tell an echo from a body that
/// repeats the message's own words.
fn allowed_message(msg: &str, limits: &Limits) -> Option<ErrorName> {
    let fixed = [
        "request body is not a valid JSON object",
        "requestMetadata.awsPrincipalArn is required",
        "requestMetadata.kmsKeyArn is required",
        "encryptionAlgorithm must be AES_GCM",
        "ciphertextDataIntegrityValueAlgorithm must be SHA_256",
        "initializationVector must decode to 12 or 16 bytes",
        "authenticationTag must decode to 16 bytes",
        "ciphertextMetadata must decode to at most 20 bytes",
    ];
    if fixed.contains(&msg) {
        return Some(ErrorName::Validation);
    }
    const BASE64_FIELDS: [&str; 6] = [
        "plaintext",
        "ciphertext",
        "additionalAuthenticatedData",
        "initializationVector",
        "authenticationTag",
        "ciphertextMetadata",
    ];
    if BASE64_FIELDS
        .iter()
        .any(|f| msg == format!("{f} is not valid standard Base64"))
    {
        return Some(ErrorName::Validation);
    }
    let capped = [
        ("plaintext", limits.max_plaintext_bytes),
        ("ciphertext", limits.max_plaintext_bytes),
        ("additionalAuthenticatedData", limits.max_aad_bytes),
    ];
    if capped
        .iter()
        .any(|(f, max)| msg == format!("{f} exceeds this proxy's maximum of {max} bytes"))
    {
        return Some(ErrorName::UnsupportedOperation);
    }
    let mut rest = msg.strip_prefix("invalid request body: ")?;
    serde_message(&mut rest)?;
    lit(&mut rest, " at line ")?;
    digits(&mut rest)?;
    lit(&mut rest, " column ")?;
    digits(&mut rest)?;
    rest.is_empty().then_some(ErrorName::Validation)
}

/// One serde data error about the wire types, as `xks::parse` passes it on.
fn serde_message(s: &mut &str) -> Option<()> {
    if lit(s, "missing field `").is_some() || lit(s, "duplicate field `").is_some() {
        let (name, tail) = s.split_once('`')?;
        *s = tail;
        return FIELDS.contains(&name).then_some(());
    }
    if lit(s, "invalid type: ").is_some() {
        one_of(s, UNEXPECTED)?;
    } else {
        lit(s, "invalid length ")?;
        digits(s)?;
    }
    lit(s, ", expected ")?;
    if lit(s, "a string").is_some() {
        return Some(());
    }
    lit(s, "struct ")?;
    let end = s.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(s.len());
    let name = &s[..end];
    *s = &s[end..];
    if !STRUCTS.contains(&name) {
        return None;
    }
    if lit(s, " with ").is_some() {
        digits(s)?;
        if lit(s, " elements").is_none() {
            lit(s, " element")?;
        }
    }
    Some(())
}

fn lit(s: &mut &str, prefix: &str) -> Option<()> {
    *s = s.strip_prefix(prefix)?;
    Some(())
}

fn digits(s: &mut &str) -> Option<()> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    *s = &s[end..];
    Some(())
}

/// The longest entry of `options` that `s` starts with, consumed.
fn one_of(s: &mut &str, options: &[&str]) -> Option<()> {
    let o = options
        .iter()
        .filter(|o| s.starts_with(*o))
        .max_by_key(|o| o.len())?;
    *s = &s[o.len()..];
    Some(())
}

fn check_ctx(ctx: &RequestContext, parsed_request_id: Option<String>) {
    assert_eq!(
        ctx.kms_request_id, parsed_request_id,
        "audit context must be filled exactly when the body parsed"
    );
}

fn check_health(data: &[u8], limits: &Limits) {
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
            assert_eq!(check_error(&e, limits), ErrorName::Validation);
            assert!(parsed.is_none(), "health rejected a parsable body: {e:?}");
        }
    }
}

fn check_metadata(data: &[u8], limits: &Limits) {
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
            assert_eq!(check_error(&e, limits), ErrorName::Validation);
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

fn check_encrypt(data: &[u8], limits: &Limits) {
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
            let name = check_error(&e, limits);
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

fn check_decrypt(data: &[u8], limits: &Limits) {
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
            let name = check_error(&e, limits);
            assert!(names.contains(&name), "decrypt: {e:?}, oracle expects {names:?}");
        }
        (Ok(_), Err(names)) => panic!("decrypt accepted a body the oracle rejects with {names:?}"),
        (Err(e), Ok(_)) => panic!("decrypt rejected a body the oracle accepts: {e:?}"),
    }
}
