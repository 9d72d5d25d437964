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

use super::state_file::{read_state, write_state, Engagement, PersistedState, StateFileError};
use crate::gates::Gates;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The outcome of an engage: in force at once; durable if the state file was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engaged {
    /// `None` when the state file holds the engage; otherwise why it does not (yet).
    pub not_durable: Option<String>,
}

/// A whole-proxy release that has been written but whose gate is still closed.
#[derive(Debug)]
#[must_use = "finish the release with Switch::finish_proxy_release"]
pub struct PendingRelease {
    epoch: u64,
    scope: &'static str,
}

/// A fleet-wide scope as the switch keys it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum FleetScope {
    /// Every instance refuses everything.
    Proxy,
    /// Every instance refuses one keystore.
    Keystore(String),
}

impl FleetScope {
    /// The scope's label: the token mark's `CKA_LABEL` and the epoch key (`proxy`,
    /// `keystore:<prefix>`).
    pub fn label(&self) -> String {
        match self {
            FleetScope::Proxy => "proxy".into(),
            FleetScope::Keystore(p) => format!("keystore:{p}"),
        }
    }

    /// Parses a mark's label; `None` for a label this version does not know.
    pub fn parse(label: &str) -> Option<FleetScope> {
        match label {
            "proxy" => Some(FleetScope::Proxy),
            _ => label
                .strip_prefix("keystore:")
                .map(|p| FleetScope::Keystore(p.to_owned())),
        }
    }

    fn epoch_key(&self) -> String {
        format!("fleet:{}", self.label())
    }
}

/// The switch's view for `status` and metrics.
#[derive(Debug, Clone)]
pub struct SwitchView {
    /// The state in force (memory).
    pub state: PersistedState,
    /// Is the proxy gate closed right now? (Also closed during a release's reconnect.)
    pub proxy_closed: bool,
    /// Does the file hold exactly the state in force?
    pub durable: bool,
    /// The proxy scope as last written to the file (engaged locally or fleet-wide).
    pub proxy_on_disk: bool,
    /// The keystore prefixes engaged in the file (locally or fleet-wide).
    pub keystores_on_disk: Vec<String>,
    /// The last write error while not durable.
    pub last_error: Option<String>,
}

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

/// Why a release did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// An engage of the same scope happened after the release started; it stays in force.
    #[error("an engage of the same scope arrived while the release was in progress; it stays ENGAGED")]
    Superseded,
    /// The released state could not be written; nothing changed.
    #[error("{0}; nothing was released")]
    Write(#[from] StateFileError),
}

