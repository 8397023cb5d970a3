//! Reads through the columnar plane over a real socket: a port kept as
//! Parquet, and record ports asked for a projection, filters, an order, a
//! page or an Arrow or Parquet answer. The same treatments as the record
//! path, in every answer format, with undeclared columns left inside and
//! unknown formats refused; and a property test that the record path and
//! the columnar plane serve random consumers the same records.

use crate::common::*;
use meshgov_columnar::datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use meshgov_columnar::datafusion::arrow::datatypes::{DataType, Field, Schema};
use meshgov_columnar::datafusion::arrow::ipc::reader::StreamReader;
use meshgov_columnar::datafusion::parquet::arrow::ArrowWriter;
use meshgov_columnar::datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::sync::Arc;

const RECORDS: &str = "/v1/ports/profiles/records";
const COLUMNS: [&str; 8] = [
    "user_id",
    "email",
    "name",
    "birth_date",
    "country",
    "postcode",
    "signed_up_at",
    "ssn",
];

/// Writes rows of the profiles port as one Parquet file, `ssn` included
/// (a column the descriptor does not declare).
fn write_parquet(dir: &std::path::Path, rel: &str, rows: &[[&str; 8]]) {
    let schema = Arc::new(Schema::new(
        COLUMNS
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let columns = (0..COLUMNS.len())
        .map(|i| Arc::new(rows.iter().map(|r| Some(r[i])).collect::<StringArray>()) as _)
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let path = dir.join("data/profiles").join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

const ALICE: [&str; 8] = [
    "u-1",
    "alice@example.com",
    "Alice",
    "1990-04-12",
    "NL",
    "1012AB",
    "2026-03-01T10:00:00Z",
    "123-45-6789",
];
const BOB: [&str; 8] = [
    "u-2",
    "bob@example.org",
    "Bob",
    "1985-11-30",
    "DE",
    "10115",
    "2026-03-01T11:00:00Z",
    "987-65-4321",
];
const CAROL: [&str; 8] = [
    "u-3",
    "carol@example.net",
    "Carol",
    "2001-01-01",
    "FR",
    "75001",
    "2026-03-02T09:00:00Z",
    "555-55-5555",
];

async fn parquet_profiles(keys: &Keys) -> Sidecar {
    let s = start(keys, Options::default()).await;
    // A Hive-style partition and a date-named file.
    write_parquet(
        s.dir.path(),
        "date=2026-03-01/part-0.parquet",
        &[ALICE, BOB],
    );
    write_parquet(s.dir.path(), "2026-03-02.parquet", &[CAROL]);
    s
}

#[tokio::test]
async fn a_parquet_port_is_served_with_the_record_paths_treatments() {
    let keys = Keys::generate();
    let s = parquet_profiles(&keys).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let r = get_as(s.addr, RECORDS, &t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(r.header("x-meshgov-bundle-revision"), Some("7"));
    let recs = r.lines();
    assert_eq!(recs.len(), 3);
    // Files are read in path order: `2026-03-02.parquet` before `date=…/`.
    let a = recs.iter().find(|r| r["country"] == "NL").unwrap();
    // The same values the record path serves for Alice (see data_port.rs).
    assert_eq!(a["user_id"], "u_da4ca8084e2e5e04ad13b2cef8bad897");
    assert_eq!(a["email"], "a************.com");
    assert_eq!(a["name"], serde_json::Value::Null);
    assert_eq!(a["birth_date"], "1990");
    assert_eq!(a["postcode"], "101");
    assert_eq!(a["country"], "NL");
    assert_eq!(a["signed_up_at"], "2026-03-01T10:00:00Z");
    assert!(
        a.get("ssn").is_none(),
        "an undeclared column left the sidecar"
    );
    assert_eq!(a.as_object().unwrap().len(), 7);
    let text = r.text();
    for raw in ["alice@example.com", "Alice", "123-45-6789", "u-1", "1012AB"] {
        assert!(!text.contains(raw), "raw value {raw} was served");
    }
    // The window prunes partitions and filters rows.
    let day2 = get_as(s.addr, &format!("{RECORDS}?from=2026-03-02"), &t).await;
    assert_eq!(day2.status, 200, "{}", day2.text());
    assert_eq!(day2.lines().len(), 1);
    assert_eq!(day2.lines()[0]["country"], "FR");
    let limited = get_as(s.addr, &format!("{RECORDS}?limit=2"), &t).await;
    assert_eq!(limited.lines().len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn arrow_and_parquet_answers_load_as_tables() {
    let keys = Keys::generate();
    let s = parquet_profiles(&keys).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");

    let r = get_with(s.addr, RECORDS, &t, "application/vnd.apache.arrow.stream").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.apache.arrow.stream")
    );
    let reader = StreamReader::try_new(std::io::Cursor::new(r.body.clone()), None).unwrap();
    let schema = reader.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, &COLUMNS[..7]);
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 3);
    let emails: Vec<&str> = batches
        .iter()
        .flat_map(|b| b.column_by_name("email").unwrap().as_string::<i32>().iter())
        .map(Option::unwrap)
        .collect();
    assert_eq!(
        emails,
        ["c************.net", "a************.com", "b**********.org"]
    );
    assert!(
        batches
            .iter()
            .all(|b| b.column_by_name("name").unwrap().null_count() == b.num_rows())
    );

    let r = get_with(s.addr, RECORDS, &t, "application/vnd.apache.parquet").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.apache.parquet")
    );
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(r.body.clone()))
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 3);
    let ids: Vec<&str> = batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("user_id")
                .unwrap()
                .as_string::<i32>()
                .iter()
        })
        .map(Option::unwrap)
        .collect();
    assert_eq!(ids[1], "u_da4ca8084e2e5e04ad13b2cef8bad897");

    // CSV from a Parquet port uses the record path's writer (formulas
    // neutralised, header first).
    let r = get_with(s.addr, RECORDS, &t, "text/csv").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let rows: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(
        rows[0],
        "user_id,email,name,birth_date,country,postcode,signed_up_at"
    );
    assert_eq!(
        rows[2],
        "u_da4ca8084e2e5e04ad13b2cef8bad897,a************.com,,1990,NL,101,2026-03-01T10:00:00Z"
    );
    s.stop().await;
}

