//! Network abuse on loopback, bounded in time: thousands of idle TCP connections, a TLS
//! handshake flood and pipelined garbage, while a well-behaved client keeps being served. The
//! probe's latency percentiles are printed (evidence for the closing note), never asserted.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Signed health requests on one keep-alive connection and on fresh connections, while `stop`
/// is false; returns every latency (all requests must succeed).
fn probe(fx: &Fixture, proxy: &TestProxy, stop: &AtomicBool, min: usize) -> Vec<Duration> {
    let mut lat = Vec::new();
    let mut xks = proxy.xks(fx);
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) || lat.len() < min {
        let t = Instant::now();
        let r = if i % 10 == 9 {
            proxy.xks(fx).health() // a fresh connection: TCP + TLS + request
        } else {
            xks.health()
        };
        lat.push(t.elapsed());
        assert_eq!(
            r.status,
            200,
            "a well-behaved request failed under abuse: {}",
            r.text()
        );
        i += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    lat
}

/// Probes for `period`, then raises `stop` for the attackers too.
fn probe_for(fx: &Fixture, proxy: &TestProxy, stop: &Arc<AtomicBool>, period: Duration) -> Vec<Duration> {
    let stopper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(period);
            stop.store(true, Ordering::SeqCst);
        })
    };
    let lat = probe(fx, proxy, stop, 50);
    stopper.join().unwrap();
    lat
}

fn report(name: &str, mut lat: Vec<Duration>) {
    lat.sort();
    eprintln!(
        "{name}: {} probes, p50 {:?}, p99 {:?}, max {:?}",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().unwrap()
    );
}

