//! Keys on the token against the real daemon and the real SoftHSM2 token: keys whose
//! attributes would let them leave the HSM are refused, keys the proxy creates cannot be
//! weakened later, a destroyed key is never served from the handle cache, and the half-second
//! poll of the disabled-key marks never undoes a disable.

mod common;

use common::*;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use serde_json::Value;
use std::time::{Duration, Instant};

const WEAK_EXTRACTABLE: &str = "weak-extractable";
const WEAK_NOT_SENSITIVE: &str = "weak-not-sensitive";
const WEAK_PUBLIC: &str = "weak-public";
const WEAK_TOOL: &str = "weak-pkcs11-tool";

/// An AES-256 encrypt/decrypt key made outside the proxy, with one protection attribute weak.
fn weak_key(s: &cryptoki::session::Session, label: &str, weakness: Attribute) {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let kind = weakness.attribute_type();
    template.retain(|a| a.attribute_type() != kind);
    template.push(weakness);
    s.generate_key(&cryptoki::mechanism::Mechanism::AesKeyGen, &template)
        .expect("C_GenerateKey");
}

fn allow(cfg: &mut toml::Table, extra: &[&str]) {
    let mut allowed: Vec<&str> = vec![KEY_AES, KEY_ENCRYPT_ONLY, KEY_DECRYPT_ONLY, KEY_NO_USAGE];
    allowed.extend(extra);
    entry(cfg, "keystores", 0).insert("allowed_keys".into(), toml_strings(&allowed));
}

/// A key that could have left the HSM (extractable, not sensitive, or readable without the
/// login) is refused for every operation with InvalidKeyUsageException, and the log names the
/// attribute; good keys on the same token keep working.
#[test]
fn keys_with_weak_attributes_are_refused_naming_the_attribute() {
    token_test(weak_keys_refused);
}

fn weak_keys_refused() {
    let mut h = Harness::start_with(
        |cfg, fx| {
            with_token_session(fx, |s| {
                weak_key(s, WEAK_EXTRACTABLE, Attribute::Extractable(true));
                weak_key(s, WEAK_NOT_SENSITIVE, Attribute::Sensitive(false));
                weak_key(s, WEAK_PUBLIC, Attribute::Private(false));
            });
            // The way an operator would make such a key by hand: OpenSC's pkcs11-tool.
            pkcs11_tool_ok(
                fx,
                &[
                    "--keygen",
                    "--key-type",
                    "AES:32",
                    "--label",
                    WEAK_TOOL,
                    "--extractable",
                    "--sensitive",
                    "--private",
                ],
            );
            allow(
                cfg,
                &[WEAK_EXTRACTABLE, WEAK_NOT_SENSITIVE, WEAK_PUBLIC, WEAK_TOOL],
            );
        },
        &[],
    );
    let good = h.xks.encrypt_ok(KEY_AES, b"still fine", None);
    for (key, attribute) in [
        (WEAK_EXTRACTABLE, "CKA_EXTRACTABLE=true"),
        (WEAK_NOT_SENSITIVE, "CKA_SENSITIVE=false"),
        (WEAK_PUBLIC, "CKA_PRIVATE=false"),
        (WEAK_TOOL, "CKA_EXTRACTABLE=true"),
    ] {
        assert_error(&h.xks.metadata(key), 400, "InvalidKeyUsageException");
        let r = h.xks.encrypt(key, &encrypt_body(b"x", None, false));
        assert_error(&r, 400, "InvalidKeyUsageException");
        let r = h.xks.decrypt(key, &good.decrypt_body(None));
        assert_error(&r, 400, "InvalidKeyUsageException");
        assert!(
            h.proxy.wait_for_log(attribute),
            "no log line names {attribute}:\n{}",
            h.proxy.logs()
        );
    }
    assert_ok(&h.xks.decrypt(KEY_AES, &good.decrypt_body(None)));
}

/// Keys the proxy makes cannot be weakened or copied later (CKA_MODIFIABLE and CKA_COPYABLE
/// false), and can still be destroyed.
#[test]
fn created_keys_are_unmodifiable_uncopyable_and_still_destroyable() {
    token_test(created_keys_hardened);
}

fn created_keys_hardened() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    cli_ok(&proxy.config, &["keys", "create", "--id", "hardened"]);
    for label in ["hardened", KEY_AES] {
        let attrs = with_token_session(&fx, |s| {
            let keys = find_keys(s, label);
            assert_eq!(keys.len(), 1, "{label}");
            let wanted = [
                AttributeType::Modifiable,
                AttributeType::Copyable,
                AttributeType::Destroyable,
            ];
            s.get_attributes(keys[0], &wanted).expect("C_GetAttributeValue")
        });
        assert!(
            attrs.contains(&Attribute::Modifiable(false)),
            "{label}: {attrs:?}"
        );
        assert!(attrs.contains(&Attribute::Copyable(false)), "{label}: {attrs:?}");
        assert!(
            attrs.contains(&Attribute::Destroyable(true)),
            "{label}: {attrs:?}"
        );
    }
    cli_ok(&proxy.config, &["keys", "disable", "hardened"]);
    cli_ok(
        &proxy.config,
        &["keys", "destroy", "hardened", "--confirm", "hardened"],
    );
    with_token_session(&fx, |s| assert!(find_keys(s, "hardened").is_empty()));
}

