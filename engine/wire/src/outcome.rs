//! What a sidecar makes of a bundle: ACK or NACK, after a push
//! (`PUT /control/v1/bundle`) or a long-poll pull
//! (`POST /v1/sidecars/{id}/report`).

use serde::{Deserialize, Serialize};

/// Why a sidecar refused a bundle: the `code` of a [`Nack`], also the
/// label of the sidecar's refusal metric and its status's last refusal.
///
/// Codes never change meaning; the strings on the wire are the snake-case
/// names below. A code this build does not know (a newer sidecar, or a
/// verification code added later) parses as [`NackCode::Other`], verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NackCode {
    // ---- verification (`meshgov-bundle`'s codes) ----
    /// The envelope is larger than the sidecar accepts (HTTP 413).
    TooLarge,
    /// The envelope, the payload or the request body cannot be read.
    Malformed,
    /// The envelope carries something other than a meshgov bundle.
    UnknownPayloadType,
    /// No signature names a governance key the sidecar trusts.
    UntrustedKey,
    /// A trusted key's signature does not verify: altered after signing.
    BadSignature,
    /// The payload's format version is not one the sidecar reads.
    UnsupportedFormat,
    /// A component does not match its digest in the manifest.
    DigestMismatch,
    /// The manifest lists a component the payload lacks.
    MissingComponent,
    /// The payload holds a component the manifest does not list.
    UnlistedComponent,
    /// The bundle is for another mesh.
    WrongMesh,
    /// The bundle was sliced for another product than the sidecar serves.
    WrongProduct,
    /// The bundle's lifetime is over.
    Expired,
    /// The bundle claims a creation time in the future, beyond clock skew.
    NotYetValid,
    // ---- the sidecar's own checks ----
    /// The sidecar's product descriptor does not resolve against the
    /// bundle's mesh.
    Descriptor,
    /// A component (policy source) of a verified bundle does not compile.
    Components,
    /// The persisted bundle cannot be read at start.
    Unreadable,
    /// A lower revision than the one in force (HTTP 409).
    Rollback,
    /// The revision in force again, with another digest (HTTP 409).
    RevisionConflict,
    /// The bundle could not be written to the state directory (HTTP 500);
    /// the previous one stays in force.
    PersistFailed,
    /// A plugin the bundle carries does not load.
    PluginInvalid,
    /// The bundle holds a policy variant this sidecar does not know (a
    /// bundle built for a newer sidecar).
    UnsupportedPolicy,
    /// The bundle's policies need a pseudonym key scope this sidecar has no
    /// key for.
    MissingKey,
    /// A code this build does not know, as received.
    #[serde(untagged)]
    Other(String),
}

impl NackCode {
    /// Every code this build knows, in declaration order.
    pub const KNOWN: [NackCode; 22] = [
        NackCode::TooLarge,
        NackCode::Malformed,
        NackCode::UnknownPayloadType,
        NackCode::UntrustedKey,
        NackCode::BadSignature,
        NackCode::UnsupportedFormat,
        NackCode::DigestMismatch,
        NackCode::MissingComponent,
        NackCode::UnlistedComponent,
        NackCode::WrongMesh,
        NackCode::WrongProduct,
        NackCode::Expired,
        NackCode::NotYetValid,
        NackCode::Descriptor,
        NackCode::Components,
        NackCode::Unreadable,
        NackCode::Rollback,
        NackCode::RevisionConflict,
        NackCode::PersistFailed,
        NackCode::PluginInvalid,
        NackCode::UnsupportedPolicy,
        NackCode::MissingKey,
    ];

    /// The code as it is on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            NackCode::TooLarge => "too_large",
            NackCode::Malformed => "malformed",
            NackCode::UnknownPayloadType => "unknown_payload_type",
            NackCode::UntrustedKey => "untrusted_key",
            NackCode::BadSignature => "bad_signature",
            NackCode::UnsupportedFormat => "unsupported_format",
            NackCode::DigestMismatch => "digest_mismatch",
            NackCode::MissingComponent => "missing_component",
            NackCode::UnlistedComponent => "unlisted_component",
            NackCode::WrongMesh => "wrong_mesh",
            NackCode::WrongProduct => "wrong_product",
            NackCode::Expired => "expired",
            NackCode::NotYetValid => "not_yet_valid",
            NackCode::Descriptor => "descriptor",
            NackCode::Components => "components",
            NackCode::Unreadable => "unreadable",
            NackCode::Rollback => "rollback",
            NackCode::RevisionConflict => "revision_conflict",
            NackCode::PersistFailed => "persist_failed",
            NackCode::PluginInvalid => "plugin_invalid",
            NackCode::UnsupportedPolicy => "unsupported_policy",
            NackCode::MissingKey => "missing_key",
            NackCode::Other(code) => code,
        }
    }

    /// The code for `s`: a known one, else [`NackCode::Other`]. Maps
    /// `meshgov-bundle`'s `VerifyError::code()` onto this enum.
    pub fn from_code(s: &str) -> NackCode {
        NackCode::KNOWN
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or_else(|| NackCode::Other(s.to_string()))
    }
}

impl std::fmt::Display for NackCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bundle accepted, or already in force: the ACK of a push, sent by the
/// sidecar's control port in [`PushOutcome::Ack`], read by the engine and
/// `meshgov push`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The revision now in force.
    pub revision: u64,
    /// `sha256:<hex>` of the signed payload.
    pub digest: String,
    /// The same revision and digest were already in force: nothing changed.
    #[serde(default)]
    pub noop: bool,
}

/// A bundle pulled by long poll and accepted: the ACK the sidecar reports
/// in [`PullReport::Ack`], read by the engine. Unlike [`Ack`] it carries
/// no `noop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledAck {
    /// The revision now in force.
    pub revision: u64,
    /// `sha256:<hex>` of the signed payload.
    pub digest: String,
}

/// A bundle refused; the bundle in force (if any) stays in force. Sent by
/// the sidecar in a [`PushOutcome`] or a [`PullReport`], read by the
/// engine (which records it as the sidecar's last error and halts a
/// canary rollout on it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// Why, machine-readable.
    pub code: NackCode,
    /// Why, for people.
    pub reason: String,
    /// The revision still in force (`null`: none).
    #[serde(default)]
    pub active_revision: Option<u64>,
}

/// The control port's answer to `PUT /control/v1/bundle`: sent by the
/// sidecar, read by the engine's rollout and `meshgov push`. An ACK is
/// HTTP 200; a NACK is 409 (rollback, revision conflict), 413 (too large),
/// 400 (unreadable body), 500 (not persisted) or 422.
///
/// `{"result": "ack", "revision", "digest", "noop"}` or
/// `{"result": "nack", "code", "reason", "active_revision"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PushOutcome {
    /// Accepted, or already in force.
    Ack(Ack),
    /// Refused.
    Nack(Nack),
}

/// A sidecar's report on a bundle it pulled by long poll, for
/// `POST /v1/sidecars/{id}/report`: sent by the sidecar, read by the
/// engine.
///
/// `{"result": "ack", "revision", "digest"}` or
/// `{"result": "nack", "code", "reason", "active_revision"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PullReport {
    /// Accepted, or already in force.
    Ack(PulledAck),
    /// Refused: the engine does not offer this bundle to it again.
    Nack(Nack),
}

/// The engine's answer to a [`PullReport`] it recorded: sent by the
/// engine, read by the sidecar (which only needs the status: 404 means
/// the engine forgot it, register again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAnswer {
    /// Always `true`.
    pub recorded: bool,
}
