//! Secondary authorization and the audit trail, through the real daemon: policy decisions on
//! the wire and in the log, one chained audit record per authenticated request (denied ones
//! included; unauthenticated ones are counted, not audited: see tests/audit_flood.rs), operator
//! actions in the same chain, and tamper detection by `audit verify`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::Command;

fn audit_lines(fx: &Fixture) -> Vec<Value> {
    let text = std::fs::read_to_string(fx.path("audit/audit.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

fn verify(path: &std::path::Path) -> (Option<i32>, String) {
    let mut c = Command::new(BIN);
    c.args(["audit", "verify"]).arg(path);
    let (code, out, err) = run_bounded(c, WAIT);
    (code, out + &err)
}

fn with_policy(fx: &Fixture, policy: &str) -> toml::Table {
    let mut cfg = fx.config();
    let p: toml::Table = policy.parse().expect("policy TOML");
    cfg.insert("policy".into(), p["policy"].clone());
    cfg
}

const POLICY: &str = r#"
[policy]
default = "allow"

[[policy.rules]]
name = "no-decrypt-only-key-outside-ebs"
effect = "deny"
key_ids = ["quickstart-aes"]
operations = ["Encrypt", "Decrypt"]
unless = { kms_via_services = ["ebs"] }

[[policy.rules]]
name = "deny-everything-for-mallory"
effect = "deny"
principals = ["arn:aws:iam::*:user/Mallory"]
"#;

#[test]
fn policy_denial_is_403_naming_the_rule_while_health_stays_exempt() {
    let fx = Fixture::new();
    let proxy = TestProxy::start_with(&fx, &with_policy(&fx, POLICY), &[]);
    let mut xks = proxy.xks(&fx);
    // key_op_metadata() sends kmsViaService = "ebs": allowed.
    assert_eq!(xks.encrypt(KEY_AES, &encrypt_body(b"x", None, false)).status, 200);
    let mut body = encrypt_body(b"x", None, false);
    body["requestMetadata"]["kmsViaService"] = json!("s3");
    let r = xks.encrypt(KEY_AES, &body);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["errorName"], "AccessDeniedException");
    assert!(r.json()["errorMessage"]
        .as_str()
        .unwrap()
        .contains("no-decrypt-only-key-outside-ebs"));
    // Absent kmsViaService fails closed under `unless`.
    body["requestMetadata"]
        .as_object_mut()
        .unwrap()
        .remove("kmsViaService");
    assert_eq!(xks.encrypt(KEY_AES, &body).status, 403);
    // Other keys are untouched by that rule.
    assert_eq!(xks.encrypt(KEY_ENCRYPT_ONLY, &body).status, 200);

    let mut md = metadata_body("md-m");
    md["requestMetadata"]["awsPrincipalArn"] = json!("arn:aws:iam::123456789012:user/Mallory");
    let r = xks.post(&format!("/keys/{KEY_ENCRYPT_ONLY}/metadata"), &md);
    assert_eq!(
        (r.status, r.json()["errorName"].clone()),
        (403, json!("AccessDeniedException"))
    );
    assert_eq!(xks.health().status, 200, "GetHealthStatus is always exempt");
    assert!(proxy.wait_for_log("request denied by policy"), "{}", proxy.logs());
    // The rule is a field after the message: wait for it too (the line may arrive in pieces).
    assert!(
        proxy.wait_for_log("deny-everything-for-mallory"),
        "{}",
        proxy.logs()
    );
}

#[test]
fn deny_all_policy_still_answers_health_and_unknown_kms_operations_are_matched_not_rejected() {
    let fx = Fixture::new();
    let policy = r#"
[policy]
default = "deny"
[[policy.rules]]
name = "allow-future-op"
effect = "allow"
kms_operations = ["FutureOp"]
"#;
    let proxy = TestProxy::start_with(&fx, &with_policy(&fx, policy), &[]);
    let mut xks = proxy.xks(&fx);
    assert_eq!(xks.health().status, 200);
    let r = xks.metadata(KEY_AES);
    assert_eq!(
        (r.status, r.json()["errorName"].clone()),
        (403, json!("AccessDeniedException"))
    );
    let mut md = metadata_body("md-f");
    md["requestMetadata"]["kmsOperation"] = json!("FutureOp");
    assert_eq!(xks.post(&format!("/keys/{KEY_AES}/metadata"), &md).status, 200);
}

#[test]
fn an_invalid_policy_is_refused_at_start_naming_the_field() {
    let fx = Fixture::new();
    let cfg = with_policy(&fx, "[policy]\ndefault = \"allow\"\n[[policy.rules]]\nname = \"r\"\neffect = \"deny\"\nkey_ids = [\"[\"]\n");
    let config = fx.write_config(&cfg);
    let (code, _, err) = cli(&config, &["check-config"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("policy.rules[0].key_ids[0]"), "{err}");
}

#[test]
fn every_authenticated_request_is_audited_once_including_denied_ones_without_secrets() {
    let fx = Fixture::new();
    let proxy = TestProxy::start_with(&fx, &with_policy(&fx, POLICY), &[]);
    let mut xks = proxy.xks(&fx);
    let marker = b"XKS-SECRET-MARKER";
    let sealed = xks.encrypt_ok(KEY_AES, marker, Some(b"aad-marker-AAD"));
    assert_eq!(
        xks.decrypt(KEY_AES, &sealed.decrypt_body(Some(b"aad-marker-AAD")))
            .status,
        200
    );
    let mut denied = encrypt_body(b"x", None, false);
    denied["requestMetadata"]["kmsViaService"] = json!("s3");
    assert_eq!(xks.encrypt(KEY_AES, &denied).status, 403);
    let mut bad = Xks {
        client: proxy.client(),
        signer: Signer::new(&fx.access_key_id, "wrong-secret-wrong-secret-wrong-secret-00"),
        base: BASE.into(),
    };
    assert_eq!(bad.health().status, 401);
    assert_eq!(proxy.client().send("POST", "/nowhere", &[], b"{}").status, 404);
    // A signed request after the refused ones: once its record is there, everything before
    // it has been written (the writer appends in order).
    assert_eq!(xks.health().status, 200);
    // The writer thread appends asynchronously: wait (bounded) for the four records.
    let written = wait_until(WAIT, || {
        audit_lines(&fx)
            .iter()
            .filter(|l| l["event"] == "request")
            .count()
            >= 4
    });
    assert!(written, "audit records missing: {:#?}", audit_lines(&fx));
    let logs = proxy.stop();
    let lines = audit_lines(&fx);
    let requests: Vec<&Value> = lines.iter().filter(|l| l["event"] == "request").collect();
    let outcomes: Vec<&str> = requests.iter().map(|l| l["outcome"].as_str().unwrap()).collect();
    assert_eq!(
        outcomes,
        vec!["OK", "OK", "AccessDeniedException", "OK"],
        "requests refused before authentication must not be audited: {lines:#?}"
    );
    let enc = requests[0];
    assert_eq!(enc["operation"], "Encrypt");
    assert_eq!(enc["key_id"], KEY_AES);
    assert_eq!(enc["kms_request_id"], "enc-1");
    assert_eq!(enc["principal"], "arn:aws:iam::123456789012:user/Alice");
    assert_eq!(enc["via_service"], "ebs");
    assert_eq!(enc["access_key_id"], fx.access_key_id.as_str());
    assert_eq!(enc["keystore"], PREFIX);
    assert!(enc["latency_us"].is_u64() && enc["status"] == 200);
    assert_eq!(requests[2]["authz_rule"], "no-decrypt-only-key-outside-ebs");
    assert_eq!(requests[3]["operation"], "GetHealthStatus");
    let text = std::fs::read_to_string(fx.path("audit/audit.jsonl")).unwrap();
    for secret in [
        String::from_utf8_lossy(marker).into_owned(),
        b64(marker),
        "aad-marker-AAD".into(),
        b64(b"aad-marker-AAD"),
        fx.secret.clone(),
        "Signature=".into(),
    ] {
        assert!(!text.contains(&secret), "audit trail contains {secret:?}");
        assert!(
            !logs.contains(&secret) || secret == "Signature=",
            "log contains {secret:?}"
        );
    }
    let (code, out) = verify(&fx.path("audit/audit.jsonl"));
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn operator_actions_join_the_chain_and_tampering_is_reported_at_the_edited_line() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let mut xks = proxy.xks(&fx);
    assert_eq!(xks.health().status, 200);
    for args in [
        vec![
            "kill-switch",
            "engage",
            "--keystore",
            PREFIX,
            "--reason",
            "audit drill",
        ],
        vec!["kill-switch", "release", "--keystore", PREFIX],
        vec!["keys", "create", "--id", "audited-key"],
        vec!["keys", "disable", "audited-key", "--reason", "retire"],
    ] {
        cli_ok(&proxy.config, &args);
    }
    // Operator actions are flushed before the command returns: visible without stopping.
    let lines = audit_lines(&fx);
    let admin: Vec<(String, String, String)> = lines
        .iter()
        .filter(|l| l["event"] != "request")
        .map(|l| {
            (
                l["event"].as_str().unwrap().into(),
                l["action"].as_str().unwrap().into(),
                l["scope"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        admin,
        vec![
            (
                "kill_switch".into(),
                "engage".into(),
                format!("keystore:{PREFIX}")
            ),
            (
                "kill_switch".into(),
                "release".into(),
                format!("keystore:{PREFIX}")
            ),
            ("key_lifecycle".into(), "create".into(), "key:audited-key".into()),
            // `keys disable` is the key-scope kill switch: the same verb, the same record as
            // `kill-switch engage --key`.
            ("key_lifecycle".into(), "engage".into(), "key:audited-key".into()),
        ]
    );
    assert!(lines
        .iter()
        .any(|l| l["reason"] == "audit drill" && l["uid"] == 0));
    drop(proxy);
    let path = fx.path("audit/audit.jsonl");
    let (code, out) = verify(&path);
    assert_eq!(code, Some(0), "{out}");

    // Change one character of the second record (its reason or outcome) and verify again.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut rows: Vec<String> = text.lines().map(String::from).collect();
    rows[1] = rows[1]
        .replacen("\"status\":", "\"status\": ", 1)
        .replacen("engage", "engagE", 1);
    std::fs::write(&path, rows.join("\n") + "\n").unwrap();
    let (code, out) = verify(&path);
    assert_eq!(code, Some(1), "tampering not detected: {out}");
    assert!(
        out.contains("audit.jsonl:2:"),
        "the report must name the edited line: {out}"
    );
}

#[test]
fn metrics_scrape_contains_every_named_series() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    assert_eq!(proxy.xks(&fx).health().status, 200);
    let addr = metrics_addr(&proxy);
    assert!(
        addr.starts_with("127.0.0.1:"),
        "metrics must listen on loopback: {addr}"
    );
    let text = scrape_metrics(&proxy);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for series in [
        "xks_bridge_requests_total{keystore=\"/quickstart\",operation=\"GetHealthStatus\",outcome=\"OK\"} 1",
        "xks_bridge_request_duration_seconds_bucket",
        "xks_bridge_hsm_call_duration_seconds_count{token=",
        "xks_bridge_hsm_queue_depth{token=",
        "xks_bridge_token_up{token=\"quickstart-softhsm\"} 1",
        "xks_bridge_kill_switch_engaged{scope=\"proxy\"} 0",
        "xks_bridge_tls_certificate_expiry_seconds ",
        "xks_bridge_config_reloads{result=\"ok\"} 0",
        "xks_bridge_audit_write_errors 0",
    ] {
        assert!(text.contains(series), "missing {series:?} in:\n{text}");
    }
}

#[test]
fn reload_under_load_fails_no_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<u16>>> = Arc::default();
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, results) = (stop.clone(), results.clone());
            let mut xks = proxy.xks(&fx);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let s = xks.encrypt(KEY_AES, &encrypt_body(b"reload", None, false)).status;
                    results.lock().unwrap().push(s);
                }
            })
        })
        .collect();
    for _ in 0..5 {
        cli_ok(&proxy.config, &["reload"]);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    load.into_iter().for_each(|t| t.join().unwrap());
    let results = results.lock().unwrap();
    assert!(results.len() > 20, "the load did not run");
    let mut by_status = std::collections::BTreeMap::new();
    for s in results.iter() {
        *by_status.entry(*s).or_insert(0usize) += 1;
    }
    assert!(
        results.iter().all(|s| *s == 200),
        "a request failed across reloads (count by status: {by_status:?}); daemon log:\n{}",
        proxy.logs()
    );
    eprintln!(
        "reload under load: 5 reloads, {} requests, 0 failed",
        results.len()
    );
}
