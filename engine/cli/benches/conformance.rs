//! `meshgov conformance check` end to end, as a process, on one descriptor:
//! the figure a product team's CI sees. Prints the median and p90 over 30
//! runs. With `DATACONTRACT=/path/to/datacontract` set, runs
//! `datacontract lint` on the same file in the same run and prints the ratio.
//!
//!     cargo bench -p meshgov --bench conformance
//!     DATACONTRACT=/tmp/venv/bin/datacontract cargo bench -p meshgov --bench conformance

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn time_runs(mut cmd: impl FnMut() -> Command, runs: usize) -> Option<Vec<Duration>> {
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let status = cmd().output().ok()?.status;
        out.push(started.elapsed());
        // `datacontract lint` exits non-zero on findings; timing still counts.
        let _ = status;
    }
    out.sort();
    Some(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn main() {
    let runs = meshgov_e2e::bench::knob("CONFORMANCE_RUNS", 30, 3);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let policies = root.join("policies");
    let descriptor = policies.join("products/play-events.yaml");
    let bin = env!("CARGO_BIN_EXE_meshgov");
    let Some(ours) = time_runs(
        || {
            let mut c = Command::new(bin);
            c.arg("conformance")
                .arg("check")
                .arg(&descriptor)
                .arg("--policies")
                .arg(&policies);
            c
        },
        runs,
    ) else {
        eprintln!("cannot run {bin}");
        std::process::exit(2);
    };
    let (p50, p90) = (quantile(&ours, 0.5), quantile(&ours, 0.9));
    println!(
        "meshgov conformance check (process, {runs} runs): median {:.1} ms, p90 {:.1} ms (target <= 20 ms)",
        ms(p50),
        ms(p90)
    );
    match std::env::var("DATACONTRACT") {
        Err(_) => {
            println!("datacontract lint: not measured (set DATACONTRACT=/path/to/datacontract)")
        }
        Ok(dc) => {
            let runs = 5;
            match time_runs(
                || {
                    let mut c = Command::new(&dc);
                    c.arg("lint").arg(&descriptor);
                    c
                },
                runs,
            ) {
                None => println!("datacontract lint: could not run `{dc}`"),
                Some(theirs) => {
                    let t50 = quantile(&theirs, 0.5);
                    println!(
                        "datacontract lint (process, {runs} runs): median {:.1} ms; meshgov is {:.0}x faster",
                        ms(t50),
                        t50.as_secs_f64() / p50.as_secs_f64()
                    );
                }
            }
        }
    }
}
