//! XKS wire types: request and response bodies, error names and their HTTP statuses.
//!
//! Requests borrow from the body buffer (`Cow<str>` only allocates when a string holds JSON
//! escapes). Unknown fields are tolerated everywhere, as the spec requires: KMS may add fields.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The error names the spec defines, each with its fixed HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorName {
    /// 400: one or more inputs invalid.
    Validation,
    /// 400: key, keystore or proxy disabled.
    InvalidState,
    /// 400: GCM authentication failed.
    InvalidCiphertext,
    /// 400: the key does not permit the operation.
    InvalidKeyUsage,
    /// 401: SigV4 verification failed.
    AuthenticationFailed,
    /// 403: secondary authorization denied the request.
    AccessDenied,
    /// 404: unknown external key id.
    KeyNotFound,
    /// 404: the path is not an XKS API path of this proxy.
    InvalidUriPath,
    /// 429: quota or overload.
    Throttling,
    /// 500: generic failure, e.g. the HSM failed.
    Internal,
    /// 501: operation not implemented or a value above this proxy's maximum.
    UnsupportedOperation,
    /// 503: timed out waiting for the HSM.
    DependencyTimeout,
}

impl ErrorName {
    /// The `errorName` string on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorName::Validation => "ValidationException",
            ErrorName::InvalidState => "InvalidStateException",
            ErrorName::InvalidCiphertext => "InvalidCiphertextException",
            ErrorName::InvalidKeyUsage => "InvalidKeyUsageException",
            ErrorName::AuthenticationFailed => "AuthenticationFailedException",
            ErrorName::AccessDenied => "AccessDeniedException",
            ErrorName::KeyNotFound => "KeyNotFoundException",
            ErrorName::InvalidUriPath => "InvalidUriPathException",
            ErrorName::Throttling => "ThrottlingException",
            ErrorName::Internal => "InternalException",
            ErrorName::UnsupportedOperation => "UnsupportedOperationException",
            ErrorName::DependencyTimeout => "DependencyTimeoutException",
        }
    }

    /// The HTTP status the spec assigns to this error name.
    pub fn status(self) -> u16 {
        match self {
            ErrorName::Validation
            | ErrorName::InvalidState
            | ErrorName::InvalidCiphertext
            | ErrorName::InvalidKeyUsage => 400,
            ErrorName::AuthenticationFailed => 401,
            ErrorName::AccessDenied => 403,
            ErrorName::KeyNotFound | ErrorName::InvalidUriPath => 404,
            ErrorName::Throttling => 429,
            ErrorName::Internal => 500,
            ErrorName::UnsupportedOperation => 501,
            ErrorName::DependencyTimeout => 503,
        }
    }
}

/// `requestMetadata`: audit context sent by KMS. Values are opaque strings; none is parsed.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMetadata<'a> {
    /// KMS request id, logged to match CloudTrail. Not validated (opaque).
    #[serde(borrow)]
    pub kms_request_id: Cow<'a, str>,
    /// The KMS API that caused this call. Unknown values are accepted.
    #[serde(borrow)]
    pub kms_operation: Cow<'a, str>,
    /// Caller of the KMS API: an ARN, a service principal or `AWS Internal`.
    #[serde(borrow, default)]
    pub aws_principal_arn: Option<Cow<'a, str>>,
    /// ARN of the KMS key (Encrypt/Decrypt).
    #[serde(borrow, default)]
    pub kms_key_arn: Option<Cow<'a, str>>,
    /// AWS service calling KMS on the principal's behalf.
    #[serde(borrow, default)]
    pub kms_via_service: Option<Cow<'a, str>>,
    /// VPC the KMS call came from.
    #[serde(borrow, default)]
    pub aws_source_vpc: Option<Cow<'a, str>>,
    /// VPC endpoint the KMS call came through.
    #[serde(borrow, default)]
    pub aws_source_vpce: Option<Cow<'a, str>>,
}

/// Body of GetKeyMetadata and GetHealthStatus.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataOnly<'a> {
    /// Audit context.
    #[serde(borrow)]
    pub request_metadata: RequestMetadata<'a>,
}

