//! The kill switch and key lifecycle, end to end: the real daemon, the real `xks-bridge`
//! operator commands over the admin socket (or directly on the token when no daemon runs), and
//! the real SoftHSM2 token.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn engage_under_concurrent_load_refuses_every_request_sent_after_engage_returned() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<(Instant, u16, String)>>> = Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, log) = (stop.clone(), log.clone());
            let mut xks = proxy.xks(&fx);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let r = xks.encrypt(KEY_AES, &encrypt_body(b"load", None, false));
                    let name = if r.status == 200 {
                        String::new()
                    } else {
                        r.json()["errorName"].to_string()
                    };
                    log.lock().unwrap().push((sent, r.status, name));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    cli_ok(
        &proxy.config,
        &["kill-switch", "engage", "--reason", "load drill"],
    );
    let returned = Instant::now();
    std::thread::sleep(Duration::from_millis(400));
    stop.store(true, Ordering::SeqCst);
    workers.into_iter().for_each(|w| w.join().unwrap());

    let log = log.lock().unwrap();
    let before_ok = log.iter().filter(|(t, s, _)| *t < returned && *s == 200).count();
    let after: Vec<_> = log.iter().filter(|(t, _, _)| *t > returned).collect();
    assert!(before_ok > 0, "the load never succeeded before the engage");
    assert!(!after.is_empty(), "no request was sent after the engage returned");
    for (_, s, name) in &after {
        assert_eq!(
            (*s, name.as_str()),
            (400, "\"InvalidStateException\""),
            "a request sent after engage got through"
        );
    }
}

#[test]
fn engaged_proxy_refuses_all_four_operations_takes_ping_out_and_holds_no_session() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let mut xks = proxy.xks(&fx);
    let sealed = xks.encrypt_ok(KEY_AES, b"before", None);
    assert_eq!(ping(&proxy), 200);
    cli_ok(&proxy.config, &["kill-switch", "engage", "--reason", "test"]);

    assert_invalid_state(&xks.health());
    assert_invalid_state(&xks.metadata(KEY_AES));
    assert_invalid_state(&xks.encrypt(KEY_AES, &encrypt_body(b"x", None, false)));
    assert_invalid_state(&xks.decrypt(KEY_AES, &sealed.decrypt_body(None)));
    assert_eq!(ping(&proxy), 503, "a load balancer must take the instance out");

    let disconnected = wait_until(WAIT, || {
        let s = kill_switch_status(&proxy.config);
        let t = &s["tokens"][0];
        t["connected"] == false && t["open_sessions"] == 0
    });
    assert!(
        disconnected,
        "token still connected or sessions open: {}",
        kill_switch_status(&proxy.config)
    );
    assert!(
        proxy.wait_for_log("module finalized"),
        "no finalize in logs:\n{}",
        proxy.logs()
    );

    cli_ok(&proxy.config, &["kill-switch", "release", "--reason", "done"]);
    let mut xks = proxy.xks(&fx);
    assert_eq!(xks.decrypt(KEY_AES, &sealed.decrypt_body(None)).status, 200);
    assert_eq!(ping(&proxy), 200);
}

#[test]
fn restart_while_engaged_stays_engaged_without_logging_in_until_released() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    cli_ok(
        &proxy.config,
        &["kill-switch", "engage", "--reason", "before restart"],
    );
    let cfg = fx.config();
    drop(proxy);

    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let mut xks = proxy.xks(&fx);
    assert_invalid_state(&xks.encrypt(KEY_AES, &encrypt_body(b"x", None, false)));
    assert_eq!(ping(&proxy), 503);
    assert!(
        !proxy.logs().contains("logged in to token"),
        "logged in while engaged:\n{}",
        proxy.logs()
    );
    assert_eq!(kill_switch_status(&proxy.config)["tokens"][0]["connected"], false);

    cli_ok(&proxy.config, &["kill-switch", "release"]);
    let mut xks = proxy.xks(&fx);
    assert_eq!(xks.encrypt(KEY_AES, &encrypt_body(b"x", None, false)).status, 200);
}