/// A key used (and its handle cached) and then destroyed through the daemon is answered
/// KeyNotFoundException, never served under a stale handle; a new key created under the same
/// id is found again by label and cannot decrypt the old key's ciphertext.
#[test]
fn destroyed_key_is_not_found_and_a_recreated_id_uses_the_new_key() {
    const ID: &str = "short-lived";
    let mut h = Harness::start_with(|cfg, _| allow(cfg, &[ID]), &[]);
    let config = h.proxy.config.clone();
    cli_ok(&config, &["keys", "create", "--id", ID]);
    let old = h.xks.encrypt_ok(ID, b"before destroy", None);
    assert_ok(&h.xks.decrypt(ID, &old.decrypt_body(None)));

    cli_ok(&config, &["keys", "disable", ID]);
    cli_ok(&config, &["keys", "destroy", ID, "--confirm", ID]);
    let r = h.xks.encrypt(ID, &encrypt_body(b"after destroy", None, false));
    assert_error(&r, 404, "KeyNotFoundException");
    assert_error(
        &h.xks.decrypt(ID, &old.decrypt_body(None)),
        404,
        "KeyNotFoundException",
    );

    cli_ok(&config, &["keys", "create", "--id", ID]);
    // The destroyed key's mark is gone from the token; the poll drops it within a second.
    assert!(wait_until(Duration::from_secs(3), || h
        .xks
        .encrypt(ID, &encrypt_body(b"x", None, false))
        .status
        == 200));
    let new = h.xks.encrypt_ok(ID, b"new key", None);
    assert_ok(&h.xks.decrypt(ID, &new.decrypt_body(None)));
    let r = h.xks.decrypt(ID, &old.decrypt_body(None));
    assert_error(&r, 400, "InvalidCiphertextException");
}

/// Races key-scope engages and releases against the half-second poll of the marks, at
/// varied offsets from its tick: once an engage is acknowledged, no request on the key
/// succeeds until the release, across at least one poll; after the release the key serves.
#[test]
fn the_marks_poll_never_undoes_a_concurrent_disable() {
    let mut h = Harness::start();
    let config = h.proxy.config.clone();
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..8 {
        std::thread::sleep(Duration::from_millis(next(500)));
        cli_ok(
            &config,
            &["kill-switch", "engage", "--key", KEY_AES, "--reason", "race"],
        );
        let watch = Instant::now();
        while watch.elapsed() < Duration::from_millis(700 + next(300)) {
            let r = h.xks.encrypt(KEY_AES, &encrypt_body(b"x", None, false));
            assert_eq!(
                r.status,
                400,
                "round {round}: served while disabled: {}",
                r.text()
            );
            assert_eq!(r.json()["errorName"], "InvalidStateException", "{}", r.text());
        }
        let md: Value = assert_ok(&h.xks.metadata(KEY_AES));
        assert_eq!(md["keyStatus"], "DISABLED", "round {round}");
        std::thread::sleep(Duration::from_millis(next(500)));
        cli_ok(
            &config,
            &["kill-switch", "release", "--key", KEY_AES, "--reason", "race"],
        );
        let watch = Instant::now();
        while watch.elapsed() < Duration::from_millis(600) {
            let r = h.xks.encrypt(KEY_AES, &encrypt_body(b"x", None, false));
            assert_eq!(
                r.status,
                200,
                "round {round}: refused after release: {}",
                r.text()
            );
        }
    }
}

/// A token that refuses a data object now and then (SoftHSM2 answered `CKR_GENERAL_ERROR` to
/// one `C_CreateObject` in a few hundred while the daemon's sessions read the token) does not
/// fail `keys create`: the creation record is tried again. A token that keeps refusing gets a
/// clear error and no half-made key.
#[test]
fn keys_create_survives_a_transient_refusal_of_its_record_and_leaves_nothing_when_it_persists() {
    let fx = Fixture::new();
    let (cfg, control) = shimmed_config(&fx);
    let config = fx.write_config(&cfg);
    let listed = |id: &str| {
        let list: Value =
            serde_json::from_str(&cli_ok(&config, &["keys", "list", "--json"])).expect("keys list JSON");
        list.to_string().contains(&format!("\"{id}\""))
    };

    set_control(&control, "data_general_error 2");
    cli_ok(&config, &["keys", "create", "--id", "created-despite-refusals"]);
    assert_eq!(
        std::fs::read_to_string(&control).expect("control").trim(),
        "none",
        "both refusals were met"
    );
    assert!(listed("created-despite-refusals"));

    set_control(&control, "data_general_error 10");
    let (code, out, err) = cli(&config, &["keys", "create", "--id", "never-half-made"]);
    assert_ne!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains("refused to store the creation record") && err.contains("nothing changed"),
        "{err}"
    );
    let left: i64 = std::fs::read_to_string(&control)
        .expect("control")
        .trim()
        .trim_start_matches("data_general_error ")
        .parse()
        .unwrap_or(0);
    assert!(
        left <= 7,
        "three attempts at the record at least: {left} refusals left"
    );
    set_control(&control, "none");
    assert!(
        !listed("never-half-made"),
        "a key without its record was left on the token"
    );
}
