//! Wall-clock timestamps in the one format every record of the proxy uses (RFC 3339, UTC).

/// Current UTC time in RFC 3339, with sub-second precision.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp (as [`now_rfc3339`] writes it).
pub fn rfc3339_to_ms(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// "At most once per interval", for log lines that a flood would otherwise repeat per event
/// (refused connections, a token refusing counters): counts what it held back.
#[derive(Debug)]
pub struct Throttle {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl Throttle {
    /// At most once per `every`.
    pub const fn new(every: std::time::Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(events held back since the last time)` when the caller may log now.
    pub fn due(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(std::time::Instant::now());
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_through_per_interval_and_counts_the_rest() {
        let mut t = Throttle::new(std::time::Duration::from_millis(50));
        assert_eq!(t.due(), Some(0));
        assert_eq!(t.due(), None);
        assert_eq!(t.due(), None);
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(t.due(), Some(2));
    }
}
