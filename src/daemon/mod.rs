//! Assembly of the daemon from a validated config, in one readable sequence: start-up checks
//! and the state directory's lock → kill switch → audit → tokens and worker pools → metrics →
//! keystores and server → control plane (admin socket, signals) → listeners. Start-up fails
//! fast, before anything is served: a secret that cannot be read or running as root without
//! `server.allow_root` (exit 64); another daemon on the state directory, an unreadable state
//! file or a token refusing the PIN (exit 69). A token that is merely absent is retried in the
//! background and reported UNAVAILABLE meanwhile. A daemon whose proxy kill switch is engaged
//! starts without loading any module or logging in.

mod connections;
mod keystores;
mod observer;
mod reload;
mod signals;
mod sinks;
mod startup;
mod tokens;

pub use reload::Reloader;
pub use signals::shutdown_on_signals;
pub use startup::{StartError, EXIT_UNAVAILABLE};

use crate::audit::AuditLog;
use crate::config::Config;
use crate::control::lock::InstanceLock;
use crate::control::protocol::DaemonState;
use crate::control::switch::Switch;
use crate::control::verbs::{Prefixes, Reload};
use crate::control::Control;
use crate::hsm::{Hsm, Token};
use crate::metrics::{Counters, Metrics, SwitchProbe, SwitchSample};
use crate::server::{ConnLimits, Server};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long an exiting daemon waits for admin-socket replies still being written.
const ADMIN_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// A daemon whose listeners are bound and whose tokens are connected, not yet serving.
pub struct Daemon {
    server: Arc<Server>,
    listeners: Vec<TcpListener>,
    addrs: Vec<SocketAddr>,
    control: Arc<Control>,
    pools: Vec<Hsm>,
    metrics_addr: Option<SocketAddr>,
    audit: Option<Arc<AuditLog>>,
    /// Rate-limited summaries of refused requests and dropped audit records.
    alarms: Arc<observer::Alarms>,
    /// Held for the daemon's whole life: one daemon per state directory.
    _lock: InstanceLock,
}

