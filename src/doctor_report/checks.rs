//! One function per check: a finding in, a [`Check`] (verdict, what was found, the fix) out.

use super::{check, Check, Verdict};
use crate::config::{IvSource, TokenConfig};
use crate::hsm::doctor::{BadTag, Findings, KeyFacts, Probe, SessionLimit, WriteProbe};

pub(super) fn library_check(f: &Findings) -> Check {
    let l = &f.library;
    check(
        "library",
        Verdict::Ok,
        format!(
            "{} {} by {}, PKCS#11 {}",
            l.description, l.version, l.manufacturer, l.pkcs11_version
        ),
        None,
    )
}

pub(super) fn token_check(f: &Findings) -> Check {
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

pub(super) fn mechanism_checks(f: &Findings) -> Vec<Check> {
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

pub(super) fn scratch_check(f: &Findings) -> Check {
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
pub(super) fn working_iv_source(configured: IvSource, f: &Findings) -> IvSource {
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

pub(super) fn iv_name(s: IvSource) -> &'static str {
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

pub(super) fn iv_checks(configured: IvSource, chosen: IvSource, f: &Findings) -> Vec<Check> {
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

pub(super) fn bad_tag_check(f: &Findings) -> Check {
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

pub(super) fn data_object_check(w: &WriteProbe) -> Check {
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

pub(super) fn handle_reuse_check(w: &WriteProbe, reused: Option<bool>) -> Check {
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
pub(super) fn workers(cfg: &TokenConfig, f: &Findings) -> usize {
    if f.sessions.opened >= f.sessions.wanted {
        cfg.workers
    } else {
        f.sessions.opened.saturating_sub(2).max(1)
    }
}

pub(super) fn session_check(cfg: &TokenConfig, f: &Findings) -> Check {
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

pub(super) fn latency_check(cfg: &TokenConfig, f: &Findings) -> Check {
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

pub(super) fn key_checks(keys: &[KeyFacts]) -> Vec<Check> {
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
