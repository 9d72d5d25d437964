//! Engage and release at proxy, keystore and key scope, and the token disconnects and
//! reconnects that follow a change of the proxy scope.

use super::{not_durable_note, Control, DISCONNECT_WAIT};
use crate::control::keys::{self, MarkOutcome};
use crate::control::protocol::{Action, AdminReply, ChangeReport, DaemonState, Scope};
use crate::control::state_file::Engagement;
use crate::control::switch::{FleetScope, ReleaseError};
use crate::hsm::IDLE_CHECK;
use std::sync::Arc;
use std::time::Instant;

impl Control {
    /// Engages the kill switch at `scope` (`token` picks the token for a key scope).
    pub async fn engage(self: &Arc<Self>, scope: &Scope, token: Option<&str>, by: Engagement) -> AdminReply {
        let started = Instant::now();
        tracing::warn!(scope = %scope, by_uid = ?by.by_uid, via = %by.via, reason = ?by.reason, "kill switch ENGAGE");
        let report = |durable: bool, note: Option<String>| {
            AdminReply::Changed(ChangeReport {
                action: Action::Engage,
                scope: scope.clone(),
                in_force: true,
                durable,
                note,
                elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
                fleet: None,
            })
        };
        match scope {
            Scope::Proxy => {
                // The gate closes inside engage_proxy, before the write; the disconnect (logout,
                // close sessions, finalize) follows in the background.
                let engaged = self.switch.engage_proxy(by);
                let this = self.clone();
                tokio::spawn(async move { this.disconnect_all().await });
                report(
                    engaged.not_durable.is_none(),
                    not_durable_note(engaged.not_durable),
                )
            }
            Scope::Keystore(p) => {
                if let Err(e) = self.known_prefix(p) {
                    return AdminReply::failed(e);
                }
                let engaged = self.switch.engage_keystore(p, by);
                report(
                    engaged.not_durable.is_none(),
                    not_durable_note(engaged.not_durable),
                )
            }
            Scope::Key(id) => {
                let t = match self.token_for(token) {
                    Ok(t) => t,
                    Err(e) => return AdminReply::failed(e),
                };
                let outcome = keys::disable(&t, id, &by, self.daemon == DaemonState::NotRunning).await;
                match outcome {
                    Ok(MarkOutcome::OnToken) => {
                        let durable = self.switch.record_event("engage", &scope.to_string(), by);
                        // The token holds the mark: durable whatever the history write did.
                        let _ = durable;
                        report(true, None)
                    }
                    Ok(MarkOutcome::LocalOnly { reason }) => {
                        let mut engaged = self.switch.deny_key_locally(&t.name, id, by.clone());
                        if engaged.not_durable.is_none() {
                            engaged.not_durable = self.switch.record_event("engage", &scope.to_string(), by);
                        }
                        let note = format!(
                            "the token refused the disabled-key mark ({reason}): the key is refused by this instance only{}",
                            match &engaged.not_durable {
                                None => ", recorded in its state file".to_owned(),
                                Some(e) => format!("; NOT durable: {e}"),
                            }
                        );
                        report(engaged.not_durable.is_none(), Some(note))
                    }
                    Err(e) => AdminReply::failed(e),
                }
            }
        }
    }

