//! The configured keys found on the token, and whether their attributes keep them safe.

use crate::doctor_report::{check, Check, Verdict};
use crate::hsm::doctor::KeyFacts;

pub(in crate::doctor_report) fn key_checks(keys: &[KeyFacts]) -> Vec<Check> {
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
