//! Who is asking: SigV4 verification of a request against its keystore's credentials.
//!
//! Failures carry a typed reason that is logged at debug level. The reason never includes the
//! expected signature, the canonical request, the string to sign or any secret.

pub mod sigv4;

pub use sigv4::{Credential, CredentialSet, Verified};

/// Why a request failed authentication. Every variant maps to 401
/// `AuthenticationFailedException`; the variant itself is only logged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` or no `X-Amz-Date` header.
    #[error("missing Authorization or X-Amz-Date header")]
    MissingHeader,
    /// `Authorization` or `X-Amz-Date` appears more than once.
    #[error("Authorization or X-Amz-Date header repeated")]
    DuplicateHeader,
    /// The header could not be parsed.
    #[error("malformed authorization: {0}")]
    Malformed(&'static str),
    /// The access key id is not configured for this keystore.
    #[error("unknown access key id")]
    UnknownAccessKey,
    /// Credential scope service is not `kms-xks-proxy`.
    #[error("credential scope service is not kms-xks-proxy")]
    WrongService,
    /// Credential scope region is not allowed for this keystore.
    #[error("credential scope region not allowed for this keystore")]
    RegionNotAllowed,
    /// Credential scope date differs from the X-Amz-Date day.
    #[error("credential scope date does not match X-Amz-Date")]
    ScopeDateMismatch,
    /// X-Amz-Date is more than 5 minutes away from the proxy's clock.
    #[error("request time is more than 5 minutes from the proxy clock")]
    ClockSkew,
    /// `host` or `x-amz-date` is not signed, or a signed header is absent from the request.
    #[error("signed headers incomplete: {0}")]
    SignedHeaders(&'static str),
    /// The signature does not match.
    #[error("signature mismatch")]
    SignatureMismatch,
}
