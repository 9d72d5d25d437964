//! How an operator command reaches the kill switch, so that what it prints is what KMS gets:
//! the daemon's admin socket when it answers; otherwise, only when this command can take the
//! state directory's instance lock (no daemon runs), the very same verbs run here, offline; when
//! a daemon holds the lock but its socket does not answer, a whole-proxy engage goes to it as
//! SIGUSR1 and is confirmed from the state file, and anything else fails with exit 69.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use xks_bridge::config::{Config, TokenConfig, EXIT_BAD_CONFIG};
use xks_bridge::control::lock::{InstanceLock, LockError};
use xks_bridge::control::protocol::{AdminReply, AdminRequest, DaemonState, Scope};
use xks_bridge::control::socket::{request, ClientError};
use xks_bridge::control::state_file::read_state;
use xks_bridge::control::switch::Switch;
use xks_bridge::control::Control;
use xks_bridge::exit::Exit;
use xks_bridge::hsm::Token;

type Fail = (i32, String);

/// How long a SIGUSR1 engage may take to show in the state file.
const SIGNAL_CONFIRM: Duration = Duration::from_secs(5);

fn runtime() -> Result<tokio::runtime::Runtime, Fail> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            (
                Exit::OsError.code(),
                format!("cannot start the async runtime: {e}"),
            )
        })
}

/// Sends `req` to the daemon, or runs it offline when no daemon runs.
pub fn send(cfg: &Config, req: AdminRequest) -> Result<AdminReply, Fail> {
    let rt = runtime()?;
    if let Some(admin) = &cfg.admin {
        match rt.block_on(request(&admin.socket, &req)) {
            Ok(reply) => return Ok(reply),
            Err(ClientError::Failed(e)) => return Err((Exit::Unavailable.code(), e)),
            Err(ClientError::NoAnswer(_)) => {}
        }
    }
    // The token's module environment is put in place first: it may restart this process,
    // which must happen before anything is printed or locked.
    let tokens: Vec<&TokenConfig> = match request_token(&req) {
        Some(name) => vec![offline_token(cfg, name)?],
        // A fleet-wide change writes its mark on every token.
        None if is_fleet(&req) => cfg.tokens.iter().collect(),
        None => Vec::new(),
    };
    for t in &tokens {
        xks_bridge::module_env::ensure(&t.module_env).map_err(|e| (EXIT_BAD_CONFIG, e.to_string()))?;
    }
    let dir = &cfg.state.directory;
    check_owner(dir, &cfg.state.kill_switch_file())?;
    std::fs::create_dir_all(dir).map_err(|e| {
        (
            Exit::Unavailable.code(),
            format!("state.directory: cannot create {}: {e}", dir.display()),
        )
    })?;
    match InstanceLock::acquire(dir) {
        Ok(lock) => {
            match &cfg.admin {
                Some(a) => eprintln!(
                    "note: no daemon answers on {}; acting directly on the state file / token",
                    a.socket.display()
                ),
                None => eprintln!("note: no daemon runs (no [admin] socket configured); acting directly on the state file / token"),
            }
            offline(&rt, cfg, req, &tokens, &lock)
        }
        Err(LockError::Held { pid, .. }) => daemon_without_socket(cfg, req, pid),
        Err(e) => Err((Exit::Unavailable.code(), format!("state.directory: {e}"))),
    }
}

