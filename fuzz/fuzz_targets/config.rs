//! `config`: arbitrary TOML through `toml::from_str::<Config>` and `Config::validate`, the
//! library path of `Config::load` without reading a file (validation only looks at the file
//! system: `is_file`/`is_dir` of named paths and `/etc/group`).
//!
//! Invariants:
//! - nothing panics;
//! - a validation error is non-empty and starts with the path of a top-level section
//!   (`server.`, `tls`, `limits.`, `tokens`, `keystores`, `policy.`, `audit.`, `metrics.`,
//!   `state.`, `admin.`), as the module promises;
//! - a configuration that validates is usable: limits within the spec bounds, every keystore
//!   names an existing token and has credentials, prefixes are unique, the policy compiles, and
//!   routing works for it: each keystore's health path and each of its allowed keys' encrypt
//!   path routes to that keystore (and key), never to another one.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use xks_bridge::config::{Config, SPEC_MIN_AAD, SPEC_MIN_PLAINTEXT};
use xks_bridge::server::routes::{route, Operation};

const SECTIONS: [&str; 10] = [
    "server.",
    "tls",
    "limits.",
    "tokens",
    "keystores",
    "policy.",
    "audit.",
    "metrics.",
    "state.",
    "admin.",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = toml::from_str::<Config>(text) else {
        return;
    };
    match cfg.validate() {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                SECTIONS.iter().any(|s| msg.starts_with(s)),
                "validation message does not name its field: {msg:?}"
            );
        }
        Ok(()) => valid(&cfg),
    }
});

fn valid(cfg: &Config) {
    assert!(cfg.limits.max_plaintext_bytes >= SPEC_MIN_PLAINTEXT);
    assert!((SPEC_MIN_AAD..=65535).contains(&cfg.limits.max_aad_bytes));
    assert!(!cfg.server.listen.is_empty() && cfg.server.fleet_size >= 1);
    assert!(!cfg.tokens.is_empty() && !cfg.keystores.is_empty());
    if let Some(p) = &cfg.policy {
        assert!(p.compile().is_ok());
    }
    let bases: Vec<String> = cfg.keystores.iter().map(|k| k.api_base()).collect();
    for (i, k) in cfg.keystores.iter().enumerate() {
        assert!(cfg.token(&k.token).is_some());
        assert!(!k.credentials.is_empty());
        assert!(bases[i].len() <= 128);
        assert!(
            !cfg.keystores[..i].iter().any(|o| o.uri_prefix == k.uri_prefix),
            "duplicate prefix accepted"
        );
        let health = format!("{}/health", bases[i]);
        let r = route(&bases, &Method::POST, &health, None)
            .unwrap_or_else(|e| panic!("health of keystore {i} does not route: {e:?}"));
        assert_eq!((r.keystore, r.op), (i, Operation::Health));
        for key in &k.allowed_keys {
            let path = format!("{}/keys/{key}/encrypt", bases[i]);
            let r = route(&bases, &Method::POST, &path, None)
                .unwrap_or_else(|e| panic!("allowed key {key:?} of keystore {i} does not route: {e:?}"));
            assert_eq!(
                (r.keystore, r.op, r.key_id),
                (i, Operation::Encrypt, key.as_str())
            );
        }
    }
}
