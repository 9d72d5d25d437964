//! Start-up checks and their exit statuses: running as root, the open-file limit, the state
//! directory (private, locked, loaded) before the admin socket or any port is touched.

use crate::config::{Config, EXIT_BAD_CONFIG};
use crate::control::dirs::check_private_dir;
use crate::control::lock::{InstanceLock, LockError};
use crate::control::switch::Switch;

/// Exit status when the daemon cannot start for a reason outside the config file (token
/// refusing the PIN, port in use, unreadable state) (sysexits EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: i32 = crate::exit::Exit::Unavailable as i32;

/// A start-up failure with the exit status it deserves.
#[derive(Debug)]
pub struct StartError {
    /// Process exit status.
    pub exit_code: i32,
    /// Message for the operator.
    pub message: String,
}

pub(crate) fn config_error(message: String) -> StartError {
    StartError {
        exit_code: EXIT_BAD_CONFIG,
        message,
    }
}

pub(crate) fn unavailable(message: String) -> StartError {
    StartError {
        exit_code: EXIT_UNAVAILABLE,
        message,
    }
}

/// Raises the soft open-file limit to the hard limit (systemd starts services at 1024), so
/// `max_connections` is not cut short by "too many open files"; warns if it still does not fit.
pub(super) fn raise_fd_limit(max_connections: usize) {
    // The connections, the refused ones the server holds (its tarpit), and some to spare.
    let wanted = ((1 + crate::server::TARPIT_PER_CONNECTION) * max_connections) as u64 + 256;
    match rlimit::increase_nofile_limit(wanted.max(65_536)) {
        Ok(got) if got < wanted => tracing::warn!(
            limit = got,
            max_connections,
            "open-file limit is below 5 x server.max_connections + 256 (connections and held refused ones); raise LimitNOFILE"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// The daemon needs no privilege: as root it refuses to start unless the config says so.
pub(super) fn refuse_root(cfg: &Config) -> Result<(), StartError> {
    if own_uid() == 0 && !cfg.server.allow_root {
        return Err(config_error(
            "server.allow_root: refusing to run as root; run as a dedicated user (see systemd/) or set allow_root = true".into(),
        ));
    }
    Ok(())
}

/// This process's effective uid.
pub(super) fn own_uid() -> u32 {
    crate::control::peer::own_uid()
}

/// Creates and checks the state directory, takes its instance lock (before the admin socket
/// or any port is touched) and loads the kill switch.
pub(super) fn open_state(cfg: &Config) -> Result<(InstanceLock, Switch), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = &cfg.state.directory;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| unavailable(format!("state.directory: cannot create {}: {e}", dir.display())))?;
    let uid = own_uid();
    check_private_dir(dir, "state.directory", uid).map_err(|e| unavailable(e.to_string()))?;
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
            check_private_dir(parent, "admin.socket", uid).map_err(|e| unavailable(e.to_string()))?;
        }
    }
    if let Some(a) = &cfg.audit {
        if let Some(parent) = a.file.parent().filter(|p| p.is_dir()) {
            check_private_dir(parent, "audit.file", uid).map_err(|e| unavailable(e.to_string()))?;
        }
    }
    let switch = Switch::load(&cfg.state.kill_switch_file()).map_err(|e| unavailable(e.to_string()))?;
    Ok((lock, switch))
}
