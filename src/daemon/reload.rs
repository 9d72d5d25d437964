//! Hot reload: re-reads the config file and swaps what may change without a restart.

use super::keystores::build_app;
use crate::config::Config;
use crate::control::verbs::{Prefixes, Reload};
use crate::control::ReloadError;
use crate::gates::Gates;
use crate::hsm::Hsm;
use crate::metrics::Counters;
use crate::server::Server;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Re-reads the config file and swaps keystores (credentials, key selection, quotas, regions),
/// size limits, the policy and TLS (certificates and mTLS trust) without dropping connections or
/// in-flight requests. Tokens, state, admin, audit, metrics and connection settings need a
/// restart: a reload that changes them, or any invalid config, is refused and the running
/// config keeps serving. A changed `server.listen` is ignored with a warning.
pub struct Reloader {
    pub(super) path: Option<PathBuf>,
    pub(super) pools: HashMap<String, Hsm>,
    pub(super) gates: Arc<Gates>,
    pub(super) server: Arc<Server>,
    pub(super) base: Config,
    pub(super) counters: Arc<Counters>,
    /// Shared with the control plane, which checks keystore scopes against them.
    pub(super) prefixes: Prefixes,
}

impl Reload for Reloader {
    fn reload(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, ReloadError>> + Send + '_>> {
        Box::pin(Reloader::reload(self))
    }
}

impl Reloader {
    /// Performs one reload; the result is also logged.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        let result = self.try_reload();
        match &result {
            Ok(msg) => {
                self.counters
                    .reloads_ok
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!("configuration reloaded: {msg}")
            }
            Err(e) => {
                self.counters
                    .reloads_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!("reload refused, previous configuration still serving: {e}")
            }
        }
        result
    }

    fn try_reload(&self) -> Result<String, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoConfigFile)?;
        let cfg = Config::load(path)?;
        // Everything outside keystores, limits, policy, TLS and logging is fixed at start; a
        // change there is refused rather than silently ignored.
        let fixed = |c: &Config| {
            let s = &c.server;
            format!(
                "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{}|{}|{}|{}|{:?}",
                c.logging,
                c.tokens,
                c.state,
                c.admin,
                c.audit,
                c.metrics,
                s.allow_plain_http,
                s.max_connections,
                s.tls_handshake_timeout_ms,
                s.header_read_timeout_ms,
                s.body_read_timeout_ms,
                s.max_header_bytes,
                s.allow_root,
                crate::server::ConnLimits::from(s)
            )
        };
        if fixed(&cfg) != fixed(&self.base) {
            return Err(ReloadError::NeedsRestart);
        }
        if cfg.server.listen != self.base.server.listen {
            tracing::warn!("server.listen changed in the file: listeners are kept until a restart");
        }
        let (app, tls) =
            build_app(&cfg, &self.pools, &self.gates).map_err(|e| ReloadError::Rebuild(e.message))?;
        let summary = format!(
            "{} keystore(s), {} credential(s)",
            app.keystores.len(),
            cfg.keystores.iter().map(|k| k.credentials.len()).sum::<usize>()
        );
        self.server.swap(Arc::new(app), tls);
        *self.prefixes.write().unwrap_or_else(|p| p.into_inner()) =
            cfg.keystores.iter().map(|k| k.uri_prefix.clone()).collect();
        Ok(summary)
    }
}
