//! The control port: where the engine delivers bundles and reads status.
//!
//! A separate listener from the data port (`listen.control`):
//!
//! | route | auth | what |
//! | --- | --- | --- |
//! | `PUT /control/v1/bundle` | none: the bundle's signature is its proof | verify, persist, swap; ACK or NACK (audited) |
//! | `GET /control/v1/bundle` | control token | the signed bundle in force, byte for byte (`etag`: its digest) |
//! | `GET /control/v1/status` | control token | revision, digest, times, staleness, last refusal, engine link, audit head and checkpoint key |
//! | `GET /control/v1/audit?after=SEQ` | control token | the audit stream for collection (see [`crate::audit_feed`]) |
//!
//! Every route but the bundle push needs `Authorization: Bearer mgc1.…`, a
//! control token signed by a trusted governance key (see
//! [`meshgov_bundle::verify_control_token`]). Consumer JWTs are another
//! format with another audience and never pass.
//!
//! Accepting a bundle ([`App::accept_bundle`]) is serialized by one lock,
//! but requests never take it: they read the [`crate::state::BundleSlot`],
//! so a swap never stalls a read.

use crate::body::Body;
use crate::clock;
use crate::engine_link::LinkStatus;
use crate::error::ApiError;
use crate::persist;
use crate::pipeline::{App, json, request_id};
use crate::state::{ActiveBundle, BundleError, Unavailable, verify_bundle};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use meshgov_audit::{Decision, Event, Kind};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tracing::Instrument as _;

/// A bundle accepted (or already in force).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub revision: u64,
    /// `sha256:<hex>` of the signed payload.
    pub digest: String,
    /// The same revision and digest were already in force: nothing changed.
    pub noop: bool,
}

/// The last bundle this sidecar refused, for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub code: &'static str,
    pub reason: String,
    pub at: String,
}

/// What the control port keeps beside the bundle slot.
#[derive(Default)]
pub struct ControlState {
    /// Serializes verify → persist → swap, so two deliveries (a push and a
    /// long-poll answer) cannot interleave their rollback checks.
    apply: Mutex<()>,
    /// Where the last good bundle is persisted.
    pub state_dir: PathBuf,
    instance_id: OnceLock<String>,
    last_refusal: Mutex<Option<Refusal>>,
    link: Mutex<Option<LinkStatus>>,
    /// The bundle replaced by the last swap. Kept until the next swap so
    /// that freeing it (thousands of compiled policies) happens here, on the
    /// control path, and not in whichever read drops the last reference.
    retired: Mutex<Option<Arc<ActiveBundle>>>,
    /// The last serving state the expiry watch logged (see [`watch_expiry`]).
    logged_state: AtomicU8,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // INVARIANT: nothing panics while holding these locks; if something
    // did, the data (plain values) is still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ControlState {
    pub fn new(state_dir: PathBuf) -> ControlState {
        ControlState {
            state_dir,
            ..ControlState::default()
        }
    }

    /// Sets this sidecar's fleet id (once, at start).
    pub fn set_instance_id(&self, id: String) {
        let _ = self.instance_id.set(id);
    }

    pub fn instance_id(&self) -> Option<&str> {
        self.instance_id.get().map(String::as_str)
    }

    pub fn last_refusal(&self) -> Option<Refusal> {
        lock(&self.last_refusal).clone()
    }

    pub fn link(&self) -> Option<LinkStatus> {
        lock(&self.link).clone()
    }

    /// Updates the engine link's status in place.
    pub fn update_link(&self, f: impl FnOnce(&mut LinkStatus)) {
        if let Some(l) = lock(&self.link).as_mut() {
            f(l);
        }
    }

    pub fn set_link(&self, l: LinkStatus) {
        *lock(&self.link) = Some(l);
    }
}

impl App {
    /// Verifies a signed bundle (signature against the trusted keys, mesh,
    /// product slice, expiry), refuses rollbacks (a lower revision) and
    /// revision reuse (the same revision with another digest), persists it
    /// atomically to the state directory, then swaps it in. The same
    /// revision and digest again is a no-op ACK.
    ///
    /// On any refusal the bundle in force stays in force, and the refusal
    /// is logged and kept for status.
    pub fn accept_bundle(&self, envelope: &[u8], now_unix: i64) -> Result<Ack, BundleError> {
        self.apply_bundle(envelope, now_unix, true)
    }

    /// Loads the state directory's persisted bundle at start. Nothing to
    /// load is `Ok(None)`.
    pub fn restore_persisted(&self, now_unix: i64) -> Result<Option<Ack>, BundleError> {
        let dir = &self.control.state_dir;
        let bytes = persist::read_bundle(dir).map_err(|e| {
            BundleError::rejected(
                "unreadable",
                format!("cannot read `{}`: {e}", persist::bundle_path(dir).display()),
            )
        })?;
        match bytes {
            None => Ok(None),
            // Already on disk: no need to write it again.
            Some(b) => self.apply_bundle(&b, now_unix, false).map(Some),
        }
    }

