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
use cryptoki::error::RvError;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::Session;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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

/// Writes of a mark the token refused with `CKR_GENERAL_ERROR`, tried this many times in all:
/// SoftHSM2 was seen to refuse one `C_CreateObject` of a data object in a few hundred that way
/// while other sessions read the token (the other instances' polls, every 0.5 s each), and to
/// take the same call a moment later.
const PUT_ATTEMPTS: u32 = 3;
/// Pause between those attempts.
const PUT_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Writes the mark of `scope` unless one exists; `record` is its value. A write the token
/// refused with `CKR_GENERAL_ERROR` is tried again (at most [`PUT_ATTEMPTS`] in all), after
/// looking again whether the mark exists, so a retry never makes a second mark.
pub(super) fn put(s: &Session, scope: &str, record: &[u8]) -> Result<(), HsmError> {
    let mut attempt = 1;
    loop {
        if !find(s, scope)?.is_empty() {
            return Ok(());
        }
        match put_data(s, FLEET_APP, scope, record) {
            Err(
                e @ HsmError::Device {
                    rv: RvError::GeneralError,
                    ..
                },
            ) if attempt < PUT_ATTEMPTS => {
                tracing::warn!(scope, attempt, error = %e, "the token refused the fleet mark; trying again");
                std::thread::sleep(PUT_RETRY_PAUSE);
                attempt += 1;
            }
            other => return other.map(|_| ()),
        }
    }
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
