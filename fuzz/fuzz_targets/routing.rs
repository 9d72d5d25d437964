//! `routing`: `server::routes::route` on an arbitrary method, path and query, against a few
//! fixed API bases (nested ones included) plus any extra URI prefixes the input names.
//!
//! Input: line 1 is the method, line 2 the request target (`path[?query]`), further lines are
//! extra `uri_prefix` values (kept only when the config rules would accept them).
//!
//! Invariants:
//! - nothing panics;
//! - a successful route has method POST and no query; its key id is a valid external key id
//!   (1-128 of `A-Za-z0-9-._`, checked here independently) or empty for health; and the path is
//!   exactly `base + "/health"` or `base + "/keys/" + key + "/" + op` for the routed keystore;
//! - the result equals an independent reference: among the bases that yield an operation path,
//!   the longest; MethodNotAllowed only for a routable path with another method;
//!   InvalidUriPath otherwise (or with a query).
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use xks_bridge::error::Error;
use xks_bridge::server::routes::{route, Operation};

const FIXED_PREFIXES: [&str; 5] = ["", "/a", "/a/b", "/q/kms/xks/v1/nested", "/tenant-a"];

/// `uri_prefix` rules of the configuration (empty, or `/`-separated non-empty segments of
/// `A-Za-z0-9-_`), and an API base of at most 128 characters.
fn valid_prefix(p: &str) -> bool {
    p.is_empty()
        || (p.starts_with('/')
            && !p.ends_with('/')
            && !p.contains("//")
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_'))
            && p.len() + "/kms/xks/v1".len() <= 128)
}

fn valid_key_id(k: &str) -> bool {
    (1..=128).contains(&k.len())
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

fn suffix(op: Operation, key: &str) -> String {
    match op {
        Operation::Health => "/health".to_owned(),
        Operation::Metadata => format!("/keys/{key}/metadata"),
        Operation::Encrypt => format!("/keys/{key}/encrypt"),
        Operation::Decrypt => format!("/keys/{key}/decrypt"),
    }
}

/// Independent reading of an operation path: `/health` or `/keys/<id>/<op>`.
fn reference_op(rest: &str) -> Option<(Operation, &str)> {
    if rest == "/health" {
        return Some((Operation::Health, ""));
    }
    let tail = rest.strip_prefix("/keys/")?;
    let mut parts = tail.split('/');
    let (key, op, extra) = (parts.next()?, parts.next()?, parts.next());
    if extra.is_some() || !valid_key_id(key) {
        return None;
    }
    let op = match op {
        "metadata" => Operation::Metadata,
        "encrypt" => Operation::Encrypt,
        "decrypt" => Operation::Decrypt,
        _ => return None,
    };
    Some((op, key))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let Some(method) = lines.next() else { return };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let target = lines.next().unwrap_or("");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut prefixes: Vec<String> = FIXED_PREFIXES.iter().map(|p| p.to_string()).collect();
    for extra in lines.take(4) {
        if valid_prefix(extra) && !prefixes.iter().any(|p| p == extra) {
            prefixes.push(extra.to_owned());
        }
    }
    let bases: Vec<String> = prefixes.iter().map(|p| format!("{p}/kms/xks/v1")).collect();

    // Reference: every base the path starts with and whose remainder is an operation path.
    let candidates: Vec<(usize, Operation, &str)> = bases
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            path.strip_prefix(b.as_str())
                .and_then(reference_op)
                .map(|(op, k)| (i, op, k))
        })
        .collect();
    let best = candidates.iter().max_by_key(|(i, _, _)| bases[*i].len());
    if let Some((i, _, _)) = best {
        let longest = bases[*i].len();
        assert_eq!(
            candidates
                .iter()
                .filter(|(j, _, _)| bases[*j].len() == longest)
                .count(),
            1,
            "two keystores claim {path:?}"
        );
    }

    match route(&bases, &method, path, query) {
        Ok(r) => {
            assert_eq!(method, Method::POST);
            assert!(query.is_none());
            if r.op == Operation::Health {
                assert!(r.key_id.is_empty());
            } else {
                assert!(valid_key_id(r.key_id), "invalid key id {:?} routed", r.key_id);
            }
            assert_eq!(path, format!("{}{}", bases[r.keystore], suffix(r.op, r.key_id)));
            assert_eq!(
                best,
                Some(&(r.keystore, r.op, r.key_id)),
                "route disagrees with the reference"
            );
        }
        Err(Error::MethodNotAllowed) => {
            assert!(best.is_some(), "405 for a path that routes nowhere: {path:?}");
            assert_ne!(method, Method::POST);
        }
        Err(Error::InvalidUriPath) => {
            assert!(
                best.is_none() || (method == Method::POST && query.is_some()),
                "404 for a routable POST without query: {path:?}"
            );
        }
        Err(e) => panic!("route produced {e:?}"),
    }
});
