//! The SQL ports against baselines measured in the same run, through the
//! release sidecar (a process of its own, so its CPU and memory are its
//! own).
//!
//! ```sh
//! MESHGOV_BENCH_POSTGRES=postgresql://meshgov@127.0.0.1:55432/postgres \
//!   cargo bench -p meshgov-sidecar --bench sqlbench
//! ```
//!
//! 1. **Small queries.** `SQLBENCH_QUERIES` (2,000) runs of a 10-row
//!    select of the `profiles` port (`SQLBENCH_ROWS`, 10,000 rows, as
//!    Parquet), a prepared statement over one connection, by the
//!    `marketing` consumer, with one client (tokio-postgres):
//!    - through the sidecar's PostgreSQL port (authenticated, planned on
//!      the consumer's view, audited durably, encoded);
//!    - against a real PostgreSQL server holding the same rows
//!      (`MESHGOV_BENCH_POSTGRES`, else `MESHGOV_TEST_POSTGRES`; skipped
//!      without either);
//!    - DataFusion on the same plan in this process (the consumer's view
//!      of the same file, limited to 10 rows).
//!
//!    p50 and p99 of each; the sidecar over PostgreSQL (target: p50 within
//!    2×) and the governance overhead, the sidecar's p50 minus the
//!    in-process plan's (target: ≤ 300 µs).
//! 2. **Bulk reads.** `SQLBENCH_BULK_ROWS` (10,000,000) rows of the port,
//!    read whole by the same consumer: over Flight SQL with ADBC (Python,
//!    `MESHGOV_PYTHON`), as the records port's Arrow IPC answer, and by
//!    DataFusion in this process. Rows per CPU-second of the sidecar
//!    process (of this process for the in-process read); the target is
//!    Flight SQL at ≥ 0.8× the in-process read.
//! 3. **Cost per connection.** The sidecar's RSS idle, and with
//!    `SQLBENCH_CONNECTIONS` (100) psycopg connections open and idle.
//!
//! Every figure is printed, targets that miss included; nothing is
//! asserted but row counts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;
use common::*;
use support::*;

use meshgov_columnar::datafusion::arrow::ipc::reader::StreamReader;
use meshgov_columnar::datafusion::arrow::util::display::array_value_to_string;
use meshgov_columnar::datafusion::logical_expr::{Expr, col};
use meshgov_columnar::datafusion::prelude::SessionContext;
use meshgov_columnar::query::visible_fields;
use meshgov_columnar::schema::port_schema;
use meshgov_columnar::source::{parquet_table, session};
use meshgov_columnar::view::consumer_view;
use meshgov_core::Principal;
use meshgov_core::decision::Asker;
use meshgov_core::descriptor::{PortInfo, ProductInfo};
use meshgov_core::enforce::Enforcer;
use meshgov_core::records::{KeyRing, Rules};
use meshgov_core::window::Window;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PORT: &str = "profiles";

