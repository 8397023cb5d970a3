//! Registration: `POST /v1/sidecars`.

use serde::{Deserialize, Serialize};

/// A sidecar introduces itself to the engine: sent by the sidecar at start
/// (and again whenever the engine has forgotten it), read by the engine,
/// which then pushes every revision to `control_url`.
///
/// The engine refuses fields it does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The sidecar's fleet id (ASCII letters, digits and `-_.@:`; it goes
    /// into URLs unescaped).
    pub id: String,
    /// The data product it serves, `domain/name`.
    pub product: String,
    /// The mesh it enforces; the engine refuses another mesh than its own.
    pub mesh: Option<String>,
    /// `http://host:port` of its control port.
    pub control_url: String,
    /// The revision it holds, if any.
    pub revision: Option<u64>,
    /// The `sha256:<hex>` digest of the bundle it holds, if any.
    pub digest: Option<String>,
}

/// The engine's answer to a [`Registration`]: sent by the engine, read by
/// the sidecar (which only needs the 2xx status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationAnswer {
    /// The registered id.
    pub id: String,
    /// Where this sidecar long-polls: `/v1/bundle?sidecar=ID`.
    pub poll: String,
}

impl RegistrationAnswer {
    /// The answer for sidecar `id`.
    pub fn new(id: &str) -> RegistrationAnswer {
        RegistrationAnswer {
            id: id.to_string(),
            poll: format!("{}?sidecar={id}", crate::path::POLL),
        }
    }
}

/// Whether `id` may be a sidecar id: 1 to 128 ASCII letters, digits and
/// `-_.@:` (it travels in URLs unescaped). The sidecar checks its own at
/// start; the engine refuses a [`Registration`] with another.
pub fn valid_sidecar_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b))
}
