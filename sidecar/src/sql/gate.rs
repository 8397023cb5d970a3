//! Which statements the SQL ports run, and the shape a query is audited by.
//!
//! - A query (`SELECT`, `WITH`, `VALUES`) runs through the consumer's
//!   catalog.
//! - Client session statements are answered without touching data:
//!   `SET` of a client setting (`DateStyle`, `TimeZone`,
//!   `application_name`, `statement_timeout`, …), `SHOW`, `DISCARD`,
//!   and the transaction statements clients send around every query
//!   (`BEGIN`, `COMMIT`, `ROLLBACK`, savepoints). There is nothing to
//!   commit: every port is read only.
//! - Everything else is refused: statements that write or define
//!   (`INSERT`, `UPDATE`, `DELETE`, `MERGE`, `COPY`, `CREATE`, `DROP`,
//!   `ALTER`, `TRUNCATE`, `GRANT`, …) with `25006` (read only), a `SET` of
//!   the query engine's own settings with `42501`, and the rest (`EXPLAIN`,
//!   cursors, prepared statements in SQL, …) with `0A000`.
//!
//! The planned query passes a second gate ([`plan_is_query`]): a plan
//! that would define, write or copy anything is refused even if its text
//! looked like a query (`SELECT … INTO`).

use super::SqlError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use meshgov_columnar::datafusion;

/// The longest query shape kept in the audit log, in bytes.
pub const MAX_SHAPE: usize = 4096;

/// What a statement is, for the ports.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Planned in the consumer's catalog.
    Query,
    /// A client session statement: answered, touches no data.
    Session,
}

/// Words that begin statements that write or define.
const WRITES: &[&str] = &[
    "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "REPLACE", "COPY", "CREATE", "DROP", "ALTER",
    "TRUNCATE", "GRANT", "REVOKE", "VACUUM", "ANALYZE", "CLUSTER", "REINDEX", "COMMENT", "LOCK",
    "LOAD", "UNLOAD", "ATTACH", "DETACH", "INSTALL", "CALL", "DO", "REFRESH", "IMPORT",
];

/// Classifies `statement`, or refuses it.
pub(crate) fn gate(statement: &Statement) -> Result<Gate, SqlError> {
    match statement {
        Statement::Query(_) => Ok(Gate::Query),
        Statement::Set(set) => gate_set(set),
        Statement::ShowVariable { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Discard { .. } => Ok(Gate::Session),
        other => {
            let text = other.to_string();
            let first = text
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            if WRITES.contains(&first.as_str()) {
                Err(read_only(&first))
            } else {
                Err(SqlError::not_supported(format!(
                    "`{}`",
                    first.chars().take(20).collect::<String>()
                )))
            }
        }
    }
}

fn read_only(what: &str) -> SqlError {
    SqlError::new(
        "25006",
        "read_only",
        format!(
            "cannot execute {what}: the ports of a data product are read only; only SELECT runs here"
        ),
    )
}

/// A `SET` of a client setting passes; one of the query engine's own
/// (`datafusion.…`), of the session's role or authorization, does not.
fn gate_set(set: &Set) -> Result<Gate, SqlError> {
    let engine = || {
        SqlError::new(
            "42501",
            "forbidden",
            "the query engine's settings cannot be changed over SQL; only client settings (DateStyle, TimeZone, application_name, statement_timeout, …) can",
        )
    };
    match set {
        Set::SingleAssignment { variable, .. } => {
            let name = variable.to_string().to_ascii_lowercase();
            if name.contains('.') || name.starts_with("datafusion") {
                Err(engine())
            } else {
                Ok(Gate::Session)
            }
        }
        Set::SetTimeZone { .. } | Set::SetNames { .. } | Set::SetNamesDefault { .. } => {
            Ok(Gate::Session)
        }
        Set::SetTransaction { .. } => Ok(Gate::Session),
        _ => Err(engine()),
    }
}

/// Whether a planned statement only reads: no definition, write, copy or
/// engine statement hides in it.
pub(crate) fn plan_is_query(plan: &LogicalPlan) -> Result<(), SqlError> {
    match plan {
        LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Copy(_) => {
            Err(read_only("a statement that writes"))
        }
        LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) | LogicalPlan::DescribeTable(_) => {
            Err(SqlError::not_supported("EXPLAIN and DESCRIBE"))
        }
        LogicalPlan::Statement(_) => Err(SqlError::not_supported("this statement")),
        _ => Ok(()),
    }
}

/// The query's shape for the audit log: its tokens with comments dropped,
/// runs of white space made one space, and every literal (numbers and
/// strings of every quoting) replaced by `?`. No value enters the log.
/// Text the tokenizer cannot read is recorded as `<unreadable>`.
pub(crate) fn shape(sql: &str) -> String {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return "<unreadable>".into();
    };
    let mut out = String::with_capacity(sql.len().min(MAX_SHAPE));
    let mut space = false;
    for t in tokens {
        let piece = match t {
            Token::Whitespace(_) => {
                space = !out.is_empty();
                continue;
            }
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_) => "?".to_string(),
            other => other.to_string(),
        };
        if space {
            out.push(' ');
            space = false;
        }
        out.push_str(&piece);
        if out.len() > MAX_SHAPE {
            let mut cut = MAX_SHAPE;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use datafusion::sql::sqlparser::parser::Parser;

    fn gate_of(sql: &str) -> Result<Gate, SqlError> {
        let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        gate(&stmts[0])
    }

    #[test]
    fn queries_and_client_settings_pass_and_writes_are_refused() {
        assert_eq!(gate_of("SELECT 1").unwrap(), Gate::Query);
        assert_eq!(
            gate_of("WITH a AS (SELECT 1) SELECT * FROM a").unwrap(),
            Gate::Query
        );
        for s in [
            "SET DateStyle = 'ISO'",
            "SET TIME ZONE 'UTC'",
            "SET statement_timeout = 1000",
            "SHOW transaction_isolation",
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
            "SAVEPOINT sa_1",
            "RELEASE SAVEPOINT sa_1",
            "ROLLBACK TO SAVEPOINT sa_1",
            "DISCARD ALL",
        ] {
            assert_eq!(gate_of(s).unwrap(), Gate::Session, "{s}");
        }
        for (s, code) in [
            ("DELETE FROM users", "25006"),
            ("INSERT INTO users VALUES (1)", "25006"),
            ("UPDATE users SET a = 1", "25006"),
            ("COPY users FROM '/tmp/x'", "25006"),
            ("CREATE TABLE t (a int)", "25006"),
            ("DROP TABLE users", "25006"),
            ("TRUNCATE users", "25006"),
            ("SET datafusion.execution.batch_size = 1", "42501"),
            ("SET ROLE admin", "42501"),
            ("EXPLAIN SELECT 1", "0A000"),
        ] {
            assert_eq!(gate_of(s).unwrap_err().code, code, "{s}");
        }
    }

    #[test]
    fn shapes_hold_no_literal() {
        assert_eq!(
            shape(
                "SELECT  email FROM users -- mine\n WHERE email LIKE 'a%' AND age > 30 AND n = E'x\\'y'"
            ),
            "SELECT email FROM users WHERE email LIKE ? AND age > ? AND n = ?"
        );
        assert_eq!(shape("SELECT $1, $$dollar$$"), "SELECT $1, ?");
        assert!(shape(&"x,".repeat(5000)).len() <= MAX_SHAPE + 4);
    }

    proptest::proptest! {
        #[test]
        fn shape_never_panics(s in ".{0,300}") {
            let _ = shape(&s);
        }
    }
}
