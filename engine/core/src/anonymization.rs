//! `anonymization/*.toml`: how each classification is shown to consumers who
//! may not `reveal` it, and row filters that hide whole records.
//!
//! Each rule has two forms. The *spec* ([`AnonRuleSpec`], [`RowFilterSpec`])
//! is the file's shape, with every choice still text, so the checker can
//! point at the key that is wrong. The *model* ([`AnonRule`], [`RowFilter`])
//! is what everything else uses: each choice parsed into an enum once, at
//! the boundary, by `TryFrom`. Policies load through it, and so does a
//! bundle's `anonymization.json`: a bundle naming a transform this build
//! does not know is refused as a whole, never at read time.

use serde::{Deserialize, Serialize};

/// One anonymization file, as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnonymizationFile {
    #[serde(default)]
    pub rules: Vec<AnonRuleSpec>,
    #[serde(default)]
    pub row_filters: Vec<RowFilterSpec>,
}

/// The transforms a rule may name.
pub const TRANSFORMS: &[&str] = &["redact", "mask", "hmac", "generalize", "plugin"];
/// The generalizations `generalize` offers.
pub const GENERALIZATIONS: &[&str] = &["year", "month", "bucket", "prefix"];

/// Maps a classification to a transform, as written in a file. The
/// transform applies unless Cedar permits `reveal` on the field for this
/// consumer and purpose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnonRuleSpec {
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

/// An anonymization rule, parsed: the model the evaluators use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AnonRuleSpec", into = "AnonRuleSpec")]
pub struct AnonRule {
    pub id: String,
    pub classification: String,
    pub description: String,
    pub domains: Vec<String>,
    pub products: Vec<String>,
    pub method: Method,
}

/// What a rule does to a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `null` the value, or with `drop` leave the key out.
    Redact { drop: bool },
    /// Keep the first and last characters, mask the rest.
    Mask {
        keep_first: usize,
        keep_last: usize,
        mask_char: char,
    },
    /// A keyed pseudonym; the key comes from the enforcing side's key ring.
    Hmac { key_scope: String, prefix: String },
    /// A coarser value.
    Generalize(Generalization),
    /// A WebAssembly transform plugin, by name.
    Plugin { name: String },
}

/// What `generalize` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generalization {
    Year,
    Month,
    /// Numbers become the range of `width` integers that holds them.
    Bucket {
        width: u64,
    },
    /// Strings keep their first `chars` characters.
    Prefix {
        chars: usize,
    },
}

impl Method {
    /// The short label audit events, test expectations and `diff` use:
    /// `mask`, `hmac`, `drop`, `generalize:year`, `plugin:name`, …
    pub fn label(&self) -> String {
        match self {
            Method::Redact { drop: true } => "drop".into(),
            Method::Redact { drop: false } => "redact".into(),
            Method::Mask { .. } => "mask".into(),
            Method::Hmac { .. } => "hmac".into(),
            Method::Generalize(g) => format!("generalize:{}", g.name()),
            Method::Plugin { name } => format!("plugin:{name}"),
        }
    }

    /// The transform's name as a rule writes it.
    pub fn transform_name(&self) -> &'static str {
        match self {
            Method::Redact { .. } => "redact",
            Method::Mask { .. } => "mask",
            Method::Hmac { .. } => "hmac",
            Method::Generalize(_) => "generalize",
            Method::Plugin { .. } => "plugin",
        }
    }
}

impl Generalization {
    /// The name `to = "…"` gives it.
    pub fn name(&self) -> &'static str {
        match self {
            Generalization::Year => "year",
            Generalization::Month => "month",
            Generalization::Bucket { .. } => "bucket",
            Generalization::Prefix { .. } => "prefix",
        }
    }
}

