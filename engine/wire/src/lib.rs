//! `meshgov-wire`: the contract between the engine (`meshgov serve`), its
//! sidecars and the CLI. Every message either side sends the other is a
//! type here; the sender serializes it and the receiver parses it, so a
//! renamed field breaks the build or the golden tests (`tests/golden/`),
//! not a rollout.
//!
//! | message | route | sender → receiver | type |
//! | --- | --- | --- | --- |
//! | registration | `POST /v1/sidecars` | sidecar → engine | [`Registration`], answered [`RegistrationAnswer`] |
//! | long poll | `GET /v1/bundle?sidecar=ID&wait=S` | sidecar → engine | [`PollQuery`]; the answer is the signed envelope, or 304 |
//! | pull report | `POST /v1/sidecars/{id}/report` | sidecar → engine | [`PullReport`], answered [`ReportAnswer`] |
//! | bundle push | `PUT /control/v1/bundle` | engine → sidecar | the signed envelope, answered [`PushOutcome`] |
//! | control status | `GET /control/v1/status` | engine → sidecar | answered [`ControlStatus`] |
//! | audit feed | `GET /control/v1/audit?after=SEQ` | engine → sidecar | [`AuditFeedQuery`]; NDJSON lines, see [`FeedLine`] |
//! | fleet | `GET /v1/fleet` | CLI, fleet page → engine | answered [`Fleet`] |
//! | any refusal | every route | both | [`ErrorBody`] |
//!
//! Both sides keep the byte layout: fields serialize in declaration order,
//! absent optional values as `null` (except where a type says otherwise),
//! and NACK codes as the same snake-case strings as always ([`NackCode`]).
//!
//! The types are plain serde structs and enums: no runtime, no I/O. The
//! `client` feature adds `client::HttpClient`, the bounded
//! send-with-timeout HTTP client both sides call each other with; the
//! `tls` feature, the certificate loading of the TLS listeners.

#![warn(missing_docs)]

mod audit_feed;
#[cfg(feature = "client")]
pub mod client;
mod error;
mod fleet;
mod outcome;
mod poll;
mod registration;
mod status;
#[cfg(feature = "tls")]
pub mod tls;

pub use audit_feed::{
    AUDIT_HEAD_HEADER, AuditFeedQuery, AuditQueryError, FeedLine, MAX_FEED_LINE_BYTES,
    NDJSON_CONTENT_TYPE,
};
pub use error::ErrorBody;
pub use fleet::{BuildStatus, Fleet, Phase, ReleaseView, RolloutStatus, SidecarState, SidecarView};
pub use outcome::{Ack, Nack, NackCode, PullReport, PulledAck, PushOutcome, ReportAnswer};
pub use poll::{BUNDLE_REVISION_HEADER, PollQuery, PollQueryError, etag, etag_digest};
pub use registration::{Registration, RegistrationAnswer, valid_sidecar_id};
pub use status::{AuditStatus, BundleStatus, ControlStatus, LinkStatus, Refusal, ServingState};

/// The engine's and the control port's routes.
pub mod path {
    /// `POST`: a sidecar registers ([`crate::Registration`]).
    pub const SIDECARS: &str = "/v1/sidecars";
    /// `GET`: the long poll for a sidecar's bundle ([`crate::PollQuery`]).
    pub const POLL: &str = "/v1/bundle";
    /// `GET`: the fleet ([`crate::Fleet`]).
    pub const FLEET: &str = "/v1/fleet";
    /// `PUT`: a bundle push, answered [`crate::PushOutcome`]; `GET`: the
    /// bundle in force, byte for byte.
    pub const CONTROL_BUNDLE: &str = "/control/v1/bundle";
    /// `GET`: the control status ([`crate::ControlStatus`]).
    pub const CONTROL_STATUS: &str = "/control/v1/status";
    /// `GET`: the audit feed ([`crate::AuditFeedQuery`]).
    pub const CONTROL_AUDIT: &str = "/control/v1/audit";

    /// `POST`: the report of sidecar `id` on a bundle it pulled
    /// ([`crate::PullReport`]).
    pub fn report(id: &str) -> String {
        format!("{SIDECARS}/{id}/report")
    }

    /// The sidecar id of a report path, if `path` is one.
    pub fn report_id(path: &str) -> Option<&str> {
        path.strip_prefix(SIDECARS)?
            .strip_prefix('/')?
            .strip_suffix("/report")
    }
}