#[tokio::test]
async fn unknown_formats_are_406_and_denials_stay_denials() {
    let keys = Keys::generate();
    let s = parquet_profiles(&keys).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let r = get_with(s.addr, RECORDS, &t, "text/html").await;
    assert_eq!(r.status, 406, "{}", r.text());
    assert_eq!(r.error_code(), "not_acceptable");
    assert!(r.text().contains("application/vnd.apache.arrow.stream"));
    // A purpose the mesh does not know is denied, whatever the format.
    let nobody = token(&keys, "eve", &["marketing"], "no-such-purpose");
    let r = get_with(s.addr, RECORDS, &nobody, "application/vnd.apache.parquet").await;
    assert_eq!(r.status, 403, "{}", r.text());
    s.stop().await;
}

#[tokio::test]
async fn a_port_mixing_parquet_and_records_is_refused() {
    let keys = Keys::generate();
    let s = parquet_profiles(&keys).await;
    write_upstream(s.dir.path(), "profiles", "2026-03-03.ndjson", "{}\n");
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let r = get_as(s.addr, RECORDS, &t).await;
    assert_eq!(r.status, 502, "{}", r.text());
    s.stop().await;
}

#[tokio::test]
async fn a_corrupt_parquet_file_is_a_refusal_not_a_partial_answer() {
    let keys = Keys::generate();
    let s = start(&keys, Options::default()).await;
    write_upstream(
        s.dir.path(),
        "profiles",
        "2026-03-01.parquet",
        "PAR1 not really",
    );
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let r = get_with(s.addr, RECORDS, &t, "application/vnd.apache.arrow.stream").await;
    assert!(r.status >= 500, "{} {}", r.status, r.text());
    s.stop().await;
}

fn query(params: &str) -> String {
    format!("{RECORDS}?{params}")
}

