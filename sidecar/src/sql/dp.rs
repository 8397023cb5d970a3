//! Differentially private SQL: for a consumer who may `aggregate` a port
//! but not `read` it, the port is a table that answers one shape of
//! query, through the privacy engine the HTTP port's `POST …/aggregate`
//! uses ([`crate::aggregate::answer`]): the same validation, bounds,
//! contribution bounding, partition selection, ledger and cache.
//!
//! ```sql
//! SELECT g1, …, COUNT(*), SUM(col), AVG(col)
//! FROM port
//! [WHERE time_field >= '2026-11-01T00:00:00Z' AND time_field < '2026-11-08T00:00:00Z']
//! GROUP BY g1, …
//! ```
//!
//! The group-by fields are those the port's privacy rule lists; `SUM` and
//! `AVG` take the fields it bounds; the only filter is the time window.
//! The ε a query spends is the session's `SET dp_epsilon = …` (PostgreSQL
//! port), else [`DEFAULT_EPSILON`], within the rule's per-query cap. The
//! answer's notice (and, over Flight SQL, its schema's metadata) gives the
//! ε spent, the budget left, and each statistic's noise scale and 95%
//! interval. Anything else over the table is refused with what is
//! allowed; when the budget is spent the query fails with SQLSTATE
//! `53400` and nothing is charged.

use super::SqlError;
use crate::app::App;
use crate::auth::Identity;
use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr as DfExpr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    ObjectNamePart, SelectItem, SetExpr, Statement, TableFactor, Value,
};
use http::StatusCode;
use meshgov_audit::Event;
use meshgov_columnar::datafusion;
use meshgov_columnar::schema::port_schema;
use meshgov_core::descriptor::PortInfo;
use meshgov_core::privacy::PrivacyRule;
use meshgov_privacy::query::AggregateRequest;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::Arc;

/// The ε a query spends when the session did not `SET dp_epsilon`.
pub const DEFAULT_EPSILON: f64 = 0.1;

/// A port the consumer may only aggregate, and its privacy rule.
#[derive(Debug, Clone)]
pub(crate) struct DpPort {
    pub port: PortInfo,
    pub rule: PrivacyRule,
}

impl DpPort {
    /// The table's columns: the fields the rule lets a query group by or
    /// sum, and the time field, typed as the port declares them.
    pub fn schema(&self) -> SchemaRef {
        let full = port_schema(&self.port);
        let usable = |name: &str| {
            self.rule.group_by.iter().any(|g| g.field == name)
                || self.rule.bounds.contains_key(name)
                || self.port.time_field.as_deref() == Some(name)
        };
        let fields: Vec<Field> = full
            .fields()
            .iter()
            .filter(|f| usable(f.name()))
            .map(|f| f.as_ref().clone())
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// The one shape of query this table answers, as the refusal says.
    fn shape(&self) -> String {
        let groups: Vec<&str> = self
            .rule
            .group_by
            .iter()
            .map(|g| g.field.as_str())
            .collect();
        let values: Vec<&str> = self.rule.bounds.keys().map(String::as_str).collect();
        let window = self.port.time_field.as_deref().map_or(String::new(), |t| {
            format!(" [WHERE {t} >= '<RFC 3339>' AND {t} < '<RFC 3339>']")
        });
        format!(
            "SELECT <group fields>, COUNT(*) | SUM(<field>) | AVG(<field>) FROM {}{window} GROUP BY <group fields>, grouping by any of [{}] and summing any of [{}]",
            self.port.name,
            groups.join(", "),
            values.join(", ")
        )
    }

    fn refuse(&self, what: &str) -> SqlError {
        SqlError::new(
            "0A000",
            "not_supported",
            format!(
                "you may only aggregate `{}` with differential privacy, and {what} is not allowed; ask {}",
                self.port.name,
                self.shape()
            ),
        )
    }
}

/// The table of a port the consumer may only aggregate. Scanning it is
/// refused: its rows never leave; only the privacy engine reads them.
#[derive(Debug)]
pub(crate) struct DpTable(pub DpPort);

#[async_trait]
impl TableProvider for DpTable {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[DfExpr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        Err(DataFusionError::External(Box::new(self.0.refuse(
            "this query (raw rows, a join, MIN/MAX or a subquery)",
        ))))
    }
}

/// An output column of a differentially private query.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    /// A group key.
    Key(String),
    /// A statistic, by its name in the answer (`count`, `sum_<f>`, `mean_<f>`).
    Stat(String),
}

/// A recognised differentially private query.
#[derive(Debug)]
pub(crate) struct DpQuery {
    pub port: String,
    pub request: AggregateRequest,
    columns: Vec<Out>,
}

fn ident(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(i.value.clone()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.clone()),
        _ => None,
    }
}

