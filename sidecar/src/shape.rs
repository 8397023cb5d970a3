//! Applying a read plan to records: compiled once per request from a
//! [`ReadPlan`], then run on every record with no policy lookups.
//!
//! INTERIM: this is the sidecar's own applier, written so the read path
//! works end to end before `meshgov-anonymize` (and the core bridge from a
//! `ReadPlan` to its `RecordPlan`) lands. It implements the transforms the
//! example mesh uses. When the bridge lands, [`RecordShaper`] becomes a thin
//! wrapper over `RecordPlan::apply_json` and this transform code goes away;
//! the pipeline does not change.
//!
//! Only fields the plan lists leave, in the plan's order: a field the
//! descriptor does not declare is never written.

use meshgov_core::anonymization::{AnonRule, RowFilterRule};
use meshgov_core::plan::{ReadPlan, Treatment};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One record as read from upstream.
pub type Record = Map<String, Value>;

enum FieldOp {
    Keep,
    Null,
    Drop,
    Mask {
        first: usize,
        last: usize,
        ch: char,
    },
    Hmac {
        key: ring::hmac::Key,
        prefix: String,
    },
    Year,
    Month,
    Bucket(u64),
    Prefix(usize),
}

struct FieldOut {
    name: String,
    /// `"name":` pre-escaped for NDJSON.
    json_key: Vec<u8>,
    op: FieldOp,
}

enum Cmp {
    Eq,
    Ne,
    In,
    NotIn,
    Lt,
    Le,
    Gt,
    Ge,
    IsNull,
    NotNull,
}

struct Filter {
    field: String,
    cmp: Cmp,
    value: Value,
}

/// A read plan compiled for the per-record loop.
pub struct RecordShaper {
    fields: Vec<FieldOut>,
    filters: Vec<Filter>,
}

/// Pseudonym keys by key scope (raw HMAC key bytes).
pub type ScopeKeys = BTreeMap<String, Vec<u8>>;

fn op_for(rule: &AnonRule, keys: &ScopeKeys) -> FieldOp {
    match rule.transform.as_str() {
        "redact" if rule.drop == Some(true) => FieldOp::Drop,
        "mask" => FieldOp::Mask {
            first: rule.keep_first.unwrap_or(0),
            last: rule.keep_last.unwrap_or(0),
            ch: rule.mask_char.unwrap_or('*'),
        },
        "hmac" => match rule.key_scope.as_ref().and_then(|s| keys.get(s)) {
            Some(k) => FieldOp::Hmac {
                key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k),
                prefix: rule.prefix.clone().unwrap_or_default(),
            },
            // No key for the scope: withhold rather than leak (fail closed).
            None => FieldOp::Null,
        },
        "generalize" => match (rule.to.as_deref(), rule.width, rule.chars) {
            (Some("year"), _, _) => FieldOp::Year,
            (Some("month"), _, _) => FieldOp::Month,
            (Some("bucket"), Some(w), _) if w > 0 => FieldOp::Bucket(w),
            (Some("prefix"), _, Some(c)) => FieldOp::Prefix(c),
            _ => FieldOp::Null,
        },
        // `redact` without drop, plugins (not hosted yet) and anything unknown.
        _ => FieldOp::Null,
    }
}

fn cmp_of(op: &str) -> Option<Cmp> {
    Some(match op {
        "eq" => Cmp::Eq,
        "ne" => Cmp::Ne,
        "in" => Cmp::In,
        "not_in" => Cmp::NotIn,
        "lt" => Cmp::Lt,
        "le" => Cmp::Le,
        "gt" => Cmp::Gt,
        "ge" => Cmp::Ge,
        "is_null" => Cmp::IsNull,
        "not_null" => Cmp::NotNull,
        _ => return None,
    })
}

/// Why a plan could not be compiled; the request fails closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("row filter `{0}` has an operator this sidecar does not know")]
pub struct CompileError(pub String);

