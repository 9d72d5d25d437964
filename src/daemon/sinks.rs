//! The daemon's sinks: the audit trail (opened from its config) and the per-request audit
//! record built from what the server knows when a response is decided.

use super::startup::{unavailable, StartError};
use crate::audit::{
    AuditEvent, AuditLog, AuditOptions, AuditRecord, CheckpointOptions, FsyncPolicy, RequestEvent,
};
use crate::config::{AuditConfig, AuditFsync};
use crate::server::Finished;
use std::time::Duration;

pub(super) fn open_audit(a: &AuditConfig) -> Result<AuditLog, StartError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = a.file.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| unavailable(format!("audit.file: cannot create {}: {e}", dir.display())))?;
    }
    let fsync = match a.fsync {
        AuditFsync::EveryRecord => FsyncPolicy::EveryRecord,
        AuditFsync::Interval => FsyncPolicy::Interval(Duration::from_millis(a.fsync_interval_ms)),
        AuditFsync::Never => FsyncPolicy::Never,
    };
    let options = AuditOptions {
        fsync,
        rotate_at_bytes: a.rotate_at_bytes,
        checkpoints: CheckpointOptions {
            every_records: a.checkpoint_every_records,
            interval: Duration::from_millis(a.checkpoint_interval_ms),
            syslog: a.checkpoint_syslog.clone(),
        },
        ..AuditOptions::default()
    };
    AuditLog::open_with(&a.file, options).map_err(|e| unavailable(format!("audit.file: {e}")))
}

/// One audit record per authenticated request, from what the server knows when the response
/// is decided (metadata strings already capped by the server).
pub(super) fn request_record(d: &Finished) -> AuditRecord {
    let dash = |s: &str| (s != "-").then(|| s.to_owned());
    AuditRecord::now(AuditEvent::Request(RequestEvent {
        request_id: d.request_id,
        kms_request_id: d.ctx.kms_request_id.clone(),
        keystore: dash(&d.keystore),
        access_key_id: d.ctx.access_key_id.clone(),
        principal: d.ctx.principal.clone(),
        operation: dash(d.operation),
        key_id: dash(&d.key_id),
        kms_operation: d.ctx.kms_operation.clone(),
        kms_key_arn: d.ctx.kms_key_arn.clone(),
        via_service: d.ctx.via_service.clone(),
        source_vpc: d.ctx.source_vpc.clone(),
        source_vpce: d.ctx.source_vpce.clone(),
        authz_rule: d.ctx.authz_rule.clone(),
        outcome: d.outcome.to_owned(),
        status: d.status,
        latency_us: d.latency_us,
    }))
}
