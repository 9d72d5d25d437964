//! `xks-bridge doctor` against the real SoftHSM2 fixture token: a good token is usable (exit 0),
//! a refused PIN or an absent token cannot run (exit 69), a token without AES-GCM (the fault shim's
//! `hide_mechanism`) is not usable (exit 1), a weak configured key fails, and the doctor leaves
//! no object on the token, with or without `--write-tests`.

mod common;
mod control_support;

use common::*;
use control_support::*;
use serde_json::Value;
use std::path::Path;

const PRIVATE_OBJECTS: &str = "private data objects (encryption counters, key versions, disabled-key marks)";

/// `CKM_AES_GCM`.
const CKM_AES_GCM: &str = "0x1087";

fn doctor(config: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["doctor"];
    args.extend_from_slice(extra);
    cli(config, &args)
}

fn doctor_json(config: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = doctor(config, &args);
    let v = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {out}\n{err}"));
    (code, v)
}

/// The check named `name` in a JSON report.
#[track_caller]
fn json_check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

/// The token objects the fixture's user can see, one header line each (`Secret Key Object;
/// ...`, `Data object ...`), listed by OpenSC's pkcs11-tool.
fn token_objects(fx: &Fixture) -> Vec<String> {
    let out = pkcs11_tool_ok(fx, &["--list-objects"]);
    let objects: Vec<String> = out
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(' ') && !l.starts_with('\t'))
        .map(str::to_owned)
        .collect();
    // The fixture's four keys, each with its creation record: the listing really sees them.
    assert!(objects.len() >= 8, "pkcs11-tool listed too few objects: {out}");
    objects
}

#[test]
fn the_fixture_token_passes_every_check_and_is_usable() {
    let fx = Fixture::new();
    let cfg = fx.path("config.toml");
    let (code, out, err) = doctor(&cfg, &[]);
    assert_eq!(code, Some(0), "doctor: {out}\n{err}");
    assert!(out.contains("verdict: usable (exit 0)"), "{out}");
    assert!(!out.contains("[WARN]") && !out.contains("[FAIL]"), "{out}");
    for line in [
        "[ok  ] mechanism CKM_AES_GCM: key sizes 16-32 bytes",
        "[ok  ] mechanism CKM_AES_KEY_GEN",
        "[ok  ] mechanism CKM_AES_KEY_WRAP_PAD",
        "[ok  ] IV: caller-supplied random IV (iv_source = \"token-random\"): works",
        "[ok  ] bad GCM tag: C_Decrypt answers CKR_GENERAL_ERROR; classified as invalid ciphertext",
        "[ok  ] key quickstart-aes: AES_256, sensitive, not extractable, private, not modifiable",
        "iv_source = \"token-random\"",
        "token_label = \"xks-bridge-quickstart\"",
        // SoftHSM2 behaves as `generic`; its manufacturer ID names its own profile.
        "profile = \"softhsm\"",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }

    let (code, report) = doctor_json(&cfg, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["verdict"], "usable", "{report:#}");
    assert_eq!(report["exit_code"], 0);
    let checks = report["checks"].as_array().expect("checks");
    assert!(checks.len() >= 12, "{report:#}");
    for c in checks {
        assert_eq!(c["verdict"], "ok", "{c:#}");
    }
    assert_eq!(json_check(&report, "bad GCM tag")["verdict"], "ok");
    assert_eq!(report["findings"]["bad_tag"]["code"], "CKR_GENERAL_ERROR");
    assert_eq!(report["findings"]["bad_tag"]["invalid_ciphertext"], true);
    assert_eq!(report["findings"]["iv"]["caller_random"]["outcome"], "works");
    let latency = &report["findings"]["latency"];
    assert!(latency["ops"].as_u64().unwrap_or(0) > 0, "{latency:#}");
    assert!(latency["p50_us"].as_u64().unwrap_or(0) <= latency["p99_us"].as_u64().unwrap_or(0));
    assert_eq!(
        report["findings"]["keys"].as_array().map(Vec::len),
        Some(4),
        "{report:#}"
    );
}