fn python() -> PathBuf {
    std::env::var_os("MESHGOV_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/meshgov/pyclients/bin/python"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// p50 and p99 of `samples`, printed as `name`.
fn report(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!(
        "  {name:<34} p50 {:>8.1} µs   p99 {:>8.1} µs",
        us(p50),
        us(p99)
    );
    p50
}

/// The consumer's compiled rules for the port and the port itself, from
/// the same policies the sidecar's bundle holds.
fn rules() -> (PortInfo, Arc<Rules>) {
    let (_, descriptor) = example_descriptor("user-profiles");
    let policies = policies_for(&descriptor);
    let info = ProductInfo::resolve(&descriptor, &policies.mesh).unwrap();
    let view = meshgov_core::ProductView::new(info, &policies).unwrap();
    let mut keys = KeyRing::new();
    keys.insert("user-identity", PSEUDONYM_KEY.as_bytes())
        .unwrap();
    let enforcer = Enforcer::new(
        policies,
        view,
        keys,
        Arc::new(meshgov_core::plugins::NoPlugins),
    )
    .unwrap();
    let principal = Principal {
        id: "bench".into(),
        groups: vec!["marketing".into()],
        attrs: Default::default(),
    };
    let read = enforcer
        .read(
            PORT,
            Asker {
                principal: &principal,
                purpose: "campaign-analytics",
                now_unix: now(),
            },
        )
        .unwrap();
    let port = enforcer.view().info.port(PORT).unwrap().clone();
    (port, read.rules.clone().unwrap())
}

/// The consumer's view of `file` in `ctx`, as the SQL port plans a table
/// scan: the view, narrowed to the fields the consumer may see.
async fn view(
    ctx: &SessionContext,
    file: &Path,
    port: &PortInfo,
    rules: &Rules,
) -> meshgov_columnar::datafusion::dataframe::DataFrame {
    let table = parquet_table(&[file.display().to_string()], port_schema(port)).unwrap();
    let scan = ctx.read_table(table).unwrap();
    let view = consumer_view(scan, port, rules, &Window::default()).unwrap();
    let visible: Vec<Expr> = visible_fields(rules).into_iter().map(col).collect();
    view.select(visible).unwrap()
}

async fn connect(
    addr: std::net::SocketAddr,
    user: &str,
    password: &str,
    db: &str,
) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user={user} password={password} dbname={db}",
            addr.ip(),
            addr.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client
}

async fn timed_queries(client: &tokio_postgres::Client, sql: &str, n: usize) -> Vec<Duration> {
    let stmt = client.prepare(sql).await.unwrap();
    for _ in 0..n / 10 + 1 {
        client.query(&stmt, &[]).await.unwrap();
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let rows = client.query(&stmt, &[]).await.unwrap();
        out.push(t.elapsed());
        assert_eq!(rows.len(), 10);
    }
    out
}

/// The same rows in a real PostgreSQL table, and the same query there.
async fn postgres_baseline(url: &str, file: &Path, n: usize) -> Vec<Duration> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let columns = [
        "user_id",
        "email",
        "name",
        "birth_date",
        "country",
        "postcode",
        "signed_up_at",
    ];
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS sqlbench_profiles; CREATE TABLE sqlbench_profiles ({})",
            columns.map(|c| format!("{c} text")).join(", ")
        ))
        .await
        .unwrap();
    let ctx = SessionContext::new();
    let batches = ctx
        .read_parquet(file.display().to_string(), Default::default())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    for b in batches {
        let cols: Vec<_> = columns
            .iter()
            .map(|c| b.column_by_name(c).unwrap())
            .collect();
        for start in (0..b.num_rows()).step_by(500) {
            let end = (start + 500).min(b.num_rows());
            let values: Vec<String> = (start..end)
                .map(|i| {
                    let row: Vec<String> = cols
                        .iter()
                        .map(|a| {
                            let v = array_value_to_string(a, i).unwrap();
                            format!("'{}'", v.replace('\'', "''"))
                        })
                        .collect();
                    format!("({})", row.join(","))
                })
                .collect();
            client
                .batch_execute(&format!(
                    "INSERT INTO sqlbench_profiles VALUES {}",
                    values.join(",")
                ))
                .await
                .unwrap();
        }
    }
    client
        .batch_execute("ANALYZE sqlbench_profiles")
        .await
        .unwrap();
    let samples = timed_queries(&client, "SELECT * FROM sqlbench_profiles LIMIT 10", n).await;
    client
        .batch_execute("DROP TABLE sqlbench_profiles")
        .await
        .unwrap();
    samples
}

