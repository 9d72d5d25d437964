//! Production hardening, end to end against the real `xks-bridge serve`: mutual TLS with a
//! client-name allow-list, hot reload (SIGHUP and `xks-bridge reload`) without dropping
//! connections, per-keystore quotas, bounded memory and connections under abuse, the idle and
//! header timeouts, root refusal, the systemd unit and the sd_notify protocol.
//!
//! Certificates are made in the test with `rcgen`; everything listens on 127.0.0.1 and lives in
//! temp dirs; every wait is bounded.

mod common;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The name KMS presents in its client certificate (one region).
const KMS_CLIENT_NAME: &str = "cks.kms.eu-west-1.amazonaws.com";
/// A second SigV4 credential for the fixture keystore (26 characters of A-Z2-7).
const SECOND_ACCESS_KEY_ID: &str = "HARDENINGSECONDCREDENTIAL2";
const SECOND_SECRET: &str = "second-credential-secret-4f1c9a0e7b2d";

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// A certificate authority made for one test: a root, or an intermediate under one.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The intermediate CA certificates from this CA up to (not including) the root, which a
    /// certificate holder sends along with its own.
    intermediates: Vec<CertificateDer<'static>>,
}

/// What a leaf certificate says.
struct LeafSpec<'a> {
    /// Subject CN (none: an empty subject).
    cn: Option<&'a str>,
    /// Subject alternative names (an IP address becomes an IP SAN, anything else a dNSName).
    sans: &'a [&'a str],
    eku: ExtendedKeyUsagePurpose,
    /// Validity ends a day ago.
    expired: bool,
}

/// A certificate with its private key.
struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// Intermediate CA certificates sent after the leaf.
    intermediates: Vec<CertificateDer<'static>>,
}

fn ca_params(cn: &str, path_len: u8) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(30);
    p.not_after = now + time::Duration::days(30);
    p
}

impl Ca {
    /// A root CA that signs leaves directly.
    fn new(cn: &str) -> Ca {
        Self::root(cn, 0)
    }

    /// A root CA allowing `path_len` intermediates below it.
    fn root(cn: &str, path_len: u8) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let cert = ca_params(cn, path_len).self_signed(&key).expect("self-signed CA");
        Ca {
            cert,
            key,
            intermediates: Vec::new(),
        }
    }

    /// An intermediate CA signed by this one.
    fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let cert = ca_params(cn, 0)
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign intermediate");
        let mut intermediates = vec![cert.der().clone()];
        intermediates.extend(self.intermediates.iter().cloned());
        Ca {
            cert,
            key,
            intermediates,
        }
    }

    fn write_pem(&self, path: &Path) {
        std::fs::write(path, self.cert.pem()).expect("write CA PEM");
    }

    fn issue(&self, spec: LeafSpec) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let sans: Vec<String> = spec.sans.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(sans).expect("leaf params");
        p.distinguished_name = match spec.cn {
            Some(cn) => dn(cn),
            None => DistinguishedName::new(),
        };
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![spec.eku];
        let now = time::OffsetDateTime::now_utc();
        if spec.expired {
            p.not_before = now - time::Duration::days(10);
            p.not_after = now - time::Duration::days(1);
        } else {
            p.not_before = now - time::Duration::days(1);
            p.not_after = now + time::Duration::days(10);
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign leaf");
        Leaf {
            cert,
            key,
            intermediates: self.intermediates.clone(),
        }
    }
}

impl Leaf {
    /// The leaf followed by its intermediates.
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        let mut chain = vec![self.cert.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        chain
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key.serialize_der()).into()
    }
}

