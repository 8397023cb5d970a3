//! Row filters: which records a consumer may see at all.
//!
//! A [`RowPredicate`] is plain data from the policy compiler. It is compiled
//! once per request into [`CompiledClause`]s whose per-record test reads only
//! the raw input value: strings without escapes are compared in place and no
//! `serde_json::Value` is ever built.

use std::cmp::Ordering;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::ProgramError;
use crate::value::{Num, RawKind, classify};

/// How a [`Clause`] compares a field's input value with its `value`.
///
/// Numbers compare numerically (exactly, also beyond 2^53), strings by byte
/// order (which is Unicode code point order), booleans only for (in)equality.
/// A clause whose field is missing, or whose input has another type than the
/// clause's value, does not hold; so `Ne` and `NotIn` filter out records that
/// lack the field. Only `IsNull` holds for a missing field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    /// Equal to the string, number or boolean `value`.
    Eq,
    /// Of the same type as `value` but not equal to it.
    Ne,
    /// Equal to one element of the array `value`.
    In,
    /// Of the same type as some element of the non-empty array `value`, and
    /// equal to none.
    NotIn,
    /// Less than the string or number `value`.
    Lt,
    /// Less than or equal to the string or number `value`.
    Le,
    /// Greater than the string or number `value`.
    Gt,
    /// Greater than or equal to the string or number `value`.
    Ge,
    /// Missing or `null`. `value` must be `null`.
    IsNull,
    /// Present and not `null`. `value` must be `null`.
    NotNull,
}

impl CompareOp {
    /// Every operator.
    pub const ALL: [CompareOp; 10] = [
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::In,
        CompareOp::NotIn,
        CompareOp::Lt,
        CompareOp::Le,
        CompareOp::Gt,
        CompareOp::Ge,
        CompareOp::IsNull,
        CompareOp::NotNull,
    ];

    /// The operator with this name (`eq`, `not_in`, `is_null`, …).
    pub fn parse(name: &str) -> Option<CompareOp> {
        CompareOp::ALL.into_iter().find(|op| op.name() == name)
    }

    /// The operator's name, as policies write it and errors show it.
    pub fn name(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::In => "in",
            CompareOp::NotIn => "not_in",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::IsNull => "is_null",
            CompareOp::NotNull => "not_null",
        }
    }
}

/// One condition on one input field. See [`CompareOp`] for the semantics.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    /// The input field's key. It need not be one of the plan's output fields:
    /// a record may be filtered on a field the consumer never sees.
    pub field: String,
    /// The comparison.
    pub op: CompareOp,
    /// What the input is compared with; its required shape depends on `op`.
    pub value: Value,
}

impl Clause {
    /// Convenience constructor.
    pub fn new(field: impl Into<String>, op: CompareOp, value: Value) -> Self {
        Clause {
            field: field.into(),
            op,
            value,
        }
    }
}

/// The records a consumer may see: those for which every clause holds.
/// No clauses keeps every record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowPredicate {
    /// Conditions that must all hold.
    pub clauses: Vec<Clause>,
}

impl RowPredicate {
    /// Keeps every record.
    pub fn keep_all() -> Self {
        RowPredicate::default()
    }

    /// Keeps records for which all `clauses` hold.
    pub fn all(clauses: Vec<Clause>) -> Self {
        RowPredicate { clauses }
    }
}

/// A clause checked and turned into a typed test, bound to a record slot.
#[derive(Debug)]
pub(crate) struct CompiledClause {
    pub(crate) slot: usize,
    test: Test,
}

#[derive(Debug)]
enum Test {
    IsNull,
    NotNull,
    /// Holds when the input compares to the operand with one of the
    /// accepted orderings, e.g. `Le` accepts `Less` and `Equal`.
    Compare {
        operand: Scalar,
        accept: [Option<Ordering>; 2],
    },
    /// Holds when the input is of a type in the set and `member == wanted`.
    Membership {
        set: ScalarSet,
        wanted: bool,
    },
}

#[derive(Debug)]
enum Scalar {
    Str(Box<str>),
    Num(Num),
    Bool(bool),
}

/// The elements of an `In`/`NotIn` list, by type.
#[derive(Debug, Default)]
struct ScalarSet {
    /// Sorted, for binary search.
    strings: Vec<Box<str>>,
    has_strings: bool,
    numbers: Vec<Num>,
    has_numbers: bool,
    bools: [bool; 2],
}