#[test]
fn sigusr1_engages_the_whole_proxy_and_is_recorded() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let pid = proxy.pid();
    let (code, _, _) = run_bounded(
        {
            let mut c = Command::new("kill");
            c.args(["-USR1", &pid.to_string()]);
            c
        },
        WAIT,
    );
    assert_eq!(code, Some(0));
    assert!(wait_until(WAIT, || ping(&proxy) == 503));
    let s = kill_switch_status(&proxy.config);
    assert_eq!(s["proxy"]["engaged"], true);
    assert_eq!(s["proxy"]["by"]["via"], "signal SIGUSR1");
    assert_invalid_state(&proxy.xks(&fx).health());
}

fn two_keystore_config(fx: &Fixture) -> toml::Table {
    let mut cfg = fx.config();
    let mut second = entry(&mut cfg, "keystores", 0).clone();
    second.insert("uri_prefix".into(), "/other".into());
    cfg["keystores"]
        .as_array_mut()
        .unwrap()
        .push(toml::Value::Table(second));
    cfg
}

#[test]
fn keystore_scope_disables_only_its_prefix_and_persists() {
    let fx = Fixture::new();
    let cfg = two_keystore_config(&fx);
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let mut first = proxy.xks(&fx);
    let mut other = proxy.xks(&fx);
    other.base = "/other/kms/xks/v1".into();
    assert_eq!(first.health().status, 200);

    let (code, _, err) = cli(&proxy.config, &["kill-switch", "engage", "--keystore", "/nope"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no keystore has the URI prefix"), "{err}");

    cli_ok(
        &proxy.config,
        &[
            "kill-switch",
            "engage",
            "--keystore",
            PREFIX,
            "--reason",
            "tenant offboarded",
        ],
    );
    assert_invalid_state(&first.health());
    assert_invalid_state(&first.metadata(KEY_AES));
    assert_invalid_state(&first.encrypt(KEY_AES, &encrypt_body(b"x", None, false)));
    assert_eq!(other.health().status, 200);
    assert_eq!(
        other.encrypt(KEY_AES, &encrypt_body(b"x", None, false)).status,
        200
    );
    assert_eq!(
        ping(&proxy),
        200,
        "a keystore switch must not take the instance out"
    );

    drop(proxy);
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    assert_invalid_state(&proxy.xks(&fx).health());
    cli_ok(&proxy.config, &["kill-switch", "release", "--keystore", PREFIX]);
    assert_eq!(proxy.xks(&fx).health().status, 200);
}

#[test]
fn disabled_key_reports_disabled_refuses_crypto_and_survives_restart() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let mut xks = proxy.xks(&fx);
    let sealed = xks.encrypt_ok(KEY_AES, b"data key", None);
    cli_ok(
        &proxy.config,
        &["keys", "disable", KEY_AES, "--reason", "suspected misuse"],
    );

    let md = xks.metadata(KEY_AES);
    assert_eq!(md.status, 200);
    assert_eq!(md.json()["keyStatus"], "DISABLED");
    assert_invalid_state(&xks.encrypt(KEY_AES, &encrypt_body(b"x", None, false)));
    assert_invalid_state(&xks.decrypt(KEY_AES, &sealed.decrypt_body(None)));
    assert_eq!(xks.metadata(KEY_ENCRYPT_ONLY).json()["keyStatus"], "ENABLED");
    assert_eq!(xks.health().status, 200);

    let cfg = fx.config();
    drop(proxy);
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let mut xks = proxy.xks(&fx);
    assert!(wait_until(WAIT, || xks.metadata(KEY_AES).json()["keyStatus"] == "DISABLED"));
    assert_invalid_state(&xks.encrypt(KEY_AES, &encrypt_body(b"x", None, false)));

    cli_ok(&proxy.config, &["kill-switch", "release", "--key", KEY_AES]);
    assert_eq!(xks.metadata(KEY_AES).json()["keyStatus"], "ENABLED");
    assert_eq!(xks.decrypt(KEY_AES, &sealed.decrypt_body(None)).status, 200);
}

#[test]
fn every_engage_and_release_is_recorded_with_uid_time_scope_and_reason() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    cli_ok(
        &proxy.config,
        &["kill-switch", "engage", "--keystore", PREFIX, "--reason", "r1"],
    );
    cli_ok(
        &proxy.config,
        &["kill-switch", "release", "--keystore", PREFIX, "--reason", "r2"],
    );
    cli_ok(
        &proxy.config,
        &["kill-switch", "engage", "--key", KEY_NO_USAGE, "--reason", "r3"],
    );
    let h = kill_switch_status(&proxy.config)["history"]
        .as_array()
        .cloned()
        .unwrap();
    let got: Vec<(String, String, String)> = h
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["scope"].as_str().unwrap().into(),
                e["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("engage".into(), format!("keystore:{PREFIX}"), "r1".into()),
            ("release".into(), format!("keystore:{PREFIX}"), "r2".into()),
            ("engage".into(), format!("key:{KEY_NO_USAGE}"), "r3".into()),
        ]
    );
    for e in &h {
        assert_eq!(
            e["by_uid"], 0,
            "tests run as root: the peer uid must be recorded: {e}"
        );
        assert_eq!(e["via"], "admin-socket");
        assert!(e["at"].as_str().unwrap().ends_with('Z'));
    }
    let human = cli_ok(&proxy.config, &["kill-switch", "status"]);
    assert!(
        human.contains("r3") && human.contains("proxy: released"),
        "{human}"
    );
    let logs = proxy.logs();
    assert!(
        logs.contains("kill switch ENGAGE") && logs.contains("r1"),
        "{logs}"
    );
}

