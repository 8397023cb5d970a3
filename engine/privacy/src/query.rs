//! An aggregate request and its validation against the port's privacy rule.
//!
//! ```json
//! {"aggregations":[{"count":{}},{"sum":{"field":"duration_ms"}},{"mean":{"field":"duration_ms"}}],
//!  "group_by":["country"],"epsilon":0.5,"from":"2026-11-01T00:00:00Z","to":"2026-11-08T00:00:00Z"}
//! ```
//!
//! Validation is pure: the rule, the port's fields, the mesh caps and the
//! time come in as arguments. Every refusal is a [`QueryError`] whose text
//! says what is wrong and what would be accepted.

use meshgov_core::descriptor::PortInfo;
use meshgov_core::privacy::{Aggregation, PrivacyRule};
use serde::Deserialize;
use std::collections::BTreeSet;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The most aggregations one request may ask for.
pub const MAX_AGGREGATIONS: usize = 16;
/// The most group-by fields one request may name.
pub const MAX_GROUP_BY: usize = 3;
/// Fixed-point resolution of sums: values are summed in units of 1/1000.
pub const FIXED_POINT: f64 = 1000.0;

/// The smallest `epsilon` a query may spend. Smaller ones (down to
/// subnormal numbers) make noise scales no mechanism can be built with;
/// they are refused as a bad query rather than failing the mechanism.
pub const MIN_EPSILON: f64 = 1e-6;
/// The share of the rule's `delta_budget` a query spends on partition
/// selection when it does not say `delta`.
pub const DEFAULT_DELTA_SHARE: f64 = 0.1;

/// The request body, as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateRequest {
    pub aggregations: Vec<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub group_by: Vec<String>,
    pub epsilon: f64,
    #[serde(default)]
    pub delta: Option<f64>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
}

/// One statistic to release.
#[derive(Debug, Clone, PartialEq)]
pub enum Stat {
    Count,
    Sum {
        field: String,
        lower: f64,
        upper: f64,
    },
    Mean {
        field: String,
        lower: f64,
        upper: f64,
    },
}

impl Stat {
    /// The answer's name for the statistic: `count`, `sum_<field>`, `mean_<field>`.
    pub fn name(&self) -> String {
        match self {
            Stat::Count => "count".into(),
            Stat::Sum { field, .. } => format!("sum_{field}"),
            Stat::Mean { field, .. } => format!("mean_{field}"),
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            Stat::Count => None,
            Stat::Sum { field, .. } | Stat::Mean { field, .. } => Some(field),
        }
    }
}

/// A validated query, ready to cost and run.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidQuery {
    pub rule_id: String,
    pub stats: Vec<Stat>,
    pub group_by: Vec<String>,
    /// The public key tuples to report, or `None` when keys are chosen by
    /// DP partition selection.
    pub keys: Option<Vec<Vec<String>>>,
    pub epsilon: f64,
    /// Spent on partition selection only; zero otherwise.
    pub delta: f64,
    /// The privacy unit column; `None` means each record is one unit.
    pub unit: Option<String>,
    /// Records one unit may contribute (1 when the unit is a record).
    pub max_contributions: u32,
    /// The time window in Unix seconds, `[from, to)`, when the port has a time field.
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// The numeric fields the statistics read, each once.
    pub fields: Vec<String>,
}

impl ValidQuery {
    /// A canonical text of everything that decides the answer; with the
    /// consumer, purpose and port it identifies a repeat of the same query.
    pub fn canonical(&self) -> String {
        serde_json::json!({
            "rule": self.rule_id,
            "stats": self.stats.iter().map(Stat::name).collect::<Vec<_>>(),
            "group_by": self.group_by,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "from": self.from,
            "to": self.to,
        })
        .to_string()
    }
}

/// Why a request is refused (400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

/// A refusal reason. It may quote the consumer's body (serde names an
/// unknown key as sent), so control characters are escaped: the reason is
/// logged and returned, and must not forge log lines.
fn bad(s: impl Into<String>) -> QueryError {
    let s = s.into();
    if !s.chars().any(char::is_control) {
        return QueryError(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    QueryError(out)
}

/// Parses the body. Malformed JSON and unknown keys are refused.
pub fn parse(body: &[u8]) -> Result<AggregateRequest, QueryError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("malformed request body: {e}")))
}

const NUMERIC_TYPES: &[&str] = &[
    "integer", "number", "long", "int", "double", "float", "decimal",
];

fn time_arg(name: &str, v: &Option<String>) -> Result<Option<i64>, QueryError> {
    v.as_deref()
        .map(|s| {
            OffsetDateTime::parse(s, &Rfc3339)
                .map(OffsetDateTime::unix_timestamp)
                .map_err(|_| bad(format!("`{name}` must be an RFC 3339 time, got `{s}`")))
        })
        .transpose()
}

