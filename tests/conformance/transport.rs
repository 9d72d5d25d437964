//! HTTP and TLS behaviour: methods (checklist 4, 43), paths (31), the body cap, keep-alive (42),
//! and TLS versions and suites (39).

use crate::common::*;
use rustls::crypto::ring::cipher_suite as cs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

const API_SUFFIXES: [&str; 4] = [
    "/health",
    "/keys/quickstart-aes/metadata",
    "/keys/quickstart-aes/encrypt",
    "/keys/quickstart-aes/decrypt",
];

/// Checklist 4: GET on each of the four API URIs is 405, answered with a JSON body.
#[test]
fn get_on_each_api_uri_is_method_not_allowed() {
    let mut h = Harness::start();
    for suffix in API_SUFFIXES {
        let path = format!("{BASE}{suffix}");
        // Signed or not, a GET is refused before anything else.
        let signed = h.xks.signer.headers("GET", &h.xks.client.authority, &path, b"");
        for headers in [vec![], signed] {
            let r = h.xks.client.send("GET", &path, &headers, b"");
            assert_eq!(r.status, 405, "GET {path}: {}", r.text());
            assert_json_error_shape(&r);
        }
    }
}

/// Methods other than GET are refused the same way on the API URIs (digest section 9).
#[test]
fn put_delete_and_patch_on_api_uris_are_method_not_allowed() {
    let mut h = Harness::start();
    for method in ["PUT", "DELETE", "PATCH"] {
        for suffix in API_SUFFIXES {
            let path = format!("{BASE}{suffix}");
            let body = health_body("r-method", "KmsHealthCheck").to_string();
            let headers = h
                .xks
                .signer
                .headers(method, &h.xks.client.authority, &path, body.as_bytes());
            let r = h.xks.client.send(method, &path, &headers, body.as_bytes());
            assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
            assert_json_error_shape(&r);
        }
    }
}

