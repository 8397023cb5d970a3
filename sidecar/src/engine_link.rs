//! The sidecar's side of the engine: register, then long-poll.
//!
//! 1. `POST {engine}/v1/sidecars` registers this sidecar (id, product,
//!    control URL, and the revision it holds). The engine then pushes every
//!    revision to the control port.
//! 2. `GET {engine}/v1/bundle?sidecar=ID&wait=S` with `If-None-Match:
//!    "<digest held>"` is answered at once when the engine has another
//!    bundle for this sidecar, else after `S` seconds with 304. So a missed
//!    push, or a sidecar that was down, catches up by itself.
//! 3. A bundle from the long poll goes through the same checks as a push
//!    ([`App::accept_bundle`]), and the ACK or NACK is reported to
//!    `POST {engine}/v1/sidecars/{id}/report`.
//!
//! A 404 on the poll means the engine forgot this sidecar (it restarted):
//! register again. Failures back off up to 5 s and show in
//! `GET /control/v1/status`, `/readyz` and the log.

use crate::clock;
use crate::pipeline::App;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// How this sidecar reaches the engine, and presents itself.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `http://host:port` of the engine, no trailing `/`.
    pub engine_url: String,
    pub instance_id: String,
    /// Where the engine pushes bundles: this sidecar's control port.
    pub control_url: String,
    pub poll_wait: Duration,
}

/// The link's health, for status and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkStatus {
    pub engine_url: String,
    pub registered: bool,
    /// When the engine last answered.
    pub last_contact: Option<String>,
    /// The last failure talking to the engine, until it answers again.
    pub last_error: Option<String>,
}

/// Characters a sidecar id may hold: it goes into URLs unescaped.
pub fn valid_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b))
}

/// The default id: the product and the control address, unique per host.
pub fn default_instance_id(product: &str, control: std::net::SocketAddr) -> String {
    format!("{}@{control}", product.replace('/', "."))
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The engine's answers (bundles) are refused beyond this size.
const MAX_ANSWER_BYTES: usize = meshgov_bundle::DEFAULT_MAX_ENVELOPE_BYTES;

enum Step {
    /// The engine does not know this sidecar: register.
    Unknown,
    /// Answered; go on at once.
    Done,
}

/// Runs the link until `shutdown`.
pub async fn run(app: Arc<App>, cfg: LinkConfig, shutdown: impl std::future::Future<Output = ()>) {
    app.control.set_link(LinkStatus {
        engine_url: cfg.engine_url.clone(),
        registered: false,
        last_contact: None,
        last_error: None,
    });
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    tokio::pin!(shutdown);
    let mut registered = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let step = async {
            if !registered {
                register(&client, &app, &cfg).await?;
                return Ok(Step::Done);
            }
            poll(&client, &app, &cfg).await
        };
        let r = tokio::select! {
            r = step => r,
            () = &mut shutdown => return,
        };
        match r {
            Ok(Step::Done) => {
                if !registered {
                    tracing::info!(engine = %cfg.engine_url, id = %cfg.instance_id, "registered with the engine");
                }
                registered = true;
                backoff = Duration::from_millis(100);
                app.control.update_link(|l| {
                    l.registered = true;
                    l.last_contact = Some(clock::rfc3339(clock::now_unix()));
                    l.last_error = None;
                });
                continue;
            }
            Ok(Step::Unknown) => {
                registered = false;
                app.control.update_link(|l| l.registered = false);
                continue;
            }
            Err(e) => {
                let first = app.control.link().is_none_or(|l| l.last_error.is_none());
                if first {
                    tracing::warn!(engine = %cfg.engine_url, "cannot reach the engine: {e}; serving the last good bundle until it expires");
                } else {
                    tracing::debug!(engine = %cfg.engine_url, "engine still unreachable: {e}");
                }
                app.control.update_link(|l| l.last_error = Some(e));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut shutdown => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn send(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
    let fut = async {
        let resp = client.request(req).await.map_err(|e| format!("{e}"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, headers, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}

fn json_request(
    method: Method,
    url: &str,
    body: &serde_json::Value,
) -> Result<Request<Full<Bytes>>, String> {
    Request::builder()
        .method(method)
        .uri(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(body).unwrap_or_default(),
        )))
        .map_err(|e| format!("bad request to `{url}`: {e}"))
}

async fn register(client: &HttpClient, app: &App, cfg: &LinkConfig) -> Result<(), String> {
    let held = app.bundle.current();
    let body = serde_json::json!({
        "id": cfg.instance_id,
        "product": app.descriptor.product_id(),
        "mesh": app.mesh,
        "control_url": cfg.control_url,
        "revision": held.as_ref().map(|b| b.meta.revision),
        "digest": held.as_ref().map(|b| b.meta.digest.clone()),
    });
    let req = json_request(
        Method::POST,
        &format!("{}/v1/sidecars", cfg.engine_url),
        &body,
    )?;
    let (status, _, body) = send(client, req, Duration::from_secs(10)).await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "registration refused ({status}): {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        ))
    }
}

async fn poll(client: &HttpClient, app: &Arc<App>, cfg: &LinkConfig) -> Result<Step, String> {
    let held = app.bundle.current();
    let url = format!(
        "{}/v1/bundle?sidecar={}&wait={}",
        cfg.engine_url,
        cfg.instance_id,
        cfg.poll_wait.as_secs()
    );
    let mut req = Request::builder().method(Method::GET).uri(&url);
    if let Some(b) = &held {
        req = req.header(header::IF_NONE_MATCH, format!("\"{}\"", b.meta.digest));
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("bad request to `{url}`: {e}"))?;
    let (status, _, body) = send(client, req, cfg.poll_wait + Duration::from_secs(10)).await?;
    match status {
        StatusCode::NOT_MODIFIED => Ok(Step::Done),
        StatusCode::NOT_FOUND => Ok(Step::Unknown),
        StatusCode::OK => {
            let worker = Arc::clone(app);
            let span = tracing::Span::current();
            let r = tokio::task::spawn_blocking(move || {
                span.in_scope(|| worker.accept_bundle(&body, clock::now_unix()))
            })
            .await
            .map_err(|_| "the bundle could not be processed".to_string())?;
            let report = match &r {
                Ok(a) => {
                    serde_json::json!({"result": "ack", "revision": a.revision, "digest": a.digest})
                }
                Err(e) => {
                    serde_json::json!({"result": "nack", "code": e.code(), "reason": e.to_string(),
                    "active_revision": app.bundle.current().map(|b| b.meta.revision)})
                }
            };
            let req = json_request(
                Method::POST,
                &format!("{}/v1/sidecars/{}/report", cfg.engine_url, cfg.instance_id),
                &report,
            )?;
            let (status, _, _) = send(client, req, Duration::from_secs(10)).await?;
            if status == StatusCode::NOT_FOUND {
                return Ok(Step::Unknown);
            }
            Ok(Step::Done)
        }
        other => Err(format!(
            "the engine answered the poll with {other}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        )),
    }
}
