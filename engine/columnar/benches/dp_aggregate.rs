//! A differentially private aggregate against the same aggregate with no
//! privacy, on the same engine, in one run.
//!
//! Builds `DP_ROWS` (default 1,000,000) rows of plays (200,000 users,
//! seven countries, a duration) as in-memory record batches, then
//! alternates `DP_ROUNDS` (15) times:
//!
//! - **plain**: DataFusion computes count, sum and mean of the duration by
//!   country;
//! - **dp**: the same statistics through the privacy plan
//!   ([`meshgov_columnar::aggregate`]): at most five rows per user,
//!   durations clamped to `[0, 600000]`, per-group totals, then OpenDP's
//!   noise for each statistic.
//!
//! It does so twice: over the batches in memory, where the ratio is the
//! privacy plan's cost against the aggregate alone, and over the same rows
//! written to a Parquet file, scanned each time as a port kept as Parquet
//! is. It prints the median wall time of each and dp/plain.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::dataframe::DataFrame;
use datafusion::functions_aggregate::expr_fn::{avg, count, sum};
use datafusion::logical_expr::{col, lit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::SessionContext;
use meshgov_columnar::aggregate::{accumulate, bounded_totals};
use meshgov_columnar::schema::port_schema;
use meshgov_columnar::source::{parquet_table, session};
use meshgov_core::descriptor::{FieldInfo, PortInfo};
use meshgov_core::mesh::Level;
use meshgov_core::privacy::PrivacyRule;
use meshgov_core::window::Window;
use meshgov_privacy::mechanism;
use meshgov_privacy::query::{self, Caps, ValidQuery};
use std::hint::black_box;
use std::time::{Duration, Instant};

const COUNTRIES: [&str; 7] = ["DE", "DK", "FI", "GB", "NO", "SE", "US"];
const BATCH: usize = 4096;

// How the bench was started (measure, or run once): shared with the
// other crates' benches.
#[path = "../../../tests/e2e/src/bench.rs"]
mod bench;
use bench::knob;

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
            f("duration_ms", "integer"),
        ],
    }
}

fn plan() -> ValidQuery {
    let rule: PrivacyRule = toml::from_str(
        r#"
id = "bench"
aggregations = ["count", "sum", "mean", "histogram"]
epsilon_budget = 1e6
max_epsilon_per_query = 1.0
privacy_unit_column = "user_id"
max_groups_contributed = 5
bounds = { duration_ms = [0, 600000] }
group_by = [{ field = "country", keys = ["DE", "DK", "FI", "GB", "NO", "SE", "US"] }]
"#,
    )
    .unwrap();
    let body = r#"{"aggregations":[{"count":{}},{"sum":{"field":"duration_ms"}},{"mean":{"field":"duration_ms"}}],"group_by":["country"],"epsilon":1.0}"#;
    let r = query::parse(body.as_bytes()).unwrap();
    query::validate(&r, &rule, &port(), Caps::default(), 0).unwrap()
}

fn batches(rows: usize) -> Vec<RecordBatch> {
    let schema = port_schema(&port());
    (0..rows)
        .step_by(BATCH)
        .map(|start| {
            let range = start..(start + BATCH).min(rows);
            let users: StringArray = range
                .clone()
                .map(|i| Some(format!("u{}", (i * 7919) % 200_000)))
                .collect();
            let countries: StringArray = range
                .clone()
                .map(|i| Some(COUNTRIES[i % COUNTRIES.len()]))
                .collect();
            let durations: Int64Array = range.map(|i| ((i * 104_729) % 700_000) as i64).collect();
            let columns: Vec<ArrayRef> = vec![
                std::sync::Arc::new(users),
                std::sync::Arc::new(countries),
                std::sync::Arc::new(durations),
            ];
            RecordBatch::try_new(schema.clone(), columns).unwrap()
        })
        .collect()
}

/// Where the rows are read from.
enum Input<'a> {
    Memory(&'a [RecordBatch]),
    Parquet(&'a str),
}

impl Input<'_> {
    fn table(&self) -> DataFrame {
        match self {
            Input::Memory(data) => SessionContext::new().read_batches(data.to_vec()).unwrap(),
            Input::Parquet(file) => {
                let ctx = session(512 << 20, None).unwrap();
                let table = parquet_table(&[file.to_string()], port_schema(&port())).unwrap();
                ctx.read_table(table).unwrap()
            }
        }
    }
}

fn write_parquet(data: &[RecordBatch], path: &std::path::Path) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, port_schema(&port()), None).unwrap();
    for b in data {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

async fn plain(input: &Input<'_>) -> usize {
    let df = input.table();
    let out = df
        .aggregate(
            vec![col("country")],
            vec![
                count(lit(1)),
                sum(col("duration_ms")),
                avg(col("duration_ms")),
            ],
        )
        .unwrap()
        .collect()
        .await
        .unwrap();
    out.iter().map(RecordBatch::num_rows).sum()
}

async fn dp(input: &Input<'_>, plan: &ValidQuery) -> usize {
    let df = input.table();
    let costed = mechanism::cost(plan).unwrap();
    let totals = bounded_totals(df, &port(), plan, &Window::default()).unwrap();
    let acc = accumulate(totals, plan).await.unwrap();
    mechanism::release(plan, &costed, acc).unwrap().groups.len()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rows = knob("DP_ROWS", 1_000_000, 5_000);
    let rounds = knob("DP_ROUNDS", 15, 1);
    let data = batches(rows);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plays.parquet");
    write_parquet(&data, &file);
    let file = file.to_str().unwrap();
    let plan = plan();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (name, input) in [
        ("in memory", Input::Memory(&data)),
        ("from Parquet", Input::Parquet(file)),
    ] {
        let (mut p, mut d) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            black_box(rt.block_on(plain(&input)));
            p.push(t.elapsed());
            let t = Instant::now();
            assert_eq!(black_box(rt.block_on(dp(&input, &plan))), COUNTRIES.len());
            d.push(t.elapsed());
        }
        let (p, d) = (median(p), median(d));
        println!(
            "dp_aggregate {name}: {rows} rows, {rounds} rounds; plain median {:.1} ms, dp median {:.1} ms, dp/plain {:.2}",
            p.as_secs_f64() * 1e3,
            d.as_secs_f64() * 1e3,
            d.as_secs_f64() / p.as_secs_f64()
        );
    }
}
