//! Refusals as consumers see them: a status, a short stable code and a
//! reason that names no policy, rule or field internals.

use http::StatusCode;

/// One refusal. `code` is stable (clients and conformance match on it);
/// `reason` is human text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            reason: reason.into(),
        }
    }

    pub fn unauthorized(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", reason)
    }

    /// 406: no format the client accepts can be served.
    pub fn not_acceptable(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_ACCEPTABLE, "not_acceptable", reason)
    }

    /// 500: the read's query plan could not be built or run; nothing was
    /// served.
    pub fn plan_failed() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "plan_failed",
            "the read could not be planned or run under the policy bundle; nothing was served",
        )
    }

    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    /// 408: the request body did not arrive within `limits.body_read_timeout_ms`.
    pub fn body_timeout(ms: u64) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {ms} ms"),
        )
    }

    pub fn forbidden() -> ApiError {
        // INVARIANT: the reason never says which policy denied, so a denied
        // consumer learns nothing about the rules.
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "access to this port is denied for this consumer and purpose",
        )
    }

    pub fn unknown_port(port: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_port",
            format!("this product has no output port `{port}`; see `GET /` for its ports"),
        )
    }

    pub fn not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such resource; see `GET /` for what this sidecar serves",
        )
    }

    pub fn unavailable(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_valid_bundle", reason)
    }

    /// The read is allowed, but the sidecar cannot apply the anonymization
    /// it requires (a pseudonym key or a plugin is missing). Nothing is
    /// served rather than anything unanonymized.
    pub fn cannot_anonymize(reason: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot_anonymize",
            reason,
        )
    }

    /// The decision could not be made durable in the audit log: nothing is
    /// served unaudited.
    pub fn audit_unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the sidecar cannot record this request in its audit log, so it serves nothing; the operator must check the state directory",
        )
    }

    /// A plugin the read needs failed (trapped, ran out of fuel or memory,
    /// or broke the ABI). Nothing was served.
    pub fn plugin_failed(failure: &meshgov_anonymize::PluginFailure) -> ApiError {
        let what = match failure.kind {
            meshgov_anonymize::FailureKind::OutOfFuel => "ran out of fuel",
            meshgov_anonymize::FailureKind::OutOfMemory => "exceeded its memory limit",
            meshgov_anonymize::FailureKind::Trap => "trapped",
            meshgov_anonymize::FailureKind::Malformed => "returned malformed output",
            meshgov_anonymize::FailureKind::Refused => "refused the data",
            _ => "could not run",
        };
        // INVARIANT: names no plugin and no rule, only what went wrong.
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "plugin_failed",
            format!("a plugin this read needs {what}; nothing was served"),
        )
    }

    pub fn upstream(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_GATEWAY, "upstream_failed", reason)
    }

    /// The JSON body: `{"request_id", "error", "reason"}`.
    pub fn body(&self, request_id: &str) -> Vec<u8> {
        let v = meshgov_wire::ErrorBody::new(self.code, self.reason.clone())
            .with_request_id(request_id);
        serde_json::to_vec(&v).unwrap_or_default()
    }
}
