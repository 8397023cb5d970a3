//! Where a port's columnar data comes from: Parquet files on the local
//! file system or in S3-compatible object storage, read as the port's
//! declared schema, in a session whose memory is bounded.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::catalog::empty::EmptyTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, RetryConfig};
use std::sync::Arc;
use url::Url;

/// Rows per record batch a scan yields (and a record port is batched by).
pub const BATCH_ROWS: usize = 4096;

/// A session for one query, whose operators may hold at most
/// `memory_limit` bytes between them; one that needs more fails the query
/// rather than grow the process.
pub fn session(memory_limit: usize, store: Option<&Bucket>) -> Result<SessionContext> {
    let ctx = session_with(memory_limit, query_config())?;
    if let Some(bucket) = store {
        ctx.register_object_store(&bucket.url, Arc::clone(&bucket.store));
    }
    Ok(ctx)
}

/// A session with `config` (see [`query_config`]) whose operators may hold
/// at most `memory_limit` bytes between them.
pub fn session_with(memory_limit: usize, config: SessionConfig) -> Result<SessionContext> {
    Ok(SessionContext::new_with_config_rt(
        config,
        runtime_with(memory_limit)?,
    ))
}

/// A runtime whose operators may hold at most `memory_limit` bytes between
/// them.
pub fn runtime_with(memory_limit: usize) -> Result<Arc<RuntimeEnv>> {
    RuntimeEnvBuilder::new()
        .with_memory_limit(memory_limit, 1.0)
        .build_arc()
}

/// How every query over a port's data is run: batches of [`BATCH_ROWS`],
/// one partition, strings as the table types them, and Parquet filters
/// evaluated while decoding.
pub fn query_config() -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_batch_size(BATCH_ROWS)
        .with_target_partitions(1);
    // Read strings as the table says (`Utf8`), not as views.
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    // Row filters on raw values are evaluated while decoding, and row
    // groups and pages are pruned by their statistics.
    config.options_mut().execution.parquet.pushdown_filters = true;
    config
}

/// A bucket of S3-compatible object storage.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// `s3://<bucket>`.
    pub url: Url,
    pub store: Arc<dyn ObjectStore>,
}

/// Where an S3-compatible bucket is and how to reach it. Without a key
/// here, credentials come from the environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or a web identity or
/// instance role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketConfig {
    pub bucket: String,
    pub region: String,
    /// A non-AWS endpoint (`http://127.0.0.1:9000`); `None` for AWS.
    pub endpoint: Option<String>,
    /// Allow a plain-HTTP endpoint.
    pub allow_http: bool,
    /// A static key: its id and secret.
    pub key: Option<(String, Secret)>,
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Bucket {
    /// Connects lazily: nothing is sent until the first listing or read.
    pub fn new(c: &BucketConfig) -> Result<Bucket> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&c.bucket)
            .with_region(&c.region)
            .with_allow_http(c.allow_http)
            // A store that does not answer fails the read in seconds, not
            // after object_store's default three minutes of retries.
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(10),
                ..RetryConfig::default()
            });
        if let Some((id, secret)) = &c.key {
            b = b.with_access_key_id(id).with_secret_access_key(&secret.0);
        }
        if let Some(endpoint) = &c.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        let store = b
            .build()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let url = Url::parse(&format!("s3://{}", c.bucket))
            .map_err(|e| DataFusionError::Configuration(format!("bucket `{}`: {e}", c.bucket)))?;
        Ok(Bucket {
            url,
            store: Arc::new(store),
        })
    }

    /// Every object under `prefix` (a "directory", without a trailing
    /// `/`): its key relative to the prefix, and its location as a URL
    /// [`parquet_table`] reads.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let base = ObjectPath::from(prefix);
        let mut out = Vec::new();
        let mut listing = self.store.list(Some(&base));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| DataFusionError::External(Box::new(e)))?;
            let key = meta.location.as_ref();
            let rel = key
                .strip_prefix(base.as_ref())
                .unwrap_or(key)
                .trim_start_matches('/')
                .to_string();
            out.push((
                rel,
                format!("{}/{key}", self.url.as_str().trim_end_matches('/')),
            ));
        }
        Ok(out)
    }
}

/// A table over these Parquet files (absolute paths, or `s3://` URLs of a
/// bucket the session knows) with the port's `schema`: columns the files
/// hold beyond it are never read, and a declared column a file lacks is
/// null. No files is an empty table.
pub fn parquet_table(files: &[String], schema: SchemaRef) -> Result<Arc<dyn TableProvider>> {
    if files.is_empty() {
        return Ok(Arc::new(EmptyTable::new(schema)));
    }
    let urls = files
        .iter()
        .map(ListingTableUrl::parse)
        .collect::<Result<Vec<_>>>()?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    Ok(Arc::new(ListingTable::try_new(config)?))
}
