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

use crate::app::App;
use crate::app::lock;
use crate::body::Body;
use crate::clock;
use crate::error::ApiError;
use crate::persist;
use crate::respond::{client_request_id, echo_client_id, json, request_id};
use crate::state::BundleError;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use meshgov_audit::{Decision, Event, Kind};
use meshgov_wire::{Nack, NackCode, PushOutcome};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::Instrument as _;

/// The control port's messages (see `meshgov-wire`): a bundle accepted
/// (or already in force), the last one refused, and the status document.
pub use meshgov_wire::{Ack, BundleStatus, ControlStatus, Refusal, ServingState};

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
    let token = crate::app::single_authorization(req.headers())?
        .and_then(|v| std::str::from_utf8(v).ok())
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

/// How long a push waits for the one in progress before it gets 429.
const PUSH_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Handles one control-port request. Never panics.
pub async fn handle<B>(app: &Arc<App>, req: Request<B>) -> Response<Body>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let rid = request_id();
    let client = client_request_id(&req);
    let span = tracing::info_span!(
        "control_request",
        request_id = %rid,
        client_request_id = client.as_deref(),
        path = tracing::field::Empty
    );
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
    let mut resp = control_in(app, req, r, rid, client.clone())
        .instrument(span)
        .await;
    echo_client_id(&mut resp, client.as_deref());
    resp
}

async fn control_in<B>(
    app: &Arc<App>,
    req: Request<B>,
    route: Result<Route, ApiError>,
    rid: String,
    client: Option<String>,
) -> Response<Body>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let result = match route {
        Err(e) => Err(e),
        Ok(Route::PutBundle) => Ok(put_bundle(app, req, &rid, client).await),
        Ok(Route::GetBundle) => match authorize_engine(app, &req) {
            Ok(()) => get_bundle(app, &rid).await,
            Err(e) => Err(e),
        },
        Ok(Route::Status) => authorize_engine(app, &req)
            .map(|()| json(StatusCode::OK, &rid, &app.control_status(clock::now_unix()))),
        Ok(Route::Audit) => authorize_engine(app, &req)
            .map(|()| crate::audit_feed::respond(&app.audit, req.uri().query())),
    };
    result.unwrap_or_else(|e| {
        tracing::info!(
            status = e.status.as_u16(),
            error = e.code,
            "control request refused"
        );
        crate::respond::error(&rid, &e)
    })
}

/// `PUT /control/v1/bundle`: every outcome, a refusal before the body is
/// read whole included, is one `bundle_push` event in the audit log.
async fn put_bundle<B>(
    app: &Arc<App>,
    req: Request<B>,
    rid: &str,
    client: Option<String>,
) -> Response<Body>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut ev = Event::new(Kind::Decision, clock::now_ms());
    ev.request_id = Some(rid.to_string());
    ev.client_request_id = client;
    ev.action = Some("bundle_push".into());
    let resp = match push(app, req, rid, &mut ev).await {
        Ok(resp) => resp,
        Err(e) => {
            ev.error = Some(e.code.to_string());
            crate::respond::error(rid, &e)
        }
    };
    ev.decision.get_or_insert(Decision::Error);
    ev.status = Some(resp.status().as_u16());
    // The push has taken effect (or not) already; a log that cannot take
    // the event has failed, and reads are refused until it is back.
    if let Err(e) = app.audit.submit(ev).await {
        tracing::error!(request_id = %rid, "cannot audit the bundle push: {e}");
    }
    resp
}

/// Reads, verifies, persists and swaps a pushed bundle; notes the outcome
/// in `ev`.
async fn push<B>(
    app: &Arc<App>,
    req: Request<B>,
    rid: &str,
    ev: &mut Event,
) -> Result<Response<Body>, ApiError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = app.limits.max_bundle_bytes;
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            NackCode::TooLarge,
            format!("bundles are at most {limit} bytes (limits.max_bundle_bytes)"),
        )
    };
    // A declared length over the limit is refused before anything is read.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let (status, code, reason) = too_large();
        ev.error = Some(code.to_string());
        return Ok(nack(app, rid, status, code, reason));
    }
    // One push at a time: another waits briefly, then is told to retry.
    let Ok(Ok(_slot)) =
        tokio::time::timeout(PUSH_SLOT_WAIT, app.control.push_slot.0.acquire()).await
    else {
        let mut resp = crate::respond::error(
            rid,
            &ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "busy",
                "another bundle push is being applied; retry shortly",
            ),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
        ev.error = Some("busy".into());
        return Ok(resp);
    };
    let read = tokio::time::timeout(
        std::time::Duration::from_millis(app.limits.body_read_timeout_ms),
        http_body_util::Limited::new(req.into_body(), limit).collect(),
    )
    .await
    .map_err(|_| ApiError::body_timeout(app.limits.body_read_timeout_ms))?;
    let body = match read {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let (status, code, reason) = if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    NackCode::Malformed,
                    format!("the request body could not be read: {e}"),
                )
            };
            ev.error = Some(code.to_string());
            return Ok(nack(app, rid, status, code, reason));
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
    Ok(match r {
        Ok(ack) => {
            ev.decision = Some(Decision::Allow);
            ev.bundle_revision = Some(ack.revision);
            ev.bundle_digest = Some(ack.digest.clone());
            json(StatusCode::OK, rid, &PushOutcome::Ack(ack))
        }
        Err(e) => {
            let status = match &e {
                BundleError::Rollback { .. } | BundleError::RevisionConflict { .. } => {
                    StatusCode::CONFLICT
                }
                BundleError::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
                BundleError::Rejected {
                    code: NackCode::TooLarge,
                    ..
                } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            ev.error = Some(e.code().to_string());
            nack(app, rid, status, e.code(), e.to_string())
        }
    })
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
fn nack(
    app: &App,
    rid: &str,
    status: StatusCode,
    code: NackCode,
    reason: String,
) -> Response<Body> {
    let active_revision = app.bundle.current().map(|b| b.meta.revision);
    json(
        status,
        rid,
        &PushOutcome::Nack(Nack {
            code,
            reason,
            active_revision,
        }),
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
            // Before the first bundle, waiting is normal; a refused bundle
            // was logged as an error when it arrived.
            ServingState::NoBundle => tracing::info!(
                engine_error = engine_error.as_deref(),
                "refusing reads (503) until the first bundle arrives: {}",
                s.reason.unwrap_or_default()
            ),
            ServingState::Expired => tracing::error!(
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
