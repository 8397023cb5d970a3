//! From a [`ReadDecision`] to a [`RecordProgram`]: the once-per-request step that
//! turns policy decisions into the per-record transform program, with the
//! pseudonym keys bound in. Everything that can fail fails here, before the
//! first record is read.

use crate::anonymization::{Generalization, Method};
use crate::decision::{ReadDecision, Treatment};
use crate::plugins::PluginSet;
use meshgov_anonymize::{
    Clause, DatePart, FieldRule, PluginValidator, RecordProgram, RowPredicate, Transform,
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

/// Why a read decision cannot be compiled into a record program; the
/// request fails closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("no pseudonym key is configured for key scope `{0}`")]
    MissingKey(String),
    #[error("transform `{0}` is not available in this build")]
    Unavailable(String),
    #[error("rule `{rule}` is invalid: {reason}")]
    InvalidRule { rule: String, reason: String },
}

/// One field's treatment as a transform, with its key or plugin bound in.
pub(crate) fn compile_treatment(
    t: &Treatment,
    keys: &KeyRing,
    plugins: &dyn PluginSet,
) -> Result<Transform, CompileError> {
    let rule = match t {
        Treatment::Clear | Treatment::Revealed { .. } => return Ok(Transform::Clear),
        Treatment::Withheld { .. } => return Ok(Transform::Redact { drop: false }),
        Treatment::Anonymized(rule) => rule,
    };
    Ok(match &rule.method {
        Method::Redact { drop } => Transform::Redact { drop: *drop },
        Method::Mask {
            keep_first,
            keep_last,
            mask_char,
        } => Transform::Mask {
            keep_first: *keep_first,
            keep_last: *keep_last,
            mask_char: *mask_char,
        },
        Method::Hmac { key_scope, prefix } => Transform::Hmac {
            key: keys
                .keys
                .get(key_scope)
                .cloned()
                .ok_or_else(|| CompileError::MissingKey(key_scope.clone()))?,
            prefix: prefix.clone(),
        },
        Method::Generalize(Generalization::Year) => Transform::GeneralizeDate(DatePart::Year),
        Method::Generalize(Generalization::Month) => Transform::GeneralizeDate(DatePart::Month),
        Method::Generalize(Generalization::Bucket { width }) => {
            Transform::GeneralizeBucket { width: *width }
        }
        Method::Generalize(Generalization::Prefix { chars }) => {
            Transform::GeneralizePrefix { chars: *chars }
        }
        Method::Plugin { name } => Transform::Plugin(
            plugins
                .transform(name)
                .ok_or_else(|| CompileError::Unavailable(format!("plugin:{name}")))?,
        ),
    })
}

/// A read decision with its keys and plugins bound in: what every reader of
/// a port applies, whichever protocol it speaks. The record path compiles it
/// into a [`RecordProgram`]; the columnar path into a query plan.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The port's declared fields in order, each with its transform.
    pub fields: Vec<FieldRule>,
    /// The row predicate, on raw values.
    pub filter: RowPredicate,
    /// Validators every served record must pass.
    pub validators: Vec<Arc<dyn PluginValidator>>,
}

impl Rules {
    /// The per-record program of these rules.
    pub fn record_program(&self) -> Result<RecordProgram, CompileError> {
        RecordProgram::with_validators(
            self.fields.clone(),
            self.filter.clone(),
            self.validators.clone(),
        )
        .map_err(|e| CompileError::InvalidRule {
            rule: "read decision".into(),
            reason: e.to_string(),
        })
    }
}

impl ReadDecision {
    /// Binds the pseudonym keys and the bundle's compiled plugins into this
    /// decision. Call once per request (the enforcer caches the result).
    pub fn rules(&self, keys: &KeyRing, plugins: &dyn PluginSet) -> Result<Rules, CompileError> {
        let fields = self
            .fields
            .iter()
            .map(|f| {
                Ok(FieldRule::new(
                    f.name.clone(),
                    compile_treatment(&f.treatment, keys, plugins)?,
                ))
            })
            .collect::<Result<Vec<_>, CompileError>>()?;
        let clauses = self
            .row_filters
            .iter()
            .map(|r| Clause::new(r.field.clone(), r.op, r.value.clone()))
            .collect();
        let validators = self
            .validators
            .iter()
            .map(|name| {
                plugins
                    .validator(name)
                    .ok_or_else(|| CompileError::Unavailable(format!("plugin:{name}")))
            })
            .collect::<Result<Vec<_>, CompileError>>()?;
        Ok(Rules {
            fields,
            filter: RowPredicate::all(clauses),
            validators,
        })
    }

    /// Compiles this decision into the per-record program.
    pub fn record_program(
        &self,
        keys: &KeyRing,
        plugins: &dyn PluginSet,
    ) -> Result<RecordProgram, CompileError> {
        self.rules(keys, plugins)?.record_program()
    }
}

/// Applies a plan to JSON records, for policy tests and tools; the sidecar
/// streams bytes through [`RecordProgram::apply_json`] instead.
/// The records go through as one batch, as a sidecar reads a chunk, so
/// plugins see the same calls here as there.
pub fn apply_to_values(
    plan: &ReadDecision,
    keys: &KeyRing,
    plugins: &dyn PluginSet,
    input: &[serde_json::Map<String, serde_json::Value>],
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    let program = plan
        .record_program(keys, plugins)
        .map_err(|e| e.to_string())?;
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
