//! Wall-clock timestamps in the one format every record of the proxy uses (RFC 3339, UTC).

/// Current UTC time in RFC 3339, with sub-second precision.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
