//! A governed scan against the same scan with no policy, in one run.
//!
//! Writes `COLUMNAR_ROWS` (default 10,000,000: about 520 MB) rows of a
//! plays-like table to one Parquet file, then alternates `COLUMNAR_ROUNDS`
//! (5) times:
//!
//! - **plain**: DataFusion scans the file, keeps the rows of five countries
//!   and projects six columns, encoded as an Arrow IPC stream;
//! - **governed**: the consumer's view of the same file with three treated
//!   columns (a keyed pseudonym, a mask, a year) and the same row filter
//!   as the policy's, encoded the same way.
//!
//! It prints the median wall time and process CPU time of each, rows and
//! answer bytes per CPU-second, and governed/plain. With DuckDB importable
//! by `MESHGOV_PYTHON` (default `/opt/meshgov/pyclients/bin/python`) it
//! also times DuckDB scanning the same file with the same filter into an
//! Arrow table, as an outside reference for scan speed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::logical_expr::{col, lit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use futures::StreamExt as _;
use meshgov_anonymize::{Clause, CompareOp, DatePart, FieldRule, RowPredicate, Transform};
use meshgov_columnar::answer::{AnswerFormat, Encoder};
use meshgov_columnar::schema::port_schema;
use meshgov_columnar::source::{parquet_table, session};
use meshgov_columnar::view::consumer_view;
use meshgov_core::descriptor::{FieldInfo, PortInfo};
use meshgov_core::mesh::Level;
use meshgov_core::records::Rules;
use meshgov_core::window::Window;
use std::sync::Arc;
use std::time::{Duration, Instant};

const COUNTRIES: [&str; 8] = ["DE", "DK", "FI", "GB", "NO", "SE", "US", "NL"];
const KEPT: [&str; 5] = ["DE", "DK", "FI", "GB", "NO"];

// How the bench was started (measure, or run once): shared with the
// other crates' benches.
#[path = "../../../tests/e2e/src/bench.rs"]
mod bench;
use bench::knob;

fn port() -> PortInfo {
    let field = |name: &str, t: &str| FieldInfo {
        name: name.into(),
        logical_type: Some(t.into()),
        classification: None,
        level: Level::Public,
        direct_identifier: false,
    };
    PortInfo {
        name: "plays".into(),
        kind: "records".into(),
        time_field: None,
        fields: vec![
            field("user_id", "string"),
            field("email", "string"),
            field("birth_date", "date"),
            field("country", "string"),
            field("song_id", "string"),
            field("duration_ms", "integer"),
        ],
    }
}

fn write_file(path: &std::path::Path, rows: usize) {
    let schema = port_schema(&port());
    let props = WriterProperties::builder().build();
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        schema.clone(),
        Some(props),
    )
    .unwrap();
    let chunk = 65_536;
    let mut start = 0;
    while start < rows {
        let n = chunk.min(rows - start);
        let ids = start..start + n;
        let text = |f: &dyn Fn(usize) -> String| -> ArrayRef {
            Arc::new(ids.clone().map(f).map(Some).collect::<StringArray>())
        };
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                text(&|i| format!("u-{:08}", i % 1_000_003)),
                text(&|i| format!("user{}@example.com", i % 1_000_003)),
                text(&|i| format!("{}-{:02}-{:02}", 1950 + i % 55, 1 + i % 12, 1 + i % 28)),
                text(&|i| COUNTRIES[i % COUNTRIES.len()].to_string()),
                text(&|i| format!("s-{:04}", i % 5000)),
                Arc::new(
                    ids.clone()
                        .map(|i| (5_000 + (i * 7919) % 295_000) as i64)
                        .collect::<Int64Array>(),
                ),
            ],
        )
        .unwrap();
        w.write(&batch).unwrap();
        start += n;
    }
    w.close().unwrap();
}

/// User and system CPU time of this process so far.
fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(u.user_time()) + tv(u.system_time())
}

struct Run {
    wall: Duration,
    cpu: Duration,
    rows: usize,
    bytes: usize,
}

