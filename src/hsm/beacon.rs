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
//! replaced the beacon, or when the last full read is older than [`Watch::full_every`], in case
//! something wrote without it (an older version, a hand-made change, a writer whose bump
//! failed). That interval is at least [`FULL_EVERY`] and grows with what a full read costs on
//! this token, so that unannounced changes are never searched for with more than about
//! 1 / [`FULL_COST_SHARE`] of one core: with 1,000 keys on SoftHSM2's file store a full read
//! (six searches, each walking every object) took about 290 ms, and at every 5 s that alone
//! cost 3 % of a 2-core machine's capacity under load.
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
/// The shortest interval between full reads (on a token where one is cheap, this is the longest
/// an unannounced change goes unseen).
pub const FULL_EVERY: Duration = Duration::from_secs(5);
/// A full read is repeated, unannounced, after this many times its own duration at the
/// soonest: at most 1 % of one core goes to searching for unannounced changes.
pub const FULL_COST_SHARE: u32 = 100;
/// The longest interval between full reads, however slow the token.
pub const FULL_EVERY_MAX: Duration = Duration::from_secs(60);

/// Replaces the beacon: a new object with a fresh random value, then the old ones go. Best
/// effort: a failure only means other instances find the change at their next full read
/// (5 to 60 s later, see [`Watch::full_every`]), so a refused create is tried again (SoftHSM2
/// refuses one now and then with `CKR_GENERAL_ERROR`) and a final failure is logged.
pub(super) fn bump(s: &Session) {
    let old = find(s).unwrap_or_default();
    let mut nonce = [0u8; 16];
    let mut attempt = 1;
    let made = loop {
        let made = s
            .generate_random_slice(&mut nonce)
            .map_err(super::classify)
            .and_then(|()| put_data(s, BEACON_APP, LABEL, &nonce));
        match made {
            Err(_) if attempt < BUMP_ATTEMPTS => {
                std::thread::sleep(BUMP_RETRY_PAUSE);
                attempt += 1;
            }
            other => break other,
        }
    };
    if let Err(e) = made {
        tracing::warn!(error = %e, "cannot announce a change on the token (change beacon): other instances sharing it see the change at their next full read, 5 to 60 s from now");
        return;
    }
    for h in old {
        let _ = s.destroy_object(h);
    }
}

/// Attempts at replacing the beacon, and the pause between two.
const BUMP_ATTEMPTS: u32 = 3;
const BUMP_RETRY_PAUSE: Duration = Duration::from_millis(20);

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
    /// How long the last full read took.
    full_took: Duration,
}

impl Watch {
    pub(super) fn new() -> Watch {
        Watch {
            seen: None,
            full_at: None,
            full_took: Duration::ZERO,
        }
    }

    /// How long a read of unannounced changes waits after the last full read:
    /// [`FULL_COST_SHARE`] times what that read took, within [`FULL_EVERY`] and
    /// [`FULL_EVERY_MAX`].
    pub(super) fn full_every(&self) -> Duration {
        (self.full_took * FULL_COST_SHARE).clamp(FULL_EVERY, FULL_EVERY_MAX)
    }

    /// True when nothing was announced since the last full read and that read is recent: the
    /// poll may skip its searches. Otherwise the caller reads everything (and this watch now
    /// holds the beacon as it was before that read began).
    pub(super) fn unchanged(&mut self, s: &Session) -> bool {
        let recent = self.full_at.is_some_and(|t| t.elapsed() < self.full_every());
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

    /// The full read that [`Watch::unchanged`] asked for is done: its duration (from that
    /// call, the beacon's read included) sets when the next unannounced one is due.
    pub(super) fn full_read_done(&mut self) {
        if let Some(t) = self.full_at {
            self.full_took = t.elapsed();
        }
    }

    /// The full read failed: read everything again next time.
    pub(super) fn reset(&mut self) {
        self.full_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after_read_of(took: Duration) -> Duration {
        let mut w = Watch::new();
        w.full_took = took;
        w.full_every()
    }

    #[test]
    fn unannounced_changes_are_searched_for_with_a_bounded_share_of_a_core() {
        // A cheap token: the floor, so unannounced changes are seen within 5 s.
        assert_eq!(after_read_of(Duration::from_millis(3)), FULL_EVERY);
        assert_eq!(after_read_of(Duration::ZERO), FULL_EVERY);
        // SoftHSM2 with 1,000 keys: about 290 ms per full read, repeated after 29 s (1 %).
        assert_eq!(after_read_of(Duration::from_millis(290)), Duration::from_secs(29));
        // A token so slow that 1 % would mean minutes: still at least once a minute.
        assert_eq!(after_read_of(Duration::from_secs(2)), FULL_EVERY_MAX);
    }
}
