//! Streaming proof: the sidecar binary, as a child process, serves a file far
//! larger than the memory its peak RSS (`VmHWM`) may grow by over idle.
//! Its own process, so no other test inflates the figure.

use crate::common::*;
use std::io::{BufWriter, Read, Write};

/// The upstream file size.
const FILE_BYTES: usize = 256 * 1024 * 1024;
/// How far the sidecar's peak RSS may grow over its idle RSS while serving
/// it (the idle figure is mostly the binary's own pages).
const CEILING_KB: u64 = 24 * 1024;

fn vm_hwm_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A state directory with a signed `user-profiles` bundle, and the empty
/// directory of its `profiles` port for the test to fill.
struct Port {
    dir: tempfile::TempDir,
    data: std::path::PathBuf,
    descriptor_path: std::path::PathBuf,
    gov: meshgov_bundle::SigningKey,
    keys: Keys,
}

/// The port, or `None` (the test skipped) where there is no `/proc` to
/// read peak RSS from.
fn profiles_port() -> Option<Port> {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("skipped: no /proc on this platform");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let gov = governance_key();
    let (descriptor_path, descriptor) = example_descriptor("user-profiles");
    std::fs::write(
        dir.path().join("bundle.json"),
        signed_bundle(&gov, &descriptor, 1, 3600),
    )
    .unwrap();
    let data = dir.path().join("data/profiles");
    std::fs::create_dir_all(&data).unwrap();
    Some(Port {
        dir,
        data,
        descriptor_path,
        gov,
        keys: Keys::generate(),
    })
}

