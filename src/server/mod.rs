//! HTTP(S) front end: accept loop with a connection cap, TLS (swappable on reload), hyper
//! HTTP/1.1 with keep-alive and timeouts, the body cap, and the single exit point where every
//! response is built and (through [`Finished`]) handed to whoever records it; authenticated
//! requests also get their log line there (`finished.rs` says what refused ones get).

mod accept;
pub mod budget;
pub mod drain;
mod finished;
pub mod mtls;
pub mod routes;
mod tarpit;
pub mod tls;
pub mod write_deadline;

pub use drain::{Drain, DrainPhase, DrainStart};
pub use finished::{Finished, Observer, Rejection};

use crate::app::App;
use crate::config::ServerConfig;
use crate::error::Error;
use crate::ops::RequestContext;
use crate::xks::ErrorBody;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::CertificateDer;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tls::Tls;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Size of the pen for refused connections, per allowed connection.
pub const TARPIT_PER_CONNECTION: usize = 4;

/// Connection-level limits, from `[server]`.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// Request-head deadline, also the idle keep-alive timeout.
    pub header_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Deadline for the body once the head has arrived.
    pub body_timeout: Duration,
    /// Who gets a slot (see [`budget`]).
    pub budget: budget::BudgetLimits,
    /// Deadline for an unproven connection's handshake and first request head.
    pub first_request_timeout: Duration,
    /// Answers on an unproven connection before it is closed; 0 = no limit.
    pub max_requests_before_proof: u32,
    /// A write stalled this long closes the connection.
    pub write_timeout: Duration,
    /// TCP keepalive idle time.
    pub tcp_keepalive: Duration,
    /// TCP_USER_TIMEOUT.
    pub tcp_user_timeout: Duration,
    /// How long `/ping` answers 503 before a drain closes the listeners.
    pub drain_delay: Duration,
    /// How long open connections get once the listeners are closed.
    pub drain_grace: Duration,
}

impl From<&ServerConfig> for ConnLimits {
    fn from(s: &ServerConfig) -> Self {
        ConnLimits {
            max_connections: s.max_connections,
            handshake_timeout: Duration::from_millis(s.tls_handshake_timeout_ms),
            header_timeout: Duration::from_millis(s.header_read_timeout_ms),
            max_header_bytes: s.max_header_bytes,
            body_timeout: Duration::from_millis(s.body_read_timeout_ms),
            budget: budget::BudgetLimits::from(s),
            first_request_timeout: Duration::from_millis(s.first_request_timeout_ms),
            max_requests_before_proof: s.max_requests_before_proof,
            write_timeout: Duration::from_millis(s.write_timeout_ms),
            tcp_keepalive: Duration::from_secs(s.tcp_keepalive_secs),
            tcp_user_timeout: Duration::from_millis(s.tcp_user_timeout_ms),
            drain_delay: Duration::from_millis(s.drain_delay_ms),
            drain_grace: Duration::from_millis(s.drain_grace_ms),
        }
    }
}

/// Shared state of the HTTP front end.
pub struct Server {
    app: RwLock<Arc<App>>,
    tls: RwLock<Option<Tls>>,
    /// Bumped by every [`Server::swap`]: each open TLS connection watches it and re-checks
    /// its client certificate against the new trust.
    trust_epoch: watch::Sender<u64>,
    limits: ConnLimits,
    next_id: AtomicU64,
    budget: Arc<budget::Budget>,
    /// Called for every finished request (audit record, metrics); fixed at construction.
    observer: Option<Observer>,
    /// Graceful removal from a load balancer.
    drain: Arc<Drain>,
}

impl Server {
    /// A server for `app`; `tls` is `None` only when plain HTTP was explicitly allowed;
    /// `observer` sees every finished request.
    pub fn new(
        app: Arc<App>,
        tls: Option<Tls>,
        limits: ConnLimits,
        observer: Option<Observer>,
    ) -> Arc<Server> {
        let budget = budget::Budget::new(limits.budget.clone());
        let drain = Arc::new(Drain::new(limits.drain_delay, limits.drain_grace, budget.clone()));
        Arc::new(Server {
            drain,
            app: RwLock::new(app),
            tls: RwLock::new(tls),
            trust_epoch: watch::Sender::new(0),
            budget,
            limits,
            next_id: AtomicU64::new(1),
            observer,
        })
    }

    /// The connection budget (its counters and a sample of open connections for metrics).
    pub fn budget(&self) -> &Arc<budget::Budget> {
        &self.budget
    }

    /// The drain state (started by signals and the admin `drain` verb).
    pub fn drain(&self) -> &Arc<Drain> {
        &self.drain
    }

