//! Outbound HTTP: bundle pushes and status reads against sidecars' control
//! ports, and fleet reads against an engine (for `meshgov status`). The
//! client and the messages are `meshgov-wire`'s, shared with the sidecar.

use bytes::Bytes;
use http::{Method, StatusCode, header};
use meshgov_wire::{ControlStatus, Fleet, path};
use std::time::Duration;

pub use meshgov_wire::PushOutcome;
pub use meshgov_wire::client::{Answer, HttpClient, SendError};

/// `PUT {control_url}/control/v1/bundle`. `Err` is a transport failure
/// (retry later); a NACK is an `Ok`.
pub async fn push_bundle(
    client: &HttpClient,
    control_url: &str,
    envelope: Bytes,
    timeout: Duration,
) -> Result<PushOutcome, String> {
    let url = format!(
        "{}{}",
        control_url.trim_end_matches('/'),
        path::CONTROL_BUNDLE
    );
    let a = client
        .send(
            Method::PUT,
            &url,
            &[(header::CONTENT_TYPE, "application/json".into())],
            envelope,
            timeout,
        )
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&a.body).map_err(|_| {
        format!(
            "`{url}` answered {} without an ACK or NACK: {}",
            a.status,
            a.excerpt(200)
        )
    })
}

/// `GET {control_url}/control/v1/status` with a control token.
pub async fn sidecar_status(
    client: &HttpClient,
    control_url: &str,
    token: &str,
    timeout: Duration,
) -> Result<ControlStatus, String> {
    let url = format!(
        "{}{}",
        control_url.trim_end_matches('/'),
        path::CONTROL_STATUS
    );
    let a = client
        .send(
            Method::GET,
            &url,
            &[(header::AUTHORIZATION, format!("Bearer {token}"))],
            Bytes::new(),
            timeout,
        )
        .await
        .map_err(|e| e.to_string())?;
    if a.status != StatusCode::OK {
        return Err(format!("status answered {}: {}", a.status, a.excerpt(200)));
    }
    serde_json::from_slice(&a.body).map_err(|e| format!("status is not a control status: {e}"))
}

/// `GET {engine}/v1/fleet`.
pub async fn fleet(client: &HttpClient, engine_url: &str) -> Result<Fleet, String> {
    let url = format!("{}{}", engine_url.trim_end_matches('/'), path::FLEET);
    let a = client
        .send(
            Method::GET,
            &url,
            &[],
            Bytes::new(),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| e.to_string())?;
    if a.status != StatusCode::OK {
        return Err(format!("`{url}` answered {}", a.status));
    }
    serde_json::from_slice(&a.body).map_err(|e| format!("`{url}` did not answer the fleet: {e}"))
}
