//! The change beacon: one private `CKO_DATA` object (`CKA_APPLICATION =
//! "xks-bridge/changed"`) whose value every writer of polled state replaces after its write:
//! disabled-key marks, fleet marks, version commits, retirements, key lifecycle.
//!
//! Why: every half second each instance reads the marks and versions of its token. On
//! SoftHSM2's file store (and on HSMs whose searches walk every object) each `C_FindObjects`
//! costs time in proportion to *all* objects on the token, keys included: with 1,000 keys the
//! poll's five searches took more CPU than the requests themselves (31.9 s of the supervisor
//! thread against 8 s per worker in a 60 s run). With the beacon, an idle poll reads one
//! attribute of one object it already holds a handle for, and searches only when a writer has
//! replaced the beacon (or every [`FULL_EVERY`], in case something wrote without it, such as an
//! older version or a hand-made change).
//!
//! Replacing (create the new object, then destroy the old ones) rather than updating the value
//! in place: SoftHSM2 refuses to modify a data object's value. A poller that reads between a
//! writer's change and its bump sees the old beacon and finds the change at the next poll.
//! A token that refuses data objects has no beacon: its polls search every time, as before.

use super::marks::{data_objects, put_data};
use super::HsmError;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::time::{Duration, Instant};

/// `CKA_APPLICATION` of the beacon.
pub const BEACON_APP: &[u8] = b"xks-bridge/changed";
const LABEL: &str = "beacon";
/// The longest an unannounced change can go unseen.
pub const FULL_EVERY: Duration = Duration::from_secs(5);

/// Replaces the beacon: a new object with a fresh random value, then the old ones go. Best
/// effort: a failure only means other instances find the change at their next full read.
pub(super) fn bump(s: &Session) {
    let old = find(s).unwrap_or_default();
    let mut nonce = [0u8; 16];
    if s.generate_random_slice(&mut nonce).is_err() {
        return;
    }
    if put_data(s, BEACON_APP, LABEL, &nonce).is_err() {
        return;
    }
    for h in old {
        let _ = s.destroy_object(h);
    }
}

/// Creates the beacon if the token has none (at connect), so that idle polls are cheap from
/// the start.
pub(super) fn ensure(s: &Session) -> Result<(), HsmError> {
    if find(s)?.is_empty() {
        bump(s);
    }
    Ok(())
}

fn find(s: &Session) -> Result<Vec<ObjectHandle>, HsmError> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(BEACON_APP.to_vec()),
    ])
    .map_err(super::classify)
}

fn value(s: &Session, h: ObjectHandle) -> Option<Vec<u8>> {
    s.get_attributes(h, &[AttributeType::Value])
        .ok()?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        })
}

/// A poller's view of the beacon.
pub(super) struct Watch {
    /// The beacon last seen (handle and value), if the token has one.
    seen: Option<(ObjectHandle, Vec<u8>)>,
    /// When the token was last read in full.
    full_at: Option<Instant>,
}

impl Watch {
    pub(super) fn new() -> Watch {
        Watch {
            seen: None,
            full_at: None,
        }
    }

    /// True when nothing was announced since the last full read and that read is recent: the
    /// poll may skip its searches. Otherwise the caller reads everything (and this watch now
    /// holds the beacon as it was before that read began).
    pub(super) fn unchanged(&mut self, s: &Session) -> bool {
        let recent = self.full_at.is_some_and(|t| t.elapsed() < FULL_EVERY);
        if recent {
            if let Some((h, v)) = &self.seen {
                if value(s, *h).as_ref() == Some(v) {
                    return true;
                }
            }
        }
        // Taken before the full read: a change announced during it is seen next time.
        self.seen = data_objects(s, BEACON_APP).ok().and_then(|all| {
            let (handles, v) = all.into_values().next()?;
            Some((*handles.first()?, v))
        });
        self.full_at = Some(Instant::now());
        false
    }

    /// The full read failed: read everything again next time.
    pub(super) fn reset(&mut self) {
        self.full_at = None;
    }
}