impl RecordShaper {
    /// Compiles an allowed plan. Row filters become a predicate list.
    pub fn compile(plan: &ReadPlan, keys: &ScopeKeys) -> Result<RecordShaper, CompileError> {
        let fields = plan
            .fields
            .iter()
            .map(|f| {
                let op = match &f.treatment {
                    Treatment::Clear | Treatment::Revealed { .. } => FieldOp::Keep,
                    Treatment::Withheld { .. } => FieldOp::Null,
                    Treatment::Anonymized(rule) => op_for(rule, keys),
                };
                let mut json_key = serde_json::to_vec(&f.name).unwrap_or_default();
                json_key.push(b':');
                FieldOut {
                    name: f.name.clone(),
                    json_key,
                    op,
                }
            })
            .collect();
        let filters = plan
            .row_filters
            .iter()
            .map(|r: &RowFilterRule| {
                Ok(Filter {
                    field: r.field.clone(),
                    cmp: cmp_of(&r.op).ok_or_else(|| CompileError(r.id.clone()))?,
                    value: r.value.clone().unwrap_or(Value::Null),
                })
            })
            .collect::<Result<_, CompileError>>()?;
        Ok(RecordShaper { fields, filters })
    }

    /// The names of the columns that leave, in order (CSV header).
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(|f| !matches!(f.op, FieldOp::Drop))
            .map(|f| f.name.as_str())
    }

    /// Whether every row filter holds for `rec`.
    pub fn admits(&self, rec: &Record) -> bool {
        self.filters.iter().all(|f| f.holds(rec.get(&f.field)))
    }

    /// Writes the shaped record as one NDJSON line.
    pub fn write_ndjson(&self, rec: &Record, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        for f in &self.fields {
            let Some(v) = f.apply(rec.get(&f.name)) else {
                continue;
            };
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&f.json_key);
            write_json(&v, out);
        }
        out.extend_from_slice(b"}\n");
    }

    /// Writes the shaped record as one CSV row (RFC 4180).
    pub fn write_csv(&self, rec: &Record, out: &mut Vec<u8>) {
        let mut first = true;
        for f in &self.fields {
            if matches!(f.op, FieldOp::Drop) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            match f.apply(rec.get(&f.name)) {
                None => {}
                Some(Shaped::Borrowed(v)) => write_csv_value(v, out),
                Some(Shaped::Owned(v)) => write_csv_value(&v, out),
            }
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Writes the CSV header row.
    pub fn write_csv_header(&self, out: &mut Vec<u8>) {
        let cols: Vec<&str> = self.columns().collect();
        for (i, c) in cols.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_csv_text(c, out);
        }
        out.extend_from_slice(b"\r\n");
    }
}

enum Shaped<'a> {
    Borrowed(&'a Value),
    Owned(Value),
}

fn write_json(v: &Shaped<'_>, out: &mut Vec<u8>) {
    let v = match v {
        Shaped::Borrowed(v) => *v,
        Shaped::Owned(v) => v,
    };
    // INVARIANT: serde_json values always serialize into a Vec.
    let _ = serde_json::to_writer(&mut *out, v);
}

fn write_csv_text(s: &str, out: &mut Vec<u8>) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(s.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

fn write_csv_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => {}
        Value::String(s) => write_csv_text(s, out),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        other => write_csv_text(&other.to_string(), out),
    }
}

static NULL: Value = Value::Null;

impl FieldOut {
    /// `None` means the key is omitted.
    fn apply<'a>(&self, v: Option<&'a Value>) -> Option<Shaped<'a>> {
        let v = v.unwrap_or(&NULL);
        let s = |s: String| Some(Shaped::Owned(Value::String(s)));
        match (&self.op, v) {
            (FieldOp::Drop, _) => None,
            (FieldOp::Keep, v) => Some(Shaped::Borrowed(v)),
            (_, Value::Null) | (FieldOp::Null, _) => Some(Shaped::Borrowed(&NULL)),
            (FieldOp::Mask { first, last, ch }, Value::String(t)) => s(mask(t, *first, *last, *ch)),
            (FieldOp::Hmac { key, prefix }, v) => {
                let text = match v {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                let tag = ring::hmac::sign(key, text.as_bytes());
                let hexed = hex::encode(tag.as_ref().get(..16).unwrap_or_default());
                s(format!("{prefix}{hexed}"))
            }
            (FieldOp::Year, Value::String(t)) => {
                date_part(t, 4).map_or(Some(Shaped::Borrowed(&NULL)), s)
            }
            (FieldOp::Month, Value::String(t)) => {
                date_part(t, 7).map_or(Some(Shaped::Borrowed(&NULL)), s)
            }
            (FieldOp::Bucket(w), v) => match number_of(v) {
                Some(n) if n.is_finite() => {
                    let w = *w as f64;
                    let lo = (n / w).floor() * w;
                    Some(Shaped::Owned(serde_json::json!(lo as i64)))
                }
                _ => Some(Shaped::Borrowed(&NULL)),
            },
            (FieldOp::Prefix(c), Value::String(t)) => s(t.chars().take(*c).collect()),
            // A transform that does not fit the value's type withholds it.
            _ => Some(Shaped::Borrowed(&NULL)),
        }
    }
}

