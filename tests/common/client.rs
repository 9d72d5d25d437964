//! The HTTPS client: a rustls config trusting the fixture CA ([`tls_config`]), one keep-alive
//! HTTP/1.1 connection built on hyper + tokio-rustls ([`Client`]), its fully read responses
//! ([`Resp`]), and SigV4 signing with the independent `aws-sigv4` crate ([`Signer`]).

use crate::common::process::WAIT;
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
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

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

    /// Like [`Client::post_signed`], but a transport failure (the daemon died) is returned.
    pub fn try_post_signed(&mut self, signer: &Signer, path: &str, body: &[u8]) -> Result<Resp, String> {
        let mut headers = vec![("host".to_owned(), self.authority.clone())];
        headers.extend(signer.headers("POST", &self.authority, path, body));
        self.try_send_raw("POST", path, &headers, body.to_vec())
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
