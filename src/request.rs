//! What the proxy learns about one request as it is handled (KMS's request metadata, the
//! signing key, the deciding policy rule): filled in by the operations, read by the policy,
//! the request log and the audit trail.

use crate::xks::RequestMetadata;

/// Audit context of one request, filled in by the operation as it learns it.
#[derive(Debug, Default, Clone)]
pub struct RequestContext {
    /// `requestMetadata.kmsRequestId`.
    pub kms_request_id: Option<String>,
    /// `requestMetadata.kmsOperation`.
    pub kms_operation: Option<String>,
    /// `requestMetadata.awsPrincipalArn`.
    pub principal: Option<String>,
    /// `requestMetadata.kmsKeyArn` (Encrypt, Decrypt): the KMS key the call is for.
    pub kms_key_arn: Option<String>,
    /// `requestMetadata.kmsViaService`.
    pub via_service: Option<String>,
    /// The SigV4 access key id that signed the request.
    pub access_key_id: Option<String>,
    /// `requestMetadata.awsSourceVpc`.
    pub source_vpc: Option<String>,
    /// `requestMetadata.awsSourceVpce`.
    pub source_vpce: Option<String>,
    /// The policy rule that decided, when a policy is configured.
    pub authz_rule: Option<String>,
}

impl RequestContext {
    /// Copies the request metadata KMS sent.
    pub fn record(&mut self, md: &RequestMetadata<'_>) {
        let own = |v: &Option<std::borrow::Cow<'_, str>>| v.as_ref().map(|p| p.clone().into_owned());
        self.kms_request_id = Some(md.kms_request_id.clone().into_owned());
        self.kms_operation = Some(md.kms_operation.clone().into_owned());
        self.principal = own(&md.aws_principal_arn);
        self.kms_key_arn = own(&md.kms_key_arn);
        self.via_service = own(&md.kms_via_service);
        self.source_vpc = own(&md.aws_source_vpc);
        self.source_vpce = own(&md.aws_source_vpce);
    }
}

/// Longest ARN kept in logs and audit records: the XKS spec's maximum ARN length (characters).
pub const MAX_ARN_CHARS: usize = 2048;

/// Longest other `requestMetadata` string kept in logs and audit records. The spec gives no
/// size for them; real values are UUIDs, operation and service names and VPC ids (under 64
/// characters), so this only stops a client from putting kilobytes into every line.
pub const MAX_METADATA_CHARS: usize = 256;

/// Appended to a value that was cut to its maximum length.
pub const TRUNCATED_MARKER: &str = "…[truncated]";

/// `s` if it has at most `max` characters, else its first `max` characters and
/// [`TRUNCATED_MARKER`].
pub fn cap(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(s),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}{TRUNCATED_MARKER}", &s[..end])),
    }
}

impl RequestContext {
    /// A copy for the log line and the audit record with every client-chosen string capped
    /// ([`MAX_ARN_CHARS`], [`MAX_METADATA_CHARS`]): the body may carry up to the body cap in
    /// each field, and one oversized request must not put that into every sink. Policy
    /// decisions use the full values, before this.
    pub fn capped(self) -> RequestContext {
        let cap_opt = |v: Option<String>, max: usize| v.map(|s| cap(&s, max).into_owned());
        RequestContext {
            kms_request_id: cap_opt(self.kms_request_id, MAX_METADATA_CHARS),
            kms_operation: cap_opt(self.kms_operation, MAX_METADATA_CHARS),
            principal: cap_opt(self.principal, MAX_ARN_CHARS),
            kms_key_arn: cap_opt(self.kms_key_arn, MAX_ARN_CHARS),
            via_service: cap_opt(self.via_service, MAX_METADATA_CHARS),
            source_vpc: cap_opt(self.source_vpc, MAX_METADATA_CHARS),
            source_vpce: cap_opt(self.source_vpce, MAX_METADATA_CHARS),
            // From the configuration, not from the client.
            access_key_id: self.access_key_id,
            authz_rule: self.authz_rule,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_at_a_character_boundary_with_a_marker() {
        assert_eq!(cap("abc", 3), "abc");
        assert_eq!(cap("abcd", 3), format!("abc{TRUNCATED_MARKER}"));
        // Multi-byte characters count as one and are never split.
        assert_eq!(cap("ééé", 2), format!("éé{TRUNCATED_MARKER}"));
        let ctx = RequestContext {
            principal: Some("a".repeat(10 * 1024)),
            kms_request_id: Some("r".repeat(300)),
            access_key_id: Some("k".repeat(300)),
            ..RequestContext::default()
        }
        .capped();
        assert_eq!(
            ctx.principal.unwrap().chars().count(),
            MAX_ARN_CHARS + TRUNCATED_MARKER.chars().count()
        );
        assert!(ctx.kms_request_id.unwrap().ends_with(TRUNCATED_MARKER));
        assert_eq!(
            ctx.access_key_id.unwrap().len(),
            300,
            "configured values are kept"
        );
    }
}
