//! Real consumers of the columnar plane: pyarrow writes a product's
//! Parquet, and pyarrow, polars and DuckDB read the sidecar's Arrow and
//! Parquet answers with a bearer token, as analysts would.
//!
//! The clients live in a virtualenv `.ci/setup` makes
//! (`/opt/meshgov/pyclients`, or `MESHGOV_PYTHON`); outside CI the test is
//! skipped when it is missing.

use crate::common::*;
use std::process::Command;

/// Runs `script` with `args` off the runtime's thread (the sidecar serves
/// on it) and returns its standard output.
async fn run(py: &std::path::Path, script: &str, args: Vec<String>) -> String {
    let py = py.to_path_buf();
    let script = script.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const WRITE: &str = r#"
import sys, datetime, pyarrow as pa, pyarrow.parquet as pq
rows = {
    "user_id": ["u-1", "u-2", "u-3"],
    "email": ["alice@example.com", "bob@example.org", "carol@example.net"],
    "name": ["Alice", "Bob", "Carol"],
    "birth_date": ["1990-04-12", "1985-11-30", "2001-01-01"],
    "country": ["NL", "DE", "FR"],
    "postcode": ["1012AB", "10115", "75001"],
    "signed_up_at": ["2026-03-01T10:00:00Z", "2026-03-01T11:00:00Z", "2026-03-01T12:00:00Z"],
    "ssn": ["123-45-6789", "987-65-4321", "555-55-5555"],
}
pq.write_table(pa.table(rows), sys.argv[1], row_group_size=2)
"#;

const READ: &str = r#"
import io, json, sys, urllib.request, duckdb, polars as pl, pyarrow as pa, pyarrow.ipc, pyarrow.parquet as pq
url, token, scratch = sys.argv[1], sys.argv[2], sys.argv[3]
def get(accept, query=""):
    req = urllib.request.Request(url + query, headers={"Authorization": "Bearer " + token, "Accept": accept})
    with urllib.request.urlopen(req) as r:
        return r.read()
arrow = get("application/vnd.apache.arrow.stream", "?fields=user_id,email,country&filter=country+ne+%27DE%27")
table = pa.ipc.open_stream(arrow).read_all()
parquet = get("application/vnd.apache.parquet")
with open(scratch, "wb") as f:
    f.write(parquet)
frame = pl.read_parquet(io.BytesIO(parquet))
ipc_frame = pl.read_ipc_stream(io.BytesIO(arrow))
duck = duckdb.sql(f"select count(*), min(email), count(name) from read_parquet('{scratch}')").fetchone()
print(json.dumps({
    "arrow_columns": table.column_names,
    "arrow_rows": table.num_rows,
    "arrow_emails": table.column("email").to_pylist(),
    "polars_ipc_rows": ipc_frame.height,
    "polars_columns": frame.columns,
    "polars_user_ids": frame["user_id"].to_list(),
    "duckdb": [duck[0], duck[1], duck[2]],
}))
"#;

#[tokio::test]
async fn pyarrow_polars_and_duckdb_read_governed_answers() {
    let Some(py) = python_with("pyarrow, polars, duckdb") else {
        return;
    };
    let keys = Keys::generate();
    let s = start(&keys, Options::default()).await;
    let dir = s.dir.path().join("data/profiles");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("2026-03-01.parquet");
    run(&py, WRITE, vec![file.display().to_string()]).await;

    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let url = format!("http://{}/v1/ports/profiles/records", s.addr);
    let scratch = s.dir.path().join("answer.parquet");
    let out = run(&py, READ, vec![url, t, scratch.display().to_string()]).await;
    let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();

    assert_eq!(
        got["arrow_columns"],
        serde_json::json!(["user_id", "email", "country"])
    );
    assert_eq!(got["arrow_rows"], 2);
    assert_eq!(
        got["arrow_emails"],
        serde_json::json!(["a************.com", "c************.net"])
    );
    assert_eq!(got["polars_ipc_rows"], 2);
    let columns: Vec<&str> = got["polars_columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "user_id",
            "email",
            "name",
            "birth_date",
            "country",
            "postcode",
            "signed_up_at"
        ]
    );
    // The same pseudonym the record path gives `u-1` (data_port.rs).
    assert_eq!(
        got["polars_user_ids"][0],
        "u_da4ca8084e2e5e04ad13b2cef8bad897"
    );
    // DuckDB reads the answer: three rows, masked emails, no names.
    assert_eq!(
        got["duckdb"],
        serde_json::json!([3, "a************.com", 0])
    );
    s.stop().await;
}
