//! What happens to every finished request: an authenticated one gets its audit record and its
//! metrics; one refused before authentication gets only a counter by reason and a share of a
//! rate-limited WARN summary. Someone without credentials can thus neither fill the log volume
//! (which also holds the kill switch state file) nor the audit queue, where they would push out
//! the records of real Decrypts. A record the queue refuses anyway raises an ERROR line and
//! `xks_bridge_audit_records_dropped_total`.

use super::sinks;
use crate::audit::AuditLog;
use crate::metrics::Metrics;
use crate::server::{Finished, Observer, Rejection};
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// At most one summary line (and one dropped-record ERROR line) per this period.
pub(super) const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Distinct sources remembered per summary; beyond it the count is reported as a lower bound,
/// so a spoofed-source flood cannot grow the set without limit.
const MAX_SOURCES: usize = 4096;

/// Builds the observer; `alarms` also need a periodic [`Alarms::tick`] so that the last
/// counts of a burst are reported even if no request follows.
pub(super) fn observer(
    audit: Option<Arc<AuditLog>>,
    metrics: Option<Arc<Metrics>>,
    alarms: Arc<Alarms>,
) -> Observer {
    Arc::new(move |d: &Finished| {
        if let Some(m) = &metrics {
            m.observe(d);
        }
        if let Some(reason) = d.rejection {
            if let Some(m) = &metrics {
                m.observe_rejected(reason);
            }
            alarms.rejected(reason, d.peer);
            return;
        }
        if let Some(a) = &audit {
            if !a.record(sinks::request_record(d)) {
                if let Some(m) = &metrics {
                    m.audit_record_dropped();
                }
                alarms.dropped(d);
            }
        }
    })
}

/// The rate-limited summary of refused requests and the dropped-record alarm.
#[derive(Default)]
pub(super) struct Alarms {
    rejected: Mutex<Window>,
    dropped: Mutex<DropWindow>,
}

#[derive(Default)]
struct Window {
    last_line: Option<Instant>,
    counts: BTreeMap<Rejection, u64>,
    sources: HashSet<IpAddr>,
    sources_capped: bool,
}

#[derive(Default)]
struct DropWindow {
    last_line: Option<Instant>,
    count: u64,
    last_kms_request_id: Option<String>,
}

fn due(last: Option<Instant>) -> bool {
    last.is_none_or(|t| t.elapsed() >= SUMMARY_EVERY)
}

impl Alarms {
    fn rejected(&self, reason: Rejection, peer: Option<IpAddr>) {
        let mut w = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        *w.counts.entry(reason).or_default() += 1;
        if let Some(ip) = peer {
            if w.sources.len() < MAX_SOURCES {
                w.sources.insert(ip);
            } else if !w.sources.contains(&ip) {
                w.sources_capped = true;
            }
        }
        if due(w.last_line) {
            w.summarise();
        }
    }

    fn dropped(&self, d: &Finished) {
        let mut w = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
        w.count += 1;
        w.last_kms_request_id.clone_from(&d.ctx.kms_request_id);
        if due(w.last_line) {
            w.report();
        }
    }

    /// Reports what accumulated since the last lines, if their period is over or `now` (at
    /// shutdown: the last counts must not vanish with the process).
    pub(super) fn tick(&self, now: bool) {
        let mut w = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        if !w.counts.is_empty() && (now || due(w.last_line)) {
            w.summarise();
        }
        drop(w);
        let mut w = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
        if w.count > 0 && (now || due(w.last_line)) {
            w.report();
        }
    }
}

impl Window {
    fn summarise(&mut self) {
        let total: u64 = self.counts.values().sum();
        let mut by_count: Vec<(Rejection, u64)> = self.counts.iter().map(|(r, n)| (*r, *n)).collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let top = by_count
            .iter()
            .take(3)
            .map(|(r, n)| format!("{}={n}", r.as_str()))
            .collect::<Vec<_>>()
            .join(" ");
        let since = self
            .last_line
            .map_or("start".to_owned(), |t| format!("{} s", t.elapsed().as_secs()));
        tracing::warn!(
            requests = total,
            sources = self.sources.len(),
            sources_at_least = self.sources_capped,
            top = %top,
            since = %since,
            "requests refused before authentication (not logged one by one, not audited; counted in xks_bridge_unauthenticated_requests_total)"
        );
        self.counts.clear();
        self.sources.clear();
        self.sources_capped = false;
        self.last_line = Some(Instant::now());
    }
}

impl DropWindow {
    fn report(&mut self) {
        tracing::error!(
            dropped = self.count,
            last_kms_request_id = self.last_kms_request_id.as_deref().unwrap_or("-"),
            "AUDIT RECORDS DROPPED: the audit queue was full (disk too slow?); these authenticated requests have no audit record, a `lost` record in the trail counts them"
        );
        self.count = 0;
        self.last_line = Some(Instant::now());
    }
}
