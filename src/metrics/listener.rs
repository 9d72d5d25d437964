//! The metrics listener: `GET /metrics` over plain HTTP, with the API listener's defences.

use super::Metrics;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections the metrics listener serves at once. A scraper needs one or two; the cap keeps
/// any local process from holding sockets and memory on this listener without bound.
pub const MAX_METRICS_CONNECTIONS: usize = 64;
/// Largest request head on the metrics listener (hyper's smallest buffer; a scrape is a
/// one-line GET).
const METRICS_MAX_HEAD_BYTES: usize = 8192;
/// Pause after a failed accept (as on the API listener).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

impl Metrics {
    /// Serves `GET /metrics` on `listener` until the process ends, with the API listener's
    /// defences: at most [`MAX_METRICS_CONNECTIONS`] connections (further ones are closed at
    /// accept), `header_timeout` for each request head (which also closes idle keep-alive
    /// connections, so idle sockets cannot keep the cap filled), and a pause after a failed
    /// accept instead of a busy loop (EMFILE repeats until a descriptor frees).
    pub fn serve(self: Arc<Self>, listener: TcpListener, header_timeout: Duration) {
        let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics: accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "metrics: connection limit reached; closing new connection");
                    continue;
                };
                let this = self.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let this = this.clone();
                        async move { Ok::<_, std::convert::Infallible>(this.respond(&req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .keep_alive(true)
                        .header_read_timeout(header_timeout)
                        .max_buf_size(METRICS_MAX_HEAD_BYTES)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    drop(slot);
                });
            }
        });
    }

    fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let (status, body, ctype) = if req.uri().path() == "/metrics" && req.method() == http::Method::GET {
            (
                StatusCode::OK,
                self.render(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        } else {
            (StatusCode::NOT_FOUND, "not found\n".to_owned(), "text/plain")
        };
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        r
    }
}
