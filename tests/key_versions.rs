//! Key versions behind a stable external key id, against the real daemon and the real SoftHSM2
//! token: rotation by the operator, decrypt by the version the metadata names, retired,
//! destroyed and missing versions, the key-scope kill switch over every version, automatic
//! rotation at a small budget across two daemons sharing one token, and counters that never go
//! down when a daemon is killed while encrypting.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// The key version a ciphertext's metadata names (format byte 1, big-endian u32).
fn version_of(s: &Sealed) -> u32 {
    let md = s.metadata.as_deref().expect("ciphertextMetadata present");
    assert_eq!(md.len(), 5, "metadata is format byte + u32: {md:?}");
    assert_eq!(md[0], 1, "format byte");
    u32::from_be_bytes([md[1], md[2], md[3], md[4]])
}

fn show(config: &Path, key: &str) -> Value {
    serde_json::from_str(&cli_ok(config, &["keys", "show", key, "--json"])).expect("keys show JSON")
}

/// (number, state, encryptions) of every version `keys show` lists.
fn versions(config: &Path, key: &str) -> Vec<(u64, String, u64)> {
    show(config, key)["versions"]
        .as_array()
        .expect("versions array")
        .iter()
        .map(|v| {
            (
                v["number"].as_u64().expect("number"),
                v["state"].as_str().expect("state").to_owned(),
                v["encryptions"].as_u64().expect("encryptions"),
            )
        })
        .collect()
}

#[track_caller]
fn decrypts(xks: &mut Xks, s: &Sealed, plaintext: &[u8]) {
    let r = xks.decrypt(KEY_AES, &s.decrypt_body(Some(b"ctx")));
    assert_eq!(
        r.status,
        200,
        "decrypt of a version {} ciphertext: {}",
        version_of(s),
        r.text()
    );
    assert_eq!(r.b64_field("plaintext"), plaintext);
}

/// Encrypt retried while the daemon answers 429 (a new version is settling) or 503 (the HSM
/// missed the 240 ms deadline on a loaded machine): both are KMS's retryable answers.
fn encrypt_retrying(xks: &mut Xks, plaintext: &[u8]) -> Sealed {
    try_encrypt(xks, plaintext).unwrap_or_else(|e| panic!("{e}"))
}

fn try_encrypt(xks: &mut Xks, plaintext: &[u8]) -> Result<Sealed, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = xks.encrypt(KEY_AES, &encrypt_body(plaintext, Some(b"ctx"), false));
        match r.status {
            200 => return Ok(Sealed::from_response(&r)),
            429 | 503 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(40)),
            _ => return Err(format!("encrypt: {} {}", r.status, r.text())),
        }
    }
}

