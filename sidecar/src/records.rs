//! `GET /v1/ports/{port}/records`: the steps of a read, in order:
//!
//! 1. **authenticate** the bearer token (401);
//! 2. **parse** the request: port, window, limit, format (400);
//! 3. **load** the bundle state once (503 if none or expired);
//! 4. **enforce**: ask the bundle's enforcement core for the compiled read
//!    (one Cedar `read`, one `reveal` per classified field, row filters and
//!    the per-record program with keys and plugins bound in), cached per
//!    bundle by consumer, purpose and port (404 unknown port);
//! 5. **authorize** (403);
//! 6. **stream**: open the upstream (502). Whole records as NDJSON or CSV
//!    are shaped record by record; a plan that calls plugins shapes
//!    batches of up to `PLUGIN_BATCH` records, one sandboxed call per
//!    plugin per batch, and answers only once the first batch went through
//!    (500 `plugin_failed` if a plugin failed; a later failure aborts the
//!    body). A port kept as Parquet, and any read that asks for a
//!    projection, filters, an order, a page, or an Arrow or Parquet answer,
//!    goes through the columnar plane instead ([`crate::scan`]), under the
//!    same rules.
//!
//! Every answer except the `/healthz` and `/readyz` probes is audited: the
//! steps fill in one decision event as they learn who asks, for what, and
//! what was decided; [`crate::data_port::handle`] makes it durable before the response (and so
//! any body byte) leaves. A stream's completion event (records and bytes
//! actually sent) follows when it ends or breaks. If the audit log cannot
//! take the event, the answer is a 503 refusal instead.
//!
//! A plugin that fails on a read's first batch turns the read into a 500
//! refusal, audited like any other; one that fails later aborts the body,
//! and the completion event records how far it got. Aggregates have their
//! own steps in [`crate::aggregate`].

use crate::app::App;
use crate::body::{Body, ChunkSender, Metered};
use crate::clock;
use crate::error::ApiError;
use crate::request::{self, Format};
use crate::respond::respond;
use crate::scan::Scan;
use crate::shape::Shaper;
use crate::upstream::{Item, Opened, RecordReader, Window, record_time};
use crate::write_stall::Stalled;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use meshgov_anonymize::{Outcome, PluginFailure};
use meshgov_audit::Event;
use meshgov_core::decision::{Asker, DecisionError};
use meshgov_core::enforce::ReadError;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

/// Responses are flushed to the client in chunks of about this size.
const FLUSH_BYTES: usize = 128 * 1024;
/// The first response buffer's capacity.
const FIRST_BUFFER: usize = 16 * 1024;
/// Chunks in flight between the shaping task and the connection.
const CHANNEL_CHUNKS: usize = 4;
/// Records per plugin batch: one sandbox call per plugin per batch.
const PLUGIN_BATCH: usize = 1024;

