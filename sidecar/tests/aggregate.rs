//! `POST /v1/ports/{port}/aggregate` over real sockets, with the example
//! mesh's play-events product and its privacy rule (`policies/privacy/`).

use crate::common::*;
use serde_json::json;

const PATH: &str = "/v1/ports/plays/aggregate";

async fn post(addr: std::net::SocketAddr, token: &str, body: &str) -> Resp {
    let req = format!(
        "POST {PATH} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(addr, req.into_bytes()).await
}

/// 300 users in DE, 100 in SE, each with two plays today; one user on a
/// device nobody else has.
fn plays() -> String {
    let day = time::OffsetDateTime::now_utc().date();
    let at = format!("{day}T00:00:01Z");
    let mut s = String::new();
    for u in 0..400 {
        let country = if u < 300 { "DE" } else { "SE" };
        for p in 0..2 {
            let device = if u == 7 { "prototype-x" } else { "phone" };
            s.push_str(&json!({"event_id": format!("e{u}-{p}"), "user_id": format!("u{u}"), "song_id": "s", "artist_id": "a",
                "played_at": at, "duration_ms": 1000 * (p + 1), "country": country, "device": device}).to_string());
            s.push('\n');
        }
    }
    s
}

async fn sidecar(keys: &Keys, extra: &str) -> Sidecar {
    let s = start(
        keys,
        Options {
            product: "play-events",
            extra_config: extra.to_string(),
            ..Options::default()
        },
    )
    .await;
    write_upstream(s.dir.path(), "plays", "today.ndjson", &plays());
    s
}

fn marketing(keys: &Keys) -> String {
    token(keys, "ann", &["marketing"], "campaign-analytics")
}

#[tokio::test]
async fn noisy_histogram_with_mechanisms_cost_and_budget() {
    let keys = Keys::generate();
    let s = sidecar(&keys, "").await;
    let t = marketing(&keys);
    let body = r#"{"aggregations":[{"count":{}},{"sum":{"field":"duration_ms"}},{"mean":{"field":"duration_ms"}}],"group_by":["country"],"epsilon":0.8}"#;
    let r = post(s.addr, &t, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["cached"], false);
    let groups = v["groups"].as_array().unwrap();
    // Every public key is reported, with or without data.
    assert_eq!(groups.len(), 7);
    let de = groups.iter().find(|g| g["key"]["country"] == "DE").unwrap();
    // 600 plays from 300 users; the noise scale is 25 (k = 5 over 0.2,
    // checked below). Ten scales off has a chance of about e^-10.
    let c = de["count"].as_f64().unwrap();
    assert!((c - 600.0).abs() < 250.0, "{de}");
    let mean = de["mean_duration_ms"].as_f64().unwrap();
    assert!((0.0..=600000.0).contains(&mean));
    let stats = v["statistics"].as_array().unwrap();
    assert_eq!(stats[0]["mechanism"], "discrete_laplace");
    assert!(
        (stats[0]["scale"].as_f64().unwrap() - 5.0 / 0.2).abs() < 1e-9,
        "{}",
        stats[0]
    );
    assert!(stats[0]["ci95"].as_f64().unwrap() > 0.0);
    let cost = v["cost"]["epsilon"].as_f64().unwrap();
    assert!((cost - 0.8).abs() < 1e-9);
    // campaign-analytics has 2.0 per consumer; the product 10.0.
    let left = v["budget"]["consumer"]["epsilon_remaining"]
        .as_f64()
        .unwrap();
    assert!((left - 1.2).abs() < 1e-9, "{}", v["budget"]);
    let product_left = v["budget"]["product"]["epsilon_remaining"]
        .as_f64()
        .unwrap();
    assert!((product_left - 9.2).abs() < 1e-9);

    // The same query again: the same answer, at no cost.
    let again = post(s.addr, &t, body).await.json();
    assert_eq!(again["cached"], true);
    assert_eq!(again["groups"], v["groups"]);
    assert_eq!(again["cost"]["epsilon"], 0.0);
    assert!(
        (again["budget"]["consumer"]["epsilon_remaining"]
            .as_f64()
            .unwrap()
            - 1.2)
            .abs()
            < 1e-9
    );
    s.stop().await;
}

#[tokio::test]
async fn exhausted_budget_is_refused_before_any_data_is_read() {
    let keys = Keys::generate();
    let s = sidecar(&keys, "").await;
    let t = marketing(&keys);
    for eps in ["1.0", "0.9"] {
        let r = post(
            s.addr,
            &t,
            &format!(r#"{{"aggregations":[{{"count":{{}}}}],"epsilon":{eps}}}"#),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Without its data the product could not answer; the refusal comes first.
    std::fs::remove_dir_all(s.dir.path().join("data")).unwrap();
    let r = post(
        s.addr,
        &t,
        r#"{"aggregations":[{"count":{}}],"epsilon":0.2}"#,
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"], "budget_exhausted");
    let left = v["budget"]["consumer"]["epsilon_remaining"]
        .as_f64()
        .unwrap();
    assert!((left - 0.1).abs() < 1e-9, "{v}");
    // A smaller query still fits, and only then is the upstream read.
    let r = post(
        s.addr,
        &t,
        r#"{"aggregations":[{"count":{}}],"epsilon":0.05}"#,
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text());
    s.stop().await;
}

#[tokio::test]
async fn spends_are_journaled_in_the_state_dir_before_the_answer() {
    let keys = Keys::generate();
    let s = sidecar(&keys, "").await;
    let t = marketing(&keys);
    let r = post(
        s.addr,
        &t,
        r#"{"aggregations":[{"count":{}}],"epsilon":1.0}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let journal = s
        .dir
        .path()
        .join("state")
        .join(meshgov_privacy::ledger::JOURNAL_FILE);
    let text = std::fs::read_to_string(&journal).unwrap();
    let ops: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["op"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ops, ["reserve", "release"], "{text}");
    s.stop().await;
}

#[tokio::test]
async fn partition_selection_over_devices_hides_the_lone_device() {
    let keys = Keys::generate();
    let s = sidecar(&keys, "").await;
    let t = marketing(&keys);
    let r = post(
        s.addr,
        &t,
        r#"{"aggregations":[{"count":{}}],"group_by":["device"],"epsilon":1.0}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let keys: Vec<&str> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"]["device"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["phone"]);
    assert_eq!(v["statistics"][0]["mechanism"], "laplace_threshold");
    assert!(v["cost"]["delta"].as_f64().unwrap() > 0.0);
    s.stop().await;
}

#[tokio::test]
async fn refusals_are_clear() {
    let keys = Keys::generate();
    let s = sidecar(&keys, "").await;
    let t = marketing(&keys);
    for (body, want) in [
        (
            r#"{"aggregations":[{"median":{}}],"epsilon":0.5}"#,
            "unknown aggregation",
        ),
        (
            r#"{"aggregations":[{"sum":{"field":"country"}}],"epsilon":0.5}"#,
            "not a numeric",
        ),
        (
            r#"{"aggregations":[{"sum":{"field":"event_id"}}],"epsilon":0.5}"#,
            "not a numeric",
        ),
        (r#"{"aggregations":[{"count":{}}],"epsilon":0}"#, "at least"),
        (
            r#"{"aggregations":[{"count":{}}],"epsilon":-0.1}"#,
            "at least",
        ),
        // Subnormal: a 400, not a 500 from the mechanism.
        (
            r#"{"aggregations":[{"count":{}}],"epsilon":5e-324}"#,
            "at least 0.000001",
        ),
        (r#"{"aggregations":[{"count":{}}],"epsilon":5}"#, "cap"),
        (
            r#"{"aggregations":[{"count":{}}],"epsilon":"NaN"}"#,
            "malformed",
        ),
        (r#"{"aggregations":[{"count":{}}"#, "malformed"),
        (
            r#"{"aggregations":[{"count":{}}],"epsilon":0.5,"from":"2020-01-01T00:00:00Z","to":"2026-01-01T00:00:00Z"}"#,
            "too large",
        ),
    ] {
        let r = post(s.addr, &t, body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let v = r.json();
        assert!(v["reason"].as_str().unwrap().contains(want), "{body}: {v}");
    }
    // Cedar: payments may read play events but not aggregate them.
    let payments = token(&keys, "pay", &["payments"], "royalty-payments");
    let r = post(
        s.addr,
        &payments,
        r#"{"aggregations":[{"count":{}}],"epsilon":0.5}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = post(s.addr, "garbage", r#"{}"#).await;
    assert_eq!(r.status, 401);
    s.stop().await;
}

#[tokio::test]
async fn postgres_ledger_is_shared_by_replicas() {
    let url = match std::env::var("MESHGOV_TEST_POSTGRES") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but MESHGOV_TEST_POSTGRES is not"
            );
            eprintln!("skipping: set MESHGOV_TEST_POSTGRES to run this test");
            return;
        }
    };
    // A database of this run's own: the product-wide budget would
    // otherwise be shared with every earlier run in the same window.
    let db = format!("meshgov_replicas_{}", now_nanos());
    let created = std::process::Command::new("psql")
        .args([url.as_str(), "-qc", &format!("CREATE DATABASE {db}")])
        .output()
        .expect("psql (from the PostgreSQL client package)");
    assert!(created.status.success(), "{created:?}");
    let url = format!("{}/{db}", url.rsplit_once('/').unwrap().0);
    let keys = Keys::generate();
    let extra = format!("[privacy]\nledger = \"postgres\"\npostgres_url = \"{url}\"\n");
    let a = sidecar(&keys, &extra).await;
    let b = sidecar(&keys, &extra).await;
    // A consumer no earlier run has used.
    let who = format!("ann-{}", now_nanos());
    let t = token(&keys, &who, &["marketing"], "campaign-analytics");
    let body = r#"{"aggregations":[{"count":{}}],"epsilon":1.0}"#;
    let first = post(a.addr, &t, body).await;
    assert_eq!(first.status, 200, "{}", first.text());
    // The other replica answers the repeat from the shared ledger.
    let second = post(b.addr, &t, body).await.json();
    assert_eq!(second["cached"], true);
    assert_eq!(second["groups"], first.json()["groups"]);
    // Racing replicas for the rest (1.0 left, 0.6 each): exactly one wins.
    let (ra, rb) = tokio::join!(
        post(
            a.addr,
            &t,
            r#"{"aggregations":[{"count":{}}],"epsilon":0.6}"#
        ),
        post(
            b.addr,
            &t,
            r#"{"aggregations":[{"sum":{"field":"duration_ms"}}],"epsilon":0.6}"#
        )
    );
    let mut codes = [ra.status, rb.status];
    codes.sort();
    assert_eq!(codes, [200, 429]);
    a.stop().await;
    b.stop().await;
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Every spend is in the audit chain: the decision event of each aggregate
/// carries its cost and the budget left, and an exhausted budget is a deny.
#[tokio::test]
async fn spends_are_audited_with_cost_and_budget_left() {
    let keys = Keys::generate();
    let s = sidecar(&keys, "").await;
    let t = marketing(&keys);
    let mut rids = Vec::new();
    for (eps, status) in [("1.0", 200), ("0.9", 200), ("0.2", 429)] {
        let r = post(
            s.addr,
            &t,
            &format!(r#"{{"aggregations":[{{"count":{{}}}}],"epsilon":{eps}}}"#),
        )
        .await;
        assert_eq!(r.status, status, "{}", r.text());
        rids.push(r.json()["request_id"].as_str().unwrap().to_string());
    }
    let events = meshgov_audit::show::read_filtered(
        &s.dir.path().join("state/audit"),
        &meshgov_audit::show::Filter::default(),
    )
    .unwrap();
    let decision = |rid: &str| {
        events
            .iter()
            .map(|(e, _)| e)
            .find(|e| {
                e.kind == meshgov_audit::Kind::Decision && e.request_id.as_deref() == Some(rid)
            })
            .unwrap_or_else(|| panic!("no decision event for {rid}"))
            .clone()
    };
    let granted = decision(&rids[0]);
    assert_eq!(granted.action.as_deref(), Some("aggregate"));
    assert_eq!(granted.decision, Some(meshgov_audit::Decision::Allow));
    assert_eq!(granted.consumer.as_deref(), Some("ann"));
    assert!(
        (granted.privacy_cost.unwrap() - 1.0).abs() < 1e-9,
        "{granted:?}"
    );
    // The campaign-analytics purpose budget is 2.0.
    assert!(
        (granted.budget_remaining.unwrap() - 1.0).abs() < 1e-9,
        "{granted:?}"
    );
    let refused = decision(&rids[2]);
    assert_eq!(refused.decision, Some(meshgov_audit::Decision::Deny));
    assert_eq!(refused.status, Some(429));
    assert_eq!(refused.privacy_cost, Some(0.0));
    assert!(
        (refused.budget_remaining.unwrap() - 0.1).abs() < 1e-9,
        "{refused:?}"
    );
    s.stop().await;
}

/// The same plays as `plays()`, kept as Parquet (typed as the descriptor
/// declares them).
fn write_plays_parquet(dir: &std::path::Path) {
    use meshgov_columnar::datafusion::arrow::array::{
        ArrayRef, Int64Array, RecordBatch, StringArray,
    };
    use meshgov_columnar::datafusion::parquet::arrow::ArrowWriter;
    let rows: Vec<serde_json::Value> = plays()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let text = |k: &str| -> ArrayRef {
        std::sync::Arc::new(
            rows.iter()
                .map(|r| r[k].as_str().map(str::to_string))
                .collect::<StringArray>(),
        )
    };
    let batch = RecordBatch::try_from_iter([
        ("event_id", text("event_id")),
        ("user_id", text("user_id")),
        ("song_id", text("song_id")),
        ("artist_id", text("artist_id")),
        ("played_at", text("played_at")),
        (
            "duration_ms",
            std::sync::Arc::new(
                rows.iter()
                    .map(|r| r["duration_ms"].as_i64())
                    .collect::<Int64Array>(),
            ) as ArrayRef,
        ),
        ("country", text("country")),
        ("device", text("device")),
    ])
    .unwrap();
    let d = dir.join("data/plays");
    std::fs::create_dir_all(&d).unwrap();
    let file = std::fs::File::create(d.join("today.parquet")).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[tokio::test]
async fn aggregates_over_a_parquet_port_give_the_same_statistics() {
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            product: "play-events",
            ..Options::default()
        },
    )
    .await;
    write_plays_parquet(s.dir.path());
    let t = marketing(&keys);
    let body = r#"{"aggregations":[{"count":{}},{"sum":{"field":"duration_ms"}}],"group_by":["country"],"epsilon":0.8}"#;
    let r = post(s.addr, &t, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let de = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"]["country"] == "DE")
        .unwrap()
        .clone();
    // 600 plays from 300 users (noise scale 5 / 0.2 for the count).
    let c = de["count"].as_f64().unwrap();
    assert!((c - 600.0).abs() < 100.0, "{de}");
    assert!(de["sum_duration_ms"].as_f64().is_some(), "{de}");
    assert!((v["cost"]["epsilon"].as_f64().unwrap() - 0.8).abs() < 1e-9);
    s.stop().await;
}
