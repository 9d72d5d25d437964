//! What a run counts: a fixed-size log-linear latency histogram (bounded memory however long the
//! run, under 0.4% error per value) and per-worker tallies merged at the end, so the hot path
//! never shares a lock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Values below `2^SUB_BITS` are exact; above, each power of two is split into `2^(SUB_BITS-1)`
/// buckets.
const SUB_BITS: u32 = 9;
const HALF: u64 = 1 << (SUB_BITS - 1);
/// Latencies are bucketed up to 2^40 ns (18 minutes); the exact maximum is kept separately.
const TRACKED_BITS: u32 = 40;
/// Enough buckets for every value up to `2^TRACKED_BITS`.
const BUCKETS: usize = ((TRACKED_BITS - SUB_BITS) as usize + 2) * HALF as usize;

/// Latencies in nanoseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    let v = v.min((1 << TRACKED_BITS) - 1);
    let bits = 64 - v.leading_zeros();
    if bits <= SUB_BITS {
        return v as usize;
    }
    let shift = bits - SUB_BITS;
    // v >> shift lies in [HALF, 2*HALF): one bucket per value of the top SUB_BITS bits.
    (shift as u64 * HALF + (v >> shift)) as usize
}

/// The middle of a bucket's range, so that the reported value is off by at most half a bucket.
fn value_of(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * HALF {
        return i;
    }
    let shift = i / HALF - 1;
    let mantissa = i - shift * HALF;
    (mantissa << shift) + ((1u64 << shift) >> 1)
}

impl Histogram {
    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[index(ns)] += 1;
        self.count += 1;
        self.sum += u128::from(ns);
        self.max = self.max.max(ns);
    }

    /// Adds another histogram's values.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0..=1) in nanoseconds; 0 when empty. Never above the maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value_of(i).min(self.max);
            }
        }
        self.max
    }

    /// Largest value recorded, exact.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean in nanoseconds; 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }
}

/// Everything one worker (connection task or token thread) observed.
#[derive(Default, Clone)]
pub struct Tally {
    /// Latency of measured requests that got an answer (an error answer included).
    pub latency: Histogram,
    /// Measured requests by operation name.
    pub ops: BTreeMap<&'static str, u64>,
    /// Measured failures by name (XKS errorName, verification failure, transport kind).
    pub errors: BTreeMap<String, u64>,
    /// Requests made during warmup; not in any other figure.
    pub warmup: u64,
    /// Failures during warmup: they still fail the run.
    pub warmup_errors: u64,
    /// When the last measured request finished: the end of the measured interval.
    pub last_end: Option<Instant>,
}

impl Tally {
    /// Measured requests, failed ones included.
    pub fn total(&self) -> u64 {
        self.ops.values().sum()
    }

    /// Measured failures.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Records one measured request.
    pub fn measured(&mut self, op: &'static str, latency: Option<Duration>, error: Option<&str>) {
        *self.ops.entry(op).or_default() += 1;
        if let Some(d) = latency {
            self.latency.record(d);
        }
        if let Some(name) = error {
            match self.errors.get_mut(name) {
                Some(n) => *n += 1,
                None => {
                    self.errors.insert(name.to_owned(), 1);
                }
            }
        }
        self.last_end = Some(Instant::now());
    }

    /// Records one warmup request.
    pub fn warmup(&mut self, failed: bool) {
        self.warmup += 1;
        self.warmup_errors += u64::from(failed);
    }

    /// Adds another worker's tally.
    pub fn merge(&mut self, other: &Tally) {
        self.latency.merge(&other.latency);
        for (k, v) in &other.ops {
            *self.ops.entry(k).or_default() += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.warmup += other.warmup;
        self.warmup_errors += other.warmup_errors;
        self.last_end = self.last_end.max(other.last_end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_precise() {
        let mut last = 0;
        for v in (0..5000u64).chain([1 << 20, 123_456_789, (1 << 40) - 1]) {
            let i = index(v);
            assert!(i < BUCKETS, "{v}");
            let mid = value_of(i) as f64;
            assert!((mid - v as f64).abs() <= v as f64 / 256.0 + 0.5, "{v} -> {mid}");
            if v < 5000 {
                assert!(i == last || i == last + 1 || v == 0, "{v}");
                last = i;
            }
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_follow_the_data() {
        let mut h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5) as f64 / 1000.0;
        assert!((p50 - 500.0).abs() < 3.0, "{p50}");
        assert!(h.quantile(0.99) <= h.quantile(0.999));
        assert_eq!(h.max(), 1_000_000);
        assert!(h.quantile(1.0) <= h.max());
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }

    #[test]
    fn tallies_merge() {
        let mut a = Tally::default();
        a.measured("encrypt", Some(Duration::from_micros(5)), None);
        let mut b = Tally::default();
        b.measured("encrypt", None, Some("Timeout"));
        b.warmup(true);
        a.merge(&b);
        assert_eq!((a.total(), a.error_count(), a.warmup_errors), (2, 1, 1));
        assert_eq!(a.latency.count(), 1);
    }
}