pub(crate) async fn records<B>(
    app: &Arc<App>,
    req: &Request<B>,
    port: &str,
    rid: &str,
    ev: &mut Event,
) -> Result<Response<Body>, ApiError> {
    ev.action = Some("read".into());
    ev.port = Some(port.to_string());
    // 1. authenticate
    let who = app.authenticate(req.headers(), ev).await?;
    // 2. parse
    let q = request::parse_records_query(req.uri().query(), app.limits.max_limit)
        .map_err(ApiError::bad_request)?;
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = request::format_from_accept(accept).map_err(ApiError::not_acceptable)?;
    // 3. load the bundle once; this Arc is the request's policy for its life.
    let now = clock::now_unix();
    let bundle = app.bundle_for_request(now, ev)?;
    let port_info = bundle
        .view()
        .info
        .port(port)
        .ok_or_else(|| ApiError::unknown_port(port))?;
    let window = Window {
        from: q.from,
        to: q.to,
    };
    let time_field = port_info.time_field.clone();
    if (q.from.is_some() || q.to.is_some()) && time_field.is_none() {
        return Err(ApiError::bad_request(format!(
            "port `{port}` has no time field, so `from` and `to` cannot be used"
        )));
    }
    // 4. plan
    let asker = Asker {
        principal: &who.principal,
        purpose: &who.purpose,
        now_unix: now,
    };
    let read = bundle.enforcer.read(port, asker).map_err(|e| match e {
        ReadError::Plan(DecisionError::UnknownPort(_)) => ApiError::unknown_port(port),
        // A principal or purpose the policy engine cannot express is a denial.
        ReadError::Plan(_) => ApiError::forbidden(),
        // The enforcer proved at load that every rule compiles; refuse if
        // one does not all the same (fail closed).
        ReadError::Program(e) => {
            tracing::error!("cannot build the record program: {e}");
            ApiError::cannot_anonymize(
                "the policy bundle holds a rule this sidecar cannot apply; nothing was served",
            )
        }
    })?;
    // 5. authorize
    ev.policies = read.access().policies.clone();
    let program = match &read.program {
        Some(program) if read.access().allowed => Arc::clone(program),
        _ => {
            tracing::debug!(purpose = who.purpose.as_str(), "denied by policy");
            return Err(ApiError::forbidden());
        }
    };
    ev.transforms = read.labels();
    ev.format = Some(format.name().into());
    // 6. stream: a Parquet port through the columnar plane, records
    // through the record program.
    let opened = app
        .open_port(
            port,
            &port_info.fields,
            window,
            "the product's upstream could not be read",
        )
        .await?;
    let completion = crate::scan::completion_event(rid, ev.consumer.clone(), port);
    let reader = match opened {
        // Whole records as NDJSON or CSV: the record program, record by
        // record.
        Opened::Records(reader)
            if !q.shapes_the_answer() && matches!(format, Format::Ndjson | Format::Csv) =>
        {
            reader
        }
        // Anything more: the columnar plane.
        opened => {
            let rules = read.rules.clone().ok_or_else(ApiError::forbidden)?;
            let query = crate::scan::consumer_query(&q, port).map_err(ApiError::bad_request)?;
            ev.projection = query.fields.clone().unwrap_or_default();
            if !query.filter.is_empty() {
                ev.filter = Some(meshgov_columnar::query::filter_shape(&query.filter));
            }
            let next = crate::scan::next_cursor(&q, port, query.offset);
            let scan = Scan {
                source: opened.into(),
                port: port_info.clone(),
                rules,
                window,
                query,
                format,
            };
            let (body, ct) = scan.answer(app, port, completion, Stalled::of(req)).await?;
            let mut resp = with_revision(
                respond(StatusCode::OK, ct, rid, Body::Metered(body)),
                &bundle.meta.revision.to_string(),
            );
            if let Some(v) = next.and_then(|c| HeaderValue::from_str(&c).ok()) {
                resp.headers_mut().insert("x-meshgov-next-cursor", v);
            }
            return Ok(resp);
        }
    };
    let shaper = Shaper::new(program, format == Format::Csv);
    let stalled = Stalled::of(req);
    let (tx, rx) = ChunkSender::channel(
        CHANNEL_CHUNKS,
        Duration::from_millis(app.limits.write_stall_timeout_ms),
        stalled.clone(),
    );
    // A plugin read answers only once the first batch went through the
    // plugins, so that a plugin failure is a clean refusal, not a body cut
    // short.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let uses_plugins = shaper.uses_plugins();
    let job = StreamJob {
        app: Arc::clone(app),
        shaper,
        reader,
        window,
        time_field: time_field.filter(|_| q.from.is_some() || q.to.is_some()),
        limit: q.limit,
        port: app.metrics.port(Some(port)),
        first_batch: Some(first_tx),
    };
    tokio::spawn(job.run(tx).in_current_span());
    // (The job has logged and counted a failure.)
    if uses_plugins && let Ok(Err(failure)) = first_rx.await {
        return Err(ApiError::plugin_failed(&failure));
    }
    let ct = match format {
        Format::Csv => "text/csv; charset=utf-8",
        _ => "application/x-ndjson",
    };
    let body = Metered::new(
        rx,
        stalled,
        Arc::clone(&app.audit),
        completion,
        crate::body::Meter::start(&app.metrics, &app.cut_at_shutdown, port),
    );
    Ok(with_revision(
        respond(StatusCode::OK, ct, rid, Body::Metered(body)),
        &bundle.meta.revision.to_string(),
    ))
}

/// Names the bundle revision that decided the answer.
fn with_revision(mut resp: Response<Body>, revision: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(revision) {
        resp.headers_mut().insert("x-meshgov-bundle-revision", v);
    }
    resp
}

struct StreamJob {
    app: Arc<App>,
    shaper: Shaper,
    reader: RecordReader,
    window: Window,
    time_field: Option<String>,
    limit: Option<u64>,
    port: crate::metrics::PortIx,
    /// Told how the first plugin batch went (plugin reads only).
    first_batch: Option<tokio::sync::oneshot::Sender<Result<(), PluginFailure>>>,
}

/// Upstream lines kept for one plugin batch.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Batch {
    fn push(&mut self, line: &[u8]) {
        self.bytes.extend_from_slice(line);
        self.ends.push(self.bytes.len());
    }

    fn lines(&self) -> Vec<&[u8]> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let line = self.bytes.get(start..end).unwrap_or_default();
                start = end;
                line
            })
            .collect()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// What one batch did.
#[derive(Default)]
struct Tally {
    out: u64,
    skipped: u64,
    rejected: u64,
}

impl StreamJob {
    /// Hands `buf` (holding `records` records) to the connection.
    async fn send(&self, tx: &ChunkSender, buf: &mut Vec<u8>, records: &mut u64) -> bool {
        let chunk = Bytes::from(std::mem::replace(
            buf,
            Vec::with_capacity(FLUSH_BYTES + 4096),
        ));
        tx.send(chunk, std::mem::take(records)).await
    }

