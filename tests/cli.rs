//! The command line, end to end: `quickstart` (serving, files it publishes, a real
//! `curl --aws-sigv4` against it, reuse of its directory), the token objects it creates,
//! `check-config` exit statuses and messages, and `serve` start-up failures.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Polls (bounded) until `dir/quickstart.json` exists and parses.
fn wait_for_quickstart_json(dir: &Path) -> Value {
    let path = dir.join("quickstart.json");
    let mut value = None;
    let found = wait_until(WAIT, || {
        value = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        value.is_some()
    });
    assert!(found, "{} did not appear within {WAIT:?}", path.display());
    value.unwrap()
}

fn start_quickstart(dir: &Path) -> Spawned {
    let mut cmd = Command::new(BIN);
    cmd.args(["quickstart", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .env_remove("RUST_LOG")
        .env_remove("SOFTHSM2_CONF");
    Spawned::start(cmd).unwrap_or_else(|e| panic!("quickstart did not start: {e}"))
}

fn is_base32_id(s: &str) -> bool {
    (20..=30).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

fn is_console_secret(s: &str) -> bool {
    (43..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
}

/// Runs a real `curl --aws-sigv4` POST; returns (status, body).
fn curl_post(qs: &Value, suffix: &str, body: &Value, scratch: &Path) -> (u16, Value) {
    curl_post_with(qs, suffix, body, scratch, &[])
}

/// [`curl_post`] with extra curl arguments.
fn curl_post_with(qs: &Value, suffix: &str, body: &Value, scratch: &Path, extra: &[&str]) -> (u16, Value) {
    let body_file = scratch.join("curl-body.json");
    std::fs::write(&body_file, body.to_string()).unwrap();
    let url = format!(
        "{}{}{suffix}",
        qs["endpoint"].as_str().unwrap(),
        qs["uriPath"].as_str().unwrap()
    );
    let user = format!(
        "{}:{}",
        qs["accessKeyId"].as_str().unwrap(),
        qs["secretAccessKey"].as_str().unwrap()
    );
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "--aws-sigv4",
        "aws:amz:us-east-1:kms-xks-proxy",
    ])
    .args(["--user", &user, "--cacert", qs["caCertificate"].as_str().unwrap()])
    .args(["-H", "Content-Type: application/json"])
    .arg("--data-binary")
    .arg(format!("@{}", body_file.display()))
    .args(extra)
    .args(["-w", "\n%{http_code}", &url]);
    let (code, out, err) = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(code, Some(0), "curl failed: {out}\n{err}");
    let (json_text, status) = out.rsplit_once('\n').expect("status line");
    let v = serde_json::from_str(json_text).unwrap_or_else(|e| panic!("curl got non-JSON ({e}): {out}"));
    (status.trim().parse().expect("HTTP status"), v)
}

/// `quickstart` serves, publishes quickstart.json and the KMS console file, answers a real
/// curl SigV4 request (checklist 30), and a second run reuses the directory.
#[test]
fn quickstart_serves_publishes_its_files_answers_curl_and_reuses_its_directory() {
    require_tool("curl", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qs");
    let mut first = start_quickstart(&dir);
    let addr = first
        .first_line()
        .strip_prefix("xks-bridge listening on https://")
        .unwrap_or_else(|| panic!("first line: {:?}", first.first_line()))
        .to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    // The banner is printed after quickstart.json and the console file are written.
    assert!(
        wait_until(WAIT, || first
            .stdout_lines()
            .iter()
            .any(|l| l.contains("curl --aws-sigv4"))),
        "banner with a sample curl command not printed: {:?}",
        first.stdout_lines()
    );
    let qs = wait_for_quickstart_json(&dir);

    assert_eq!(qs["endpoint"], json!(format!("https://{addr}")), "{qs}");
    assert_eq!(qs["uriPath"], "/quickstart/kms/xks/v1", "{qs}");
    let akid = qs["accessKeyId"].as_str().expect("accessKeyId").to_owned();
    assert!(is_base32_id(&akid), "accessKeyId {akid:?}");
    let secret = qs["secretAccessKey"]
        .as_str()
        .expect("secretAccessKey")
        .to_owned();
    assert!(is_console_secret(&secret), "secretAccessKey has the wrong shape");
    assert_eq!(qs["region"], "us-east-1");
    for file in ["caCertificate", "config"] {
        let p = qs[file]
            .as_str()
            .unwrap_or_else(|| panic!("{file} missing: {qs}"));
        assert!(Path::new(p).is_file(), "{file}: {p} is not a file");
    }
    // The token is SoftHSM2: its profile, not `generic`, so `doctor` finds nothing to change.
    let config = std::fs::read_to_string(qs["config"].as_str().unwrap()).expect("config");
    assert!(config.contains("profile = \"softhsm\""), "{config}");
    assert_eq!(
        qs["keys"],
        json!({
            "encryptDecrypt": KEY_AES,
            "encryptOnly": KEY_ENCRYPT_ONLY,
            "decryptOnly": KEY_DECRYPT_ONLY,
            "noUsage": KEY_NO_USAGE,
        })
    );

    // Digest section 16: the KMS console configuration file.
    let console: Value =
        serde_json::from_slice(&std::fs::read(dir.join("kms-xks-proxy-config.json")).unwrap()).unwrap();
    assert_eq!(
        console,
        json!({
            "XksProxyUriPath": "/quickstart/kms/xks/v1",
            "XksProxyAuthenticationCredential": {"AccessKeyId": akid, "RawSecretAccessKey": secret},
        })
    );

    let (status, v) = curl_post(
        &qs,
        "/health",
        &health_body("curl-1", "KmsHealthCheck"),
        tmp.path(),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ekmFleetDetails"][0]["healthStatus"], "ACTIVE", "{v}");
    // Checklist 39: a client offering h2 falls back to HTTP/1.1 and works.
    let body = health_body("curl-h2", "KmsHealthCheck");
    let (status, v) = curl_post_with(&qs, "/health", &body, tmp.path(), &["--http2"]);
    assert_eq!(status, 200, "{v}");
    // A maximal Encrypt and its Decrypt through curl's signer too.
    let plaintext = vec![0x33u8; 4300];
    let aad = vec![0x44u8; 8192];
    let (status, enc) = curl_post(
        &qs,
        &format!("/keys/{KEY_AES}/encrypt"),
        &encrypt_body(&plaintext, Some(&aad), true),
        tmp.path(),
    );
    assert_eq!(status, 200, "{enc}");
    let mut dec = json!({
        "requestMetadata": key_op_metadata("curl-dec", "Decrypt"),
        "encryptionAlgorithm": "AES_GCM",
        "additionalAuthenticatedData": b64(&aad),
    });
    for f in [
        "ciphertext",
        "initializationVector",
        "authenticationTag",
        "ciphertextMetadata",
    ] {
        dec[f] = enc[f].clone();
    }
    let (status, v) = curl_post(&qs, &format!("/keys/{KEY_AES}/decrypt"), &dec, tmp.path());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["plaintext"], json!(b64(&plaintext)));
    first.stop();

    // Second run: same directory, same credential, fresh port.
    std::fs::remove_file(dir.join("quickstart.json")).unwrap();
    let second = start_quickstart(&dir);
    let qs2 = wait_for_quickstart_json(&dir);
    assert_eq!(
        qs2["accessKeyId"],
        json!(akid),
        "second run made a new credential"
    );
    assert_eq!(qs2["secretAccessKey"], json!(secret));
    let addr2 = second
        .first_line()
        .strip_prefix("xks-bridge listening on https://")
        .unwrap()
        .to_owned();
    assert_eq!(qs2["endpoint"], json!(format!("https://{addr2}")));
    let (status, v) = curl_post(
        &qs2,
        "/health",
        &health_body("curl-2", "KmsHealthCheck"),
        tmp.path(),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ekmFleetDetails"][0]["healthStatus"], "ACTIVE", "{v}");
}

/// Digest section 12: the external keys are AES-256, sensitive, never extractable, persistent
/// and private on the token, with exactly the usages their names say.
#[test]
fn fixture_keys_are_sensitive_non_extractable_private_token_objects() {
    token_test(|| {
        use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};

        let fx = Fixture::new();
        with_token_session(&fx, |session| {
            let keys = session
                .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
                .unwrap();
            assert_eq!(keys.len(), 4, "the fixture has four secret keys");
            let mut seen = Vec::new();
            for key in keys {
                use AttributeType as A;
                let wanted = [
                    A::Label,
                    A::KeyType,
                    A::ValueLen,
                    A::Token,
                    A::Private,
                    A::Sensitive,
                    A::Extractable,
                    A::AlwaysSensitive,
                    A::NeverExtractable,
                    A::Encrypt,
                    A::Decrypt,
                    A::Value,
                ];
                let attrs = session.get_attributes(key, &wanted).unwrap();
                let mut label = String::new();
                let (mut token, mut private, mut sensitive, mut extractable) = (None, None, None, None);
                let (mut always_sensitive, mut never_extractable) = (None, None);
                let (mut encrypt, mut decrypt, mut key_type, mut len) = (None, None, None, None);
                for a in attrs {
                    match a {
                        Attribute::Label(l) => label = String::from_utf8(l).unwrap(),
                        Attribute::KeyType(t) => key_type = Some(t),
                        Attribute::ValueLen(l) => len = Some(u64::from(l)),
                        Attribute::Token(b) => token = Some(b),
                        Attribute::Private(b) => private = Some(b),
                        Attribute::Sensitive(b) => sensitive = Some(b),
                        Attribute::Extractable(b) => extractable = Some(b),
                        Attribute::AlwaysSensitive(b) => always_sensitive = Some(b),
                        Attribute::NeverExtractable(b) => never_extractable = Some(b),
                        Attribute::Encrypt(b) => encrypt = Some(b),
                        Attribute::Decrypt(b) => decrypt = Some(b),
                        Attribute::Value(_) => panic!("the value of key {label:?} is readable"),
                        _ => {}
                    }
                }
                assert_eq!(key_type, Some(KeyType::AES), "{label}");
                assert_eq!(len, Some(32), "{label}");
                assert_eq!(token, Some(true), "{label}: CKA_TOKEN");
                assert_eq!(private, Some(true), "{label}: CKA_PRIVATE");
                assert_eq!(sensitive, Some(true), "{label}: CKA_SENSITIVE");
                assert_eq!(extractable, Some(false), "{label}: CKA_EXTRACTABLE");
                assert_eq!(always_sensitive, Some(true), "{label}: CKA_ALWAYS_SENSITIVE");
                assert_eq!(never_extractable, Some(true), "{label}: CKA_NEVER_EXTRACTABLE");
                let expected = match label.as_str() {
                    KEY_AES => (true, true),
                    KEY_ENCRYPT_ONLY => (true, false),
                    KEY_DECRYPT_ONLY => (false, true),
                    KEY_NO_USAGE => (false, false),
                    other => panic!("unexpected key {other:?}"),
                };
                assert_eq!(
                    (encrypt, decrypt),
                    (Some(expected.0), Some(expected.1)),
                    "{label}"
                );
                seen.push(label);
            }
            seen.sort();
            assert_eq!(seen, [KEY_AES, KEY_DECRYPT_ONLY, KEY_ENCRYPT_ONLY, KEY_NO_USAGE]);
        });
    });
}

fn check_config(path: &Path) -> (Option<i32>, String, String) {
    cli(path, &["check-config"])
}

#[test]
fn check_config_accepts_the_fixture_config() {
    let fx = Fixture::new();
    let (code, out, err) = check_config(&fx.path("config.toml"));
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("valid"), "{out}");
}

type Edit = Box<dyn Fn(&mut toml::Table, &Fixture)>;

/// Each broken config exits 64 (EX_USAGE) and the message names the offending field.
#[test]
fn check_config_rejects_broken_configs_with_exit_64_naming_the_field() {
    let fx = Fixture::new();
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "unknown field",
            Box::new(|c, _| {
                section(c, "server").insert("bogus".into(), 1.into());
            }),
            "bogus",
        ),
        (
            "unproven share larger than the whole budget",
            Box::new(|c, _| {
                let s = section(c, "server");
                s.insert("max_connections".into(), 10.into());
                s.insert("max_unproven_connections".into(), 11.into());
            }),
            "server.max_unproven_connections",
        ),
        (
            "zero write timeout",
            Box::new(|c, _| {
                section(c, "server").insert("write_timeout_ms".into(), 0.into());
            }),
            "server.write_timeout_ms",
        ),
        (
            "zero first-request timeout",
            Box::new(|c, _| {
                section(c, "server").insert("first_request_timeout_ms".into(), 0.into());
            }),
            "server.first_request_timeout_ms",
        ),
        (
            "uri_prefix without leading slash",
            Box::new(|c, _| {
                entry(c, "keystores", 0).insert("uri_prefix".into(), "quickstart".into());
            }),
            "keystores[0].uri_prefix",
        ),
        (
            "uri_prefix with a period",
            Box::new(|c, _| {
                entry(c, "keystores", 0).insert("uri_prefix".into(), "/quick.start".into());
            }),
            "keystores[0].uri_prefix",
        ),
        (
            "access_key_id too short",
            Box::new(|c, _| {
                let ks = entry(c, "keystores", 0);
                let cred = ks["credentials"].as_array_mut().unwrap()[0]
                    .as_table_mut()
                    .unwrap();
                cred.insert("access_key_id".into(), "ABCDEFGHIJKLMNOPQRS".into());
            }),
            "keystores[0].credentials[0].access_key_id",
        ),
        (
            "access_key_id outside the base32 alphabet",
            Box::new(|c, _| {
                let ks = entry(c, "keystores", 0);
                let cred = ks["credentials"].as_array_mut().unwrap()[0]
                    .as_table_mut()
                    .unwrap();
                cred.insert("access_key_id".into(), "ABCDEFGHIJKLMNOPQRST1890".into());
            }),
            "keystores[0].credentials[0].access_key_id",
        ),
        (
            "no [tls] and no allow_plain_http",
            Box::new(|c, _| {
                c.remove("tls");
            }),
            "tls",
        ),
        (
            "max_plaintext_bytes below the spec floor",
            Box::new(|c, _| {
                section(c, "limits").insert("max_plaintext_bytes".into(), 100.into());
            }),
            "limits.max_plaintext_bytes",
        ),
        (
            "max_aad_bytes above the framing limit",
            Box::new(|c, _| {
                section(c, "limits").insert("max_aad_bytes".into(), 70000.into());
            }),
            "limits.max_aad_bytes",
        ),
        (
            "unknown token reference",
            Box::new(|c, _| {
                entry(c, "keystores", 0).insert("token".into(), "no-such-token".into());
            }),
            "keystores[0].token",
        ),
        (
            "secret file missing",
            Box::new(|c, _| {
                let ks = entry(c, "keystores", 0);
                let cred = ks["credentials"].as_array_mut().unwrap()[0]
                    .as_table_mut()
                    .unwrap();
                let mut secret = toml::Table::new();
                secret.insert("file".into(), "secrets/does-not-exist".into());
                cred.insert("secret".into(), secret.into());
            }),
            "keystores[0].credentials[0].secret",
        ),
        (
            "PIN file missing",
            Box::new(|c, _| {
                let mut pin = toml::Table::new();
                pin.insert("file".into(), "secrets/no-such.pin".into());
                entry(c, "tokens", 0).insert("pin".into(), pin.into());
            }),
            "tokens[0].pin",
        ),
        (
            "TLS certificate missing",
            Box::new(|c, _| {
                section(c, "tls").insert("certificate".into(), "tls/missing.pem".into());
            }),
            "tls.certificate",
        ),
        (
            "no allowed_keys and no key_pattern",
            Box::new(|c, _| {
                entry(c, "keystores", 0).remove("allowed_keys");
            }),
            "keystores[0].allowed_keys",
        ),
        (
            "drain delay beyond its bound",
            Box::new(|c, _| {
                section(c, "server").insert("drain_delay_ms".into(), 300_001.into());
            }),
            "server.drain_delay_ms",
        ),
        (
            "no drain grace",
            Box::new(|c, _| {
                section(c, "server").insert("drain_grace_ms".into(), 0.into());
            }),
            "server.drain_grace_ms",
        ),
        (
            "duplicate prefix",
            Box::new(|c, _| {
                let ks = c["keystores"].as_array().unwrap()[0].clone();
                c["keystores"].as_array_mut().unwrap().push(ks);
            }),
            "keystores[1].uri_prefix",
        ),
    ];
    for (what, edit, field) in cases {
        let mut cfg = fx.config();
        edit(&mut cfg, &fx);
        let path = fx.write_config(&cfg);
        let (code, out, err) = check_config(&path);
        assert_eq!(
            code,
            Some(64),
            "{what}: expected exit 64\nstdout: {out}\nstderr: {err}"
        );
        assert!(
            err.contains(field),
            "{what}: stderr does not name {field:?}: {err}"
        );
    }
    // Not TOML at all.
    let path = fx.path("garbage.toml");
    std::fs::write(&path, "this is [not toml").unwrap();
    let (code, _, err) = check_config(&path);
    assert_eq!(code, Some(64), "garbage config: {err}");
    // A config file that does not exist.
    let (code, _, err) = check_config(&fx.path("missing.toml"));
    assert_eq!(code, Some(64), "missing config: {err}");
}

