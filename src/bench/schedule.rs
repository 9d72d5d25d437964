//! When each worker may start another request: warmup first (not measured), then either until a
//! deadline or until a shared budget of requests is used up. Workers ask before every request,
//! so a `--requests N` run measures exactly N requests however many workers share it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How a run ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// Measure for this long after warmup.
    After(Duration),
    /// Measure exactly this many requests.
    Requests(u64),
}

/// What the next request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Sent and checked, but not measured.
    Warmup,
    /// Counted in every figure.
    Measured,
    /// The run is over: stop.
    Done,
}

/// Shared by every worker of a run.
pub struct Schedule {
    measure_start: Instant,
    deadline: Option<Instant>,
    budget: Option<u64>,
    claimed: AtomicU64,
}

impl Schedule {
    /// Starts the clock now: warmup, then measurement.
    pub fn start(warmup: Duration, stop: Stop) -> Schedule {
        let measure_start = Instant::now() + warmup;
        let (deadline, budget) = match stop {
            Stop::After(d) => (Some(measure_start + d), None),
            Stop::Requests(n) => (None, Some(n)),
        };
        Schedule {
            measure_start,
            deadline,
            budget,
            claimed: AtomicU64::new(0),
        }
    }

    /// Decides the phase of the request a worker is about to send.
    pub fn next(&self) -> Phase {
        let now = Instant::now();
        if now < self.measure_start {
            return Phase::Warmup;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return Phase::Done;
        }
        match self.budget {
            Some(n) if self.claimed.fetch_add(1, Ordering::Relaxed) >= n => Phase::Done,
            _ => Phase::Measured,
        }
    }

    /// When measurement began (or begins).
    pub fn measure_start(&self) -> Instant {
        self.measure_start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_budget_is_shared_exactly() {
        let s = Schedule::start(Duration::ZERO, Stop::Requests(3));
        let phases: Vec<Phase> = (0..5).map(|_| s.next()).collect();
        assert_eq!(phases.iter().filter(|p| **p == Phase::Measured).count(), 3);
        assert_eq!(phases[4], Phase::Done);
    }

    #[test]
    fn warmup_comes_first_and_a_deadline_ends_the_run() {
        let s = Schedule::start(Duration::from_secs(3600), Stop::Requests(1));
        assert_eq!(s.next(), Phase::Warmup);
        let s = Schedule::start(Duration::ZERO, Stop::After(Duration::ZERO));
        assert_eq!(s.next(), Phase::Done);
    }
}
