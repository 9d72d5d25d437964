//! Judging what `xks-bridge doctor` found on a token ([`crate::hsm::doctor::Findings`]): one
//! line per check with a verdict and a fix, an overall verdict, the process exit status, and a
//! ready-to-paste `[[tokens]]` snippet with the settings that work on this token.
//!
//! Exit statuses: usable 0; usable with changes 0 (the changes are listed, and the snippet
//! already has them); not usable 1; the doctor could not run (module, token or PIN) 69.

use crate::config::{IvSource, TokenConfig};
use crate::exit::Exit;
use crate::hsm::doctor::{BadTag, Findings, KeyFacts, Probe, SessionLimit, WriteProbe};
use serde::Serialize;
use std::fmt::Write as _;

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
    let iv_source = working_iv_source(cfg.iv_source, &f);
    let mut checks = vec![library_check(&f), token_check(&f)];
    checks.extend(mechanism_checks(&f));
    checks.push(scratch_check(&f));
    checks.extend(iv_checks(cfg.iv_source, iv_source, &f));
    checks.push(bad_tag_check(&f));
    let mut skipped = Vec::new();
    match (&f.data_objects, &f.handle_reuse) {
        (Some(d), Some(h)) => {
            checks.push(data_object_check(d));
            checks.push(handle_reuse_check(&h.probe, h.reused));
        }
        _ => skipped.push("private data objects and handle reuse: run with --write-tests (creates token objects and removes them)".into()),
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
        snippet: snippet(cfg, iv_source, workers(cfg, &f)),
        findings: f,
    }
}

fn library_check(f: &Findings) -> Check {
    let l = &f.library;
    check(
        "library",
        Verdict::Ok,
        format!(
            "{} {} by {}, Cryptoki {}",
            l.description, l.version, l.manufacturer, l.cryptoki_version
        ),
        None,
    )
}

fn token_check(f: &Findings) -> Check {
    let t = &f.token;
    let found = format!(
        "{:?}: {} {} firmware {} hardware {} serial {}; flags {}",
        t.label,
        t.manufacturer,
        t.model,
        t.firmware,
        t.hardware,
        t.serial,
        t.flags.join(" ")
    );
    let has = |flag: &str| t.flags.contains(&flag);
    if has("USER_PIN_LOCKED") || !has("TOKEN_INITIALIZED") {
        return check(
            "token",
            Verdict::Fail,
            found,
            Some("initialise the token and unlock the user PIN (security officer)".into()),
        );
    }
    if has("USER_PIN_FINAL_TRY") || has("USER_PIN_COUNT_LOW") || has("USER_PIN_TO_BE_CHANGED") {
        return check(
            "token",
            Verdict::Warn,
            found,
            Some(
                "the user PIN is near lock-out or must be changed: fix the PIN before the daemon retries it"
                    .into(),
            ),
        );
    }
    check("token", Verdict::Ok, found, None)
}

fn mechanism_checks(f: &Findings) -> Vec<Check> {
    f.mechanisms
        .iter()
        .map(|m| {
            let name = format!("mechanism {}", m.name);
            let essential = m.name == "CKM_AES_GCM";
            let missing = if essential { Verdict::Fail } else { Verdict::Warn };
            match &m.info {
                Ok(k) if m.listed && k.max >= 32 => check(
                    name,
                    Verdict::Ok,
                    format!(
                        "key sizes {}-{} bytes; {}; for {}",
                        k.min,
                        k.max,
                        k.flags.join(" "),
                        m.used_for
                    ),
                    None,
                ),
                Ok(k) => check(
                    name,
                    missing,
                    format!("key sizes {}-{} bytes, listed: {}", k.min, k.max, m.listed),
                    Some(format!(
                        "AES-256 ({}) needs this mechanism with 32-byte keys",
                        m.used_for
                    )),
                ),
                Err(code) => check(
                    name,
                    missing,
                    format!("not offered by the token ({code})"),
                    Some(if essential {
                        format!(
                            "{} is required for {}: use a token (or firmware, or licence) that offers it",
                            m.name, m.used_for
                        )
                    } else {
                        format!(
                            "without it `xks-bridge {}` cannot work on this token; make keys another way",
                            m.used_for
                        )
                    }),
                ),
            }
        })
        .collect()
}

