//! The SQL ports with the clients analysts and data scientists use:
//! psycopg 3 (simple and prepared statements) with pandas and SQLAlchemy
//! reflection over the PostgreSQL port, and ADBC's Flight SQL driver with
//! pyarrow and polars over the Flight SQL port; over TLS, with the
//! consumer's token as the password or bearer.
//!
//! The clients live in the virtualenv `.ci/setup` makes
//! (`/opt/meshgov/pyclients`, or `MESHGOV_PYTHON`); outside CI the test is
//! skipped when it is missing.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROFILES: &str = concat!(
    r#"{"user_id":"u-1","email":"alice@example.com","name":"Alice","birth_date":"1990-04-12","country":"NL","postcode":"1012AB","signed_up_at":"2026-03-01T10:00:00Z"}"#,
    "\n",
    r#"{"user_id":"u-2","email":"bob@example.org","name":"Bob","birth_date":"1985-11-30","country":"DE","postcode":"10115","signed_up_at":"2026-03-01T11:00:00Z"}"#,
    "\n",
    r#"{"user_id":"u-3","email":"anna@example.net","name":"Anna","birth_date":"2001-01-01","country":"NL","postcode":"75001","signed_up_at":"2026-03-01T12:00:00Z"}"#,
    "\n",
);

/// Runs `script` with `args` off the runtime's thread and returns its
/// standard output, parsed as JSON.
async fn run(py: &Path, script: &str, args: Vec<String>) -> serde_json::Value {
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
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A self-signed certificate for 127.0.0.1 and its key, in `dir`.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.join("sql.crt"), dir.join("sql.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (crt, key)
}

const PG: &str = r#"
import json, sys, psycopg, pandas, sqlalchemy, warnings
host, port, user, token, fay, eve = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
dsn = f"host={host} port={port} user={user} password={token} dbname=user-profiles sslmode=require"
out = {}
with psycopg.connect(dsn, autocommit=True) as conn:
    # A server-side prepared statement with a parameter (extended protocol).
    rows = conn.execute("SELECT email, country FROM profiles WHERE country = %s ORDER BY email", ("NL",), prepare=True).fetchall()
    out["prepared"] = [list(r) for r in rows]
    out["simple"] = conn.execute("SELECT count(*) FROM profiles").fetchone()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = pandas.read_sql("SELECT user_id, email, postcode FROM profiles ORDER BY email", conn)
    out["pandas_columns"] = list(frame.columns)
    out["pandas_postcodes"] = frame["postcode"].tolist()
    for sql, key in [("DELETE FROM profiles", "delete"), ("SELECT name FROM profiles", "withheld"), ("SELECT * FROM nowhere", "unknown")]:
        try:
            conn.execute(sql)
            out[key] = None
        except psycopg.Error as e:
            out[key] = e.sqlstate
# Another consumer and purpose: fraud investigators see emails in the clear.
with psycopg.connect(dsn.replace(f"user={user} password={token}", f"user=fay password={fay}"), autocommit=True) as conn:
    out["fraud_emails"] = [r[0] for r in conn.execute("SELECT email FROM profiles ORDER BY email").fetchall()]
# A consumer the policy does not let read: no table.
with psycopg.connect(dsn.replace(f"user={user} password={token}", f"user=eve password={eve}"), autocommit=True) as conn:
    try:
        conn.execute("SELECT * FROM profiles")
        out["denied"] = None
    except psycopg.Error as e:
        out["denied"] = e.sqlstate
# A wrong token is refused at connect.
try:
    psycopg.connect(dsn.replace(f"password={token}", "password=not-a-token"))
    out["wrong_token"] = None
except psycopg.OperationalError as e:
    out["wrong_token"] = str(e)
# A long query, cancelled from another thread.
import threading, time
with psycopg.connect(dsn, autocommit=True) as conn:
    threading.Thread(target=lambda: (time.sleep(0.5), conn.cancel())).start()
    try:
        conn.execute("SELECT count(*) FROM generate_series(1, 20000000000)")
        out["cancelled"] = None
    except psycopg.Error as e:
        out["cancelled"] = e.sqlstate
engine = sqlalchemy.create_engine(f"postgresql+psycopg://{user}:{token}@{host}:{port}/user-profiles?sslmode=require")
inspector = sqlalchemy.inspect(engine)
out["reflected_tables"] = inspector.get_table_names()
out["reflected_columns"] = [c["name"] for c in inspector.get_columns("profiles")]
print(json.dumps(out))
"#;

const FLIGHT: &str = r#"
import json, sys, adbc_driver_flightsql.dbapi as flight, adbc_driver_manager, polars
uri, token, sub, fay, eve = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
out = {}
with flight.connect(uri, db_kwargs={
    "adbc.flight.sql.authorization_header": "Bearer " + token,
    "adbc.flight.sql.client_option.tls_skip_verify": "true",
}) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT email, country FROM profiles ORDER BY email")
        table = cur.fetch_arrow_table()
        out["columns"] = table.column_names
        out["emails"] = table.column("email").to_pylist()
        frame = polars.from_arrow(table)
        out["polars_rows"] = frame.height
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        out["tables"] = sorted(t["table_name"] for c in objects for s in c["catalog_db_schemas"] for t in s["db_schema_tables"])
        schema = conn.adbc_get_table_schema("profiles", db_schema_filter="public")
        out["table_columns"] = schema.names
        try:
            cur.execute("DELETE FROM profiles")
            cur.fetchall()
            out["delete"] = None
        except adbc_driver_manager.Error as e:
            out["delete"] = str(e)
# The Flight handshake: Basic credentials whose password is the token.
with flight.connect(uri, db_kwargs={
    "username": sub, "password": token,
    "adbc.flight.sql.client_option.tls_skip_verify": "true",
}) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n FROM profiles")
        out["handshake_count"] = cur.fetch_arrow_table().column("n").to_pylist()[0]
# Another consumer and purpose sees clear emails; one who may not read
# has no table; a long query is cancelled.
with flight.connect(uri, db_kwargs={"adbc.flight.sql.authorization_header": "Bearer " + fay,
                                   "adbc.flight.sql.client_option.tls_skip_verify": "true"}) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT email FROM profiles ORDER BY email")
        out["fraud_emails"] = cur.fetch_arrow_table().column("email").to_pylist()
with flight.connect(uri, db_kwargs={"adbc.flight.sql.authorization_header": "Bearer " + eve,
                                   "adbc.flight.sql.client_option.tls_skip_verify": "true"}) as conn:
    with conn.cursor() as cur:
        try:
            cur.execute("SELECT * FROM profiles")
            cur.fetchall()
            out["denied"] = None
        except adbc_driver_manager.Error as e:
            out["denied"] = str(e)
import threading, time
with flight.connect(uri, db_kwargs={"adbc.flight.sql.authorization_header": "Bearer " + token,
                                   "adbc.flight.sql.client_option.tls_skip_verify": "true"}) as conn:
    with conn.cursor() as cur:
        threading.Thread(target=lambda: (time.sleep(0.5), cur.adbc_cancel())).start()
        try:
            cur.execute("SELECT count(*) FROM generate_series(1, 20000000000)")
            cur.fetchall()
            out["cancelled"] = None
        except adbc_driver_manager.Error as e:
            out["cancelled"] = str(e)
# A wrong token is refused.
try:
    with flight.connect(uri, db_kwargs={
        "adbc.flight.sql.authorization_header": "Bearer not-a-token",
        "adbc.flight.sql.client_option.tls_skip_verify": "true",
    }) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()
    out["wrong_token"] = None
except adbc_driver_manager.Error as e:
    out["wrong_token"] = str(e)
print(json.dumps(out))
"#;

#[tokio::test]
async fn psycopg_pandas_sqlalchemy_and_adbc_read_the_consumers_view_over_tls() {
    let Some(py) = python_with("psycopg, pandas, sqlalchemy, adbc_driver_flightsql, polars") else {
        return;
    };
    let keys = Keys::generate();
    let scratch = tempfile::tempdir().unwrap();
    let (crt, key) = certificate(scratch.path());
    let s = start(
        &keys,
        Options {
            sql: Some(format!("tls_cert = {crt:?}\ntls_key = {key:?}")),
            ..Options::default()
        },
    )
    .await;
    write_upstream(s.dir.path(), "profiles", "2026-03-01.ndjson", PROFILES);
    let mia = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let fay = token(&keys, "fay", &["fraud"], "fraud-investigation");
    let eve = token(&keys, "eve", &["outsiders"], "campaign-analytics");
    let sql = s.sql.unwrap();

    let got = run(
        &py,
        PG,
        vec![
            sql.ip().to_string(),
            sql.port().to_string(),
            "mia".into(),
            mia.clone(),
            fay.clone(),
            eve.clone(),
        ],
    )
    .await;
    assert_eq!(
        got["prepared"],
        serde_json::json!([["a************.com", "NL"], ["a***********.net", "NL"]])
    );
    assert_eq!(got["simple"], 3);
    assert_eq!(
        got["pandas_columns"],
        serde_json::json!(["user_id", "email", "postcode"])
    );
    // Postcodes generalized to their first three characters.
    assert_eq!(
        got["pandas_postcodes"],
        serde_json::json!(["101", "750", "101"])
    );
    assert_eq!(got["delete"], "25006");
    assert_eq!(
        got["fraud_emails"],
        serde_json::json!(["alice@example.com", "anna@example.net", "bob@example.org"])
    );
    assert_eq!(got["denied"], "42P01");
    assert!(
        got["wrong_token"].as_str().unwrap().contains("JWT"),
        "{got}"
    );
    assert_eq!(got["cancelled"], "57014");
    assert_eq!(got["withheld"], "42703");
    assert_eq!(got["unknown"], "42P01");
    assert_eq!(got["reflected_tables"], serde_json::json!(["profiles"]));
    assert_eq!(
        got["reflected_columns"],
        serde_json::json!([
            "user_id",
            "email",
            "birth_date",
            "country",
            "postcode",
            "signed_up_at"
        ])
    );

    let flight = s.flight.unwrap();
    let got = run(
        &py,
        FLIGHT,
        vec![
            format!("grpc+tls://{flight}"),
            mia.clone(),
            "mia".into(),
            fay,
            eve,
        ],
    )
    .await;
    assert_eq!(got["columns"], serde_json::json!(["email", "country"]));
    assert_eq!(
        got["emails"],
        serde_json::json!(["a************.com", "a***********.net", "b**********.org"])
    );
    assert_eq!(got["polars_rows"], 3);
    assert_eq!(got["tables"], serde_json::json!(["profiles"]));
    assert_eq!(
        got["table_columns"],
        serde_json::json!([
            "user_id",
            "email",
            "birth_date",
            "country",
            "postcode",
            "signed_up_at"
        ])
    );
    let refused = got["delete"].as_str().unwrap();
    assert!(refused.contains("25006"), "{refused}");
    assert_eq!(got["handshake_count"], 3);
    assert_eq!(
        got["fraud_emails"],
        serde_json::json!(["alice@example.com", "anna@example.net", "bob@example.org"])
    );
    let denied = got["denied"].as_str().unwrap();
    assert!(denied.contains("42P01"), "{denied}");
    assert!(
        got["cancelled"].is_string(),
        "the cancelled query fails: {got}"
    );
    let wrong = got["wrong_token"].as_str().unwrap();
    assert!(wrong.contains("28P01") || wrong.contains("JWT"), "{wrong}");
    s.stop().await;
}

const DP: &str = r#"
import json, sys, adbc_driver_flightsql.dbapi as flight
uri, token = sys.argv[1], sys.argv[2]
with flight.connect(uri, db_kwargs={"adbc.flight.sql.authorization_header": "Bearer " + token}) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT country, COUNT(*) AS plays FROM plays GROUP BY country")
        table = cur.fetch_arrow_table()
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        print(json.dumps({"rows": table.to_pylist(), "meta": meta, "schema": str(table.schema), "fields": [str(f.metadata) for f in table.schema]}))
"#;

const DP_PSYCOPG: &str = r#"
import json, sys, psycopg
host, port, token = sys.argv[1], sys.argv[2], sys.argv[3]
out = {"notices": []}
with psycopg.connect(f"host={host} port={port} user=ann password={token} dbname=play-events", autocommit=True) as conn:
    conn.add_notice_handler(lambda d: out["notices"].append(d.message_primary))
    conn.execute("SET dp_epsilon = 1.0")
    out["rows"] = [list(r) for r in conn.execute("SELECT country, COUNT(*) FROM plays GROUP BY country").fetchall()]
    try:
        conn.execute("SELECT COUNT(*) FROM plays")
        out["exhausted"] = None
    except psycopg.Error as e:
        out["exhausted"] = e.sqlstate
print(json.dumps(out))
"#;

const DP_ADBC_BUDGET: &str = r#"
import datetime, json, sys, adbc_driver_flightsql.dbapi as flight, adbc_driver_manager
uri, token = sys.argv[1], sys.argv[2]
out = {"answered": 0, "refused": None}
start = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
with flight.connect(uri, db_kwargs={"adbc.flight.sql.authorization_header": "Bearer " + token}) as conn:
    for day in range(1, 29):
        with conn.cursor() as cur:
            try:
                since = (start - datetime.timedelta(hours=day)).strftime("%Y-%m-%dT%H:%M:%SZ")
                cur.execute(f"SELECT COUNT(*) FROM plays WHERE played_at >= '{since}'")
                cur.fetchall()
                out["answered"] += 1
            except adbc_driver_manager.Error as e:
                out["refused"] = str(e)
                break
print(json.dumps(out))
"#;

#[tokio::test]
async fn adbc_gets_a_differentially_private_aggregate_with_its_cost_in_the_schema() {
    let Some(py) = python_with("adbc_driver_flightsql, psycopg") else {
        return;
    };
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            product: "play-events",
            sql: Some("allow_plaintext = true".into()),
            ..Options::default()
        },
    )
    .await;
    write_upstream(s.dir.path(), "plays", "today.ndjson", &plays_today());
    let ann = token(&keys, "ann", &["marketing"], "campaign-analytics");
    let got = run(
        &py,
        DP,
        vec![format!("grpc://{}", s.flight.unwrap()), ann.clone()],
    )
    .await;
    let de = got["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["country"] == "DE")
        .unwrap();
    assert!(
        (de["plays"].as_f64().unwrap() - 600.0).abs() < 250.0,
        "{de}"
    );
    // The default epsilon (0.1) was spent, and the noise is described.
    assert_eq!(got["meta"]["meshgov.epsilon_spent"], "0.1", "{got}");
    let stats: serde_json::Value =
        serde_json::from_str(got["meta"]["meshgov.statistics"].as_str().unwrap()).unwrap();
    assert_eq!(stats[0]["mechanism"], "discrete_laplace");

    // psycopg: the notice, then the budget (2.0 for this purpose) runs out.
    let sql = s.sql.unwrap();
    let got = run(
        &py,
        DP_PSYCOPG,
        vec![sql.ip().to_string(), sql.port().to_string(), ann.clone()],
    )
    .await;
    let notice = got["notices"][0].as_str().unwrap();
    assert!(notice.contains("epsilon 1.0 spent"), "{notice}");
    assert_eq!(got["rows"].as_array().unwrap().len(), 7, "{got}");
    assert_eq!(got["exhausted"], "53400");
    // ADBC: 0.1 per query spends the last 0.9, then the budget is out.
    let got = run(
        &py,
        DP_ADBC_BUDGET,
        vec![format!("grpc://{}", s.flight.unwrap()), ann],
    )
    .await;
    let refused = got["refused"].as_str().unwrap_or_default();
    assert!(refused.contains("53400"), "{got}");
    assert!(got["answered"].as_u64().unwrap() <= 9, "{got}");
    s.stop().await;
}
