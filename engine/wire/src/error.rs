//! The error body every refusal carries.

use serde::{Deserialize, Serialize};

/// A refused request's body: sent by the engine's API (`{"error",
/// "reason"}`) and by the sidecar's ports (`{"request_id", "error",
/// "reason"}`), read by whoever called. `error` is a stable code (callers
/// match on it), `reason` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The sidecar's request id (echoed from `x-request-id`, or fresh);
    /// absent from the engine's errors and the audit feed's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The stable code, e.g. `bad_request`, `unknown_sidecar`.
    pub error: String,
    /// What went wrong and what to do, for people.
    pub reason: String,
}

impl ErrorBody {
    /// An error without a request id.
    pub fn new(error: impl Into<String>, reason: impl Into<String>) -> ErrorBody {
        ErrorBody {
            request_id: None,
            error: error.into(),
            reason: reason.into(),
        }
    }

    /// The same error, for request `id`.
    pub fn with_request_id(mut self, id: impl Into<String>) -> ErrorBody {
        self.request_id = Some(id.into());
        self
    }
}
