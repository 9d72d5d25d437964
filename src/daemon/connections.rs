//! The connection budget's counters as the metrics read them (the daemon joins the two: the
//! server sits above the metrics and must not name them).

use crate::metrics::{ConnectionProbe, ConnectionSample};
use crate::server::budget::{Budget, Refusal};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Samples `budget` at scrape time.
pub(super) fn probe(budget: Arc<Budget>) -> ConnectionProbe {
    Arc::new(move || {
        let open = budget.sample();
        let s = &budget.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConnectionSample {
            open: vec![("proven", open.proven as u64), ("unproven", open.unproven as u64)],
            evictions: vec![
                ("unproven_share", n(&s.evicted_share)),
                ("per_source", n(&s.evicted_per_source)),
            ],
            refusals: vec![
                (Refusal::AllProven.as_str(), n(&s.refused_all_proven)),
                (Refusal::PerSource.as_str(), n(&s.refused_per_source)),
                (
                    Refusal::PerSourceUnproven.as_str(),
                    n(&s.refused_per_source_unproven),
                ),
            ],
            closes: vec![
                ("first_request_timeout", n(&s.first_request_timeouts)),
                ("unproven_request_limit", n(&s.unproven_request_limit)),
                ("write_timeout", n(&s.write_timeouts)),
            ],
        }
    })
}
