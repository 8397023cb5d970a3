//! Outbound HTTP: bundle pushes and status reads against sidecars' control
//! ports, and fleet reads against an engine (for `meshgov status`).

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Answers larger than this are refused (status documents are small).
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// A pooled HTTP/1.1 client.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        c.set_connect_timeout(Some(Duration::from_secs(3)));
        HttpClient {
            inner: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(c),
        }
    }
}

/// An answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl HttpClient {
    /// Sends one request and reads the whole answer within `timeout`.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(k, v);
        }
        let req = b
            .body(Full::new(body))
            .map_err(|e| format!("bad request to `{url}`: {e}"))?;
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| {
                // The legacy client's top-level message is terse; name the cause.
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                msg
            })?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
    }
}

/// A sidecar's answer to a bundle push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PushOutcome {
    Ack {
        revision: u64,
        digest: String,
        #[serde(default)]
        noop: bool,
    },
    Nack {
        code: String,
        reason: String,
        #[serde(default)]
        active_revision: Option<u64>,
    },
}

/// `PUT {control_url}/control/v1/bundle`. `Err` is a transport failure
/// (retry later); a NACK is an `Ok`.
pub async fn push_bundle(
    client: &HttpClient,
    control_url: &str,
    envelope: Bytes,
    timeout: Duration,
) -> Result<PushOutcome, String> {
    let url = format!("{}/control/v1/bundle", control_url.trim_end_matches('/'));
    let a = client
        .send(
            Method::PUT,
            &url,
            &[(header::CONTENT_TYPE, "application/json".into())],
            envelope,
            timeout,
        )
        .await?;
    serde_json::from_slice(&a.body).map_err(|_| {
        format!(
            "`{url}` answered {} without an ACK or NACK: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
                .chars()
                .take(200)
                .collect::<String>()
        )
    })
}

/// `GET {control_url}/control/v1/status` with a control token.
pub async fn sidecar_status(
    client: &HttpClient,
    control_url: &str,
    token: &str,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let url = format!("{}/control/v1/status", control_url.trim_end_matches('/'));
    let a = client
        .send(
            Method::GET,
            &url,
            &[(header::AUTHORIZATION, format!("Bearer {token}"))],
            Bytes::new(),
            timeout,
        )
        .await?;
    if a.status != StatusCode::OK {
        return Err(format!(
            "status answered {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    serde_json::from_slice(&a.body).map_err(|e| format!("status is not JSON: {e}"))
}

/// `GET {engine}/v1/fleet`.
pub async fn fleet(client: &HttpClient, engine_url: &str) -> Result<serde_json::Value, String> {
    let url = format!("{}/v1/fleet", engine_url.trim_end_matches('/'));
    let a = client
        .send(
            Method::GET,
            &url,
            &[],
            Bytes::new(),
            Duration::from_secs(10),
        )
        .await?;
    if a.status != StatusCode::OK {
        return Err(format!("`{url}` answered {}", a.status));
    }
    serde_json::from_slice(&a.body).map_err(|e| format!("`{url}` did not answer JSON: {e}"))
}
