//! Where connections refused for their source's unproven cap wait before being closed.
//!
//! Closing such a connection at once costs the daemon an `accept` and a `close`, and costs a
//! flooding client just as little: it reconnects at once, as fast as two cores allow, and keeps
//! the kernel's accept queue full, so the SYNs of every *other* source (KMS) are dropped there
//! and retried a second later (measured: ~20,000 reconnects/s, every probe from another
//! address timed out). Holding the refused socket open, unread, for [`HOLD`] makes each of the
//! flooder's connections cost it that long instead, which drains the accept queue. Nothing is
//! read from a held socket and no TLS work is done; the pen is bounded (the oldest is closed to
//! admit a newer one), so it costs at most that many descriptors.
//!
//! Only per-source refusals go here: a source under its cap (KMS, unless it shares the
//! flooder's address) never meets the pen.

use super::budget::Refusal;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Refused connections are logged at most this often (with their count).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What becomes of connections the budget refuses: per-source refusals go to the tarpit, the
/// others are closed at once; refusals come in floods, so one WARN per interval carries the
/// count (the refusal metric has every one).
pub struct Refusals {
    tarpit: Tarpit,
    warning: crate::clock::Throttle,
}

impl Refusals {
    /// With a tarpit of `capacity` sockets.
    pub fn new(capacity: usize) -> Refusals {
        Refusals {
            tarpit: Tarpit::new(capacity),
            warning: crate::clock::Throttle::new(WARN_EVERY),
        }
    }

    /// Disposes of a refused connection.
    pub fn refuse(&mut self, stream: tokio::net::TcpStream, peer: SocketAddr, reason: Refusal) {
        if reason == Refusal::PerSourceUnproven {
            self.tarpit.hold(stream);
        }
        if let Some(held_back) = self.warning.due() {
            tracing::warn!(%peer, reason = reason.as_str(), refused_since_last_warning = held_back + 1, "connection limit reached; refusing new connections");
        }
    }

    /// Are sockets held?
    pub fn holding(&self) -> bool {
        !self.tarpit.is_empty()
    }

    /// Closes the held sockets whose time is up.
    pub fn release_expired(&mut self) {
        self.tarpit.release_expired();
    }
}

/// How long a refused connection is held before it is closed.
pub const HOLD: Duration = Duration::from_secs(10);

/// Held sockets, oldest first.
struct Tarpit {
    held: VecDeque<(Instant, std::net::TcpStream)>,
    capacity: usize,
}

impl Tarpit {
    /// A pen for at most `capacity` sockets (0 = close refused connections at once).
    fn new(capacity: usize) -> Tarpit {
        Tarpit {
            held: VecDeque::new(),
            capacity,
        }
    }

    /// Holds `stream` (taken off the async reactor: it is never polled again); closes the oldest
    /// held socket when the pen is full.
    fn hold(&mut self, stream: tokio::net::TcpStream) {
        if self.capacity == 0 {
            return;
        }
        if self.held.len() >= self.capacity {
            self.held.pop_front();
        }
        if let Ok(s) = stream.into_std() {
            self.held.push_back((Instant::now(), s));
        }
    }

    /// Closes the sockets held for [`HOLD`] or longer.
    fn release_expired(&mut self) {
        while self.held.front().is_some_and(|(at, _)| at.elapsed() >= HOLD) {
            self.held.pop_front();
        }
    }

    /// Is the pen empty?
    fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pen_is_bounded_and_closes_the_oldest_first() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut pen = Tarpit::new(2);
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(std::net::TcpStream::connect(addr).unwrap());
            let (s, _) = listener.accept().await.unwrap();
            pen.hold(s);
        }
        assert_eq!(pen.held.len(), 2);
        // The first client's connection was closed to make room: it reads EOF.
        use std::io::Read;
        clients[0].set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(clients[0].read(&mut [0u8; 1]).unwrap(), 0);
        // The newer ones are held open: a read times out rather than seeing EOF.
        clients[2]
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(clients[2].read(&mut [0u8; 1]).is_err());
        let mut none = Tarpit::new(0);
        let (s, _) = {
            let _c = std::net::TcpStream::connect(addr).unwrap();
            listener.accept().await.unwrap()
        };
        none.hold(s);
        assert!(none.is_empty());
    }
}
