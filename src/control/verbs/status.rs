//! The `status` verb: the kill switch picture at every scope, the tokens and the drain.

use super::Control;
use crate::control::protocol::{DrainStage, DrainStatus, KeystoreState, ScopeState, Status, TokenState};
use crate::server::{Drain, DrainPhase};

impl Control {
    /// The full kill switch picture.
    pub fn status(&self) -> Status {
        let v = self.switch.view();
        let keystores = self
            .prefixes()
            .into_iter()
            .map(|p| {
                let engaged = self.switch.gates().keystore_closed(&p);
                let on_disk = v.keystores_on_disk.contains(&p);
                KeystoreState {
                    state: ScopeState {
                        engaged,
                        durable: engaged == on_disk,
                        by: v.state.keystores.get(&p).cloned(),
                        fleet_by: v.state.fleet.keystores.get(&p).cloned(),
                    },
                    prefix: p,
                }
            })
            .collect();
        let local = &v.state.local_key_denies;
        let tokens = self
            .tokens
            .iter()
            .map(|t| TokenState {
                name: t.name.clone(),
                connected: t.is_connected(),
                open_sessions: t.open_sessions(),
                disabled_keys: t.refused_keys(),
                local_denies: local
                    .get(&t.name)
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default(),
            })
            .collect();
        Status {
            daemon: self.daemon,
            proxy: ScopeState {
                engaged: v.proxy_closed,
                durable: v.proxy_closed == v.proxy_on_disk,
                by: v.state.proxy.clone(),
                fleet_by: v.state.fleet.proxy.clone(),
            },
            keystores,
            tokens,
            state_write_error: if v.durable { None } else { v.last_error.clone() },
            history: v.state.history,
            draining: self.drain.get().and_then(|d| drain_status(d)),
        }
    }
}

/// The drain as `status` shows it; `None` while serving.
fn drain_status(d: &Drain) -> Option<DrainStatus> {
    let stage = match d.phase() {
        DrainPhase::Serving => return None,
        DrainPhase::Announcing => DrainStage::Announcing,
        DrainPhase::Closing => DrainStage::Closing,
        DrainPhase::Done => DrainStage::Done,
    };
    Some(DrainStatus {
        stage,
        elapsed_ms: d.elapsed().unwrap_or_default().as_millis() as u64,
        drain_delay_ms: d.delay.as_millis() as u64,
    })
}
