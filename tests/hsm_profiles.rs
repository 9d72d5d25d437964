//! Vendor profiles end to end: the real daemon on the real SoftHSM2 token, reached through
//! `hsm-fixtures/faultshim` emulating each vendor (`vendor luna|cloudhsm|nshield`: how the IV is
//! made and returned, the code a bad GCM tag comes back as, CloudHSM's `user:password` PIN).
//! Each profile on its emulation encrypts and decrypts through the daemon and answers a tampered
//! tag with InvalidCiphertextException; a profile that does not match the token fails the
//! request (no ciphertext leaves the proxy); a bad profile or PIN shape stops the config.

mod common;

use common::*;
use std::path::PathBuf;

const PLAINTEXT: &[u8] = b"profile round trip";
const AAD: &[u8] = b"profile aad";

/// A daemon whose token sits behind the shim set to `control`, with `profile` (and optionally
/// `iv_source`) in its `[[tokens]]` entry.
struct Profiled {
    xks: Xks,
    proxy: TestProxy,
    _fx: Fixture,
}

impl Profiled {
    /// `profile` "" leaves the key out, as in a config written before profiles existed.
    fn start(profile: &str, iv_source: Option<&str>, control: &str) -> Profiled {
        let fx = Fixture::new();
        let (mut cfg, control_file) = shimmed_config(&fx);
        set_control(&control_file, control);
        let token = entry(&mut cfg, "tokens", 0);
        // The fixture's config is the quickstart's, which names SoftHSM2's profile.
        token.remove("profile");
        token.remove("iv_source");
        if !profile.is_empty() {
            token.insert("profile".into(), profile.into());
        }
        if let Some(iv) = iv_source {
            token.insert("iv_source".into(), iv.into());
        }
        if profile == "cloudhsm" {
            let pin = cloudhsm_pin(&fx, "xks-proxy");
            entry(&mut cfg, "tokens", 0).insert("pin".into(), file_source(&pin));
        }
        let proxy = TestProxy::start_with(&fx, &cfg, &[]);
        let xks = proxy.xks(&fx);
        Profiled { xks, proxy, _fx: fx }
    }
}

/// `{ file = "<path>" }`.
fn file_source(path: &std::path::Path) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("file".into(), path.display().to_string().into());
    toml::Value::Table(t)
}

/// A PIN file holding `<user>:<the fixture's user PIN>`, as CloudHSM's C_Login takes it.
fn cloudhsm_pin(fx: &Fixture, user: &str) -> PathBuf {
    let pin = std::fs::read_to_string(fx.path("secrets/token.pin")).expect("token.pin");
    fx.write_secret("cloudhsm.pin", &format!("{user}:{}", pin.trim_end()))
}

/// Encrypts through the daemon, checks the IV length, decrypts back to the plaintext, then
/// flips one bit of the tag and expects InvalidCiphertextException (not a 500).
fn round_trip_and_tampered_tag(p: &mut Profiled, iv_len: usize) {
    let sealed = p.xks.encrypt_ok(KEY_AES, PLAINTEXT, Some(AAD));
    assert_eq!(sealed.iv.len(), iv_len, "IV returned to KMS");
    assert!(sealed.iv.iter().any(|b| *b != 0), "an all-zero IV left the proxy");
    assert_eq!(sealed.tag.len(), 16);
    assert_eq!(sealed.ciphertext.len(), PLAINTEXT.len());
    let r = p.xks.decrypt(KEY_AES, &sealed.decrypt_body(Some(AAD)));
    let v = assert_ok(&r);
    assert_eq!(unb64(v["plaintext"].as_str().expect("plaintext")), PLAINTEXT);

    let again = p.xks.encrypt_ok(KEY_AES, PLAINTEXT, Some(AAD));
    assert_ne!(again.iv, sealed.iv, "two encryptions under one IV");

    let mut tampered = sealed.clone();
    tampered.tag[15] ^= 0x01;
    let r = p.xks.decrypt(KEY_AES, &tampered.decrypt_body(Some(AAD)));
    assert_error(&r, 400, "InvalidCiphertextException");
    // The token is still healthy afterwards: a bad tag is not a device failure.
    let r = p.xks.decrypt(KEY_AES, &sealed.decrypt_body(Some(AAD)));
    assert_ok(&r);
}

