//! Sidecar configuration: one TOML file, then environment overrides.
//!
//! Every scalar key `a.b_c` can be overridden by `MESHGOV_SIDECAR_A_B_C`
//! (dots become `_`, upper case). Config is read once, through the
//! [`Strings`] trait, so tests feed it a map instead of the process
//! environment. A bad key is a [`ConfigError`] naming it; the binary exits
//! with code 64 (`EX_USAGE`).
//!
//! ```toml
//! mesh = "media-mesh"
//! descriptor = "products/user-profiles.yaml"
//! bundle_file = "state/bundle.dsse.json"   # loaded at start (optional)
//! state_dir = "state"                       # required: audit log, audit key
//! trusted_bundle_keys = ["ed25519:…"]       # governance keys (or PEM `PUBLIC KEY` text)
//!
//! [listen]
//! data = "127.0.0.1:8080"
//! control = "127.0.0.1:8081"               # the control port (bundle pushes, status)
//! metrics = "127.0.0.1:9464"               # Prometheus `GET /metrics`, unauthenticated (optional)
//! sql = "0.0.0.0:5432"                      # the PostgreSQL wire protocol (optional)
//! flight = "0.0.0.0:8815"                   # Arrow Flight SQL, gRPC (optional)
//!
//! [sql]                                     # TLS of both SQL ports (required with either)
//! tls_cert = "tls/sql.crt"                  # PEM chain; re-read when it changes
//! tls_key = "tls/sql.key"
//! # allow_plaintext = true                  # no TLS, on a loopback address only
//!
//! [metrics]
//! budget_series = 1000                      # consumer/purpose budget gauges kept; 0: none
//!
//! [engine]                                  # optional: register with `meshgov serve`
//! url = "http://127.0.0.1:7600"             # or `--engine URL`
//! instance_id = "user-profiles-0"           # default: `$HOSTNAME`, else product@control address
//! advertise_url = "http://10.0.0.7:8081"    # how the engine reaches the control port
//! poll_wait_seconds = 30                    # long-poll hold time
//!
//! [upstream]
//! kind = "dir"                              # or "http", or "s3"
//! path = "data/user-profiles"               # dir: one sub-directory per port (NDJSON, CSV or Parquet)
//! # url = "http://127.0.0.1:9000"          # http: GET {url}/{port}?from=&to=
//! # bucket = "media-lake"                   # s3: Parquet under <prefix>/<port>/
//! # prefix = "user-profiles"
//! # region = "eu-west-1"                    # default us-east-1
//! # endpoint = "https://s3.internal:9000"   # a non-AWS endpoint; credentials from AWS_* variables
//! # allow_http = false                      # true to use a plain-HTTP endpoint
//! # access_key_id = "…"                     # with secret_access_key (better from the
//! # secret_access_key = "…"                 #   environment); else the AWS chain
//!
//! [auth]
//! issuer = "https://idp.media.example"
//! audience = "meshgov"
//! groups_claim = "groups"
//! groups_space_separated = false            # a string groups claim is refused unless true
//! purpose_claim = "purpose"
//! leeway_seconds = 30
//! [[auth.keys]]
//! kid = "idp-2026"                          # optional; matched against the token's `kid`
//! alg = "EdDSA"                             # EdDSA | ES256 | RS256
//! pem_file = "keys/idp.pub.pem"             # or `pem`, or JWK components x / y / n / e
//!
//! [pseudonym_keys]                          # HMAC-SHA256 secret per key scope
//! user-identity = { file = "keys/user-identity.key" }
//! # artist-identity = { base64 = "…" }      # or inline, standard base64
//! # artist-identity = "keys/artist.key"    # a bare string is a file
//!
//! [privacy]
//! ledger = "embedded"                       # privacy budgets in `state_dir` (one replica)
//! # ledger = "postgres"                     # shared by several replicas:
//! # postgres_url = "postgresql://meshgov@db:5432/meshgov"
//!
//! [limits]
//! max_header_bytes = 16384
//! header_read_timeout_ms = 5000
//! write_stall_timeout_ms = 30000
//! body_read_timeout_ms = 30000              # a request body must arrive within this
//! max_bundle_bytes = 16777216               # a pushed or pulled bundle envelope (16 MiB)
//! upstream_stall_timeout_ms = 30000         # an HTTP upstream silent this long fails the read
//! max_line_bytes = 1048576
//! max_limit = 100000000
//! drain_timeout_ms = 10000
//! query_memory_bytes = 268435456            # what one columnar read or SQL query may hold
//! query_timeout_ms = 300000                 # the longest a SQL query may run
//! max_sql_connections = 100                 # per SQL port
//! sql_idle_timeout_ms = 600000              # a PostgreSQL connection idle this long is closed
//!
//! [audit]                                   # the log lives in <state_dir>/audit
//! segment_bytes = 67108864                  # rotate segments past this size
//! checkpoint_every = 10000                  # sign a checkpoint every N events …
//! checkpoint_interval_ms = 10000            # … or every T ms, if there are new events
//! retention = "keep"                        # or "after_collection"
//! ```

use base64::Engine as _;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The exit code for bad configuration (`EX_USAGE`).
pub const EXIT_BAD_CONFIG: i32 = 64;
/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "MESHGOV_SIDECAR_";

/// A source of override strings: the process environment, or a map in tests.
pub trait Strings {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct Env;

impl Strings for Env {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Strings for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).cloned()
    }
}

/// A key that is missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Where records come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamConfig {
    /// `<path>/<port>/` holds the port's NDJSON, CSV or Parquet files.
    Dir(PathBuf),
    /// `GET {url}/{port}?from=&to=` answers NDJSON.
    Http(String),
    /// `<prefix>/<port>/` in an S3-compatible bucket holds the port's
    /// Parquet files.
    S3 {
        bucket: meshgov_columnar::source::BucketConfig,
        prefix: String,
    },
}

/// Where a consumer-token verification key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Pem(String),
    PemFile(PathBuf),
    /// JWK-style base64url components: `x` (OKP), `x`+`y` (EC), `n`+`e` (RSA).
    Components(BTreeMap<String, String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConfig {
    pub kid: Option<String>,
    pub alg: String,
    pub source: KeySource,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerKeys {
    /// Keys written into the config (`[[auth.keys]]` or an issuer's `keys`).
    Static(Vec<KeyConfig>),
    /// A JWKS document on disk, read at start.
    JwksFile(PathBuf),
    /// From the identity provider, kept fresh (`discovery_url`, `jwks_url`).
    Remote(crate::jwks::Endpoint),
}

/// How an issuer's claims become a consumer: paths are dotted
/// (`realm_access.roles`) into nested objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// Every claim that holds groups; their groups are merged.
    pub groups_claims: Vec<String>,
    /// Removed from the start of each group (Keycloak's `/` for group paths).
    pub groups_strip_prefix: Option<String>,
    /// Read a string groups claim as a space-separated list (else refused).
    pub groups_space_separated: bool,
    pub purpose_claim: String,
    /// Take the purpose from the `scope` claim's one entry with this
    /// prefix (`purpose:campaign-analytics`), instead of `purpose_claim`.
    pub purpose_scope_prefix: Option<String>,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            groups_claims: vec!["groups".into()],
            groups_strip_prefix: None,
            groups_space_separated: false,
            purpose_claim: "purpose".into(),
            purpose_scope_prefix: None,
        }
    }
}

