//! Mutual TLS: client certificates from the configured CA carrying an allowed name are served;
//! anything else is refused in the handshake.

use crate::certs::*;
use crate::common::*;
use crate::raw::{request_head, RawTls};
use crate::{rewrite_config, signed_health};
use rcgen::ExtendedKeyUsagePurpose;

/// The name KMS presents in its client certificate (one region).
pub const KMS_CLIENT_NAME: &str = "cks.kms.eu-west-1.amazonaws.com";

/// A daemon requiring client certificates from `client_ca` carrying [`KMS_CLIENT_NAME`].
pub struct Mtls {
    pub proxy: TestProxy,
    pub client_ca: Ca,
    pub fx: Fixture,
}

impl Mtls {
    pub fn start() -> Mtls {
        Self::start_trusting(Ca::new("KMS client CA (test)"))
    }

    /// The daemon's `tls.client_ca` file holds `client_ca`'s own certificate only.
    pub fn start_trusting(client_ca: Ca) -> Mtls {
        let fx = Fixture::new();
        let ca_path = fx.path("tls/kms-client-ca.pem");
        client_ca.write_pem(&ca_path);
        let mut cfg = fx.config();
        let tls = section(&mut cfg, "tls");
        tls.insert("client_ca".into(), ca_path.display().to_string().into());
        tls.insert("client_names".into(), toml_strings(&[KMS_CLIENT_NAME]));
        let proxy = TestProxy::start_with(&fx, &cfg, &[]);
        Mtls { proxy, client_ca, fx }
    }

    pub fn client_cert(&self, cn: Option<&str>, sans: &[&str], expired: bool) -> Leaf {
        self.client_ca.issue(LeafSpec {
            cn,
            sans,
            eku: ExtendedKeyUsagePurpose::ClientAuth,
            expired,
        })
    }

    /// The client is served over both TLS 1.3 and TLS 1.2: a signed health request → 200.
    #[track_caller]
    pub fn assert_served(&self, cert: &Leaf) {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let tls = client_tls(&self.proxy.ca, version, Some(cert));
            let mut client = self
                .proxy
                .client_with(tls)
                .unwrap_or_else(|e| panic!("{version:?}: handshake refused: {e}"));
            let r = signed_health(&mut client, &self.fx.signer())
                .unwrap_or_else(|e| panic!("{version:?}: request failed: {e}"));
            assert_ok(&r);
        }
    }

    /// The client is refused during the TLS handshake and never gets an HTTP response. Over
    /// TLS 1.2 the server checks the certificate before its Finished, so the handshake itself
    /// fails with the server's alert; over TLS 1.3 the client finishes first, so either the
    /// handshake or the first request fails. `alert` is the alert the server sends (TLS 1.2).
    #[track_caller]
    pub fn assert_refused(&self, cert: Option<&Leaf>, alert: &str) {
        let tls12 = client_tls(&self.proxy.ca, &rustls::version::TLS12, cert);
        match self.proxy.client_with(tls12) {
            Ok(_) => panic!("TLS 1.2: the handshake completed"),
            Err(e) => assert!(
                e.to_string().contains(&format!("received fatal alert: {alert}")),
                "TLS 1.2: expected the server's {alert} alert, got: {e}"
            ),
        }
        let tls13 = client_tls(&self.proxy.ca, &rustls::version::TLS13, cert);
        if let Ok(mut client) = self.proxy.client_with(tls13) {
            if let Ok(r) = signed_health(&mut client, &self.fx.signer()) {
                panic!("TLS 1.3: got an HTTP response {}: {}", r.status, r.text());
            }
        }
    }
}

#[test]
fn mtls_client_certificate_from_the_ca_with_the_allowed_common_name_is_served() {
    let m = Mtls::start();
    let cert = m.client_cert(Some(KMS_CLIENT_NAME), &[], false);
    m.assert_served(&cert);
}

#[test]
fn mtls_client_certificate_with_the_allowed_name_as_dns_san_and_another_common_name_is_served() {
    let m = Mtls::start();
    let cert = m.client_cert(Some("KMS client (test)"), &[KMS_CLIENT_NAME], false);
    m.assert_served(&cert);
}