/// `serve` validates the config before binding anything: a bad config exits 64 too.
#[test]
fn serve_with_a_broken_config_exits_64_naming_the_field() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    entry(&mut cfg, "keystores", 0).insert("uri_prefix".into(), "no-slash".into());
    let path = fx.write_config(&cfg);
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").arg("--config").arg(&path).env_remove("RUST_LOG");
    let (code, out, err) = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(code, Some(64), "{out}\n{err}");
    assert!(err.contains("keystores[0].uri_prefix"), "{err}");
    assert!(
        !out.contains("listening"),
        "bound a port with a bad config: {out}"
    );
}

/// Points `keystores[0].credentials[0].secret` at a file holding `value`.
fn with_secret(fx: &Fixture, name: &str, value: &str) -> std::path::PathBuf {
    fx.write_secret(name, value);
    let mut cfg = fx.config();
    let cred = entry(&mut cfg, "keystores", 0)["credentials"]
        .as_array_mut()
        .unwrap()[0]
        .as_table_mut()
        .unwrap();
    let mut secret = toml::Table::new();
    secret.insert("file".into(), format!("secrets/{name}").into());
    cred.insert("secret".into(), secret.into());
    fx.write_config(&cfg)
}

/// SigV4 secrets outside the spec's 43-64 characters of `A-Za-z0-9/+=` can never be entered in
/// KMS: `check-config` and `serve` refuse them with exit 64 naming the credential, and never
/// echo the value. The bounds themselves are accepted.
#[test]
fn sigv4_secrets_outside_the_spec_alphabet_and_length_are_refused_naming_the_field() {
    let fx = Fixture::new();
    let field = "keystores[0].credentials[0].secret";
    let bad = [
        ("42 characters", "A".repeat(42)),
        ("65 characters", "B".repeat(65)),
        ("a dash", format!("{}-{}", "C".repeat(30), "D".repeat(20))),
    ];
    for (what, value) in &bad {
        let path = with_secret(&fx, "bad-secret", value);
        let (code, out, err) = check_config(&path);
        assert_eq!(code, Some(64), "{what}: check-config\n{out}\n{err}");
        assert!(err.contains(field), "{what}: field not named: {err}");
        assert!(!err.contains(value.as_str()), "{what}: secret echoed: {err}");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").arg("--config").arg(&path).env_remove("RUST_LOG");
        let (code, out, err) = run_bounded(cmd, Duration::from_secs(30));
        assert_eq!(code, Some(64), "{what}: serve\n{out}\n{err}");
        assert!(err.contains(field), "{what}: serve did not name the field: {err}");
        assert!(!out.contains("listening"), "{what}: bound a port: {out}");
    }
    for value in ["a/b+".repeat(10) + "xy=", "Zz09+/=".repeat(9) + "q"] {
        assert!(value.len() == 43 || value.len() == 64, "{}", value.len());
        let path = with_secret(&fx, "good-secret", &value);
        let (code, out, err) = check_config(&path);
        assert_eq!(code, Some(0), "{} characters refused\n{out}\n{err}", value.len());
    }
}

