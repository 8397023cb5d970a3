//! Running a [`ValidQuery`]: contribution bounding, OpenDP measurements, noise
//! and DP partition selection.
//!
//! The flow is split so that the ledger sits between costing and noise:
//!
//! 1. [`cost`] builds every measurement and asks OpenDP's privacy map what
//!    it costs; no data is touched and no noise is drawn;
//! 2. the caller reserves that cost in the ledger (and refuses on 429);
//! 3. an [`Accumulator`] reads the records, bounding each privacy unit's
//!    contributions and clamping values into fixed point;
//! 4. [`release`] builds the same measurements again and invokes them.
//!
//! OpenDP's `Measurement` is not `Send`: call [`cost`] and [`release`] on a
//! blocking thread, never across an `.await`.
//!
//! # Budget split
//!
//! The query's epsilon is split evenly over its releases: one share for a
//! count, one for a sum, two for a mean (a noisy sum over a noisy count),
//! and one for partition selection unless a count is asked for (then the
//! threshold mechanism's noisy counts are the count). Shares compose by
//! basic composition; the ledger is charged the sum of OpenDP's maps.
//!
//! # Sensitivity
//!
//! One privacy unit contributes at most `k` records (`k` =
//! `max_groups_contributed`, 1 when the unit is a record). So a count
//! histogram moves by at most `k` in L1 and a sum by `k · max(|lower|,
//! |upper|)`; partition selection sees at most `k` partitions changed, each
//! by at most `k`.

use crate::query::{FIXED_POINT, Stat, ValidQuery};
use opendp::domains::{AtomDomain, MapDomain, VectorDomain};
use opendp::measurements::{make_laplace, make_laplace_threshold};
use opendp::measures::{Approximate, MaxDivergence};
use opendp::metrics::{AbsoluteDistance, L0PInfDistance, L1Distance};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The two-sided 95% interval of Laplace noise with scale `b` is `± b·ln 20`.
pub fn laplace_ci95(scale: f64) -> f64 {
    scale * 20f64.ln()
}

/// A failure inside the mechanism: the answer is refused (fail closed).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the privacy mechanism failed: {0}")]
pub struct EngineError(pub String);

fn dp(e: opendp::error::Error) -> EngineError {
    EngineError(e.to_string())
}

/// Separates group-key parts in the partition-selection map.
const KEY_SEP: char = '\u{1f}';

/// One noise mechanism of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Mechanism {
    /// The statistic (`count`, `sum_<f>`, `count_for_mean_<f>`, `partition_selection`).
    pub name: String,
    /// `discrete_laplace` or `laplace_threshold`.
    pub kind: &'static str,
    /// Noise scale, in the statistic's own units.
    pub scale: f64,
    /// The sensitivity handed to the privacy map, in the mechanism's integer units.
    pub sensitivity: i64,
    /// OpenDP's privacy map at that sensitivity.
    pub epsilon: f64,
    pub delta: f64,
    /// Partition selection only: the noisy-count threshold.
    pub threshold: Option<i64>,
    pub(crate) fixed_point: bool,
}

/// What a query costs, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Costed {
    pub epsilon: f64,
    pub delta: f64,
    pub mechanisms: Vec<Mechanism>,
}

fn per_record_max(lower: f64, upper: f64) -> Result<i64, EngineError> {
    let m = (lower.abs().max(upper.abs()) * FIXED_POINT).ceil().max(1.0);
    if m > 1e15 {
        return Err(EngineError("the policy's bounds are too wide".into()));
    }
    Ok(m as i64)
}

type VectorLaplace = opendp::core::Measurement<
    VectorDomain<AtomDomain<i64>>,
    L1Distance<i64>,
    MaxDivergence,
    Vec<i64>,
>;

fn vector_laplace(scale: f64) -> Result<VectorLaplace, EngineError> {
    make_laplace(
        VectorDomain::new(AtomDomain::<i64>::default()),
        L1Distance::<i64>::default(),
        scale,
        None,
    )
    .map_err(dp)
}

