//! The connection-budget families, read from the server's probe at scrape time.

use super::labels::{ReasonLabels, StateLabels};
use super::ConnectionProbe;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The connection-budget families, filled from a [`ConnectionProbe`] at scrape time.
#[derive(Default)]
pub(super) struct ConnectionFamilies {
    pub(super) probe: std::sync::OnceLock<ConnectionProbe>,
    open: Family<StateLabels, Gauge>,
    evictions: Family<ReasonLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    closes: Family<ReasonLabels, Counter>,
}

impl ConnectionFamilies {
    pub(super) fn register(&self, r: &mut Registry) {
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

    pub(super) fn refresh(&self) {
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
