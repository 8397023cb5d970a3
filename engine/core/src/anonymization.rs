//! `anonymization/*.toml`: how each classification is shown to consumers who
//! may not `reveal` it, and row filters that hide whole records.

use serde::{Deserialize, Serialize};

/// One anonymization file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnonymizationFile {
    #[serde(default)]
    pub rules: Vec<AnonRule>,
    #[serde(default)]
    pub row_filters: Vec<RowFilterRule>,
}

/// The transforms a rule may name.
pub const TRANSFORMS: &[&str] = &["redact", "mask", "hmac", "generalize", "plugin"];
/// The generalizations `generalize` offers.
pub const GENERALIZATIONS: &[&str] = &["year", "month", "bucket", "prefix"];

/// Maps a classification to a transform. The transform applies unless Cedar
/// permits `reveal` on the field for this consumer and purpose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnonRule {
    pub id: String,
    pub classification: String,
    /// One of [`TRANSFORMS`].
    pub transform: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<String>,
    /// `redact`: omit the key instead of writing `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<bool>,
    /// `mask`: characters kept in the clear at the start and the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_first: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_char: Option<char>,
    /// `hmac`: the key scope. Products that share a scope get joinable pseudonyms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_scope: Option<String>,
    /// `hmac`: a prefix for the pseudonym, e.g. `u_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `generalize`: one of [`GENERALIZATIONS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `generalize` to `bucket`: the bucket width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u64>,
    /// `generalize` to `prefix`: characters kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chars: Option<usize>,
    /// `plugin`: the plugin's name in `plugins/*.toml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
}

/// The comparison operators row filters support.
pub const FILTER_OPS: &[&str] = &[
    "eq", "ne", "in", "not_in", "lt", "le", "gt", "ge", "is_null", "not_null",
];

/// Hides records: for consumers in `groups` (any; empty = everyone) reading
/// with one of `purposes` (empty = any), only records where
/// `field op value` holds are streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowFilterRule {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purposes: Vec<String>,
    pub field: String,
    /// One of [`FILTER_OPS`].
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}