#[tokio::test]
async fn consumers_project_filter_order_and_page_on_what_they_see() {
    let keys = Keys::generate();
    let s = parquet_profiles(&keys).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");

    let r = get_as(
        s.addr,
        &query("fields=country,email&order_by=country:desc"),
        &t,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let recs = r.lines();
    let countries: Vec<&str> = recs
        .iter()
        .map(|r| r["country"].as_str().unwrap())
        .collect();
    assert_eq!(countries, ["NL", "FR", "DE"]);
    assert_eq!(recs[0].as_object().unwrap().len(), 2);

    // A filter on a masked field works on the masked value: the raw email
    // matches nothing, the masked one matches Alice.
    let raw = get_as(
        s.addr,
        &query("filter=email+eq+%27alice%40example.com%27"),
        &t,
    )
    .await;
    assert_eq!(raw.status, 200, "{}", raw.text());
    assert_eq!(raw.lines().len(), 0);
    let masked = get_as(
        s.addr,
        &query("filter=email+eq+%27a************.com%27"),
        &t,
    )
    .await;
    assert_eq!(masked.lines().len(), 1, "{}", masked.text());
    assert_eq!(masked.lines()[0]["country"], "NL");
    let range = get_as(
        s.addr,
        &query("filter=country+in+(%27DE%27,%27FR%27)+and+postcode+ge+%27750%27"),
        &t,
    )
    .await;
    assert_eq!(range.status, 200, "{}", range.text());
    // `postcode` is generalized to its first 3 characters: FR's is `750`.
    assert_eq!(range.lines().len(), 1);
    assert_eq!(range.lines()[0]["country"], "FR");

    // Paging: a cursor for the next page, bound to the query.
    let p1 = get_as(s.addr, &query("order_by=country&limit=2"), &t).await;
    let c1: Vec<_> = p1.lines().iter().map(|r| r["country"].clone()).collect();
    assert_eq!(c1, ["DE", "FR"]);
    let cursor = p1.header("x-meshgov-next-cursor").unwrap().to_string();
    let p2 = get_as(
        s.addr,
        &query(&format!("order_by=country&limit=2&cursor={cursor}")),
        &t,
    )
    .await;
    assert_eq!(p2.status, 200, "{}", p2.text());
    let c2: Vec<_> = p2.lines().iter().map(|r| r["country"].clone()).collect();
    assert_eq!(c2, ["NL"]);
    let other = get_as(
        s.addr,
        &query(&format!("order_by=email&limit=2&cursor={cursor}")),
        &t,
    )
    .await;
    assert_eq!(
        other.status,
        400,
        "a cursor of another query: {}",
        other.text()
    );
    let offset = get_as(s.addr, &query("order_by=country&limit=2&offset=1"), &t).await;
    assert_eq!(offset.lines()[0]["country"], "FR");
    s.stop().await;
}

#[tokio::test]
async fn hidden_and_undeclared_fields_do_not_exist() {
    let keys = Keys::generate();
    let s = parquet_profiles(&keys).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    // `ssn` is not declared; `name` is withheld from marketing. Both get
    // the same answer, which does not say which it is.
    for params in [
        "fields=ssn",
        "fields=name",
        "filter=ssn+is+null",
        "filter=name+is+null",
        "order_by=name",
    ] {
        let r = get_as(s.addr, &query(params), &t).await;
        assert_eq!(r.status, 400, "{params}: {}", r.text());
        let text = r.text();
        assert!(text.contains("no such field"), "{params}: {text}");
        assert!(
            !text.contains("forbidden") && !text.contains("withheld"),
            "{text}"
        );
    }
    for (params, says) in [
        ("filter=country+like+%27N%25%27", "unknown operator"),
        ("filter=country+eq+3", "compare it with a 'text' value"),
        ("order_by=country:up", "`asc` or `desc`"),
        ("cursor=bm9wZQ", "cursor"),
    ] {
        let r = get_as(s.addr, &query(params), &t).await;
        assert_eq!(r.status, 400, "{params}: {}", r.text());
        assert!(r.text().contains(says), "{params}: {}", r.text());
    }
    s.stop().await;
}

/// Rows of the profiles port as NDJSON lines, `ssn` included.
fn ndjson(rows: &[[&str; 8]]) -> String {
    rows.iter()
        .map(|r| {
            let record: serde_json::Map<String, serde_json::Value> = COLUMNS
                .iter()
                .zip(r)
                .map(|(c, v)| (c.to_string(), serde_json::Value::from(*v)))
                .collect();
            format!("{}\n", serde_json::Value::Object(record))
        })
        .collect()
}

/// The `country` column of every batch of an Arrow IPC stream or a
/// Parquet file.
fn countries(batches: impl Iterator<Item = RecordBatch>) -> Vec<String> {
    batches
        .flat_map(|b| {
            let c = b.column_by_name("country").unwrap().as_string::<i32>();
            c.iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn record_ports_are_shaped_and_answered_as_arrow_and_parquet_like_parquet_ports() {
    let keys = Keys::generate();
    let parquet = parquet_profiles(&keys).await;
    let records = start(&keys, Options::default()).await;
    // Lines that are not records, or whose declared fields do not have
    // their declared types, are skipped.
    let skipped = "not json\n{\"country\":5}\n[1]\n";
    write_upstream(
        records.dir.path(),
        "profiles",
        "2026-03-01.ndjson",
        &format!("{}{skipped}", ndjson(&[ALICE, BOB])),
    );
    write_upstream(
        records.dir.path(),
        "profiles",
        "2026-03-02.ndjson",
        &ndjson(&[CAROL]),
    );
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    for params in [
        "fields=country,email&order_by=country:desc",
        "filter=email+eq+%27a************.com%27",
        "filter=email+eq+%27alice%40example.com%27",
        "filter=country+in+(%27DE%27,%27FR%27)+and+postcode+ge+%27750%27&order_by=user_id",
        "order_by=country&limit=2&offset=1",
        "from=2026-03-02&fields=user_id,signed_up_at",
        "order_by=postcode:desc,country&fields=postcode,birth_date,country",
    ] {
        let want = get_as(parquet.addr, &query(params), &t).await;
        let got = get_as(records.addr, &query(params), &t).await;
        assert_eq!(got.status, 200, "{params}: {}", got.text());
        assert_eq!(got.lines(), want.lines(), "{params}");
        assert_eq!(
            got.header("x-meshgov-next-cursor"),
            want.header("x-meshgov-next-cursor"),
            "{params}"
        );
    }
    // The record port's answer still leaves hidden fields out of reach.
    let r = get_as(records.addr, &query("filter=name+is+null"), &t).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("no such field"), "{}", r.text());

    let shaped = query("fields=country,postcode&order_by=country");
    let r = get_with(
        records.addr,
        &shaped,
        &t,
        "application/vnd.apache.arrow.stream",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.apache.arrow.stream")
    );
    let reader = StreamReader::try_new(std::io::Cursor::new(r.body.clone()), None).unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    let postcodes: Vec<&str> = batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("postcode")
                .unwrap()
                .as_string::<i32>()
                .iter()
        })
        .map(Option::unwrap)
        .collect();
    assert_eq!(countries(batches.clone().into_iter()), ["DE", "FR", "NL"]);
    assert_eq!(postcodes, ["101", "750", "101"]);

    let r = get_with(records.addr, RECORDS, &t, "application/vnd.apache.parquet").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(r.body.clone()))
        .unwrap()
        .build()
        .unwrap();
    let mut got = countries(reader.map(Result::unwrap));
    got.sort();
    assert_eq!(got, ["DE", "FR", "NL"]);

    // A plain NDJSON read of the same port is the record path's, which
    // serves every JSON object, typed or not.
    let r = get_as(records.addr, RECORDS, &t).await;
    assert_eq!(r.lines().len(), 4, "{}", r.text());
    parquet.stop().await;
    records.stop().await;
}

