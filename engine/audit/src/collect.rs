//! Collection: pulling a sidecar's audit feed
//! (`GET {control}/control/v1/audit?after=SEQ`, framed as `meshgov-wire`
//! says) into a local store, one
//! directory per sidecar, laid out like the sidecar's own (segments and
//! `checkpoints.ndjson`), so `meshgov audit verify` checks it the same way.
//!
//! Each pull resumes after the last sequence the store holds. Every event is
//! checked as it arrives (its hash, its sequence, its link to the one
//! before) and every checkpoint against the trusted key and the events it
//! covers; the first bad line stops the pull, and nothing from it on is
//! stored. What was stored is synced before the pull returns.

use crate::checkpoint::Checkpoint;
use crate::event::{Hash, Head, hex, open_line};
use crate::segment::{CHECKPOINTS, OpenError, open_append, recover, segment_name};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshgov_bundle::PublicKey;
use meshgov_wire::{AuditFeedQuery, FeedLine, MAX_FEED_LINE_BYTES};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Segments of the store rotate past this size.
const STORE_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Why a pull stopped.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("`{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot fetch `{url}`: {reason}")]
    Http { url: String, reason: String },
    #[error("the feed broke the chain at sequence {seq}: {reason}; nothing from it on was stored")]
    Chain { seq: u64, reason: String },
}

/// What one pull brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    pub events: u64,
    pub checkpoints: u64,
    /// The store's last sequence after the pull.
    pub head_seq: u64,
}

