//! The request error enum and the ONE mapping from it to an XKS error name and HTTP status.
//!
//! Lower layers keep their own typed errors ([`crate::auth::AuthError`],
//! [`crate::hsm::HsmError`]); this module is the only place that decides what the wire says about
//! them. Wire messages are short, printable ASCII and carry no internals: details (reasons for an
//! authentication failure, PKCS#11 return values) go to the log instead.

use crate::auth::AuthError;
use crate::hsm::HsmError;
pub use crate::xks::sanitize;
use crate::xks::ErrorName;

/// Everything that can end a request without a success response.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed body, missing or mistyped field, bad Base64, wrong IV/tag length, unknown
    /// algorithm name.
    #[error("{0}")]
    Validation(String),
    /// A value within the spec but above this proxy's configured maximum.
    #[error("{0}")]
    TooLarge(String),
    /// A non-POST method on an API URI. The spec defines no error name for it.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Unknown prefix, version or operation.
    #[error("invalid URI path")]
    InvalidUriPath,
    /// SigV4 verification failed; the reason is logged, never sent.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The key id is not served by this keystore (not on the token, or outside its allow-list).
    #[error("key not found")]
    KeyNotFound,
    /// Secondary authorization denied the request; the deciding rule is named.
    #[error("denied by policy rule {0}")]
    AccessDenied(String),
    /// Kill switch engaged for the proxy, the keystore or the key.
    #[error("{0}")]
    InvalidState(String),
    /// The request was refused because of the per-keystore quota.
    #[error("request rate above the keystore quota")]
    Throttled,
    /// Anything the token said.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// A failure of the proxy itself.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The single mapping from an error to its XKS error name (and so its HTTP status).
    pub fn name(&self) -> ErrorName {
        match self {
            Error::Validation(_) => ErrorName::Validation,
            Error::TooLarge(_) | Error::MethodNotAllowed => ErrorName::UnsupportedOperation,
            Error::InvalidUriPath => ErrorName::InvalidUriPath,
            Error::Auth(_) => ErrorName::AuthenticationFailed,
            Error::KeyNotFound => ErrorName::KeyNotFound,
            Error::InvalidState(_) => ErrorName::InvalidState,
            Error::AccessDenied(_) => ErrorName::AccessDenied,
            Error::Throttled => ErrorName::Throttling,
            Error::Internal(_) => ErrorName::Internal,
            Error::Hsm(e) => match e {
                HsmError::KeyNotFound => ErrorName::KeyNotFound,
                HsmError::KeyUsage(_) | HsmError::WeakKey(_) => ErrorName::InvalidKeyUsage,
                HsmError::KeyDisabled | HsmError::GateClosed => ErrorName::InvalidState,
                HsmError::InvalidCiphertext | HsmError::UnknownVersion(_) => ErrorName::InvalidCiphertext,
                HsmError::VersionRetired(_) | HsmError::VersionExhausted { rotating: false, .. } => {
                    ErrorName::InvalidState
                }
                HsmError::VersionExhausted { rotating: true, .. } => ErrorName::Throttling,
                HsmError::Busy => ErrorName::Throttling,
                HsmError::Timeout => ErrorName::DependencyTimeout,
                HsmError::Disconnected => ErrorName::InvalidState,
                HsmError::AmbiguousKey(_)
                | HsmError::Unavailable(_)
                | HsmError::LoginRefused(_)
                | HsmError::Device { .. }
                | HsmError::KeyExists(_)
                | HsmError::StaleHandle
                | HsmError::Refused(_)
                | HsmError::CounterRefused(_)
                | HsmError::Internal(_) => ErrorName::Internal,
            },
        }
    }

    /// HTTP status of this error: 405 for a wrong method, otherwise the error name's status.
    pub fn status(&self) -> u16 {
        match self {
            Error::MethodNotAllowed => 405,
            other => other.name().status(),
        }
    }

    /// The `errorMessage` sent on the wire: fixed texts for anything that could reveal internals,
    /// the validation text (which only names fields and limits) otherwise.
    pub fn wire_message(&self) -> String {
        let text: &str = match self {
            Error::Auth(_) => "request signature could not be verified",
            Error::MethodNotAllowed => "only POST is allowed on XKS API URIs",
            Error::Hsm(HsmError::KeyUsage(_)) => "the key does not permit this operation",
            Error::Hsm(HsmError::WeakKey(_)) => {
                "the key is extractable, not sensitive or not private; it is not used as an external key"
            }
            Error::Hsm(HsmError::KeyDisabled) => "the external key is disabled",
            Error::Hsm(HsmError::GateClosed) => "the kill switch is engaged",
            Error::Hsm(HsmError::InvalidCiphertext) => {
                "ciphertext, IV, tag, AAD or ciphertext metadata failed authentication"
            }
            Error::Hsm(HsmError::UnknownVersion(_)) => {
                "the ciphertext metadata names a key version that does not exist (never created, or destroyed)"
            }
            Error::Hsm(HsmError::VersionRetired(_)) => {
                "the key version this ciphertext was made with is retired; an operator must unretire it to decrypt"
            }
            Error::Hsm(HsmError::VersionExhausted { rotating: true, .. }) => {
                "the key version reached its encryption budget and a new version is being created; retry shortly"
            }
            Error::Hsm(HsmError::VersionExhausted { rotating: false, .. }) => {
                "the key version reached its encryption budget and no new version could be created"
            }
            Error::Hsm(HsmError::CounterRefused(_)) => {
                "the HSM refused to record the encryption count; Encrypt is refused so that the key's encryption budget cannot be passed uncounted"
            }
            Error::Hsm(HsmError::Busy) => "the HSM worker queue is full; retry later",
            Error::Hsm(HsmError::Timeout) => "the HSM did not answer within the deadline",
            Error::Hsm(HsmError::Disconnected) => "the proxy kill switch is engaged",
            Error::Hsm(HsmError::AmbiguousKey(_)) => "the key id matches more than one key",
            Error::Hsm(HsmError::Unavailable(_) | HsmError::LoginRefused(_)) => "the HSM is unavailable",
            Error::Hsm(HsmError::Device { .. })
            | Error::Hsm(HsmError::Internal(_))
            | Error::Hsm(HsmError::KeyExists(_))
            | Error::Hsm(HsmError::StaleHandle)
            | Error::Hsm(HsmError::Refused(_)) => "the HSM failed to process the request",
            Error::Hsm(HsmError::KeyNotFound) | Error::KeyNotFound => "external key not found",
            Error::Internal(_) => "internal error",
            other => return sanitize(&other.to_string()),
        };
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_messages_printable_and_short() {
        let long = "é\u{7}x".repeat(400);
        let s = sanitize(&long);
        assert!(s.len() < 512);
        assert!(s.bytes().all(|b| (0x20..=0x7e).contains(&b)));
    }

    #[test]
    fn every_error_maps_to_its_spec_status() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (Error::Validation("x".into()), 400, "ValidationException"),
            (Error::TooLarge("x".into()), 501, "UnsupportedOperationException"),
            (Error::InvalidUriPath, 404, "InvalidUriPathException"),
            (
                Error::Auth(AuthError::MissingHeader),
                401,
                "AuthenticationFailedException",
            ),
            (Error::KeyNotFound, 404, "KeyNotFoundException"),
            (Error::InvalidState("x".into()), 400, "InvalidStateException"),
            (Error::Throttled, 429, "ThrottlingException"),
            (Error::Hsm(HsmError::Busy), 429, "ThrottlingException"),
            (Error::Hsm(HsmError::Timeout), 503, "DependencyTimeoutException"),
            (
                Error::Hsm(HsmError::InvalidCiphertext),
                400,
                "InvalidCiphertextException",
            ),
            (
                Error::Hsm(HsmError::KeyUsage("x".into())),
                400,
                "InvalidKeyUsageException",
            ),
            (
                Error::Hsm(HsmError::Unavailable("x".into())),
                500,
                "InternalException",
            ),
            (Error::Internal("x".into()), 500, "InternalException"),
        ];
        for (err, status, name) in cases {
            assert_eq!(err.status(), status, "{err:?}");
            assert_eq!(err.name().as_str(), name, "{err:?}");
        }
        assert_eq!(Error::MethodNotAllowed.status(), 405);
    }

    #[test]
    fn auth_failures_never_explain_themselves_on_the_wire() {
        let e = Error::Auth(AuthError::SignatureMismatch);
        assert_eq!(e.wire_message(), "request signature could not be verified");
    }
}
