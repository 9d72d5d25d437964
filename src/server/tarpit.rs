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

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a refused connection is held before it is closed.
pub const HOLD: Duration = Duration::from_secs(10);

/// Held sockets, oldest first.
pub struct Tarpit {
    held: VecDeque<(Instant, std::net::TcpStream)>,
    capacity: usize,
}

impl Tarpit {
    /// A pen for at most `capacity` sockets (0 = close refused connections at once).
    pub fn new(capacity: usize) -> Tarpit {
        Tarpit {
            held: VecDeque::new(),
            capacity,
        }
    }

    /// Holds `stream` (taken off the async reactor: it is never polled again); closes the oldest
    /// held socket when the pen is full.
    pub fn hold(&mut self, stream: tokio::net::TcpStream) {
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
    pub fn release_expired(&mut self) {
        while self.held.front().is_some_and(|(at, _)| at.elapsed() >= HOLD) {
            self.held.pop_front();
        }
    }

    /// Is the pen empty?
    pub fn is_empty(&self) -> bool {
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
