//! A port kept as Parquet in S3-compatible object storage (moto's server
//! on loopback, which `.ci/run` starts; its URL is `MESHGOV_TEST_S3`):
//! listed, pruned by Hive partitions and date-named objects, read through
//! the columnar plane with the bundle's treatments, aggregated on.

use crate::common::*;
use meshgov_columnar::datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use meshgov_columnar::datafusion::parquet::arrow::ArrowWriter;
use object_store::ObjectStoreExt as _;
use object_store::aws::AmazonS3Builder;
use std::sync::Arc;

/// The S3 endpoint, or `None` (skip) outside CI.
fn endpoint() -> Option<String> {
    match std::env::var("MESHGOV_TEST_S3") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "MESHGOV_TEST_S3 is not set; `.ci/run` starts the S3 server (.ci/s3)"
            );
            eprintln!("skipped: no S3 server (run `.ci/s3 LOG` and set MESHGOV_TEST_S3)");
            None
        }
    }
}

fn parquet(rows: &[(&str, &str, &str, &str)]) -> Vec<u8> {
    let col = |i: usize| -> ArrayRef {
        Arc::new(
            rows.iter()
                .map(|r| Some([r.0, r.1, r.2, r.3][i]))
                .collect::<StringArray>(),
        )
    };
    let batch = RecordBatch::try_from_iter([
        ("user_id", col(0)),
        ("email", col(1)),
        ("country", col(2)),
        ("signed_up_at", col(3)),
        ("ssn", col(0)),
    ])
    .unwrap();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

#[tokio::test]
async fn a_bucket_port_is_listed_pruned_and_served_treated() {
    let Some(url) = endpoint() else {
        return;
    };
    // A bucket per run: moto keeps buckets for its whole life.
    let bucket = format!("mesh-{}", std::process::id());
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let created = put(addr, &format!("/{bucket}"), b"", &[]).await;
    assert_eq!(created.status, 200, "{}", created.text());
    let store = AmazonS3Builder::new()
        .with_endpoint(&url)
        .with_allow_http(true)
        .with_bucket_name(&bucket)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .unwrap();
    for (key, rows) in [
        (
            "lake/profiles/date=2026-03-01/part-0.parquet",
            vec![
                ("u-1", "alice@example.com", "NL", "2026-03-01T10:00:00Z"),
                ("u-2", "bob@example.org", "DE", "2026-03-01T11:00:00Z"),
            ],
        ),
        (
            "lake/profiles/2026-03-02.parquet",
            vec![("u-3", "carol@example.net", "FR", "2026-03-02T09:00:00Z")],
        ),
    ] {
        store.put(&key.into(), parquet(&rows).into()).await.unwrap();
    }

    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            upstream: Some(format!(
                "kind = \"s3\"\nbucket = \"{bucket}\"\nprefix = \"lake\"\nendpoint = \"{url}\"\nallow_http = true\naccess_key_id = \"test\"\nsecret_access_key = \"test\""
            )),
            sql: Some("allow_plaintext = true".into()),
            ..Options::default()
        },
    )
    .await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    // The SQL port reads the bucket through the same view.
    let sql = s.sql.unwrap();
    let (t2, q) = (
        t.clone(),
        "SELECT country, email FROM profiles ORDER BY country",
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("psql")
            .arg(format!(
                "host={} port={} user=mia dbname=user-profiles sslmode=disable",
                sql.ip(),
                sql.port()
            ))
            .args(["-X", "-A", "-t", "-c", q])
            .env("PGPASSWORD", t2)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        [
            "DE|b**********.org",
            "FR|c************.net",
            "NL|a************.com"
        ]
    );
    let r = get_as(s.addr, "/v1/ports/profiles/records?order_by=country", &t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let recs = r.lines();
    assert_eq!(recs.len(), 3);
    let nl = recs.iter().find(|r| r["country"] == "NL").unwrap();
    assert_eq!(nl["email"], "a************.com");
    assert_eq!(nl["user_id"], "u_da4ca8084e2e5e04ad13b2cef8bad897");
    assert!(nl.get("ssn").is_none());
    // Declared fields the objects lack are null, not an error.
    assert_eq!(nl["birth_date"], serde_json::Value::Null);
    // The window prunes the date=2026-03-01 partition.
    let day2 = get_as(s.addr, "/v1/ports/profiles/records?from=2026-03-02", &t).await;
    assert_eq!(day2.status, 200, "{}", day2.text());
    assert_eq!(day2.lines().len(), 1);
    assert_eq!(day2.lines()[0]["country"], "FR");
    // A port with no objects yet is an empty answer.
    let none = get_as(s.addr, "/v1/ports/profiles/records?from=2027-01-01", &t).await;
    assert_eq!(none.status, 200, "{}", none.text());
    assert!(none.lines().is_empty());
    s.stop().await;
}

#[tokio::test]
async fn an_unreachable_bucket_is_a_502() {
    if endpoint().is_none() {
        return;
    }
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            upstream: Some(
                "kind = \"s3\"\nbucket = \"nowhere\"\nendpoint = \"http://127.0.0.1:9\"\nallow_http = true\naccess_key_id = \"x\"\nsecret_access_key = \"y\"".into(),
            ),
            ..Options::default()
        },
    )
    .await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let r = get_as(s.addr, "/v1/ports/profiles/records", &t).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.error_code(), "upstream_failed");
    s.stop().await;
}
