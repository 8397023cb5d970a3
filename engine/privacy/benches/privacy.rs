//! Privacy benchmarks: `cargo bench -p meshgov-privacy`. (The 1M-row
//! aggregate, plain against private, is `meshgov-columnar`'s
//! `dp_aggregate`: aggregates run on the columnar plane.)
//!
//! - `noise_and_accounting`: cost one statistic with OpenDP, reserve it in
//!   the embedded ledger (fsync included), draw the noise;
//! - PostgreSQL reservation round trips (p50, p99) when
//!   `MESHGOV_TEST_POSTGRES` names a server; otherwise a note says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use criterion::{Criterion, criterion_group, criterion_main};
use meshgov_core::descriptor::{FieldInfo, PortInfo};
use meshgov_core::mesh::Level;
use meshgov_core::privacy::PrivacyRule;
use meshgov_privacy::ledger::{Account, FileLedger, Ledger, Reservation, Units};
use meshgov_privacy::mechanism::{self, Accumulator};
use meshgov_privacy::query::{self, Caps, ValidQuery};
use std::hint::black_box;
use std::time::Instant;

fn rule() -> PrivacyRule {
    toml::from_str(
        r#"
id = "bench"
aggregations = ["count", "sum", "mean", "histogram"]
epsilon_budget = 1e6
delta_budget = 1e-6
max_epsilon_per_query = 1.0
privacy_unit_column = "user_id"
max_groups_contributed = 5
bounds = { duration_ms = [0, 600000] }
group_by = [{ field = "country", keys = ["DE", "DK", "FI", "GB", "NO", "SE", "US"] }]
"#,
    )
    .unwrap()
}

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

fn plan(body: &str) -> ValidQuery {
    let r = query::parse(body.as_bytes()).unwrap();
    query::validate(&r, &rule(), &port(), Caps::default(), 0).unwrap()
}

fn noise_and_accounting(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = FileLedger::open(dir.path(), 0).unwrap();
    let p = plan(r#"{"aggregations":[{"count":{}}],"epsilon":0.001}"#);
    let account = Account {
        key: "bench".into(),
        limit: Units::budget(1e6, 0.0).unwrap(),
    };
    let mut i = 0u64;
    c.bench_function("noise_and_accounting/one_statistic", |b| {
        b.iter(|| {
            let costed = mechanism::cost(&p).unwrap();
            i += 1;
            let r = Reservation {
                query: format!("q{i}"),
                window_start: 0,
                window_end: i64::MAX,
                cost: Units::cost(costed.epsilon, costed.delta).unwrap(),
                accounts: vec![account.clone()],
            };
            black_box(ledger.reserve(&r).unwrap());
            let mut acc = Accumulator::new(&p);
            acc.add(Some("u"), &[], &[]);
            black_box(mechanism::release(&p, &costed, acc).unwrap())
        })
    });
}

fn postgres_round_trip(_c: &mut Criterion) {
    let Ok(url) = std::env::var("MESHGOV_TEST_POSTGRES") else {
        println!("postgres_round_trip: skipped (set MESHGOV_TEST_POSTGRES to a PostgreSQL URL)");
        return;
    };
    let l = meshgov_privacy::pg::PgLedger::connect(&url).unwrap();
    let tag = format!(
        "bench-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let account = Account {
        key: tag.clone(),
        limit: Units::budget(1e6, 0.0).unwrap(),
    };
    let mut times = Vec::new();
    for i in 0..2000 {
        let r = Reservation {
            query: format!("{tag}-{i}"),
            window_start: 0,
            window_end: i64::MAX,
            cost: Units::cost(0.01, 0.0).unwrap(),
            accounts: vec![account.clone()],
        };
        let t = Instant::now();
        black_box(l.reserve(&r).unwrap());
        times.push(t.elapsed());
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "postgres_round_trip/reserve: n={} p50={:?} p99={:?}",
        times.len(),
        pct(0.50),
        pct(0.99)
    );
}

criterion_group!(benches, noise_and_accounting, postgres_round_trip);
criterion_main!(benches);
