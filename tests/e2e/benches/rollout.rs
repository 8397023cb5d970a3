//! Rollout latency: from a policy commit to the last sidecar's ACK.
//!
//! One engine (`meshgov-server`, default 250 ms watch interval) and N
//! sidecars (`meshgov-sidecar`'s real control port and engine link, each
//! with its product's slice) run in this process on loopback. Each round
//! commits a change to a git copy of the example policies and times until
//! the engine has recorded every sidecar's ACK of the new revision.
//!
//! Prints p50/p99/max per fleet size and where the time goes (commit to
//! release, release to the first ACK, first to last ACK), with the
//! sidecars' state directories on disk and on tmpfs (see `main`), the cost
//! of one persist on this disk, and the build step alone (check, test,
//! slice, sign), all in the same run. Knobs: `ROLLOUT_SIDECARS`
//! (comma-separated fleet sizes, default `100,1000`), `ROLLOUT_ROUNDS`
//! (default 15).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgov_e2e::*;
use std::time::{Duration, Instant};

const PRODUCTS: [&str; 3] = ["user-profiles", "play-events", "artist-payments"];

fn env_list(key: &str, default: &str) -> Vec<usize> {
    std::env::var(key)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// The released revision and how many of the `n` sidecars have ACKed it.
fn acks(e: &EngineHandle, n: usize) -> Option<(u64, usize)> {
    let f = e.engine.fleet();
    let r = f.released.as_ref()?.revision;
    let acked = f
        .sidecars
        .iter()
        .filter(|s| s.acked_revision == Some(r))
        .count();
    (f.sidecars.len() == n).then_some((r, acked))
}

/// One rollout's stages, from the commit.
struct Stages {
    /// The engine released the new revision: watch, check, test, slice, sign.
    released: Duration,
    /// The first sidecar ACKed it.
    first_ack: Duration,
    /// The last sidecar ACKed it.
    last_ack: Duration,
}

async fn run(n: usize, rounds: usize, state_base: Option<&std::path::Path>) {
    let mut repo = PolicyRepo::new().unwrap();
    let mut cfg = engine_config(&repo, new_key().unwrap());
    cfg.watch_interval = Duration::from_millis(250);
    let e = start_engine(cfg).await.unwrap();
    let start = Instant::now();
    while e.released().is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut sidecars = Vec::with_capacity(n);
    for i in 0..n {
        let product = PRODUCTS[i % PRODUCTS.len()];
        let mut o = options(&format!("{product}-{i}"), product, &e);
        // Its directory (config, state) under `state_base` when given.
        o.dir = state_base.map(|b| tempfile::tempdir_in(b).unwrap());
        sidecars.push(start_sidecar(repo.path(), o).await.unwrap());
    }
    while acks(&e, n).is_none_or(|(_, acked)| acked != n) {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the fleet never converged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "{n} sidecars registered and in sync after {}",
        ms(start.elapsed())
    );
    let mut stages = Vec::new();
    for _ in 0..rounds {
        let before = e.released();
        repo.commit_change().unwrap();
        let t0 = Instant::now();
        let (mut released, mut first_ack) = (None, None);
        loop {
            // Each look walks the whole fleet under the engine's lock, so
            // it is not done more often than this.
            tokio::time::sleep(Duration::from_millis(5)).await;
            if let Some((r, acked)) = acks(&e, n)
                && Some(r) > before
            {
                released.get_or_insert(t0.elapsed());
                if acked > 0 {
                    first_ack.get_or_insert(t0.elapsed());
                }
                if acked == n {
                    break;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "rollout did not finish"
            );
        }
        let last_ack = t0.elapsed();
        stages.push(Stages {
            released: released.unwrap_or(last_ack),
            first_ack: first_ack.unwrap_or(last_ack),
            last_ack,
        });
    }
    let storage = match state_base {
        None => "state on disk".to_string(),
        Some(b) => format!("state on {}", b.display()),
    };
    let sorted = |f: &dyn Fn(&Stages) -> Duration| {
        let mut v: Vec<Duration> = stages.iter().map(f).collect();
        v.sort();
        v
    };
    let times = sorted(&|s| s.last_ack);
    println!(
        "rollout {n:>5} sidecars ({storage}), {rounds} commits: commit -> last ACK p50 {}  p99 {}  max {}",
        ms(pct(&times, 0.5)),
        ms(pct(&times, 0.99)),
        ms(*times.last().unwrap())
    );
    // Where the time goes, each stage's p50 and p99 (sampled every 5 ms).
    let stage = |name: &str, v: Vec<Duration>| {
        format!("{name} p50 {} p99 {}", ms(pct(&v, 0.5)), ms(pct(&v, 0.99)))
    };
    println!(
        "  stages: {}; {}; {}",
        stage(
            "commit -> released (watch, build, sign)",
            sorted(&|s| s.released)
        ),
        stage(
            "released -> first ACK",
            sorted(&|s| s.first_ack.saturating_sub(s.released))
        ),
        stage(
            "first -> last ACK (fan-out)",
            sorted(&|s| s.last_ack.saturating_sub(s.first_ack))
        ),
    );
    for s in sidecars {
        s.stop().await;
    }
    e.stop().await.unwrap();
}

fn build_step(rounds: usize) {
    let repo = PolicyRepo::new().unwrap();
    let key = new_key().unwrap();
    let mut times: Vec<Duration> = (0..rounds)
        .map(|i| {
            let t = Instant::now();
            let c = meshgov_server::build::compile(
                repo.path(),
                &meshgov_server::build::Options::default(),
                &mut (),
            )
            .unwrap();
            meshgov_server::build::sign_release(&c, &key, i as u64 + 1, 1_767_225_600, 3600)
                .unwrap();
            t.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "build step (check + test + 3 slices + sign), {rounds} runs: p50 {}  max {}",
        ms(pct(&times, 0.5)),
        ms(*times.last().unwrap())
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not used here.
    // Under `cargo test --benches`: three sidecars, two rounds.
    let quick = bench::quick();
    let sizes = env_list("ROLLOUT_SIDECARS", if quick { "3" } else { "100,1000" });
    let rounds = bench::knob("ROLLOUT_ROUNDS", 15, 2).max(1);
    build_step(rounds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Every sidecar fsyncs its state file and directory before it ACKs.
    // Here they all share one disk, which serializes those fsyncs; beside
    // real products each has its own. So each size runs twice: state on
    // disk, and state on tmpfs (the same code, without the shared fsync
    // queue), when /dev/shm exists.
    let shm = std::path::Path::new("/dev/shm");
    for n in sizes {
        rt.block_on(run(n, rounds, None));
        if shm.is_dir() {
            rt.block_on(run(n, rounds, Some(shm)));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    for _ in 0..20 {
        meshgov_sidecar::persist::write_bundle(dir.path(), &[b'x'; 12 * 1024]).unwrap();
    }
    println!(
        "one persist (12 KiB write, fsync, rename, directory fsync) on this disk: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0 / 20.0
    );
    println!(
        "for comparison: OPA's default bundle polling waits 60-120 s between polls (min_delay_seconds/max_delay_seconds), so a change takes up to two minutes to reach a fleet"
    );
}
