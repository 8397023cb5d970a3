//! The writer: one thread owns the chain and the files. Submitters send
//! events over a channel; the thread takes everything queued, seals and
//! appends it, calls `fdatasync` once for the whole batch (group commit),
//! and only then acknowledges each event. While one batch syncs, the next
//! one queues, so throughput grows with load while every acknowledged event
//! is on disk.
//!
//! A failed write or sync poisons the log: every later submission fails, so
//! a caller that must not act unaudited (the sidecar) refuses instead.

use crate::checkpoint::Checkpoint;
use crate::event::{Event, Head, Kind, hex, seal};
use crate::segment::{self, CHECKPOINTS, OpenError, Segment, open_append, segment_name, sync_dir};
use meshgov_bundle::{PublicKey, SigningKey};
use std::fs::File;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// When an acknowledgement is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After `fdatasync` of the batch: an acknowledged event survives a
    /// crash of the process or the machine. The default.
    Fsync,
    /// After `write(2)` only: survives a process crash, not a power loss.
    /// For measuring what durability costs; never a default.
    Buffered,
}

/// How the log is kept.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// A checkpoint is signed after this many events …
    pub checkpoint_every: u64,
    /// … or this long after the last one, whichever comes first (only if
    /// there are new events).
    pub checkpoint_interval: Duration,
    pub durability: Durability,
    /// Remove segments once collected and covered by a checkpoint.
    pub retention: Retention,
}

/// Whether old segments may be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep every segment.
    KeepAll,
    /// Remove a closed segment once every event in it has been collected
    /// (see [`AuditLog::collected`]) and a signed checkpoint covers it. Each
    /// removal is itself an event.
    AfterCollection,
}

impl Options {
    /// Defaults: 64 MiB segments, a checkpoint every 10 000 events or 10 s,
    /// fsync, keep everything.
    pub fn new(dir: impl Into<PathBuf>) -> Options {
        Options {
            dir: dir.into(),
            segment_bytes: 64 * 1024 * 1024,
            checkpoint_every: 10_000,
            checkpoint_interval: Duration::from_secs(10),
            durability: Durability::Fsync,
            retention: Retention::KeepAll,
        }
    }
}

/// Why an event could not be made durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log failed and accepts no more events: {0}")]
    Failed(String),
    #[error("the audit log is closed")]
    Closed,
}

/// What an acknowledged event got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
}

/// The chain head as published on the control status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    /// The last durable sequence (0: empty).
    pub seq: u64,
    /// Its hash, lower-case hex.
    pub hash: String,
    /// The sequence of the last signed checkpoint (0: none yet).
    pub checkpoint_seq: u64,
    /// The key that signs checkpoints, `ed25519:<base64>`.
    pub public_key: String,
    /// The sequence collection has acknowledged.
    pub collected_seq: u64,
    /// Why the log stopped accepting events, if it did.
    pub failed: Option<String>,
}

enum Msg {
    Append(
        Box<Event>,
        Option<oneshot::Sender<Result<Receipt, AuditError>>>,
    ),
    /// Wakes the writer to apply retention.
    Collected,
}

struct Shared {
    durable_seq: AtomicU64,
    /// Events handed to the writer, and events it has dealt with (written
    /// or refused): their difference is the queue depth.
    queued: AtomicU64,
    taken: AtomicU64,
    /// How long each batch's `fdatasync` took.
    fsync: meshgov_metrics::Histogram,
    checkpoint_seq: AtomicU64,
    collected_seq: AtomicU64,
    head_hash: Mutex<String>,
    failed: Mutex<Option<String>>,
}

/// A handle to the audit log; cheap to share behind an `Arc`. Dropping the
/// last handle stops the writer after it has written what was queued and a
/// final checkpoint.
pub struct AuditLog {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    shared: Arc<Shared>,
    public_key: PublicKey,
    dir: PathBuf,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Awaits an event's acknowledgement.
pub struct Pending {
    rx: Option<oneshot::Receiver<Result<Receipt, AuditError>>>,
    err: Option<AuditError>,
}

impl Future for Pending {
    type Output = Result<Receipt, AuditError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.rx {
            Some(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(AuditError::Closed))),
            None => Poll::Ready(Err(this.err.take().unwrap_or(AuditError::Closed))),
        }
    }
}

impl Pending {
    /// Waits on the current thread (not inside an async runtime).
    pub fn wait(self) -> Result<Receipt, AuditError> {
        match self.rx {
            Some(rx) => rx.blocking_recv().unwrap_or(Err(AuditError::Closed)),
            None => Err(self.err.unwrap_or(AuditError::Closed)),
        }
    }
}