    pub(super) async fn release(
        self: &Arc<Self>,
        scope: &Scope,
        token: Option<&str>,
        by: Engagement,
    ) -> AdminReply {
        let started = Instant::now();
        // Taken first: an engage of this scope from here on supersedes this release.
        let seen = match scope {
            Scope::Proxy => self.switch.epoch("proxy"),
            Scope::Keystore(p) => self.switch.epoch(&format!("keystore:{p}")),
            Scope::Key(_) => self.switch.epoch("-"),
        };
        tracing::warn!(scope = %scope, by_uid = ?by.by_uid, via = %by.via, reason = ?by.reason, "kill switch RELEASE");
        let report = |in_force: bool, note: Option<String>| {
            AdminReply::Changed(ChangeReport::release(scope, in_force, note, started, None))
        };
        let superseded = || report(false, Some(ReleaseError::Superseded.to_string()));
        match scope {
            Scope::Proxy => {
                let _g = self.proxy_lock.lock().await;
                let pending = match self.switch.begin_proxy_release(by, seen) {
                    Ok(p) => p,
                    Err(ReleaseError::Superseded) => return superseded(),
                    Err(e) => return AdminReply::failed(e),
                };
                if let Some(f) = self.switch.fleet_engagement(&FleetScope::Proxy) {
                    let _ = self.switch.finish_proxy_release(pending);
                    return report(true, Some(fleet_holds_note(&f)));
                }
                let errors = if self.daemon == DaemonState::Running {
                    self.reconnect_tokens().await
                } else {
                    Vec::new()
                };
                // A fleet engage written while this instance was disconnected is in the marks
                // the reconnect just read: it holds before the gate could open.
                if self.daemon == DaemonState::Running && self.adopt_marks() {
                    let _ = self.switch.finish_proxy_release(pending);
                    let this = self.clone();
                    tokio::spawn(async move { this.disconnect_all().await });
                    let f = self.switch.fleet_engagement(&FleetScope::Proxy);
                    return report(true, f.as_ref().map(fleet_holds_note));
                }
                if !self.switch.finish_proxy_release(pending) {
                    return superseded();
                }
                let note = (!errors.is_empty()).then(|| {
                    format!(
                        "released, but some tokens did not reconnect (retried in the background): {}",
                        errors.join("; ")
                    )
                });
                report(true, note)
            }
            Scope::Keystore(p) => {
                if let Err(e) = self.known_prefix(p) {
                    return AdminReply::failed(e);
                }
                match self.switch.release_keystore(p, by, seen) {
                    Ok(()) => report(
                        true,
                        self.switch
                            .fleet_engagement(&FleetScope::Keystore(p.clone()))
                            .map(|f| fleet_holds_note(&f).replace("the proxy", "the keystore")),
                    ),
                    Err(ReleaseError::Superseded) => superseded(),
                    Err(e) => AdminReply::failed(e),
                }
            }
            Scope::Key(id) => {
                let t = match self.token_for(token) {
                    Ok(t) => t,
                    Err(e) => return AdminReply::failed(e),
                };
                // The local refusal leaves the file first: a crash in between leaves the key
                // refused, never the other way round.
                if let Err(e) = self.switch.lift_key_locally(&t.name, id) {
                    return AdminReply::failed(format!("{e}; nothing was released"));
                }
                match keys::enable(&t, id, self.daemon == DaemonState::NotRunning).await {
                    Ok(()) => {
                        let _ = self.switch.record_event("release", &scope.to_string(), by);
                        report(true, None)
                    }
                    Err(e) => {
                        // Still refused in memory; put the local record back so it stays so.
                        let _ = self.switch.deny_key_locally(&t.name, id, by);
                        AdminReply::failed(format!("{e}; the key stays disabled"))
                    }
                }
            }
        }
    }

    /// Connects every token again (after a whole-proxy release); the failures, by token.
    pub(in crate::control) async fn reconnect_tokens(&self) -> Vec<String> {
        let tokens = self.tokens.clone();
        tokio::task::spawn_blocking(move || {
            tokens
                .iter()
                .filter_map(|t| t.connect().err().map(|e| format!("{}: {e}", t.name)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|e| vec![e.to_string()])
    }

    /// Logs out of every token, closes every session and finalizes the modules.
    pub async fn disconnect_all(self: &Arc<Self>) {
        let _g = self.proxy_lock.lock().await;
        if !self.switch.proxy_engaged() {
            return;
        }
        self.disconnect_tokens().await;
    }

    /// At exit: no thread may be inside a PKCS#11 module when the process ends, because the
    /// module's own global destructors run then (SoftHSM2 crashed the daemon with SIGSEGV
    /// after "exiting 0" when its poll was inside a search). The proxy gate closes in memory
    /// only (nothing is written: a restart starts as the state file says), which makes the
    /// workers, the poll and the background threads let go of the token; then the tokens are
    /// disconnected and finalized as for the kill switch.
    pub async fn release_tokens_for_exit(self: &Arc<Self>) {
        let _g = self.proxy_lock.lock().await;
        self.switch.gates().proxy().set(true);
        self.disconnect_tokens().await;
    }

    async fn disconnect_tokens(&self) {
        let tokens = self.tokens.clone();
        let res = tokio::task::spawn_blocking(move || {
            tokens.iter().for_each(|t| t.begin_disconnect());
            let wait = DISCONNECT_WAIT + IDLE_CHECK;
            tokens
                .iter()
                .map(|t| (t.name.clone(), t.finish_disconnect(wait)))
                .collect::<Vec<_>>()
        })
        .await;
        match res {
            Ok(left) => {
                for (name, n) in left {
                    if n > 0 {
                        tracing::error!(token = %name, sessions = n, "sessions still open after the wait; module finalized anyway");
                    } else {
                        tracing::warn!(token = %name, "token disconnected: logged out, sessions closed, module finalized");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "disconnect task failed"),
        }
    }
}

fn fleet_holds_note(f: &Engagement) -> String {
    format!(
        "released on this instance, but the proxy stays ENGAGED by the fleet-wide engage of {} (uid {}, via {}: {:?}); release that with --fleet",
        f.at,
        f.by_uid.map_or_else(|| "-".to_owned(), |u| u.to_string()),
        f.via,
        f.reason
    )
}
