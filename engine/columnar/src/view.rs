//! A consumer's view of a port as a DataFusion plan.

use crate::udf::{Conforms, InWindow, PluginTreat, Treat};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, col, lit};
use meshgov_anonymize::{Clause, CompareOp, Transform};
use meshgov_core::descriptor::PortInfo;
use meshgov_core::records::Rules;
use meshgov_core::window::Window;
use serde_json::Value;

/// Why a consumer's view could not be planned. The read is refused.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the read's time window needs a time field, and port `{0}` has none")]
    NoTimeField(String),
    #[error("the rules name field `{0}`, which the port does not declare")]
    UnknownField(String),
    #[error("the plan could not be built: {0}")]
    DataFusion(#[from] DataFusionError),
}

/// The consumer's view of `table` (a scan of the port's table, see
/// [`crate::schema::port_schema`]) under `rules`, within `window`: raw
/// filters first, then every field with its treatment. Fields a rule drops
/// are not columns; withheld fields are typed nulls.
pub fn consumer_view(
    table: DataFrame,
    port: &PortInfo,
    rules: &Rules,
    window: &Window,
) -> Result<DataFrame, PlanError> {
    let schema: Schema = table.schema().as_arrow().clone();
    let type_of = |name: &str| -> Result<DataType, PlanError> {
        schema
            .field_with_name(name)
            .map(|f| f.data_type().clone())
            .map_err(|_| PlanError::UnknownField(name.to_string()))
    };
    let mut df = table;
    if !window.is_open() {
        let tf = port
            .time_field
            .as_deref()
            .ok_or_else(|| PlanError::NoTimeField(port.name.clone()))?;
        type_of(tf)?;
        df = df.filter(InWindow::udf(*window).call(vec![col_of(tf)]))?;
    }
    for clause in &rules.filter.clauses {
        df = df.filter(clause_expr(clause, &type_of(&clause.field)?))?;
    }
    if !rules.validators.is_empty() {
        let names: Vec<String> = rules.fields.iter().map(|f| f.name.clone()).collect();
        let args = names.iter().map(|n| col_of(n)).collect();
        df = df.filter(Conforms::udf(names, rules.validators.clone()).call(args))?;
    }
    let mut projection = Vec::with_capacity(rules.fields.len());
    for field in &rules.fields {
        let raw = col_of(&field.name);
        let treated = match &field.transform {
            Transform::Clear => raw,
            Transform::Redact { drop: true } => continue,
            Transform::Redact { drop: false } => {
                lit(ScalarValue::try_from(&type_of(&field.name)?)?)
            }
            Transform::Plugin(plugin) => PluginTreat::udf(plugin.clone()).call(vec![raw]),
            t => Treat::udf(label(t), t.clone()).call(vec![raw]),
        };
        projection.push(treated.alias(&field.name));
    }
    Ok(df.select(projection)?)
}

/// A column by its exact name (no case folding, no `.` splitting).
pub(crate) fn col_of(name: &str) -> Expr {
    col(datafusion::common::Column::new_unqualified(name))
}

fn label(t: &Transform) -> &'static str {
    match t {
        Transform::Mask { .. } => "mask",
        Transform::Hmac { .. } => "pseudonymize",
        Transform::GeneralizeDate(_) | Transform::GeneralizeBucket { .. } => "generalize",
        Transform::GeneralizePrefix { .. } => "generalize",
        Transform::Clear | Transform::Redact { .. } | Transform::Plugin(_) => "treat",
    }
}

/// A policy's row clause as an expression on the raw column, with the
/// record path's meaning: a value of another type than the operand never
/// matches (not even `ne`), and null matches only `is_null`. A column has
/// one type, so a clause whose operand cannot have it is `false`.
fn clause_expr(clause: &Clause, column: &DataType) -> Expr {
    let c = col_of(&clause.field);
    let operand = |v: &Value| literal(v, column);
    match clause.op {
        CompareOp::IsNull => c.is_null(),
        CompareOp::NotNull => c.is_not_null(),
        CompareOp::In | CompareOp::NotIn => {
            let items: Vec<Expr> = match &clause.value {
                Value::Array(items) => items.iter().filter_map(operand).collect(),
                _ => Vec::new(),
            };
            if items.is_empty() {
                lit(false)
            } else {
                c.in_list(items, clause.op == CompareOp::NotIn)
            }
        }
        op => match operand(&clause.value) {
            None => lit(false),
            Some(v) => match op {
                CompareOp::Eq => c.eq(v),
                CompareOp::Ne => c.not_eq(v),
                CompareOp::Lt => c.lt(v),
                CompareOp::Le => c.lt_eq(v),
                CompareOp::Gt => c.gt(v),
                _ => c.gt_eq(v),
            },
        },
    }
}

/// `v` as a literal comparable with a column of type `column`, or `None`
/// when no value of that column can equal it.
fn literal(v: &Value, column: &DataType) -> Option<Expr> {
    match (v, column) {
        (Value::String(s), DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) => {
            Some(lit(s.as_str()))
        }
        (Value::Number(n), DataType::Int64 | DataType::Float64) => n
            .as_i64()
            .filter(|_| *column == DataType::Int64)
            .map(lit)
            .or_else(|| n.as_f64().map(lit)),
        (Value::Bool(b), DataType::Boolean) => Some(lit(*b)),
        _ => None,
    }
}