type ThresholdMeasurement = opendp::core::Measurement<
    MapDomain<AtomDomain<String>, AtomDomain<i64>>,
    L0PInfDistance<1, AbsoluteDistance<i64>>,
    Approximate<MaxDivergence>,
    HashMap<String, i64>,
>;

fn threshold_measurement(scale: f64, threshold: i64) -> Result<ThresholdMeasurement, EngineError> {
    make_laplace_threshold(
        MapDomain::new(
            AtomDomain::<String>::default(),
            AtomDomain::<i64>::default(),
        ),
        L0PInfDistance::default(),
        scale,
        threshold,
        None,
    )
    .map_err(dp)
}

fn laplace_mechanism(
    name: String,
    sensitivity: i64,
    epsilon: f64,
    fixed_point: bool,
) -> Result<Mechanism, EngineError> {
    let scale = sensitivity as f64 / epsilon;
    let m = vector_laplace(scale)?;
    let eps = m.map(&sensitivity).map_err(dp)?;
    Ok(Mechanism {
        name,
        kind: "discrete_laplace",
        scale: if fixed_point {
            scale / FIXED_POINT
        } else {
            scale
        },
        sensitivity,
        epsilon: eps,
        delta: 0.0,
        threshold: None,
        fixed_point,
    })
}

/// Finds the smallest threshold (searching upward from the analytic
/// estimate) at which OpenDP's map gives at most `delta`.
fn partition_selection(k: i64, epsilon: f64, delta: f64) -> Result<Mechanism, EngineError> {
    let scale = k as f64 / epsilon;
    let d_in = (u32::try_from(k).unwrap_or(u32::MAX), k, k);
    let guess = (k as f64 + scale * (k as f64 / (2.0 * delta)).ln())
        .ceil()
        .max(1.0);
    // A tiny epsilon makes the scale, and so the threshold, astronomically
    // large: past what a count can reach, no threshold is meaningful.
    if !guess.is_finite() || guess >= (1u64 << 53) as f64 {
        return Err(EngineError(format!(
            "epsilon {epsilon} is too small to select partitions at delta {delta}"
        )));
    }
    let mut t = guess as i64;
    for _ in 0..200 {
        let m = threshold_measurement(scale, t)?;
        let (eps, d) = m.map(&d_in).map_err(dp)?;
        if d <= delta {
            return Ok(Mechanism {
                name: "partition_selection".into(),
                kind: "laplace_threshold",
                scale,
                sensitivity: k,
                epsilon: eps,
                delta: d,
                threshold: Some(t),
                fixed_point: false,
            });
        }
        t = t
            .checked_add((t / 16).max(1))
            .ok_or_else(|| EngineError("no threshold meets the requested delta".into()))?;
    }
    Err(EngineError("no threshold meets the requested delta".into()))
}

/// Builds every measurement of `plan` and sums OpenDP's privacy maps.
/// Touches no data and draws no noise.
pub fn cost(plan: &ValidQuery) -> Result<Costed, EngineError> {
    let k = i64::from(plan.max_contributions);
    let selecting = plan.keys.is_none();
    let has_count = plan.stats.contains(&Stat::Count);
    let shares: usize = plan
        .stats
        .iter()
        .map(|s| if matches!(s, Stat::Mean { .. }) { 2 } else { 1 })
        .sum::<usize>()
        + usize::from(selecting && !has_count);
    let share = plan.epsilon / shares.max(1) as f64;
    let mut mechanisms = Vec::new();
    if selecting {
        let mut m = partition_selection(k, share, plan.delta)?;
        if has_count {
            m.name = "count".into();
        }
        mechanisms.push(m);
    }
    for s in &plan.stats {
        match s {
            Stat::Count if selecting => {}
            Stat::Count => mechanisms.push(laplace_mechanism("count".into(), k, share, false)?),
            Stat::Sum {
                field,
                lower,
                upper,
            }
            | Stat::Mean {
                field,
                lower,
                upper,
            } => {
                let sens = k
                    .checked_mul(per_record_max(*lower, *upper)?)
                    .ok_or_else(|| EngineError("the policy's bounds are too wide".into()))?;
                let mean = matches!(s, Stat::Mean { .. });
                let prefix = if mean { "sum_for_mean" } else { "sum" };
                mechanisms.push(laplace_mechanism(
                    format!("{prefix}_{field}"),
                    sens,
                    share,
                    true,
                )?);
                if mean {
                    mechanisms.push(laplace_mechanism(
                        format!("count_for_mean_{field}"),
                        k,
                        share,
                        false,
                    )?);
                }
            }
        }
    }
    Ok(Costed {
        epsilon: mechanisms.iter().map(|m| m.epsilon).sum(),
        delta: mechanisms.iter().map(|m| m.delta).sum(),
        mechanisms,
    })
}

