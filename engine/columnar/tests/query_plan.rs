//! A consumer's filter on a treated field is evaluated on the treated
//! value, after the treatment, however the plan is optimized and scanned.

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use meshgov_anonymize::{FieldRule, RowPredicate, Transform};
use meshgov_columnar::query::{ConsumerQuery, parse_filter};
use meshgov_columnar::source::{parquet_table, session};
use meshgov_columnar::view::consumer_view;
use meshgov_core::descriptor::{FieldInfo, PortInfo};
use meshgov_core::mesh::Level;
use meshgov_core::records::Rules;
use meshgov_core::window::Window;
use std::sync::Arc;

fn port() -> PortInfo {
    let field = |name: &str| FieldInfo {
        name: name.into(),
        logical_type: Some("string".into()),
        classification: None,
        level: Level::Public,
        direct_identifier: false,
    };
    PortInfo {
        name: "p".into(),
        kind: "records".into(),
        time_field: None,
        fields: vec![field("email"), field("country")],
    }
}

fn rules() -> Rules {
    Rules {
        fields: vec![
            FieldRule::new(
                "email",
                Transform::Mask {
                    keep_first: 1,
                    keep_last: 4,
                    mask_char: '*',
                },
            ),
            FieldRule::new("country", Transform::Clear),
        ],
        filter: RowPredicate::keep_all(),
        validators: vec![],
    }
}

fn parquet(dir: &std::path::Path) -> std::path::PathBuf {
    // `ssn` first: the file's columns are not the table's.
    let schema = Arc::new(Schema::new(vec![
        Field::new("ssn", DataType::Utf8, true),
        Field::new("email", DataType::Utf8, true),
        Field::new("country", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["123-45-6789", "987-65-4321"])),
            Arc::new(StringArray::from(vec![
                "alice@example.com",
                "bob@example.org",
            ])),
            Arc::new(StringArray::from(vec!["NL", "DE"])),
        ],
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("date=2026-03-01")).unwrap();
    let path = dir.join("date=2026-03-01/p.parquet");
    let mut w = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    path
}

async fn count(filter: &str) -> (usize, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = parquet(dir.path());
    let ctx = session(64 << 20, None).unwrap();
    let table = parquet_table(
        &[file.display().to_string()],
        meshgov_columnar::schema::port_schema(&port()),
    )
    .unwrap();
    let view = consumer_view(
        ctx.read_table(table).unwrap(),
        &port(),
        &rules(),
        &Window::default(),
    )
    .unwrap();
    let q = ConsumerQuery {
        filter: parse_filter(filter).unwrap(),
        ..ConsumerQuery::default()
    };
    let df = q.apply(view, &rules()).unwrap();
    let plan = df.clone().create_physical_plan().await.unwrap();
    let shown = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string();
    let rows = df
        .collect()
        .await
        .unwrap()
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    (rows, shown)
}

#[tokio::test]
async fn filters_on_masked_fields_see_masked_values() {
    let (raw, plan) = count("email eq 'alice@example.com'").await;
    assert_eq!(raw, 0, "a raw value matched a masked field:\n{plan}");
    let (masked, plan) = count("email eq 'a************.com'").await;
    assert_eq!(masked, 1, "{plan}");
    // The comparison runs on the mask's output, wherever it ends up, and
    // never reaches the raw column or its statistics.
    assert!(plan.contains("mask(email"), "{plan}");
    assert!(
        !plan.contains("email_min") && !plan.contains("email_max"),
        "{plan}"
    );
    assert!(!plan.contains("predicate=email@"), "{plan}");
    let (clear, _) = count("country eq 'DE'").await;
    assert_eq!(clear, 1);
}