    /// Shapes the batch through the plugins into `buf`. On a plugin
    /// failure nothing is written: the first batch's failure becomes the
    /// response, a later one aborts the body.
    fn flush_batch(
        &mut self,
        batch: &mut Batch,
        buf: &mut Vec<u8>,
        tally: &mut Tally,
        pending: &mut u64,
    ) -> Result<(), PluginFailure> {
        if batch.ends.is_empty() {
            return Ok(());
        }
        let mut outcomes = Vec::with_capacity(batch.ends.len());
        let done = self.shaper.write_batch(&batch.lines(), buf, &mut outcomes);
        batch.clear();
        if let Some(first) = self.first_batch.take() {
            let _ = first.send(done.clone());
        }
        if let Err(failure) = &done {
            self.app.metrics.plugin_failure(failure.kind);
            tracing::error!(plugin = %failure.plugin, kind = failure.kind.label(), "{failure}");
        }
        done?;
        for o in outcomes {
            match o {
                Ok(Outcome::Emitted) => {
                    tally.out += 1;
                    *pending += 1;
                }
                Ok(Outcome::Rejected) => tally.rejected += 1,
                Ok(Outcome::Filtered) => {}
                Err(_) => tally.skipped += 1,
            }
        }
        Ok(())
    }

    async fn run(mut self, tx: ChunkSender) {
        // Small to begin with: a small read's whole answer fits, and a
        // large one grows it once before its first flush.
        let mut buf = Vec::with_capacity(FIRST_BUFFER);
        self.shaper.write_preamble(&mut buf);
        let (mut out, mut skipped, mut failed, mut gone) = (0u64, 0u64, false, false);
        let batched = self.shaper.uses_plugins();
        let (mut batch, mut tally) = (Batch::default(), Tally::default());
        let mut pending = 0u64;
        loop {
            if self
                .limit
                .is_some_and(|l| out + tally.out + batch.ends.len() as u64 >= l)
            {
                // Enough lines for the limit: shape them, then read on only
                // if filters or validators dropped some.
                if batch.ends.is_empty() {
                    break;
                }
                if self
                    .flush_batch(&mut batch, &mut buf, &mut tally, &mut pending)
                    .is_err()
                {
                    failed = true;
                    break;
                }
                continue;
            }
            match self.reader.next().await {
                Ok(None) => {
                    if self
                        .flush_batch(&mut batch, &mut buf, &mut tally, &mut pending)
                        .is_err()
                    {
                        failed = true;
                    }
                    break;
                }
                Ok(Some(Item::Malformed)) => skipped += 1,
                Ok(Some(Item::Record(line))) => {
                    if let Some(tf) = &self.time_field {
                        match record_time(line, tf) {
                            Some(t) if self.window.contains(t) => {}
                            Some(_) => continue,
                            None => {
                                skipped += 1;
                                continue;
                            }
                        }
                    }
                    if batched {
                        batch.push(line);
                        if batch.ends.len() >= PLUGIN_BATCH
                            && self
                                .flush_batch(&mut batch, &mut buf, &mut tally, &mut pending)
                                .is_err()
                        {
                            failed = true;
                            break;
                        }
                        continue;
                    }
                    match self.shaper.write(line, &mut buf) {
                        Ok(Outcome::Emitted) => {
                            out += 1;
                            pending += 1;
                        }
                        Ok(Outcome::Filtered | Outcome::Rejected) => {}
                        Err(_) => skipped += 1,
                    }
                }
                Err(e) => {
                    self.app.metrics.upstream_error(self.port, true);
                    tracing::error!("upstream failed mid-stream: {e}");
                    failed = true;
                    break;
                }
            }
            if buf.len() >= FLUSH_BYTES && !self.send(&tx, &mut buf, &mut pending).await {
                gone = true;
                break;
            }
        }
        out += tally.out;
        skipped += tally.skipped;
        if let Some(first) = self.first_batch.take() {
            // Nothing went through the plugins (no records, or the upstream
            // failed first): the response goes ahead.
            let _ = first.send(Ok(()));
        }
        if !gone && !buf.is_empty() && !self.send(&tx, &mut buf, &mut pending).await {
            gone = true;
        }
        if failed && !gone {
            tx.abort("upstream failed").await;
        }
        self.app.metrics.malformed_skipped.add(skipped);
        self.app.metrics.nonconforming_withheld.add(tally.rejected);
        // The completion event is the body's: it counts what the
        // connection actually took.
        tracing::debug!(
            records_out = out,
            malformed_skipped = skipped,
            nonconforming_withheld = tally.rejected,
            failed,
            client_gone = gone,
            "read finished"
        );
    }
}
