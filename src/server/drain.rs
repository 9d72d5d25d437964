//! Graceful removal from a load balancer. A drain has three phases: *announcing* (`/ping`
//! answers 503 for `drain_delay` while every other request is still served, each response
//! carrying `Connection: close` so keep-alive clients behind a TCP-mode balancer reconnect to an
//! instance still in rotation), *closing* (listeners closed, in-flight requests answered, idle
//! connections closed) and *done*. SIGTERM, SIGINT and the admin `drain` verb all start the same
//! sequence; a second start while one runs only reports the drain already under way, except
//! that a repeated signal ([`Drain::hurry`]) cuts the announce phase short.

use super::budget::Budget;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Where a drain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainPhase {
    /// Serving normally.
    Serving,
    /// `/ping` answers 503; everything else is still served.
    Announcing,
    /// Listeners are closed; open connections finish their requests.
    Closing,
    /// Every connection is closed (or the grace period ran out).
    Done,
}

/// What [`Drain::begin`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainStart {
    /// A drain was already under way (this call changed nothing).
    pub already: bool,
    /// Time since the drain began (0 for the call that began it).
    pub since: Duration,
}

/// The drain state of one server, shared by the accept loop, the request handler, the signal
/// handlers, the admin verb and the metrics.
pub struct Drain {
    /// Read on every response: one atomic load, no lock.
    draining: AtomicBool,
    /// How long `/ping` answers 503 before the listeners close.
    pub delay: Duration,
    /// How long open connections get once the listeners are closed.
    pub grace: Duration,
    phase: watch::Sender<DrainPhase>,
    started: Mutex<Option<(Instant, String)>>,
    /// Open connections, for the reports.
    budget: Arc<Budget>,
    /// Ends the announce phase early (an operator pressing Ctrl-C twice).
    hurry: tokio::sync::Notify,
}

impl Drain {
    /// A server not draining, with the delay and grace it will use.
    pub fn new(delay: Duration, grace: Duration, budget: Arc<Budget>) -> Drain {
        Drain {
            hurry: tokio::sync::Notify::new(),
            budget,
            draining: AtomicBool::new(false),
            delay,
            grace,
            phase: watch::Sender::new(DrainPhase::Serving),
            started: Mutex::new(None),
        }
    }

    /// Starts the drain on behalf of `via` (logged); idempotent.
    pub fn begin(&self, via: &str) -> DrainStart {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, first)) = started.as_ref() {
            tracing::info!(via, first_via = %first, elapsed_ms = at.elapsed().as_millis() as u64, "drain already under way");
            return DrainStart {
                already: true,
                since: at.elapsed(),
            };
        }
        *started = Some((Instant::now(), via.to_owned()));
        self.draining.store(true, Ordering::SeqCst);
        self.phase.send_replace(DrainPhase::Announcing);
        tracing::warn!(
            via,
            open_connections = self.open_connections(),
            drain_delay_ms = self.delay.as_millis() as u64,
            grace_ms = self.grace.as_millis() as u64,
            "drain started: /ping answers 503 and responses carry Connection: close; listeners close after the drain delay"
        );
        DrainStart {
            already: false,
            since: Duration::ZERO,
        }
    }

    /// Is a drain under way (any phase after serving)?
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The current phase.
    pub fn phase(&self) -> DrainPhase {
        *self.phase.borrow()
    }

    /// Follows the phase changes.
    pub fn watch(&self) -> watch::Receiver<DrainPhase> {
        self.phase.subscribe()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        let s = self.budget.sample();
        s.proven + s.unproven
    }

    /// Time since the drain began, if it did.
    pub fn elapsed(&self) -> Option<Duration> {
        let started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        started.as_ref().map(|(at, _)| at.elapsed())
    }

    pub(super) fn advance(&self, to: DrainPhase) {
        self.phase.send_replace(to);
    }

    /// Ends the announce phase now, if a drain is announcing (it is remembered otherwise).
    pub fn hurry(&self) {
        tracing::warn!("drain: cutting the drain delay short");
        self.hurry.notify_one();
    }

    /// Resolves when the announce phase is over: a drain began and its delay passed (or
    /// [`Drain::hurry`] was called).
    pub(super) async fn announced(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p != DrainPhase::Serving).await;
        tokio::select! {
            () = tokio::time::sleep(self.delay) => {}
            () = self.hurry.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_begin_reports_the_drain_already_under_way() {
        let budget = Budget::new(crate::server::budget::BudgetLimits {
            max_connections: 4,
            max_unproven: 1,
            max_unproven_per_source: 0,
            max_per_source: 0,
            per_source_on_loopback: false,
        });
        let d = Drain::new(Duration::from_millis(10), Duration::from_secs(1), budget);
        assert!(!d.is_draining());
        assert_eq!(d.phase(), DrainPhase::Serving);
        let first = d.begin("test");
        assert!(!first.already);
        assert!(d.is_draining());
        assert_eq!(d.phase(), DrainPhase::Announcing);
        let second = d.begin("again");
        assert!(second.already);
        assert_eq!(d.phase(), DrainPhase::Announcing);
    }
}
