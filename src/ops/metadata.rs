//! GetKeyMetadata: the key's spec, usages and status, read from the token's attributes.

use super::{require_key_op_fields, RequestContext};
use crate::error::Error;
use crate::keystore::Keystore;
use crate::xks::Operation;
use crate::xks::{self, KeyMetadataResponse, MetadataOnly};

/// Parses and validates a GetKeyMetadata body: every check before the key lookup and the token
/// call. Side-effect free apart from filling `ctx`; [`handle`] runs exactly this.
pub fn validate(body: &[u8], ctx: &mut RequestContext) -> Result<(), Error> {
    let req: MetadataOnly = xks::parse(body).map_err(|e| Error::Validation(e.to_string()))?;
    ctx.record(&req.request_metadata);
    require_key_op_fields(&req.request_metadata, false)
}

/// Handles one GetKeyMetadata request.
pub async fn handle(
    ks: &Keystore,
    key_id: &str,
    body: &[u8],
    ctx: &mut RequestContext,
) -> Result<Vec<u8>, Error> {
    validate(body, ctx)?;
    ks.check_key(key_id)?;
    ks.authorize(Operation::Metadata, key_id, ctx)?;
    let info = ks.hsm.key_info(key_id).await?;
    let refused = ks.hsm.token().is_refused(key_id);
    if !refused && info.usages.contains(&"ENCRYPT") {
        // KMS asks for the metadata when the key is created in KMS: its Encrypts follow.
        ks.hsm.token().reserve_ahead(key_id, &ks.budgets.of(key_id));
    }
    let mut key_usage = info.usages;
    key_usage.truncate(10); // spec maximum
    let key_status = if refused { "DISABLED" } else { "ENABLED" };
    let resp = KeyMetadataResponse {
        key_spec: info.key_spec,
        key_usage,
        key_status,
    };
    serde_json::to_vec(&resp).map_err(|e| Error::Internal(e.to_string()))
}
