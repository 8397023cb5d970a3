//! `standards/*.toml`: the schema standards every product must meet. Each
//! rule has a stable id, a severity and a message that says how to fix it.

use crate::diag::Severity;
use serde::{Deserialize, Serialize};

/// One standards file. As written its checks are text
/// (`StandardsFile<String>`, so the checker can point at an unknown one);
/// parsed, they are [`Check`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardsFile<C = String> {
    #[serde(default = "Vec::new")]
    pub rules: Vec<StandardRuleOf<C>>,
}

/// What a standards rule checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    FieldName,
    PortName,
    SuffixType,
    RequiredMetadata,
    Classified,
    IdFormat,
    TimestampUtc,
    #[serde(rename = "cloudevents")]
    CloudEvents,
    PortAddress,
    Plugin,
}

impl Check {
    /// Every check.
    pub const ALL: [Check; 10] = [
        Check::FieldName,
        Check::PortName,
        Check::SuffixType,
        Check::RequiredMetadata,
        Check::Classified,
        Check::IdFormat,
        Check::TimestampUtc,
        Check::CloudEvents,
        Check::PortAddress,
        Check::Plugin,
    ];

    /// The check called `name` in a rule.
    pub fn parse(name: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The name a rule writes.
    pub fn name(self) -> &'static str {
        match self {
            Check::FieldName => "field_name",
            Check::PortName => "port_name",
            Check::SuffixType => "suffix_type",
            Check::RequiredMetadata => "required_metadata",
            Check::Classified => "classified",
            Check::IdFormat => "id_format",
            Check::TimestampUtc => "timestamp_utc",
            Check::CloudEvents => "cloudevents",
            Check::PortAddress => "port_address",
            Check::Plugin => "plugin",
        }
    }

    /// The parameters it takes, for error hints.
    pub fn takes(self) -> &'static str {
        match self {
            Check::FieldName => "`pattern`: a regex every field name must match",
            Check::PortName => "`pattern`: a regex every output port name must match",
            Check::SuffixType => {
                "`field_pattern` (regex on names) and `logical_type` those fields must have"
            }
            Check::RequiredMetadata => "`keys`: descriptor keys that must be present",
            Check::Classified => "no parameters: every field has a classification",
            Check::IdFormat => {
                "`field_pattern` (regex on names) and `pattern` the values must match"
            }
            Check::TimestampUtc => "`field_pattern`: fields holding RFC 3339 UTC timestamps",
            Check::CloudEvents => "no parameters: event ports carry CloudEvents attributes",
            Check::PortAddress => "`pattern`: a regex every port address must match",
            Check::Plugin => "`plugin`: a validator plugin run on each record",
        }
    }

    /// The parameter keys it needs.
    pub fn needs(self) -> &'static [&'static str] {
        match self {
            Check::FieldName | Check::PortName | Check::PortAddress => &["pattern"],
            Check::SuffixType => &["field_pattern", "logical_type"],
            Check::RequiredMetadata => &["keys"],
            Check::IdFormat => &["field_pattern", "pattern"],
            Check::TimestampUtc => &["field_pattern"],
            Check::Plugin => &["plugin"],
            Check::Classified | Check::CloudEvents => &[],
        }
    }
}

/// A standards rule as written, its check as text.
pub type StandardRuleSpec = StandardRuleOf<String>;
/// A standards rule, parsed: the model the evaluators use.
pub type StandardRule = StandardRuleOf<Check>;

impl StandardRuleSpec {
    /// Parses the check; an unknown one is returned as its name.
    pub fn parse(self) -> Result<StandardRule, String> {
        let check = Check::parse(&self.check).ok_or_else(|| self.check.clone())?;
        Ok(StandardRuleOf {
            check,
            id: self.id,
            severity: self.severity,
            message: self.message,
            fix: self.fix,
            domains: self.domains,
            products: self.products,
            pattern: self.pattern,
            field_pattern: self.field_pattern,
            logical_type: self.logical_type,
            keys: self.keys,
            plugin: self.plugin,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardRuleOf<C> {
    pub id: String,
    #[serde(default = "default_severity", with = "severity_serde")]
    pub severity: Severity,
    /// What it checks.
    pub check: C,
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
