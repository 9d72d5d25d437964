//! GetHealthStatus: a real probe through the keystore's worker pool, reported per token.
//!
//! \[AMBIG\] The spec does not say what to answer when no HSM can serve. We answer 200 with
//! `UNAVAILABLE` for that token rather than an error: KMS uses the per-EKM status for its
//! availability metrics, and an error would hide which HSM is down. A keystore disabled by the
//! kill switch answers InvalidStateException before reaching this code.

use super::RequestContext;
use crate::error::Error;
use crate::hsm::TokenStatus;
use crate::keystore::Keystore;
use crate::xks::{self, EkmDetail, HealthResponse, MetadataOnly};

/// Parses a GetHealthStatus body. Side-effect free apart from filling `ctx`; [`handle`] runs
/// exactly this before probing the token.
pub fn validate(body: &[u8], ctx: &mut RequestContext) -> Result<(), Error> {
    let req: MetadataOnly = xks::parse(body).map_err(|e| Error::Validation(e.to_string()))?;
    ctx.record(&req.request_metadata);
    Ok(())
}

/// Handles one GetHealthStatus request.
pub async fn handle(
    ks: &Keystore,
    fleet_size: u32,
    body: &[u8],
    ctx: &mut RequestContext,
) -> Result<Vec<u8>, Error> {
    validate(body, ctx)?;
    let h = ks.hsm.health().await;
    if h.status != TokenStatus::Active {
        tracing::warn!(token = %h.name, status = h.status.as_str(), detail = %h.detail, "token not healthy");
    }
    let resp = HealthResponse {
        xks_proxy_fleet_size: fleet_size,
        xks_proxy_vendor: "xks-bridge",
        xks_proxy_model: concat!("xks-bridge ", env!("CARGO_PKG_VERSION")).to_owned(),
        ekm_vendor: h.vendor.clone(),
        ekm_fleet_details: vec![EkmDetail {
            id: h.name,
            model: h.model,
            health_status: h.status.as_str(),
        }],
    };
    serde_json::to_vec(&resp).map_err(|e| Error::Internal(e.to_string()))
}