/// A client config trusting `server_ca`, speaking only `version`, presenting `cert` if given.
fn client_tls(
    server_ca: &Path,
    version: &'static SupportedProtocolVersion,
    cert: Option<&Leaf>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(server_ca).expect("read server CA") {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .expect("protocol version")
        .with_root_certificates(roots);
    let cfg = match cert {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain(), leaf.key_der())
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(cfg)
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// A signed GetHealthStatus on `client`; `Err` on a transport failure.
fn signed_health(client: &mut Client, signer: &Signer) -> Result<Resp, String> {
    let path = format!("{BASE}/health");
    let body = health_body("hardening-health", "KmsHealthCheck").to_string();
    let mut headers = vec![("host".to_owned(), client.authority.clone())];
    headers.extend(signer.headers("POST", &client.authority, &path, body.as_bytes()));
    client.try_send_raw("POST", &path, &headers, body.into_bytes())
}

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

/// Rewrites the daemon's own config file in place.
fn rewrite_config(proxy: &TestProxy, cfg: &toml::Table) {
    std::fs::write(&proxy.config, toml::to_string(cfg).expect("serialize config")).expect("rewrite config");
}

/// `xks-bridge <args> --config <config>`.
fn cli(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env_remove("SOFTHSM2_CONF")
        .env_remove("RUST_LOG");
    run_bounded(cmd, WAIT)
}

/// Sends `signal` (a `kill -s` name) to `pid`.
fn send_signal(pid: u32, signal: &str) {
    let mut cmd = Command::new("kill");
    cmd.args(["-s", signal, &pid.to_string()]);
    let (code, out, err) = run_bounded(cmd, WAIT);
    assert_eq!(code, Some(0), "kill -s {signal} {pid}: {out}{err}");
}

/// Waits (bounded) until the daemon's logs contain `needle` at least `n` times.
fn wait_for_log_count(proxy: &TestProxy, needle: &str, n: usize) -> bool {
    wait_until(WAIT, || proxy.logs().matches(needle).count() >= n)
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// A raw HTTP/1.1 response.
#[derive(Debug)]
struct RawResp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResp {
    /// Parses a complete response (head + Content-Length body) at the start of `bytes`.
    fn parse(bytes: &[u8]) -> Option<RawResp> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())
                    .flatten()
            })
            .unwrap_or(0);
        let body = bytes.get(end + 4..end + 4 + len)?.to_vec();
        Some(RawResp { status, head, body })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A blocking TLS connection on which the test writes raw HTTP bytes.
struct RawTls {
    stream: StreamOwned<ClientConnection, TcpStream>,
    authority: String,
}

impl RawTls {
    /// Connects and completes the TLS handshake (server name 127.0.0.1).
    fn connect(addr: SocketAddr, tls: Arc<ClientConfig>) -> std::io::Result<RawTls> {
        let mut sock = TcpStream::connect_timeout(&addr, WAIT)?;
        sock.set_read_timeout(Some(WAIT))?;
        sock.set_write_timeout(Some(WAIT))?;
        sock.set_nodelay(true)?;
        let mut conn = ClientConnection::new(tls, ServerName::IpAddress(addr.ip().into()))
            .map_err(std::io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        Ok(RawTls {
            stream: StreamOwned::new(conn, sock),
            authority: addr.to_string(),
        })
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Reads one complete response (bounded by the socket's read timeout).
    fn read_response(&mut self) -> Result<RawResp, String> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(r) = RawResp::parse(&buf) {
                return Ok(r);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(format!("closed after {} bytes", buf.len())),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("{e} after {} bytes", buf.len())),
            }
        }
    }

    /// Waits up to `limit` for the server to close the connection. Returns what it sent before
    /// closing, or `Err` if the connection was still open when `limit` passed.
    fn wait_closed(&mut self, limit: Duration) -> Result<Vec<u8>, String> {
        self.stream
            .sock
            .set_read_timeout(Some(limit))
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(format!("connection still open after {limit:?}"))
                }
                // Reset, or closed without close_notify: closed either way.
                Err(_) => return Ok(got),
            }
            if Instant::now() >= deadline {
                return Err(format!("connection still open after {limit:?}"));
            }
        }
    }
}