/// One trusted token issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    pub audience: String,
    /// Accepted algorithms: a subset of `EdDSA`, `ES256`, `RS256`.
    pub algorithms: Vec<String>,
    pub keys: IssuerKeys,
    pub claims: ClaimMapping,
    /// Cache bounds and refetch cooldown of remote keys.
    pub refresh: crate::jwks::Refresh,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// At least one; a token is verified by the one whose `issuer` is its `iss`.
    pub issuers: Vec<IssuerConfig>,
    pub leeway_seconds: u64,
}

/// Every algorithm a token may be signed with.
pub const ALGORITHMS: [&str; 3] = ["EdDSA", "ES256", "RS256"];

/// The default cache bounds and cooldown of remote keys.
pub const DEFAULT_REFRESH: crate::jwks::Refresh = crate::jwks::Refresh {
    min: std::time::Duration::from_secs(60),
    max: std::time::Duration::from_secs(3600),
    cooldown: std::time::Duration::from_secs(30),
};

/// Where a key scope's pseudonym secret comes from. The secret must be at
/// least 32 bytes; a shorter one is a config error naming
/// `pseudonym_keys.<scope>`.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The file's bytes, without one trailing `\n` or `\r\n`.
    File(PathBuf),
    /// Decoded from standard base64 in the config.
    Inline(Vec<u8>),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::File(p) => f.debug_tuple("File").field(p).finish(),
            // Never print secrets.
            SecretSource::Inline(b) => write!(f, "Inline({} bytes)", b.len()),
        }
    }
}

impl SecretSource {
    /// The secret's bytes.
    pub fn read(&self) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
        match self {
            SecretSource::Inline(b) => Ok(zeroize::Zeroizing::new(b.clone())),
            SecretSource::File(p) => {
                let mut b = zeroize::Zeroizing::new(
                    std::fs::read(p)
                        .map_err(|e| meshgov_core::diag::io_message(p.display(), &e))?,
                );
                if b.last() == Some(&b'\n') {
                    b.pop();
                    if b.last() == Some(&b'\r') {
                        b.pop();
                    }
                }
                Ok(b)
            }
        }
    }
}

/// Limits that keep one client from exhausting the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub header_read_timeout_ms: u64,
    /// A response whose client reads nothing for this long is aborted.
    pub write_stall_timeout_ms: u64,
    /// A request body (an aggregate query, a pushed bundle) must arrive
    /// whole within this; a client that drips it gets 408.
    pub body_read_timeout_ms: u64,
    /// An HTTP upstream that sends no body bytes for this long fails the
    /// read (`upstream_failed`): a stalled upstream cannot pin a response.
    pub upstream_stall_timeout_ms: u64,
    /// The largest bundle envelope a push may send or the engine's long
    /// poll may answer; a larger push is refused (413) before it is read.
    pub max_bundle_bytes: usize,
    /// Longer upstream lines are skipped and counted as malformed.
    pub max_line_bytes: usize,
    /// The largest `limit` a request may ask for.
    pub max_limit: u64,
    pub drain_timeout_ms: u64,
    /// The memory one columnar query (a read of a Parquet port) may hold;
    /// a query that needs more fails (500 `plan_failed`) rather than grow
    /// the process.
    pub query_memory_bytes: usize,
    /// The longest a SQL query may run (a client's `statement_timeout`
    /// may only lower it); then it is cancelled (`57014`).
    pub query_timeout_ms: u64,
    /// Open connections per SQL port; one more is refused (`53300`).
    pub max_sql_connections: usize,
    /// A PostgreSQL connection with no statement at work this long is
    /// closed, freeing its slot.
    pub sql_idle_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            header_read_timeout_ms: 5_000,
            write_stall_timeout_ms: 30_000,
            body_read_timeout_ms: 30_000,
            upstream_stall_timeout_ms: 30_000,
            max_bundle_bytes: 16 * 1024 * 1024,
            max_line_bytes: 1024 * 1024,
            max_limit: 100_000_000,
            drain_timeout_ms: 10_000,
            query_memory_bytes: 256 * 1024 * 1024,
            query_timeout_ms: 300_000,
            max_sql_connections: 100,
            sql_idle_timeout_ms: 600_000,
        }
    }
}

/// Where the engine is, and how this sidecar presents itself to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// `http://host:port` of `meshgov serve`.
    pub url: String,
    /// This sidecar's id in the fleet; `None` picks one at start.
    pub instance_id: Option<String>,
    /// The control URL the engine pushes to; `None` derives it from
    /// `listen.control`.
    pub advertise_url: Option<String>,
    pub poll_wait_seconds: u64,
    /// Sent as a bearer token when registering, long-polling and reporting.
    pub registration_token: Option<RegistrationToken>,
}

/// The engine's registration token; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistrationToken(pub String);

impl std::fmt::Debug for RegistrationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistrationToken({} bytes)", self.0.len())
    }
}

/// How the audit log is kept (see `meshgov_audit::Options`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub checkpoint_every: u64,
    pub checkpoint_interval_ms: u64,
    /// Remove segments once collected and covered by a checkpoint.
    pub retention_after_collection: bool,
    /// `false` only for measuring what durability costs (`audit.durability
    /// = "buffered"`): events are written but not `fdatasync`ed before the
    /// response. Never the default.
    pub fsync: bool,
}

impl AuditConfig {
    /// The writer's options.
    pub fn options(&self) -> meshgov_audit::Options {
        let mut o = meshgov_audit::Options::new(&self.dir);
        o.segment_bytes = self.segment_bytes;
        o.checkpoint_every = self.checkpoint_every;
        o.checkpoint_interval = std::time::Duration::from_millis(self.checkpoint_interval_ms);
        o.retention = if self.retention_after_collection {
            meshgov_audit::Retention::AfterCollection
        } else {
            meshgov_audit::Retention::KeepAll
        };
        o.durability = if self.fsync {
            meshgov_audit::Durability::Fsync
        } else {
            meshgov_audit::Durability::Buffered
        };
        o
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The mesh id; bundles for another mesh are refused.
    pub mesh: String,
    pub descriptor: PathBuf,
    pub bundle_file: Option<PathBuf>,
    /// Holds the audit log and the sidecar's audit signing key.
    pub state_dir: PathBuf,
    pub audit: AuditConfig,
    /// Governance keys (`ed25519:<base64>`) trusted to sign bundles.
    pub trusted_bundle_keys: Vec<String>,
    pub listen_data: SocketAddr,
    pub listen_control: Option<SocketAddr>,
    /// Where `GET /metrics` is served (Prometheus); `None`: nowhere.
    pub listen_metrics: Option<SocketAddr>,
    /// The SQL ports.
    pub sql: SqlPorts,
    /// The most privacy-budget series by consumer and purpose exported
    /// (see [`crate::metrics`]); 0 exports none.
    pub metrics_budget_series: usize,
    pub engine: Option<EngineConfig>,
    pub upstream: UpstreamConfig,
    pub auth: AuthConfig,
    /// Pseudonym (HMAC) secrets by key scope.
    pub pseudonym_keys: BTreeMap<String, SecretSource>,
    pub limits: Limits,
    /// `json` for JSON logs.
    pub log_format: String,
    /// Where privacy budgets are kept.
    pub ledger: LedgerConfig,
}

/// Where the privacy-budget ledger lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerConfig {
    /// A durable journal in `state_dir`; with no `state_dir`, aggregates are
    /// refused (503) for want of a ledger.
    Embedded,
    /// PostgreSQL, shared by every replica of the product.
    Postgres(String),
}

