//! What the end-to-end benchmarks share: a release sidecar over the
//! example `user-profiles` product, and the CPU and memory of a process.

use crate::common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

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

/// Keys, a signed bundle of the example mesh and the sidecar's config;
/// returns the config's path and a `marketing` consumer's bearer header.
pub fn sidecar_setup(dir: &Path, data: &Path, addr: SocketAddr, extra: &str) -> (PathBuf, String) {
    let keys = Keys::generate();
    let gov = governance_key();
    let (descriptor_path, descriptor) = example_descriptor("user-profiles");
    std::fs::write(
        dir.join("bundle.json"),
        signed_bundle(&gov, &descriptor, 1, 24 * 3600),
    )
    .unwrap();
    let config = ProcessConfig {
        listen: &format!("data = \"{addr}\""),
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
