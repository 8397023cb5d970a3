//! Streaming proof: the sidecar binary, as a child process, serves a file far
//! larger than the memory ceiling asserted on its peak RSS (`VmHWM`).
//! Its own process, so no other test inflates the figure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use std::io::{BufWriter, Read, Write};

/// The upstream file size.
const FILE_BYTES: usize = 256 * 1024 * 1024;
/// The peak RSS the sidecar may reach while serving it.
const CEILING_KB: u64 = 64 * 1024;

fn vm_hwm_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_much_larger_than_the_memory_ceiling_streams_through() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("skipped: no /proc on this platform");
        return;
    }
    let keys = Keys::generate();
    let dir = tempfile::tempdir().unwrap();
    let gov = governance_key();
    let (descriptor_path, descriptor) = example_descriptor("user-profiles");
    std::fs::write(
        dir.path().join("bundle.json"),
        signed_bundle(&gov, &descriptor, 1, 3600),
    )
    .unwrap();
    // ~1 KB records; the email is long so output is as large as input.
    let data = dir.path().join("data/profiles");
    std::fs::create_dir_all(&data).unwrap();
    let mut w = BufWriter::new(std::fs::File::create(data.join("2026-03-01.ndjson")).unwrap());
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
    let addr = free_addr();
    let config = ProcessConfig {
        listen: &format!("data = \"{addr}\""),
        ..ProcessConfig::default()
    }
    .write(dir.path(), &descriptor_path, &gov, &keys);
    let mut child = sidecar_command(&config, "warn").spawn().unwrap();
    assert!(
        ready_within(addr, std::time::Duration::from_secs(10)),
        "the sidecar did not become ready"
    );
    let idle_kb = vm_hwm_kb(child.id());
    let t = token(&keys, "fred", &["fraud"], "fraud-investigation");
    let received = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET /v1/ports/profiles/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").unwrap();
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
    child.kill().unwrap();
    let _ = child.wait();
    eprintln!(
        "streamed {} MB of {} records from a {} MB file; sidecar VmHWM idle {} KB, peak {} KB (ceiling {} KB)",
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
        peak_kb < CEILING_KB,
        "peak RSS {peak_kb} KB is over {CEILING_KB} KB"
    );
}
