//! The control status: `GET /control/v1/status`.

use crate::NackCode;
use serde::{Deserialize, Serialize};

/// A sidecar's control status: sent by the sidecar's control port (to a
/// caller with a control token), read by the engine (a canary's health
/// during a rollout's bake, the audit checkpoint key for collection) and
/// by operators. One struct, so later concerns add fields here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlStatus {
    /// The sidecar's fleet id, once it has one.
    pub instance_id: Option<String>,
    /// The mesh it enforces.
    pub mesh: String,
    /// `domain/name` of the product it serves.
    pub product: String,
    /// Whether it serves reads.
    pub state: ServingState,
    /// Why reads are refused, when they are.
    pub reason: Option<String>,
    /// The bundle loaded (in force unless expired).
    pub bundle: Option<BundleStatus>,
    /// The last bundle refused.
    pub last_refusal: Option<Refusal>,
    /// The link to the engine, when one is configured.
    pub engine: Option<LinkStatus>,
    /// Key ids of the governance keys trusted for bundles and control tokens.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// The audit log's head, checkpoint and checkpoint-signing public key.
    pub audit: AuditStatus,
}

/// Whether a sidecar serves reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServingState {
    /// A valid bundle is in force: reads are served.
    Serving,
    /// The bundle in force has expired: reads get 503.
    Expired,
    /// No valid bundle was ever loaded: reads get 503.
    NoBundle,
}

impl ServingState {
    /// The state as it is on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ServingState::Serving => "serving",
            ServingState::Expired => "expired",
            ServingState::NoBundle => "no_bundle",
        }
    }
}

/// The bundle a sidecar has loaded, in its [`ControlStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleStatus {
    /// Its revision.
    pub revision: u64,
    /// `sha256:<hex>` of the signed payload.
    pub digest: String,
    /// RFC 3339, from the manifest.
    pub created_at: String,
    /// RFC 3339, from the manifest.
    pub expires_at: String,
    /// RFC 3339: when this sidecar swapped it in.
    pub loaded_at: String,
    /// Seconds since the engine built it: staleness.
    pub age_seconds: i64,
    /// Negative once expired.
    pub expires_in_seconds: i64,
}

/// The last bundle a sidecar refused, in its [`ControlStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The NACK code it answered with.
    pub code: NackCode,
    /// Its reason.
    pub reason: String,
    /// RFC 3339.
    pub at: String,
}

/// A sidecar's link to the engine (register, long-poll), in its
/// [`ControlStatus`] and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// `http://host:port` of the engine.
    pub engine_url: String,
    /// The engine knows it (registration answered, not forgotten since).
    pub registered: bool,
    /// When the engine last answered, RFC 3339.
    pub last_contact: Option<String>,
    /// The last failure talking to the engine, until it answers again.
    pub last_error: Option<String>,
}

/// A sidecar's audit log, in its [`ControlStatus`]. The engine pins
/// `public_key` when it starts collecting the sidecar's audit feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStatus {
    /// The last durable sequence (0: empty).
    pub head_seq: u64,
    /// Its hash, lower-case hex.
    pub head_hash: String,
    /// The sequence of the last signed checkpoint (0: none yet).
    pub checkpoint_seq: u64,
    /// The key that signs checkpoints, `ed25519:<base64>`.
    pub public_key: String,
    /// The sequence collection has acknowledged.
    pub collected_seq: u64,
    /// Why the log stopped accepting events, if it did.
    pub failed: Option<String>,
}
