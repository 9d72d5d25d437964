//! The operator's verbs, one code path for every way they arrive (admin socket, SIGUSR1, the
//! offline CLI holding the instance lock): engage and release at each scope (`scopes`), status
//! (`status`), reload, drain and key lifecycle. Every kill-switch change goes through
//! [`super::switch::Switch`]; the slow parts (disconnecting or reconnecting tokens) run after
//! the gate has flipped.

mod scopes;
mod status;

use super::error::{ControlError, ReloadError};
use super::keys;
use super::protocol::{Action, AdminReply, AdminRequest, DaemonState, DrainReport, KeyOp, Scope};
use super::state_file::Engagement;
use super::switch::Switch;
use crate::audit::{AdminEvent, AuditEvent, AuditLog, AuditRecord};
use crate::hsm::Token;
use crate::server::Drain;
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
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, ReloadError>> + Send + '_>>;
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

    pub(super) fn known_prefix(&self, p: &str) -> Result<(), ControlError> {
        let prefixes = self.prefixes();
        if prefixes.iter().any(|k| k == p) {
            Ok(())
        } else {
            Err(ControlError::UnknownPrefix {
                prefix: p.to_owned(),
                known: prefixes,
            })
        }
    }

    /// The keystore prefixes of the running configuration.
    pub fn prefixes(&self) -> Vec<String> {
        self.prefixes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn token_for(&self, name: Option<&str>) -> Result<Arc<Token>, ControlError> {
        match (name, self.tokens.as_slice()) {
            (Some(n), ts) => ts
                .iter()
                .find(|t| t.name == n)
                .cloned()
                .ok_or_else(|| ControlError::UnknownToken(n.to_owned())),
            (None, [t]) => Ok(t.clone()),
            (None, _) => Err(ControlError::TokenNotNamed),
        }
    }
}

pub(super) fn not_durable_note(e: Option<String>) -> Option<String> {
    e.map(|e| format!("in force, but NOT durable ({e}); retried in the background until written, a restart before that would lose it"))
}