    /// The current app (keystores, credentials, limits).
    pub fn app(&self) -> Arc<App> {
        self.app.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the app and TLS configuration for new requests and new connections. Requests
    /// in flight finish with the snapshot they started with; established connections stay up,
    /// except those whose client certificate (or lack of one) the new client trust refuses:
    /// a trust change must not wait for clients to reconnect.
    pub fn swap(&self, app: Arc<App>, tls: Option<Tls>) {
        *self.app.write().unwrap_or_else(|p| p.into_inner()) = app;
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
        self.trust_epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    fn current_tls(&self) -> Option<Tls> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serves `conn` until it ends, or until a reload installs a client trust that refuses
    /// `chain` (then the connection is dropped, which closes it).
    async fn serve_while_trusted<F: std::future::Future>(
        &self,
        conn: F,
        chain: &[CertificateDer<'static>],
        mut epoch: watch::Receiver<u64>,
    ) -> Option<F::Output> {
        let mut conn = std::pin::pin!(conn);
        loop {
            tokio::select! {
                done = &mut conn => return Some(done),
                changed = epoch.changed() => {
                    if changed.is_err() {
                        return Some(conn.await);
                    }
                    let verdict = self.current_tls().map_or(Ok(()), |t| t.admits(chain));
                    if let Err(why) = verdict {
                        tracing::warn!(reason = %why, "client no longer trusted after reload; closing its connection");
                        return None;
                    }
                }
            }
        }
    }

    /// Accepts connections until a drain begins ([`Server::drain`]); then answers `/ping`
    /// with 503 for the drain delay while still accepting and serving, closes the listeners,
    /// and waits up to the drain grace for open connections to finish their in-flight
    /// requests. Each step is logged with its timing.
    pub async fn serve(self: Arc<Self>, listeners: Vec<TcpListener>) {
        let graceful = GracefulShutdown::new();
        let (stop_accepting, stop) = watch::channel(false);
        let (acceptors, mut accepted) = spawn_acceptors(listeners, stop);
        // Room for more flooding sockets than a client can open on its own share of two
        // cores; each held one costs a descriptor and a few KiB of kernel buffer.
        let mut refusals = tarpit::Refusals::new(TARPIT_PER_CONNECTION * self.limits.max_connections);
        let mut tarpit_sweep = tokio::time::interval(Duration::from_secs(1));
        // Accepting goes on through the drain delay: the balancer may route new connections
        // here until its health checks have seen the 503.
        let announce_over = self.drain.announced();
        tokio::pin!(announce_over);
        loop {
            tokio::select! {
                Some((stream, peer)) = accepted.recv() => self.admit(stream, peer, &graceful, &mut refusals),
                _ = tarpit_sweep.tick(), if refusals.holding() => refusals.release_expired(),
                () = &mut announce_over => break,
            }
        }
        // Tell systemd we are stopping (before the drain, which may take the grace period), and
        // stop accepting at once: close the listening sockets.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        // Each acceptor takes what the kernel has already queued, then closes its socket: a
        // connection the kernel completed but nobody accepted would be reset, and a balancer
        // that forwarded a client over it cannot retry it elsewhere. Later ones are refused
        // at connect, which a balancer does retry.
        // Connections accepted before the close are served, not dropped unanswered: the
        // channel ends when the last acceptor has closed its socket.
        let _ = stop_accepting.send(true);
        drop(acceptors);
        while let Some((stream, peer)) = accepted.recv().await {
            self.admit(stream, peer, &graceful, &mut refusals);
        }
        drop(refusals);
        self.close_connections(graceful).await;
    }

    /// Admits an accepted connection under the budget and serves it, watched by `graceful`.
    fn admit(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        graceful: &GracefulShutdown,
        refusals: &mut tarpit::Refusals,
    ) {
        match self.budget.admit(peer.ip()) {
            Ok(slot) => {
                tokio::spawn(self.clone().connection(stream, slot, graceful.watcher()));
            }
            Err(reason) => refusals.refuse(stream, peer, reason),
        }
    }

    /// The drain's closing phase: in-flight requests are answered and every connection closed
    /// (hyper sends the last response, then closes), within the drain grace.
    async fn close_connections(&self, graceful: GracefulShutdown) {
        let drain = &self.drain;
        let since = || drain.elapsed().unwrap_or_default().as_millis() as u64;
        tracing::warn!(
            elapsed_ms = since(),
            open_connections = drain.open_connections(),
            "drain: listeners closed; answering in-flight requests and closing keep-alive connections"
        );
        drain.advance(DrainPhase::Closing);
        let closing = Instant::now();
        tokio::select! {
            _ = graceful.shutdown() => tracing::warn!(
                elapsed_ms = since(),
                closing_ms = closing.elapsed().as_millis() as u64,
                "drain: all connections drained"
            ),
            _ = tokio::time::sleep(drain.grace) => tracing::warn!(
                elapsed_ms = since(),
                "drain: grace period over; closing remaining connections"
            ),
        }
        drain.advance(DrainPhase::Done);
    }

    async fn handle(&self, req: Request<Incoming>, peer: Option<IpAddr>) -> Response<Full<Bytes>> {
        let start = Instant::now();
        let app = self.app();
        if req.uri().path() == "/ping" && req.method() == http::Method::GET {
            // A load balancer takes an instance whose kill switch is engaged out of rotation.
            if app.gates.proxy().is_closed() {
                return text_response(StatusCode::SERVICE_UNAVAILABLE, "kill switch engaged");
            }
            // Draining: out of rotation, while the requests the balancer still sends are served.
            if self.drain.is_draining() {
                return text_response(StatusCode::SERVICE_UNAVAILABLE, "draining");
            }
            return text_response(StatusCode::OK, "pong");
        }
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut ctx = RequestContext::default();
        let (operation, keystore, key_id, result) =
            process(&app, req, &mut ctx, self.limits.body_timeout).await;
        let (status, outcome) = match &result {
            Ok(_) => (200, "OK"),
            Err(e) => (e.status(), e.name().as_str()),
        };
        if let Err(e @ (Error::Auth(_) | Error::Hsm(_) | Error::Internal(_))) = &result {
            tracing::debug!(request_id, error = %e, "request failed");
        }
        // No verified access key means the request never got past authentication.
        let rejection = match &result {
            Err(e) if ctx.access_key_id.is_none() => Some(Rejection::before_auth(e)),
            _ => None,
        };
        let done = Finished {
            request_id,
            operation,
            keystore,
            key_id,
            ctx: ctx.capped(),
            status,
            outcome,
            latency_us: start.elapsed().as_micros() as u64,
            peer,
            rejection,
        };
        if done.rejection.is_none() {
            finished::log_request(&done);
        }
        if let Some(o) = &self.observer {
            o(&done);
        }
        match result {
            Ok(body) => json_response(StatusCode::OK, body),
            Err(e) => error_response(&e),
        }
    }
}

/// One accept loop per listener, feeding one channel; aborting a loop closes its listener.
fn spawn_acceptors(
    listeners: Vec<TcpListener>,
    stop: watch::Receiver<bool>,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    tokio::sync::mpsc::Receiver<(TcpStream, SocketAddr)>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let acceptors = listeners
        .into_iter()
        .map(|l| {
            let (tx, mut stop) = (tx.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = l.accept() => match r {
                            Ok(c) => {
                                if tx.send(c).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        },
                        _ = stop.changed() => break,
                    }
                }
                take_queued(l, &tx).await;
            })
        })
        .collect();
    (acceptors, rx)
}

/// Accepts every connection the kernel has queued on `l`, then closes it.
async fn take_queued(l: TcpListener, tx: &tokio::sync::mpsc::Sender<(TcpStream, SocketAddr)>) {
    let Ok(l) = l.into_std() else { return };
    // Non-blocking (tokio's listener is): `accept` stops at an empty queue.
    while let Ok((s, peer)) = l.accept() {
        let stream = s.set_nonblocking(true).and_then(|()| TcpStream::from_std(s));
        if let Ok(stream) = stream {
            if tx.send((stream, peer)).await.is_err() {
                return;
            }
        }
    }
}

/// Route -> read body under the cap -> authenticate -> dispatch. Returns what the log line
/// needs alongside the result.
async fn process(
    app: &App,
    req: Request<Incoming>,
    ctx: &mut RequestContext,
    body_timeout: Duration,
) -> (&'static str, String, String, Result<Vec<u8>, Error>) {
    let (parts, body) = req.into_parts();
    let route = match routes::route(&app.api_bases, &parts.method, parts.uri.path(), parts.uri.query()) {
        Ok(r) => r,
        Err(e) => return ("-", "-".into(), "-".into(), Err(e)),
    };
    let ks = &app.keystores[route.keystore];
    let key_id = if route.key_id.is_empty() {
        "-"
    } else {
        route.key_id
    };
    let (op, ks_name, key_id) = (route.op.name(), ks.prefix.clone(), key_id.to_owned());
    let limit = app.limits.max_body_bytes;
    let body = match tokio::time::timeout(body_timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            let e = Error::TooLarge(format!("request body exceeds {limit} bytes"));
            return (op, ks_name, key_id, Err(e));
        }
        Ok(Err(_)) => {
            let e = Error::Validation("request body could not be read".into());
            return (op, ks_name, key_id, Err(e));
        }
        // hyper closes the connection after this response: the rest of the body never came.
        Err(_) => {
            let e = Error::Validation("request body not received in time".into());
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
        Ok(v) => {
            ctx.access_key_id = Some(v.access_key_id);
            // Present only while the connection is unproven; it now holds a reserved slot.
            if let Some(p) = parts.extensions.get::<budget::Proof>() {
                p.prove();
            }
        }
        Err(e) => return (op, ks_name, key_id, Err(e.into())),
    }
    let result = app
        .dispatch(route.keystore, route.op, route.key_id, &body, ctx)
        .await;
    (op, ks_name, key_id, result)
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