/// Reads the whole port over Flight SQL with ADBC; its row count.
fn adbc_read(flight: std::net::SocketAddr, token: &str) -> Option<u64> {
    let script = r#"
import sys, adbc_driver_flightsql.dbapi as flight
with flight.connect(sys.argv[1], db_kwargs={"adbc.flight.sql.authorization_header": "Bearer " + sys.argv[2]}) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM profiles")
        print(cur.fetch_arrow_table().num_rows)
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(format!("grpc://{flight}"))
        .arg(token)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("adbc: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Reads the whole port as the records port's Arrow IPC answer; its rows.
fn http_arrow_read(rt: &tokio::runtime::Runtime, addr: std::net::SocketAddr, token: &str) -> u64 {
    let r = rt.block_on(get_with(
        addr,
        &format!("/v1/ports/{PORT}/records"),
        token,
        "application/vnd.apache.arrow.stream",
    ));
    assert_eq!(r.status, 200);
    StreamReader::try_new(std::io::Cursor::new(r.body), None)
        .unwrap()
        .map(|b| b.unwrap().num_rows() as u64)
        .sum()
}

/// Opens `n` idle psycopg connections in a child process; returns it once
/// they are open (closing its stdin closes them).
fn open_connections(
    sql: std::net::SocketAddr,
    token: &str,
    n: usize,
) -> Option<std::process::Child> {
    let script = r#"
import sys, psycopg
host, port, token, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
conns = [psycopg.connect(f"host={host} port={port} user=bench password={token} dbname=user-profiles", autocommit=True) for _ in range(n)]
for c in conns:
    c.execute("SELECT 1")
print("open", flush=True)
sys.stdin.read()
"#;
    let mut child = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(sql.ip().to_string())
        .arg(sql.port().to_string())
        .arg(token)
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut()?)
        .read_line(&mut line)
        .ok()?;
    (line.trim() == "open").then_some(child)
}

fn main() {
    let rows = knob("SQLBENCH_ROWS", 10_000, 100);
    let queries = knob("SQLBENCH_QUERIES", 2_000, 20);
    let bulk_rows = knob("SQLBENCH_BULK_ROWS", 10_000_000, 20_000);
    let connections = knob("SQLBENCH_CONNECTIONS", 100, 5);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port_dir = data.join(PORT);
    write_profiles(&port_dir, rows, 12..24);
    let file = port_dir.join("2026-03-01.parquet");
    let [addr, sql, flight] = free_addrs();
    let (config, bearer) = sidecar_setup(
        tmp.path(),
        &data,
        addr,
        &format!("sql = \"{sql}\"\nflight = \"{flight}\""),
        "[sql]\nallow_plaintext = true\n[limits]\nmax_sql_connections = 1000",
    );
    let sc = spawn_sidecar("sidecar", &config, addr);
    let (pid, addr) = (sc.child.id(), sc.addr);
    let token = bearer.trim_start_matches("Bearer ").to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (port, rules) = rules();

    println!(
        "sqlbench: the release {} (pid {pid}); 1. a 10-row select of the profiles port ({rows} rows as Parquet), {queries} times, one connection, prepared",
        sc.name
    );
    let sidecar = rt.block_on(async {
        let client = connect(sql, "bench", &token, "user-profiles").await;
        timed_queries(&client, "SELECT * FROM profiles LIMIT 10", queries).await
    });
    let sidecar_p50 = report("sidecar PostgreSQL port", sidecar);
    let in_process = rt.block_on(async {
        let mut out = Vec::with_capacity(queries);
        // One session, as a connection's catalog is.
        let ctx = session(256 * 1024 * 1024, None).unwrap();
        for i in 0..queries + queries / 10 {
            let t = Instant::now();
            let got = view(&ctx, &file, &port, &rules)
                .await
                .limit(0, Some(10))
                .unwrap()
                .collect()
                .await
                .unwrap();
            if i >= queries / 10 {
                out.push(t.elapsed());
            }
            assert_eq!(got.iter().map(|b| b.num_rows()).sum::<usize>(), 10);
        }
        out
    });
    let in_process_p50 = report("DataFusion, same plan, in process", in_process);
    let overhead = us(sidecar_p50) - us(in_process_p50);
    println!(
        "  governance overhead (sidecar p50 - in-process p50): {overhead:.1} µs (target <= 300 µs): {}",
        if overhead <= 300.0 { "MET" } else { "MISSED" }
    );
    let pg_url = std::env::var("MESHGOV_BENCH_POSTGRES")
        .or_else(|_| std::env::var("MESHGOV_TEST_POSTGRES"))
        .ok()
        .filter(|u| !u.is_empty());
    match pg_url {
        Some(url) => {
            let pg = rt.block_on(postgres_baseline(&url, &file, queries));
            let pg_p50 = report("PostgreSQL, the same rows", pg);
            let ratio = us(sidecar_p50) / us(pg_p50).max(0.001);
            println!(
                "  sidecar / PostgreSQL p50: {ratio:.2}x (target <= 2.0x): {}",
                if ratio <= 2.0 { "MET" } else { "MISSED" }
            );
        }
        None => println!(
            "  PostgreSQL baseline: skipped (set MESHGOV_BENCH_POSTGRES to a postgresql:// URL)"
        ),
    }

    println!("sqlbench: 2. the whole port read by the same consumer, {bulk_rows} rows");
    std::fs::remove_file(&file).unwrap();
    let t = Instant::now();
    write_profiles(&port_dir, bulk_rows, 12..24);
    println!(
        "  ({:.1} MB of Parquet written in {:.1} s)",
        std::fs::metadata(&file).unwrap().len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let me = std::process::id();
    let cpu0 = cpu_seconds(me);
    let t = Instant::now();
    let n: u64 = rt.block_on(async {
        let ctx = session(256 * 1024 * 1024, None).unwrap();
        let batches = view(&ctx, &file, &port, &rules)
            .await
            .collect()
            .await
            .unwrap();
        batches.iter().map(|b| b.num_rows() as u64).sum()
    });
    let local_cpu = cpu_seconds(me) - cpu0;
    assert_eq!(n, bulk_rows as u64);
    let local = n as f64 / local_cpu.max(0.001);
    println!(
        "  {:<34} {:>10.0} rows/CPU-s ({local_cpu:.2} CPU-s, {:.2} s)",
        "DataFusion in process",
        local,
        t.elapsed().as_secs_f64()
    );
    let measure = |name: &str, read: &dyn Fn() -> Option<u64>| -> Option<f64> {
        let cpu0 = cpu_seconds(pid);
        let t = Instant::now();
        let n = read()?;
        let cpu = cpu_seconds(pid) - cpu0;
        assert_eq!(n, bulk_rows as u64, "{name}: every row arrives");
        let per = n as f64 / cpu.max(0.001);
        println!(
            "  {name:<34} {per:>10.0} rows/CPU-s of the sidecar ({cpu:.2} CPU-s, {:.2} s): {:.2}x in process",
            t.elapsed().as_secs_f64(),
            per / local
        );
        Some(per)
    };
    let _ = measure("records port, Arrow IPC", &|| {
        Some(http_arrow_read(&rt, addr, &token))
    });
    match measure("Flight SQL (ADBC)", &|| adbc_read(flight, &token)) {
        Some(per) => println!(
            "  Flight SQL / in process: {:.2}x (target >= 0.8x): {}",
            per / local,
            if per / local >= 0.8 { "MET" } else { "MISSED" }
        ),
        None => println!("  Flight SQL: skipped (MESHGOV_PYTHON cannot run ADBC)"),
    }

    println!("sqlbench: 3. the cost of a connection");
    let idle = proc_status_kb(pid, "VmRSS:");
    match open_connections(sql, &token, connections) {
        Some(mut child) => {
            std::thread::sleep(Duration::from_millis(300));
            let open = proc_status_kb(pid, "VmRSS:");
            println!(
                "  sidecar RSS {:.1} MB, with {connections} idle connections {:.1} MB: {:.1} KB per connection",
                idle as f64 / 1024.0,
                open as f64 / 1024.0,
                open.saturating_sub(idle) as f64 / connections as f64
            );
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(b"\n");
            }
            let _ = child.wait();
        }
        None => println!("  skipped (MESHGOV_PYTHON cannot run psycopg)"),
    }
    drop(sc);
}
