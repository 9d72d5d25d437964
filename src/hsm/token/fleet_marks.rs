//! The fleet-wide kill switch on this token: the fleet marks as last read, their writes and
//! removals (on the serving connection, else on a connection of its own), and the probes a
//! disconnected instance makes to learn of a release.

use super::super::beacon;
use super::super::fleet::{self, FleetMarks, FleetSnapshot};
use super::super::fleet_epoch::{self, FleetEpoch};
use super::super::HsmError;
use super::Token;
use cryptoki::session::Session;
use std::time::Duration;

/// How long the removal of a fleet mark on a connection of its own retries a token that looks
/// unavailable (see `Token::remove_fleet_mark`).
const RELEASE_PATIENCE: Duration = Duration::from_secs(3);

impl Token {
    /// The fleet marks last read on the current connection; `None` while the token is not
    /// connected (then nothing is known about them).
    pub fn fleet_snapshot(&self) -> Option<FleetSnapshot> {
        if !self.is_connected() {
            return None;
        }
        self.fleet.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(in crate::hsm) fn install_fleet(&self, snapshot: FleetSnapshot) {
        *self.fleet.write().unwrap_or_else(|p| p.into_inner()) = Some(snapshot);
    }

    /// Writes the fleet mark of `scope` (a no-op when one exists). Blocking.
    pub fn write_fleet_mark(&self, scope: &str, record: &[u8]) -> Result<(), HsmError> {
        self.with_write_session(|s| {
            fleet::put(s, scope, record)?;
            fleet_epoch::bump(s);
            Ok(())
        })
    }

    /// Removes the fleet mark of `scope`; true when there was one. Blocking.
    ///
    /// On a connection of its own, a token that looks unavailable is tried again for up to
    /// 3 s (an HSM group failing over, a device being re-enumerated): a release may wait; an
    /// engage (the mark's write) keeps the quick retries only, so that it is in force on this
    /// instance without delay. The fleet epoch is replaced only when a mark was removed.
    pub fn remove_fleet_mark(&self, scope: &str) -> Result<bool, HsmError> {
        self.with_write_session_within(RELEASE_PATIENCE, |s| {
            let removed = fleet::remove(s, scope)?;
            if removed {
                fleet_epoch::bump(s);
            }
            Ok(removed)
        })
    }

    /// Reads the fleet marks on a connection of its own: logs in, reads, logs out and leaves
    /// the module as it found it. This is the check an instance disconnected by a fleet engage
    /// makes to learn of the release. The fleet epoch is read first (empty when unreadable),
    /// so that a mark changed after this read changes the epoch seen next. Blocking.
    pub fn probe_fleet_marks(&self) -> Result<(FleetMarks, FleetEpoch), HsmError> {
        self.conn.with_temporary_session(false, |s| {
            let epoch = fleet_epoch::read(s).unwrap_or_default();
            Ok((fleet::read(s)?, epoch))
        })
    }

    /// Reads the fleet epoch without logging in (see [`fleet_epoch`]): the cheap check that
    /// tells a disconnected instance whether [`Token::probe_fleet_marks`] is needed. Blocking.
    pub fn probe_fleet_epoch(&self) -> Result<FleetEpoch, HsmError> {
        self.conn.with_public_session(fleet_epoch::read)
    }

    /// A read-write session for a fleet mark: the serving connection when there is one,
    /// otherwise a connection of its own (the proxy kill switch has disconnected the token,
    /// or this is an offline command).
    fn with_write_session<T>(&self, f: impl FnOnce(&Session) -> Result<T, HsmError>) -> Result<T, HsmError> {
        self.with_write_session_within(Duration::ZERO, f)
    }

    /// `with_write_session` whose connection of its own retries a token that looks
    /// unavailable for up to `patience`.
    fn with_write_session_within<T>(
        &self,
        patience: Duration,
        f: impl FnOnce(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        if self.is_connected() && !self.killed() {
            self.with_admin_session(f)
        } else {
            self.conn.with_temporary_session_within(true, patience, |s| {
                let out = f(s);
                beacon::bump(s);
                out
            })
        }
    }
}