impl Daemon {
    /// Builds everything from the config. `config_path` is re-read on reload (SIGHUP or the
    /// admin `reload` command). Must run inside a tokio runtime.
    pub async fn start(cfg: &Config, config_path: Option<PathBuf>) -> Result<Daemon, StartError> {
        startup::raise_fd_limit(cfg.server.max_connections);
        startup::refuse_root(cfg)?;
        // The lock comes before the admin socket and the ports: a second daemon stops here.
        let (lock, switch) = startup::open_state(cfg)?;
        let switch = Arc::new(switch);
        if switch.proxy_engaged() {
            tracing::warn!("proxy kill switch is ENGAGED (from the state file): starting disconnected; release it with `xks-bridge kill-switch release`");
        }
        let audit = match &cfg.audit {
            Some(a) => Some(Arc::new(sinks::open_audit(a)?)),
            None => None,
        };
        let (tokens, pools) = tokens::start(cfg, &switch).await?;
        let pool_list: Vec<Hsm> = pools.values().cloned().collect();
        let prefixes: Prefixes = Arc::new(std::sync::RwLock::new(
            cfg.keystores.iter().map(|k| k.uri_prefix.clone()).collect(),
        ));
        let counters = Arc::new(Counters::default());
        let metrics = cfg.metrics.as_ref().map(|_| {
            Metrics::new(
                pool_list.clone(),
                switch_probe(&switch, &tokens, &prefixes),
                cfg.tls.as_ref().map(|t| t.certificate.clone()),
                counters.clone(),
                audit_errors(&audit),
            )
        });
        let (app, tls) = keystores::build_app(cfg, &pools, switch.gates())?;
        if tls.is_none() {
            tracing::warn!("PLAIN HTTP: TLS is disabled (server.allow_plain_http); only run this behind a TLS-terminating load balancer on a trusted network");
        }
        let limits = ConnLimits::from(&cfg.server);
        let alarms = Arc::new(observer::Alarms::default());
        let observer = observer::observer(audit.clone(), metrics.clone(), alarms.clone());
        let server = Server::new(Arc::new(app), tls, limits, Some(observer));
        if let Some(m) = &metrics {
            m.set_connection_probe(connections::probe(server.budget().clone()));
            m.set_runtime_threads(tokio::runtime::Handle::current().metrics().num_workers());
            let drain = server.drain().clone();
            m.set_drain_probe(Arc::new(move || drain.is_draining()));
        }
        let reloader = Arc::new(Reloader {
            path: config_path,
            pools,
            gates: switch.gates().clone(),
            server: server.clone(),
            base: cfg.clone(),
            counters,
            prefixes: prefixes.clone(),
        });
        let connected: Vec<_> = tokens.iter().filter(|t| t.is_connected()).cloned().collect();
        let control = Control::new(
            switch,
            tokens,
            prefixes,
            Some(reloader.clone() as Arc<dyn Reload>),
            audit.clone(),
            DaemonState::Running,
        );
        // Fleet marks read when the tokens connected hold before the first request is served.
        control.start_fleet_watch();
        if let Some(a) = &cfg.admin {
            crate::control::socket::serve(&a.socket, a.group.as_deref(), control.clone(), &lock)
                .map_err(|e| startup::unavailable(e.to_string()))?;
        }
        control.set_drain(server.drain().clone());
        signals::install(control.clone(), reloader);
        let (listeners, addrs) = bind_listeners(cfg).await?;
        let metrics_addr = match (&cfg.metrics, metrics) {
            (Some(m), Some(metrics)) => {
                // The API listener's header deadline: a scrape's head is as small as a request's.
                let header = std::time::Duration::from_millis(cfg.server.header_read_timeout_ms);
                Some(serve_metrics(m.listen, metrics, header).await?)
            }
            _ => None,
        };
        // Only once nothing can fail any more: a start that fails must not leave a thread
        // inside the token while the process ends.
        for t in &connected {
            tokens::prefetch(cfg, t);
        }
        tokens::wait_prefetched(&connected).await;
        Ok(Daemon {
            server,
            listeners,
            addrs,
            control,
            pools: pool_list,
            metrics_addr,
            audit,
            alarms,
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

    /// The HTTP front end.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Serves until a drain begins (`shutdown` names a signal, or the admin `drain` verb ran;
    /// a further signal cuts its delay short) and completes (see [`crate::server::drain`]). Tells systemd READY=1 when serving starts
    /// (STOPPING=1 is sent by the server when the listeners close), and pings its watchdog
    /// while the worker pools answer.
    pub async fn run(self, mut shutdown: watch::Receiver<Option<(&'static str, u32)>>) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        signals::spawn_watchdog(self.pools.clone());
        let alarms = self.alarms.clone();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(observer::SUMMARY_EVERY);
            loop {
                every.tick().await;
                alarms.tick(false);
            }
        });
        let drain = self.server.drain().clone();
        let on_signal = tokio::spawn(async move {
            let mut seen = 0;
            while shutdown.changed().await.is_ok() {
                let Some((name, n)) = *shutdown.borrow_and_update() else {
                    continue;
                };
                if seen == 0 {
                    drain.begin(&format!("signal {name}"));
                }
                // A second signal (Ctrl-C pressed again) skips the rest of the delay.
                if n > 1 {
                    drain.hurry();
                }
                seen = n;
            }
        });
        let started = std::time::Instant::now();
        self.server.serve(self.listeners).await;
        // The `drain` command that stopped the daemon gets its answer before the process ends.
        self.control.settle(ADMIN_SETTLE).await;
        on_signal.abort();
        ticker.abort();
        self.alarms.tick(true);
        if let Some(a) = self.audit {
            // Everything audited so far reaches the disk before the process exits.
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || a.flush_and_close()).await {
                tracing::error!(error = %e, "audit trail: final flush failed");
            }
        }
        self.control.release_tokens_for_exit().await;
        tracing::info!(served_s = started.elapsed().as_secs(), "stopped: exiting 0");
    }
}

/// Binds every `server.listen` address (port 0 resolved).
async fn bind_listeners(cfg: &Config) -> Result<(Vec<TcpListener>, Vec<SocketAddr>), StartError> {
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for addr in &cfg.server.listen {
        let l = bind_listener(*addr)
            .map_err(|e| startup::unavailable(format!("server.listen: cannot bind {addr}: {e}")))?;
        addrs.push(l.local_addr().unwrap_or(*addr));
        listeners.push(l);
    }
    Ok((listeners, addrs))
}

/// The accept queue's length. A flood of connections that the budget refuses still passes
/// through this queue; when it overflows, the kernel drops the SYNs of every other client
/// (KMS) too, which then retry only a second later. The kernel caps it at
/// `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restart must not wait for TIME_WAIT sockets.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds the metrics listener and serves it.
async fn serve_metrics(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    header_timeout: std::time::Duration,
) -> Result<SocketAddr, StartError> {
    let l = TcpListener::bind(listen)
        .await
        .map_err(|e| startup::unavailable(format!("metrics.listen: cannot bind {listen}: {e}")))?;
    let addr = l.local_addr().unwrap_or(listen);
    metrics.serve(l, header_timeout);
    Ok(addr)
}

/// Audit records dropped or not written, for the metrics.
fn audit_errors(audit: &Option<Arc<AuditLog>>) -> Option<Arc<dyn Fn() -> u64 + Send + Sync>> {
    audit.clone().map(|a| {
        let f: Arc<dyn Fn() -> u64 + Send + Sync> = Arc::new(move || a.write_errors() + a.dropped());
        f
    })
}

/// The kill switch as the metrics sample it at scrape time.
fn switch_probe(switch: &Arc<Switch>, tokens: &[Arc<Token>], prefixes: &Prefixes) -> SwitchProbe {
    let (switch, tokens, prefixes) = (switch.clone(), tokens.to_vec(), prefixes.clone());
    Arc::new(move || {
        let mut engaged = vec![("proxy".to_owned(), switch.proxy_engaged())];
        for p in prefixes.read().unwrap_or_else(|p| p.into_inner()).iter() {
            engaged.push((format!("keystore:{p}"), switch.gates().keystore_closed(p)));
        }
        for t in &tokens {
            engaged.extend(t.refused_keys().into_iter().map(|k| (format!("key:{k}"), true)));
        }
        SwitchSample {
            engaged,
            durable: switch.is_durable(),
        }
    })
}