#[test]
fn a_refused_pin_is_named_and_the_doctor_exits_69() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    let wrong = fx.write_secret("wrong.pin", "not-the-pin");
    let mut pin = toml::Table::new();
    pin.insert("file".into(), wrong.display().to_string().into());
    entry(&mut cfg, "tokens", 0).insert("pin".into(), pin.into());
    let path = fx.write_config(&cfg);
    let (code, out, err) = doctor(&path, &[]);
    assert_eq!(code, Some(EXIT_UNAVAILABLE), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("doctor cannot run"), "{err}");
    assert!(
        err.contains("refused: PinIncorrect; check the configured PIN"),
        "{err}"
    );
    assert!(
        out.is_empty(),
        "nothing is reported when the doctor cannot run: {out}"
    );
}

#[test]
fn a_refused_pin_is_tried_once_only() {
    // Every refused login counts against the HSM's PIN retry counter: the doctor must not
    // spend more than one.
    let fx = Fixture::new();
    let (cfg, control) = shimmed_config(&fx);
    set_control(&control, "pin_incorrect");
    let path = fx.write_config(&cfg);
    let (code, out, err) = doctor(&path, &[]);
    assert_eq!(code, Some(EXIT_UNAVAILABLE), "stdout: {out}\nstderr: {err}");
    let logins = std::fs::read_to_string(control.with_extension("control.logins")).unwrap_or_default();
    assert_eq!(logins.lines().count(), 1, "C_Login calls: {logins:?}");
}

#[test]
fn an_absent_token_cannot_be_examined_and_the_doctor_exits_69() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    entry(&mut cfg, "tokens", 0).insert("token_label".into(), "no-such-token".into());
    let path = fx.write_config(&cfg);
    let (code, out, err) = doctor(&path, &[]);
    assert_eq!(code, Some(EXIT_UNAVAILABLE), "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains(
            "no token labelled \"no-such-token\" is present (initialised tokens: \"xks-bridge-quickstart\")"
        ),
        "a typo reads differently from a damaged token: {err}"
    );
}

#[test]
fn a_softhsm_token_whose_file_a_killed_process_emptied_is_reported_as_no_token_at_all() {
    // What a kill -9 during SoftHSM2's in-place rewrite of `token.object` (at every login)
    // leaves behind: the module no longer shows the token at all, and the operator must learn
    // that, not only that the label is missing (as after a typo).
    let fx = Fixture::new();
    let tokens = std::fs::read_dir(fx.path("tokens")).expect("token directory");
    let mut emptied = 0;
    for t in tokens {
        let file = t.expect("entry").path().join("token.object");
        if file.exists() {
            std::fs::write(&file, b"").expect("empty token.object");
            emptied += 1;
        }
    }
    assert_eq!(emptied, 1, "the fixture holds one token");
    let (code, out, err) = doctor(&fx.write_config(&fx.config()), &[]);
    assert_eq!(code, Some(EXIT_UNAVAILABLE), "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains(
            "no token labelled \"xks-bridge-quickstart\" is present (the module shows no initialised token)"
        ),
        "{err}"
    );
}

