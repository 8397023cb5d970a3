//! The mutating admission webhook (`meshgov serve --webhook-listen`): on
//! its own TLS listener, `POST /mutate` answers Kubernetes `AdmissionReview`
//! v1 requests for pods with a JSON Patch that adds the sidecar, as
//! [`crate::inject`] plans it for `meshgov inject`.
//!
//! Which namespaces and pods are sent here is the
//! `MutatingWebhookConfiguration`'s choice (`deploy/base`); a pod sent here
//! is injected when it is annotated `meshgov.io/product: domain/name`. What
//! is answered:
//!
//! | request | answer |
//! | --- | --- |
//! | not a pod CREATE, or a subresource | allowed, no patch |
//! | pod annotated or labelled `meshgov.io/inject: disabled` | allowed, no patch |
//! | pod already injected (`meshgov.io/injected: "true"`) | allowed, no patch |
//! | pod naming no product, or one inject refuses (a port clash, a misplaced sidecar) | denied (403) with the reason |
//! | a malformed pod | denied (400) |
//! | any other pod | allowed, with the patch |
//! | a body that is not an `AdmissionReview` v1 | HTTP 400 (the API server then applies `failurePolicy`) |
//!
//! `dryRun` requests are answered the same: the webhook has no side effects.
//! The certificate and key are read again when their files change (a
//! rotated Secret), without a restart.

use crate::inject::{
    self, INJECTED, OPT_OUT, Options, PRODUCT, Template, check_product, json_patch, plan_template,
};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Value as Json, json};
use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The webhook's one route.
pub const PATH: &str = "/mutate";
/// The API server sends at most about 3 MiB of object.
const MAX_BODY: usize = 4 * 1024 * 1024;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const REVIEW_API: &str = "admission.k8s.io/v1";

type Resp = Response<Full<Bytes>>;

/// The webhook's decisions, with the sidecar options of `meshgov serve`.
pub struct Webhook {
    opts: Options,
}

/// What the webhook decided for one request.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Allowed unchanged; why, for the log.
    Pass(&'static str),
    /// Allowed with these JSON Patch operations, and warnings for the user.
    Patch(Vec<Json>, Vec<String>),
    /// Denied: the HTTP-like code (400, 403) and the reason.
    Deny(u16, String),
}

impl Webhook {
    pub fn new(opts: Options) -> Result<Webhook, String> {
        opts.check()?;
        Ok(Webhook { opts })
    }

