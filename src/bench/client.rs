//! One keep-alive HTTP/1.1 connection to a proxy (over rustls unless the endpoint is `http://`)
//! and the signed POST that every request is: a fresh SigV4 signature and X-Amz-Date each time,
//! exactly as KMS sends them. Transport failures come back as a named kind, never a panic.

use super::endpoint::Endpoint;
use super::error::BenchError;
use crate::auth::sigv4;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use secrecy::{ExposeSecret, SecretString};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A response larger than this is a broken proxy, not something to buffer.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// A transport failure: `kind` is what reports count, `detail` is for setup messages.
#[derive(Debug)]
pub struct Failure {
    /// Short name, e.g. `ConnectionClosed`.
    pub kind: &'static str,
    /// Human detail.
    pub detail: String,
}

impl Failure {
    fn new(kind: &'static str, detail: impl std::fmt::Display) -> Failure {
        Failure {
            kind,
            detail: detail.to_string(),
        }
    }

    fn from_hyper(e: &hyper::Error) -> Failure {
        let kind = if e.is_timeout() {
            "Timeout"
        } else if e.is_incomplete_message() {
            "IncompleteMessage"
        } else if e.is_parse() {
            "HttpParseError"
        } else if e.is_closed() || e.is_canceled() {
            "ConnectionClosed"
        } else {
            "HttpError"
        };
        Failure::new(kind, e)
    }
}

/// SigV4 credentials and the values every signature covers.
pub struct Signer {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret: SecretString,
    /// Region of the credential scope.
    pub region: String,
    /// Host header value.
    pub host: String,
}

/// Opens connections to one endpoint; all of them share one TLS config and so one session
/// cache, which is what lets a reconnect resume instead of doing a full handshake.
pub struct Connector {
    endpoint: Endpoint,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Local address to connect from (a client on another address than an attacker).
    source: Option<std::net::IpAddr>,
}

impl Connector {
    /// Builds the TLS client config (trusting only `ca_file`) for an https endpoint.
    pub fn new(
        endpoint: Endpoint,
        ca_file: Option<&Path>,
        resumption: bool,
    ) -> Result<Connector, BenchError> {
        let tls = match (endpoint.tls, ca_file) {
            (false, _) => None,
            (true, None) => return Err(BenchError::NoCaFile),
            (true, Some(ca)) => Some(tls_connector(&endpoint, ca, resumption)?),
        };
        Ok(Connector {
            endpoint,
            tls,
            source: None,
        })
    }

    /// Connects from `source` (bound before connecting) instead of the system's choice.
    pub fn from_source(mut self, source: std::net::IpAddr) -> Connector {
        self.source = Some(source);
        self
    }

    async fn tcp(&self) -> std::io::Result<TcpStream> {
        let target = (self.endpoint.host.as_str(), self.endpoint.port);
        let Some(source) = self.source else {
            return TcpStream::connect(target).await;
        };
        let addr = tokio::net::lookup_host(target)
            .await?
            .find(|a| a.is_ipv4() == source.is_ipv4())
            .ok_or_else(|| std::io::Error::other("no address of the endpoint's family"))?;
        let socket = if source.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        socket.connect(addr).await
    }

    /// TCP connect, TLS handshake, HTTP/1.1 handshake.
    pub async fn connect(&self) -> Result<Conn, Failure> {
        let tcp = self.tcp().await.map_err(|e| Failure::new("ConnectFailed", e))?;
        // Requests are small and strictly request/response: Nagle would only add delay.
        tcp.set_nodelay(true)
            .map_err(|e| Failure::new("ConnectFailed", e))?;
        let sender = match &self.tls {
            None => http1(tcp).await?,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| Failure::new("TlsHandshakeFailed", e))?;
                http1(tls).await?
            }
        };
        Ok(Conn { sender })
    }
}

fn tls_connector(
    endpoint: &Endpoint,
    ca: &Path,
    resumption: bool,
) -> Result<(TlsConnector, ServerName<'static>), BenchError> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| BenchError::CaFile {
            path: ca.to_owned(),
            source,
        })?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(BenchError::NoCertificate { path: ca.to_owned() });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(BenchError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resumption {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    let name = ServerName::try_from(endpoint.host.clone()).map_err(|source| BenchError::ServerName {
        host: endpoint.host.clone(),
        source,
    })?;
    Ok((TlsConnector::from(Arc::new(cfg)), name))
}

async fn http1<T>(io: T) -> Result<SendRequest<Full<Bytes>>, Failure>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| Failure::from_hyper(&e))?;
    // The connection future drives the socket; its errors reach us through `sender`.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// An open connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

/// A complete response.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Whole body.
    pub body: Bytes,
    /// From sending the request to having the whole body.
    pub latency: Duration,
}

impl Conn {
    /// The peer closed the connection (e.g. after `Connection: close`): reconnect before use.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Signs and sends one POST and reads the whole response. On a failure the connection must
    /// be dropped: a timed-out request leaves it in an unknown state.
    pub async fn post(
        &mut self,
        signer: &Signer,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let sig = sigv4::sign(
            path,
            &signer.host,
            "application/json",
            &body,
            &signer.access_key_id,
            signer.secret.expose_secret(),
            &signer.region,
            SystemTime::now(),
        );
        let req = http::Request::post(path)
            .header(HOST, &signer.host)
            .header(CONTENT_TYPE, "application/json")
            .header("x-amz-date", sig.amz_date)
            .header(AUTHORIZATION, sig.authorization)
            .body(Full::new(body))
            .map_err(|e| Failure::new("BadRequest", e))?;
        let start = Instant::now();
        let exchange = async {
            self.sender.ready().await.map_err(|e| Failure::from_hyper(&e))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| Failure::from_hyper(&e))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| match e.downcast_ref::<hyper::Error>() {
                    Some(h) => Failure::from_hyper(h),
                    None => Failure::new("ResponseTooLarge", e),
                })?
                .to_bytes();
            Ok(Answer {
                status,
                body,
                latency: start.elapsed(),
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(Failure::new("Timeout", "no complete response in time")))
    }
}