/// A token refusing the PIN stops start-up with exit 69 (EX_UNAVAILABLE), before serving.
#[test]
fn serve_with_a_wrong_pin_exits_69_mentioning_the_pin() {
    let fx = Fixture::new();
    fx.write_secret("token.pin", "0000000000000000\n");
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--config")
        .arg(fx.path("config.toml"))
        .env_remove("RUST_LOG");
    let (code, out, err) = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(code, Some(69), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("PIN"), "message does not mention the PIN: {err}");
    assert!(!out.contains("listening"), "served with a wrong PIN: {out}");
    assert!(!err.contains("0000000000000000"), "the PIN was echoed: {err}");
}

#[test]
fn a_bare_config_file_name_is_resolved_against_the_working_directory() {
    let fx = Fixture::new();
    let mut c = Command::new(BIN);
    c.current_dir(&fx.dir)
        .args(["check-config", "--config", "config.toml"]);
    let (code, out, err) = run_bounded(c, WAIT);
    assert_eq!(code, Some(0), "{out}{err}");
}

#[test]
fn drain_without_a_reachable_daemon_exits_69_and_changes_nothing() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    cfg.remove("admin");
    let (code, _, err) = cli(&fx.write_config(&cfg), &["drain"]);
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("[admin]"), "{err}");
    // A socket configured but nobody listening: no offline fallback (which would create the
    // state directory to take its lock).
    let state = fx.path("state");
    let existed = state.exists();
    let (code, _, err) = cli(&fx.path("config.toml"), &["drain", "--reason", "test"]);
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("no daemon answers"), "{err}");
    assert_eq!(state.exists(), existed, "drain acted offline on {state:?}");
}

