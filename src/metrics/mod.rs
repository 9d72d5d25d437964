//! Prometheus metrics on a separate listener (loopback by default): request counts and
//! latency by keystore/operation/outcome, HSM call latency and queue depth per token, token
//! health, kill switch state per scope, TLS certificate lifetime, reloads, audit write errors.
//! Request counters are pushed by the server's observer; everything else is read at scrape
//! time from the live objects, so there is no second source of truth to drift.

mod connections;
mod labels;
mod listener;
mod probes;
mod registry;
mod scrape;

use crate::hsm::Hsm;
use crate::server::{Finished, Rejection};
use connections::ConnectionFamilies;
use labels::{
    KeyLabels, OperationLabels, RejectionLabels, RequestLabels, ResultLabels, ScopeLabels, TokenLabels,
};
pub use listener::MAX_METRICS_CONNECTIONS;
pub use probes::{ConnectionProbe, ConnectionSample, Counters, DrainProbe, SwitchProbe, SwitchSample};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The latency buckets used throughout.
pub fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s: from a local SoftHSM2 call to KMS's 250 ms budget and beyond.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
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
    /// Log lines dropped because stderr did not take them (see `logging`).
    log_dropped: Gauge,
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
    /// Threads of the async runtime (`server.runtime_threads` or its default), as running.
    runtime_threads: Gauge,
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
            log_dropped: Gauge::default(),
            switch_durable: Gauge::default(),
            pools,
            switch,
            certificate,
            counters,
            audit_write_errors,
            connections: ConnectionFamilies::default(),
            unauthenticated: Family::default(),
            audit_dropped: Counter::default(),
            runtime_threads: Gauge::default(),
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
            m.register_families(&mut r);
        }
        Arc::new(m)
    }

    /// Installs the connection budget's probe (the server is built after the metrics, since
    /// its observer feeds them); later calls are ignored.
    pub fn set_connection_probe(&self, probe: ConnectionProbe) {
        let _ = self.connections.probe.set(probe);
    }

    /// Records how many threads the async runtime runs.
    pub fn set_runtime_threads(&self, n: usize) {
        self.runtime_threads.set(n as i64);
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
}