/// The offline CLI must run as the owner of the state (the daemon's user): a state file written
/// by another uid (root, typically) could not be read by the daemon at its next start.
fn check_owner(dir: &Path, file: &Path) -> Result<(), Fail> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(file)
        .or_else(|_| std::fs::metadata(dir))
        .map(|m| m.uid());
    let me = xks_bridge::control::peer::own_uid();
    match owner {
        Ok(o) if o != me => Err((
            Exit::Failed.code(),
            format!(
                "{} belongs to uid {o}; run this command as that user (e.g. `sudo -u \\#{o} xks-bridge …`) so the daemon can still read its state",
                dir.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// A daemon holds the lock but its socket does not answer (deleted socket file, no [admin]).
fn daemon_without_socket(cfg: &Config, req: AdminRequest, pid: Option<u32>) -> Result<AdminReply, Fail> {
    let who = pid.map_or_else(|| "unknown pid".to_owned(), |p| format!("pid {p}"));
    let socket = cfg.admin.as_ref().map_or_else(
        || "no [admin] socket is configured".to_owned(),
        |a| format!("its admin socket {} does not answer", a.socket.display()),
    );
    let AdminRequest::Engage {
        scope: Scope::Proxy,
        fleet: false,
        ..
    } = req
    else {
        return Err((
            Exit::Unavailable.code(),
            format!("a daemon ({who}) runs with this state directory but {socket}; nothing was changed. Restore the socket (restart the daemon) or, to cut AWS off now, run `kill-switch engage` for the whole proxy, which signals the daemon"),
        ));
    };
    let Some(pid) = pid else {
        return Err((
            Exit::Unavailable.code(),
            format!("a daemon runs with this state directory but {socket} and its pid is unknown; nothing was changed"),
        ));
    };
    eprintln!("note: a daemon (pid {pid}) runs but {socket}; sending it SIGUSR1 (whole-proxy engage)");
    let sent_at = time::OffsetDateTime::now_utc();
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .map_err(|e| {
        (
            Exit::Unavailable.code(),
            format!("cannot signal pid {pid}: {e}; nothing was changed"),
        )
    })?;
    let file = cfg.state.kill_switch_file();
    while started.elapsed() < SIGNAL_CONFIRM {
        let confirmed = read_state(&file).ok().and_then(|s| s.proxy).is_some_and(|p| {
            p.via == "signal SIGUSR1"
                && time::OffsetDateTime::parse(&p.at, &time::format_description::well_known::Rfc3339)
                    .is_ok_and(|at| at >= sent_at - time::Duration::seconds(1))
        });
        if confirmed {
            return Ok(AdminReply::Changed(xks_bridge::control::protocol::ChangeReport {
                action: xks_bridge::control::protocol::Action::Engage,
                scope: Scope::Proxy,
                in_force: true,
                durable: true,
                note: Some(format!(
                    "delivered by SIGUSR1 to pid {pid}; confirmed in the state file"
                )),
                elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
                fleet: None,
            }));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err((
        Exit::Unavailable.code(),
        format!("sent SIGUSR1 to pid {pid} but the state file did not confirm the engage within {} s; check the daemon's log (it may be engaged in memory without a durable state)", SIGNAL_CONFIRM.as_secs()),
    ))
}

/// Runs the request through the daemon's own verbs, on this process, holding the lock.
fn offline(
    rt: &tokio::runtime::Runtime,
    cfg: &Config,
    req: AdminRequest,
    configured: &[&TokenConfig],
    _held: &InstanceLock,
) -> Result<AdminReply, Fail> {
    if matches!(req, AdminRequest::Reload) {
        return Err((Exit::Failed.code(), "no running daemon to reload".into()));
    }
    let switch = Arc::new(
        Switch::load(&cfg.state.kill_switch_file()).map_err(|e| (Exit::Unavailable.code(), e.to_string()))?,
    );
    let mut tokens = Vec::new();
    for t in configured {
        let pin = t.load_pin().map_err(|e| {
            let i = cfg.tokens.iter().position(|c| c.name == t.name).unwrap_or(0);
            (EXIT_BAD_CONFIG, format!("tokens[{i}].pin: {e}"))
        })?;
        // An operator's offline key command is not the daemon serving KMS: it runs even
        // while the whole-proxy switch is engaged, as it always has.
        tokens.push(Arc::new(Token::new(t, pin, Arc::new(AtomicBool::new(false)))));
    }
    let prefixes = Arc::new(RwLock::new(
        cfg.keystores.iter().map(|k| k.uri_prefix.clone()).collect(),
    ));
    let control = Control::new(switch, tokens, prefixes, None, None, DaemonState::NotRunning);
    let uid = Some(xks_bridge::control::peer::own_uid());
    Ok(rt.block_on(control.execute(req, uid, "offline")))
}

/// Is it a fleet-wide engage or release?
fn is_fleet(req: &AdminRequest) -> bool {
    matches!(
        req,
        AdminRequest::Engage { fleet: true, .. } | AdminRequest::Release { fleet: true, .. }
    )
}

/// Whether a request needs one token offline, and which one was named.
fn request_token(req: &AdminRequest) -> Option<Option<&str>> {
    match req {
        AdminRequest::Keys { token, .. }
        | AdminRequest::Engage {
            scope: Scope::Key(_),
            token,
            ..
        }
        | AdminRequest::Release {
            scope: Scope::Key(_),
            token,
            ..
        } => Some(token.as_deref()),
        _ => None,
    }
}

/// The token an offline key command works on: the one named, or the only one configured.
fn offline_token<'a>(cfg: &'a Config, name: Option<&str>) -> Result<&'a TokenConfig, Fail> {
    match (name, cfg.tokens.as_slice()) {
        (Some(n), ts) => ts
            .iter()
            .find(|t| t.name == n)
            .ok_or_else(|| (Exit::Failed.code(), format!("no token named {n:?}"))),
        (None, [t]) => Ok(t),
        (None, _) => Err((
            Exit::Failed.code(),
            "several tokens are configured; name one with --token".into(),
        )),
    }
}