#[test]
fn rotation_keeps_old_ciphertext_decrypting_and_new_ciphertext_names_the_new_version() {
    let mut h = Harness::start();
    let cfg = h.proxy.config.clone();
    let metadata_before = h.xks.metadata(KEY_AES);
    assert_eq!(metadata_before.status, 200);
    let old = h.xks.encrypt_ok(KEY_AES, b"before rotation", Some(b"ctx"));
    assert_eq!(version_of(&old), 1, "a key never rotated is version 1");

    let out = cli_ok(&cfg, &["keys", "rotate", KEY_AES, "--reason", "yearly rotation"]);
    assert!(out.contains("version 2"), "rotate prints the new version: {out}");
    let new = h.xks.encrypt_ok(KEY_AES, b"after rotation", Some(b"ctx"));
    assert_eq!(version_of(&new), 2, "Encrypt uses the new version at once");
    decrypts(&mut h.xks, &old, b"before rotation");
    decrypts(&mut h.xks, &new, b"after rotation");

    let metadata_after = h.xks.metadata(KEY_AES);
    assert_eq!(metadata_after.status, 200);
    assert_eq!(
        metadata_after.body, metadata_before.body,
        "GetKeyMetadata must be byte-identical across a rotation"
    );

    let shown = show(&cfg, KEY_AES);
    assert_eq!(shown["current_version"], 2);
    let v = versions(&cfg, KEY_AES);
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!((v[0].0, v[0].1.as_str()), (1, "decrypt-only"));
    assert_eq!((v[1].0, v[1].1.as_str()), (2, "current"));
    // One encryption each: counted (an upper bound), and at most the first, smallest block
    // ahead of what was made.
    assert!((1..=1024).contains(&v[0].2), "version 1 counted: {v:?}");
    assert!((1..=1024).contains(&v[1].2), "version 2 counted: {v:?}");

    let list = cli_ok(&cfg, &["keys", "list", "--json"]);
    let list: Value = serde_json::from_str(&list).expect("keys list JSON");
    let keys = list.as_array().expect("array");
    assert!(
        keys.iter().all(|k| !k["id"].as_str().unwrap_or("").contains('/')),
        "version objects are not listed as keys: {list}"
    );
    let aes = keys
        .iter()
        .find(|k| k["id"] == KEY_AES)
        .expect("the key is listed");
    assert_eq!(aes["current_version"], 2);
    assert_eq!(aes["versions"].as_array().map(Vec::len), Some(2));
    let listed: u64 = aes["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v["encryptions"].as_u64().expect("count in keys list"))
        .sum();
    assert_eq!(
        listed,
        v.iter().map(|x| x.2).sum::<u64>(),
        "keys list and keys show agree"
    );
    let table = cli_ok(&cfg, &["keys", "list"]);
    let row = table.lines().find(|l| l.starts_with(KEY_AES)).expect("key row");
    assert!(row.contains(" v2 "), "the table shows the current version: {row}");

    let audit = std::fs::read_to_string(h.fx.path("audit/audit.jsonl")).unwrap_or_default();
    assert!(
        audit.contains("\"rotate\"") && audit.contains("yearly rotation"),
        "the rotation is in the audit trail"
    );
}

#[test]
fn retired_destroyed_and_missing_versions_get_their_documented_errors() {
    let mut h = Harness::start();
    let cfg = h.proxy.config.clone();
    let v1 = h.xks.encrypt_ok(KEY_AES, b"one", Some(b"ctx"));
    cli_ok(&cfg, &["keys", "rotate", KEY_AES]);
    let v2 = h.xks.encrypt_ok(KEY_AES, b"two", Some(b"ctx"));
    assert_eq!(version_of(&v2), 2);

    // Retiring the current version is refused: rotate first.
    let (code, _, err) = cli(&cfg, &["keys", "retire", KEY_AES, "--version", "2"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("rotate first"), "{err}");

    cli_ok(
        &cfg,
        &["keys", "retire", KEY_AES, "--version", "1", "--reason", "test"],
    );
    let r = h.xks.decrypt(KEY_AES, &v1.decrypt_body(Some(b"ctx")));
    assert_error(&r, 400, "InvalidStateException");
    assert!(r.text().contains("retired"), "{}", r.text());
    decrypts(&mut h.xks, &v2, b"two");
    assert_eq!(versions(&cfg, KEY_AES)[0].1, "retired");
    cli_ok(&cfg, &["keys", "unretire", KEY_AES, "--version", "1"]);
    decrypts(&mut h.xks, &v1, b"one");

    // A version that never existed: the metadata is well-formed, the version is not.
    let mut forged = v1.clone();
    forged.metadata = Some(vec![1, 0, 0, 0, 9]);
    let r = h.xks.decrypt(KEY_AES, &forged.decrypt_body(Some(b"ctx")));
    assert_error(&r, 400, "InvalidCiphertextException");
    assert!(r.text().contains("does not exist"), "{}", r.text());

    // Destroying a version needs it retired and an explicit confirmation.
    cli_ok(&cfg, &["keys", "rotate", KEY_AES]);
    let (code, _, err) = cli(
        &cfg,
        &[
            "keys",
            "destroy",
            KEY_AES,
            "--version",
            "2",
            "--confirm",
            &format!("{KEY_AES}/v2"),
        ],
    );
    assert_ne!(code, Some(0), "an unretired version was destroyed");
    assert!(err.contains("not retired"), "{err}");
    cli_ok(&cfg, &["keys", "retire", KEY_AES, "--version", "2"]);
    let (code, _, _) = cli(
        &cfg,
        &["keys", "destroy", KEY_AES, "--version", "2", "--confirm", KEY_AES],
    );
    assert_eq!(
        code,
        Some(64),
        "a confirmation that does not name the version is refused"
    );
    let out = cli_ok(
        &cfg,
        &[
            "keys",
            "destroy",
            KEY_AES,
            "--version",
            "2",
            "--confirm",
            &format!("{KEY_AES}/v2"),
        ],
    );
    assert!(
        out.contains("protected at most 1 encryptions") || out.contains("protected at most"),
        "{out}"
    );
    let r = h.xks.decrypt(KEY_AES, &v2.decrypt_body(Some(b"ctx")));
    assert_error(&r, 400, "InvalidCiphertextException");
    assert!(r.text().contains("does not exist"), "{}", r.text());
    let states: Vec<String> = versions(&cfg, KEY_AES).into_iter().map(|v| v.1).collect();
    assert_eq!(states, ["decrypt-only", "destroyed", "current"]);

    // The key-scope kill switch covers every version.
    let v3 = h.xks.encrypt_ok(KEY_AES, b"three", Some(b"ctx"));
    assert_eq!(version_of(&v3), 3);
    cli_ok(&cfg, &["keys", "disable", KEY_AES, "--reason", "test"]);
    for s in [&v1, &v3] {
        let r = h.xks.decrypt(KEY_AES, &s.decrypt_body(Some(b"ctx")));
        assert_error(&r, 400, "InvalidStateException");
    }
    cli_ok(&cfg, &["keys", "enable", KEY_AES]);
    decrypts(&mut h.xks, &v1, b"one");
    decrypts(&mut h.xks, &v3, b"three");
}

#[test]
fn a_budget_above_the_nist_bound_is_refused_naming_the_field() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    entry(&mut cfg, "keystores", 0).insert(
        "max_encryptions_per_version".into(),
        toml::Value::Integer((1i64 << 32) + 1),
    );
    let (code, _, err) = cli(&fx.write_config(&cfg), &["check-config"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("max_encryptions_per_version"), "{err}");
}

/// Settings of one `key_budgets` entry.
type Entries<'a> = Vec<(&'a str, toml::Value)>;

/// `[keystores.key_budgets."KEY"]` with `entries` in keystore 0 of `cfg`.
fn own_budget(cfg: &mut toml::Table, key: &str, entries: &[(&str, toml::Value)]) {
    let own: toml::Table = entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let mut budgets = toml::Table::new();
    budgets.insert(key.into(), own.into());
    entry(cfg, "keystores", 0).insert("key_budgets".into(), budgets.into());
}

#[test]
fn a_key_budget_for_a_key_the_keystore_does_not_serve_or_past_the_bound_is_refused_naming_it() {
    let fx = Fixture::new();
    let cases: [(&str, Entries, &str); 4] = [
        (
            "no-such-key",
            vec![("max_encryptions_per_version", 10.into())],
            "keystores[0].key_budgets.\"no-such-key\": not a key this keystore serves",
        ),
        (
            KEY_AES,
            vec![("max_encryptions_per_version", ((1i64 << 32) + 1).into())],
            "keystores[0].key_budgets.\"quickstart-aes\".max_encryptions_per_version: 4294967297 must be between 1 and 2^32",
        ),
        (
            KEY_AES,
            vec![("rotate_after_days", 0.into())],
            "keystores[0].key_budgets.\"quickstart-aes\".rotate_after_days: must be at least 1",
        ),
        (
            KEY_AES,
            vec![],
            "keystores[0].key_budgets.\"quickstart-aes\": sets neither",
        ),
    ];
    for (key, entries, want) in cases {
        let mut cfg = fx.config();
        own_budget(&mut cfg, key, &entries);
        let (code, _, err) = cli(&fx.write_config(&cfg), &["check-config"]);
        assert_eq!(code, Some(64), "{key} {entries:?}: {err}");
        assert!(err.contains(want), "{key} {entries:?}: want {want:?} in {err}");
    }
    let mut cfg = fx.config();
    own_budget(&mut cfg, KEY_AES, &[("maximum", 10.into())]);
    let (code, _, err) = cli(&fx.write_config(&cfg), &["check-config"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("unknown field `maximum`"), "{err}");
}

#[test]
fn a_key_with_its_own_budget_rotates_at_it_while_the_other_keys_keep_the_keystores() {
    const OWN: u64 = 40;
    const EACH: usize = 200;
    let fx = Fixture::new();
    let mut cfg = fx.config();
    entry(&mut cfg, "keystores", 0).insert("max_encryptions_per_version".into(), 1000i64.into());
    own_budget(
        &mut cfg,
        KEY_AES,
        &[("max_encryptions_per_version", (OWN as i64).into())],
    );
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let mut xks = proxy.xks(&fx);

    let mut per_version: BTreeMap<u32, u64> = BTreeMap::new();
    let mut sealed = Vec::new();
    for i in 0..EACH {
        let pt = format!("own budget {i}").into_bytes();
        let s = encrypt_retrying(&mut xks, &pt);
        *per_version.entry(version_of(&s)).or_insert(0) += 1;
        sealed.push((s, pt));
    }
    for (v, n) in &per_version {
        assert!(
            *n <= OWN,
            "version {v} made {n} > its own budget {OWN}: {per_version:?}"
        );
    }
    assert!(
        per_version.len() >= EACH / OWN as usize,
        "{EACH} encryptions at a budget of {OWN} need at least {} versions: {per_version:?}",
        EACH / OWN as usize
    );
    for (s, pt) in &sealed {
        decrypts(&mut xks, s, pt);
    }

    // The keystore's other key keeps the keystore's budget (1,000): one version throughout.
    for i in 0..EACH {
        let deadline = Instant::now() + Duration::from_secs(60);
        let r = loop {
            let r = xks.encrypt(
                KEY_ENCRYPT_ONLY,
                &encrypt_body(format!("other {i}").as_bytes(), None, false),
            );
            if matches!(r.status, 429 | 503) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(40));
                continue;
            }
            break r;
        };
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            version_of(&Sealed::from_response(&r)),
            1,
            "{KEY_ENCRYPT_ONLY} rotated at encryption {i}: {:?}",
            versions(&proxy.config, KEY_ENCRYPT_ONLY)
        );
    }
    let other = versions(&proxy.config, KEY_ENCRYPT_ONLY);
    assert_eq!(other.len(), 1, "{KEY_ENCRYPT_ONLY}: {other:?}");
    // And the token's counts of the key with its own budget agree with it.
    for (n, _, counted) in versions(&proxy.config, KEY_AES) {
        assert!(
            counted <= OWN,
            "version {n} counted {counted} > its own budget {OWN}"
        );
    }
}

