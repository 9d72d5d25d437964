//! Raw HTTP/1.1 over TLS: the test writes the bytes (partial requests, floods, stalls) and
//! reads what the server sends back.

use crate::common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A raw HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResp {
    /// Parses a complete response (head + Content-Length body) at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Option<RawResp> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())
                    .flatten()
            })
            .unwrap_or(0);
        let body = bytes.get(end + 4..end + 4 + len)?.to_vec();
        Some(RawResp { status, head, body })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A blocking TLS connection on which the test writes raw HTTP bytes.
pub struct RawTls {
    pub stream: StreamOwned<ClientConnection, TcpStream>,
    pub authority: String,
}

impl RawTls {
    /// Connects and completes the TLS handshake (server name 127.0.0.1).
    pub fn connect(addr: SocketAddr, tls: Arc<ClientConfig>) -> std::io::Result<RawTls> {
        let mut sock = TcpStream::connect_timeout(&addr, WAIT)?;
        sock.set_read_timeout(Some(WAIT))?;
        sock.set_write_timeout(Some(WAIT))?;
        sock.set_nodelay(true)?;
        let mut conn = ClientConnection::new(tls, ServerName::IpAddress(addr.ip().into()))
            .map_err(std::io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        Ok(RawTls {
            stream: StreamOwned::new(conn, sock),
            authority: addr.to_string(),
        })
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Reads one complete response (bounded by the socket's read timeout).
    pub fn read_response(&mut self) -> Result<RawResp, String> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(r) = RawResp::parse(&buf) {
                return Ok(r);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(format!("closed after {} bytes", buf.len())),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("{e} after {} bytes", buf.len())),
            }
        }
    }

    /// Waits up to `limit` for the server to close the connection. Returns what it sent before
    /// closing, or `Err` if the connection was still open when `limit` passed.
    pub fn wait_closed(&mut self, limit: Duration) -> Result<Vec<u8>, String> {
        self.stream
            .sock
            .set_read_timeout(Some(limit))
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(format!("connection still open after {limit:?}"))
                }
                // Reset, or closed without close_notify: closed either way.
                Err(_) => return Ok(got),
            }
            if Instant::now() >= deadline {
                return Err(format!("connection still open after {limit:?}"));
            }
        }
    }
}

/// A request head with `Host` and the given extra lines (each without CRLF).
pub fn request_head(method: &str, path: &str, authority: &str, lines: &[String]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {authority}\r\n");
    for l in lines {
        head.push_str(l);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}