/// Whether `statement` is a query over one of the `dp` tables; if so, the
/// request it asks of the privacy engine, or why it cannot be answered.
pub(crate) fn recognize(
    statement: &Statement,
    dp: &HashMap<String, DpPort>,
    epsilon: f64,
) -> Option<Result<DpQuery, SqlError>> {
    let Statement::Query(q) = statement else {
        return None;
    };
    let SetExpr::Select(select) = q.body.as_ref() else {
        return None;
    };
    let [from] = select.from.as_slice() else {
        return None;
    };
    let TableFactor::Table { name, .. } = &from.relation else {
        return None;
    };
    // The table's name as the planner resolves it: a quoted name as
    // written, an unquoted one folded to lower case.
    let table = match name.0.last()? {
        ObjectNamePart::Identifier(i) if i.quote_style.is_some() => i.value.clone(),
        ObjectNamePart::Identifier(i) => i.value.to_ascii_lowercase(),
        ObjectNamePart::Function(_) => return None,
    };
    let port = dp.get(&table)?;
    Some(translate(q, select, from.joins.is_empty(), port, epsilon))
}

fn translate(
    q: &datafusion::sql::sqlparser::ast::Query,
    select: &datafusion::sql::sqlparser::ast::Select,
    no_joins: bool,
    port: &DpPort,
    epsilon: f64,
) -> Result<DpQuery, SqlError> {
    if !no_joins {
        return Err(port.refuse("a join"));
    }
    if q.with.is_some() || q.limit_clause.is_some() || q.fetch.is_some() || q.order_by.is_some() {
        return Err(port.refuse("WITH, ORDER BY or LIMIT"));
    }
    if select.distinct.is_some() || select.having.is_some() {
        return Err(port.refuse("DISTINCT or HAVING"));
    }
    let group_by: Vec<String> = match &select.group_by {
        GroupByExpr::Expressions(exprs, _) => exprs
            .iter()
            .map(|e| ident(e).ok_or_else(|| port.refuse("grouping by an expression")))
            .collect::<Result<_, _>>()?,
        GroupByExpr::All(_) => return Err(port.refuse("GROUP BY ALL")),
    };
    for g in &group_by {
        if !port.rule.group_by.iter().any(|r| r.field == *g) {
            return Err(port.refuse(&format!("a GROUP BY on the restricted field `{g}`")));
        }
    }
    let mut aggregations = Vec::new();
    let mut columns = Vec::new();
    for item in &select.projection {
        let expr = match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            _ => return Err(port.refuse("a raw row (`*`)")),
        };
        if let Some(field) = ident(expr) {
            if !group_by.contains(&field) {
                return Err(port.refuse(&format!("the raw column `{field}`")));
            }
            columns.push(Out::Key(field));
            continue;
        }
        let Expr::Function(f) = expr else {
            return Err(port.refuse("an expression over rows"));
        };
        let fname = f.name.to_string().to_ascii_lowercase();
        let args: Vec<&FunctionArg> = match &f.args {
            FunctionArguments::List(l) if l.duplicate_treatment.is_none() => {
                l.args.iter().collect()
            }
            _ => return Err(port.refuse(&format!("`{fname}` with these arguments"))),
        };
        if f.filter.is_some() || f.over.is_some() {
            return Err(port.refuse("a FILTER or window clause"));
        }
        let (key, name) = match (fname.as_str(), args.as_slice()) {
            ("count", [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)]) => {
                ("count", "count".to_string())
            }
            ("sum" | "avg", [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))]) => {
                let field = ident(e).ok_or_else(|| port.refuse("a sum of an expression"))?;
                if !port.rule.bounds.contains_key(&field) {
                    return Err(
                        port.refuse(&format!("a {fname} of `{field}`, which has no bounds"))
                    );
                }
                let key = if fname == "sum" { "sum" } else { "mean" };
                aggregations.push(
                    serde_json::json!({ key: { "field": field } })
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                );
                columns.push(Out::Stat(format!("{key}_{field}")));
                continue;
            }
            ("min" | "max", _) => return Err(port.refuse("MIN/MAX (they reveal single rows)")),
            _ => return Err(port.refuse(&format!("`{fname}`"))),
        };
        aggregations.push(
            serde_json::json!({ key: {} })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        columns.push(Out::Stat(name));
    }
    if aggregations.is_empty() {
        return Err(port.refuse("a query without COUNT, SUM or AVG"));
    }
    let (from, to) = window(select.selection.as_ref(), port)?;
    Ok(DpQuery {
        port: port.port.name.clone(),
        request: AggregateRequest {
            aggregations,
            group_by,
            epsilon,
            delta: None,
            from,
            to,
        },
        columns,
    })
}