#[tokio::test]
async fn csv_ports_are_shaped_with_their_cells_typed_by_the_descriptor() {
    let keys = Keys::generate();
    let s = start(&keys, Options::default()).await;
    write_upstream(
        s.dir.path(),
        "profiles",
        "2026-03-01.csv",
        "user_id,email,country,postcode,signed_up_at\r\n\
         u-1,alice@example.com,NL,029,2026-03-01T10:00:00Z\r\n\
         u-2,\"bob@\nexample.org\",DE,10115,2026-03-01T11:00:00Z\r\n",
    );
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let r = get_with(
        s.addr,
        &query("fields=postcode,email&filter=country+eq+%27NL%27"),
        &t,
        "text/csv",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "postcode,email\r\n029,a************.com\r\n");
    let r = get_as(s.addr, &query("order_by=country&fields=email"), &t).await;
    let emails: Vec<_> = r.lines().iter().map(|l| l["email"].clone()).collect();
    // Bob's email holds a line break (a quoted cell across lines).
    assert_eq!(emails, ["b***********.org", "a************.com"]);
    s.stop().await;
}

#[tokio::test]
async fn reads_are_audited_with_their_shape_and_no_values() {
    let keys = Keys::generate();
    let s = parquet_profiles(&keys).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let r = get_with(
        s.addr,
        &query("fields=country,email&filter=country+eq+%27NL%27+and+email+is+not+null"),
        &t,
        "application/vnd.apache.arrow.stream",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rid = r.header("x-request-id").unwrap().to_string();
    let dir = s.dir.path().join("state/audit");
    let events =
        meshgov_audit::show::read_filtered(&dir, &meshgov_audit::show::Filter::default()).unwrap();
    let decision = events
        .iter()
        .map(|(e, _)| serde_json::to_value(e).unwrap())
        .find(|e| e["request_id"] == rid.as_str() && e["kind"] == "decision")
        .unwrap();
    let log: String = std::fs::read_dir(&dir)
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap_or_default())
        .collect();
    assert_eq!(decision["format"], "arrow");
    assert_eq!(
        decision["projection"],
        serde_json::json!(["country", "email"])
    );
    assert_eq!(decision["filter"], "country eq ? and email is not null");
    assert!(
        !log.contains("'NL'") && !log.contains("\"NL\""),
        "a filter value entered the log"
    );
    s.stop().await;
}

