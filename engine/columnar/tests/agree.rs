//! The columnar path and the record path agree: random ports, rules, row
//! filters, windows and data go through both, and the consumer gets the
//! same records, whether the columnar path scans typed columns (a port
//! kept as Parquet) or the record lines turned into batches (a port kept

//! as NDJSON or CSV, shaped by the consumer).

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::prelude::SessionContext;
use meshgov_anonymize::{Clause, CompareOp, DatePart, FieldRule, RowPredicate, Transform};
use meshgov_columnar::answer::{AnswerFormat, Encoder};
use meshgov_columnar::query::{CmpOp, Condition, ConsumerQuery, Literal, Test};
use meshgov_columnar::rows::RowBatcher;
use meshgov_columnar::schema::port_schema;
use meshgov_columnar::view::consumer_view;
use meshgov_core::descriptor::{FieldInfo, PortInfo};
use meshgov_core::mesh::Level;
use meshgov_core::records::Rules;
use meshgov_core::window::{Window, parse_time};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::sync::Arc;

const KEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Int,
    Float,
    Bool,
    Time,
}

impl Kind {
    fn logical(self) -> &'static str {
        match self {
            Kind::Text => "string",
            Kind::Int => "integer",
            Kind::Float => "number",
            Kind::Bool => "boolean",
            Kind::Time => "date",
        }
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Text),
        Just(Kind::Int),
        Just(Kind::Float),
        Just(Kind::Bool),
        Just(Kind::Time)
    ]
}

fn value(kind: Kind) -> BoxedStrategy<Value> {
    let v = match kind {
        Kind::Text => prop_oneof![
            "[a-c]{0,3}".prop_map(Value::from),
            "[ -~é\"\\\\\n]{0,12}".prop_map(Value::from),
            "[0-9]{1,4}".prop_map(Value::from),
            Just(Value::from("2026-03-01")),
        ]
        .boxed(),
        Kind::Int => (-50i64..50).prop_map(Value::from).boxed(),
        Kind::Float => prop_oneof![
            (-50i64..50).prop_map(|i| Value::from(i as f64 / 4.0)),
            Just(json!(1e21))
        ]
        .boxed(),
        Kind::Bool => any::<bool>().prop_map(Value::from).boxed(),
        Kind::Time => prop_oneof![
            (1u32..=28, 0u32..24)
                .prop_map(|(d, h)| Value::from(format!("2026-03-{d:02}T{h:02}:00:00Z"))),
            (1u32..=28).prop_map(|d| Value::from(format!("2026-03-{d:02}"))),
            Just(Value::from("not a time")),
        ]
        .boxed(),
    };
    prop_oneof![1 => Just(Value::Null), 6 => v].boxed()
}

fn transform() -> impl Strategy<Value = Transform> {
    prop_oneof![
        Just(Transform::Clear),
        any::<bool>().prop_map(|drop| Transform::Redact { drop }),
        (
            0usize..3,
            0usize..3,
            prop_oneof![Just('*'), Just('"'), Just('é')]
        )
            .prop_map(|(keep_first, keep_last, mask_char)| Transform::Mask {
                keep_first,
                keep_last,
                mask_char
            }),
        Just(Transform::hmac_sha256(KEY, "u_").unwrap()),
        prop_oneof![Just(DatePart::Year), Just(DatePart::Month)]
            .prop_map(Transform::GeneralizeDate),
        (1u64..20).prop_map(|width| Transform::GeneralizeBucket { width }),
        (1usize..4).prop_map(|chars| Transform::GeneralizePrefix { chars }),
    ]
}

fn op() -> impl Strategy<Value = CompareOp> {
    proptest::sample::select(CompareOp::ALL.to_vec())
}

#[derive(Debug, Clone)]
struct Case {
    kinds: Vec<Kind>,
    transforms: Vec<Transform>,
    clauses: Vec<(usize, CompareOp, Value)>,
    rows: Vec<Vec<Value>>,
    window: (Option<u32>, Option<u32>),
}

fn case() -> impl Strategy<Value = Case> {
    proptest::collection::vec((kind(), transform()), 1..6).prop_flat_map(|fields| {
        let kinds: Vec<Kind> = fields.iter().map(|f| f.0).collect();
        let transforms: Vec<Transform> = fields.iter().map(|f| f.1.clone()).collect();
        let n = kinds.len();
        let row = kinds.iter().map(|k| value(*k)).collect::<Vec<_>>();
        let clause = (0..n).prop_flat_map({
            let kinds = kinds.clone();
            move |i| {
                let k = kinds[i];
                let operand = prop_oneof![
                    value(k),
                    value(Kind::Text),
                    proptest::collection::vec(value(k), 0..3).prop_map(Value::from),
                ];
                (Just(i), op(), operand)
            }
        });
        (
            Just(kinds),
            Just(transforms),
            proptest::collection::vec(clause, 0..3),
            proptest::collection::vec(row, 0..40),
            (
                proptest::option::of(1u32..15),
                proptest::option::of(14u32..29),
            ),
        )
            .prop_map(|(kinds, transforms, clauses, rows, window)| Case {
                kinds,
                transforms,
                clauses,
                rows,
                window,
            })
    })
}