#[derive(Debug, Clone, Default)]
struct Acc {
    count: i64,
    /// Per field of the plan, in fixed point.
    sums: Vec<i64>,
}

/// Reads records for one plan: bounds contributions per privacy unit,
/// keeps only listed keys (when the policy lists them), clamps values.
pub struct Accumulator {
    plan: ValidQuery,
    /// Clamping bounds in fixed point, per plan field.
    bounds: Vec<(i64, i64)>,
    known: Option<HashSet<String>>,
    units: HashMap<String, u32>,
    groups: HashMap<String, Acc>,
    /// Records read, and records that counted.
    pub seen: u64,
    pub used: u64,
}

/// A group's key: its parts (in `group_by` order) joined by a separator
/// that cannot appear in a part by accident.
pub fn join(parts: &[&str]) -> String {
    let mut s = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            s.push(KEY_SEP);
        }
        s.push_str(p);
    }
    s
}

/// The clamping bounds of `plan`'s numeric fields, in fixed point, in
/// [`ValidQuery::fields`] order.
pub fn field_bounds(plan: &ValidQuery) -> Vec<(i64, i64)> {
    plan.fields
        .iter()
        .map(|f| {
            plan.stats
                .iter()
                .find_map(|s| match s {
                    Stat::Sum {
                        field,
                        lower,
                        upper,
                    }
                    | Stat::Mean {
                        field,
                        lower,
                        upper,
                    } if field == f => Some((
                        (lower * FIXED_POINT).round() as i64,
                        (upper * FIXED_POINT).round() as i64,
                    )),
                    _ => None,
                })
                .unwrap_or((0, 0))
        })
        .collect()
}

/// The group keys (see [`join`]) `plan` reports, when the policy lists
/// them; `None` when keys are chosen by partition selection.
pub fn known_keys(plan: &ValidQuery) -> Option<HashSet<String>> {
    plan.keys.as_ref().map(|ks| {
        ks.iter()
            .map(|k| join(&k.iter().map(String::as_str).collect::<Vec<_>>()))
            .collect()
    })
}

/// A value in fixed point, clamped to `bounds`, as a sum adds it.
pub fn fixed(v: f64, (lo, hi): (i64, i64)) -> i64 {
    ((v * FIXED_POINT).round() as i64).clamp(lo, hi)
}

impl Accumulator {
    pub fn new(plan: &ValidQuery) -> Accumulator {
        Accumulator {
            plan: plan.clone(),
            bounds: field_bounds(plan),
            known: known_keys(plan),
            units: HashMap::new(),
            groups: HashMap::new(),
            seen: 0,
            used: 0,
        }
    }