/// A request head with `Host` and the given extra lines (each without CRLF).
fn request_head(method: &str, path: &str, authority: &str, lines: &[String]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {authority}\r\n");
    for l in lines {
        head.push_str(l);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

// ---------------------------------------------------------------------------------------------
// 1. Mutual TLS
// ---------------------------------------------------------------------------------------------

/// A daemon requiring client certificates from `client_ca` carrying [`KMS_CLIENT_NAME`].
struct Mtls {
    proxy: TestProxy,
    client_ca: Ca,
    fx: Fixture,
}

impl Mtls {
    fn start() -> Mtls {
        Self::start_trusting(Ca::new("KMS client CA (test)"))
    }

    /// The daemon's `tls.client_ca` file holds `client_ca`'s own certificate only.
    fn start_trusting(client_ca: Ca) -> Mtls {
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

    fn client_cert(&self, cn: Option<&str>, sans: &[&str], expired: bool) -> Leaf {
        self.client_ca.issue(LeafSpec {
            cn,
            sans,
            eku: ExtendedKeyUsagePurpose::ClientAuth,
            expired,
        })
    }

    /// The client is served over both TLS 1.3 and TLS 1.2: a signed health request → 200.
    #[track_caller]
    fn assert_served(&self, cert: &Leaf) {
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
    fn assert_refused(&self, cert: Option<&Leaf>, alert: &str) {
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

// ---------------------------------------------------------------------------------------------
// 2. Hot reload (checklist 32)
// ---------------------------------------------------------------------------------------------

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
fn reload_turning_on_mtls_requires_client_certificates_on_new_connections_only() {
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
    // The connection opened before the reload is not renegotiated.
    assert_ok(&old.health());
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

// ---------------------------------------------------------------------------------------------
// 3. Per-keystore quota (checklist 37)
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// 4. Bounded memory under abuse
// ---------------------------------------------------------------------------------------------

/// What happened to a streamed oversized upload.
struct Flood {
    /// Body bytes the client managed to write before the server stopped it.
    written: u64,
    /// Whether the writer gave up because the server closed or reset the connection.
    write_failed: bool,
    /// Everything the server sent back before closing.
    response: Vec<u8>,
}

/// Sends `head` and then up to `total` body bytes in 64 KiB pieces (chunked encoding framing
/// if `chunked`), while reading whatever the server answers. Bounded by [`WAIT`].
fn flood(addr: SocketAddr, tls: Arc<ClientConfig>, head: String, total: u64, chunked: bool) -> Flood {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .expect("TLS handshake");
        let (mut rd, mut wr) = tokio::io::split(stream);
        let deadline = tokio::time::Instant::now() + WAIT;
        let writer = async move {
            let piece = vec![b'A'; 64 * 1024];
            let mut framed = Vec::new();
            if chunked {
                framed.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            }
            framed.extend_from_slice(&piece);
            if chunked {
                framed.extend_from_slice(b"\r\n");
            }
            if wr.write_all(head.as_bytes()).await.is_err() {
                return (0, true);
            }
            let mut written = 0u64;
            while written < total {
                match tokio::time::timeout_at(deadline, wr.write_all(&framed)).await {
                    Ok(Ok(())) => written += piece.len() as u64,
                    Ok(Err(_)) => return (written, true),
                    Err(_) => return (written, false),
                }
            }
            (written, false)
        };
        let reader = async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                }
            }
            got
        };
        let ((written, write_failed), response) = tokio::join!(writer, reader);
        Flood {
            written,
            write_failed,
            response,
        }
    })
}

#[test]
fn oversized_unauthenticated_body_is_cut_off_at_the_cap_without_growing_memory() {
    const TOTAL: u64 = 200 * 1024 * 1024;
    let h = Harness::start();
    let pid = h.proxy.pid();
    let mut warm = h.session();
    assert_ok(&warm.health());
    let before = rss_kib(pid);

    let path = format!("{BASE}/health");
    let authority = h.proxy.addr.to_string();
    let framings = [
        format!("content-length: {TOTAL}"),
        "transfer-encoding: chunked".to_owned(),
    ];
    for (framing, chunked) in framings.iter().zip([false, true]) {
        let head = request_head(
            "POST",
            &path,
            &authority,
            &["content-type: application/json".to_owned(), framing.clone()],
        );
        let f = flood(
            h.proxy.addr,
            tls_config(&h.proxy.ca, None, None, &[]),
            head,
            TOTAL,
            chunked,
        );
        assert!(
            f.write_failed,
            "{framing}: the server neither closed nor reset the connection ({} of {TOTAL} bytes \
             written within {WAIT:?})",
            f.written
        );
        assert!(
            f.written < TOTAL / 4,
            "{framing}: the server read {} bytes of an oversized body",
            f.written
        );
        if !f.response.is_empty() {
            let r = RawResp::parse(&f.response).unwrap_or_else(|| {
                panic!(
                    "{framing}: not an HTTP response: {:?}",
                    String::from_utf8_lossy(&f.response)
                )
            });
            assert_eq!(r.status, 501, "{framing}: {}", r.head);
            assert!(
                r.head
                    .to_ascii_lowercase()
                    .contains("content-type: application/json"),
                "{}",
                r.head
            );
            assert_eq!(r.json()["errorName"], "UnsupportedOperationException");
        }
    }
    let after = rss_kib(pid);
    assert!(
        after < before + 32 * 1024,
        "daemon RSS grew from {before} KiB to {after} KiB"
    );
    // Still serving.
    assert_ok(&h.session().health());
    assert_ok(&warm.health());
}

#[test]
fn oversized_request_headers_get_431_or_a_closed_connection_and_the_daemon_stays_responsive() {
    let h = Harness::start_with(
        |cfg, _| {
            section(cfg, "server").insert("max_header_bytes".into(), 8192.into());
        },
        &[],
    );
    let path = format!("{BASE}/health");
    let workers: Vec<_> = (0..16)
        .map(|i| {
            let addr = h.proxy.addr;
            let tls = tls_config(&h.proxy.ca, None, None, &[]);
            let path = path.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let mut c = RawTls::connect(addr, tls).map_err(|e| format!("connect: {e}"))?;
                let padding = "a".repeat(64 * 1024);
                let head = request_head(
                    "POST",
                    &path,
                    &c.authority.clone(),
                    &[format!("x-padding-{i}: {padding}"), "content-length: 0".into()],
                );
                // The server may answer and close before it has read everything.
                let _ = c.send(head.as_bytes());
                match c.read_response() {
                    Ok(r) if r.status == 431 => Ok(()),
                    Ok(r) => Err(format!("answered {}: {}", r.status, r.head)),
                    Err(_closed) => Ok(()),
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker").expect("oversized head");
    }
    // A head well under the limit is fine, and the daemon answers normally.
    let mut xks = h.session();
    let body = health_body("after-abuse", "KmsHealthCheck").to_string();
    let mut headers = vec![("host".to_owned(), xks.client.authority.clone())];
    headers.extend(
        xks.signer
            .headers("POST", &xks.client.authority, &path, body.as_bytes()),
    );
    headers.push(("x-padding".to_owned(), "b".repeat(2048)));
    let r = xks
        .client
        .try_send_raw("POST", &path, &headers, body.into_bytes())
        .expect("request");
    assert_ok(&r);
    assert_ok(&xks.health());
}

// ---------------------------------------------------------------------------------------------
// 5. Connection limit and timeouts
// ---------------------------------------------------------------------------------------------

#[test]
fn connections_beyond_max_connections_are_closed_at_accept_until_one_is_freed() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    section(&mut cfg, "server").insert("max_connections".into(), 4.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let tls = || tls_config(&proxy.ca, None, None, &[]);

    // Four established, idle connections (each served one request, so the server holds them).
    let mut held: Vec<Xks> = (0..4).map(|_| proxy.xks(&fx)).collect();
    for x in held.iter_mut() {
        assert_eq!(x.client.send("GET", "/ping", &[], b"").status, 200);
    }

    // A fifth is closed at accept: the handshake (or, at the latest, the first request) fails.
    match proxy.client_with(tls()) {
        Ok(mut c) => {
            let headers = vec![("host".to_owned(), c.authority.clone())];
            if let Ok(r) = c.try_send_raw("GET", "/ping", &headers, Vec::new()) {
                panic!("a fifth connection was served: {}", r.status);
            }
        }
        Err(_refused) => {}
    }
    assert!(proxy.wait_for_log("connection limit reached"), "{}", proxy.logs());
    // The four held connections still work.
    for x in held.iter_mut() {
        assert_ok(&x.health());
    }

    drop(held);
    let recovered = wait_until(WAIT, || {
        proxy.client_with(tls()).is_ok_and(|mut c| {
            let headers = vec![("host".to_owned(), c.authority.clone())];
            c.try_send_raw("GET", "/ping", &headers, Vec::new())
                .is_ok_and(|r| r.status == 200)
        })
    });
    assert!(
        recovered,
        "no new connection was served after the idle ones closed"
    );
    assert_ok(&proxy.xks(&fx).health());
}

#[test]
fn connections_that_never_start_tls_are_dropped_after_the_handshake_timeout_freeing_their_slots() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    let server = section(&mut cfg, "server");
    server.insert("max_connections".into(), 2.into());
    server.insert("tls_handshake_timeout_ms".into(), 500.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);

    // Two TCP connections that never send a ClientHello take both slots...
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect_timeout(&proxy.addr, WAIT).expect("TCP connect"))
        .collect();
    // ...until the server drops them.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("the server sent {n} bytes to a silent connection"),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a connection that never started TLS was still open after 5 s"
            ),
        }
    }
    // Both slots are free again: two connections are served at the same time.
    let both_served = wait_until(WAIT, || {
        let a = proxy.client_with(tls_config(&proxy.ca, None, None, &[]));
        let b = proxy.client_with(tls_config(&proxy.ca, None, None, &[]));
        match (a, b) {
            (Ok(mut a), Ok(mut b)) => {
                signed_health(&mut a, &fx.signer()).is_ok_and(|r| r.status == 200)
                    && signed_health(&mut b, &fx.signer()).is_ok_and(|r| r.status == 200)
            }
            _ => false,
        }
    });
    assert!(both_served, "the slots of the dropped connections were not freed");
}

