//! Reads of Parquet ports, through the columnar plane (`meshgov-columnar`).
//!
//! The read's compiled rules become a DataFusion plan over the port's
//! Parquet files ([`meshgov_columnar::view::consumer_view`]): the window and
//! the row predicate on raw values, validators, then every field with its
//! treatment. Batches are encoded in the answer's format and streamed
//! through the same metered body as record reads.
//!
//! The answer starts only once the plan ran and its first batch came
//! through: a plan that cannot be built, a failing transform or plugin,
//! or a file that cannot be read is a clean, audited refusal, never a
//! fallback to raw data. A failure after that aborts the body.

use crate::app::App;
use crate::body::{ChunkSender, Metered};
use crate::error::ApiError;
use crate::request::{Format, RecordsQuery};
use crate::upstream::ParquetFiles;
use bytes::Bytes;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt as _;
use meshgov_anonymize::PluginFailure;
use meshgov_audit::{Event, Kind};
use meshgov_columnar::answer::Encoder;
use meshgov_columnar::datafusion;
use meshgov_columnar::query::{
    ConsumerQuery, QueryApplyError, QueryError, parse_fields, parse_filter, parse_order_by,
};
use meshgov_columnar::schema::port_schema;
use meshgov_columnar::source::{parquet_table, session};
use meshgov_columnar::view::consumer_view;
use meshgov_core::descriptor::PortInfo;
use meshgov_core::records::Rules;
use meshgov_core::window::Window;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

/// Encoded chunks in flight between the query and the connection.
const CHANNEL_CHUNKS: usize = 4;

/// One read of a Parquet port.
pub(crate) struct Scan {
    pub files: ParquetFiles,
    pub port: PortInfo,
    pub rules: Arc<Rules>,
    pub window: Window,
    /// What the consumer adds: projection, filters, order, page.
    pub query: ConsumerQuery,
    pub format: Format,
}

/// The consumer's additions to their view, from the request; a 400
/// reason if they do not parse. The page starts at `offset`, or where
/// `cursor` says the previous page ended.
pub(crate) fn consumer_query(q: &RecordsQuery, port: &str) -> Result<ConsumerQuery, String> {
    let offset = match (&q.cursor, q.offset) {
        (Some(_), Some(_)) => return Err("give `cursor` or `offset`, not both".into()),
        (Some(cursor), None) => offset_of_cursor(cursor, q, port)?,
        (None, offset) => offset.unwrap_or(0),
    };
    let err = |e: QueryError| e.0;
    Ok(ConsumerQuery {
        fields: q
            .fields
            .as_deref()
            .map(parse_fields)
            .transpose()
            .map_err(err)?,
        filter: q
            .filter
            .as_deref()
            .map(parse_filter)
            .transpose()
            .map_err(err)?
            .unwrap_or_default(),
        order_by: q
            .order_by
            .as_deref()
            .map(parse_order_by)
            .transpose()
            .map_err(err)?
            .unwrap_or_default(),
        offset,
        limit: q.limit,
    })
}

/// What a cursor is bound to: the port and everything that decides which
/// rows a page holds, so that a cursor cannot page through another query.
fn query_digest(q: &RecordsQuery, port: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        Some(port),
        q.fields.as_deref(),
        q.filter.as_deref(),
        q.order_by.as_deref(),
    ] {
        h.update(part.unwrap_or("\u{0}").as_bytes());
        h.update([0xff]);
    }
    for t in [q.from, q.to] {
        h.update(t.map_or(0, |t| t.unix_timestamp()).to_be_bytes());
    }
    h.update(q.limit.unwrap_or(0).to_be_bytes());
    hex::encode(h.finalize().get(..8).unwrap_or_default())
}

/// The cursor of the page after the one starting at `offset`.
pub(crate) fn next_cursor(q: &RecordsQuery, port: &str, offset: u64) -> Option<String> {
    use base64::Engine as _;
    let next = offset.checked_add(q.limit?)?;
    Some(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{next}.{}", query_digest(q, port))),
    )
}

fn offset_of_cursor(cursor: &str, q: &RecordsQuery, port: &str) -> Result<u64, String> {
    use base64::Engine as _;
    let bad =
        || "`cursor` is not one this port gave for this query; start again without it".to_string();
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let (offset, digest) = text.split_once('.').ok_or_else(bad)?;
    if digest != query_digest(q, port) {
        return Err(bad());
    }
    offset.parse().map_err(|_| bad())
}

