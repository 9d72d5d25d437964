//! Test harness shared by the integration-test binaries: a private SoftHSM2 fixture made by
//! `hsm-fixtures/setup.sh`, a running `xks-bridge serve` child ([`TestProxy`]), an HTTPS client
//! built on hyper + tokio-rustls that trusts the fixture CA ([`Client`]), request signing with
//! the independent `aws-sigv4` crate ([`Signer`]), and builders for the four XKS request bodies.
//!
//! Everything binds 127.0.0.1 only, lives in temp dirs, waits with timeouts and kills its
//! children on drop.
#![allow(dead_code)]

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedCipherSuite, SupportedProtocolVersion};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};
use tempfile::TempDir;

/// The daemon binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_xks-bridge");
/// Where SoftHSM2 is installed on the test machine.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The fixture's keystore prefix and API base.
pub const PREFIX: &str = "/quickstart";
pub const BASE: &str = "/quickstart/kms/xks/v1";
/// The fixture's four keys.
pub const KEY_AES: &str = "quickstart-aes";
pub const KEY_ENCRYPT_ONLY: &str = "quickstart-encrypt-only";
pub const KEY_DECRYPT_ONLY: &str = "quickstart-decrypt-only";
pub const KEY_NO_USAGE: &str = "quickstart-no-usage";
pub const TOKEN_LABEL: &str = "xks-bridge-quickstart";
/// Bound on every wait in the harness (daemon start, one HTTP exchange, a child's exit).
pub const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------

/// A private SoftHSM2 token with the four quickstart keys, TLS material, a SigV4 credential
/// and a config, in its own temp dir.
pub struct Fixture {
    _tmp: TempDir,
    /// The fixture directory (holds config.toml, secrets/, tls/, tokens/, softhsm2.conf).
    pub dir: PathBuf,
    /// The keystore's access key id.
    pub access_key_id: String,
    /// The keystore's secret access key.
    pub secret: String,
    /// How long `setup.sh` took.
    pub setup_time: Duration,
}

static CONFIG_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Fixture {
    /// Runs `hsm-fixtures/setup.sh` into a fresh temp dir.
    pub fn new() -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("xks-fixture-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().join("fx");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hsm-fixtures/setup.sh");
        let start = Instant::now();
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .arg(&dir)
            .env("XKS_BRIDGE_BIN", BIN)
            .env_remove("SOFTHSM2_CONF");
        let (code, out, err) = run_bounded(cmd, Duration::from_secs(60));
        let setup_time = start.elapsed();
        assert_eq!(code, Some(0), "setup.sh failed: {out}\n{err}");
        // Tests share two cores with parallel daemons and debug builds: give HSM jobs the largest
        // deadline the config allows (240 ms) so a busy CI machine does not turn a healthy
        // request into DependencyTimeoutException. Deadline behaviour itself is tested with
        // explicit settings (tests/faults.rs).
        let cfg_path = dir.join("config.toml");
        let mut cfg: toml::Table = std::fs::read_to_string(&cfg_path)
            .expect("fixture config")
            .parse()
            .expect("TOML");
        cfg["tokens"].as_array_mut().expect("tokens")[0]
            .as_table_mut()
            .expect("token table")
            .insert("request_timeout_ms".into(), 240.into());
        std::fs::write(&cfg_path, toml::to_string(&cfg).expect("serialize")).expect("write fixture config");
        let secret = std::fs::read_to_string(dir.join("secrets/sigv4-secret")).expect("sigv4 secret");
        let mut fx = Fixture {
            _tmp: tmp,
            dir,
            access_key_id: String::new(),
            secret: secret.trim_end().to_owned(),
            setup_time,
        };
        let cfg = fx.config();
        fx.access_key_id = cfg["keystores"][0]["credentials"][0]["access_key_id"]
            .as_str()
            .expect("access_key_id in fixture config")
            .to_owned();
        fx
    }

    /// A path inside the fixture directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The fixture's CA certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.path("tls/ca.pem")
    }

    /// The fixture's config, parsed, ready to be edited.
    pub fn config(&self) -> toml::Table {
        let text = std::fs::read_to_string(self.path("config.toml")).expect("fixture config");
        text.parse().expect("fixture config is TOML")
    }

    /// Writes `cfg` next to the fixture's config (so its relative paths keep working).
    pub fn write_config(&self, cfg: &toml::Table) -> PathBuf {
        let n = CONFIG_SEQ.fetch_add(1, Ordering::SeqCst);
        let path = self.path(&format!("test-config-{n}.toml"));
        std::fs::write(&path, toml::to_string(cfg).expect("serialize config")).expect("write config");
        path
    }

    /// Writes a private file (a secret) inside the fixture and returns its path.
    pub fn write_secret(&self, name: &str, value: &str) -> PathBuf {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(&format!("secrets/{name}"));
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .expect("write secret");
        path
    }

    /// A signer for the fixture's own credential.
    pub fn signer(&self) -> Signer {
        Signer::new(&self.access_key_id, &self.secret)
    }
}

