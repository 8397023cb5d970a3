//! The engine's HTTP API (`meshgov serve --listen`):
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | the fleet page, for people |
//! | `GET /v1/fleet` | the fleet as JSON: releases, rollout, last build, every sidecar |
//! | `POST /v1/sidecars` | register `{id, product, mesh, control_url, revision, digest}` |
//! | `GET /v1/bundle?sidecar=ID&wait=S` | long poll; `If-None-Match: "<digest>"`; 200 with the bundle, or 304 after `S` seconds |
//! | `POST /v1/sidecars/{id}/report` | `{"result": "ack", revision, digest}` or `{"result": "nack", code, reason, active_revision}` after a pull |
//! | `GET /healthz` | alive |
//! | `GET /metrics` | Prometheus metrics (see [`crate::metrics`]) |
//!
//! The messages are `meshgov-wire`'s types.

use crate::engine::{Engine, PollAnswer};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use meshgov_wire::{
    BUNDLE_REVISION_HEADER, ErrorBody, PollQuery, PullReport, Registration, RegistrationAnswer,
    ReportAnswer, path,
};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Registration and report bodies are small.
const MAX_BODY: usize = 64 * 1024;
/// A request body must arrive whole within this (a client dripping it
/// would otherwise hold its connection and task for ever).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest long poll.
const MAX_WAIT_SECS: u64 = 300;

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Resp {
    respond(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn error(status: StatusCode, code: &str, reason: impl Into<String>) -> Resp {
    json(status, &ErrorBody::new(code, reason))
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Resp> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request bodies are at most {MAX_BODY} bytes"),
        )
    };
    // A declared length over the limit is refused before anything is read.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let body = tokio::time::timeout(
        BODY_TIMEOUT,
        http_body_util::Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    .map_err(|_| {
        error(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )
    })?
    .map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            too_large()
        } else {
            error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("cannot read the body: {e}"),
            )
        }
    })?
    .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid JSON: {e}"),
        )
    })
}

/// Handles one request. Never panics.
pub async fn handle(engine: &Arc<Engine>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    // What only sidecars call: registration, the long poll, reports.
    let sidecar_route = match method {
        Method::POST => path == path::SIDECARS || path::report_id(&path).is_some(),
        Method::GET => path == path::POLL,
        _ => false,
    };
    if sidecar_route && let Some(refused) = unauthorized_sidecar(engine, &req) {
        return refused;
    }
    match (method, path.as_str()) {
        (Method::GET, "/") => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::page::HTML,
        ),
        (Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (Method::GET, path::FLEET) => json(StatusCode::OK, &engine.fleet()),
        (Method::GET, "/metrics") => respond(
            StatusCode::OK,
            meshgov_metrics::CONTENT_TYPE,
            engine.render_metrics(),
        ),
        (Method::POST, path::SIDECARS) => match read_json::<Registration>(req).await {
            Err(r) => r,
            Ok(reg) => {
                let answer = RegistrationAnswer::new(&reg.id);
                match engine.register(reg) {
                    Ok(()) => json(StatusCode::OK, &answer),
                    Err(e) => error(StatusCode::BAD_REQUEST, "bad_registration", e),
                }
            }
        },
        (Method::GET, path::POLL) => poll(engine, &req).await,
        (Method::POST, p) if path::report_id(p).is_some() => {
            let id = path::report_id(p).unwrap_or_default().to_string();
            match read_json::<PullReport>(req).await {
                Err(r) => r,
                Ok(rep) => {
                    if engine.report(&id, rep) {
                        json(StatusCode::OK, &ReportAnswer { recorded: true })
                    } else {
                        error(StatusCode::NOT_FOUND, "unknown_sidecar", "register first")
                    }
                }
            }
        }
        (_, "/" | "/healthz" | "/metrics" | path::FLEET | path::SIDECARS | path::POLL) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "see the engine's API in the README",
        ),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such route"),
    }
}

/// The refusal (401) of a request without the registration token (or a
/// control token): an arbitrary host must not register and receive slices.
fn unauthorized_sidecar(engine: &Engine, req: &Request<Incoming>) -> Option<Resp> {
    let auth = req.headers().get_all(header::AUTHORIZATION);
    let mut values = auth.iter();
    let (first, second) = (values.next(), values.next());
    if second.is_some() {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "send one `Authorization` header",
        ));
    }
    let why = engine
        .sidecar_authorized(first.map(HeaderValue::as_bytes))
        .err()?;
    tracing::warn!(
        path = req.uri().path(),
        "sidecar API request refused: {why}"
    );
    Some(error(StatusCode::UNAUTHORIZED, "unauthorized", why))
}

async fn poll(engine: &Arc<Engine>, req: &Request<Incoming>) -> Resp {
    let q = match PollQuery::parse(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    let wait = q.wait_secs.map_or(30, |w| w.min(MAX_WAIT_SECS));
    let held = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| meshgov_wire::etag_digest(v).to_string());
    match engine
        .poll(&q.sidecar, held.as_deref(), Duration::from_secs(wait))
        .await
    {
        PollAnswer::UnknownSidecar => error(
            StatusCode::NOT_FOUND,
            "unknown_sidecar",
            "this sidecar is not registered; POST /v1/sidecars first",
        ),
        PollAnswer::NotModified => {
            let mut r = respond(StatusCode::NOT_MODIFIED, "application/json", Bytes::new());
            if let Some(h) = held.and_then(|h| HeaderValue::from_str(&meshgov_wire::etag(&h)).ok())
            {
                r.headers_mut().insert(header::ETAG, h);
            }
            r
        }
        PollAnswer::Bundle(b, revision) => {
            let mut r = respond(StatusCode::OK, "application/json", b.bytes);
            if let Ok(v) = HeaderValue::from_str(&meshgov_wire::etag(&b.digest)) {
                r.headers_mut().insert(header::ETAG, v);
            }
            if let Ok(v) = HeaderValue::from_str(&revision.to_string()) {
                r.headers_mut().insert(BUNDLE_REVISION_HEADER, v);
            }
            r
        }
    }
}

/// Serves the API on `listener` and runs the engine's watch loop, until
/// `shutdown`; then stops accepting, ends long polls at once (503
/// `shutting_down`: sidecars poll again later), and waits up to the
/// engine's `drain_timeout` for other requests in flight and an audit
/// collection pass under way.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let watcher = tokio::spawn(Arc::clone(&engine).run(stopped()));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let engine = Arc::clone(&engine);
                let stopped = stopped.clone();
                let svc = service_fn(move |req| {
                    let engine = Arc::clone(&engine);
                    let stop = stopped();
                    async move {
                        // A shutdown ends long polls instead of waiting them out.
                        let r = tokio::select! {
                            r = handle(&engine, req) => r,
                            () = stop => error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the engine is stopping"),
                        };
                        Ok::<_, Infallible>(r)
                    }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drain = async {
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("drained"),
            () = tokio::time::sleep(engine.cfg.drain_timeout) => {
                tracing::warn!("drain timed out; closing the connections still open");
            }
        }
    };
    // The watch loop finishes its collection pass while requests drain.
    let _ = tokio::join!(watcher, drain);
}
