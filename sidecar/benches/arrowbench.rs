//! Parquet to Arrow over loopback, through the release sidecar.
//!
//! ```sh
//! cargo bench -p meshgov-sidecar --bench arrowbench
//! ```
//!
//! Writes `ARROWBENCH_ROWS` (300,000) rows of about 1 KB of the example
//! `profiles` port to one Parquet file (row groups of 65,536 rows), then:
//!
//! - **sidecar**: `ARROWBENCH_READS` (6) whole-port reads, two connections
//!   at a time, by the `marketing` consumer (a keyed pseudonym, a masked
//!   email, a withheld name, a birth year, a postcode prefix) as an Arrow
//!   IPC stream. The first answer is decoded and its rows counted. It
//!   prints the answer's MB per second and per CPU-second of the sidecar
//!   process (the target is 300 MB/s per core) and its peak RSS;
//! - **DuckDB** (one thread, when `MESHGOV_PYTHON`, default
//!   `/opt/meshgov/pyclients/bin/python`, can import it): the same file
//!   read whole into an Arrow table, in the same run, as the outside
//!   reference for scan speed: its rows and Arrow MB per CPU-second.
//!
//! Every figure is printed; nothing is asserted but the row count.
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

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use meshgov_columnar::datafusion::arrow::ipc::reader::StreamReader;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

const PORT: &str = "profiles";
const ARROW: &str = "application/vnd.apache.arrow.stream";

/// One whole-port Arrow read; returns the answer's bytes, kept when `keep`.
async fn read(addr: SocketAddr, bearer: &str, keep: bool) -> (u64, Vec<u8>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("/v1/ports/{PORT}/records"))
        .header(http::header::HOST, "bench")
        .header(http::header::AUTHORIZATION, bearer)
        .header(http::header::ACCEPT, ARROW)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut bytes, mut kept) = (0u64, Vec::new());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            bytes += data.len() as u64;
            if keep {
                kept.extend_from_slice(&data);
            }
        }
    }
    (bytes, kept)
}

/// DuckDB's median CPU seconds, rows and Arrow bytes reading `file` whole
/// into an Arrow table, one thread.
fn duckdb(file: &Path, rounds: usize) -> Option<(f64, u64, u64)> {
    let py = std::env::var("MESHGOV_PYTHON")
        .unwrap_or_else(|_| "/opt/meshgov/pyclients/bin/python".into());
    let script = format!(
        "import duckdb, time\ncon = duckdb.connect()\ncon.execute('SET threads TO 1')\nts = []\nfor _ in range({rounds}):\n    t = time.process_time()\n    tbl = con.execute(\"select * from read_parquet('{}')\").fetch_arrow_table()\n    ts.append(time.process_time() - t)\nts.sort()\nprint(ts[len(ts)//2], tbl.num_rows, tbl.nbytes)",
        file.display()
    );
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(script)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let mut parts = text.split_whitespace();
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

fn main() {
    let rows = knob("ARROWBENCH_ROWS", 300_000, 2_000);
    let reads = knob("ARROWBENCH_READS", 6, 1);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file_bytes = write_profiles(&data.join(PORT), rows, 820..940);
    let addr = free_addr();
    let (config, bearer) = sidecar_setup(tmp.path(), &data, addr, "", "");
    let sc = spawn_sidecar("sidecar", &config, addr);
    let (pid, addr) = (sc.child.id(), sc.addr);
    let idle_kb = proc_status_kb(pid, "VmRSS:");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The first answer, decoded: every row arrives, as Arrow.
    let (_, first) = rt.block_on(read(addr, &bearer, true));
    let decoded: usize = StreamReader::try_new(std::io::Cursor::new(first), None)
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum();
    assert_eq!(decoded, rows, "the answer holds every row");

    let cpu0 = cpu_seconds(pid);
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let bytes: u64 = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (next, bearer) = (Arc::clone(&next), bearer.clone());
            tasks.push(tokio::spawn(async move {
                let mut bytes = 0;
                while next.fetch_add(1, Ordering::Relaxed) < reads {
                    bytes += read(addr, &bearer, false).await.0;
                }
                bytes
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    });
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let hwm_kb = proc_status_kb(pid, "VmHWM:");
    let mb = bytes as f64 / 1e6;
    let rows_per_cpu = (rows * reads) as f64 / cpu.max(0.01);

    println!(
        "arrowbench: {rows} rows ({:.1} MB of Parquet) of the profiles port, {reads} whole reads as Arrow, 2 connections",
        file_bytes as f64 / 1e6
    );
    println!(
        "{}: {mb:.1} MB of Arrow in {secs:.2} s ({:.0} MB/s), {cpu:.2} CPU-s: {:.0} MB/CPU-s, {:.0} rows/CPU-s (target >= 300 MB/CPU-s): {}",
        sc.name,
        mb / secs,
        mb / cpu.max(0.01),
        rows_per_cpu,
        if mb / cpu.max(0.01) >= 300.0 {
            "MET"
        } else {
            "MISSED"
        }
    );
    println!(
        "sidecar RSS: idle {:.1} MB, VmHWM {:.1} MB (growth {:.1} MB; query pool 256 MB)",
        idle_kb as f64 / 1024.0,
        hwm_kb as f64 / 1024.0,
        hwm_kb.saturating_sub(idle_kb) as f64 / 1024.0
    );
    match duckdb(&data.join(PORT).join("2026-03-01.parquet"), reads) {
        Some((duck_cpu, n, arrow_bytes)) => println!(
            "duckdb (1 thread, the same file whole into Arrow, no policy): median {duck_cpu:.3} CPU-s: {:.0} MB/CPU-s of Arrow, {:.0} rows/CPU-s; sidecar/duckdb rows per CPU-s {:.2}",
            arrow_bytes as f64 / 1e6 / duck_cpu,
            n as f64 / duck_cpu,
            rows_per_cpu / (n as f64 / duck_cpu)
        ),
        None => println!("duckdb: skipped (MESHGOV_PYTHON cannot import duckdb)"),
    }
}
