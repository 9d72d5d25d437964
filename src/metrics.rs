//! Prometheus metrics on a separate listener (loopback by default): request counts and
//! latency by keystore/operation/outcome, HSM call latency and queue depth per token, token
//! health, kill switch state per scope, TLS certificate lifetime, reloads, audit write errors.
//! Request counters are pushed by the server's observer; everything else is read at scrape
//! time from the live objects, so there is no second source of truth to drift.

use crate::hsm::Hsm;
use crate::server::{Finished, Rejection};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    keystore: String,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    token: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The connection budget as metrics see it, sampled at scrape time.
#[derive(Debug, Clone, Default)]
pub struct ConnectionSample {
    /// Open connections by state (`proven`, `unproven`).
    pub open: Vec<(&'static str, u64)>,
    /// Unproven connections evicted to admit a newcomer, by reason.
    pub evictions: Vec<(&'static str, u64)>,
    /// Newcomers refused, by reason.
    pub refusals: Vec<(&'static str, u64)>,
    /// Connections closed by a budget deadline or limit, by reason.
    pub closes: Vec<(&'static str, u64)>,
}

/// Takes a [`ConnectionSample`] (the server provides it once it exists).
pub type ConnectionProbe = Arc<dyn Fn() -> ConnectionSample + Send + Sync>;

/// The connection-budget families, filled from a [`ConnectionProbe`] at scrape time.
#[derive(Default)]
struct ConnectionFamilies {
    probe: std::sync::OnceLock<ConnectionProbe>,
    open: Family<StateLabels, Gauge>,
    evictions: Family<ReasonLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    closes: Family<ReasonLabels, Counter>,
}

impl ConnectionFamilies {
    fn register(&self, r: &mut Registry) {
        r.register("connections", "open connections by state", self.open.clone());
        r.register(
            "connection_evictions",
            "unproven connections evicted to admit a newer connection, by reason",
            self.evictions.clone(),
        );
        r.register(
            "connection_refusals",
            "new connections closed at accept, by reason",
            self.refusals.clone(),
        );
        r.register(
            "connection_closes",
            "connections closed by a budget deadline or limit, by reason",
            self.closes.clone(),
        );
    }

    fn refresh(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(probe) = self.probe.get() else {
            return;
        };
        let s = probe();
        for (state, n) in s.open {
            self.open.get_or_create(&StateLabels { state }).set(n as i64);
        }
        for (family, values) in [
            (&self.evictions, s.evictions),
            (&self.refusals, s.refusals),
            (&self.closes, s.closes),
        ] {
            for (reason, n) in values {
                family
                    .get_or_create(&ReasonLabels { reason })
                    .inner()
                    .store(n, Relaxed);
            }
        }
    }
}

/// The latency buckets used throughout.
pub fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s: from a local SoftHSM2 call to KMS's 250 ms budget and beyond.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// Counters other components increment (they own them; metrics only reads).
#[derive(Default)]
pub struct Counters {
    /// Successful reloads.
    pub reloads_ok: AtomicU64,
    /// Refused reloads.
    pub reloads_failed: AtomicU64,
}

/// The metrics registry and the sources it reads at scrape time.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OperationLabels, Histogram>,
    queue_depth: Family<TokenLabels, Gauge>,
    token_up: Family<TokenLabels, Gauge>,
    kill_switch: Family<ScopeLabels, Gauge>,
    cert_expiry: Gauge<f64, std::sync::atomic::AtomicU64>,
    reloads: Family<ResultLabels, Gauge>,
    audit_errors: Gauge,
    switch_durable: Gauge,
    pools: Vec<Hsm>,
    switch: SwitchProbe,
    certificate: Option<PathBuf>,
    counters: Arc<Counters>,
    audit_write_errors: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
    connections: ConnectionFamilies,
    /// Requests refused before authentication, by reason (they get no log line or record).
    unauthenticated: Family<RejectionLabels, Counter>,
    /// Authenticated request records the audit queue refused.
    audit_dropped: Counter,
    /// 1 while the instance drains (out of the load balancer's rotation, about to exit).
    draining: Gauge,
    draining_probe: std::sync::OnceLock<DrainProbe>,
    /// Per key with encryptions since start: its current version, the encryptions counted
    /// under it fleet-wide and the budget left (labels bounded by the keys on the token).
    key_version: Family<KeyLabels, Gauge>,
    version_encryptions: Family<KeyLabels, Gauge>,
    version_budget_remaining: Family<KeyLabels, Gauge>,
    rotation_failures: Family<TokenLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct KeyLabels {
    token: String,
    key_id: String,
}

/// Whether the server drains, read at scrape time (the server sits above the metrics).
pub type DrainProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// The kill switch as metrics see it, sampled at scrape time.
#[derive(Debug, Clone, Default)]
pub struct SwitchSample {
    /// `proxy`, `keystore:<prefix>`, `key:<id>` and whether each is engaged.
    pub engaged: Vec<(String, bool)>,
    /// Does the state file hold the state in force?
    pub durable: bool,
}

/// Takes a [`SwitchSample`] (the control plane provides it; metrics sit below it).
pub type SwitchProbe = Arc<dyn Fn() -> SwitchSample + Send + Sync>;

impl Metrics {
    /// A registry over the daemon's pools, control plane and certificate.
    pub fn new(
        pools: Vec<Hsm>,
        switch: SwitchProbe,
        certificate: Option<PathBuf>,
        counters: Arc<Counters>,
        audit_write_errors: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
    ) -> Arc<Metrics> {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("xks_bridge")),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            queue_depth: Family::default(),
            token_up: Family::default(),
            kill_switch: Family::default(),
            cert_expiry: Gauge::default(),
            reloads: Family::default(),
            audit_errors: Gauge::default(),
            switch_durable: Gauge::default(),
            pools,
            switch,
            certificate,
            counters,
            audit_write_errors,
            connections: ConnectionFamilies::default(),
            unauthenticated: Family::default(),
            audit_dropped: Counter::default(),
            draining: Gauge::default(),
            draining_probe: std::sync::OnceLock::new(),
            key_version: Family::default(),
            version_encryptions: Family::default(),
            version_budget_remaining: Family::default(),
            rotation_failures: Family::default(),
        };
        for r in Rejection::ALL {
            // Present at 0 from the start, so that a rate() alert has a series to watch.
            let _ = m
                .unauthenticated
                .get_or_create(&RejectionLabels { reason: r.as_str() });
        }
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register(
                "requests",
                "XKS requests by keystore, operation and outcome",
                m.requests.clone(),
            );
            r.register(
                "request_duration_seconds",
                "XKS request latency",
                m.latency.clone(),
            );
            r.register(
                "hsm_queue_depth",
                "HSM jobs waiting for a worker",
                m.queue_depth.clone(),
            );
            r.register(
                "token_up",
                "1 when the token is connected and logged in",
                m.token_up.clone(),
            );
            r.register(
                "kill_switch_engaged",
                "1 when the kill switch is engaged for the scope",
                m.kill_switch.clone(),
            );
            r.register(
                "tls_certificate_expiry_seconds",
                "seconds until the server certificate expires",
                m.cert_expiry.clone(),
            );
            r.register(
                "config_reloads",
                "configuration reloads by result",
                m.reloads.clone(),
            );
            r.register(
                "audit_write_errors",
                "audit records that could not be written",
                m.audit_errors.clone(),
            );
            r.register(
                "kill_switch_durable",
                "1 when the kill switch state file holds the state in force, 0 while an engage is not yet durable",
                m.switch_durable.clone(),
            );
            m.connections.register(&mut r);
            r.register(
                "draining",
                "1 while the instance drains: /ping answers 503, the listeners close after server.drain_delay_ms",
                m.draining.clone(),
            );
            r.register(
                "unauthenticated_requests",
                "requests refused before authentication, by reason (not logged one by one, not audited)",
                m.unauthenticated.clone(),
            );
            r.register(
                "key_current_version",
                "the key version Encrypt uses, per key with encryptions since start",
                m.key_version.clone(),
            );
            r.register(
                "key_version_encryptions",
                "encryptions reserved fleet-wide under the current version (an upper bound), as of this instance's last refill",
                m.version_encryptions.clone(),
            );
            r.register(
                "key_version_budget_remaining",
                "encryptions left in the current version's budget; 0 means Encrypt is refused until a new version exists",
                m.version_budget_remaining.clone(),
            );
            r.register(
                "key_rotation_failures",
                "automatic key rotations that could not create a new version",
                m.rotation_failures.clone(),
            );
            r.register(
                "audit_records_dropped",
                "authenticated request records dropped because the audit queue was full",
                m.audit_dropped.clone(),
            );
            for p in &m.pools {
                let label = (
                    std::borrow::Cow::Borrowed("token"),
                    std::borrow::Cow::Owned(p.token().name.clone()),
                );
                r.sub_registry_with_label(label).register(
                    "hsm_call_duration_seconds",
                    "HSM job latency, queue wait included",
                    p.call_latency().clone(),
                );
            }
        }
        Arc::new(m)
    }

    /// Installs the connection budget's probe (the server is built after the metrics, since
    /// its observer feeds them); later calls are ignored.
    pub fn set_connection_probe(&self, probe: ConnectionProbe) {
        let _ = self.connections.probe.set(probe);
    }

    /// Installs the drain probe; later calls are ignored.
    pub fn set_drain_probe(&self, probe: DrainProbe) {
        let _ = self.draining_probe.set(probe);
    }

    /// Records one finished request (installed as the server's observer).
    pub fn observe(&self, d: &Finished) {
        let labels = RequestLabels {
            keystore: d.keystore.clone(),
            operation: d.operation,
            outcome: d.outcome,
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&OperationLabels {
                operation: d.operation,
            })
            .observe(d.latency_us as f64 / 1e6);
    }

    /// Counts one request refused before authentication.
    pub fn observe_rejected(&self, r: Rejection) {
        self.unauthenticated
            .get_or_create(&RejectionLabels { reason: r.as_str() })
            .inc();
    }

    /// Counts one request record the audit queue refused.
    pub fn audit_record_dropped(&self) {
        self.audit_dropped.inc();
    }

    /// Renders the text exposition, refreshing the read-at-scrape values first.
    pub fn render(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        for p in &self.pools {
            let t = TokenLabels {
                token: p.token().name.clone(),
            };
            self.queue_depth.get_or_create(&t).set(p.queue_len() as i64);
            self.token_up
                .get_or_create(&t)
                .set(i64::from(p.token().is_connected()));
            self.rotation_failures
                .get_or_create(&t)
                .set(p.token().rotation_failures() as i64);
            for u in p.token().version_use() {
                let k = KeyLabels {
                    token: t.token.clone(),
                    key_id: u.key_id,
                };
                self.key_version.get_or_create(&k).set(i64::from(u.version));
                self.version_encryptions.get_or_create(&k).set(u.counted as i64);
                self.version_budget_remaining
                    .get_or_create(&k)
                    .set(u.remaining as i64);
            }
        }
        let sample = (self.switch)();
        // Rebuilt each scrape so a released key or removed keystore does not linger.
        self.kill_switch.clear();
        for (scope, engaged) in sample.engaged {
            self.kill_switch
                .get_or_create(&ScopeLabels { scope })
                .set(i64::from(engaged));
        }
        self.switch_durable.set(i64::from(sample.durable));
        if let Some(Ok(s)) = self
            .certificate
            .as_deref()
            .map(crate::server::mtls::seconds_to_expiry)
        {
            self.cert_expiry.set(s as f64);
        }
        self.reloads
            .get_or_create(&ResultLabels { result: "ok" })
            .set(self.counters.reloads_ok.load(Relaxed) as i64);
        self.reloads
            .get_or_create(&ResultLabels { result: "refused" })
            .set(self.counters.reloads_failed.load(Relaxed) as i64);
        if let Some(f) = &self.audit_write_errors {
            self.audit_errors.set(f() as i64);
        }
        self.connections.refresh();
        if let Some(p) = self.draining_probe.get() {
            self.draining.set(i64::from(p()));
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }

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