/// `cfg.<section>` as a mutable table, created if absent.
pub fn section<'a>(cfg: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    cfg.entry(name)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("section is a table")
}

/// `cfg.<array>[i]` as a mutable table (e.g. `keystores[0]`).
pub fn entry<'a>(cfg: &'a mut toml::Table, array: &str, i: usize) -> &'a mut toml::Table {
    cfg[array].as_array_mut().expect("array of tables")[i]
        .as_table_mut()
        .expect("table")
}

/// A TOML array of strings.
pub fn toml_strings(items: &[&str]) -> toml::Value {
    toml::Value::Array(items.iter().map(|s| toml::Value::String(s.to_string())).collect())
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A child process whose first stdout line is awaited and whose stderr is captured.
pub struct Spawned {
    child: Child,
    first_line: Option<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Spawned {
    /// Spawns `cmd` with piped stdout/stderr and waits (bounded) for its first stdout line.
    /// Returns `Err(stderr)` when the child exits or closes stdout before printing one.
    pub fn start(mut cmd: Command) -> Result<Spawned, String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let err_buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let out_lines = lines.clone();
        let out_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line.clone());
                out_lines.lock().unwrap().push(line);
            }
        });
        let err_sink = err_buf.clone();
        let err_reader = std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut chunk = [0u8; 4096];
            loop {
                match stderr.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => err_sink.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
        });
        let mut s = Spawned {
            child,
            first_line: None,
            stdout: lines,
            stderr: err_buf,
            readers: vec![out_reader, err_reader],
        };
        match rx.recv_timeout(WAIT) {
            Ok(line) => {
                s.first_line = Some(line);
                Ok(s)
            }
            Err(_) => {
                let status = s.stop();
                Err(format!(
                    "child printed no line within {WAIT:?} (exit {status:?}); stderr:\n{}",
                    s.stderr_text()
                ))
            }
        }
    }

    /// The first line printed on stdout.
    pub fn first_line(&self) -> &str {
        self.first_line.as_deref().unwrap_or("")
    }

    /// Every stdout line read so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything written on stderr so far, with ANSI colour codes removed.
    pub fn stderr_text(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(&self.stderr.lock().unwrap()))
    }

    /// Kills the child (if running), reaps it and waits for the pipes to drain.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        status
    }

    /// Waits (bounded) for the child to exit on its own; `None` on timeout (child killed).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
        None
    }

    /// Polls (bounded) until stderr contains `needle`.
    pub fn wait_for_stderr(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.stderr_text().contains(needle))
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command to completion with a bound on its run time.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> (Option<i32>, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    assert!(
        status.is_some(),
        "command did not finish within {limit:?}: {out}\n{err}"
    );
    (status.and_then(|s| s.code()), out, strip_ansi(&err))
}

/// Polls `f` every few milliseconds until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes ANSI escape sequences (the text log format colours its fields).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Is `name` an executable on PATH?
pub fn have_tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