#[test]
fn a_token_without_aes_gcm_is_not_usable_and_names_the_mechanism() {
    let fx = Fixture::new();
    let (cfg, control) = shimmed_config(&fx);
    let path = fx.write_config(&cfg);
    // Through the shim with no fault, the token is usable: the shim itself changes nothing.
    let (code, out, err) = doctor(&path, &[]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    set_control(&control, &format!("hide_mechanism {CKM_AES_GCM}"));
    let (code, out, err) = doctor(&path, &[]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        out.contains("[FAIL] mechanism CKM_AES_GCM: not offered by the token (CKR_MECHANISM_INVALID from C_GetMechanismInfo)"),
        "{out}"
    );
    assert!(out.contains("verdict: NOT usable (exit 1)"), "{out}");
    assert!(err.contains("is not usable"), "{err}");

    let (code, report) = doctor_json(&path, &[]);
    assert_eq!(code, Some(1));
    assert_eq!(report["verdict"], "not-usable", "{report:#}");
    assert_eq!(json_check(&report, "mechanism CKM_AES_GCM")["verdict"], "fail");
    assert_eq!(json_check(&report, "mechanism CKM_AES_KEY_GEN")["verdict"], "ok");
    let refused = &report["findings"]["iv"]["caller_random"];
    assert_eq!(refused["outcome"], "refused", "{refused:#}");
    assert_eq!(refused["detail"], "CKR_MECHANISM_INVALID from C_EncryptInit");
}

#[test]
fn a_weak_configured_key_fails_with_its_fix() {
    let fx = Fixture::new();
    pkcs11_tool_ok(
        &fx,
        &[
            "--keygen",
            "--key-type",
            "AES:32",
            "--label",
            "weak-key",
            "--extractable",
        ],
    );
    let mut cfg = fx.config();
    entry(&mut cfg, "keystores", 0).insert("key_pattern".into(), "weak-*".into());
    let path = fx.write_config(&cfg);
    let (code, report) = doctor_json(&path, &[]);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["verdict"], "not-usable");
    let weak = json_check(&report, "key weak-key");
    assert_eq!(weak["verdict"], "fail", "{weak:#}");
    let fix = weak["fix"].as_str().expect("a fix");
    assert!(
        fix.contains("extractable") && fix.contains("not private"),
        "{fix}"
    );
    assert_eq!(json_check(&report, "key quickstart-aes")["verdict"], "ok");
}

#[test]
fn write_tests_run_and_leave_no_object_on_the_token() {
    let fx = Fixture::new();
    let cfg = fx.path("config.toml");
    let before = token_objects(&fx);
    let (code, report) = doctor_json(&cfg, &["--write-tests"]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["verdict"], "usable", "{report:#}");
    assert_eq!(json_check(&report, PRIVATE_OBJECTS)["verdict"], "ok");
    assert_eq!(report["findings"]["data_objects"]["outcome"], "done");
    assert_eq!(report["findings"]["handle_reuse"]["probe"]["outcome"], "done");
    assert!(
        report["findings"]["handle_reuse"]["reused"].is_boolean(),
        "{report:#}"
    );
    assert_eq!(
        token_objects(&fx),
        before,
        "--write-tests left objects on the token"
    );
}

#[test]
fn without_write_tests_the_data_object_probes_still_run_and_leave_nothing() {
    let fx = Fixture::new();
    let (cfg, control) = shimmed_config(&fx);
    let path = fx.write_config(&cfg);
    let before = token_objects(&fx);
    let (code, report) = doctor_json(&path, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["verdict"], "usable", "{report:#}");
    assert_eq!(
        json_check(&report, PRIVATE_OBJECTS)["verdict"],
        "ok",
        "{report:#}"
    );
    assert_eq!(
        json_check(&report, "public data objects (fleet epoch)")["verdict"],
        "ok"
    );
    assert!(report["findings"]["handle_reuse"].is_null(), "{report:#}");
    assert!(
        report["skipped"][0]
            .as_str()
            .is_some_and(|s| s.contains("handle reuse") && s.contains("--write-tests")),
        "{report:#}"
    );
    assert_eq!(token_objects(&fx), before, "the doctor left objects on the token");

    // A login that may not create private data objects cannot count encryptions: the default
    // run says so, with what it costs and the way out.
    set_control(&control, "refuse_data_objects");
    let (code, report) = doctor_json(&path, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["verdict"], "usable-with-changes", "{report:#}");
    let d = json_check(&report, PRIVATE_OBJECTS);
    assert_eq!(d["verdict"], "warn", "{d:#}");
    assert!(
        d["found"]
            .as_str()
            .is_some_and(|s| s.contains("CKR_FUNCTION_FAILED")),
        "{d:#}"
    );
    assert!(
        d["fix"]
            .as_str()
            .is_some_and(|s| s.contains("Encrypt is refused") && s.contains("count_encryptions = false")),
        "{d:#}"
    );
    assert_eq!(token_objects(&fx), before, "the doctor left objects on the token");
}