fn name(i: usize) -> String {
    format!("f{i}")
}

fn port(case: &Case) -> PortInfo {
    PortInfo {
        name: "p".into(),
        kind: "records".into(),
        time_field: case.kinds.iter().position(|k| *k == Kind::Time).map(name),
        fields: case
            .kinds
            .iter()
            .enumerate()
            .map(|(i, k)| FieldInfo {
                name: name(i),
                logical_type: Some(k.logical().into()),
                classification: None,
                level: Level::Public,
                direct_identifier: false,
            })
            .collect(),
    }
}

fn window(case: &Case, port: &PortInfo) -> Window {
    if port.time_field.is_none() {
        return Window::default();
    }
    let at = |d: u32| parse_time(&format!("2026-03-{d:02}")).unwrap();
    Window {
        from: case.window.0.map(at),
        to: case.window.1.map(at),
    }
}

fn batch(case: &Case, port: &PortInfo) -> RecordBatch {
    let columns: Vec<ArrayRef> = case
        .kinds
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let cells = case.rows.iter().map(|r| &r[i]);
            match k {
                Kind::Text | Kind::Time => Arc::new(
                    cells
                        .map(|v| v.as_str().map(str::to_string))
                        .collect::<StringArray>(),
                ) as ArrayRef,
                Kind::Int => Arc::new(cells.map(Value::as_i64).collect::<Int64Array>()),
                Kind::Float => Arc::new(cells.map(Value::as_f64).collect::<Float64Array>()),
                Kind::Bool => Arc::new(cells.map(Value::as_bool).collect::<BooleanArray>()),
            }
        })
        .collect();
    RecordBatch::try_new(port_schema(port), columns).unwrap()
}

/// Numbers compared by value: `1` and `1.0` are the same number.
fn normalize(v: Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        v => v,
    }
}

/// The case's rows as the JSON object lines a record upstream yields.
fn lines(case: &Case) -> Vec<Vec<u8>> {
    case.rows
        .iter()
        .map(|row| {
            let record: Map<String, Value> = row
                .iter()
                .enumerate()
                .map(|(i, v)| (name(i), v.clone()))
                .collect();
            serde_json::to_vec(&record).unwrap()
        })
        .collect()
}

/// The same lines as one batch, through [`RowBatcher`].
fn batch_of_lines(case: &Case, port: &PortInfo) -> RecordBatch {
    let mut batcher = RowBatcher::new(port_schema(port));
    for line in lines(case) {
        batcher.push(&line).unwrap();
    }
    batcher.finish().unwrap()
}

fn record_path(case: &Case, port: &PortInfo, rules: &Rules, window: &Window) -> Vec<Value> {
    let program = rules.record_program().unwrap();
    let mut out = Vec::new();
    for line in lines(case) {
        let record: Map<String, Value> = serde_json::from_slice(&line).unwrap();
        if !window.is_open() {
            let tf = port.time_field.as_deref().unwrap();
            let t = record.get(tf).and_then(Value::as_str).and_then(parse_time);
            if !t.is_some_and(|t| window.contains(t)) {
                continue;
            }
        }
        program.apply_json(&line, &mut out).unwrap();
    }
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| normalize(serde_json::from_slice(l).unwrap()))
        .collect()
}

async fn columnar_path(
    batch: RecordBatch,
    port: &PortInfo,
    rules: &Rules,
    window: &Window,
    query: &ConsumerQuery,
) -> Vec<Value> {
    let ctx = SessionContext::new();
    let table = ctx.read_batch(batch).unwrap();
    let view = consumer_view(table, port, rules, window).unwrap();
    let view = query.apply(view, rules).unwrap();
    let schema = Arc::new(view.schema().as_arrow().clone());
    let batches = view.collect().await.unwrap();
    let mut encoder = Encoder::new(AnswerFormat::Ndjson, &schema).unwrap();
    let mut bytes = Vec::new();
    for b in &batches {
        bytes.extend(encoder.write(b).unwrap());
    }
    bytes.extend(encoder.finish().unwrap());
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| normalize(serde_json::from_slice(l).unwrap()))
        .collect()
}

fn rules(case: &Case) -> Rules {
    Rules {
        fields: case
            .transforms
            .iter()
            .enumerate()
            .map(|(i, t)| FieldRule::new(name(i), t.clone()))
            .collect(),
        filter: RowPredicate::all(
            case.clauses
                .iter()
                .map(|(i, op, v)| Clause::new(name(*i), *op, v.clone()))
                .collect(),
        ),
        validators: Vec::new(),
    }
}

/// A consumer's condition, before its value is chosen.
#[derive(Debug, Clone)]
enum Probe {
    IsNull(bool),
    Compare(CmpOp),
    In(bool),
}