/// Every scalar key the file may hold, and so every env override.
pub const SCALAR_KEYS: &[&str] = &[
    "mesh",
    "descriptor",
    "bundle_file",
    "state_dir",
    "log_format",
    "listen.data",
    "listen.control",
    "listen.metrics",
    "metrics.budget_series",
    "engine.url",
    "engine.instance_id",
    "engine.advertise_url",
    "engine.poll_wait_seconds",
    "engine.registration_token",
    "engine.registration_token_file",
    "upstream.kind",
    "upstream.path",
    "upstream.url",
    "upstream.bucket",
    "upstream.prefix",
    "upstream.region",
    "upstream.endpoint",
    "upstream.allow_http",
    "upstream.access_key_id",
    "upstream.secret_access_key",
    "auth.issuer",
    "auth.audience",
    "auth.groups_claim",
    "auth.groups_space_separated",
    "auth.purpose_claim",
    "auth.leeway_seconds",
    "privacy.ledger",
    "privacy.postgres_url",
    "limits.max_header_bytes",
    "limits.header_read_timeout_ms",
    "limits.write_stall_timeout_ms",
    "limits.body_read_timeout_ms",
    "limits.upstream_stall_timeout_ms",
    "limits.max_bundle_bytes",
    "limits.max_line_bytes",
    "limits.max_limit",
    "limits.drain_timeout_ms",
    "limits.query_memory_bytes",
    "limits.query_timeout_ms",
    "limits.max_sql_connections",
    "limits.sql_idle_timeout_ms",
    "listen.sql",
    "listen.flight",
    "sql.tls_cert",
    "sql.tls_key",
    "sql.allow_plaintext",
    "audit.segment_bytes",
    "audit.checkpoint_every",
    "audit.checkpoint_interval_ms",
    "audit.retention",
    "audit.durability",
];

/// The environment variable that overrides `key`.
pub fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace(['.', '-'], "_").to_ascii_uppercase()
    )
}

/// Flattened scalar values, with where each came from (for messages).
struct Values {
    map: BTreeMap<String, toml::Value>,
}

impl Values {
    fn str(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) if s.is_empty() => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(err(key, "expected a string")),
        }
    }

    fn required(&self, key: &str) -> Result<String, ConfigError> {
        self.str(key)?.ok_or_else(|| {
            err(
                key,
                format!("missing; set it in the file or in `{}`", env_name(key)),
            )
        })
    }

    /// A boolean: TOML `true`/`false`, or the text `true`/`false` (from
    /// the environment).
    fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.map.get(key) {
            None => Ok(default),
            Some(toml::Value::Boolean(b)) => Ok(*b),
            Some(toml::Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
            Some(_) => Err(err(key, "expected `true` or `false`")),
        }
    }

    fn u64(&self, key: &str, default: u64) -> Result<u64, ConfigError> {
        match self.map.get(key) {
            None => Ok(default),
            Some(toml::Value::Integer(i)) => {
                u64::try_from(*i).map_err(|_| err(key, "expected a non-negative integer"))
            }
            Some(toml::Value::String(s)) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| err(key, format!("expected a non-negative integer, got `{s}`"))),
            Some(_) => Err(err(key, "expected a non-negative integer")),
        }
    }

    fn addr(&self, key: &str) -> Result<Option<SocketAddr>, ConfigError> {
        self.str(key)?
            .map(|s| {
                s.parse::<SocketAddr>().map_err(|_| {
                    err(
                        key,
                        format!("expected `host:port` with an IP host, got `{s}`"),
                    )
                })
            })
            .transpose()
    }
}

fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut BTreeMap<String, toml::Value>,
) -> Result<(), ConfigError> {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (key.as_str(), v) {
            ("auth.keys" | "auth.issuers" | "pseudonym_keys" | "trusted_bundle_keys", _) => {}
            (_, toml::Value::Table(t)) => flatten(&key, t, out)?,
            _ if SCALAR_KEYS.contains(&key.as_str()) => {
                out.insert(key, v.clone());
            }
            _ => {
                return Err(err(
                    &key,
                    "unknown key; see the sidecar README for the keys it reads",
                ));
            }
        }
    }
    Ok(())
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl Config {
    /// Reads `path` (relative paths inside it resolve against its directory)
    /// with overrides from `env`.
    pub fn load(path: &Path, env: &dyn Strings) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(
                "--config",
                meshgov_core::diag::io_message(path.display(), &e),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base, env)
    }

    /// Parses config text; `base` anchors relative paths.
    pub fn from_toml(text: &str, base: &Path, env: &dyn Strings) -> Result<Config, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .and_then(|s| text.get(..s.start))
                .map(|before| format!("line {}", before.lines().count().max(1)))
                .unwrap_or_else(|| "file".into());
            err(&key, e.message().trim().to_string())
        })?;
        let mut map = BTreeMap::new();
        flatten("", &table, &mut map)?;
        for key in SCALAR_KEYS {
            if let Some(v) = env.get(&env_name(key)) {
                map.insert((*key).to_string(), toml::Value::String(v));
            }
        }
        let v = Values { map };
        let path = |s: String| resolve(base, &s);

        let upstream = match v.str("upstream.kind")?.as_deref().unwrap_or("dir") {
            "dir" => UpstreamConfig::Dir(path(v.required("upstream.path")?)),
            "http" => {
                let url = v.required("upstream.url")?;
                if !url.starts_with("http://") {
                    return Err(err(
                        "upstream.url",
                        format!("expected an `http://` URL, got `{url}`"),
                    ));
                }
                UpstreamConfig::Http(url.trim_end_matches('/').to_string())
            }
            "s3" => {
                let endpoint = v.str("upstream.endpoint")?;
                if let Some(e) = &endpoint
                    && !(e.starts_with("http://") || e.starts_with("https://"))
                {
                    return Err(err(
                        "upstream.endpoint",
                        format!("expected an `http://` or `https://` URL, got `{e}`"),
                    ));
                }
                let allow_http = v.bool("upstream.allow_http", false)?;
                if endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://"))
                    && !allow_http
                {
                    return Err(err(
                        "upstream.allow_http",
                        "the endpoint is plain HTTP: set `allow_http = true` to use it (credentials and data then cross the network in clear)",
                    ));
                }
                UpstreamConfig::S3 {
                    bucket: meshgov_columnar::source::BucketConfig {
                        bucket: v.required("upstream.bucket")?,
                        region: v
                            .str("upstream.region")?
                            .unwrap_or_else(|| "us-east-1".into()),
                        endpoint,
                        allow_http,
                        key: match (
                            v.str("upstream.access_key_id")?,
                            v.str("upstream.secret_access_key")?,
                        ) {
                            (Some(id), Some(secret)) => {
                                Some((id, meshgov_columnar::source::Secret(secret)))
                            }
                            (None, None) => None,
                            _ => {
                                return Err(err(
                                    "upstream.secret_access_key",
                                    "set both `access_key_id` and `secret_access_key`, or neither (then the AWS_* environment variables or an instance role are used)",
                                ));
                            }
                        },
                    },
                    prefix: v
                        .str("upstream.prefix")?
                        .unwrap_or_default()
                        .trim_matches('/')
                        .to_string(),
                }
            }
            other => {
                return Err(err(
                    "upstream.kind",
                    format!("expected `dir`, `http` or `s3`, got `{other}`"),
                ));
            }
        };

        let auth = parse_auth(&v, table.get("auth"), base)?;

        let mut pseudonym_keys = BTreeMap::new();
        if let Some(t) = table.get("pseudonym_keys") {
            let t = t.as_table().ok_or_else(|| {
                err(
                    "pseudonym_keys",
                    "expected a table of `scope = { file = \"…\" }` or `{ base64 = \"…\" }`",
                )
            })?;
            for (scope, v) in t {
                let key = format!("pseudonym_keys.{scope}");
                let expected = "expected `{ file = \"…\" }`, `{ base64 = \"…\" }` or a file path";
                let source = match v {
                    toml::Value::String(f) => SecretSource::File(path(f.clone())),
                    toml::Value::Table(t) if t.len() == 1 => {
                        match (t.get("file"), t.get("base64")) {
                            (Some(toml::Value::String(f)), _) => {
                                SecretSource::File(path(f.clone()))
                            }
                            (_, Some(toml::Value::String(b))) => SecretSource::Inline(
                                base64::engine::general_purpose::STANDARD
                                    .decode(b.trim())
                                    .map_err(|_| {
                                        err(&key, "`base64` is not valid standard base64")
                                    })?,
                            ),
                            _ => return Err(err(&key, expected)),
                        }
                    }
                    _ => return Err(err(&key, expected)),
                };
                pseudonym_keys.insert(scope.clone(), source);
            }
        }

        let trusted_bundle_keys = match table.get("trusted_bundle_keys") {
            None => vec![],
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|k| {
                    k.as_str().map(str::to_string).ok_or_else(|| {
                        err(
                            "trusted_bundle_keys",
                            "expected strings: `ed25519:<base64>` or a PEM `PUBLIC KEY` block",
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(err("trusted_bundle_keys", "expected an array")),
        };

        let d = Limits::default();
        let usize_of = |key: &str, default: usize| -> Result<usize, ConfigError> {
            usize::try_from(v.u64(key, default as u64)?).map_err(|_| err(key, "too large"))
        };
        let limits = Limits {
            max_header_bytes: usize_of("limits.max_header_bytes", d.max_header_bytes)?,
            header_read_timeout_ms: v
                .u64("limits.header_read_timeout_ms", d.header_read_timeout_ms)?,
            write_stall_timeout_ms: v
                .u64("limits.write_stall_timeout_ms", d.write_stall_timeout_ms)?,
            body_read_timeout_ms: v.u64("limits.body_read_timeout_ms", d.body_read_timeout_ms)?,
            upstream_stall_timeout_ms: v.u64(
                "limits.upstream_stall_timeout_ms",
                d.upstream_stall_timeout_ms,
            )?,
            max_bundle_bytes: usize_of("limits.max_bundle_bytes", d.max_bundle_bytes)?,
            max_line_bytes: usize_of("limits.max_line_bytes", d.max_line_bytes)?,
            max_limit: v.u64("limits.max_limit", d.max_limit)?,
            drain_timeout_ms: v.u64("limits.drain_timeout_ms", d.drain_timeout_ms)?,
            query_memory_bytes: usize_of("limits.query_memory_bytes", d.query_memory_bytes)?,
            query_timeout_ms: v.u64("limits.query_timeout_ms", d.query_timeout_ms)?,
            max_sql_connections: usize_of("limits.max_sql_connections", d.max_sql_connections)?,
            sql_idle_timeout_ms: v.u64("limits.sql_idle_timeout_ms", d.sql_idle_timeout_ms)?,
        };
        if limits.sql_idle_timeout_ms == 0 {
            return Err(err("limits.sql_idle_timeout_ms", "must be at least 1"));
        }
        if limits.query_timeout_ms == 0 {
            return Err(err("limits.query_timeout_ms", "must be at least 1"));
        }
        if limits.max_sql_connections == 0 {
            return Err(err("limits.max_sql_connections", "must be at least 1"));
        }
        if limits.query_memory_bytes < 1024 * 1024 {
            return Err(err(
                "limits.query_memory_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if limits.max_bundle_bytes < 64 * 1024
            || limits.max_bundle_bytes > meshgov_bundle::DEFAULT_MAX_ENVELOPE_BYTES
        {
            return Err(err(
                "limits.max_bundle_bytes",
                "must be between 65536 (64 KiB) and 67108864 (64 MiB)",
            ));
        }
        if limits.max_header_bytes < 8192 {
            return Err(err("limits.max_header_bytes", "must be at least 8192"));
        }
        if limits.max_limit == 0 {
            return Err(err("limits.max_limit", "must be at least 1"));
        }
        if limits.upstream_stall_timeout_ms == 0 {
            return Err(err(
                "limits.upstream_stall_timeout_ms",
                "must be at least 1",
            ));
        }

        let log_format = v.str("log_format")?.unwrap_or_else(|| "text".into());
        if log_format != "text" && log_format != "json" {
            return Err(err(
                "log_format",
                format!("expected `text` or `json`, got `{log_format}`"),
            ));
        }

        let state_dir = path(v.required("state_dir")?);
        let audit = AuditConfig {
            dir: state_dir.join("audit"),
            segment_bytes: v.u64("audit.segment_bytes", 64 * 1024 * 1024)?,
            checkpoint_every: v.u64("audit.checkpoint_every", 10_000)?,
            checkpoint_interval_ms: v.u64("audit.checkpoint_interval_ms", 10_000)?,
            retention_after_collection: match v.str("audit.retention")?.as_deref() {
                None | Some("keep") => false,
                Some("after_collection") => true,
                Some(other) => {
                    return Err(err(
                        "audit.retention",
                        format!("expected `keep` or `after_collection`, got `{other}`"),
                    ));
                }
            },
            fsync: match v.str("audit.durability")?.as_deref() {
                None | Some("fsync") => true,
                Some("buffered") => false,
                Some(other) => {
                    return Err(err(
                        "audit.durability",
                        format!(
                            "expected `fsync` (or `buffered`, for benchmarks only), got `{other}`"
                        ),
                    ));
                }
            },
        };
        if audit.segment_bytes < 4096 {
            return Err(err("audit.segment_bytes", "must be at least 4096"));
        }
        if audit.checkpoint_every == 0 || audit.checkpoint_interval_ms == 0 {
            let key = if audit.checkpoint_every == 0 {
                "audit.checkpoint_every"
            } else {
                "audit.checkpoint_interval_ms"
            };
            return Err(err(key, "must be at least 1"));
        }
        let ledger = match v.str("privacy.ledger")?.as_deref().unwrap_or("embedded") {
            "embedded" => {
                if v.str("privacy.postgres_url")?.is_some() {
                    return Err(err(
                        "privacy.postgres_url",
                        "set only with `privacy.ledger = \"postgres\"`",
                    ));
                }
                LedgerConfig::Embedded
            }
            "postgres" => {
                let url = v.required("privacy.postgres_url")?;
                if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
                    return Err(err(
                        "privacy.postgres_url",
                        "expected a `postgresql://user@host:port/database` URL",
                    ));
                }
                LedgerConfig::Postgres(url)
            }
            other => {
                return Err(err(
                    "privacy.ledger",
                    format!("expected `embedded` or `postgres`, got `{other}`"),
                ));
            }
        };

        if v.str("bundle_file")?.is_some() && trusted_bundle_keys.is_empty() {
            return Err(err(
                "trusted_bundle_keys",
                "a `bundle_file` is set but no governance key is trusted to sign it",
            ));
        }
        let listen_control = v.addr("listen.control")?;
        let listen_metrics = v.addr("listen.metrics")?;
        let metrics_budget_series = usize_of("metrics.budget_series", 1000)?;
        let engine = match v.str("engine.url")? {
            None => None,
            Some(url) => Some(EngineConfig {
                url: http_url("engine.url", &url)?,
                instance_id: v.str("engine.instance_id")?,
                advertise_url: v
                    .str("engine.advertise_url")?
                    .map(|u| http_url("engine.advertise_url", &u))
                    .transpose()?,
                poll_wait_seconds: match v.u64("engine.poll_wait_seconds", 30)? {
                    0 => return Err(err("engine.poll_wait_seconds", "must be at least 1")),
                    n => n.min(300),
                },
                registration_token: registration_token(&v, base)?,
            }),
        };
        let listen_data = v
            .addr("listen.data")?
            .ok_or_else(|| err("listen.data", "missing; e.g. `127.0.0.1:8080`"))?;
        if listen_control.is_some_and(|c| c == listen_data && c.port() != 0) {
            return Err(err(
                "listen.control",
                "must differ from `listen.data`: the control port has its own listener",
            ));
        }
        if listen_metrics
            .is_some_and(|m| m.port() != 0 && (m == listen_data || Some(m) == listen_control))
        {
            return Err(err(
                "listen.metrics",
                "must differ from `listen.data` and `listen.control`: metrics have their own listener",
            ));
        }
        let sql = sql_ports(
            &v,
            base,
            &[Some(listen_data), listen_control, listen_metrics],
        )?;
        if engine.is_some() && listen_control.is_none() {
            return Err(err(
                "listen.control",
                "missing; the engine pushes bundles to the control port, e.g. `127.0.0.1:8081`",
            ));
        }
        Ok(Config {
            mesh: v.required("mesh")?,
            descriptor: path(v.required("descriptor")?),
            bundle_file: v.str("bundle_file")?.map(path),
            state_dir,
            audit,
            trusted_bundle_keys,
            listen_data,
            listen_control,
            listen_metrics,
            sql,
            metrics_budget_series,
            engine,
            upstream,
            auth,
            pseudonym_keys,
            limits,
            log_format,
            ledger,
        })
    }
}

/// The SQL ports: where they listen and their TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SqlPorts {
    /// The PostgreSQL wire protocol (`listen.sql`).
    pub postgres: Option<SocketAddr>,
    /// Arrow Flight SQL (`listen.flight`).
    pub flight: Option<SocketAddr>,
    /// The certificate chain and key (PEM); `None` only when plaintext is
    /// allowed, on loopback addresses.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// `listen.sql`, `listen.flight` and `[sql]`. The password on these
/// ports is the consumer's token, so TLS is required unless both listen
/// on loopback and `sql.allow_plaintext` is set.
fn sql_ports(
    v: &Values,
    base: &Path,
    taken: &[Option<SocketAddr>],
) -> Result<SqlPorts, ConfigError> {
    let postgres = v.addr("listen.sql")?;
    let flight = v.addr("listen.flight")?;
    for (key, addr) in [("listen.sql", postgres), ("listen.flight", flight)] {
        if let Some(a) = addr
            && a.port() != 0
            && taken.contains(&Some(a))
        {
            return Err(err(key, "must differ from the other listeners"));
        }
    }
    if postgres.is_some_and(|p| p.port() != 0 && Some(p) == flight) {
        return Err(err("listen.flight", "must differ from `listen.sql`"));
    }
    let tls = match (v.str("sql.tls_cert")?, v.str("sql.tls_key")?) {
        (Some(c), Some(k)) => Some((resolve(base, &c), resolve(base, &k))),
        (None, None) => None,
        (Some(_), None) => return Err(err("sql.tls_key", "missing; `sql.tls_cert` needs its key")),
        (None, Some(_)) => {
            return Err(err(
                "sql.tls_cert",
                "missing; `sql.tls_key` needs its certificate",
            ));
        }
    };
    let plaintext = v.bool("sql.allow_plaintext", false)?;
    if tls.is_none() {
        for (key, addr) in [("listen.sql", postgres), ("listen.flight", flight)] {
            if let Some(a) = addr {
                if !plaintext {
                    return Err(err(
                        "sql.tls_cert",
                        format!(
                            "missing; `{key}` needs TLS (`sql.tls_cert` and `sql.tls_key`): its password is the consumer's token"
                        ),
                    ));
                }
                if !a.ip().is_loopback() {
                    return Err(err(
                        "sql.allow_plaintext",
                        format!(
                            "plaintext is allowed on a loopback address only, and `{key}` is {a}; set `sql.tls_cert` and `sql.tls_key`"
                        ),
                    ));
                }
            }
        }
    }
    Ok(SqlPorts {
        postgres,
        flight,
        tls,
    })
}

/// An `http://` URL without a trailing `/`.
fn http_url(key: &str, url: &str) -> Result<String, ConfigError> {
    let u = url.trim().trim_end_matches('/');
    if !u.starts_with("http://") || u.len() <= "http://".len() {
        return Err(err(
            key,
            format!("expected an `http://host:port` URL, got `{url}`"),
        ));
    }
    Ok(u.to_string())
}

/// `engine.registration_token` (better from the environment) or
/// `engine.registration_token_file` (read now, surrounding whitespace
/// ignored), not both.
fn registration_token(v: &Values, base: &Path) -> Result<Option<RegistrationToken>, ConfigError> {
    let token = match (
        v.str("engine.registration_token")?,
        v.str("engine.registration_token_file")?,
    ) {
        (None, None) => return Ok(None),
        (Some(t), None) => t,
        (None, Some(f)) => {
            let f = resolve(base, &f);
            std::fs::read_to_string(&f).map_err(|e| {
                err(
                    "engine.registration_token_file",
                    meshgov_core::diag::io_message(f.display(), &e),
                )
            })?
        }
        (Some(_), Some(_)) => {
            return Err(err(
                "engine.registration_token",
                "give `registration_token` or `registration_token_file`, not both",
            ));
        }
    };
    let token = token.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err(
            "engine.registration_token",
            "expected printable ASCII without spaces (as `openssl rand -hex 32` writes)",
        ));
    }
    Ok(Some(RegistrationToken(token.to_string())))
}

/// `[auth]`: either one issuer in the table itself (`issuer`, `audience`,
/// claim names and `[[auth.keys]]`), or `[[auth.issuers]]`.
fn parse_auth(
    v: &Values,
    auth: Option<&toml::Value>,
    base: &Path,
) -> Result<AuthConfig, ConfigError> {
    let leeway_seconds = v.u64("auth.leeway_seconds", 30)?;
    if let Some(list) = auth.and_then(|a| a.get("issuers")) {
        for flat in [
            "auth.issuer",
            "auth.audience",
            "auth.groups_claim",
            "auth.purpose_claim",
        ] {
            if v.str(flat)?.is_some() {
                return Err(err(
                    flat,
                    "give the issuer in `[[auth.issuers]]` or in `[auth]`, not both",
                ));
            }
        }
        if auth.and_then(|a| a.get("keys")).is_some() {
            return Err(err(
                "auth.keys",
                "with `[[auth.issuers]]`, give each issuer its own `keys`",
            ));
        }
        let arr = list.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
            err(
                "auth.issuers",
                "expected one or more `[[auth.issuers]]` tables",
            )
        })?;
        let mut issuers = Vec::new();
        for (i, t) in arr.iter().enumerate() {
            let at = format!("auth.issuers[{i}]");
            let t = t.as_table().ok_or_else(|| err(&at, "expected a table"))?;
            let issuer = parse_issuer(&at, t, base)?;
            if issuers
                .iter()
                .any(|o: &IssuerConfig| o.issuer == issuer.issuer)
            {
                return Err(err(&format!("{at}.issuer"), "listed twice"));
            }
            issuers.push(issuer);
        }
        return Ok(AuthConfig {
            issuers,
            leeway_seconds,
        });
    }
    let keys = parse_keys(auth.and_then(|a| a.get("keys")), "auth.keys", base)?;
    if keys.is_empty() {
        return Err(err(
            "auth.keys",
            "no token verification keys; add at least one `[[auth.keys]]` (or use `[[auth.issuers]]`)",
        ));
    }
    let groups_claim = v
        .str("auth.groups_claim")?
        .unwrap_or_else(|| "groups".into());
    Ok(AuthConfig {
        issuers: vec![IssuerConfig {
            issuer: v.required("auth.issuer")?,
            audience: v.required("auth.audience")?,
            // The algorithms of the keys given.
            algorithms: ALGORITHMS
                .iter()
                .filter(|a| keys.iter().any(|k| k.alg == **a))
                .map(|a| a.to_string())
                .collect(),
            keys: IssuerKeys::Static(keys),
            claims: ClaimMapping {
                groups_claims: vec![groups_claim],
                groups_strip_prefix: None,
                groups_space_separated: v.bool("auth.groups_space_separated", false)?,
                purpose_claim: v
                    .str("auth.purpose_claim")?
                    .unwrap_or_else(|| "purpose".into()),
                purpose_scope_prefix: None,
            },
            refresh: DEFAULT_REFRESH,
        }],
        leeway_seconds,
    })
}

