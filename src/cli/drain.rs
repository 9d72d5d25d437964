//! `xks-bridge drain`: takes the running daemon out of its load balancer's rotation and stops
//! it, as SIGTERM does, but with an answer: what the daemon started and when it exited. Only the
//! running daemon can drain, so unlike the kill switch there is no offline path: a daemon that
//! cannot be reached is exit 69.

use super::{load, CliResult};
use clap::Args;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use xks_bridge::control::protocol::{AdminReply, AdminRequest, DrainReport};
use xks_bridge::control::socket::{request, ClientError};
use xks_bridge::exit::Exit;

/// How often the exit of the daemon is checked.
const POLL: Duration = Duration::from_millis(100);
/// Time allowed beyond the drain delay and grace before the wait gives up.
const WAIT_SLACK: Duration = Duration::from_secs(10);

/// `drain` options.
#[derive(Args)]
pub struct DrainArgs {
    /// Configuration file of the daemon (its `[admin] socket` is used).
    #[arg(long)]
    config: PathBuf,
    /// Why (logged by the daemon with your uid).
    #[arg(long)]
    reason: Option<String>,
    /// Return once the drain has started instead of waiting for the daemon to exit.
    #[arg(long)]
    no_wait: bool,
}

/// Starts the drain and, unless `--no-wait`, waits until the daemon's admin socket stops
/// answering (the process has exited).
pub fn drain(a: DrainArgs) -> CliResult {
    let cfg = load(&a.config)?;
    let unavailable = |m: String| (Exit::Unavailable.code(), m);
    let Some(admin) = &cfg.admin else {
        return Err(unavailable(
            "drain needs the running daemon's admin socket, and the config has no [admin] section".into(),
        ));
    };
    let socket = admin.socket.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            (
                Exit::OsError.code(),
                format!("cannot start the async runtime: {e}"),
            )
        })?;
    let started = Instant::now();
    let req = AdminRequest::Drain { reason: a.reason };
    let report = match rt.block_on(request(&socket, &req)) {
        Ok(AdminReply::Draining(r)) => r,
        Ok(other) => return Err(super::render::unexpected(other)),
        Err(ClientError::NoAnswer(p)) => {
            return Err(unavailable(format!(
                "no daemon answers on {}; nothing to drain (is it running?)",
                p.display()
            )))
        }
        Err(ClientError::Failed(e)) => return Err(unavailable(e)),
    };
    outln!("{}", describe(&report));
    if a.no_wait {
        return Ok(());
    }
    let limit = Duration::from_millis(report.drain_delay_ms.saturating_sub(report.elapsed_ms))
        + Duration::from_millis(report.drain_grace_ms)
        + WAIT_SLACK;
    while started.elapsed() < limit {
        std::thread::sleep(POLL);
        if let Err(ClientError::NoAnswer(_)) = rt.block_on(request(&socket, &AdminRequest::Status)) {
            outln!(
                "daemon (pid {}) exited {} ms after the drain request",
                report.pid,
                started.elapsed().as_millis()
            );
            return Ok(());
        }
    }
    Err((
        Exit::Failed.code(),
        format!(
            "the daemon (pid {}) still answers {} s after the drain request; check its log",
            report.pid,
            limit.as_secs()
        ),
    ))
}

fn describe(r: &DrainReport) -> String {
    if r.already_draining {
        format!(
            "already draining for {} ms (pid {}): /ping answers 503; listeners close {} ms after the drain began, then open connections get up to {} ms; {} connections open",
            r.elapsed_ms, r.pid, r.drain_delay_ms, r.drain_grace_ms, r.open_connections
        )
    } else {
        format!(
            "draining (pid {}): /ping answers 503 for {} ms while requests are still served, then the listeners close and open connections get up to {} ms; {} connections open",
            r.pid, r.drain_delay_ms, r.drain_grace_ms, r.open_connections
        )
    }
}