    fn apply_bundle(
        &self,
        envelope: &[u8],
        now_unix: i64,
        persist: bool,
    ) -> Result<Ack, BundleError> {
        let _serial = lock(&self.control.apply);
        let span = tracing::info_span!(
            "bundle_swap",
            bytes = envelope.len(),
            revision = tracing::field::Empty,
        )
        .entered();
        let r = self.verify_and_swap(envelope, now_unix, persist);
        match &r {
            Ok(a) if !a.noop => {
                span.record("revision", a.revision);
                self.metrics.bundle_swaps.inc();
                tracing::info!(revision = a.revision, digest = %a.digest, "bundle accepted and in force");
            }
            Ok(_) => {}
            Err(e) => {
                self.metrics.bundle_refused(e.code());
                tracing::warn!(code = e.code(), "bundle refused: {e}");
                *lock(&self.control.last_refusal) = Some(Refusal {
                    code: e.code(),
                    reason: e.to_string(),
                    at: clock::rfc3339(now_unix),
                });
            }
        }
        r
    }

    fn verify_and_swap(
        &self,
        envelope: &[u8],
        now_unix: i64,
        persist: bool,
    ) -> Result<Ack, BundleError> {
        let product = self.descriptor.product_id();
        let current = self.bundle.current();
        let (policies, meta) = verify_bundle(
            envelope,
            &self.trust,
            &self.mesh,
            &product,
            now_unix,
            current.as_ref().map(|c| &c.policies),
        )?;
        if let Some(cur) = current {
            if meta.revision < cur.meta.revision {
                return Err(BundleError::Rollback {
                    offered: meta.revision,
                    active: cur.meta.revision,
                });
            }
            if meta.revision == cur.meta.revision {
                if meta.digest == cur.meta.digest {
                    return Ok(Ack {
                        revision: meta.revision,
                        digest: meta.digest,
                        noop: true,
                    });
                }
                return Err(BundleError::RevisionConflict {
                    revision: meta.revision,
                    active_digest: cur.meta.digest.clone(),
                });
            }
        }
        let b = ActiveBundle::new(policies, &self.descriptor, meta, now_unix)?;
        if persist {
            let dir = &self.control.state_dir;
            persist::write_bundle(dir, envelope).map_err(|e| {
                BundleError::Persist(format!("`{}`: {e}", persist::bundle_path(dir).display()))
            })?;
        }
        let ack = Ack {
            revision: b.meta.revision,
            digest: b.meta.digest.clone(),
            noop: false,
        };
        let replaced = self.bundle.install(b);
        // The bundle retired by the previous swap is freed here.
        *lock(&self.control.retired) = replaced;
        Ok(ack)
    }

    /// What the control port's status route reports.
    pub fn control_status(&self, now_unix: i64) -> ControlStatus {
        let bundle = self.bundle.current().map(|b| BundleStatus {
            revision: b.meta.revision,
            digest: b.meta.digest.clone(),
            created_at: clock::rfc3339(b.meta.created_at_unix),
            expires_at: clock::rfc3339(b.meta.expires_at_unix),
            loaded_at: clock::rfc3339(b.loaded_at_unix),
            age_seconds: now_unix.saturating_sub(b.meta.created_at_unix),
            expires_in_seconds: b.meta.expires_at_unix.saturating_sub(now_unix),
        });
        let (state, reason) = match self.bundle.valid_at(now_unix) {
            Ok(_) => (ServingState::Serving, None),
            Err(u @ Unavailable::Expired { .. }) => (ServingState::Expired, Some(u.reason())),
            Err(u) => (ServingState::NoBundle, Some(u.reason())),
        };
        ControlStatus {
            instance_id: self.control.instance_id().map(str::to_string),
            mesh: self.mesh.clone(),
            product: self.descriptor.product_id(),
            state,
            reason,
            bundle,
            last_refusal: self.control.last_refusal(),
            engine: self.control.link(),
            trusted_keys: self.trust.keyids().map(str::to_string).collect(),
            audit: crate::audit_feed::status(&self.audit),
        }
    }
}

/// Whether the sidecar serves reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServingState {
    Serving,
    /// The bundle in force has expired: reads get 503.
    Expired,
    /// No valid bundle was ever loaded: reads get 503.
    NoBundle,
}

/// The bundle in force, as status reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleStatus {
    pub revision: u64,
    pub digest: String,
    pub created_at: String,
    pub expires_at: String,
    pub loaded_at: String,
    /// Seconds since the engine built it: staleness.
    pub age_seconds: i64,
    /// Negative once expired.
    pub expires_in_seconds: i64,
}