/// Why a rule, as written, is not a rule the model can hold. Each names
/// the key to point at ([`key`](Self::key)), the checker's rule id
/// ([`code`](Self::code)) and a fix ([`hint`](Self::hint)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("unknown transform `{0}`")]
    UnknownTransform(String),
    #[error("rule `{rule}`: `mask` needs `keep_first` or `keep_last`")]
    MaskNeedsKeep { rule: String },
    #[error("rule `{rule}`: `hmac` needs a `key_scope`")]
    HmacNeedsScope { rule: String },
    #[error("rule `{rule}`: `generalize` needs `to`, one of year, month, bucket, prefix")]
    GeneralizeNeedsTo { rule: String, given: bool },
    #[error("rule `{rule}`: `bucket` needs a positive `width`")]
    BucketNeedsWidth { rule: String },
    #[error("rule `{rule}`: `prefix` needs a positive `chars`")]
    PrefixNeedsChars { rule: String },
    #[error("rule `{rule}`: `plugin` needs `plugin = \"name\"`")]
    PluginNeedsName { rule: String },
    #[error("unknown operator `{0}`")]
    UnknownOperator(String),
    #[error("row filter `{rule}`: `{op}` needs a `value`")]
    FilterNeedsValue { rule: String, op: &'static str },
    #[error("row filter `{rule}`: `{op}` needs a list")]
    FilterNeedsList { rule: String, op: &'static str },
    #[error("row filter `{rule}`: `{op}` takes no `value`")]
    FilterTakesNoValue { rule: String, op: &'static str },
}

impl RuleError {
    /// The checker's rule id for this finding.
    pub fn code(&self) -> &'static str {
        match self {
            RuleError::UnknownTransform(_) => "ANON-TRANSFORM",
            RuleError::PluginNeedsName { .. } => "ANON-PLUGIN",
            RuleError::UnknownOperator(_) => "FILTER-OP",
            RuleError::FilterNeedsValue { .. }
            | RuleError::FilterNeedsList { .. }
            | RuleError::FilterTakesNoValue { .. } => "FILTER-VALUE",
            _ => "ANON-PARAM",
        }
    }

    /// The key of the rule the finding points at.
    pub fn key(&self) -> &'static str {
        match self {
            RuleError::GeneralizeNeedsTo { given: true, .. }
            | RuleError::BucketNeedsWidth { .. }
            | RuleError::PrefixNeedsChars { .. } => "to",
            RuleError::UnknownOperator(_) | RuleError::FilterNeedsValue { .. } => "op",
            RuleError::FilterNeedsList { .. } | RuleError::FilterTakesNoValue { .. } => "value",
            _ => "transform",
        }
    }

    /// How to fix it.
    pub fn hint(&self) -> String {
        match self {
            RuleError::UnknownTransform(_) => format!("use one of {}", TRANSFORMS.join(", ")),
            RuleError::MaskNeedsKeep { .. } => "add e.g. `keep_last = 4`".into(),
            RuleError::HmacNeedsScope { .. } => "add e.g. `key_scope = \"user-identity\"`; products sharing a scope get joinable pseudonyms".into(),
            RuleError::GeneralizeNeedsTo { .. } => "add e.g. `to = \"year\"`".into(),
            RuleError::BucketNeedsWidth { .. } => "add e.g. `width = 10`".into(),
            RuleError::PrefixNeedsChars { .. } => "add e.g. `chars = 3`".into(),
            RuleError::PluginNeedsName { .. } => {
                "name a plugin declared in `plugins/*.toml`".into()
            }
            RuleError::UnknownOperator(_) => {
                let names: Vec<&str> = FilterOp::ALL.iter().map(|op| op.name()).collect();
                format!("use one of {}", names.join(", "))
            }
            RuleError::FilterNeedsValue { .. } => "add `value = …`".into(),
            RuleError::FilterNeedsList { .. } => "write `value = [\"a\", \"b\"]`".into(),
            RuleError::FilterTakesNoValue { .. } => "remove `value`".into(),
        }
    }
}

impl TryFrom<AnonRuleSpec> for AnonRule {
    type Error = RuleError;

    fn try_from(s: AnonRuleSpec) -> Result<AnonRule, RuleError> {
        let rule = || s.id.clone();
        let method = match s.transform.as_str() {
            "redact" => Method::Redact {
                drop: s.drop.unwrap_or(false),
            },
            "mask" => {
                if s.keep_first.is_none() && s.keep_last.is_none() {
                    return Err(RuleError::MaskNeedsKeep { rule: rule() });
                }
                Method::Mask {
                    keep_first: s.keep_first.unwrap_or(0),
                    keep_last: s.keep_last.unwrap_or(0),
                    mask_char: s.mask_char.unwrap_or('*'),
                }
            }
            "hmac" => match s.key_scope.as_deref() {
                Some(scope) if !scope.is_empty() => Method::Hmac {
                    key_scope: scope.to_string(),
                    prefix: s.prefix.clone().unwrap_or_default(),
                },
                _ => return Err(RuleError::HmacNeedsScope { rule: rule() }),
            },
            "generalize" => Method::Generalize(match s.to.as_deref() {
                Some("year") => Generalization::Year,
                Some("month") => Generalization::Month,
                Some("bucket") => match s.width {
                    Some(width) if width > 0 => Generalization::Bucket { width },
                    _ => return Err(RuleError::BucketNeedsWidth { rule: rule() }),
                },
                Some("prefix") => match s.chars {
                    Some(chars) if chars > 0 => Generalization::Prefix { chars },
                    _ => return Err(RuleError::PrefixNeedsChars { rule: rule() }),
                },
                other => {
                    return Err(RuleError::GeneralizeNeedsTo {
                        rule: rule(),
                        given: other.is_some(),
                    });
                }
            }),
            "plugin" => match &s.plugin {
                Some(name) => Method::Plugin { name: name.clone() },
                None => return Err(RuleError::PluginNeedsName { rule: rule() }),
            },
            other => return Err(RuleError::UnknownTransform(other.to_string())),
        };
        Ok(AnonRule {
            id: s.id,
            classification: s.classification,
            description: s.description,
            domains: s.domains,
            products: s.products,
            method,
        })
    }
}

