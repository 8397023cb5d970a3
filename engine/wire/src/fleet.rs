//! The fleet: `GET /v1/fleet`.

use serde::{Deserialize, Serialize};

/// The engine's view of its releases, its rollout and every registered
/// sidecar: sent by the engine, read by `meshgov status` and the fleet page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fleet {
    /// The mesh of the last good build.
    pub mesh: Option<String>,
    /// The key id bundles are signed with.
    pub key_id: String,
    /// The release every sidecar outside a canary set should hold.
    pub released: Option<ReleaseView>,
    /// A release in a canary rollout.
    pub candidate: Option<ReleaseView>,
    /// The current (or last) rollout.
    pub rollout: RolloutStatus,
    /// The last build, good or failed.
    pub last_build: Option<BuildStatus>,
    /// Every registered sidecar, by id.
    pub sidecars: Vec<SidecarView>,
}

/// A signed release, in the [`Fleet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseView {
    /// Its revision: strictly increasing across builds and restarts.
    pub revision: u64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// The policy repository's commit, when it is a git checkout.
    pub source_commit: Option<String>,
    /// The products it has a slice for.
    pub products: Vec<String>,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Nothing built yet.
    Idle,
    /// Pushed to the canaries; waiting for their ACKs.
    Canary,
    /// Canaries ACKed; watching their health for the bake time.
    Baking,
    /// Released to the whole fleet.
    Released,
    /// Stopped by a NACK or failing canary health; the rest keep the
    /// previous release.
    Halted,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 5] = [
        Phase::Idle,
        Phase::Canary,
        Phase::Baking,
        Phase::Released,
        Phase::Halted,
    ];

    /// The phase as it is on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Canary => "canary",
            Phase::Baking => "baking",
            Phase::Released => "released",
            Phase::Halted => "halted",
        }
    }
}

/// The current rollout, in the [`Fleet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The revision rolling out.
    pub revision: Option<u64>,
    /// Where it stands.
    pub phase: Phase,
    /// The canary sidecars' ids.
    pub canaries: Vec<String>,
    /// Why it halted.
    pub reason: Option<String>,
    /// RFC 3339.
    pub started_at: Option<String>,
}

/// The last build of the policy repository, in the [`Fleet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildStatus {
    /// RFC 3339.
    pub at: String,
    /// The repository state built: `git:<commit>` or `files:<sha256>`.
    pub fingerprint: String,
    /// Checked, tested and signed.
    pub ok: bool,
    /// The revision signed, when `ok`.
    pub revision: Option<u64>,
    /// A re-signed revision of unchanged policies, before expiry.
    pub renewal: bool,
    /// Why it failed (check, test or signing); not rolled out.
    pub error: Option<String>,
}

/// Where a sidecar stands against its target release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SidecarState {
    /// It ACKed its target (or there is none yet).
    InSync,
    /// Its target is on the way.
    Pending,
    /// It refused its target.
    Nacked,
    /// The last push or contact failed.
    Unreachable,
}

impl SidecarState {
    /// Every state, in order.
    pub const ALL: [SidecarState; 4] = [
        SidecarState::InSync,
        SidecarState::Pending,
        SidecarState::Nacked,
        SidecarState::Unreachable,
    ];

    /// The state as it is on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SidecarState::InSync => "in_sync",
            SidecarState::Pending => "pending",
            SidecarState::Nacked => "nacked",
            SidecarState::Unreachable => "unreachable",
        }
    }
}

/// One registered sidecar, in the [`Fleet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarView {
    /// Its fleet id.
    pub id: String,
    /// `domain/name` of the product it serves.
    pub product: String,
    /// Where the engine pushes to.
    pub control_url: String,
    /// Where it stands against its target.
    pub state: SidecarState,
    /// In the current canary set.
    pub canary: bool,
    /// The revision it last ACKed (or registered or polled holding).
    pub acked_revision: Option<u64>,
    /// The digest of that bundle.
    pub acked_digest: Option<String>,
    /// The revision it should hold.
    pub target_revision: Option<u64>,
    /// When it last registered, polled, reported or answered a push,
    /// RFC 3339.
    pub last_contact: String,
    /// Seconds since `last_contact`.
    pub last_contact_seconds_ago: i64,
    /// Its last NACK, or why the last push failed.
    pub last_error: Option<String>,
    /// Seconds since the engine built the bundle the sidecar ACKed.
    pub bundle_age_seconds: Option<i64>,
    /// With `--collect-audit`: the last audit sequence collected.
    pub audit_collected_seq: Option<u64>,
    /// With `--collect-audit`: why the last collection failed.
    pub audit_error: Option<String>,
}