/// The mesh's global caps (`mesh.toml` `[privacy]`), when set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caps {
    pub max_epsilon_per_query: Option<f64>,
    pub max_delta: Option<f64>,
}

/// Validates `req` against `rule` for `port` at `now_unix`.
pub fn validate(
    req: &AggregateRequest,
    rule: &PrivacyRule,
    port: &PortInfo,
    caps: Caps,
    now_unix: i64,
) -> Result<ValidQuery, QueryError> {
    // epsilon
    let eps = req.epsilon;
    let cap = caps
        .max_epsilon_per_query
        .map_or(rule.max_epsilon_per_query, |c| {
            c.min(rule.max_epsilon_per_query)
        });
    if !eps.is_finite() || eps < MIN_EPSILON {
        return Err(bad(format!(
            "`epsilon` must be a number of at least {MIN_EPSILON}, got {eps}"
        )));
    }
    if eps > cap {
        return Err(bad(format!(
            "`epsilon` = {eps} is over this port's per-query cap {cap}"
        )));
    }

    // aggregations
    if req.aggregations.is_empty() {
        return Err(bad(
            "`aggregations` is empty; ask for at least one of count, sum, mean",
        ));
    }
    if req.aggregations.len() > MAX_AGGREGATIONS {
        return Err(bad(format!(
            "at most {MAX_AGGREGATIONS} aggregations per request"
        )));
    }
    let field_of = |name: &str, v: &serde_json::Value| -> Result<String, QueryError> {
        let obj = v.as_object().ok_or_else(|| {
            bad(format!(
                "`{name}` takes an object like {{\"field\": \"…\"}}"
            ))
        })?;
        if let Some(k) = obj.keys().find(|k| k.as_str() != "field") {
            return Err(bad(format!(
                "`{name}` has an unknown key `{k}`; it takes `field`"
            )));
        }
        obj.get("field")
            .and_then(|f| f.as_str())
            .map(str::to_string)
            .ok_or_else(|| bad(format!("`{name}` needs a `field` naming a numeric field")))
    };
    let mut stats = Vec::new();
    for a in &req.aggregations {
        let mut it = a.iter();
        let (Some((name, arg)), None) = (it.next(), it.next()) else {
            return Err(bad(
                "each aggregation is an object with one key, e.g. {\"count\":{}} or {\"sum\":{\"field\":\"…\"}}",
            ));
        };
        let stat = match name.as_str() {
            "count" => {
                if !arg.as_object().is_some_and(serde_json::Map::is_empty) {
                    return Err(bad("`count` takes no arguments: {\"count\":{}}"));
                }
                Stat::Count
            }
            "sum" | "mean" => {
                let field = field_of(name, arg)?;
                let (lower, upper) = numeric_field(rule, port, &field)?;
                if name == "sum" {
                    Stat::Sum {
                        field,
                        lower,
                        upper,
                    }
                } else {
                    Stat::Mean {
                        field,
                        lower,
                        upper,
                    }
                }
            }
            "histogram" => {
                return Err(bad("ask for a histogram as {\"count\":{}} with `group_by`"));
            }
            "quantile" => return Err(bad("`quantile` is not offered by this sidecar")),
            other => {
                return Err(bad(format!(
                    "unknown aggregation `{other}`; expected count, sum or mean"
                )));
            }
        };
        if !Aggregation::parse(name).is_some_and(|a| rule.allows(a)) {
            return Err(bad(format!(
                "aggregation `{name}` is not allowed on this port"
            )));
        }
        if stats.contains(&stat) {
            return Err(bad(format!(
                "aggregation `{}` is asked for twice",
                stat.name()
            )));
        }
        stats.push(stat);
    }

    // group by
    let mut keys: Option<Vec<Vec<String>>> = Some(vec![vec![]]);
    if req.group_by.len() > MAX_GROUP_BY {
        return Err(bad(format!("at most {MAX_GROUP_BY} `group_by` fields")));
    }
    if !req.group_by.is_empty() && !rule.allows(Aggregation::Histogram) {
        return Err(bad("`group_by` is not allowed on this port"));
    }
    let mut seen = BTreeSet::new();
    for g in &req.group_by {
        if !seen.insert(g) {
            return Err(bad(format!("`group_by` names `{g}` twice")));
        }
        let f = port
            .fields
            .iter()
            .find(|f| &f.name == g)
            .ok_or_else(|| bad(format!("`group_by`: this port has no field `{g}`")))?;
        if f.direct_identifier {
            return Err(bad(format!(
                "`group_by`: `{g}` is a direct identifier and can never be grouped on"
            )));
        }
        let spec = rule
            .group_by
            .iter()
            .find(|s| &s.field == g)
            .ok_or_else(|| {
                bad(format!(
                    "`group_by`: grouping by `{g}` is not allowed on this port"
                ))
            })?;
        keys = match (keys, &spec.keys) {
            (Some(prefixes), Some(ks)) => Some(
                prefixes
                    .iter()
                    .flat_map(|p| {
                        ks.iter().map(move |k| {
                            let mut t = p.clone();
                            t.push(k.clone());
                            t
                        })
                    })
                    .collect(),
            ),
            _ => None,
        };
    }

    // delta: only partition selection spends it
    let delta = if keys.is_none() {
        let d = req.delta.unwrap_or(rule.delta_budget * DEFAULT_DELTA_SHARE);
        let dcap = caps
            .max_delta
            .map_or(rule.delta_budget, |c| c.min(rule.delta_budget));
        if !d.is_finite() || d <= 0.0 || d >= 1.0 {
            return Err(bad(format!(
                "grouping by fields without public keys selects groups privately and needs a `delta` in (0, 1); got {d} (this port's delta budget is {})",
                rule.delta_budget
            )));
        }
        if d > dcap {
            return Err(bad(format!("`delta` = {d} is over this port's cap {dcap}")));
        }
        d
    } else {
        if req.delta.is_some() {
            return Err(bad(
                "`delta` applies only to `group_by` over fields without public keys",
            ));
        }
        0.0
    };

    // window
    let (from, to) = (time_arg("from", &req.from)?, time_arg("to", &req.to)?);
    let (from, to) = if port.time_field.is_some() {
        // Without `to`, the query covers up to the end of the budget
        // window, so that the same body asked again in the window is the
        // same query (answered from the ledger, at no cost).
        let to = to.unwrap_or_else(|| crate::ledger::window_of(now_unix, rule.window_seconds).1);
        let longest = rule
            .max_window_seconds
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX));
        let from = match (from, longest) {
            (Some(f), _) => f,
            (None, Some(l)) => to.saturating_sub(l),
            (None, None) => i64::MIN,
        };
        if from >= to {
            return Err(bad("`from` must be before `to`"));
        }
        if let Some(l) = longest
            && to.saturating_sub(from) > l
        {
            return Err(bad(format!(
                "the time window is too large: at most {l} seconds on this port"
            )));
        }
        (Some(from).filter(|f| *f != i64::MIN), Some(to))
    } else {
        if from.is_some() || to.is_some() {
            return Err(bad(
                "this port has no time field, so `from` and `to` cannot be used",
            ));
        }
        (None, None)
    };

    let (unit, max_contributions) = match &rule.privacy_unit_column {
        Some(c) => (
            Some(c.clone()),
            rule.max_groups_contributed.unwrap_or(1).max(1),
        ),
        None => (None, 1),
    };
    let mut fields: Vec<String> = Vec::new();
    for s in &stats {
        if let Some(f) = s.field()
            && !fields.iter().any(|x| x == f)
        {
            fields.push(f.to_string());
        }
    }
    Ok(ValidQuery {
        rule_id: rule.id.clone(),
        stats,
        group_by: req.group_by.clone(),
        keys,
        epsilon: eps,
        delta,
        unit,
        max_contributions,
        from,
        to,
        fields,
    })
}

