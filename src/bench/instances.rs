//! Per-instance distribution behind a load balancer: with `--instance-metrics URL` (one per
//! instance, each its `[metrics]` endpoint), the bench reads every instance's
//! `xks_bridge_requests_total` before and after the run and reports each one's share of the
//! requests served meanwhile (warmup and the bench's own set-up requests included: the
//! counters cannot tell them apart).

use super::error::{BenchError, ScrapeError};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Bound on connecting to, and reading, one metrics endpoint.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// The counter summed over all its labels.
const REQUESTS: &str = "xks_bridge_requests_total";

/// A checked `--instance-metrics` URL: `http://HOST:PORT[/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsUrl {
    /// As given, for the report.
    pub url: String,
    authority: String,
    path: String,
}

impl MetricsUrl {
    /// Parses `http://HOST[:PORT][/PATH]` (default path `/metrics`); the metrics listener
    /// speaks plain HTTP only.
    pub fn parse(text: &str) -> Result<MetricsUrl, BenchError> {
        let uri: http::Uri = text.parse().map_err(|_| BenchError::MetricsUrl {
            text: text.to_owned(),
        })?;
        if uri.scheme_str() != Some("http") {
            return Err(BenchError::MetricsScheme {
                text: text.to_owned(),
            });
        }
        let a = uri.authority().ok_or_else(|| BenchError::MetricsHost {
            text: text.to_owned(),
        })?;
        let path = match uri.path() {
            "" | "/" => "/metrics".to_owned(),
            p => p.to_owned(),
        };
        Ok(MetricsUrl {
            url: text.to_owned(),
            authority: format!("{}:{}", a.host(), a.port_u16().unwrap_or(80)),
            path,
        })
    }

    /// The sum of `xks_bridge_requests_total` over all its labels, now.
    pub fn requests(&self) -> Result<u64, ScrapeError> {
        let addr = self
            .authority
            .to_socket_addrs()?
            .next()
            .ok_or(ScrapeError::NoAddress)?;
        let mut s = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)?;
        s.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.path, self.authority
        );
        s.write_all(req.as_bytes())?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        if !text.starts_with("HTTP/1.1 200") {
            return Err(ScrapeError::Status(
                text.lines().next().unwrap_or("no answer").to_owned(),
            ));
        }
        Ok(sum_counter(&text, REQUESTS))
    }
}

/// Sums every sample of the counter `name` in a text exposition.
fn sum_counter(exposition: &str, name: &str) -> u64 {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// One instance's part of the run.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceShare {
    /// The metrics URL given.
    pub url: String,
    /// Requests it counted during the run; `None` when it could not be read before and after,
    /// or its counter went backwards (it restarted).
    pub requests: Option<u64>,
    /// Its fraction of the requests all readable instances counted.
    pub share: Option<f64>,
    /// Why `requests` is missing.
    pub note: Option<String>,
}

/// Reads every instance's counter (before or after the run).
pub fn read_all(urls: &[MetricsUrl]) -> Vec<Result<u64, ScrapeError>> {
    urls.iter().map(MetricsUrl::requests).collect()
}

/// Each instance's share, from the readings before and after.
pub fn shares(
    urls: &[MetricsUrl],
    before: &[Result<u64, ScrapeError>],
    after: &[Result<u64, ScrapeError>],
) -> Vec<InstanceShare> {
    let deltas: Vec<Result<u64, Gap<'_>>> = before
        .iter()
        .zip(after)
        .map(|(b, a)| match (b, a) {
            (Ok(b), Ok(a)) if a >= b => Ok(a - b),
            (Ok(_), Ok(_)) => Err(Gap::Backwards),
            (Err(e), _) => Err(Gap::Before(e)),
            (_, Err(e)) => Err(Gap::After(e)),
        })
        .collect();
    let total: u64 = deltas.iter().filter_map(|d| d.as_ref().ok()).sum();
    urls.iter()
        .zip(deltas)
        .map(|(u, d)| match d {
            Ok(n) => InstanceShare {
                url: u.url.clone(),
                requests: Some(n),
                share: (total > 0).then(|| n as f64 / total as f64),
                note: None,
            },
            Err(e) => InstanceShare {
                url: u.url.clone(),
                requests: None,
                share: None,
                note: Some(e.to_string()),
            },
        })
        .collect()
}

/// Why an instance has no count for the run; the text is its note in the report.
#[derive(Debug, thiserror::Error)]
enum Gap<'a> {
    #[error("counter went backwards (the instance restarted)")]
    Backwards,
    #[error("unreadable before the run: {0}")]
    Before(&'a ScrapeError),
    #[error("unreadable after the run: {0}")]
    After(&'a ScrapeError),
}

/// The report's lines, one per instance.
pub fn text(shares: &[InstanceShare]) -> String {
    let mut out = String::from("  by instance (xks_bridge_requests_total during the run, warmup included)\n");
    for s in shares {
        match (s.requests, s.share, &s.note) {
            (Some(n), Some(f), _) => out.push_str(&format!("    {:<40} {n:>9} {:>6.1}%\n", s.url, f * 100.0)),
            (Some(n), None, _) => out.push_str(&format!("    {:<40} {n:>9}\n", s.url)),
            (_, _, note) => out.push_str(&format!("    {:<40} {}\n", s.url, note.as_deref().unwrap_or("-"))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_counter_is_summed_over_its_labels_only() {
        let text = "# TYPE xks_bridge_requests counter\n\
                    xks_bridge_requests_total{keystore=\"/a\",operation=\"encrypt\",outcome=\"OK\"} 7\n\
                    xks_bridge_requests_total{keystore=\"/a\",operation=\"decrypt\",outcome=\"OK\"} 5\n\
                    xks_bridge_requests_total_other 100\n\
                    xks_bridge_unauthenticated_requests_total{reason=\"unsigned\"} 3\n";
        assert_eq!(sum_counter(text, REQUESTS), 12);
    }

    #[test]
    fn shares_split_the_counted_requests_and_name_what_could_not_be_read() {
        let urls: Vec<MetricsUrl> = ["http://127.0.0.1:1/metrics", "http://127.0.0.1:2", "http://h:3/m"]
            .iter()
            .map(|u| MetricsUrl::parse(u).unwrap())
            .collect();
        assert_eq!(urls[1].path, "/metrics");
        let before = vec![Ok(10), Ok(0), Ok(50)];
        let after = vec![Ok(40), Ok(10), Ok(5)];
        let s = shares(&urls, &before, &after);
        assert_eq!(
            (s[0].requests, s[1].requests, s[2].requests),
            (Some(30), Some(10), None)
        );
        assert_eq!((s[0].share, s[1].share), (Some(0.75), Some(0.25)));
        assert!(s[2].note.as_deref().unwrap().contains("restarted"));
        assert!(MetricsUrl::parse("https://h/metrics").is_err());
    }
}
