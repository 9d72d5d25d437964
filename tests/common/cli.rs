//! Running `xks-bridge` operator commands against a config, and signalling the daemon.

use crate::common::process::{run_bounded, BIN, WAIT};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// `xks-bridge <args> --config <config>`, bounded by [`WAIT`], without the caller's
/// `SOFTHSM2_CONF` and `RUST_LOG`. Returns (exit code, stdout, stderr).
pub fn cli(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env_remove("SOFTHSM2_CONF")
        .env_remove("RUST_LOG");
    run_bounded(cmd, WAIT)
}

/// [`cli`] that must exit 0; returns stdout.
#[track_caller]
pub fn cli_ok(config: &Path, args: &[&str]) -> String {
    let (code, out, err) = cli(config, args);
    assert_eq!(code, Some(0), "xks-bridge {args:?} failed: {out}\n{err}");
    out
}

/// `xks-bridge kill-switch status --json`, parsed.
#[track_caller]
pub fn kill_switch_status(config: &Path) -> Value {
    serde_json::from_str(&cli_ok(config, &["kill-switch", "status", "--json"])).expect("status JSON")
}

/// Sends `signal` (a `kill -s` name) to `pid`.
#[track_caller]
pub fn send_signal(pid: u32, signal: &str) {
    let mut cmd = Command::new("kill");
    cmd.args(["-s", signal, &pid.to_string()]);
    let (code, out, err) = run_bounded(cmd, WAIT);
    assert_eq!(code, Some(0), "kill -s {signal} {pid}: {out}{err}");
}
