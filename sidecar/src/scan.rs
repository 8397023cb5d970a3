//! Reads through the columnar plane (`meshgov-columnar`): every read of
//! a port kept as Parquet, and the reads of other ports that ask for more
//! than records (a projection, filters, an order, a page, or an Arrow or
//! Parquet answer).
//!
//! The read's compiled rules become a DataFusion plan over the port's
//! table ([`meshgov_columnar::view::consumer_view`]): the window and the
//! row predicate on raw values, validators, then every field with its
//! treatment. A Parquet port's table is its files; another port's table is
//! its records, turned into batches of the port's schema as they are read
//! ([`meshgov_columnar::rows`]). Batches are encoded in the answer's format
//! and streamed through the same metered body as record reads.
//!
//! The answer starts only once the plan ran and its first batch came
//! through: a plan that cannot be built, a failing transform or plugin,
//! or an upstream that cannot be read is a clean, audited refusal, never
//! a fallback to raw data. A failure after that aborts the body.

use crate::app::App;
use crate::body::{ChunkSender, Metered};
use crate::error::ApiError;
use crate::metrics::PortIx;
use crate::request::{Format, RecordsQuery};
use crate::upstream::{Item, Opened, ParquetFiles, RecordReader, UpstreamError};
use crate::write_stall::Stalled;
use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use meshgov_anonymize::PluginFailure;
use meshgov_audit::{Event, Kind};
use meshgov_columnar::answer::Encoder;
use meshgov_columnar::datafusion;
use meshgov_columnar::query::{
    ConsumerQuery, QueryApplyError, QueryError, parse_fields, parse_filter, parse_order_by,
};
use meshgov_columnar::rows::RowBatcher;
use meshgov_columnar::schema::port_schema;
use meshgov_columnar::source::{BATCH_ROWS, Bucket, parquet_table, session};
use meshgov_columnar::view::consumer_view;
use meshgov_core::descriptor::PortInfo;
use meshgov_core::records::Rules;
use meshgov_core::window::Window;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument as _;

/// Encoded chunks in flight between the query and the connection.
const CHANNEL_CHUNKS: usize = 4;

/// Where a scan's rows come from.
pub(crate) enum Source {
    /// The port's Parquet files in the window.
    Parquet(ParquetFiles),
    /// The port's records, read as batches of the port's schema.
    Records(RecordReader),
}

impl Source {
    /// A scan of the port's table (its declared fields), in a session of
    /// its own whose memory is bounded by `limits.query_memory_bytes`.
    pub(crate) fn scan(
        self,
        app: &Arc<App>,
        port_name: &str,
        port: &PortInfo,
    ) -> Result<DataFrame, DataFusionError> {
        let (table, bucket) = self.table(app, port_name, port)?;
        let ctx = session(app.limits.query_memory_bytes, bucket.as_ref())?;
        ctx.read_table(table)
    }

    /// The port's table (its declared fields), and the bucket a session
    /// must know to read it.
    pub(crate) fn table(
        self,
        app: &Arc<App>,
        port_name: &str,
        port: &PortInfo,
    ) -> Result<(Arc<dyn TableProvider>, Option<Bucket>), DataFusionError> {
        let schema = port_schema(port);
        Ok(match self {
            Source::Parquet(files) => (parquet_table(&files.files, schema)?, files.bucket),
            Source::Records(reader) => {
                let rows = Rows {
                    reader,
                    batcher: RowBatcher::new(Arc::clone(&schema)),
                    app: Arc::clone(app),
                    port: app.metrics.port(Some(port_name)),
                    malformed: 0,
                    done: false,
                };
                (rows.table(schema)?, None)
            }
        })
    }
}

impl From<Opened> for Source {
    fn from(opened: Opened) -> Source {
        match opened {
            Opened::Records(reader) => Source::Records(reader),
            Opened::Parquet(files) => Source::Parquet(files),
        }
    }
}