fn scratch_check(f: &Findings) -> Check {
    match &f.scratch_key {
        Ok(()) => check(
            "scratch session key",
            Verdict::Ok,
            "AES-256 generated with CKA_TOKEN=false, destroyed after the probes",
            None,
        ),
        Err(code) => check(
            "scratch session key",
            Verdict::Warn,
            format!("C_GenerateKey refused: {code}; the crypto probes could not run"),
            Some("allow session-key generation for this user to let the doctor test AES-GCM".into()),
        ),
    }
}

/// The IV source to configure: the configured one if it works, else the other if that works.
fn working_iv_source(configured: IvSource, f: &Findings) -> IvSource {
    let works = |s: IvSource| probe_of(s, f) == &Probe::Works;
    let other = match configured {
        IvSource::TokenRandom => IvSource::Mechanism,
        IvSource::Mechanism => IvSource::TokenRandom,
    };
    if !works(configured) && works(other) {
        other
    } else {
        configured
    }
}

fn probe_of(s: IvSource, f: &Findings) -> &Probe {
    match s {
        IvSource::TokenRandom => &f.iv.caller_random,
        IvSource::Mechanism => &f.iv.mechanism_generated,
    }
}

fn iv_name(s: IvSource) -> &'static str {
    match s {
        IvSource::TokenRandom => "token-random",
        IvSource::Mechanism => "mechanism",
    }
}

fn describe(p: &Probe) -> String {
    match p {
        Probe::Works => "works (encrypt, then decrypt to the same plaintext)".into(),
        Probe::Wrong(d) => format!("does not work: {d}"),
        Probe::Refused(c) => format!("refused: {c}"),
        Probe::NotRun(why) => format!("not run: {why}"),
    }
}

fn iv_checks(configured: IvSource, chosen: IvSource, f: &Findings) -> Vec<Check> {
    [IvSource::TokenRandom, IvSource::Mechanism]
        .into_iter()
        .map(|s| {
            let what = match s {
                IvSource::TokenRandom => "caller-supplied random IV",
                IvSource::Mechanism => "IV generated by the token",
            };
            let name = format!("IV: {what} (iv_source = \"{}\")", iv_name(s));
            let p = probe_of(s, f);
            let found = describe(p);
            let configured_here = s == configured;
            match (p == &Probe::Works, configured_here, chosen == configured) {
                (true, _, _) => check(name, Verdict::Ok, found, None),
                // Not the configured mode: it is information, not a problem.
                (false, false, _) => check(
                    name,
                    Verdict::Ok,
                    format!("{found} (not needed: not the configured mode)"),
                    None,
                ),
                (false, true, false) => check(
                    name,
                    Verdict::Warn,
                    found,
                    Some(format!(
                        "set iv_source = \"{}\" for this token (it works; see the snippet)",
                        iv_name(chosen)
                    )),
                ),
                (false, true, true) => check(
                    name,
                    Verdict::Fail,
                    found,
                    Some("no IV mode works: AES-GCM encryption is not usable on this token".into()),
                ),
            }
        })
        .collect()
}

fn bad_tag_check(f: &Findings) -> Check {
    let name = "bad GCM tag";
    match &f.bad_tag {
        BadTag::Refused { code, function, invalid_ciphertext: true } => check(
            name,
            Verdict::Ok,
            format!("{function} answers {code}; classified as invalid ciphertext"),
            None,
        ),
        BadTag::Refused { code, function, invalid_ciphertext: false } => check(
            name,
            Verdict::Warn,
            format!("{function} answers {code}, which the proxy does not classify as invalid ciphertext"),
            Some(format!("KMS would see InternalException for a forged ciphertext: add {code} from {function} to src/hsm/classify.rs")),
        ),
        BadTag::Accepted => check(name, Verdict::Fail, "C_Decrypt returned a plaintext for a tampered tag", Some("the token does not authenticate AES-GCM: do not use it".into())),
        BadTag::NotRun { reason } => check(name, Verdict::Warn, format!("not run: {reason}"), Some("make the crypto probes run (see above) to learn the tag-failure code".into())),
    }
}