/// The body is read before the request is authenticated, so its time must be bounded like the
/// head's: otherwise a client that sends a head and part of a body, then nothing, holds a
/// connection slot for ever (a slow-POST attack needs no bandwidth). Expected: the stalled
/// connection is closed within a bounded time (here 10 s with a 500 ms header timeout) and its
/// slot is served again.
#[test]
fn stalled_request_body_is_cut_off_and_frees_its_connection_slot() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    let server = section(&mut cfg, "server");
    server.insert("max_connections".into(), 1.into());
    server.insert("header_read_timeout_ms".into(), 500.into());
    server.insert("body_read_timeout_ms".into(), 1000.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);

    let mut stalled = RawTls::connect(proxy.addr, tls_config(&proxy.ca, None, None, &[])).expect("connect");
    let head = request_head(
        "POST",
        &format!("{BASE}/health"),
        &stalled.authority.clone(),
        &[
            "content-type: application/json".into(),
            "content-length: 1000".into(),
        ],
    );
    stalled.send(head.as_bytes()).expect("send head");
    stalled
        .send(b"{\"requestMetadata\":")
        .expect("send part of the body");
    let closed = stalled.wait_closed(Duration::from_secs(10));
    assert!(
        closed.is_ok(),
        "a request whose body stalled after 19 of 1000 bytes still holds its connection (and the \
         only max_connections slot) after 10 s: {closed:?}"
    );
    let served = wait_until(WAIT, || {
        proxy
            .client_with(tls_config(&proxy.ca, None, None, &[]))
            .is_ok_and(|mut c| signed_health(&mut c, &fx.signer()).is_ok_and(|r| r.status == 200))
    });
    assert!(served, "the stalled connection's slot was not freed");
}

