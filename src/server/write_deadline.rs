//! A socket wrapper whose writes fail when they make no progress for a while.
//!
//! hyper runs no timer while it is blocked writing a response, so a client that pipelines
//! requests and never reads the answers would hold its connection for ever once the socket's
//! send buffer is full. Here a write, flush or shutdown that stays `Pending` for `limit` fails
//! with `TimedOut`, which ends the connection. The timer is armed only while a write is
//! pending: the common path (the kernel takes the bytes at once) costs one branch.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `T` with a write-progress deadline.
pub struct WriteDeadline<T> {
    inner: T,
    limit: Duration,
    /// Created on the first stalled write and reused; `armed` says whether it is running.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// Set when the deadline fired, so the caller can count it.
    expired: bool,
}

impl<T> WriteDeadline<T> {
    /// Wraps `inner`; a write stalled for `limit` fails.
    pub fn new(inner: T, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            timer: None,
            armed: false,
            expired: false,
        }
    }

    /// The wrapped socket.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Did a write fail because of the deadline?
    pub fn expired(&self) -> bool {
        self.expired
    }

    /// Turns a poll result into progress (disarm) or a stall (arm, and fail once it is due).
    fn track<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.armed = false;
            return r;
        }
        let deadline = Instant::now() + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.expired = true;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "response write made no progress in time",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.track(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A peer that never reads: once the pipe's buffer is full the write stalls, and the
    /// deadline turns the stall into an error instead of a wait without end.
    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_reads_fails_after_the_limit() {
        let (a, _b) = tokio::io::duplex(64);
        let mut w = WriteDeadline::new(a, Duration::from_secs(3));
        let err = w.write_all(&[0u8; 4096]).await.expect_err("the write must fail");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(w.expired());
    }

    /// Progress resets the timer: a slow but reading peer is never cut off.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_served_in_full() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = WriteDeadline::new(a, Duration::from_secs(3));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 32];
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match tokio::io::AsyncReadExt::read(&mut b, &mut buf).await {
                    Ok(0) | Err(_) => break got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        w.write_all(&[7u8; 1024])
            .await
            .expect("a reading peer gets everything");
        w.shutdown().await.expect("shutdown");
        drop(w);
        assert_eq!(reader.await.unwrap().len(), 1024);
    }
}
