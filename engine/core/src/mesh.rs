//! `mesh.toml`: the mesh's identity, classification taxonomy, purposes,
//! trusted token issuers and the global caps every other rule must respect.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    #[serde(default, skip_serializing_if = "Vocabulary::is_empty")]
    pub vocabulary: Vocabulary,
}

/// ODCS's conventional vocabulary, mapped onto the taxonomy: the
/// classification values product teams write (`restricted`, `secret`, …)
/// and tags (`pii`, …), each onto a sensitivity level or a classification
/// the taxonomy declares (whose level it then takes). The evolution rules
/// order fields by it; the sidecar still withholds every field whose
/// classification is not in the taxonomy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vocabulary {
    /// Classification value → level or taxonomy classification, on top of
    /// [`BUILTIN_LEVELS`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub classifications: BTreeMap<String, String>,
    /// Tag → level or taxonomy classification, on top of [`BUILTIN_TAGS`]:
    /// a field carrying the tag is at least that sensitive, and dropping the
    /// tag is a loosening.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

impl Vocabulary {
    pub fn is_empty(&self) -> bool {
        self.classifications.is_empty() && self.tags.is_empty()
    }
}

/// The conventional classification levels of ODCS contracts.
pub const BUILTIN_LEVELS: &[(&str, Level)] = &[
    ("public", Level::Public),
    ("internal", Level::Internal),
    ("confidential", Level::Confidential),
    ("restricted", Level::Restricted),
    ("secret", Level::Restricted),
];

/// Tags that make a field personal data whatever its classification says.
pub const BUILTIN_TAGS: &[(&str, Level)] = &[("pii", Level::Confidential)];

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
    pub const ALL: [Level; 4] = [
        Level::Public,
        Level::Internal,
        Level::Confidential,
        Level::Restricted,
    ];

    /// The level called `name`.
    pub fn parse(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == name)
    }

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

    /// The level a vocabulary entry maps to: a taxonomy classification's
    /// level, else a level name. `None` for anything else.
    pub fn vocabulary_target(&self, target: &str) -> Option<Level> {
        self.classification(target)
            .map(|c| c.level)
            .or_else(|| Level::parse(target))
    }

    /// How sensitive a classification value is: its level in the taxonomy,
    /// else the vocabulary's mapping, else the conventional level of that
    /// name (case-insensitive outside the taxonomy).
    pub fn classification_level(&self, value: &str) -> Option<Level> {
        if let Some(c) = self.classification(value) {
            return Some(c.level);
        }
        lookup(&self.vocabulary.classifications, BUILTIN_LEVELS, value)
            .and_then(|t| self.vocabulary_target(&t))
    }

    /// How sensitive a tag makes a field: the vocabulary's mapping, else the
    /// built-in one (case-insensitive); `None` for a tag that says nothing
    /// about sensitivity.
    pub fn tag_level(&self, tag: &str) -> Option<Level> {
        lookup(&self.vocabulary.tags, BUILTIN_TAGS, tag).and_then(|t| self.vocabulary_target(&t))
    }
}

/// `word`'s target in the mesh's mapping, else in the built-in one.
fn lookup(
    mesh: &BTreeMap<String, String>,
    builtin: &[(&str, Level)],
    word: &str,
) -> Option<String> {
    mesh.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(word))
        .map(|(_, t)| t.clone())
        .or_else(|| {
            builtin
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(word))
                .map(|(_, l)| l.as_str().to_string())
        })
}