#[test]
fn idle_and_slow_connections_are_closed_after_the_header_read_timeout() {
    let h = Harness::start_with(
        |cfg, _| {
            section(cfg, "server").insert("header_read_timeout_ms".into(), 500.into());
        },
        &[],
    );
    let tls = || tls_config(&h.proxy.ca, None, None, &[]);

    // An idle keep-alive connection after one request.
    let mut idle = RawTls::connect(h.proxy.addr, tls()).expect("connect");
    let head = request_head("GET", "/ping", &idle.authority.clone(), &[]);
    idle.send(head.as_bytes()).expect("send");
    let r = idle.read_response().expect("ping response");
    assert_eq!(r.status, 200, "{}", r.head);
    let rest = idle
        .wait_closed(Duration::from_secs(5))
        .expect("idle keep-alive connection closed by the server");
    assert!(rest.is_empty() || !String::from_utf8_lossy(&rest).contains(" 200 "));

    // A connection that never sends a request.
    let mut silent = RawTls::connect(h.proxy.addr, tls()).expect("connect");
    silent
        .wait_closed(Duration::from_secs(5))
        .expect("silent connection closed by the server");

    // A request head that never ends (slowloris).
    let mut slow = RawTls::connect(h.proxy.addr, tls()).expect("connect");
    let authority = slow.authority.clone();
    slow.send(format!("GET /ping HTTP/1.1\r\nhost: {authority}\r\n").as_bytes())
        .expect("send partial head");
    let rest = slow
        .wait_closed(Duration::from_secs(5))
        .expect("connection with an unfinished head closed by the server");
    assert!(
        !String::from_utf8_lossy(&rest).contains(" 200 "),
        "an unfinished head was answered: {}",
        String::from_utf8_lossy(&rest)
    );

    // Normal requests are unaffected.
    let mut xks = h.session();
    assert_ok(&xks.health());
    assert_ok(&xks.metadata(KEY_AES));
}

// ---------------------------------------------------------------------------------------------
// 6. Root refusal
// ---------------------------------------------------------------------------------------------

