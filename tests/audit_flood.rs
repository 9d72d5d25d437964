//! The audit trail and the log under unauthenticated floods, through the real daemon:
//! requests refused before authentication write no audit record and no per-request log line
//! (a counter by reason and a rate-limited summary instead), cannot crowd authenticated
//! records out of the audit queue, and client-chosen metadata is capped in every sink. Then
//! `audit verify`'s stated guarantees on a trail the daemon wrote: `--require-start`,
//! `--anchor`, and checkpoints from the daemon's own log against a recomputed chain.

mod common;

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn audit_path(fx: &Fixture) -> std::path::PathBuf {
    fx.path("audit/audit.jsonl")
}

fn audit_requests(fx: &Fixture) -> Vec<Value> {
    std::fs::read_to_string(audit_path(fx))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("audit line is JSON"))
        .filter(|l| l["event"] == "request")
        .collect()
}

fn verify(args: &[&str], path: &std::path::Path) -> (Option<i32>, String) {
    let mut c = Command::new(BIN);
    c.args(["audit", "verify"]).args(args).arg(path);
    let (code, out, err) = run_bounded(c, WAIT);
    (code, out + &err)
}

/// One unauthenticated request of kind `i % 4`: unsigned, wrongly signed, unknown path,
/// wrong method. Returns the status.
fn unauthenticated(client: &mut Client, forger: &Signer, i: usize) -> u16 {
    let health = format!("{BASE}/health");
    let body = serde_json::to_vec(&health_body("flood", "KmsHealthCheck")).unwrap();
    match i % 4 {
        0 => {
            let ct = vec![("content-type".to_owned(), "application/json".to_owned())];
            client.send("POST", &health, &ct, &body).status
        }
        1 => client.post_signed(forger, &health, &body).status,
        2 => client.send("POST", "/nowhere/kms/xks/v1/health", &[], b"").status,
        _ => client.send("GET", &health, &[], b"").status,
    }
}

/// The keystore's real access key id with a wrong secret: a signature mismatch.
fn forger(fx: &Fixture) -> Signer {
    Signer::new(&fx.access_key_id, "forged-secret-forged-secret-forged-secret")
}

/// The `kms_request_id`s in the trail.
fn audited_ids(fx: &Fixture) -> BTreeSet<String> {
    audit_requests(fx)
        .iter()
        .filter_map(|r| r["kms_request_id"].as_str().map(String::from))
        .collect()
}

const FLOOD_STATUSES: [u16; 4] = [401, 401, 404, 405];

