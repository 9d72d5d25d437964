//! `xks-bridge doctor`: examines the token a config names before the daemon is pointed at it.
//! Loads the module (with the token's module environment, restarting the process if needed),
//! logs in with the configured PIN, runs [`xks_bridge::hsm::doctor::examine`] and prints the
//! judgement of [`xks_bridge::doctor_report`].
//!
//! Exit 0: usable, or usable with the changes listed; 1: not usable; 69: the doctor could not
//! run (module does not load, token absent, PIN refused); 64: bad config.

use super::CliResult;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use xks_bridge::config::{Config, TokenConfig, EXIT_BAD_CONFIG};
use xks_bridge::doctor_report::{judge, render};
use xks_bridge::exit::Exit;
use xks_bridge::hsm::doctor::{examine, Plan};

/// How long the encrypt latency sample runs.
const SAMPLE: Duration = Duration::from_secs(2);

/// `xks-bridge doctor` arguments.
#[derive(Args)]
pub struct DoctorArgs {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// The token to examine (its `name`), when several are configured.
    #[arg(long)]
    token: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also see whether the token reuses the handles of destroyed objects (creates, destroys and
    /// creates probe objects, and removes them again).
    #[arg(long)]
    write_tests: bool,
}

fn pick<'a>(cfg: &'a Config, name: Option<&str>) -> Result<(usize, &'a TokenConfig), (i32, String)> {
    match (name, cfg.tokens.as_slice()) {
        (Some(n), ts) => ts
            .iter()
            .enumerate()
            .find(|(_, t)| t.name == n)
            .ok_or_else(|| (EXIT_BAD_CONFIG, format!("no token named {n:?} in the config"))),
        (None, [t]) => Ok((0, t)),
        (None, _) => Err((
            EXIT_BAD_CONFIG,
            "several tokens are configured; name one with --token".into(),
        )),
    }
}

/// Runs the doctor.
pub fn doctor(a: DoctorArgs) -> CliResult {
    let cfg = Config::load(&a.config).map_err(|e| (EXIT_BAD_CONFIG, e.to_string()))?;
    let (i, t) = pick(&cfg, a.token.as_deref())?;
    // May restart this process: before anything is read or printed.
    xks_bridge::module_env::ensure(&t.module_env).map_err(|e| (EXIT_BAD_CONFIG, e.to_string()))?;
    let pin = t
        .load_pin()
        .map_err(|e| (EXIT_BAD_CONFIG, format!("tokens[{i}].pin: {e}")))?;
    let keystores: Vec<_> = cfg.keystores.iter().filter(|k| k.token == t.name).collect();
    let named_keys = keystores
        .iter()
        .flat_map(|k| k.allowed_keys.iter().cloned())
        .collect();
    let patterns: Vec<glob::Pattern> = keystores
        .iter()
        .filter_map(|k| k.key_pattern.as_deref())
        .filter_map(|p| glob::Pattern::new(p).ok())
        .collect();
    let plan = Plan {
        token: t,
        pin,
        named_keys,
        pattern: Box::new(move |label: &str| patterns.iter().any(|p| p.matches(label))),
        write_tests: a.write_tests,
        sample: SAMPLE,
        sessions_wanted: t.workers + 2,
    };
    let findings = examine(&plan).map_err(|e| {
        (
            Exit::Unavailable.code(),
            format!(
                "doctor cannot run on token {:?} ({}): {e}",
                t.name,
                t.module.display()
            ),
        )
    })?;
    let report = judge(t, findings);
    if a.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| (Exit::Failed.code(), format!("cannot serialize the report: {e}")))?;
        outln!("{text}");
    } else {
        outln!("{}", render(&report));
    }
    match report.exit_code {
        0 => Ok(()),
        code => Err((
            code,
            format!("token {:?} is not usable; see the report above", t.name),
        )),
    }
}