#[test]
fn serve_as_root_without_allow_root_exits_64_naming_server_allow_root() {
    let fx = Fixture::new();
    for allow_root in [None, Some(false)] {
        let mut cfg = fx.config();
        let server = section(&mut cfg, "server");
        server.remove("allow_root");
        if let Some(v) = allow_root {
            server.insert("allow_root".into(), v.into());
        }
        if running_as_root() {
            let mut cmd = Command::new(BIN);
            cmd.arg("serve")
                .arg("--config")
                .arg(fx.write_config(&cfg))
                .env_remove("RUST_LOG");
            let (code, out, err) = run_bounded(cmd, WAIT);
            assert_eq!(code, Some(64), "allow_root {allow_root:?}: {out}\n{err}");
            assert!(err.contains("server.allow_root"), "stderr: {err}");
            assert!(!out.contains("listening"), "stdout: {out}");
        } else {
            let proxy = TestProxy::start_with(&fx, &cfg, &[]);
            assert_eq!(proxy.client().send("GET", "/ping", &[], b"").status, 200);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 7. systemd
// ---------------------------------------------------------------------------------------------

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    if !have_tool("systemd-analyze") {
        eprintln!("note: systemd-analyze is not installed; skipping the unit check");
        return;
    }
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/xks-bridge.service");
    let unit = std::fs::read_to_string(&unit_path).expect("read the unit");
    // ExecStart= and ExecReload= name the installed binary; point them at the one under test.
    let installed = "/usr/local/bin/xks-bridge ";
    assert!(
        unit.contains(&format!("ExecStart={installed}")),
        "unexpected ExecStart in {unit_path:?}"
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let copy = tmp.path().join("xks-bridge.service");
    std::fs::write(&copy, unit.replace(installed, &format!("{BIN} "))).expect("write unit copy");
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify").arg(&copy);
    let (code, out, err) = run_bounded(cmd, Duration::from_secs(60));
    assert_eq!(code, Some(0), "systemd-analyze verify: {out}\n{err}");
    let complaints: Vec<&str> = err
        .lines()
        .chain(out.lines())
        .filter(|l| l.contains("xks-bridge.service"))
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze verify: {complaints:#?}");
}

/// The unit waits for the daemon's READY=1, arms the watchdog the daemon pings (see the
/// sd_notify test below) and reloads through `xks-bridge reload`.
#[test]
fn systemd_unit_uses_the_daemons_readiness_watchdog_and_reload_protocols() {
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/xks-bridge.service");
    let unit = std::fs::read_to_string(&unit_path).expect("read the unit");
    let directives: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(directives.contains(&"Type=notify"), "{directives:#?}");
    assert!(
        directives
            .iter()
            .any(|l| l.starts_with("WatchdogSec=") && *l != "WatchdogSec=0"),
        "{directives:#?}"
    );
    assert!(
        directives
            .iter()
            .any(|l| l.starts_with("ExecReload=") && l.contains(" reload --config ")),
        "{directives:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. sd_notify
// ---------------------------------------------------------------------------------------------

/// Receives datagrams until one equals `want` (or [`WAIT`] passes); all are kept in `seen`.
fn recv_until(sock: &std::os::unix::net::UnixDatagram, want: &str, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).trim_end().to_owned();
            let hit = msg.lines().any(|l| l == want);
            seen.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[test]
fn sd_notify_reports_ready_then_watchdog_pings_then_stopping_on_sigterm() {
    let fx = Fixture::new();
    let tmp = tempfile::tempdir().expect("temp dir");
    let sock_path = tmp.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let config = fx.write_config(&fx.config());
    // systemd sets WATCHDOG_PID to the service's main pid; `exec` keeps the shell's pid.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" serve --config "$1""#)
        .arg(BIN)
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .env_remove("RUST_LOG");
    let mut daemon = Spawned::start(cmd).unwrap_or_else(|e| panic!("daemon did not start: {e}"));
    assert!(
        daemon
            .first_line()
            .starts_with("xks-bridge listening on https://127.0.0.1:"),
        "{}",
        daemon.first_line()
    );

    let mut seen = Vec::new();
    assert!(
        recv_until(&sock, "READY=1", &mut seen),
        "no READY=1; got {seen:?}"
    );
    assert_eq!(
        seen[0], "READY=1",
        "the first notification is not READY=1: {seen:?}"
    );
    assert!(
        recv_until(&sock, "WATCHDOG=1", &mut seen),
        "no WATCHDOG=1; got {seen:?}"
    );
    assert!(
        recv_until(&sock, "WATCHDOG=1", &mut seen),
        "one WATCHDOG=1 only; got {seen:?}"
    );

    send_signal(daemon.pid(), "TERM");
    assert!(
        recv_until(&sock, "STOPPING=1", &mut seen),
        "no STOPPING=1; got {seen:?}"
    );
    let status = daemon.wait_exit(WAIT).expect("daemon exits after SIGTERM");
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        daemon.stderr_text()
    );
}
