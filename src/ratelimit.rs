//! Per-keystore request quota: a token bucket refilled continuously at the configured rate.
//! One uncontended mutex per keystore; requests over quota get 429 ThrottlingException.

use crate::config::RateLimit;
use std::sync::Mutex;
use std::time::Instant;

/// A token bucket.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket for `limit` (burst defaults to one second's worth, at least 1).
    pub fn new(limit: &RateLimit) -> TokenBucket {
        let burst = limit.burst.unwrap_or(limit.requests_per_second).max(1.0);
        TokenBucket {
            rate: limit.requests_per_second,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one token if available.
    pub fn try_take(&self) -> bool {
        self.try_take_at(Instant::now())
    }

    fn try_take_at(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill_at_the_configured_rate() {
        let b = TokenBucket::new(&RateLimit {
            requests_per_second: 10.0,
            burst: Some(3.0),
        });
        let t0 = Instant::now();
        assert!((0..3).all(|_| b.try_take_at(t0)));
        assert!(!b.try_take_at(t0), "burst exhausted");
        assert!(
            !b.try_take_at(t0 + Duration::from_millis(50)),
            "half a token is not enough"
        );
        assert!(b.try_take_at(t0 + Duration::from_millis(110)));
        assert!(!b.try_take_at(t0 + Duration::from_millis(110)));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.try_take_at(later)).count(), 3);
    }
}