/// Body of Encrypt.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptRequest<'a> {
    /// Audit context.
    #[serde(borrow)]
    pub request_metadata: RequestMetadata<'a>,
    /// Base64 plaintext. Never logged.
    #[serde(borrow)]
    pub plaintext: Cow<'a, str>,
    /// Must be `AES_GCM`.
    #[serde(borrow)]
    pub encryption_algorithm: Cow<'a, str>,
    /// Base64 AAD.
    #[serde(borrow, default)]
    pub additional_authenticated_data: Option<Cow<'a, str>>,
    /// If present, must be `SHA_256`.
    #[serde(borrow, default)]
    pub ciphertext_data_integrity_value_algorithm: Option<Cow<'a, str>>,
}

/// Body of Decrypt.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecryptRequest<'a> {
    /// Audit context.
    #[serde(borrow)]
    pub request_metadata: RequestMetadata<'a>,
    /// Base64 ciphertext (without the tag).
    #[serde(borrow)]
    pub ciphertext: Cow<'a, str>,
    /// Must be `AES_GCM`.
    #[serde(borrow)]
    pub encryption_algorithm: Cow<'a, str>,
    /// Base64 IV, 12 or 16 bytes.
    #[serde(borrow)]
    pub initialization_vector: Cow<'a, str>,
    /// Base64 tag, 16 bytes.
    #[serde(borrow)]
    pub authentication_tag: Cow<'a, str>,
    /// Base64 AAD.
    #[serde(borrow, default)]
    pub additional_authenticated_data: Option<Cow<'a, str>>,
    /// Base64 metadata returned by Encrypt.
    #[serde(borrow, default)]
    pub ciphertext_metadata: Option<Cow<'a, str>>,
}

/// GetKeyMetadata response.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyMetadataResponse {
    /// e.g. `AES_256`.
    pub key_spec: String,
    /// e.g. `["ENCRYPT","DECRYPT"]`, at most 10 entries.
    pub key_usage: Vec<&'static str>,
    /// `ENABLED` or `DISABLED`.
    pub key_status: &'static str,
}

/// Encrypt response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptResponse {
    /// Base64 ciphertext, same length as the plaintext.
    pub ciphertext: String,
    /// Base64 12-byte IV from the token.
    pub initialization_vector: String,
    /// Base64 16-byte tag.
    pub authentication_tag: String,
    /// Base64 format byte + key version, bound into the AAD.
    pub ciphertext_metadata: String,
    /// Base64 SHA-256 integrity value, only when requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ciphertext_data_integrity_value: Option<String>,
}

/// Decrypt response.
#[derive(Serialize)]
pub struct DecryptResponse {
    /// Base64 plaintext. Never logged (and so this type has no `Debug`).
    pub plaintext: zeroize::Zeroizing<String>,
}

/// GetHealthStatus response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthResponse {
    /// Number of proxy instances behind the endpoint (configured).
    pub xks_proxy_fleet_size: u32,
    /// Vendor of the proxy.
    pub xks_proxy_vendor: &'static str,
    /// Product name and version.
    pub xks_proxy_model: String,
    /// Vendor of the HSM, from the token's manufacturer id.
    pub ekm_vendor: String,
    /// One entry per token serving this keystore.
    pub ekm_fleet_details: Vec<EkmDetail>,
}

/// One HSM in the health response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EkmDetail {
    /// Unique id within the fleet (the configured token name).
    pub id: String,
    /// Model, hardware and firmware versions.
    pub model: String,
    /// `ACTIVE`, `DEGRADED` or `UNAVAILABLE`.
    pub health_status: &'static str,
}

/// The JSON error body.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody<'a> {
    /// Spec error name.
    pub error_name: &'static str,
    /// Printable ASCII, under 512 characters.
    pub error_message: &'a str,
}

/// Why a request body was refused; the text is the `errorMessage` of a ValidationException.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// JSON of the wrong shape; carries serde's diagnostic with every quoted value removed.
    #[error("invalid request body: {0}")]
    Invalid(String),
    /// Not JSON at all, or not an object.
    #[error("request body is not a valid JSON object")]
    NotJson,
}

/// Parses a request body, turning serde's diagnostics into a validation message that names the
/// problem but never echoes a value from the body (a caller might have put secrets anywhere).
pub fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, BodyError> {
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => BodyError::Invalid(strip_quoted(&e.to_string())),
            _ => BodyError::NotJson,
        }
    })
}

