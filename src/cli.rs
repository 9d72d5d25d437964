//! Operator commands: `kill-switch …`, `keys …`, `audit …`, `reload`, `drain`, `doctor`. Each talks to the running daemon over its
//! admin socket; when no daemon answers there, it acts directly (state file or token) and says
//! so. `keys wrap` is the key custodian's offline tool (no token, no daemon).

use std::path::Path;
use xks_bridge::config::{Config, EXIT_BAD_CONFIG};
use xks_bridge::control::protocol::{AdminReply, AdminRequest};
use xks_bridge::exit::Exit;

mod audit;
mod doctor;
mod drain;
mod keys;
mod kill_switch;
mod reach;
mod render;

pub use audit::{audit_verify, AuditCmd, VerifyChecks};
pub use doctor::{doctor, DoctorArgs};
pub use drain::{drain, DrainArgs};
pub use keys::{keys, KeysCmd};
pub use kill_switch::{kill_switch, KillSwitchCmd};

type CliResult = Result<(), (i32, String)>;
const EXIT_FAILED: i32 = Exit::Failed as i32;

/// Operator commands parse the config but do not insist on reading the daemon's private files.
fn load(path: &Path) -> Result<Config, (i32, String)> {
    Config::load_unchecked(path).map_err(|e| (EXIT_BAD_CONFIG, e.to_string()))
}

/// Asks the running daemon to reload its configuration.
pub fn reload(config: &Path) -> CliResult {
    let cfg = load(config)?;
    match reach::send(&cfg, AdminRequest::Reload)? {
        AdminReply::Reloaded { summary } => {
            outln!("reloaded: {summary}");
            Ok(())
        }
        other => Err(render::unexpected(other)),
    }
}

fn emit(s: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(s.as_bytes());
}
