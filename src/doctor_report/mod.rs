//! Judging what `xks-bridge doctor` found on a token ([`crate::hsm::doctor::Findings`]): one
//! line per check with a verdict and a fix, an overall verdict, the process exit status, and a
//! ready-to-paste `[[tokens]]` snippet with the settings that work on this token.
//!
//! Exit statuses: usable 0; usable with changes 0 (the changes are listed, and the snippet
//! already has them); not usable 1; the doctor could not run (module, token or PIN) 69.

use crate::config::{IvSource, Profile, TokenConfig};
use crate::exit::Exit;
use crate::hsm::doctor::Findings;
use serde::Serialize;
use std::fmt::Write as _;

mod checks;

use checks::*;

/// One check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As the proxy needs it.
    Ok,
    /// Works, with a change (listed in the fix) or a limitation.
    Warn,
    /// The proxy cannot work this way.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Its verdict.
    pub verdict: Verdict,
    /// What was found.
    pub found: String,
    /// What to do (warn and fail).
    pub fix: Option<String>,
}

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overall {
    /// Every check is ok.
    Usable,
    /// Usable once the listed changes are made (warnings only).
    UsableWithChanges,
    /// At least one check failed.
    NotUsable,
}

impl Overall {
    /// The process exit status: 0 unless not usable (1).
    pub fn exit(self) -> Exit {
        match self {
            Overall::Usable | Overall::UsableWithChanges => Exit::Ok,
            Overall::NotUsable => Exit::Failed,
        }
    }
}

/// The whole report (`--json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The configured token's name.
    pub token: String,
    /// Overall verdict.
    pub verdict: Overall,
    /// The exit status that goes with it.
    pub exit_code: i32,
    /// One per check, in order.
    pub checks: Vec<Check>,
    /// Checks not run, and why.
    pub skipped: Vec<String>,
    /// A `[[tokens]]` entry with the settings that work on this token.
    pub snippet: String,
    /// The raw findings.
    pub findings: Findings,
}

fn check(name: impl Into<String>, verdict: Verdict, found: impl Into<String>, fix: Option<String>) -> Check {
    Check {
        name: name.into(),
        verdict,
        found: found.into(),
        fix,
    }
}

/// Judges `f`, found on the token `cfg` configures.
pub fn judge(cfg: &TokenConfig, f: Findings) -> Report {
    let configured = cfg.effective_iv_source();
    let iv_source = working_iv_source(configured, &f);
    let profile = suggested_profile(cfg, iv_source, &f);
    let mut checks = vec![library_check(&f), token_check(&f)];
    checks.extend(mechanism_checks(&f));
    checks.push(scratch_check(&f));
    checks.push(profile_check(cfg, iv_source, profile, &f));
    checks.extend(iv_checks(configured, iv_source, &f));
    checks.push(bad_tag_check(cfg, profile, &f));
    let mut skipped = Vec::new();
    checks.push(data_object_check(&f.data_objects));
    checks.push(public_object_check(&f.public_objects));
    match &f.handle_reuse {
        Some(h) => checks.push(handle_reuse_check(&h.probe, h.reused)),
        None => skipped
            .push("handle reuse: run with --write-tests (creates token objects and removes them)".into()),
    }
    checks.push(session_check(cfg, &f));
    checks.push(latency_check(cfg, &f));
    checks.extend(key_checks(&f.keys));
    let worst = checks.iter().map(|c| c.verdict).max().unwrap_or(Verdict::Ok);
    let verdict = match worst {
        Verdict::Ok => Overall::Usable,
        Verdict::Warn => Overall::UsableWithChanges,
        Verdict::Fail => Overall::NotUsable,
    };
    Report {
        token: cfg.name.clone(),
        verdict,
        exit_code: verdict.exit().code(),
        checks,
        skipped,
        snippet: snippet(cfg, profile, iv_source, workers(cfg, &f)),
        findings: f,
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A `[[tokens]]` entry with what works on this token; the PIN source and other settings are
/// copied from the configuration.
pub fn snippet(cfg: &TokenConfig, profile: Profile, iv: IvSource, workers: usize) -> String {
    let mut s = String::from("[[tokens]]\n");
    let _ = writeln!(s, "name = {}", toml_str(&cfg.name));
    let _ = writeln!(s, "module = {}", toml_str(&cfg.module.display().to_string()));
    let _ = writeln!(s, "token_label = {}", toml_str(&cfg.token_label));
    let pin = &cfg.pin;
    let source = match (&pin.file, &pin.env, &pin.systemd_credential) {
        (Some(f), _, _) => format!("{{ file = {} }}", toml_str(&f.display().to_string())),
        (_, Some(e), _) => format!("{{ env = {} }}", toml_str(e)),
        (_, _, Some(c)) => format!("{{ systemd_credential = {} }}", toml_str(c)),
        _ => "{ file = \"/etc/xks-bridge/credentials/token-pin\" }".into(),
    };
    let _ = writeln!(s, "pin = {source}");
    let _ = writeln!(s, "profile = {}", toml_str(profile.name()));
    let _ = writeln!(s, "iv_source = {}", toml_str(iv.name()));
    let _ = writeln!(s, "workers = {workers}");
    let _ = writeln!(s, "queue_depth = {}", cfg.queue_depth);
    let _ = writeln!(s, "request_timeout_ms = {}", cfg.request_timeout_ms);
    if !cfg.module_env.is_empty() {
        s.push_str("[tokens.module_env]\n");
        for (k, v) in &cfg.module_env {
            let _ = writeln!(s, "{k} = {}", toml_str(v));
        }
    }
    s
}

/// The report as printed: one line per check, the verdict, the changes, the snippet.
pub fn render(r: &Report) -> String {
    let mut out = format!("xks-bridge doctor: token {:?}\n", r.token);
    for c in &r.checks {
        let tag = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        let _ = writeln!(out, "[{tag}] {}: {}", c.name, c.found);
        if let Some(fix) = &c.fix {
            let _ = writeln!(out, "       fix: {fix}");
        }
    }
    for s in &r.skipped {
        let _ = writeln!(out, "[skip] {s}");
    }
    let verdict = match r.verdict {
        Overall::Usable => "usable",
        Overall::UsableWithChanges => "usable with changes",
        Overall::NotUsable => "NOT usable",
    };
    let _ = writeln!(out, "\nverdict: {verdict} (exit {})", r.exit_code);
    let changes: Vec<&Check> = r.checks.iter().filter(|c| c.verdict != Verdict::Ok).collect();
    if !changes.is_empty() {
        out.push_str("changes needed:\n");
        for c in changes {
            let _ = writeln!(out, "  - {}: {}", c.name, c.fix.as_deref().unwrap_or(&c.found));
        }
    }
    let _ = write!(out, "\nsettings for this token:\n\n{}", r.snippet);
    out
}

#[cfg(test)]
mod tests;