#[test]
fn twenty_thousand_unauthenticated_requests_write_no_audit_record_and_few_log_lines() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let mut xks = proxy.xks(&fx);
    assert_eq!(xks.health().status, 200);
    assert!(wait_until(WAIT, || audit_requests(&fx).len() == 1));
    let lines_before = proxy.logs().lines().count();

    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (mut client, forger) = (proxy.client(), forger(&fx));
            std::thread::spawn(move || {
                for i in 0..5000 {
                    let status = unauthenticated(&mut client, &forger, i);
                    assert_eq!(status, FLOOD_STATUSES[i % 4], "thread {t} request {i}");
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());

    // A signed request after the flood: its record is written, and is the only new one.
    let mut md = health_body("after-flood", "KmsHealthCheck");
    md["requestMetadata"]["kmsRequestId"] = json!("after-flood");
    assert_eq!(xks.post("/health", &md).status, 200);
    assert!(wait_until(WAIT, || audit_requests(&fx).len() >= 2));
    let metrics = scrape_metrics(&proxy);
    let logs = proxy.stop();
    let records = audit_requests(&fx);
    assert_eq!(
        records.len(),
        2,
        "unauthenticated requests were audited: {records:#?}"
    );
    assert_eq!(records[1]["kms_request_id"], "after-flood");
    assert!(records
        .iter()
        .all(|r| r["access_key_id"] == fx.access_key_id.as_str()));

    let new_lines: Vec<&str> = logs.lines().skip(lines_before).collect();
    eprintln!(
        "20,000 unauthenticated requests: {} audit records, {} log lines",
        records.len() - 2,
        new_lines.len()
    );
    assert!(
        new_lines.len() < 100,
        "{} log lines for 20,000 refused requests:\n{}",
        new_lines.len(),
        new_lines[..new_lines.len().min(20)].join("\n")
    );
    assert!(
        logs.contains("requests refused before authentication"),
        "no summary line:\n{logs}"
    );
    for reason in ["unsigned", "bad_signature", "unknown_path", "method_not_allowed"] {
        let series = format!("xks_bridge_unauthenticated_requests_total{{reason=\"{reason}\"}} 5000");
        assert!(metrics.contains(&series), "missing {series:?} in:\n{metrics}");
    }
    assert!(
        metrics.contains("xks_bridge_audit_records_dropped_total 0"),
        "{metrics}"
    );
}

#[test]
fn an_unauthenticated_flood_does_not_cost_a_signed_request_its_audit_record() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    section(&mut cfg, "audit").insert("fsync".into(), "every-record".into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let flood: Vec<_> = (0..3)
        .map(|_| {
            let (mut client, stop, forger) = (proxy.client(), stop.clone(), forger(&fx));
            std::thread::spawn(move || {
                let mut sent = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    unauthenticated(&mut client, &forger, sent);
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let signed: Vec<_> = (0..2)
        .map(|t| {
            let mut xks = proxy.xks(&fx);
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for i in 0..60 {
                    let mut enc = encrypt_body(b"audited", None, false);
                    let id = format!("enc-{t}-{i}");
                    enc["requestMetadata"]["kmsRequestId"] = json!(id);
                    let r = xks.encrypt(KEY_AES, &enc);
                    assert_eq!(r.status, 200, "{}", r.text());
                    ids.push(id);
                    let mut dec = Sealed::from_response(&r).decrypt_body(None);
                    let id = format!("dec-{t}-{i}");
                    dec["requestMetadata"]["kmsRequestId"] = json!(id);
                    assert_eq!(xks.decrypt(KEY_AES, &dec).status, 200);
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let expected: BTreeSet<String> = signed.into_iter().flat_map(|t| t.join().unwrap()).collect();
    stop.store(true, Ordering::SeqCst);
    let flooded: usize = flood.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(flooded > 100, "the flood did not run ({flooded} requests)");
    // With an fsync per record the writer trails the requests: wait (bounded) for it. The
    // daemon is killed afterwards, so nothing is flushed on the way out.
    wait_until(WAIT, || audited_ids(&fx).len() >= expected.len());
    let metrics = scrape_metrics(&proxy);
    drop(proxy);
    let records = audit_requests(&fx);
    let audited = audited_ids(&fx);
    let missing: Vec<_> = expected.difference(&audited).collect();
    assert!(
        missing.is_empty(),
        "signed requests without a record: {missing:?}"
    );
    assert_eq!(
        records.len(),
        expected.len(),
        "only the signed requests are audited"
    );
    let text = std::fs::read_to_string(audit_path(&fx)).unwrap();
    assert!(!text.contains("\"event\":\"lost\""), "records were dropped");
    assert!(
        metrics.contains("xks_bridge_audit_records_dropped_total 0"),
        "{metrics}"
    );
    eprintln!(
        "{} signed requests audited alongside {flooded} unauthenticated ones",
        expected.len()
    );
}

/// KMS's metadata is recorded (the XKS spec asks that every call's `requestMetadata` be
/// logged, `kmsKeyArn` included), but a client-chosen 10 KiB ARN is capped at the spec's 2,048
/// characters, with a marker, in the audit record and in the log line.
#[test]
fn ten_kib_arns_are_capped_in_the_audit_record_and_the_log_line() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let mut xks = proxy.xks(&fx);
    let key_arn = "arn:aws:kms:us-east-1:123456789012:key/normal";
    let mut normal = encrypt_body(b"x", None, false);
    normal["requestMetadata"]["kmsKeyArn"] = json!(key_arn);
    normal["requestMetadata"]["kmsRequestId"] = json!("normal-arn");
    assert_eq!(xks.encrypt(KEY_AES, &normal).status, 200);
    let arn = format!("arn:aws:iam::123456789012:role/{}", "Q".repeat(10 * 1024));
    let long_key_arn = format!("arn:aws:kms:us-east-1:123456789012:key/{}", "K".repeat(10 * 1024));
    let mut body = encrypt_body(b"x", None, false);
    body["requestMetadata"]["awsPrincipalArn"] = json!(arn);
    body["requestMetadata"]["kmsKeyArn"] = json!(long_key_arn);
    body["requestMetadata"]["kmsRequestId"] = json!("long-arn");
    assert_eq!(xks.encrypt(KEY_AES, &body).status, 200);
    assert!(wait_until(WAIT, || audit_requests(&fx).len() >= 2));
    assert!(proxy.wait_for_log("long-arn"));
    let logs = proxy.stop();
    let records = audit_requests(&fx);
    assert_eq!(records[0]["kms_key_arn"], key_arn, "{}", records[0]);
    let normal_line = logs
        .lines()
        .find(|l| l.contains("normal-arn"))
        .expect("request log line");
    assert!(normal_line.contains(key_arn), "{normal_line}");
    const MARKER: &str = "…[truncated]";
    for (field, long, filler) in [("principal", &arn, 'Q'), ("kms_key_arn", &long_key_arn, 'K')] {
        let kept = records[1][field].as_str().unwrap().to_owned();
        assert!(kept.ends_with(MARKER), "{field}: {}", &kept[..80]);
        assert_eq!(kept.chars().count(), 2048 + MARKER.chars().count(), "{field}");
        assert!(long.starts_with(kept.trim_end_matches(MARKER)), "{field}");
        let line = logs
            .lines()
            .find(|l| l.contains("long-arn"))
            .expect("request log line");
        assert!(line.contains(MARKER), "the log line is not marked as truncated");
        assert!(
            line.matches(filler).count() <= 2048,
            "the log line holds {} characters of the {field}",
            line.matches(filler).count()
        );
    }
    let line = logs
        .lines()
        .find(|l| l.contains("long-arn"))
        .expect("request log line");
    assert!(
        line.chars().count() < 2 * 2048 + 1024,
        "log line of {} chars",
        line.chars().count()
    );
}

fn sha256_hex(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

/// Recomputes every `prev` from line `from` on, as someone with the daemon's uid can.
fn rechain(lines: &mut [String], from: usize) {
    for i in from..lines.len() {
        let mut v: Value = serde_json::from_str(&lines[i]).unwrap();
        v["prev"] = json!(sha256_hex(&lines[i - 1]));
        lines[i] = serde_json::to_string(&v).unwrap();
    }
}

#[test]
fn verify_checks_the_start_anchors_and_the_daemons_checkpoints_and_states_its_limits() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    section(&mut cfg, "audit").insert("checkpoint_every_records".into(), 5.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let mut xks = proxy.xks(&fx);
    for i in 0..20 {
        let mut md = health_body("x", "KmsHealthCheck");
        md["requestMetadata"]["kmsRequestId"] = json!(format!("chk-{i}"));
        assert_eq!(xks.post("/health", &md).status, 200);
    }
    assert!(wait_until(WAIT, || proxy
        .logs()
        .matches("audit checkpoint")
        .count()
        == 4));
    let logs = proxy.stop();
    // The daemon's stderr, as the journal would hold it, is the checkpoint list.
    let journal = fx.path("journal.txt");
    std::fs::write(&journal, &logs).unwrap();
    let path = audit_path(&fx);
    let original: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(original.len(), 20);
    let checkpoints = ["--checkpoints", journal.to_str().unwrap()];
    let (code, out) = verify(&checkpoints, &path);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("4 of 4 checkpoints match"), "{out}");
    let (code, out) = verify(&["--require-start"], &path);
    assert_eq!(code, Some(0), "{out}");

    // --anchor: the hash of record 10 passes, any other hash fails.
    let right = format!("10:{}", sha256_hex(&original[9]));
    let wrong = format!("10:{}", sha256_hex(&original[8]));
    assert_eq!(verify(&["--anchor", &right], &path).0, Some(0));
    let (code, out) = verify(&["--anchor", &wrong], &path);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("MISMATCH"), "{out}");

    // The start removed: the chain alone still verifies (documented); --require-start fails.
    std::fs::write(&path, original[3..].join("\n") + "\n").unwrap();
    let (code, out) = verify(&[], &path);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = verify(&["--require-start"], &path);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("start is missing"), "{out}");

    // A middle record rewritten and the chain recomputed from there: intact for the chain
    // alone (the documented limit), caught by the daemon's checkpoints.
    let mut forged = original.clone();
    forged[7] = forged[7].replace("chk-7", "chk-X");
    rechain(&mut forged, 8);
    std::fs::write(&path, forged.join("\n") + "\n").unwrap();
    let (code, out) = verify(&["--require-start"], &path);
    assert_eq!(
        code,
        Some(0),
        "a recomputed chain verifies without checkpoints: {out}"
    );
    let (code, out) = verify(&checkpoints, &path);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("1 of 4 checkpoints match"),
        "seq 5 precedes the rewrite: {out}"
    );
    assert!(out.contains("checkpoint seq 10: MISMATCH"), "{out}");

    // A cut that removes a checkpointed record is detected (one after the last checkpoint
    // would not be: that is the unprotected tail).
    std::fs::write(&path, original[..19].join("\n") + "\n").unwrap();
    let (code, out) = verify(&checkpoints, &path);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("checkpoint seq 20: NOT REACHED"), "{out}");
}

#[test]
fn an_operator_reason_cannot_forge_a_log_line() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let reason = "drill\n2026-01-01T00:00:00Z  INFO xks_bridge: kill switch RELEASE forged";
    cli_ok(
        &proxy.config,
        &["kill-switch", "engage", "--keystore", PREFIX, "--reason", reason],
    );
    assert!(proxy.wait_for_log("kill switch ENGAGE"));
    let logs = proxy.stop();
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("RELEASE forged") && !l.contains("ENGAGE")),
        "the reason's newline started a new log line:\n{logs}"
    );
    assert!(
        logs.contains(r"drill\n2026"),
        "the reason is logged escaped:\n{logs}"
    );
}