async fn run(file: &str, governed: bool) -> Run {
    let (t0, c0) = (Instant::now(), cpu_time());
    let ctx = session(512 << 20, None).unwrap();
    let table = parquet_table(&[file.to_string()], port_schema(&port())).unwrap();
    let scan = ctx.read_table(table).unwrap();
    let df = if governed {
        let rules = Rules {
            fields: vec![
                FieldRule::new("user_id", Transform::hmac_sha256(&[7u8; 32], "u_").unwrap()),
                FieldRule::new(
                    "email",
                    Transform::Mask {
                        keep_first: 1,
                        keep_last: 4,
                        mask_char: '*',
                    },
                ),
                FieldRule::new("birth_date", Transform::GeneralizeDate(DatePart::Year)),
                FieldRule::new("country", Transform::Clear),
                FieldRule::new("song_id", Transform::Clear),
                FieldRule::new("duration_ms", Transform::Clear),
            ],
            filter: RowPredicate::all(vec![Clause::new(
                "country",
                CompareOp::In,
                serde_json::json!(KEPT),
            )]),
            validators: vec![],
        };
        consumer_view(scan, &port(), &rules, &Window::default()).unwrap()
    } else {
        let kept = KEPT.iter().map(|c| lit(*c)).collect();
        scan.filter(col("country").in_list(kept, false))
            .unwrap()
            .select_columns(&[
                "user_id",
                "email",
                "birth_date",
                "country",
                "song_id",
                "duration_ms",
            ])
            .unwrap()
    };
    let schema = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await.unwrap();
    let mut enc = Encoder::new(AnswerFormat::ArrowStream, &schema).unwrap();
    let (mut rows, mut bytes) = (0, 0);
    while let Some(b) = stream.next().await {
        let b = b.unwrap();
        rows += b.num_rows();
        bytes += enc.write(&b).unwrap().len();
    }
    bytes += enc.finish().unwrap().len();
    Run {
        wall: t0.elapsed(),
        cpu: cpu_time() - c0,
        rows,
        bytes,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn duckdb(file: &str, rounds: usize) -> Option<Duration> {
    let py = std::env::var("MESHGOV_PYTHON")
        .unwrap_or_else(|_| "/opt/meshgov/pyclients/bin/python".into());
    let kept = KEPT
        .iter()
        .map(|c| format!("'{c}'"))
        .collect::<Vec<_>>()
        .join(",");
    let script = format!(
        "import duckdb, time\ncon = duckdb.connect()\ncon.execute('SET threads TO 1')\nts = []\nfor _ in range({rounds}):\n    t = time.process_time()\n    n = con.execute(\"select user_id, email, birth_date, country, song_id, duration_ms from read_parquet('{file}') where country in ({kept})\").fetch_arrow_table().num_rows\n    ts.append(time.process_time() - t)\nts.sort()\nprint(ts[len(ts)//2])"
    );
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(script)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout)
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .map(Duration::from_secs_f64)
}

fn main() {
    let rows = knob("COLUMNAR_ROWS", 10_000_000, 5_000);
    let rounds = knob("COLUMNAR_ROUNDS", 5, 1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plays.parquet");
    let t = Instant::now();
    write_file(&file, rows);
    let size = std::fs::metadata(&file).unwrap().len();
    println!(
        "{rows} rows, {:.1} MB of Parquet, written in {:.1} s",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let file = file.display().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (mut plain, mut governed) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        plain.push(rt.block_on(run(&file, false)));
        governed.push(rt.block_on(run(&file, true)));
    }
    let report = |name: &str, runs: &[Run]| -> (f64, f64) {
        let wall = median(runs.iter().map(|r| r.wall).collect());
        let cpu = median(runs.iter().map(|r| r.cpu).collect());
        let (rows, bytes) = (runs[0].rows, runs[0].bytes);
        let per_cpu = rows as f64 / cpu.as_secs_f64().max(1e-3);
        let mb_per_cpu = bytes as f64 / 1e6 / cpu.as_secs_f64().max(1e-3);
        println!(
            "{name:<9} median wall {:>7.3} s, cpu {:>7.3} s; {rows} rows, {:.1} MB of Arrow; {:>10.0} rows/CPU-s, {:>6.1} MB/CPU-s",
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            bytes as f64 / 1e6,
            per_cpu,
            mb_per_cpu
        );
        (per_cpu, mb_per_cpu)
    };
    let (p, _) = report("plain", &plain);
    let (g, g_mb) = report("governed", &governed);
    assert_eq!(
        plain[0].rows, governed[0].rows,
        "both scans keep the same rows"
    );
    println!(
        "governed/plain rows per CPU-second: {:.2} (target >= 0.70)",
        g / p
    );
    println!("governed Arrow answer: {g_mb:.1} MB per CPU-second (target >= 300 over loopback)");
    match duckdb(&file, rounds) {
        Some(d) => println!(
            "duckdb (1 thread, same filter and projection into Arrow): median cpu {:.3} s, {:.0} rows/CPU-s",
            d.as_secs_f64(),
            plain[0].rows as f64 / d.as_secs_f64().max(1e-3)
        ),
        None => println!("duckdb: not available (set MESHGOV_PYTHON to a Python with duckdb)"),
    }
}
