//! Durability of the kill switch when the places it is written to refuse the write: a state
//! directory on which writes fail (even for root), and a token that refuses the disabled-key
//! mark (`hsm-fixtures/faultshim`, word `refuse_data_objects`). The switch must still be in
//! force, `status` and the CLI's exit code must say it is not durable (or only local), nothing
//! unrelated may release it, and it must become durable / survive restarts once possible.
//!
//! Real daemon, real CLI, real SoftHSM2 token. Everything on 127.0.0.1 and in temp dirs.

mod common;
mod control_support;

use common::*;
use control_support::*;
use serde_json::Value;
use std::time::Duration;

/// Bound on "the background retry makes it durable".
const RETRY: Duration = Duration::from_secs(5);

#[track_caller]
fn proxy_state(config: &std::path::Path) -> (Option<bool>, Option<bool>, Value) {
    let s = status(config);
    (
        s["proxy"]["engaged"].as_bool(),
        s["proxy"]["durable"].as_bool(),
        s,
    )
}

#[test]
fn engage_on_an_unwritable_state_directory_is_in_force_reported_not_durable_exits_75_and_becomes_durable_later(
) {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    assert_eq!(encrypt_outcome(&proxy, &fx, KEY_AES).0, 200);
    let mut frozen = FrozenDir::freeze(&state_dir(&fx));

    let (code, out, err) = cli(
        &proxy.config,
        &["kill-switch", "engage", "--reason", "state dir unwritable"],
    );
    assert_refusing(&proxy, &fx, "engage while the state file cannot be written");
    let (engaged, durable, s) = proxy_state(&proxy.config);
    assert_eq!(engaged, Some(true), "{s}");
    assert_eq!(
        durable,
        Some(false),
        "status must say the engage is not in the state file: {s}"
    );
    assert_eq!(
        code,
        Some(EXIT_NOT_DURABLE),
        "engaged in memory but not durable must exit 75: {out}\n{err}"
    );

    // Later, unrelated actions (which also write the state file, and fail to) must not undo it.
    for args in [
        vec!["kill-switch", "engage", "--keystore", PREFIX],
        vec!["kill-switch", "release", "--keystore", PREFIX],
        vec!["keys", "disable", KEY_NO_USAGE, "--reason", "unrelated"],
        vec!["keys", "enable", KEY_NO_USAGE, "--reason", "unrelated"],
    ] {
        let (code, _, err) = cli(&proxy.config, &args);
        let context = format!("after `{}` (exit {code:?}: {})", args.join(" "), err.trim());
        assert_refusing(&proxy, &fx, &context);
        let (engaged, durable, s) = proxy_state(&proxy.config);
        assert_eq!((engaged, durable), (Some(true), Some(false)), "{context}: {s}");
    }

    // Writable again: the background retry makes the engage durable without any command.
    frozen.thaw();
    let mut last = Value::Null;
    let durable = wait_until(RETRY, || {
        let (e, d, s) = proxy_state(&proxy.config);
        last = s;
        e == Some(true) && d == Some(true)
    });
    assert!(
        durable,
        "not durable {RETRY:?} after the state directory became writable: {last}"
    );
    assert_refusing(&proxy, &fx, "after the retry");
    assert!(
        state_file(&fx)["proxy"].is_object(),
        "status says durable but the state file does not hold the engage: {}",
        state_file(&fx)
    );

    // The keystore release above could not be written, so it changed nothing: that keystore
    // is still engaged (and now durable too).
    let st = status(&proxy.config);
    assert_eq!(st["keystores"][0]["engaged"], true, "{st}");

    drop(proxy);
    let proxy = TestProxy::start(&fx);
    assert_refusing(&proxy, &fx, "after a restart");
    cli_ok(&proxy.config, &["kill-switch", "release", "--reason", "done"]);
    cli_ok(
        &proxy.config,
        &["kill-switch", "release", "--keystore", PREFIX, "--reason", "done"],
    );
    assert_eq!(encrypt_outcome(&proxy, &fx, KEY_AES).0, 200);
}

#[test]
fn release_on_an_unwritable_state_directory_does_not_report_success_it_cannot_keep() {
    // A release that cannot be written would come back engaged after a restart: the CLI must
    // not exit 0, and the proxy must either still refuse or say the release is not durable.
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    cli_ok(&proxy.config, &["kill-switch", "engage", "--reason", "before"]);
    let mut frozen = FrozenDir::freeze(&state_dir(&fx));
    let (code, out, err) = cli(
        &proxy.config,
        &["kill-switch", "release", "--reason", "state dir unwritable"],
    );
    assert_ne!(
        code,
        Some(0),
        "a release that is not in the state file reported success: {out}\n{err}"
    );
    let (engaged, durable, s) = proxy_state(&proxy.config);
    let enc = encrypt_outcome(&proxy, &fx, KEY_AES);
    match engaged {
        Some(true) => assert_eq!(enc.0, 400, "status says engaged: {s}"),
        Some(false) => {
            assert_eq!(enc.0, 200, "status says released: {s}");
            assert_eq!(
                durable,
                Some(false),
                "a release not written must not be durable: {s}"
            );
        }
        None => panic!("no proxy.engaged in status: {s}"),
    }
    frozen.thaw();
}

// ---------------------------------------------------------------------------------------------
// A token that refuses the disabled-key mark
// ---------------------------------------------------------------------------------------------

