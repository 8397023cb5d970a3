//! The per-request steps of the data port, in order:
//!
//! 1. **authenticate** the bearer token (401);
//! 2. **parse** the request: port, window, limit, format (400);
//! 3. **load** the bundle state once (503 if none or expired);
//! 4. **plan** the read with the policy core: one Cedar `read`, one
//!    `reveal` per classified field, row filters selected (404 unknown port);
//!    plans are cached per bundle by consumer, purpose and port;
//! 5. **authorize** (403), then compile the plan into the per-record
//!    program with the pseudonym keys bound in (500 `cannot_anonymize` if a
//!    key or plugin it needs is missing: fail closed);
//! 6. **stream**: open the upstream (502), then shape record by record; a
//!    plan that calls plugins shapes batches of up to `PLUGIN_BATCH`
//!    records, one sandboxed call per plugin per batch, and answers only
//!    once the first batch went through (500 `plugin_failed` if a plugin
//!    failed; a later failure aborts the body).
//!
//! Every answer except the `/healthz` and `/readyz` probes is audited: the
//! steps fill in one decision event as they learn who asks, for what, and
//! what was decided; [`handle`] makes it durable before the response (and so
//! any body byte) leaves. A stream's completion event (records and bytes
//! actually sent) follows when it ends or breaks. If the audit log cannot
//! take the event, the answer is a 503 refusal instead.
//!
//! A plugin that fails on a read's first batch turns the read into a 500
//! refusal, audited like any other; one that fails later aborts the body,
//! and the completion event records how far it got. Aggregates have their
//! own steps in [`crate::aggregate`].