/// The time window a `WHERE` gives: `tf >= 'from'` and `tf < 'to'`,
/// joined by `AND`; nothing else.
fn window(
    selection: Option<&Expr>,
    port: &DpPort,
) -> Result<(Option<String>, Option<String>), SqlError> {
    let (mut from, mut to) = (None, None);
    let mut pending: Vec<&Expr> = selection.into_iter().collect();
    let not_window = || port.refuse("a WHERE other than a time window");
    while let Some(e) = pending.pop() {
        match e {
            Expr::Nested(inner) => pending.push(inner),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                pending.push(left);
                pending.push(right);
            }
            Expr::BinaryOp { left, op, right } => {
                let field = ident(left).ok_or_else(not_window)?;
                if port.port.time_field.as_deref() != Some(field.as_str()) {
                    return Err(not_window());
                }
                let Expr::Value(v) = right.as_ref() else {
                    return Err(not_window());
                };
                let Value::SingleQuotedString(at) = &v.value else {
                    return Err(not_window());
                };
                match op {
                    BinaryOperator::GtEq => from = Some(at.clone()),
                    BinaryOperator::Lt => to = Some(at.clone()),
                    _ => return Err(port.refuse("a time bound other than `>=` (from) or `<` (to)")),
                }
            }
            _ => return Err(not_window()),
        }
    }
    Ok((from, to))
}

/// What an aggregate answer's refusal means over SQL.
fn refusal(e: crate::error::ApiError) -> SqlError {
    let code = match e.status {
        StatusCode::FORBIDDEN => "42501",
        StatusCode::BAD_REQUEST => "22023",
        StatusCode::NOT_FOUND => "42P01",
        StatusCode::CONFLICT => "55000",
        StatusCode::SERVICE_UNAVAILABLE => "58030",
        _ => "XX000",
    };
    SqlError::new(code, e.code, e.reason)
}

/// Answers `dq` for `who` through the privacy engine: one batch whose
/// columns are typed as `planned` (the query planned over the table),
/// and the notice that goes with it.
pub(crate) async fn answer(
    app: &Arc<App>,
    who: &Identity,
    dq: &DpQuery,
    planned: &Schema,
    ev: &mut Event,
) -> Result<(RecordBatch, String), SqlError> {
    ev.action = Some("aggregate".into());
    ev.port = Some(dq.port.clone());
    let rid = ev.request_id.clone().unwrap_or_default();
    let (status, doc) = crate::aggregate::answer(app, who, &dq.request, &dq.port, &rid, ev)
        .await
        .map_err(refusal)?;
    if status == StatusCode::TOO_MANY_REQUESTS {
        let reason = at(&doc, "/reason")
            .as_str()
            .unwrap_or("the privacy budget is spent");
        return Err(SqlError::new(
            "53400",
            "budget_exhausted",
            format!(
                "{reason}; the budget renews at the end of the window ({})",
                at(&doc, "/budget/window/end").as_str().unwrap_or("?")
            ),
        ));
    }
    let groups = at(&doc, "/groups").as_array().cloned().unwrap_or_default();
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(dq.columns.len());
    for (out, field) in dq.columns.iter().zip(planned.fields()) {
        let raw: ArrayRef = match out {
            Out::Key(k) => {
                Arc::new(StringArray::from_iter(groups.iter().map(|g| {
                    at(g, &format!("/key/{k}")).as_str().map(str::to_string)
                })))
            }
            Out::Stat(s) => Arc::new(Float64Array::from_iter(
                groups.iter().map(|g| g.get(s).and_then(Json::as_f64)),
            )),
        };
        let typed = match (out, field.data_type()) {
            (Out::Stat(_), DataType::Int64 | DataType::Int32 | DataType::UInt64) => {
                let rounded: Float64Array = raw
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .map(|a| a.unary(f64::round))
                    .unwrap_or_else(|| Float64Array::from(Vec::<f64>::new()));
                cast(&rounded, field.data_type())
            }
            (_, t) => cast(&raw, t),
        }
        .map_err(|e| {
            tracing::error!("cannot type the aggregate's answer: {e}");
            SqlError::plan_failed()
        })?;
        arrays.push(typed);
    }
    let notice = notice(&doc);
    let metadata: HashMap<String, String> = [
        (
            "meshgov.epsilon_spent",
            at(&doc, "/cost/epsilon").to_string(),
        ),
        (
            "meshgov.budget_remaining",
            at(&doc, "/budget/consumer/epsilon_remaining").to_string(),
        ),
        ("meshgov.statistics", at(&doc, "/statistics").to_string()),
        ("meshgov.cached", at(&doc, "/cached").to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let schema = Arc::new(Schema::new(planned.fields().clone()).with_metadata(metadata));
    let batch = RecordBatch::try_new(schema, arrays).map_err(|e| {
        tracing::error!("cannot build the aggregate's answer: {e}");
        SqlError::plan_failed()
    })?;
    Ok((batch, notice))
}

/// The value at `pointer` in `v`, or null.
fn at<'a>(v: &'a Json, pointer: &str) -> &'a Json {
    v.pointer(pointer).unwrap_or(&Json::Null)
}

