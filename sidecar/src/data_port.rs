//! The data port's router: every request gets a request id, a span and a
//! decision event; [`handle`] routes it to its handler
//! ([`crate::records`], [`crate::aggregate`], discovery and the probes) and
//! makes the event durable in the audit log before the answer (and so any
//! body byte) leaves. If the audit log cannot take the event, the answer is
//! a 503 refusal instead.

use crate::app::App;
use crate::body::Body;
use crate::clock;
use crate::error::ApiError;
use crate::metrics::Action;
use crate::request::{self, Route, RouteError};
use crate::respond::{client_request_id, echo_client_id, error, json, request_id};
use http::{HeaderValue, Request, Response, StatusCode};
use meshgov_audit::{Decision, Event, Kind};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument as _;

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
    let rid = request_id();
    let client = client_request_id(&req);
    let span = tracing::info_span!(
        "request",
        request_id = %rid,
        client_request_id = client.as_deref(),
        port = tracing::field::Empty,
        action = tracing::field::Empty,
        consumer = tracing::field::Empty,
    );
    let mut resp = handle_in(app, req, rid, client.clone(), started)
        .instrument(span)
        .await;
    echo_client_id(&mut resp, client.as_deref());
    resp
}

async fn handle_in<B>(
    app: &Arc<App>,
    req: Request<B>,
    rid: String,
    client: Option<String>,
    started: Instant,
) -> Response<Body>
where
    B: http_body::Body + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut ev = Event::new(Kind::Decision, clock::now_ms());
    ev.request_id = Some(rid.clone());
    ev.client_request_id = client;
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
        Ok(Route::Records { port }) => {
            crate::records::records(app, &req, &port, &rid, &mut ev).await
        }
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
    // Issuers whose provider's keys have not been fetched: their tokens
    // are refused. With none usable, no request can be served.
    let missing: Vec<String> = app
        .auth
        .missing_keys()
        .into_iter()
        .map(|(iss, why)| format!("issuer `{iss}` has no usable keys: {why}"))
        .collect();
    if !app.auth.has_usable_keys() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            rid,
            &serde_json::json!({"ready": false, "reason": missing.join("; ")}),
        );
    }
    match app.bundle.valid_at(clock::now_unix()) {
        Ok(b) => json(
            StatusCode::OK,
            rid,
            &serde_json::json!({"ready": true, "revision": b.meta.revision, "digest": b.meta.digest,
                "expires_at": clock::rfc3339(b.meta.expires_at_unix), "auth_warnings": missing}),
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
                "formats": crate::request::Format::ALL.map(|f| f.media_type()),
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
                "issuers": app.auth.describe(),
            },
            "sql": sql_doc(app),
        }),
    )
}

/// The SQL ports and how to connect to them; `null` when neither listens.
fn sql_doc(app: &App) -> serde_json::Value {
    let Some(ports) = app
        .sql_ports
        .get()
        .filter(|p| p.postgres.is_some() || p.flight.is_some())
    else {
        return serde_json::Value::Null;
    };
    let id = app.descriptor.product_id();
    let db = crate::sql::catalog::database_name(&id);
    let postgres = ports.postgres.map(|a| {
        let sslmode = if ports.tls { "require" } else { "disable" };
        serde_json::json!({
            "address": a.to_string(),
            "database": db,
            "tls": ports.tls,
            "user": "your token's subject (`sub`)",
            "password": "your JWT",
            "connect": format!("psql \"host={} port={} dbname={db} user=<sub> sslmode={sslmode}\" (with PGPASSWORD=<JWT>)", a.ip(), a.port()),
        })
    });
    let flight = ports.flight.map(|a| {
        let scheme = if ports.tls { "grpc+tls" } else { "grpc" };
        serde_json::json!({
            "address": a.to_string(),
            "uri": format!("{scheme}://{a}"),
            "tls": ports.tls,
            "authentication": "authorization: Bearer <JWT> on every call, or a handshake with Basic <sub>:<JWT>",
        })
    });
    serde_json::json!({"postgres": postgres, "flight_sql": flight})
}