impl CompiledClause {
    pub(crate) fn compile(clause: &Clause, slot: usize) -> Result<Self, ProgramError> {
        let invalid = |expected: &'static str| ProgramError::InvalidClause {
            field: clause.field.clone(),
            op: clause.op.name(),
            expected,
        };
        let test = match clause.op {
            CompareOp::IsNull | CompareOp::NotNull => {
                if !clause.value.is_null() {
                    return Err(invalid("no value (null)"));
                }
                if clause.op == CompareOp::IsNull {
                    Test::IsNull
                } else {
                    Test::NotNull
                }
            }
            CompareOp::Eq | CompareOp::Ne => {
                let operand =
                    scalar(&clause.value).ok_or_else(|| invalid("a string, number or boolean"))?;
                let accept = if clause.op == CompareOp::Eq {
                    [Some(Ordering::Equal), None]
                } else {
                    [Some(Ordering::Less), Some(Ordering::Greater)]
                };
                Test::Compare { operand, accept }
            }
            CompareOp::Lt | CompareOp::Le | CompareOp::Gt | CompareOp::Ge => {
                let operand = match scalar(&clause.value) {
                    Some(s @ (Scalar::Str(_) | Scalar::Num(_))) => s,
                    _ => return Err(invalid("a string or number")),
                };
                let accept = match clause.op {
                    CompareOp::Lt => [Some(Ordering::Less), None],
                    CompareOp::Le => [Some(Ordering::Less), Some(Ordering::Equal)],
                    CompareOp::Gt => [Some(Ordering::Greater), None],
                    _ => [Some(Ordering::Greater), Some(Ordering::Equal)],
                };
                Test::Compare { operand, accept }
            }
            CompareOp::In | CompareOp::NotIn => {
                let expected = "an array of strings, numbers or booleans";
                let Value::Array(items) = &clause.value else {
                    return Err(invalid(expected));
                };
                if clause.op == CompareOp::NotIn && items.is_empty() {
                    // With no element there is no type to match, so by the
                    // fail-closed rule `not_in []` would filter out every
                    // record: almost certainly not what was meant.
                    return Err(invalid("a non-empty array"));
                }
                let mut set = ScalarSet::default();
                for item in items {
                    match scalar(item).ok_or_else(|| invalid(expected))? {
                        Scalar::Str(s) => {
                            set.strings.push(s);
                            set.has_strings = true;
                        }
                        Scalar::Num(n) => {
                            set.numbers.push(n);
                            set.has_numbers = true;
                        }
                        Scalar::Bool(b) => {
                            if let Some(seen) = set.bools.get_mut(usize::from(b)) {
                                *seen = true;
                            }
                        }
                    }
                }
                set.strings.sort_unstable();
                set.strings.dedup();
                Test::Membership {
                    set,
                    wanted: clause.op == CompareOp::In,
                }
            }
        };
        Ok(CompiledClause { slot, test })
    }

    /// Whether the clause holds for the field's raw input value.
    pub(crate) fn holds(&self, value: Option<&RawValue>) -> bool {
        let kind = value.map_or(RawKind::Null, classify);
        let present = !matches!(kind, RawKind::Null);
        match &self.test {
            Test::IsNull => !present,
            Test::NotNull => present,
            Test::Compare { operand, accept } => {
                let ordering = compare(kind, operand);
                ordering.is_some() && accept.contains(&ordering)
            }
            Test::Membership { set, wanted } => match set.contains(kind) {
                Some(member) => member == *wanted,
                None => false,
            },
        }
    }
}