    /// The answer to one request body: the HTTP status and body.
    pub fn review(&self, body: &[u8]) -> (StatusCode, Json) {
        let review: Json = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad_review(format!("the body is not JSON: {e}")),
        };
        if review.get("apiVersion").and_then(Json::as_str) != Some(REVIEW_API)
            || review.get("kind").and_then(Json::as_str) != Some("AdmissionReview")
        {
            return bad_review(format!(
                "expected an `AdmissionReview` of `{REVIEW_API}` (set `admissionReviewVersions: [v1]`)"
            ));
        }
        let Some(request) = review.get("request") else {
            return bad_review("the AdmissionReview has no `request`".into());
        };
        let Some(uid) = request.get("uid").and_then(Json::as_str) else {
            return bad_review("the AdmissionReview's request has no `uid`".into());
        };
        let decision = self.decide(request);
        let namespace = request
            .get("namespace")
            .and_then(Json::as_str)
            .unwrap_or("");
        let pod = request.get("object").map(pod_name).unwrap_or_default();
        let mut response = serde_json::Map::new();
        response.insert("uid".into(), json!(uid));
        response.insert("allowed".into(), json!(true));
        match &decision {
            Decision::Pass(why) => {
                tracing::debug!(uid, namespace, pod, why, "admission: allowed unchanged");
            }
            Decision::Patch(ops, warnings) => {
                tracing::info!(uid, namespace, pod, ops = ops.len(), "admission: injected");
                let patch = serde_json::to_vec(ops).unwrap_or_default();
                response.insert("patchType".into(), json!("JSONPatch"));
                response.insert(
                    "patch".into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(patch)),
                );
                if !warnings.is_empty() {
                    response.insert("warnings".into(), json!(warnings));
                }
            }
            Decision::Deny(code, message) => {
                tracing::warn!(uid, namespace, pod, code, message, "admission: denied");
                response.insert("allowed".into(), json!(false));
                response.insert("status".into(), json!({"code": code, "message": message}));
            }
        }
        (
            StatusCode::OK,
            json!({"apiVersion": REVIEW_API, "kind": "AdmissionReview", "response": response}),
        )
    }

    /// Whether and how to inject the pod of an AdmissionReview `request`.
    pub fn decide(&self, request: &Json) -> Decision {
        let str_at = |path: &[&str]| request.path(path).and_then(Json::as_str);
        let pod_kind =
            str_at(&["kind", "group"]) == Some("") && str_at(&["kind", "kind"]) == Some("Pod");
        if !pod_kind || str_at(&["resource", "resource"]).is_some_and(|r| r != "pods") {
            return Decision::Pass("not a pod");
        }
        if str_at(&["subResource"]).is_some_and(|s| !s.is_empty()) {
            return Decision::Pass("a subresource");
        }
        if str_at(&["operation"]) != Some("CREATE") {
            return Decision::Pass("not a creation");
        }
        let Some(pod) = request.get("object").filter(|o| o.is_object()) else {
            return Decision::Deny(400, "the request has no pod `object`".into());
        };
        let meta =
            |kind: &str, key: &str| pod.path(&["metadata", kind, key]).and_then(Json::as_str);
        if meta("annotations", OPT_OUT) == Some("disabled")
            || meta("labels", OPT_OUT) == Some("disabled")
        {
            return Decision::Pass("opted out");
        }
        if meta("annotations", INJECTED) == Some("true") || meta("labels", INJECTED) == Some("true")
        {
            return Decision::Pass("already injected");
        }
        let namespace = str_at(&["namespace"]).unwrap_or("");
        let what = format!("pod {} in namespace `{namespace}`", pod_name(pod));
        let Some(product) = meta("annotations", PRODUCT) else {
            return Decision::Deny(
                403,
                format!(
                    "{what} names no data product, and its namespace has meshgov injection enabled: annotate the pod template `{PRODUCT}: domain/name`, or `{OPT_OUT}: disabled` to run it without the sidecar"
                ),
            );
        };
        if let Err(e) = check_product(product) {
            return Decision::Deny(403, format!("{what}: {e}"));
        }
        // Pods that run to completion get a native sidecar.
        let restart = pod.path(&["spec", "restartPolicy"]).and_then(Json::as_str);
        let template = Template {
            node: Some(pod),
            path: String::new(),
            native_sidecar: matches!(restart, Some("Never" | "OnFailure")),
            state_on_claim: false,
        };
        let planned = match plan_template(&self.opts, product, &what, pod, &template) {
            Ok(p) => p,
            Err(r) => return Decision::Deny(403, r.message),
        };
        match json_patch(pod, &planned.change) {
            Ok(ops) if ops.is_empty() => Decision::Pass("nothing to change"),
            Ok(ops) => Decision::Patch(ops, planned.notes),
            Err(e) => Decision::Deny(400, format!("{what}: {e}")),
        }
    }
}

/// `` `name` ``, or `` `generateName…` `` for a pod a controller creates.
fn pod_name(pod: &Json) -> String {
    let m = |k: &str| pod.path(&["metadata", k]).and_then(Json::as_str);
    match (m("name"), m("generateName")) {
        (Some(n), _) if !n.is_empty() => format!("`{n}`"),
        (_, Some(g)) => format!("`{g}…`"),
        _ => "(unnamed)".into(),
    }
}

fn bad_review(message: String) -> (StatusCode, Json) {
    (StatusCode::BAD_REQUEST, json!({"error": message}))
}

use inject::Tree as _;

fn respond(status: StatusCode, body: &Json) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(body).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(webhook: &Webhook, req: Request<Incoming>) -> Resp {
    if req.uri().path() != PATH {
        return respond(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("the webhook answers `POST {PATH}` only")}),
        );
    }
    if req.method() != Method::POST {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": format!("`{PATH}` takes POST")}),
        );
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        respond(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"error": format!("request bodies are at most {MAX_BODY} bytes")}),
        )
    };
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let body = match tokio::time::timeout(
        BODY_TIMEOUT,
        http_body_util::Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            return respond(
                StatusCode::REQUEST_TIMEOUT,
                &json!({"error": "the request body did not arrive in time"}),
            );
        }
    };
    let (status, answer) = webhook.review(&body);
    respond(status, &answer)
}

/// The TLS configuration for a certificate chain and key in PEM files,
/// read again when they change.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    meshgov_wire::tls::server_config(cert, key, &[b"http/1.1"])
}

/// Serves the webhook on `listener` until `shutdown`, then lets requests
/// in flight finish (at most `drain`).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    webhook: Arc<Webhook>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let webhook = Arc::clone(&webhook);
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "webhook TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => return,
                    };
                    let svc = service_fn(move |req| {
                        let webhook = Arc::clone(&webhook);
                        async move { Ok::<_, Infallible>(handle(&webhook, req).await) }
                    });
                    let conn = watcher.watch(builder.serve_connection(TokioIo::new(tls), svc));
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => tracing::warn!("webhook drain timed out"),
    }
}
