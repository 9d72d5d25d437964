//! Connection-exhaustion attack against a running proxy, with a well-behaved client measured
//! throughout (driven by `scripts/attack.sh`).
//!
//! - `--idle N` tasks each open and hold one TLS connection that never sends a byte; with
//!   `--reconnect` they open a new one whenever the server closes theirs, as fast as they can
//!   (a persistent attacker: then it is a CPU race for handshakes and the accept queue);
//! - `--pipeliners N` tasks each open a TLS connection, pipeline unsigned requests and never
//!   read an answer, reconnecting likewise;
//! - once the attack has ramped up, a probe opens a fresh TLS connection every
//!   `--probe-interval-ms`, sends one signed GetHealthStatus, and counts a success when a 200
//!   arrives within 1 s. Success ratio and latency percentiles are printed at the end.
//!
//! Endpoint and credentials come from the `bench` options (`--quickstart FILE` is enough).
//! All attackers share one source address, as on loopback; `--probe-source` sends the probes
//! from another one.

use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use xks_bridge::bench::client::{Connector, Signer};
use xks_bridge::bench::plan::{self, Target};
use xks_bridge::bench::BenchArgs;

/// A probe slower than this is a failure (KMS's own patience is far shorter; 1 s is the target).
const PROBE_DEADLINE: Duration = Duration::from_secs(1);

#[derive(Parser)]
struct Cli {
    /// Idle TLS connections to hold.
    #[arg(long, default_value_t = 6000)]
    idle: usize,
    /// Idle attackers reopen a connection the server closed.
    #[arg(long)]
    reconnect: bool,
    /// Attackers give up a TLS handshake after this long and reconnect (0 = never), as a
    /// flooder that notices a stalled connection would.
    #[arg(long, default_value_t = 0)]
    handshake_timeout_ms: u64,
    /// Pipelining connections that never read (they always reopen).
    #[arg(long, default_value_t = 300)]
    pipeliners: usize,
    /// Seconds to let the attack ramp up before probing.
    #[arg(long, default_value_t = 10)]
    ramp: u64,
    /// Probes to send.
    #[arg(long, default_value_t = 200)]
    probes: usize,
    /// Pause between probes.
    #[arg(long, default_value_t = 100)]
    probe_interval_ms: u64,
    /// Probe from this local address (e.g. 127.0.0.2) instead of the attackers' one: KMS's
    /// connections come from other addresses than an attacker's, and per-source caps apply.
    #[arg(long)]
    probe_source: Option<std::net::IpAddr>,
    /// Endpoint, credentials, CA.
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Default)]
struct Tally {
    idle_open: AtomicU64,
    idle_handshakes: AtomicU64,
    idle_closed_by_server: AtomicU64,
    pipeline_connections: AtomicU64,
}

fn main() {
    let cli = Cli::parse();
    let plan = match plan::resolve(cli.bench.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("attack: {e}");
            std::process::exit(64);
        }
    };
    let Target::Proxy(target) = plan.target else {
        eprintln!("attack: needs a proxy endpoint, not --raw-token");
        std::process::exit(64);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let ca = target.ca_file.clone().expect("attack needs an https endpoint and a CA");
        let tls = attacker_tls(&ca);
        let name = ServerName::try_from(target.endpoint.host.clone()).expect("server name");
        let addr = format!("{}:{}", target.endpoint.host, target.endpoint.port);
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        for _ in 0..cli.idle {
            let (tls, name, addr, stop, tally) = (tls.clone(), name.clone(), addr.clone(), stop.clone(), tally.clone());
            let reconnect = cli.reconnect;
            let patience = (cli.handshake_timeout_ms > 0).then(|| Duration::from_millis(cli.handshake_timeout_ms));
            tokio::spawn(async move { idle_attacker(tls, name, addr, reconnect, patience, stop, tally).await });
        }
        let garbage = pipeline_payload(&target.uri_path, &target.endpoint.authority);
        for _ in 0..cli.pipeliners {
            let (tls, name, addr, stop, tally) = (tls.clone(), name.clone(), addr.clone(), stop.clone(), tally.clone());
            let garbage = garbage.clone();
            let patience = (cli.handshake_timeout_ms > 0).then(|| Duration::from_millis(cli.handshake_timeout_ms));
            tokio::spawn(async move { pipeliner(tls, name, addr, garbage, patience, stop, tally).await });
        }
        tokio::time::sleep(Duration::from_secs(cli.ramp)).await;
        eprintln!(
            "after {} s ramp: {} idle connections open ({} handshakes, {} closed by the server), {} pipelining connections made",
            cli.ramp,
            tally.idle_open.load(Ordering::Relaxed),
            tally.idle_handshakes.load(Ordering::Relaxed),
            tally.idle_closed_by_server.load(Ordering::Relaxed),
            tally.pipeline_connections.load(Ordering::Relaxed),
        );
        let mut connector = Connector::new(target.endpoint.clone(), Some(&ca), target.resumption).expect("connector");
        if let Some(src) = cli.probe_source {
            connector = connector.from_source(src);
        }
        let signer = Signer {
            access_key_id: target.access_key_id.clone(),
            secret: target.secret.clone(),
            region: target.region.clone(),
            host: target.endpoint.authority.clone(),
        };
        let path = format!("{}/health", target.uri_path);
        let mut latencies = Vec::new();
        let mut failures: std::collections::BTreeMap<String, usize> = Default::default();
        for i in 0..cli.probes {
            let start = Instant::now();
            let body = format!(
                r#"{{"requestMetadata":{{"kmsRequestId":"attack-probe-{i}","kmsOperation":"KmsHealthCheck"}}}}"#
            );
            let outcome = tokio::time::timeout(PROBE_DEADLINE, async {
                let mut conn = connector.connect().await.map_err(|f| f.kind.to_owned())?;
                let a = conn
                    .post(&signer, &path, body.into(), PROBE_DEADLINE)
                    .await
                    .map_err(|f| f.kind.to_owned())?;
                if a.status == 200 {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", a.status))
                }
            })
            .await
            .unwrap_or_else(|_| Err("Timeout".to_owned()));
            let took = start.elapsed();
            match outcome {
                Ok(()) => latencies.push(took),
                Err(kind) => *failures.entry(kind).or_default() += 1,
            }
            tokio::time::sleep(Duration::from_millis(cli.probe_interval_ms)).await;
        }
        stop.store(true, Ordering::SeqCst);
        print_report(cli.probes, latencies, &failures, &tally);
    });
    // Attacker tasks may be parked on sockets; the runtime's drop does not wait for them.
    rt.shutdown_timeout(Duration::from_millis(100));
}

