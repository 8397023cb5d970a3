//! Crash safety of the audit log with a real `meshgov-sidecar` process: it
//! is killed with SIGKILL at random moments while readers stream from it,
//! then restarted. After every restart, each request whose client received
//! any byte of a body has its decision event in the log, and the chain
//! (with the torn tail the kill left, cut and recorded) verifies.

use crate::common::*;
use meshgov_audit::show::{Filter, read_filtered};
use meshgov_audit::{Kind, verify_path};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROUNDS: usize = 24;
const READERS: usize = 4;

fn spawn(config: &Path) -> Process {
    Process::spawn_unlogged(sidecar_command(config, "warn").stderr(Stdio::null())).unwrap()
}

fn wait_ready(addr: SocketAddr) {
    assert!(
        ready_within(addr, Duration::from_secs(20)),
        "the sidecar did not become ready"
    );
}

/// One read; returns whether any byte of the body arrived.
fn read_once(addr: SocketAddr, rid: &str, token: &str, limit: u64) -> bool {
    let Ok(mut c) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!(
        "GET /v1/ports/profiles/records?limit={limit} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nx-request-id: {rid}\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    if c.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    match got.windows(4).position(|w| w == b"\r\n\r\n") {
        // Chunked: a body byte is more than the terminating `0\r\n\r\n`
        // alone; any chunk-size line other than `0` means data followed.
        Some(end) => {
            let rest = &got[end + 4..];
            !rest.is_empty() && !rest.starts_with(b"0\r\n")
        }
        None => false,
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_decision() {
    let keys = Keys::generate();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (descriptor_path, descriptor) = example_descriptor("user-profiles");
    let gov = governance_key();
    std::fs::write(
        d.join("bundle.json"),
        signed_bundle(&gov, &descriptor, 7, 3600),
    )
    .unwrap();
    let rec = r#"{"user_id":"u-1","email":"alice@example.com","name":"Alice","birth_date":"1990-04-12","country":"NL","postcode":"1012AB","signed_up_at":"2026-03-01T10:00:00Z"}"#;
    let text: String = (0..3000).map(|_| format!("{rec}\n")).collect();
    write_upstream(d, "profiles", "a.ndjson", &text);
    let addr = free_addr();
    let config = ProcessConfig {
        listen: &format!("data = \"{addr}\""),
        tables: "[audit]\ncheckpoint_every = 50\ncheckpoint_interval_ms = 100",
        ..ProcessConfig::default()
    }
    .write(d, &descriptor_path, &gov, &keys);
    let token = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let seed = seed("audit crash");
    let mut rng = Rng(seed);
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let counter = Arc::new(AtomicU64::new(0));
    let audit = d.join("state/audit");
    let mut child = spawn(&config);
    wait_ready(addr);
    let pubkey: meshgov_bundle::PublicKey =
        std::fs::read_to_string(d.join("state/audit-signing.pub"))
            .unwrap()
            .parse()
            .unwrap();
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..READERS)
            .map(|r| {
                let (stop, ack, counter, token) = (
                    Arc::clone(&stop),
                    Arc::clone(&acknowledged),
                    Arc::clone(&counter),
                    token.clone(),
                );
                let mut rng = Rng(seed ^ ((round * READERS + r + 1) as u64) << 17 | 1);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let rid = format!("k-{}", counter.fetch_add(1, Ordering::Relaxed));
                        let limit = 1 + rng.below(500);
                        if read_once(addr, &rid, &token, limit) {
                            ack.lock().unwrap().push(rid);
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
        child.kill();
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        // Restart: the torn tail is cut and recorded, and the log goes on.
        child = spawn(&config);
        wait_ready(addr);
        let events = read_filtered(&audit, &Filter::default()).unwrap();
        let decided: HashSet<&str> = events
            .iter()
            .filter(|(e, _)| e.kind == Kind::Decision)
            .filter_map(|(e, _)| e.client_request_id.as_deref())
            .collect();
        let ack = acknowledged.lock().unwrap();
        for rid in ack.iter() {
            assert!(
                decided.contains(rid.as_str()),
                "round {round} (seed {seed}): {rid} got body bytes but has no decision event"
            );
        }
        let s = verify_path(&audit, &pubkey)
            .unwrap_or_else(|e| panic!("round {round} (seed {seed}): {e}"));
        println!(
            "round {round}: {} reads acknowledged so far, log at {}",
            ack.len(),
            s.last_seq
        );
    }
    child.kill();
    let n = acknowledged.lock().unwrap().len();
    let recoveries = read_filtered(&audit, &Filter::default())
        .unwrap()
        .iter()
        .filter(|(e, _)| e.kind == Kind::Recovery)
        .count();
    assert!(n >= ROUNDS * 3, "too few reads to mean anything: {n}");
    println!("{n} acknowledged reads, {recoveries} recovery events over {ROUNDS} kills");
}
