//! `standards/*.toml`: the schema standards every product must meet. Each
//! rule has a stable id, a severity and a message that says how to fix it.

use crate::diag::Severity;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardsFile {
    #[serde(default)]
    pub rules: Vec<StandardRule>,
}

/// The checks a standards rule may name, with what each needs.
pub const CHECKS: &[(&str, &str)] = &[
    (
        "field_name",
        "`pattern`: a regex every field name must match",
    ),
    (
        "port_name",
        "`pattern`: a regex every output port name must match",
    ),
    (
        "suffix_type",
        "`field_pattern` (regex on names) and `logical_type` those fields must have",
    ),
    (
        "required_metadata",
        "`keys`: descriptor keys that must be present",
    ),
    (
        "classified",
        "no parameters: every field has a classification",
    ),
    (
        "id_format",
        "`field_pattern` (regex on names) and `pattern` the values must match",
    ),
    (
        "timestamp_utc",
        "`field_pattern`: fields holding RFC 3339 UTC timestamps",
    ),
    (
        "cloudevents",
        "no parameters: event ports carry CloudEvents attributes",
    ),
    (
        "port_address",
        "`pattern`: a regex every port address must match",
    ),
    ("plugin", "`plugin`: a validator plugin run on each record"),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardRule {
    pub id: String,
    #[serde(default = "default_severity", with = "severity_serde")]
    pub severity: Severity,
    /// One of [`CHECKS`].
    pub check: String,
    /// What is wrong, in the words a product team will read.
    pub message: String,
    /// How to fix it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fix: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
}

fn default_severity() -> Severity {
    Severity::Error
}

mod severity_serde {
    use crate::diag::Severity;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Severity, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Severity, D::Error> {
        match String::deserialize(de)?.as_str() {
            "error" => Ok(Severity::Error),
            "warning" => Ok(Severity::Warning),
            "info" => Ok(Severity::Info),
            other => Err(serde::de::Error::invalid_value(
                serde::de::Unexpected::Str(other),
                &"one of `error`, `warning`, `info`",
            )),
        }
    }
}