/// A local, verified copy of one sidecar's audit log.
pub struct Collector {
    dir: PathBuf,
    key: PublicKey,
    bearer: Option<String>,
    head: Head,
    segment: File,
    segment_size: u64,
    checkpoints: File,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Collector {
    /// Opens (creating, or repairing a torn tail of) the store in `dir`;
    /// checkpoints must be signed by `key`.
    pub fn open(dir: &Path, key: PublicKey) -> Result<Collector, CollectError> {
        let rec = recover(dir)?;
        let io = |source| CollectError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let (segment, segment_size) = match rec.segments.last() {
            Some(s) => (
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&s.path)
                    .map_err(io)?,
                rec.last_len,
            ),
            None => (
                open_append(dir, &segment_name(rec.head.seq + 1)).map_err(io)?,
                0,
            ),
        };
        let checkpoints = open_append(dir, CHECKPOINTS).map_err(io)?;
        Ok(Collector {
            dir: dir.to_path_buf(),
            key,
            bearer: None,
            head: rec.head,
            segment,
            segment_size,
            checkpoints,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Sends `Authorization: Bearer <token>` (the control port's caller check).
    pub fn with_bearer(mut self, token: impl Into<String>) -> Collector {
        self.bearer = Some(token.into());
        self
    }

    /// The last sequence the store holds.
    pub fn head_seq(&self) -> u64 {
        self.head.seq
    }

    /// Pulls everything after the store's head from the sidecar whose
    /// control port is at `base_url` (`http://host:port`).
    pub async fn pull(&mut self, base_url: &str) -> Result<Pulled, CollectError> {
        let url = format!(
            "{}{}?{}",
            base_url.trim_end_matches('/'),
            meshgov_wire::path::CONTROL_AUDIT,
            AuditFeedQuery {
                after: self.head.seq
            }
            .to_query()
        );
        let http_err = |reason: String| CollectError::Http {
            url: url.clone(),
            reason,
        };
        let mut req = http::Request::get(&url);
        if let Some(t) = &self.bearer {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| http_err(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| http_err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(http_err(format!("status {}", resp.status())));
        }
        let mut body = resp.into_body();
        let mut pending: Vec<u8> = Vec::new();
        let mut hashes: HashMap<u64, Hash> = HashMap::new();
        let mut pulled = Pulled {
            events: 0,
            checkpoints: 0,
            head_seq: self.head.seq,
        };
        let mut outcome = Ok(());
        'read: loop {
            let frame = match body.frame().await {
                None => break,
                Some(Ok(f)) => f,
                Some(Err(e)) => {
                    outcome = Err(http_err(format!("the stream broke: {e}")));
                    break;
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            let mut start = 0;
            while let Some(rel) = pending
                .get(start..)
                .and_then(|p| p.iter().position(|&b| b == b'\n'))
            {
                let line = pending.get(start..start + rel).unwrap_or_default().to_vec();
                start += rel + 1;
                if let Err(e) = self.accept(&line, &mut hashes, &mut pulled) {
                    outcome = Err(e);
                    break 'read;
                }
            }
            pending.drain(..start);
            if pending.len() > MAX_FEED_LINE_BYTES {
                outcome = Err(CollectError::Chain {
                    seq: self.head.seq + 1,
                    reason: "a line longer than 1 MiB".into(),
                });
                break;
            }
        }
        if outcome.is_ok() && !pending.is_empty() {
            outcome = Err(http_err("the stream ended inside a line".into()));
        }
        self.sync()?;
        pulled.head_seq = self.head.seq;
        outcome.map(|()| pulled)
    }

    /// Checks and stores one line of the feed.
    fn accept(
        &mut self,
        line: &[u8],
        hashes: &mut HashMap<u64, Hash>,
        pulled: &mut Pulled,
    ) -> Result<(), CollectError> {
        let want = self.head.seq + 1;
        if let FeedLine::Checkpoint(line) = FeedLine::of(line) {
            let c = Checkpoint::parse(line).ok_or_else(|| CollectError::Chain {
                seq: want,
                reason: "a line that is neither an event nor a checkpoint".into(),
            })?;
            if !c.verifies(&self.key) {
                return Err(CollectError::Chain {
                    seq: c.seq,
                    reason: format!("the checkpoint is not signed by {}", self.key),
                });
            }
            if hashes.get(&c.seq).copied() != c.head_hash() {
                return Err(CollectError::Chain {
                    seq: c.seq,
                    reason: "the checkpoint does not match the event it covers".into(),
                });
            }
            let mut l = line.to_vec();
            l.push(b'\n');
            self.checkpoints
                .write_all(&l)
                .map_err(|source| CollectError::Io {
                    path: self.dir.join(CHECKPOINTS),
                    source,
                })?;
            pulled.checkpoints += 1;
            return Ok(());
        }
        let (ev, hash) = open_line(line).map_err(|e| CollectError::Chain {
            seq: want,
            reason: e.to_string(),
        })?;
        let linked = ev.seq == want && ev.prev == hex(&self.head.hash);
        // A new store may start after events the sidecar already retired.
        let fresh_store = self.head.seq == 0 && ev.seq > 1;
        if !(linked || fresh_store) {
            return Err(CollectError::Chain {
                seq: want,
                reason: format!(
                    "expected event {want} linking to {}, got event {}",
                    hex(&self.head.hash),
                    ev.seq
                ),
            });
        }
        if self.segment_size >= STORE_SEGMENT_BYTES {
            self.sync()?;
            self.segment = open_append(&self.dir, &segment_name(ev.seq)).map_err(|source| {
                CollectError::Io {
                    path: self.dir.clone(),
                    source,
                }
            })?;
            self.segment_size = 0;
        }
        let mut l = Vec::with_capacity(line.len() + 1);
        l.extend_from_slice(line);
        l.push(b'\n');
        self.segment
            .write_all(&l)
            .map_err(|source| CollectError::Io {
                path: self.dir.clone(),
                source,
            })?;
        self.segment_size += l.len() as u64;
        self.head = Head { seq: ev.seq, hash };
        hashes.insert(ev.seq, hash);
        pulled.events += 1;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), CollectError> {
        self.segment
            .sync_data()
            .and_then(|()| self.checkpoints.sync_data())
            .map_err(|source| CollectError::Io {
                path: self.dir.clone(),
                source,
            })
    }
}