/// A scope's engage count when a release started.
#[derive(Debug, Clone, Copy)]
pub struct Epoch(u64);

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

    /// Writes the state in force; on failure it stays in memory as not durable.
    fn persist(&self, inner: &mut Inner) -> Option<String> {
        match write_state(&self.file, &inner.mem) {
            Ok(()) => {
                inner.disk = inner.mem.clone();
                inner.last_error = None;
                None
            }
            Err(e) => {
                let e = e.to_string();
                tracing::error!(error = %e, "kill switch state NOT durable; retrying in the background");
                inner.last_error = Some(e.clone());
                Some(e)
            }
        }
    }

    /// Engages the whole proxy. The gate closes before anything else happens.
    pub fn engage_proxy(&self, by: Engagement) -> Engaged {
        self.gates.proxy().set(true);
        let mut inner = self.lock();
        // Closed again under the serializer: a release finishing between the store above and
        // this point must not leave it open (its epoch check happens under the same lock).
        self.gates.proxy().set(true);
        *inner.epochs.entry("proxy".into()).or_default() += 1;
        inner.mem.proxy = Some(by.clone());
        inner.mem.push("engage", "proxy", by);
        Engaged {
            not_durable: self.persist(&mut inner),
        }
    }

    /// First half of a whole-proxy release: writes the released state. The gate stays closed
    /// until [`Switch::finish_proxy_release`], after the caller has reconnected the tokens.
    pub fn begin_proxy_release(&self, by: Engagement, seen: Epoch) -> Result<PendingRelease, ReleaseError> {
        let mut inner = self.lock();
        let epoch = inner.epochs.get("proxy").copied().unwrap_or(0);
        if epoch != seen.0 {
            return Err(ReleaseError::Superseded);
        }
        let mut next = inner.mem.clone();
        next.proxy = None;
        next.push("release", "proxy", by);
        write_state(&self.file, &next)?;
        inner.disk = next.clone();
        inner.mem = next;
        inner.last_error = None;
        Ok(PendingRelease {
            epoch,
            scope: "proxy",
        })
    }

    /// Second half: opens the gate, unless an engage of the released scope arrived since the
    /// release began (that engage then stays in force) or the other layer (local or fleet)
    /// still holds it. Returns whether the gate was opened.
    pub fn finish_proxy_release(&self, pending: PendingRelease) -> bool {
        let inner = self.lock();
        if inner.epochs.get(pending.scope).copied().unwrap_or(0) == pending.epoch
            && inner.mem.proxy.is_none()
            && inner.mem.fleet.proxy.is_none()
        {
            self.gates.proxy().set(false);
            true
        } else {
            false
        }
    }

    /// Engages one keystore.
    pub fn engage_keystore(&self, prefix: &str, by: Engagement) -> Engaged {
        self.gates.keystore(prefix).set(true);
        let mut inner = self.lock();
        self.gates.keystore(prefix).set(true);
        *inner.epochs.entry(format!("keystore:{prefix}")).or_default() += 1;
        inner.mem.keystores.insert(prefix.to_owned(), by.clone());
        inner.mem.push("engage", &format!("keystore:{prefix}"), by);
        Engaged {
            not_durable: self.persist(&mut inner),
        }
    }

    /// Releases one keystore: the file first, then the gate.
    pub fn release_keystore(&self, prefix: &str, by: Engagement, seen: Epoch) -> Result<(), ReleaseError> {
        let mut inner = self.lock();
        if inner
            .epochs
            .get(&format!("keystore:{prefix}"))
            .copied()
            .unwrap_or(0)
            != seen.0
        {
            return Err(ReleaseError::Superseded);
        }
        let mut next = inner.mem.clone();
        next.keystores.remove(prefix);
        next.push("release", &format!("keystore:{prefix}"), by);
        write_state(&self.file, &next)?;
        inner.disk = next.clone();
        inner.mem = next;
        inner.last_error = None;
        let fleet_holds = inner.mem.fleet.keystores.contains_key(prefix);
        self.gates.keystore(prefix).set(fleet_holds);
        Ok(())
    }

    /// Engages a fleet-wide scope on this instance (the token mark is the caller's business).
    /// The gate closes first, as for a local engage.
    pub fn engage_fleet(&self, scope: &FleetScope, by: Engagement) -> Engaged {
        self.engage_fleet_as(scope, by, true)
    }

    /// Engages a fleet-wide scope on this instance although no token took its mark: it holds
    /// here until a `release --fleet` on this instance, whatever the token reads show (no
    /// mark there is not a release).
    pub fn engage_fleet_unmarked(&self, scope: &FleetScope, by: Engagement) -> Engaged {
        self.engage_fleet_as(scope, by, false)
    }

    fn engage_fleet_as(&self, scope: &FleetScope, by: Engagement, marked: bool) -> Engaged {
        let gate = match scope {
            FleetScope::Proxy => self.gates.proxy().clone(),
            FleetScope::Keystore(p) => self.gates.keystore(p),
        };
        gate.set(true);
        let mut inner = self.lock();
        gate.set(true);
        *inner.epochs.entry(scope.epoch_key()).or_default() += 1;
        inner.fleet_changed.insert(scope.epoch_key(), Instant::now());
        match scope {
            FleetScope::Proxy => inner.mem.fleet.proxy = Some(by.clone()),
            FleetScope::Keystore(p) => {
                inner.mem.fleet.keystores.insert(p.clone(), by.clone());
            }
        }
        if marked {
            inner.mem.fleet.unmarked.remove(&scope.label());
        } else {
            inner.mem.fleet.unmarked.insert(scope.label());
        }
        inner.mem.push("engage", &scope.epoch_key(), by);
        Engaged {
            not_durable: self.persist(&mut inner),
        }
    }

    /// Releases a fleet-wide keystore engagement on this instance: the file first, then the
    /// gate (which stays closed if the keystore is also engaged locally).
    pub fn release_fleet_keystore(
        &self,
        prefix: &str,
        by: Engagement,
        seen: Epoch,
    ) -> Result<(), ReleaseError> {
        let scope = FleetScope::Keystore(prefix.to_owned());
        let mut inner = self.lock();
        if inner.epochs.get(&scope.epoch_key()).copied().unwrap_or(0) != seen.0 {
            return Err(ReleaseError::Superseded);
        }
        let mut next = inner.mem.clone();
        next.fleet.keystores.remove(prefix);
        next.fleet.unmarked.remove(&scope.label());
        next.push("release", &scope.epoch_key(), by);
        write_state(&self.file, &next)?;
        inner.disk = next.clone();
        inner.mem = next;
        inner.last_error = None;
        inner.fleet_changed.insert(scope.epoch_key(), Instant::now());
        let local_holds = inner.mem.keystores.contains_key(prefix);
        self.gates.keystore(prefix).set(local_holds);
        Ok(())
    }

    /// First half of a fleet-wide proxy release on this instance; finished, like a local one,
    /// by [`Switch::finish_proxy_release`] after the tokens are reconnected.
    pub fn begin_fleet_proxy_release(
        &self,
        by: Engagement,
        seen: Epoch,
    ) -> Result<PendingRelease, ReleaseError> {
        let key = FleetScope::Proxy.epoch_key();
        let mut inner = self.lock();
        let epoch = inner.epochs.get(&key).copied().unwrap_or(0);
        if epoch != seen.0 {
            return Err(ReleaseError::Superseded);
        }
        let mut next = inner.mem.clone();
        next.fleet.proxy = None;
        next.fleet.unmarked.remove(&FleetScope::Proxy.label());
        next.push("release", &key, by);
        write_state(&self.file, &next)?;
        inner.disk = next.clone();
        inner.mem = next;
        inner.last_error = None;
        inner.fleet_changed.insert(key, Instant::now());
        Ok(PendingRelease {
            epoch,
            scope: "fleet:proxy",
        })
    }

    /// The fleet engagement of `scope` in force here, if any.
    pub fn fleet_engagement(&self, scope: &FleetScope) -> Option<Engagement> {
        let inner = self.lock();
        match scope {
            FleetScope::Proxy => inner.mem.fleet.proxy.clone(),
            FleetScope::Keystore(p) => inner.mem.fleet.keystores.get(p).cloned(),
        }
    }

    /// Is the fleet engagement of `scope` here one that no token took the mark of (engaged
    /// through this instance only)? Token reads never release such an engagement.
    pub fn fleet_unmarked(&self, scope: &FleetScope) -> bool {
        self.lock().mem.fleet.unmarked.contains(&scope.label())
    }

    /// The fleet scopes in force here.
    pub fn fleet_scopes(&self) -> Vec<FleetScope> {
        let inner = self.lock();
        let mut v: Vec<FleetScope> = inner
            .mem
            .fleet
            .keystores
            .keys()
            .map(|p| FleetScope::Keystore(p.clone()))
            .collect();
        if inner.mem.fleet.proxy.is_some() {
            v.insert(0, FleetScope::Proxy);
        }
        v
    }

    /// Did `scope` change here at or after `instant`? A token read that began before its last
    /// change may not reflect it.
    pub fn fleet_changed_since(&self, scope: &FleetScope, instant: Instant) -> bool {
        self.lock()
            .fleet_changed
            .get(&scope.epoch_key())
            .is_some_and(|t| *t >= instant)
    }

    /// Is the whole proxy engaged locally (not only fleet-wide)?
    pub fn proxy_engaged_locally(&self) -> bool {
        self.lock().mem.proxy.is_some()
    }

    /// Records that `key` on `token` is refused by this instance only (its token mark was
    /// refused). The caller has already made the token layer refuse it.
    pub fn deny_key_locally(&self, token: &str, key: &str, by: Engagement) -> Engaged {
        let mut inner = self.lock();
        inner
            .mem
            .local_key_denies
            .entry(token.to_owned())
            .or_default()
            .insert(key.to_owned(), by);
        Engaged {
            not_durable: self.persist(&mut inner),
        }
    }

    /// Removes a local key refusal from the file (before the caller lifts it in the token
    /// layer). Removing one that is not there is not an error.
    pub fn lift_key_locally(&self, token: &str, key: &str) -> Result<(), StateFileError> {
        let mut inner = self.lock();
        if !inner
            .mem
            .local_key_denies
            .get(token)
            .is_some_and(|m| m.contains_key(key))
        {
            return Ok(());
        }
        let mut next = inner.mem.clone();
        if let Some(m) = next.local_key_denies.get_mut(token) {
            m.remove(key);
            if m.is_empty() {
                next.local_key_denies.remove(token);
            }
        }
        write_state(&self.file, &next)?;
        inner.disk = next.clone();
        inner.mem = next;
        inner.last_error = None;
        Ok(())
    }

    /// Keys refused locally, by token.
    pub fn local_key_denies(&self) -> BTreeMap<String, BTreeMap<String, Engagement>> {
        self.lock().mem.local_key_denies.clone()
    }

    /// Adds a history entry (key scope and lifecycle events). A failed write leaves it in
    /// memory, written with the next successful write.
    pub fn record_event(&self, action: &str, scope: &str, by: Engagement) -> Option<String> {
        let mut inner = self.lock();
        inner.mem.push(action, scope, by);
        self.persist(&mut inner)
    }

    /// Writes the state in force if the file lags behind it. Returns `true` when durable.
    pub fn retry_pending(&self) -> bool {
        let mut inner = self.lock();
        if inner.mem == inner.disk {
            return true;
        }
        let ok = self.persist(&mut inner).is_none();
        if ok {
            tracing::warn!("kill switch state is durable again");
        }
        ok
    }

    /// The engage count of `scope` (`proxy`, `keystore:<prefix>`), taken when a release starts.
    pub fn epoch(&self, scope: &str) -> Epoch {
        Epoch(self.lock().epochs.get(scope).copied().unwrap_or(0))
    }

    /// The engage count of a fleet scope, taken when a fleet release starts.
    pub fn fleet_epoch(&self, scope: &FleetScope) -> Epoch {
        Epoch(self.lock().epochs.get(&scope.epoch_key()).copied().unwrap_or(0))
    }

    /// Does the state file hold the state in force?
    pub fn is_durable(&self) -> bool {
        let inner = self.lock();
        inner.mem == inner.disk
    }

    /// Is the whole proxy engaged (gate closed)?
    pub fn proxy_engaged(&self) -> bool {
        self.gates.proxy().is_closed()
    }

    /// A consistent view of the switch.
    pub fn view(&self) -> SwitchView {
        let inner = self.lock();
        SwitchView {
            state: inner.mem.clone(),
            proxy_closed: self.gates.proxy().is_closed(),
            durable: inner.mem == inner.disk,
            proxy_on_disk: inner.disk.proxy.is_some() || inner.disk.fleet.proxy.is_some(),
            keystores_on_disk: inner
                .disk
                .keystores
                .keys()
                .chain(inner.disk.fleet.keystores.keys())
                .cloned()
                .collect(),
            last_error: inner.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