/// `GET /control/v1/status`. One struct, so later concerns (plugins,
/// privacy budget, the audit head and checkpoint key) add fields here.
#[derive(Debug, Clone, Serialize)]
pub struct ControlStatus {
    pub instance_id: Option<String>,
    pub mesh: String,
    pub product: String,
    pub state: ServingState,
    /// Why reads are refused, when they are.
    pub reason: Option<String>,
    pub bundle: Option<BundleStatus>,
    pub last_refusal: Option<Refusal>,
    pub engine: Option<LinkStatus>,
    /// Key ids of the governance keys trusted for bundles and control tokens.
    pub trusted_keys: Vec<String>,
    /// The audit log's head, checkpoint and checkpoint-signing public key.
    pub audit: serde_json::Value,
}

/// The control port's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    PutBundle,
    GetBundle,
    Status,
    Audit,
}

fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let allowed = match (path, method) {
        ("/control/v1/bundle", &Method::PUT) => return Ok(Route::PutBundle),
        ("/control/v1/bundle", &Method::GET) => return Ok(Route::GetBundle),
        ("/control/v1/status", &Method::GET) => return Ok(Route::Status),
        ("/control/v1/audit", &Method::GET) => return Ok(Route::Audit),
        ("/control/v1/bundle", _) => "GET or PUT",
        ("/control/v1/status" | "/control/v1/audit", _) => "GET",
        _ => return Err(ApiError::not_found()),
    };
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("use {allowed} on {path}"),
    ))
}

/// Checks the caller is the engine: a control token signed by a trusted
/// governance key.
fn authorize_engine<B>(app: &App, req: &Request<B>) -> Result<(), ApiError> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::unauthorized(
                "the control port needs `Authorization: Bearer <control token>` (`meshgov control-token`)",
            )
        })?;
    meshgov_bundle::verify_control_token(token.trim(), &app.trust, clock::now_unix())
        .map(|_| ())
        .map_err(|e| ApiError::unauthorized(e.to_string()))
}

/// Handles one control-port request. Never panics.
pub async fn handle<B>(app: &Arc<App>, req: Request<B>) -> Response<Body>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let rid = request_id(&req);
    let span =
        tracing::info_span!("control_request", request_id = %rid, path = tracing::field::Empty);
    let r = route(req.method(), req.uri().path());
    if let Ok(r) = &r {
        span.record(
            "path",
            match r {
                Route::PutBundle => "bundle",
                Route::GetBundle => "bundle_get",
                Route::Status => "status",
                Route::Audit => "audit",
            },
        );
    }
    control_in(app, req, r, rid).instrument(span).await
}

async fn control_in<B>(
    app: &Arc<App>,
    req: Request<B>,
    route: Result<Route, ApiError>,
    rid: String,
) -> Response<Body>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let result = match route {
        Err(e) => Err(e),
        Ok(Route::PutBundle) => put_bundle(app, req, &rid).await,
        Ok(Route::GetBundle) => match authorize_engine(app, &req) {
            Ok(()) => get_bundle(app, &rid).await,
            Err(e) => Err(e),
        },
        Ok(Route::Status) => authorize_engine(app, &req).map(|()| {
            let s = app.control_status(clock::now_unix());
            json(
                StatusCode::OK,
                &rid,
                &serde_json::to_value(&s).unwrap_or_default(),
            )
        }),
        Ok(Route::Audit) => authorize_engine(app, &req)
            .map(|()| crate::audit_feed::respond(&app.audit, req.uri().query())),
    };
    result.unwrap_or_else(|e| {
        tracing::info!(
            status = e.status.as_u16(),
            error = e.code,
            "control request refused"
        );
        crate::pipeline::error(&rid, &e)
    })
}

