//! What a consumer adds to their view of a port: a projection, filters,
//! an order and a page. It is planned on top of the view, so every
//! expression sees the values the consumer receives, never raw ones.
//!
//! # Filter syntax
//!
//! A filter is one or more conditions joined by `and`:
//!
//! ```text
//! country eq 'NL' and age ge 30 and age lt 40
//! postcode in ('101', '102')
//! email is not null
//! ```
//!
//! - operators: `eq`, `ne`, `lt`, `le`, `gt`, `ge`, `in (…)`, `not in (…)`,
//!   `is null`, `is not null`; a range is two comparisons;
//! - values: `'text'` (a quote inside is written `''`), numbers, `true`,
//!   `false`;
//! - a field is a name as the port declares it; a value must have the
//!   field's type as the consumer sees it (a masked or pseudonymized field
//!   is text).
//!
//! Only fields the consumer can see may be named: a field the descriptor
//! does not declare, or one that is withheld or redacted for this consumer,
//! "does not exist", whichever it is.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Column;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, SortExpr, col, lit};
use meshgov_anonymize::Transform;
use meshgov_core::records::Rules;

/// The longest filter accepted, in bytes.
pub const MAX_FILTER: usize = 1024;
/// The most conditions one filter may join.
pub const MAX_CONDITIONS: usize = 16;

/// A consumer's additions to their view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumerQuery {
    /// The fields to return, in this order; `None` for every field.
    pub fields: Option<Vec<String>>,
    pub filter: Vec<Condition>,
    /// Fields to order by, each ascending unless `descending`.
    pub order_by: Vec<(String, bool)>,
    /// Rows to skip.
    pub offset: u64,
    pub limit: Option<u64>,
}

/// One condition of a filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub field: String,
    pub test: Test,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    Compare(CmpOp, Literal),
    In { values: Vec<Literal>, negated: bool },
    IsNull { negated: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn name(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Text(String),
    Number(f64),
    Bool(bool),
}

/// Why a consumer's query was refused: a 400 with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

fn bad(reason: impl Into<String>) -> QueryError {
    QueryError(reason.into())
}

/// The fields the consumer can see and name: every field of the view but
/// those redacted or withheld (which are null to them, or not there).
pub fn visible_fields(rules: &Rules) -> Vec<&str> {
    rules
        .fields
        .iter()
        .filter(|f| !matches!(f.transform, Transform::Redact { .. }))
        .map(|f| f.name.as_str())
        .collect()
}

/// Parses `order_by`: `field`, `field:asc` or `field:desc`, comma-separated.
pub fn parse_order_by(text: &str) -> Result<Vec<(String, bool)>, QueryError> {
    text.split(',')
        .map(|part| {
            let (field, dir) = part.split_once(':').unwrap_or((part, "asc"));
            let descending = match dir {
                "asc" => false,
                "desc" => true,
                other => {
                    return Err(bad(format!(
                        "`order_by` direction must be `asc` or `desc`, got `{}`",
                        shorten(other)
                    )));
                }
            };
            if field.is_empty() {
                return Err(bad("`order_by` names an empty field"));
            }
            Ok((field.to_string(), descending))
        })
        .collect()
}

/// Parses `fields`: names, comma-separated.
pub fn parse_fields(text: &str) -> Result<Vec<String>, QueryError> {
    let fields: Vec<String> = text.split(',').map(str::to_string).collect();
    if fields.iter().any(String::is_empty) {
        return Err(bad("`fields` names an empty field"));
    }
    Ok(fields)
}

fn shorten(s: &str) -> String {
    s.chars().take(40).filter(|c| !c.is_control()).collect()
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Number(f64),
    Open,
    Close,
    Comma,
}

fn tokens(text: &str) -> Result<Vec<Token>, QueryError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ',' => {
                chars.next();
                out.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    _ => Token::Comma,
                });
            }
            '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\'')) if chars.peek().map(|p| p.1) == Some('\'') => {
                            chars.next();
                            s.push('\'');
                        }
                        Some((_, '\'')) => break,
                        Some((_, c)) => s.push(c),
                        None => {
                            return Err(bad(format!(
                                "the text starting at byte {at} of `filter` has no closing `'`"
                            )));
                        }
                    }
                }
                out.push(Token::Text(s));
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let mut s = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.') {
                        s.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                let n = s
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| bad(format!("`{}` in `filter` is not a number", shorten(&s))))?;
                out.push(Token::Number(n));
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut s = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c.is_alphanumeric() || matches!(c, '_' | '-') {
                        s.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Token::Word(s));
            }
            other => {
                return Err(bad(format!(
                    "unexpected `{}` at byte {at} of `filter`",
                    other.escape_default()
                )));
            }
        }
    }
    Ok(out)
}