/// Checks that `field` may be summed: it exists, is numeric, is not a
/// direct identifier, and the rule bounds it. Returns the bounds.
fn numeric_field(
    rule: &PrivacyRule,
    port: &PortInfo,
    field: &str,
) -> Result<(f64, f64), QueryError> {
    let f = port
        .fields
        .iter()
        .find(|f| f.name == field)
        .ok_or_else(|| bad(format!("this port has no field `{field}`")))?;
    if f.direct_identifier {
        return Err(bad(format!(
            "`{field}` is a direct identifier and can never be aggregated"
        )));
    }
    let numeric = f
        .logical_type
        .as_deref()
        .is_some_and(|t| NUMERIC_TYPES.contains(&t.to_ascii_lowercase().as_str()));
    if !numeric {
        return Err(bad(format!("`{field}` is not a numeric field")));
    }
    if rule.privacy_unit_column.as_deref() == Some(field) {
        return Err(bad(format!(
            "`{field}` is the privacy unit and cannot be aggregated"
        )));
    }
    let [lower, upper] = *rule.bounds.get(field).ok_or_else(|| {
        bad(format!(
            "`{field}` has no clamping bounds in the privacy policy, so it cannot be aggregated"
        ))
    })?;
    if !(lower.is_finite() && upper.is_finite() && lower <= upper) {
        return Err(bad(format!(
            "the privacy policy's bounds for `{field}` are unusable"
        )));
    }
    Ok((lower, upper))
}
