//! Rewrites of the catalog queries PostgreSQL clients send (SQLAlchemy's
//! column reflection, psql's `\d`), for what the query engine does not
//! plan: a correlated scalar subquery over one `pg_catalog` table.
//!
//! - Over a catalog table that is always empty here (column defaults,
//!   sequences, collations, constraints, indexes, …: governed views have
//!   none of them), the subquery is `NULL`, which is what PostgreSQL
//!   would answer.
//! - Over another catalog table, its one column is wrapped in `max(…)`:
//!   the lookup (`pg_type` by oid) finds at most one row, so the answer
//!   is the same, and the engine plans an aggregated subquery.
//!
//! Only subqueries whose `FROM` is one `pg_catalog` table are touched;
//! queries over the ports are planned as the client wrote them.

use datafusion::sql::sqlparser::ast::{
    Expr, GroupByExpr, Query, SelectItem, SetExpr, Statement, TableFactor, Value,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use meshgov_columnar::datafusion;
use std::ops::ControlFlow;

/// Catalog tables that hold no rows for a sidecar's tables.
const EMPTY: &[&str] = &[
    "pg_attrdef",
    "pg_sequence",
    "pg_collation",
    "pg_constraint",
    "pg_index",
    "pg_inherits",
    "pg_trigger",
    "pg_policy",
    "pg_statistic_ext",
    "pg_rewrite",
    "pg_depend",
    "pg_partitioned_table",
];

/// Rewrites `statement`'s correlated catalog subqueries (see the module
/// documentation).
pub(crate) fn rewrite(statement: &mut Statement) {
    let _ = visit_expressions_mut(statement, |e| {
        if let Expr::Subquery(q) = e {
            match catalog_table(q) {
                Some(t) if EMPTY.contains(&t.as_str()) => {
                    *e = Expr::Value(Value::Null.into());
                }
                Some(_) => aggregate(q),
                None => {}
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// The table a subquery reads, when it is one `pg_catalog` table and
/// nothing else.
fn catalog_table(q: &Query) -> Option<String> {
    let SetExpr::Select(select) = q.body.as_ref() else {
        return None;
    };
    let [from] = select.from.as_slice() else {
        return None;
    };
    if !from.joins.is_empty() {
        return None;
    }
    let TableFactor::Table { name, .. } = &from.relation else {
        return None;
    };
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| p.to_string().to_ascii_lowercase())
        .collect();
    let table = match parts.as_slice() {
        [t] => t,
        [schema, t] if schema == "pg_catalog" => t,
        _ => return None,
    };
    table.starts_with("pg_").then(|| table.clone())
}

/// Wraps the subquery's one column in `max(…)`, unless it is grouped.
fn aggregate(q: &mut Query) {
    let SetExpr::Select(select) = q.body.as_mut() else {
        return;
    };
    if !matches!(&select.group_by, GroupByExpr::Expressions(g, _) if g.is_empty()) {
        return;
    }
    let [item] = select.projection.as_mut_slice() else {
        return;
    };
    let expr = match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return,
    };
    let text = format!("max({expr})");
    if let Ok(wrapped) = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&text)
        .and_then(|mut p| p.parse_expr())
    {
        *expr = wrapped;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn rewritten(sql: &str) -> String {
        let mut s = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        rewrite(&mut s[0]);
        s[0].to_string()
    }

    #[test]
    fn catalog_subqueries_are_planned_and_others_left_alone() {
        assert_eq!(
            rewritten(
                "SELECT a.attname, (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) FROM pg_attribute a"
            ),
            "SELECT a.attname, NULL FROM pg_attribute a"
        );
        assert_eq!(
            rewritten(
                "SELECT (SELECT t.typcollation FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid) FROM pg_attribute a"
            ),
            "SELECT (SELECT max(t.typcollation) FROM pg_catalog.pg_type AS t WHERE t.oid = a.atttypid) FROM pg_attribute AS a"
                .replace(" AS t", " t")
                .replace(" AS a", " a")
        );
        let port = "SELECT (SELECT email FROM profiles p WHERE p.id = q.id) FROM profiles q";
        assert_eq!(rewritten(port), port);
    }
}
