//! The engine's `GET /metrics`, scraped over loopback after real builds,
//! pushes and a failed build, and read with an independent Prometheus text
//! parser.

use meshgov_e2e::*;
use prometheus_parse::{LineInfo, Scrape, Value};
use std::collections::HashMap;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// Every line parses, every family has HELP and TYPE, counters end in
/// `_total`; then the samples.
fn parse(text: &str) -> Scrape {
    let mut typed = HashMap::new();
    for l in text.lines() {
        match LineInfo::parse(l) {
            LineInfo::Ignored => panic!("unparsed line `{l}`"),
            LineInfo::Type {
                metric_name,
                metric_alias,
                sample_type,
            } => {
                let name = metric_alias.unwrap_or(metric_name);
                if sample_type == prometheus_parse::SampleType::Counter {
                    assert!(name.ends_with("_total"), "counter `{name}`");
                }
                typed.insert(name, sample_type);
            }
            _ => {}
        }
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    for name in typed.keys() {
        assert!(scrape.docs.contains_key(name), "no HELP for `{name}`");
    }
    scrape
}

fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "`{name}` {labels:?}: {found:?}");
    match found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_builds_pushes_and_the_fleet() {
    let repo = PolicyRepo::new().unwrap();
    let e = start_engine(engine_config(&repo, new_key().unwrap()))
        .await
        .unwrap();
    wait_for("the first build", T, || e.released().is_some())
        .await
        .unwrap();
    let r1 = e.released().unwrap();
    let a = start_sidecar(repo.path(), options("profiles-0", "user-profiles", &e))
        .await
        .unwrap();
    let b = start_sidecar(repo.path(), options("plays-0", "play-events", &e))
        .await
        .unwrap();
    wait_for("both sidecars in sync", T, || {
        e.fleet()["sidecars"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["state"] == "in_sync")
            .count()
            == 2
    })
    .await
    .unwrap();
    // A change that fails check is not rolled out, and is counted.
    repo.commit_append(
        "access/users.cedar",
        "\npermit(principal, action, resource\n",
    )
    .unwrap();
    wait_for("the failed build", T, || {
        e.fleet()["last_build"]["ok"] == false
    })
    .await
    .unwrap();

    let (status, text) = http_get(e.addr, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    let s = parse(&text);
    assert_eq!(
        value(&s, "meshgov_engine_released_revision", &[]),
        r1 as f64
    );
    assert_eq!(value(&s, "meshgov_engine_candidate_revision", &[]), 0.0);
    // The process families Prometheus client libraries write.
    assert!(value(&s, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&s, "process_open_fds", &[]) >= 3.0);
    assert!(value(&s, "process_start_time_seconds", &[]) > 1.7e9);
    assert_eq!(
        value(&s, "meshgov_engine_builds_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        value(&s, "meshgov_engine_builds_total", &[("result", "failed")]),
        1.0
    );
    assert_eq!(
        value(&s, "meshgov_engine_sidecars", &[("state", "in_sync")]),
        2.0
    );
    for st in ["pending", "nacked", "unreachable"] {
        assert_eq!(value(&s, "meshgov_engine_sidecars", &[("state", st)]), 0.0);
    }
    // Both sidecars got revision r1 by push (registration triggers one);
    // a long poll may have delivered it first, so pushes and pull reports
    // together hold the two ACKs.
    let acks = value(&s, "meshgov_engine_pushes_total", &[("outcome", "ack")])
        + value(
            &s,
            "meshgov_engine_pull_reports_total",
            &[("result", "ack")],
        );
    assert!(acks >= 2.0, "{text}");
    assert_eq!(
        value(&s, "meshgov_engine_pushes_total", &[("outcome", "nack")]),
        0.0
    );
    assert_eq!(
        value(&s, "meshgov_engine_rollout_phase", &[("phase", "released")]),
        1.0
    );
    assert_eq!(value(&s, "meshgov_engine_rollout_halts_total", &[]), 0.0);
    assert!(!text.contains("profiles-0"), "no sidecar ids as labels");
    a.stop().await;
    b.stop().await;
    e.stop().await.unwrap();
}
