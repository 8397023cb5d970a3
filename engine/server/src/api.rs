//! The engine's HTTP API (`meshgov serve --listen`):
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | the fleet page, for people |
//! | `GET /v1/fleet` | the fleet as JSON: releases, rollout, last build, every sidecar |
//! | `POST /v1/sidecars` | register `{id, product, mesh, control_url, revision, digest}` |
//! | `GET /v1/bundle?sidecar=ID&wait=S` | long poll; `If-None-Match: "<digest>"`; 200 with the bundle, or 304 after `S` seconds |
//! | `POST /v1/sidecars/{id}/report` | `{"result": "ack", revision, digest}` or `{"result": "nack", code, reason}` after a pull |
//! | `GET /healthz` | alive |
//! | `GET /metrics` | Prometheus metrics (see [`crate::metrics`]) |

use crate::engine::{Engine, PollAnswer, Registration, Report};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
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
    json(
        status,
        &serde_json::json!({"error": code, "reason": reason.into()}),
    )
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Resp> {
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
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("cannot read the body: {e}"),
        )
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

fn query<'a>(q: Option<&'a str>, key: &str) -> Option<&'a str> {
    q?.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Handles one request. Never panics.
pub async fn handle(engine: &Arc<Engine>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/") => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::page::HTML,
        ),
        (Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (Method::GET, "/v1/fleet") => json(StatusCode::OK, &engine.fleet()),
        (Method::GET, "/metrics") => respond(
            StatusCode::OK,
            meshgov_metrics::CONTENT_TYPE,
            engine.render_metrics(),
        ),
        (Method::POST, "/v1/sidecars") => match read_json::<Registration>(req).await {
            Err(r) => r,
            Ok(reg) => {
                let id = reg.id.clone();
                match engine.register(reg) {
                    Ok(()) => json(
                        StatusCode::OK,
                        &serde_json::json!({"id": id, "poll": format!("/v1/bundle?sidecar={id}")}),
                    ),
                    Err(e) => error(StatusCode::BAD_REQUEST, "bad_registration", e),
                }
            }
        },
        (Method::GET, "/v1/bundle") => poll(engine, &req).await,
        (Method::POST, p) if p.starts_with("/v1/sidecars/") && p.ends_with("/report") => {
            let id = p
                .trim_start_matches("/v1/sidecars/")
                .trim_end_matches("/report")
                .to_string();
            match read_json::<Report>(req).await {
                Err(r) => r,
                Ok(rep) => {
                    if engine.report(&id, rep) {
                        json(StatusCode::OK, &serde_json::json!({"recorded": true}))
                    } else {
                        error(StatusCode::NOT_FOUND, "unknown_sidecar", "register first")
                    }
                }
            }
        }
        (_, "/" | "/healthz" | "/metrics" | "/v1/fleet" | "/v1/sidecars" | "/v1/bundle") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "see the engine's API in the README",
        ),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such route"),
    }
}

async fn poll(engine: &Arc<Engine>, req: &Request<Incoming>) -> Resp {
    let q = req.uri().query();
    let Some(id) = query(q, "sidecar") else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`sidecar=ID` is required",
        );
    };
    let wait = match query(q, "wait").map(str::parse::<u64>) {
        None => 30,
        Some(Ok(w)) => w.min(MAX_WAIT_SECS),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "`wait` is a number of seconds",
            );
        }
    };
    let held = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_string()
        });
    match engine
        .poll(id, held.as_deref(), Duration::from_secs(wait))
        .await
    {
        PollAnswer::UnknownSidecar => error(
            StatusCode::NOT_FOUND,
            "unknown_sidecar",
            "this sidecar is not registered; POST /v1/sidecars first",
        ),
        PollAnswer::NotModified => {
            let mut r = respond(StatusCode::NOT_MODIFIED, "application/json", Bytes::new());
            if let Some(h) = held.and_then(|h| HeaderValue::from_str(&format!("\"{h}\"")).ok()) {
                r.headers_mut().insert(header::ETAG, h);
            }
            r
        }
        PollAnswer::Bundle(b, revision) => {
            let mut r = respond(StatusCode::OK, "application/json", b.bytes);
            if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", b.digest)) {
                r.headers_mut().insert(header::ETAG, v);
            }
            if let Ok(v) = HeaderValue::from_str(&revision.to_string()) {
                r.headers_mut().insert("x-meshgov-bundle-revision", v);
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