async fn put_bundle<B>(
    app: &Arc<App>,
    req: Request<B>,
    rid: &str,
) -> Result<Response<Body>, ApiError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = meshgov_bundle::DEFAULT_MAX_ENVELOPE_BYTES;
    let read = tokio::time::timeout(
        std::time::Duration::from_millis(app.limits.body_read_timeout_ms),
        http_body_util::Limited::new(req.into_body(), limit).collect(),
    )
    .await
    .map_err(|_| ApiError::body_timeout(app.limits.body_read_timeout_ms))?;
    let body = match read {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_large = e.is::<http_body_util::LengthLimitError>();
            let (status, code, reason) = if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("bundles are at most {limit} bytes"),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    format!("the request body could not be read: {e}"),
                )
            };
            return Ok(nack(app, rid, status, code, &reason));
        }
    };
    let worker = Arc::clone(app);
    let span = tracing::Span::current();
    // Verification is CPU work (hashing, Cedar parsing) and persisting
    // fsyncs: keep both off the async workers that serve reads.
    let r = tokio::task::spawn_blocking(move || {
        span.in_scope(|| worker.accept_bundle(&body, clock::now_unix()))
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the bundle could not be processed",
        )
    })?;
    let mut ev = Event::new(Kind::Decision, clock::now_ms());
    ev.request_id = Some(rid.to_string());
    ev.action = Some("bundle_push".into());
    let resp = match r {
        Ok(ack) => {
            ev.decision = Some(Decision::Allow);
            ev.bundle_revision = Some(ack.revision);
            ev.bundle_digest = Some(ack.digest.clone());
            json(
                StatusCode::OK,
                rid,
                &serde_json::json!({"result": "ack", "revision": ack.revision, "digest": ack.digest, "noop": ack.noop}),
            )
        }
        Err(e) => {
            let status = match &e {
                BundleError::Rollback { .. } | BundleError::RevisionConflict { .. } => {
                    StatusCode::CONFLICT
                }
                BundleError::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
                BundleError::Rejected {
                    code: "too_large", ..
                } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            ev.decision = Some(Decision::Error);
            ev.error = Some(e.code().into());
            nack(app, rid, status, e.code(), &e.to_string())
        }
    };
    ev.status = Some(resp.status().as_u16());
    // The push has taken effect (or not) already; a log that cannot take
    // the event has failed, and reads are refused until it is back.
    if let Err(e) = app.audit.submit(ev).await {
        tracing::error!(request_id = %rid, "cannot audit the bundle push: {e}");
    }
    Ok(resp)
}

/// `GET /control/v1/bundle`: the persisted envelope of the bundle in force.
/// Read under the apply lock, so it is never a bundle mid-swap.
async fn get_bundle(app: &Arc<App>, rid: &str) -> Result<Response<Body>, ApiError> {
    let worker = Arc::clone(app);
    let read = tokio::task::spawn_blocking(move || {
        let _serial = lock(&worker.control.apply);
        let active = worker.bundle.current().map(|b| b.meta.digest.clone());
        persist::read_bundle(&worker.control.state_dir).map(|bytes| bytes.zip(active))
    })
    .await;
    match read {
        Ok(Ok(Some((bytes, digest)))) => {
            let mut r = Response::new(Body::full(bytes));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            if let Ok(v) = http::HeaderValue::from_str(&format!("\"{digest}\"")) {
                h.insert(header::ETAG, v);
            }
            if let Ok(v) = http::HeaderValue::from_str(rid) {
                h.insert("x-request-id", v);
            }
            Ok(r)
        }
        Ok(Ok(None)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_bundle",
            "no bundle is in force",
        )),
        Ok(Err(e)) => {
            tracing::error!(request_id = %rid, "cannot read the persisted bundle: {e}");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "unreadable",
                "the bundle in force cannot be read from the state directory",
            ))
        }
        Err(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the bundle could not be read",
        )),
    }
}

/// A NACK: `{"result": "nack", "code", "reason", "active_revision"}`.
fn nack(app: &App, rid: &str, status: StatusCode, code: &str, reason: &str) -> Response<Body> {
    let active = app.bundle.current().map(|b| b.meta.revision);
    json(
        status,
        rid,
        &serde_json::json!({"result": "nack", "code": code, "reason": reason, "active_revision": active}),
    )
}

/// Logs when the bundle in force expires (reads then get 503) and when a
/// fresh one restores service, checking once a second until `shutdown`.
pub async fn watch_expiry(app: Arc<App>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => return,
        }
        let s = app.control_status(clock::now_unix());
        let code = s.state as u8 + 1;
        if app.control.logged_state.swap(code, Ordering::Relaxed) == code {
            continue;
        }
        let engine_error = s.engine.and_then(|l| l.last_error);
        match s.state {
            ServingState::Serving => tracing::info!(
                revision = s.bundle.map(|b| b.revision),
                "serving reads under a valid bundle"
            ),
            ServingState::Expired | ServingState::NoBundle => tracing::error!(
                engine_error = engine_error.as_deref(),
                "refusing reads (503): {}",
                s.reason.unwrap_or_default()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn routes_and_methods() {
        assert_eq!(
            route(&Method::PUT, "/control/v1/bundle").unwrap(),
            Route::PutBundle
        );
        assert_eq!(
            route(&Method::GET, "/control/v1/status").unwrap(),
            Route::Status
        );
        assert_eq!(
            route(&Method::GET, "/control/v1/bundle").unwrap(),
            Route::GetBundle
        );
        assert_eq!(
            route(&Method::POST, "/control/v1/bundle")
                .unwrap_err()
                .status,
            405
        );
        assert_eq!(
            route(&Method::GET, "/v1/ports/x/records")
                .unwrap_err()
                .status,
            404
        );
    }
}