fn write_fix(w: &WriteProbe) -> Option<String> {
    match w {
        WriteProbe::LeftBehind { handle, .. } => Some(format!(
            "a probe object (handle {handle}, CKA_APPLICATION \"xks-bridge/doctor-probe\") is still on the token: delete it"
        )),
        _ => None,
    }
}

fn data_object_check(w: &WriteProbe) -> Check {
    let name = "private data objects (disabled-key marks)";
    match w {
        WriteProbe::Done => check(name, Verdict::Ok, "a private CKO_DATA token object was created and destroyed", None),
        WriteProbe::Refused { code } => check(
            name,
            Verdict::Warn,
            format!("refused: {code}"),
            Some("key kill switches will hold on this instance only (no mark on the token); allow this user to create private data objects".into()),
        ),
        WriteProbe::LeftBehind { code, .. } => check(name, Verdict::Fail, format!("created, but destroying it failed: {code}"), write_fix(w)),
    }
}

fn handle_reuse_check(w: &WriteProbe, reused: Option<bool>) -> Check {
    let name = "destroyed handles reused";
    match (w, reused) {
        (WriteProbe::Done, Some(true)) => check(
            name,
            Verdict::Ok,
            "yes: a new object got a destroyed object's handle (the proxy re-checks cached key handles)",
            None,
        ),
        (WriteProbe::Done, _) => check(name, Verdict::Ok, "no: a new object got a new handle", None),
        (WriteProbe::Refused { code }, _) => check(
            name,
            Verdict::Warn,
            format!("not tested: {code}"),
            Some("the proxy re-checks cached handles either way; nothing to change for the proxy".into()),
        ),
        (WriteProbe::LeftBehind { code, .. }, _) => check(
            name,
            Verdict::Fail,
            format!("destroying a probe object failed: {code}"),
            write_fix(w),
        ),
    }
}

fn limit(l: SessionLimit) -> String {
    match l {
        SessionLimit::Max(n) => n.to_string(),
        SessionLimit::Infinite => "unlimited".into(),
        SessionLimit::Unknown => "not reported".into(),
    }
}

/// Workers the token can carry: the configured number, or fewer if sessions ran out (the
/// daemon also holds a login session and a poll session).
fn workers(cfg: &TokenConfig, f: &Findings) -> usize {
    if f.sessions.opened >= f.sessions.wanted {
        cfg.workers
    } else {
        f.sessions.opened.saturating_sub(2).max(1)
    }
}

fn session_check(cfg: &TokenConfig, f: &Findings) -> Check {
    let s = &f.sessions;
    let found = format!(
        "max {} (read-write {}); opened {} of {} at once (workers {} + login + poll)",
        limit(f.token.max_sessions),
        limit(f.token.max_rw_sessions),
        s.opened,
        s.wanted,
        cfg.workers
    );
    if s.opened >= s.wanted {
        return check("sessions", Verdict::Ok, found, None);
    }
    let refusal = s.refusal.clone().unwrap_or_default();
    if s.opened >= 3 {
        check(
            "sessions",
            Verdict::Warn,
            format!("{found}; {refusal}"),
            Some(format!("set workers = {}", workers(cfg, f))),
        )
    } else {
        check(
            "sessions",
            Verdict::Fail,
            format!("{found}; {refusal}"),
            Some("the daemon needs at least 3 sessions at once".into()),
        )
    }
}

fn latency_check(cfg: &TokenConfig, f: &Findings) -> Check {
    let name = "encrypt latency (scratch key, 32 bytes)";
    let Some(l) = &f.latency else {
        return check(
            name,
            Verdict::Warn,
            "not measured: encryption on the scratch key failed",
            Some("see the checks above".into()),
        );
    };
    let found = format!(
        "{} encryptions: {:.0} ops/s on one session, p50 {} us, p99 {} us (a session key: token keys may be slower)",
        l.ops, l.ops_per_sec, l.p50_us, l.p99_us
    );
    if l.p99_us / 1000 >= cfg.request_timeout_ms {
        return check(
            name,
            Verdict::Warn,
            found,
            Some(format!(
                "p99 is above request_timeout_ms ({}): raise it (at most 240) or use a faster token",
                cfg.request_timeout_ms
            )),
        );
    }
    check(name, Verdict::Ok, found, None)
}

