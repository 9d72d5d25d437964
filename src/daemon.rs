//! Assembly of the daemon from a validated config: kill switch state, secrets, tokens and their
//! worker pools, keystores, TLS, admin socket, listeners. Start-up fails fast, before anything
//! is served, on a secret that cannot be read (exit 64), an unreadable kill switch state file or
//! a token refusing the PIN (exit 69); a token that is merely absent is retried in the
//! background and reported UNAVAILABLE meanwhile. A daemon whose proxy kill switch is engaged
//! starts without loading any module or logging in.

use crate::admin::Scope;
use crate::app::{App, Keystore};
use crate::auth::{Credential, CredentialSet};
use crate::config::{Config, EXIT_BAD_CONFIG};
use crate::control::Control;
use crate::hsm::{supervisor, Hsm, HsmError, Token};
use crate::kill_switch::{now_rfc3339, Engagement, KillSwitch};
use crate::server::{tls, Server};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Exit status when the daemon cannot start for a reason outside the config file (token
/// refusing the PIN, port in use, unreadable state) (sysexits EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: i32 = 69;
/// How long in-flight requests get to finish on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A start-up failure with the exit status it deserves.
#[derive(Debug)]
pub struct StartError {
    /// Process exit status.
    pub exit_code: i32,
    /// Message for the operator.
    pub message: String,
}

fn config_error(message: String) -> StartError {
    StartError {
        exit_code: EXIT_BAD_CONFIG,
        message,
    }
}

fn unavailable(message: String) -> StartError {
    StartError {
        exit_code: EXIT_UNAVAILABLE,
        message,
    }
}

/// A daemon whose listeners are bound and whose tokens are connected, not yet serving.
pub struct Daemon {
    server: Arc<Server>,
    listeners: Vec<TcpListener>,
    addrs: Vec<SocketAddr>,
    control: Arc<Control>,
}

impl Daemon {
    /// Builds everything from the config. Must run inside a tokio runtime.
    pub async fn start(cfg: &Config) -> Result<Daemon, StartError> {
        let kill = Arc::new(open_state(cfg)?);
        if kill.proxy_engaged() {
            tracing::warn!("proxy kill switch is ENGAGED (from the state file): starting disconnected; release it with `xks-bridge kill-switch release`");
        }
        let mut pools: HashMap<String, Hsm> = HashMap::new();
        let mut tokens = Vec::new();
        for (i, t) in cfg.tokens.iter().enumerate() {
            let pin = t
                .pin
                .load()
                .map_err(|e| config_error(format!("tokens[{i}].pin: {e}")))?;
            let token = Arc::new(Token::new(t, pin, kill.proxy_flag()));
            if !kill.proxy_engaged() {
                let connect_token = token.clone();
                let connected = tokio::task::spawn_blocking(move || connect_token.connect())
                    .await
                    .map_err(|e| unavailable(format!("token connect task failed: {e}")))?;
                match connected {
                    Ok(()) => tracing::info!(token = %t.name, label = %t.token_label, "logged in to token"),
                    Err(HsmError::LoginRefused(msg)) => {
                        return Err(unavailable(format!("tokens[{i}]: {msg}")))
                    }
                    Err(e) => {
                        tracing::error!(token = %t.name, error = %e, "token unavailable at start; retrying in the background")
                    }
                }
            }
            supervisor::spawn(token.clone());
            pools.insert(t.name.clone(), Hsm::start(token.clone(), t));
            tokens.push(token);
        }
        let keystores = build_keystores(cfg, &pools)?;
        let tls = match &cfg.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(
                tls::server_config(&t.certificate, &t.private_key).map_err(config_error)?,
            )),
            None => {
                tracing::warn!("PLAIN HTTP: TLS is disabled (server.allow_plain_http); only run this behind a TLS-terminating load balancer on a trusted network");
                None
            }
        };
        let prefixes = cfg.keystores.iter().map(|k| k.uri_prefix.clone()).collect();
        let control = Control::new(kill.clone(), tokens, prefixes);
        if let Some(a) = &cfg.admin {
            crate::admin::serve(&a.socket, a.group.as_deref(), control.clone()).map_err(unavailable)?;
        }
        engage_on_sigusr1(control.clone());
        let app = Arc::new(App {
            keystores,
            limits: cfg.limits.clone(),
            fleet_size: cfg.server.fleet_size,
            kill,
        });
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for addr in &cfg.server.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| unavailable(format!("server.listen: cannot bind {addr}: {e}")))?;
            addrs.push(l.local_addr().unwrap_or(*addr));
            listeners.push(l);
        }
        Ok(Daemon {
            server: Server::new(app, tls),
            listeners,
            addrs,
            control,
        })
    }

    /// The bound addresses (ephemeral ports resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The control plane (kill switch, keys).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Serves until `shutdown` flips to true, then drains in-flight requests.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        self.server.serve(self.listeners, shutdown, SHUTDOWN_GRACE).await;
    }
}

fn open_state(cfg: &Config) -> Result<KillSwitch, StartError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.state.directory)
        .map_err(|e| {
            unavailable(format!(
                "state.directory: cannot create {}: {e}",
                cfg.state.directory.display()
            ))
        })?;
    KillSwitch::load(&cfg.state.kill_switch_file()).map_err(unavailable)
}

fn build_keystores(cfg: &Config, pools: &HashMap<String, Hsm>) -> Result<Vec<Keystore>, StartError> {
    let mut keystores = Vec::new();
    for (i, k) in cfg.keystores.iter().enumerate() {
        let mut creds = Vec::new();
        for (j, c) in k.credentials.iter().enumerate() {
            let secret = c
                .secret
                .load()
                .map_err(|e| config_error(format!("keystores[{i}].credentials[{j}].secret: {e}")))?;
            creds.push(Credential::new(c.access_key_id.clone(), secret));
        }
        let pattern = match &k.key_pattern {
            Some(p) => Some(
                glob::Pattern::new(p)
                    .map_err(|e| config_error(format!("keystores[{i}].key_pattern: {e}")))?,
            ),
            None => None,
        };
        let hsm = pools
            .get(&k.token)
            .cloned()
            .ok_or_else(|| config_error(format!("keystores[{i}].token: unknown")))?;
        let set = CredentialSet::new(creds, k.allowed_regions.clone());
        keystores.push(Keystore::new(
            k.uri_prefix.clone(),
            set,
            hsm,
            k.allowed_keys.clone(),
            pattern,
        ));
    }
    Ok(keystores)
}

/// SIGUSR1 engages the whole-proxy kill switch, for tooling that can only send signals.
fn engage_on_sigusr1(control: Arc<Control>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        tracing::error!("cannot install the SIGUSR1 handler");
        return;
    };
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            let by = Engagement {
                reason: "SIGUSR1 received".into(),
                by_uid: None,
                via: "signal SIGUSR1".into(),
                at: now_rfc3339(),
            };
            if let Err(e) = control.engage(&Scope::Proxy, None, by).await {
                tracing::error!(error = %e, "SIGUSR1 engage: {e}");
            }
        }
    });
}

/// A watch channel that flips on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        let _ = tx.send(true);
    });
    rx
}