use crate::auth::Authenticator;
use crate::body::{Body, Chunk, Metered};
use crate::clock;
use crate::config::{Config, ConfigError, Limits};
use crate::control::ControlState;
use crate::error::ApiError;
use crate::metrics::{Action, Metrics};
use crate::request::{self, Format, Route, RouteError};
use crate::shape::Shaper;
use crate::state::{ActiveBundle, BundleError, BundleSlot};
use crate::upstream::{CsvSchema, Item, RecordReader, Upstream, Window, record_time};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use meshgov_anonymize::{Outcome, PluginFailure};
use meshgov_audit::{AuditLog, Decision, Event, Kind};
use meshgov_core::descriptor::{Descriptor, FieldInfo};
use meshgov_core::plan::{Asker, PlanError};
use meshgov_core::records::{KeyRing, RecordPlanError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument as _;

/// Everything a request needs, shared by all connections.
pub struct App {
    pub bundle: BundleSlot,
    /// The mesh this sidecar belongs to.
    pub mesh: String,
    /// Governance keys trusted to sign bundles.
    pub trust: meshgov_bundle::TrustStore,
    pub descriptor: Descriptor,
    /// The descriptor as plain JSON, for discovery.
    pub descriptor_doc: serde_json::Value,
    pub auth: Authenticator,
    pub upstream: Upstream,
    /// Pseudonym secrets by key scope, from config.
    pub pseudonym_keys: KeyRing,
    pub limits: Limits,
    /// Prometheus metrics (see [`crate::metrics`]).
    pub metrics: Arc<Metrics>,
    /// Set when the shutdown grace period ran out: streams cut then are
    /// audited with the outcome `shutdown`.
    pub cut_at_shutdown: Arc<AtomicBool>,
    /// The control port's state: the apply lock, the state directory, the
    /// last refusal and the engine link.
    pub control: ControlState,
    /// The tamper-evident audit log (group commit; see `meshgov-audit`).
    pub audit: Arc<AuditLog>,
    /// The privacy-budget ledger; `None` refuses aggregates (503).
    pub ledger: Option<Arc<dyn meshgov_privacy::ledger::Ledger>>,
}

/// Responses are flushed to the client in chunks of about this size.
const FLUSH_BYTES: usize = 32 * 1024;
/// Chunks in flight between the shaping task and the connection.
const CHANNEL_CHUNKS: usize = 4;
/// Records per plugin batch: one sandbox call per plugin per batch.
const PLUGIN_BATCH: usize = 1024;

impl App {
    /// Reads the descriptor and key files named by the config.
    pub fn from_config(c: &Config) -> Result<App, ConfigError> {
        let bad = |key: &str, reason: String| ConfigError {
            key: key.into(),
            reason,
        };
        let text = std::fs::read_to_string(&c.descriptor).map_err(|e| {
            bad(
                "descriptor",
                format!("cannot read `{}`: {e}", c.descriptor.display()),
            )
        })?;
        let path = c.descriptor.display().to_string();
        let descriptor =
            Descriptor::parse(&path, &text).map_err(|d| bad("descriptor", d.to_string()))?;
        let descriptor_doc: serde_json::Value =
            serde_saphyr::from_str(&text).map_err(|e| bad("descriptor", e.to_string()))?;
        let mut pseudonym_keys = KeyRing::new();
        for (scope, source) in &c.pseudonym_keys {
            let key = format!("pseudonym_keys.{scope}");
            let secret = source.read().map_err(|reason| bad(&key, reason))?;
            pseudonym_keys
                .insert(scope, &secret)
                .map_err(|reason| bad(&key, reason))?;
        }
        let mut keys = Vec::new();
        for (i, k) in c.trusted_bundle_keys.iter().enumerate() {
            keys.push(
                k.parse::<meshgov_bundle::PublicKey>()
                    .map_err(|e| bad(&format!("trusted_bundle_keys[{i}]"), e.to_string()))?,
            );
        }
        let trust = meshgov_bundle::TrustStore::from_keys(keys)
            .map_err(|e| bad("trusted_bundle_keys", e.to_string()))?;
        let audit_key = meshgov_audit::keyfile::load_or_create(&c.state_dir)
            .map_err(|e| bad("state_dir", format!("the audit signing key: {e}")))?;
        let audit = AuditLog::open(c.audit.options(), audit_key)
            .map_err(|e| bad("state_dir", format!("the audit log: {e}")))?;
        let ports = descriptor
            .ports()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.name)
            .collect();
        let metrics = Arc::new(Metrics::new(ports, c.metrics_budget_series));
        Ok(App {
            bundle: BundleSlot::default(),
            mesh: c.mesh.clone(),
            trust,
            descriptor,
            descriptor_doc,
            auth: Authenticator::new(&c.auth)?,
            upstream: Upstream::from_config(
                &c.upstream,
                Duration::from_millis(c.limits.upstream_stall_timeout_ms),
            ),
            pseudonym_keys,
            limits: c.limits.clone(),
            metrics,
            cut_at_shutdown: Arc::new(AtomicBool::new(false)),
            control: ControlState::new(c.state_dir.clone()),
            audit: Arc::new(audit),
            ledger: crate::aggregate::open_ledger(&c.ledger, Some(c.state_dir.as_path()))
                .map_err(|(key, reason)| bad(&key, reason))?,
        })
    }
}

impl App {
    /// Verifies a signed bundle and swaps it in (see [`App::accept_bundle`]:
    /// rollbacks are refused and the bundle is persisted to the state
    /// directory). On failure the previous bundle, if any, stays in force:
    /// a bad update never replaces a good one.
    pub fn load_bundle(&self, envelope: &[u8], now_unix: i64) -> Result<u64, BundleError> {
        self.accept_bundle(envelope, now_unix).map(|a| a.revision)
    }

    /// Reads and loads a bundle file.
    pub fn load_bundle_file(
        &self,
        path: &std::path::Path,
        now_unix: i64,
    ) -> Result<u64, BundleError> {
        let bytes = std::fs::read(path).map_err(|e| {
            BundleError::rejected(
                "unreadable",
                format!("cannot read `{}`: {e}", path.display()),
            )
        })?;
        self.load_bundle(&bytes, now_unix)
    }

