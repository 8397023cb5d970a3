//! The response body: a small JSON document, or a bounded channel of
//! chunks fed by the streaming task. The channel's capacity is what bounds
//! memory: a slow client makes the producer wait, never buffer.
//!
//! A [`Metered`] stream counts what it actually hands to the connection and,
//! when it ends or is dropped (the client went away), records a completion
//! event in the audit log with those counts.

use crate::metrics::{Metrics, PortIx};
use crate::write_stall::Stalled;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use meshgov_audit::{AuditLog, Event};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::mpsc;

pub enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Result<Bytes, std::io::Error>>),
    Metered(Metered),
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Body {
        Body::Full(Some(b.into()))
    }
}

/// A chunk of records: the bytes and how many records they hold.
pub type Chunk = (Bytes, u64);

/// A streamed response that records what was sent.
pub struct Metered {
    rx: mpsc::Receiver<Result<Chunk, std::io::Error>>,
    records: u64,
    bytes: u64,
    outcome: Option<&'static str>,
    /// The connection's flag: raised by the producer when it gave up on a
    /// client that read nothing, or by the socket when a write waited too
    /// long.
    stalled: Stalled,
    completion: Option<(Arc<AuditLog>, Box<Event>)>,
    meter: Meter,
}

/// Where a stream counts what it sends: the port's records and bytes, the
/// streams in flight and how long each took.
pub struct Meter {
    metrics: Arc<Metrics>,
    port: PortIx,
    started: Instant,
    /// Set when the shutdown grace period ran out.
    cut_at_shutdown: Arc<AtomicBool>,
}

impl Meter {
    /// A stream of `port` starts now.
    pub fn start(metrics: &Arc<Metrics>, cut_at_shutdown: &Arc<AtomicBool>, port: &str) -> Meter {
        metrics.streams_in_flight.inc();
        Meter {
            port: metrics.port(Some(port)),
            metrics: Arc::clone(metrics),
            started: Instant::now(),
            cut_at_shutdown: Arc::clone(cut_at_shutdown),
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.metrics.stream_ended(self.port, self.started.elapsed());
    }
}

/// The producing side of a [`Metered`] stream: hands chunks to the
/// connection, and gives up on a client that reads nothing for `stall`.
pub struct ChunkSender {
    tx: mpsc::Sender<Result<Chunk, std::io::Error>>,
    stall: std::time::Duration,
    stalled: Stalled,
}

impl ChunkSender {
    /// A channel of `capacity` chunks: the sender, and the receiver for
    /// [`Metered::new`]. A send that waits `stall` raises `stalled`.
    pub fn channel(
        capacity: usize,
        stall: std::time::Duration,
        stalled: Stalled,
    ) -> (ChunkSender, mpsc::Receiver<Result<Chunk, std::io::Error>>) {
        let (tx, rx) = mpsc::channel(capacity);
        (ChunkSender { tx, stall, stalled }, rx)
    }

    /// Sends `bytes` holding `records` records; `false` when the client is
    /// gone or stalled, and the stream should stop.
    pub async fn send(&self, bytes: Bytes, records: u64) -> bool {
        match tokio::time::timeout(self.stall, self.tx.send(Ok((bytes, records)))).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.stalled.raise();
                false
            }
        }
    }

    /// Aborts the chunked body, so the client sees a truncated response
    /// rather than a complete-looking one.
    pub async fn abort(&self, why: &str) {
        let _ = self
            .tx
            .send(Err(std::io::Error::other(why.to_string())))
            .await;
    }
}

impl Metered {
    /// `completion` is the event to fill in (records, bytes, outcome) and
    /// submit when the stream is over.
    pub fn new(
        rx: mpsc::Receiver<Result<Chunk, std::io::Error>>,
        stalled: Stalled,
        log: Arc<AuditLog>,
        completion: Event,
        meter: Meter,
    ) -> Metered {
        Metered {
            rx,
            records: 0,
            bytes: 0,
            outcome: None,
            stalled,
            completion: Some((log, Box::new(completion))),
            meter,
        }
    }

    /// Drops the stream without recording a completion (its decision was
    /// never made durable, so the response is replaced by a refusal).
    pub fn disarm(mut self) {
        self.completion = None;
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some((log, mut ev)) = self.completion.take() {
            ev.records = Some(self.records);
            ev.bytes = Some(self.bytes);
            let gone = if self.meter.cut_at_shutdown.load(Ordering::Acquire) {
                "shutdown"
            } else if self.stalled.is_raised() {
                "stalled"
            } else {
                "client_gone"
            };
            let outcome = self.outcome.unwrap_or(gone);
            self.meter.metrics.stream_outcome(outcome);
            ev.outcome = Some(outcome.into());
            ev.time_ms = crate::clock::now_ms();
            if let Err(e) = log.submit_detached(*ev) {
                tracing::error!("cannot audit a stream's completion: {e}");
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
            Body::Metered(m) => match m.rx.poll_recv(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok((b, n)))) => {
                    m.records += n;
                    m.bytes += b.len() as u64;
                    m.meter.metrics.sent(m.meter.port, n, b.len() as u64);
                    Poll::Ready(Some(Ok(Frame::data(b))))
                }
                Poll::Ready(Some(Err(e))) => {
                    m.outcome = Some("upstream_failed");
                    Poll::Ready(Some(Err(e)))
                }
                // A producer that gave up on a stalled client ends the
                // body with an error: the client must not see a complete
                // answer.
                Poll::Ready(None) if m.stalled.is_raised() => {
                    m.outcome = Some("stalled");
                    Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client read nothing within limits.write_stall_timeout_ms",
                    ))))
                }
                Poll::Ready(None) => {
                    m.outcome.get_or_insert("complete");
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(_) | Body::Metered(_) => SizeHint::default(),
        }
    }
}