#[test]
fn checkpoint_settings_are_validated_naming_the_field() {
    let fx = Fixture::new();
    for (field, value, needle) in [
        (
            "checkpoint_every_records",
            toml::Value::from(0),
            "audit.checkpoint_every_records",
        ),
        (
            "checkpoint_interval_ms",
            toml::Value::from(10),
            "audit.checkpoint_interval_ms",
        ),
        (
            "checkpoint_syslog",
            toml::Value::from("dev/log"),
            "audit.checkpoint_syslog",
        ),
    ] {
        let mut cfg = fx.config();
        section(&mut cfg, "audit").insert(field.into(), value);
        let (code, _, err) = cli(&fx.write_config(&cfg), &["check-config"]);
        assert_eq!(code, Some(64), "{field}: {err}");
        assert!(err.contains(needle), "{field}: {err}");
    }
}

/// Under systemd, stderr is a stream to journald, and when journald stalls every write to it
/// blocks. The daemon's stderr here is a FIFO whose reader never reads (it fills after 64 KiB,
/// about 150 request lines): requests keep being answered, log lines wait in a bounded queue
/// and, past it, are dropped and counted in `xks_bridge_log_lines_dropped`.
#[test]
fn a_stalled_stderr_does_not_stop_the_daemon_answering() {
    let fx = Fixture::new();
    let fifo = fx.path("stderr.fifo");
    let (code, _, err) = run_bounded(
        {
            let mut c = Command::new("mkfifo");
            c.arg(&fifo);
            c
        },
        WAIT,
    );
    assert_eq!(code, Some(0), "mkfifo: {err}");
    // The reader end: opening it waits for the daemon's shell to open the writer; then it is
    // held, never read, until the test ends.
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::File::open(fifo).expect("open the FIFO"))
    };
    let proxy = TestProxy::start_with_stderr_to(&fx, &fx.config(), &fifo);
    let _held = reader.join().expect("FIFO reader");
    // More lines than the pipe and the daemon's queue (16,384 lines) hold together.
    let answered: Vec<usize> = std::thread::scope(|scope| {
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let mut xks = proxy.xks(&fx);
                scope.spawn(move || {
                    (0..4_500)
                        .map(|i| {
                            let r = xks.health();
                            assert_eq!(r.status, 200, "sender {t}, request {i}: {}", r.text());
                        })
                        .count()
                })
            })
            .collect();
        senders.into_iter().map(|s| s.join().expect("sender")).collect()
    });
    assert_eq!(answered.iter().sum::<usize>(), 18_000);
    let metrics = scrape_metrics(&proxy);
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("xks_bridge_log_lines_dropped "))
        .unwrap_or_else(|| panic!("no log_lines_dropped metric:\n{metrics}"))
        .trim()
        .parse()
        .expect("a number");
    assert!(
        dropped > 0.0,
        "18,000 request lines into a stalled stderr, none dropped?"
    );
}
