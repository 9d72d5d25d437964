//! The operator's verbs, one code path for every way they arrive (admin socket, SIGUSR1, the
//! offline CLI holding the instance lock): engage and release at each scope, status, reload
//! and key lifecycle. Every kill-switch change goes through [`super::switch::Switch`]; the
//! slow parts (disconnecting or reconnecting tokens) run after the gate has flipped.

use super::keys::{self, MarkOutcome};
use super::protocol::{
    Action, AdminReply, AdminRequest, ChangeReport, DaemonState, DrainReport, DrainStage, DrainStatus, KeyOp,
    KeystoreState, Scope, ScopeState, Status, TokenState,
};
use super::state_file::Engagement;
use super::switch::{FleetScope, ReleaseError, Switch};
use crate::audit::{AdminEvent, AuditEvent, AuditLog, AuditRecord};
use crate::hsm::{Token, IDLE_CHECK};
use crate::server::{Drain, DrainPhase};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a whole-proxy engage waits for in-flight token calls before finalizing anyway.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);
/// How often a state that is not durable is written again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The daemon's config reloader, as the `reload` verb sees it.
pub trait Reload: Send + Sync {
    /// Re-reads the config; `Ok` carries a summary for the operator.
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
}

/// The keystore prefixes of the running configuration, shared with the reloader.
pub type Prefixes = Arc<RwLock<Vec<String>>>;

/// The control plane of one daemon, or of one offline CLI command.
pub struct Control {
    pub(super) switch: Arc<Switch>,
    pub(super) tokens: Vec<Arc<Token>>,
    prefixes: Prefixes,
    /// Serializes the slow halves of whole-proxy changes (disconnect, reconnect, fleet-mark
    /// writes and checks on connections of their own), so none of them interleaves with
    /// another or finalizes a module under it.
    pub(super) proxy_lock: tokio::sync::Mutex<()>,
    reloader: Option<Arc<dyn Reload>>,
    audit: Option<Arc<AuditLog>>,
    pub(super) daemon: DaemonState,
    pub(super) fleet_watch: super::fleet::Watch,
    /// The server's drain, once the daemon has built it (an offline command has none).
    drain: std::sync::OnceLock<Arc<Drain>>,
    /// Admin-socket exchanges between receipt and the end of their reply's write: the daemon
    /// waits for them before exiting, so the `drain` that stopped it gets its answer.
    exchanges: std::sync::atomic::AtomicUsize,
}

