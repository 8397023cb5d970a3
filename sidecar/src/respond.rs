//! Response helpers shared by every listener: request ids, JSON bodies and
//! error documents, with the headers every answer carries.

use crate::body::Body;
use crate::error::ApiError;
use http::{HeaderValue, Request, Response, StatusCode, header};

/// The sidecar's id for a request: fresh and random for every request, so
/// no client can choose the key that joins a read's audit events.
pub(crate) fn request_id() -> String {
    let mut b = [0u8; 12];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    hex::encode(b)
}

/// The caller's `x-request-id`, if it is short and plain
/// (`[A-Za-z0-9._-]{1,64}`); anything else is ignored. It is recorded in the
/// decision event and echoed as `x-client-request-id`, beside the sidecar's
/// own id.
pub(crate) fn client_request_id<B>(req: &Request<B>) -> Option<String> {
    let v = req.headers().get("x-request-id")?.to_str().ok()?;
    let plain = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    plain.then(|| v.to_string())
}

/// Echoes the client's request id on an answer.
pub(crate) fn echo_client_id(resp: &mut Response<Body>, client: Option<&str>) {
    if let Some(v) = client.and_then(|c| HeaderValue::from_str(c).ok()) {
        resp.headers_mut().insert("x-client-request-id", v);
    }
}

pub(crate) fn respond(
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

pub(crate) fn json(status: StatusCode, rid: &str, v: &impl serde::Serialize) -> Response<Body> {
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