/// Why a query failed, as the consumer is told.
fn refusal(app: &App, e: &DataFusionError) -> ApiError {
    let root = e.find_root();
    if let DataFusionError::External(inner) = root
        && let Some(failure) = inner.downcast_ref::<PluginFailure>()
    {
        app.metrics.plugin_failure(failure.kind);
        tracing::error!(plugin = %failure.plugin, kind = failure.kind.label(), "{failure}");
        return ApiError::plugin_failed(failure);
    }
    if matches!(
        root,
        DataFusionError::ParquetError(_)
            | DataFusionError::ObjectStore(_)
            | DataFusionError::IoError(_)
    ) {
        tracing::error!("the port's Parquet files could not be read: {e}");
        return ApiError::upstream("the product's upstream could not be read");
    }
    tracing::error!("columnar read failed: {e}");
    ApiError::plan_failed()
}

impl Scan {
    /// Plans and starts the read; answers with the metered body once the
    /// first batch is through.
    pub(crate) async fn answer(
        self,
        app: &Arc<App>,
        port_name: &str,
        completion: Event,
    ) -> Result<(Metered, &'static str), ApiError> {
        let mut stream = self.start(app).await?;
        let schema = stream.schema();
        let mut encoder = Encoder::new(self.format, &schema).map_err(|e| {
            tracing::error!("cannot encode the answer: {e}");
            ApiError::plan_failed()
        })?;
        // The first batch decides between an answer and a refusal.
        let first = match stream.next().await.transpose() {
            Ok(first) => first,
            Err(e) => return Err(refusal(app, &e)),
        };
        let mut head = Vec::new();
        let mut head_rows = 0u64;
        if let Some(batch) = &first {
            head = encoder.write(batch).map_err(|e| {
                tracing::error!("cannot encode the answer: {e}");
                ApiError::plan_failed()
            })?;
            head_rows = batch.num_rows() as u64;
        }
        let (tx, rx, stalled) = ChunkSender::channel(
            CHANNEL_CHUNKS,
            Duration::from_millis(app.limits.write_stall_timeout_ms),
        );
        let job = Stream {
            app: Arc::clone(app),
            stream,
            encoder,
            done: first.is_none(),
        };
        tokio::spawn(job.run(tx, head, head_rows).in_current_span());
        let body = Metered::new(
            rx,
            stalled,
            Arc::clone(&app.audit),
            completion,
            crate::body::Meter::start(&app.metrics, &app.cut_at_shutdown, port_name),
        );
        Ok((body, self.format.media_type()))
    }

    async fn start(&self, app: &App) -> Result<SendableRecordBatchStream, ApiError> {
        let fail = |e: DataFusionError| refusal(app, &e);
        let ctx =
            session(app.limits.query_memory_bytes, self.files.bucket.as_ref()).map_err(fail)?;
        let table = parquet_table(&self.files.files, port_schema(&self.port)).map_err(fail)?;
        let scan = ctx.read_table(table).map_err(fail)?;
        let view = consumer_view(scan, &self.port, &self.rules, &self.window).map_err(|e| {
            tracing::error!("cannot plan the consumer's view: {e}");
            ApiError::plan_failed()
        })?;
        let view = self.query.apply(view, &self.rules).map_err(|e| match e {
            QueryApplyError::Query(e) => ApiError::bad_request(e.0),
            QueryApplyError::DataFusion(e) => fail(e),
        })?;
        view.execute_stream().await.map_err(fail)
    }
}

/// The rest of a read, after its first batch.
struct Stream {
    app: Arc<App>,
    stream: SendableRecordBatchStream,
    encoder: Encoder,
    done: bool,
}

impl Stream {
    async fn run(mut self, tx: ChunkSender, head: Vec<u8>, head_rows: u64) {
        if !head.is_empty() && !tx.send(Bytes::from(head), head_rows).await {
            return;
        }
        while !self.done {
            match self.stream.next().await {
                None => self.done = true,
                Some(Ok(batch)) => match self.encoder.write(&batch) {
                    Ok(bytes) => {
                        if !tx.send(Bytes::from(bytes), batch.num_rows() as u64).await {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!("cannot encode the answer: {e}");
                        tx.abort("encoding failed").await;
                        return;
                    }
                },
                Some(Err(e)) => {
                    let _ = refusal(&self.app, &e);
                    tx.abort("the read failed").await;
                    return;
                }
            }
        }
        match self.encoder.finish() {
            Ok(tail) => {
                if !tail.is_empty() {
                    tx.send(Bytes::from(tail), 0).await;
                }
            }
            Err(e) => {
                tracing::error!("cannot finish the answer: {e}");
                tx.abort("encoding failed").await;
            }
        }
    }
}

/// A read's completion event, which its body fills in (records and bytes
/// sent, how it ended) and submits when the stream is over.
pub(crate) fn completion_event(rid: &str, consumer: Option<String>, port: &str) -> Event {
    let mut completion = Event::new(Kind::Completion, 0);
    completion.request_id = Some(rid.to_string());
    completion.consumer = consumer;
    completion.port = Some(port.to_string());
    completion
}
