//! Which token object a key id designates: a destroyed key whose handle number the token gives
//! to a new key (`hsm-fixtures/faultshim`, word `reuse_handles`) must never be served with the
//! new key's material, and a key made outside xks-bridge with weak attributes (extractable, or
//! not sensitive) must never be used.
//!
//! Real daemon, real SoftHSM2 token; keys made with OpenSC's `pkcs11-tool`.

mod common;

use common::*;

#[test]
fn the_reuse_handles_fault_gives_a_new_key_the_number_of_the_destroyed_one() {
    token_test(reuse_handles_in_process);
}

/// Loads the shim in this (child) process, whose environment `token_test` set.
fn reuse_handles_in_process() {
    // The fixture the next test relies on: without it, that test could pass vacuously.
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, AttributeType, KeyType};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let fx = Fixture::new();
    let (_conf, control) = token_child_files(&fx);
    set_control(&control, "reuse_handles");
    let pkcs11 = Pkcs11::new(shim()).expect("load the shim");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    {
        let slot = pkcs11
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|s| {
                pkcs11
                    .get_token_info(*s)
                    .is_ok_and(|i| i.label().trim() == TOKEN_LABEL)
            })
            .expect("fixture token");
        let s = pkcs11.open_rw_session(slot).expect("session");
        let pin = std::fs::read_to_string(fx.path("secrets/token.pin")).unwrap();
        s.login(UserType::User, Some(&AuthPin::from(pin.trim_end())))
            .expect("login");
        let a = generate_secret_key(&s, "shim-a", KeyType::AES, 32);
        s.destroy_object(a).expect("destroy");
        let b = generate_secret_key(&s, "shim-b", KeyType::AES, 32);
        assert_eq!(b, a, "the new key did not get the destroyed key's number");
        assert_eq!(
            find_keys(&s, "shim-b"),
            vec![a],
            "C_FindObjects must return the reused number"
        );
        assert!(find_keys(&s, "shim-a").is_empty());
        let label = s.get_attributes(a, &[AttributeType::Label]).expect("attributes");
        assert_eq!(label, vec![Attribute::Label(b"shim-b".to_vec())]);
        let _ = s.logout();
    }
    pkcs11.finalize().expect("C_Finalize");
}

#[test]
fn a_destroyed_key_whose_handle_number_went_to_a_new_key_answers_key_not_found_and_never_uses_the_new_key() {
    let fx = Fixture::new();
    let (mut cfg, control) = shimmed_config(&fx);
    entry(&mut cfg, "keystores", 0).insert("key_pattern".into(), "reuse-*".into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);

    cli_ok(&proxy.config, &["keys", "create", "--id", "reuse-a"]);
    let mut xks = proxy.xks(&fx);
    // Used once: the daemon now knows A's handle.
    let sealed_a = xks.encrypt_ok("reuse-a", b"under A", None);
    cli_ok(&proxy.config, &["keys", "disable", "reuse-a"]);
    set_control(&control, "reuse_handles");
    cli_ok(
        &proxy.config,
        &["keys", "destroy", "reuse-a", "--confirm", "reuse-a"],
    );
    // B is generated next in the daemon's process: it receives A's old handle number.
    cli_ok(&proxy.config, &["keys", "create", "--id", "reuse-b"]);
    set_control(&control, "none");

    let mut xks = proxy.xks(&fx);
    let sealed_b = xks.encrypt_ok("reuse-b", b"under B", None);
    let r = xks.decrypt("reuse-b", &sealed_b.decrypt_body(None));
    assert_eq!(r.status, 200, "B must work: {}", r.text());
    assert_eq!(r.b64_field("plaintext"), b"under B");

    let r = xks.encrypt("reuse-a", &encrypt_body(b"for A", None, false));
    if r.status == 200 {
        let leaked = Sealed::from_response(&r);
        let opened = xks.decrypt("reuse-b", &leaked.decrypt_body(None));
        panic!(
            "Encrypt under the destroyed key A answered 200; that ciphertext decrypts under B with \
             status {} (200 = it was made with B's material)",
            opened.status
        );
    }
    assert_error(&r, 404, "KeyNotFoundException");
    assert_error(
        &xks.decrypt("reuse-a", &sealed_a.decrypt_body(None)),
        404,
        "KeyNotFoundException",
    );
    assert_error(&xks.metadata("reuse-a"), 404, "KeyNotFoundException");
    // B's material is not A's: A's old ciphertext does not open under B.
    assert_ne!(
        xks.decrypt("reuse-b", &sealed_a.decrypt_body(None)).status,
        200,
        "A's ciphertext opened under B"
    );
}

