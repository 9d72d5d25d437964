//! `[server]` and `[tls]`: the API listeners, their connection budget and timeouts, the drain
//! sequence, and the certificate (and client CAs) they present.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `server.drain_delay_ms` when unset: a load balancer checking every second and marking an
/// instance down after two failures has taken it out with room to spare.
pub const DEFAULT_DRAIN_DELAY_MS: u64 = 5_000;
/// `server.drain_grace_ms` when unset.
pub const DEFAULT_DRAIN_GRACE_MS: u64 = 10_000;
/// Upper bound of `server.drain_delay_ms` and `server.drain_grace_ms`: a stop that takes longer
/// than this is a hang to the service manager.
pub const MAX_DRAIN_MS: u64 = 300_000;

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses to listen on; port 0 picks an ephemeral port (printed at start).
    pub listen: Vec<SocketAddr>,
    /// Serve plain HTTP instead of TLS. Only for use behind a TLS-terminating load balancer.
    #[serde(default)]
    pub allow_plain_http: bool,
    /// Reported as `xksProxyFleetSize`: how many proxy instances serve this endpoint.
    #[serde(default = "one")]
    pub fleet_size: u32,
    /// Threads of the async runtime (TLS, HTTP, signatures, request logging); the HSM workers
    /// and the log and audit writers are threads of their own. Unset: see
    /// [`ServerConfig::runtime_threads`].
    #[serde(default)]
    pub runtime_threads: Option<usize>,
    /// Connections served at once; further connections are closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time allowed for a TLS handshake.
    #[serde(default = "default_handshake_ms")]
    pub tls_handshake_timeout_ms: u64,
    /// Time allowed to receive a request's headers; it also closes idle keep-alive
    /// connections (hyper starts the timer when it waits for the next request).
    #[serde(default = "default_header_ms")]
    pub header_read_timeout_ms: u64,
    /// Time allowed to receive a request's body once its head has arrived; a stalled body
    /// would otherwise hold a connection slot before any authentication happens.
    #[serde(default = "default_body_ms")]
    pub body_read_timeout_ms: u64,
    /// Largest request head (request line + headers) accepted.
    #[serde(default = "default_max_header")]
    pub max_header_bytes: usize,
    /// Slots unproven connections (no verified request yet) may share; the rest stay free
    /// for proven ones. Default: a quarter of `max_connections` (at least 1).
    #[serde(default)]
    pub max_unproven_connections: Option<usize>,
    /// Time from accept within which an unproven connection must finish its TLS handshake and
    /// send its first request head; otherwise it is closed (an idle newcomer holds a slot for
    /// this long at most, not for `header_read_timeout_ms`).
    #[serde(default = "default_first_request_ms")]
    pub first_request_timeout_ms: u64,
    /// Requests answered on an unproven connection before it is closed; 0 = no limit (the
    /// default: unauthenticated answers are cheap, and an unproven connection stays evictable).
    #[serde(default)]
    pub max_requests_before_proof: u32,
    /// A response that makes no write progress for this long closes its connection (a client
    /// that never reads would otherwise hold it for ever).
    #[serde(default = "default_write_ms")]
    pub write_timeout_ms: u64,
    /// Unproven connections one source address may hold; a newcomer beyond it evicts that
    /// source's oldest unproven connection. 0 = no cap.
    #[serde(default = "default_unproven_per_source")]
    pub max_unproven_per_source: usize,
    /// Connections (proven or not) one source address may hold; newcomers beyond it are
    /// refused. 0 = no cap (a load balancer may present all of KMS as one address).
    #[serde(default)]
    pub max_connections_per_source: usize,
    /// Apply the per-source caps to loopback sources too (off: local tools and tests).
    #[serde(default)]
    pub per_source_limits_on_loopback: bool,
    /// TCP keepalive idle time in seconds (probes every third of it, three of them), so the
    /// slot of a peer that vanished is freed.
    #[serde(default = "default_keepalive_secs")]
    pub tcp_keepalive_secs: u64,
    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before the kernel drops
    /// the connection.
    #[serde(default = "default_user_timeout_ms")]
    pub tcp_user_timeout_ms: u64,
    /// Allow running as root (uid 0). Refused by default: the daemon needs no privilege.
    #[serde(default)]
    pub allow_root: bool,
    /// On SIGTERM, SIGINT or `xks-bridge drain`: how long `/ping` answers 503 while everything
    /// else is still served, before the listeners close. It must outlast the load balancer's
    /// health checks marking the instance down (checks x interval), or new connections would
    /// still arrive when the listeners close.
    #[serde(default = "default_drain_delay_ms")]
    pub drain_delay_ms: u64,
    /// Once the listeners are closed, how long open connections get to finish their requests
    /// before the process exits anyway.
    #[serde(default = "default_drain_grace_ms")]
    pub drain_grace_ms: u64,
}

/// Largest accepted `server.runtime_threads`.
pub const MAX_RUNTIME_THREADS: usize = 1024;

impl ServerConfig {
    /// Threads for the async runtime: `runtime_threads`, or one per core less one (at least
    /// one), so that a core stays for the HSM workers and the writer threads. On two cores
    /// with the load on the same host, one runtime thread instead of two gave +8 % Encrypt
    /// throughput at 8 connections, 9-10 % less CPU per request at 1 and 8, and p99 under
    /// 1 ms, for -8 % at 64 connections (BENCHMARKS.md, fourth pass).
    pub fn runtime_threads(&self) -> usize {
        self.runtime_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .saturating_sub(1)
                .max(1)
        })
    }

    /// Slots unproven connections share: `max_unproven_connections` or its default.
    pub fn unproven_share(&self) -> usize {
        self.max_unproven_connections
            .unwrap_or((self.max_connections / 4).max(1))
    }
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// PEM bundle of CAs for client certificates; setting it turns on mutual TLS: a client
    /// without a certificate chaining to one of these is refused during the handshake.
    pub client_ca: Option<PathBuf>,
    /// With mTLS: accepted client names, each matched exactly against the certificate's
    /// subject CN and its DNS SANs (KMS presents `cks.kms.<region>.amazonaws.com`). Required
    /// when `client_ca` is set.
    #[serde(default)]
    pub client_names: Vec<String>,
}

fn one() -> u32 {
    1
}
fn default_max_connections() -> usize {
    4096
}
fn default_handshake_ms() -> u64 {
    10_000
}
fn default_header_ms() -> u64 {
    60_000
}
fn default_body_ms() -> u64 {
    5_000
}
fn default_max_header() -> usize {
    16 * 1024
}
fn default_first_request_ms() -> u64 {
    5_000
}
fn default_write_ms() -> u64 {
    10_000
}
fn default_drain_delay_ms() -> u64 {
    DEFAULT_DRAIN_DELAY_MS
}
fn default_drain_grace_ms() -> u64 {
    DEFAULT_DRAIN_GRACE_MS
}
fn default_unproven_per_source() -> usize {
    256
}
fn default_keepalive_secs() -> u64 {
    60
}
fn default_user_timeout_ms() -> u64 {
    30_000
}
