//! The operator's verbs, executed inside the daemon: engage/release the kill switch at each
//! scope, report status, and run key lifecycle commands on the token. The admin socket and the
//! SIGUSR1 handler both call into this; nothing here knows how the request arrived.

use crate::admin::{AdminRequest, AdminResponse, KeyOp, Scope};
use crate::audit::{AdminEvent, AuditEvent, AuditLog, AuditRecord};
use crate::hsm::{HsmError, MarkOutcome, Token, IDLE_CHECK};
use crate::kill_switch::{now_rfc3339, Engagement, KillSwitch};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a whole-proxy engage waits for in-flight token calls before finalizing anyway.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// The daemon's control plane.
pub struct Control {
    kill: Arc<KillSwitch>,
    tokens: Vec<Arc<Token>>,
    /// Keystore prefixes of the running configuration (replaced on reload).
    prefixes: std::sync::RwLock<Vec<String>>,
    /// Serializes whole-proxy engage/release so a release cannot interleave with a disconnect.
    proxy_lock: tokio::sync::Mutex<()>,
    reloader: std::sync::OnceLock<Arc<crate::daemon::Reloader>>,
    audit: std::sync::OnceLock<Arc<AuditLog>>,
}

impl Control {
    /// A control plane over the daemon's kill switch, tokens and keystore prefixes.
    pub fn new(kill: Arc<KillSwitch>, tokens: Vec<Arc<Token>>, prefixes: Vec<String>) -> Arc<Control> {
        Arc::new(Control {
            kill,
            tokens,
            prefixes: std::sync::RwLock::new(prefixes),
            proxy_lock: tokio::sync::Mutex::new(()),
            reloader: std::sync::OnceLock::new(),
            audit: std::sync::OnceLock::new(),
        })
    }

    /// Connects the admin `reload` command to the daemon's reloader.
    pub fn set_reloader(&self, r: Arc<crate::daemon::Reloader>) {
        let _ = self.reloader.set(r);
    }

    /// Sends kill switch and key lifecycle events to the audit trail too.
    pub fn set_audit(&self, a: Arc<AuditLog>) {
        let _ = self.audit.set(a);
    }