/// Generates an AES-256 key on the fixture's token with OpenSC's pkcs11-tool.
fn pkcs11_tool_keygen(fx: &Fixture, label: &str, extra: &[&str]) {
    let mut args = vec!["--keygen", "--key-type", "AES:32", "--private", "--label", label];
    args.extend_from_slice(extra);
    pkcs11_tool_ok(fx, &args);
}

/// (CKA_SENSITIVE, CKA_EXTRACTABLE) of the key labelled `label`, read from the token directly.
fn sensitivity(fx: &Fixture, label: &str) -> (bool, bool) {
    use cryptoki::object::{Attribute, AttributeType};
    with_token_session(fx, |s| {
        let h = *find_keys(s, label).first().expect("key on the token");
        let (mut sensitive, mut extractable) = (None, None);
        for a in s
            .get_attributes(h, &[AttributeType::Sensitive, AttributeType::Extractable])
            .expect("attributes")
        {
            match a {
                Attribute::Sensitive(v) => sensitive = Some(v),
                Attribute::Extractable(v) => extractable = Some(v),
                _ => {}
            }
        }
        (
            sensitive.expect("CKA_SENSITIVE"),
            extractable.expect("CKA_EXTRACTABLE"),
        )
    })
}

#[test]
fn keys_made_elsewhere_as_extractable_or_not_sensitive_are_refused_with_a_clear_error_and_never_encrypt() {
    token_test(weak_keys_are_refused);
}

fn weak_keys_are_refused() {
    let fx = Fixture::new();
    pkcs11_tool_keygen(&fx, "outside-extractable", &["--sensitive", "--extractable"]);
    pkcs11_tool_keygen(&fx, "outside-not-sensitive", &[]);
    assert_eq!(sensitivity(&fx, "outside-extractable"), (true, true), "fixture");
    assert!(!sensitivity(&fx, "outside-not-sensitive").0, "fixture");

    let mut cfg = fx.config();
    entry(&mut cfg, "keystores", 0).insert("key_pattern".into(), "outside-*".into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    // A key of the same keystore pattern with strong attributes serves: the refusals below are
    // about the attributes, not the id.
    cli_ok(&proxy.config, &["keys", "create", "--id", "outside-control"]);
    let mut xks = proxy.xks(&fx);
    let sealed = xks.encrypt_ok("outside-control", b"fine", None);
    assert_eq!(
        xks.decrypt("outside-control", &sealed.decrypt_body(None)).status,
        200
    );

    for (key, weakness) in [
        ("outside-extractable", "extractable"),
        ("outside-not-sensitive", "sensitive"),
    ] {
        for attempt in 0..2 {
            let r = xks.encrypt(key, &encrypt_body(b"must not be sealed", None, false));
            assert!(
                (400..500).contains(&r.status),
                "Encrypt under {key} (attempt {attempt}) answered {}: {}",
                r.status,
                r.text()
            );
            assert_json_error_shape(&r);
            let msg = r.json()["errorMessage"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase();
            assert!(
                msg.contains(weakness),
                "the error for {key} must name the weak attribute ({weakness}): {}",
                r.text()
            );
        }
    }
}