/// KMS's client certificate comes from a public CA through intermediates: a chain sent with
/// its intermediate, up to the configured root, is served; without the intermediate it is not.
#[test]
fn mtls_client_certificate_chaining_through_an_intermediate_to_the_configured_root_is_served() {
    let root = Ca::root("KMS client root CA (test)", 1);
    let intermediate = root.intermediate("KMS client intermediate CA (test)");
    let m = Mtls::start_trusting(root);
    let mut cert = intermediate.issue(LeafSpec {
        cn: Some(KMS_CLIENT_NAME),
        sans: &[KMS_CLIENT_NAME],
        eku: ExtendedKeyUsagePurpose::ClientAuth,
        expired: false,
    });
    assert_eq!(cert.chain().len(), 2, "leaf + intermediate");
    m.assert_served(&cert);
    cert.intermediates.clear();
    m.assert_refused(Some(&cert), "UnknownCA");
}

#[test]
fn mtls_certificate_without_the_client_authentication_usage_is_refused_in_the_handshake() {
    let m = Mtls::start();
    let cert = m.client_ca.issue(LeafSpec {
        cn: Some(KMS_CLIENT_NAME),
        sans: &[KMS_CLIENT_NAME],
        eku: ExtendedKeyUsagePurpose::ServerAuth,
        expired: false,
    });
    m.assert_refused(Some(&cert), "UnsupportedCertificate");
}

#[test]
fn mtls_client_certificate_from_another_ca_is_refused_in_the_handshake() {
    let m = Mtls::start();
    let spec = || LeafSpec {
        cn: Some(KMS_CLIENT_NAME),
        sans: &[KMS_CLIENT_NAME],
        eku: ExtendedKeyUsagePurpose::ClientAuth,
        expired: false,
    };
    // An unrelated CA.
    let cert = Ca::new("Some other CA (test)").issue(spec());
    m.assert_refused(Some(&cert), "UnknownCA");
    // An impostor CA with the configured CA's name: its signature does not verify.
    let cert = Ca::new("KMS client CA (test)").issue(spec());
    m.assert_refused(Some(&cert), "DecryptError");
    // A correct certificate is still served afterwards.
    m.assert_served(&m.client_cert(Some(KMS_CLIENT_NAME), &[], false));
}

#[test]
fn mtls_client_certificate_without_an_allowed_name_is_refused_in_the_handshake() {
    let m = Mtls::start();
    let cert = m.client_cert(
        Some("cks.kms.us-east-1.amazonaws.com"),
        &[
            "cks.kms.eu-west-1.amazonaws.com.evil.example",
            "kms.eu-west-1.amazonaws.com",
        ],
        false,
    );
    m.assert_refused(Some(&cert), "BadCertificate");
    assert!(
        m.proxy
            .wait_for_log("client certificate name not in tls.client_names"),
        "the refusal is not logged: {}",
        m.proxy.logs()
    );
}

#[test]
fn mtls_expired_client_certificate_with_the_allowed_name_is_refused_in_the_handshake() {
    let m = Mtls::start();
    let cert = m.client_cert(Some(KMS_CLIENT_NAME), &[KMS_CLIENT_NAME], true);
    m.assert_refused(Some(&cert), "CertificateExpired");
}

#[test]
fn mtls_client_without_a_certificate_is_refused_in_the_handshake() {
    let m = Mtls::start();
    m.assert_refused(None, "CertificateRequired");
    // Unauthenticated endpoints are behind the handshake too.
    let tls = client_tls(&m.proxy.ca, &rustls::version::TLS13, None);
    if let Ok(mut c) = m.proxy.client_with(tls) {
        let headers = vec![("host".to_owned(), c.authority.clone())];
        if let Ok(r) = c.try_send_raw("GET", "/ping", &headers, Vec::new()) {
            panic!("GET /ping without a client certificate answered {}", r.status);
        }
    }
}

/// Another region's KMS client name, allowed next to [`KMS_CLIENT_NAME`] until a reload drops it.
const OTHER_CLIENT_NAME: &str = "cks.kms.us-east-1.amazonaws.com";

/// The fixture config trusting `ca_path` for `names`.
fn mtls_config(fx: &Fixture, ca_path: &std::path::Path, names: &[&str]) -> toml::Table {
    let mut cfg = fx.config();
    let tls = section(&mut cfg, "tls");
    tls.insert("client_ca".into(), ca_path.display().to_string().into());
    tls.insert("client_names".into(), toml_strings(names));
    cfg
}

/// Applies `cfg` with `xks-bridge reload` (which returns once the daemon has swapped it).
fn reload_to(proxy: &TestProxy, cfg: &toml::Table) {
    rewrite_config(proxy, cfg);
    let (code, out, err) = cli(&proxy.config, &["reload"]);
    assert_eq!(code, Some(0), "reload: {out}\n{err}");
}