/// Checklist 43: an unauthenticated load-balancer probe, without changing the 405s.
#[test]
fn ping_is_unauthenticated_200_while_get_on_api_uris_stays_405() {
    let mut h = Harness::start();
    let r = h.xks.client.send("GET", "/ping", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    for suffix in API_SUFFIXES {
        let r = h.xks.client.send("GET", &format!("{BASE}{suffix}"), &[], b"");
        assert_eq!(r.status, 405, "{suffix}: {}", r.text());
    }
    let r = h.xks.client.send("GET", "/ping", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Checklist 31 and the routing rules of digest section 3: anything that is not exactly a
/// configured prefix + `/kms/xks/v1` + a known operation is InvalidUriPathException.
#[test]
fn unknown_paths_are_invalid_uri_path() {
    let mut h = Harness::start();
    let body = health_body("r-path", "KmsHealthCheck").to_string();
    for path in [
        "/quickstart/invalid/kms/xks/v1/health",
        "/quickstart/kms/xks/v2/health",
        "/quickstart/kms/xks/v1/keys/foo/sign",
        "/quickstart/kms/xks/v1/keys/quickstart-aes/sign",
        "/quickstart/kms/xks/v1/health/",
        "/quickstart/kms/xks/v1/keys//encrypt",
        "/quickstart/kms/xks/v1/keys/a/b/encrypt",
        "/other/kms/xks/v1/health",
        "/kms/xks/v1/health",
        "/quickstart/kms/xks/v1",
        "/",
    ] {
        let r = h.xks.client.post_signed(&h.xks.signer, path, body.as_bytes());
        assert_error(&r, 404, "InvalidUriPathException");
    }
}

/// A keystore with an empty prefix serves at `/kms/xks/v1` (digest section 3).
#[test]
fn empty_uri_prefix_serves_at_kms_xks_v1() {
    let mut h = Harness::start_with(
        |cfg, _| {
            entry(cfg, "keystores", 0).insert("uri_prefix".into(), "".into());
        },
        &[],
    );
    h.xks.base = "/kms/xks/v1".into();
    assert_ok(&h.xks.health());
    let s = h.xks.encrypt_ok(KEY_AES, b"no prefix", None);
    assert_ok(&h.xks.decrypt(KEY_AES, &s.decrypt_body(None)));
    h.xks.base = BASE.into();
    assert_error(&h.xks.health(), 404, "InvalidUriPathException");
}

#[test]
fn query_string_is_invalid_uri_path() {
    let mut h = Harness::start();
    let body = health_body("r-query", "KmsHealthCheck").to_string();
    for path in [
        format!("{BASE}/health?x=1"),
        format!("{BASE}/keys/{KEY_AES}/metadata?a=b"),
    ] {
        let r = h.xks.client.post_signed(&h.xks.signer, &path, body.as_bytes());
        assert_error(&r, 404, "InvalidUriPathException");
    }
}

/// A body over the 64 KiB cap is answered (no hang) with a JSON 501, before authentication.
#[test]
fn body_over_the_cap_is_unsupported_operation_and_does_not_hang() {
    let mut h = Harness::start();
    // Just over the cap: the whole body reaches the server.
    let mut body = br#"{"requestMetadata":{"kmsRequestId":"big","kmsOperation":"Encrypt"},"pad":""#.to_vec();
    body.resize(64 * 1024 + 1 - 2, b'A');
    body.extend_from_slice(b"\"}");
    assert_eq!(body.len(), 64 * 1024 + 1);
    let r = h.xks.post_bytes(&format!("/keys/{KEY_AES}/encrypt"), &body);
    assert_error(&r, 501, "UnsupportedOperationException");

    // Far over the cap: the daemon stops reading at the cap. The client sees the JSON 501 or,
    // when the daemon closes the connection while the client is still writing, a closed
    // connection; never a hang (every exchange is bounded by WAIT).
    let mut client = h.proxy.client();
    let big = vec![b'x'; 1024 * 1024];
    let path = format!("{BASE}/keys/{KEY_AES}/encrypt");
    let mut headers = vec![("host".to_owned(), client.authority.clone())];
    headers.extend(h.xks.signer.headers("POST", &client.authority, &path, &big));
    match client.try_send_raw("POST", &path, &headers, big) {
        Ok(r) => assert_error(&r, 501, "UnsupportedOperationException"),
        Err(e) => assert!(
            !e.contains("no response within"),
            "daemon hung on a 1 MiB body: {e}"
        ),
    }
    // The daemon keeps serving.
    assert_ok(&h.session().health());
}

/// Checklist 42 (connection reuse part): one connection carries 100 sequential requests.
#[test]
fn keep_alive_connection_serves_100_sequential_requests() {
    let mut h = Harness::start();
    let plaintext = vec![0x5a; 4096];
    for i in 0..50 {
        let sealed = h
            .xks
            .encrypt_ok(KEY_AES, &plaintext, Some(format!("aad-{i}").as_bytes()));
        let r = h
            .xks
            .decrypt(KEY_AES, &sealed.decrypt_body(Some(format!("aad-{i}").as_bytes())));
        assert_ok(&r);
        assert_eq!(r.b64_field("plaintext"), plaintext, "request {i}");
        let connection = r.headers.get(http::header::CONNECTION).map(|v| v.as_bytes());
        assert_ne!(connection, Some(&b"close"[..]), "request {i}");
    }
}

/// Checklist 39: TLS 1.2 with ECDHE-ECDSA-AES256-GCM-SHA384 (the fixture certificate is ECDSA).
#[test]
fn tls12_with_ecdhe_ecdsa_aes256_gcm_sha384_works() {
    let h = Harness::start();
    let cfg = tls_config(
        &h.proxy.ca,
        Some(&[&rustls::version::TLS12]),
        Some(vec![cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]),
        &[],
    );
    let mut c = h.proxy.client_with(cfg).expect("TLS 1.2 handshake");
    assert_eq!(c.protocol, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(
        c.suite,
        Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
    );
    let r = c.post_signed(
        &h.xks.signer,
        &format!("{BASE}/health"),
        health_body("tls12", "KmsHealthCheck").to_string().as_bytes(),
    );
    assert_ok(&r);
}

/// Checklist 39: TLS 1.3 with TLS_AES_256_GCM_SHA384 (and the spec's other TLS 1.3 suite,
/// TLS_CHACHA20_POLY1305_SHA256), with HTTP/1.1 negotiated by ALPN.
#[test]
fn tls13_with_aes_256_gcm_sha384_and_http11_alpn_works() {
    let h = Harness::start();
    for (suite, id) in [
        (
            cs::TLS13_AES_256_GCM_SHA384,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        ),
        (
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        ),
    ] {
        let cfg = tls_config(
            &h.proxy.ca,
            Some(&[&rustls::version::TLS13]),
            Some(vec![suite]),
            &[b"http/1.1"],
        );
        let mut c = h.proxy.client_with(cfg).expect("TLS 1.3 handshake");
        assert_eq!(c.protocol, Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(c.suite, Some(id));
        assert_eq!(c.alpn.as_deref(), Some(&b"http/1.1"[..]));
        let r = c.post_signed(
            &h.xks.signer,
            &format!("{BASE}/health"),
            health_body("tls13", "KmsHealthCheck").to_string().as_bytes(),
        );
        assert_ok(&r);
    }
}

/// Checklist 39: a client without ALPN speaks HTTP/1.1 (the harness default).
#[test]
fn client_without_alpn_is_served_http11() {
    let mut h = Harness::start();
    assert_eq!(h.xks.client.alpn, None);
    assert_ok(&h.xks.health());
}

/// A hand-made TLS 1.1 ClientHello (no supported_versions extension) with TLS 1.0/1.1 suites.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    let suites: [u16; 4] = [0xc00a, 0xc014, 0x0035, 0x002f];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let exts: &[u8] = &[
        0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17, // supported_groups: secp256r1
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats: uncompressed
    ];
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(exts);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Checklist 39: TLS 1.1 is refused — with a raw ClientHello and with
/// `openssl s_client -tls1_1`.
#[test]
fn tls11_handshake_is_refused() {
    require_tool("openssl", "openssl");
    let h = Harness::start();
    let mut s = TcpStream::connect(h.proxy.addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&tls11_client_hello()).expect("send ClientHello");
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the server's answer: {e}"),
        }
        if reply.len() >= 7 {
            break;
        }
    }
    assert_ne!(
        reply.first(),
        Some(&0x16),
        "server answered TLS 1.1 with a handshake record"
    );
    if let Some(&ct) = reply.first() {
        assert_eq!(ct, 0x15, "expected a TLS alert, got {reply:02x?}");
        assert_eq!(reply.get(5), Some(&2), "alert must be fatal: {reply:02x?}");
    }

    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &h.proxy.addr.to_string(), "-tls1_1"])
        .args(["-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost"]);
    let (code, out, err) = run_bounded(cmd, Duration::from_secs(20));
    assert!(
        !err.contains("no protocols available"),
        "this openssl cannot send TLS 1.1 at all (even at SECLEVEL=0), so it cannot check the \
         refusal; install Debian's openssl package, which can:\n{err}"
    );
    assert_ne!(
        code,
        Some(0),
        "openssl completed a TLS 1.1 handshake:\n{out}\n{err}"
    );
    assert!(
        out.contains("Cipher is (NONE)"),
        "TLS 1.1 handshake was not refused:\n{out}\n{err}"
    );
    // The daemon is still serving after the refused handshakes.
    let mut x = h.session();
    assert_ok(&x.health());
}
