//! `meshgov demo` as a user runs it: the real binary, the whole mesh on
//! loopback, driven without a terminal.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_tour_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("demo");
    let started = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_meshgov"))
        .args(["demo", "--rows", "300", "--exit", "--dir"])
        .arg(&work)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{out}\n{err}");
    eprintln!("the demo took {:.1} s", started.elapsed().as_secs_f64());

    // Masked for marketing, revealed for fraud, refused for an outsider.
    let masked_read = out.split("as mia").nth(1).unwrap();
    let first_record = masked_read
        .lines()
        .find(|l| l.contains("\"email\""))
        .unwrap();
    let rec: serde_json::Value = serde_json::from_str(first_record.trim()).unwrap();
    let email = rec["email"].as_str().unwrap();
    assert!(email.contains('*') && !email.contains('@'), "{email}");
    assert!(rec["name"].is_null(), "{rec}");
    assert_eq!(rec["birth_date"].as_str().unwrap().len(), 4, "{rec}");
    assert!(rec["user_id"].as_str().unwrap().starts_with("u_"), "{rec}");

    let fraud_read = out.split("as finn").nth(1).unwrap();
    let rec: serde_json::Value = serde_json::from_str(
        fraud_read
            .lines()
            .find(|l| l.contains("\"email\""))
            .unwrap()
            .trim(),
    )
    .unwrap();
    assert!(
        rec["email"].as_str().unwrap().ends_with("@example.com"),
        "{rec}"
    );

    let outsider = out.split("as olaf").nth(1).unwrap();
    assert!(
        outsider.lines().nth(1).unwrap().contains("403"),
        "{outsider}"
    );

    // The aggregate and its budget; the repeat is free.
    assert!(
        out.contains("budget left for mia and this purpose today: ε = 1.5"),
        "{out}"
    );
    assert!(out.contains("cached: true, budget left: ε = 1.5"), "{out}");

    // The policy edit reaches every sidecar and changes the next read.
    let (before, after) = out
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("revision ")?;
            let (b, rest) = rest.split_once(" → ")?;
            let a = rest.split_whitespace().next()?;
            Some((
                b.parse::<u64>().ok()?,
                a.trim_end_matches(',').parse::<u64>().ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("no rollout line: {out}"));
    assert!(after > before, "{out}");
    let last_read = out.rsplit("as mia").next().unwrap();
    let rec: serde_json::Value = serde_json::from_str(
        last_read
            .lines()
            .find(|l| l.contains("\"email\""))
            .unwrap()
            .trim(),
    )
    .unwrap();
    assert!(rec["email"].is_null(), "{rec}");

    // Every sidecar's audit log verifies, and the CLI agrees.
    for product in [
        "users/user-profiles",
        "playback/play-events",
        "artists/artist-payments",
    ] {
        assert!(
            out.contains(&format!(
                "ok: {product}: every decision is in an intact hash chain"
            )),
            "{out}"
        );
    }
    let state = work.join("state/user-profiles");
    let v = Command::new(env!("CARGO_BIN_EXE_meshgov"))
        .args(["audit", "verify"])
        .arg(state.join("audit"))
        .arg("--key")
        .arg(state.join("audit-signing.pub"))
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("ok: "));
    let shown = Command::new(env!("CARGO_BIN_EXE_meshgov"))
        .args(["audit", "show"])
        .arg(state.join("audit"))
        .args(["--decision", "deny"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("olaf"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
    assert!(
        out.contains("fleet page               http://127.0.0.1:"),
        "{out}"
    );
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_a_running_mesh_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = meshgov_e2e::Process::spawn_unlogged(
        Command::new(env!("CARGO_BIN_EXE_meshgov"))
            .args(["demo", "--rows", "50", "--no-tour", "--dir"])
            .arg(tmp.path().join("demo"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let mut lines = BufReader::new(demo.child_mut().stdout.take().unwrap()).lines();
    let mut seen = String::new();
    loop {
        let l = lines.next().expect("the demo ended early").unwrap();
        seen.push_str(&l);
        seen.push('\n');
        if l.contains("Ctrl-C stops it") {
            break;
        }
    }
    assert!(seen.contains("rolled out revision"), "{seen}");
    assert!(!seen.contains("── 1."), "--no-tour ran the tour: {seen}");
    demo.signal(meshgov_e2e::Signal::SIGINT).unwrap();
    let code = demo
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the demo did not stop within 20 s of SIGINT: {e}"));
    assert_eq!(code, Some(0));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("stopping")), "{rest:?}");
}