/// Removes the values a serde message quotes: the contents of double-quoted strings (which
/// serde writes Debug-escaped, so an escaped quote does not end them) and of backticked
/// numbers, booleans and variants. A backticked name right after "field" is kept: field names
/// come from our types ("missing field", "duplicate field").
fn strip_quoted(msg: &str) -> String {
    #[derive(Clone, Copy)]
    enum At {
        Text,
        Str { escaped: bool },
        Tick,
        FieldName,
    }
    let mut out = String::with_capacity(msg.len());
    let mut at = At::Text;
    for c in msg.chars() {
        at = match (at, c) {
            (At::Text, '"') => {
                out.push_str("\"...");
                At::Str { escaped: false }
            }
            (At::Text, '`') => {
                out.push('`');
                if out.ends_with("field `") {
                    At::FieldName
                } else {
                    out.push_str("...");
                    At::Tick
                }
            }
            (At::Str { escaped: false }, '"') | (At::Tick, '`') | (At::FieldName, '`') => {
                out.push(c);
                At::Text
            }
            (At::Str { escaped }, _) => At::Str {
                escaped: !escaped && c == '\\',
            },
            (At::Text, _) | (At::FieldName, _) => {
                out.push(c);
                at
            }
            (At::Tick, _) => at,
        };
    }
    sanitize(&out)
}

/// The four XKS operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// GetKeyMetadata
    Metadata,
    /// Encrypt
    Encrypt,
    /// Decrypt
    Decrypt,
    /// GetHealthStatus
    Health,
}

impl Operation {
    /// Spec name of the operation, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Metadata => "GetKeyMetadata",
            Operation::Encrypt => "Encrypt",
            Operation::Decrypt => "Decrypt",
            Operation::Health => "GetHealthStatus",
        }
    }
}

/// Is `id` a syntactically valid external key id (1-128 of `A-Za-z0-9-._`)?
pub fn valid_key_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Is `id` a valid SigV4 access key id for XKS (20-30 characters of `A-Z2-7`)?
pub fn valid_access_key_id(id: &str) -> bool {
    (20..=30).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// Keeps an error message within the spec's rules: printable ASCII, under 512 characters.
pub fn sanitize(msg: &str) -> String {
    msg.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(511)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_tolerated() {
        let body = br#"{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"FutureOp","futureField":1},"extra":[1]}"#;
        let r: MetadataOnly = parse(body).unwrap();
        assert_eq!(r.request_metadata.kms_operation, "FutureOp");
    }

    #[test]
    fn missing_fields_are_named_and_values_are_never_echoed() {
        let e = parse::<MetadataOnly>(br#"{}"#).unwrap_err().to_string();
        assert!(e.contains("requestMetadata"), "{e}");
        let e = parse::<EncryptRequest>(
            br#"{"requestMetadata":"SECRET-VALUE","plaintext":"x","encryptionAlgorithm":"AES_GCM"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("SECRET-VALUE"), "{e}");
        assert_eq!(
            parse::<MetadataOnly>(b"not json").unwrap_err().to_string(),
            "request body is not a valid JSON object"
        );
    }

    /// Found by `fuzz/fuzz_targets/request_json.rs`: numbers were echoed in backticks, and an
    /// escaped quote ended the stripped region early, echoing the rest of the string.
    #[test]
    fn numbers_and_strings_with_escaped_quotes_are_never_echoed() {
        let e = parse::<MetadataOnly>(br#"{"requestMetadata":4111111111111111}"#)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("4111111111111111"), "{e}");
        let e = parse::<MetadataOnly>(br#"777777777777777777777777777777777"#)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("777777"), "{e}");
        let e = parse::<EncryptRequest>(br#"{"requestMetadata":"ab"SECRETSECRET"}"#)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("SECRET"), "{e}");
        assert!(e.contains("expected struct RequestMetadata"), "{e}");
        let e = parse::<EncryptRequest>(br#"{"requestMetadata":true,"plaintext":"\\"}"#)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("true"), "{e}");
        let e = parse::<MetadataOnly>(br#"{"requestMetadata":{"kmsRequestId":"a","kmsRequestId":"b"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate field `kmsRequestId`"), "{e}");
    }

    #[test]
    fn statuses_follow_the_spec_table() {
        assert_eq!(ErrorName::Validation.status(), 400);
        assert_eq!(ErrorName::AccessDenied.status(), 403);
        assert_eq!(ErrorName::DependencyTimeout.status(), 503);
    }
}
