//! Hot reload (checklist 32), by SIGHUP and by `xks-bridge reload`: credentials, server
//! certificates and mTLS change without dropping connections or requests in flight; invalid or
//! unappliable configs are refused and the previous one keeps serving.

use crate::certs::*;
use crate::common::*;
use crate::mtls::{Mtls, KMS_CLIENT_NAME};
use crate::raw::{request_head, RawTls};
use crate::{rewrite_config, signed_health};
use rcgen::ExtendedKeyUsagePurpose;

/// A second SigV4 credential for the fixture keystore (26 characters of A-Z2-7).
const SECOND_ACCESS_KEY_ID: &str = "HARDENINGSECONDCREDENTIAL2";
const SECOND_SECRET: &str = "c2Vjb25kLWNyZWRlbnRpYWwtc2VjcmV0LTRmMWM5YTBlN2IyZA";

/// Adds a second credential (secret in `secrets/sigv4-secret-2`) to `keystores[0]`.
fn add_second_credential(fx: &Fixture, cfg: &mut toml::Table) -> Signer {
    fx.write_secret("sigv4-secret-2", SECOND_SECRET);
    let mut secret = toml::Table::new();
    secret.insert("file".into(), "secrets/sigv4-secret-2".into());
    let mut cred = toml::Table::new();
    cred.insert("access_key_id".into(), SECOND_ACCESS_KEY_ID.into());
    cred.insert("secret".into(), toml::Value::Table(secret));
    entry(cfg, "keystores", 0)["credentials"]
        .as_array_mut()
        .expect("credentials array")
        .push(toml::Value::Table(cred));
    Signer::new(SECOND_ACCESS_KEY_ID, SECOND_SECRET)
}

/// Waits (bounded) until the daemon's logs contain `needle` at least `n` times.
fn wait_for_log_count(proxy: &TestProxy, needle: &str, n: usize) -> bool {
    wait_until(WAIT, || proxy.logs().matches(needle).count() >= n)
}

/// Checklist 32: two credentials are accepted; after one is removed by SIGHUP, its requests
/// get 401 while a keep-alive connection opened before the reload keeps working for the other
/// one, and a request in flight during the reload completes.
#[test]
fn sighup_reload_removes_a_credential_without_dropping_connections_or_requests_in_flight() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    let second = add_second_credential(&fx, &mut cfg);
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);

    let mut first = proxy.xks(&fx);
    assert_ok(&first.health());
    let mut other = Xks {
        client: proxy.client(),
        signer: second.clone(),
        base: BASE.to_owned(),
    };
    assert_ok(&other.health());

    // A request in flight across the reload: head and half the body now, the rest after.
    let mut inflight = RawTls::connect(proxy.addr, tls_config(&proxy.ca, None, None, &[])).expect("connect");
    let path = format!("{BASE}/health");
    let body = health_body("in-flight", "KmsHealthCheck").to_string();
    let mut lines = vec![format!("content-length: {}", body.len())];
    for (k, v) in fx
        .signer()
        .headers("POST", &inflight.authority, &path, body.as_bytes())
    {
        lines.push(format!("{k}: {v}"));
    }
    let head = request_head("POST", &path, &inflight.authority, &lines);
    let (part1, part2) = body.as_bytes().split_at(body.len() / 2);
    inflight.send(head.as_bytes()).expect("send head");
    inflight.send(part1).expect("send first half");

    // Remove the second credential: rewrite the file in place, SIGHUP.
    rewrite_config(&proxy, &fx.config());
    send_signal(proxy.pid(), "HUP");
    assert!(
        wait_for_log_count(&proxy, "configuration reloaded", 1),
        "no reload logged: {}",
        proxy.logs()
    );
    assert!(
        proxy.logs().contains("1 keystore(s), 1 credential(s)"),
        "{}",
        proxy.logs()
    );

    // The removed credential is refused, on its existing connection and on a new one.
    assert_error(&other.health(), 401, "AuthenticationFailedException");
    let mut fresh = Xks {
        client: proxy.client(),
        signer: second,
        base: BASE.to_owned(),
    };
    assert_error(&fresh.health(), 401, "AuthenticationFailedException");

    // The connection opened before the reload serves the remaining credential (same
    // connection: `Client` never reconnects).
    assert_ok(&first.health());
    assert_ok(&first.metadata(KEY_AES));

    // The request in flight completes.
    inflight.send(part2).expect("send second half");
    let r = inflight.read_response().expect("in-flight response");
    assert_eq!(r.status, 200, "{}\n{}", r.head, String::from_utf8_lossy(&r.body));
}

