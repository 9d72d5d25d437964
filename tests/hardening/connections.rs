//! The connection limit and the handshake, header-read and body timeouts.

use crate::common::*;
use crate::raw::{request_head, RawTls};
use crate::signed_health;
use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn connections_beyond_max_connections_are_closed_at_accept_when_every_slot_is_proven() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    let server = section(&mut cfg, "server");
    server.insert("max_connections".into(), 4.into());
    // All four may be unproven at once (the default share would be one).
    server.insert("max_unproven_connections".into(), 4.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    let tls = || tls_config(&proxy.ca, None, None, &[]);

    // Four established, idle connections, each proven by a signed request: nothing may evict
    // them to make room.
    let mut held: Vec<Xks> = (0..4).map(|_| proxy.xks(&fx)).collect();
    for x in held.iter_mut() {
        assert_ok(&x.health());
    }

    // A fifth is closed at accept: the handshake (or, at the latest, the first request) fails.
    match proxy.client_with(tls()) {
        Ok(mut c) => {
            let headers = vec![("host".to_owned(), c.authority.clone())];
            if let Ok(r) = c.try_send_raw("GET", "/ping", &headers, Vec::new()) {
                panic!("a fifth connection was served: {}", r.status);
            }
        }
        Err(_refused) => {}
    }
    assert!(proxy.wait_for_log("connection limit reached"), "{}", proxy.logs());
    // The four held connections still work.
    for x in held.iter_mut() {
        assert_ok(&x.health());
    }

    drop(held);
    let recovered = wait_until(WAIT, || {
        proxy.client_with(tls()).is_ok_and(|mut c| {
            let headers = vec![("host".to_owned(), c.authority.clone())];
            c.try_send_raw("GET", "/ping", &headers, Vec::new())
                .is_ok_and(|r| r.status == 200)
        })
    });
    assert!(
        recovered,
        "no new connection was served after the idle ones closed"
    );
    assert_ok(&proxy.xks(&fx).health());
}

#[test]
fn connections_that_never_start_tls_are_dropped_after_the_handshake_timeout_freeing_their_slots() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    let server = section(&mut cfg, "server");
    server.insert("max_connections".into(), 2.into());
    server.insert("max_unproven_connections".into(), 2.into());
    server.insert("tls_handshake_timeout_ms".into(), 500.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);

    // Two TCP connections that never send a ClientHello take both slots...
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect_timeout(&proxy.addr, WAIT).expect("TCP connect"))
        .collect();
    // ...until the server drops them.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("the server sent {n} bytes to a silent connection"),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a connection that never started TLS was still open after 5 s"
            ),
        }
    }
    // Both slots are free again: two connections are served at the same time.
    let both_served = wait_until(WAIT, || {
        let a = proxy.client_with(tls_config(&proxy.ca, None, None, &[]));
        let b = proxy.client_with(tls_config(&proxy.ca, None, None, &[]));
        match (a, b) {
            (Ok(mut a), Ok(mut b)) => {
                signed_health(&mut a, &fx.signer()).is_ok_and(|r| r.status == 200)
                    && signed_health(&mut b, &fx.signer()).is_ok_and(|r| r.status == 200)
            }
            _ => false,
        }
    });
    assert!(both_served, "the slots of the dropped connections were not freed");
}

/// The body is read before the request is authenticated, so its time must be bounded like the
/// head's: otherwise a client that sends a head and part of a body, then nothing, holds a
/// connection slot for ever (a slow-POST attack needs no bandwidth). Expected: the stalled
/// connection is closed within a bounded time (here 10 s with a 500 ms header timeout) and its
/// slot is served again.
#[test]
fn stalled_request_body_is_cut_off_and_frees_its_connection_slot() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    let server = section(&mut cfg, "server");
    server.insert("max_connections".into(), 1.into());
    server.insert("header_read_timeout_ms".into(), 500.into());
    server.insert("body_read_timeout_ms".into(), 1000.into());
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);

    let mut stalled = RawTls::connect(proxy.addr, tls_config(&proxy.ca, None, None, &[])).expect("connect");
    let head = request_head(
        "POST",
        &format!("{BASE}/health"),
        &stalled.authority.clone(),
        &[
            "content-type: application/json".into(),
            "content-length: 1000".into(),
        ],
    );
    stalled.send(head.as_bytes()).expect("send head");
    stalled
        .send(b"{\"requestMetadata\":")
        .expect("send part of the body");
    let closed = stalled.wait_closed(Duration::from_secs(10));
    assert!(
        closed.is_ok(),
        "a request whose body stalled after 19 of 1000 bytes still holds its connection (and the \
         only max_connections slot) after 10 s: {closed:?}"
    );
    let served = wait_until(WAIT, || {
        proxy
            .client_with(tls_config(&proxy.ca, None, None, &[]))
            .is_ok_and(|mut c| signed_health(&mut c, &fx.signer()).is_ok_and(|r| r.status == 200))
    });
    assert!(served, "the stalled connection's slot was not freed");
}

#[test]
fn idle_and_slow_connections_are_closed_after_the_header_read_timeout() {
    let h = Harness::start_with(
        |cfg, _| {
            section(cfg, "server").insert("header_read_timeout_ms".into(), 500.into());
        },
        &[],
    );
    let tls = || tls_config(&h.proxy.ca, None, None, &[]);

    // An idle keep-alive connection after one request.
    let mut idle = RawTls::connect(h.proxy.addr, tls()).expect("connect");
    let head = request_head("GET", "/ping", &idle.authority.clone(), &[]);
    idle.send(head.as_bytes()).expect("send");
    let r = idle.read_response().expect("ping response");
    assert_eq!(r.status, 200, "{}", r.head);
    let rest = idle
        .wait_closed(Duration::from_secs(5))
        .expect("idle keep-alive connection closed by the server");
    assert!(rest.is_empty() || !String::from_utf8_lossy(&rest).contains(" 200 "));

    // A connection that never sends a request.
    let mut silent = RawTls::connect(h.proxy.addr, tls()).expect("connect");
    silent
        .wait_closed(Duration::from_secs(5))
        .expect("silent connection closed by the server");

    // A request head that never ends (slowloris).
    let mut slow = RawTls::connect(h.proxy.addr, tls()).expect("connect");
    let authority = slow.authority.clone();
    slow.send(format!("GET /ping HTTP/1.1\r\nhost: {authority}\r\n").as_bytes())
        .expect("send partial head");
    let rest = slow
        .wait_closed(Duration::from_secs(5))
        .expect("connection with an unfinished head closed by the server");
    assert!(
        !String::from_utf8_lossy(&rest).contains(" 200 "),
        "an unfinished head was answered: {}",
        String::from_utf8_lossy(&rest)
    );

    // Normal requests are unaffected.
    let mut xks = h.session();
    assert_ok(&xks.health());
    assert_ok(&xks.metadata(KEY_AES));
}
