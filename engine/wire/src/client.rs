//! The bounded HTTP client both sides call each other with (feature
//! `client`): the engine pushes bundles and reads control status and the
//! fleet; the sidecar registers, long-polls and reports.
//!
//! One request, one whole answer: the answer's body is read up to a size
//! limit, and the whole exchange must finish within a timeout.

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Answers larger than this are refused unless the client says otherwise
/// (status documents and the fleet are small).
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// A pooled HTTP/1.1 client with a limit on the answers it reads.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    max_answer_bytes: usize,
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
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
        }
    }
}

/// An answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// The start of the body as text, for error messages.
    pub fn excerpt(&self, chars: usize) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(chars)
            .collect()
    }
}

/// Why a request got no whole answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The URL or a header cannot make a request.
    #[error("bad request to `{url}`: {reason}")]
    BadRequest {
        /// The URL asked for.
        url: String,
        /// Why it is not a request.
        reason: String,
    },
    /// The message cannot be encoded as JSON.
    #[error("cannot encode the request: {0}")]
    Encode(String),
    /// No connection, or the exchange broke: the client's error and its
    /// causes.
    #[error("{0}")]
    Transport(String),
    /// The answer's body broke off or exceeded the client's limit.
    #[error("reading the answer: {0}")]
    Read(String),
    /// No whole answer within the timeout.
    #[error("no answer within {}", duration_text(*.0))]
    Timeout(Duration),
}

/// `5 s` for whole seconds, else `2500 ms`.
fn duration_text(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

impl HttpClient {
    /// The same client, refusing answers larger than `bytes`.
    pub fn with_max_answer_bytes(mut self, bytes: usize) -> HttpClient {
        self.max_answer_bytes = bytes;
        self
    }

    /// Sends one request and reads the whole answer within `timeout`.
    /// `Err` is a transport failure: no connection, a broken or oversized
    /// answer, or the timeout. Any HTTP status is an answer.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, SendError> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(k, v);
        }
        let req = b.body(Full::new(body)).map_err(|e| SendError::BadRequest {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| {
                // The legacy client's top-level message is terse; name the cause.
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                SendError::Transport(msg)
            })?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), self.max_answer_bytes)
                .collect()
                .await
                .map_err(|e| SendError::Read(e.to_string()))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| SendError::Timeout(timeout))?
    }

    /// Sends `msg` as a JSON body, with `headers` besides its content type.
    pub async fn send_json(
        &self,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, String)],
        msg: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<Answer, SendError> {
        let body = serde_json::to_vec(msg).map_err(|e| SendError::Encode(e.to_string()))?;
        let mut all = vec![(header::CONTENT_TYPE, "application/json".to_string())];
        all.extend_from_slice(headers);
        self.send(method, url, &all, Bytes::from(body), timeout)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_in_seconds_when_whole() {
        assert_eq!(
            SendError::Timeout(Duration::from_secs(40)).to_string(),
            "no answer within 40 s"
        );
        assert_eq!(
            SendError::Timeout(Duration::from_millis(2500)).to_string(),
            "no answer within 2500 ms"
        );
    }
}
