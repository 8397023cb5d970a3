//! From a [`ReadPlan`] to a [`RecordPlan`]: the once-per-request step that
//! turns policy decisions into the per-record transform program, with the
//! pseudonym keys bound in. Everything that can fail fails here, before the
//! first record is read.

use crate::plan::{ReadPlan, Treatment};
use crate::plugins::PluginSet;
use meshgov_anonymize::{
    Clause, CompareOp, DatePart, FieldRule, RecordPlan, RowPredicate, Transform,
};
use ring::hmac;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Pseudonym keys by key scope. Secrets never enter bundles: sidecars load
/// them from their own config, tests from `[keys]` in a test file.
#[derive(Clone, Default)]
pub struct KeyRing {
    keys: BTreeMap<String, Arc<hmac::Key>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets; the scopes are enough to debug with.
        f.debug_struct("KeyRing")
            .field("scopes", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// Adds the secret for `scope`; refuses secrets too short to resist a
    /// dictionary attack.
    pub fn insert(&mut self, scope: &str, secret: &[u8]) -> Result<(), String> {
        if secret.len() < meshgov_anonymize::MIN_HMAC_KEY_LEN {
            return Err(format!(
                "the key for scope `{scope}` has {} bytes; at least {} are required",
                secret.len(),
                meshgov_anonymize::MIN_HMAC_KEY_LEN
            ));
        }
        self.keys.insert(
            scope.to_string(),
            Arc::new(hmac::Key::new(hmac::HMAC_SHA256, secret)),
        );
        Ok(())
    }

    /// Test keys are given as text; their UTF-8 bytes are the secret.
    pub fn from_test_keys(keys: &BTreeMap<String, String>) -> Result<KeyRing, String> {
        let mut ring = KeyRing::new();
        for (scope, secret) in keys {
            ring.insert(scope, secret.as_bytes())?;
        }
        Ok(ring)
    }
}

/// Why a read plan cannot be applied; the request fails closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordPlanError {
    #[error("no pseudonym key is configured for key scope `{0}`")]
    MissingKey(String),
    #[error("transform `{0}` is not available in this build")]
    Unavailable(String),
    #[error("rule `{rule}` is invalid: {reason}")]
    InvalidRule { rule: String, reason: String },
}

fn transform(
    t: &Treatment,
    keys: &KeyRing,
    plugins: &dyn PluginSet,
) -> Result<Transform, RecordPlanError> {
    let rule = match t {
        Treatment::Clear | Treatment::Revealed { .. } => return Ok(Transform::Clear),
        Treatment::Withheld { .. } => return Ok(Transform::Redact { drop: false }),
        Treatment::Anonymized(rule) => rule,
    };
    let invalid = |reason: &str| RecordPlanError::InvalidRule {
        rule: rule.id.clone(),
        reason: reason.into(),
    };
    Ok(match rule.transform.as_str() {
        "redact" => Transform::Redact {
            drop: rule.drop.unwrap_or(false),
        },
        "mask" => Transform::Mask {
            keep_first: rule.keep_first.unwrap_or(0),
            keep_last: rule.keep_last.unwrap_or(0),
            mask_char: rule.mask_char.unwrap_or('*'),
        },
        "hmac" => {
            let scope = rule
                .key_scope
                .as_deref()
                .ok_or_else(|| invalid("no key scope"))?;
            let key = keys
                .keys
                .get(scope)
                .ok_or_else(|| RecordPlanError::MissingKey(scope.to_string()))?;
            Transform::Hmac {
                key: Arc::clone(key),
                prefix: rule.prefix.clone().unwrap_or_default(),
            }
        }
        "generalize" => match rule.to.as_deref() {
            Some("year") => Transform::GeneralizeDate(DatePart::Year),
            Some("month") => Transform::GeneralizeDate(DatePart::Month),
            Some("bucket") => Transform::GeneralizeBucket {
                width: rule.width.unwrap_or(0),
            },
            Some("prefix") => Transform::GeneralizePrefix {
                chars: rule.chars.unwrap_or(0),
            },
            _ => return Err(invalid("unknown generalization")),
        },
        "plugin" => {
            let name = rule.plugin.as_deref().ok_or_else(|| invalid("no plugin"))?;
            Transform::Plugin(
                plugins
                    .transform(name)
                    .ok_or_else(|| RecordPlanError::Unavailable(format!("plugin:{name}")))?,
            )
        }
        other => return Err(RecordPlanError::Unavailable(other.to_string())),
    })
}

fn op(name: &str) -> Option<CompareOp> {
    Some(match name {
        "eq" => CompareOp::Eq,
        "ne" => CompareOp::Ne,
        "in" => CompareOp::In,
        "not_in" => CompareOp::NotIn,
        "lt" => CompareOp::Lt,
        "le" => CompareOp::Le,
        "gt" => CompareOp::Gt,
        "ge" => CompareOp::Ge,
        "is_null" => CompareOp::IsNull,
        "not_null" => CompareOp::NotNull,
        _ => return None,
    })
}

impl ReadPlan {
    /// Compiles this plan into the per-record program, with the pseudonym
    /// keys and the bundle's compiled plugins bound in. Call once per
    /// request.
    pub fn record_plan(
        &self,
        keys: &KeyRing,
        plugins: &dyn PluginSet,
    ) -> Result<RecordPlan, RecordPlanError> {
        let fields = self
            .fields
            .iter()
            .map(|f| {
                Ok(FieldRule::new(
                    f.name.clone(),
                    transform(&f.treatment, keys, plugins)?,
                ))
            })
            .collect::<Result<Vec<_>, RecordPlanError>>()?;
        let clauses = self
            .row_filters
            .iter()
            .map(|r| {
                let op = op(&r.op).ok_or_else(|| RecordPlanError::InvalidRule {
                    rule: r.id.clone(),
                    reason: format!("unknown operator `{}`", r.op),
                })?;
                Ok(Clause::new(
                    r.field.clone(),
                    op,
                    r.value.clone().unwrap_or(serde_json::Value::Null),
                ))
            })
            .collect::<Result<Vec<_>, RecordPlanError>>()?;
        let validators = self
            .validators
            .iter()
            .map(|name| {
                plugins
                    .validator(name)
                    .ok_or_else(|| RecordPlanError::Unavailable(format!("plugin:{name}")))
            })
            .collect::<Result<Vec<_>, RecordPlanError>>()?;
        RecordPlan::with_validators(fields, RowPredicate::all(clauses), validators).map_err(|e| {
            RecordPlanError::InvalidRule {
                rule: "read plan".into(),
                reason: e.to_string(),
            }
        })
    }
}

/// Applies a plan to JSON records, for policy tests and tools; the sidecar
/// streams bytes through [`RecordPlan::apply_json`] instead.
/// The records go through as one batch, as a sidecar reads a chunk, so
/// plugins see the same calls here as there.
pub fn apply_to_values(
    plan: &ReadPlan,
    keys: &KeyRing,
    plugins: &dyn PluginSet,
    input: &[serde_json::Map<String, serde_json::Value>],
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    let program = plan.record_plan(keys, plugins).map_err(|e| e.to_string())?;
    let lines = input
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let (mut buf, mut outcomes) = (Vec::new(), Vec::new());
    program
        .apply_json_batch(&lines, &mut buf, &mut outcomes)
        .map_err(|e| e.to_string())?;
    if let Some(Err(e)) = outcomes.iter().find(|o| o.is_err()) {
        return Err(e.to_string());
    }
    buf.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).map_err(|e| e.to_string()))
        .collect()
}
