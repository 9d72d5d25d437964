//! The connection budget: unproven connections (no verified request yet) give way to
//! newcomers, must send a request in time and (if configured) get a bounded number of answers;
//! proven ones stay.

use crate::common::*;
use crate::raw::{request_head, RawTls};
use crate::signed_health;
use std::time::Duration;

/// With the unproven share full, a newcomer evicts the oldest unproven connection and is
/// served; the other unproven connection is left alone.
#[test]
fn a_newcomer_evicts_the_oldest_unproven_connection_when_their_share_is_full() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    let server = section(&mut cfg, "server");
    server.insert("max_connections".into(), 4.into());
    server.insert("max_unproven_connections".into(), 2.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let tls = || tls_config(&proxy.ca, None, None, &[]);

    let mut oldest = RawTls::connect(proxy.addr, tls()).expect("connect");
    let mut younger = RawTls::connect(proxy.addr, tls()).expect("connect");
    let mut newcomer = proxy.client_with(tls()).expect("the newcomer is admitted");
    let r = signed_health(&mut newcomer, &fx.signer()).expect("the newcomer is served");
    assert_eq!(r.status, 200, "{}", r.text());
    oldest
        .wait_closed(Duration::from_secs(10))
        .expect("the oldest unproven connection was evicted");
    // The younger one still works (and proves itself now).
    let head = request_head("GET", "/ping", &younger.authority.clone(), &[]);
    younger.send(head.as_bytes()).expect("send");
    let r = younger
        .read_response()
        .expect("the younger unproven connection was kept");
    assert_eq!(r.status, 200, "{}", r.head);
}

/// A TLS connection that sends nothing is closed at the first-request deadline, long before
/// the keep-alive timeout; connections that sent a request (signed or not) are not.
#[test]
fn a_silent_connection_is_closed_at_the_first_request_deadline_while_active_ones_stay() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    section(&mut cfg, "server").insert("first_request_timeout_ms".into(), 500.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let tls = || tls_config(&proxy.ca, None, None, &[]);

    let mut proven = proxy.client_with(tls()).expect("connect");
    assert_eq!(
        signed_health(&mut proven, &fx.signer()).expect("served").status,
        200
    );
    let mut pinged = proxy.client_with(tls()).expect("connect");
    assert_eq!(pinged.send("GET", "/ping", &[], b"").status, 200);
    let mut silent = RawTls::connect(proxy.addr, tls()).expect("connect");
    let rest = silent
        .wait_closed(Duration::from_secs(10))
        .expect("the silent connection was closed at the first-request deadline");
    assert!(
        rest.is_empty(),
        "the server sent {} bytes to a silent connection",
        rest.len()
    );
    // Past the deadline, both connections that sent a request are still served.
    std::thread::sleep(Duration::from_millis(1000));
    let r = signed_health(&mut proven, &fx.signer()).expect("the proven connection was kept");
    assert_eq!(r.status, 200, "{}", r.text());
    let headers = vec![("host".to_owned(), pinged.authority.clone())];
    let r = pinged
        .try_send_raw("GET", "/ping", &headers, Vec::new())
        .expect("the connection that sent a request was kept");
    assert_eq!(r.status, 200);
}

/// Unsigned requests on one connection are answered up to `max_requests_before_proof`; the
/// last answer says `Connection: close` and the connection ends, so a client without
/// credentials cannot keep one connection busy with pipelined requests.
#[test]
fn an_unproven_connection_is_closed_after_its_request_allowance() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    section(&mut cfg, "server").insert("max_requests_before_proof".into(), 3.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let mut c = RawTls::connect(proxy.addr, tls_config(&proxy.ca, None, None, &[])).expect("connect");
    let head = request_head("GET", "/ping", &c.authority.clone(), &[]);
    // Pipelined: all at once; everything the server sends is read once it has closed.
    c.send(head.repeat(10).as_bytes()).expect("send");
    let sent = c
        .wait_closed(Duration::from_secs(10))
        .expect("the connection was closed after its allowance");
    let text = String::from_utf8_lossy(&sent).to_ascii_lowercase();
    assert_eq!(
        text.matches("http/1.1 200").count(),
        3,
        "exactly the allowance is answered: {text}"
    );
    assert!(
        text.contains("connection: close"),
        "the last allowed answer announces the close: {text}"
    );
}

/// A source at its unproven cap whose connections are all young (a flood): its newcomer gets no
/// TLS answer and is held open, not closed (so the flooder cannot reconnect at once and fill the
/// accept queue), while a client from another address is served at once.
#[test]
fn a_flooding_source_at_its_unproven_cap_is_held_off_while_other_sources_are_served() {
    use std::io::Read;
    require_tool("curl", "curl");
    let fx = Fixture::new();
    let mut cfg = fx.config();
    let server = section(&mut cfg, "server");
    server.insert("per_source_limits_on_loopback".into(), true.into());
    server.insert("max_unproven_per_source".into(), 3.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let tls = || tls_config(&proxy.ca, None, None, &[]);
    let mut held: Vec<RawTls> = (0..3)
        .map(|_| RawTls::connect(proxy.addr, tls()).expect("admitted under the cap"))
        .collect();
    let mut refused = std::net::TcpStream::connect(proxy.addr).expect("TCP connect");
    refused
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 1];
    match refused.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the newcomer over the cap must be held open and unanswered, got {other:?}"),
    }
    // The source's young connections were not evicted for it: the oldest still answers.
    let head = request_head("GET", "/ping", &held[0].authority.clone(), &[]);
    held[0].send(head.as_bytes()).expect("send");
    let r = held[0].read_response().expect("the oldest connection was kept");
    assert_eq!(r.status, 200, "{}", r.head);
    let url = format!("https://{}/ping", proxy.addr);
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"])
        .args(["--interface", "127.0.0.2", "--cacert"])
        .arg(&proxy.ca)
        .arg(&url)
        .output()
        .expect("run curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "another source must be served: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = scrape_metrics(&proxy);
    assert!(
        m.lines().any(|l| l
            .starts_with("xks_bridge_connection_refusals_total{reason=\"per_source_unproven\"}")
            && !l.ends_with(" 0")),
        "{m}"
    );
}
