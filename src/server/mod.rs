//! HTTP(S) front end: accept loop with a connection cap, TLS, hyper HTTP/1.1 with keep-alive,
//! the body cap, and the single exit point where every response is built and logged.

pub mod routes;
pub mod tls;

use crate::app::App;
use crate::error::Error;
use crate::ops::RequestContext;
use crate::xks::ErrorBody;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// Connections served at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 4096;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Shared state of the HTTP front end.
pub struct Server {
    app: Arc<App>,
    tls: Option<TlsAcceptor>,
    api_bases: Vec<String>,
    next_id: AtomicU64,
    connections: Arc<Semaphore>,
}

impl Server {
    /// A server for `app`; `tls` is `None` only when plain HTTP was explicitly allowed.
    pub fn new(app: Arc<App>, tls: Option<TlsAcceptor>) -> Arc<Server> {
        let api_bases = app.keystores.iter().map(|k| k.api_base.clone()).collect();
        Arc::new(Server {
            app,
            tls,
            api_bases,
            next_id: AtomicU64::new(1),
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        })
    }

    /// Accepts connections until `shutdown` flips, then waits up to `grace` for open
    /// connections to finish their in-flight requests.
    pub async fn serve(
        self: Arc<Self>,
        listeners: Vec<TcpListener>,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        let graceful = GracefulShutdown::new();
        let (conn_tx, mut conn_rx) = tokio::sync::mpsc::unbounded_channel();
        for l in listeners {
            let tx = conn_tx.clone();
            tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok(c) => {
                            if tx.send(c).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
        drop(conn_tx);
        loop {
            tokio::select! {
                Some((stream, peer)) = conn_rx.recv() => {
                    let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "connection limit reached; closing new connection");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let this = self.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        this.connection(stream, watcher).await;
                        drop(permit);
                    });
                }
                _ = shutdown.changed() => break,
            }
        }
        tokio::select! {
            _ = graceful.shutdown() => tracing::info!("all connections drained"),
            _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
        }
    }

    async fn connection(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let this = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let this = this.clone();
            async move { Ok::<_, std::convert::Infallible>(this.handle(req).await) }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES.max(8192));
        let result = match &self.tls {
            Some(acceptor) => {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        watcher
                            .watch(http.serve_connection(TokioIo::new(tls), service))
                            .await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                }
            }
            None => {
                watcher
                    .watch(http.serve_connection(TokioIo::new(stream), service))
                    .await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let start = Instant::now();
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if req.uri().path() == "/ping" && req.method() == http::Method::GET {
            // A load balancer takes an instance whose kill switch is engaged out of rotation.
            if self.app.kill.proxy_engaged() {
                return text_response(StatusCode::SERVICE_UNAVAILABLE, "kill switch engaged");
            }
            return text_response(StatusCode::OK, "pong");
        }
        let mut ctx = RequestContext::default();
        let (op, keystore, key_id, result) = self.process(req, &mut ctx).await;
        let latency_us = start.elapsed().as_micros() as u64;
        let (status, outcome) = match &result {
            Ok(_) => (200, "OK"),
            Err(e) => (e.status(), e.name().as_str()),
        };
        if let Err(e @ (Error::Auth(_) | Error::Hsm(_) | Error::Internal(_))) = &result {
            tracing::debug!(request_id, error = %e, "request failed");
        }
        tracing::info!(
            request_id,
            kms_request_id = ctx.kms_request_id.as_deref().unwrap_or("-"),
            kms_operation = ctx.kms_operation.as_deref().unwrap_or("-"),
            keystore,
            operation = op,
            key_id,
            access_key_id = ctx.access_key_id.as_deref().unwrap_or("-"),
            status,
            outcome,
            latency_us,
            "request"
        );
        match result {
            Ok(body) => json_response(StatusCode::OK, body),
            Err(e) => error_response(&e),
        }
    }

    /// Route -> read body under the cap -> authenticate -> dispatch. Returns what the log line
    /// needs alongside the result.
    async fn process(
        &self,
        req: Request<Incoming>,
        ctx: &mut RequestContext,
    ) -> (&'static str, String, String, Result<Vec<u8>, Error>) {
        let (parts, body) = req.into_parts();
        let bases: Vec<&str> = self.api_bases.iter().map(String::as_str).collect();
        let route = match routes::route(&bases, &parts.method, parts.uri.path(), parts.uri.query()) {
            Ok(r) => r,
            Err(e) => return ("-", "-".into(), "-".into(), Err(e)),
        };
        let ks = &self.app.keystores[route.keystore];
        let (op, ks_name, key_id) = (route.op.name(), ks.prefix.clone(), route.key_id.to_owned());
        let limit = self.app.limits.max_body_bytes;
        let body = match Limited::new(body, limit).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                let e = Error::TooLarge(format!("request body exceeds {limit} bytes"));
                return (op, ks_name, key_id, Err(e));
            }
        };
        let verified = ks.credentials.verify(
            parts.method.as_str(),
            parts.uri.path(),
            &parts.headers,
            &body,
            SystemTime::now(),
        );
        match verified {
            Ok(v) => ctx.access_key_id = Some(v.access_key_id),
            Err(e) => return (op, ks_name, key_id, Err(e.into())),
        }
        let result = self
            .app
            .dispatch(route.keystore, route.op, route.key_id, &body, ctx)
            .await;
        (op, ks_name, key_id, result)
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text_response(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// The only place an error becomes an HTTP response.
pub fn error_response(e: &Error) -> Response<Full<Bytes>> {
    let msg = e.wire_message();
    let body = serde_json::to_vec(&ErrorBody {
        error_name: e.name().as_str(),
        error_message: &msg,
    })
    .unwrap_or_else(|_| br#"{"errorName":"InternalException"}"#.to_vec());
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(status, body);
    if matches!(e, Error::MethodNotAllowed) {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    r
}