fn raw_ping(c: &mut RawTls) -> Result<u16, String> {
    let head = request_head("GET", "/ping", &c.authority.clone(), &[]);
    c.send(head.as_bytes()).map_err(|e| e.to_string())?;
    c.read_response().map(|r| r.status)
}

/// With mTLS, sessions still resume (KMS reconnects stay cheap), and a resumed session is
/// checked against the client trust in force: once a reload drops the client's name, its
/// saved session no longer gets it served, over TLS 1.3 and TLS 1.2.
#[test]
fn mtls_sessions_resume_but_not_for_a_client_whose_name_a_reload_removed() {
    let fx = Fixture::new();
    let client_ca = Ca::new("KMS client CA (test)");
    let ca_path = fx.path("tls/kms-client-ca.pem");
    client_ca.write_pem(&ca_path);
    let cfg = mtls_config(&fx, &ca_path, &[KMS_CLIENT_NAME, OTHER_CLIENT_NAME]);
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let cert = client_ca.issue(LeafSpec {
        cn: Some(OTHER_CLIENT_NAME),
        sans: &[],
        eku: ExtendedKeyUsagePurpose::ClientAuth,
        expired: false,
    });
    // One client config per version: its resumption store carries the sessions.
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let configs: Vec<_> = versions
        .iter()
        .map(|v| client_tls(&proxy.ca, v, Some(&cert)))
        .collect();
    for (v, c) in versions.iter().zip(&configs) {
        let mut first = RawTls::connect(proxy.addr, c.clone()).expect("first connection");
        assert_eq!(raw_ping(&mut first), Ok(200), "{v:?}");
        let mut second = RawTls::connect(proxy.addr, c.clone()).expect("second connection");
        assert_eq!(raw_ping(&mut second), Ok(200), "{v:?}: resumed session refused");
        assert_eq!(
            second.stream.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{v:?}: the second connection did not resume the first one's session"
        );
    }

    reload_to(&proxy, &mtls_config(&fx, &ca_path, &[KMS_CLIENT_NAME]));
    for (v, c) in versions.iter().zip(&configs) {
        if let Ok(mut conn) = RawTls::connect(proxy.addr, c.clone()) {
            let kind = conn.stream.conn.handshake_kind();
            if let Ok(status) = raw_ping(&mut conn) {
                panic!("{v:?}: served {status} to a client no longer allowed (handshake {kind:?})");
            }
        }
    }
}