#[test]
fn admin_socket_is_private_and_checks_peer_credentials() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let sock = fx.path("admin.sock");
    let meta = std::fs::metadata(&sock).expect("admin socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Open the socket's file mode, and let the unprivileged user read the config, so only the
    // peer-credential check (SO_PEERCRED) stands between it and the API.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&fx.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&proxy.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    open_path_to(&fx.dir);
    let mut c = as_nobody(BIN, None);
    c.args(["kill-switch", "engage", "--config"]).arg(&proxy.config);
    let (code, out, err) = run_bounded(c, WAIT);
    assert_ne!(code, Some(0), "an unprivileged user engaged the switch: {out}");
    assert!(
        err.contains("permission denied: not the daemon's user, root or the admin group"),
        "refused, but not by the peer-credential check: {err}"
    );
    assert_eq!(ping(&proxy), 200, "the refused request must change nothing");
}

#[test]
fn created_keys_are_generated_in_the_token_sensitive_and_never_extractable() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    cli_ok(&proxy.config, &["keys", "create", "--id", "fresh-key"]);
    let show: Value = serde_json::from_str(&cli_ok(&proxy.config, &["keys", "show", "fresh-key"])).unwrap();
    assert_eq!(show["sensitive"], true);
    assert_eq!(show["extractable"], false);
    assert_eq!(show["key_spec"], "AES_256");
    assert_eq!(show["usages"], serde_json::json!(["ENCRYPT", "DECRYPT"]));
    assert_eq!(show["state"], "ENABLED");
    assert!(
        show["created"].as_str().is_some_and(|c| c.ends_with('Z')),
        "{show}"
    );

    let (code, _, err) = cli(&proxy.config, &["keys", "create", "--id", "fresh-key"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("already exists"), "{err}");

    let list: Value = serde_json::from_str(&cli_ok(&proxy.config, &["keys", "list", "--json"])).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![
            "fresh-key",
            KEY_AES,
            KEY_DECRYPT_ONLY,
            KEY_ENCRYPT_ONLY,
            KEY_NO_USAGE
        ]
    );
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["extractable"] == false && k["sensitive"] == true));
}