/// One `[[auth.issuers]]` table.
fn parse_issuer(at: &str, t: &toml::Table, base: &Path) -> Result<IssuerConfig, ConfigError> {
    const KEYS: [&str; 15] = [
        "issuer",
        "audience",
        "algorithms",
        "discovery_url",
        "jwks_url",
        "jwks_file",
        "keys",
        "groups_claims",
        "groups_strip_prefix",
        "groups_space_separated",
        "purpose_claim",
        "purpose_scope_prefix",
        "jwks_min_refresh_seconds",
        "jwks_max_refresh_seconds",
        "jwks_refetch_cooldown_seconds",
    ];
    for name in t.keys() {
        if !KEYS.contains(&name.as_str()) {
            return Err(err(&format!("{at}.{name}"), "unknown key"));
        }
    }
    let key = |name: &str| format!("{at}.{name}");
    let s = |name: &str| -> Result<Option<String>, ConfigError> {
        match t.get(name) {
            None => Ok(None),
            Some(toml::Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(err(&key(name), "expected a non-empty string")),
        }
    };
    let strings = |name: &str| -> Result<Option<Vec<String>>, ConfigError> {
        match t.get(name) {
            None => Ok(None),
            Some(toml::Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|x| match x {
                    toml::Value::String(s) if !s.is_empty() => Ok(s.clone()),
                    _ => Err(err(&key(name), "expected non-empty strings")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(err(&key(name), "expected a non-empty array of strings")),
        }
    };
    let secs =
        |name: &str, default: std::time::Duration| -> Result<std::time::Duration, ConfigError> {
            match t.get(name) {
                None => Ok(default),
                Some(toml::Value::Integer(i)) if *i >= 0 => {
                    Ok(std::time::Duration::from_secs(*i as u64))
                }
                Some(_) => Err(err(&key(name), "expected a non-negative integer (seconds)")),
            }
        };
    let url = |name: &str| -> Result<Option<String>, ConfigError> {
        let u = s(name)?;
        if let Some(u) = &u
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err(err(
                &key(name),
                format!("expected an `https://` URL, got `{u}`"),
            ));
        }
        Ok(u)
    };
    let algorithms = strings("algorithms")?
        .unwrap_or_else(|| ALGORITHMS.iter().map(|a| a.to_string()).collect());
    if let Some(a) = algorithms
        .iter()
        .find(|a| !ALGORITHMS.contains(&a.as_str()))
    {
        return Err(err(
            &key("algorithms"),
            format!("expected `EdDSA`, `ES256` or `RS256`, got `{a}`"),
        ));
    }
    let sources = [
        url("discovery_url")?.map(|u| IssuerKeys::Remote(crate::jwks::Endpoint::Discovery(u))),
        url("jwks_url")?.map(|u| IssuerKeys::Remote(crate::jwks::Endpoint::Jwks(u))),
        s("jwks_file")?.map(|f| IssuerKeys::JwksFile(resolve(base, &f))),
        t.get("keys")
            .map(|k| parse_keys(Some(k), &key("keys"), base).map(IssuerKeys::Static))
            .transpose()?,
    ];
    let mut given = sources.into_iter().flatten();
    let keys = given.next().ok_or_else(|| {
        err(
            at,
            "no keys; give one of `discovery_url`, `jwks_url`, `jwks_file` or `keys`",
        )
    })?;
    if given.next().is_some() {
        return Err(err(
            at,
            "give one of `discovery_url`, `jwks_url`, `jwks_file` or `keys`, not several",
        ));
    }
    let refresh = crate::jwks::Refresh {
        min: secs("jwks_min_refresh_seconds", DEFAULT_REFRESH.min)?,
        max: secs("jwks_max_refresh_seconds", DEFAULT_REFRESH.max)?,
        cooldown: secs("jwks_refetch_cooldown_seconds", DEFAULT_REFRESH.cooldown)?,
    };
    if refresh.min > refresh.max || refresh.max.is_zero() {
        return Err(err(
            &key("jwks_max_refresh_seconds"),
            "must be positive and at least `jwks_min_refresh_seconds`",
        ));
    }
    let groups_space_separated = match t.get("groups_space_separated") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(_) => {
            return Err(err(
                &key("groups_space_separated"),
                "expected `true` or `false`",
            ));
        }
    };
    Ok(IssuerConfig {
        issuer: s("issuer")?.ok_or_else(|| err(&key("issuer"), "missing"))?,
        audience: s("audience")?.ok_or_else(|| err(&key("audience"), "missing"))?,
        algorithms,
        keys,
        claims: ClaimMapping {
            groups_claims: strings("groups_claims")?.unwrap_or_else(|| vec!["groups".into()]),
            groups_strip_prefix: s("groups_strip_prefix")?,
            groups_space_separated,
            purpose_claim: s("purpose_claim")?.unwrap_or_else(|| "purpose".into()),
            purpose_scope_prefix: s("purpose_scope_prefix")?,
        },
        refresh,
    })
}

fn parse_keys(
    value: Option<&toml::Value>,
    name: &str,
    base: &Path,
) -> Result<Vec<KeyConfig>, ConfigError> {
    let Some(value) = value else {
        return Ok(vec![]);
    };
    let arr = value
        .as_array()
        .ok_or_else(|| err(name, format!("expected an array of tables `[[{name}]]`")))?;
    let mut out = Vec::new();
    for (i, k) in arr.iter().enumerate() {
        let at = format!("{name}[{i}]");
        let t = k.as_table().ok_or_else(|| err(&at, "expected a table"))?;
        let s = |name: &str| -> Result<Option<String>, ConfigError> {
            match t.get(name) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(err(&format!("{at}.{name}"), "expected a string")),
            }
        };
        for name in t.keys() {
            if !["kid", "alg", "pem", "pem_file", "x", "y", "n", "e"].contains(&name.as_str()) {
                return Err(err(&format!("{at}.{name}"), "unknown key"));
            }
        }
        let alg = s("alg")?.ok_or_else(|| err(&format!("{at}.alg"), "missing"))?;
        if !["EdDSA", "ES256", "RS256"].contains(&alg.as_str()) {
            return Err(err(
                &format!("{at}.alg"),
                format!("expected `EdDSA`, `ES256` or `RS256`, got `{alg}`"),
            ));
        }
        let source = match (s("pem")?, s("pem_file")?) {
            (Some(p), None) => KeySource::Pem(p),
            (None, Some(f)) => KeySource::PemFile(resolve(base, &f)),
            (Some(_), Some(_)) => {
                return Err(err(&at, "give `pem` or `pem_file`, not both"));
            }
            (None, None) => {
                let mut c = BTreeMap::new();
                for name in ["x", "y", "n", "e"] {
                    if let Some(v) = s(name)? {
                        c.insert(name.to_string(), v);
                    }
                }
                if c.is_empty() {
                    return Err(err(
                        &at,
                        "no key material; give `pem`, `pem_file` or JWK components",
                    ));
                }
                KeySource::Components(c)
            }
        };
        out.push(KeyConfig {
            kid: s("kid")?,
            alg,
            source,
        });
    }
    Ok(out)
}

/// The `[[auth.keys]]` entry that verifies EdDSA tokens signed by the
/// Ed25519 key whose 32-byte public key is `public_key` (as a JWK `x`).
/// `meshgov token` prints it for the key it signed with.
pub fn eddsa_key_toml(public_key: &[u8]) -> String {
    use base64::Engine as _;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public_key);
    format!("[[auth.keys]]\nalg = \"EdDSA\"\nx = \"{x}\"\n")
}