/// Counts one admin-socket exchange while it lives ([`Control::exchange`]).
pub struct Exchange<'a>(&'a Control);

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        self.0.exchanges.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Control {
    /// A control plane over a switch, the tokens and the keystore prefixes. `daemon` says
    /// whether this is the running daemon or an offline command (which connects tokens on
    /// demand). Starts the background writer for states that are not yet durable.
    pub fn new(
        switch: Arc<Switch>,
        tokens: Vec<Arc<Token>>,
        prefixes: Prefixes,
        reloader: Option<Arc<dyn Reload>>,
        audit: Option<Arc<AuditLog>>,
        daemon: DaemonState,
    ) -> Arc<Control> {
        if daemon == DaemonState::Running {
            let weak = Arc::downgrade(&switch);
            let _ = std::thread::Builder::new()
                .name("state-retry".into())
                .spawn(move || loop {
                    std::thread::sleep(RETRY_EVERY);
                    match weak.upgrade() {
                        Some(s) => {
                            s.retry_pending();
                        }
                        None => return,
                    }
                });
        }
        Arc::new(Control {
            switch,
            tokens,
            prefixes,
            proxy_lock: tokio::sync::Mutex::new(()),
            reloader,
            audit,
            daemon,
            fleet_watch: Default::default(),
            drain: std::sync::OnceLock::new(),
            exchanges: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Marks an admin-socket exchange as under way until the guard is dropped.
    pub fn exchange(&self) -> Exchange<'_> {
        self.exchanges.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Exchange(self)
    }

    /// Waits until no admin-socket exchange is under way, at most `limit`.
    pub async fn settle(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.exchanges.load(std::sync::atomic::Ordering::SeqCst) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Hands the control plane the server's drain (the server is built after it); later calls
    /// are ignored.
    pub fn set_drain(&self, drain: Arc<Drain>) {
        let _ = self.drain.set(drain);
    }

    /// Starts the drain (or reports the one under way).
    fn drain(&self, by: &Engagement) -> AdminReply {
        let Some(d) = self.drain.get() else {
            return AdminReply::failed("no running daemon to drain");
        };
        let uid = by
            .by_uid
            .map_or_else(|| "unknown uid".to_owned(), |u| format!("uid {u}"));
        let via = format!("{} ({uid}): {}", by.via, by.reason);
        let started = d.begin(&via);
        AdminReply::Draining(DrainReport {
            already_draining: started.already,
            elapsed_ms: started.since.as_millis() as u64,
            drain_delay_ms: d.delay.as_millis() as u64,
            drain_grace_ms: d.grace.as_millis() as u64,
            open_connections: d.open_connections(),
            pid: std::process::id(),
        })
    }

    /// The kill-switch state machine.
    pub fn switch(&self) -> &Arc<Switch> {
        &self.switch
    }

    /// Records an operator action in the audit trail (when configured) and waits until it is
    /// on disk, so an acknowledged command is never missing from the trail.
    pub(super) async fn audit_admin(&self, key_scope: bool, action: &str, scope: &str, by: &Engagement) {
        let Some(a) = self.audit.clone() else {
            return;
        };
        let ev = AdminEvent {
            action: action.to_owned(),
            scope: scope.to_owned(),
            reason: Some(by.reason.clone()),
            uid: by.by_uid,
            via: Some(by.via.clone()),
        };
        let rec = AuditRecord::now(if key_scope {
            AuditEvent::KeyLifecycle(ev)
        } else {
            AuditEvent::KillSwitch(ev)
        });
        // Waits for room rather than dropping: an operator action is never lost to a full queue.
        let write = move || a.record_waiting(rec).and_then(|()| a.flush());
        if let Ok(Err(e)) = tokio::task::spawn_blocking(write).await {
            tracing::error!(error = %e, "audit trail: flush of an operator action failed");
        }
    }

    /// Executes one request on behalf of `uid` arriving `via` (admin-socket, signal, offline).
    pub async fn execute(self: &Arc<Self>, req: AdminRequest, uid: Option<u32>, via: &str) -> AdminReply {
        let by = |reason: &Option<String>| Engagement {
            reason: reason.clone().unwrap_or_else(|| "no reason given".into()),
            by_uid: uid,
            via: via.to_owned(),
            at: crate::clock::now_rfc3339(),
        };
        match req {
            AdminRequest::Engage {
                scope,
                reason,
                token,
                fleet,
            } => {
                let by = by(&reason);
                let reply = if fleet {
                    self.engage_fleet(&scope, by.clone()).await
                } else {
                    self.engage(&scope, token.as_deref(), by.clone()).await
                };
                self.audit_change(Action::Engage, &scope, fleet, &reply, &by)
                    .await;
                reply
            }
            AdminRequest::Release {
                scope,
                reason,
                token,
                fleet,
            } => {
                let by = by(&reason);
                let reply = if fleet {
                    self.release_fleet(&scope, by.clone()).await
                } else {
                    self.release(&scope, token.as_deref(), by.clone()).await
                };
                self.audit_change(Action::Release, &scope, fleet, &reply, &by)
                    .await;
                reply
            }
            AdminRequest::Status => AdminReply::Status(self.status()),
            AdminRequest::Reload => match &self.reloader {
                Some(r) => match r.reload().await {
                    Ok(summary) => AdminReply::Reloaded { summary },
                    Err(e) => AdminReply::failed(e),
                },
                None => AdminReply::failed("no running daemon to reload"),
            },
            AdminRequest::Drain { reason } => self.drain(&by(&reason)),
            AdminRequest::Keys { token, op } => {
                let by = by(&op.reason());
                let reply = self.keys(token.as_deref(), &op, by.clone()).await;
                if op.changes_token() {
                    let action = match &reply {
                        AdminReply::Failed { .. } => format!("{}-failed", op.name()),
                        _ => op.name().to_owned(),
                    };
                    self.audit_admin(true, &action, &op.scope(), &by).await;
                }
                reply
            }
        }
    }

    async fn audit_change(
        &self,
        action: Action,
        scope: &Scope,
        fleet: bool,
        reply: &AdminReply,
        by: &Engagement,
    ) {
        let name = match reply {
            AdminReply::Changed(r) if r.in_force => action.as_str().to_owned(),
            AdminReply::Changed(_) => format!("{}-superseded", action.as_str()),
            _ => format!("{}-failed", action.as_str()),
        };
        let scope_name = if fleet {
            format!("fleet:{scope}")
        } else {
            scope.to_string()
        };
        self.audit_admin(matches!(scope, Scope::Key(_)), &name, &scope_name, by)
            .await;
    }

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

    async fn release(self: &Arc<Self>, scope: &Scope, token: Option<&str>, by: Engagement) -> AdminReply {
        let started = Instant::now();
        // Taken first: an engage of this scope from here on supersedes this release.
        let seen = match scope {
            Scope::Proxy => self.switch.epoch("proxy"),
            Scope::Keystore(p) => self.switch.epoch(&format!("keystore:{p}")),
            Scope::Key(_) => self.switch.epoch("-"),
        };
        tracing::warn!(scope = %scope, by_uid = ?by.by_uid, via = %by.via, reason = ?by.reason, "kill switch RELEASE");
        let superseded = || {
            AdminReply::Changed(ChangeReport {
                action: Action::Release,
                scope: scope.clone(),
                in_force: false,
                durable: true,
                note: Some(ReleaseError::Superseded.to_string()),
                elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
                fleet: None,
            })
        };
        let report = |in_force: bool, note: Option<String>| {
            AdminReply::Changed(ChangeReport {
                action: Action::Release,
                scope: scope.clone(),
                in_force,
                durable: true,
                note,
                elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
                fleet: None,
            })
        };
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
    pub(super) async fn reconnect_tokens(&self) -> Vec<String> {
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

    async fn keys(self: &Arc<Self>, token: Option<&str>, op: &KeyOp, by: Engagement) -> AdminReply {
        let t = match self.token_for(token) {
            Ok(t) => t,
            Err(e) => return AdminReply::failed(e),
        };
        let reply = keys::run(&t, op, self.daemon == DaemonState::NotRunning).await;
        if op.changes_token() && !matches!(reply, AdminReply::Failed { .. }) {
            tracing::warn!(op = op.name(), key_id = op.id().unwrap_or("-"), by_uid = ?by.by_uid, "key lifecycle");
            let _ = self.switch.record_event(op.name(), &op.scope(), by);
        }
        reply
    }

    pub(super) fn known_prefix(&self, p: &str) -> Result<(), String> {
        let prefixes = self.prefixes();
        if prefixes.iter().any(|k| k == p) {
            Ok(())
        } else {
            Err(format!(
                "no keystore has the URI prefix {p:?} (known: {prefixes:?})"
            ))
        }
    }

    /// The keystore prefixes of the running configuration.
    pub fn prefixes(&self) -> Vec<String> {
        self.prefixes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn token_for(&self, name: Option<&str>) -> Result<Arc<Token>, String> {
        match (name, self.tokens.as_slice()) {
            (Some(n), ts) => ts
                .iter()
                .find(|t| t.name == n)
                .cloned()
                .ok_or_else(|| format!("no token named {n:?}")),
            (None, [t]) => Ok(t.clone()),
            (None, _) => Err("several tokens are configured; name one with --token".into()),
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

fn fleet_holds_note(f: &Engagement) -> String {
    format!(
        "released on this instance, but the proxy stays ENGAGED by the fleet-wide engage of {} (uid {}, via {}: {:?}); release that with --fleet",
        f.at,
        f.by_uid.map_or_else(|| "-".to_owned(), |u| u.to_string()),
        f.via,
        f.reason
    )
}

pub(super) fn not_durable_note(e: Option<String>) -> Option<String> {
    e.map(|e| format!("in force, but NOT durable ({e}); retried in the background until written, a restart before that would lose it"))
}