#[test]
fn invalid_config_reload_is_refused_and_the_previous_configuration_keeps_serving() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    let second = add_second_credential(&fx, &mut cfg);
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let mut first = proxy.xks(&fx);
    assert_ok(&first.health());

    // Without the second credential AND with an unknown field: nothing of it may apply.
    let mut bad = fx.config();
    section(&mut bad, "server").insert("bogus_field".into(), true.into());
    rewrite_config(&proxy, &bad);

    // The CLI validates the file first: exit 64 with the reason.
    let (code, out, err) = cli(&proxy.config, &["reload"]);
    assert_eq!(code, Some(64), "reload of an invalid config: {out}\n{err}");
    assert!(
        err.contains("bogus_field"),
        "stderr does not name the field: {err}"
    );

    // SIGHUP makes the daemon read it: refused and logged.
    send_signal(proxy.pid(), "HUP");
    assert!(
        wait_for_log_count(&proxy, "reload refused", 1),
        "no refusal logged: {}",
        proxy.logs()
    );
    let logs = proxy.logs();
    assert!(
        logs.contains("bogus_field"),
        "the refusal does not say why: {logs}"
    );
    assert!(!logs.contains("configuration reloaded"), "{logs}");

    // The old configuration serves: both credentials, old and new connections.
    assert_ok(&first.health());
    assert_ok(&proxy.xks(&fx).health());
    let mut other = Xks {
        client: proxy.client(),
        signer: second,
        base: BASE.to_owned(),
    };
    assert_ok(&other.health());

    // A file that is valid but cannot be applied (a secret file that does not exist): the CLI
    // passes it on, the daemon refuses it and the CLI reports why.
    let mut unloadable = cfg.clone();
    entry(&mut unloadable, "keystores", 0)["credentials"][1]["secret"]["file"] =
        "secrets/does-not-exist".into();
    rewrite_config(&proxy, &unloadable);
    let (code, out, err) = cli(&proxy.config, &["reload"]);
    assert_eq!(code, Some(1), "reload with a missing secret file: {out}\n{err}");
    assert!(
        err.contains("keystores[0].credentials[1].secret"),
        "stderr does not name the field: {err}"
    );
    assert!(
        wait_for_log_count(&proxy, "reload refused", 2),
        "{}",
        proxy.logs()
    );
    assert_ok(&first.health());
    assert_ok(&other.health());

    // Fixing the file makes the next reload succeed.
    rewrite_config(&proxy, &fx.config());
    let (code, out, err) = cli(&proxy.config, &["reload"]);
    assert_eq!(code, Some(0), "reload: {out}\n{err}");
    assert_eq!(
        out.trim(),
        "reloaded: 1 keystore(s), 1 credential(s)",
        "stderr: {err}"
    );
    assert_error(&other.health(), 401, "AuthenticationFailedException");
    assert_ok(&first.health());
}

#[test]
fn reload_changing_the_token_label_is_refused_as_needing_a_restart() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let mut xks = proxy.xks(&fx);
    assert_ok(&xks.health());

    let mut cfg = fx.config();
    entry(&mut cfg, "tokens", 0).insert("token_label".into(), "another-token".into());
    rewrite_config(&proxy, &cfg);
    let (code, out, err) = cli(&proxy.config, &["reload"]);
    assert_eq!(code, Some(1), "reload changing a token: {out}\n{err}");
    assert!(err.contains("need a restart"), "stderr: {err}");
    assert!(
        wait_for_log_count(&proxy, "reload refused", 1),
        "{}",
        proxy.logs()
    );
    assert_ok(&xks.health());
    assert_ok(&xks.metadata(KEY_AES));
}

