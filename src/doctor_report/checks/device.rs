//! What the module and the token say about themselves: library, token flags, mechanisms, and
//! whether a scratch session key (the crypto probes' precondition) can be made.

use crate::doctor_report::{check, Check, Verdict};
use crate::hsm::doctor::Findings;

pub(in crate::doctor_report) fn library_check(f: &Findings) -> Check {
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

pub(in crate::doctor_report) fn token_check(f: &Findings) -> Check {
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

pub(in crate::doctor_report) fn mechanism_checks(f: &Findings) -> Vec<Check> {
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

pub(in crate::doctor_report) fn scratch_check(f: &Findings) -> Check {
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
