//! The scrape: refresh the values read from live objects, then encode the registry.

use super::labels::{KeyLabels, ResultLabels, ScopeLabels, TokenLabels};
use super::Metrics;

impl Metrics {
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
        self.log_dropped.set(crate::logging::dropped_lines() as i64);
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
}