    /// Adds one record: its privacy unit (ignored when the unit is the
    /// record), its group-by values in plan order, and its numeric values in
    /// [`ValidQuery::fields`] order. Returns whether it counted: records outside
    /// the listed keys, without a unit, with a non-finite value, or beyond
    /// their unit's contribution cap are left out.
    pub fn add(&mut self, unit: Option<&str>, group: &[&str], values: &[f64]) -> bool {
        self.seen += 1;
        if group.len() != self.plan.group_by.len()
            || values.len() != self.bounds.len()
            || values.iter().any(|v| !v.is_finite())
        {
            return false;
        }
        let key = join(group);
        if self.known.as_ref().is_some_and(|k| !k.contains(&key)) {
            return false;
        }
        if self.plan.unit.is_some() {
            let Some(u) = unit else { return false };
            let used = match self.units.get_mut(u) {
                Some(n) => n,
                None => self.units.entry(u.to_string()).or_insert(0),
            };
            if *used >= self.plan.max_contributions {
                return false;
            }
            *used += 1;
        }
        let n = self.bounds.len();
        let acc = self.groups.entry(key).or_insert_with(|| Acc {
            count: 0,
            sums: vec![0; n],
        });
        acc.count += 1;
        for ((sum, v), bounds) in acc.sums.iter_mut().zip(values).zip(&self.bounds) {
            *sum = sum.saturating_add(fixed(*v, *bounds));
        }
        self.used += 1;
        true
    }

    /// Adds the totals of records bounded and clamped elsewhere (a query
    /// plan, see `meshgov-columnar`): `count` records of the group
    /// `group`, whose clamped fixed-point values sum to `sums`
    /// ([`ValidQuery::fields`] order). The caller has left out what
    /// [`add`](Self::add) would: records outside the listed keys, without
    /// a unit or a finite value, or beyond their unit's cap.
    pub fn add_totals(&mut self, group: &[&str], count: i64, sums: &[i64]) {
        let n = self.bounds.len();
        let acc = self.groups.entry(join(group)).or_insert_with(|| Acc {
            count: 0,
            sums: vec![0; n],
        });
        acc.count = acc.count.saturating_add(count);
        for (sum, s) in acc.sums.iter_mut().zip(sums) {
            *sum = sum.saturating_add(*s);
        }
        let count = u64::try_from(count).unwrap_or(0);
        self.seen += count;
        self.used += count;
    }

    /// What was gathered, before any noise: per group key (see [`join`]),
    /// the records that counted and their sums in fixed point.
    pub fn totals(&self) -> BTreeMap<String, (i64, Vec<i64>)> {
        self.groups
            .iter()
            .map(|(k, a)| (k.clone(), (a.count, a.sums.clone())))
            .collect()
    }

    /// Adds one JSON record, reading the unit, group-by and numeric fields
    /// by name. Numbers given as strings are not read.
    pub fn add_json(&mut self, record: &serde_json::Map<String, serde_json::Value>) -> bool {
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        let unit = match &self.plan.unit {
            Some(u) => match record.get(u).and_then(text) {
                Some(s) => Some(s),
                None => {
                    self.seen += 1;
                    return false;
                }
            },
            None => None,
        };
        let mut group = Vec::with_capacity(self.plan.group_by.len());
        for g in &self.plan.group_by {
            match record.get(g).and_then(text) {
                Some(s) => group.push(s),
                None => {
                    self.seen += 1;
                    return false;
                }
            }
        }
        let mut values = Vec::with_capacity(self.plan.fields.len());
        for f in &self.plan.fields {
            match record.get(f).and_then(serde_json::Value::as_f64) {
                Some(v) => values.push(v),
                None => {
                    self.seen += 1;
                    return false;
                }
            }
        }
        let group: Vec<&str> = group.iter().map(String::as_str).collect();
        self.add(unit.as_deref(), &group, &values)
    }
}

/// One group's key (in `group_by` order) and its `(statistic, value)`s;
/// a mean is `None` when its noisy count is not positive.
pub type Group = (Vec<String>, Vec<(String, Option<f64>)>);

/// The released answer: noisy values per group.
#[derive(Debug, Clone, PartialEq)]
pub struct Released {
    pub groups: Vec<Group>,
    pub mechanisms: Vec<Mechanism>,
    pub epsilon: f64,
    pub delta: f64,
}

fn noisy(m: &Mechanism, values: Vec<i64>) -> Result<Vec<i64>, EngineError> {
    let raw_scale = if m.fixed_point {
        m.scale * FIXED_POINT
    } else {
        m.scale
    };
    vector_laplace(raw_scale)?.invoke(&values).map_err(dp)
}

