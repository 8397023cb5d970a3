//! Response helpers shared by every listener: request ids, JSON bodies and
//! error documents, with the headers every answer carries.

use crate::body::Body;
use crate::error::ApiError;
use http::{HeaderValue, Request, Response, StatusCode, header};

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