fn scalar(value: &Value) -> Option<Scalar> {
    match value {
        Value::String(s) => Some(Scalar::Str(s.as_str().into())),
        Value::Number(n) => Num::from_json(n).map(Scalar::Num),
        Value::Bool(b) => Some(Scalar::Bool(*b)),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// The input compared with the operand, or `None` on a type mismatch.
fn compare(kind: RawKind<'_>, operand: &Scalar) -> Option<Ordering> {
    match (kind, operand) {
        (RawKind::String(s), Scalar::Str(want)) => s.cmp_str(want),
        (RawKind::Text(text), Scalar::Str(want)) => Some(text.as_bytes().cmp(want.as_bytes())),
        (RawKind::Number(text), Scalar::Num(want)) => Num::parse(text)?.cmp_num(*want),
        (RawKind::Bool(b), Scalar::Bool(want)) => Some(b.cmp(want)),
        _ => None,
    }
}

impl ScalarSet {
    /// `Some(is_member)` when the input's type occurs in the set, else `None`.
    fn contains(&self, kind: RawKind<'_>) -> Option<bool> {
        match kind {
            RawKind::String(s) if self.has_strings => {
                let text = s.decode()?;
                Some(
                    self.strings
                        .binary_search_by(|probe| probe.as_bytes().cmp(text.text.as_bytes()))
                        .is_ok(),
                )
            }
            RawKind::Number(text) if self.has_numbers => {
                let n = Num::parse(text)?;
                Some(
                    self.numbers
                        .iter()
                        .any(|want| n.cmp_num(*want) == Some(Ordering::Equal)),
                )
            }
            RawKind::Bool(b) if self.bools.iter().any(|seen| *seen) => {
                Some(self.bools.get(usize::from(b)).copied().unwrap_or(false))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn holds(op: CompareOp, value: Value, input: Option<&str>) -> bool {
        let clause = CompiledClause::compile(&Clause::new("f", op, value), 0).unwrap();
        let raw = input.map(|i| RawValue::from_string(i.to_owned()).unwrap());
        clause.holds(raw.as_deref())
    }

    #[test]
    fn eq_and_ne_on_each_type() {
        use CompareOp::*;
        assert!(holds(Eq, json!("eu"), Some(r#""eu""#)));
        assert!(!holds(Eq, json!("eu"), Some(r#""EU""#)));
        assert!(holds(Eq, json!("é"), Some(r#""\u00e9""#)));
        assert!(holds(Eq, json!(3), Some("3.0")));
        assert!(holds(Eq, json!(true), Some("true")));
        assert!(holds(Ne, json!("eu"), Some(r#""us""#)));
        assert!(!holds(Ne, json!("eu"), Some(r#""eu""#)));
        assert!(holds(Ne, json!(1), Some("2")));
        assert!(holds(Ne, json!(false), Some("true")));
    }

    #[test]
    fn type_mismatch_and_missing_fail_closed() {
        use CompareOp::*;
        for op in [Eq, Ne, Lt, Le, Gt, Ge] {
            assert!(
                !holds(op, json!(5), Some(r#""5""#)),
                "{op:?} string vs number"
            );
            assert!(!holds(op, json!("5"), Some("5")), "{op:?} number vs string");
            assert!(!holds(op, json!(5), None), "{op:?} missing");
            assert!(!holds(op, json!(5), Some("null")), "{op:?} null");
            assert!(!holds(op, json!(5), Some("[5]")), "{op:?} array");
        }
        assert!(!holds(Eq, json!(true), Some("1")));
        assert!(!holds(In, json!(["a"]), None));
        assert!(!holds(NotIn, json!(["a"]), None));
        assert!(!holds(NotIn, json!(["a"]), Some("1")));
        assert!(!holds(NotIn, json!(["a"]), Some("null")));
    }

    #[test]
    fn ordering_numeric_and_bytewise() {
        use CompareOp::*;
        assert!(holds(Lt, json!(18), Some("17.5")));
        assert!(!holds(Lt, json!(18), Some("18")));
        assert!(holds(Le, json!(18), Some("18")));
        assert!(holds(Gt, json!(-1), Some("-0.5")));
        assert!(holds(Ge, json!(-1), Some("-1e0")));
        // Numeric, not textual: "10" < "9" as text but 10 > 9.
        assert!(holds(Gt, json!(9), Some("10")));
        assert!(holds(Lt, json!("b"), Some(r#""a""#)));
        assert!(
            holds(Lt, json!("a"), Some(r#""B""#)),
            "byte order puts B before a"
        );
        assert!(holds(
            Ge,
            json!("2024-01-01"),
            Some(r#""2024-06-30T00:00:00Z""#)
        ));
        assert!(!holds(Gt, json!("é"), Some(r#""z""#)));
        // Exact beyond 2^53.
        assert!(holds(
            Gt,
            json!(9007199254740992u64),
            Some("9007199254740993")
        ));
    }

    #[test]
    fn membership() {
        use CompareOp::*;
        let list = json!(["eu", "uk", 7, true]);
        assert!(holds(In, list.clone(), Some(r#""uk""#)));
        assert!(!holds(In, list.clone(), Some(r#""us""#)));
        assert!(holds(In, list.clone(), Some("7.0")));
        assert!(holds(In, list.clone(), Some("true")));
        assert!(!holds(In, list.clone(), Some("false")));
        assert!(holds(NotIn, list.clone(), Some(r#""us""#)));
        assert!(!holds(NotIn, list.clone(), Some(r#""eu""#)));
        assert!(holds(NotIn, list.clone(), Some("8")));
        assert!(holds(NotIn, list, Some("false")));
        assert!(
            !holds(NotIn, json!(["eu"]), Some("false")),
            "bool not among the types"
        );
        assert!(!holds(In, json!([]), Some(r#""eu""#)));
    }

    #[test]
    fn null_checks() {
        use CompareOp::*;
        assert!(holds(IsNull, Value::Null, None));
        assert!(holds(IsNull, Value::Null, Some("null")));
        assert!(!holds(IsNull, Value::Null, Some("0")));
        assert!(!holds(IsNull, Value::Null, Some(r#""""#)));
        assert!(holds(NotNull, Value::Null, Some("false")));
        assert!(holds(NotNull, Value::Null, Some("[]")));
        assert!(!holds(NotNull, Value::Null, None));
        assert!(!holds(NotNull, Value::Null, Some("null")));
    }

    #[test]
    fn bad_clause_values_are_refused() {
        use CompareOp::*;
        for (op, value) in [
            (Eq, Value::Null),
            (Eq, json!([1])),
            (Ne, json!({"a": 1})),
            (Lt, json!(true)),
            (Ge, Value::Null),
            (In, json!("eu")),
            (In, json!([["nested"]])),
            (In, json!([null])),
            (NotIn, json!([])),
            (IsNull, json!(1)),
            (NotNull, json!("x")),
        ] {
            let err = CompiledClause::compile(&Clause::new("f", op, value), 0).unwrap_err();
            assert!(matches!(err, ProgramError::InvalidClause { .. }), "{op:?}");
            assert!(err.to_string().contains("`f`"), "{err}");
        }
    }
}
