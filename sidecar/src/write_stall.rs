//! A write deadline on a connection: a client that stops reading fills its
//! kernel receive buffer, then the sidecar's send buffer, and every write
//! waits. Without a deadline hyper would wait for ever, holding the
//! connection, its task and the response's stream.
//!
//! [`WriteStall`] wraps the socket: once a write (or flush) has waited
//! `limit` without the socket taking a byte, it fails with `TimedOut`, so
//! hyper ends the connection, and it raises the connection's [`Stalled`]
//! flag, so the stream's completion event says `stalled`.

use http::Request;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Raised when a connection's client stopped reading: by [`WriteStall`],
/// or by a stream's producer that could not hand over a chunk in time.
/// Each request carries its connection's flag as an extension.
#[derive(Clone, Default)]
pub struct Stalled(Arc<AtomicBool>);

impl Stalled {
    /// The flag of the connection `req` came on (a fresh one for a request
    /// that did not come through [`crate::server`]).
    pub fn of<B>(req: &Request<B>) -> Stalled {
        req.extensions()
            .get::<Stalled>()
            .cloned()
            .unwrap_or_default()
    }

    pub fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A socket whose writes fail once they have waited `limit`.
pub struct WriteStall<T> {
    inner: T,
    limit: Duration,
    /// Armed while a write waits; created on the first wait.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    stalled: Stalled,
}

impl<T> WriteStall<T> {
    pub fn new(inner: T, limit: Duration, stalled: Stalled) -> WriteStall<T> {
        WriteStall {
            inner,
            limit,
            timer: None,
            armed: false,
            stalled,
        }
    }

    /// Passes a finished write through and disarms the timer; a write that
    /// waits arms it (once) and fails when it fires.
    fn guard<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
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
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.stalled.raise();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing within limits.write_stall_timeout_ms",
                )))
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStall<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStall<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.guard(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_that_waits_past_the_limit_fails_and_raises_the_flag() {
        // A pipe whose reader never reads: the writer's buffer fills.
        let (w, _r) = tokio::io::duplex(64);
        let stalled = Stalled::default();
        let limit = Duration::from_millis(300);
        let mut io = WriteStall::new(w, limit, stalled.clone());
        io.write_all(&[0u8; 64]).await.unwrap();
        assert!(!stalled.is_raised());
        let t0 = Instant::now();
        let e = io.write_all(&[1u8; 8]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t0.elapsed() >= limit, "{:?}", t0.elapsed());
        assert!(stalled.is_raised());
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_not_stalled() {
        let (w, mut r) = tokio::io::duplex(32);
        let stalled = Stalled::default();
        let limit = Duration::from_millis(500);
        let mut io = WriteStall::new(w, limit, stalled.clone());
        let reader = tokio::spawn(async move {
            let mut b = [0u8; 32];
            let mut got = 0;
            while got < 640 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                got += r.read(&mut b).await.unwrap();
            }
        });
        // Each wait is well under the limit, the whole write far over it.
        let t0 = Instant::now();
        io.write_all(&[0u8; 640]).await.unwrap();
        assert!(t0.elapsed() > 2 * limit, "{:?}", t0.elapsed());
        reader.await.unwrap();
        assert!(!stalled.is_raised());
    }
}
