//! Per-keystore quotas (checklist 37).

use crate::common::*;
use crate::rewrite_config;
use std::time::{Duration, Instant};

/// `rate_limit` as a TOML table.
fn quota(requests_per_second: f64, burst: f64) -> toml::Value {
    let mut q = toml::Table::new();
    q.insert("requests_per_second".into(), requests_per_second.into());
    q.insert("burst".into(), burst.into());
    toml::Value::Table(q)
}

/// Sends `n` signed requests as fast as possible, alternating GetHealthStatus and
/// GetKeyMetadata (the quota covers every operation). Returns the responses and how long they
/// took.
fn burst_of(xks: &mut Xks, n: usize) -> (Vec<Resp>, Duration) {
    let start = Instant::now();
    let responses = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                xks.health()
            } else {
                xks.metadata(KEY_AES)
            }
        })
        .collect();
    (responses, start.elapsed())
}

/// The first `burst` responses are 200, the others 200 or 429 ThrottlingException, and no more
/// succeed than a full bucket plus what `rate` refills in the time taken.
#[track_caller]
fn assert_throttled(responses: &[Resp], elapsed: Duration, burst: u64, rate: u64) {
    for (i, r) in responses.iter().enumerate() {
        if (i as u64) < burst {
            assert_ok(r);
        } else if r.status != 200 {
            assert_error(r, 429, "ThrottlingException");
        }
    }
    let ok = responses.iter().filter(|r| r.status == 200).count() as u64;
    let allowed = burst + rate * elapsed.as_secs();
    assert!(
        ok <= allowed,
        "{ok} of {} requests succeeded in {elapsed:?} (burst {burst} at {rate}/s allows {allowed})",
        responses.len()
    );
}

/// Checklist 37.
#[test]
fn keystore_quota_throttles_requests_above_the_burst_and_spares_other_keystores() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    let mut unlimited = entry(&mut cfg, "keystores", 0).clone();
    unlimited.insert("uri_prefix".into(), "/unlimited".into());
    entry(&mut cfg, "keystores", 0).insert("rate_limit".into(), quota(1.0, 3.0));
    cfg["keystores"]
        .as_array_mut()
        .expect("keystores")
        .push(toml::Value::Table(unlimited));
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);

    // Requests that fail SigV4 are refused before the quota and do not drain it.
    let mut forged = Xks {
        client: proxy.client(),
        signer: Signer::new(&fx.access_key_id, "not-the-secret"),
        base: BASE.to_owned(),
    };
    for _ in 0..5 {
        assert_error(&forged.health(), 401, "AuthenticationFailedException");
    }

    let mut limited = proxy.xks(&fx);
    let (responses, elapsed) = burst_of(&mut limited, 10);
    assert_throttled(&responses, elapsed, 3, 1);

    // Authentication still comes first when the bucket is empty.
    assert_error(&forged.health(), 401, "AuthenticationFailedException");

    let mut other = Xks {
        client: proxy.client(),
        signer: fx.signer(),
        base: "/unlimited/kms/xks/v1".to_owned(),
    };
    for _ in 0..5 {
        assert_ok(&other.health());
        assert_ok(&other.metadata(KEY_AES));
    }
}

#[test]
fn reload_applies_a_new_keystore_quota() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let mut xks = proxy.xks(&fx);
    let (responses, _) = burst_of(&mut xks, 6);
    responses.iter().for_each(|r| {
        assert_ok(r);
    });

    let mut cfg = fx.config();
    entry(&mut cfg, "keystores", 0).insert("rate_limit".into(), quota(1.0, 2.0));
    rewrite_config(&proxy, &cfg);
    let (code, out, err) = cli(&proxy.config, &["reload"]);
    assert_eq!(code, Some(0), "reload: {out}\n{err}");

    let (responses, elapsed) = burst_of(&mut xks, 10);
    assert_throttled(&responses, elapsed, 2, 1);
}
