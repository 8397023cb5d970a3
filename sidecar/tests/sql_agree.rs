//! Every way a product is read decides through one enforcement core, so
//! the protocols agree: for random records and consumers of different
//! groups and purposes, the records port (the per-record program), its
//! Arrow answer (the columnar plane), the PostgreSQL port and the Flight
//! SQL port return the same rows with the same treated values, and the
//! SQL ports' columns are exactly the fields the consumer may see.

use crate::common;
use arrow_flight::sql::client::FlightSqlServiceClient;
use common::*;
use futures::TryStreamExt as _;
use meshgov_columnar::datafusion::arrow::array::{Array, RecordBatch};
use meshgov_columnar::datafusion::arrow::ipc::reader::StreamReader;
use meshgov_columnar::datafusion::arrow::util::display::array_value_to_string;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// A row as every protocol is compared: column → text, or `None` for null.
type Row = BTreeMap<String, Option<String>>;

/// The consumers: masked (marketing), clear emails (fraud), and another
/// purpose's view (data science).
const CONSUMERS: &[(&str, &str, &str)] = &[
    ("mia", "marketing", "campaign-analytics"),
    ("fay", "fraud", "fraud-investigation"),
    ("dan", "data-science", "product-analytics"),
];

fn record() -> impl Strategy<Value = serde_json::Value> {
    (
        "[a-z0-9-]{1,12}",
        "[a-z]{1,8}(\\.[a-z]{1,5})?@[a-z]{2,8}\\.(com|org|nl)",
        "[A-Z][a-z ']{0,10}",
        (1930u32..2010, 1u32..13, 1u32..29),
        prop_oneof![Just("NL"), Just("DE"), Just("FR"), Just("SE")],
        "[0-9A-Z]{3,7}",
        proptest::option::of(0u32..24),
    )
        .prop_map(|(id, email, name, (y, m, d), country, postcode, hour)| {
            let mut r = serde_json::json!({
                "user_id": id, "email": email, "name": name,
                "birth_date": format!("{y}-{m:02}-{d:02}"), "country": country,
                "postcode": postcode,
            });
            if let Some(h) = hour {
                r["signed_up_at"] = serde_json::json!(format!("2026-03-01T{h:02}:00:00Z"));
            }
            r
        })
}

fn text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The rows of Arrow batches, as text.
fn rows_of(batches: &[RecordBatch]) -> (Vec<String>, Vec<Row>) {
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for b in batches {
        columns = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        for i in 0..b.num_rows() {
            rows.push(
                columns
                    .iter()
                    .zip(b.columns())
                    .map(|(c, a)| {
                        let v = (!a.is_null(i)).then(|| array_value_to_string(a, i).unwrap());
                        (c.clone(), v)
                    })
                    .collect(),
            );
        }
    }
    (columns, rows)
}

struct Ports {
    http: std::net::SocketAddr,
    sql: std::net::SocketAddr,
    flight: std::net::SocketAddr,
}

