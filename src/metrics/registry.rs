//! The name and help text of every metric family, registered once at start.

use super::Metrics;
use prometheus_client::registry::Registry;

impl Metrics {
    /// Registers every family under `r` (the registry's lock is held by the caller).
    pub(super) fn register_families(&self, r: &mut Registry) {
        r.register(
            "requests",
            "XKS requests by keystore, operation and outcome",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "XKS request latency",
            self.latency.clone(),
        );
        r.register(
            "runtime_threads",
            "Threads of the async runtime (server.runtime_threads)",
            self.runtime_threads.clone(),
        );
        r.register(
            "hsm_queue_depth",
            "HSM jobs waiting for a worker",
            self.queue_depth.clone(),
        );
        r.register(
            "token_up",
            "1 when the token is connected and logged in",
            self.token_up.clone(),
        );
        r.register(
            "kill_switch_engaged",
            "1 when the kill switch is engaged for the scope",
            self.kill_switch.clone(),
        );
        r.register(
            "tls_certificate_expiry_seconds",
            "seconds until the server certificate expires",
            self.cert_expiry.clone(),
        );
        r.register(
            "config_reloads",
            "configuration reloads by result",
            self.reloads.clone(),
        );
        r.register(
            "audit_write_errors",
            "audit records that could not be written",
            self.audit_errors.clone(),
        );
        r.register(
            "log_lines_dropped",
            "log lines dropped because stderr (the journal) did not take them fast enough; requests are never held up by logging",
            self.log_dropped.clone(),
        );
        r.register(
                "kill_switch_durable",
                "1 when the kill switch state file holds the state in force, 0 while an engage is not yet durable",
                self.switch_durable.clone(),
            );
        self.connections.register(r);
        r.register(
            "draining",
            "1 while the instance drains: /ping answers 503, the listeners close after server.drain_delay_ms",
            self.draining.clone(),
        );
        r.register(
            "unauthenticated_requests",
            "requests refused before authentication, by reason (not logged one by one, not audited)",
            self.unauthenticated.clone(),
        );
        r.register(
            "key_current_version",
            "the key version Encrypt uses, per key with encryptions since start",
            self.key_version.clone(),
        );
        r.register(
                "key_version_encryptions",
                "encryptions reserved fleet-wide under the current version (an upper bound), as of this instance's last refill",
                self.version_encryptions.clone(),
            );
        r.register(
                "key_version_budget_remaining",
                "encryptions left in the current version's budget; 0 means Encrypt is refused until a new version exists",
                self.version_budget_remaining.clone(),
            );
        r.register(
            "key_rotation_failures",
            "automatic key rotations that could not create a new version",
            self.rotation_failures.clone(),
        );
        r.register(
            "audit_records_dropped",
            "authenticated request records dropped because the audit queue was full",
            self.audit_dropped.clone(),
        );
        for p in &self.pools {
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
}