#[test]
fn reload_swaps_the_server_certificate_for_new_connections_and_keeps_existing_ones() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let mut old = proxy.xks(&fx);
    assert_ok(&old.health());

    let ca = Ca::new("rotated server CA (test)");
    let leaf = ca.issue(LeafSpec {
        cn: Some("localhost"),
        sans: &["localhost", "127.0.0.1"],
        eku: ExtendedKeyUsagePurpose::ServerAuth,
        expired: false,
    });
    let new_ca = fx.path("tls/rotated-ca.pem");
    ca.write_pem(&new_ca);
    std::fs::write(fx.path("tls/rotated-server.pem"), leaf.cert.pem()).expect("write cert");
    fx.write_secret("rotated-server.key", &leaf.key.serialize_pem());
    let mut cfg = fx.config();
    let tls = section(&mut cfg, "tls");
    tls.insert("certificate".into(), "tls/rotated-server.pem".into());
    tls.insert("private_key".into(), "secrets/rotated-server.key".into());
    rewrite_config(&proxy, &cfg);

    let (code, out, err) = cli(&proxy.config, &["reload"]);
    assert_eq!(code, Some(0), "reload: {out}\n{err}");
    assert_eq!(
        out.trim(),
        "reloaded: 1 keystore(s), 1 credential(s)",
        "stderr: {err}"
    );

    // New connections get the new certificate.
    let mut fresh = proxy
        .client_with(tls_config(&new_ca, None, None, &[]))
        .expect("a client trusting the new CA connects");
    assert_ok(&signed_health(&mut fresh, &fx.signer()).expect("request on the new certificate"));
    match proxy.client_with(tls_config(&proxy.ca, None, None, &[])) {
        Ok(_) => panic!("a new connection still got the old certificate"),
        Err(e) => assert!(
            e.to_string().contains("certificate"),
            "expected a certificate error: {e}"
        ),
    }
    // The connection opened before the reload keeps working.
    assert_ok(&old.health());
}

#[test]
fn reload_turning_on_mtls_requires_client_certificates_and_closes_connections_without_one() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let mut old = proxy.xks(&fx);
    assert_ok(&old.health());

    let client_ca = Ca::new("KMS client CA (test)");
    let ca_path = fx.path("tls/kms-client-ca.pem");
    client_ca.write_pem(&ca_path);
    let mut cfg = fx.config();
    let tls = section(&mut cfg, "tls");
    tls.insert("client_ca".into(), ca_path.display().to_string().into());
    tls.insert("client_names".into(), toml_strings(&[KMS_CLIENT_NAME]));
    rewrite_config(&proxy, &cfg);
    let (code, out, err) = cli(&proxy.config, &["reload"]);
    assert_eq!(code, Some(0), "reload: {out}\n{err}");

    let m = Mtls { proxy, client_ca, fx };
    m.assert_refused(None, "CertificateRequired");
    m.assert_served(&m.client_cert(Some(KMS_CLIENT_NAME), &[], false));
    // The connection opened before the reload has no client certificate: the new trust
    // refuses it, so the reload closed it rather than leaving it served.
    if let Ok(r) = signed_health(&mut old.client, &m.fx.signer()) {
        panic!(
            "a connection without a client certificate was served after mTLS was turned on: {}",
            r.status
        );
    }
}

/// TLS sessions are resumable (so KMS reconnects cheaply), but a session made before a reload
/// turned on mTLS must not be resumed to skip the client certificate.
#[test]
fn tls_sessions_from_before_a_reload_turning_on_mtls_are_not_resumed_without_a_certificate() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let ping = |c: &mut RawTls| -> Result<u16, String> {
        let head = request_head("GET", "/ping", &c.authority.clone(), &[]);
        c.send(head.as_bytes()).map_err(|e| e.to_string())?;
        c.read_response().map(|r| r.status)
    };
    // One client config per version: its resumption store carries the sessions.
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let configs: Vec<_> = versions.iter().map(|v| client_tls(&proxy.ca, v, None)).collect();
    for (v, cfg) in versions.iter().zip(&configs) {
        let mut first = RawTls::connect(proxy.addr, cfg.clone()).expect("first connection");
        assert_eq!(ping(&mut first), Ok(200), "{v:?}");
        let mut second = RawTls::connect(proxy.addr, cfg.clone()).expect("second connection");
        assert_eq!(ping(&mut second), Ok(200), "{v:?}");
        assert_eq!(
            second.stream.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{v:?}: the second connection did not resume the first one's session"
        );
    }

    let client_ca = Ca::new("KMS client CA (test)");
    let ca_path = fx.path("tls/kms-client-ca.pem");
    client_ca.write_pem(&ca_path);
    let mut cfg = fx.config();
    let tls = section(&mut cfg, "tls");
    tls.insert("client_ca".into(), ca_path.display().to_string().into());
    tls.insert("client_names".into(), toml_strings(&[KMS_CLIENT_NAME]));
    rewrite_config(&proxy, &cfg);
    let (code, out, err) = cli(&proxy.config, &["reload"]);
    assert_eq!(code, Some(0), "reload: {out}\n{err}");

    for (v, cfg) in versions.iter().zip(&configs) {
        if let Ok(mut c) = RawTls::connect(proxy.addr, cfg.clone()) {
            let kind = c.stream.conn.handshake_kind();
            if let Ok(status) = ping(&mut c) {
                panic!("{v:?}: served {status} without a client certificate (handshake {kind:?})");
            }
        }
    }
}