impl From<AnonRule> for AnonRuleSpec {
    fn from(r: AnonRule) -> AnonRuleSpec {
        let mut s = AnonRuleSpec {
            id: r.id,
            classification: r.classification,
            transform: r.method.transform_name().to_string(),
            description: r.description,
            domains: r.domains,
            products: r.products,
            drop: None,
            keep_first: None,
            keep_last: None,
            mask_char: None,
            key_scope: None,
            prefix: None,
            to: None,
            width: None,
            chars: None,
            plugin: None,
        };
        match r.method {
            Method::Redact { drop } => s.drop = drop.then_some(true),
            Method::Mask {
                keep_first,
                keep_last,
                mask_char,
            } => {
                s.keep_first = Some(keep_first);
                s.keep_last = Some(keep_last);
                s.mask_char = Some(mask_char);
            }
            Method::Hmac { key_scope, prefix } => {
                s.key_scope = Some(key_scope);
                s.prefix = (!prefix.is_empty()).then_some(prefix);
            }
            Method::Generalize(g) => {
                s.to = Some(g.name().to_string());
                match g {
                    Generalization::Bucket { width } => s.width = Some(width),
                    Generalization::Prefix { chars } => s.chars = Some(chars),
                    Generalization::Year | Generalization::Month => {}
                }
            }
            Method::Plugin { name } => s.plugin = Some(name),
        }
        s
    }
}

/// The comparison operators row filters support.
pub use meshgov_anonymize::CompareOp as FilterOp;

/// Hides records, as written: for consumers in `groups` (any; empty =
/// everyone) reading with one of `purposes` (empty = any), only records
/// where `field op value` holds are streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowFilterSpec {
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
    /// One of the [`FilterOp`] names: `eq`, `ne`, `in`, `not_in`, `lt`,
    /// `le`, `gt`, `ge`, `is_null`, `not_null`.
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

/// A row filter, parsed. `value` is `Null` for `is_null` and `not_null`,
/// and an array for `in` and `not_in`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RowFilterSpec", into = "RowFilterSpec")]
pub struct RowFilter {
    pub id: String,
    pub description: String,
    pub domains: Vec<String>,
    pub products: Vec<String>,
    pub ports: Vec<String>,
    pub groups: Vec<String>,
    pub purposes: Vec<String>,
    pub field: String,
    pub op: FilterOp,
    pub value: serde_json::Value,
}

impl TryFrom<RowFilterSpec> for RowFilter {
    type Error = RuleError;

    fn try_from(s: RowFilterSpec) -> Result<RowFilter, RuleError> {
        let op = FilterOp::parse(&s.op).ok_or_else(|| RuleError::UnknownOperator(s.op.clone()))?;
        let needs_value = !matches!(op, FilterOp::IsNull | FilterOp::NotNull);
        let needs_list = matches!(op, FilterOp::In | FilterOp::NotIn);
        let rule = s.id.clone();
        let value = match (s.value, needs_value) {
            (None, true) => {
                return Err(RuleError::FilterNeedsValue {
                    rule,
                    op: op.name(),
                });
            }
            (Some(v), true) if needs_list && !v.is_array() => {
                return Err(RuleError::FilterNeedsList {
                    rule,
                    op: op.name(),
                });
            }
            (Some(_), false) => {
                return Err(RuleError::FilterTakesNoValue {
                    rule,
                    op: op.name(),
                });
            }
            (Some(v), true) => v,
            (None, false) => serde_json::Value::Null,
        };
        Ok(RowFilter {
            id: s.id,
            description: s.description,
            domains: s.domains,
            products: s.products,
            ports: s.ports,
            groups: s.groups,
            purposes: s.purposes,
            field: s.field,
            op,
            value,
        })
    }
}