#[test]
fn softhsm_profile_round_trips_and_a_tampered_tag_is_invalid_ciphertext() {
    let mut p = Profiled::start("softhsm", None, "none");
    round_trip_and_tampered_tag(&mut p, 12);
}

#[test]
fn no_profile_behaves_as_before_profiles_existed() {
    let mut p = Profiled::start("", None, "none");
    round_trip_and_tampered_tag(&mut p, 12);
}

#[test]
fn generic_profile_counts_every_known_tag_failure_code() {
    // nShield's CKR_FUNCTION_FAILED, SoftHSM2's CKR_GENERAL_ERROR (plain token): both are a bad
    // tag for a token nobody profiled.
    let mut p = Profiled::start("generic", Some("mechanism"), "vendor nshield");
    round_trip_and_tampered_tag(&mut p, 12);
    let mut p = Profiled::start("generic", None, "none");
    round_trip_and_tampered_tag(&mut p, 12);
}

#[test]
fn luna_profile_takes_the_iv_from_after_the_tag_on_emulated_luna() {
    // cryptoki leaves ulIvBits at 0 for an empty IV: Luna then makes a 16-byte IV.
    let mut p = Profiled::start("luna", None, "vendor luna");
    round_trip_and_tampered_tag(&mut p, 16);
}

#[test]
fn cloudhsm_profile_uses_the_written_back_iv_and_a_user_password_pin_on_emulated_cloudhsm() {
    let mut p = Profiled::start("cloudhsm", None, "vendor cloudhsm");
    round_trip_and_tampered_tag(&mut p, 12);
}

#[test]
fn nshield_profile_counts_function_failed_as_a_bad_tag_on_emulated_nshield() {
    let mut p = Profiled::start("nshield", None, "vendor nshield");
    round_trip_and_tampered_tag(&mut p, 12);
}

/// An Encrypt that must fail with InternalException: the token does not behave as the profile
/// says, and nothing that looks like a ciphertext may reach KMS.
#[track_caller]
fn encrypt_fails_without_ciphertext(p: &mut Profiled) {
    let r = p.xks.encrypt(KEY_AES, &encrypt_body(PLAINTEXT, Some(AAD), false));
    assert_error(&r, 500, "InternalException");
    let v = r.json();
    assert!(
        v.get("ciphertext").is_none() && v.get("initializationVector").is_none(),
        "{v}"
    );
}

#[test]
fn luna_profile_on_plain_softhsm_fails_instead_of_inventing_an_iv() {
    let mut p = Profiled::start("luna", None, "none");
    encrypt_fails_without_ciphertext(&mut p);
}

#[test]
fn cloudhsm_style_iv_on_plain_softhsm_fails_instead_of_using_a_zero_iv() {
    let mut p = Profiled::start("nshield", None, "none");
    encrypt_fails_without_ciphertext(&mut p);
    assert!(
        p.proxy.wait_for_log("all-zero IV"),
        "the log names the cause: {}",
        p.proxy.logs()
    );
}

#[test]
fn softhsm_profile_on_emulated_luna_is_refused_by_the_token() {
    let mut p = Profiled::start("softhsm", None, "vendor luna");
    encrypt_fails_without_ciphertext(&mut p);
}

#[test]
fn a_tag_failure_code_outside_the_profile_is_a_device_error_not_a_forgery() {
    // nShield's IV mode, but the SoftHSM2 profile's tag codes: CKR_FUNCTION_FAILED is not a bad
    // tag for SoftHSM2, so a tampered tag is reported as the device failure it would be there.
    let mut p = Profiled::start("softhsm", Some("mechanism"), "vendor nshield");
    let sealed = p.xks.encrypt_ok(KEY_AES, PLAINTEXT, Some(AAD));
    let r = p.xks.decrypt(KEY_AES, &sealed.decrypt_body(Some(AAD)));
    assert_ok(&r);
    let mut tampered = sealed.clone();
    tampered.tag[0] ^= 0x80;
    let r = p.xks.decrypt(KEY_AES, &tampered.decrypt_body(Some(AAD)));
    assert_error(&r, 500, "InternalException");
    assert!(
        p.proxy.wait_for_log("code=CKR_FUNCTION_FAILED"),
        "the log names the code and the profile: {}",
        p.proxy.logs()
    );
}