/// The `[auth]` table of a config whose sidecar accepts the EdDSA tokens
/// of one identity provider: its `issuer` and `audience`, the default claim
/// names, and the one key entry of [`eddsa_key_toml`]. For configs written
/// by programs (`meshgov demo`, tests) rather than by hand.
pub fn eddsa_auth_toml(issuer: &str, audience: &str, public_key: &[u8]) -> String {
    format!(
        "[auth]\nissuer = {}\naudience = {}\n{}",
        toml_string(issuer),
        toml_string(audience),
        eddsa_key_toml(public_key)
    )
}

/// `s` as a TOML basic string, quoted and escaped.
fn toml_string(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const BASE: &str = r#"
mesh = "m"
descriptor = "p.yaml"
state_dir = "state"
[listen]
data = "127.0.0.1:0"
[upstream]
path = "data"
[auth]
issuer = "i"
audience = "a"
[[auth.keys]]
alg = "EdDSA"
x = "abc"
"#;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_rendered_auth_table_loads_back() {
        let key = [7u8; 32];
        let issuer = "https://idp.example/\"quoted\"\\ and\ttab";
        let text = format!(
            "mesh = \"m\"\ndescriptor = \"p.yaml\"\nstate_dir = \"state\"\n[listen]\ndata = \"127.0.0.1:0\"\n[upstream]\npath = \"data\"\n{}",
            eddsa_auth_toml(issuer, "aud", &key)
        );
        let c = Config::from_toml(&text, Path::new("/"), &env(&[])).unwrap();
        let [i] = c.auth.issuers.as_slice() else {
            panic!("{:?}", c.auth.issuers)
        };
        assert_eq!(i.issuer, issuer);
        assert_eq!(i.audience, "aud");
        assert_eq!(i.claims, ClaimMapping::default());
        let IssuerKeys::Static(keys) = &i.keys else {
            panic!("{:?}", i.keys)
        };
        let [k] = keys.as_slice() else {
            panic!("{keys:?}")
        };
        assert_eq!(k.alg, "EdDSA");
        use base64::Engine as _;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
        assert_eq!(
            k.source,
            KeySource::Components(BTreeMap::from([("x".to_string(), x)]))
        );
    }

    #[test]
    fn loads_and_resolves_paths_against_the_file() {
        let c = Config::from_toml(BASE, Path::new("/etc/m"), &env(&[])).unwrap();
        assert_eq!(c.descriptor, PathBuf::from("/etc/m/p.yaml"));
        assert_eq!(c.upstream, UpstreamConfig::Dir("/etc/m/data".into()));
        assert_eq!(c.auth.issuers[0].claims.groups_claims, ["groups"]);
        assert_eq!(c.audit.dir, PathBuf::from("/etc/m/state/audit"));
        assert!(c.audit.fsync, "durable audit is the default");
        assert!(!c.audit.retention_after_collection);
    }

    #[test]
    fn audit_keys_are_checked_and_overridable() {
        let c = Config::from_toml(
            BASE,
            Path::new("/"),
            &env(&[("MESHGOV_SIDECAR_AUDIT_RETENTION", "after_collection")]),
        )
        .unwrap();
        assert!(c.audit.retention_after_collection);
        for (k, v, key) in [
            (
                "MESHGOV_SIDECAR_AUDIT_RETENTION",
                "never",
                "audit.retention",
            ),
            (
                "MESHGOV_SIDECAR_AUDIT_DURABILITY",
                "none",
                "audit.durability",
            ),
            (
                "MESHGOV_SIDECAR_AUDIT_CHECKPOINT_EVERY",
                "0",
                "audit.checkpoint_every",
            ),
            (
                "MESHGOV_SIDECAR_AUDIT_SEGMENT_BYTES",
                "10",
                "audit.segment_bytes",
            ),
        ] {
            let e = Config::from_toml(BASE, Path::new("/"), &env(&[(k, v)])).unwrap_err();
            assert_eq!(e.key, key);
        }
        let e = Config::from_toml(
            &BASE.replace("state_dir = \"state\"", ""),
            Path::new("/"),
            &env(&[]),
        )
        .unwrap_err();
        assert_eq!(e.key, "state_dir");
    }

    #[test]
    fn engine_needs_a_control_port_of_its_own() {
        let e = Config::from_toml(
            BASE,
            Path::new("/"),
            &env(&[("MESHGOV_SIDECAR_ENGINE_URL", "http://127.0.0.1:7600/")]),
        )
        .unwrap_err();
        assert_eq!(e.key, "listen.control");
        let with = |pairs: &[(&str, &str)]| Config::from_toml(BASE, Path::new("/"), &env(pairs));
        let c = with(&[
            ("MESHGOV_SIDECAR_ENGINE_URL", "http://127.0.0.1:7600/"),
            ("MESHGOV_SIDECAR_LISTEN_CONTROL", "127.0.0.1:8081"),
        ])
        .unwrap();
        let engine = c.engine.unwrap();
        assert_eq!(engine.url, "http://127.0.0.1:7600");
        assert_eq!(engine.poll_wait_seconds, 30);
        let e = with(&[
            ("MESHGOV_SIDECAR_ENGINE_URL", "https://x"),
            ("MESHGOV_SIDECAR_LISTEN_CONTROL", "127.0.0.1:8081"),
        ])
        .unwrap_err();
        assert_eq!(e.key, "engine.url");
        let e = with(&[
            ("MESHGOV_SIDECAR_LISTEN_DATA", "127.0.0.1:8080"),
            ("MESHGOV_SIDECAR_LISTEN_CONTROL", "127.0.0.1:8080"),
        ])
        .unwrap_err();
        assert_eq!(e.key, "listen.control");
    }

    #[test]
    fn issuers_take_keys_from_one_source_and_map_their_claims() {
        let head = BASE.split("[auth]").next().unwrap();
        let text = format!(
            r#"{head}
[auth]
leeway_seconds = 10
[[auth.issuers]]
issuer = "https://kc.example/realms/media"
audience = "meshgov"
algorithms = ["RS256"]
discovery_url = "https://kc.example/realms/media/.well-known/openid-configuration"
groups_claims = ["realm_access.roles", "groups"]
groups_strip_prefix = "/"
purpose_scope_prefix = "purpose:"
jwks_min_refresh_seconds = 30
[[auth.issuers]]
issuer = "https://login.example/tenant/v2.0"
audience = "api://meshgov"
jwks_url = "https://login.example/tenant/discovery/v2.0/keys"
"#
        );
        let c = Config::from_toml(&text, Path::new("/etc/m"), &env(&[])).unwrap();
        assert_eq!(c.auth.leeway_seconds, 10);
        let [kc, entra] = c.auth.issuers.as_slice() else {
            panic!("{:?}", c.auth.issuers)
        };
        assert_eq!(kc.algorithms, ["RS256"]);
        assert_eq!(
            kc.keys,
            IssuerKeys::Remote(crate::jwks::Endpoint::Discovery(
                "https://kc.example/realms/media/.well-known/openid-configuration".into()
            ))
        );
        assert_eq!(kc.claims.groups_claims, ["realm_access.roles", "groups"]);
        assert_eq!(kc.claims.groups_strip_prefix.as_deref(), Some("/"));
        assert_eq!(kc.claims.purpose_scope_prefix.as_deref(), Some("purpose:"));
        assert_eq!(kc.refresh.min, std::time::Duration::from_secs(30));
        assert_eq!(kc.refresh.max, DEFAULT_REFRESH.max);
        assert_eq!(entra.algorithms.len(), 3);
        assert_eq!(entra.claims, ClaimMapping::default());
        let issuer = |body: &str| {
            format!(
                "{head}
[[auth.issuers]]
issuer = \"i\"\naudience = \"a\"\n{body}"
            )
        };
        for (body, key, says) in [
            ("", "auth.issuers[0]", "no keys"),
            (
                "jwks_url = \"https://x/k\"\njwks_file = \"k.json\"",
                "auth.issuers[0]",
                "not several",
            ),
            (
                "jwks_url = \"ftp://x/k\"",
                "auth.issuers[0].jwks_url",
                "https://",
            ),
            (
                "jwks_url = \"https://x/k\"\nalgorithms = [\"HS256\"]",
                "auth.issuers[0].algorithms",
                "HS256",
            ),
            (
                "jwks_url = \"https://x/k\"\ngroup_claims = [\"g\"]",
                "auth.issuers[0].group_claims",
                "unknown",
            ),
            (
                "jwks_url = \"https://x/k\"\njwks_min_refresh_seconds = 600\njwks_max_refresh_seconds = 60",
                "auth.issuers[0].jwks_max_refresh_seconds",
                "at least",
            ),
        ] {
            let e = Config::from_toml(&issuer(body), Path::new("/"), &env(&[])).unwrap_err();
            assert_eq!(e.key, key, "{body}: {e}");
            assert!(e.reason.contains(says), "{body}: {e}");
        }
        // One issuer in two places is refused.
        let both = format!(
            "{BASE}
[[auth.issuers]]
issuer = \"i\"\naudience = \"a\"\njwks_url = \"https://x/k\"\n"
        );
        let e = Config::from_toml(&both, Path::new("/"), &env(&[])).unwrap_err();
        assert_eq!(e.key, "auth.issuer", "{e}");
    }

    #[test]
    fn env_overrides_a_key() {
        let c = Config::from_toml(
            BASE,
            Path::new("/"),
            &env(&[
                ("MESHGOV_SIDECAR_AUTH_ISSUER", "other"),
                ("MESHGOV_SIDECAR_LIMITS_MAX_LIMIT", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(c.auth.issuers[0].issuer, "other");
        assert_eq!(c.limits.max_limit, 5);
    }

    #[test]
    fn the_ledger_is_embedded_or_postgres() {
        let c = Config::from_toml(BASE, Path::new("/etc/meshgov"), &env(&[])).unwrap();
        assert_eq!(c.ledger, LedgerConfig::Embedded);
        let c = Config::from_toml(
            BASE,
            Path::new("/etc/meshgov"),
            &env(&[
                ("MESHGOV_SIDECAR_PRIVACY_LEDGER", "postgres"),
                (
                    "MESHGOV_SIDECAR_PRIVACY_POSTGRES_URL",
                    "postgresql://m@127.0.0.1:5432/m",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.ledger,
            LedgerConfig::Postgres("postgresql://m@127.0.0.1:5432/m".into())
        );
        for (pairs, key) in [
            (
                vec![("MESHGOV_SIDECAR_PRIVACY_LEDGER", "sqlite")],
                "privacy.ledger",
            ),
            (
                vec![("MESHGOV_SIDECAR_PRIVACY_LEDGER", "postgres")],
                "privacy.postgres_url",
            ),
            (
                vec![
                    ("MESHGOV_SIDECAR_PRIVACY_LEDGER", "postgres"),
                    ("MESHGOV_SIDECAR_PRIVACY_POSTGRES_URL", "mysql://x"),
                ],
                "privacy.postgres_url",
            ),
        ] {
            let e = Config::from_toml(BASE, Path::new("/etc/meshgov"), &env(&pairs)).unwrap_err();
            assert_eq!(e.key, key);
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = Config::from_toml(
            BASE,
            Path::new("/"),
            &env(&[("MESHGOV_SIDECAR_LISTEN_DATA", "nowhere")]),
        )
        .unwrap_err();
        assert_eq!(e.key, "listen.data");
        let e = Config::from_toml(&BASE.replace("EdDSA", "HS256"), Path::new("/"), &env(&[]))
            .unwrap_err();
        assert_eq!(e.key, "auth.keys[0].alg");
        let e = Config::from_toml(
            &format!("{BASE}\n[limits]\nmax_limt = 3\n"),
            Path::new("/"),
            &env(&[]),
        )
        .unwrap_err();
        assert_eq!(e.key, "limits.max_limt");
        let e = Config::from_toml(
            BASE,
            Path::new("/"),
            &env(&[("MESHGOV_SIDECAR_LIMITS_MAX_LIMIT", "-1")]),
        )
        .unwrap_err();
        assert_eq!(e.key, "limits.max_limit");
        let e = Config::from_toml(
            BASE,
            Path::new("/"),
            &env(&[("MESHGOV_SIDECAR_LIMITS_UPSTREAM_STALL_TIMEOUT_MS", "0")]),
        )
        .unwrap_err();
        assert_eq!(e.key, "limits.upstream_stall_timeout_ms");
    }

    #[test]
    fn pseudonym_keys_come_from_files_or_inline_base64() {
        let c = Config::from_toml(
            &format!(
                "{BASE}\n[pseudonym_keys]\na = \"a.key\"\nb = {{ file = \"/k/b.key\" }}\nc = {{ base64 = \"AAEC\" }}\n"
            ),
            Path::new("/etc/m"),
            &env(&[]),
        )
        .unwrap();
        assert_eq!(
            c.pseudonym_keys["a"],
            SecretSource::File("/etc/m/a.key".into())
        );
        assert_eq!(c.pseudonym_keys["b"], SecretSource::File("/k/b.key".into()));
        assert_eq!(c.pseudonym_keys["c"], SecretSource::Inline(vec![0, 1, 2]));
        assert_eq!(format!("{:?}", c.pseudonym_keys["c"]), "Inline(3 bytes)");
        for bad in ["{ base64 = \"not base64!\" }", "{ path = \"x\" }", "3"] {
            let e = Config::from_toml(
                &format!("{BASE}\n[pseudonym_keys]\nuser-identity = {bad}\n"),
                Path::new("/"),
                &env(&[]),
            )
            .unwrap_err();
            assert_eq!(e.key, "pseudonym_keys.user-identity", "{bad}");
        }
    }
}
