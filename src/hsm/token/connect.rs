//! Connecting the token and taking it out of service: the connect that reads the marks and
//! versions before the first request can be served, the serving sessions, and the kill
//! switch's and the supervisor's disconnects.

use super::super::beacon;
use super::super::connection::{logged_in, Connector, CountedSession};
use super::super::fleet::{self, FleetSnapshot};
use super::super::{marks, versions, HsmError};
use super::Token;
use std::time::{Duration, Instant};

impl Token {
    /// Loads and initialises the module, finds the token by label and logs in. A refused PIN
    /// is [`HsmError::LoginRefused`]; callers must not retry it in a loop (HSMs lock PINs).
    pub fn connect(&self) -> Result<(), HsmError> {
        let conn = self.conn.open_connection().and_then(|c| {
            // The disabled-key marks are read before the first request can be served: a key
            // disabled while this instance was down must not serve even briefly. A token
            // whose marks cannot be read (or that hides them: not logged in) is not served at
            // all (fail closed). The lifecycle lock keeps a local disable/enable from running
            // between the read and the install.
            // The fleet marks are read with them for the same reason, and the key versions: a
            // version retired or created while this instance was down is in force from the
            // first request.
            let _lifecycle = self.keys.lock_lifecycle();
            let read_started = Instant::now();
            let (marks, fleet_marks, versions) = Connector::with_login(&c, |s| {
                let _call = self.conn.enter();
                if !logged_in(s)? {
                    return Err(HsmError::Unavailable(
                        "the login session is not logged in; disabled-key marks unreadable".into(),
                    ));
                }
                Ok((marks::disabled_set(s)?, fleet::read(s)?, versions::read_all(s)?))
            })
            .map_err(|e| {
                HsmError::Unavailable(format!("cannot read disabled-key marks or key versions: {e}"))
            })?;
            self.keys.install_marks(marks);
            self.install_fleet(FleetSnapshot {
                marks: fleet_marks,
                read_started,
            });
            self.versions.install(None, versions);
            Ok(c)
        });
        self.cache.clear();
        self.conn.install(conn)?;
        // Best effort: without a beacon the polls search the token every time.
        let _call = self.conn.enter();
        if let Ok(s) = self.conn.open(true) {
            if let Err(e) = beacon::ensure(s.session()) {
                tracing::debug!(token = %self.name, error = %e, "no change beacon on the token");
            }
        }
        Ok(())
    }

    /// Current connection generation; a session from an older one is discarded.
    pub fn generation(&self) -> u64 {
        self.conn.generation()
    }

    /// Opens a new read-only session (workers, pollers); the caller holds a call guard.
    pub(crate) fn open_session(&self) -> Result<CountedSession<'_>, HsmError> {
        self.conn.open(false)
    }

    /// Sessions currently held by workers, pollers and admin commands.
    pub fn open_sessions(&self) -> usize {
        self.conn.open_sessions()
    }

    /// Kill switch, step 1: no new session can be opened and every holder of one drops it at
    /// its next look (workers look before every call and at least every
    /// [`super::super::IDLE_CHECK`]).
    pub fn begin_disconnect(&self) {
        self.conn.begin_disconnect()
    }

    /// Kill switch, step 2: waits (bounded) for every session to close and every PKCS#11 call
    /// to return, then logs out, closes the login session and finalizes the module. Returns how
    /// many sessions were still open when the wait ended (0 when all closed in time).
    pub fn finish_disconnect(&self, wait: Duration) -> usize {
        let left = self.conn.finish_disconnect(wait);
        self.cache.clear();
        left
    }

    /// Records a device-class failure (or a lost login): the token is unavailable until the
    /// supervisor reconnects it.
    pub(in crate::hsm) fn mark_failed(&self, err: &HsmError) {
        self.conn.mark_failed(err)
    }

    /// Before a reconnect: retires the connection parked by `mark_failed`.
    pub(in crate::hsm) fn retire_failed(&self, wait: Duration) {
        self.conn.retire_failed(wait)
    }

    /// Is the token connected and logged in?
    pub fn is_connected(&self) -> bool {
        self.conn.is_connected()
    }
}