fn probe() -> impl Strategy<Value = Probe> {
    prop_oneof![
        any::<bool>().prop_map(Probe::IsNull),
        proptest::sample::select(vec![
            CmpOp::Eq,
            CmpOp::Ne,
            CmpOp::Lt,
            CmpOp::Le,
            CmpOp::Gt,
            CmpOp::Ge
        ])
        .prop_map(Probe::Compare),
        any::<bool>().prop_map(Probe::In),
    ]
}

/// A literal of the type field `i` has as the consumer sees it (a treated
/// field is text): `seen` when it has that type, else a fixed one.
fn literal(case: &Case, i: usize, seen: Option<&Value>) -> Literal {
    let clear = matches!(case.transforms[i], Transform::Clear);
    match (clear.then_some(case.kinds[i]), seen) {
        (Some(Kind::Int | Kind::Float), Some(Value::Number(n))) => {
            Literal::Number(n.as_f64().unwrap())
        }
        (Some(Kind::Int | Kind::Float), _) => Literal::Number(0.0),
        (Some(Kind::Bool), Some(Value::Bool(b))) => Literal::Bool(*b),
        (Some(Kind::Bool), _) => Literal::Bool(true),
        (_, Some(Value::String(t))) => Literal::Text(t.clone()),
        (_, _) => Literal::Text("m".into()),
    }
}

/// How `value` (as served) compares with `lit`; `None` for null.
fn order(value: Option<&Value>, lit: &Literal) -> Option<std::cmp::Ordering> {
    match (value?, lit) {
        (Value::String(v), Literal::Text(l)) => Some(v.as_str().cmp(l.as_str())),
        (Value::Number(v), Literal::Number(l)) => v.as_f64().unwrap().partial_cmp(l),
        (Value::Bool(v), Literal::Bool(l)) => Some(v.cmp(l)),
        _ => None,
    }
}

/// Whether a served value passes the condition, with SQL's meaning: a
/// null passes only `is null`.
fn passes(value: Option<&Value>, test: &Test) -> bool {
    use std::cmp::Ordering::*;
    match test {
        Test::IsNull { negated } => value.is_none_or(Value::is_null) != *negated,
        Test::In { values, negated } => {
            !value.is_none_or(Value::is_null)
                && values.iter().any(|l| order(value, l) == Some(Equal)) != *negated
        }
        Test::Compare(op, lit) => match (order(value, lit), op) {
            (None, _) => false,
            (Some(o), CmpOp::Eq) => o == Equal,
            (Some(o), CmpOp::Ne) => o != Equal,
            (Some(o), CmpOp::Lt) => o == Less,
            (Some(o), CmpOp::Le) => o != Greater,
            (Some(o), CmpOp::Gt) => o == Greater,
            (Some(o), CmpOp::Ge) => o != Less,
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A consumer's filter on any field they can see, masked,
    /// pseudonymized and generalized ones included, selects exactly the
    /// records whose served value passes it: it never sees a raw value.
    #[test]
    fn consumer_filters_see_only_the_values_served(
        case in case(),
        field in any::<proptest::sample::Index>(),
        row in any::<proptest::sample::Index>(),
        probe in probe(),
    ) {
        let port = port(&case);
        let rules = rules(&case);
        prop_assume!(rules.record_program().is_ok());
        let visible: Vec<usize> = (0..case.kinds.len())
            .filter(|i| !matches!(case.transforms[*i], Transform::Redact { .. }))
            .collect();
        prop_assume!(!visible.is_empty());
        let i = visible[field.index(visible.len())];
        let window = window(&case, &port);
        let served = record_path(&case, &port, &rules, &window);
        let seen = (!served.is_empty()).then(|| served[row.index(served.len())].get(name(i))).flatten();
        let lit = literal(&case, i, seen);
        let test = match probe {
            Probe::IsNull(negated) => Test::IsNull { negated },
            Probe::Compare(op) => Test::Compare(op, lit),
            Probe::In(negated) => Test::In { values: vec![lit, literal(&case, i, None)], negated },
        };
        let want: Vec<Value> = served
            .into_iter()
            .filter(|r| passes(r.get(name(i)), &test))
            .collect();
        let query = ConsumerQuery {
            filter: vec![Condition { field: name(i), test }],
            ..ConsumerQuery::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let got = rt.block_on(columnar_path(batch(&case, &port), &port, &rules, &window, &query));
        prop_assert_eq!(got, want);
    }

    #[test]
    fn record_and_columnar_paths_serve_the_same_records(case in case()) {
        let port = port(&case);
        let rules = rules(&case);
        // Clauses the policy compiler would refuse are not policies.
        prop_assume!(rules.record_program().is_ok());
        let window = window(&case, &port);
        let want = record_path(&case, &port, &rules, &window);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let plain = ConsumerQuery::default();
        let scanned = rt.block_on(columnar_path(batch(&case, &port), &port, &rules, &window, &plain));
        prop_assert_eq!(&scanned, &want);
        let from_lines = rt.block_on(columnar_path(batch_of_lines(&case, &port), &port, &rules, &window, &plain));
        prop_assert_eq!(from_lines, want);
    }
}
