//! The fleet epoch: one *public* `CKO_DATA` object (`CKA_APPLICATION =
//! "xks-bridge/fleet-epoch"`) whose random value every writer of a fleet mark replaces after
//! its write, so that an instance disconnected by a fleet engage can tell without logging in
//! whether the marks may have changed.
//!
//! Why: such an instance looks for the release every 2 s, and reading the (private) marks takes
//! a `C_Login`. SoftHSM2 rewrites its token file in place at every login, and a process killed
//! during that write leaves the token empty for good (seen in the tests); HSMs such as Luna
//! write an audit record per login. With the epoch, the instance logs in only when the epoch
//! changed, when none could be read, or after [`FULL_CHECK_EVERY`].
//!
//! Public, so anyone with access to the token's public objects can change or freeze it. That
//! decides nothing: a changed epoch only costs a login, a release is still only the private
//! mark's absence, and a frozen one delays the release to the next full check at most. A
//! token that refuses public objects, or a write that fails, leaves no epoch to compare: the
//! instance then logs in at every check, as without it.

use super::marks::put_data_object;
use super::{classify, HsmError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::time::Duration;

/// `CKA_APPLICATION` of the epoch.
pub const EPOCH_APP: &[u8] = b"xks-bridge/fleet-epoch";
const LABEL: &str = "fleet-epoch";

/// The longest a disconnected instance goes without logging in to read the marks, whatever
/// the epoch says: the bound on the delay a frozen epoch or a lost replacement can cause.
pub const FULL_CHECK_EVERY: Duration = Duration::from_secs(30);

/// The epoch as read: the values of every epoch object, sorted (two writers replacing it at
/// once may leave two). Empty when the token has none.
pub type FleetEpoch = Vec<Vec<u8>>;

/// Replaces the epoch: a new public object with a fresh random value, then the old ones go.
/// Best effort: a failure is logged and only means that disconnected instances see the change
/// at their next full check (at most [`FULL_CHECK_EVERY`] later).
pub(super) fn bump(s: &Session) {
    let old = find(s).unwrap_or_default();
    let mut nonce = [0u8; 16];
    let made = s
        .generate_random_slice(&mut nonce)
        .map_err(classify)
        .and_then(|()| put_data_object(s, false, EPOCH_APP, LABEL, &nonce));
    if let Err(e) = made {
        tracing::warn!(error = %e, "cannot replace the fleet epoch on the token: instances disconnected by a fleet engage see this change at their next full check, at most 30 s from now");
        return;
    }
    for h in old {
        let _ = s.destroy_object(h);
    }
}

/// The epoch on the token. Readable on any session, logged in or not.
pub(super) fn read(s: &Session) -> Result<FleetEpoch, HsmError> {
    let mut values = Vec::new();
    for h in find(s)? {
        let attrs = s.get_attributes(h, &[AttributeType::Value]).map_err(classify)?;
        values.extend(attrs.into_iter().filter_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        }));
    }
    values.sort();
    Ok(values)
}

fn find(s: &Session) -> Result<Vec<ObjectHandle>, HsmError> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(EPOCH_APP.to_vec()),
    ])
    .map_err(classify)
}