/// Parses a filter (see the module documentation).
pub fn parse_filter(text: &str) -> Result<Vec<Condition>, QueryError> {
    if text.len() > MAX_FILTER {
        return Err(bad(format!("`filter` is longer than {MAX_FILTER} bytes")));
    }
    let toks = tokens(text)?;
    let mut it = toks.into_iter().peekable();
    let mut out = Vec::new();
    loop {
        let field = match it.next() {
            Some(Token::Word(w)) => w,
            _ => {
                return Err(bad(
                    "`filter` expects a field name, as in `country eq 'NL'`",
                ));
            }
        };
        let op = match it.next() {
            Some(Token::Word(w)) => w,
            _ => {
                return Err(bad(format!(
                    "`filter` expects an operator after `{}`",
                    shorten(&field)
                )));
            }
        };
        let literal = |t: Option<Token>| -> Result<Literal, QueryError> {
            match t {
                Some(Token::Text(s)) => Ok(Literal::Text(s)),
                Some(Token::Number(n)) => Ok(Literal::Number(n)),
                Some(Token::Word(w)) if w == "true" => Ok(Literal::Bool(true)),
                Some(Token::Word(w)) if w == "false" => Ok(Literal::Bool(false)),
                _ => Err(bad(format!(
                    "`filter` expects a value ('text', a number, true or false) after `{} {op}`",
                    shorten(&field)
                ))),
            }
        };
        let test = match op.as_str() {
            "eq" => Test::Compare(CmpOp::Eq, literal(it.next())?),
            "ne" => Test::Compare(CmpOp::Ne, literal(it.next())?),
            "lt" => Test::Compare(CmpOp::Lt, literal(it.next())?),
            "le" => Test::Compare(CmpOp::Le, literal(it.next())?),
            "gt" => Test::Compare(CmpOp::Gt, literal(it.next())?),
            "ge" => Test::Compare(CmpOp::Ge, literal(it.next())?),
            "is" => {
                let negated = it.peek() == Some(&Token::Word("not".into()));
                if negated {
                    it.next();
                }
                match it.next() {
                    Some(Token::Word(w)) if w == "null" => Test::IsNull { negated },
                    _ => return Err(bad("`filter` expects `is null` or `is not null`")),
                }
            }
            "in" | "not" => {
                let negated = op == "not";
                if negated && it.next() != Some(Token::Word("in".into())) {
                    return Err(bad("`filter` expects `not in (…)`"));
                }
                if it.next() != Some(Token::Open) {
                    return Err(bad(
                        "`filter` expects a list after `in`, as in `in ('a', 'b')`",
                    ));
                }
                let mut values = Vec::new();
                loop {
                    values.push(literal(it.next())?);
                    match it.next() {
                        Some(Token::Comma) => {}
                        Some(Token::Close) => break,
                        _ => return Err(bad("`filter`: a list ends with `)`")),
                    }
                }
                Test::In { values, negated }
            }
            other => {
                return Err(bad(format!(
                    "unknown operator `{}` in `filter`; expected eq, ne, lt, le, gt, ge, in, not in, is null or is not null",
                    shorten(other)
                )));
            }
        };
        out.push(Condition { field, test });
        if out.len() > MAX_CONDITIONS {
            return Err(bad(format!(
                "`filter` joins more than {MAX_CONDITIONS} conditions"
            )));
        }
        match it.next() {
            None => return Ok(out),
            Some(Token::Word(w)) if w == "and" => {}
            _ => return Err(bad("`filter` joins conditions with `and` only")),
        }
    }
}