/// Draws the noise for `plan` over what `acc` gathered. Call only after
/// the cost from [`cost`] is reserved in the ledger.
pub fn release(
    plan: &ValidQuery,
    costed: &Costed,
    acc: Accumulator,
) -> Result<Released, EngineError> {
    let by_name = |n: &str| {
        costed
            .mechanisms
            .iter()
            .find(|m| m.name == n)
            .ok_or_else(|| EngineError(format!("no mechanism for `{n}`")))
    };
    let mut groups = acc.groups;
    // The keys to report, and the count release when selection made it.
    let (keys, selected_counts): (Vec<String>, Option<HashMap<String, i64>>) = match &plan.keys {
        Some(ks) => (
            ks.iter()
                .map(|k| join(&k.iter().map(String::as_str).collect::<Vec<_>>()))
                .collect(),
            None,
        ),
        None => {
            let sel = costed
                .mechanisms
                .iter()
                .find(|m| m.kind == "laplace_threshold")
                .ok_or_else(|| EngineError("no partition selection".into()))?;
            let counts: HashMap<String, i64> =
                groups.iter().map(|(k, a)| (k.clone(), a.count)).collect();
            let m = threshold_measurement(sel.scale, sel.threshold.unwrap_or(i64::MAX))?;
            let kept = m.invoke(&counts).map_err(dp)?;
            let mut keys: Vec<String> = kept.keys().cloned().collect();
            keys.sort();
            (keys, Some(kept))
        }
    };
    let accs: Vec<Acc> = keys
        .iter()
        .map(|k| {
            groups.remove(k).unwrap_or_else(|| Acc {
                count: 0,
                sums: vec![0; plan.fields.len()],
            })
        })
        .collect();
    let field_index = |f: &str| plan.fields.iter().position(|x| x == f).unwrap_or(0);
    let mut columns: Vec<(String, Vec<Option<f64>>)> = Vec::new();
    for s in &plan.stats {
        let name = s.name();
        let values: Vec<Option<f64>> = match s {
            Stat::Count => match &selected_counts {
                Some(c) => keys.iter().map(|k| c.get(k).map(|v| *v as f64)).collect(),
                None => noisy(by_name("count")?, accs.iter().map(|a| a.count).collect())?
                    .into_iter()
                    .map(|v| Some(v as f64))
                    .collect(),
            },
            Stat::Sum { field, .. } => {
                let i = field_index(field);
                let raw = accs
                    .iter()
                    .map(|a| a.sums.get(i).copied().unwrap_or(0))
                    .collect();
                noisy(by_name(&format!("sum_{field}"))?, raw)?
                    .into_iter()
                    .map(|v| Some(v as f64 / FIXED_POINT))
                    .collect()
            }
            Stat::Mean {
                field,
                lower,
                upper,
            } => {
                let i = field_index(field);
                let raw = accs
                    .iter()
                    .map(|a| a.sums.get(i).copied().unwrap_or(0))
                    .collect();
                let sums = noisy(by_name(&format!("sum_for_mean_{field}"))?, raw)?;
                let counts = noisy(
                    by_name(&format!("count_for_mean_{field}"))?,
                    accs.iter().map(|a| a.count).collect(),
                )?;
                sums.into_iter()
                    .zip(counts)
                    .map(|(s, c)| {
                        (c > 0).then(|| (s as f64 / FIXED_POINT / c as f64).clamp(*lower, *upper))
                    })
                    .collect()
            }
        };
        columns.push((name, values));
    }
    let groups = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let key = if plan.group_by.is_empty() {
                vec![]
            } else {
                k.split(KEY_SEP).map(str::to_string).collect()
            };
            let stats = columns
                .iter()
                .map(|(n, vs)| (n.clone(), vs.get(i).copied().flatten()))
                .collect();
            (key, stats)
        })
        .collect();
    Ok(Released {
        groups,
        mechanisms: costed.mechanisms.clone(),
        epsilon: costed.epsilon,
        delta: costed.delta,
    })
}
