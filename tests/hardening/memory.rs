//! Bounded memory under abuse: oversized bodies and headers are cut off without growing the
//! daemon's memory.

use crate::common::*;
use crate::raw::{request_head, RawResp, RawTls};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::net::SocketAddr;
use std::sync::Arc;

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// What happened to a streamed oversized upload.
struct Flood {
    /// Body bytes the client managed to write before the server stopped it.
    written: u64,
    /// Whether the writer gave up because the server closed or reset the connection.
    write_failed: bool,
    /// Everything the server sent back before closing.
    response: Vec<u8>,
}

/// Sends `head` and then up to `total` body bytes in 64 KiB pieces (chunked encoding framing
/// if `chunked`), while reading whatever the server answers. Bounded by [`WAIT`].
fn flood(addr: SocketAddr, tls: Arc<ClientConfig>, head: String, total: u64, chunked: bool) -> Flood {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .expect("TLS handshake");
        let (mut rd, mut wr) = tokio::io::split(stream);
        let deadline = tokio::time::Instant::now() + WAIT;
        let writer = async move {
            let piece = vec![b'A'; 64 * 1024];
            let mut framed = Vec::new();
            if chunked {
                framed.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            }
            framed.extend_from_slice(&piece);
            if chunked {
                framed.extend_from_slice(b"\r\n");
            }
            if wr.write_all(head.as_bytes()).await.is_err() {
                return (0, true);
            }
            let mut written = 0u64;
            while written < total {
                match tokio::time::timeout_at(deadline, wr.write_all(&framed)).await {
                    Ok(Ok(())) => written += piece.len() as u64,
                    Ok(Err(_)) => return (written, true),
                    Err(_) => return (written, false),
                }
            }
            (written, false)
        };
        let reader = async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                }
            }
            got
        };
        let ((written, write_failed), response) = tokio::join!(writer, reader);
        Flood {
            written,
            write_failed,
            response,
        }
    })
}

#[test]
fn oversized_unauthenticated_body_is_cut_off_at_the_cap_without_growing_memory() {
    const TOTAL: u64 = 200 * 1024 * 1024;
    let h = Harness::start();
    let pid = h.proxy.pid();
    let mut warm = h.session();
    assert_ok(&warm.health());
    let before = rss_kib(pid);

    let path = format!("{BASE}/health");
    let authority = h.proxy.addr.to_string();
    let framings = [
        format!("content-length: {TOTAL}"),
        "transfer-encoding: chunked".to_owned(),
    ];
    for (framing, chunked) in framings.iter().zip([false, true]) {
        let head = request_head(
            "POST",
            &path,
            &authority,
            &["content-type: application/json".to_owned(), framing.clone()],
        );
        let f = flood(
            h.proxy.addr,
            tls_config(&h.proxy.ca, None, None, &[]),
            head,
            TOTAL,
            chunked,
        );
        assert!(
            f.write_failed,
            "{framing}: the server neither closed nor reset the connection ({} of {TOTAL} bytes \
             written within {WAIT:?})",
            f.written
        );
        assert!(
            f.written < TOTAL / 4,
            "{framing}: the server read {} bytes of an oversized body",
            f.written
        );
        if !f.response.is_empty() {
            let r = RawResp::parse(&f.response).unwrap_or_else(|| {
                panic!(
                    "{framing}: not an HTTP response: {:?}",
                    String::from_utf8_lossy(&f.response)
                )
            });
            assert_eq!(r.status, 501, "{framing}: {}", r.head);
            assert!(
                r.head
                    .to_ascii_lowercase()
                    .contains("content-type: application/json"),
                "{}",
                r.head
            );
            assert_eq!(r.json()["errorName"], "UnsupportedOperationException");
        }
    }
    let after = rss_kib(pid);
    assert!(
        after < before + 32 * 1024,
        "daemon RSS grew from {before} KiB to {after} KiB"
    );
    // Still serving.
    assert_ok(&h.session().health());
    assert_ok(&warm.health());
}

#[test]
fn oversized_request_headers_get_431_or_a_closed_connection_and_the_daemon_stays_responsive() {
    let h = Harness::start_with(
        |cfg, _| {
            section(cfg, "server").insert("max_header_bytes".into(), 8192.into());
        },
        &[],
    );
    let path = format!("{BASE}/health");
    let workers: Vec<_> = (0..16)
        .map(|i| {
            let addr = h.proxy.addr;
            let tls = tls_config(&h.proxy.ca, None, None, &[]);
            let path = path.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let mut c = RawTls::connect(addr, tls).map_err(|e| format!("connect: {e}"))?;
                let padding = "a".repeat(64 * 1024);
                let head = request_head(
                    "POST",
                    &path,
                    &c.authority.clone(),
                    &[format!("x-padding-{i}: {padding}"), "content-length: 0".into()],
                );
                // The server may answer and close before it has read everything.
                let _ = c.send(head.as_bytes());
                match c.read_response() {
                    Ok(r) if r.status == 431 => Ok(()),
                    Ok(r) => Err(format!("answered {}: {}", r.status, r.head)),
                    Err(_closed) => Ok(()),
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker").expect("oversized head");
    }
    // A head well under the limit is fine, and the daemon answers normally.
    let mut xks = h.session();
    let body = health_body("after-abuse", "KmsHealthCheck").to_string();
    let mut headers = vec![("host".to_owned(), xks.client.authority.clone())];
    headers.extend(
        xks.signer
            .headers("POST", &xks.client.authority, &path, body.as_bytes()),
    );
    headers.push(("x-padding".to_owned(), "b".repeat(2048)));
    let r = xks
        .client
        .try_send_raw("POST", &path, &headers, body.into_bytes())
        .expect("request");
    assert_ok(&r);
    assert_ok(&xks.health());
}