// ---------------------------------------------------------------------------------------------
// The daemon under test
// ---------------------------------------------------------------------------------------------

/// A running `xks-bridge serve --config FILE`.
pub struct TestProxy {
    proc: Spawned,
    /// The bound address (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    /// The fixture CA, for clients.
    pub ca: PathBuf,
    /// The config file the daemon runs with.
    pub config: PathBuf,
}

impl TestProxy {
    /// Serves the fixture's own config.
    pub fn start(fx: &Fixture) -> TestProxy {
        Self::start_with(fx, &fx.config(), &[])
    }

    /// Serves `cfg` (written into the fixture dir) with extra environment variables.
    pub fn start_with(fx: &Fixture, cfg: &toml::Table, env: &[(&str, &str)]) -> TestProxy {
        Self::try_start(fx, cfg, env).unwrap_or_else(|e| panic!("daemon did not start: {e}"))
    }

    /// Like [`TestProxy::start_with`] but returns the failure.
    pub fn try_start(fx: &Fixture, cfg: &toml::Table, env: &[(&str, &str)]) -> Result<TestProxy, String> {
        let config = fx.write_config(cfg);
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Spawned::start(cmd)?;
        let line = proc.first_line().to_owned();
        let addr = line
            .strip_prefix("xks-bridge listening on https://")
            .ok_or_else(|| format!("unexpected first line {line:?}"))?
            .parse::<SocketAddr>()
            .map_err(|e| format!("{line:?}: {e}"))?;
        assert!(addr.ip().is_loopback(), "daemon must bind 127.0.0.1 only: {addr}");
        Ok(TestProxy {
            proc,
            addr,
            ca: fx.ca_pem(),
            config,
        })
    }

    /// A new keep-alive HTTPS connection trusting the fixture CA (TLS 1.2/1.3, no ALPN).
    pub fn client(&self) -> Client {
        Client::connect(self.addr, tls_config(&self.ca, None, None, &[])).expect("connect to daemon")
    }

    /// A new connection with a specific TLS client config.
    pub fn client_with(&self, tls: Arc<ClientConfig>) -> std::io::Result<Client> {
        Client::connect(self.addr, tls)
    }

    /// A signed-request session against the fixture's keystore, with the fixture's credential.
    pub fn xks(&self, fx: &Fixture) -> Xks {
        Xks {
            client: self.client(),
            signer: fx.signer(),
            base: BASE.to_owned(),
        }
    }

    /// The daemon's logs (stderr) so far.
    pub fn logs(&self) -> String {
        self.proc.stderr_text()
    }

    /// The daemon's process id (for signals).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Every stdout line so far (the listening line, then e.g. the metrics address).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.proc.stdout_lines()
    }

    /// Polls (bounded) until the logs contain `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        self.proc.wait_for_stderr(needle, WAIT)
    }

    /// Stops the daemon and returns its complete logs.
    pub fn stop(mut self) -> String {
        self.proc.stop();
        self.proc.stderr_text()
    }
}

// ---------------------------------------------------------------------------------------------
// TLS + HTTP client
// ---------------------------------------------------------------------------------------------