    /// Opens `port`'s upstream over `window`. A failure is counted, logged,
    /// and answered 502 with `reason`.
    pub(crate) async fn open_upstream(
        &self,
        port: &str,
        fields: &[FieldInfo],
        window: Window,
        reason: &'static str,
    ) -> Result<RecordReader, ApiError> {
        self.upstream
            .open(
                port,
                window,
                self.limits.max_line_bytes,
                CsvSchema::new(fields),
            )
            .await
            .map_err(|e| {
                self.metrics
                    .upstream_error(self.metrics.port(Some(port)), false);
                tracing::error!("upstream failed: {e}");
                ApiError::upstream(reason)
            })
    }
}

/// A request id: the caller's `x-request-id` if it is short and plain,
/// else a fresh random one.
pub(crate) fn request_id<B>(req: &Request<B>) -> String {
    if let Some(v) = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        && !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return v.to_string();
    }
    let mut b = [0u8; 12];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    hex::encode(b)
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    rid: &str,
    body: Body,
) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(rid) {
        h.insert("x-request-id", v);
    }
    r
}

pub(crate) fn json(status: StatusCode, rid: &str, v: &serde_json::Value) -> Response<Body> {
    respond(
        status,
        "application/json",
        rid,
        Body::full(serde_json::to_vec(v).unwrap_or_default()),
    )
}

pub(crate) fn error(rid: &str, e: &ApiError) -> Response<Body> {
    respond(e.status, "application/json", rid, Body::full(e.body(rid)))
}

/// Handles one request. Never panics; every failure is an error document.
///
/// Runs inside a `request` span carrying the request id, and, once known,
/// the port, the action and the consumer (the token's subject), so every
/// log line of the request, its stream included, names them.
pub async fn handle<B>(app: &Arc<App>, req: Request<B>) -> Response<Body>
where
    B: http_body::Body + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let rid = request_id(&req);
    let span = tracing::info_span!(
        "request",
        request_id = %rid,
        port = tracing::field::Empty,
        action = tracing::field::Empty,
        consumer = tracing::field::Empty,
    );
    handle_in(app, req, rid, started).instrument(span).await
}

async fn handle_in<B>(
    app: &Arc<App>,
    req: Request<B>,
    rid: String,
    started: Instant,
) -> Response<Body>
where
    B: http_body::Body + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut ev = Event::new(Kind::Decision, clock::now_ms());
    ev.request_id = Some(rid.clone());
    let route = request::route(req.method(), req.uri().path());
    let span = tracing::Span::current();
    let action = match &route {
        Ok(Route::Records { port } | Route::Aggregate { port }) => {
            span.record("port", port.as_str());
            if matches!(route, Ok(Route::Records { .. })) {
                Action::Read
            } else {
                Action::Aggregate
            }
        }
        Ok(Route::Discovery) => Action::Discover,
        _ => Action::Other,
    };
    if action != Action::Other {
        span.record("action", action.label());
    }
    let result = match route {
        // Probes are operations, not decisions: not audited, not counted.
        Ok(Route::Healthz) => return healthz(app, &rid),
        Ok(Route::Readyz) => return readyz(app, &rid),
        Ok(Route::Discovery) => {
            ev.action = Some("discover".into());
            Ok(discovery(app, &rid))
        }
        Ok(Route::Records { port }) => records(app, &req, &port, &rid, &mut ev).await,
        Ok(Route::Aggregate { port }) => {
            ev.action = Some("aggregate".into());
            ev.port = Some(port.clone());
            crate::aggregate::aggregate(app, req, &port, &rid, &mut ev).await
        }
        Err(RouteError::NotFound) => Err(ApiError::not_found()),
        Err(RouteError::MethodNotAllowed) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not allowed here",
        )),
        Err(RouteError::BadPort(_)) => Err(ApiError::bad_request(
            "port names are ASCII letters, digits, `-` and `_`, at most 64 long",
        )),
    };
    let resp = match result {
        Ok(r) => {
            ev.decision.get_or_insert(Decision::Allow);
            r
        }
        Err(e) => {
            ev.decision = Some(if e.status == StatusCode::FORBIDDEN {
                Decision::Deny
            } else {
                Decision::Error
            });
            ev.error = Some(e.code.into());
            error(&rid, &e)
        }
    };
    ev.status = Some(resp.status().as_u16());
    let port = app.metrics.port(ev.port.as_deref());
    let decision = ev.decision.map_or(2, |d| d as usize);
    let refusal = ev.error.clone();
    let resp = audited(app, &rid, ev, resp).await;
    let status = resp.status().as_u16();
    let refusal = if status == 503 && refusal.is_none() {
        // The audit log refused the event: the answer became a refusal.
        Some("audit_unavailable".to_string())
    } else {
        refusal
    };
    let took = started.elapsed();
    app.metrics
        .request(port, action, decision, status, refusal.as_deref(), took);
    tracing::debug!(
        status,
        error = refusal.as_deref(),
        micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        "answered"
    );
    resp
}

