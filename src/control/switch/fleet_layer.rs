//! The fleet-wide layer of the switch: engagements every instance honours because a token carries
//! their mark, kept apart from the local ones so that releasing one layer never lifts the other.

use super::{Engaged, Epoch, PendingRelease, ReleaseError, Switch};
use crate::control::state_file::{write_state, Engagement};
use std::time::Instant;

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

    pub(super) fn epoch_key(&self) -> String {
        format!("fleet:{}", self.label())
    }
}

impl Switch {
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

    /// The engage count of a fleet scope, taken when a fleet release starts.
    pub fn fleet_epoch(&self, scope: &FleetScope) -> Epoch {
        Epoch(self.lock().epochs.get(&scope.epoch_key()).copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests;