/// One profile row of random text: empty, punctuation and formula
/// starts, non-ASCII, digits, dates.
fn profile_row() -> impl proptest::strategy::Strategy<Value = Vec<String>> {
    use proptest::prelude::*;
    let cell = prop_oneof![
        "[a-z@.]{0,14}",
        "[=+@ \"',;é0-9-]{0,8}",
        "19[0-9]{2}-0[1-9]-[12][0-9]",
        "2026-03-0[1-2]T1[0-9]:00:00Z",
        proptest::sample::select(vec!["NL", "DE", "FR", "1012AB", "10115", ""])
            .prop_map(String::from),
    ];
    proptest::collection::vec(cell, 8)
}

/// **The protocols agree.** For random consumers of the example mesh and
/// random rows, the real sidecar serves the same records through the
/// record path (a plain NDJSON read), the columnar plane over the same
/// records (a paged read), and the columnar plane over the same rows kept
/// as Parquet; and the same refusals.
#[test]
fn record_and_columnar_reads_agree_for_random_consumers_and_data() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let keys = Keys::generate();
    let (records, parquet) = rt.block_on(async {
        (
            start(&keys, Options::default()).await,
            start(&keys, Options::default()).await,
        )
    });
    // Mostly consumers the mesh lets read (each with its own treatments),
    // and any other mix of groups and purpose.
    let allowed = proptest::sample::select(vec![
        (vec!["marketing"], "campaign-analytics"),
        (vec!["data-science"], "product-analytics"),
        (vec!["fraud"], "fraud-investigation"),
        (vec!["fraud", "marketing"], "fraud-investigation"),
    ]);
    let any = (
        proptest::sample::subsequence(
            vec!["marketing", "data-science", "fraud", "analysts", "nobody"],
            0..=2,
        ),
        proptest::sample::select(vec![
            "campaign-analytics",
            "product-analytics",
            "fraud-investigation",
            "royalty-payments",
        ]),
    );
    let consumer = prop_oneof![3 => allowed, 1 => any];
    let rows = proptest::collection::vec(profile_row(), 0..12);
    let mut runner = TestRunner::new(Config {
        cases: 40,
        ..Config::default()
    });
    runner
        .run(&(consumer, rows), |((groups, purpose), rows)| {
            let rows: Vec<[&str; 8]> = rows
                .iter()
                .map(|r| std::array::from_fn(|i| r[i].as_str()))
                .collect();
            write_upstream(
                records.dir.path(),
                "profiles",
                "2026-03-01.ndjson",
                &ndjson(&rows),
            );
            write_parquet(parquet.dir.path(), "2026-03-01.parquet", &rows);
            let t = token(&keys, "who", &groups, purpose);
            let (plain, paged, scanned) = rt.block_on(async {
                (
                    get_as(records.addr, RECORDS, &t).await,
                    get_as(records.addr, &query("offset=0"), &t).await,
                    get_as(parquet.addr, RECORDS, &t).await,
                )
            });
            prop_assert_eq!(plain.status, paged.status, "{}", paged.text());
            prop_assert_eq!(plain.status, scanned.status, "{}", scanned.text());
            if plain.status == 200 {
                prop_assert_eq!(plain.lines().len(), rows.len());
                prop_assert_eq!(&plain.lines(), &paged.lines());
                prop_assert_eq!(&plain.lines(), &scanned.lines());
            } else {
                prop_assert_eq!(plain.error_code(), paged.error_code());
                prop_assert_eq!(plain.error_code(), scanned.error_code());
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(async {
        records.stop().await;
        parquet.stop().await;
    });
}