/// A second daemon on the same token: its own state directory (so its own instance id), admin
/// socket and audit file.
fn second_config(fx: &Fixture, cfg: &toml::Table) -> toml::Table {
    let mut second = cfg.clone();
    section(&mut second, "state").insert("directory".into(), "state-b".into());
    section(&mut second, "admin").insert("socket".into(), "admin-b.sock".into());
    section(&mut second, "audit").insert("file".into(), "audit-b/audit.jsonl".into());
    let _ = fx;
    second
}

/// Secret-key objects on the token per label (`pkcs11-tool --list-objects`).
fn key_labels(fx: &Fixture) -> BTreeMap<String, usize> {
    let out = pkcs11_tool_ok(fx, &["--list-objects", "--type", "secrkey"]);
    let mut labels = BTreeMap::new();
    for l in out.lines() {
        if let Some(label) = l.trim().strip_prefix("label:") {
            *labels.entry(label.trim().to_owned()).or_insert(0) += 1;
        }
    }
    labels
}

/// The WARN and ERROR lines of a daemon's logs.
fn warnings(logs: &str) -> String {
    logs.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One daemon's ciphertexts with their plaintexts.
type Run = Vec<(Sealed, Vec<u8>)>;

#[test]
fn automatic_rotation_across_two_daemons_never_uses_a_version_past_its_budget() {
    const BUDGET: u64 = 100;
    const PER_DAEMON: usize = 500;
    let fx = Fixture::new();
    let mut cfg = fx.config();
    entry(&mut cfg, "keystores", 0).insert("max_encryptions_per_version".into(), (BUDGET as i64).into());
    let a = TestProxy::start_with(&fx, &cfg, &[]);
    let b = TestProxy::start_with(&fx, &second_config(&fx, &cfg), &[]);

    let results: Vec<Result<Run, String>> = std::thread::scope(|scope| {
        let runs: Vec<_> = [(&a, 0u8), (&b, 1u8)]
            .into_iter()
            .map(|(p, tag)| {
                let mut xks = p.xks(&fx);
                scope.spawn(move || {
                    (0..PER_DAEMON)
                        .map(|i| {
                            let pt = format!("daemon {tag} message {i}").into_bytes();
                            try_encrypt(&mut xks, &pt).map(|s| (s, pt))
                        })
                        .collect::<Result<Vec<_>, String>>()
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("encrypting thread"))
            .collect()
    });
    let results: Vec<Run> = results
        .into_iter()
        .collect::<Result<_, String>>()
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n--- daemon a ---\n{}\n--- daemon b ---\n{}",
                a.logs(),
                b.logs()
            )
        });

    let mut per_version: BTreeMap<u32, u64> = BTreeMap::new();
    eprintln!(
        "(results collected) keys show: {:?}",
        versions(&a.config, KEY_AES)
    );
    for (s, _) in results.iter().flatten() {
        *per_version.entry(version_of(s)).or_insert(0) += 1;
    }
    for (v, n) in &per_version {
        assert!(
            *n <= BUDGET,
            "version {v} made {n} encryptions, past its budget of {BUDGET}: {per_version:?}"
        );
    }
    eprintln!("encryptions per version: {per_version:?}");
    eprintln!("encryptions per version: {per_version:?}");
    let used: Vec<u32> = per_version.keys().copied().collect();
    let highest = *used.last().expect("versions used");
    assert_eq!(
        used,
        (1..=highest).collect::<Vec<_>>(),
        "versions used are 1..=n with no gap"
    );
    assert!(
        (10..=25).contains(&highest),
        "1,000 encryptions at a budget of 100 should take 10 to 25 versions, took {highest}: {per_version:?}"
    );

    // Exactly one version per number on the token, and `keys show` agrees.
    let shown = versions(&a.config, KEY_AES);
    eprintln!("keys show: {shown:?}");
    let numbers: Vec<u64> = shown.iter().map(|v| v.0).collect();
    let unique: BTreeSet<u64> = numbers.iter().copied().collect();
    assert_eq!(
        numbers.len(),
        unique.len(),
        "duplicate version numbers: {shown:?}"
    );
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
    assert!(numbers.len() as u32 <= highest + 1, "{shown:?}");
    for (n, _, counted) in &shown {
        assert!(*counted <= BUDGET, "version {n} counted {counted} > {BUDGET}");
        let made = per_version.get(&(*n as u32)).copied().unwrap_or(0);
        assert!(
            *counted >= made,
            "version {n}: counted {counted} < {made} made (under-count)"
        );
    }
    // One key object per version number, with the two exceptions docs/key-versions.md
    // states: an instance that stalls longer than the settle time (1 s) can commit a second
    // candidate for the same number (both then decrypt, and the count is per number), and a
    // candidate creation the token failed can leave an object no record names (never used).
    // One of them was seen once, in a CI run (not in 12 runs beside two busy loops); what they may not
    // do, lose a ciphertext or pass the budget, is checked above and below.
    let labels = key_labels(&fx);
    for n in 2..=numbers.len() {
        let label = format!("{KEY_AES}/v{n}");
        let objects = labels.get(&label).copied().unwrap_or(0);
        assert!(
            (1..=2).contains(&objects),
            "{objects} key objects labelled {label}: {labels:?}\n--- warnings of daemon a ---\n{}\n--- of daemon b ---\n{}",
            warnings(&a.logs()),
            warnings(&b.logs())
        );
        if objects == 2 {
            eprintln!(
                "version {n} has two key objects (the stalled-instance case of docs/key-versions.md)\n--- warnings of daemon a ---\n{}\n--- of daemon b ---\n{}",
                warnings(&a.logs()),
                warnings(&b.logs())
            );
        }
    }

    // Every ciphertext decrypts through either daemon.
    let mut xa = a.xks(&fx);
    let mut xb = b.xks(&fx);
    for (i, (s, pt)) in results.iter().flatten().enumerate() {
        let x = if i % 2 == 0 { &mut xa } else { &mut xb };
        decrypts(x, s, pt);
    }
    let metrics = scrape_metrics(&a);
    assert!(
        metrics.contains("xks_bridge_key_current_version{"),
        "per-key version metric missing:\n{metrics}"
    );
}

#[test]
fn killing_a_daemon_while_it_encrypts_never_lowers_a_count() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    entry(&mut cfg, "keystores", 0).insert("max_encryptions_per_version".into(), 300i64.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let config = proxy.config.clone();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let made = std::thread::scope(|scope| {
        let mut xks = proxy.xks(&fx);
        let stop = &stop;
        let worker = scope.spawn(move || {
            let mut made = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let body = encrypt_body(b"kill me", Some(b"ctx"), false).to_string();
                let path = format!("{BASE}/keys/{KEY_AES}/encrypt");
                match xks.client.try_post_signed(&xks.signer, &path, body.as_bytes()) {
                    Ok(r) if r.status == 200 => made.push(Sealed::from_response(&r)),
                    Ok(r) if r.status == 429 || r.status == 503 => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(r) => panic!("encrypt: {} {}", r.status, r.text()),
                    // The daemon was killed mid-request.
                    Err(_) => break,
                }
            }
            made
        });
        std::thread::sleep(Duration::from_millis(1500));
        let before = versions(&config, KEY_AES);
        send_signal(proxy.pid(), "KILL");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let made = worker.join().expect("encrypting thread");
        (before, made)
    });
    let (before, made) = made;
    assert!(
        made.len() > 20,
        "too few encryptions before the kill: {}",
        made.len()
    );
    drop(proxy);

    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let after = versions(&config, KEY_AES);
    for (n, _, count) in &before {
        let now = after.iter().find(|v| v.0 == *n).map(|v| v.2).unwrap_or(0);
        assert!(
            now >= *count,
            "version {n}: count went down from {count} to {now} ({before:?} -> {after:?})"
        );
    }
    let mut per_version: BTreeMap<u32, u64> = BTreeMap::new();
    for s in &made {
        *per_version.entry(version_of(s)).or_insert(0) += 1;
    }
    for (v, n) in &per_version {
        let counted = after
            .iter()
            .find(|x| x.0 == u64::from(*v))
            .map(|x| x.2)
            .unwrap_or(0);
        assert!(counted >= *n, "version {v}: {n} made, {counted} counted");
    }
    let mut xks = proxy.xks(&fx);
    for s in made.iter().step_by(7) {
        let r = xks.decrypt(KEY_AES, &s.decrypt_body(Some(b"ctx")));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The restarted daemon continues its own counters.
    let s = encrypt_retrying(&mut xks, b"after restart");
    let v = version_of(&s);
    let later = versions(&config, KEY_AES);
    let at = |list: &[(u64, String, u64)]| {
        list.iter()
            .find(|x| x.0 == u64::from(v))
            .map(|x| x.2)
            .unwrap_or(0)
    };
    assert!(at(&later) >= at(&after).max(1));
}

/// A token that refuses the encryption counters (a login that may not create data objects):
/// Encrypt fails closed with a message saying why, once per interval in the log, while Decrypt
/// (which counts nothing) keeps working; `count_encryptions = false` is the documented way out.
#[test]
fn a_token_that_refuses_the_counters_makes_encrypt_fail_closed_not_uncounted() {
    const LATER: &str = "made-after-start";
    let fx = Fixture::new();
    let (mut cfg, control) = shimmed_config(&fx);
    // Served through the pattern, not named: named keys get a first block at start.
    entry(&mut cfg, "keystores", 0).insert("key_pattern".into(), "made-*".into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let mut xks = proxy.xks(&fx);
    let sealed = xks.encrypt_ok(KEY_AES, b"counted", Some(b"ctx"));
    // A key made after the start has no reservation: its first Encrypt must reserve one on
    // the token.
    cli_ok(&proxy.config, &["keys", "create", "--id", LATER]);
    set_control(&control, "refuse_data_objects");
    for _ in 0..3 {
        let r = xks.encrypt(LATER, &encrypt_body(b"x", None, false));
        assert_eq!(r.status, 500, "{}", r.text());
        assert_eq!(r.json()["errorName"], "InternalException", "{}", r.text());
        assert!(
            r.json()["errorMessage"]
                .as_str()
                .is_some_and(|m| m.contains("encryption count")),
            "{}",
            r.text()
        );
    }
    decrypts(&mut xks, &sealed, b"counted");
    assert!(
        proxy.wait_for_log("ENCRYPTION COUNTER REFUSED"),
        "{}",
        proxy.logs()
    );
    assert_eq!(
        proxy.logs().matches("ENCRYPTION COUNTER REFUSED").count(),
        1,
        "logged once per interval, not per request"
    );
    drop(proxy);

    entry(&mut cfg, "keystores", 0).insert("count_encryptions".into(), false.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let mut xks = proxy.xks(&fx);
    let s = xks.encrypt_ok(KEY_ENCRYPT_ONLY, b"uncounted by choice", None);
    assert_eq!(version_of(&s), 1);
}

/// libfaketime's preload library: `scripts/install-deps.sh` installs it (package `faketime`).
fn faketime_library() -> String {
    ["x86_64-linux-gnu", "aarch64-linux-gnu", "i386-linux-gnu"]
        .iter()
        .map(|arch| format!("/usr/lib/{arch}/faketime/libfaketimeMT.so.1"))
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!(
                "libfaketime is not installed (Debian package faketime; scripts/install-deps.sh installs it)"
            )
        })
}

/// `rotate_after_days`: a version older than that is replaced at its next use, and the new
/// version is not. Version 1 is the key itself, whose age comes from the creation record the
/// quickstart wrote today; the second daemon runs under libfaketime two days later (wall clock
/// only, the monotonic clock is left alone) and is sent requests signed two days later.
#[test]
fn a_version_older_than_rotate_after_days_is_replaced_at_its_next_use() {
    const TWO_DAYS: Duration = Duration::from_secs(2 * 86_400);
    let faketime = faketime_library();
    let fx = Fixture::new();
    let mut cfg = fx.config();
    entry(&mut cfg, "keystores", 0).insert("rotate_after_days".into(), 1.into());

    // Today: version 1 is minutes old and stays current.
    let young = {
        let proxy = TestProxy::start_with(&fx, &cfg, &[]);
        let mut xks = proxy.xks(&fx);
        let sealed: Vec<Sealed> = (0..40)
            .map(|_| encrypt_retrying(&mut xks, b"young key"))
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        assert!(sealed.iter().all(|s| version_of(s) == 1));
        assert_eq!(
            show(&proxy.config, KEY_AES)["current_version"],
            1,
            "{}",
            proxy.logs()
        );
        sealed.into_iter().next().expect("one ciphertext")
    };

    let later = [
        ("LD_PRELOAD", faketime.as_str()),
        ("FAKETIME", "+2d"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let proxy = TestProxy::start_with(&fx, &cfg, &later);
    let mut xks = proxy.xks(&fx);
    xks.signer.time = Some(std::time::SystemTime::now() + TWO_DAYS);
    let deadline = Instant::now() + Duration::from_secs(30);
    let rotated = loop {
        let s = encrypt_retrying(&mut xks, b"two days later");
        if version_of(&s) == 2 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "version 1 (two days old, rotate_after_days = 1) was not replaced within 30 s:\n{}",
            proxy.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    decrypts(&mut xks, &young, b"young key");
    decrypts(&mut xks, &rotated, b"two days later");

    // The new version was created "now" by the daemon's clock: it is young and stays current.
    for _ in 0..40 {
        assert_eq!(version_of(&encrypt_retrying(&mut xks, b"new version")), 2);
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(version_of(&encrypt_retrying(&mut xks, b"still")), 2);
    let v = versions(&proxy.config, KEY_AES);
    assert_eq!(v.len(), 2, "exactly one automatic rotation: {v:?}");
    assert_eq!(show(&proxy.config, KEY_AES)["current_version"], 2);
}

/// After logging in, the daemon reserves a first block in the background for every key a
/// keystore names in `allowed_keys` that can encrypt, so the first Encrypt does not wait for a
/// token search under its deadline. `keys show` counts reservations (an upper bound of the
/// encryptions), so the block shows before any request; a decrypt-only key gets none.
#[test]
fn a_first_block_is_reserved_at_start_for_named_keys_that_encrypt() {
    let fx = Fixture::new();
    let proxy = TestProxy::start_with(&fx, &fx.config(), &[]);
    let counted = |key: &str| -> u64 { versions(&proxy.config, key).iter().map(|(_, _, n)| n).sum() };
    let deadline = Instant::now() + Duration::from_secs(30);
    while counted(KEY_AES) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(counted(KEY_AES), 1024, "{}", proxy.logs());
    assert_eq!(counted(KEY_ENCRYPT_ONLY), 1024, "{}", proxy.logs());
    assert_eq!(
        counted(KEY_DECRYPT_ONLY),
        0,
        "a key that cannot encrypt reserves nothing"
    );
    // The first Encrypt draws from that block: the count does not move.
    let mut xks = proxy.xks(&fx);
    let s = xks.encrypt_ok(KEY_AES, b"first", Some(b"ctx"));
    assert_eq!(version_of(&s), 1);
    assert_eq!(counted(KEY_AES), 1024);
}

/// On a token whose searches are slow (SoftHSM2's file store takes about 35 ms per search with
/// 2,000 objects; here 100 ms each, through the fault shim), a start-up reservation takes
/// longer than a request's deadline. The daemon serves only once they are made: Encrypts sent
/// the moment it listens are all answered, none times out behind a reservation.
#[test]
fn encrypts_sent_as_soon_as_the_daemon_listens_do_not_time_out_behind_start_up_reservations() {
    let fx = Fixture::new();
    let (cfg, control) = shimmed_config(&fx);
    set_control(&control, "slow_find 100");
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let senders: Vec<_> = (0..4)
            .map(|i| {
                let mut xks = proxy.xks(&fx);
                scope.spawn(move || {
                    let r = xks.encrypt(
                        KEY_AES,
                        &encrypt_body(format!("early {i}").as_bytes(), None, false),
                    );
                    (r.status, r.text())
                })
            })
            .collect();
        senders.into_iter().map(|s| s.join().expect("sender")).collect()
    });
    for (status, text) in &answers {
        assert_eq!(*status, 200, "an Encrypt sent at start: {text}\n{}", proxy.logs());
    }
}

/// A key served only through `key_pattern` is not reserved for at start (a pattern may match
/// thousands), so on a token with slow searches its first Encrypt makes the reservation under
/// its deadline and times out. After a restart, the keys this instance reserved for before
/// are reserved at start like named ones: their first Encrypt is answered.
#[test]
fn pattern_keys_used_before_a_restart_are_reserved_at_start() {
    const USED: &str = "served-by-pattern";
    let fx = Fixture::new();
    let (mut cfg, control) = shimmed_config(&fx);
    entry(&mut cfg, "keystores", 0).insert("key_pattern".into(), "served-*".into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    cli_ok(&proxy.config, &["keys", "create", "--id", USED]);
    let mut xks = proxy.xks(&fx);
    xks.encrypt_ok(USED, b"first use", None);
    drop(xks);
    drop(proxy);
    set_control(&control, "slow_find 100");
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let mut xks = proxy.xks(&fx);
    let r = xks.encrypt(USED, &encrypt_body(b"after the restart", None, false));
    assert_eq!(
        r.status,
        200,
        "first Encrypt after the restart: {}\n{}",
        r.text(),
        proxy.logs()
    );
    let counted: u64 = versions(&proxy.config, USED).iter().map(|(_, _, n)| n).sum();
    assert_eq!(
        counted,
        2 * 1024,
        "one block before the restart, one reserved at start"
    );
}

/// KMS reads a key's metadata when the key is created in KMS, before its first Encrypt: the
/// daemon reserves the key's first block then, in the background, so that the first Encrypt of
/// a key served only through `key_pattern` does not reserve on a slow token under its own
/// deadline (SoftHSM2 with 1,000 keys takes about 150 ms; emulated here by 100 ms searches).
#[test]
fn get_key_metadata_reserves_ahead_so_a_new_pattern_keys_first_encrypt_is_not_late() {
    const FRESH: &str = "served-fresh";
    let fx = Fixture::new();
    let (mut cfg, control) = shimmed_config(&fx);
    entry(&mut cfg, "keystores", 0).insert("key_pattern".into(), "served-*".into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    cli_ok(&proxy.config, &["keys", "create", "--id", FRESH]);
    set_control(&control, "slow_find 100");
    let mut xks = proxy.xks(&fx);
    let md = xks.metadata(FRESH);
    assert_eq!(md.status, 200, "{}", md.text());
    let counted = || -> u64 { versions(&proxy.config, FRESH).iter().map(|(_, _, n)| n).sum() };
    assert!(
        wait_until(Duration::from_secs(20), || counted() > 0),
        "no block reserved after GetKeyMetadata: {}",
        proxy.logs()
    );
    let r = xks.encrypt(FRESH, &encrypt_body(b"first use", None, false));
    assert_eq!(r.status, 200, "first Encrypt: {}\n{}", r.text(), proxy.logs());
    // A key that may not encrypt gets no counter.
    cli_ok(
        &proxy.config,
        &["keys", "create", "--id", "served-decrypt", "--usage", "decrypt"],
    );
    assert_eq!(xks.metadata("served-decrypt").status, 200);
    std::thread::sleep(Duration::from_secs(1));
    let none: u64 = versions(&proxy.config, "served-decrypt")
        .iter()
        .map(|(_, _, n)| n)
        .sum();
    assert_eq!(none, 0, "a decrypt-only key must not be counted");
}

/// The budget of the current version used up on a token that will not make keys
/// (`CKM_AES_KEY_GEN` hidden by the shim): Encrypt never passes the budget, is refused with
/// the documented `InvalidStateException` once no version can be created, says why in the log
/// at most once per interval however often KMS retries, and Decrypt keeps working. Once the
/// token makes keys again, `keys rotate` (the action the message names) restores Encrypt.
#[test]
fn a_used_up_budget_that_no_new_version_can_replace_refuses_encrypt_until_an_operator_rotates() {
    const BUDGET: u64 = 32;
    let fx = Fixture::new();
    let (mut cfg, control) = shimmed_config(&fx);
    own_budget(
        &mut cfg,
        KEY_AES,
        &[("max_encryptions_per_version", (BUDGET as i64).into())],
    );
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let mut xks = proxy.xks(&fx);
    set_control(&control, "hide_mechanism 0x1080");

    let mut sealed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let refusal = loop {
        let pt = format!("budget {}", sealed.len()).into_bytes();
        let r = xks.encrypt(KEY_AES, &encrypt_body(&pt, Some(b"ctx"), false));
        match r.status {
            200 => sealed.push((Sealed::from_response(&r), pt)),
            // 429: a rotation is being tried; 503: the token was slow on a loaded machine.
            429 | 503 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(40)),
            _ => break r,
        }
        assert!(
            sealed.len() as u64 <= BUDGET,
            "{} encryptions under a budget of {BUDGET}: {:?}",
            sealed.len(),
            versions(&proxy.config, KEY_AES)
        );
    };
    assert_eq!(refusal.status, 400, "{}", refusal.text());
    assert_eq!(
        refusal.json()["errorName"],
        "InvalidStateException",
        "{}",
        refusal.text()
    );
    assert!(
        refusal.json()["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("no new version could be created")),
        "{}",
        refusal.text()
    );
    assert!(
        sealed.len() as u64 >= BUDGET / 2,
        "only {} of the {BUDGET} encryptions were served before the refusal",
        sealed.len()
    );
    assert!(sealed.iter().all(|(s, _)| version_of(s) == 1));

    // KMS retries: the refusals repeat, the ERROR line does not.
    for _ in 0..50 {
        let r = xks.encrypt(KEY_AES, &encrypt_body(b"again", None, false));
        assert!(matches!(r.status, 400 | 429), "{}", r.text());
    }
    assert!(
        proxy.wait_for_log("ENCRYPTION BUDGET EXHAUSTED"),
        "{}",
        proxy.logs()
    );
    let lines = proxy.logs().matches("ENCRYPTION BUDGET EXHAUSTED").count();
    assert!(
        lines <= 2,
        "{lines} ERROR lines for one exhausted version in a few seconds"
    );
    for (s, pt) in sealed.iter().step_by(8) {
        decrypts(&mut xks, s, pt);
    }

    set_control(&control, "none");
    let out = cli_ok(
        &proxy.config,
        &["keys", "rotate", KEY_AES, "--reason", "budget used up"],
    );
    assert!(out.contains("version"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let r = xks.encrypt(KEY_AES, &encrypt_body(b"after rotate", Some(b"ctx"), false));
        if r.status == 200 || Instant::now() >= deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(after.status, 200, "Encrypt after keys rotate: {}", after.text());
    let s = Sealed::from_response(&after);
    assert!(version_of(&s) >= 2, "still version {}", version_of(&s));
    decrypts(&mut xks, &s, b"after rotate");
}

/// `keys rotate` through one instance makes the new version current on another instance
/// sharing the token (its 0.5 s poll of the versions): its next Encrypts carry the new number,
/// and each instance decrypts the other's ciphertext of either version.
#[test]
fn a_rotation_through_one_instance_becomes_current_on_another() {
    /// The design target is one second (the 0.5 s poll); the margin absorbs a loaded CI machine.
    const REACH: Duration = Duration::from_secs(3);
    let fx = Fixture::new();
    let cfg = fx.config();
    let a = TestProxy::start_with(&fx, &cfg, &[]);
    let b = TestProxy::start_with(&fx, &second_config(&fx, &cfg), &[]);
    let (mut xa, mut xb) = (a.xks(&fx), b.xks(&fx));
    let old = encrypt_retrying(&mut xb, b"before");
    assert_eq!(version_of(&old), 1);

    let out = cli_ok(
        &a.config,
        &["keys", "rotate", KEY_AES, "--reason", "fleet rotation"],
    );
    assert!(out.contains("version 2"), "{out}");
    let t = Instant::now();
    let mut new = encrypt_retrying(&mut xb, b"after");
    while version_of(&new) != 2 && t.elapsed() < REACH {
        std::thread::sleep(Duration::from_millis(20));
        new = encrypt_retrying(&mut xb, b"after");
    }
    assert_eq!(
        version_of(&new),
        2,
        "instance B still encrypts under version 1 after {:?}",
        t.elapsed()
    );
    eprintln!(
        "the rotation through instance A was current on instance B after {:?}",
        t.elapsed()
    );
    decrypts(&mut xa, &old, b"before");
    decrypts(&mut xa, &new, b"after");
    decrypts(&mut xb, &old, b"before");
}
