//! `kill-switch engage|release|status`: the scope arguments, the request they make, and how
//! an engage or release report turns into output and an exit status.

use super::{emit, load, reach, render, CliResult, EXIT_FAILED};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use xks_bridge::control::protocol::{AdminReply, AdminRequest, ChangeReport, Scope};
use xks_bridge::exit::Exit;

/// Where a kill switch command applies.
#[derive(Args)]
pub struct ScopeArgs {
    /// Only this keystore (its URI prefix, e.g. /tenant-a).
    #[arg(long, conflicts_with = "key")]
    keystore: Option<String>,
    /// Only this key (its external key id).
    #[arg(long)]
    key: Option<String>,
    /// Token holding the key, when several are configured.
    #[arg(long)]
    token: Option<String>,
    /// Why (recorded with your uid and the time).
    #[arg(long)]
    reason: Option<String>,
    /// Every instance sharing the token, not only this one: writes (or removes) a mark on the
    /// token that every instance honours within a second. Proxy and keystore scopes only.
    #[arg(long, conflicts_with = "key")]
    fleet: bool,
    /// Configuration file of the daemon.
    #[arg(long)]
    config: PathBuf,
}

/// `kill-switch` subcommands.
#[derive(Subcommand)]
pub enum KillSwitchCmd {
    /// Cut AWS off: the whole proxy (default), one keystore or one key.
    Engage(ScopeArgs),
    /// Restore access at the same scope.
    Release(ScopeArgs),
    /// Show what is engaged, by whom, when and why.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Configuration file of the daemon.
        #[arg(long)]
        config: PathBuf,
    },
}

fn scope_of(a: &ScopeArgs) -> Scope {
    match (&a.keystore, &a.key) {
        (Some(p), _) => Scope::Keystore(p.clone()),
        (None, Some(k)) => Scope::Key(k.clone()),
        (None, None) => Scope::Proxy,
    }
}

pub fn kill_switch(cmd: KillSwitchCmd) -> CliResult {
    match cmd {
        KillSwitchCmd::Engage(a) => {
            let cfg = load(&a.config)?;
            let req = AdminRequest::Engage {
                scope: scope_of(&a),
                reason: a.reason.clone(),
                token: a.token.clone(),
                fleet: a.fleet,
            };
            change(reach::send(&cfg, req)?)
        }
        KillSwitchCmd::Release(a) => {
            let cfg = load(&a.config)?;
            let req = AdminRequest::Release {
                scope: scope_of(&a),
                reason: a.reason.clone(),
                token: a.token.clone(),
                fleet: a.fleet,
            };
            change(reach::send(&cfg, req)?)
        }
        KillSwitchCmd::Status { json, config } => {
            let cfg = load(&config)?;
            match reach::send(&cfg, AdminRequest::Status)? {
                AdminReply::Status(st) => {
                    if json {
                        outln!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
                    } else {
                        emit(&render::status(&st));
                    }
                    Ok(())
                }
                other => Err(render::unexpected(other)),
            }
        }
    }
}

/// Prints an engage/release report; the exit status says whether it is in force and durable.
pub(super) fn change(reply: AdminReply) -> CliResult {
    let AdminReply::Changed(r) = reply else {
        return Err(render::unexpected(reply));
    };
    let ChangeReport {
        action,
        scope,
        in_force,
        durable,
        note,
        elapsed_ms,
        fleet,
    } = &r;
    let verb = match action {
        xks_bridge::control::protocol::Action::Engage => "engaged",
        xks_bridge::control::protocol::Action::Release => "released",
    };
    let reach = fleet.as_ref().map(|f| {
        let mark = match action {
            xks_bridge::control::protocol::Action::Engage => "fleet mark written on token(s)",
            xks_bridge::control::protocol::Action::Release => "fleet mark removed from token(s)",
        };
        format!(" [fleet-wide; {mark}: {}]", f.written.join(", "))
    });
    let reach = reach.unwrap_or_default();
    match (in_force, durable) {
        (true, true) => {
            outln!("{verb} {scope}{reach} ({elapsed_ms:.1} ms)");
            if let Some(n) = note {
                eprintln!("note: {n}");
            }
            Ok(())
        }
        (true, false) if fleet.as_ref().is_some_and(|f| f.written.is_empty()) => {
            outln!("{verb} {scope} on THIS instance only ({elapsed_ms:.1} ms)");
            Err((
                EXIT_FAILED,
                note.clone()
                    .unwrap_or_else(|| "no token took the fleet mark".into()),
            ))
        }
        (true, false) => {
            outln!("{verb} {scope}{reach} ({elapsed_ms:.1} ms) - in force, NOT durable");
            Err((
                Exit::NotDurable.code(),
                note.clone()
                    .unwrap_or_else(|| "the state file could not be written".into()),
            ))
        }
        (false, _) => Err((
            EXIT_FAILED,
            format!(
                "not {verb}: {}",
                note.clone().unwrap_or_else(|| "superseded".into())
            ),
        )),
    }
}
