//! Applying a read plan to records: the bridge from a [`ReadPlan`] to the
//! per-record transform engine. Placeholder until the transform crate lands.

use crate::plan::ReadPlan;
use std::collections::BTreeMap;

/// Pseudonym keys by key scope.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: BTreeMap<String, Vec<u8>>,
}

impl KeyRing {
    pub fn from_test_keys(keys: &BTreeMap<String, String>) -> KeyRing {
        KeyRing {
            keys: keys
                .iter()
                .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                .collect(),
        }
    }
}

pub fn apply_to_values(
    _plan: &ReadPlan,
    _keys: &KeyRing,
    _input: &[serde_json::Map<String, serde_json::Value>],
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    Err("record transforms are not available yet".into())
}
