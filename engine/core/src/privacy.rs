//! `privacy/*.toml`: which differentially private aggregates a port allows,
//! at what cost, and each consumer's budget. The names follow BigQuery's
//! differential privacy policy where it fits.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One privacy file. As written its aggregations are text
/// (`PrivacyFile<String>`, so the checker can point at an unknown one);
/// parsed, they are [`Aggregation`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyFile<A = String> {
    #[serde(default = "Vec::new")]
    pub rules: Vec<PrivacyRuleOf<A>>,
}

/// The aggregations a rule may allow.
pub const AGGREGATIONS: &[&str] = &["count", "sum", "mean", "histogram", "quantile"];

/// An aggregation a privacy rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    Count,
    Sum,
    Mean,
    /// Counts per group: what `group_by` needs.
    Histogram,
    Quantile,
}

impl Aggregation {
    /// Parses one of [`AGGREGATIONS`].
    pub fn parse(name: &str) -> Option<Aggregation> {
        Some(match name {
            "count" => Aggregation::Count,
            "sum" => Aggregation::Sum,
            "mean" => Aggregation::Mean,
            "histogram" => Aggregation::Histogram,
            "quantile" => Aggregation::Quantile,
            _ => return None,
        })
    }

    /// The name a rule writes.
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Count => "count",
            Aggregation::Sum => "sum",
            Aggregation::Mean => "mean",
            Aggregation::Histogram => "histogram",
            Aggregation::Quantile => "quantile",
        }
    }
}

/// A privacy rule as written, aggregations as text.
pub type PrivacyRuleSpec = PrivacyRuleOf<String>;
/// A privacy rule, parsed: the model the evaluators use.
pub type PrivacyRule = PrivacyRuleOf<Aggregation>;

impl PrivacyRuleSpec {
    /// Parses the aggregations; on an unknown one, its index and name.
    pub fn parse(self) -> Result<PrivacyRule, (usize, String)> {
        let mut aggregations = Vec::with_capacity(self.aggregations.len());
        for (i, a) in self.aggregations.iter().enumerate() {
            aggregations.push(Aggregation::parse(a).ok_or_else(|| (i, a.clone()))?);
        }
        Ok(PrivacyRuleOf {
            aggregations,
            id: self.id,
            description: self.description,
            domains: self.domains,
            products: self.products,
            ports: self.ports,
            epsilon_budget: self.epsilon_budget,
            delta_budget: self.delta_budget,
            max_epsilon_per_query: self.max_epsilon_per_query,
            window_seconds: self.window_seconds,
            product_epsilon_budget: self.product_epsilon_budget,
            privacy_unit_column: self.privacy_unit_column,
            max_groups_contributed: self.max_groups_contributed,
            max_window_seconds: self.max_window_seconds,
            bounds: self.bounds,
            group_by: self.group_by,
            purpose_budgets: self.purpose_budgets,
        })
    }
}

impl PrivacyRule {
    /// Whether the rule allows `a`.
    pub fn allows(&self, a: Aggregation) -> bool {
        self.aggregations.contains(&a)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyRuleOf<A> {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Allowed aggregations.
    pub aggregations: Vec<A>,
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
