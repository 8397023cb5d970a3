//! `privacy/*.toml`: which differentially private aggregates a port allows,
//! at what cost, and each consumer's budget. The names follow BigQuery's
//! differential privacy policy where it fits.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyFile {
    #[serde(default)]
    pub rules: Vec<PrivacyRule>,
}

/// The aggregations a rule may allow.
pub const AGGREGATIONS: &[&str] = &["count", "sum", "mean", "histogram", "quantile"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyRule {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Allowed aggregations, from [`AGGREGATIONS`].
    pub aggregations: Vec<String>,
    /// Budget per consumer and purpose per window.
    pub epsilon_budget: f64,
    #[serde(default)]
    pub delta_budget: f64,
    pub max_epsilon_per_query: f64,
    /// The budget window, in seconds (default one day).
    #[serde(default = "default_window")]
    pub window_seconds: u64,
    /// Total budget per window across all consumers, since consumers can collude.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_epsilon_budget: Option<f64>,
    /// The privacy unit: a column identifying a person. Absent means one record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy_unit_column: Option<String>,
    /// How many groups (and records) one privacy unit may contribute to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_groups_contributed: Option<u32>,
    /// The longest time window one query may cover, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_seconds: Option<u64>,
    /// Clamping bounds per numeric field: `[lower, upper]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bounds: BTreeMap<String, [f64; 2]>,
    /// Fields consumers may group by, with their public keys when known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<GroupBy>,
    /// Stricter budgets for particular purposes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purpose_budgets: Vec<PurposeBudget>,
}

fn default_window() -> u64 {
    24 * 3600
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupBy {
    pub field: String,
    /// Public keys; absent means keys are chosen by DP partition selection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurposeBudget {
    pub purpose: String,
    pub epsilon_budget: f64,
}

/// The privacy rule for one port: the first that applies to the product
/// and port, in file order.
pub fn rule_for<'a>(
    rules: &'a [PrivacyRule],
    domain: &str,
    product: &str,
    port: &str,
) -> Option<&'a PrivacyRule> {
    rules.iter().find(|r| {
        crate::scope::applies(&r.domains, &r.products, domain, product)
            && (r.ports.is_empty() || r.ports.iter().any(|p| p == port))
    })
}