/// One read through the columnar plane.
pub(crate) struct Scan {
    pub source: Source,
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
pub(crate) fn refusal(app: &App, e: &DataFusionError) -> ApiError {
    let root = e.find_root();
    if let DataFusionError::External(inner) = root
        && let Some(failure) = inner.downcast_ref::<PluginFailure>()
    {
        app.metrics.plugin_failure(failure.kind);
        tracing::error!(plugin = %failure.plugin, kind = failure.kind.label(), "{failure}");
        return ApiError::plugin_failed(failure);
    }
    let upstream = match root {
        DataFusionError::External(inner) => inner.is::<UpstreamError>(),
        DataFusionError::ParquetError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::IoError(_) => true,
        _ => false,
    };
    if upstream {
        tracing::error!("the port's upstream could not be read: {e}");
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
        stalled: Stalled,
    ) -> Result<(Metered, &'static str), ApiError> {
        let format = self.format;
        let mut stream = self.start(app, port_name).await?;
        let schema = stream.schema();
        let mut encoder = Encoder::new(format, &schema).map_err(|e| {
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
        let (tx, rx) = ChunkSender::channel(
            CHANNEL_CHUNKS,
            Duration::from_millis(app.limits.write_stall_timeout_ms),
            stalled.clone(),
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
        Ok((body, format.media_type()))
    }

    async fn start(
        self,
        app: &Arc<App>,
        port_name: &str,
    ) -> Result<SendableRecordBatchStream, ApiError> {
        let fail = |e: DataFusionError| refusal(app, &e);
        let scan = self.source.scan(app, port_name, &self.port).map_err(fail)?;
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

/// A port's records as a stream of batches of its schema. Records that
/// do not fit the schema are skipped and counted as malformed, as lines
/// that are not records are.
struct Rows {
    reader: RecordReader,
    batcher: RowBatcher,
    app: Arc<App>,
    port: PortIx,
    malformed: u64,
    done: bool,
}

impl Rows {
    /// A table of one partition, which streams these records once.
    fn table(self, schema: SchemaRef) -> Result<Arc<dyn TableProvider>, DataFusionError> {
        let stream = futures::stream::unfold(self, |mut rows| async move {
            let batch = rows.next_batch().await?;
            Some((batch, rows))
        })
        .boxed();
        let partition = OnePass {
            schema: Arc::clone(&schema),
            stream: Mutex::new(Some(stream)),
        };
        Ok(Arc::new(StreamingTable::try_new(
            schema,
            vec![Arc::new(partition)],
        )?))
    }

    async fn next_batch(&mut self) -> Option<Result<RecordBatch, DataFusionError>> {
        while !self.done {
            match self.reader.next().await {
                Ok(Some(Item::Record(line))) => {
                    if self.batcher.push(line).is_err() {
                        self.malformed += 1;
                    } else if self.batcher.len() >= BATCH_ROWS {
                        break;
                    }
                }
                Ok(Some(Item::Malformed)) => self.malformed += 1,
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    self.app.metrics.upstream_error(self.port, true);
                    return Some(Err(DataFusionError::External(Box::new(e))));
                }
            }
        }
        if self.batcher.is_empty() {
            return None;
        }
        Some(self.batcher.finish().map_err(DataFusionError::from))
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        self.app.metrics.malformed_skipped.add(self.malformed);
    }
}

/// A partition that can be executed once: the stream of a read's records.
struct OnePass {
    schema: SchemaRef,
    stream: Mutex<Option<BoxStream<'static, Result<RecordBatch, DataFusionError>>>>,
}

impl std::fmt::Debug for OnePass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnePass").finish_non_exhaustive()
    }
}

impl PartitionStream for OnePass {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.stream.lock().ok().and_then(|mut s| s.take());
        let stream = taken.unwrap_or_else(|| {
            futures::stream::once(async {
                Err(DataFusionError::Internal(
                    "a read's records were asked for twice".into(),
                ))
            })
            .boxed()
        });
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        ))
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