fn print_report(
    probes: usize,
    mut lat: Vec<Duration>,
    failures: &std::collections::BTreeMap<String, usize>,
    tally: &Tally,
) {
    lat.sort();
    let pct = |p: f64| -> String {
        if lat.is_empty() {
            return "-".into();
        }
        let d = lat[((lat.len() as f64 - 1.0) * p).round() as usize];
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    };
    println!(
        "probes: {} of {probes} answered 200 within 1 s ({:.1}%)",
        lat.len(),
        100.0 * lat.len() as f64 / probes as f64
    );
    println!(
        "probe latency (successes): p50 {}, p90 {}, p99 {}, max {}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    if !failures.is_empty() {
        println!("probe failures: {failures:?}");
    }
    println!(
        "attack: {} idle handshakes completed, {} idle connections closed by the server, {} pipelining connections",
        tally.idle_handshakes.load(Ordering::Relaxed),
        tally.idle_closed_by_server.load(Ordering::Relaxed),
        tally.pipeline_connections.load(Ordering::Relaxed),
    );
}

fn attacker_tls(ca: &std::path::Path) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA certificate")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(cfg))
}

/// Holds an idle TLS connection; with `reconnect`, opens another when the server closes it.
async fn idle_attacker(
    tls: TlsConnector,
    name: ServerName<'static>,
    addr: String,
    reconnect: bool,
    patience: Option<Duration>,
    stop: Arc<AtomicBool>,
    t: Arc<Tally>,
) {
    let mut first = true;
    while !stop.load(Ordering::Relaxed) && (first || reconnect) {
        first = false;
        let Ok(tcp) = TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let handshake = tls.connect(name.clone(), tcp);
        let done = match patience {
            Some(p) => tokio::time::timeout(p, handshake).await.ok(),
            None => Some(handshake.await),
        };
        let Some(Ok(mut s)) = done else {
            continue;
        };
        t.idle_handshakes.fetch_add(1, Ordering::Relaxed);
        t.idle_open.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 256];
        // Returns when the server closes (EOF or reset); never sends anything.
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || stop.load(Ordering::Relaxed) {
                break;
            }
        }
        t.idle_open.fetch_sub(1, Ordering::Relaxed);
        t.idle_closed_by_server.fetch_add(1, Ordering::Relaxed);
    }
}

/// Unsigned health requests back to back (a client without credentials).
fn pipeline_payload(uri_path: &str, authority: &str) -> Arc<Vec<u8>> {
    let body = br#"{"requestMetadata":{"kmsRequestId":"x","kmsOperation":"KmsHealthCheck"}}"#;
    let one = format!(
        "POST {uri_path}/health HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(body)
    );
    Arc::new(one.repeat(64).into_bytes())
}

/// Writes pipelined requests until the server stops taking them; never reads.
async fn pipeliner(
    tls: TlsConnector,
    name: ServerName<'static>,
    addr: String,
    payload: Arc<Vec<u8>>,
    patience: Option<Duration>,
    stop: Arc<AtomicBool>,
    t: Arc<Tally>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(tcp) = TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let handshake = tls.connect(name.clone(), tcp);
        let done = match patience {
            Some(p) => tokio::time::timeout(p, handshake).await.ok(),
            None => Some(handshake.await),
        };
        let Some(Ok(mut s)) = done else {
            continue;
        };
        t.pipeline_connections.fetch_add(1, Ordering::Relaxed);
        // Blocks once both directions' buffers are full; ends when the server closes.
        while !stop.load(Ordering::Relaxed) {
            if s.write_all(&payload).await.is_err() {
                break;
            }
        }
    }
}
