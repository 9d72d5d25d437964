//! The metrics listener's defences: a connection cap and the header-read timeout, so idle
//! sockets can neither pile up without bound nor keep scrapes out for good.

use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The daemon's `MAX_METRICS_CONNECTIONS`.
const CAP: usize = 64;

/// Sends a keep-alive scrape on `s`; true when a 200 response head comes back.
fn scrape_on(s: &mut TcpStream) -> bool {
    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// A scrape on a new connection that closes after the response.
fn scrape(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    s.set_read_timeout(Some(WAIT)).unwrap();
    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut text = String::new();
    s.read_to_string(&mut text).is_ok() && text.starts_with("HTTP/1.1 200")
}

/// Beyond the cap, new metrics connections are closed unserved; the served ones, left idle,
/// are closed by the header-read timeout, after which a new scrape succeeds again.
#[test]
fn metrics_connections_are_capped_and_idle_ones_closed_by_the_header_timeout() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    section(&mut cfg, "server").insert("header_read_timeout_ms".into(), 5000.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let addr = metrics_addr(&proxy);

    // Sixteen more idle connections than the cap, opened before any sends a byte.
    let mut conns: Vec<TcpStream> = (0..CAP + 16)
        .map(|_| TcpStream::connect(&addr).expect("connect to metrics"))
        .collect();
    let mut served = Vec::new();
    let mut refused = 0;
    for mut s in conns.drain(..) {
        s.set_read_timeout(Some(WAIT)).unwrap();
        if scrape_on(&mut s) {
            served.push(s);
        } else {
            refused += 1;
        }
    }
    assert_eq!(served.len(), CAP, "{refused} refused");

    // The served connections are now idle keep-alive connections: the server closes each
    // once the header-read timeout passes (a read sees the end of the stream).
    for s in served.iter_mut() {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(
            !scrape_on(s),
            "an idle connection was still served after the header timeout"
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || scrape(&addr)),
        "no scrape succeeded after the idle connections were closed:\n{}",
        proxy.logs()
    );
}