/// Keeps `first` and `last` characters; a value too short to keep both
/// is masked whole, so masking never reveals a short value entirely.
fn mask(t: &str, first: usize, last: usize, ch: char) -> String {
    let n = t.chars().count();
    if n <= first + last {
        return std::iter::repeat_n(ch, n).collect();
    }
    t.chars()
        .enumerate()
        .map(|(i, c)| if i < first || i >= n - last { c } else { ch })
        .collect()
}

/// `YYYY` (len 4) or `YYYY-MM` (len 7) from a date or timestamp.
fn date_part(t: &str, len: usize) -> Option<String> {
    let head = t.get(..len)?;
    let ok = head.bytes().enumerate().all(|(i, b)| {
        if i == 4 {
            b == b'-'
        } else {
            b.is_ascii_digit()
        }
    });
    ok.then(|| head.to_string())
}

fn number_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        // CSV upstreams carry numbers as text.
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (number_of(a), number_of(b)) {
        (Some(x), Some(y)) if matches!(b, Value::Number(_)) || matches!(a, Value::Number(_)) => {
            x.partial_cmp(&y)
        }
        _ => match (a, b) {
            (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
            (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
            _ => None,
        },
    }
}

impl Filter {
    /// A missing field is null; a comparison that cannot be made hides the
    /// record (fail closed).
    fn holds(&self, v: Option<&Value>) -> bool {
        use std::cmp::Ordering as O;
        let v = v.unwrap_or(&NULL);
        let eq = || order(v, &self.value) == Some(O::Equal);
        let member = || match &self.value {
            Value::Array(items) => items.iter().any(|i| order(v, i) == Some(O::Equal)),
            _ => false,
        };
        match self.cmp {
            Cmp::IsNull => v.is_null(),
            Cmp::NotNull => !v.is_null(),
            _ if v.is_null() => false,
            Cmp::Eq => eq(),
            Cmp::Ne => order(v, &self.value).is_some_and(|o| o != O::Equal),
            Cmp::In => member(),
            Cmp::NotIn => matches!(self.value, Value::Array(_)) && !member(),
            Cmp::Lt => order(v, &self.value) == Some(O::Less),
            Cmp::Le => matches!(order(v, &self.value), Some(O::Less | O::Equal)),
            Cmp::Gt => order(v, &self.value) == Some(O::Greater),
            Cmp::Ge => matches!(order(v, &self.value), Some(O::Greater | O::Equal)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn masks_keep_ends_and_hide_short_values() {
        assert_eq!(mask("alice@example.com", 1, 4, '*'), "a************.com");
        assert_eq!(mask("ab", 1, 4, '*'), "**");
    }

    #[test]
    fn date_parts() {
        assert_eq!(date_part("1990-04-12", 4).as_deref(), Some("1990"));
        assert_eq!(date_part("1990-04-12", 7).as_deref(), Some("1990-04"));
        assert_eq!(date_part("garbage", 4), None);
    }

    proptest! {
        #[test]
        fn mask_preserves_length_and_never_reveals_the_middle(s in "\\PC{0,40}", f in 0usize..5, l in 0usize..5) {
            let m = mask(&s, f, l, '*');
            prop_assert_eq!(m.chars().count(), s.chars().count());
            let n = s.chars().count();
            if n > f + l {
                prop_assert!(m.chars().skip(f).take(n - f - l).all(|c| c == '*'));
            }
        }
    }
}