/// The wall clock, for the log's own events and checkpoints.
fn now_ms() -> i64 {
    use meshgov_bundle::clock::{Clock as _, SystemClock};
    SystemClock.now_ms()
}

impl AuditLog {
    /// Opens (creating or recovering) the log in `opts.dir` and starts its
    /// writer thread. A torn tail left by a crash is cut off and recorded as
    /// a `recovery` event.
    pub fn open(opts: Options, key: SigningKey) -> Result<AuditLog, OpenError> {
        let rec = segment::recover(&opts.dir)?;
        let io_err = |source| OpenError::Io {
            path: opts.dir.clone(),
            source,
        };
        let (segments, file, size) = match rec.segments.last() {
            Some(last) => {
                let f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&last.path)
                    .map_err(io_err)?;
                (rec.segments.clone(), f, rec.last_len)
            }
            None => {
                let seg = Segment {
                    first_seq: rec.head.seq + 1,
                    path: opts.dir.join(segment_name(rec.head.seq + 1)),
                };
                let f = open_append(&opts.dir, &segment_name(seg.first_seq)).map_err(io_err)?;
                (vec![seg], f, 0)
            }
        };
        let checkpoints = open_append(&opts.dir, CHECKPOINTS).map_err(io_err)?;
        let checkpoint_seq = rec.last_checkpoint.as_ref().map_or(0, |c| c.seq);
        let shared = Arc::new(Shared {
            durable_seq: AtomicU64::new(rec.head.seq),
            queued: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            fsync: meshgov_metrics::Histogram::new(meshgov_metrics::FSYNC_BUCKETS),
            checkpoint_seq: AtomicU64::new(checkpoint_seq),
            collected_seq: AtomicU64::new(0),
            head_hash: Mutex::new(hex(&rec.head.hash)),
            failed: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel();
        let public_key = key.public_key();
        let torn = rec.torn_bytes + rec.checkpoints_torn;
        let mut w = Writer {
            opts: opts.clone(),
            key,
            head: rec.head,
            segments,
            file,
            size,
            checkpoints,
            checkpointed: checkpoint_seq,
            last_checkpoint_at: Instant::now(),
            shared: Arc::clone(&shared),
            buf: Vec::with_capacity(1 << 20),
            failed: None,
        };
        if torn > 0 {
            // Recorded (durably) before anything else is accepted.
            let mut ev = Event::new(Kind::Recovery, now_ms());
            ev.torn_bytes = Some(torn);
            w.commit(vec![(Box::new(ev), None)]);
            if let Some(why) = w.failed.take() {
                return Err(OpenError::Io {
                    path: opts.dir.clone(),
                    source: std::io::Error::other(why),
                });
            }
        }
        let thread = std::thread::Builder::new()
            .name("meshgov-audit".into())
            .spawn(move || w.run(rx))
            .map_err(io_err)?;
        Ok(AuditLog {
            tx: Mutex::new(Some(tx)),
            shared,
            public_key,
            dir: opts.dir,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn send(&self, m: Msg) -> Result<(), AuditError> {
        if let Some(f) = self.failure() {
            return Err(AuditError::Failed(f));
        }
        let event = matches!(m, Msg::Append(..));
        let guard = self.tx.lock().map_err(|_| AuditError::Closed)?;
        guard
            .as_ref()
            .ok_or(AuditError::Closed)?
            .send(m)
            .map_err(|_| AuditError::Closed)?;
        if event {
            self.shared.queued.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Events submitted but not yet written (or refused) by the writer.
    pub fn queue_depth(&self) -> u64 {
        // `taken` can pass `queued` for a moment (it is counted after the
        // send); never report less than zero.
        let taken = self.shared.taken.load(Ordering::Relaxed);
        self.shared
            .queued
            .load(Ordering::Relaxed)
            .saturating_sub(taken)
    }

    /// How long the writer's `fdatasync` calls took, one per batch (empty
    /// with [`Durability::Buffered`]).
    pub fn fsync_seconds(&self) -> meshgov_metrics::HistogramSnapshot {
        self.shared.fsync.snapshot()
    }

    /// Queues `ev`; the returned future resolves once it is durable.
    pub fn submit(&self, ev: Event) -> Pending {
        let (tx, rx) = oneshot::channel();
        match self.send(Msg::Append(Box::new(ev), Some(tx))) {
            Ok(()) => Pending {
                rx: Some(rx),
                err: None,
            },
            Err(e) => Pending {
                rx: None,
                err: Some(e),
            },
        }
    }

    /// Queues `ev` without waiting (for events nothing waits on, such as a
    /// stream's completion). Fails only if the log has already failed.
    pub fn submit_detached(&self, ev: Event) -> Result<(), AuditError> {
        self.send(Msg::Append(Box::new(ev), None))
    }

    /// Records that a collector holds every event up to `seq`; with
    /// [`Retention::AfterCollection`] this lets covered segments go.
    pub fn collected(&self, seq: u64) {
        let seq = seq.min(self.durable_seq());
        self.shared.collected_seq.fetch_max(seq, Ordering::AcqRel);
        // Wakes the writer to apply retention.
        let _ = self.send(Msg::Collected);
    }

    /// Why the log stopped accepting events, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.lock().ok().and_then(|f| f.clone())
    }

    /// The key checkpoints are verified with.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last durable sequence.
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq.load(Ordering::Acquire)
    }

    /// The head, for the control status.
    pub fn head(&self) -> AuditHead {
        AuditHead {
            seq: self.durable_seq(),
            hash: self
                .shared
                .head_hash
                .lock()
                .map(|h| h.clone())
                .unwrap_or_default(),
            checkpoint_seq: self.shared.checkpoint_seq.load(Ordering::Acquire),
            public_key: self.public_key.to_string(),
            collected_seq: self.shared.collected_seq.load(Ordering::Acquire),
            failed: self.failure(),
        }
    }

    /// Stops the writer after it has written what is queued and signed a
    /// final checkpoint.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// The most events sealed into one batch.
const MAX_BATCH: usize = 8192;

struct Writer {
    opts: Options,
    key: SigningKey,
    head: Head,
    segments: Vec<Segment>,
    file: File,
    size: u64,
    checkpoints: File,
    checkpointed: u64,
    last_checkpoint_at: Instant,
    shared: Arc<Shared>,
    buf: Vec<u8>,
    failed: Option<String>,
}

type Ack = oneshot::Sender<Result<Receipt, AuditError>>;

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
        loop {
            let wait = self
                .opts
                .checkpoint_interval
                .saturating_sub(self.last_checkpoint_at.elapsed());
            match rx.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(m) => batch.push(m),
                Err(RecvTimeoutError::Timeout) => {
                    self.maybe_checkpoint(true);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let events: Vec<(Box<Event>, Option<Ack>)> = batch
                .drain(..)
                .filter_map(|m| match m {
                    Msg::Append(e, ack) => Some((e, ack)),
                    Msg::Collected => None,
                })
                .collect();
            let n = events.len() as u64;
            self.commit(events);
            self.shared.taken.fetch_add(n, Ordering::Relaxed);
            self.maybe_rotate();
            self.maybe_checkpoint(false);
            self.maybe_retire();
        }
        self.maybe_checkpoint(true);
    }

    fn fail(&mut self, why: String) {
        tracing::error!("the audit log failed and refuses every later event: {why}");
        if let Ok(mut f) = self.shared.failed.lock() {
            *f = Some(why.clone());
        }
        self.failed = Some(why);
    }

    /// Seals, writes and syncs `events`, then acknowledges them.
    fn commit(&mut self, events: Vec<(Box<Event>, Option<Ack>)>) {
        if events.is_empty() {
            return;
        }
        if let Some(f) = &self.failed {
            for (_, ack) in events {
                if let Some(a) = ack {
                    let _ = a.send(Err(AuditError::Failed(f.clone())));
                }
            }
            return;
        }
        self.buf.clear();
        let mut head = self.head;
        let mut acks = Vec::with_capacity(events.len());
        for (ev, ack) in events {
            head = seal(&ev, head, &mut self.buf);
            acks.push((head.seq, ack));
        }
        let _span = tracing::debug_span!(
            "audit_commit",
            events = acks.len(),
            first_seq = self.head.seq + 1,
            last_seq = head.seq
        )
        .entered();
        let written = self.file.write_all(&self.buf).and_then(|()| {
            if self.opts.durability == Durability::Fsync {
                let t = Instant::now();
                let r = self.file.sync_data();
                self.shared.fsync.observe(t.elapsed());
                r
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Cut the segment back to its last acknowledged event: a batch
            // that did not become durable was refused to every submitter,
            // so none of its events may stay in the log as if answered (a
            // full disk can leave whole lines of it). Shrinking needs no
            // space; if even that fails, a restart cuts the torn tail.
            let _ = self
                .file
                .set_len(self.size)
                .and_then(|()| self.file.sync_data());
            self.fail(format!("cannot write to the audit segment: {e}"));
            for (_, ack) in acks {
                if let Some(a) = ack {
                    let _ = a.send(Err(AuditError::Failed(e.to_string())));
                }
            }
            return;
        }
        self.size += self.buf.len() as u64;
        self.head = head;
        if let Ok(mut h) = self.shared.head_hash.lock() {
            *h = hex(&head.hash);
        }
        self.shared.durable_seq.store(head.seq, Ordering::Release);
        for (seq, ack) in acks {
            if let Some(a) = ack {
                let _ = a.send(Ok(Receipt { seq }));
            }
        }
    }

    fn maybe_rotate(&mut self) {
        if self.failed.is_some() || self.size < self.opts.segment_bytes {
            return;
        }
        let first = self.head.seq + 1;
        let name = segment_name(first);
        match open_append(&self.opts.dir, &name) {
            Ok(f) => {
                self.file = f;
                self.size = 0;
                self.segments.push(Segment {
                    first_seq: first,
                    path: self.opts.dir.join(name),
                });
            }
            Err(e) => self.fail(format!("cannot start a new audit segment: {e}")),
        }
    }

    fn maybe_checkpoint(&mut self, on_timer: bool) {
        if self.failed.is_some() || self.head.seq == self.checkpointed {
            return;
        }
        let due = self.head.seq - self.checkpointed >= self.opts.checkpoint_every
            || self.last_checkpoint_at.elapsed() >= self.opts.checkpoint_interval
            || on_timer;
        if !due {
            return;
        }
        let c = Checkpoint::sign(&self.key, self.head.seq, &self.head.hash, now_ms());
        // INVARIANT: the events a checkpoint covers are already durable
        // (commit syncs before returning), so a checkpoint never vouches
        // for an event a crash could lose.
        let res = self.checkpoints.write_all(&c.to_line()).and_then(|()| {
            if self.opts.durability == Durability::Fsync {
                self.checkpoints.sync_data()
            } else {
                Ok(())
            }
        });
        match res {
            Ok(()) => {
                self.checkpointed = c.seq;
                self.last_checkpoint_at = Instant::now();
                self.shared.checkpoint_seq.store(c.seq, Ordering::Release);
            }
            Err(e) => self.fail(format!("cannot write an audit checkpoint: {e}")),
        }
    }

    /// Removes closed segments that are collected and checkpointed, after
    /// recording the removal as an event.
    fn maybe_retire(&mut self) {
        if self.opts.retention != Retention::AfterCollection || self.failed.is_some() {
            return;
        }
        let safe = self
            .shared
            .collected_seq
            .load(Ordering::Acquire)
            .min(self.checkpointed);
        // A segment's last event is the one before the next segment starts;
        // the last segment (being written) never goes.
        let n = self
            .segments
            .iter()
            .skip(1)
            .take_while(|next| next.first_seq.saturating_sub(1) <= safe)
            .count();
        if n == 0 {
            return;
        }
        let gone: Vec<Segment> = self.segments.drain(..n).collect();
        let through = self.segments.first().map_or(0, |s| s.first_seq - 1);
        let through_hash = match last_hash_of(gone.last()) {
            Some(h) => h,
            None => {
                self.fail("cannot read the last event of a segment to retire".into());
                return;
            }
        };
        let mut ev = Event::new(Kind::Retention, now_ms());
        ev.segments = gone
            .iter()
            .filter_map(|s| s.path.file_name()?.to_str().map(str::to_string))
            .collect();
        ev.through_seq = Some(through);
        ev.through_hash = Some(through_hash);
        // The removal is recorded (durably) before any file goes.
        self.commit(vec![(Box::new(ev), None)]);
        if self.failed.is_some() {
            return;
        }
        for s in &gone {
            if let Err(e) = std::fs::remove_file(&s.path) {
                self.fail(format!("cannot remove `{}`: {e}", s.path.display()));
                return;
            }
        }
        if let Err(e) = sync_dir(&self.opts.dir) {
            self.fail(format!("cannot sync the audit directory: {e}"));
        }
    }
}

fn last_hash_of(seg: Option<&Segment>) -> Option<String> {
    let data = segment::read_file(&seg?.path).ok()?;
    let (ls, _) = segment::lines(&data);
    let (_, line) = ls.last()?;
    crate::event::open_line(line).ok().map(|(_, h)| hex(&h))
}
