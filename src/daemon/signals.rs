//! Signals and systemd: SIGTERM/SIGINT start the drain, SIGUSR1 engages the whole-proxy kill
//! switch, SIGHUP reloads, and the watchdog is pinged while every HSM worker pool answers.

use super::reload::Reloader;
use crate::control::{AdminReply, AdminRequest, Control, Scope};
use crate::hsm::Hsm;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Runs `action` each time the signal arrives.
pub(super) fn on_signal<F, Fut>(kind: tokio::signal::unix::SignalKind, name: &'static str, action: F)
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

/// Pings systemd's watchdog at half its interval while every worker pool made progress since
/// the previous tick ([`Hsm::progress`]: a worker finished a job or woke from its idle check).
/// Liveness is read, not probed through the queue: a saturated pool that keeps serving is
/// alive (a restart would only drop its work and deepen the overload), while a pool whose
/// workers are all stuck inside PKCS#11 calls for a whole tick withholds the ping and systemd
/// restarts the service.
pub(super) fn spawn_watchdog(pools: Vec<Hsm>) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        let mut last: Vec<u64> = pools.iter().map(Hsm::progress).collect();
        loop {
            tokio::time::sleep(every).await;
            let now: Vec<u64> = pools.iter().map(Hsm::progress).collect();
            let stalled: Vec<&str> = pools
                .iter()
                .zip(last.iter().zip(&now))
                .filter(|(_, (before, after))| before == after)
                .map(|(p, _)| p.token().name.as_str())
                .collect();
            last = now;
            if stalled.is_empty() {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::error!(
                    tokens = ?stalled,
                    "no HSM worker of these tokens made progress; withholding the watchdog ping"
                );
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

/// SIGUSR1 engages the whole-proxy kill switch (through the same verb as the admin socket);
/// SIGHUP reloads the config.
pub(super) fn install(control: Arc<Control>, reloader: Arc<Reloader>) {
    on_signal(
        tokio::signal::unix::SignalKind::user_defined1(),
        "SIGUSR1",
        move || {
            let control = control.clone();
            async move {
                let req = AdminRequest::Engage {
                    scope: Scope::Proxy,
                    reason: Some("SIGUSR1 received".into()),
                    token: None,
                    fleet: false,
                };
                if let AdminReply::Failed { error } = control.execute(req, None, "signal SIGUSR1").await {
                    tracing::error!(error = %error, "SIGUSR1 engage failed");
                }
            }
        },
    );
    on_signal(tokio::signal::unix::SignalKind::hangup(), "SIGHUP", move || {
        let reloader = reloader.clone();
        async move {
            let _ = reloader.reload().await;
        }
    });
}
