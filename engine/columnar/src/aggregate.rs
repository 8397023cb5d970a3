//! A differentially private aggregate as a plan over a port's table: the
//! same scan as a read, with contribution bounding per privacy unit,
//! clamping and the per-group totals done in the plan. The noise is drawn
//! afterwards, by `meshgov-privacy`, from the totals.
//!
//! The plan, over the raw values inside the product:
//!
//! 1. the query's time window (which may prune what is scanned);
//! 2. each row's group key and privacy unit as text, and each numeric
//!    field in fixed point, clamped to the rule's bounds;
//! 3. a row counts when it is in the window, has a unit, a whole key, a
//!    finite value for every field, and a key the policy lists (when it
//!    lists keys), and when its unit has not yet contributed its cap: the
//!    first rows of each unit in scan order count;
//! 4. per group: the rows that count, and the sums of their values.
//!
//! This is what [`Accumulator::add`] does record by record; the plan runs
//! in one partition, so "first in scan order" is the same order.

use crate::udf::{AsText, Bound, Fixed, InWindow, Known};
use crate::view::{PlanError, col_of};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Decimal128Type, Int64Type};
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::{Expr, col, lit};
use futures::StreamExt as _;
use meshgov_core::descriptor::PortInfo;
use meshgov_core::window::Window;
use meshgov_privacy::mechanism::{Accumulator, field_bounds, known_keys};
use meshgov_privacy::query::ValidQuery;

/// The per-group totals of `plan` over `table` (a scan of the port's
/// table, see [`crate::schema::port_schema`]) within `window`: one row per
/// group, its key columns (`g0`, `g1`, …), the rows that count (`n`) and
/// the sums of their clamped fixed-point values (`s0`, `s1`, …).
pub fn bounded_totals(
    table: DataFrame,
    port: &PortInfo,
    plan: &ValidQuery,
    window: &Window,
) -> Result<DataFrame, PlanError> {
    let schema = table.schema().as_arrow().clone();
    let named = |name: &str| -> Result<Expr, PlanError> {
        schema
            .field_with_name(name)
            .map(|_| col_of(name))
            .map_err(|_| PlanError::UnknownField(name.to_string()))
    };
    let mut df = table;
    let mut columns = Vec::new();
    let mut keep = Vec::new();
    if !window.is_open() {
        let tf = port
            .time_field
            .as_deref()
            .ok_or_else(|| PlanError::NoTimeField(port.name.clone()))?;
        let inside = InWindow::udf(*window).call(vec![named(tf)?]);
        // Here it may prune the scan; below it decides which rows count.
        df = df.filter(inside.clone())?;
        columns.push(inside.alias("w"));
        keep.push(col("w"));
    }
    let groups: Vec<String> = (0..plan.group_by.len()).map(|i| format!("g{i}")).collect();
    for (g, field) in groups.iter().zip(&plan.group_by) {
        columns.push(AsText::udf().call(vec![named(field)?]).alias(g));
        keep.push(col(g).is_not_null());
    }
    if let Some(unit) = &plan.unit {
        columns.push(AsText::udf().call(vec![named(unit)?]).alias("unit"));
        keep.push(col("unit").is_not_null());
    }
    let values: Vec<String> = (0..plan.fields.len()).map(|i| format!("v{i}")).collect();
    for ((v, field), bounds) in values.iter().zip(&plan.fields).zip(field_bounds(plan)) {
        columns.push(Fixed::udf(bounds).call(vec![named(field)?]).alias(v));
        keep.push(col(v).is_not_null());
    }
    match known_keys(plan) {
        // With no group-by, every row has the empty key.
        Some(keys) if groups.is_empty() => keep.push(lit(keys.contains(""))),
        Some(keys) if groups.len() == 1 => {
            let keys = keys.into_iter().map(lit).collect();
            keep.push(col("g0").in_list(keys, false));
        }
        Some(keys) => keep.push(Known::udf(keys).call(groups.iter().map(col).collect())),
        None => {}
    }
    if columns.is_empty() {
        // A count of rows needs no column, but a projection needs one.
        columns.push(lit(true).alias("w"));
    }
    df = df.select(columns)?;
    let keep = keep.into_iter().reduce(Expr::and).unwrap_or(lit(true));
    // Every condition is an argument of the bound, so it counts a unit's
    // row only when the row counts, whatever order the engine evaluates
    // filters in.
    df = match plan.unit {
        Some(_) => df.filter(Bound::udf(plan.max_contributions).call(vec![col("unit"), keep]))?,
        None => df.filter(keep)?,
    };
    let mut totals = vec![count(lit(1)).alias("n")];
    for (i, v) in values.iter().enumerate() {
        totals.push(sum(col(v)).alias(format!("s{i}")));
    }
    Ok(df.aggregate(groups.iter().map(col).collect(), totals)?)
}

/// Runs [`bounded_totals`]' plan and gathers its totals for release.
pub async fn accumulate(
    totals: DataFrame,
    plan: &ValidQuery,
) -> Result<Accumulator, DataFusionError> {
    let mut acc = Accumulator::new(plan);
    let mut stream = totals.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        add_batch(&mut acc, &batch?, plan.group_by.len(), plan.fields.len())?;
    }
    Ok(acc)
}

fn add_batch(
    acc: &mut Accumulator,
    batch: &RecordBatch,
    groups: usize,
    fields: usize,
) -> Result<(), DataFusionError> {
    let shape = || DataFusionError::Internal("the totals are not (text…, n, sums…)".into());
    let column = |i: usize| batch.columns().get(i).ok_or_else(shape);
    let keys = (0..groups)
        .map(|i| column(i)?.as_string_opt::<i32>().ok_or_else(shape))
        .collect::<Result<Vec<_>, _>>()?;
    let n = column(groups)?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(shape)?;
    let sums = (0..fields)
        .map(|i| {
            column(groups + 1 + i)?
                .as_primitive_opt::<Decimal128Type>()
                .ok_or_else(shape)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut key = Vec::with_capacity(groups);
    let mut totals = Vec::with_capacity(fields);
    for row in 0..batch.num_rows() {
        let count = n.value(row);
        // With no group-by, an empty input still has its one row.
        if count == 0 {
            continue;
        }
        key.clear();
        key.extend(keys.iter().map(|k| k.value(row)));
        totals.clear();
        totals.extend(sums.iter().map(|s| {
            if s.is_null(row) {
                0
            } else {
                let v = s.value(row);
                i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
            }
        }));
        acc.add_totals(&key, count, &totals);
    }
    Ok(())
}