/// A rustls client config trusting `ca`, optionally restricted to `versions` and `suites`,
/// offering `alpn` (none if empty).
pub fn tls_config(
    ca: &Path,
    versions: Option<&[&'static SupportedProtocolVersion]>,
    suites: Option<Vec<SupportedCipherSuite>>,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(s) = suites {
        provider.cipher_suites = s;
    }
    let versions = versions.unwrap_or(rustls::ALL_VERSIONS);
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON (panics with the body text if it is not JSON).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `Content-Type` header value.
    pub fn content_type(&self) -> &str {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// A string field of the JSON body, Base64-decoded.
    #[track_caller]
    pub fn b64_field(&self, name: &str) -> Vec<u8> {
        let v = self.json();
        let s = v[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} missing in {v}"));
        B64.decode(s)
            .unwrap_or_else(|e| panic!("{name} is not standard Base64 ({e}): {s}"))
    }

    /// The body as text, for assertion messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 keep-alive connection over TLS. Every exchange is bounded by [`WAIT`].
pub struct Client {
    rt: tokio::runtime::Runtime,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// `host:port` sent as the Host header (and signed).
    pub authority: String,
    /// Negotiated TLS version and cipher suite.
    pub protocol: Option<rustls::ProtocolVersion>,
    pub suite: Option<rustls::CipherSuite>,
    pub alpn: Option<Vec<u8>>,
}

impl Client {
    /// Connects, completes TLS (server name 127.0.0.1) and the HTTP/1.1 handshake.
    pub fn connect(addr: SocketAddr, tls: Arc<ClientConfig>) -> std::io::Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (sender, protocol, suite, alpn) = rt.block_on(async {
            let fut = async {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let connector = tokio_rustls::TlsConnector::from(tls);
                let name = ServerName::IpAddress(addr.ip().into());
                let stream = connector.connect(name, tcp).await?;
                let (_, conn) = stream.get_ref();
                let protocol = conn.protocol_version();
                let suite = conn.negotiated_cipher_suite().map(|s| s.suite());
                let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(std::io::Error::other)?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok::<_, std::io::Error>((sender, protocol, suite, alpn))
            };
            tokio::time::timeout(WAIT, fut)
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
        })?;
        Ok(Client {
            rt,
            sender,
            authority: addr.to_string(),
            protocol,
            suite,
            alpn,
        })
    }

    /// Sends one request on this connection. `headers` are sent as given (add Host yourself,
    /// or use [`Client::send`]).
    pub fn try_send_raw(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Resp, String> {
        let mut req = http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let sender = &mut self.sender;
        self.rt.block_on(async {
            let fut = async {
                sender
                    .ready()
                    .await
                    .map_err(|e| format!("connection not ready: {e}"))?;
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(|e| format!("request failed: {e}"))?;
                let (parts, body) = resp.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|e| format!("reading body: {e}"))?
                    .to_bytes()
                    .to_vec();
                Ok(Resp {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body,
                })
            };
            tokio::time::timeout(WAIT, fut)
                .await
                .map_err(|_| format!("no response within {WAIT:?}"))?
        })
    }

    /// Sends a request with a Host header added; panics on a transport failure.
    #[track_caller]
    pub fn send(&mut self, method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Resp {
        let mut all = vec![("host".to_owned(), self.authority.clone())];
        all.extend_from_slice(headers);
        self.try_send_raw(method, path, &all, body.to_vec())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A POST signed by `signer`, with `Content-Type: application/json`.
    #[track_caller]
    pub fn post_signed(&mut self, signer: &Signer, path: &str, body: &[u8]) -> Resp {
        let headers = signer.headers("POST", &self.authority, path, body);
        self.send("POST", path, &headers, body)
    }
}

// ---------------------------------------------------------------------------------------------
// SigV4 with the independent aws-sigv4 crate
// ---------------------------------------------------------------------------------------------

/// What and how to sign. Produces `content-type`, `x-amz-date` and `authorization` headers
/// (Host is added by the client).
#[derive(Clone, Debug)]
pub struct Signer {
    pub access_key_id: String,
    pub secret: String,
    pub region: String,
    pub service: String,
    /// Signing time; `None` means now.
    pub time: Option<SystemTime>,
    /// Sign `content-type` too (what curl does) or only `host;x-amz-date` (what KMS does).
    pub sign_content_type: bool,
    /// Also send and sign `x-amz-content-sha256` (as S3-style signers do).
    pub content_sha256: bool,
}

impl Signer {
    /// Service `kms-xks-proxy`, region `us-east-1`, signing content-type, host and x-amz-date.
    pub fn new(access_key_id: &str, secret: &str) -> Signer {
        Signer {
            access_key_id: access_key_id.to_owned(),
            secret: secret.to_owned(),
            region: "us-east-1".to_owned(),
            service: "kms-xks-proxy".to_owned(),
            time: None,
            sign_content_type: true,
            content_sha256: false,
        }
    }

    /// Headers to send for a request to `authority` + `path` with `body`.
    pub fn headers(&self, method: &str, authority: &str, path: &str, body: &[u8]) -> Vec<(String, String)> {
        let content_type = ("content-type", "application/json");
        let host = ("host", authority);
        let signable: Vec<(&str, &str)> = if self.sign_content_type {
            vec![host, content_type]
        } else {
            vec![host]
        };
        let identity = Credentials::new(&self.access_key_id, &self.secret, None, None, "xks-tests").into();
        let mut settings = SigningSettings::default();
        if self.content_sha256 {
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        }
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(&self.service)
            .time(self.time.unwrap_or_else(SystemTime::now))
            .settings(settings)
            .build()
            .expect("signing params")
            .into();
        let uri = format!("https://{authority}{path}");
        let req = SignableRequest::new(method, uri, signable.into_iter(), SignableBody::Bytes(body))
            .expect("signable request");
        let (instructions, _sig) = sign(req, &params).expect("sign").into_parts();
        let mut out = vec![(content_type.0.to_owned(), content_type.1.to_owned())];
        for (name, value) in instructions.headers() {
            out.push((name.to_owned(), value.to_owned()));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// XKS session and request bodies
// ---------------------------------------------------------------------------------------------

/// A connection + signer + API base: the XKS operations as one-liners.
pub struct Xks {
    pub client: Client,
    pub signer: Signer,
    /// `<prefix>/kms/xks/v1`
    pub base: String,
}

impl Xks {
    /// POSTs `body` (JSON value) to `base + suffix`, signed.
    #[track_caller]
    pub fn post(&mut self, suffix: &str, body: &Value) -> Resp {
        self.post_bytes(suffix, body.to_string().as_bytes())
    }

    /// POSTs raw bytes to `base + suffix`, signed.
    #[track_caller]
    pub fn post_bytes(&mut self, suffix: &str, body: &[u8]) -> Resp {
        let path = format!("{}{suffix}", self.base);
        self.client.post_signed(&self.signer, &path, body)
    }

    pub fn health(&mut self) -> Resp {
        self.post("/health", &health_body("health-1", "KmsHealthCheck"))
    }

    pub fn metadata(&mut self, key: &str) -> Resp {
        self.post(&format!("/keys/{key}/metadata"), &metadata_body("md-1"))
    }

    pub fn encrypt(&mut self, key: &str, body: &Value) -> Resp {
        self.post(&format!("/keys/{key}/encrypt"), body)
    }

    pub fn decrypt(&mut self, key: &str, body: &Value) -> Resp {
        self.post(&format!("/keys/{key}/decrypt"), body)
    }

    /// Encrypts and asserts 200; returns the decoded output.
    #[track_caller]
    pub fn encrypt_ok(&mut self, key: &str, plaintext: &[u8], aad: Option<&[u8]>) -> Sealed {
        let r = self.encrypt(key, &encrypt_body(plaintext, aad, false));
        assert_eq!(r.status, 200, "encrypt: {}", r.text());
        Sealed::from_response(&r)
    }
}

/// `requestMetadata` for key operations.
pub fn key_op_metadata(request_id: &str, operation: &str) -> Value {
    json!({
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/b3537ef1-d8dc-4780-9f5a-55776cbb2f7f",
        "kmsOperation": operation,
        "kmsRequestId": request_id,
        "kmsViaService": "ebs"
    })
}

/// GetHealthStatus body.
pub fn health_body(request_id: &str, operation: &str) -> Value {
    json!({"requestMetadata": {"kmsRequestId": request_id, "kmsOperation": operation}})
}

/// GetKeyMetadata body (what KMS sends for CreateKey).
pub fn metadata_body(request_id: &str) -> Value {
    json!({"requestMetadata": {
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsOperation": "CreateKey",
        "kmsRequestId": request_id
    }})
}

/// Encrypt body.
pub fn encrypt_body(plaintext: &[u8], aad: Option<&[u8]>, cdiv: bool) -> Value {
    let mut v = json!({
        "requestMetadata": key_op_metadata("enc-1", "Encrypt"),
        "plaintext": B64.encode(plaintext),
        "encryptionAlgorithm": "AES_GCM",
    });
    if let Some(a) = aad {
        v["additionalAuthenticatedData"] = json!(B64.encode(a));
    }
    if cdiv {
        v["ciphertextDataIntegrityValueAlgorithm"] = json!("SHA_256");
    }
    v
}

/// Decoded Encrypt output.
#[derive(Clone, Debug)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub iv: Vec<u8>,
    pub tag: Vec<u8>,
    pub metadata: Option<Vec<u8>>,
    pub cdiv: Option<Vec<u8>>,
}

impl Sealed {
    pub fn from_response(r: &Resp) -> Sealed {
        let v = r.json();
        let opt = |name: &str| {
            v.get(name).map(|s| {
                B64.decode(s.as_str().expect("string field"))
                    .expect("standard Base64")
            })
        };
        Sealed {
            ciphertext: r.b64_field("ciphertext"),
            iv: r.b64_field("initializationVector"),
            tag: r.b64_field("authenticationTag"),
            metadata: opt("ciphertextMetadata"),
            cdiv: opt("ciphertextDataIntegrityValue"),
        }
    }

    /// The matching Decrypt body (metadata passed back as returned).
    pub fn decrypt_body(&self, aad: Option<&[u8]>) -> Value {
        let mut v = json!({
            "requestMetadata": key_op_metadata("dec-1", "Decrypt"),
            "ciphertext": B64.encode(&self.ciphertext),
            "encryptionAlgorithm": "AES_GCM",
            "initializationVector": B64.encode(&self.iv),
            "authenticationTag": B64.encode(&self.tag),
        });
        if let Some(a) = aad {
            v["additionalAuthenticatedData"] = json!(B64.encode(a));
        }
        if let Some(m) = &self.metadata {
            v["ciphertextMetadata"] = json!(B64.encode(m));
        }
        v
    }
}

/// Standard padded Base64.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Standard Base64 decode (panics on bad input).
pub fn unb64(s: &str) -> Vec<u8> {
    B64.decode(s).expect("standard Base64")
}

/// Asserts an XKS error: exact status, `application/json`, the exact `errorName`, and an
/// `errorMessage` (if any) of fewer than 512 printable ASCII characters.
#[track_caller]
pub fn assert_error(r: &Resp, status: u16, error_name: &str) {
    assert_eq!(
        r.status,
        status,
        "expected {status} {error_name}, got {}: {}",
        r.status,
        r.text()
    );
    assert_json_error_shape(r);
    let v = r.json();
    assert_eq!(v["errorName"], json!(error_name), "body: {v}");
}

/// Checks the shape every error response must have (checklist 33).
#[track_caller]
pub fn assert_json_error_shape(r: &Resp) {
    assert!(
        r.content_type().starts_with("application/json"),
        "error response Content-Type is {:?}, body {}",
        r.content_type(),
        r.text()
    );
    let v = r.json();
    assert!(
        v["errorName"].is_string(),
        "errorName missing or not a string: {v}"
    );
    if let Some(m) = v.get("errorMessage") {
        let m = m
            .as_str()
            .unwrap_or_else(|| panic!("errorMessage is not a string: {v}"));
        assert!(m.len() < 512, "errorMessage too long ({} chars)", m.len());
        assert!(
            m.bytes().all(|b| (0x20..=0x7e).contains(&b)),
            "errorMessage has non-printable characters: {m:?}"
        );
    }
}

/// Asserts a 200 with `Content-Type: application/json` and returns the JSON body.
#[track_caller]
pub fn assert_ok(r: &Resp) -> Value {
    assert_eq!(r.status, 200, "expected 200, got {}: {}", r.status, r.text());
    assert!(
        r.content_type().starts_with("application/json"),
        "Content-Type {:?}",
        r.content_type()
    );
    r.json()
}

// ---------------------------------------------------------------------------------------------
// One fixture + one daemon + one signed session
// ---------------------------------------------------------------------------------------------

/// A fixture, a daemon serving it and a signed session. Fields drop in order: the connection,
/// then the daemon, then the fixture's temp dir.
pub struct Harness {
    pub xks: Xks,
    pub proxy: TestProxy,
    pub fx: Fixture,
}

impl Harness {
    /// The fixture's own config.
    pub fn start() -> Harness {
        Self::start_with(|_, _| {}, &[])
    }

    /// The fixture's config edited by `edit`, with extra environment variables for the daemon.
    pub fn start_with(edit: impl FnOnce(&mut toml::Table, &Fixture), env: &[(&str, &str)]) -> Harness {
        let fx = Fixture::new();
        let mut cfg = fx.config();
        edit(&mut cfg, &fx);
        let proxy = TestProxy::start_with(&fx, &cfg, env);
        let xks = proxy.xks(&fx);
        Harness { xks, proxy, fx }
    }

    /// A second connection with the fixture's credential.
    pub fn session(&self) -> Xks {
        self.proxy.xks(&self.fx)
    }
}

// ---------------------------------------------------------------------------------------------
// Direct token access (PKCS#11 in this process)
// ---------------------------------------------------------------------------------------------

static PKCS11_LOCK: Mutex<()> = Mutex::new(());

/// Runs `f` with a logged-in read-write user session on the fixture's token, loading SoftHSM2
/// in this process (SOFTHSM2_CONF pointing at the fixture). Serialized process-wide: SoftHSM2
/// reads its configuration when it is initialised.
pub fn with_token_session<T>(fx: &Fixture, f: impl FnOnce(&cryptoki::session::Session) -> T) -> T {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::error::{Error, RvError};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let _guard = PKCS11_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    std::env::set_var("SOFTHSM2_CONF", fx.path("softhsm2.conf"));
    let pkcs11 = Pkcs11::new(SOFTHSM_MODULE).expect("load SoftHSM2");
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
    let out = {
        let slot = pkcs11
            .get_slots_with_token()
            .expect("C_GetSlotList")
            .into_iter()
            .find(|s| {
                pkcs11
                    .get_token_info(*s)
                    .is_ok_and(|i| i.label().trim() == TOKEN_LABEL)
            })
            .expect("fixture token present");
        let session = pkcs11.open_rw_session(slot).expect("C_OpenSession");
        let pin = std::fs::read_to_string(fx.path("secrets/token.pin")).expect("token.pin");
        session
            .login(UserType::User, Some(&AuthPin::from(pin.trim_end())))
            .expect("user login");
        let out = f(&session);
        let _ = session.logout();
        out
    };
    pkcs11.finalize().expect("C_Finalize");
    out
}

/// Generates a secret key on the token: `key_type` AES or GENERIC_SECRET, `len` bytes,
/// persistent, private, sensitive, not extractable, usable for encrypt and decrypt.
pub fn generate_secret_key(
    s: &cryptoki::session::Session,
    label: &str,
    key_type: cryptoki::object::KeyType,
    len: u64,
) -> cryptoki::object::ObjectHandle {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    let mechanism = if key_type == KeyType::AES {
        Mechanism::AesKeyGen
    } else {
        Mechanism::GenericSecretKeyGen
    };
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(key_type),
        Attribute::ValueLen(len.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    s.generate_key(&mechanism, &template).expect("C_GenerateKey")
}

/// Handles of the secret keys labelled `label`.
pub fn find_keys(s: &cryptoki::session::Session, label: &str) -> Vec<cryptoki::object::ObjectHandle> {
    use cryptoki::object::{Attribute, ObjectClass};
    s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
    .expect("C_FindObjects")
}