#[test]
fn unknown_ids_and_bad_usages_are_clear_errors_that_change_nothing() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    // Encryption counts move on their own (the first block of each key is reserved in the
    // background after the start): everything else must stay as it was.
    let listed = || {
        cli_ok(&proxy.config, &["keys", "list", "--json"])
            .lines()
            .filter(|l| !l.contains("\"encryptions\""))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = listed();
    for args in [
        vec!["keys", "show", "no-such-key"],
        vec!["keys", "disable", "no-such-key"],
        vec!["keys", "enable", "no-such-key"],
        vec!["keys", "destroy", "no-such-key", "--confirm", "no-such-key"],
        vec!["kill-switch", "engage", "--key", "no-such-key"],
    ] {
        let (code, _, err) = cli(&proxy.config, &args);
        assert_ne!(code, Some(0), "{args:?}");
        assert!(err.contains("no key with id \"no-such-key\""), "{args:?}: {err}");
    }
    let (code, _, err) = cli(&proxy.config, &["keys", "create", "--id", "k", "--usage", "sign"]);
    assert_eq!(code, Some(64));
    assert!(err.contains("--usage"), "{err}");
    assert_eq!(listed(), before);
    let mut xks = proxy.xks(&fx);
    assert_eq!(
        xks.encrypt(KEY_AES, &encrypt_body(b"x", None, false)).status,
        200,
        "a failed disable must not disable"
    );
}

#[test]
fn destroy_requires_a_disabled_key_and_the_repeated_id() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let (code, _, err) = cli(
        &proxy.config,
        &["keys", "destroy", KEY_NO_USAGE, "--confirm", "other"],
    );
    assert_eq!(code, Some(64), "{err}");
    let (code, _, err) = cli(
        &proxy.config,
        &["keys", "destroy", KEY_NO_USAGE, "--confirm", KEY_NO_USAGE],
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("disable it first"), "{err}");
    cli_ok(&proxy.config, &["keys", "disable", KEY_NO_USAGE]);
    cli_ok(
        &proxy.config,
        &["keys", "destroy", KEY_NO_USAGE, "--confirm", KEY_NO_USAGE],
    );
    let mut xks = proxy.xks(&fx);
    let r = xks.metadata(KEY_NO_USAGE);
    assert_eq!(
        (r.status, r.json()["errorName"].clone()),
        (404, "KeyNotFoundException".into())
    );
    assert!(!cli_ok(&proxy.config, &["keys", "list"]).contains(KEY_NO_USAGE));
}

/// Builds an import: a KEK on the token (material written to a file), 32 bytes of key material
/// wrapped offline with `keys wrap`.
fn prepare_import(fx: &Fixture, config: &std::path::Path) -> ([u8; 32], std::path::PathBuf) {
    let kek_file = fx.path("kek.bin");
    cli_ok(
        config,
        &[
            "keys",
            "create-kek",
            "--id",
            "import-kek",
            "--out",
            kek_file.to_str().unwrap(),
        ],
    );
    let material: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let material_file = fx.path("material.bin");
    std::fs::write(&material_file, material).unwrap();
    let wrapped = fx.path("wrapped.bin");
    let mut c = Command::new(BIN);
    c.args(["keys", "wrap", "--kek-file"])
        .arg(&kek_file)
        .arg("--material-file")
        .arg(&material_file)
        .arg("--out")
        .arg(&wrapped);
    let (code, out, err) = run_bounded(c, WAIT);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        std::fs::read(&wrapped).unwrap().len(),
        40,
        "RFC 5649 output of 32 bytes is 40 bytes"
    );
    (material, wrapped)
}

#[test]
fn import_of_an_rfc5649_wrapped_key_round_trips_and_holds_exactly_that_material() {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let fx = Fixture::new();
    let mut cfg = fx.config();
    entry(&mut cfg, "keystores", 0).insert("key_pattern".into(), "imported-*".into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let (material, wrapped) = prepare_import(&fx, &proxy.config);
    cli_ok(
        &proxy.config,
        &[
            "keys",
            "import",
            "--id",
            "imported-1",
            "--kek",
            "import-kek",
            "--wrapped",
            wrapped.to_str().unwrap(),
        ],
    );
    let show: Value = serde_json::from_str(&cli_ok(&proxy.config, &["keys", "show", "imported-1"])).unwrap();
    assert_eq!(
        (show["extractable"].clone(), show["sensitive"].clone()),
        (false.into(), true.into())
    );

    assert_eq!(show["key_spec"], "AES_256");
    let mut xks = proxy.xks(&fx);
    let md = xks.metadata("imported-1").json();
    assert_eq!(md["keySpec"], "AES_256", "{md}");
    assert_eq!(md["keyUsage"], serde_json::json!(["ENCRYPT", "DECRYPT"]));
    let sealed = xks.encrypt_ok("imported-1", b"wrapped under custody", Some(b"ctx"));
    assert_eq!(
        xks.decrypt("imported-1", &sealed.decrypt_body(Some(b"ctx")))
            .status,
        200
    );

    // Independent check: the token's key is exactly the custodian's material.
    let md = sealed.metadata.clone().expect("metadata");
    let mut framed = vec![0, 3];
    framed.extend_from_slice(b"ctx");
    framed.push(md.len() as u8);
    framed.extend_from_slice(&md);
    let mut msg = sealed.ciphertext.clone();
    msg.extend_from_slice(&sealed.tag);
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&material).unwrap();
    let plain = cipher
        .decrypt(
            aes_gcm::Nonce::from_slice(&sealed.iv),
            Payload {
                msg: &msg,
                aad: &framed,
            },
        )
        .expect("local AES-GCM with the custodian's material must open the proxy's ciphertext");
    assert_eq!(plain, b"wrapped under custody");
}

