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
        self.via_service = own(&md.kms_via_service);
        self.source_vpc = own(&md.aws_source_vpc);
        self.source_vpce = own(&md.aws_source_vpce);
    }
}
