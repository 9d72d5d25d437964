//! What the single exit point knows about a request once its response is decided: the
//! [`Finished`] record handed to the observer (audit trail, metrics), the request log line,
//! and the classification of requests refused before authentication ([`Rejection`]), which
//! get neither: an unauthenticated client must not be able to fill the log volume or the audit
//! queue, so those are counted and summarised by the observer instead.

use crate::auth::AuthError;
use crate::error::Error;
use crate::request::RequestContext;
use std::net::IpAddr;
use std::sync::Arc;

/// Everything known about a request once its response is decided (for the log line and the
/// audit trail). Never holds plaintext, AAD, secrets or signatures; request metadata strings are
/// already capped ([`RequestContext::capped`]).
#[derive(Debug, Clone)]
pub struct Finished {
    /// Proxy-assigned request id.
    pub request_id: u64,
    /// Operation name, `-` if routing failed.
    pub operation: &'static str,
    /// Keystore prefix, `-` if routing failed.
    pub keystore: String,
    /// External key id, `-` if none.
    pub key_id: String,
    /// Audit context from the body and the signature.
    pub ctx: RequestContext,
    /// HTTP status.
    pub status: u16,
    /// `OK` or the XKS error name.
    pub outcome: &'static str,
    /// Time from request head to response.
    pub latency_us: u64,
    /// The client's address, for counting the sources of refused requests.
    pub peer: Option<IpAddr>,
    /// Set when the request was refused before its signature was verified: such a request
    /// is not logged one by one and not audited.
    pub rejection: Option<Rejection>,
}

/// Receives every finished request (the audit trail, metrics).
pub type Observer = Arc<dyn Fn(&Finished) + Send + Sync>;

/// Why a request was refused before authentication; `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejection {
    /// 404: no configured keystore, operation or version matches the path.
    UnknownPath,
    /// 405: not POST.
    MethodNotAllowed,
    /// The body exceeded the cap.
    BodyTooLarge,
    /// The body could not be read or did not arrive in time.
    BodyUnreadable,
    /// 401: no `Authorization` / `X-Amz-Date` header.
    Unsigned,
    /// 401: the signature does not match.
    BadSignature,
    /// 401: anything else about the credentials (unknown key, scope, clock skew, headers).
    BadCredentials,
}

impl Rejection {
    /// Every reason, in label order.
    pub const ALL: [Rejection; 7] = [
        Rejection::UnknownPath,
        Rejection::MethodNotAllowed,
        Rejection::BodyTooLarge,
        Rejection::BodyUnreadable,
        Rejection::Unsigned,
        Rejection::BadSignature,
        Rejection::BadCredentials,
    ];

    /// The metric label and the word in the summary line.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::UnknownPath => "unknown_path",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::BodyUnreadable => "body_unreadable",
            Rejection::Unsigned => "unsigned",
            Rejection::BadSignature => "bad_signature",
            Rejection::BadCredentials => "bad_credentials",
        }
    }

    /// The reason for a request that ended in `e` with no verified access key, i.e. before
    /// authentication succeeded.
    pub(super) fn before_auth(e: &Error) -> Rejection {
        match e {
            Error::InvalidUriPath => Rejection::UnknownPath,
            Error::MethodNotAllowed => Rejection::MethodNotAllowed,
            Error::TooLarge(_) => Rejection::BodyTooLarge,
            Error::Auth(AuthError::MissingHeader) => Rejection::Unsigned,
            Error::Auth(AuthError::SignatureMismatch) => Rejection::BadSignature,
            Error::Auth(_) => Rejection::BadCredentials,
            _ => Rejection::BodyUnreadable,
        }
    }
}

/// The INFO line of an authenticated request (refused ones are summarised by the observer).
pub(super) fn log_request(d: &Finished) {
    tracing::info!(
        request_id = d.request_id,
        kms_request_id = d.ctx.kms_request_id.as_deref().unwrap_or("-"),
        kms_operation = d.ctx.kms_operation.as_deref().unwrap_or("-"),
        principal = d.ctx.principal.as_deref().unwrap_or("-"),
        kms_key_arn = d.ctx.kms_key_arn.as_deref().unwrap_or("-"),
        keystore = %d.keystore,
        operation = d.operation,
        key_id = %d.key_id,
        access_key_id = d.ctx.access_key_id.as_deref().unwrap_or("-"),
        status = d.status,
        outcome = d.outcome,
        latency_us = d.latency_us,
        "request"
    );
}
