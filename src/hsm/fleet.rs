//! Fleet-wide kill-switch marks: private `CKO_DATA` objects with
//! `CKA_APPLICATION = "xks-bridge/fleet-engaged"` and `CKA_LABEL` = the scope (`proxy` or
//! `keystore:<prefix>`), whose value is the engagement record (who/when/why, JSON written and
//! read by the control layer). Every instance sharing the token reads them with its
//! disabled-key marks, so an engage written through any instance reaches all of them within
//! one poll.
//!
//! The marks are private objects: only a holder of the user PIN can create or destroy them, so
//! someone with mere access to the token's public objects can neither engage nor release a
//! fleet.
//!
//! This layer keeps the marks as opaque bytes: what a record means belongs to the control
//! layer above.

use super::marks::{data_objects, put_data};
use super::{classify, HsmError};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::Session;
use std::collections::BTreeMap;
use std::time::Instant;

/// `CKA_APPLICATION` of fleet marks.
pub const FLEET_APP: &[u8] = b"xks-bridge/fleet-engaged";

/// Fleet marks by scope label, each with its record.
pub type FleetMarks = BTreeMap<String, Vec<u8>>;

/// Fleet marks as last read from one token, and when the read began (a mark written before
/// that instant is in `marks` if it still exists).
#[derive(Debug, Clone)]
pub struct FleetSnapshot {
    /// The marks.
    pub marks: FleetMarks,
    /// When the read started.
    pub read_started: Instant,
}

/// Every fleet mark on the token. Only meaningful on a logged-in session.
pub(super) fn read(s: &Session) -> Result<FleetMarks, HsmError> {
    Ok(data_objects(s, FLEET_APP)?
        .into_iter()
        .map(|(label, (_, value))| (label, value))
        .collect())
}

/// Writes the mark of `scope` unless one exists; `record` is its value.
pub(super) fn put(s: &Session, scope: &str, record: &[u8]) -> Result<(), HsmError> {
    if find(s, scope)?.is_empty() {
        put_data(s, FLEET_APP, scope, record)?;
    }
    Ok(())
}

/// Deletes every mark of `scope`; true when there was one.
pub(super) fn remove(s: &Session, scope: &str) -> Result<bool, HsmError> {
    let found = find(s, scope)?;
    for h in &found {
        s.destroy_object(*h).map_err(classify)?;
    }
    Ok(!found.is_empty())
}

fn find(s: &Session, scope: &str) -> Result<Vec<cryptoki::object::ObjectHandle>, HsmError> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(FLEET_APP.to_vec()),
        Attribute::Label(scope.as_bytes().to_vec()),
    ])
    .map_err(classify)
}