    /// Records an operator action in the audit trail (when configured) and waits until it is
    /// on disk, so an acknowledged command is never missing from the trail.
    async fn audit_admin(&self, key_scope: bool, action: &str, scope: &str, by: &Engagement) {
        let Some(a) = self.audit.get().cloned() else {
            return;
        };
        let ev = AdminEvent {
            action: action.to_owned(),
            scope: scope.to_owned(),
            reason: Some(by.reason.clone()),
            uid: by.by_uid,
            via: Some(by.via.clone()),
        };
        a.record(AuditRecord::now(if key_scope {
            AuditEvent::KeyLifecycle(ev)
        } else {
            AuditEvent::KillSwitch(ev)
        }));
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || a.flush()).await {
            tracing::error!(error = %e, "audit trail: flush of an operator action failed");
        }
    }

    /// Executes one request on behalf of `by` (who, via what, why is filled per request).
    pub async fn execute(self: &Arc<Self>, req: AdminRequest, uid: Option<u32>, via: &str) -> AdminResponse {
        let by = |reason: &Option<String>| Engagement {
            reason: reason.clone().unwrap_or_else(|| "no reason given".into()),
            by_uid: uid,
            via: via.to_owned(),
            at: now_rfc3339(),
        };
        let result = match &req {
            AdminRequest::Engage { scope, reason, token } => {
                self.engage(scope, token.as_deref(), by(reason)).await
            }
            AdminRequest::Release { scope, reason, token } => {
                self.release(scope, token.as_deref(), by(reason)).await
            }
            AdminRequest::Status => Ok(self.status()),
            AdminRequest::Reload => match self.reloader.get() {
                Some(r) => r.reload().await.map(|m| json!({ "reloaded": m })),
                None => Err("reload is not available".into()),
            },
            AdminRequest::Keys { token, op } => self.keys(token.as_deref(), op, by(&op.reason())).await,
        };
        let audited = match &req {
            AdminRequest::Engage { scope, reason, .. } => Some((
                matches!(scope, Scope::Key(_)),
                "engage",
                scope.to_string(),
                reason.clone(),
            )),
            AdminRequest::Release { scope, reason, .. } => Some((
                matches!(scope, Scope::Key(_)),
                "release",
                scope.to_string(),
                reason.clone(),
            )),
            AdminRequest::Keys {
                op: KeyOp::List | KeyOp::Show { .. },
                ..
            } => None,
            AdminRequest::Keys { op, .. } => Some((
                true,
                op.name(),
                format!("key:{}", op.id().unwrap_or("-")),
                op.reason(),
            )),
            AdminRequest::Status | AdminRequest::Reload => None,
        };
        if let Some((key_scope, action, scope, reason)) = audited {
            let action = if result.is_ok() {
                action.to_owned()
            } else {
                format!("{action}-failed")
            };
            self.audit_admin(key_scope, &action, &scope, &by(&reason)).await;
        }
        match result {
            Ok(data) => AdminResponse::ok(data),
            Err(e) => AdminResponse::err(e),
        }
    }

    /// Engages the kill switch at `scope` (`token` picks the token for a key scope).
    pub async fn engage(
        self: &Arc<Self>,
        scope: &Scope,
        token: Option<&str>,
        by: Engagement,
    ) -> Result<Value, String> {
        let started = Instant::now();
        tracing::warn!(scope = %scope, by_uid = ?by.by_uid, via = %by.via, reason = %by.reason, "kill switch ENGAGE");
        match scope {
            Scope::Proxy => {
                // Flag first (workers and the request path see it at once), then the durable
                // write, then the disconnect, which finishes in the background.
                let persisted = self.kill.engage_proxy(by);
                let this = self.clone();
                tokio::spawn(async move { this.disconnect_all().await });
                persisted?;
            }
            Scope::Keystore(p) => {
                self.known_prefix(p)?;
                self.kill.engage_keystore(p, by)?;
            }
            Scope::Key(id) => {
                let token = self.token_for(token)?;
                let record = serde_json::to_string(&by).unwrap_or_default();
                let id2 = id.clone();
                let t = token.clone();
                let written = tokio::task::spawn_blocking(move || t.disable_key(&id2, &record))
                    .await
                    .map_err(|e| e.to_string())?;
                let outcome = written.map_err(|e| key_error(id, e))?;
                self.kill.record_key_event("engage", id, by)?;
                if let MarkOutcome::LocalOnly { reason } = outcome {
                    return Ok(json!({
                        "engaged": scope.to_string(),
                        "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0,
                        "mark": "local-only",
                        "warning": format!("the token refused the disabled-key mark ({reason}); only this process refuses the key"),
                    }));
                }
            }
        }
        Ok(json!({ "engaged": scope.to_string(), "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0 }))
    }

    async fn release(
        self: &Arc<Self>,
        scope: &Scope,
        token: Option<&str>,
        by: Engagement,
    ) -> Result<Value, String> {
        let started = Instant::now();
        tracing::warn!(scope = %scope, by_uid = ?by.by_uid, via = %by.via, reason = %by.reason, "kill switch RELEASE");
        match scope {
            Scope::Proxy => {
                let _g = self.proxy_lock.lock().await;
                self.kill.release_proxy(by)?;
                let tokens = self.tokens.clone();
                let errors = tokio::task::spawn_blocking(move || {
                    tokens
                        .iter()
                        .filter_map(|t| t.connect().err().map(|e| format!("{}: {e}", t.name)))
                        .collect::<Vec<_>>()
                })
                .await
                .map_err(|e| e.to_string())?;
                self.kill.clear_proxy_flag();
                if !errors.is_empty() {
                    return Err(format!(
                        "released, but some tokens did not reconnect: {}",
                        errors.join("; ")
                    ));
                }
            }
            Scope::Keystore(p) => {
                self.known_prefix(p)?;
                self.kill.release_keystore(p, by)?;
            }
            Scope::Key(id) => {
                let token = self.token_for(token)?;
                let id2 = id.clone();
                tokio::task::spawn_blocking(move || token.enable_key(&id2))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| key_error(id, e))?;
                self.kill.record_key_event("release", id, by)?;
            }
        }
        Ok(json!({ "released": scope.to_string(), "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0 }))
    }

    /// Logs out of every token, closes every session and finalizes the modules.
    pub async fn disconnect_all(self: &Arc<Self>) {
        let _g = self.proxy_lock.lock().await;
        if !self.kill.proxy_engaged() {
            return;
        }
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
    pub fn status(&self) -> Value {
        let st = self.kill.snapshot();
        let prefixes = self.prefixes();
        let keystores: Vec<Value> = prefixes
            .iter()
            .map(|p| json!({ "prefix": p, "engaged": self.kill.keystore_engaged(p), "by": st.keystores.get(p) }))
            .collect();
        let tokens: Vec<Value> = self
            .tokens
            .iter()
            .map(|t| json!({ "name": t.name, "connected": t.is_connected(), "open_sessions": t.open_sessions(), "disabled_keys": t.refused_keys() }))
            .collect();
        json!({
            "proxy": { "engaged": self.kill.proxy_engaged(), "by": st.proxy },
            "keystores": keystores,
            "tokens": tokens,
            "history": st.history,
        })
    }

    async fn keys(
        self: &Arc<Self>,
        token: Option<&str>,
        op: &KeyOp,
        by: Engagement,
    ) -> Result<Value, String> {
        match op {
            KeyOp::Disable { id, .. } => return self.engage(&Scope::Key(id.clone()), token, by).await,
            KeyOp::Enable { id, .. } => return self.release(&Scope::Key(id.clone()), token, by).await,
            _ => {}
        }
        let t2 = self.token_for(token)?;
        let op2 = op.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut out = Err(String::new());
            let session = t2.key_admin(|k| {
                out = crate::admin::run_key_op(k, &op2);
                Ok(())
            });
            session.map_err(|e| e.to_string())?;
            out
        })
        .await
        .map_err(|e| e.to_string())??;
        if matches!(
            op,
            KeyOp::Create { .. } | KeyOp::Import { .. } | KeyOp::Destroy { .. } | KeyOp::CreateKek { .. }
        ) {
            tracing::warn!(op = op.name(), key_id = op.id().unwrap_or("-"), by_uid = ?by.by_uid, "key lifecycle");
            self.kill
                .record_key_event(op.name(), op.id().unwrap_or("-"), by)?;
        }
        Ok(out)
    }

    fn known_prefix(&self, p: &str) -> Result<(), String> {
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

    /// Adopts the keystore prefixes of a reloaded configuration.
    pub fn set_prefixes(&self, prefixes: Vec<String>) {
        *self.prefixes.write().unwrap_or_else(|p| p.into_inner()) = prefixes;
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

/// The operator's wording of a key-scope failure.
fn key_error(id: &str, e: HsmError) -> String {
    match e {
        HsmError::KeyNotFound => format!("no key with id {id:?} on the token"),
        e => e.to_string(),
    }
}