/// KEY_AES is refused (the answer of a disabled key) for Encrypt and Decrypt, while another key
/// of the same token still serves.
#[track_caller]
fn assert_key_refused(proxy: &TestProxy, fx: &Fixture, sealed: &Sealed, context: &str) {
    let mut xks = proxy.xks(fx);
    let r = xks.encrypt(KEY_AES, &encrypt_body(b"x", None, false));
    assert_eq!(
        (r.status, r.json()["errorName"].clone()),
        (400, "InvalidStateException".into()),
        "{context}: Encrypt under the engaged key: {}",
        r.text()
    );
    let r = xks.decrypt(KEY_AES, &sealed.decrypt_body(None));
    assert_eq!(
        (r.status, r.json()["errorName"].clone()),
        (400, "InvalidStateException".into()),
        "{context}: Decrypt under the engaged key: {}",
        r.text()
    );
    let r = xks.encrypt(KEY_ENCRYPT_ONLY, &encrypt_body(b"x", None, false));
    assert_eq!(
        r.status,
        200,
        "{context}: another key must still serve: {}",
        r.text()
    );
}

#[track_caller]
fn token_lists(config: &std::path::Path) -> (Value, Value, Value) {
    let s = status(config);
    let t = s["tokens"][0].clone();
    (t["disabled_keys"].clone(), t["local_denies"].clone(), s)
}

fn contains(list: &Value, id: &str) -> bool {
    list.as_array().is_some_and(|a| a.iter().any(|v| v == id))
}

#[test]
fn a_key_engage_whose_token_mark_is_refused_is_enforced_locally_across_polls_reconnects_and_restarts() {
    let fx = Fixture::new();
    let (mut cfg, control) = shimmed_config(&fx);
    // A token whose login cannot create data objects cannot hold encryption counters either:
    // such a deployment turns counting off (tests/key_versions.rs covers the refusal).
    entry(&mut cfg, "keystores", 0).insert("count_encryptions".into(), false.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let sealed = proxy.xks(&fx).encrypt_ok(KEY_AES, b"before the engage", None);

    set_control(&control, "refuse_data_objects");
    let (code, out, err) = cli(
        &proxy.config,
        &[
            "kill-switch",
            "engage",
            "--key",
            KEY_AES,
            "--reason",
            "mark refused",
        ],
    );
    assert_eq!(
        code,
        Some(0),
        "refused locally and persisted must exit 0: {out}\n{err}"
    );
    let said = format!("{out}\n{err}").to_lowercase();
    assert!(
        said.contains("refused") && said.contains("mark") && said.contains("this instance"),
        "the CLI must say the token refused the mark and the key is refused by this instance only: \
         {out}\n{err}"
    );
    assert_key_refused(&proxy, &fx, &sealed, "right after the engage");
    let (disabled, local, s) = token_lists(&proxy.config);
    assert!(contains(&disabled, KEY_AES), "disabled_keys must list it: {s}");
    assert!(contains(&local, KEY_AES), "local_denies must list it: {s}");

    // The token has no mark: the half-second poll of the token's marks must not undo it.
    std::thread::sleep(Duration::from_millis(1600));
    assert_key_refused(&proxy, &fx, &sealed, "after three polls of the token");

    // A token reconnect (device fault, then recovery) must not forget it either.
    set_control(&control, "device_error refuse_data_objects");
    let r = proxy
        .xks(&fx)
        .encrypt(KEY_ENCRYPT_ONLY, &encrypt_body(b"x", None, false));
    assert_ne!(r.status, 200, "the device fault did not reach the daemon");
    std::thread::sleep(Duration::from_millis(300));
    set_control(&control, "refuse_data_objects");
    let back = wait_until(Duration::from_secs(10), || {
        proxy
            .xks(&fx)
            .encrypt(KEY_ENCRYPT_ONLY, &encrypt_body(b"x", None, false))
            .status
            == 200
    });
    assert!(back, "no recovery from the device fault:\n{}", proxy.logs());
    assert_key_refused(&proxy, &fx, &sealed, "after the token reconnected");

    // Nor a whole-proxy engage + release (which disconnects and reconnects every token).
    cli_ok(&proxy.config, &["kill-switch", "engage", "--reason", "cycle"]);
    cli_ok(&proxy.config, &["kill-switch", "release", "--reason", "cycle"]);
    assert_key_refused(&proxy, &fx, &sealed, "after a proxy engage/release cycle");

    // It is in the state file: a restarted daemon refuses the key from its first request.
    drop(proxy);
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    assert_key_refused(&proxy, &fx, &sealed, "after a restart");
    let (_, local, s) = token_lists(&proxy.config);
    assert!(contains(&local, KEY_AES), "local_denies after a restart: {s}");

    cli_ok(
        &proxy.config,
        &["kill-switch", "release", "--key", KEY_AES, "--reason", "done"],
    );
    let mut xks = proxy.xks(&fx);
    assert_eq!(xks.encrypt(KEY_AES, &encrypt_body(b"x", None, false)).status, 200);
    assert_eq!(xks.decrypt(KEY_AES, &sealed.decrypt_body(None)).status, 200);
    let (disabled, local, s) = token_lists(&proxy.config);
    assert!(
        !contains(&disabled, KEY_AES) && !contains(&local, KEY_AES),
        "released, yet still listed: {s}"
    );
}