#[test]
fn import_with_a_wrong_kek_or_corrupt_blob_fails_and_leaves_nothing() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let (_, wrapped) = prepare_import(&fx, &proxy.config);
    let before = cli_ok(&proxy.config, &["keys", "list", "--json"]);
    let mut corrupt = std::fs::read(&wrapped).unwrap();
    corrupt[7] ^= 0x01;
    let corrupt_file = fx.path("corrupt.bin");
    std::fs::write(&corrupt_file, corrupt).unwrap();
    for (kek, file) in [
        (KEY_AES, &wrapped),
        ("import-kek", &corrupt_file),
        ("no-such-kek", &wrapped),
    ] {
        let (code, _, err) = cli(
            &proxy.config,
            &[
                "keys",
                "import",
                "--id",
                "imported-x",
                "--kek",
                kek,
                "--wrapped",
                file.to_str().unwrap(),
            ],
        );
        assert_ne!(code, Some(0), "import with kek {kek} succeeded");
        assert!(
            err.contains("unwrap failed") || err.contains("no key with id"),
            "{err}"
        );
    }
    assert_eq!(
        cli_ok(&proxy.config, &["keys", "list", "--json"]),
        before,
        "a failed import left something behind"
    );
}

#[test]
fn keys_commands_act_directly_on_the_token_when_no_daemon_runs() {
    let fx = Fixture::new();
    let config = fx.path("config.toml");
    let (code, out, err) = cli(
        &config,
        &["keys", "create", "--id", "offline-key", "--usage", "decrypt"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("no daemon answers"),
        "the direct mode must say so: {err}"
    );
    cli_ok(
        &config,
        &["keys", "disable", "offline-key", "--reason", "offline"],
    );
    cli_ok(
        &config,
        &[
            "kill-switch",
            "engage",
            "--keystore",
            PREFIX,
            "--reason",
            "offline drill",
        ],
    );
    let listed: Value = serde_json::from_str(&cli_ok(&config, &["keys", "list", "--json"])).unwrap();
    let k = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == "offline-key")
        .expect("created offline")
        .clone();
    assert_eq!(
        (k["state"].clone(), k["usages"].clone()),
        ("DISABLED".into(), serde_json::json!(["DECRYPT"]))
    );

    // A daemon started afterwards honours both.
    let mut cfg = fx.config();
    entry(&mut cfg, "keystores", 0).insert("key_pattern".into(), "offline-*".into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    assert_invalid_state(&proxy.xks(&fx).health());
    cli_ok(&proxy.config, &["kill-switch", "release", "--keystore", PREFIX]);
    let mut xks = proxy.xks(&fx);
    assert!(wait_until(WAIT, || xks.metadata("offline-key").json()
        ["keyStatus"]
        == "DISABLED"));
}

#[test]
fn a_wrong_pin_is_a_clear_error_for_direct_key_commands() {
    let fx = Fixture::new();
    fx.write_secret("token.pin", "0000000000000000");
    let (code, _, err) = cli(&fx.path("config.toml"), &["keys", "list"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("PIN"), "{err}");
}

#[test]
fn a_keystore_added_by_reload_can_be_cut_off_at_keystore_scope() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let cfg = two_keystore_config(&fx);
    std::fs::write(&proxy.config, toml::to_string(&cfg).unwrap()).unwrap();
    let out = cli_ok(&proxy.config, &["reload"]);
    assert!(out.contains("2 keystore(s)"), "{out}");
    cli_ok(
        &proxy.config,
        &[
            "kill-switch",
            "engage",
            "--keystore",
            "/other",
            "--reason",
            "new tenant",
        ],
    );
    let mut other = proxy.xks(&fx);
    other.base = "/other/kms/xks/v1".into();
    assert_invalid_state(&other.health());
    assert_eq!(proxy.xks(&fx).health().status, 200);
    let s = kill_switch_status(&proxy.config);
    assert!(
        s["keystores"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["prefix"] == "/other" && k["engaged"] == true),
        "{s}"
    );
}

/// A throw-away user and group in the system's group database (removed on drop): admin-group
/// membership is read from the group database, as the operator's `usermod -aG` records it.
struct SystemAccount {
    user: String,
    group: String,
}

impl SystemAccount {
    fn create() -> SystemAccount {
        require_root("it creates a user and a group (useradd/groupadd)");
        let tag = format!(
            "{:x}",
            std::process::id()
                ^ (std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_nanos())
        );
        let acct = SystemAccount {
            user: format!("xksop{tag}"),
            group: format!("xksadm{tag}"),
        };
        let run = |prog: &str, args: &[&str]| {
            let out = Command::new(prog)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("{prog} is required (package passwd): {e}"));
            assert!(
                out.status.success(),
                "{prog} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run("groupadd", &[&acct.group]);
        run(
            "useradd",
            &[
                "-M",
                "-N",
                "-g",
                "nogroup",
                "-G",
                &acct.group,
                "-s",
                "/usr/sbin/nologin",
                &acct.user,
            ],
        );
        acct
    }

    fn gid(&self) -> String {
        let out = Command::new("getent")
            .args(["group", &self.group])
            .output()
            .expect("getent");
        String::from_utf8_lossy(&out.stdout)
            .split(':')
            .nth(2)
            .expect("gid")
            .to_owned()
    }
}

impl Drop for SystemAccount {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.user).output();
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

#[test]
fn supplementary_members_of_the_admin_group_may_use_the_socket() {
    require_tool("setpriv", "util-linux");
    let acct = SystemAccount::create();
    let fx = Fixture::new();
    let mut cfg = fx.config();
    section(&mut cfg, "admin").insert("group".into(), acct.group.clone().into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    // The CLI must reach the socket and read the config as the unprivileged user.
    use std::os::unix::fs::PermissionsExt;
    for p in [fx.dir.clone(), proxy.config.clone()] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    open_path_to(&fx.dir);
    let run_as = |user: &str| {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={user}"),
            "--regid=nogroup",
            // Supplementary groups as a login would set them (initgroups from the group
            // database); the daemon checks membership in the same database, not in /proc,
            // which the shipped unit hides.
            "--init-groups",
            BIN,
            "kill-switch",
            "engage",
            "--keystore",
            PREFIX,
            "--config",
        ])
        .arg(&proxy.config);
        run_bounded(c, WAIT)
    };
    let (code, out, err) = run_as(&acct.user);
    assert_eq!(
        code,
        Some(0),
        "a supplementary member (group {}) was refused: {out}{err}",
        acct.gid()
    );
    let (code, out, err) = run_as("nobody");
    assert_ne!(code, Some(0), "a non-member got through: {out}");
    // Refused by the socket's group file mode or by the peer-credential check.
    assert!(
        err.contains("permission denied") || err.contains("Permission denied"),
        "{err}"
    );
}

#[test]
fn a_key_disabled_while_the_daemon_was_down_is_refused_from_the_first_request() {
    let fx = Fixture::new();
    cli_ok(
        &fx.path("config.toml"),
        &["keys", "disable", KEY_AES, "--reason", "while down"],
    );
    let proxy = TestProxy::start(&fx);
    let mut xks = proxy.xks(&fx);
    assert_invalid_state(&xks.encrypt(KEY_AES, &encrypt_body(b"x", None, false)));
    assert_eq!(xks.metadata(KEY_AES).json()["keyStatus"], "DISABLED");
}