#[test]
fn runtime_threads_sets_the_async_runtime_and_a_bad_value_is_refused_naming_it() {
    let fx = Fixture::new();
    for bad in [0i64, 1025] {
        let mut cfg = fx.config();
        section(&mut cfg, "server").insert("runtime_threads".into(), bad.into());
        let (code, _, err) = cli(&fx.write_config(&cfg), &["check-config"]);
        assert_eq!(code, Some(64), "runtime_threads = {bad}: {err}");
        assert!(err.contains("server.runtime_threads: 1 to 1024"), "{err}");
    }
    let mut cfg = fx.config();
    section(&mut cfg, "server").insert("runtime_threads".into(), 3i64.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let metrics = scrape_metrics(&proxy);
    assert!(
        metrics.lines().any(|l| l == "xks_bridge_runtime_threads 3"),
        "the runtime runs the configured 3 threads:\n{metrics}"
    );
    assert_eq!(proxy.xks(&fx).health().status, 200);
    proxy.terminate();
    // Unset: one per core less one, at least one.
    let proxy = TestProxy::start(&fx);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let want = format!("xks_bridge_runtime_threads {}", cores.saturating_sub(1).max(1));
    let metrics = scrape_metrics(&proxy);
    assert!(metrics.lines().any(|l| l == want), "{want} missing:\n{metrics}");
}
