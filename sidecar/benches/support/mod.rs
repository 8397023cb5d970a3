//! What the end-to-end benchmarks share: a release sidecar over the
//! example `user-profiles` product, and the CPU and memory of a process.

use crate::common::*;
use meshgov_columnar::datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use meshgov_columnar::datafusion::parquet::arrow::ArrowWriter;
use meshgov_columnar::datafusion::parquet::file::properties::WriterProperties;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

pub use meshgov_e2e::bench::knob;

pub struct Server {
    pub name: &'static str,
    pub child: Process,
    pub addr: SocketAddr,
}

pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process (clock ticks at 100 Hz).
pub fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`, which may hold spaces.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Keys, a signed bundle of the example mesh and the sidecar's config
/// (`extra_listen` goes into `[listen]` after the data port, `extra` after
/// the common tables); returns the config's path and a `marketing`
/// consumer's bearer header.
pub fn sidecar_setup(
    dir: &Path,
    data: &Path,
    addr: SocketAddr,
    extra_listen: &str,
    extra: &str,
) -> (PathBuf, String) {
    let keys = Keys::generate();
    let gov = governance_key();
    let (descriptor_path, descriptor) = example_descriptor("user-profiles");
    std::fs::write(
        dir.join("bundle.json"),
        signed_bundle(&gov, &descriptor, 1, 24 * 3600),
    )
    .unwrap();
    let config = ProcessConfig {
        listen: &format!("data = \"{addr}\"\n{extra_listen}"),
        upstream: &format!("path = {:?}", data.display().to_string()),
        tables: extra,
        ..ProcessConfig::default()
    }
    .write(dir, &descriptor_path, &gov, &keys);
    // Valid for the whole run, however long.
    let mut claims = claims("bench", &["marketing"], "campaign-analytics");
    claims["exp"] = (now() + 24 * 3600).into();
    let token = sign(&keys, jsonwebtoken::Algorithm::EdDSA, &claims);
    (config, format!("Bearer {token}"))
}

pub fn spawn_sidecar(name: &'static str, config: &Path, addr: SocketAddr) -> Server {
    let child =
        Process::spawn_unlogged(sidecar_command(config, "info").stderr(Stdio::null())).unwrap();
    let server = Server { name, child, addr };
    assert!(
        ready_within(addr, Duration::from_secs(10)),
        "the sidecar did not become ready"
    );
    server
}

#[allow(dead_code)]
fn letters(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'a' + rng.below(26) as u8))
        .collect()
}

/// Writes `n` rows of the example `profiles` port as one Parquet file in
/// `dir` (row groups of 65,536 rows), emails of `email_len` letters;
/// returns its size.
// Each bench compiles this module; not every one writes Parquet.
#[allow(dead_code)]
pub fn write_profiles(dir: &Path, n: usize, email_len: std::ops::Range<u64>) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("2026-03-01.parquet");
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(65_536))
        .build();
    let mut rng = Rng(0x6d65_7368_676f_7621);
    let countries = ["NL", "DE", "FR", "BE", "GB", "IE", "ES", "IT"];
    let mut w: Option<ArrowWriter<std::fs::File>> = None;
    for start in (0..n).step_by(8192) {
        let rows = start..(start + 8192).min(n);
        let mut col = |f: &mut dyn FnMut(usize, &mut Rng) -> String| -> ArrayRef {
            Arc::new(
                rows.clone()
                    .map(|i| Some(f(i, &mut rng)))
                    .collect::<StringArray>(),
            )
        };
        let batch = RecordBatch::try_from_iter([
            ("user_id", col(&mut |i, _| format!("u-{i}"))),
            (
                "email",
                col(&mut |_, r| {
                    let len = (email_len.start + r.below(email_len.end - email_len.start)) as usize;
                    format!("{}@example.com", letters(r, len))
                }),
            ),
            (
                "name",
                col(&mut |_, r| format!("{} {}", letters(r, 7), letters(r, 9))),
            ),
            (
                "birth_date",
                col(&mut |_, r| {
                    format!(
                        "{}-{:02}-{:02}",
                        1940 + r.below(70),
                        1 + r.below(12),
                        1 + r.below(28)
                    )
                }),
            ),
            (
                "country",
                col(&mut |_, r| countries[r.below(8) as usize].to_string()),
            ),
            (
                "postcode",
                col(&mut |_, r| format!("{}{}", 1000 + r.below(9000), letters(r, 2))),
            ),
            (
                "signed_up_at",
                col(&mut |_, r| format!("2026-03-01T{:02}:{:02}:00Z", r.below(24), r.below(60))),
            ),
        ])
        .unwrap();
        let writer = w.get_or_insert_with(|| {
            ArrowWriter::try_new(
                std::fs::File::create(&path).unwrap(),
                batch.schema(),
                Some(props.clone()),
            )
            .unwrap()
        });
        writer.write(&batch).unwrap();
    }
    w.unwrap().close().unwrap();
    std::fs::metadata(&path).unwrap().len()
}
