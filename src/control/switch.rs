//! The kill-switch state machine for every scope this process owns: the whole proxy, each
//! keystore, and the keys refused locally because the token refused their mark. Every change
//! goes through one serializer (a mutex held for the in-memory change and the state-file write,
//! never across a PKCS#11 call).
//!
//! Per scope the states are *released*, *engaged (durable)* and *engaged, not yet durable*.
//! An engage flips the in-memory gate first, then writes the file; if the write fails the
//! engage is still in force, reported as not durable, and a background retry keeps writing
//! the in-memory state until it succeeds. Nothing but an explicit release undoes it: writes
//! never re-read the file, and polls and reconnects do not touch this state. A release writes
//! the file first and only then opens the gate; a release that cannot be written changes
//! nothing. A whole-proxy release opens the gate only if no engage arrived while it was
//! reconnecting the tokens (the epoch check), so an acknowledged engage holds until a release
//! that started after it.
//!
//! Fleet-wide engagements (token marks every instance honours) are a second layer with the
//! same rules, kept apart in the state: a gate is closed while either a local or a fleet
//! engagement holds it, so releasing one never lifts the other.
//!
//! This file holds what every transition shares (the serialized state, loading it); the local
//! layer, the fleet layer, key-level entries, durability and the status view each have their
//! own submodule.

mod durability;
mod fleet_layer;
mod key_events;
mod local;
mod outcome;
mod view;

pub use fleet_layer::FleetScope;
pub use outcome::{Engaged, Epoch, PendingRelease, ReleaseError};
pub use view::SwitchView;

use super::state_file::{read_state, PersistedState, StateFileError};
use crate::gates::Gates;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

struct Inner {
    /// The state in force.
    mem: PersistedState,
    /// The state as last written (what a restart would see).
    disk: PersistedState,
    /// Engages per scope (`proxy`, `keystore:<prefix>`): a release takes effect only if no
    /// engage of its scope happened since the release started.
    epochs: HashMap<String, u64>,
    /// When each fleet scope last changed here (engaged or released): a token read that began
    /// before that instant may predate the change and must not be acted on.
    fleet_changed: HashMap<String, Instant>,
    last_error: Option<String>,
}

/// The live kill switch of one daemon (or of one offline CLI command holding the lock).
pub struct Switch {
    gates: Arc<Gates>,
    file: PathBuf,
    inner: Mutex<Inner>,
}

impl Switch {
    /// Loads the state file (absent = nothing engaged) and closes the gates it names. A file
    /// that cannot be parsed is an error: starting released would defeat the switch.
    pub fn load(file: &Path) -> Result<Switch, StateFileError> {
        let state = read_state(file)?;
        let gates = Arc::new(Gates::new(state.proxy.is_some() || state.fleet.proxy.is_some()));
        for prefix in state.keystores.keys().chain(state.fleet.keystores.keys()) {
            gates.keystore(prefix).set(true);
        }
        let loaded = Instant::now();
        let mut fleet_changed = HashMap::new();
        if state.fleet.proxy.is_some() {
            fleet_changed.insert(FleetScope::Proxy.epoch_key(), loaded);
        }
        for p in state.fleet.keystores.keys() {
            fleet_changed.insert(FleetScope::Keystore(p.clone()).epoch_key(), loaded);
        }
        Ok(Switch {
            gates,
            file: file.to_owned(),
            inner: Mutex::new(Inner {
                disk: state.clone(),
                mem: state,
                epochs: HashMap::new(),
                fleet_changed,
                last_error: None,
            }),
        })
    }

    /// The gates the request path and the workers read.
    pub fn gates(&self) -> &Arc<Gates> {
        &self.gates
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
