//! Assembly of the daemon from a validated config: kill switch state, secrets, tokens and their
//! worker pools, keystores, TLS, admin socket, listeners; systemd readiness and watchdog; and
//! hot reload. Start-up fails fast, before anything is served, on a secret that cannot be read
//! or running as root without `server.allow_root` (exit 64), an unreadable kill switch state file
//! or a token refusing the PIN (exit 69); a token that is merely absent is retried in the
//! background and reported UNAVAILABLE meanwhile. A daemon whose proxy kill switch is engaged
//! starts without loading any module or logging in.

use crate::app::App;
use crate::audit::{AuditEvent, AuditLog, AuditOptions, AuditRecord, FsyncPolicy, RequestEvent};
use crate::auth::{Credential, CredentialSet};
use crate::config::{AuditConfig, AuditFsync};
use crate::config::{Config, EXIT_BAD_CONFIG};
use crate::control::dirs::check_private_dir;
use crate::control::lock::{InstanceLock, LockError};
use crate::control::protocol::DaemonState;
use crate::control::switch::Switch;
use crate::control::verbs::{Prefixes, Reload};
use crate::control::{AdminReply, AdminRequest, Control, Scope};
use crate::gates::Gates;
use crate::hsm::{supervisor, Hsm, HsmError, Token};
use crate::keystore::Keystore;
use crate::metrics::{Counters, Metrics};
use crate::ratelimit::TokenBucket;
use crate::server::{tls, ConnLimits, Finished, Observer, Server};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Exit status when the daemon cannot start for a reason outside the config file (token
/// refusing the PIN, port in use, unreadable state) (sysexits EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: i32 = crate::exit::Exit::Unavailable as i32;
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
    pools: Vec<Hsm>,
    metrics_addr: Option<SocketAddr>,
    audit: Option<Arc<AuditLog>>,
    /// Held for the daemon's whole life: one daemon per state directory.
    _lock: InstanceLock,
}