impl From<RowFilter> for RowFilterSpec {
    fn from(r: RowFilter) -> RowFilterSpec {
        RowFilterSpec {
            id: r.id,
            description: r.description,
            domains: r.domains,
            products: r.products,
            ports: r.ports,
            groups: r.groups,
            purposes: r.purposes,
            field: r.field,
            op: r.op.name().to_string(),
            value: (!r.value.is_null()).then_some(r.value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_text: &str) -> AnonRuleSpec {
        let mut f: AnonymizationFile = toml::from_str(toml_text).unwrap();
        f.rules.remove(0)
    }

    #[test]
    fn every_transform_parses_and_writes_back_the_same_rule() {
        for text in [
            "[[rules]]\nid='a'\nclassification='c'\ntransform='redact'\ndrop=true",
            "[[rules]]\nid='a'\nclassification='c'\ntransform='mask'\nkeep_first=1\nkeep_last=4\nmask_char='#'",
            "[[rules]]\nid='a'\nclassification='c'\ntransform='hmac'\nkey_scope='s'\nprefix='u_'",
            "[[rules]]\nid='a'\nclassification='c'\ntransform='generalize'\nto='bucket'\nwidth=10",
            "[[rules]]\nid='a'\nclassification='c'\ntransform='generalize'\nto='prefix'\nchars=3",
            "[[rules]]\nid='a'\nclassification='c'\ntransform='generalize'\nto='month'",
            "[[rules]]\nid='a'\nclassification='c'\ntransform='plugin'\nplugin='p'",
        ] {
            let rule = AnonRule::try_from(spec(text)).unwrap();
            let json = serde_json::to_string(&rule).unwrap();
            let back: AnonRule = serde_json::from_str(&json).unwrap();
            assert_eq!(back, rule, "{text}");
        }
    }

    #[test]
    fn labels_come_from_the_parsed_method() {
        let label = |t: &str| {
            AnonRule::try_from(spec(&format!("[[rules]]\nid='a'\nclassification='c'\n{t}")))
                .unwrap()
                .method
                .label()
        };
        assert_eq!(label("transform='redact'\ndrop=true"), "drop");
        assert_eq!(label("transform='redact'"), "redact");
        assert_eq!(
            label("transform='generalize'\nto='year'"),
            "generalize:year"
        );
        assert_eq!(label("transform='plugin'\nplugin='phone'"), "plugin:phone");
    }

    #[test]
    fn a_rule_the_model_cannot_hold_is_an_error_with_a_key_and_a_fix() {
        let err = |t: &str| {
            AnonRule::try_from(spec(&format!("[[rules]]\nid='a'\nclassification='c'\n{t}")))
                .unwrap_err()
        };
        let e = err("transform='tokenize'");
        assert_eq!((e.code(), e.key()), ("ANON-TRANSFORM", "transform"));
        assert_eq!(e.to_string(), "unknown transform `tokenize`");
        assert!(e.hint().contains("redact, mask, hmac"));
        let e = err("transform='generalize'\nto='decade'");
        assert_eq!((e.code(), e.key()), ("ANON-PARAM", "to"));
        let e = err("transform='generalize'\nto='bucket'\nwidth=0");
        assert_eq!((e.code(), e.key()), ("ANON-PARAM", "to"));
        assert_eq!(err("transform='hmac'\nkey_scope=''").code(), "ANON-PARAM");
        assert_eq!(err("transform='mask'").code(), "ANON-PARAM");
        assert_eq!(err("transform='plugin'").code(), "ANON-PLUGIN");
    }

    #[test]
    fn row_filters_parse_their_operator_and_check_the_value() {
        let parse = |t: &str| {
            let mut f: AnonymizationFile =
                toml::from_str(&format!("[[row_filters]]\nid='f'\nfield='x'\n{t}")).unwrap();
            RowFilter::try_from(f.row_filters.remove(0))
        };
        let f = parse("op='in'\nvalue=['a']").unwrap();
        assert_eq!(f.op, FilterOp::In);
        let back: RowFilter = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
        assert_eq!(
            parse("op='is_null'").unwrap().value,
            serde_json::Value::Null
        );
        assert_eq!(
            parse("op='like'\nvalue='a'").unwrap_err().code(),
            "FILTER-OP"
        );
        assert_eq!(parse("op='in'\nvalue='a'").unwrap_err().key(), "value");
        assert_eq!(parse("op='eq'").unwrap_err().key(), "op");
        assert_eq!(
            parse("op='not_null'\nvalue=1").unwrap_err().code(),
            "FILTER-VALUE"
        );
        for op in FilterOp::ALL {
            assert_eq!(FilterOp::parse(op.name()), Some(op));
        }
    }
}