/// Makes the decision event durable, then lets the response go. If the log
/// cannot take it, the response is dropped (its stream never starts) and
/// the answer is a 503: nothing leaves unaudited.
async fn audited(app: &App, rid: &str, ev: Event, mut resp: Response<Body>) -> Response<Body> {
    let waited = Instant::now();
    match app.audit.submit(ev).await {
        Ok(_) => {
            let waited = waited.elapsed();
            app.metrics.audit_wait(waited);
            let us = waited.as_micros();
            // The durability wait, for operators and the load benchmark.
            if let Ok(v) =
                HeaderValue::from_str(&format!("audit;dur={}.{:03}", us / 1000, us % 1000))
            {
                resp.headers_mut().insert("server-timing", v);
            }
            resp
        }
        Err(e) => {
            tracing::error!("cannot audit the decision, refusing: {e}");
            if let Body::Metered(m) = resp.into_body() {
                m.disarm();
            }
            error(rid, &ApiError::audit_unavailable())
        }
    }
}

/// Alive unless the audit log has failed: a failed log accepts nothing
/// more in this process (a failed write or `fdatasync` cannot be trusted
/// again), so only a restart, which recovers the log, brings the sidecar
/// back. Failing liveness lets the orchestrator do that.
fn healthz(app: &App, rid: &str) -> Response<Body> {
    match app.audit.failure() {
        None => json(StatusCode::OK, rid, &serde_json::json!({"status": "ok"})),
        Some(why) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            rid,
            &serde_json::json!({"status": "failed", "reason": format!("the audit log failed: {why}; restart the sidecar to recover it")}),
        ),
    }
}

fn readyz(app: &App, rid: &str) -> Response<Body> {
    if let Some(why) = app.audit.failure() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            rid,
            &serde_json::json!({"ready": false, "reason": format!("the audit log failed: {why}")}),
        );
    }
    match app.bundle.valid_at(clock::now_unix()) {
        Ok(b) => json(
            StatusCode::OK,
            rid,
            &serde_json::json!({"ready": true, "revision": b.meta.revision, "digest": b.meta.digest,
                "expires_at": clock::rfc3339(b.meta.expires_at_unix)}),
        ),
        Err(u) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            rid,
            &serde_json::json!({"ready": false, "reason": u.reason(), "engine": app.control.link()}),
        ),
    }
}

