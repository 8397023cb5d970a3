//! `mesh.toml`: the mesh's identity, classification taxonomy, purposes,
//! trusted token issuers and the global caps every other rule must respect.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// The mesh id; bundles carry it and sidecars refuse another mesh's bundles.
    pub id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub bundle: BundleSettings,
    #[serde(default)]
    pub classifications: Vec<Classification>,
    #[serde(default)]
    pub purposes: Vec<Purpose>,
    #[serde(default)]
    pub issuers: Vec<Issuer>,
    #[serde(default)]
    pub privacy: PrivacyCaps,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSettings {
    /// How long a bundle stays valid after it is built, in seconds.
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
}

fn default_ttl() -> u64 {
    24 * 3600
}

impl Default for BundleSettings {
    fn default() -> Self {
        BundleSettings {
            ttl_seconds: default_ttl(),
        }
    }
}

/// Sensitivity levels, least to most sensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Public,
    Internal,
    Confidential,
    Restricted,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Public => "public",
            Level::Internal => "internal",
            Level::Confidential => "confidential",
            Level::Restricted => "restricted",
        }
    }

    /// Confidential and restricted values never leave a sidecar in the clear
    /// unless Cedar permits `reveal`; without an anonymization rule they are
    /// redacted (fail closed).
    pub fn needs_anonymization(self) -> bool {
        self >= Level::Confidential
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classification {
    pub id: String,
    pub level: Level,
    /// Direct identifiers (email, phone, name) may never be aggregated on or
    /// released by differential-privacy queries.
    #[serde(default)]
    pub direct_identifier: bool,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purpose {
    pub id: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    /// The `iss` claim this issuer puts in its tokens.
    pub id: String,
    /// The `aud` claim tokens must carry to be accepted by the mesh.
    #[serde(default = "default_audience")]
    pub audience: String,
}

fn default_audience() -> String {
    "meshgov".into()
}

/// Mesh-wide ceilings for differential privacy; product rules may be
/// stricter, never looser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyCaps {
    #[serde(default = "default_max_eps_query")]
    pub max_epsilon_per_query: f64,
    #[serde(default = "default_max_eps_budget")]
    pub max_epsilon_budget: f64,
    #[serde(default = "default_max_delta")]
    pub max_delta: f64,
}

fn default_max_eps_query() -> f64 {
    1.0
}
fn default_max_eps_budget() -> f64 {
    10.0
}
fn default_max_delta() -> f64 {
    1e-5
}

impl Default for PrivacyCaps {
    fn default() -> Self {
        PrivacyCaps {
            max_epsilon_per_query: default_max_eps_query(),
            max_epsilon_budget: default_max_eps_budget(),
            max_delta: default_max_delta(),
        }
    }
}

impl MeshConfig {
    pub fn classification(&self, id: &str) -> Option<&Classification> {
        self.classifications.iter().find(|c| c.id == id)
    }

    pub fn has_purpose(&self, id: &str) -> bool {
        self.purposes.iter().any(|p| p.id == id)
    }
}
