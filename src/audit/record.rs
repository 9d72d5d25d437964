//! What one audit line says. The types carry no field for plaintext, ciphertext, AAD,
//! signatures or secrets, so none can be written by mistake.

use serde::{Deserialize, Serialize};

/// `prev` of the first record of a brand new trail.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audited event, with the time it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339 UTC with nanoseconds, e.g. `2024-05-01T12:00:00.123456789Z`.
    pub time: String,
    /// The event; its kind is the `event` field of the line.
    #[serde(flatten)]
    pub event: AuditEvent,
}

impl AuditRecord {
    /// A record of `event` stamped with the current time.
    pub fn now(event: AuditEvent) -> AuditRecord {
        AuditRecord {
            time: now_rfc3339_nanos(),
            event,
        }
    }
}

/// The kinds of event the trail records, tagged by `event` on the line.
// Nearly every event is a request, so boxing it would only add an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// One XKS API request, whatever its outcome.
    Request(RequestEvent),
    /// Kill switch engaged or released (scope `proxy` or `keystore:<prefix>`).
    KillSwitch(AdminEvent),
    /// Key lifecycle: create, import, enable, disable, delete (scope `key:<id>`).
    KeyLifecycle(AdminEvent),
    /// Records lost since the previous `lost` event: the queue was full, or writing failed.
    /// Written by the trail itself so that a gap in coverage is visible inside the chain.
    Lost {
        /// Records refused because the queue was full (or the trail was closed).
        dropped: u64,
        /// Records (or fsyncs) that failed to reach the file.
        write_errors: u64,
    },
    /// The trail was reopened after a crash and a torn final line was cut away.
    Recovered {
        /// Bytes of the incomplete line that were removed.
        truncated_bytes: u64,
    },
}

/// The audit view of one request. Optional fields are omitted from the line when unknown
/// (e.g. a request refused before routing has no keystore).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEvent {
    /// The proxy's own request id (also in the tracing span).
    pub request_id: u64,
    /// `requestMetadata.kmsRequestId`, to match CloudTrail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_request_id: Option<String>,
    /// Keystore URI prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keystore: Option<String>,
    /// SigV4 access key id (never the secret or the signature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// `requestMetadata.awsPrincipalArn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// XKS operation name (`Encrypt`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// External key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `requestMetadata.kmsOperation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_operation: Option<String>,
    /// `requestMetadata.kmsKeyArn` (Encrypt, Decrypt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_arn: Option<String>,
    /// `requestMetadata.kmsViaService`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via_service: Option<String>,
    /// `requestMetadata.awsSourceVpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_vpc: Option<String>,
    /// `requestMetadata.awsSourceVpce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_vpce: Option<String>,
    /// Secondary-authorization rule that decided, when the policy was evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authz_rule: Option<String>,
    /// XKS error name, or `OK`.
    pub outcome: String,
    /// HTTP status sent.
    pub status: u16,
    /// Time from request start to response, in microseconds.
    pub latency_us: u64,
}

/// An operator action (kill switch or key lifecycle).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminEvent {
    /// `engage`, `release` (every scope, `keys disable`/`enable` included), `create`, `import`,
    /// `destroy`; `-failed` or `-superseded` appended when it did not take effect.
    pub action: String,
    /// `proxy`, `keystore:<prefix>` or `key:<id>`, as in the kill switch state file.
    pub scope: String,
    /// Free text from the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Peer uid on the admin socket; `None` for a signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// How the action arrived: `admin-socket`, `signal SIGUSR1`, `offline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// One line of the trail as stored: chain fields first, then the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLine {
    /// Position in the trail, continuous across rotated files, starting at 1.
    pub seq: u64,
    /// Hex SHA-256 of the previous line's bytes (without its newline), or [`GENESIS_PREV`].
    pub prev: String,
    /// The record.
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// What the writer serializes: the same shape as [`AuditLine`] without copying the record.
#[derive(Serialize)]
pub(super) struct LineRef<'a> {
    pub seq: u64,
    pub prev: &'a str,
    #[serde(flatten)]
    pub record: &'a AuditRecord,
}

/// The two chain fields, all verification and recovery need from a line; other fields are
/// ignored so that lines written by newer versions still verify.
#[derive(Deserialize)]
pub(super) struct ChainHead {
    pub seq: u64,
    pub prev: String,
}

/// Current UTC time, RFC 3339 with exactly nine fractional digits (sorts as text).
pub fn now_rfc3339_nanos() -> String {
    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
    );
    time::OffsetDateTime::now_utc().format(FORMAT).unwrap_or_default()
}