/// A resumed session skips rustls' certificate verifier; the server checks the chain again,
/// so a session made while the client certificate was valid is not served once it expired.
#[test]
fn mtls_session_made_before_the_client_certificate_expired_is_not_resumed_after() {
    let m = Mtls::start();
    let not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(5);
    let cert = m.client_ca.issue_until(
        LeafSpec {
            cn: Some(KMS_CLIENT_NAME),
            sans: &[],
            eku: ExtendedKeyUsagePurpose::ClientAuth,
            expired: false,
        },
        not_after,
    );
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let configs: Vec<_> = versions
        .iter()
        .map(|v| client_tls(&m.proxy.ca, v, Some(&cert)))
        .collect();
    for (v, c) in versions.iter().zip(&configs) {
        let mut first = RawTls::connect(m.proxy.addr, c.clone()).expect("first connection");
        assert_eq!(raw_ping(&mut first), Ok(200), "{v:?}");
        let mut second = RawTls::connect(m.proxy.addr, c.clone()).expect("second connection");
        assert_eq!(raw_ping(&mut second), Ok(200), "{v:?}: resumed session refused");
        assert_eq!(
            second.stream.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{v:?}: the second connection did not resume the first one's session"
        );
    }
    // Certificate times have one-second resolution: wait until the end of validity is behind.
    let expired_at = std::time::SystemTime::UNIX_EPOCH
        + std::time::Duration::from_secs(not_after.unix_timestamp() as u64 + 2);
    while std::time::SystemTime::now() < expired_at {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for (v, c) in versions.iter().zip(&configs) {
        if let Ok(mut conn) = RawTls::connect(m.proxy.addr, c.clone()) {
            let kind = conn.stream.conn.handshake_kind();
            if let Ok(status) = raw_ping(&mut conn) {
                panic!("{v:?}: served {status} with an expired client certificate (handshake {kind:?})");
            }
        }
    }
    // Refused by the re-check of the resumed session, not by a fresh handshake.
    assert!(
        wait_until(WAIT, || m
            .proxy
            .logs()
            .matches("resumed TLS session refused")
            .count()
            >= 2),
        "{}",
        m.proxy.logs()
    );
}

/// A reload that changes the client trust closes the open connections it would refuse and
/// keeps the others: first dropping one client's name, then replacing the client CA.
#[test]
fn reload_closes_open_connections_of_clients_the_new_trust_refuses_and_keeps_the_rest() {
    let fx = Fixture::new();
    let client_ca = Ca::new("KMS client CA (test)");
    let ca_path = fx.path("tls/kms-client-ca.pem");
    client_ca.write_pem(&ca_path);
    let cfg = mtls_config(&fx, &ca_path, &[KMS_CLIENT_NAME, OTHER_CLIENT_NAME]);
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let leaf = |cn| {
        client_ca.issue(LeafSpec {
            cn: Some(cn),
            sans: &[],
            eku: ExtendedKeyUsagePurpose::ClientAuth,
            expired: false,
        })
    };
    let (kept_cert, dropped_cert) = (leaf(KMS_CLIENT_NAME), leaf(OTHER_CLIENT_NAME));
    let connect = |cert: &Leaf| {
        let tls = client_tls(&proxy.ca, &rustls::version::TLS13, Some(cert));
        proxy.client_with(tls).expect("mTLS handshake")
    };
    let signer = fx.signer();
    let (mut kept, mut dropped) = (connect(&kept_cert), connect(&dropped_cert));
    assert_ok(&signed_health(&mut kept, &signer).expect("kept client served"));
    assert_ok(&signed_health(&mut dropped, &signer).expect("dropped client served"));

    reload_to(&proxy, &mtls_config(&fx, &ca_path, &[KMS_CLIENT_NAME]));
    assert!(
        proxy.wait_for_log("client no longer trusted after reload"),
        "{}",
        proxy.logs()
    );
    if let Ok(r) = signed_health(&mut dropped, &signer) {
        panic!(
            "the connection of a client no longer allowed was served: {}",
            r.status
        );
    }
    assert_ok(&signed_health(&mut kept, &signer).expect("still-allowed client on its open connection"));

    // A new client CA: the remaining client's chain no longer verifies, its connection closes.
    let new_ca = Ca::new("Replacement KMS client CA (test)");
    let new_ca_path = fx.path("tls/kms-client-ca-2.pem");
    new_ca.write_pem(&new_ca_path);
    reload_to(&proxy, &mtls_config(&fx, &new_ca_path, &[KMS_CLIENT_NAME]));
    let closed = wait_until(WAIT, || signed_health(&mut kept, &signer).is_err());
    assert!(
        closed,
        "a client of the replaced CA is still served:\n{}",
        proxy.logs()
    );
}

#[test]
fn check_config_refuses_client_ca_without_client_names_and_names_without_ca() {
    let fx = Fixture::new();
    let ca = Ca::new("KMS client CA (test)");
    let ca_path = fx.path("tls/kms-client-ca.pem");
    ca.write_pem(&ca_path);

    let mut cfg = fx.config();
    section(&mut cfg, "tls").insert("client_ca".into(), ca_path.display().to_string().into());
    let (code, out, err) = cli(&fx.write_config(&cfg), &["check-config"]);
    assert_eq!(code, Some(64), "client_ca without client_names: {out}\n{err}");
    assert!(err.contains("tls.client_names"), "stderr: {err}");

    let mut cfg = fx.config();
    section(&mut cfg, "tls").insert("client_names".into(), toml_strings(&[KMS_CLIENT_NAME]));
    let (code, out, err) = cli(&fx.write_config(&cfg), &["check-config"]);
    assert_eq!(code, Some(64), "client_names without client_ca: {out}\n{err}");
    assert!(err.contains("tls.client_names"), "stderr: {err}");

    // Both together are valid.
    let mut cfg = fx.config();
    let tls = section(&mut cfg, "tls");
    tls.insert("client_ca".into(), ca_path.display().to_string().into());
    tls.insert("client_names".into(), toml_strings(&[KMS_CLIENT_NAME]));
    let (code, out, err) = cli(&fx.write_config(&cfg), &["check-config"]);
    assert_eq!(code, Some(0), "client_ca with client_names: {out}\n{err}");
}
