//! The local layer of the switch: this instance's engages and releases of the whole proxy and of
//! single keystores, each release checked against the engages that arrived since it started.

use super::{Engaged, Epoch, PendingRelease, ReleaseError, Switch};
use crate::control::state_file::{write_state, Engagement};

impl Switch {
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

    /// Is the whole proxy engaged locally (not only fleet-wide)?
    pub fn proxy_engaged_locally(&self) -> bool {
        self.lock().mem.proxy.is_some()
    }

    /// The engage count of `scope` (`proxy`, `keystore:<prefix>`), taken when a release starts.
    pub fn epoch(&self, scope: &str) -> Epoch {
        Epoch(self.lock().epochs.get(scope).copied().unwrap_or(0))
    }
}