fn discovery(app: &App, rid: &str) -> Response<Body> {
    let d = &app.descriptor_doc;
    let pick = |k: &str| d.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let ports: Vec<serde_json::Value> = app
        .descriptor
        .ports()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name,
                "kind": p.kind,
                "schema": p.schema.clone().unwrap_or_else(|| p.name.clone()),
                "time_field": p.time_field,
                "records": format!("/v1/ports/{}/records", p.name),
                "formats": ["application/x-ndjson", "text/csv"],
            })
        })
        .collect();
    let schema: Vec<serde_json::Value> = app
        .descriptor
        .schema
        .iter()
        .map(|o| {
            serde_json::json!({
                "name": o.name.value,
                "description": o.description,
                "properties": o.properties.iter().map(|p| serde_json::json!({
                    "name": p.name.value,
                    "logicalType": p.logical_type.as_ref().map(|t| t.value.clone()),
                    "classification": p.classification.as_ref().map(|c| c.value.clone()),
                    "required": p.required,
                    "description": p.description,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let bundle = app.bundle.current().map(|b| {
        serde_json::json!({
            "revision": b.meta.revision,
            "digest": b.meta.digest,
            "expires_at": clock::rfc3339(b.meta.expires_at_unix),
            "valid": !b.expired_at(clock::now_unix()),
        })
    });
    json(
        StatusCode::OK,
        rid,
        &serde_json::json!({
            "product": {
                "id": app.descriptor.product_id(),
                "name": pick("name"),
                "version": pick("version"),
                "status": pick("status"),
                "domain": pick("domain"),
                "description": pick("description"),
                "team": pick("team"),
            },
            "ports": ports,
            "schema": schema,
            "slos": pick("slaProperties"),
            "bundle": bundle,
            "authentication": {
                "scheme": "Bearer",
                "token": "JWT",
                "issuer": app.auth.issuer(),
                "audience": app.auth.audience(),
                "algorithms": app.auth.algorithms(),
                "claims": {"subject": "sub", "groups": app.auth.groups_claim(), "purpose": app.auth.purpose_claim()},
            },
        }),
    )
}

/// The consumer behind the request's bearer token (401 otherwise), noted
/// in the audit event: subject, groups and purpose, never the token.
pub(crate) fn authenticate(
    app: &App,
    headers: &http::HeaderMap,
    ev: &mut Event,
) -> Result<crate::auth::Identity, ApiError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let who = app
        .auth
        .authenticate(auth)
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    tracing::Span::current().record("consumer", who.principal.id.as_str());
    ev.consumer = Some(who.principal.id.clone());
    ev.groups = who.principal.groups.clone();
    ev.purpose = Some(who.purpose.clone());
    Ok(who)
}

/// The bundle in force at `now` (503 otherwise), noted in the audit event.
pub(crate) fn load_bundle(
    app: &App,
    now: i64,
    ev: &mut Event,
) -> Result<Arc<ActiveBundle>, ApiError> {
    let bundle = app
        .bundle
        .valid_at(now)
        .map_err(|u| ApiError::unavailable(u.reason()))?;
    ev.bundle_revision = Some(bundle.meta.revision);
    ev.bundle_digest = Some(bundle.meta.digest.clone());
    Ok(bundle)
}

async fn records<B>(
    app: &Arc<App>,
    req: &Request<B>,
    port: &str,
    rid: &str,
    ev: &mut Event,
) -> Result<Response<Body>, ApiError> {
    ev.action = Some("read".into());
    ev.port = Some(port.to_string());
    // 1. authenticate
    let who = authenticate(app, req.headers(), ev)?;
    // 2. parse
    let q = request::parse_records_query(req.uri().query(), app.limits.max_limit)
        .map_err(ApiError::bad_request)?;
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = request::format_from_accept(accept);
    // 3. load the bundle once; this Arc is the request's policy for its life.
    let now = clock::now_unix();
    let bundle = load_bundle(app, now, ev)?;
    let port_info = bundle
        .view
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
    let plan = bundle
        .plans
        .plan_read(&bundle.policies, &bundle.view, port, asker)
        .map_err(|e| match e {
            PlanError::UnknownPort(_) => ApiError::unknown_port(port),
            // A principal or purpose the policy engine cannot express is a denial.
            _ => ApiError::forbidden(),
        })?;
    // 5. authorize
    ev.policies = plan.decision.policies.clone();
    if !plan.decision.allowed {
        tracing::debug!(purpose = %who.purpose, "denied by policy");
        return Err(ApiError::forbidden());
    }
    ev.transforms = plan
        .fields
        .iter()
        .map(|f| (f.name.clone(), f.treatment.label()))
        .collect();
    let record_plan = plan.record_plan(&app.pseudonym_keys, &bundle.plugins).map_err(|e| {
        tracing::error!("cannot apply the read plan: {e}");
        ApiError::cannot_anonymize(match e {
            RecordPlanError::MissingKey(_) => {
                "this read needs a pseudonym key that is not configured on this sidecar; nothing was served, and the operator must add it"
            }
            RecordPlanError::Unavailable(_) => {
                "this read needs a transform or validator that is not available in this sidecar; nothing was served"
            }
            RecordPlanError::InvalidRule { .. } => {
                "the policy bundle holds a rule this sidecar cannot apply; nothing was served"
            }
        })
    })?;
    let shaper = Shaper::new(record_plan, format);
    // 6. stream
    let reader = app
        .open_upstream(
            port,
            &port_info.fields,
            window,
            "the product's upstream could not be read",
        )
        .await?;
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let stalled = Arc::new(AtomicBool::new(false));
    let mut completion = Event::new(Kind::Completion, 0);
    completion.request_id = Some(rid.to_string());
    completion.consumer = ev.consumer.clone();
    completion.port = Some(port.to_string());
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
        stall: Duration::from_millis(app.limits.write_stall_timeout_ms),
        stalled: Arc::clone(&stalled),
        first_batch: Some(first_tx),
    };
    tokio::spawn(job.run(tx).in_current_span());
    // (The job has logged and counted a failure.)
    if uses_plugins && let Ok(Err(failure)) = first_rx.await {
        return Err(ApiError::plugin_failed(&failure));
    }
    let ct = match format {
        Format::Ndjson => "application/x-ndjson",
        Format::Csv => "text/csv; charset=utf-8",
    };
    let body = Metered::new(
        rx,
        stalled,
        Arc::clone(&app.audit),
        completion,
        crate::body::Meter::start(app, port),
    );
    let mut resp = respond(StatusCode::OK, ct, rid, Body::Metered(body));
    if let Ok(v) = HeaderValue::from_str(&bundle.meta.revision.to_string()) {
        resp.headers_mut().insert("x-meshgov-bundle-revision", v);
    }
    Ok(resp)
}

struct StreamJob {
    app: Arc<App>,
    shaper: Shaper,
    reader: crate::upstream::RecordReader,
    window: Window,
    time_field: Option<String>,
    limit: Option<u64>,
    port: crate::metrics::PortIx,
    stall: Duration,
    stalled: Arc<AtomicBool>,
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
    async fn send(
        &self,
        tx: &mpsc::Sender<Result<Chunk, std::io::Error>>,
        buf: &mut Vec<u8>,
        records: &mut u64,
    ) -> bool {
        let chunk = Bytes::from(std::mem::replace(
            buf,
            Vec::with_capacity(FLUSH_BYTES + 4096),
        ));
        let n = std::mem::take(records);
        // A client that reads nothing for `stall` loses the response.
        match tokio::time::timeout(self.stall, tx.send(Ok((chunk, n)))).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.stalled.store(true, Ordering::Release);
                false
            }
        }
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

    async fn run(mut self, tx: mpsc::Sender<Result<Chunk, std::io::Error>>) {
        let mut buf = Vec::with_capacity(FLUSH_BYTES + 4096);
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
            // Aborts the chunked body, so the client sees a truncated response
            // rather than a complete-looking one.
            let _ = tx.send(Err(std::io::Error::other("upstream failed"))).await;
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