/// What each protocol answers `sub` for the whole port: the columns (SQL
/// ports) and the rows, sorted.
async fn answers(p: &Ports, token: &str, sub: &str) -> Vec<(&'static str, Vec<String>, Vec<Row>)> {
    let mut out = Vec::new();
    // The records port: NDJSON through the per-record program.
    let r = get_as(p.http, "/v1/ports/profiles/records", token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let records: Vec<Row> = r
        .lines()
        .into_iter()
        .map(|l| {
            l.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), text(v)))
                .collect()
        })
        .collect();
    out.push(("records", Vec::new(), records));
    // The columnar plane: an Arrow IPC stream.
    let r = get_with(
        p.http,
        "/v1/ports/profiles/records",
        token,
        "application/vnd.apache.arrow.stream",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let batches: Vec<RecordBatch> = StreamReader::try_new(std::io::Cursor::new(r.body), None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let (_, arrow) = rows_of(&batches);
    out.push(("arrow", Vec::new(), arrow));
    // The PostgreSQL port.
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user={sub} password={token} dbname=user-profiles",
            p.sql.ip(),
            p.sql.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // The columns as the server describes them (a prepared statement).
    let columns: Vec<String> = client
        .prepare("SELECT * FROM profiles")
        .await
        .unwrap()
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let mut pg = Vec::new();
    for m in client.simple_query("SELECT * FROM profiles").await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            pg.push(
                columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.clone(), row.get(i).map(str::to_string)))
                    .collect(),
            );
        }
    }
    out.push(("postgres", columns, pg));
    // The Flight SQL port.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", p.flight))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = FlightSqlServiceClient::new(channel);
    flight.set_header("authorization", format!("Bearer {token}"));
    let info = flight
        .execute("SELECT * FROM profiles".into(), None)
        .await
        .unwrap();
    let mut batches = Vec::new();
    let mut schema_columns = Vec::new();
    if let Ok(schema) = info.clone().try_decode_schema() {
        schema_columns = schema.fields().iter().map(|f| f.name().clone()).collect();
    }
    for ep in info.endpoint {
        let stream = flight.do_get(ep.ticket.unwrap()).await.unwrap();
        batches.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    let (_, rows) = rows_of(&batches);
    out.push(("flight-sql", schema_columns, rows));
    for (_, _, rows) in &mut out {
        rows.sort();
    }
    out
}

#[test]
fn the_records_port_arrow_postgres_and_flight_sql_agree() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let keys = Keys::generate();
    let s = rt.block_on(start(
        &keys,
        Options {
            sql: Some("allow_plaintext = true".into()),
            ..Options::default()
        },
    ));
    let ports = Ports {
        http: s.addr,
        sql: s.sql.unwrap(),
        flight: s.flight.unwrap(),
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 12,
        ..ProptestConfig::default()
    });
    let dir = s.dir.path().to_path_buf();
    runner
        .run(
            &(
                proptest::collection::vec(record(), 0..12),
                0..CONSUMERS.len(),
            ),
            |(records, who)| {
                let text: String = records.iter().map(|r| format!("{r}\n")).collect();
                write_upstream(&dir, "profiles", "2026-03-01.ndjson", &text);
                let (sub, group, purpose) = CONSUMERS[who];
                let t = token(&keys, sub, &[group], purpose);
                let got = rt.block_on(answers(&ports, &t, sub));
                let (_, _, records) = &got[0];
                prop_assert_eq!(records.len(), text.lines().count());
                // The SQL columns: the fields this consumer may see.
                let (_, pg_columns, _) = &got[2];
                let visible: Vec<&String> = records
                    .first()
                    .map(|r| r.keys().collect())
                    .unwrap_or_default();
                for (name, columns, rows) in &got {
                    for row in rows {
                        // A redacted field is a typed null in the HTTP
                        // answers, and no column at all over SQL.
                        let sql = name.contains("sql") || *name == "postgres";
                        let leaked = if sql {
                            row.contains_key("name")
                        } else {
                            row.get("name").cloned().flatten().is_some()
                        };
                        prop_assert!(!leaked, "{} leaked a redacted field", name);
                    }
                    if !columns.is_empty() {
                        prop_assert_eq!(columns, pg_columns, "{}", name);
                    }
                }
                for c in &visible {
                    prop_assert!(
                        c.as_str() == "name" || pg_columns.contains(c),
                        "{} missing",
                        c
                    );
                }
                // The same rows, column by column, on every protocol.
                let project = |rows: &[Row]| -> Vec<Row> {
                    rows.iter()
                        .map(|r| {
                            pg_columns
                                .iter()
                                .map(|c| (c.clone(), r.get(c).cloned().flatten()))
                                .collect()
                        })
                        .collect()
                };
                let reference = project(records);
                for (name, _, rows) in &got[1..] {
                    let mut mine = project(rows);
                    mine.sort();
                    let mut want = reference.clone();
                    want.sort();
                    prop_assert_eq!(&mine, &want, "{} disagrees with the records port", name);
                }
                Ok(())
            },
        )
        .unwrap();
    rt.block_on(s.stop());
}
