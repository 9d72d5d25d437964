//! The connection's state machine: installing a connection attempt's outcome, taking the
//! connection out of service (the kill switch's `begin_disconnect`, a device failure's
//! `mark_failed`) and ending the connection so parked (`finish_disconnect`, `retire_failed`).
//! Every change of state starts a new generation, so that older sessions are discarded.

use super::super::HsmError;
use super::{Connection, Connector, State};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Connector {
    /// Installs the outcome of a connection attempt; every older session becomes stale.
    pub(in crate::hsm) fn install(&self, conn: Result<Connection, HsmError>) -> Result<(), HsmError> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        match conn {
            Ok(c) => {
                *state = State::Connected(c);
                Ok(())
            }
            Err(e) => {
                *state = State::Unavailable(e.to_string());
                Err(e)
            }
        }
    }

    /// Current connection generation; a session from an older one is discarded.
    pub(in crate::hsm) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub(in crate::hsm) fn begin_disconnect(&self) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut *state, State::Disconnected);
        self.generation.fetch_add(1, Ordering::SeqCst);
        drop(state);
        if let State::Connected(c) = old {
            *self.parked.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
        }
    }

    pub(in crate::hsm) fn finish_disconnect(&self, wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        while self.open_sessions() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let left = self.open_sessions();
        if let Some(c) = self.parked.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let Connection { pkcs11, login, .. } = c;
            let login = login.into_inner().unwrap_or_else(|p| p.into_inner());
            {
                let _call = self.enter();
                let _ = login.logout();
                drop(login);
            }
            // Another token on the same module may have finalized it already.
            self.finalize(pkcs11, deadline.max(Instant::now() + Duration::from_millis(200)));
        }
        left
    }

    pub(in crate::hsm) fn mark_failed(&self, err: &HsmError) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if matches!(*state, State::Connected(_)) {
            tracing::error!(token = %self.name, error = %err, "token failed; reconnecting");
            let old = std::mem::replace(&mut *state, State::Unavailable(err.to_string()));
            self.generation.fetch_add(1, Ordering::SeqCst);
            drop(state);
            if let State::Connected(c) = old {
                *self.parked.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
            }
        }
    }

    pub(in crate::hsm) fn retire_failed(&self, wait: Duration) {
        if self.killed()
            || !matches!(
                *self.state.read().unwrap_or_else(|p| p.into_inner()),
                State::Unavailable(_)
            )
        {
            return;
        }
        let Some(c) = self.parked.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let deadline = Instant::now() + wait;
        while self.open_sessions() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let Connection {
            pkcs11,
            login,
            _module_use: module_use,
            ..
        } = c;
        // Closing the last session also ends the login on the token; this connection stops
        // counting as a user of the module before the module is (perhaps) finalized.
        {
            let _call = self.enter();
            drop(login);
        }
        drop(module_use);
        self.release_module(pkcs11);
    }

    pub(in crate::hsm) fn is_connected(&self) -> bool {
        matches!(
            *self.state.read().unwrap_or_else(|p| p.into_inner()),
            State::Connected(_)
        )
    }
}
