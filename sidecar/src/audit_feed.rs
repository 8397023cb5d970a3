//! The audit stream for collection: `GET /control/v1/audit?after=SEQ`
//! (framed as `meshgov-wire`'s audit feed says).
//!
//! The answer is NDJSON: the stored lines of every durable event with a
//! sequence above `SEQ`, in order, then the signed checkpoints in that range,
//! byte for byte as on disk, so a collector's copy verifies exactly like the
//! original. A request with `after=SEQ` also tells the log that the caller
//! holds everything up to `SEQ`; with `audit.retention = "after_collection"`
//! that lets covered segments go.
//!
//! INVARIANT: mount this only behind the control port's caller check (the
//! engine's token or mTLS): the acknowledgement it implies allows deletion.

use crate::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use meshgov_audit::{AuditHead, AuditLog};
use meshgov_wire::{
    AUDIT_HEAD_HEADER, AuditFeedQuery, AuditStatus, ErrorBody, NDJSON_CONTENT_TYPE,
};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Lines are sent in chunks of about this size.
const CHUNK: usize = 64 * 1024;

/// What the control status publishes about the audit log.
pub fn status(log: &AuditLog) -> AuditStatus {
    let AuditHead {
        seq,
        hash,
        checkpoint_seq,
        public_key,
        collected_seq,
        failed,
    } = log.head();
    AuditStatus {
        head_seq: seq,
        head_hash: hash,
        checkpoint_seq,
        public_key,
        collected_seq,
        failed,
    }
}

/// Answers `GET /control/v1/audit?{query}` from `log`.
pub fn respond(log: &Arc<AuditLog>, query: Option<&str>) -> Response<Body> {
    let after = match AuditFeedQuery::parse(query) {
        Ok(q) => q.after,
        Err(e) => {
            let body = ErrorBody::new("bad_request", e.to_string());
            let mut r = Response::new(Body::full(serde_json::to_vec(&body).unwrap_or_default()));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return r;
        }
    };
    let up_to = log.durable_seq();
    log.collected(after);
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let dir = log.dir().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(CHUNK + 4096);
        let flush = |buf: &mut Vec<u8>| {
            let chunk = Bytes::from(std::mem::replace(buf, Vec::with_capacity(CHUNK + 4096)));
            tx.blocking_send(Ok(chunk)).is_ok()
        };
        let res = meshgov_audit::feed::read_after(&dir, after, up_to, |line| {
            buf.extend_from_slice(line);
            buf.len() < CHUNK || flush(&mut buf)
        });
        match res {
            Ok(true) if !buf.is_empty() => {
                flush(&mut buf);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!("the audit feed cannot read the log: {e}");
                // Aborts the chunked body: the collector sees a broken
                // stream, not a complete-looking one.
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    let mut r = Response::new(Body::Stream(rx));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(NDJSON_CONTENT_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&up_to.to_string()) {
        h.insert(AUDIT_HEAD_HEADER, v);
    }
    r
}