impl Daemon {
    /// Builds everything from the config. `config_path` is re-read on reload (SIGHUP or the
    /// admin `reload` command). Must run inside a tokio runtime.
    pub async fn start(cfg: &Config, config_path: Option<PathBuf>) -> Result<Daemon, StartError> {
        raise_fd_limit(cfg.server.max_connections);
        if own_uid() == 0 && !cfg.server.allow_root {
            return Err(config_error(
                "server.allow_root: refusing to run as root; run as a dedicated user (see systemd/) or set allow_root = true".into(),
            ));
        }
        let (lock, switch) = open_state(cfg)?;
        let switch = Arc::new(switch);
        let gates = switch.gates().clone();
        if switch.proxy_engaged() {
            tracing::warn!("proxy kill switch is ENGAGED (from the state file): starting disconnected; release it with `xks-bridge kill-switch release`");
        }
        let mut pools: HashMap<String, Hsm> = HashMap::new();
        let mut tokens = Vec::new();
        for (i, t) in cfg.tokens.iter().enumerate() {
            let pin = t
                .pin
                .load()
                .map_err(|e| config_error(format!("tokens[{i}].pin: {e}")))?;
            let token = Arc::new(Token::new(t, pin, gates.proxy().flag()));
            if let Some(local) = switch.local_key_denies().get(&t.name) {
                crate::control::keys::install_local_denies(&token, local.keys());
            }
            if !switch.proxy_engaged() {
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
            pools.insert(
                t.name.clone(),
                Hsm::start(token.clone(), t, crate::metrics::latency_histogram()),
            );
            tokens.push(token);
        }
        let (app, tls) = build_app(cfg, &pools, &gates)?;
        if tls.is_none() {
            tracing::warn!("PLAIN HTTP: TLS is disabled (server.allow_plain_http); only run this behind a TLS-terminating load balancer on a trusted network");
        }
        let server = Server::new(Arc::new(app), tls, ConnLimits::from(&cfg.server));
        let prefixes: Prefixes = Arc::new(std::sync::RwLock::new(
            cfg.keystores.iter().map(|k| k.uri_prefix.clone()).collect(),
        ));
        let counters = Arc::new(Counters::default());
        let reloader = Arc::new(Reloader {
            path: config_path,
            pools: pools.clone(),
            gates,
            server: server.clone(),
            base: cfg.clone(),
            counters: counters.clone(),
            prefixes: prefixes.clone(),
        });
        let audit = match &cfg.audit {
            Some(a) => Some(Arc::new(open_audit(a)?)),
            None => None,
        };
        let control = Control::new(
            switch,
            tokens,
            prefixes,
            Some(reloader.clone() as Arc<dyn Reload>),
            audit.clone(),
            DaemonState::Running,
        );
        if let Some(a) = &cfg.admin {
            crate::control::socket::serve(&a.socket, a.group.as_deref(), control.clone(), &lock)
                .map_err(unavailable)?;
        }
        on_signal(tokio::signal::unix::SignalKind::user_defined1(), "SIGUSR1", {
            let control = control.clone();
            move || {
                let control = control.clone();
                async move {
                    let req = AdminRequest::Engage {
                        scope: Scope::Proxy,
                        reason: Some("SIGUSR1 received".into()),
                        token: None,
                    };
                    if let AdminReply::Failed { error } = control.execute(req, None, "signal SIGUSR1").await {
                        tracing::error!(error = %error, "SIGUSR1 engage failed");
                    }
                }
            }
        });
        on_signal(tokio::signal::unix::SignalKind::hangup(), "SIGHUP", move || {
            let reloader = reloader.clone();
            async move {
                let _ = reloader.reload().await;
            }
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
        let pools: Vec<Hsm> = pools.into_values().collect();
        let mut observers: Vec<Observer> = Vec::new();
        if let Some(a) = audit.clone() {
            observers.push(Arc::new(move |d: &Finished| a.record(request_record(d))));
        }
        let mut metrics_addr = None;
        if let Some(m) = &cfg.metrics {
            let l = TcpListener::bind(m.listen)
                .await
                .map_err(|e| unavailable(format!("metrics.listen: cannot bind {}: {e}", m.listen)))?;
            metrics_addr = l.local_addr().ok();
            let cert = cfg.tls.as_ref().map(|t| t.certificate.clone());
            let audit_errors = audit.clone().map(|a| {
                let f: Arc<dyn Fn() -> u64 + Send + Sync> = Arc::new(move || a.write_errors() + a.dropped());
                f
            });
            let probe_control = control.clone();
            let probe: crate::metrics::SwitchProbe = Arc::new(move || switch_sample(&probe_control.status()));
            let metrics = Metrics::new(pools.clone(), probe, cert, counters, audit_errors);
            let observer = metrics.clone();
            observers.push(Arc::new(move |d: &Finished| observer.observe(d)));
            metrics.serve(l);
        }
        if !observers.is_empty() {
            server.set_observer(Arc::new(move |d: &Finished| observers.iter().for_each(|o| o(d))));
        }
        Ok(Daemon {
            server,
            listeners,
            addrs,
            control,
            pools,
            metrics_addr,
            audit,
            _lock: lock,
        })
    }

    /// The bound addresses (ephemeral ports resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The bound metrics address, if metrics are enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The control plane (kill switch, keys, reload).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// The HTTP front end (to install an observer).
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Serves until `shutdown` flips to true, then drains in-flight requests. Tells systemd
    /// READY=1 when serving starts (STOPPING=1 is sent by the server when the drain begins), and
    /// pings its watchdog while the worker pools answer.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        spawn_watchdog(self.pools.clone());
        self.server.serve(self.listeners, shutdown, SHUTDOWN_GRACE).await;
        if let Some(a) = self.audit {
            // Everything audited so far reaches the disk before the process exits.
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || a.flush_and_close()).await {
                tracing::error!(error = %e, "audit trail: final flush failed");
            }
        }
    }
}

/// Re-reads the config file and swaps keystores (credentials, key selection, quotas, regions),
/// size limits, the policy and TLS (certificates and mTLS trust) without dropping connections or
/// in-flight requests. Tokens, state, admin, audit, metrics and connection settings need a
/// restart: a reload that changes them, or any invalid config, is refused and the running
/// config keeps serving. A changed `server.listen` is ignored with a warning.
pub struct Reloader {
    path: Option<PathBuf>,
    pools: HashMap<String, Hsm>,
    gates: Arc<Gates>,
    server: Arc<Server>,
    base: Config,
    counters: Arc<Counters>,
    /// Shared with the control plane, which checks keystore scopes against them.
    prefixes: Prefixes,
}

impl Reload for Reloader {
    fn reload(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(Reloader::reload(self))
    }
}

impl Reloader {
    /// Performs one reload; the result is also logged.
    pub async fn reload(&self) -> Result<String, String> {
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

    fn try_reload(&self) -> Result<String, String> {
        let path = self
            .path
            .as_ref()
            .ok_or("this daemon was started without a config file to reload")?;
        let cfg = Config::load(path)?;
        // Everything outside keystores, limits, policy, TLS and logging is fixed at start; a
        // change there is refused rather than silently ignored.
        let fixed = |c: &Config| {
            let s = &c.server;
            format!(
                "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{}|{}|{}|{}",
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
                s.allow_root
            )
        };
        if fixed(&cfg) != fixed(&self.base) {
            return Err(
                "logging, tokens, state, admin, audit, metrics or connection settings changed: these need a restart"
                    .into(),
            );
        }
        if cfg.server.listen != self.base.server.listen {
            tracing::warn!("server.listen changed in the file: listeners are kept until a restart");
        }
        let (app, tls) = build_app(&cfg, &self.pools, &self.gates).map_err(|e| e.message)?;
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

fn open_audit(a: &AuditConfig) -> Result<AuditLog, StartError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = a.file.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| unavailable(format!("audit.file: cannot create {}: {e}", dir.display())))?;
    }
    let fsync = match a.fsync {
        AuditFsync::EveryRecord => FsyncPolicy::EveryRecord,
        AuditFsync::Interval => FsyncPolicy::Interval(Duration::from_millis(a.fsync_interval_ms)),
        AuditFsync::Never => FsyncPolicy::Never,
    };
    let options = AuditOptions {
        fsync,
        rotate_at_bytes: a.rotate_at_bytes,
        ..AuditOptions::default()
    };
    AuditLog::open_with(&a.file, options).map_err(|e| unavailable(format!("audit.file: {e}")))
}

/// One audit record per request, from what the server knows when the response is decided.
fn request_record(d: &Finished) -> AuditRecord {
    let dash = |s: &str| (s != "-").then(|| s.to_owned());
    AuditRecord::now(AuditEvent::Request(RequestEvent {
        request_id: d.request_id,
        kms_request_id: d.ctx.kms_request_id.clone(),
        keystore: dash(&d.keystore),
        access_key_id: d.ctx.access_key_id.clone(),
        principal: d.ctx.principal.clone(),
        operation: dash(d.operation),
        key_id: dash(&d.key_id),
        kms_operation: d.ctx.kms_operation.clone(),
        via_service: d.ctx.via_service.clone(),
        source_vpc: d.ctx.source_vpc.clone(),
        source_vpce: d.ctx.source_vpce.clone(),
        authz_rule: d.ctx.authz_rule.clone(),
        outcome: d.outcome.to_owned(),
        status: d.status,
        latency_us: d.latency_us,
    }))
}

/// Raises the soft open-file limit to the hard limit (systemd starts services at 1024), so
/// `max_connections` is not cut short by "too many open files"; warns if it still does not fit.
fn raise_fd_limit(max_connections: usize) {
    let wanted = max_connections as u64 + 256;
    match rlimit::increase_nofile_limit(wanted.max(65_536)) {
        Ok(got) if got < wanted => tracing::warn!(
            limit = got,
            max_connections,
            "open-file limit is below server.max_connections + 256; raise LimitNOFILE"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

fn own_uid() -> u32 {
    crate::control::peer::own_uid()
}

/// Creates and checks the state directory, takes its instance lock (before the admin socket
/// or any port is touched) and loads the kill switch.
fn open_state(cfg: &Config) -> Result<(InstanceLock, Switch), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = &cfg.state.directory;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| unavailable(format!("state.directory: cannot create {}: {e}", dir.display())))?;
    let uid = own_uid();
    check_private_dir(dir, "state.directory", uid).map_err(unavailable)?;
    let lock = InstanceLock::acquire(dir).map_err(|e| match e {
        LockError::Held { pid, .. } => unavailable(format!(
            "state.directory: another xks-bridge daemon (pid {}) is already running with {}; refusing to start a second one (its admin socket and port are left alone)",
            pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
            dir.display()
        )),
        other => unavailable(format!("state.directory: {other}")),
    })?;
    if let Some(a) = &cfg.admin {
        if let Some(parent) = a.socket.parent() {
            check_private_dir(parent, "admin.socket", uid).map_err(unavailable)?;
        }
    }
    if let Some(a) = &cfg.audit {
        if let Some(parent) = a.file.parent().filter(|p| p.is_dir()) {
            check_private_dir(parent, "audit.file", uid).map_err(unavailable)?;
        }
    }
    let switch = Switch::load(&cfg.state.kill_switch_file()).map_err(|e| unavailable(e.to_string()))?;
    Ok((lock, switch))
}

/// Everything a reload may change: keystores (secrets re-read), limits, TLS.
fn build_app(
    cfg: &Config,
    pools: &HashMap<String, Hsm>,
    gates: &Arc<Gates>,
) -> Result<(App, Option<TlsAcceptor>), StartError> {
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
        let mut ks = Keystore::new(
            k.uri_prefix.clone(),
            set,
            hsm,
            k.allowed_keys.clone(),
            pattern,
            gates.keystore(&k.uri_prefix),
        );
        ks.quota = k.rate_limit.as_ref().map(TokenBucket::new);
        keystores.push(ks);
    }
    let policy = match &cfg.policy {
        Some(p) => Some(Arc::new(p.compile().map_err(|errs| {
            config_error(
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?)),
        None => None,
    };
    for ks in &mut keystores {
        ks.policy = policy.clone();
    }
    let tls = match &cfg.tls {
        Some(t) => Some(TlsAcceptor::from(tls::server_config(t).map_err(config_error)?)),
        None => None,
    };
    Ok((
        App::new(
            keystores,
            cfg.limits.clone(),
            cfg.server.fleet_size,
            gates.clone(),
        ),
        tls,
    ))
}

/// The kill switch's status as the metrics sample it.
fn switch_sample(st: &crate::control::Status) -> crate::metrics::SwitchSample {
    let mut engaged = vec![("proxy".to_owned(), st.proxy.engaged)];
    engaged.extend(
        st.keystores
            .iter()
            .map(|k| (format!("keystore:{}", k.prefix), k.state.engaged)),
    );
    for t in &st.tokens {
        engaged.extend(t.disabled_keys.iter().map(|k| (format!("key:{k}"), true)));
    }
    let durable =
        st.proxy.durable && st.keystores.iter().all(|k| k.state.durable) && st.state_write_error.is_none();
    crate::metrics::SwitchSample { engaged, durable }
}

/// Runs `action` each time the signal arrives.
fn on_signal<F, Fut>(kind: tokio::signal::unix::SignalKind, name: &'static str, action: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let Ok(mut sig) = tokio::signal::unix::signal(kind) else {
        tracing::error!("cannot install the {name} handler");
        return;
    };
    tokio::spawn(async move {
        while sig.recv().await.is_some() {
            tracing::info!("{name} received");
            action().await;
        }
    });
}

/// Pings systemd's watchdog at half its interval, but only while every worker pool answers a
/// liveness job: a wedged pool stops the pings and systemd restarts the service.
fn spawn_watchdog(pools: Vec<Hsm>) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let mut alive = true;
            for p in &pools {
                alive &= p.ping().await;
            }
            if alive {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::error!("an HSM worker pool did not answer; withholding the watchdog ping");
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