/// The filter's shape for the audit log: its fields and operators, each
/// value replaced by `?`, so that no field value enters the log.
pub fn filter_shape(filter: &[Condition]) -> String {
    filter
        .iter()
        .map(|c| match &c.test {
            Test::Compare(op, _) => format!("{} {} ?", c.field, op.name()),
            Test::In { values, negated } => format!(
                "{} {}in ({})",
                c.field,
                if *negated { "not " } else { "" },
                vec!["?"; values.len()].join(", ")
            ),
            Test::IsNull { negated } => {
                format!("{} is {}null", c.field, if *negated { "not " } else { "" })
            }
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

fn no_such_field(name: &str) -> QueryError {
    bad(format!("no such field `{}`", shorten(name)))
}

fn column(name: &str) -> Expr {
    col(Column::new_unqualified(name))
}

/// `value` as a literal for a column of `ty`, or why it cannot be.
fn literal_for(field: &str, value: &Literal, ty: &DataType) -> Result<Expr, QueryError> {
    match (value, ty) {
        (Literal::Text(s), DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) => {
            Ok(lit(s.as_str()))
        }
        (Literal::Number(n), DataType::Int64) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            Ok(lit(*n as i64))
        }
        (Literal::Number(n), DataType::Int64 | DataType::Float64) => Ok(lit(*n)),
        (Literal::Bool(b), DataType::Boolean) => Ok(lit(*b)),
        _ => Err(bad(format!(
            "field `{field}` is {} as you see it; compare it with {}",
            kind_of(ty),
            match ty {
                DataType::Int64 | DataType::Float64 => "a number",
                DataType::Boolean => "true or false",
                _ => "a 'text' value",
            }
        ))),
    }
}

fn kind_of(ty: &DataType) -> &'static str {
    match ty {
        DataType::Int64 | DataType::Float64 => "a number",
        DataType::Boolean => "a boolean",
        _ => "text",
    }
}

impl ConsumerQuery {
    /// Whether the query adds nothing to the view.
    pub fn is_plain(&self) -> bool {
        self.fields.is_none()
            && self.filter.is_empty()
            && self.order_by.is_empty()
            && self.offset == 0
    }

    /// The query planned on top of `view` (the consumer's view of the
    /// port under `rules`): filters, order, page, then the projection.
    pub fn apply(&self, view: DataFrame, rules: &Rules) -> Result<DataFrame, QueryApplyError> {
        let visible = visible_fields(rules);
        let schema = view.schema().as_arrow().clone();
        let type_of = |name: &str| -> Result<DataType, QueryError> {
            if !visible.contains(&name) {
                return Err(no_such_field(name));
            }
            schema
                .field_with_name(name)
                .map(|f| f.data_type().clone())
                .map_err(|_| no_such_field(name))
        };
        let mut df = view;
        for c in &self.filter {
            let ty = type_of(&c.field)?;
            let e = column(&c.field);
            let e = match &c.test {
                Test::IsNull { negated: false } => e.is_null(),
                Test::IsNull { negated: true } => e.is_not_null(),
                Test::In { values, negated } => {
                    let list = values
                        .iter()
                        .map(|v| literal_for(&c.field, v, &ty))
                        .collect::<Result<Vec<_>, _>>()?;
                    e.in_list(list, *negated)
                }
                Test::Compare(op, v) => {
                    let v = literal_for(&c.field, v, &ty)?;
                    match op {
                        CmpOp::Eq => e.eq(v),
                        CmpOp::Ne => e.not_eq(v),
                        CmpOp::Lt => e.lt(v),
                        CmpOp::Le => e.lt_eq(v),
                        CmpOp::Gt => e.gt(v),
                        CmpOp::Ge => e.gt_eq(v),
                    }
                }
            };
            df = df.filter(e)?;
        }
        if !self.order_by.is_empty() {
            let sort = self
                .order_by
                .iter()
                .map(|(f, desc)| {
                    type_of(f)?;
                    Ok(SortExpr::new(column(f), !desc, false))
                })
                .collect::<Result<Vec<_>, QueryError>>()?;
            df = df.sort(sort)?;
        }
        if self.offset > 0 || self.limit.is_some() {
            let skip = usize::try_from(self.offset).unwrap_or(usize::MAX);
            let fetch = self.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
            df = df.limit(skip, fetch)?;
        }
        if let Some(fields) = &self.fields {
            let projection = fields
                .iter()
                .map(|f| type_of(f).map(|_| column(f)))
                .collect::<Result<Vec<_>, _>>()?;
            df = df.select(projection)?;
        }
        Ok(df)
    }
}

/// Why a query could not be added to a view.
#[derive(Debug, thiserror::Error)]
pub enum QueryApplyError {
    /// The consumer's mistake: a 400.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The plan's: a refusal.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn filters_parse_and_their_shape_holds_no_values() {
        let f = parse_filter(
            "country eq 'N''L' and age ge 30 and pc not in ('1', '2') and e is not null",
        )
        .unwrap();
        assert_eq!(f.len(), 4);
        assert_eq!(
            f[0].test,
            Test::Compare(CmpOp::Eq, Literal::Text("N'L".into()))
        );
        assert_eq!(f[1].test, Test::Compare(CmpOp::Ge, Literal::Number(30.0)));
        assert_eq!(
            filter_shape(&f),
            "country eq ? and age ge ? and pc not in (?, ?) and e is not null"
        );
        for bad in [
            "",
            "country",
            "country eq",
            "country like 'x'",
            "a eq 'x' or b eq 'y'",
            "a eq 'unclosed",
            "a in 'x'",
            "a in ('x'",
            "a eq 1e999",
            "a eq x",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn order_and_fields_parse() {
        assert_eq!(
            parse_order_by("a,b:desc").unwrap(),
            vec![("a".to_string(), false), ("b".to_string(), true)]
        );
        assert!(parse_order_by("a:up").is_err());
        assert!(parse_fields("a,,b").is_err());
    }

    proptest::proptest! {
        #[test]
        fn filter_parsing_never_panics(s in ".{0,200}") {
            let _ = parse_filter(&s);
        }
    }
}
