//! The release check of an instance that a fleet proxy engage disconnected: every
//! [`PROBE_EVERY`] it reads the public fleet epoch without logging in, and logs in to read the
//! fleet marks only when the epoch changed, could not be read, or the last full check is
//! [`FULL_CHECK_EVERY`] old (see `hsm::fleet_epoch`); no proxy mark left on any token releases
//! this instance and reconnects it.

use super::{mark_removed, FleetRelease, PROBE_EVERY};
use crate::control::switch::{FleetScope, ReleaseError};
use crate::control::verbs::Control;
use crate::hsm::fleet_epoch::FULL_CHECK_EVERY;
use crate::hsm::HsmError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

impl Control {
    /// For an instance disconnected by a fleet proxy engage: logs in on a connection of its own
    /// to see whether the proxy mark is gone, and if so releases and reconnects.
    pub(super) async fn probe_proxy_release(self: &Arc<Self>) {
        if self.switch.fleet_engagement(&FleetScope::Proxy).is_none()
            || self.switch.fleet_unmarked(&FleetScope::Proxy)
            || self.switch.proxy_engaged_locally()
            || self.fleet_watch.probes_stopped.load(Ordering::SeqCst)
            || self.tokens.is_empty()
        {
            return;
        }
        {
            let mut last = self
                .fleet_watch
                .last_probe
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < PROBE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let seen = self.switch.fleet_epoch(&FleetScope::Proxy);
        let started = Instant::now();
        let _g = self.proxy_lock.lock().await;
        if self.fleet_epoch_unchanged().await {
            return;
        }
        let tokens = self.tokens.clone();
        let probes = tokio::task::spawn_blocking(move || {
            tokens
                .iter()
                .map(|t| (t.name.clone(), t.probe_fleet_marks()))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        if probes.iter().all(|(_, r)| r.is_ok()) {
            let epochs = probes
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok().map(|(_, e)| e.clone()))
                .collect();
            *self.fleet_watch.epochs.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((epochs, Instant::now()));
        }
        let mut marked = false;
        for (name, r) in &probes {
            match r {
                Ok((m, _)) => marked |= m.contains_key("proxy"),
                Err(HsmError::LoginRefused(msg)) => {
                    self.fleet_watch.probes_stopped.store(true, Ordering::SeqCst);
                    tracing::error!(token = %name, "{msg}; no more fleet release checks (to avoid locking the PIN): release this instance with `kill-switch release --fleet` on it");
                    return;
                }
                Err(e) => {
                    tracing::debug!(token = %name, error = %e, "fleet release check: token unreadable; staying engaged");
                    return;
                }
            }
        }
        if probes.is_empty() || marked || self.switch.fleet_changed_since(&FleetScope::Proxy, started) {
            return;
        }
        let by = mark_removed();
        match self
            .release_fleet_here(&FleetScope::Proxy, by.clone(), seen)
            .await
        {
            Ok(r) => {
                tracing::warn!(
                    local_engage_holds = matches!(r, FleetRelease::LocalHolds),
                    "FLEET kill switch RELEASE seen on the token"
                );
                self.audit_in_background("release", "fleet:proxy", by);
            }
            Err(ReleaseError::Superseded) => {}
            Err(e) => {
                tracing::error!(error = %e, "fleet release seen on the token but not recorded; staying ENGAGED")
            }
        }
    }

    /// The release check's cheap part: true when every token's fleet epoch, read without
    /// logging in, is the one the last full check saw (not empty), and that check is recent
    /// (see `hsm::fleet_epoch`); then no mark can have changed and no login is needed.
    async fn fleet_epoch_unchanged(&self) -> bool {
        let last = self
            .fleet_watch
            .epochs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some((before, at)) = last else { return false };
        if at.elapsed() >= FULL_CHECK_EVERY || before.iter().any(Vec::is_empty) {
            return false;
        }
        let tokens = self.tokens.clone();
        let now = tokio::task::spawn_blocking(move || {
            tokens.iter().map(|t| t.probe_fleet_epoch()).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        now.len() == before.len()
            && now
                .iter()
                .zip(&before)
                .all(|(n, b)| n.as_ref().is_ok_and(|n| n == b))
    }
}
