//! A differentially private aggregate planned over a port's table gathers
//! exactly what the record-by-record accumulator gathers: the same rows
//! count for each privacy unit, the same groups, the same clamped sums.
//! Random rules, queries and data go through both; the totals before

//! noise are compared.

use datafusion::prelude::SessionContext;
use meshgov_columnar::aggregate::{accumulate, bounded_totals};
use meshgov_columnar::rows::RowBatcher;
use meshgov_columnar::schema::port_schema;
use meshgov_core::descriptor::{FieldInfo, PortInfo};
use meshgov_core::mesh::Level;
use meshgov_core::privacy::PrivacyRule;
use meshgov_core::window::Window;
use meshgov_privacy::mechanism::Accumulator;
use meshgov_privacy::query::{self, Caps, ValidQuery};
use proptest::prelude::*;
use serde_json::{Value, json};

fn port() -> PortInfo {
    let f = |name: &str, ty: &str| FieldInfo {
        name: name.into(),
        logical_type: Some(ty.into()),
        classification: None,
        level: Level::Internal,
        direct_identifier: false,
    };
    PortInfo {
        name: "plays".into(),
        kind: "events".into(),
        time_field: None,
        fields: vec![
            f("user_id", "string"),
            f("country", "string"),
            f("device", "string"),
            f("duration_ms", "number"),
            f("plays", "integer"),
        ],
    }
}

fn rule(unit: bool, keys: bool, max: u32) -> PrivacyRule {
    let unit = if unit {
        format!("privacy_unit_column = \"user_id\"\nmax_groups_contributed = {max}\n")
    } else {
        String::new()
    };
    let country = if keys {
        r#"{ field = "country", keys = ["DE", "SE"] }"#
    } else {
        r#"{ field = "country" }"#
    };
    toml::from_str(&format!(
        r#"
id = "dp"
aggregations = ["count", "sum", "mean", "histogram"]
epsilon_budget = 100.0
delta_budget = 1e-3
max_epsilon_per_query = 10.0
{unit}bounds = {{ duration_ms = [0, 1000], plays = [-2, 5] }}
group_by = [{country}, {{ field = "device", keys = ["a", "b"] }}]
"#
    ))
    .unwrap()
}

const QUERIES: [&str; 5] = [
    r#"{"aggregations":[{"count":{}}],"epsilon":1.0}"#,
    r#"{"aggregations":[{"count":{}},{"sum":{"field":"duration_ms"}}],"group_by":["country"],"epsilon":1.0}"#,
    r#"{"aggregations":[{"mean":{"field":"plays"}},{"sum":{"field":"duration_ms"}}],"group_by":["country","device"],"epsilon":1.0}"#,
    r#"{"aggregations":[{"sum":{"field":"plays"}}],"group_by":["device"],"epsilon":1.0}"#,
    r#"{"aggregations":[{"count":{}}],"group_by":["device","country"],"epsilon":1.0}"#,
];

fn plan(q: &str, rule: &PrivacyRule) -> Option<ValidQuery> {
    let r = query::parse(q.as_bytes()).unwrap();
    // Queries a rule does not allow (e.g. keys it does not list without a
    // delta for partition selection) are not part of this test.
    query::validate(&r, rule, &port(), Caps::default(), 0).ok()
}

fn row() -> impl Strategy<Value = Value> {
    let text = |opts: &'static [&'static str]| {
        prop_oneof![
            4 => proptest::sample::select(opts).prop_map(Value::from),
            1 => Just(Value::Null),
        ]
    };
    (
        text(&["u1", "u2", "u3", "u4", "u5"]),
        text(&["DE", "SE", "FI"]),
        text(&["a", "b", "c"]),
        prop_oneof![
            4 => (-500i64..1500).prop_map(|d| json!(d as f64 / 2.0)),
            1 => Just(Value::Null),
            1 => Just(json!(1e300)),
        ],
        prop_oneof![4 => (-9i64..9).prop_map(Value::from), 1 => Just(Value::Null)],
    )
        .prop_map(|(u, c, d, ms, p)| {
            json!({"user_id": u, "country": c, "device": d, "duration_ms": ms, "plays": p})
        })
}

fn record_path(plan: &ValidQuery, rows: &[Value]) -> Accumulator {
    let mut acc = Accumulator::new(plan);
    for r in rows {
        acc.add_json(r.as_object().unwrap());
    }
    acc
}

async fn plan_path(plan: &ValidQuery, rows: &[Value]) -> Accumulator {
    let port = port();
    let mut batcher = RowBatcher::new(port_schema(&port));
    for r in rows {
        batcher.push(&serde_json::to_vec(r).unwrap()).unwrap();
    }
    let ctx = SessionContext::new();
    let table = ctx.read_batch(batcher.finish().unwrap()).unwrap();
    let totals = bounded_totals(table, &port, plan, &Window::default()).unwrap();
    accumulate(totals, plan).await.unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_plan_gathers_what_the_record_accumulator_gathers(
        unit in any::<bool>(),
        keys in any::<bool>(),
        max in 1u32..4,
        q in proptest::sample::select(&QUERIES[..]),
        rows in proptest::collection::vec(row(), 0..60),
    ) {
        let rule = rule(unit, keys, max);
        let Some(plan) = plan(q, &rule) else { return Ok(()) };
        let want = record_path(&plan, &rows);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let got = rt.block_on(plan_path(&plan, &rows));
        prop_assert_eq!(got.totals(), want.totals());
        prop_assert_eq!(got.used, want.used);
    }
}