fn key_checks(keys: &[KeyFacts]) -> Vec<Check> {
    if keys.is_empty() {
        return vec![check(
            "keys",
            Verdict::Warn,
            "no configured key (allowed_keys / key_pattern) is on this token",
            Some("create one with `xks-bridge keys create --id <ID>` and list it in allowed_keys".into()),
        )];
    }
    keys.iter().map(key_check).collect()
}

fn yes(v: Option<bool>, on: &'static str, off: &'static str) -> &'static str {
    match v {
        Some(true) => on,
        Some(false) => off,
        None => "unknown",
    }
}

fn key_check(k: &KeyFacts) -> Check {
    let name = format!("key {}", k.label);
    let how = if k.named { "allowed_keys" } else { "key_pattern" };
    match k.found {
        0 => {
            return check(
                name,
                Verdict::Warn,
                format!("named in {how} but not on the token"),
                Some(format!("create it: xks-bridge keys create --id {}", k.label)),
            )
        }
        1 => {}
        n => {
            return check(
                name,
                Verdict::Fail,
                format!("{n} secret keys carry this label"),
                Some("labels must be unique: destroy or relabel the extra keys".into()),
            )
        }
    }
    let found = format!(
        "{}, {}, {}, {}, {}, usages {}",
        k.key_spec,
        yes(k.sensitive, "sensitive", "NOT sensitive"),
        yes(k.extractable, "EXTRACTABLE", "not extractable"),
        yes(k.private, "private", "NOT private"),
        yes(k.modifiable, "modifiable", "not modifiable"),
        if k.usages.is_empty() {
            "none".to_owned()
        } else {
            k.usages.join(" ")
        }
    );
    let mut weak = Vec::new();
    if !k.is_aes256() {
        weak.push("not AES-256");
    }
    if k.sensitive != Some(true) {
        weak.push("not sensitive");
    }
    if k.extractable != Some(false) {
        weak.push("extractable");
    }
    if k.private != Some(true) {
        weak.push("not private");
    }
    if !weak.is_empty() {
        return check(
            name,
            Verdict::Fail,
            found,
            Some(format!(
                "{}: replace it with a key made by `xks-bridge keys create` or `keys import` (AES-256, sensitive, never extractable, private)",
                weak.join(", ")
            )),
        );
    }
    if k.modifiable == Some(true) {
        return check(name, Verdict::Warn, found, Some("its attributes can still be changed on the token: set CKA_MODIFIABLE=false or re-create it with `xks-bridge keys create`".into()));
    }
    check(name, Verdict::Ok, found, None)
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A `[[tokens]]` entry with what works on this token; the PIN source and other settings are
/// copied from the configuration.
pub fn snippet(cfg: &TokenConfig, iv: IvSource, workers: usize) -> String {
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
    let _ = writeln!(s, "iv_source = {}", toml_str(iv_name(iv)));
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
mod tests {
    use super::*;
    use crate::hsm::doctor::{
        IvFacts, KeySizes, LibraryFacts, MechanismFact, SessionFacts, TokenFacts, NEEDED_MECHANISMS,
    };

    fn token(iv: &str) -> TokenConfig {
        toml::from_str(&format!(
            "name = \"hsm\"\nmodule = \"/lib/p11.so\"\ntoken_label = \"t\"\npin = {{ env = \"PIN\" }}\niv_source = \"{iv}\""
        ))
        .expect("token config")
    }

    fn key(label: &str) -> KeyFacts {
        KeyFacts {
            label: label.into(),
            named: true,
            found: 1,
            key_spec: "AES_256".into(),
            sensitive: Some(true),
            extractable: Some(false),
            private: Some(true),
            modifiable: Some(false),
            usages: vec!["ENCRYPT", "DECRYPT"],
        }
    }

    /// What a good token reports.
    fn good() -> Findings {
        Findings {
            library: LibraryFacts {
                cryptoki_version: "2.40".into(),
                manufacturer: "m".into(),
                description: "d".into(),
                version: "1.0".into(),
            },
            token: TokenFacts {
                label: "t".into(),
                manufacturer: "m".into(),
                model: "x".into(),
                serial: "1".into(),
                firmware: "1.0".into(),
                hardware: "1.0".into(),
                flags: vec![
                    "RNG",
                    "LOGIN_REQUIRED",
                    "USER_PIN_INITIALIZED",
                    "TOKEN_INITIALIZED",
                ],
                max_sessions: SessionLimit::Infinite,
                max_rw_sessions: SessionLimit::Infinite,
            },
            mechanisms: NEEDED_MECHANISMS
                .iter()
                .map(|(name, used_for)| MechanismFact {
                    name,
                    used_for,
                    listed: true,
                    info: Ok(KeySizes {
                        min: 16,
                        max: 32,
                        flags: vec!["ENCRYPT", "DECRYPT"],
                    }),
                })
                .collect(),
            scratch_key: Ok(()),
            iv: IvFacts {
                caller_random: Probe::Works,
                mechanism_generated: Probe::Wrong("no IV written back".into()),
            },
            bad_tag: BadTag::Refused {
                code: "CKR_GENERAL_ERROR".into(),
                function: "C_Decrypt".into(),
                invalid_ciphertext: true,
            },
            data_objects: None,
            handle_reuse: None,
            sessions: SessionFacts {
                wanted: 4,
                opened: 4,
                refusal: None,
            },
            latency: None,
            keys: vec![key("k")],
        }
    }

    fn verdict_of<'r>(r: &'r Report, name: &str) -> &'r Check {
        r.checks
            .iter()
            .find(|c| c.name.starts_with(name))
            .expect("check present")
    }

    #[test]
    fn a_token_that_only_generates_ivs_itself_is_usable_with_the_iv_source_changed() {
        let mut f = good();
        f.latency = Some(crate::hsm::doctor::Latency {
            ops: 10,
            ops_per_sec: 5.0,
            p50_us: 100,
            p99_us: 200,
        });
        f.iv = IvFacts {
            caller_random: Probe::Refused("CKR_MECHANISM_PARAM_INVALID from C_EncryptInit".into()),
            mechanism_generated: Probe::Works,
        };
        let r = judge(&token("token-random"), f);
        assert_eq!(r.verdict, Overall::UsableWithChanges);
        assert_eq!(r.exit_code, 0);
        let iv = verdict_of(&r, "IV: caller-supplied");
        assert_eq!(iv.verdict, Verdict::Warn);
        assert!(iv
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("iv_source = \"mechanism\"")));
        assert!(r.snippet.contains("iv_source = \"mechanism\""), "{}", r.snippet);
        assert!(render(&r).contains("changes needed:"));
    }

    #[test]
    fn no_working_iv_mode_an_accepted_forgery_or_a_weak_key_is_not_usable() {
        let mut f = good();
        f.iv.caller_random = Probe::Refused("CKR_MECHANISM_INVALID from C_EncryptInit".into());
        let r = judge(&token("token-random"), f);
        assert_eq!((r.verdict, r.exit_code), (Overall::NotUsable, 1));

        let mut f = good();
        f.bad_tag = BadTag::Accepted;
        assert_eq!(judge(&token("token-random"), f).verdict, Overall::NotUsable);

        let mut f = good();
        f.keys[0].extractable = Some(true);
        let r = judge(&token("token-random"), f);
        assert_eq!(r.verdict, Overall::NotUsable);
        assert!(verdict_of(&r, "key k")
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("extractable")));
    }

    #[test]
    fn an_unclassified_tag_failure_and_a_modifiable_key_are_warnings() {
        let mut f = good();
        f.bad_tag = BadTag::Refused {
            code: "CKR_DATA_INVALID".into(),
            function: "C_Decrypt".into(),
            invalid_ciphertext: false,
        };
        f.keys[0].modifiable = Some(true);
        f.latency = Some(crate::hsm::doctor::Latency {
            ops: 1,
            ops_per_sec: 1.0,
            p50_us: 1,
            p99_us: 1,
        });
        let r = judge(&token("token-random"), f);
        assert_eq!(r.verdict, Overall::UsableWithChanges);
        assert_eq!(verdict_of(&r, "bad GCM tag").verdict, Verdict::Warn);
        assert_eq!(verdict_of(&r, "key k").verdict, Verdict::Warn);
    }
}