/// Starts the sidecar binary over `port` (config tables `tables` added),
/// reads the whole `profiles` port as `accept` and discards it; returns
/// the bytes received and the sidecar's VmHWM before and after, in KB.
async fn read_whole_port(port: &Port, tables: &str, accept: &str) -> (usize, u64, u64) {
    let addr = free_addr();
    let keys = &port.keys;
    let config = ProcessConfig {
        listen: &format!("data = \"{addr}\""),
        tables,
        ..ProcessConfig::default()
    }
    .write(port.dir.path(), &port.descriptor_path, &port.gov, keys);
    let mut child = Process::spawn_unlogged(&mut sidecar_command(&config, "warn")).unwrap();
    assert!(
        ready_within(addr, std::time::Duration::from_secs(10)),
        "the sidecar did not become ready"
    );
    let idle_kb = vm_hwm_kb(child.id());
    let t = token(keys, "fred", &["fraud"], "fraud-investigation");
    let accept = accept.to_string();
    let received = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET /v1/ports/profiles/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n").unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        loop {
            match s.read(&mut buf).unwrap() {
                0 => break total,
                k => total += k,
            }
        }
    })
    .await
    .unwrap();
    let peak_kb = vm_hwm_kb(child.id());
    child.kill();
    (received, idle_kb, peak_kb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_much_larger_than_the_memory_ceiling_streams_through() {
    let Some(port) = profiles_port() else {
        return;
    };
    // ~1 KB records; the email is long so output is as large as input.
    let mut w = BufWriter::new(std::fs::File::create(port.data.join("2026-03-01.ndjson")).unwrap());
    let pad = "x".repeat(850);
    let (mut written, mut n) = (0usize, 0u64);
    while written < FILE_BYTES {
        let line = format!(
            "{{\"user_id\":\"u-{n}\",\"email\":\"{pad}@example.com\",\"name\":\"N\",\"birth_date\":\"1990-01-01\",\"country\":\"NL\",\"postcode\":\"1012AB\",\"signed_up_at\":\"2026-03-01T10:00:00Z\"}}\n"
        );
        w.write_all(line.as_bytes()).unwrap();
        written += line.len();
        n += 1;
    }
    w.flush().unwrap();
    drop(w);
    let (received, idle_kb, peak_kb) = read_whole_port(&port, "", "application/x-ndjson").await;
    eprintln!(
        "streamed {} MB of {} records from a {} MB file; sidecar VmHWM idle {} KB, peak {} KB (growth ceiling {} KB)",
        received / 1_000_000,
        n,
        FILE_BYTES / 1_000_000,
        idle_kb,
        peak_kb,
        CEILING_KB
    );
    assert!(
        received > FILE_BYTES * 9 / 10,
        "only {received} bytes arrived"
    );
    assert!(
        peak_kb.saturating_sub(idle_kb) < CEILING_KB,
        "peak RSS {peak_kb} KB grew more than {CEILING_KB} KB over idle {idle_kb} KB"
    );
}

/// The query engine's memory pool for the Parquet test.
const POOL_BYTES: u64 = 32 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_port_much_larger_than_the_pool_streams_within_it() {
    use meshgov_columnar::datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
    use meshgov_columnar::datafusion::parquet::arrow::ArrowWriter;
    use meshgov_columnar::datafusion::parquet::file::properties::WriterProperties;
    use std::sync::Arc;
    let Some(port) = profiles_port() else {
        return;
    };
    // ~1 KB rows, uncompressed, in row groups of 8,192 rows.
    let file = std::fs::File::create(port.data.join("2026-03-01.parquet")).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(8192))
        .set_dictionary_enabled(false)
        .build();
    let pad = "x".repeat(850);
    let rows_per_batch = 8192;
    let mut w: Option<ArrowWriter<std::fs::File>> = None;
    let (mut written, mut n) = (0usize, 0usize);
    while written < FILE_BYTES {
        let text = |f: &dyn Fn(usize) -> String| -> ArrayRef {
            Arc::new(
                (n..n + rows_per_batch)
                    .map(f)
                    .map(Some)
                    .collect::<StringArray>(),
            )
        };
        let batch = RecordBatch::try_from_iter([
            ("user_id", text(&|i| format!("u-{i}"))),
            ("email", text(&|i| format!("{pad}{i}@example.com"))),
            ("name", text(&|_| "N".to_string())),
            ("birth_date", text(&|_| "1990-01-01".to_string())),
            ("country", text(&|_| "NL".to_string())),
            ("postcode", text(&|_| "1012AB".to_string())),
            (
                "signed_up_at",
                text(&|_| "2026-03-01T10:00:00Z".to_string()),
            ),
        ])
        .unwrap();
        let writer = w.get_or_insert_with(|| {
            ArrowWriter::try_new(
                file.try_clone().unwrap(),
                batch.schema(),
                Some(props.clone()),
            )
            .unwrap()
        });
        writer.write(&batch).unwrap();
        written += batch.get_array_memory_size();
        n += rows_per_batch;
    }
    w.unwrap().close().unwrap();
    let limits = format!("[limits]\nquery_memory_bytes = {POOL_BYTES}\n");
    let (received, idle_kb, peak_kb) =
        read_whole_port(&port, &limits, "application/vnd.apache.arrow.stream").await;
    // What a read may add to the idle process: the pool, plus the row
    // group being decoded (8 MB here), the batches being treated and
    // encoded, and the chunks in flight to the client. Far below the
    // file's size, so memory does not grow with the data.
    let growth_kb = peak_kb.saturating_sub(idle_kb);
    let ceiling_kb = (POOL_BYTES + 96 * 1024 * 1024) / 1024;
    eprintln!(
        "streamed {} MB of Arrow ({n} rows) from a {} MB Parquet port; sidecar VmHWM idle {idle_kb} KB, peak {peak_kb} KB, growth {growth_kb} KB (ceiling: pool {} KB + 96 MB = {ceiling_kb} KB)",
        received / 1_000_000,
        written / 1_000_000,
        POOL_BYTES / 1024,
    );
    // Every row's 850-byte email padding arrived.
    assert!(received > n * 850, "only {received} bytes arrived");
    assert!(
        growth_kb < ceiling_kb,
        "a read grew the sidecar by {growth_kb} KB, over {ceiling_kb} KB"
    );
}