#[test]
fn thousands_of_idle_connections_and_a_handshake_flood_leave_well_behaved_clients_served() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let addr = proxy.addr;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // 2000 idle TCP connections that never start TLS.
    let idle: Vec<tokio::net::TcpStream> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..2000 {
            if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                v.push(s);
            }
        }
        v
    });
    assert!(
        idle.len() >= 1900,
        "could only open {} idle connections",
        idle.len()
    );
    // A handshake flood: complete TLS handshakes and hang up, as fast as one task can.
    let stop = Arc::new(AtomicBool::new(false));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (stop, handshakes) = (stop.clone(), handshakes.clone());
        let tls = tls_config(&fx.ca_pem(), None, None, &[]);
        rt.spawn(async move {
            let connector = tokio_rustls::TlsConnector::from(tls);
            while !stop.load(Ordering::SeqCst) {
                let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
                    continue;
                };
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                if connector.connect(name, tcp).await.is_ok() {
                    handshakes.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let lat = probe_for(&fx, &proxy, &stop, Duration::from_secs(3));
    rt.block_on(flood).unwrap();
    eprintln!(
        "{} idle connections held, {} flood handshakes",
        idle.len(),
        handshakes.load(Ordering::Relaxed)
    );
    report("probe under idle connections + handshake flood", lat);
    drop(idle);
    assert_eq!(proxy.xks(&fx).health().status, 200);
}

#[test]
fn pipelined_garbage_gets_an_error_and_a_closed_connection_without_disturbing_others() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let addr = proxy.addr;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicUsize::new(0));
    let attackers = {
        let (stop, closed) = (stop.clone(), closed.clone());
        let tls = tls_config(&fx.ca_pem(), None, None, &[]);
        rt.spawn(async move {
            let connector = tokio_rustls::TlsConnector::from(tls);
            let mut garbage = Vec::new();
            for i in 0..200u32 {
                garbage.extend_from_slice(
                    b"POST /quickstart/kms/xks/v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
                );
                garbage.extend_from_slice(format!("\x00\x01GARBAGE {i} \x7f\r\n\r\n").as_bytes());
                garbage.push(0xff);
            }
            while !stop.load(Ordering::SeqCst) {
                let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
                    continue;
                };
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let Ok(mut tls) = connector.connect(name, tcp).await else {
                    continue;
                };
                let _ = tls.write_all(&garbage).await;
                let mut sink = vec![0u8; 64 * 1024];
                // The server answers what it can parse, then closes: read to EOF (bounded).
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Ok(n) = tls.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
                if read.is_ok() {
                    closed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let lat = probe_for(&fx, &proxy, &stop, Duration::from_secs(3));
    rt.block_on(attackers).unwrap();
    let n = closed.load(Ordering::Relaxed);
    assert!(n > 0, "no garbage connection was closed by the server within 5 s");
    eprintln!("{n} garbage connections answered and closed");
    report("probe under pipelined garbage", lat);
}

/// The value of one series line (`name{labels} value`), 0 if absent.
fn series(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// More idle TLS connections than `max_connections`, plus clients that pipeline unsigned
/// requests and never read: the budget evicts the oldest unproven connections, so a fresh
/// connection carrying a signed request is still admitted and answered, and a connection that
/// proved itself before the attack is never evicted. Before the budget, the idle connections
/// held every slot and newcomers were closed at accept.
#[test]
fn fresh_signed_clients_are_served_while_idle_and_never_reading_connections_exceed_the_budget() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    let server = section(&mut cfg, "server");
    server.insert("max_connections".into(), 1000.into());
    // The proven connection below must not meet the idle keep-alive timeout on a slow machine.
    server.insert("header_read_timeout_ms".into(), 600_000.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let addr = proxy.addr;
    let mut proven = proxy.xks(&fx);
    assert_eq!(proven.health().status, 200);
    let before = series(
        &scrape_metrics(&proxy),
        "xks_bridge_connection_evictions_total{reason=\"unproven_share\"}",
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tls = tls_config(&fx.ca_pem(), None, None, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    // 1,200 idle TLS connections, opened concurrently, held without a byte sent.
    let idle: Vec<_> = (0..1200)
        .map(|_| {
            let connector = tokio_rustls::TlsConnector::from(tls.clone());
            rt.spawn(async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                connector.connect(name, tcp).await.ok()
            })
        })
        .collect();
    let held: Vec<_> = idle
        .into_iter()
        .filter_map(|t| rt.block_on(t).ok().flatten())
        .collect();
    eprintln!("{} idle TLS connections completed their handshake", held.len());
    // 100 clients that pipeline unsigned requests and never read; they reconnect when closed.
    let pipelined = Arc::new(AtomicUsize::new(0));
    for _ in 0..100 {
        let (tls, stop, pipelined) = (tls.clone(), stop.clone(), pipelined.clone());
        rt.spawn(async move {
            let connector = tokio_rustls::TlsConnector::from(tls);
            let one = format!(
                "POST {BASE}/health HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
            );
            let burst = one.repeat(64).into_bytes();
            while !stop.load(Ordering::SeqCst) {
                let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let Ok(mut s) = connector.connect(name, tcp).await else {
                    continue;
                };
                pipelined.fetch_add(1, Ordering::Relaxed);
                while !stop.load(Ordering::SeqCst) && s.write_all(&burst).await.is_ok() {}
                // Reconnects are paced to keep the test's CPU modest (scripts/attack.sh does not).
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    // Fresh connections, each with one signed request.
    let mut lat = Vec::new();
    let mut ok = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let served = proxy
            .client_with(tls_config(&fx.ca_pem(), None, None, &[]))
            .map_err(|e| e.to_string())
            .and_then(|mut client| {
                let path = format!("{BASE}/health");
                let body = health_body("abuse-probe", "KmsHealthCheck").to_string();
                let mut headers = vec![("host".to_owned(), client.authority.clone())];
                headers.extend(
                    fx.signer()
                        .headers("POST", &client.authority, &path, body.as_bytes()),
                );
                client.try_send_raw("POST", &path, &headers, body.into_bytes())
            });
        lat.push(t.elapsed());
        match served {
            Ok(r) if r.status == 200 => ok += 1,
            Ok(r) => eprintln!("probe answered {}: {}", r.status, r.text()),
            Err(e) => eprintln!("probe failed: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The connection proven before the attack was kept.
    assert_eq!(proven.health().status, 200, "the proven connection was not kept");
    let after = scrape_metrics(&proxy);
    stop.store(true, Ordering::SeqCst);
    drop(held);
    rt.shutdown_timeout(Duration::from_secs(1));

    report("fresh signed probe under idle + never-reading connections", lat);
    eprintln!(
        "{} pipelining connections opened",
        pipelined.load(Ordering::Relaxed)
    );
    assert!(ok >= 19, "only {ok} of 20 fresh signed probes were answered 200");
    let evicted = series(
        &after,
        "xks_bridge_connection_evictions_total{reason=\"unproven_share\"}",
    );
    assert!(
        evicted > before,
        "no unproven connection was evicted ({before} -> {evicted}):\n{after}"
    );
    assert!(
        after.contains("xks_bridge_connections{state=\"proven\"}"),
        "connections by state are not exported:\n{after}"
    );
}