#[test]
fn an_unknown_profile_stops_the_config_naming_the_field() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    entry(&mut cfg, "tokens", 0).insert("profile".into(), "thales".into());
    let path = fx.write_config(&cfg);
    for verb in ["check-config", "serve"] {
        let (code, out, err) = cli(&path, &[verb]);
        assert_eq!(code, Some(64), "{verb}: {out}\n{err}");
        assert!(err.contains("profile") && err.contains("thales"), "{verb}: {err}");
        assert!(
            err.contains("luna") && err.contains("cloudhsm"),
            "lists the known profiles: {err}"
        );
    }
}

#[test]
fn a_cloudhsm_pin_without_a_user_is_refused_at_load_without_printing_it() {
    let fx = Fixture::new();
    let secret_pin = "NoColonPin4711";
    let pin = fx.write_secret("bare.pin", secret_pin);
    let mut cfg = fx.config();
    let token = entry(&mut cfg, "tokens", 0);
    token.insert("profile".into(), "cloudhsm".into());
    token.insert("pin".into(), file_source(&pin));
    let path = fx.write_config(&cfg);
    for verb in ["check-config", "serve"] {
        let (code, out, err) = cli(&path, &[verb]);
        assert_eq!(code, Some(64), "{verb}: {out}\n{err}");
        assert!(
            err.contains("tokens[0].pin") && err.contains("cloudhsm"),
            "{verb}: {err}"
        );
        assert!(
            !err.contains(secret_pin) && !out.contains(secret_pin),
            "{verb} printed the PIN"
        );
    }
    // The same PIN with a user in front is accepted.
    cloudhsm_pin(&fx, "xks-proxy");
    let mut cfg = fx.config();
    let token = entry(&mut cfg, "tokens", 0);
    token.insert("profile".into(), "cloudhsm".into());
    token.insert("pin".into(), file_source(&fx.path("secrets/cloudhsm.pin")));
    cli_ok(&fx.write_config(&cfg), &["check-config"]);
}

/// `xks-bridge doctor` with the token behind the shim set to `control` and `profile` configured.
fn doctor_on(profile: &str, control: &str) -> (Option<i32>, String, String) {
    let fx = Fixture::new();
    let (mut cfg, control_file) = shimmed_config(&fx);
    set_control(&control_file, control);
    entry(&mut cfg, "tokens", 0).insert("profile".into(), profile.into());
    if profile == "cloudhsm" {
        let pin = cloudhsm_pin(&fx, "xks-proxy");
        entry(&mut cfg, "tokens", 0).insert("pin".into(), file_source(&pin));
    }
    let path = fx.write_config(&cfg);
    cli(&path, &["doctor"])
}

#[test]
fn doctor_reports_the_profile_and_agrees_with_a_matching_emulation() {
    let (code, out, err) = doctor_on("luna", "vendor luna");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("[ok  ] profile: \"luna\""), "{out}");
    assert!(
        out.contains("[ok  ] IV: IV generated by the token, returned after the tag (iv_source = \"mechanism-after-tag\"): works"),
        "{out}"
    );
    assert!(
        out.contains("C_Decrypt answers CKR_ENCRYPTED_DATA_INVALID; classified as invalid ciphertext"),
        "{out}"
    );
    assert!(
        out.contains("profile = \"luna\"") && out.contains("iv_source = \"mechanism-after-tag\""),
        "{out}"
    );
}

#[test]
fn doctor_names_the_profile_a_mismatched_token_behaves_as() {
    let (code, out, err) = doctor_on("softhsm", "vendor nshield");
    // Usable once changed: the snippet holds the change.
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("[WARN] profile: \"softhsm\""), "{out}");
    assert!(out.contains("set profile = \"nshield\""), "{out}");
    assert!(
        out.contains(
            "C_Decrypt answers CKR_FUNCTION_FAILED, which profile \"softhsm\" does not count as a bad tag"
        ),
        "{out}"
    );
    let snippet = out.split("settings for this token:").nth(1).expect("snippet");
    assert!(
        snippet.contains("profile = \"nshield\"") && snippet.contains("iv_source = \"mechanism\""),
        "{snippet}"
    );
}