/// The notice of an answer: ε spent, budget left, and each statistic's
/// noise and 95% interval.
fn notice(doc: &Json) -> String {
    let mut parts = vec![format!(
        "differentially private answer: epsilon {} spent{}; epsilon {} left for you and this purpose in this window",
        at(doc, "/cost/epsilon"),
        if at(doc, "/cached") == true {
            " (a repeat: the stored answer)"
        } else {
            ""
        },
        at(doc, "/budget/consumer/epsilon_remaining"),
    )];
    for s in at(doc, "/statistics").as_array().into_iter().flatten() {
        let mut p = format!(
            "{}: {} noise of scale {}",
            at(s, "/statistic").as_str().unwrap_or("?"),
            at(s, "/mechanism").as_str().unwrap_or("?"),
            at(s, "/scale")
        );
        if let Some(ci) = at(s, "/ci95").as_f64() {
            p.push_str(&format!(
                ", 95% of answers within ±{ci:.3} of the true value"
            ));
        }
        if let Some(t) = at(s, "/threshold").as_f64() {
            p.push_str(&format!(", groups below a noisy count of {t:.1} withheld"));
        }
        parts.push(p);
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    use meshgov_core::privacy::GroupBy;

    fn port() -> HashMap<String, DpPort> {
        let toml = r#"
id = "dp"
aggregations = ["count", "sum", "mean"]
epsilon_budget = 4.0
delta_budget = 1e-6
max_epsilon_per_query = 1.0
[bounds]
duration_ms = [0, 600000]
"#;
        let mut rule: PrivacyRule = toml::from_str(toml).unwrap();
        rule.group_by = vec![GroupBy {
            field: "country".into(),
            keys: Some(vec!["DE".into()]),
        }];
        let port = PortInfo {
            name: "plays".into(),
            kind: "records".into(),
            time_field: Some("played_at".into()),
            fields: Vec::new(),
        };
        HashMap::from([("plays".to_string(), DpPort { port, rule })])
    }

    fn recognized(sql: &str) -> Option<Result<DpQuery, SqlError>> {
        let s = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        recognize(&s[0], &port(), 0.5)
    }

    #[test]
    fn the_allowed_shape_becomes_an_aggregate_request() {
        let q = recognized(
            "SELECT country, COUNT(*), AVG(duration_ms) AS mean FROM plays WHERE played_at >= '2026-11-01T00:00:00Z' AND played_at < '2026-11-02T00:00:00Z' GROUP BY country",
        )
        .unwrap()
        .unwrap();
        assert_eq!(q.request.group_by, ["country"]);
        assert_eq!(q.request.epsilon, 0.5);
        assert_eq!(q.request.from.as_deref(), Some("2026-11-01T00:00:00Z"));
        assert_eq!(q.request.to.as_deref(), Some("2026-11-02T00:00:00Z"));
        assert_eq!(
            serde_json::to_string(&q.request.aggregations).unwrap(),
            r#"[{"count":{}},{"mean":{"field":"duration_ms"}}]"#
        );
        assert_eq!(
            q.columns,
            [
                Out::Key("country".into()),
                Out::Stat("count".into()),
                Out::Stat("mean_duration_ms".into())
            ]
        );
        assert!(recognized("SELECT * FROM profiles").is_none());
        // Unquoted names fold to lower case; quoted ones are as written.
        assert!(recognized("SELECT COUNT(*) FROM PLAYS").is_some());
        assert!(recognized("SELECT COUNT(*) FROM \"PLAYS\"").is_none());
    }

    #[test]
    fn everything_else_over_the_table_is_refused_with_what_is_allowed() {
        for (sql, says) in [
            ("SELECT * FROM plays", "raw row"),
            (
                "SELECT user_id, COUNT(*) FROM plays GROUP BY user_id",
                "restricted field `user_id`",
            ),
            ("SELECT MAX(duration_ms) FROM plays", "MIN/MAX"),
            (
                "SELECT COUNT(*) FROM plays p JOIN plays q ON p.country = q.country",
                "a join",
            ),
            (
                "SELECT COUNT(*) FROM plays WHERE country = 'DE'",
                "time window",
            ),
            ("SELECT SUM(event_id) FROM plays", "no bounds"),
        ] {
            let e = recognized(sql).unwrap().unwrap_err();
            assert_eq!(e.code, "0A000", "{sql}");
            assert!(e.message.contains(says), "{sql}: {}", e.message);
            assert!(e.message.contains("SELECT <group fields>"), "{}", e.message);
        }
    }
}
