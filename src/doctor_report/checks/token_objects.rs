//! The write probes: private and public data objects on the token (always), and whether it
//! hands a destroyed object's handle to a new one (`--write-tests`).

use crate::doctor_report::{check, Check, Verdict};
use crate::hsm::doctor::WriteProbe;

fn write_fix(w: &WriteProbe) -> Option<String> {
    match w {
        WriteProbe::LeftBehind { handle, .. } => Some(format!(
            "a probe object (handle {handle}, CKA_APPLICATION \"xks-bridge/doctor-probe\") is still on the token: delete it"
        )),
        _ => None,
    }
}

pub(in crate::doctor_report) fn data_object_check(w: &WriteProbe) -> Check {
    let name = "private data objects (encryption counters, key versions, disabled-key marks)";
    match w {
        WriteProbe::Done => check(name, Verdict::Ok, "a private CKO_DATA token object was created and destroyed", None),
        WriteProbe::Refused { code } => check(
            name,
            Verdict::Warn,
            format!("refused: {code}"),
            Some("allow this user to create private data objects; otherwise Encrypt is refused while the proxy counts encryptions (count_encryptions = false in the keystores turns counting, and with it the encryption budget and automatic rotation, off), keys cannot be rotated, and key kill switches hold on this instance only".into()),
        ),
        WriteProbe::LeftBehind { code, .. } => check(name, Verdict::Fail, format!("created, but destroying it failed: {code}"), write_fix(w)),
    }
}

/// Public data objects only spare logins (see `hsm::fleet_epoch`): a refusal is no fault.
pub(in crate::doctor_report) fn public_object_check(w: &WriteProbe) -> Check {
    let name = "public data objects (fleet epoch)";
    match w {
        WriteProbe::Done => check(name, Verdict::Ok, "a public CKO_DATA token object was created and destroyed", None),
        WriteProbe::Refused { code } => check(
            name,
            Verdict::Ok,
            format!("refused: {code}; nothing depends on them: an instance disconnected by a fleet engage then logs in at each release check (every 2 s) instead of only when the fleet marks changed"),
            None,
        ),
        WriteProbe::LeftBehind { code, .. } => check(name, Verdict::Fail, format!("created, but destroying it failed: {code}"), write_fix(w)),
    }
}

pub(in crate::doctor_report) fn handle_reuse_check(w: &WriteProbe, reused: Option<bool>) -> Check {
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
