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

use crate::app::App;
use crate::clock;
use bytes::Bytes;
use http::{Method, StatusCode, header};
use meshgov_wire::client::HttpClient;
use meshgov_wire::{Nack, PollQuery, PullReport, PulledAck, Registration, path};
use std::sync::Arc;
use std::time::Duration;

/// The link's health, for status and `/readyz` (see `meshgov-wire`).
pub use meshgov_wire::LinkStatus;

/// How this sidecar reaches the engine, and presents itself.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `http://host:port` of the engine, no trailing `/`.
    pub engine_url: String,
    pub instance_id: String,
    /// Where the engine pushes bundles: this sidecar's control port.
    pub control_url: String,
    pub poll_wait: Duration,
    /// The engine's registration token, sent as a bearer token.
    pub token: Option<String>,
}

impl LinkConfig {
    /// `headers` plus the registration token, if there is one.
    fn with_token(
        &self,
        mut headers: Vec<(header::HeaderName, String)>,
    ) -> Vec<(header::HeaderName, String)> {
        if let Some(t) = &self.token {
            headers.push((header::AUTHORIZATION, format!("Bearer {t}")));
        }
        headers
    }

    /// POSTs `msg` as JSON with the registration token.
    async fn post(
        &self,
        client: &HttpClient,
        url: &str,
        msg: &impl serde::Serialize,
    ) -> Result<meshgov_wire::client::Answer, String> {
        client
            .send_json(
                Method::POST,
                url,
                &self.with_token(vec![]),
                msg,
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| e.to_string())
    }
}

/// Characters a sidecar id may hold: it goes into URLs unescaped.
pub fn valid_instance_id(id: &str) -> bool {
    meshgov_wire::valid_sidecar_id(id)
}

/// The default id: the product and the control address, unique per host.
pub fn default_instance_id(product: &str, control: std::net::SocketAddr) -> String {
    format!("{}@{control}", product.replace('/', "."))
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
    // The engine's answers (bundles) are refused beyond the push limit.
    let client = HttpClient::default().with_max_answer_bytes(app.limits.max_bundle_bytes);
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

async fn register(client: &HttpClient, app: &App, cfg: &LinkConfig) -> Result<(), String> {
    let held = app.bundle.current();
    let reg = Registration {
        id: cfg.instance_id.clone(),
        product: app.descriptor.product_id(),
        mesh: Some(app.mesh.clone()),
        control_url: cfg.control_url.clone(),
        revision: held.as_ref().map(|b| b.meta.revision),
        digest: held.as_ref().map(|b| b.meta.digest.clone()),
    };
    let url = format!("{}{}", cfg.engine_url, path::SIDECARS);
    let a = cfg.post(client, &url, &reg).await?;
    if a.status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "registration refused ({}): {}",
            a.status,
            a.excerpt(300)
        ))
    }
}

async fn poll(client: &HttpClient, app: &Arc<App>, cfg: &LinkConfig) -> Result<Step, String> {
    let held = app.bundle.current();
    let query = PollQuery {
        sidecar: cfg.instance_id.clone(),
        wait_secs: Some(cfg.poll_wait.as_secs()),
    };
    let url = format!("{}{}?{}", cfg.engine_url, path::POLL, query.to_query());
    let headers = cfg.with_token(
        held.iter()
            .map(|b| (header::IF_NONE_MATCH, meshgov_wire::etag(&b.meta.digest)))
            .collect(),
    );
    let a = client
        .send(
            Method::GET,
            &url,
            &headers,
            Bytes::new(),
            cfg.poll_wait + Duration::from_secs(10),
        )
        .await
        .map_err(|e| e.to_string())?;
    match a.status {
        StatusCode::NOT_MODIFIED => Ok(Step::Done),
        StatusCode::NOT_FOUND => Ok(Step::Unknown),
        StatusCode::OK => {
            let worker = Arc::clone(app);
            let span = tracing::Span::current();
            let body = a.body;
            let r = tokio::task::spawn_blocking(move || {
                span.in_scope(|| worker.accept_bundle(&body, clock::now_unix()))
            })
            .await
            .map_err(|_| "the bundle could not be processed".to_string())?;
            let report = match r {
                Ok(a) => PullReport::Ack(PulledAck {
                    revision: a.revision,
                    digest: a.digest,
                }),
                Err(e) => PullReport::Nack(Nack {
                    code: e.code(),
                    reason: e.to_string(),
                    active_revision: app.bundle.current().map(|b| b.meta.revision),
                }),
            };
            let url = format!("{}{}", cfg.engine_url, path::report(&cfg.instance_id));
            let a = cfg.post(client, &url, &report).await?;
            if a.status == StatusCode::NOT_FOUND {
                return Ok(Step::Unknown);
            }
            Ok(Step::Done)
        }
        other => Err(format!(
            "the engine answered the poll with {other}: {}",
            a.excerpt(300)
        )),
    }
}
