//! One accepted connection from admission to close: socket options, the TLS handshake, hyper,
//! and the ways the budget ends a connection early (evicted to admit a newcomer, no first
//! request in time, a response that cannot be written, the unproven request allowance).

use super::budget::{Proof, Slot};
use super::write_deadline::WriteDeadline;
use super::Server;
use http::{header, HeaderValue};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use rustls::pki_types::CertificateDer;
use socket2::{SockRef, TcpKeepalive};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Keepalive probes before the kernel gives up on a silent peer.
const KEEPALIVE_PROBES: u32 = 3;

/// Socket options for an accepted connection. Failures are logged, not fatal: the budget's
/// own deadlines still bound the connection.
pub(super) fn tune_socket(stream: &TcpStream, keepalive: Duration, user_timeout: Duration) {
    // Requests are small and strictly request/response: Nagle would only add delay.
    let _ = stream.set_nodelay(true);
    let sock = SockRef::from(stream);
    let interval = (keepalive / KEEPALIVE_PROBES).max(Duration::from_secs(1));
    let ka = TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval(interval)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
    if let Err(e) = sock.set_tcp_user_timeout(Some(user_timeout)) {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
}

impl Server {
    /// Serves one admitted connection until it closes, is evicted, or sends no request before
    /// the first-request deadline; the slot is released when this returns.
    pub(super) async fn connection(self: Arc<Self>, stream: TcpStream, mut slot: Slot, watcher: Watcher) {
        let limits = &self.limits;
        tune_socket(&stream, limits.tcp_keepalive, limits.tcp_user_timeout);
        let proof = slot.proof().clone();
        let peer = stream.peer_addr().ok().map(|a| a.ip());
        let io = WriteDeadline::new(stream, limits.write_timeout);
        let serve = self.clone().serve_io(io, peer, proof.clone(), watcher);
        tokio::pin!(serve);
        let first_request_by = tokio::time::sleep(limits.first_request_timeout);
        tokio::pin!(first_request_by);
        let (mut evictable, mut awaiting_request) = (true, true);
        loop {
            tokio::select! {
                () = &mut serve => break,
                r = &mut slot.evicted, if evictable => match r {
                    Ok(()) => {
                        tracing::debug!("unproven connection evicted to admit a newer one");
                        break;
                    }
                    // Proven: the budget dropped the handle, nothing can evict it any more.
                    Err(_) => evictable = false,
                },
                () = &mut first_request_by, if awaiting_request => {
                    if proof.has_requested() {
                        awaiting_request = false;
                    } else {
                        self.budget.stats.first_request_timeouts.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("no request before the first-request deadline; closing");
                        break;
                    }
                }
            }
        }
    }

    /// TLS handshake (mTLS proves the connection) and HTTP/1.1 over `io`.
    async fn serve_io(
        self: Arc<Self>,
        io: WriteDeadline<TcpStream>,
        peer: Option<IpAddr>,
        proof: Proof,
        watcher: Watcher,
    ) {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(self.limits.max_header_bytes);
        let service = self.clone().service(peer, proof.clone());
        // Subscribed before the TLS snapshot is taken, so a reload landing after it is seen.
        let epoch = self.trust_epoch.subscribe();
        let result = match self.current_tls() {
            Some(tls) => {
                match tokio::time::timeout(self.limits.handshake_timeout, tls.acceptor.accept(io)).await {
                    Ok(Ok(stream)) => {
                        let chain: Vec<CertificateDer<'static>> = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(<[_]>::to_vec)
                            .unwrap_or_default();
                        // A resumed session skipped the verifier: check its chain against the
                        // trust in force now (cheap on a full handshake, which passed it already).
                        if let Err(why) = tls.admits(&chain) {
                            tracing::warn!(reason = %why, "resumed TLS session refused by the client trust");
                            return;
                        }
                        // A certificate that passed the client trust is KMS: a reserved slot.
                        if !chain.is_empty() {
                            proof.prove();
                        }
                        let conn = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
                        match self.serve_while_trusted(conn, &chain, epoch).await {
                            Some(result) => result,
                            None => return,
                        }
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
                    .watch(http.serve_connection(TokioIo::new(io), service))
                    .await
            }
        };
        if let Err(e) = result {
            if is_timed_out(&e) {
                self.budget.stats.write_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }

    /// The per-connection service: hands the proof flag to the request (only while unproven,
    /// so proven traffic pays nothing) and, if configured, closes an unproven connection after
    /// `max_requests_before_proof` answers.
    fn service(
        self: Arc<Self>,
        peer: Option<IpAddr>,
        proof: Proof,
    ) -> impl hyper::service::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<http_body_util::Full<bytes::Bytes>>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        let answered = Arc::new(AtomicU32::new(0));
        hyper::service::service_fn(move |mut req| {
            let (this, proof, answered) = (self.clone(), proof.clone(), answered.clone());
            async move {
                if !proof.is_proven() {
                    proof.mark_request();
                    req.extensions_mut().insert(proof.clone());
                }
                let mut resp = this.handle(req, peer).await;
                // A keep-alive client of a draining instance reconnects, through the balancer,
                // to one still in rotation; its next request never meets a closing socket.
                if this.drain.is_draining() {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                let allowance = this.limits.max_requests_before_proof;
                if allowance > 0
                    && !proof.is_proven()
                    && answered.fetch_add(1, Ordering::Relaxed) + 1 >= allowance
                {
                    this.budget
                        .stats
                        .unproven_request_limit
                        .fetch_add(1, Ordering::Relaxed);
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    }
}

/// A write that made no progress (our deadline or the kernel's TCP_USER_TIMEOUT).
fn is_timed_out(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    false
}
